"""Chapter 7's speed ladder: one training habit at a time, measured in one run on this device.

Run: .venv/bin/python -m benchmarks.gpu_ladder [--device cuda] [--steps 20] [--json FILE]
     [--compile] [--quick]     (or python -m course_lib.ladder, wherever course_lib is installed)

Each rung adds one thing to the one before: fp32 with PyTorch's unfused ("math") attention →
TF32 matmuls → bf16 autocast → fused attention kernels → torch.compile → fused AdamW → a
batch twice as large. Every rung trains chapter 6's Transformer (``course_lib.train``'s
"tiny" size on the CPU, "base" on CUDA) from the same initial weights on the same batches:
``--warmup-steps`` untimed steps (compilation happens there), then ``--steps`` timed ones.
It prints target tokens per second, the ratio to the first rung, peak memory (CUDA), model
FLOPs utilisation (CUDA devices whose bf16 peak it knows), and the loss after the last step,
which must stay within 3% of the first rung's (a rung that is faster because it learns
something else does not count; the larger batch may do better). ``--compile`` adds the
compile rung on the CPU too, where its C++ compilation is slow; on CUDA it always runs.
TF32 changes nothing on the CPU (only CUDA matmuls have it); the rung is kept so the ladder
reads the same everywhere.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import torch

from course_lib import train
from course_lib.training import count_tokens, to_device

# Dense bf16 tensor-core peaks (FLOP/s) from the vendors' data sheets.
BF16_PEAK = {"H100": 989e12, "H200": 989e12, "A100": 312e12}
FAST = ["--precision", "bf16", "--attention", "auto"]
RUNGS = [
    ("fp32, math attention", []),
    ("+ TF32 matmuls", ["--precision", "tf32"]),
    ("+ bf16 autocast", ["--precision", "bf16"]),
    ("+ fused attention", FAST),
    ("+ torch.compile", [*FAST, "--compile"]),
    ("+ fused AdamW", [*FAST, "--compile", "--fused-adamw"]),
    ("+ 2x batch", [*FAST, "--compile", "--fused-adamw", "--double-batch"]),
]


def step_flops(model, batch) -> float:
    """Training FLOPs of one batch: 6 per weight per token for the matmuls (forward 2,
    backward 4; encoder weights see source tokens, the rest target tokens — counted here as
    their mean), and 12·D per (query, key) pair for each attention (QKᵀ and AV)."""
    weights = sum(p.numel() for n, p in model.named_parameters()
                  if p.dim() == 2 and "embed" not in n)  # fmt: skip
    B, S = batch.src.shape
    T = batch.tgt.shape[1] - 1
    D, N = model.out.in_features, len(model.encoder_layers)
    pairs = N * (S * S + T * T + T * S)  # encoder self, decoder self, cross, per layer
    return 6 * weights * B * (S + T) / 2 + 12 * D * B * pairs


def peak_flops(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((peak for key, peak in BF16_PEAK.items() if key in name), None)


def run_rung(flags: list[str], args, device: torch.device, out: Path) -> dict:
    double = "--double-batch" in flags
    batch_size = args.batch_size * (2 if double else 1)
    common = ["--size", args.size, "--examples", str(args.examples), "--dropout", "0"]
    run = train.parse_args([*common, "--batch-size", str(batch_size), "--attention", "math",
                            "--device", str(device), "--out", str(out),
                            *(f for f in flags if f != "--double-batch")])  # fmt: skip
    torch.backends.cuda.matmul.allow_tf32 = run.precision != "fp32"  # on from its rung up
    task = train.TASKS[run.task](run.examples, run.seed)
    model, optimizer, scaler = train.build(run, task, device)
    trained = torch.compile(model) if run.compile else model
    autocast = train.autocast_for(run, device)
    batches = train.epoch_batches(task.encode("train"), batch_size, seed=0, epoch=0)
    total = args.warmup_steps + args.steps
    if len(batches) < total:
        raise SystemExit(f"{len(batches)} batches for {total} steps: raise --examples")
    batches = [to_device(b, device) for b in batches[:total]]

    def loss_of(model, batch):
        return train.loss_fn(model, batch, label_smoothing=0.0)

    def one_step(batch):
        with train.attention_kernels(run):
            return train.train_step(trained, optimizer, scaler, [batch], loss_of,
                                    autocast=autocast, clip=1.0)  # fmt: skip

    start = time.perf_counter()
    for batch in batches[: args.warmup_steps]:
        one_step(batch)
    warmup = time.perf_counter() - start
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    timed = batches[args.warmup_steps :]
    start = time.perf_counter()
    for batch in timed:
        loss = one_step(batch)  # returns a float: waits for the device
    seconds = time.perf_counter() - start
    flops = sum(step_flops(model, b) for b in timed)
    peak = peak_flops(device)
    memory = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
    return {
        "tokens_per_second": sum(count_tokens(b) for b in timed) / seconds,
        "warmup_seconds": warmup,
        "loss": loss,
        "peak_memory_mib": memory,
        "mfu": flops / seconds / peak if peak else None,
        "double_batch": double,
    }


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--size", default=None, help="default: base on CUDA, tiny on the CPU")
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup-steps", type=int, default=3)
    parser.add_argument("--examples", type=int, default=4_000)
    parser.add_argument("--compile", action="store_true", help="the compile rung on the CPU")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--quick", action="store_true", help="a few steps per rung (tests)")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    args.size = args.size or ("base" if cuda else "tiny")
    args.batch_size = args.batch_size or (128 if cuda else 32)
    if args.quick:
        args.steps, args.warmup_steps, args.examples, args.batch_size = 2, 1, 300, 8
    compiling = cuda or args.compile
    rungs = [(rung, [f for f in flags if compiling or f != "--compile"])
             for rung, flags in RUNGS if compiling or rung != "+ torch.compile"]  # fmt: skip
    name = torch.cuda.get_device_name(device) if cuda else (platform.processor() or "CPU")
    print(f"{name}, torch {torch.__version__}, {torch.get_num_threads()} CPU threads; size "
          f"{args.size}, batches of {args.batch_size}, {args.warmup_steps} untimed + "
          f"{args.steps} timed steps per rung")  # fmt: skip
    with tempfile.TemporaryDirectory() as out:
        results = [{"rung": r, **run_rung(f, args, device, Path(out))} for r, f in rungs]
    base = results[0]
    print(f"{'rung':24s} {'tokens/s':>10s} {'× first':>8s} {'peak MiB':>9s} {'MFU':>6s} "
          f"{'loss':>7s} {'warm-up s':>9s}")  # fmt: skip
    for r in results:
        r["speedup"] = r["tokens_per_second"] / base["tokens_per_second"]
        low_ok = r["double_batch"] or r["loss"] >= base["loss"] / 1.03  # a larger batch may win
        r["loss_ok"] = low_ok and r["loss"] <= base["loss"] * 1.03
        memory = f"{r['peak_memory_mib']:9.0f}" if r["peak_memory_mib"] else f"{'-':>9s}"
        mfu = f"{r['mfu']:6.1%}" if r["mfu"] else f"{'-':>6s}"
        flag = "" if r["loss_ok"] else "!"
        print(f"{r['rung']:24s} {r['tokens_per_second']:10,.0f} {r['speedup']:8.2f} {memory} "
              f"{mfu} {r['loss']:7.3f}{flag} {r['warmup_seconds']:9.1f}")  # fmt: skip
    failures = [r["rung"] for r in results if not r["loss_ok"]]
    if failures:
        print("loss more than 3% off the first rung's (marked !):", ", ".join(failures))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        meta = {"device": name, "torch": torch.__version__, "size": args.size,
                "batch_size": args.batch_size, "steps": args.steps,
                "date": time.strftime("%Y-%m-%d")}  # fmt: skip
        args.json.write_text(json.dumps({"meta": meta, "rungs": results}, indent=1) + "\n")
    return results


if __name__ == "__main__":
    main()
