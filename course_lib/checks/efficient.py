"""Checks for chapter 8, part 2: the online softmax update and chunked attention.

Written to the rules for check code of the course design: every call hands the student's code
private copies and verifies they come back unchanged; no function here computes an exercise's
answer for arguments of one's choosing. Each probe's expected state or output is computed
inline, in float64, over the whole key axis at once (softmax over the keys so far, fully
masked rows 0), for the probe's own tensors; gradients come from autograd through that full
computation. While ``chunked_attention`` is graded, :func:`offset_update` replaces the
student's ``online_softmax_update`` (the same attention output, but a normaliser and a sum e
times the exercise's, so it is no answer to that exercise).
"""

from __future__ import annotations

import math

import torch
from torch.overrides import TorchFunctionMode

from course_lib.checks.core import (
    as_tensor,
    call_on_copies,
    expect,
    expect_close,
    expect_copies_unchanged,
    expect_shape,
    generator,
    graded_alone,
    randn,
    real_positions,
    run,
)

F64 = torch.float64
NEG_INF = float("-inf")


def _expect_running_max(got, expected, what):
    got = expect_shape(got, tuple(expected.shape), what).double()
    expect(not bool(torch.isnan(got).any()), f"{what} contains NaN")
    expect(
        bool(torch.equal(torch.isneginf(got), torch.isneginf(expected))),
        f"{what} must be −inf exactly in the rows whose keys so far are all forbidden",
    )
    finite = ~torch.isneginf(expected)
    expect_close(got[finite], expected[finite], what)


# -------------------------------------------------------------- online softmax update


def check_online_softmax_update(
    fn, B=2, H=2, L=3, chunks=(2, 3, 1), Dv=4, scale=3.0, dtype=torch.float32, seed=0
) -> None:
    """``fn((m, ell, acc), scores, values)``: one chunk of the online softmax."""
    gen = generator(seed)
    S = sum(chunks)
    scores = randn(gen, B, H, L, S, dtype=F64) * scale
    allowed = torch.rand(B, H, L, S, generator=gen) > 0.3
    allowed[0, 0, 0] = False  # a row with no allowed key at all
    allowed[-1, -1, -1, : chunks[0]] = False  # a row whose first chunk is all forbidden
    allowed[-1, -1, -1, chunks[0]] = True
    scores = scores.masked_fill(~allowed, NEG_INF)
    values = randn(gen, B, H, S, Dv, dtype=F64)
    ends = [sum(chunks[: i + 1]) for i in range(len(chunks))]
    tol = 1e-9 if dtype == F64 else 1e-4

    def state_after(end):  # the three running quantities over keys 0 … end − 1, all at once
        if end == 0:
            m = torch.full((B, H, L, 1), NEG_INF, dtype=F64)
            return m, torch.zeros(B, H, L, 1, dtype=F64), torch.zeros(B, H, L, Dv, dtype=F64)
        s = scores[..., :end]
        m = s.amax(-1, keepdim=True)
        p = torch.exp(s - torch.where(torch.isneginf(m), 0.0, m))
        return m, p.sum(-1, keepdim=True), p @ values[..., :end, :]

    def wrong(start, end, kind):  # what known bugs give for the chunk start … end − 1
        m, ell, acc = state_after(start)
        s, v = scores[..., start:end], values[..., start:end, :]
        m_new = torch.maximum(m, s.amax(-1, keepdim=True))
        ref = torch.where(torch.isneginf(m_new), 0.0, m_new)
        p = torch.exp(s - ref)
        rescale = torch.exp(m - ref)
        if kind == "no rescale":
            return ell + p.sum(-1, keepdim=True), acc + p @ v
        if kind == "sum first":
            return (ell + p.sum(-1, keepdim=True)) * rescale, (acc + p @ v) * rescale
        inverted = torch.exp(torch.where(torch.isneginf(m), 0.0, ref - m))
        return inverted * ell + p.sum(-1, keepdim=True), inverted * acc + p @ v

    def update(start, end):
        state = tuple(t.to(dtype) for t in state_after(start))
        inputs = {"m": state[0], "l": state[1], "acc": state[2],
                  "scores": scores[..., start:end].to(dtype),
                  "values": values[..., start:end, :].to(dtype)}  # fmt: skip
        result = call_on_copies(lambda m, ell, a, s, v: fn((m, ell, a), s, v), inputs)
        expect(isinstance(result, tuple) and len(result) == 3, "return the new (m, ell, acc)")
        m, ell, acc = result
        exp_m, exp_l, exp_acc = state_after(end)
        what = f"after keys {start}…{end - 1}"
        _expect_running_max(m, exp_m, f"the running maximum m {what}")
        bugs = {k: wrong(start, end, k) for k in ("no rescale", "sum first", "inverted")}
        hints = {
            "no rescale": "the earlier sums not rescaled by e^(m − m') when the maximum grows",
            "sum first": "the new chunk added before rescaling: rescale the earlier sums "
            "first, then add Σ e^(s − m')",
            "inverted": "the earlier sums multiplied by e^(m' − m) instead of e^(m − m')",
        }
        for got, expected, index, name in ((ell, exp_l, 0, "normaliser l"),
                                           (acc, exp_acc, 1, "output acc")):  # fmt: skip
            got = as_tensor(got, name)
            expect(
                not bool(torch.isnan(got).any()),
                f"the running {name} {what} contains NaN: a row whose keys so far are all "
                "forbidden has m' = −inf, and −inf − (−inf) is NaN; take the exponents "
                "relative to 0 in those rows so they stay (−inf, 0, 0)",
            )
            likely = {hints[k]: bugs[k][index] for k in bugs}
            expect_close(got, expected, f"the running {name} {what}", likely, atol=tol)
        for t, name in ((m, "m"), (ell, "l"), (acc, "acc")):
            expect(t.dtype == dtype, f"{name} has dtype {t.dtype}, expected {dtype}")

    def first_chunk():
        update(0, ends[0])

    def later_chunks():
        for start, end in zip(ends[:-1], ends[1:], strict=True):
            update(start, end)

    run(
        "online_softmax_update",
        {
            f"the first chunk from (−inf, 0, 0), (B, H, L, C) = {(B, H, L, chunks[0])}, "
            "inputs unchanged": first_chunk,
            f"later chunks of sizes {list(chunks[1:])} (scores up to ±{scale:g}σ, rows with "
            "no allowed key so far)": later_chunks,
        },
    )


# ---------------------------------------------------------------------- chunked attention


def offset_update(state, scores, values):
    """Stands in for ``online_softmax_update`` while ``chunked_attention`` is graded.

    It keeps the running maximum m as the exercise does, but takes its exponentials relative
    to m − 1 instead of m, so its normaliser and its output sum are e times the exercise's:
    their ratio, the attention output, is the same, and a row with no allowed key keeps
    (−inf, 0, 0). (So it is not an answer to that exercise, whose check compares l and acc.)
    It lives here rather than in the check so that the grading sandbox can import it and
    gradients flow through it there.
    """
    m, ell, acc = state
    m_new = torch.maximum(m, scores.amax(-1, keepdim=True))
    ref = torch.where(torch.isneginf(m_new), torch.zeros_like(m_new), m_new) - 1.0
    old_ref = torch.where(torch.isneginf(m), torch.zeros_like(m), m) - 1.0
    rescale = torch.where(torch.isneginf(m), torch.zeros_like(m), torch.exp(old_ref - ref))
    p = torch.exp(scores - ref)
    return m_new, rescale * ell + p.sum(-1, keepdim=True), rescale * acc + p @ values


class _Sizes(TorchFunctionMode):
    """Records the shapes of floating-point results of torch functions called inside."""

    def __init__(self):
        super().__init__()
        self.shapes: list[tuple[int, ...]] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if isinstance(out, torch.Tensor) and out.is_floating_point():
            self.shapes.append(tuple(out.shape))
        return out


def check_chunked_attention(
    fn, B=2, H=2, L=5, S=7, Dh=4, Dv=3, chunk_sizes=(3, 1, 7, 16), dtype=torch.float32, seed=0
) -> None:
    """``fn(query, key, value, attn_mask, chunk_size)`` equals full attention, values and grads."""
    gen = generator(seed)
    query = randn(gen, B, H, L, Dh, dtype=dtype)
    key = randn(gen, B, H, S, Dh, dtype=dtype)
    value = randn(gen, B, H, S, Dv, dtype=dtype)
    g = randn(gen, B, H, L, Dv, dtype=F64)  # the gradient flowing into the output
    lens = [S] + [max(1, S - 2 - b) for b in range(1, B)]
    padding = real_positions(lens, S)[:, None, None, :]  # (B, 1, 1, S)
    causal = torch.ones(L, S, dtype=torch.bool).tril()  # (L, S), upper-left aligned
    random_mask = torch.rand(B, H, L, S, generator=gen) > 0.4
    random_mask[0, -1, 1] = False  # a fully masked row
    random_mask[-1, 0, -1] = False
    masks = {"no mask": None, "a padding mask (B, 1, 1, S)": padding,
             "a causal mask (L, S)": causal, "a mask (B, H, L, S) with fully masked rows": (
                 random_mask & causal)}  # fmt: skip
    tol = 1e-9 if dtype == F64 else 2e-5

    def full(q, k, v, mask, scale=None, keys=S):  # the whole L × S computation, float64
        scale = 1 / math.sqrt(Dh) if scale is None else scale
        s = (q @ k[..., :keys, :].transpose(-2, -1)) * scale  # (..., L, keys)
        allowed = torch.ones(L, keys, dtype=torch.bool) if mask is None else mask[..., :keys]
        allowed = allowed.expand_as(s)
        s = s.masked_fill(~allowed, NEG_INF)
        any_key = allowed.any(-1, keepdim=True)
        w = torch.softmax(s.masked_fill(~any_key, 0.0), -1).masked_fill(~any_key, 0.0)
        return w @ v[..., :keys, :]

    def call(mask, chunk, q=query, k=key, v=value):
        inputs = {"query": q, "key": k, "value": v, "attn_mask": mask}
        with graded_alone(fn, online_softmax_update=offset_update):
            return call_on_copies(fn, inputs, chunk_size=chunk)

    qd, kd, vd = query.double(), key.double(), value.double()

    def values_for(name, mask):
        def probe():
            for chunk in chunk_sizes:
                out = call(mask, chunk)
                expect_shape(out, (B, H, L, Dv), f"the output (B, H, L, Dv) with {name}")
                what = f"the output with {name}, chunk_size = {chunk} (S = {S})"
                likely = {
                    "attention without the 1/√Dh scaling": full(qd, kd, vd, mask, scale=1.0),
                    "scaling by 1/Dh instead of 1/√Dh": full(qd, kd, vd, mask, scale=1 / Dh),
                }
                if mask is not None:
                    likely["the mask's polarity inverted: True means may attend"] = full(
                        qd, kd, vd, ~mask
                    )
                if S % chunk:
                    likely["the last, shorter chunk dropped: range(0, S, chunk_size) and "
                           "min(start + chunk_size, S)"] = full(
                        qd, kd, vd, mask, keys=S - S % chunk)  # fmt: skip
                expect(
                    not bool(torch.isnan(as_tensor(out, "the output")).any()),
                    f"{what} contains NaN: a row with no allowed key has ell = 0; return 0 there",
                )
                expect_close(out, full(qd, kd, vd, mask), what, likely, atol=tol)
                expect(out.dtype == dtype, f"the output has dtype {out.dtype}, expected {dtype}")

        return probe

    def gradients():
        mask = random_mask & causal
        for chunk in (chunk_sizes[0], S):
            leaves = [t.detach().clone().requires_grad_() for t in (query, key, value)]
            with graded_alone(fn, online_softmax_update=offset_update):
                out = fn(*leaves, mask.clone(), chunk_size=chunk)
            originals = {"query": query, "key": key, "value": value}
            expect_copies_unchanged(
                originals, dict(zip(originals, (t.detach() for t in leaves), strict=True))
            )
            as_tensor(out, "the output")
            expect(out.requires_grad, "the output does not require grad: keep it differentiable")
            (out.double() * g).sum().backward()
            refs = [t.detach().double().clone().requires_grad_() for t in (query, key, value)]
            (full(*refs, mask) * g).sum().backward()
            for name, got, ref in zip(("query", "key", "value"), leaves, refs, strict=True):
                expect(got.grad is not None, f"no gradient reached {name}")
                expect(
                    not bool(torch.isnan(got.grad).any()),
                    f"the gradient of {name} (chunk_size = {chunk}) contains NaN: in the fully "
                    "masked rows divide by a safe normaliser, e.g. torch.where(ell > 0, ell, 1), "
                    "rather than selecting after dividing by 0",
                )
                expect_close(got.grad, ref.grad, f"the gradient of {name} (chunk_size = {chunk})",
                             atol=10 * tol)  # fmt: skip

    def no_full_matrix():
        chunk = min(c for c in chunk_sizes if c < S)
        sizes = _Sizes()
        with sizes:
            call(causal, chunk)
        big = [s for s in sizes.shapes if len(s) >= 2 and s[-2:] == (L, S)]
        expect(
            not big,
            f"with chunk_size = {chunk} a tensor of shape {big[0] if big else ''} was formed: "
            "compute the scores one chunk of keys at a time, never all L × S at once",
        )

    def three_dims():
        out = call(None, chunk_sizes[0], query[:, 0], key[:, 0], value[:, 0])
        expect_close(out, full(qd[:, 0], kd[:, 0], vd[:, 0], None),
                     "the output for (B, L, Dh) inputs without heads", atol=tol)  # fmt: skip

    probes = {f"equals full attention with {name}, chunk sizes {list(chunk_sizes)}, inputs "
              "unchanged": values_for(name, mask) for name, mask in masks.items()}  # fmt: skip
    probes["gradients equal full attention's (fully masked rows included)"] = gradients
    probes["no L × S matrix is formed"] = no_full_matrix
    probes["works for (B, L, Dh) inputs"] = three_dims
    run("chunked_attention", probes)
