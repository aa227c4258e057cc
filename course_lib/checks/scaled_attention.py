"""Checks for chapter 2: padding masks, causal masks and scaled dot-product attention.

Oracles are PyTorch's own operations, never course_lib's reference: masks are compared with
masks built from ``torch.arange``/``torch.tril``, attention weights with ``torch.softmax`` of
scores computed here, outputs and gradients with
``torch.nn.functional.scaled_dot_product_attention``. Each ``check_*`` takes sizes, a dtype and
a seed so the hidden checks can run the same probes on other inputs.

Every call hands the student's code private copies of its inputs (verified unchanged after
the call), and the oracles are computed from the check's own tensors; no importable function
computes an exercise's answer (the attention oracle is local to its check).

Likely bugs are recognised by recomputing, on the same inputs, what each known bug produces:
a wrong answer that equals one of them is named in the failure message.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F

from course_lib.attention import softmax
from course_lib.checks.core import (
    CheckFailed,
    as_tensor,
    call_on_copies,
    expect,
    expect_close,
    expect_copies_unchanged,
    expect_shape,
    generator,
    graded_alone,
    private_copies,
    randn,
    run,
)

F64 = torch.float64
NEG_INF = float("-inf")


# --------------------------------------------------------------------------------- masks


def _expect_mask(got, expected: torch.Tensor, what: str, likely_bugs: Mapping[str, torch.Tensor]):
    """``got`` is exactly the boolean mask ``expected``; otherwise name the bug it matches."""
    got = as_tensor(got, what)
    expect(
        got.dtype == torch.bool,
        f"{what} has dtype {got.dtype}, expected torch.bool: masks are boolean with "
        "True = may attend (a comparison such as `<` already gives a bool tensor)",
    )
    for diagnosis, wrong in likely_bugs.items():
        if tuple(got.shape) == tuple(wrong.shape) and torch.equal(got, wrong):
            if not torch.equal(wrong, expected):
                raise CheckFailed(f"{what} is wrong: it looks like {diagnosis}.")
    expect_shape(got, tuple(expected.shape), what)
    if not torch.equal(got, expected):
        first = tuple((got != expected).nonzero()[0].tolist())
        raise CheckFailed(
            f"{what} differs from the correct mask, first at index {first}: "
            f"got {got[first].item()}, expected {expected[first].item()}."
        )


def check_padding_mask(fn, valid_lens: Sequence[int] = (3, 0, 5, 1), S: int = 5) -> None:
    lens = torch.tensor(list(valid_lens))
    B = len(valid_lens)
    positions = torch.arange(S)
    expected = positions[None, :] < lens[:, None]  # (B, S)

    def builds_the_mask():
        got = call_on_copies(lambda valid_lens: fn(valid_lens, S), {"valid_lens": lens})
        _expect_mask(
            got,
            expected,
            f"padding_mask({lens.tolist()}, S={S})",
            {
                "the mask laid out (S, B) instead of (B, S): one row per sequence, "
                "so compare arange(S)[None, :] with valid_lens[:, None]": expected.T,
                "the padding marked True (the polarity of nn.MultiheadAttention's "
                "key_padding_mask); in this course True means 'may attend'": ~expected,
                "an off-by-one: position valid_lens[b] is the first padding position, "
                "so use `<`, not `<=`": positions[None, :] <= lens[:, None],
            },
        )

    def empty_and_full():
        got = fn(torch.tensor([0, S]), S)
        expect_shape(got, (2, S), f"padding_mask([0, {S}], S={S})")
        expect(
            not bool(got[0].any()),
            "a sequence of valid length 0 must have no key it may attend to (a row of False)",
        )
        expect(bool(got[1].all()), f"a sequence of valid length S={S} may attend to every key")

    def int32_lengths():
        got = fn(lens.to(torch.int32), S)
        _expect_mask(got, expected, "the mask for int32 lengths", {})

    run(
        "padding_mask",
        {
            f"True where key position < valid length, shape (B, S) = {(B, S)}": builds_the_mask,
            "valid length 0 masks every key, valid length S none": empty_and_full,
            "accepts int32 lengths": int32_lengths,
        },
    )


def check_causal_mask(fn, L: int = 4) -> None:
    expected = torch.ones(L, L, dtype=torch.bool).tril()  # (L, L)
    bugs = {
        "the diagonal masked (tril(diagonal=-1)): a position may attend to itself": (
            torch.ones(L, L, dtype=torch.bool).tril(-1)
        ),
        "one future position allowed (tril(diagonal=1))": torch.ones(L, L, dtype=torch.bool).tril(
            1
        ),
        "True marking the future (triu(diagonal=1), the mask of forbidden positions); "
        "in this course True means 'may attend'": torch.ones(L, L, dtype=torch.bool).triu(1),
        "an upper-triangular mask: each query would see the future, not the past": torch.ones(
            L, L, dtype=torch.bool
        ).triu(),
    }

    def builds_the_mask():
        _expect_mask(fn(L), expected, f"causal_mask({L})", bugs)

    def length_one():
        _expect_mask(fn(1), torch.ones(1, 1, dtype=torch.bool), "causal_mask(1)", {})

    def same_as_is_causal():
        gen = generator(L)
        q, k, v = (randn(gen, 2, L, 3, dtype=F64) for _ in range(3))
        got = F.scaled_dot_product_attention(q, k, v, attn_mask=fn(L))
        expect_close(
            got,
            F.scaled_dot_product_attention(q, k, v, is_causal=True),
            "attention with your mask compared with is_causal=True",
        )

    run(
        "causal_mask",
        {
            f"lower-triangular with the diagonal, shape (L, L) = {(L, L)}": builds_the_mask,
            "L = 1 gives [[True]]": length_one,
            "F.scaled_dot_product_attention gives the same as with is_causal=True": (
                same_as_is_causal
            ),
        },
    )


# ------------------------------------------------------------------------- likely bugs


def _likely_weights(oracle, q, k, v, mask) -> dict[str, torch.Tensor]:
    """What each known bug makes of the weights, on these inputs (``oracle``: the check's
    own oracle, with keyword arguments that reproduce the bugs)."""
    D, S, Dv = q.shape[-1], k.shape[-2], v.shape[-1]
    bugs = {
        "a missing 1/√D scaling (scores = Q Kᵀ, not Q Kᵀ / √D)": oracle(q, k, mask, scale=1.0),
        "scores divided by D instead of √D": oracle(q, k, mask, scale=D),
        f"scores scaled by √Dv = √{Dv} (the value width) instead of √D = √{D} (the query/key "
        "width, query.shape[-1])": oracle(q, k, mask, scale=math.sqrt(Dv)),
        f"scores scaled by √S = √{S} (the number of keys) instead of √D = √{D}": oracle(
            q, k, mask, scale=math.sqrt(S)
        ),
        "the softmax over the query axis (dim=-2) instead of the key axis (dim=-1)": oracle(
            q, k, mask, dim=-2
        ),
    }
    if mask is None:
        return bugs
    bugs.update(
        {
            "an inverted mask: True means 'may attend', so fill the scores where the mask is "
            "False (~attn_mask)": oracle(q, k, ~mask),
            "the mask applied after the softmax: masked keys were zeroed but the rows no longer "
            "sum to 1; fill masked scores with -inf before the softmax": oracle(
                q, k, mask, after=True
            ),
            "a fill value too weak for large scores (-1e4): use float('-inf') or "
            "torch.finfo(dtype).min": oracle(q, k, mask, fill=-1e4),
            "a fully masked row (no allowed key) getting uniform weights: a finite fill makes "
            "all its scores equal; set such rows' weights to zero after the softmax": oracle(
                q, k, mask, fill=torch.finfo(F64).min, zero_empty_rows=False
            ),
        }
    )
    try:  # only where the transposed mask still broadcasts, e.g. (B, 1, S) in self-attention
        transposed = oracle(q, k, mask.transpose(-2, -1))
    except RuntimeError:
        pass
    else:
        bugs[
            "the mask applied to query rows instead of key columns (transposed): "
            "attn_mask[..., i, j] says whether query i may attend to key j, so a padding "
            "mask over keys broadcasts as (B, 1, S)"
        ] = transposed
    return bugs


def _likely_outputs(bugs: Mapping[str, torch.Tensor], v: torch.Tensor) -> dict[str, torch.Tensor]:
    return {diagnosis: w @ v.double() for diagnosis, w in bugs.items()}


# ---------------------------------------------------------------------- attention check


def check_scaled_dot_product_attention(
    fn,
    batch: tuple[int, ...] = (2,),
    L: int = 3,
    S: int = 4,
    D: int = 8,
    Dv: int = 2,
    dtype=torch.float32,
    seed: int = 0,
) -> None:
    """Weights, outputs and gradients against PyTorch, with and without masks.

    Shapes: query (*batch, L, D), key (*batch, S, D), value (*batch, S, Dv).
    """

    # The oracles are local: nothing importable computes attention for a caller's inputs.
    def oracle_weights(
        q: torch.Tensor,
        k: torch.Tensor,
        mask: torch.Tensor | None = None,
        *,
        scale: float | None = None,
        dim: int = -1,
        fill: float = NEG_INF,
        after: bool = False,
        zero_empty_rows: bool = True,
    ) -> torch.Tensor:
        """Attention weights in float64 by torch.softmax of scores computed here.

        The keyword arguments reproduce known bugs: another ``scale``, the softmax over another
        ``dim``, a finite ``fill``, the mask applied ``after`` the softmax, fully masked rows
        left as the softmax makes them (``zero_empty_rows=False``).
        """
        q, k = q.double(), k.double()
        scale = math.sqrt(q.shape[-1]) if scale is None else scale
        scores = q @ k.transpose(-2, -1) / scale  # (..., L, S)
        if mask is not None and not after:
            scores = scores.masked_fill(~mask, fill)
        weights = torch.softmax(scores, dim)
        if mask is not None and after:
            weights = weights * mask
        if mask is not None and zero_empty_rows:
            weights = weights.masked_fill(~mask.any(-1, keepdim=True), 0.0).nan_to_num(0.0)
        return weights

    def oracle_output(q, k, v, mask=None) -> torch.Tensor:
        return F.scaled_dot_product_attention(q.double(), k.double(), v.double(), attn_mask=mask)

    gen = generator(seed)
    q, k = randn(gen, *batch, L, D, dtype=dtype), randn(gen, *batch, S, D, dtype=dtype)
    v = randn(gen, *batch, S, Dv, dtype=dtype)
    x = randn(gen, *batch, S, D, dtype=dtype)  # self-attention: queries and keys alike
    # Padding: valid lengths per sequence (the first batch dim), one shorter than S.
    B = batch[0] if batch else 1
    lens = torch.randint(1, S + 1, (B,), generator=gen)
    lens[0] = max(1, S - 1)
    pad = (torch.arange(S)[None, :] < lens[:, None]).view(B, *[1] * max(len(batch) - 1, 0), 1, S)
    if not batch:
        pad = pad[0]  # (1, S)
    causal = torch.ones(S, S, dtype=torch.bool).tril()  # (S, S)
    # A general mask (..., L, S): random, one query row fully masked, one with a single key.
    general = torch.rand(*batch, L, S, generator=gen) < 0.6
    general[..., 0, :] = False
    general[..., 0, 0] = True
    general[..., 1, :] = False
    tol = 1e-5 if dtype == F64 else 1e-4
    shape_w, shape_o = (*batch, L, S), (*batch, L, Dv)

    def call(query, key, value, mask=None, grad=False):
        """``fn`` on private copies (with ``grad``, made leaves that require grad); returns
        its result and the copies of query, key and value."""
        originals = {"query": query, "key": key, "value": value, "attn_mask": mask}
        copies = private_copies(originals)
        leaves = [copies[name].requires_grad_(grad) for name in ("query", "key", "value")]
        # the student's cell calls chapter 1's softmax: the library's stands in for it (it can
        # be imported in the sandbox, so gradients flow through it there)
        with graded_alone(fn, softmax=softmax):
            result = fn(*[c for c in copies.values() if c is not None])
        expect_copies_unchanged(originals, copies)
        expect(
            isinstance(result, tuple) and len(result) == 2,
            "scaled_dot_product_attention must return a tuple (output, weights)",
        )
        return (result, leaves) if grad else result

    def expect_attention(got, query, key, value, mask, what, atol=tol):
        out, w = got
        expect_shape(w, (*query.shape[:-1], key.shape[-2]), f"weights {what}")
        expect_shape(out, (*query.shape[:-1], value.shape[-1]), f"output {what}")
        if mask is not None and bool(torch.isnan(w).any()):
            raise CheckFailed(
                f"weights {what} contain NaN: a query row whose keys are all masked has only "
                "-inf scores, and the softmax computes -inf - (-inf) = NaN. Give such rows a "
                "finite placeholder score (e.g. 0) before the softmax and zero their weights "
                "after: a fully masked row returns zero weights and a zero output."
            )
        bugs = _likely_weights(oracle_weights, query, key, value, mask)
        expect_close(w, oracle_weights(query, key, mask), f"weights {what}", bugs, atol=atol)
        expect_close(
            out,
            oracle_output(query, key, value, mask),
            f"output {what} (compared with F.scaled_dot_product_attention)",
            _likely_outputs(bugs, value),
            atol=atol,
        )
        if mask is not None:
            masked = ~mask.expand_as(w)
            expect(
                bool((w[masked] == 0).all()),
                f"masked keys get weights up to {w[masked].abs().max().item():.3g} {what}, "
                "not exactly 0: fill masked scores with -inf (or torch.finfo(dtype).min) "
                "before the softmax",
            )
        return out, w

    def returns_pair():
        out, w = call(q, k, v)
        expect_shape(w, shape_w, "weights (..., L, S)")
        expect_shape(out, shape_o, "output (..., L, Dv)")
        expect(
            out.dtype == dtype and w.dtype == dtype,
            f"output and weights have dtypes {out.dtype} and {w.dtype}, expected {dtype}: "
            "compute in the inputs' dtype",
        )

    def no_mask():
        _, w = expect_attention(call(q, k, v), q, k, v, None, "without a mask")
        sums = w.double().sum(-1)
        expect(
            torch.allclose(sums, torch.ones_like(sums), atol=1e-5),
            "weights do not sum to 1 over the key axis (dim=-1)",
        )

    def padded_self_attention():
        got = call(x, x, v, pad)
        _, w = expect_attention(
            got, x, x, v, pad, f"for self-attention with a padding mask {tuple(pad.shape)}"
        )
        sums = w.double().sum(-1)
        expect(
            torch.allclose(sums, torch.ones_like(sums), atol=1e-5),
            "with a padding mask, each query's weights over the allowed keys must sum to 1",
        )

    def padded_keys_do_not_matter():
        out, _ = expect_attention(call(q, k, v, pad), q, k, v, pad, "with a padding mask")
        noise = 100 * randn(gen, *k.shape, dtype=dtype)
        k2 = torch.where(pad.transpose(-2, -1), k, k + noise)  # change only padded keys
        v2 = torch.where(pad.transpose(-2, -1), v, v - 100 * randn(gen, *v.shape, dtype=dtype))
        out2, _ = call(q, k2, v2, pad)
        expect(
            torch.allclose(out2.double(), out.double(), atol=1e-6),
            "changing the keys and values at padded positions changed the output: padded keys "
            "must get exactly zero weight, so mask the scores before the softmax",
        )

    def causal_self_attention():
        qs = x + 0.5 * randn(gen, *x.shape, dtype=dtype)
        out, w = expect_attention(call(qs, x, v, causal), qs, x, v, causal, "with a causal mask")
        t = S // 2
        k2 = x.clone()
        k2[..., t:, :] += 100  # change the future of positions < t
        v2 = v.clone()
        v2[..., t:, :] -= 100
        out2, _ = call(qs, k2, v2, causal)
        expect(
            torch.allclose(out2[..., :t, :].double(), out[..., :t, :].double(), atol=1e-6),
            f"with a causal mask, changing keys and values at positions ≥ {t} changed the output "
            f"of queries < {t}: a query must not see the future",
        )

    def fully_masked_rows():
        out, w = expect_attention(
            call(q, k, v, general), q, k, v, general, f"with a mask {tuple(general.shape)}"
        )
        expect(
            bool((w[..., 1, :] == 0).all()) and bool((out[..., 1, :] == 0).all()),
            "a fully masked query row (no allowed key) must return zero weights and a zero "
            "output, as F.scaled_dot_product_attention does",
        )

    def finite_gradients():
        g = randn(gen, *shape_o, dtype=F64)
        (out, _), leaves = call(q, k, v, general, grad=True)
        (out.double() * g).sum().backward()
        oracle = [t.detach().double().requires_grad_() for t in (q, k, v)]
        (F.scaled_dot_product_attention(*oracle, attn_mask=general) * g).sum().backward()
        for name, mine, ref in zip(("query", "key", "value"), leaves, oracle, strict=True):
            expect(mine.grad is not None, f"no gradient reached {name}: keep the autograd graph")
            expect(
                bool(torch.isfinite(mine.grad).all()),
                f"the gradient with respect to {name} contains NaN although the output is "
                "finite: a NaN produced for a fully masked row and replaced afterwards "
                "(nan_to_num, torch.where) can still flow backwards, e.g. through an additive "
                "-inf mask, since 0 × NaN = NaN. Give fully masked rows finite placeholder "
                "scores before the softmax and zero their weights after it instead",
            )
            expect_close(mine.grad, ref.grad, f"the gradient with respect to {name}", atol=tol)

    def large_scores():
        big_q = q * 1e4
        big_q[..., 0, :] = -1e4 * k[..., 0, :]  # row 0's only key scores very negative
        atol = 1e-7 if dtype == F64 else 1e-3
        expect_attention(
            call(big_q, k, v, general), big_q, k, v, general, "for scores ×1e4", atol=atol
        )

    def keeps_float64():
        out, w = call(q.double(), k.double(), v.double())
        expect(
            out.dtype == F64 and w.dtype == F64,
            f"for float64 inputs, output and weights have dtypes {out.dtype} and {w.dtype}: "
            "compute in the inputs' dtype",
        )

    run(
        "scaled_dot_product_attention",
        {
            f"returns (output, weights) of shapes {shape_o}, {shape_w} ({dtype}), "
            "inputs unchanged": returns_pair,
            "no mask: softmax(Q Kᵀ / √D) over the keys, output as F.scaled_dot_product_attention": (
                no_mask
            ),
            "self-attention with a padding mask: padded keys get weight 0": padded_self_attention,
            "perturbing padded keys and values changes nothing": padded_keys_do_not_matter,
            "causal mask: the future changes nothing": causal_self_attention,
            "a fully masked query row returns zero weights and a zero output": fully_masked_rows,
            "gradients are finite and match F.scaled_dot_product_attention": finite_gradients,
            "masks stay exact for scores ×1e4": large_scores,
            "float64 inputs give float64 results": keeps_float64,
        },
    )
