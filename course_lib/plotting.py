"""Plots the chapters share: attention heatmaps and training curves, with Hangul rendered."""

from __future__ import annotations

from importlib.util import find_spec
from pathlib import Path

import matplotlib.pyplot as plt
import torch
from matplotlib import font_manager

# NanumGothic ships inside koreanize-matplotlib (a pinned dependency), so Korean labels render
# on any machine without a system font and without a download. Only its font files are used:
# importing that package would restyle every plot as a side effect.
_FONTS = Path(find_spec("koreanize_matplotlib").submodule_search_locations[0]) / "fonts"
for _ttf in sorted(_FONTS.glob("NanumGothic*.ttf")):
    font_manager.fontManager.addfont(str(_ttf))
# DejaVu Sans (matplotlib's default, with the math minus sign) first; Hangul falls back to Nanum.
plt.rcParams["font.family"] = ["DejaVu Sans", "NanumGothic"]


def attention_heatmap(
    weights: torch.Tensor,
    x_labels: list[str] | None = None,
    y_labels: list[str] | None = None,
    title: str = "",
    ax: plt.Axes | None = None,
    annotate: bool | None = None,
) -> plt.Axes:
    """Draw attention weights: one row per query, one column per key.

    Shape: weights (L, S).
    """
    weights = weights.detach().float().cpu()
    if weights.dim() != 2:
        raise ValueError(f"weights must have shape (L, S), got {tuple(weights.shape)}")
    L, S = weights.shape
    if ax is None:
        _, ax = plt.subplots(figsize=(1.0 + 0.6 * S, 0.8 + 0.45 * L))
    image = ax.imshow(weights, cmap="viridis", vmin=0.0, vmax=1.0, aspect="auto")
    ax.figure.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    ax.set_xticks(range(S), x_labels if x_labels is not None else range(S), rotation=45, ha="right")
    ax.set_yticks(range(L), y_labels if y_labels is not None else range(L))
    ax.set_xlabel("keys")
    ax.set_ylabel("queries")
    if annotate is None:
        annotate = L * S <= 64
    if annotate:
        for i in range(L):
            for j in range(S):
                w = weights[i, j].item()
                ax.text(
                    j,
                    i,
                    f"{w:.2f}",
                    ha="center",
                    va="center",
                    color="black" if w > 0.6 else "white",
                    fontsize=8,
                )
    if title:
        ax.set_title(title)
    return ax
