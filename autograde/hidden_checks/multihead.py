"""Hidden checks for chapter 4: distinct non-square sizes (B ≠ L ≠ S ≠ Dh, H ≥ 2), float64,
other seeds."""

import torch

from course_lib.checks import multihead as visible
from course_lib.checks.core import hidden

SEED = 20261201


def hidden_check_self_attention(cls) -> None:
    with hidden("SelfAttention"):
        visible.check_self_attention(cls, B=3, L=7, d_input=5, d_model=9, seed=SEED)
        visible.check_self_attention(
            cls, B=2, L=4, d_input=6, d_model=6, bias=True, dtype=torch.float64, seed=SEED + 1
        )
        visible.check_self_attention(cls, B=4, L=3, d_input=8, d_model=8, seed=SEED + 2)


def hidden_check_split_heads(fn) -> None:
    with hidden("split_heads"):
        visible.check_split_heads(fn, B=3, L=5, H=4, Dh=2, seed=SEED)
        visible.check_split_heads(fn, B=2, L=7, H=3, Dh=6, dtype=torch.float64, seed=SEED + 1)


def hidden_check_merge_heads(fn) -> None:
    with hidden("merge_heads"):
        visible.check_merge_heads(fn, B=3, H=4, L=5, Dh=2, seed=SEED)
        visible.check_merge_heads(fn, B=2, H=3, L=7, Dh=6, dtype=torch.float64, seed=SEED + 1)


def hidden_check_multi_head_attention(cls) -> None:
    check = visible.check_multi_head_attention
    with hidden("MultiHeadAttention"):
        check(cls, B=3, L=5, S=7, H=3, Dh=4, kdim=6, vdim=9, dtype=torch.float64, seed=SEED)
        check(cls, B=2, L=6, S=4, H=4, Dh=3, kdim=12, vdim=5, seed=SEED + 1)
        check(cls, B=4, L=2, S=9, H=2, Dh=8, kdim=3, vdim=16, seed=SEED + 2)
