"""The Grad-CAM figures say what they show: their title, a labelled colour bar on both, and the overlay's hottest
colour where the map peaks, in the figure and in the PNG written from it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from matplotlib import colormaps
from matplotlib.figure import Figure
from PIL import Image

from pipelines.common.plots import CAM_COLORBAR_LABEL, cam_blend, cam_figures, save_figure

GREY = 128


def _peaked_cam(h: int, w: int, row: int, col: int, sigma: float) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w]
    return np.exp(-((yy - row) ** 2 + (xx - col) ** 2) / (2 * sigma**2)).astype(np.float32)


def png_pixel(fig_png: Path, fig: Figure, x: float, y: float) -> np.ndarray:
    """The PNG's RGB (0-1) at data point ``(x, y)`` of the figure's first axes (the figure was saved to it)."""
    ax = fig.axes[0]
    with Image.open(fig_png) as im:
        pixels = np.asarray(im.convert("RGB"), dtype=np.float64) / 255.0
    dx, dy = ax.transData.transform((x, y))
    return pixels[int(pixels.shape[0] - dy), int(dx)]


def test_the_figures_are_titled_and_both_have_the_labelled_colour_bar() -> None:
    image = np.full((46, 70, 3), GREY, np.uint8)
    figures = cam_figures(image, _peaked_cam(8, 8, 2, 5, 1.0), "DC, p = 0.612 (subtype head)")
    for fig in figures:
        image_ax, bar = fig.axes
        assert image_ax.get_title() == "DC, p = 0.612 (subtype head)"
        assert bar.get_ylabel() == CAM_COLORBAR_LABEL == "Grad-CAM, relative (0-1)"
        assert bar.get_ylim() == (0.0, 1.0)
    assert cam_figures(image, np.zeros((4, 4))).heatmap.axes[0].get_title() == "Grad-CAM"


def test_the_blend_is_the_colormap_over_the_image() -> None:
    image = np.random.default_rng(0).integers(0, 256, (30, 40, 3), dtype=np.uint8)
    cam = np.zeros((30, 40), np.float32)
    cam[12, 31] = 1.0
    blend = cam_blend(image, cam, alpha=0.4, cmap="jet")
    top = np.asarray(colormaps["jet"](1.0)[:3])
    bottom = np.asarray(colormaps["jet"](0.0)[:3])
    np.testing.assert_allclose(blend[12, 31], 0.6 * image[12, 31] / 255.0 + 0.4 * top, atol=1e-6)
    np.testing.assert_allclose(blend[0, 0], 0.6 * image[0, 0] / 255.0 + 0.4 * bottom, atol=1e-6)
    shown = cam_figures(image, cam, alpha=0.4).overlay.axes[0].images[0].get_array()
    np.testing.assert_allclose(np.asarray(shown), blend)
    with pytest.raises(ValueError, match="alpha"):
        cam_blend(image, cam, alpha=1.5)


def test_the_saved_pictures_are_hottest_where_the_map_peaks(tmp_path: Path) -> None:
    """A uniform grey image and a map peaking at a known cell: in both PNGs the top colour of the colormap (blended
    with the grey in the overlay) is at the peak, and the overlay's pixels of that colour lie around it."""
    height, width, alpha = 230, 350, 0.45
    cam = _peaked_cam(16, 16, 11, 4, 1.5)
    figures = cam_figures(np.full((height, width, 3), GREY, np.uint8), cam, "t", alpha=alpha)
    heat = save_figure(figures.heatmap, tmp_path / "heat.png")
    overlay = save_figure(figures.overlay, tmp_path / "overlay.png")
    top = np.asarray(colormaps["jet"](1.0)[:3])
    np.testing.assert_allclose(png_pixel(heat, figures.heatmap, 4, 11), top, atol=3 / 255)
    x, y = (4 + 0.5) * width / 16, (11 + 0.5) * height / 16  # the peak cell's centre, in image pixels
    hottest = (1 - alpha) * GREY / 255 + alpha * top
    np.testing.assert_allclose(png_pixel(overlay, figures.overlay, x - 0.5, y - 0.5), hottest, atol=6 / 255)
    # every overlay pixel of (about) that colour is within one map cell of the peak
    ax = figures.overlay.axes[0]
    with Image.open(overlay) as im:
        pixels = np.asarray(im.convert("RGB"), dtype=np.float64) / 255.0
    rows, cols = np.nonzero(np.abs(pixels - hottest).max(axis=2) < 6 / 255)
    assert rows.size > 0
    data = ax.transData.inverted().transform(np.stack([cols + 0.5, pixels.shape[0] - rows - 0.5], axis=1))
    assert np.abs(data[:, 0] + 0.5 - x).max() < width / 16
    assert np.abs(data[:, 1] + 0.5 - y).max() < height / 16
