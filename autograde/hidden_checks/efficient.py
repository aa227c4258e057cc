"""Hidden checks for chapter 8, part 2: other sizes (B ≠ L ≠ S ≠ Dh, H ≥ 2), float64, seeds."""

import torch

from course_lib.checks import efficient as visible
from course_lib.checks.core import hidden

SEED = 20261209


def hidden_check_online_softmax_update(fn) -> None:
    with hidden("online_softmax_update"):
        visible.check_online_softmax_update(fn, B=3, H=2, L=5, chunks=(4, 1, 3, 2), Dv=6,
                                            scale=40.0, seed=SEED)  # fmt: skip
        visible.check_online_softmax_update(fn, B=2, H=3, L=4, chunks=(1, 5), Dv=2,
                                            dtype=torch.float64, seed=SEED + 1)  # fmt: skip


def hidden_check_chunked_attention(fn) -> None:
    with hidden("chunked_attention"):
        visible.check_chunked_attention(fn, B=3, H=2, L=6, S=12, Dh=5, Dv=7,
                                        chunk_sizes=(4, 5, 12, 1), seed=SEED)  # fmt: skip
        visible.check_chunked_attention(fn, B=2, H=3, L=9, S=4, Dh=8, Dv=2, chunk_sizes=(3, 2),
                                        dtype=torch.float64, seed=SEED + 1)  # fmt: skip
