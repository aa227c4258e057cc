"""Checks for chapter 4: self-attention, splitting and merging heads, multi-head attention.

Written to the rules for check code of the course design:

* Every call hands the student's code private copies of its inputs and then verifies that the
  copies came back unchanged; the oracles are computed from the check's own tensors.
* Parameters are drawn here, from the shapes the constructor arguments imply, and loaded into
  the student's module with ``load_state_dict``; the oracles use the values drawn here, never
  what the module reports about itself.
* No importable function computes an exercise's answer: the oracles are local to the checks
  that use them, and they are PyTorch's (``nn.MultiheadAttention`` with the check's weights
  copied in, ``F.scaled_dot_product_attention``); head layouts are verified by tagging every input
  element with its own coordinates and reading back where each one landed; the stand-ins for
  ``split_heads`` and ``merge_heads`` that grade ``MultiHeadAttention`` on its own accept only
  the shapes of the probe that made them.

Likely bugs are recognised by recomputing, on the same inputs, what each known bug produces
(mostly ``nn.MultiheadAttention`` with the check's weights altered the way the bug alters
them): a wrong answer that equals one of them is named in the failure message.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from course_lib.checks.core import (
    CheckFailed,
    as_tensor,
    expect,
    expect_close,
    expect_copies_unchanged,
    expect_shape,
    generator,
    graded_alone,
    load_parameters,
    parameter_values,
    private_copies,
    randn,
    real_positions,
    run,
    valid_lengths,
)

F64 = torch.float64


def _pair(result, what: str):
    expect(
        isinstance(result, tuple) and len(result) == 2,
        f"{what} must return a tuple (output, weights)",
    )
    return result


def _expect_attention(out, w, expected_out, expected_w, what, bugs, atol, allowed) -> None:
    """The weights, then the output, equal the oracle's; otherwise name the bug of ``bugs``
    (diagnosis -> (output, weights)) they match. ``allowed``: the query rows that have a key
    (None: all), over which the weights must sum to 1."""
    _expect_weights(
        w, expected_w, f"weights {what}", {d: b[1] for d, b in bugs.items()}, atol, allowed
    )
    expect_close(out, expected_out, f"output {what}", {d: b[0] for d, b in bugs.items()}, atol)


def _expect_weights(w, expected, what: str, likely: dict, atol: float, allowed=None) -> None:
    """``expect_close`` for attention weights; an unnamed difference whose rows do not sum to
    1 over the keys adds that hint (``allowed``: the rows that have a key, None for all)."""
    try:
        expect_close(w, expected, what, likely, atol)
    except CheckFailed as failure:
        sums = w.detach().double().sum(-1)
        rows = torch.ones_like(sums, dtype=torch.bool) if allowed is None else allowed
        if "looks like" in str(failure) or torch.allclose(
            sums[rows], torch.ones_like(sums[rows]), atol=1e-5
        ):
            raise
        raise CheckFailed(
            f"{failure} They do not sum to 1 over the keys (dim=-1): is the softmax taken over "
            "the keys?"
        ) from None


def _tags(shape: tuple[int, ...]) -> torch.Tensor:
    """A float64 tensor whose every element is its own flat index: where an element lands
    after a reshape or transpose tells exactly where it came from."""
    return torch.arange(math.prod(shape), dtype=F64).reshape(shape)


# --------------------------------------------------------------------------- self-attention


def check_self_attention(
    cls, B=2, L=5, d_input=6, d_model=4, bias=False, dtype=torch.float32, seed=0
) -> None:
    """``cls(d_input, d_model, bias)`` is single-head self-attention with W_q, W_k, W_v."""

    # The oracle is local to this check, as every oracle here: nothing importable computes
    # attention for inputs of a caller's choosing.
    def _sdpa_output_and_weights(q, k, v, mask):
        """PyTorch's attention on the check's own float64 tensors: the output, and the weights
        (the output for the identity matrix as values)."""
        eye = torch.eye(k.shape[-2], dtype=F64).expand(*k.shape[:-1], k.shape[-2])
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        weights = F.scaled_dot_product_attention(q, k, eye, attn_mask=mask)
        return out, weights

    gen = generator(seed)
    shapes = {f"W_{r}.weight": (d_model, d_input) for r in "qkv"}
    if bias:
        shapes.update({f"W_{r}.bias": (d_model,) for r in "qkv"})
    state = parameter_values(gen, shapes, dtype)
    p = {name: t.double() for name, t in state.items()}
    x = randn(gen, B, L, d_input, dtype=dtype)
    pad = real_positions(valid_lengths(B, L), L)[:, None, :]  # (B, 1, L)
    causal = torch.ones(L, L, dtype=torch.bool).tril()  # (L, L)
    tol = 1e-9 if dtype == F64 else 1e-4

    def project(inp, role):  # the check's own projection of its own input, float64
        out = inp.double() @ p[f"W_{role}.weight"].T
        return out + p[f"W_{role}.bias"] if bias else out

    def build():
        module = cls(d_input, d_model, bias=bias).to(dtype)
        load_parameters(module, state, "your SelfAttention")
        return module

    def call(module, inp, mask=None, grad=False):
        originals = {"x": inp, "attn_mask": mask}
        copies = private_copies(originals)
        if grad:
            copies["x"].requires_grad_()
        args = (copies["x"],) if mask is None else (copies["x"], copies["attn_mask"])
        out, w = _pair(module(*args), "forward")
        expect_copies_unchanged(originals, copies)
        return out, w, copies["x"]

    def expect_attention(module, inp, mask, what):
        out, w, _ = call(module, inp, mask)
        q, k, v = project(inp, "q"), project(inp, "k"), project(inp, "v")
        expected_out, expected_w = _sdpa_output_and_weights(q, k, v, mask)
        bugs = {}
        if d_input == d_model:
            xd = inp.double()
            bugs["no projections: Q, K and V must be x passed through W_q, W_k and W_v"] = (
                _sdpa_output_and_weights(xd, xd, xd, mask)
            )
            tq, tk, tv = (xd @ p[f"W_{r}.weight"] for r in "qkv")
            bugs["the Linear weights used transposed (x @ W.weight instead of x @ W.weight.T "
                 "— or simply call the layer: self.W_q(x))"] = _sdpa_output_and_weights(
                tq, tk, tv, mask
            )  # fmt: skip
            bugs["the values not projected: V = W_v(x), not x"] = _sdpa_output_and_weights(
                q, k, xd, mask
            )
        bugs["the keys projected with W_q: each role has its own projection, K = W_k(x)"] = (
            _sdpa_output_and_weights(q, q, v, mask)
        )
        bugs["queries and keys swapped (the weights transposed)"] = _sdpa_output_and_weights(
            k, q, v, None if mask is None else mask.transpose(-2, -1)
        )
        if mask is not None:
            bugs["the mask ignored"] = _sdpa_output_and_weights(q, k, v, None)
            bugs["an inverted mask: True means 'may attend'"] = _sdpa_output_and_weights(
                q, k, v, ~mask
            )
        expect_shape(w, (B, L, L), f"weights {what}")
        allowed = None if mask is None else mask.expand(B, L, L).any(-1)
        _expect_attention(out, w, expected_out, expected_w, what, bugs, tol, allowed)
        expect(
            out.dtype == dtype and w.dtype == dtype,
            f"output and weights have dtypes {out.dtype} and {w.dtype}, expected {dtype}",
        )
        return module, out, w

    def shapes_and_values():
        expect_attention(build(), x, None, f"for x (B, L, d_input) = {(B, L, d_input)}")

    def padding():
        module, _, w = expect_attention(build(), x, pad, "with a padding mask (B, 1, L)")
        expect(
            bool((w.detach()[~pad.expand(B, L, L)] == 0).all()),
            "padded keys must get exactly zero weight",
        )

    def causal_future_changes_nothing():
        module, out, _ = expect_attention(build(), x, causal, "with a causal mask (L, L)")
        t = L // 2
        later = x.clone()
        later[:, t:] += 10 * randn(gen, B, L - t, d_input, dtype=dtype)
        out2, _, _ = call(module, later, causal)
        expect(
            torch.allclose(out2[:, :t].double(), out[:, :t].double(), atol=1e-6),
            f"with a causal mask, changing the tokens at positions ≥ {t} changed the outputs "
            f"of positions < {t}: a token must not see the future",
        )

    def keeps_last_weights():
        module = build()
        _, w, _ = call(module, x, pad)
        kept = as_tensor(module.last_weights, "self.last_weights")
        expect_close(kept, w.detach(), "self.last_weights (the weights of the last call)")

    def permutation_equivariant():
        module = build()
        out, _, _ = call(module, x)
        order = torch.randperm(L, generator=gen)
        shuffled, _, _ = call(module, x[:, order])
        expect_close(
            shuffled,
            out.detach()[:, order],
            "the output for permuted tokens (it must be the same outputs, permuted)",
            atol=tol,
        )

    def gradients():
        module = build()
        g = randn(gen, B, L, d_model, dtype=F64)
        out, _, leaf = call(module, x, pad, grad=True)
        (out.double() * g).sum().backward()
        oracle = x.detach().double().requires_grad_()
        q, k, v = project(oracle, "q"), project(oracle, "k"), project(oracle, "v")
        (F.scaled_dot_product_attention(q, k, v, attn_mask=pad) * g).sum().backward()
        expect(
            leaf.grad is not None,
            "no gradient reached x: compute with the layers, without torch.no_grad() or .detach()",
        )
        expect_close(leaf.grad, oracle.grad, "the gradient with respect to x", atol=tol)

    run(
        "SelfAttention",
        {
            f"softmax(Q Kᵀ / √d_model) V with Q, K, V = W_q x, W_k x, W_v x ({dtype})": (
                shapes_and_values
            ),
            "a padding mask (B, 1, L): padded keys get weight 0": padding,
            "a causal mask (L, L): the future changes nothing": causal_future_changes_nothing,
            "self.last_weights holds the weights of the last call": keeps_last_weights,
            "permuting the tokens permutes the outputs": permutation_equivariant,
            "gradients with respect to x match PyTorch": gradients,
        },
    )


# ------------------------------------------------------------------- splitting and merging


def _expect_layout(got, expected: torch.Tensor, what: str, likely: dict) -> None:
    """``got`` holds the tags of ``expected`` at the same places; else name the layout bug."""
    got = as_tensor(got, what)
    for diagnosis, wrong in likely.items():
        if tuple(got.shape) == tuple(wrong.shape) and torch.equal(got.double(), wrong):
            raise CheckFailed(f"{what} is wrong: it looks like {diagnosis}.")
    expect_shape(got, tuple(expected.shape), what)
    if not torch.equal(got.double(), expected):
        first = tuple((got.double() != expected).nonzero()[0].tolist())
        raise CheckFailed(
            f"{what} is wrong at index {first}: the element there came from flat index "
            f"{got.double()[first].item():.0f} of the input, expected {expected[first].item():.0f}"
        )


def check_split_heads(fn, B=2, L=3, H=2, Dh=4, dtype=torch.float32, seed=0) -> None:
    """``fn(x, num_heads)``: (B, L, D) -> (B, H, L, Dh), head h = columns h·Dh … (h+1)·Dh − 1."""
    D = H * Dh
    x = _tags((B, L, D)).to(dtype)
    b, h, t, d = torch.meshgrid(
        torch.arange(B), torch.arange(H), torch.arange(L), torch.arange(Dh), indexing="ij"
    )
    expected = ((b * L + t) * D + h * Dh + d).double()  # (B, H, L, Dh): where each comes from
    flat = torch.arange(B * L * D, dtype=F64)
    likely = {
        "a view to (B, H, L, Dh) without the transpose: the columns of one token then land in "
        "several positions. View as (B, L, H, Dh) first, then transpose(1, 2)": flat.reshape(
            B, H, L, Dh
        ),
        "heads made of interleaved columns (every H-th column) instead of H blocks of Dh "
        "consecutive columns: view as (B, L, H, Dh), not (B, L, Dh, H)": (
            flat.reshape(B, L, Dh, H).permute(0, 3, 1, 2)
        ),
        "the layout (B, L, H, Dh): the heads axis must come second, transpose(1, 2)": (
            flat.reshape(B, L, H, Dh)
        ),
    }

    def layout():
        originals = {"x": x}
        copies = private_copies(originals)
        got = fn(copies["x"], H)
        expect_copies_unchanged(originals, copies)
        _expect_layout(got, expected, f"split_heads(x of shape {(B, L, D)}, num_heads={H})", likely)
        expect(got.dtype == dtype, f"the result has dtype {got.dtype}, expected {dtype}")

    def one_head():
        got = fn(x.clone(), 1)
        _expect_layout(got, flat.reshape(B, 1, L, D), "split_heads(x, num_heads=1)", {})

    def differentiable():
        leaf = randn(generator(seed), B, L, D, dtype=dtype).requires_grad_()
        got = as_tensor(fn(leaf, H), "split_heads(x, H)")
        expect(got.requires_grad, "the result does not require grad: keep the autograd graph")

    run(
        "split_heads",
        {
            f"(B, L, D) = {(B, L, D)} -> (B, H, L, Dh) = {(B, H, L, Dh)}, head h holds "
            "columns h·Dh … (h+1)·Dh − 1; input unchanged": layout,
            "num_heads = 1 gives (B, 1, L, D)": one_head,
            "the result is differentiable": differentiable,
        },
    )


def check_merge_heads(fn, B=2, H=2, L=3, Dh=4, dtype=torch.float32, seed=0) -> None:
    """``fn(x)``: (B, H, L, Dh) -> (B, L, H·Dh), head h into columns h·Dh … (h+1)·Dh − 1."""
    D = H * Dh
    x = _tags((B, H, L, Dh)).to(dtype)
    b, t, h, d = torch.meshgrid(
        torch.arange(B), torch.arange(L), torch.arange(H), torch.arange(Dh), indexing="ij"
    )
    expected = (((b * H + h) * L + t) * Dh + d).double().reshape(B, L, D)
    flat = torch.arange(B * H * L * Dh, dtype=F64)
    likely = {
        "a reshape to (B, L, D) without transposing back first: the heads' rows get mixed "
        "up across tokens. transpose(1, 2) to (B, L, H, Dh), then reshape": flat.reshape(B, L, D),
        "the heads interleaved column by column instead of side by side in blocks of Dh: "
        "transpose(1, 2), not permute(0, 2, 3, 1)": (
            flat.reshape(B, H, L, Dh).permute(0, 2, 3, 1).reshape(B, L, D)
        ),
    }

    def layout():
        originals = {"x": x}
        copies = private_copies(originals)
        got = fn(copies["x"])
        expect_copies_unchanged(originals, copies)
        _expect_layout(got, expected, f"merge_heads(x of shape {(B, H, L, Dh)})", likely)
        expect(got.dtype == dtype, f"the result has dtype {got.dtype}, expected {dtype}")

    def after_transpose():
        # a non-contiguous input, as attention outputs can be: view() fails on it, reshape works
        source = _tags((B, L, H, Dh)).to(dtype)
        got = fn(source.clone().transpose(1, 2))
        _expect_layout(got, source.double().reshape(B, L, D), "merge_heads(a transposed view)", {})

    def differentiable():
        leaf = randn(generator(seed), B, H, L, Dh, dtype=dtype).requires_grad_()
        got = as_tensor(fn(leaf), "merge_heads(x)")
        expect(got.requires_grad, "the result does not require grad: keep the autograd graph")

    run(
        "merge_heads",
        {
            f"(B, H, L, Dh) = {(B, H, L, Dh)} -> (B, L, D) = {(B, L, D)}, head h into columns "
            "h·Dh … (h+1)·Dh − 1; input unchanged": layout,
            "works on a non-contiguous input (use reshape, not view)": after_transpose,
            "the result is differentiable": differentiable,
        },
    )


# ----------------------------------------------------------------------- multi-head attention


def _locked_stand_ins(B: int, H: int, D: int, lengths: set[int]):
    """split_heads and merge_heads for these shapes only, to grade MultiHeadAttention alone."""
    Dh = D // H

    def split_heads(x, num_heads):
        shape = tuple(getattr(x, "shape", ()))
        if num_heads != H or len(shape) != 3 or shape[0] != B or shape[2] != D:
            raise CheckFailed(
                f"split_heads was called with x of shape {shape} and num_heads={num_heads}; "
                f"expected the projected queries, keys or values, (B, L or S, D) = "
                f"({B}, ·, {D}), and num_heads={H}"
            )
        if shape[1] not in lengths:
            raise CheckFailed(f"split_heads was called with a sequence of length {shape[1]}")
        return x.unflatten(-1, (H, Dh)).transpose(1, 2)

    def merge_heads(x):
        shape = tuple(getattr(x, "shape", ()))
        if len(shape) != 4 or shape[:2] != (B, H) or shape[3] != Dh or shape[2] not in lengths:
            raise CheckFailed(
                f"merge_heads was called with x of shape {shape}; expected the heads' outputs "
                f"(B, H, L, Dh) = ({B}, {H}, L, {Dh})"
            )
        return x.transpose(1, 2).flatten(2)

    return {"split_heads": split_heads, "merge_heads": merge_heads}


def check_multi_head_attention(
    cls, B=2, L=3, S=5, H=2, Dh=4, kdim=6, vdim=7, dtype=torch.float32, seed=0
) -> None:
    """``cls(d_model, num_heads, dropout, bias, kdim, vdim)`` is multi-head attention with
    W_q, W_k, W_v, W_o, compared with ``nn.MultiheadAttention`` holding the same weights."""

    # Local, like every oracle here: nothing importable computes multi-head attention for
    # parameters and inputs of a caller's choosing.
    def _torch_mha(state: dict, D: int, H: int, kdim: int, vdim: int, bias: bool) -> nn.Module:
        """``nn.MultiheadAttention`` in float64 with the check's parameters copied in."""
        mha = nn.MultiheadAttention(
            D, H, bias=bias, batch_first=True, kdim=kdim, vdim=vdim, dtype=F64
        )
        w = {name: t.double() for name, t in state.items()}
        with torch.no_grad():
            if mha._qkv_same_embed_dim:
                mha.in_proj_weight.copy_(
                    torch.cat([w["W_q.weight"], w["W_k.weight"], w["W_v.weight"]])
                )
            else:
                mha.q_proj_weight.copy_(w["W_q.weight"])
                mha.k_proj_weight.copy_(w["W_k.weight"])
                mha.v_proj_weight.copy_(w["W_v.weight"])
            mha.out_proj.weight.copy_(w["W_o.weight"])
            if bias:
                mha.in_proj_bias.copy_(torch.cat([w["W_q.bias"], w["W_k.bias"], w["W_v.bias"]]))
                mha.out_proj.bias.copy_(w["W_o.bias"])
        return mha.eval()

    def _torch_attention(state, D, H, bias, query, key, value, mask):
        """What multi-head attention returns, by nn.MultiheadAttention (float64): output (B, L, D)
        and per-head weights (B, H, L, S). ``mask`` is ours (True = may attend), already of shape
        (B, H, L, S) or None. A query with no allowed key gets zero weights in every head, so its
        output is W_o's bias (nn.MultiheadAttention itself returns NaN there)."""
        B, L, S = query.shape[0], query.shape[1], key.shape[1]
        mha = _torch_mha(state, D, H, key.shape[-1], value.shape[-1], bias)
        blocked = (
            None if mask is None else ~mask.reshape(B * H, L, S)
        )  # its polarity: True = blocked
        out, w = mha(
            query.double(),
            key.double(),
            value.double(),
            attn_mask=blocked,
            need_weights=True,
            average_attn_weights=False,
        )
        if mask is not None:
            empty = ~mask.any(-1)  # (B, H, L): no key at all
            w = w.masked_fill(empty[..., None], 0.0)
            rows = empty.all(1)  # (B, L): no key in any head
            out_bias = state["W_o.bias"].double() if bias else torch.zeros(D, dtype=F64)
            out = torch.where(rows[..., None], out_bias, out)
        return out.detach(), w.detach()

    def _likely_mha(state, D, H, bias, query, key, value, mask, given=None):
        """What known bugs make of (output, weights), recomputed with altered weights. ``mask`` is
        the full (B, H, L, S) mask, ``given`` the mask as the student's code received it."""
        bugs = {}

        def variant(change, m=mask):
            altered = {**state, **change}
            try:
                return _torch_attention(altered, D, H, bias, query, key, value, m)
            except RuntimeError:
                return None

        scale = 1 / math.sqrt(H)  # √Dh / √D: the scores of a √D scaling
        bugs[f"scores scaled by √D = √{D} instead of √Dh = √{D // H} (the width of one head)"] = (
            variant(
                {"W_q.weight": state["W_q.weight"] * scale}
                | ({"W_q.bias": state["W_q.bias"] * scale} if bias else {})
            )
        )
        bugs["the output projection W_o missing: output = W_o(merge_heads(heads))"] = variant(
            {"W_o.weight": torch.eye(D, dtype=state["W_o.weight"].dtype)}
            | ({"W_o.bias": torch.zeros(D, dtype=state["W_o.weight"].dtype)} if bias else {})
        )
        if key.shape[-1] == D and value.shape[-1] == D:
            bugs["the Linear weights used transposed: call the layers, self.W_q(query), ..."] = (
                variant({f"W_{r}.weight": state[f"W_{r}.weight"].T for r in "qkvo"})
            )
        Dh = D // H
        names = [f"W_{r}.{p}" for r in "qkv" for p in (("weight", "bias") if bias else ("weight",))]
        tiled = {n: state[n][:Dh].repeat(H, *[1] * (state[n].dim() - 1)) for n in names}
        bugs["every head using head 0's slice of the projections: each head h has its own "
             "columns h·Dh … (h+1)·Dh − 1 of W_q(query), W_k(key) and W_v(value)"] = variant(
            tiled
        )  # fmt: skip
        if mask is not None:
            bugs["an inverted mask: True means 'may attend' (nn.MultiheadAttention's masks mean "
                 "the opposite)"] = variant({}, ~mask)  # fmt: skip
            bugs["the mask ignored"] = variant({}, None)
        if given is not None and given.dim() == 3 and given.shape[0] in (1, H):
            B, L, S = mask.shape[0], mask.shape[2], mask.shape[3]
            bugs["a 3-dimensional mask, (B, L, S) or (B, 1, S), not given a head axis: it "
                 "broadcasts as (1, B, L, S), so head h "
                 "gets sequence h's mask. Insert the head axis: attn_mask[:, None]"] = variant(
                {}, given[None].expand(B, H, L, S)
            )  # fmt: skip
        return {d: b for d, b in bugs.items() if b is not None and bool(torch.isfinite(b[0]).all())}

    gen = generator(seed)
    D = H * Dh
    tol = 1e-9 if dtype == F64 else 1e-4

    def shapes(kd, vd, bias):
        out = {"W_q.weight": (D, D), "W_k.weight": (D, kd), "W_v.weight": (D, vd)}
        out["W_o.weight"] = (D, D)
        if bias:
            out.update({f"W_{r}.bias": (D,) for r in "qkvo"})
        return out

    def build(kd=D, vd=D, bias=True, dropout=0.0):
        state = parameter_values(gen, shapes(kd, vd, bias), dtype)
        module = cls(D, H, dropout=dropout, bias=bias, kdim=kd, vdim=vd).to(dtype)
        load_parameters(module, state, "your MultiHeadAttention")
        return module.eval(), state

    x = randn(gen, B, L, D, dtype=dtype)  # self-attention: L = S
    memory_k = randn(gen, B, S, kdim, dtype=dtype)
    memory_v = randn(gen, B, S, vdim, dtype=dtype)
    pad = real_positions(valid_lengths(B, S), S)[:, None, :]  # (B, 1, S)
    causal = torch.ones(L, L, dtype=torch.bool).tril()  # (L, L)
    per_query = (torch.rand(B, L, S, generator=gen) < 0.5) & pad  # (B, L, S)
    per_query[..., 0] = True  # every query keeps a key
    per_head = torch.rand(B, H, L, S, generator=gen) < 0.6  # (B, H, L, S)
    per_head[..., 0] = True  # every row keeps one key ...
    per_head[:, :, -1] = False  # ... but the last query, which has none in any head
    stand_ins = _locked_stand_ins(B, H, D, {L, S})

    def call(module, query, key, value, mask=None, **kwargs):
        originals = {"query": query, "key": key, "value": value, "attn_mask": mask}
        copies = private_copies(originals)
        args = [copies["query"], copies["key"], copies["value"]]
        if mask is not None:
            args.append(copies["attn_mask"])
        with graded_alone(cls.forward, **stand_ins):
            result = _pair(module(*args, **kwargs), "forward")
        expect_copies_unchanged(originals, copies)
        return result

    def expand(mask, Lq, Sk):  # ours, as the oracle's (B, H, L, S)
        if mask is None:
            return None
        if mask.dim() == 3:
            mask = mask[:, None]
        return mask.expand(B, H, Lq, Sk)

    def expect_mha(module, state, query, key, value, mask, what, bias=True):
        out, w = call(module, query, key, value, mask)
        Lq, Sk = query.shape[1], key.shape[1]
        if tuple(getattr(w, "shape", ())) == (B, H, Sk, Lq) and Sk != Lq:
            raise CheckFailed(
                f"weights {what} have shape (B, H, S, L) = {(B, H, Sk, Lq)}: queries and keys "
                "swapped. The queries come from `query` (W_q), the keys from `key` (W_k)"
            )
        expect_shape(w, (B, H, Lq, Sk), f"weights {what}")
        expect_shape(out, (B, Lq, D), f"output {what}")
        full = expand(mask, Lq, Sk)
        expected_out, expected_w = _torch_attention(state, D, H, bias, query, key, value, full)
        bugs = _likely_mha(state, D, H, bias, query, key, value, full, mask)
        allowed = None if full is None else full.any(-1)
        _expect_attention(out, w, expected_out, expected_w, what, bugs, tol, allowed)
        expect(
            out.dtype == dtype and w.dtype == dtype,
            f"output and weights have dtypes {out.dtype} and {w.dtype}, expected {dtype}",
        )
        return out, w

    def self_attention():
        module, state = build()
        expect_mha(module, state, x, x, x, None, f"for self-attention, D = {D}, H = {H}")

    def cross_attention():
        module, state = build(kdim, vdim)
        expect_mha(
            module,
            state,
            x,
            memory_k,
            memory_v,
            None,
            f"for cross-attention (L = {L} queries, S = {S} keys, kdim = {kdim}, vdim = {vdim})",
        )

    def no_bias():
        module, state = build(bias=False)
        expect_mha(module, state, x, x, x, causal, "with bias=False", bias=False)

    def per_sequence_mask():
        module, state = build(kdim, vdim)
        expect_mha(module, state, x, memory_k, memory_v, per_query, "with a mask (B, L, S)")

    def padding_mask():
        module, state = build(kdim, vdim)
        out, w = expect_mha(
            module, state, x, memory_k, memory_v, pad, "with a padding mask (B, 1, S)"
        )
        noisy_k, noisy_v = memory_k.clone(), memory_v.clone()
        hidden = ~pad[:, 0, :]  # (B, S): padded keys
        noisy_k[hidden] = 50.0
        noisy_v[hidden] = -50.0
        out2, _ = call(module, x, noisy_k, noisy_v, pad)
        expect(
            torch.allclose(out2.double(), out.double(), atol=1e-6),
            "changing the keys and values at padded positions changed the output: the mask "
            "must reach every head's scores before the softmax",
        )

    def causal_mask():
        module, state = build()
        out, _ = expect_mha(module, state, x, x, x, causal, "with a causal mask (L, L)")
        t = L // 2 + 1
        later = x.clone()
        later[:, t:] += 10.0
        out2, _ = call(module, later, later, later, causal)
        expect(
            torch.allclose(out2[:, :t].double(), out[:, :t].double(), atol=1e-6),
            f"with a causal mask, changing tokens at positions ≥ {t} changed the outputs of "
            f"positions < {t}",
        )

    def per_head_mask_and_empty_rows():
        module, state = build(kdim, vdim)
        out, w = expect_mha(
            module, state, x, memory_k, memory_v, per_head, "with a mask (B, H, L, S)"
        )
        expect(
            bool((w[:, :, -1] == 0).all()),
            "a query with no allowed key must get zero weights (not NaN, not uniform)",
        )

    def heads_are_independent():
        module, state = build()
        _, before = call(module, x, x, x)
        h = H - 1
        rows = slice(h * Dh, (h + 1) * Dh)
        changed = {name: t.clone() for name, t in state.items()}
        changed["W_q.weight"][rows] = randn(gen, Dh, D, dtype=dtype)
        load_parameters(module, changed, "your MultiHeadAttention")
        _, after = call(module, x, x, x)
        for g in range(H):
            same = torch.allclose(after[:, g].double(), before[:, g].double(), atol=1e-7)
            if g == h:
                expect(
                    not same,
                    f"changing rows {rows.start}…{rows.stop - 1} of W_q (head {h}'s queries) did "
                    f"not change head {h}'s weights: head h must use columns h·Dh … (h+1)·Dh − 1 "
                    "of the projected queries",
                )
            else:
                expect(
                    same,
                    f"changing rows {rows.start}…{rows.stop - 1} of W_q (head {h}'s queries) "
                    f"changed the weights of head {g}: heads must be independent. Split the "
                    "projected queries into H blocks of Dh columns (view as (B, L, H, Dh), then "
                    "transpose(1, 2)); every head has its own slice of each projection",
                )

    def fused_path():
        module, state = build(kdim, vdim)
        full = expand(per_head, L, S)
        expected, _ = _torch_attention(state, D, H, True, x, memory_k, memory_v, full)
        out, w = call(module, x, memory_k, memory_v, per_head, need_weights=False)
        expect(w is None, "with need_weights=False, forward returns (output, None)")
        expect_close(
            out,
            expected,
            "output with need_weights=False (the fused F.scaled_dot_product_attention path)",
            atol=tol,
        )

    def keeps_last_weights():
        module, _ = build()
        _, w = call(module, x, x, x, causal)
        kept = as_tensor(module.last_weights, "self.last_weights")
        expect_close(kept, w.detach(), "self.last_weights (the weights of the last call)")

    def dropout_only_in_training():
        module, state = build(dropout=0.5)
        expected, _ = _torch_attention(state, D, H, True, x, x, x, None)
        out, _ = call(module, x, x, x)
        expect_close(
            out,
            expected,
            "output in eval mode with dropout=0.5 (dropout must be off: module.eval() turns "
            "off an nn.Dropout; F.dropout needs training=self.training)",
            atol=tol,
        )
        fused, _ = call(module, x, x, x, need_weights=False)
        expect_close(
            fused,
            expected,
            "output in eval mode with dropout=0.5 and need_weights=False (dropout_p must be 0 "
            "outside training)",
            atol=tol,
        )
        module.train()
        torch.manual_seed(seed)
        for need_weights in (True, False):
            trained, _ = call(module, x, x, x, need_weights=need_weights)
            expect(
                not torch.allclose(trained.double(), out.double()),
                f"in training mode with dropout=0.5 and need_weights={need_weights} the output "
                "equals the eval-mode output: drop attention weights during training "
                "(self.dropout, or dropout_p=self.dropout.p in the fused call)",
            )
        module.eval()

    run(
        "MultiHeadAttention",
        {
            f"self-attention equals nn.MultiheadAttention (D = {D}, H = {H}, {dtype}), "
            "inputs unchanged": self_attention,
            "cross-attention: queries from `query`, keys and values from `key` and `value`, "
            "kdim and vdim ≠ D": cross_attention,
            "bias=False with a causal mask": no_bias,
            "a padding mask (B, 1, S) applies to every head; padded keys change nothing": (
                padding_mask
            ),
            "a causal mask (L, L): the future changes nothing": causal_mask,
            "a mask (B, L, S) applies to every head (insert the head axis: mask[:, None])": (
                per_sequence_mask
            ),
            "a mask (B, H, L, S); a query with no allowed key gets zero weights": (
                per_head_mask_and_empty_rows
            ),
            "changing one head's part of W_q changes that head's weights only": (
                heads_are_independent
            ),
            "need_weights=False (fused path) gives the same output and no weights": fused_path,
            "self.last_weights holds the weights of the last call": keeps_last_weights,
            "dropout on the weights in training only": dropout_only_in_training,
        },
    )
