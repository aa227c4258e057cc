"""Checks for the attention exercises (chapters 1 and 2).

Oracles are PyTorch's own operations, never course_lib's reference, so a check can be trusted
independently of the code it grades. Every call hands the student's code private copies
(``call_on_copies``, which also verifies they come back unchanged), so nothing it does to its
arguments reaches the oracles or later probes. Each ``check_*`` takes sizes, a dtype and a
seed so the hidden checks can run the same probes on other inputs.
"""

from __future__ import annotations

import math

import torch

from course_lib.checks.core import (
    CheckFailed,
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


def check_dot_scores(fn, L=3, S=4, D=5, dtype=torch.float32, seed=0) -> None:
    gen = generator(seed)
    q, k = randn(gen, L, D, dtype=dtype), randn(gen, S, D, dtype=dtype)

    def worked_example():
        got = fn(torch.tensor([[0.7, 0.3]]), torch.tensor([[0.8, 0.2]]))
        expect_close(got, torch.tensor([[0.62]]), "the score of (0.7, 0.3) against (0.8, 0.2)")

    def matches_matmul():
        got = call_on_copies(fn, {"query": q, "keys": k})
        expect(
            tuple(getattr(got, "shape", ())) != (S, L),
            f"scores have shape (S, L) = {(S, L)}, expected (L, S) = {(L, S)}: "
            "one row per query, so compute query @ keys.T, not keys @ query.T",
        )
        expect_close(
            got,
            q.double() @ k.double().T,
            "scores",
            {
                "the scores were scaled (no scaling in this chapter)": q.double()
                @ k.double().T
                / math.sqrt(D)
            },
        )
        expect(got.dtype == dtype, f"scores have dtype {got.dtype}, expected {dtype}")

    run(
        "dot_scores",
        {
            "the worked example gives 0.62": worked_example,
            f"matches Q Kᵀ for L={L}, S={S}, D={D} ({dtype})": matches_matmul,
        },
    )


def check_softmax(fn, shape=(3, 5), dtype=torch.float32, seed=0) -> None:
    gen = generator(seed)
    scores = randn(gen, *shape, dtype=dtype) * 3

    def call(**kwargs):
        return call_on_copies(fn, {"scores": scores}, **kwargs)

    def sums_to_one():
        got = expect_shape(call(), tuple(scores.shape), "softmax(scores)")
        expect(bool((got >= 0).all()), "some weights are negative: did you exponentiate?")
        sums = got.double().sum(-1)
        if not torch.allclose(sums, torch.ones_like(sums), atol=1e-5):
            hint = ""
            if torch.allclose(got.double().sum(0), torch.ones_like(got.double().sum(0))):
                hint = " They sum to 1 over dim 0: did you take the softmax over the wrong axis?"
            raise CheckFailed(f"weights do not sum to 1 along dim=-1 (the key axis).{hint}")

    def matches_torch():
        expect_close(
            call(),
            torch.softmax(scores.double(), -1),
            "softmax(scores)",
            {
                "the softmax over dim 0 instead of dim=-1": torch.softmax(scores.double(), 0),
                "exp(scores) without normalising": scores.double().exp(),
            },
        )

    def honours_dim():
        expect_close(
            call(dim=0),
            torch.softmax(scores.double(), 0),
            "softmax(scores, dim=0)",
            {"the dim argument is ignored (always dim=-1)": torch.softmax(scores.double(), -1)},
        )

    def stable_for_large_scores():
        big = scores * 1000
        got = call_on_copies(fn, {"scores": big})
        expect(
            bool(torch.isfinite(got).all()),
            "softmax of scores around ±1000 gives NaN or inf: subtract the maximum score "
            "before exponentiating (softmax(e) = softmax(e - max e))",
        )
        expect_close(got, torch.softmax(big.double(), -1), "softmax of large scores")

    def keeps_dtype():
        got = call()
        expect(got.dtype == dtype, f"the weights have dtype {got.dtype}, expected {dtype}")

    run(
        "softmax",
        {
            "rows sum to 1 over the key axis": sums_to_one,
            f"matches torch.softmax on shape {tuple(shape)}": matches_torch,
            "honours the dim argument": honours_dim,
            "stable for scores of ±1000": stable_for_large_scores,
            f"keeps dtype {dtype}": keeps_dtype,
        },
    )


def check_soft_lookup(fn, L=3, S=4, D=5, Dv=2, dtype=torch.float32, seed=0) -> None:
    gen = generator(seed)
    q, k = randn(gen, L, D, dtype=dtype), randn(gen, S, D, dtype=dtype)
    v = randn(gen, S, Dv, dtype=dtype)
    scores = q.double() @ k.double().T  # (L, S)
    weights = torch.softmax(scores, -1)

    def softmax(scores, dim=-1):  # local: no importable function computes an exercise's answer
        return torch.softmax(scores, dim)

    def call():
        with graded_alone(fn, dot_scores=torch.inner, softmax=softmax):  # inner: q @ kᵀ
            result = call_on_copies(fn, {"query": q, "keys": k, "values": v})
        expect(
            isinstance(result, tuple) and len(result) == 2,
            "soft_lookup must return a tuple (output, weights)",
        )
        return result

    def returns_weights():
        _, got = call()
        expect_shape(got, (L, S), "weights")
        expect_close(
            got,
            weights,
            "weights",
            {
                "the softmax over the query axis (dim 0) instead of the key axis": torch.softmax(
                    scores, 0
                ),
                "the scores were scaled (no scaling in this chapter)": torch.softmax(
                    scores / math.sqrt(D), -1
                ),
            },
        )

    def returns_output():
        out, _ = call()
        expect_shape(out, (L, Dv), "output")
        expect_close(
            out,
            weights @ v.double(),
            "output",
            {
                "the raw scores were used instead of the softmax weights": scores @ v.double(),
                "the values were summed without weights": v.double().sum(0).expand(L, Dv),
            },
        )

    run(
        "soft_lookup",
        {
            f"weights are softmax(Q Kᵀ) over keys (L={L}, S={S})": returns_weights,
            f"output is weights @ V, shape (L, Dv) = {(L, Dv)}": returns_output,
        },
    )
