"""Chapter 8's benchmark: cached against full greedy decoding, chunked against full attention.

    python -m benchmarks.decoding [--quick] [--json FILE] [--chunk-size C]

1. Greedy decoding of T ∈ {32, 128, 512} tokens by a small untrained chapter-6 Transformer
   (D = 64, H = 4, 2 + 2 layers, eval mode, eos_id = -1 so that no row stops early), with
   ``seq2seq.greedy_decode`` (the whole prefix decoded again at every step) and with
   ``decoding.cached_greedy_decode``: tokens per second, their ratio, and whether the tokens
   are identical. Times are the best of a few runs, in this process, on this machine.
2. Attention at L = S ∈ {1024, 4096, 8192}, Dh = 64, one head: the naive computation
   (softmax(QKᵀ/√Dh) V with the full score matrix), PyTorch's math backend
   (``F.scaled_dot_product_attention`` under ``sdpa_kernel(SDPBackend.MATH)``) and
   ``efficient.chunked_attention``. Each case runs in a **fresh subprocess**: it builds the
   inputs, reads its peak resident set size as the baseline, runs the computation (forward
   only, no grad) and reports the peak minus that baseline, the *extra* peak memory the
   computation needed; and the best time of a few runs. The peak resident size is the
   kernel's high-water mark of this process's memory, ``VmHWM`` in ``/proc/self/status`` on
   Linux. (``resource.getrusage(RUSAGE_SELF).ru_maxrss`` is the fallback elsewhere; on Linux
   it is not used because it carries over the parent's resident size across fork and exec,
   which hides any peak smaller than the parent, here the benchmark process itself.)

Ratios are against the baseline measured in the same run; nothing here asserts a speed. The
goals the chapter states (cached ≥ 5× faster at T = 512; chunked ≥ 50× less extra peak memory
than naive at L = 8192 and at most 1.5× the math backend's time) are reported, not asserted.
``--quick`` runs the smallest size of each (a few seconds; the tests use it).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import time

import torch

D_HEAD = 64


def _best_time(fn, repeats: int) -> float:
    best = math.inf
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def decoding_case(T: int, repeats: int = 2, seed: int = 0) -> dict:
    """Full against cached greedy decoding of T tokens; tokens/s and identity."""
    from course_lib.decoding import cached_greedy_decode
    from course_lib.seq2seq import greedy_decode
    from course_lib.transformer import Transformer

    torch.manual_seed(seed)
    model = Transformer(40, 40, 64, 4, 2, 128, dropout=0.0, max_len=T + 8).eval()
    B, S = 4, 12
    src = torch.randint(4, 40, (B, S))
    src_lens = torch.tensor([S, S - 2, S - 5, S - 7])
    results = {}
    with torch.no_grad():
        for name, decode in (("full", greedy_decode), ("cached", cached_greedy_decode)):
            out = {}

            def run(decode=decode, out=out):
                out["tokens"] = decode(model, src, src_lens, T, eos_id=-1)[0]

            seconds = _best_time(run, repeats)
            results[name] = {"seconds": seconds, "tokens": out["tokens"]}
    same = bool(torch.equal(results["full"]["tokens"], results["cached"]["tokens"]))
    full_s, cached_s = results["full"]["seconds"], results["cached"]["seconds"]
    return {
        "T": T,
        "full_tokens_per_s": B * T / full_s,
        "cached_tokens_per_s": B * T / cached_s,
        "speedup": full_s / cached_s,
        "identical": same,
    }


def _attention(method: str, q, k, v, chunk_size: int):
    if method == "naive":
        scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])  # (L, S): the full matrix
        return torch.softmax(scores, dim=-1) @ v
    if method == "math":
        from torch.nn.attention import SDPBackend, sdpa_kernel

        with sdpa_kernel(SDPBackend.MATH):
            return torch.nn.functional.scaled_dot_product_attention(q, k, v)
    from course_lib.efficient import chunked_attention

    return chunked_attention(q, k, v, chunk_size=chunk_size)


def peak_rss_bytes() -> int:
    """This process's peak resident set size so far, in bytes (see the module docstring)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024  # kB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


def _measure_here(method: str, L: int, chunk_size: int, repeats: int, threads: int) -> dict:
    """Run inside the fresh subprocess: extra peak RSS and the best time of one method."""
    torch.set_num_threads(threads)
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 1, L, D_HEAD, generator=gen) for _ in range(3))
    with torch.no_grad():
        _attention(method, q[..., :64, :], k[..., :64, :], v[..., :64, :], chunk_size)  # warm up
        baseline = peak_rss_bytes()
        start = time.perf_counter()
        _attention(method, q, k, v, chunk_size)
        first = time.perf_counter() - start
        peak = peak_rss_bytes()
        rest = _best_time(lambda: _attention(method, q, k, v, chunk_size), repeats - 1)
    return {"method": method, "L": L, "extra_peak_bytes": peak - baseline,
            "seconds": min(first, rest)}  # fmt: skip


def attention_case(method: str, L: int, chunk_size: int, repeats: int, threads: int) -> dict:
    """One method at one size, measured in a fresh Python process. A fixed malloc mmap
    threshold makes every large tensor fresh pages (returned on free), so the peak resident
    size counts them, rather than heap memory freed earlier and reused."""
    code = (
        "import json, sys; from benchmarks.decoding import _measure_here; "
        f"print(json.dumps(_measure_here({method!r}, {L}, {chunk_size}, {repeats}, {threads})))"
    )
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072"}
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="the smallest sizes only")
    parser.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    parser.add_argument("--chunk-size", type=int, default=128, help="chunked attention's C")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    args = parser.parse_args(argv)
    lengths = (32,) if args.quick else (32, 128, 512)
    sizes = (1024,) if args.quick else (1024, 4096, 8192)
    repeats = 1 if args.quick else 2
    torch.set_num_threads(args.threads)

    print(f"CPU threads: {torch.get_num_threads()}; times depend on this machine and its load")
    print("\nGreedy decoding, B = 4, D = 64, H = 4, 2 + 2 layers (eos_id = -1: T tokens each)")
    print(f"{'T':>5} {'full tok/s':>11} {'cached tok/s':>13} {'speed-up':>9} {'identical':>10}")
    decoding = []
    for T in lengths:
        r = decoding_case(T, repeats)
        decoding.append(r)
        print(f"{T:5d} {r['full_tokens_per_s']:11.0f} {r['cached_tokens_per_s']:13.0f} "
              f"{r['speedup']:8.1f}× {str(r['identical']):>10}")  # fmt: skip

    print(f"\nAttention, one head, Dh = {D_HEAD}, L = S; chunked with C = {args.chunk_size}; "
          "extra peak RSS in a fresh subprocess per case")  # fmt: skip
    print(f"{'L':>6} {'method':>8} {'extra MiB':>10} {'seconds':>9} {'memory vs naive':>16} "
          f"{'time vs math':>13}")  # fmt: skip
    attention = []
    for L in sizes:
        rows = {
            m: attention_case(m, L, args.chunk_size, repeats, args.threads)
            for m in ("naive", "math", "chunked")
        }
        for method, r in rows.items():
            r["memory_ratio_vs_naive"] = rows["naive"]["extra_peak_bytes"] / max(
                r["extra_peak_bytes"], 1
            )
            r["time_ratio_vs_math"] = r["seconds"] / rows["math"]["seconds"]
            attention.append(r)
            mib = r["extra_peak_bytes"] / 2**20
            mem, tm = r["memory_ratio_vs_naive"], r["time_ratio_vs_math"]
            print(f"{L:6d} {method:>8} {mib:10.1f} {r['seconds']:9.3f} {mem:15.1f}× {tm:12.2f}×")

    results = {"decoding": decoding, "attention": attention, "chunk_size": args.chunk_size}
    last_T = decoding[-1]
    last = {r["method"]: r for r in attention if r["L"] == sizes[-1]}
    print("\nGoals (reported, not asserted):")
    print(
        f"  cached ≥ 5× faster than full at T = {last_T['T']}: {last_T['speedup']:.1f}× "
        f"({'met' if last_T['speedup'] >= 5 else 'not met'})"
    )
    mem = last["chunked"]["memory_ratio_vs_naive"]
    tm = last["chunked"]["time_ratio_vs_math"]
    print(
        f"  chunked ≥ 50× less extra peak memory than naive at L = {sizes[-1]}: {mem:.1f}× "
        f"({'met' if mem >= 50 else 'not met'})"
    )
    print(
        f"  chunked ≤ 1.5× the math backend's time at L = {sizes[-1]}: {tm:.2f}× "
        f"({'met' if tm <= 1.5 else 'not met'})"
    )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
    return results


if __name__ == "__main__":
    main()
