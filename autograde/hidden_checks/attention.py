"""Hidden checks for chapter 1: distinct non-square sizes, float64, other seeds."""

import torch

from course_lib.checks import attention as visible
from course_lib.checks.core import hidden

SEED = 20261121


def hidden_check_dot_scores(fn) -> None:
    with hidden("dot_scores"):
        visible.check_dot_scores(fn, L=7, S=11, D=13, seed=SEED)
        visible.check_dot_scores(fn, L=1, S=9, D=3, dtype=torch.float64, seed=SEED + 1)


def hidden_check_softmax(fn) -> None:
    with hidden("softmax"):
        visible.check_softmax(fn, shape=(2, 7, 11), seed=SEED)
        visible.check_softmax(fn, shape=(5, 3), dtype=torch.float64, seed=SEED + 1)
        visible.check_softmax(fn, shape=(9,), seed=SEED + 2)


def hidden_check_soft_lookup(fn) -> None:
    with hidden("soft_lookup"):
        visible.check_soft_lookup(fn, L=5, S=9, D=7, Dv=3, seed=SEED)
        visible.check_soft_lookup(fn, L=2, S=6, D=4, Dv=8, dtype=torch.float64, seed=SEED + 1)
