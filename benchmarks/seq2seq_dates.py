"""Chapter 3's models on the date task: the attention model against the no-attention baseline.

Run: .venv/bin/python -m benchmarks.seq2seq_dates [--epochs 3] [--eval-every 25] [--threads 1]

Both models are trained in this one process, one after the other, on the same 16 000 dates in
the same order, from the same seed, with the chapter's sizes (D = 64, E = 32, batches of 128):
only attention differs. Every ``--eval-every`` steps each is evaluated on the 2 000 dates of the
test split (exact match, greedy decoding). For each model the benchmark prints

* the training time until test exact match first reached 95 % (evaluation time excluded),
* the final test exact match,
* the training throughput, in target tokens per second,

and then the ratios of the two models, which are what to compare across machines (these
machines are noisy: absolute times vary with load, ratios much less).
"""

from __future__ import annotations

import argparse
import platform
import time

import torch

from course_lib import data
from course_lib.seq2seq import Seq2Seq, exact_match, sequence_loss
from course_lib.training import default_device, fit

MAX_LEN = 12  # an ISO date has 10 characters, then EOS
TARGET = 0.95


def train(attend: bool, task: data.Task, args) -> dict:
    train_set, test_set = task.encode("train"), task.encode("test")
    torch.manual_seed(args.seed)
    model = Seq2Seq(len(task.src_vocab), len(task.tgt_vocab), attend=attend)
    start = time.perf_counter()
    history = fit(
        model,
        lambda m, batch: sequence_loss(m, batch.src, batch.src_lens, batch.tgt),
        lambda epoch: data.make_batches(train_set, args.batch_size, shuffle=True, seed=epoch),
        epochs=args.epochs,
        evaluate=lambda m: {"test": exact_match(m, test_set, MAX_LEN).float().mean().item()},
        evaluate_every=args.eval_every,
        seed=args.seed,
        device=args.device,
        progress=False,
    )
    reached = next((r for r in history if r["test"] >= TARGET), None)
    last = history[-1]
    return {
        "name": "attention" if attend else "baseline",
        "to_target": None if reached is None else reached.seconds,
        "steps_to_target": None if reached is None else reached.step,
        "final": last["test"],
        "tokens_per_second": last.tokens / last.seconds,
        "train_seconds": last.seconds,
        "wall_seconds": time.perf_counter() - start,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--eval-every", type=int, default=25, help="steps between evaluations")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument(
        "--threads", type=int, default=1, help="torch CPU threads (1, as in the chapter)"
    )
    parser.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device) if args.device else default_device()
    args.device = device
    task = data.dates_task(n=20_000, seed=0)
    print(
        f"dates: {task.sizes()}; {args.epochs} epochs of batches of {args.batch_size}; "
        f"device {device}, {torch.get_num_threads()} CPU threads, {platform.processor() or '?'}"
    )
    results = [train(True, task, args), train(False, task, args)]
    print(f"{'model':10s} {'time to 95%':>12s} {'steps':>6s} {'final':>7s} {'tokens/s':>10s}")
    for r in results:
        to_target = "not reached" if r["to_target"] is None else f"{r['to_target']:.1f} s"
        steps = "-" if r["steps_to_target"] is None else str(r["steps_to_target"])
        print(
            f"{r['name']:10s} {to_target:>12s} {steps:>6s} {r['final']:>7.1%} "
            f"{r['tokens_per_second']:>10,.0f}"
        )
    att, base = results
    if att["to_target"] is not None and base["to_target"] is not None:
        print(
            f"to 95%: baseline / attention = {base['steps_to_target'] / att['steps_to_target']:.2f}"
            f" in steps, {base['to_target'] / att['to_target']:.2f} in seconds"
        )
    elif att["to_target"] is not None:
        print(
            f"time to 95%: the baseline did not reach 95% in {args.epochs} epochs "
            f"({base['train_seconds']:.1f} s); the attention model took {att['to_target']:.1f} s "
            f"= {att['to_target'] / base['train_seconds']:.2f} of the baseline's training time"
        )
    print(
        f"final exact match: attention {att['final']:.1%} vs baseline {base['final']:.1%} "
        f"(difference {100 * (att['final'] - base['final']):+.1f} points)"
    )
    print(
        "throughput: attention / baseline = "
        f"{att['tokens_per_second'] / base['tokens_per_second']:.2f} (attention scores every "
        "source position at every step, and the course's module recomputes W_k h_i each time)"
    )


if __name__ == "__main__":
    main()
