"""Checks for chapter 5: token embeddings, the sinusoidal table, the positional encoding module.

Written to the rules for check code of the course design: every call hands the student's code
private copies and verifies they come back unchanged; parameters are drawn here and loaded
with ``load_state_dict``; no function here computes an exercise's answer for arbitrary
arguments. The expected sinusoidal table is computed inside each check, for that check's sizes
only, from the formula in float64; the stand-in for ``sinusoidal_encoding`` that grades
``PositionalEncoding`` on its own returns the table for its probe's sizes and refuses others.

Likely bugs are recognised by recomputing, on the same inputs, what each known bug produces.
"""

from __future__ import annotations

import math

import torch

from course_lib.checks.core import (
    CheckFailed,
    as_tensor,
    call_on_copies,
    expect,
    expect_close,
    expect_shape,
    generator,
    graded_alone,
    randn,
    run,
)

F64 = torch.float64


# --------------------------------------------------------------------------- token embedding


def check_token_embedding(cls, B=2, L=3, V=7, D=6, padding_idx=0, dtype=torch.float32, seed=0):
    """``cls(vocab_size, d_model, padding_idx)`` looks tokens up and scales them by √D."""
    gen = generator(seed)
    weight = randn(gen, V, D, dtype=dtype)
    if padding_idx is not None:
        weight[padding_idx] = 0.0  # what nn.Embedding's padding row holds
    tokens = torch.randint(V, (B, L), generator=gen)
    if padding_idx is not None:
        tokens[-1, -1] = padding_idx  # a padded position
    looked_up = weight.double()[tokens]  # (B, L, D)

    def build():
        module = cls(V, D, padding_idx=padding_idx).to(dtype)
        try:
            module.load_state_dict({"embedding.weight": weight.clone()})
        except Exception as error:  # noqa: BLE001 - the diagnosis is the point
            raise CheckFailed(
                "could not load embedding.weight into your TokenEmbedding: keep the "
                f"nn.Embedding that __init__ creates as self.embedding. {error}"
            ) from None
        return module

    def call(module, ids):
        return call_on_copies(module, {"tokens": ids})

    def scaled_lookup():
        out = call(build(), tokens)
        expect_shape(out, (B, L, D), f"the embeddings of tokens (B, L) = {(B, L)}")
        expect_close(
            out,
            looked_up * math.sqrt(D),
            f"the embeddings (D = {D})",
            {
                "the lookup not scaled: multiply by √d_model": looked_up,
                "the lookup divided by √d_model: it is multiplied (the encoding's entries are "
                "at most 1, the embedding is scaled up to match)": looked_up / math.sqrt(D),
                "the lookup multiplied by d_model instead of √d_model": looked_up * D,
            },
        )
        expect(out.dtype == dtype, f"the embeddings have dtype {out.dtype}, expected {dtype}")

    def padding_row():
        if padding_idx is None:
            return
        out = call(build(), tokens)
        expect(
            bool((out[-1, -1] == 0).all()),
            f"the padding token (id {padding_idx}) must give a zero vector",
        )

    def differentiable():
        out = call(build(), tokens)
        expect(
            out.requires_grad,
            "the embeddings do not require grad: look them up with self.embedding, without "
            "torch.no_grad() or .detach(), so the table can learn",
        )

    run(
        "TokenEmbedding",
        {
            f"embedding.weight[tokens] × √d_model, shape (B, L, D) = {(B, L, D)}, tokens "
            "unchanged": scaled_lookup,
            "the padding token gives a zero vector": padding_row,
            "the embeddings are differentiable": differentiable,
        },
    )


# --------------------------------------------------------------------------- the table


def check_sinusoidal_encoding(fn, max_len=6, D=8) -> None:
    """``fn(max_len, d_model)``: sin on even and cos on odd columns, base 10000."""

    # The table for this check's sizes, float64; the keywords reproduce known bugs. (A local
    # function: nothing importable computes the table for sizes of one's choosing.)
    def _table(*, base=10000.0, exponent=None, first=0, concat=False, swap=False,
               wrong_side=False, rows=max_len, width=D) -> torch.Tensor:  # fmt: skip
        p = torch.arange(first, first + rows, dtype=F64)[:, None]  # (rows, 1)
        i = torch.arange(width // 2, dtype=F64)  # (D/2,)
        e = 2 * i / width if exponent is None else exponent(i, width)
        angles = p * base**e if wrong_side else p / base**e  # (rows, D/2)
        sin, cos = (angles.cos(), angles.sin()) if swap else (angles.sin(), angles.cos())
        if concat:
            return torch.cat([sin, cos], dim=-1)  # (rows, D): sines first, then cosines
        return torch.stack([sin, cos], dim=-1).flatten(-2)  # (rows, D/2, 2) -> (rows, D)

    expected = _table()
    likely = {
        "sines and cosines concatenated ([sin | cos]) instead of interleaved: sin in the even "
        "columns 0, 2, 4, …, cos in the odd ones": _table(concat=True),
        "sin and cos swapped: sin goes into the even columns": _table(swap=True),
        "the exponent i/D instead of 2i/D (i counts column pairs, 2i is the even column)": (
            _table(exponent=lambda i, D: i / D)
        ),
        "the exponent (2i+1)/D for the cosines' pair: both columns of a pair share 2i/D": (
            _table(exponent=lambda i, D: (2 * i + 1) / D)
        ),
        "the base 1000 instead of 10000": _table(base=1000.0),
        "p × 10000^(2i/D) instead of p / 10000^(2i/D)": _table(wrong_side=True),
        "positions starting at 1: the first row is position 0": _table(first=1),
    }

    def table():
        got = fn(max_len, D)
        expect_shape(got, (max_len, D), f"sinusoidal_encoding({max_len}, {D})")
        expect_close(got, expected, f"sinusoidal_encoding({max_len}, {D})", likely)
        expect(got.dtype == torch.float32, f"the table has dtype {got.dtype}, expected float32")

    def first_row_and_bounds():
        got = as_tensor(fn(max_len, D), "the table").double()
        zero_one = torch.tensor([0.0, 1.0], dtype=F64).repeat(D // 2)
        expect_close(got[0], zero_one, "row 0 (position 0 gives sin 0 = 0, cos 0 = 1)")
        expect(bool((got.abs() <= 1 + 1e-6).all()), "every entry is a sine or cosine: |PE| ≤ 1")

    def offsets_only():
        got = as_tensor(fn(max_len, D), "the table").double()
        for k in range(1, max_len):
            dots = (got[:-k] * got[k:]).sum(-1)  # PE(p) · PE(p + k) for every p
            expect(
                bool(torch.allclose(dots, dots[0].expand_as(dots), atol=1e-5)),
                f"PE(p) · PE(p + {k}) changes with p: with sin and cos of the same angle in "
                "each column pair it depends only on the offset",
            )

    def tiny():
        got = fn(1, 2)
        expect_close(got, torch.tensor([[0.0, 1.0]], dtype=F64), "sinusoidal_encoding(1, 2)")

    run(
        "sinusoidal_encoding",
        {
            f"PE[p, 2i] = sin(p / 10000^(2i/D)), PE[p, 2i+1] = cos(…), shape {(max_len, D)}": table,
            "PE(0) = [0, 1, 0, 1, …] and |PE| ≤ 1": first_row_and_bounds,
            "PE(p) · PE(p + k) depends only on k": offsets_only,
            "max_len = 1, d_model = 2 gives [[0, 1]]": tiny,
        },
    )


# ----------------------------------------------------------------------- the module


def check_positional_encoding(cls, B=2, L=3, D=8, max_len=10, dtype=torch.float32, seed=0):
    """``cls(d_model, max_len, dropout)`` adds the table's first L rows (a buffer ``pe``)."""
    gen = generator(seed)
    # What sinusoidal_encoding returns while this exercise is graded alone: any fixed table
    # will do (the module must hold and add what it was given), so a random one, in [-1, 1].
    table = torch.rand(max_len, D, generator=gen, dtype=F64) * 2 - 1

    def stand_in(n, d):  # sinusoidal_encoding, for this probe's sizes only
        if (n, d) != (max_len, D):
            raise CheckFailed(
                f"sinusoidal_encoding was called with ({n}, {d}); expected "
                f"(max_len, d_model) = ({max_len}, {D})"
            )
        return table.float()

    def build(dropout=0.0):
        # forward's globals are the module's (or notebook's) namespace, where __init__ looks
        # the function up; a proxy's __init__ would be the proxy's own (trusted grading).
        with graded_alone(cls.forward, sinusoidal_encoding=stand_in):
            module = cls(D, max_len=max_len, dropout=dropout)
        return module.to(dtype).eval()

    x = randn(gen, B, L, D, dtype=dtype)
    expected = x.double() + table[:L]

    def call(module, inp):
        return call_on_copies(module, {"x": inp})

    def adds_first_rows():
        out = call(build(), x)
        expect_shape(out, (B, L, D), f"the output for x (B, L, D) = {(B, L, D)}")
        expect_close(
            out,
            expected,
            "x + pe[:L]",
            {
                "the encoding added without the embeddings (return x + pe[:L])": table[:L].expand(
                    B, L, D
                ),
                "the rows from position 1 (pe[1:L+1]): position 0 has its own row": (
                    x.double() + table[1 : L + 1]
                ),
            },
        )
        expect(out.dtype == dtype, f"the output has dtype {out.dtype}, expected {dtype}")

    def a_buffer():
        module = build()
        params = [name for name, _ in module.named_parameters()]
        expect(
            not params,
            f"the module has trainable parameters {params}: the table is fixed; register it "
            "with self.register_buffer('pe', ...), not as an nn.Parameter",
        )
        buffers = dict(module.named_buffers())
        expect("pe" in buffers, "the table must be a buffer named pe: register_buffer('pe', ...)")
        expect_close(
            buffers["pe"],
            table,
            f"the buffer pe (max_len, D) = {(max_len, D)}: it must hold the table that "
            "sinusoidal_encoding(max_len, d_model) returns",
        )
        state = module.state_dict()
        expect("pe" in state, "pe must be saved in state_dict (a persistent buffer)")

    def follows_to():
        module = build().to(F64)
        pe = as_tensor(module.pe, "pe")
        expect(
            pe.dtype == F64,
            f"after .to(torch.float64) pe has dtype {pe.dtype}: a plain tensor attribute does "
            "not follow .to(); a buffer does",
        )
        out = call(module, x.double())
        expect(out.dtype == F64, "the output for float64 inputs after .to(float64) is float64")

    def other_lengths():
        module = build()
        for n in (1, max_len):
            inp = randn(gen, B, n, D, dtype=dtype)
            expect_close(call(module, inp), inp.double() + table[:n], f"x + pe[:L] for L = {n}")

    def too_long():
        module = build()
        try:
            module(randn(gen, B, max_len + 1, D, dtype=dtype))
        except ValueError as error:
            expect(str(max_len) in str(error), "the ValueError should name max_len")
            return
        raise CheckFailed(
            f"an input of L = {max_len + 1} > max_len = {max_len} must raise ValueError"
        )

    def dropout_only_in_training():
        module = build(dropout=0.5)
        expect_close(call(module, x), expected, "the output in eval mode with dropout=0.5")
        module.train()
        torch.manual_seed(seed)
        out = call(module, x).double()
        module.eval()
        kept = out != 0
        expect(
            bool((~kept).any()) and bool(kept.any()),
            "in training mode with dropout=0.5 no entry was dropped: apply self.dropout to "
            "x + pe[:L]",
        )
        expect_close(
            out[kept],
            (expected * 2)[kept],
            "the entries kept by dropout (scaled by 1/(1 − p) = 2)",
        )

    run(
        "PositionalEncoding",
        {
            f"returns x + pe[:L] for x (B, L, D) = {(B, L, D)}, x unchanged": adds_first_rows,
            "the table is a buffer pe (not trained, in state_dict)": a_buffer,
            "pe follows .to(float64)": follows_to,
            f"works for L = 1 and L = max_len = {max_len}": other_lengths,
            "L > max_len raises ValueError": too_long,
            "dropout in training only": dropout_only_in_training,
        },
    )
