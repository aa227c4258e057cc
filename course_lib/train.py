"""The training command: ``python -m course_lib.train`` (chapter 7).

Trains chapter 6's Transformer on one of chapter 3's tasks, on the CPU or a GPU, in one process
or data-parallel under ``torchrun``::

    python -m course_lib.train --size tiny --steps 200 --out runs/tiny
    python -m course_lib.train --size base --device cuda --precision bf16 --compile --out runs/b
    torchrun --nproc_per_node=2 -m course_lib.train --size tiny --steps 200 --out runs/ddp

It writes ``OUT/metrics.jsonl`` (one JSON object per logged step, rank 0 only) and
``OUT/checkpoint.pt`` (``model``: the model's ``state_dict``; ``optimizer``, ``scaler``,
``step``, ``args``), and ``--resume`` continues from that checkpoint exactly: the data order of
each epoch and the dropout masks of each step are functions of the seed and the step, so a
resumed run gives the same parameters as an uninterrupted one.

Data parallelism: every rank builds the same list of batches for an epoch and takes its own
shard of them (:func:`shard`); DistributedDataParallel averages the gradients, so one
optimizer step sees ``world size × --accumulate`` micro-batches, exactly the micro-batches a
single process with ``--accumulate world_size×N`` would see in the same order.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.nn.parallel import DistributedDataParallel

from course_lib import data
from course_lib.data import PAD_ID
from course_lib.grammar import GrammarTask, corpus_bleu
from course_lib.scaling import lr_factor, shard, train_step
from course_lib.seq2seq import greedy_decode
from course_lib.training import count_tokens, to_device
from course_lib.transformer import Transformer

# "base" is the paper's base model (Vaswani et al. 2017, Table 3); "tiny" trains on a laptop CPU.
SIZES = {
    "tiny": dict(d_model=64, num_heads=4, num_layers=2, d_ff=256),
    "base": dict(d_model=512, num_heads=8, num_layers=6, d_ff=2048),
}
TASKS: dict[str, Callable[[int, int], data.Task | GrammarTask]] = {
    "en-ko": lambda n, seed: data.translation_task(n, seed),
    "dates": lambda n, seed: data.dates_task(n, seed),
    "en-ko-large": lambda n, seed: GrammarTask(seed),  # n fresh sentences every epoch
}
AUTOCAST = {"bf16": torch.bfloat16, "fp16": torch.float16}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m course_lib.train", description=__doc__.split("\n")[0]
    )
    p.add_argument("--task", choices=sorted(TASKS), default="en-ko")
    p.add_argument("--examples", type=int, default=4_000,
                   help="sentences the task draws (en-ko-large: new ones each epoch)")  # fmt: skip
    p.add_argument("--size", choices=sorted(SIZES), default="tiny")
    p.add_argument("--device", default="auto", help="auto (cuda if present), cpu, cuda, cuda:1")
    p.add_argument("--precision", choices=["fp32", "tf32", "bf16", "fp16"], default="fp32")
    p.add_argument("--compile", action="store_true", help="torch.compile the model")
    p.add_argument("--attention", choices=["auto", "math"], default="auto",
                   help="math: scaled_dot_product_attention without fused kernels")  # fmt: skip
    p.add_argument("--fused-adamw", action="store_true", help="AdamW's fused kernel")
    p.add_argument("--batch-size", type=int, default=64, help="sentences per micro-batch")
    p.add_argument("--batch-tokens", type=int, default=0,
                   help="instead: sentences of similar length, up to this many padded tokens "
                   "(source + target) per micro-batch")  # fmt: skip
    p.add_argument("--accumulate", type=int, default=1, help="micro-batches per optimizer step")
    p.add_argument("--steps", type=int, default=200, help="optimizer steps in all")
    p.add_argument("--stop-at", type=int, help="stop (checkpointed) after this step; --resume")
    p.add_argument("--lr", type=float, default=1e-3, help="peak learning rate")
    p.add_argument("--schedule", choices=["noam", "cosine", "constant"], default="cosine")
    p.add_argument("--warmup", type=int, default=50, help="warm-up steps")
    p.add_argument("--label-smoothing", type=float, default=0.0)
    p.add_argument("--dropout", type=float, default=0.1)
    p.add_argument("--clip", type=float, default=1.0, help="gradient norm clip; 0: none")
    p.add_argument("--eval-every", type=int, default=0, help="exact match every N steps")
    p.add_argument("--log-every", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt")
    p.add_argument("--no-progress", action="store_true", help="no tqdm bar")
    args = p.parse_args(argv)
    for name in ("batch_size", "accumulate", "steps"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be at least 1")
    return args


def epoch_batches(
    examples, batch_size: int, seed: int, epoch: int, batch_tokens: int = 0
) -> list[data.Batch]:
    """The same padded batches on every rank, in an order fixed by the seed and the epoch.

    With ``batch_tokens``, a batch holds sentences of similar length (sorted by length, ties
    broken at random), as many as fit ``batch_tokens`` padded source + target positions:
    short sentences make large batches, and little of any batch is padding.
    """
    if not batch_tokens:
        return list(
            data.make_batches(examples, batch_size, shuffle=True, seed=seed * 100_003 + epoch)
        )
    rng = random.Random(seed * 100_003 + epoch)
    keys = [(len(src) + len(tgt), rng.random()) for src, tgt in examples]
    order = sorted(range(len(examples)), key=keys.__getitem__)
    groups, group, longest = [], [], (0, 0)
    for i in order:
        src, tgt = examples[i]
        widest = (max(longest[0], len(src)), max(longest[1], len(tgt)))
        if group and (len(group) + 1) * sum(widest) > batch_tokens:
            groups.append(group)
            group, widest = [], (len(src), len(tgt))
        group.append(examples[i])
        longest = widest
    return [data.collate(g) for g in [*groups, group]]


def loss_fn(model: nn.Module, batch: data.Batch, label_smoothing: float) -> torch.Tensor:
    """Teacher-forced cross-entropy per target token, padding ignored, computed in float32."""
    logits = model(batch.src, batch.src_lens, batch.tgt[:, :-1])  # (B, T, V)
    return F.cross_entropy(
        logits.flatten(0, 1).float(),
        batch.tgt[:, 1:].flatten(),
        ignore_index=PAD_ID,
        label_smoothing=label_smoothing,
    )


def mean_over_ranks(value: float, device: torch.device) -> float:
    """The mean of ``value`` over all ranks (for the log: each rank knows its own loss)."""
    if not dist.is_initialized():
        return value
    total = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(total)
    return total.item() / dist.get_world_size()


def setup(args) -> tuple[int, int, torch.device]:
    """(rank, world size, device); joins the process group when started by torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    if args.device == "auto":
        device = torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
    else:
        device = torch.device(args.device)
        if device.type == "cuda" and device.index is None:
            device = torch.device("cuda", local_rank)
    if world > 1:
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if args.precision == "tf32":  # only CUDA matmuls have a TF32 mode; the CPU ignores it
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    return rank, world, device


def counting_allreduce(state: dict, bucket):
    """DDP's default gradient all-reduce (sum, then divide by the world size), counted."""
    state["calls"] += 1
    buffer = bucket.buffer().div_(dist.get_world_size())
    return dist.all_reduce(buffer, async_op=True).get_future().then(lambda fut: fut.value()[0])


def build(args, task: data.Task, device: torch.device):
    """The model (the same initial weights on every rank), AdamW as in the paper (β₂ = 0.98,
    ε = 1e-9) with weight decay, and the gradient scaler (active for fp16 only)."""
    torch.manual_seed(args.seed)
    model = Transformer(len(task.src_vocab), len(task.tgt_vocab), **SIZES[args.size],
                        dropout=args.dropout).to(device)  # fmt: skip
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.98), eps=1e-9,
                                  weight_decay=0.01, fused=args.fused_adamw or None)  # fmt: skip
    scaler = torch.amp.GradScaler(device.type, enabled=args.precision == "fp16")
    return model, optimizer, scaler


def autocast_for(args, device: torch.device) -> Callable[[], contextlib.AbstractContextManager]:
    """A context for the forward pass: autocast to bf16/fp16, or nothing."""
    if args.precision not in AUTOCAST:
        return contextlib.nullcontext
    return lambda: torch.autocast(device.type, dtype=AUTOCAST[args.precision])


def attention_kernels(args) -> contextlib.AbstractContextManager:
    """``--attention math`` restricts scaled_dot_product_attention to its unfused reference
    implementation; ``auto`` lets PyTorch pick a fused kernel (flash, memory-efficient)."""
    if args.attention == "math":
        return sdpa_kernel(SDPBackend.MATH)
    return contextlib.nullcontext()


def validate(model: nn.Module, examples, max_len: int, decode_text) -> dict[str, float]:
    """Greedy decoding of ``examples`` in eval mode: the share decoded exactly right, and
    corpus BLEU (0–100) of the decoded texts; the model is left in training mode."""
    model.eval()
    device = next(model.parameters()).device
    hypotheses, references = [], []
    with torch.no_grad():
        for batch in data.make_batches(examples, 200):
            batch = batch.to(device)
            tokens, _ = greedy_decode(model, batch.src, batch.src_lens, max_len)  # (B, T)
            hypotheses += [decode_text(row) for row in tokens]
            references += [decode_text(row) for row in batch.tgt]  # BOS, PAD dropped
    model.train()
    right = sum(h == r for h, r in zip(hypotheses, references, strict=True))
    return {"exact_match": right / len(references), "bleu": corpus_bleu(hypotheses, references)}


def training_data(task, args) -> tuple[Callable[[int], list], list]:
    """(the training examples of an epoch, the first 200 validation examples) of ``task``: a
    fixed split of chapter 3's tasks, or fresh sentences every epoch from the large grammar."""
    if isinstance(task, GrammarTask):
        return (lambda epoch: task.train_examples(epoch, args.examples)), task.valid_examples(200)
    train_set = task.encode("train")
    return (lambda epoch: train_set), task.encode("valid")[:200]


def save(path: Path, model, optimizer, scaler, step: int, position, args) -> None:
    """Write the checkpoint atomically: a crash mid-write never leaves a half-written file.
    ``position`` is (epoch, steps taken in it): where ``--resume`` continues."""
    state = {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scaler": scaler.state_dict(),
        "step": step,
        "position": list(position),
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
    }
    torch.save(state, path.with_suffix(".tmp"))
    path.with_suffix(".tmp").replace(path)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    rank, world, device = setup(args)
    args.out.mkdir(parents=True, exist_ok=True)
    task = TASKS[args.task](args.examples, args.seed)
    examples_of, valid_set = training_data(task, args)
    max_len = max(len(t) for _, t in valid_set) + 2

    model, optimizer, scaler = build(args, task, device)
    step, (epoch, done), checkpoint = 0, (0, 0), args.out / "checkpoint.pt"
    if args.resume and checkpoint.exists():
        saved = torch.load(checkpoint, map_location=device, weights_only=False)
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        scaler.load_state_dict(saved["scaler"])
        step, (epoch, done) = saved["step"], saved["position"]
    comm = {"calls": 0}
    trained = model
    if world > 1:
        ids = [device.index] if device.type == "cuda" else None
        trained = DistributedDataParallel(model, device_ids=ids)
        trained.register_comm_hook(comm, counting_allreduce)
    if args.compile:
        trained = torch.compile(trained)
    autocast = autocast_for(args, device)

    def loss_of(model, batch):
        return loss_fn(model, batch, args.label_smoothing)

    main_rank = rank == 0
    log = open(args.out / "metrics.jsonl", "a" if args.resume else "w") if main_rank else None
    bar = None
    if main_rank and not args.no_progress:
        from tqdm import tqdm

        bar = tqdm(total=args.steps, initial=step, desc="training", unit="step")
    tokens, seconds = 0, 0.0
    stop = min(args.steps, args.stop_at or args.steps)
    while step < stop:
        batches = epoch_batches(examples_of(epoch), args.batch_size, args.seed, epoch,
                                args.batch_tokens)  # fmt: skip
        mine = [batches[i] for i in shard(len(batches), rank, world, epoch, args.seed)]
        per_epoch = len(mine) // args.accumulate  # the same on every rank
        if per_epoch == 0:
            raise SystemExit("fewer batches than ranks × --accumulate: use smaller batches")
        for k in range(done, per_epoch):
            micro = mine[k * args.accumulate : (k + 1) * args.accumulate]
            group = [to_device(b, device) for b in micro]
            for g in optimizer.param_groups:
                g["lr"] = args.lr * lr_factor(args.schedule, step, args.warmup, args.steps)
            torch.manual_seed(args.seed * 1_000_003 + step * 1_009 + rank)  # this step's dropout
            start = time.perf_counter()
            with attention_kernels(args):
                loss = train_step(trained, optimizer, scaler, group, loss_of, autocast=autocast,
                                  clip=args.clip or None)  # fmt: skip
            loss = mean_over_ranks(loss, device)
            seconds += time.perf_counter() - start
            tokens += sum(count_tokens(b) for b in group) * world
            step += 1
            if bar is not None:
                bar.update()
                bar.set_postfix(loss=f"{loss:.3f}", refresh=False)
            evaluate = args.eval_every and step % args.eval_every == 0
            if main_rank and (step % args.log_every == 0 or evaluate or step == stop):
                record = {
                    "step": step,
                    "epoch": epoch,
                    "loss": loss,
                    "lr": optimizer.param_groups[0]["lr"],
                    "train_seconds": seconds,
                    "tokens_per_second": tokens / seconds,
                    "allreduce_calls": comm["calls"],
                }
                if device.type == "cuda":
                    record["peak_memory_mib"] = torch.cuda.max_memory_allocated(device) / 2**20
                if evaluate:
                    record.update(validate(model, valid_set, max_len, task.decode_target))
                log.write(json.dumps(record) + "\n")
                log.flush()
                tokens, seconds = 0, 0.0
            position = (epoch, k + 1) if k + 1 < per_epoch else (epoch + 1, 0)
            if main_rank and (evaluate or step == stop):
                save(checkpoint, model, optimizer, scaler, step, position, args)
            if step >= stop:
                break
        epoch, done = position
    if bar is not None:
        bar.close()
    if log is not None:
        log.close()
    if world > 1:
        dist.barrier()  # rank 0's checkpoint is complete before anyone exits
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
