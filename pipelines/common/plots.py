"""Plots written by training and prediction (matplotlib, Agg backend, never a screen)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

import numpy as np


def pyplot() -> ModuleType:
    """``matplotlib.pyplot`` on the Agg backend (never a screen), imported lazily because it is slow to import."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_curves(history: Sequence[dict[str, float]], path: Path) -> Path:
    """Training loss and every validation metric against epoch."""
    plt = pyplot()
    epochs = [h["epoch"] for h in history]
    keys = [k for k in (history[0] if history else {}) if k not in ("epoch", "lr", "seconds")]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for k in keys:
        ax = axes[0] if "loss" in k else axes[1]
        ax.plot(epochs, [h.get(k, np.nan) for h in history], marker=".", label=k)
    axes[0].set_title("loss")
    axes[1].set_title("validation")
    for ax in axes:
        ax.set_xlabel("epoch")
        if ax.lines:
            ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def plot_overlay(image: np.ndarray, labels: np.ndarray, colors: dict[int, str], path: Path, title: str = "") -> Path:
    """One 2D slice with a label overlay.

    Args:
        image: (H, W) greyscale slice.
        labels: (H, W) integer labels.
        colors: label value → matplotlib colour.
        path: PNG to write.
        title: figure title (no patient identifiers).
    """
    plt = pyplot()
    from matplotlib.colors import ListedColormap

    fig, ax = plt.subplots(figsize=(5, 5))
    ax.imshow(image.T, cmap="gray", origin="lower")
    for value, color in colors.items():
        mask = np.ma.masked_where(labels.T != value, np.ones_like(labels.T, dtype=float))
        ax.imshow(mask, cmap=ListedColormap([color]), alpha=0.45, origin="lower", vmin=0, vmax=1)
    ax.set_axis_off()
    if title:
        ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
