"""Hidden checks for chapter 7: other warm-ups and lengths, other numbers and sizes of
micro-batches, float64, other seeds, other item counts and world sizes."""

import torch

from course_lib.checks import scaling as visible
from course_lib.checks.core import hidden

SEED = 20261207


def hidden_check_lr_factor(fn) -> None:
    with hidden("lr_factor"):
        visible.check_lr_factor(fn, warmup=7, total=31)
        visible.check_lr_factor(fn, warmup=1, total=9)
        visible.check_lr_factor(fn, warmup=25, total=26)


def hidden_check_train_step(fn) -> None:
    with hidden("train_step"):
        visible.check_train_step(fn, k=4, sizes=(3, 1, 5), d_in=7, d_hidden=4, d_out=2,
                                 clip=0.02, seed=SEED)  # fmt: skip
        visible.check_train_step(fn, k=1, sizes=(6,), d_in=3, d_hidden=5, d_out=4, clip=0.1,
                                 dtype=torch.float64, seed=SEED + 1)  # fmt: skip
        visible.check_train_step(fn, k=2, sizes=(4, 2), lr=0.05, clip=0.03, seed=SEED + 2)


def hidden_check_shard(fn) -> None:
    with hidden("shard"):
        visible.check_shard(fn, cases=((13, 4), (9, 2), (6, 6), (100, 7)), seed=SEED)
        visible.check_shard(fn, cases=((3, 1), (17, 5)), epochs=30, seed=SEED + 1)
