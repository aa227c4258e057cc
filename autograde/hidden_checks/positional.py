"""Hidden checks for chapter 5: other sizes (B ≠ L ≠ D), float64, other seeds."""

import torch

from course_lib.checks import positional as visible
from course_lib.checks.core import hidden

SEED = 20261202


def hidden_check_token_embedding(cls) -> None:
    with hidden("TokenEmbedding"):
        visible.check_token_embedding(cls, B=3, L=5, V=11, D=16, padding_idx=3, seed=SEED)
        visible.check_token_embedding(
            cls, B=4, L=2, V=5, D=9, padding_idx=None, dtype=torch.float64, seed=SEED + 1
        )


def hidden_check_sinusoidal_encoding(fn) -> None:
    with hidden("sinusoidal_encoding"):
        visible.check_sinusoidal_encoding(fn, max_len=17, D=12)
        visible.check_sinusoidal_encoding(fn, max_len=5, D=64)
        visible.check_sinusoidal_encoding(fn, max_len=40, D=2)


def hidden_check_positional_encoding(cls) -> None:
    with hidden("PositionalEncoding"):
        visible.check_positional_encoding(cls, B=3, L=7, D=6, max_len=9, seed=SEED)
        visible.check_positional_encoding(
            cls, B=4, L=2, D=12, max_len=50, dtype=torch.float64, seed=SEED + 1
        )
