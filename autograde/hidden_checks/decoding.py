"""Hidden checks for chapter 8, part 1: other sizes (B ≠ T ≠ S ≠ Dh, H ≥ 2), float64, seeds."""

import torch

from course_lib.checks import decoding as visible
from course_lib.checks.core import hidden

SEED = 20261208


def hidden_check_kv_cache(cls) -> None:
    with hidden("KVCache"):
        visible.check_kv_cache(cls, B=3, H=4, Dh=5, Dv=2, chunks=(3, 1, 1, 2), seed=SEED)
        visible.check_kv_cache(cls, B=1, H=2, Dh=6, Dv=6, chunks=(1, 4), dtype=torch.float64,
                               seed=SEED + 1)  # fmt: skip


def hidden_check_cached_self_attention(fn) -> None:
    with hidden("cached_self_attention"):
        visible.check_cached_self_attention(fn, B=3, T=6, D=12, H=3, prefix=4, seed=SEED)
        visible.check_cached_self_attention(fn, B=2, T=5, D=8, H=4, prefix=1,
                                            dtype=torch.float64, seed=SEED + 1)  # fmt: skip


def hidden_check_cached_transformer(cls) -> None:
    with hidden("CachedTransformer"):
        visible.check_cached_transformer(cls, B=2, S=7, T=6, V_src=9, V_tgt=15, D=12, H=3, N=3,
                                         F_=20, seed=SEED)  # fmt: skip
        visible.check_cached_transformer(cls, B=4, S=5, T=7, V_src=14, V_tgt=8, D=8, H=4, N=1,
                                         F_=6, dtype=torch.float64, seed=SEED + 1)  # fmt: skip
