"""Chapter 6's Transformer against torch.nn.Transformer, and against chapter 3's RNN on dates.

Run: .venv/bin/python -m benchmarks.transformer [--threads N] [--repeats 5] [--quick]

For two sizes, our ``Transformer`` and an ``nn.Transformer`` of the same configuration (post-LN,
dropout 0, ``batch_first=True``; ours with its embeddings and output layer, PyTorch's given the
same embeddings and output layer around it) get the same weights and the same batch. Each is
timed, in this one process, on one training step — forward, cross-entropy, backward, Adam —
the best of ``--repeats``. Before timing, the two are checked to give the same loss. The
ratio ours / PyTorch is what to compare across machines; absolute times depend on the
processor and on what else it is running.

Then the date task of chapters 3 and 6, in the same process: our Transformer (D = 64, H = 4,
N = 2, F = 128, no dropout, warm-up to 3e-3) and chapter 3's ``Seq2Seq`` with attention train on
the same batches of 64 until 99% exact match on 500 validation dates (evaluated every 50 steps),
and the training time of each to that target is printed with their ratio.
"""

from __future__ import annotations

import argparse
import platform
import time
import warnings

import torch
import torch.nn.functional as F
from torch import nn

from course_lib import data
from course_lib.attention import causal_mask, padding_mask
from course_lib.seq2seq import Seq2Seq, exact_match, sequence_loss
from course_lib.training import fit, warmup_linear
from course_lib.transformer import Transformer

SIZES = {"small": dict(D=64, H=4, N=2, F=256), "base-ish": dict(D=256, H=8, N=3, F=1024)}


class TorchModel(nn.Module):
    """``nn.Transformer`` with our model's embeddings, positions and output layer around it."""

    def __init__(self, ours: Transformer, D: int, H: int, N: int, F_: int):
        super().__init__()
        # the same embeddings, positions and output layer as ``ours`` (shared modules)
        self.src_embed, self.tgt_embed = ours.src_embed, ours.tgt_embed
        self.positions, self.out = ours.positions, ours.out
        with warnings.catch_warnings():  # about a nested-tensor fast path it does not take
            warnings.simplefilter("ignore", UserWarning)
            self.core = nn.Transformer(D, H, N, N, F_, dropout=0.0, batch_first=True)
        self.core.encoder.norm = self.core.decoder.norm = None  # post-LN: no final norms
        state = {}
        for stack in ("encoder", "decoder"):
            for i, layer in enumerate(getattr(ours, f"{stack}_layers")):
                for mine, theirs in (("self_attn", "self_attn"), ("cross_attn", "multihead_attn")):
                    if hasattr(layer, mine):
                        a, prefix = getattr(layer, mine), f"{stack}.layers.{i}.{theirs}"
                        qkv = [a.W_q, a.W_k, a.W_v]
                        state[f"{prefix}.in_proj_weight"] = torch.cat([m.weight for m in qkv])
                        state[f"{prefix}.in_proj_bias"] = torch.cat([m.bias for m in qkv])
                        state[f"{prefix}.out_proj.weight"] = a.W_o.weight
                        state[f"{prefix}.out_proj.bias"] = a.W_o.bias
                for name, value in layer.state_dict().items():
                    if name.startswith(("ffn.", "norm")):
                        state[f"{stack}.layers.{i}.{name.removeprefix('ffn.')}"] = value
        self.core.load_state_dict({k: v.detach().clone() for k, v in state.items()})

    def forward(self, src, src_lens, tgt_in):
        real = padding_mask(src_lens, src.shape[1])  # (B, S), True = real
        blocked = ~causal_mask(tgt_in.shape[1])  # PyTorch's polarity: True = blocked
        e_src = self.positions(self.src_embed(src))  # (B, S, D)
        e_tgt = self.positions(self.tgt_embed(tgt_in))  # (B, T, D)
        hidden = self.core(e_src, e_tgt, tgt_mask=blocked, src_key_padding_mask=~real,
                           memory_key_padding_mask=~real)  # fmt: skip
        return self.out(hidden)  # (B, T, V)


def step_fn(model, batch):
    """One training step: forward, cross-entropy over the targets, backward, Adam."""
    src, src_lens, tgt_in, tgt_out = batch
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)

    def step():
        optimizer.zero_grad()
        logits = model(src, src_lens, tgt_in)  # (B, T, V)
        loss = F.cross_entropy(logits.flatten(0, 1), tgt_out.flatten())
        loss.backward()
        optimizer.step()
        return loss.item()

    return step


def best_time(step, repeats: int) -> float:
    step()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return min(times)


def seconds_to_target(model, task, *, steps, lr, lr_schedule=None, target=0.99, every=50):
    """Train ``model`` on ``task`` until validation exact match reaches ``target``; return the
    training seconds (evaluation excluded) and steps it took, or None for each if it did not."""
    train_set, valid_set = task.encode("train"), task.encode("valid")[:500]
    history = fit(
        model,
        lambda m, b: sequence_loss(m, b.src, b.src_lens, b.tgt),
        lambda epoch: data.make_batches(train_set, 64, shuffle=True, seed=epoch),
        epochs=-(-steps // -(-len(train_set) // 64)),
        lr=lr,
        lr_schedule=lr_schedule,
        evaluate=lambda m: {"exact": exact_match(m, valid_set, 12).float().mean().item()},
        evaluate_every=every,
        stop_when=lambda metrics: metrics["exact"] >= target,
        progress=False,
        device="cpu",
    )
    last = history[-1]
    return (last.seconds, last.step) if last["exact"] >= target else (None, None)


def race_on_dates(quick: bool) -> float | None:
    """Time to 99% date exact match: our Transformer against chapter 3's RNN, one after the
    other in this process. Returns the ratio Transformer / RNN, or None if one missed."""
    dates = data.dates_task(n=400 if quick else 20_000, seed=0)
    steps, every = (4, 2) if quick else (1_000, 50)  # the schedule of chapter 6
    V_src, V_tgt = len(dates.src_vocab), len(dates.tgt_vocab)
    torch.manual_seed(0)
    ours = Transformer(V_src, V_tgt, 64, 4, 2, 128, dropout=0.0)
    results = {
        "Transformer": seconds_to_target(ours, dates, steps=steps, lr=3e-3, every=every,
                                         lr_schedule=warmup_linear(min(100, steps - 1), steps)),
    }  # fmt: skip
    torch.manual_seed(0)
    rnn = Seq2Seq(V_src, V_tgt)
    results["RNN (chapter 3)"] = seconds_to_target(rnn, dates, steps=steps, lr=3e-3, every=every)
    print(f"dates, batches of 64, until 99% validation exact match (at most {steps} steps):")
    for name, (seconds, step) in results.items():
        print(f"{name:>16s}: " + ("not reached" if seconds is None else f"{seconds:6.1f} s, "
                                  f"{step} steps"))  # fmt: skip
    (t_ours, _), (t_rnn, _) = results.values()
    if t_ours is None or t_rnn is None:
        return None
    print(f"time to 99%: Transformer / RNN = {t_ours / t_rnn:.2f}")
    return t_ours / t_rnn


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--quick", action="store_true", help="tiny sizes, one repeat (tests)")
    args = parser.parse_args(argv)
    sizes = {"tiny": dict(D=16, H=2, N=1, F=32)} if args.quick else SIZES
    B, S, T, V = (4, 6, 5, 20) if args.quick else (args.batch, 24, 20, 1000)
    repeats = 1 if args.quick else args.repeats
    torch.set_num_threads(args.threads)
    print(f"{platform.processor() or platform.machine()}, {args.threads} thread(s), torch "
          f"{torch.__version__}; B = {B}, S = {S}, T = {T}, V = {V}, float32, one training step "
          f"(forward, loss, backward, Adam), best of {repeats}")  # fmt: skip
    gen = torch.Generator().manual_seed(0)
    src = torch.randint(4, V, (B, S), generator=gen)
    src_lens = torch.randint(S // 2, S + 1, (B,), generator=gen)
    tgt = torch.randint(4, V, (B, T + 1), generator=gen)
    batch = (src, src_lens, tgt[:, :-1], tgt[:, 1:])
    ratios = {}
    print(f"{'size':>9s} {'parameters':>11s} {'ours ms':>9s} {'torch ms':>9s} {'ours/torch':>11s}")
    for name, s in sizes.items():
        torch.manual_seed(0)
        ours = Transformer(V, V, s["D"], s["H"], s["N"], s["F"], dropout=0.0).train()
        theirs = TorchModel(ours, s["D"], s["H"], s["N"], s["F"]).train()
        with torch.no_grad():
            difference = (ours(*batch[:3]) - theirs(*batch[:3])).abs().max().item()
        if difference > 1e-3:
            raise SystemExit(f"{name}: the two models disagree by {difference:.2e}")
        t_ours = best_time(step_fn(ours, batch), repeats)
        t_theirs = best_time(step_fn(theirs, batch), repeats)
        ratios[name] = t_ours / t_theirs
        n = sum(p.numel() for p in ours.parameters())
        print(f"{name:>9s} {n:11,d} {1e3 * t_ours:9.1f} {1e3 * t_theirs:9.1f} {ratios[name]:11.2f}")
    ratios["dates"] = race_on_dates(args.quick)
    return ratios


if __name__ == "__main__":
    main()
