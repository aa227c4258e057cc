"""Hidden checks for chapter 6: other sizes (B ≠ L ≠ S ≠ Dh, H ≥ 2), float64, other seeds."""

import torch

from course_lib.checks import transformer as visible
from course_lib.checks.core import hidden

SEED = 20261203


def hidden_check_layer_norm(cls) -> None:
    with hidden("LayerNorm"):
        visible.check_layer_norm(cls, shape=(3, 5, 7), eps=1e-6, seed=SEED)
        visible.check_layer_norm(cls, shape=(4, 9), eps=1e-3, dtype=torch.float64, seed=SEED + 1)


def hidden_check_feed_forward(cls) -> None:
    with hidden("FeedForward"):
        visible.check_feed_forward(cls, B=3, L=5, D=6, F_=10, seed=SEED)
        visible.check_feed_forward(cls, B=2, L=7, D=4, F_=16, dtype=torch.float64, seed=SEED + 1)


def hidden_check_encoder_layer(cls) -> None:
    with hidden("EncoderLayer"):
        visible.check_encoder_layer(cls, B=3, L=7, D=12, H=3, F_=20, seed=SEED)
        visible.check_encoder_layer(
            cls, B=2, L=4, D=8, H=4, F_=6, dtype=torch.float64, seed=SEED + 1
        )


def hidden_check_decoder_layer(cls) -> None:
    with hidden("DecoderLayer"):
        visible.check_decoder_layer(cls, B=3, T=5, S=7, D=12, H=3, F_=20, seed=SEED)
        visible.check_decoder_layer(
            cls, B=2, T=6, S=3, D=8, H=4, F_=10, dtype=torch.float64, seed=SEED + 1
        )


def hidden_check_transformer(cls) -> None:
    with hidden("Transformer"):
        visible.check_transformer(cls, B=2, S=7, T=4, V_src=9, V_tgt=15, D=12, H=3, N=3, F_=20,
                                  seed=SEED)  # fmt: skip
        visible.check_transformer(cls, B=4, S=5, T=6, V_src=14, V_tgt=8, D=8, H=4, N=1, F_=6,
                                  dtype=torch.float64, seed=SEED + 1)  # fmt: skip
