"""Chapter 2's checks: the reference and correct alternatives earn full marks, the blank
release earns nothing, and each known bug loses exactly the points of its own exercise."""

import re

import pytest
import torch

from tests.exercises import GradingContract
from tools.chapters import SOURCES, load

CHAPTER = load(SOURCES / "02-scaled-dot-product-attention.md")

ALTERNATIVES = {
    "einsum, torch.where and a hand-written safe softmax": """
def padding_mask(valid_lens, S):
    return torch.arange(S).expand(len(valid_lens), S) < valid_lens.unsqueeze(-1)

def causal_mask(L, device=None):
    i = torch.arange(L, device=device)
    return i[:, None] >= i[None, :]

def scaled_dot_product_attention(query, key, value, attn_mask=None):
    scores = torch.einsum("...ld,...sd->...ls", query * query.shape[-1] ** -0.5, key)
    if attn_mask is not None:
        scores = torch.where(attn_mask, scores, torch.finfo(scores.dtype).min)
    top = scores.amax(-1, keepdim=True)
    e = (scores - top).exp()
    if attn_mask is not None:
        e = e * attn_mask  # finfo.min rows: e = 1 everywhere, zeroed here
    weights = e / e.sum(-1, keepdim=True).clamp(min=torch.finfo(e.dtype).tiny)
    return torch.einsum("...ls,...sv->...lv", weights, value), weights
""",
    "explicit loops over batch and queries, computed in float64": """
def padding_mask(valid_lens, S):
    rows = [[j < n for j in range(S)] for n in valid_lens.tolist()]
    return torch.tensor(rows, dtype=torch.bool).reshape(len(rows), S)

def causal_mask(L, device=None):
    mask = torch.zeros(L, L, dtype=torch.bool, device=device)
    for i in range(L):
        mask[i, : i + 1] = True
    return mask

def scaled_dot_product_attention(query, key, value, attn_mask=None):
    *batch, L, D = query.shape
    S, Dv = key.shape[-2], value.shape[-1]
    mask = torch.ones(L, S, dtype=torch.bool) if attn_mask is None else attn_mask
    mask = mask.expand(*batch, L, S).reshape(-1, L, S)
    q = query.double().reshape(-1, L, D)
    k = key.double().reshape(-1, S, D)
    v = value.double().reshape(-1, S, Dv)
    outputs, weights = [], []
    for b in range(q.shape[0]):
        for i in range(L):
            allowed = mask[b, i]
            w = torch.zeros(S, dtype=torch.float64)
            if allowed.any():
                s = k[b][allowed] @ q[b, i] / math.sqrt(D)
                w = w.index_put((allowed.nonzero()[:, 0],), torch.softmax(s, 0))
            weights.append(w)
            outputs.append(w @ v[b])
    out = torch.stack(outputs).reshape(*batch, L, Dv).to(query.dtype)
    return out, torch.stack(weights).reshape(*batch, L, S).to(query.dtype)
""",
    "softmax with the -inf fill replaced by a logsumexp": """
def scaled_dot_product_attention(query, key, value, attn_mask=None):
    scores = query @ key.transpose(-2, -1) / math.sqrt(key.shape[-1])
    if attn_mask is None:
        attn_mask = torch.ones_like(scores, dtype=torch.bool)
    attn_mask = attn_mask.expand_as(scores)
    empty = ~attn_mask.any(-1, keepdim=True)
    scores = scores.masked_fill(~attn_mask | empty, float("-inf")).masked_fill(empty, 0.0)
    weights = (scores - scores.logsumexp(-1, keepdim=True)).exp().masked_fill(empty, 0.0)
    return weights @ value, weights
""",
}

SDPA = """
def scaled_dot_product_attention(query, key, value, attn_mask=None):
    D = query.shape[-1]
    scores = query @ key.transpose(-2, -1) / math.sqrt(D)
    if attn_mask is not None:
        allowed = attn_mask.any(-1, keepdim=True)
        scores = scores.masked_fill(~attn_mask, float("-inf"))
        scores = scores.masked_fill(~allowed, 0.0)
    weights = softmax(scores, dim=-1)
    if attn_mask is not None:
        weights = weights.masked_fill(~allowed, 0.0)
    return weights @ value, weights
"""


def sdpa(*edits: tuple[str, str]) -> str:
    """The reference attention with ``old -> new`` edits: one known bug."""
    code = SDPA
    for old, new in edits:
        assert old in code, old
        code = code.replace(old, new)
    return "import math\n" + code


# bug class -> (the exercise whose points it must cost, the buggy code)
MUTANTS = {
    "padding mask off by one (<=)": (
        "padding_mask_tests",
        """
def padding_mask(valid_lens, S):
    return torch.arange(S)[None, :] <= valid_lens[:, None]
""",
    ),
    "padding mask with inverted polarity (True = padding)": (
        "padding_mask_tests",
        """
def padding_mask(valid_lens, S):
    return torch.arange(S)[None, :] >= valid_lens[:, None]
""",
    ),
    "padding mask laid out (S, B)": (
        "padding_mask_tests",
        """
def padding_mask(valid_lens, S):
    return torch.arange(S)[:, None] < valid_lens[None, :]
""",
    ),
    "padding mask as 0/1 integers": (
        "padding_mask_tests",
        """
def padding_mask(valid_lens, S):
    return (torch.arange(S)[None, :] < valid_lens[:, None]).long()
""",
    ),
    "causal mask without the diagonal (strict tril)": (
        "causal_mask_tests",
        """
def causal_mask(L, device=None):
    return torch.ones(L, L, dtype=torch.bool).tril(diagonal=-1)
""",
    ),
    "causal mask one step into the future (tril(diagonal=1))": (
        "causal_mask_tests",
        """
def causal_mask(L, device=None):
    return torch.ones(L, L, dtype=torch.bool).tril(diagonal=1)
""",
    ),
    "causal mask with inverted polarity (triu(diagonal=1))": (
        "causal_mask_tests",
        """
def causal_mask(L, device=None):
    return torch.ones(L, L, dtype=torch.bool).triu(diagonal=1)
""",
    ),
    "causal mask upper-triangular": (
        "causal_mask_tests",
        """
def causal_mask(L, device=None):
    return torch.ones(L, L, dtype=torch.bool).triu()
""",
    ),
    "attention without the 1/sqrt(D) scaling": (
        "scaled_dot_product_attention_tests",
        sdpa((" / math.sqrt(D)", "")),
    ),
    "attention scaled by 1/D instead of 1/sqrt(D)": (
        "scaled_dot_product_attention_tests",
        sdpa((" / math.sqrt(D)", " / D")),
    ),
    "attention scaled by the value width": (
        "scaled_dot_product_attention_tests",
        sdpa(("D = query.shape[-1]", "D = value.shape[-1]")),
    ),
    "attention softmax over the query axis": (
        "scaled_dot_product_attention_tests",
        sdpa(("softmax(scores, dim=-1)", "softmax(scores, dim=-2)")),
    ),
    "mask applied after the softmax": (
        "scaled_dot_product_attention_tests",
        sdpa(
            ('scores.masked_fill(~attn_mask, float("-inf"))', "scores"),
            ("weights.masked_fill(~allowed, 0.0)", "weights * attn_mask"),
        ),
    ),
    "mask with inverted polarity": (
        "scaled_dot_product_attention_tests",
        sdpa(
            ("masked_fill(~attn_mask,", "masked_fill(attn_mask,"),
            ("attn_mask.any(-1, keepdim=True)", "(~attn_mask).any(-1, keepdim=True)"),
        ),
    ),
    "mask over queries instead of keys (transposed)": (
        "scaled_dot_product_attention_tests",
        sdpa(
            (
                "allowed = attn_mask.any",
                "attn_mask = attn_mask.transpose(-2, -1)\n        allowed = attn_mask.any",
            ),
        ),
    ),
    "fill value too weak (-1e4)": (
        "scaled_dot_product_attention_tests",
        sdpa(('float("-inf")', "-1e4")),
    ),
    "NaN on fully masked rows": (
        "scaled_dot_product_attention_tests",
        sdpa(
            ("scores = scores.masked_fill(~allowed, 0.0)", "pass"),
            ("weights.masked_fill(~allowed, 0.0)", "weights"),
        ),
    ),
    "additive -inf mask, NaN zeroed after the softmax (NaN gradients)": (
        "scaled_dot_product_attention_tests",
        """
import math

def scaled_dot_product_attention(query, key, value, attn_mask=None):
    scores = query @ key.transpose(-2, -1) / math.sqrt(query.shape[-1])
    if attn_mask is not None:
        scores = scores + torch.zeros_like(scores).masked_fill(~attn_mask, float("-inf"))
    weights = softmax(scores, dim=-1).nan_to_num(0.0)
    return weights @ value, weights
""",
    ),
    "uniform weights on fully masked rows (finfo.min, never zeroed)": (
        "scaled_dot_product_attention_tests",
        sdpa(
            ('float("-inf")', "torch.finfo(scores.dtype).min"),
            ("weights.masked_fill(~allowed, 0.0)", "weights"),
        ),
    ),
    "query scaled in place": (
        "scaled_dot_product_attention_tests",
        sdpa(
            ("scores = query @", "query.div_(math.sqrt(D))\n    scores = query @"),
            (" / math.sqrt(D)\n", "\n"),
        ),
    ),
    "float32 result for float64 inputs": (
        "scaled_dot_product_attention_tests",
        sdpa(
            ("return weights @ value, weights", "return (weights @ value).float(), weights.float()")
        ),
    ),
    "weights only, no output": (
        "scaled_dot_product_attention_tests",
        sdpa(("return weights @ value, weights", "return weights")),
    ),
    # hostile: a missing scaling hidden by zeroing, once the check has read the result, the
    # query and key it was handed (a later probe that reused them would see only zeros,
    # for which the scaling makes no difference)
    "no scaling, inputs zeroed after each call": (
        "scaled_dot_product_attention_tests",
        sdpa(
            (" / math.sqrt(D)", ""),
            (
                "return weights @ value, weights",
                "out = weights @ value\n"
                "    weakref.finalize(out, lambda: [t.detach().zero_() for t in (query, key)])\n"
                "    return out, weights",
            ),
        ).replace("import math", "import math, weakref"),
    ),
    # hostile: the check module's own oracle, called for the answer
    "the check module's oracle": (
        "scaled_dot_product_attention_tests",
        """
from course_lib.checks import scaled_attention as _checks

def scaled_dot_product_attention(query, key, value, attn_mask=None):
    weights = _checks._weights(query, key, attn_mask).to(query.dtype)
    return _checks._oracle_output(query, key, value, attn_mask).to(query.dtype), weights
""",
    ),
}


def test_sdpa_mutants_apply_their_edits():
    """Each edited reference differs from the reference (no edit silently missed)."""
    for exercise, code in MUTANTS.values():
        if exercise == "scaled_dot_product_attention_tests":
            assert code.removeprefix("import math\n") != SDPA


Q, K, V = torch.randn(2, 3, 8), torch.randn(2, 4, 8), torch.randn(2, 4, 5)
BOOL = torch.bool

# a bad call of a function given to students -> what its ValueError must say
BAD_CALLS = {
    "key has D=6 but query has D=8": lambda A: A.scaled_dot_product_attention(
        Q, torch.randn(2, 4, 6), V
    ),
    "value has S=3 but key has S=4": lambda A: A.scaled_dot_product_attention(
        Q, K, torch.randn(2, 3, 5)
    ),
    "key has batch shape=(3,) but query has batch shape=(2,)": (
        lambda A: A.scaled_dot_product_attention(Q, torch.randn(3, 4, 8), V)
    ),
    "query must have shape (..., L, D), got (8,)": lambda A: A.scaled_dot_product_attention(
        Q[0, 0], K, V
    ),
    "attn_mask must be a boolean tensor": lambda A: A.scaled_dot_product_attention(
        Q, K, V, torch.ones(3, 4)
    ),
    "attn_mask has shape (4, 3), which does not broadcast": (
        lambda A: A.scaled_dot_product_attention(Q, K, V, torch.ones(4, 3, dtype=BOOL))
    ),
    "attn_mask has shape (5, 2, 3, 4), which does not broadcast to": (
        lambda A: A.scaled_dot_product_attention(Q, K, V, torch.ones(5, 2, 3, 4, dtype=BOOL))
    ),
    "valid_lens must hold integers": lambda A: A.padding_mask(torch.tensor([1.0, 2.0]), 4),
    "valid_lens must be a tensor of shape (B,), got (1, 2)": lambda A: A.padding_mask(
        torch.tensor([[1, 2]]), 4
    ),
    "valid_lens must lie in 0..S=4, got [1, 5]": lambda A: A.padding_mask(torch.tensor([1, 5]), 4),
    "L must be a non-negative int, got -1": lambda A: A.causal_mask(-1),
}


@pytest.mark.parametrize("message, call", BAD_CALLS.items(), ids=BAD_CALLS.keys())
def test_argument_checks_name_the_argument(message, call):
    """The checks given to students fail at the call, naming the argument and the shapes."""
    from course_lib import attention

    with pytest.raises(ValueError, match=re.escape(message)):
        call(attention)


class TestChapter2(GradingContract):
    chapter = CHAPTER
    alternatives = ALTERNATIVES
    mutants = MUTANTS
    prelude = "import math\n"
