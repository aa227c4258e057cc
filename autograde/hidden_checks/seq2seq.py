"""Hidden checks for chapter 3: distinct non-square sizes, float64, other seeds and ids."""

import torch

from course_lib.checks import seq2seq as visible
from course_lib.checks.core import hidden

SEED = 20261121


def hidden_check_additive_attention(cls) -> None:
    with hidden("AdditiveAttention"):
        visible.check_additive_attention(cls, B=3, S=7, Dq=5, Dk=4, Dv=6, A=9, seed=SEED)
        visible.check_additive_attention(
            cls, B=4, S=6, Dq=2, Dk=8, Dv=8, A=3, dtype=torch.float64, seed=SEED + 1
        )
        visible.check_additive_attention(cls, B=5, S=2, Dq=3, Dk=3, Dv=1, A=4, seed=SEED + 2)


def hidden_check_decoder_step(cls) -> None:
    with hidden("AttentionDecoder.step"):
        visible.check_decoder_step(cls, B=3, S=8, V=11, E=5, Dk=7, D=6, A=9, seed=SEED)
        visible.check_decoder_step(
            cls, B=4, S=3, V=13, E=2, Dk=10, D=5, A=4, dtype=torch.float64, seed=SEED + 1
        )


def hidden_check_sequence_loss(fn) -> None:
    with hidden("sequence_loss"):
        visible.check_sequence_loss(fn, B=4, L=9, V=13, S=5, seed=SEED)
        visible.check_sequence_loss(fn, B=2, L=4, V=6, S=7, dtype=torch.float64, seed=SEED + 1)
        # another padding id: a loss that hard-codes PAD_ID = 0 counts this padding
        visible.check_sequence_loss(fn, B=5, L=7, V=11, S=3, pad_id=10, seed=SEED + 2)


def hidden_check_greedy_decode(fn) -> None:
    with hidden("greedy_decode"):
        visible.check_greedy_decode(fn, B=4, S=6, V=12, max_len=9, seed=SEED)
        visible.check_greedy_decode(fn, B=5, S=3, V=9, max_len=5, seed=SEED + 1)
        # other special ids: BOS, EOS and PAD come from the arguments, not the constants
        visible.check_greedy_decode(
            fn, B=3, S=5, V=14, max_len=8, bos_id=11, eos_id=12, pad_id=13, seed=SEED + 2
        )
