"""Argument checks for the public course_lib functions.

A wrong shape should fail at the call with a message that names the argument, what it got
and what it expected (``key has D=6 but query has D=8``), not deep inside a matmul.
"""

from __future__ import annotations

import torch


def tensor(name: str, x, layout: str) -> None:
    """``x`` is a floating tensor laid out as ``layout``, e.g. "(L, D)" or "(..., L, D)"."""
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor of shape {layout}, got {type(x).__name__}")
    dims = [d.strip() for d in layout.strip("()").split(",")]
    named = len([d for d in dims if d != "..."])
    wrong = x.dim() < named if "..." in dims else x.dim() != named
    if wrong:
        raise ValueError(f"{name} must have shape {layout}, got {tuple(x.shape)}")
    if not x.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor, got dtype {x.dtype}")


def same_size(what: str, name: str, got: int, other: str, expected: int) -> None:
    """Two arguments agree on a named size: ``key has D=6 but query has D=8``."""
    if got != expected:
        raise ValueError(f"{name} has {what}={got} but {other} has {what}={expected}")


def mask(name: str, m, shape: tuple[int, ...], layout: str) -> None:
    """``m`` is boolean (True = may attend) and broadcasts to ``shape``."""
    if not isinstance(m, torch.Tensor) or m.dtype != torch.bool:
        got = m.dtype if isinstance(m, torch.Tensor) else type(m).__name__
        raise ValueError(f"{name} must be a boolean tensor (True = may attend), got {got}")
    try:
        broadcast = torch.broadcast_shapes(tuple(m.shape), shape)
    except RuntimeError:
        broadcast = None
    if broadcast != tuple(shape):  # also rejects a mask that would enlarge the result
        raise ValueError(
            f"{name} has shape {tuple(m.shape)}, which does not broadcast to {layout}={shape}"
        )
