"""Checks for chapter 6: LayerNorm, the feed-forward network, encoder and decoder layers and
the Transformer's wiring.

Oracles are PyTorch's: ``F.layer_norm``, ``nn.TransformerEncoderLayer``,
``nn.TransformerDecoderLayer`` and ``nn.Transformer``, in float64, with the check's own
parameter values copied in (their masks mean True = *blocked*: the check inverts ours).
The feed-forward network is recomputed inline, on the check's own tensors. Each exercise is
graded on its own: the layers run with PyTorch's ``nn.LayerNorm`` and a PyTorch feed-forward
network in place of the student's, and the Transformer with :class:`TorchEncoderLayer` and
:class:`TorchDecoderLayer`, thin wrappers of PyTorch's layers that take this course's masks
(their parameter names are PyTorch's, so they cannot stand in for an exercise).
"""

from __future__ import annotations

import math
import warnings
from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn

from course_lib.checks.core import (
    CheckFailed,
    call_on_copies,
    expect,
    expect_close,
    expect_shape,
    generator,
    graded_alone,
    load_parameters,
    parameter_values,
    randn,
    real_positions,
    run,
    valid_lengths,
)

F64 = torch.float64


def _blocked(mask: torch.Tensor | None, B: int, H: int, L: int, S: int):
    """Our mask (True = may attend, broadcastable to (B, L, S)) as PyTorch's attn_mask:
    True = blocked, one (L, S) per batch row and head."""
    if mask is None:
        return None
    return ~mask.expand(B, L, S).repeat_interleave(H, dim=0)  # (B·H, L, S)


# ------------------------------------------------------------------------------ LayerNorm


def check_layer_norm(cls, shape=(2, 3, 6), eps=1e-5, dtype=torch.float32, seed=0) -> None:
    """``cls(d_model, eps)`` normalises over the last axis, eps inside the square root."""
    gen = generator(seed)
    D = shape[-1]
    state = {"weight": 1 + 0.3 * randn(gen, D, dtype=dtype), "bias": randn(gen, D, dtype=dtype)}
    w, b = (t.double() for t in state.values())
    x = randn(gen, *shape, dtype=dtype) * 3 + 1
    xd = x.double()
    expected = F.layer_norm(xd, (D,), w, b, eps)
    mean, var = xd.mean(-1, keepdim=True), xd.var(-1, unbiased=False, keepdim=True)
    likely = {
        "eps outside the square root: (x − mean) / (std + eps); it goes inside, sqrt(var + eps)": (
            xd - mean
        )
        / (var.sqrt() + eps)
        * w
        + b,
        "the unbiased variance (divided by D − 1): LayerNorm divides by D, var(unbiased=False)": (
            xd - mean
        )
        / (xd.var(-1, keepdim=True) + eps).sqrt()
        * w
        + b,
        "no gain and bias: multiply by self.weight and add self.bias": (xd - mean)
        / (var + eps).sqrt(),
    }
    if len(shape) >= 2:
        m2, v2 = xd.mean(-2, keepdim=True), xd.var(-2, unbiased=False, keepdim=True)
        likely["the mean and variance over the wrong axis (dim −2, the positions): "
               "LayerNorm normalises each position over its D features, dim=-1"] = (
            (xd - m2) / (v2 + eps).sqrt() * w + b
        )  # fmt: skip

    def build():
        module = cls(D, eps=eps).to(dtype)
        load_parameters(module, state, "your LayerNorm")
        return module

    def values():
        out = call_on_copies(build(), {"x": x})
        expect_shape(out, tuple(shape), f"LayerNorm of x {tuple(shape)}")
        expect_close(out, expected, "the output (compared with F.layer_norm)", likely)
        expect(out.dtype == dtype, f"the output has dtype {out.dtype}, expected {dtype}")

    def constant_rows():
        flat = torch.full((2, D), 7.0, dtype=dtype)
        out = call_on_copies(build(), {"x": flat})
        expect_close(out, b.expand(2, D), "LayerNorm of a constant row (it must be the bias)")

    def any_leading_shape():
        one = randn(gen, D, dtype=dtype)
        out = call_on_copies(build(), {"x": one})
        expect_close(out, F.layer_norm(one.double(), (D,), w, b, eps), "LayerNorm of x (D,)")

    def gradients():
        leaf = x.detach().clone().requires_grad_()
        g = randn(gen, *shape, dtype=F64)
        (build()(leaf).double() * g).sum().backward()
        ref = xd.detach().clone().requires_grad_()
        (F.layer_norm(ref, (D,), w, b, eps) * g).sum().backward()
        expect(leaf.grad is not None, "no gradient reached x: keep the autograd graph")
        expect_close(leaf.grad, ref.grad, "the gradient with respect to x", atol=1e-4)

    run(
        "LayerNorm",
        {
            f"(x − mean) / sqrt(var + eps) · weight + bias over dim −1, x {tuple(shape)}, "
            "x unchanged": values,
            "a constant row gives the bias (no division by zero)": constant_rows,
            "works for a single vector (D,)": any_leading_shape,
            "gradients match F.layer_norm": gradients,
        },
    )


# ----------------------------------------------------------------------- feed-forward


def check_feed_forward(cls, B=2, L=3, D=4, F_=6, dtype=torch.float32, seed=0) -> None:
    """``cls(d_model, d_ff, dropout)``: Linear → ReLU → Linear, position by position."""
    gen = generator(seed)
    shapes = {"linear1.weight": (F_, D), "linear1.bias": (F_,)}
    shapes |= {"linear2.weight": (D, F_), "linear2.bias": (D,)}
    state = parameter_values(gen, shapes, dtype)
    W1, b1, W2, b2 = (state[n].double() for n in shapes)
    x = randn(gen, B, L, D, dtype=dtype)
    pre = x.double() @ W1.T + b1  # (B, L, F): the hidden layer before its activation
    expected = torch.relu(pre) @ W2.T + b2
    likely = {
        "no activation: ReLU between the two linear layers": pre @ W2.T + b2,
        "the ReLU after the second linear layer instead of between them": torch.relu(
            pre @ W2.T + b2
        ),
        "GELU instead of ReLU (the paper's FFN uses ReLU)": F.gelu(pre) @ W2.T + b2,
    }

    def build(dropout=0.0):
        module = cls(D, F_, dropout=dropout).to(dtype)
        load_parameters(module, state, "your FeedForward")
        return module.eval()

    def values():
        out = call_on_copies(build(), {"x": x})
        expect_shape(out, (B, L, D), f"the output for x (B, L, D) = {(B, L, D)}")
        expect_close(out, expected, "the output", likely)

    def positionwise():
        module = build()
        out = call_on_copies(module, {"x": x})
        changed = x.clone()
        changed[:, 0] += 5.0
        out2 = call_on_copies(module, {"x": changed})
        expect(
            torch.allclose(out2[:, 1:].double(), out[:, 1:].double()),
            "changing position 0 changed the other positions: the network acts on each "
            "position separately",
        )

    def dropout_only_in_training():
        module = build(dropout=0.5)
        expect_close(
            call_on_copies(module, {"x": x}), expected, "the output in eval mode, dropout=0.5"
        )
        module.train()
        torch.manual_seed(seed)
        trained = call_on_copies(module, {"x": x})
        module.eval()
        expect(
            not torch.allclose(trained.double(), expected),
            "in training mode with dropout=0.5 nothing was dropped: apply self.dropout to the "
            "hidden layer",
        )

    run(
        "FeedForward",
        {
            f"relu(x W₁ᵀ + b₁) W₂ᵀ + b₂, D = {D} -> F = {F_} -> D, x unchanged": values,
            "each position on its own": positionwise,
            "dropout in training only": dropout_only_in_training,
        },
    )


# --------------------------------------------------------------------- encoder, decoder


def _layer_shapes(D: int, H: int, F_: int, cross: bool) -> dict[str, tuple[int, ...]]:
    """Our parameter names and shapes for an encoder (or, with ``cross``, decoder) layer."""
    shapes: dict[str, tuple[int, ...]] = {}
    for attn in ("self_attn", "cross_attn") if cross else ("self_attn",):
        for r in "qkvo":
            shapes[f"{attn}.W_{r}.weight"], shapes[f"{attn}.W_{r}.bias"] = (D, D), (D,)
    shapes |= {"ffn.linear1.weight": (F_, D), "ffn.linear1.bias": (F_,)}
    shapes |= {"ffn.linear2.weight": (D, F_), "ffn.linear2.bias": (D,)}
    for n in range(1, 4 if cross else 3):
        shapes[f"norm{n}.weight"], shapes[f"norm{n}.bias"] = (D,), (D,)
    return shapes


def _to_torch_layer(state: dict, torch_layer: nn.Module) -> nn.Module:
    """Copy our layer parameters into a PyTorch encoder or decoder layer (float64)."""
    ours = {k: v.double() for k, v in state.items()}
    theirs = {}
    for attn, name in (("self_attn", "self_attn"), ("cross_attn", "multihead_attn")):
        if f"{attn}.W_q.weight" not in ours:
            continue
        qkv = [ours[f"{attn}.W_{r}.weight"] for r in "qkv"]
        theirs[f"{name}.in_proj_weight"] = torch.cat(qkv)
        theirs[f"{name}.in_proj_bias"] = torch.cat([ours[f"{attn}.W_{r}.bias"] for r in "qkv"])
        theirs[f"{name}.out_proj.weight"] = ours[f"{attn}.W_o.weight"]
        theirs[f"{name}.out_proj.bias"] = ours[f"{attn}.W_o.bias"]
    for k, v in ours.items():
        if k.startswith(("ffn.", "norm")):
            theirs[k.removeprefix("ffn.")] = v
    torch_layer.load_state_dict(theirs)
    return torch_layer.train()  # dropout is 0; training mode keeps PyTorch off its fast path


def _build_layer(cls, D, H, F_, dropout, norm_first, state, dtype, what, norms):
    """The student's layer with PyTorch's LayerNorm and feed-forward network in place of the
    student's (graded alone), loaded with ``state``."""
    module = cls(D, H, F_, dropout=dropout, norm_first=norm_first)
    layers = OrderedDict(linear1=nn.Linear(D, F_), relu=nn.ReLU(), linear2=nn.Linear(F_, D))
    module.ffn = nn.Sequential(layers)  # our parameter names: ffn.linear1, ffn.linear2
    for n in range(1, norms + 1):
        setattr(module, f"norm{n}", nn.LayerNorm(D))
    module = module.to(dtype)
    load_parameters(module, state, what)
    return module.eval()


def check_encoder_layer(cls, B=2, L=5, D=8, H=2, F_=12, dtype=torch.float32, seed=0) -> None:
    """``cls(d_model, num_heads, d_ff, dropout, norm_first)`` equals
    ``nn.TransformerEncoderLayer`` with the same weights, post-LN and pre-LN."""
    gen = generator(seed)
    shapes = _layer_shapes(D, H, F_, cross=False)
    lens = valid_lengths(B, L, gap=2)
    pad = real_positions(lens, L)[:, None, :]  # (B, 1, L)
    x = randn(gen, B, L, D, dtype=dtype)
    tol = 1e-9 if dtype == F64 else 1e-4

    def oracle(state, norm_first, inp, mask):
        layer = nn.TransformerEncoderLayer(
            D, H, F_, dropout=0.0, batch_first=True, norm_first=norm_first, dtype=F64
        )
        _to_torch_layer(state, layer)
        return layer(inp.double(), src_mask=_blocked(mask, B, H, L, L)).detach()

    def build(norm_first, dropout=0.0):
        state = parameter_values(gen, shapes, dtype)
        what = "your EncoderLayer"
        return _build_layer(cls, D, H, F_, dropout, norm_first, state, dtype, what, 2), state

    def probe(norm_first):
        name = "pre-LN (norm_first=True)" if norm_first else "post-LN (norm_first=False)"
        module, state = build(norm_first)
        for mask, what in ((None, "no mask"), (pad, "a padding mask (B, 1, L)")):
            out = call_on_copies(module, {"x": x, "src_mask": mask})
            expect_shape(out, (B, L, D), f"the output for x (B, L, D) = {(B, L, D)}")
            expect_close(
                out,
                oracle(state, norm_first, x, mask),
                f"the {name} output with {what}, compared with nn.TransformerEncoderLayer",
                {
                    "pre-LN and post-LN swapped: post-LN is x = LN(x + sublayer(x)), pre-LN "
                    "x = x + sublayer(LN(x))": oracle(state, not norm_first, x, mask),
                    "the mask not passed to self-attention": oracle(state, norm_first, x, None),
                },
                atol=tol,
            )
        return module

    def padded_keys_change_nothing():
        module, _ = build(False)
        out = call_on_copies(module, {"x": x, "src_mask": pad})
        noisy = torch.where(pad[:, 0, :, None], x, x + 10)  # change only padded positions
        out2 = call_on_copies(module, {"x": noisy, "src_mask": pad})
        real = pad[:, 0]  # (B, L)
        expect(
            torch.allclose(out2[real].double(), out[real].double(), atol=1e-6),
            "changing padded positions changed the outputs of real ones: pass src_mask to "
            "the self-attention",
        )

    def dropout_only_in_training():
        module, state = build(False, dropout=0.5)
        expect_close(
            call_on_copies(module, {"x": x, "src_mask": None}),
            oracle(state, False, x, None),
            "the output in eval mode with dropout=0.5 (dropout is off in eval)",
            atol=tol,
        )
        module.train()
        torch.manual_seed(seed)
        trained = call_on_copies(module, {"x": x, "src_mask": None})
        module.eval()
        expect(
            not torch.allclose(trained.double(), oracle(state, False, x, None)),
            "in training mode with dropout=0.5 nothing was dropped: apply self.dropout to "
            "each sublayer's output before the residual addition",
        )

    run(
        "EncoderLayer",
        {
            f"post-LN equals nn.TransformerEncoderLayer (D = {D}, H = {H}, F = {F_}), x "
            "unchanged": lambda: probe(False),
            "pre-LN (norm_first=True) equals nn.TransformerEncoderLayer(norm_first=True)": (
                lambda: probe(True)
            ),
            "padded positions change nothing at real ones": padded_keys_change_nothing,
            "dropout in training only": dropout_only_in_training,
        },
    )


def check_decoder_layer(cls, B=2, T=4, S=6, D=8, H=2, F_=12, dtype=torch.float32, seed=0) -> None:
    """``cls(d_model, num_heads, d_ff, dropout, norm_first)`` equals
    ``nn.TransformerDecoderLayer`` with the same weights, post-LN and pre-LN."""
    gen = generator(seed)
    shapes = _layer_shapes(D, H, F_, cross=True)
    lens = valid_lengths(B, S, gap=2)
    memory_mask = real_positions(lens, S)[:, None, :]  # (B, 1, S)
    causal = torch.ones(T, T, dtype=torch.bool).tril()  # (T, T)
    x = randn(gen, B, T, D, dtype=dtype)
    memory = randn(gen, B, S, D, dtype=dtype)
    tol = 1e-9 if dtype == F64 else 1e-4

    def oracle(state, norm_first, tgt_mask, mem_mask):
        layer = nn.TransformerDecoderLayer(
            D, H, F_, dropout=0.0, batch_first=True, norm_first=norm_first, dtype=F64
        )
        _to_torch_layer(state, layer)
        out = layer(
            x.double(),
            memory.double(),
            tgt_mask=_blocked(tgt_mask, B, H, T, T),
            memory_mask=_blocked(mem_mask, B, H, T, S),
        )
        return out.detach()

    def call(module, inp=x, mem=memory):
        return call_on_copies(
            module, {"x": inp, "memory": mem, "tgt_mask": causal, "memory_mask": memory_mask}
        )

    def build(norm_first, dropout=0.0):
        state = parameter_values(gen, shapes, dtype)
        what = "your DecoderLayer"
        return _build_layer(cls, D, H, F_, dropout, norm_first, state, dtype, what, 3), state

    def probe(norm_first):
        name = "pre-LN (norm_first=True)" if norm_first else "post-LN (norm_first=False)"
        module, state = build(norm_first)
        out = call(module)
        if tuple(getattr(out, "shape", ())) == (B, S, D):
            raise CheckFailed(
                f"the output has shape (B, S, D) = {(B, S, D)}: the cross-attention's queries "
                "come from the decoder (x), its keys and values from memory"
            )
        expect_shape(out, (B, T, D), f"the output for x (B, T, D) = {(B, T, D)}")
        expect_close(
            out,
            oracle(state, norm_first, causal, memory_mask),
            f"the {name} output, compared with nn.TransformerDecoderLayer",
            {
                "pre-LN and post-LN swapped": oracle(state, not norm_first, causal, memory_mask),
                "tgt_mask not applied in the masked self-attention": oracle(
                    state, norm_first, None, memory_mask
                ),
                "memory_mask not applied in the cross-attention": oracle(
                    state, norm_first, causal, None
                ),
            },
            atol=tol,
        )
        return module

    def future_changes_nothing():
        module, _ = build(False)
        out = call(module)
        t = T // 2
        later = x.clone()
        later[:, t:] += 10.0
        out2 = call(module, inp=later)
        expect(
            torch.allclose(out2[:, :t].double(), out[:, :t].double(), atol=1e-6),
            f"changing positions ≥ {t} changed the outputs of positions < {t}: use tgt_mask in "
            "the self-attention",
        )

    def padded_memory_changes_nothing():
        module, _ = build(True)
        out = call(module)
        noisy = torch.where(memory_mask[:, 0, :, None], memory, memory + 10)
        out2 = call(module, mem=noisy)
        expect(
            torch.allclose(out2.double(), out.double(), atol=1e-6),
            "changing padded memory positions changed the output: use memory_mask in the "
            "cross-attention",
        )

    run(
        "DecoderLayer",
        {
            "post-LN equals nn.TransformerDecoderLayer: masked self-attention, cross-attention "
            "(queries from x, keys and values from memory), FFN; inputs unchanged": (
                lambda: probe(False)
            ),
            "pre-LN (norm_first=True) equals nn.TransformerDecoderLayer(norm_first=True)": (
                lambda: probe(True)
            ),
            "later target positions change nothing at earlier ones": future_changes_nothing,
            "padded memory positions change nothing": padded_memory_changes_nothing,
        },
    )


# --------------------------------------------------------------------------- the model


class TorchEncoderLayer(nn.TransformerEncoderLayer):
    """PyTorch's encoder layer behind our interface: ``(x, src_mask)`` with True = may attend.

    It stands in for the student's EncoderLayer while ``Transformer`` is graded; its
    parameters keep PyTorch's names."""

    def __init__(self, d_model, num_heads, d_ff, dropout=0.0, norm_first=False):
        super().__init__(d_model, num_heads, d_ff, dropout, batch_first=True, norm_first=norm_first)

    def forward(self, x, src_mask=None):  # noqa: D102 - see the class
        B, L, _ = x.shape
        return super().forward(x, src_mask=_blocked(src_mask, B, self.self_attn.num_heads, L, L))


class TorchDecoderLayer(nn.TransformerDecoderLayer):
    """PyTorch's decoder layer behind our interface ``(x, memory, tgt_mask, memory_mask)``."""

    def __init__(self, d_model, num_heads, d_ff, dropout=0.0, norm_first=False):
        super().__init__(d_model, num_heads, d_ff, dropout, batch_first=True, norm_first=norm_first)

    def forward(self, x, memory, tgt_mask=None, memory_mask=None):  # noqa: D102
        (B, T, _), S, H = x.shape, memory.shape[1], self.self_attn.num_heads
        return super().forward(
            x,
            memory,
            tgt_mask=_blocked(tgt_mask, B, H, T, T),
            memory_mask=_blocked(memory_mask, B, H, T, S),
        )


def _our_name(name: str) -> str:
    """An ``nn.Transformer`` parameter's name in this course's model (with the stand-in layers,
    whose own names are PyTorch's)."""
    for theirs, ours in (
        ("encoder.layers.", "encoder_layers."),
        ("decoder.layers.", "decoder_layers."),
        ("encoder.norm.", "encoder_norm."),
        ("decoder.norm.", "decoder_norm."),
    ):
        name = name.replace(theirs, ours)
    return name  # fmt: skip


def check_transformer(
    cls, B=3, S=6, T=5, V_src=11, V_tgt=13, D=8, H=2, N=2, F_=12, dtype=torch.float32, seed=0
) -> None:
    """``cls(src_vocab, tgt_vocab, d_model, num_heads, num_layers, d_ff, dropout, norm_first,
    max_len)``: embeddings × √D plus positions, N independent layers per stack, masks, the
    output projection — compared with ``nn.Transformer`` holding the same weights."""
    from course_lib.positional import sinusoidal_encoding  # chapter 5's table, as the model's

    gen = generator(seed)
    max_len = 16
    pe = sinusoidal_encoding(max_len, D).double()
    lens = [S] + [max(2, S - 1 - b) for b in range(1, B)]
    src_lens = torch.tensor(lens)
    src = torch.randint(4, V_src, (B, S), generator=gen)
    src[~real_positions(lens, S)] = 0  # PAD_ID
    tgt_in = torch.randint(4, V_tgt, (B, T), generator=gen)
    tgt_in[:, 0] = 1  # BOS
    pad = real_positions(lens, S)  # (B, S)
    tol = 1e-9 if dtype == F64 else 2e-4
    stand_ins = {"EncoderLayer": TorchEncoderLayer, "DecoderLayer": TorchDecoderLayer}
    stand_ins["LayerNorm"] = nn.LayerNorm

    def make(norm_first):
        with warnings.catch_warnings():  # about its nested-tensor fast path, unused here
            warnings.simplefilter("ignore", UserWarning)
            reference = nn.Transformer(
                D, H, N, N, F_, dropout=0.0, batch_first=True, norm_first=norm_first, dtype=F64
            )
        renamed = {name: _our_name(name) for name in reference.state_dict()}  # theirs -> ours
        if not norm_first:  # post-LN: no final norm in this course (nn.Transformer has one)
            renamed = {k: v for k, v in renamed.items() if "_norm." not in v}
        ours = {
            mine: tuple(reference.state_dict()[theirs].shape) for theirs, mine in renamed.items()
        }
        ours |= {"src_embed.embedding.weight": (V_src, D), "tgt_embed.embedding.weight": (V_tgt, D)}
        ours |= {"out.weight": (V_tgt, D), "out.bias": (V_tgt,)}
        state = parameter_values(gen, ours, dtype)
        state["src_embed.embedding.weight"][0] = 0.0  # the PAD rows
        state["tgt_embed.embedding.weight"][0] = 0.0
        with graded_alone(cls.forward, **stand_ins):
            module = cls(V_src, V_tgt, D, H, N, F_, 0.0, norm_first, max_len)
        module = module.to(dtype)
        load_parameters(module, state | {"positions.pe": pe.to(dtype)}, "your Transformer")
        # the oracle: nn.Transformer with the same weights, embeddings and positions by hand
        reference.load_state_dict(
            {theirs: state[mine].double() for theirs, mine in renamed.items()}, strict=False
        )
        if not norm_first:
            reference.encoder.norm, reference.decoder.norm = None, None
        return module.train(), reference.train(), {k: v.double() for k, v in state.items()}

    def oracle(reference, w, src_ids, tgt_ids, *, causal=True, memory_mask=True, positions=True):
        Ls, Lt = src_ids.shape[1], tgt_ids.shape[1]
        e_src = w["src_embed.embedding.weight"][src_ids] * math.sqrt(D)
        e_tgt = w["tgt_embed.embedding.weight"][tgt_ids] * math.sqrt(D)
        if positions:
            e_src, e_tgt = e_src + pe[:Ls], e_tgt + pe[:Lt]
        blocked = torch.ones(Lt, Lt, dtype=torch.bool).triu(1)  # True = blocked
        hidden = reference(
            e_src,
            e_tgt,
            tgt_mask=blocked if causal else None,
            src_key_padding_mask=~pad,
            memory_key_padding_mask=~pad if memory_mask else None,
        )
        return (hidden @ w["out.weight"].T + w["out.bias"]).detach()

    def call(module, s=src, t=tgt_in):
        return call_on_copies(module, {"src": s, "src_lens": src_lens, "tgt_in": t})

    def logits(norm_first):
        module, reference, w = make(norm_first)
        got = call(module)
        expect_shape(got, (B, T, V_tgt), f"the logits for tgt_in (B, T) = {(B, T)}")
        name = "pre-LN" if norm_first else "post-LN"
        expect_close(
            got,
            oracle(reference, w, src, tgt_in),
            f"the {name} logits, compared with nn.Transformer holding the same weights",
            {
                "no causal mask in the decoder: pass causal_mask(T) as tgt_mask": oracle(
                    reference, w, src, tgt_in, causal=False
                ),
                "the source padding mask not passed to the cross-attention (memory_mask)": (
                    oracle(reference, w, src, tgt_in, memory_mask=False)
                ),
                "no positional encoding: x = self.positions(self.src_embed(src))": oracle(
                    reference, w, src, tgt_in, positions=False
                ),
            },
            atol=tol,
        )
        return module

    def encode_returns_memory_and_mask():
        module, reference, w = make(False)
        result = call_on_copies(module.encode, {"src": src, "src_lens": src_lens})
        expect(isinstance(result, tuple) and len(result) == 3, "encode returns 3 values")
        memory, state, mask = result
        e_src = w["src_embed.embedding.weight"][src] * math.sqrt(D) + pe[:S]
        expected = reference.encoder(e_src, src_key_padding_mask=~pad).detach()
        expect_close(
            memory, expected, "the memory encode returns (nn.TransformerEncoder)", atol=tol
        )
        expect(
            tuple(mask.shape) == (B, S) and bool(torch.equal(mask, pad)),
            "encode's mask must be the padding mask (B, S), True on real tokens",
        )

    def future_changes_nothing():
        module = make(False)[0]
        out = call(module)
        t = T // 2
        later = tgt_in.clone()
        later[:, t:] = torch.randint(4, V_tgt, (B, T - t), generator=gen)
        out2 = call(module, t=later)
        expect(
            torch.allclose(out2[:, :t].double(), out[:, :t].double(), atol=1e-6),
            f"changing target tokens ≥ {t} changed the logits of positions < {t}: the decoder "
            "layers need causal_mask(T)",
        )

    def padding_changes_nothing():
        module = make(True)[0]
        out = call(module)
        other = src.clone()
        other[~pad] = torch.randint(4, V_src, (int((~pad).sum()),), generator=gen)
        out2 = call(module, s=other)
        expect(
            torch.allclose(out2.double(), out.double(), atol=1e-6),
            "changing the tokens at padded source positions changed the logits: the encoder "
            "layers and the cross-attention need the padding mask from src_lens",
        )

    run(
        "Transformer",
        {
            f"post-LN logits equal nn.Transformer's (N = {N}, D = {D}, H = {H}), inputs "
            "unchanged": lambda: logits(False),
            "pre-LN logits (final LayerNorm on both stacks) equal nn.Transformer's": (
                lambda: logits(True)
            ),
            "encode returns the encoder's memory and the padding mask": (
                encode_returns_memory_and_mask
            ),
            "later target tokens change nothing at earlier positions": future_changes_nothing,
            "padded source tokens change nothing": padding_changes_nothing,
        },
    )
