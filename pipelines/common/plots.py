"""Plots written by training and prediction (matplotlib's object API on an Agg canvas, never a screen).

No pyplot: its figure manager and current figure are process-wide state, and the service draws explanations
from several threads at once. Each plot owns a :class:`~matplotlib.figure.Figure` with its own Agg canvas, so
concurrent plots share nothing and nothing is left open afterwards.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

import numpy as np

if TYPE_CHECKING:
    from matplotlib.figure import Figure

#: dots per inch of the Grad-CAM figures, on screen and in their files
FIGURE_DPI = 100.0


def new_figure(figsize: tuple[float, float], dpi: float | None = None) -> Figure:
    """A figure on its own Agg canvas (imported lazily: matplotlib is slow to import).

    Args:
        figsize: ``(width, height)`` in inches.
        dpi: the figure's dots per inch (matplotlib's default when ``None``).
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize, dpi=dpi)
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


def _resize_map(cam: np.ndarray, height: int, width: int) -> np.ndarray:
    """A 2D map resized to ``(height, width)`` with bilinear interpolation (Pillow, float mode)."""
    from PIL import Image

    if cam.shape == (height, width):
        return cam
    resized = Image.fromarray(np.ascontiguousarray(cam, dtype=np.float32), mode="F").resize(
        (width, height), Image.Resampling.BILINEAR
    )
    return np.asarray(resized, dtype=np.float32)


#: the label of a Grad-CAM colour bar: each map is scaled to its own maximum, so its values are relative
CAM_COLORBAR_LABEL = "Grad-CAM, relative (0-1)"


class CamFigures(NamedTuple):
    """The two pictures of a Grad-CAM map, not yet saved (:func:`cam_figures`)."""

    heatmap: Figure
    overlay: Figure


def cam_blend(image: np.ndarray, cam: np.ndarray, alpha: float = 0.45, cmap: str = "jet") -> np.ndarray:
    """The image blended with the coloured map: ``(1 - alpha) · image + alpha · cmap(cam)``, in ``[0, 1]``.

    Args:
        image: ``(H, W, 3)`` RGB (uint8, or floats scaled by their maximum) or ``(H, W)`` greyscale.
        cam: ``(h, w)`` map in ``[0, 1]``, resized to ``(H, W)`` with bilinear interpolation.
        alpha: weight of the coloured map.
        cmap: matplotlib colormap of the map.

    Returns:
        float ``(H, W, 3)`` RGB.

    Raises:
        ValueError: if the image is not ``(H, W, 3)``/``(H, W)``, the map is not 2D or holds NaN, or ``alpha``
            is outside ``[0, 1]``.
    """
    image, cam = _check_cam(image, cam, alpha)
    from matplotlib import colormaps

    height, width = image.shape[:2]
    resized = _resize_map(cam, height, width).clip(0.0, 1.0)
    rgb = image.astype(np.float32) / (255.0 if image.dtype == np.uint8 else max(float(image.max()), 1.0))
    blend = (1.0 - alpha) * rgb + alpha * colormaps[cmap](resized)[..., :3]
    return np.asarray(blend.clip(0.0, 1.0))


def _check_cam(image: np.ndarray, cam: np.ndarray, alpha: float) -> tuple[np.ndarray, np.ndarray]:
    """The image as ``(H, W, 3)`` and the map as float32 clipped to ``[0, 1]``, or a ``ValueError``."""
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
    return image, np.clip(cam, 0.0, 1.0)


def cam_figures(
    image: np.ndarray,
    cam: np.ndarray,
    title: str = "",
    alpha: float = 0.45,
    cmap: str = "jet",
    colorbar_label: str = CAM_COLORBAR_LABEL,
) -> CamFigures:
    """A Grad-CAM map as a heatmap and as an overlay on the image, each titled and with a labelled colour bar.

    Both figures have one image axes (``fig.axes[0]``, titled ``title``) and a colour bar (``fig.axes[1]``,
    labelled ``colorbar_label``) of ``cmap`` over ``[0, 1]``; the overlay shows :func:`cam_blend`. Save them
    with :func:`save_figure`.

    Args:
        image: ``(H, W, 3)`` uint8 RGB image (``(H, W)`` greyscale is accepted).
        cam: ``(h, w)`` map in ``[0, 1]`` (e.g. one map of :func:`pipelines.common.explain.grad_cam`); resized to
            the image with bilinear interpolation for the overlay.
        title: both figures' title, as given (no patient identifiers); ``"Grad-CAM"`` when empty.
        alpha: weight of the coloured map in the overlay.
        cmap: matplotlib colormap of the map.
        colorbar_label: the colour bars' label.

    Raises:
        ValueError: as :func:`cam_blend`.
    """
    image, cam = _check_cam(image, cam, alpha)
    blend = cam_blend(image, cam, alpha, cmap)
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize

    title = title or "Grad-CAM"
    heatmap = new_figure((5.5, 4.5), dpi=FIGURE_DPI)
    ax = heatmap.subplots()
    shown = ax.imshow(cam, cmap=cmap, vmin=0.0, vmax=1.0, interpolation="nearest")
    heatmap.colorbar(shown, ax=ax, fraction=0.046, pad=0.04, label=colorbar_label)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(title, fontsize=10)
    heatmap.tight_layout()

    height, width = image.shape[:2]
    # about the image's own size (and the colour bar), within 4-12 inches wide
    fig_w = min(max(width / 100.0, 4.0), 12.0)
    overlay = new_figure((fig_w + 1.0, fig_w * height / width + 0.8), dpi=FIGURE_DPI)
    ax = overlay.subplots()
    ax.imshow(blend, interpolation="bilinear")
    scale = ScalarMappable(norm=Normalize(0.0, 1.0), cmap=cmap)
    overlay.colorbar(scale, ax=ax, fraction=0.046, pad=0.04, label=colorbar_label)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(title, fontsize=10)
    overlay.tight_layout()
    return CamFigures(heatmap, overlay)


def save_figure(
    fig: Figure,
    path: Path,
    dpi: float | None = None,
    *,
    colors: int | None = None,
    max_bytes: int | None = None,
    exact: Sequence[str] = (),
) -> Path:
    """Write ``fig`` as a PNG at ``path`` (its folder made if needed), atomically: a reader never sees half a file,
    and two threads drawing the same picture leave one whole file.

    Args:
        fig: the figure; drawn at ``dpi`` (default: its own, so that pixel positions on the figure,
            ``ax.transData``, are those of the file).
        path: the PNG.
        colors: write with a palette of this many colours (fast octree) rather than RGB: a plot of lines and
            text needs few, at a fraction of the size.
        max_bytes: when the RGB PNG is larger (a noisy image compresses badly), write it with a palette of 256
            colours instead: the colours of ``exact`` kept exactly (a legend's, the background's), the others
            chosen by median cut.
        exact: matplotlib colours kept exactly by the ``max_bytes`` palette.
    """
    import io
    import os

    from matplotlib.colors import to_rgb
    from PIL import Image

    if dpi is not None:
        fig.set_dpi(dpi)
    fig.canvas.draw()
    rgb = Image.fromarray(np.asarray(fig.canvas.buffer_rgba())[..., :3])  # type: ignore[attr-defined]
    image = rgb if colors is None else rgb.quantize(colors, method=Image.Quantize.FASTOCTREE)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    if max_bytes is not None and buffer.tell() > max_bytes:
        kept = list(dict.fromkeys(exact))[:255]
        fixed = [round(255 * c) for color in kept for c in to_rgb(color)]
        chosen = rgb.quantize(256 - len(kept)).getpalette() or []
        palette = Image.new("P", (1, 1))
        palette.putpalette(fixed + chosen[: 3 * (256 - len(kept))])
        buffer = io.BytesIO()
        rgb.quantize(palette=palette, dither=Image.Dither.NONE).save(buffer, format="PNG")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{id(buffer)}.tmp")
    try:
        tmp.write_bytes(buffer.getvalue())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def plot_cam(
    image: np.ndarray,
    cam: np.ndarray,
    heatmap_path: Path,
    overlay_path: Path,
    title: str = "",
    alpha: float = 0.45,
    cmap: str = "jet",
) -> tuple[Path, Path]:
    """:func:`cam_figures` saved: the heatmap at ``heatmap_path``, the overlay at ``overlay_path``.

    Returns:
        ``(heatmap_path, overlay_path)``.

    Raises:
        ValueError: as :func:`cam_blend`.
    """
    figures = cam_figures(image, cam, title, alpha=alpha, cmap=cmap)
    return save_figure(figures.heatmap, heatmap_path), save_figure(figures.overlay, overlay_path)


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
