"""Chapter 4's MultiHeadAttention against torch.nn.MultiheadAttention, forward and backward.

Run: .venv/bin/python -m benchmarks.multihead [--lengths 64 256 1024] [--threads N] [--quick]

For each sequence length L, the three modules below get the same weights and the same batch
(self-attention, B = 4, D = 256, H = 4, float32, training mode, dropout 0) and are timed, in
this one process, on one forward and backward pass (the best of ``--repeats`` runs):

* ``explicit``: ``MultiHeadAttention(...)(x, x, x)``, which forms the (B, H, L, L) weights with
  chapter 2's ``scaled_dot_product_attention``;
* ``fused``: the same module with ``need_weights=False``, which calls
  ``F.scaled_dot_product_attention`` on the split heads (a fused kernel on the CPU as well);
* ``torch``: ``nn.MultiheadAttention(..., batch_first=True)`` with ``need_weights=False``.

Before timing, the outputs and the input gradients of the three are checked to agree. The
ratios printed — fused / torch and explicit / fused — are what to compare across machines;
absolute times depend on the processor and on what else it is doing.
"""

from __future__ import annotations

import argparse
import platform
import time

import torch
from torch import nn

from course_lib.multihead import MultiHeadAttention


def twins(D: int, H: int) -> tuple[MultiHeadAttention, nn.MultiheadAttention]:
    """Our module and PyTorch's, holding the same weights."""
    ours = MultiHeadAttention(D, H)
    theirs = nn.MultiheadAttention(D, H, batch_first=True)
    with torch.no_grad():
        theirs.in_proj_weight.copy_(torch.cat([ours.W_q.weight, ours.W_k.weight, ours.W_v.weight]))
        theirs.in_proj_bias.copy_(torch.cat([ours.W_q.bias, ours.W_k.bias, ours.W_v.bias]))
        theirs.out_proj.weight.copy_(ours.W_o.weight)
        theirs.out_proj.bias.copy_(ours.W_o.bias)
    return ours, theirs


def passes(ours, theirs):
    """name -> a function running one forward and backward pass on x, returning (out, x.grad)."""

    def run(module_call):
        def step(x):
            x = x.detach().requires_grad_()
            out = module_call(x)
            out.sum().backward()
            return out.detach(), x.grad

        return step

    return {
        "explicit": run(lambda x: ours(x, x, x)[0]),
        "fused": run(lambda x: ours(x, x, x, need_weights=False)[0]),
        "torch": run(lambda x: theirs(x, x, x, need_weights=False)[0]),
    }


def best_time(step, x, repeats: int) -> float:
    step(x)  # warm-up: allocations, kernel selection
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step(x)
        times.append(time.perf_counter() - start)
    return min(times)


def main(argv: list[str] | None = None) -> dict[int, dict[str, float]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", type=int, nargs="+", default=[64, 256, 1024])
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--d-model", type=int, default=256)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--quick", action="store_true", help="tiny sizes, one repeat (tests)")
    args = parser.parse_args(argv)
    if args.quick:
        args.lengths, args.batch, args.d_model, args.repeats = [16, 32], 2, 32, 1
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print(f"{platform.processor() or platform.machine()}, {args.threads} thread(s), "
          f"torch {torch.__version__}; B = {args.batch}, D = {args.d_model}, H = {args.heads}, "
          "float32, forward + backward, best of "
          f"{args.repeats}")  # fmt: skip
    ours, theirs = twins(args.d_model, args.heads)
    steps = passes(ours, theirs)
    results: dict[int, dict[str, float]] = {}
    print(f"{'L':>6} {'explicit ms':>12} {'fused ms':>9} {'torch ms':>9}"
          f" {'fused/torch':>12} {'explicit/fused':>15}")  # fmt: skip
    for L in args.lengths:
        x = torch.randn(args.batch, L, args.d_model)
        reference_out, reference_grad = steps["torch"](x)
        for name in ("explicit", "fused"):
            out, grad = steps[name](x)
            if not (torch.allclose(out, reference_out, atol=1e-4)
                    and torch.allclose(grad, reference_grad, atol=1e-4)):  # fmt: skip
                raise SystemExit(f"{name} disagrees with nn.MultiheadAttention at L = {L}")
        t = {name: best_time(step, x, args.repeats) for name, step in steps.items()}
        results[L] = {**t, "fused/torch": t["fused"] / t["torch"]}
        results[L]["explicit/fused"] = t["explicit"] / t["fused"]
        print(f"{L:6d} {1e3 * t['explicit']:12.2f} {1e3 * t['fused']:9.2f} "
              f"{1e3 * t['torch']:9.2f} {results[L]['fused/torch']:12.2f}"
              f" {results[L]['explicit/fused']:15.2f}")  # fmt: skip
    return results


if __name__ == "__main__":
    main()
