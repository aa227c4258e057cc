"""Chapter 1's checks: the reference and correct alternatives earn full marks, the blank
release earns nothing, and each known bug loses exactly the points of its own exercise."""

from tests.exercises import GradingContract
from tools.chapters import SOURCES, load

CHAPTER = load(SOURCES / "01-queries-keys-values.md")

ALTERNATIVES = {
    "einsum and torch.softmax-free logsumexp": """
def dot_scores(query, keys):
    return torch.einsum("ld,sd->ls", query, keys)

def softmax(scores, dim=-1):
    return (scores - scores.logsumexp(dim, keepdim=True)).exp()

def soft_lookup(query, keys, values):
    weights = softmax(dot_scores(query, keys))
    return torch.einsum("ls,sv->lv", weights, values), weights
""",
    "explicit loops in float64": """
def dot_scores(query, keys):
    out = torch.empty(query.shape[0], keys.shape[0], dtype=torch.float64)
    for i in range(query.shape[0]):
        for j in range(keys.shape[0]):
            out[i, j] = sum(float(a) * float(b) for a, b in zip(query[i], keys[j]))
    return out.to(query.dtype)

def softmax(scores, dim=-1):
    x = scores.double()
    e = (x - x.max(dim=dim, keepdim=True).values).exp()
    return (e / e.sum(dim=dim, keepdim=True)).to(scores.dtype)

def soft_lookup(query, keys, values):
    weights = softmax(dot_scores(query, keys), dim=-1)
    rows = [sum(w * v for w, v in zip(row, values)) for row in weights]
    return torch.stack(rows), weights
""",
}

# bug class -> (the exercise whose points it must cost, the buggy code)
MUTANTS = {
    "dot_scores transposed (keys @ query.T)": (
        "dot_scores_tests",
        """
def dot_scores(query, keys):
    return keys @ query.T
""",
    ),
    "dot_scores scaled by sqrt(D)": (
        "dot_scores_tests",
        """
def dot_scores(query, keys):
    return query @ keys.T / keys.shape[-1] ** 0.5
""",
    ),
    "softmax over the wrong axis": (
        "softmax_tests",
        """
def softmax(scores, dim=-1):
    e = (scores - scores.max()).exp()
    return e / e.sum(dim=0, keepdim=True)
""",
    ),
    "softmax without the max shift (overflows)": (
        "softmax_tests",
        """
def softmax(scores, dim=-1):
    e = scores.exp()
    return e / e.sum(dim=dim, keepdim=True)
""",
    ),
    "softmax that ignores dim": (
        "softmax_tests",
        """
def softmax(scores, dim=-1):
    e = (scores - scores.amax(-1, keepdim=True)).exp()
    return e / e.sum(-1, keepdim=True)
""",
    ),
    "softmax in place": (
        "softmax_tests",
        """
def softmax(scores, dim=-1):
    scores.sub_(scores.amax(dim, keepdim=True)).exp_()
    return scores / scores.sum(dim, keepdim=True)
""",
    ),
    "softmax returns float32 for float64": (
        "softmax_tests",
        """
def softmax(scores, dim=-1):
    return torch.softmax(scores.float(), dim)
""",
    ),
    "soft_lookup weights over queries": (
        "soft_lookup_tests",
        """
def soft_lookup(query, keys, values):
    weights = softmax(dot_scores(query, keys), dim=0)
    return weights @ values, weights
""",
    ),
    "soft_lookup averages raw scores": (
        "soft_lookup_tests",
        """
def soft_lookup(query, keys, values):
    scores = dot_scores(query, keys)
    return scores @ values, softmax(scores)
""",
    ),
    "soft_lookup returns output only": (
        "soft_lookup_tests",
        """
def soft_lookup(query, keys, values):
    return softmax(dot_scores(query, keys)) @ values
""",
    ),
}


class TestChapter1(GradingContract):
    chapter = CHAPTER
    alternatives = ALTERNATIVES
    mutants = MUTANTS
