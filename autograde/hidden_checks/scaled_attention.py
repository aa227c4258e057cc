"""Hidden checks for chapter 2: distinct non-square sizes, head dimensions, float64, other seeds."""

import torch

from course_lib.checks import scaled_attention as visible
from course_lib.checks.core import hidden

SEED = 20261122


def hidden_check_padding_mask(fn) -> None:
    with hidden("padding_mask"):
        visible.check_padding_mask(fn, valid_lens=(7, 0, 2, 9, 9), S=9)
        visible.check_padding_mask(fn, valid_lens=(4, 1, 11), S=12)
        visible.check_padding_mask(fn, valid_lens=(6,), S=6)


def hidden_check_causal_mask(fn) -> None:
    with hidden("causal_mask"):
        visible.check_causal_mask(fn, L=7)
        visible.check_causal_mask(fn, L=2)


def hidden_check_scaled_dot_product_attention(fn) -> None:
    check = visible.check_scaled_dot_product_attention
    with hidden("scaled_dot_product_attention"):
        # (B, H, ...) heads in float64: B=3, H=2, L=5, S=7, D=6, Dv=4
        check(fn, batch=(3, 2), L=5, S=7, D=6, Dv=4, dtype=torch.float64, seed=SEED)
        # a wide D in float32, where a missing scaling saturates the softmax
        check(fn, batch=(2,), L=4, S=9, D=32, Dv=3, seed=SEED + 1)
        # unbatched (L, D), and three leading dimensions
        check(fn, batch=(), L=6, S=3, D=10, Dv=5, seed=SEED + 2)
        check(fn, batch=(2, 3, 2), L=3, S=5, D=7, Dv=9, dtype=torch.float64, seed=SEED + 3)
