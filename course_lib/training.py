"""Training on a laptop: a seeded loop with a progress bar, validation, and checkpoints.

:func:`fit` trains any model whose loss a function computes from a batch. It is deliberately
small and explicit: seed, shuffle per epoch, clip gradients, step, evaluate each epoch (or
every few steps), save a checkpoint, stop early at a target. It runs on a GPU when one is
present (:func:`default_device`) and on the CPU otherwise, with the same results up to
floating-point rounding.

Example::

    history = fit(
        model, loss_fn, lambda epoch: make_batches(train, 128, shuffle=True, seed=epoch),
        epochs=3, evaluate=lambda m: {"accuracy": exact_match(m, valid)},
        checkpoint="checkpoints/dates.pt",
    )
"""

from __future__ import annotations

import dataclasses
import math
import random
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

# Chapter 7 grows training with the pieces its exercises write into course_lib.scaling: the
# warm-up schedules, the mixed-precision accumulated step and each data-parallel rank's shard.
from course_lib.scaling import lr_factor, shard, train_step  # noqa: F401

Batches = Callable[[int], Iterable[Any]] | Iterable[Any]


def default_device() -> torch.device:
    """CUDA when a GPU is available, else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def seed_everything(seed: int) -> None:
    """Seed Python's and PyTorch's generators (CPU and every GPU)."""
    random.seed(seed)
    torch.manual_seed(seed)  # also seeds CUDA


def to_device(batch: Any, device: torch.device | str) -> Any:
    """``batch`` on ``device``: tensors, objects with ``.to``, and tuples/lists/dicts of them."""
    if isinstance(batch, torch.Tensor) or hasattr(batch, "to"):
        return batch.to(device)
    if isinstance(batch, tuple | list):
        return type(batch)(to_device(b, device) for b in batch)
    if isinstance(batch, dict):
        return {k: to_device(v, device) for k, v in batch.items()}
    return batch


def count_tokens(batch: Any) -> int:
    """Target tokens in ``batch``: its ``num_target_tokens`` if it has one, else 0."""
    return int(getattr(batch, "num_target_tokens", 0))


@dataclasses.dataclass
class Record:
    """One evaluation during training.

    ``seconds`` and ``tokens`` count the training time (evaluation excluded) and the target
    tokens trained on so far; ``tokens_per_second`` is the throughput since the previous
    record, ``tokens / seconds`` the throughput so far.
    """

    epoch: int
    step: int
    train_loss: float
    seconds: float
    tokens: int
    tokens_per_second: float
    metrics: dict[str, float]

    def __getitem__(self, name: str) -> float:
        return self.metrics[name]


def save_checkpoint(
    path: str | Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    **extra: Any,
) -> Path:
    """Save the model's (and optimizer's) state and any picklable ``extra`` to ``path``.

    The file is written next to its destination and renamed, so an interrupted save never
    leaves a half-written checkpoint.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {
        "model": model.state_dict(),
        "optimizer": None if optimizer is None else optimizer.state_dict(),
        "extra": extra,
    }
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    tmp.replace(path)
    return path


def load_checkpoint(
    path: str | Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    map_location: torch.device | str | None = None,
) -> dict[str, Any]:
    """Load a checkpoint written by :func:`save_checkpoint` into ``model`` (and ``optimizer``).

    Returns the ``extra`` values that were saved with it. A checkpoint saved on a GPU loads on
    a CPU-only machine: tensors go to ``map_location``, by default the model's device.
    """
    if map_location is None:
        map_location = next(model.parameters()).device
    state = torch.load(Path(path), map_location=map_location, weights_only=False)
    model.load_state_dict(state["model"])
    if optimizer is not None and state["optimizer"] is not None:
        optimizer.load_state_dict(state["optimizer"])
    return state["extra"]


def warmup_linear(warmup_steps: int, total_steps: int) -> Callable[[int], float]:
    """A learning-rate factor for :func:`fit`: a linear rise from 1/warmup_steps to 1 over
    ``warmup_steps`` steps, then a linear decay to 0 at ``total_steps``."""
    if not 0 < warmup_steps < total_steps:
        raise ValueError(f"need 0 < warmup_steps < total_steps, got {warmup_steps}, {total_steps}")

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        return max(0.0, (total_steps - step) / (total_steps - warmup_steps))

    return factor


def fit(
    model: nn.Module,
    loss_fn: Callable[[nn.Module, Any], torch.Tensor],
    train_batches: Batches,
    *,
    epochs: int,
    lr: float = 3e-3,
    optimizer: torch.optim.Optimizer | None = None,
    evaluate: Callable[[nn.Module], dict[str, float]] | None = None,
    evaluate_every: int | None = None,
    stop_when: Callable[[dict[str, float]], bool] | None = None,
    lr_schedule: Callable[[int], float] | None = None,
    clip_norm: float | None = 1.0,
    seed: int = 0,
    device: torch.device | str | None = None,
    checkpoint: str | Path | None = None,
    resume: bool = False,
    progress: bool = True,
    desc: str = "training",
) -> list[Record]:
    """Train ``model`` with Adam, evaluating after every epoch (or ``evaluate_every`` steps).

    Args:
        model: moved to ``device`` (default: :func:`default_device`).
        loss_fn: ``loss_fn(model, batch)`` returns the scalar loss of a batch.
        train_batches: ``train_batches(epoch)`` gives that epoch's batches (reshuffle with the
            epoch as seed for a reproducible order), or a re-iterable collection of batches.
        epochs: passes over the training batches.
        lr: Adam's learning rate, when no ``optimizer`` is given.
        evaluate: ``evaluate(model)`` returns metrics (e.g. validation accuracy); it runs in
            eval mode without gradients.
        evaluate_every: evaluate every this many steps too, not only after each epoch.
        stop_when: ``stop_when(metrics)`` true stops training early (e.g. accuracy ≥ 0.95).
        lr_schedule: the learning rate of step ``s`` (0, 1, ...) is the optimizer's initial
            rate × ``lr_schedule(s)`` (e.g. :func:`warmup_linear`); None: constant.
        clip_norm: clip the gradient norm to this (RNNs' exploding gradients); None: no clip.
        seed: seeds the generators before training, for reproducible runs.
        checkpoint: save model, optimizer and history there after each epoch.
        resume: continue from ``checkpoint`` if it exists (the epochs it holds are skipped).
        progress: show a tqdm progress bar per epoch (on stderr) and print a summary line
            per epoch (on stdout).

    Returns:
        the history: one :class:`Record` per evaluation (per epoch when ``evaluate`` is None).
    """
    if epochs < 0:
        raise ValueError(f"epochs must be non-negative, got {epochs}")
    device = torch.device(device) if device is not None else default_device()
    model.to(device)
    seed_everything(seed)
    if optimizer is None:
        optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    base_lrs = [group.setdefault("initial_lr", group["lr"]) for group in optimizer.param_groups]
    history: list[Record] = []
    first_epoch, step, train_seconds, train_tokens = 0, 0, 0.0, 0
    if resume and checkpoint is not None and Path(checkpoint).exists():
        extra = load_checkpoint(checkpoint, model, optimizer, map_location=device)
        history = [Record(**r) for r in extra.get("history", [])]
        first_epoch, step = extra.get("epoch", -1) + 1, extra.get("step", 0)
        train_seconds = history[-1].seconds if history else 0.0
        train_tokens = history[-1].tokens if history else 0
        if extra.get("rng") is not None:
            torch.set_rng_state(extra["rng"])

    def record(epoch: int, losses: list[float], tokens: int, seconds: float) -> Record:
        metrics: dict[str, float] = {}
        if evaluate is not None:
            model.eval()
            with torch.no_grad():
                metrics = dict(evaluate(model))
            model.train()
        entry = Record(
            epoch=epoch,
            step=step,
            train_loss=sum(losses) / max(1, len(losses)),
            seconds=train_seconds,
            tokens=train_tokens,
            tokens_per_second=tokens / seconds if seconds > 0 else math.nan,
            metrics=metrics,
        )
        history.append(entry)
        return entry

    stopped = False
    model.train()
    for epoch in range(first_epoch, epochs):
        batches = train_batches(epoch) if callable(train_batches) else train_batches
        losses: list[float] = []
        tokens, window = 0, 0.0
        bar = tqdm(
            batches,
            desc=f"{desc} {epoch + 1}/{epochs}",
            disable=not progress,
            mininterval=0.5,
            unit="batch",
        )
        last = time.perf_counter()  # training time counts batching, not evaluation
        for batch in bar:
            batch = to_device(batch, device)
            loss = loss_fn(model, batch)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if clip_norm is not None:
                nn.utils.clip_grad_norm_(model.parameters(), clip_norm)
            if lr_schedule is not None:  # from the step count, so a resumed run continues it
                for group, base_lr in zip(optimizer.param_groups, base_lrs, strict=True):
                    group["lr"] = base_lr * lr_schedule(step)
            optimizer.step()
            losses.append(loss.item())  # waits for the GPU, so the timing below is honest
            now = time.perf_counter()
            train_seconds += now - last
            window += now - last
            step += 1
            tokens += count_tokens(batch)
            train_tokens += count_tokens(batch)
            bar.set_postfix(loss=f"{losses[-1]:.3f}", refresh=False)
            if evaluate_every and step % evaluate_every == 0:
                entry = record(epoch, losses[-evaluate_every:], tokens, window)
                tokens, window = 0, 0.0
                if stop_when is not None and stop_when(entry.metrics):
                    stopped = True
                    break
            last = time.perf_counter()
        bar.close()
        if not stopped and (not evaluate_every or step % evaluate_every != 0):
            entry = record(epoch, losses, tokens, window)
            stopped = stop_when is not None and evaluate is not None and stop_when(entry.metrics)
        if progress:
            shown = ", ".join(f"{k} {v:.3f}" for k, v in history[-1].metrics.items())
            tqdm.write(
                f"epoch {epoch + 1}/{epochs}: train loss {history[-1].train_loss:.3f}"
                + (f", {shown}" if shown else "")
                + f" ({train_seconds:.0f} s)"
            )
        if checkpoint is not None:
            save_checkpoint(
                checkpoint,
                model,
                optimizer,
                epoch=epoch,
                step=step,
                history=[dataclasses.asdict(r) for r in history],
                rng=torch.get_rng_state(),
            )
        if stopped:
            break
    model.eval()
    return history
