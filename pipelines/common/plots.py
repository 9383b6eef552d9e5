"""Plots written by training and prediction (matplotlib's object API on an Agg canvas, never a screen).

No pyplot: its figure manager and current figure are process-wide state, and the service draws explanations
from several threads at once. Each plot owns a :class:`~matplotlib.figure.Figure` with its own Agg canvas, so
concurrent plots share nothing and nothing is left open afterwards.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def new_figure(figsize: tuple[float, float]) -> Figure:
    """A figure on its own Agg canvas (imported lazily: matplotlib is slow to import).

    Args:
        figsize: ``(width, height)`` in inches.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize)
    FigureCanvasAgg(fig)
    return fig


def plot_curves(history: Sequence[dict[str, float]], path: Path) -> Path:
    """Training loss and every validation metric against epoch."""
    epochs = [h["epoch"] for h in history]
    keys = [k for k in (history[0] if history else {}) if k not in ("epoch", "lr", "seconds")]
    fig = new_figure((10, 4))
    axes = fig.subplots(1, 2)
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
    from matplotlib.colors import ListedColormap

    fig = new_figure((5, 5))
    ax = fig.subplots()
    ax.imshow(image.T, cmap="gray", origin="lower")
    for value, color in colors.items():
        mask = np.ma.masked_where(labels.T != value, np.ones_like(labels.T, dtype=float))
        ax.imshow(mask, cmap=ListedColormap([color]), alpha=0.45, origin="lower", vmin=0, vmax=1)
    ax.set_axis_off()
    if title:
        ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    return path


def _resize_map(cam: np.ndarray, height: int, width: int) -> np.ndarray:
    """A 2D map resized to ``(height, width)`` with bilinear interpolation (Pillow, float mode)."""
    from PIL import Image

    if cam.shape == (height, width):
        return cam
    resized = Image.fromarray(np.ascontiguousarray(cam, dtype=np.float32), mode="F").resize(
        (width, height), Image.Resampling.BILINEAR
    )
    return np.asarray(resized, dtype=np.float32)


def plot_cam(
    image: np.ndarray,
    cam: np.ndarray,
    heatmap_path: Path,
    overlay_path: Path,
    title: str = "",
    alpha: float = 0.45,
    cmap: str = "jet",
) -> tuple[Path, Path]:
    """A Grad-CAM map as a heatmap with a colour bar and as an overlay on the image.

    Args:
        image: ``(H, W, 3)`` uint8 RGB image (``(H, W)`` greyscale is accepted).
        cam: ``(h, w)`` map in ``[0, 1]`` (e.g. one map of :func:`pipelines.common.explain.grad_cam`); resized to
            the image with bilinear interpolation for the overlay.
        heatmap_path: PNG for the map alone.
        overlay_path: PNG for the image blended with the coloured map.
        title: figure title (no patient identifiers).
        alpha: weight of the coloured map in the overlay.
        cmap: matplotlib colormap of the map.

    Returns:
        ``(heatmap_path, overlay_path)``.

    Raises:
        ValueError: if the image is not ``(H, W, 3)``/``(H, W)``, the map is not 2D or holds NaN, or ``alpha``
            is outside ``[0, 1]``.
    """
    image = np.asarray(image)
    cam = np.asarray(cam, dtype=np.float32)
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=2)
    if image.ndim != 3 or image.shape[2] != 3 or min(image.shape[:2]) < 1:
        raise ValueError(f"image must be (H, W, 3) RGB; got shape {image.shape}")
    if cam.ndim != 2 or min(cam.shape) < 1:
        raise ValueError(f"cam must be a 2D map (h, w); got shape {cam.shape}")
    if not np.isfinite(cam).all():
        raise ValueError("cam contains NaN or infinite values")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    cam = np.clip(cam, 0.0, 1.0)
    from matplotlib import colormaps

    fig = new_figure((5.5, 4.5))
    ax = fig.subplots()
    shown = ax.imshow(cam, cmap=cmap, vmin=0.0, vmax=1.0, interpolation="nearest")
    fig.colorbar(shown, ax=ax, fraction=0.046, pad=0.04)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(f"Grad-CAM: {title}" if title else "Grad-CAM")
    fig.tight_layout()
    heatmap_path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(heatmap_path, dpi=100)

    height, width = image.shape[:2]
    resized = _resize_map(cam, height, width).clip(0.0, 1.0)
    rgb = image.astype(np.float32) / (255.0 if image.dtype == np.uint8 else max(float(image.max()), 1.0))
    blend = (1.0 - alpha) * rgb + alpha * colormaps[cmap](resized)[..., :3]
    # about the image's own size, within 4-12 inches at 100 dpi
    fig_w = min(max(width / 100.0, 4.0), 12.0)
    fig = new_figure((fig_w, fig_w * height / width + 0.5))
    ax = fig.subplots()
    ax.imshow(blend.clip(0.0, 1.0), interpolation="bilinear")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(title or "Grad-CAM overlay")
    fig.tight_layout()
    overlay_path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(overlay_path, dpi=100)
    return heatmap_path, overlay_path


def plot_confusion_matrix(
    cm: np.ndarray, labels: Sequence[str], path: Path, title: str = "", normalise: bool = True
) -> Path:
    """A confusion matrix with each cell's count and its row-normalised rate.

    Args:
        cm: ``(K, K)`` counts, rows the true class and columns the predicted one.
        labels: the K class names, in the matrix's order.
        path: PNG to write.
        title: figure title.
        normalise: colour cells by the row-normalised rate (the recall of each true class) and annotate it
            under the count; ``False`` colours by count and annotates counts only.

    Returns:
        ``path``.

    Raises:
        ValueError: if ``cm`` is not square, has negative or non-finite entries, or ``labels`` has not K names.
    """
    cm = np.asarray(cm)
    if cm.ndim != 2 or cm.shape[0] != cm.shape[1] or cm.shape[0] < 1:
        raise ValueError(f"cm must be a square (K, K) matrix; got shape {cm.shape}")
    if len(labels) != cm.shape[0]:
        raise ValueError(f"labels has {len(labels)} names for a {cm.shape[0]}×{cm.shape[1]} matrix")
    counts = cm.astype(np.float64)
    if not np.isfinite(counts).all() or (counts < 0).any():
        raise ValueError("cm must hold non-negative finite counts")
    totals = counts.sum(axis=1, keepdims=True)
    rates = np.divide(counts, totals, out=np.zeros_like(counts), where=totals > 0)
    shown = rates if normalise else counts
    vmax = 1.0 if normalise else max(float(counts.max()), 1.0)

    k = cm.shape[0]
    side = min(max(1.0 + 0.9 * k, 4.0), 14.0)
    fig = new_figure((side + 1.0, side))
    ax = fig.subplots()
    image = ax.imshow(shown, cmap="Blues", vmin=0.0, vmax=vmax)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="row rate" if normalise else "count")
    integral = np.allclose(counts, np.round(counts))
    for i in range(k):
        for j in range(k):
            text = f"{counts[i, j]:.0f}" if integral else f"{counts[i, j]:.3g}"
            if normalise and totals[i, 0] > 0:
                text += f"\n{rates[i, j]:.0%}"
            dark = shown[i, j] > 0.55 * vmax
            ax.text(j, i, text, ha="center", va="center", fontsize=9, color="white" if dark else "black")
    ax.set_xticks(
        range(k), [str(label) for label in labels], rotation=45 if k > 3 else 0, ha="right" if k > 3 else "center"
    )
    ax.set_yticks(range(k), [str(label) for label in labels])
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if title:
        ax.set_title(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    return path
