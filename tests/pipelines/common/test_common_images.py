"""read_rgb_image on real files of every mode it converts and on bad files; plot_cam; the confusion matrix."""

from __future__ import annotations

import struct
import time
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
from medinfer_testlib import patch_png_size
from PIL import Image, ImageFile

from pipelines.common.errors import InputError
from pipelines.common.io import read_rgb_image
from pipelines.common.plots import plot_cam, plot_confusion_matrix

H, W = 20, 30


def _rgb(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (H, W, 3), dtype=np.uint8)


def _gray(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (H, W), dtype=np.uint8)


def _save(image: Image.Image, path: Path, **kwargs: object) -> Path:
    image.save(path, **kwargs)
    return path


# ------------------------------------------------------------------------------------------------ good inputs


def test_rgb_png_is_exact_and_writable(tmp_path: Path) -> None:
    src = _rgb()
    arr, notes = read_rgb_image(_save(Image.fromarray(src), tmp_path / "rgb.png"))
    assert arr.dtype == np.uint8
    assert arr.shape == (H, W, 3)
    np.testing.assert_array_equal(arr, src)
    assert notes == []
    assert arr.flags.writeable
    assert arr.flags.c_contiguous


def test_grayscale_png_is_replicated(tmp_path: Path) -> None:
    src = _gray()
    arr, notes = read_rgb_image(_save(Image.fromarray(src, mode="L"), tmp_path / "l.png"))
    assert arr.shape == (H, W, 3)
    for c in range(3):
        np.testing.assert_array_equal(arr[..., c], src)
    assert notes == ["converted from grayscale (L) to RGB"]


def test_bilevel_bmp(tmp_path: Path) -> None:
    src = np.zeros((H, W), dtype=bool)
    src[:, : W // 2] = True
    arr, notes = read_rgb_image(_save(Image.fromarray(src).convert("1"), tmp_path / "bits.bmp"))
    assert arr.shape == (H, W, 3)
    assert (arr[:, : W // 2] == 255).all()
    assert (arr[:, W // 2 :] == 0).all()
    assert notes == ["converted from bilevel (1) to RGB"]


def test_la_png_is_composited_on_white(tmp_path: Path) -> None:
    gray = np.full((H, W), 40, dtype=np.uint8)
    alpha = np.full((H, W), 255, dtype=np.uint8)
    alpha[:, :10] = 0
    alpha[:, 10:20] = 128
    path = _save(Image.fromarray(np.stack([gray, alpha], axis=-1), mode="LA"), tmp_path / "la.png")
    arr, notes = read_rgb_image(path)
    assert (arr[:, :10] == 255).all()  # transparent → white
    assert (arr[:, 20:] == 40).all()  # opaque → the grey value
    blend = 40 * 128 / 255 + 255 * (1 - 128 / 255)
    assert np.abs(arr[:, 10:20].astype(float) - blend).max() <= 1.5
    assert notes == ["converted from grayscale with alpha (LA) to RGB", "alpha channel dropped (composited on white)"]


def test_palette_png_with_transparency(tmp_path: Path) -> None:
    index = np.zeros((H, W), dtype=np.uint8)
    index[:, W // 2 :] = 1
    im = Image.fromarray(index, mode="P")
    im.putpalette([0, 0, 0, 200, 30, 60] + [0] * (254 * 3))
    im.info["transparency"] = 0
    arr, notes = read_rgb_image(_save(im, tmp_path / "p.png", transparency=0))
    assert (arr[:, : W // 2] == 255).all()
    assert (arr[:, W // 2 :] == (200, 30, 60)).all()
    assert notes == ["converted from palette (P) to RGB", "alpha channel dropped (composited on white)"]


def test_palette_png_without_transparency(tmp_path: Path) -> None:
    src = _rgb()
    arr, notes = read_rgb_image(_save(Image.fromarray(src).quantize(16), tmp_path / "p.png"))
    assert arr.shape == (H, W, 3)
    assert arr.dtype == np.uint8
    assert notes == ["converted from palette (P) to RGB"]


def test_rgba_png(tmp_path: Path) -> None:
    src = np.zeros((H, W, 4), dtype=np.uint8)
    src[..., :3] = (10, 100, 200)
    src[..., 3] = 255
    src[:5, :, 3] = 0
    arr, notes = read_rgb_image(_save(Image.fromarray(src, mode="RGBA"), tmp_path / "rgba.png"))
    assert (arr[:5] == 255).all()
    assert (arr[5:] == (10, 100, 200)).all()
    assert notes == ["alpha channel dropped (composited on white)"]


def test_opaque_rgba_png(tmp_path: Path) -> None:
    src = _rgb()
    rgba = np.concatenate([src, np.full((H, W, 1), 255, np.uint8)], axis=-1)
    arr, notes = read_rgb_image(_save(Image.fromarray(rgba, mode="RGBA"), tmp_path / "rgba.png"))
    np.testing.assert_array_equal(arr, src)
    assert notes == ["alpha channel dropped (fully opaque)"]


def test_16bit_png_is_scaled_by_its_range(tmp_path: Path) -> None:
    src = np.linspace(1000, 61000, H * W).reshape(H, W).astype(np.uint16)
    im = Image.fromarray(src)
    assert im.mode == "I;16"
    arr, notes = read_rgb_image(_save(im, tmp_path / "g16.png"))
    assert arr.shape == (H, W, 3)
    assert arr.dtype == np.uint8
    expected = np.rint((src.astype(np.float64) - 1000) * 255 / 60000)
    assert np.abs(arr[..., 0].astype(float) - expected).max() <= 1
    assert arr.min() == 0
    assert arr.max() == 255
    assert (arr[..., 0] == arr[..., 2]).all()
    assert len(notes) == 1
    assert "16-bit grayscale (I;16)" in notes[0]
    assert "[1000, 61000]" in notes[0]


def test_all_zero_16bit_png_gives_zeros(tmp_path: Path) -> None:
    arr, notes = read_rgb_image(_save(Image.fromarray(np.zeros((H, W), np.uint16)), tmp_path / "zero.png"))
    assert arr.shape == (H, W, 3)
    assert not arr.any()
    assert "constant" in notes[0]


def test_int32_tiff_is_scaled(tmp_path: Path) -> None:
    src = np.linspace(-(2**31), 2**31 - 1, H * W).reshape(H, W).astype(np.int32)
    im = Image.fromarray(src)
    assert im.mode == "I"
    arr, notes = read_rgb_image(_save(im, tmp_path / "i32.tif"))
    assert arr[0, 0, 0] == 0
    assert arr[-1, -1, 0] == 255
    assert np.all(np.diff(arr[..., 0].ravel().astype(int)) >= 0)
    assert "32-bit integer grayscale (I)" in notes[0]


def test_float_tiff_is_scaled(tmp_path: Path) -> None:
    src = np.linspace(-1.0, 3.0, H * W, dtype=np.float32).reshape(H, W)
    arr, notes = read_rgb_image(_save(Image.fromarray(src, mode="F"), tmp_path / "f.tif"))
    expected = np.rint((src.astype(np.float64) + 1.0) * 255 / 4.0)
    assert np.abs(arr[..., 1].astype(float) - expected).max() <= 1
    assert "32-bit float grayscale (F)" in notes[0]


def test_float_tiff_with_nan_is_refused(tmp_path: Path) -> None:
    src = np.ones((H, W), dtype=np.float32)
    src[3, 4] = np.nan
    path = _save(Image.fromarray(src, mode="F"), tmp_path / "nan.tif")
    with pytest.raises(InputError, match="NaN or infinite") as info:
        read_rgb_image(path)
    assert info.value.path == str(path)


def test_cmyk_jpeg(tmp_path: Path) -> None:
    im = Image.new("CMYK", (W, H), (0, 255, 255, 0))  # no cyan, full magenta and yellow: red
    arr, notes = read_rgb_image(_save(im, tmp_path / "cmyk.jpg", quality=95))
    assert arr.shape == (H, W, 3)
    assert np.abs(arr.astype(int) - (255, 0, 0)).max() <= 8
    assert notes == ["converted from CMYK to RGB"]


def test_rgb_jpeg(tmp_path: Path) -> None:
    im = Image.new("RGB", (W, H), (30, 120, 220))
    arr, notes = read_rgb_image(_save(im, tmp_path / "rgb.jpeg", quality=95))
    assert arr.shape == (H, W, 3)
    assert np.abs(arr.astype(int) - (30, 120, 220)).max() <= 4
    assert notes == []


def test_multipage_tiff_uses_the_first_page(tmp_path: Path) -> None:
    pages = [Image.fromarray(_rgb(seed)) for seed in range(3)]
    path = _save(pages[0], tmp_path / "pages.tif", save_all=True, append_images=pages[1:])
    arr, notes = read_rgb_image(path)
    np.testing.assert_array_equal(arr, _rgb(0))
    assert notes == ["multi-frame TIFF: first of 3 frames used"]


def test_file_shipped_by_a_package() -> None:
    """A real photograph: matplotlib's sample JPEG (RGB, 600×512) and its RGBA toolbar icon."""
    import matplotlib

    data = Path(matplotlib.get_data_path())
    photo, icon = data / "sample_data" / "grace_hopper.jpg", data / "images" / "matplotlib_large.png"
    if not photo.exists() or not icon.exists():
        pytest.skip("matplotlib ships without its sample images here")
    for path in (photo, icon):
        with Image.open(path) as im:
            width, height = im.size
        arr, _ = read_rgb_image(path)
        assert arr.shape == (height, width, 3)
        assert arr.dtype == np.uint8
        assert arr.std() > 10  # real content, not a blank
    arr, notes = read_rgb_image(photo)
    assert arr.shape == (600, 512, 3)
    assert notes == []


# ------------------------------------------------------------------------------------------------- bad inputs


def test_missing_empty_folder(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="does not exist"):
        read_rgb_image(tmp_path / "nope.png")
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(InputError, match="empty") as info:
        read_rgb_image(tmp_path / "empty.png")
    assert info.value.path == str(tmp_path / "empty.png")
    with pytest.raises(InputError, match="folder"):
        read_rgb_image(tmp_path)


@pytest.mark.parametrize(
    ("name", "content"),
    [
        ("noise.png", np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes()),
        ("notes.txt", b"not an image at all\n" * 20),
        ("text.png", b"patient notes, definitely not pixels\n"),
    ],
)
def test_not_an_image(tmp_path: Path, name: str, content: bytes) -> None:
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(InputError, match="not an image") as info:
        read_rgb_image(path)
    assert info.value.path == str(path)
    assert name in str(info.value)


def test_truncated_png(tmp_path: Path) -> None:
    whole = _save(Image.fromarray(_rgb()), tmp_path / "whole.png").read_bytes()
    path = tmp_path / "cut.png"
    path.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(InputError, match="truncated or corrupt") as info:
        read_rgb_image(path)
    assert info.value.path == str(path)


def test_corrupt_pixel_data(tmp_path: Path) -> None:
    """A PNG whose compressed pixel stream is garbage (a valid header, an undecodable IDAT)."""
    big = np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    raw = bytearray(_save(Image.fromarray(big), tmp_path / "ok.png").read_bytes())
    start = raw.index(b"IDAT") + 4
    raw[start + 2 : start + 200] = bytes(198)  # zero the deflate stream after its 2-byte header
    path = tmp_path / "garbage.png"
    path.write_bytes(bytes(raw))
    with pytest.raises(
        InputError, match=r"garbage\.png: pixel data cannot be decoded; the file is truncated or corrupt"
    ):
        read_rgb_image(path)


@pytest.mark.parametrize("size", [(1, 1), (8, 40), (40, 15)])
def test_too_small(tmp_path: Path, size: tuple[int, int]) -> None:
    path = _save(Image.new("RGB", size, (1, 2, 3)), tmp_path / "tiny.png")
    with pytest.raises(InputError, match="at least 16 pixels") as info:
        read_rgb_image(path)
    assert f"{size[0]}×{size[1]}" in info.value.problem


def test_min_side_is_adjustable(tmp_path: Path) -> None:
    arr, _ = read_rgb_image(_save(Image.new("RGB", (1, 1), (1, 2, 3)), tmp_path / "dot.png"), min_side=1)
    assert arr.shape == (1, 1, 3)
    assert tuple(arr[0, 0]) == (1, 2, 3)


@pytest.fixture
def no_decoding(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail the test if Pillow starts decoding (allocating the image memory) at all."""

    def refuse(self: ImageFile.ImageFile) -> None:
        raise AssertionError(f"pixels of a {self.size} image were about to be decoded")

    monkeypatch.setattr(ImageFile.ImageFile, "load_prepare", refuse)


@pytest.mark.parametrize(
    ("width", "height", "max_pixels"),
    [
        (20000, 20000, 100_000_000),  # above Pillow's own bomb limit: its DecompressionBombError reworded
        (9500, 9500, 50_000_000),  # above Pillow's warning threshold, under its error: the warning never shows
        (3000, 3000, 1_000_000),  # under Pillow's limits: refused by max_pixels alone
    ],
)
def test_header_claiming_too_many_pixels(
    tmp_path: Path, no_decoding: None, width: int, height: int, max_pixels: int
) -> None:
    small = _save(Image.fromarray(_rgb()), tmp_path / "small.png").read_bytes()
    path = tmp_path / "bomb.png"
    path.write_bytes(patch_png_size(small, width, height))
    header = path.read_bytes()[12:33]  # a valid IHDR (its CRC checks) claiming the size
    assert struct.unpack(">II", header[4:12]) == (width, height)
    assert struct.unpack(">I", header[17:21])[0] == zlib.crc32(header[:17])
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(InputError, match="more than the limit") as info:
            read_rgb_image(path, max_pixels=max_pixels)
    assert time.perf_counter() - start < 1.0
    assert info.value.path == str(path)
    assert f"{width * height:,} pixels" in info.value.problem


def test_bad_arguments(tmp_path: Path) -> None:
    path = _save(Image.fromarray(_rgb()), tmp_path / "rgb.png")
    with pytest.raises(ValueError, match="max_pixels"):
        read_rgb_image(path, max_pixels=0)
    with pytest.raises(ValueError, match="min_side"):
        read_rgb_image(path, min_side=0)


# ------------------------------------------------------------------------------------------------------ plots


def _png_size(path: Path) -> tuple[int, int]:
    with Image.open(path) as im:
        return im.size


def test_plot_cam(tmp_path: Path) -> None:
    image = np.random.default_rng(0).integers(0, 256, (460, 700, 3), dtype=np.uint8)
    yy, xx = np.mgrid[0:15, 0:23]
    cam = np.exp(-((yy - 7) ** 2 + (xx - 11) ** 2) / 20.0)
    heat, overlay = plot_cam(image, cam, tmp_path / "cam" / "heat.png", tmp_path / "cam" / "overlay.png", "benign")
    for path in (heat, overlay):
        assert path.exists()
        assert path.stat().st_size > 1024
    hw, hh = _png_size(heat)
    assert 200 <= hw <= 2000
    assert 200 <= hh <= 2000
    ow, oh = _png_size(overlay)
    assert 350 <= ow <= 1400
    assert 230 <= oh <= 1000
    assert ow > oh


def test_plot_cam_rejects_bad_shapes(tmp_path: Path) -> None:
    image = np.zeros((32, 32, 3), np.uint8)
    with pytest.raises(ValueError, match="image"):
        plot_cam(np.zeros((32, 32, 4), np.uint8), np.zeros((4, 4)), tmp_path / "h.png", tmp_path / "o.png")
    with pytest.raises(ValueError, match="cam"):
        plot_cam(image, np.zeros((1, 4, 4)), tmp_path / "h.png", tmp_path / "o.png")
    with pytest.raises(ValueError, match="NaN"):
        plot_cam(image, np.full((4, 4), np.nan), tmp_path / "h.png", tmp_path / "o.png")


def test_plot_confusion_matrix(tmp_path: Path) -> None:
    cm = np.array([[50, 3, 0], [4, 40, 6], [0, 0, 0]])
    path = plot_confusion_matrix(cm, ["benign", "malignant", "other"], tmp_path / "cm.png", title="test")
    assert path.exists()
    assert path.stat().st_size > 1024
    width, height = _png_size(path)
    assert 300 <= width <= 2000
    assert 300 <= height <= 2000
    counts = plot_confusion_matrix(cm, ["a", "b", "c"], tmp_path / "counts.png", normalise=False)
    assert counts.stat().st_size > 1024


def test_plot_confusion_matrix_rejects_bad_input(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="square"):
        plot_confusion_matrix(np.zeros((2, 3)), ["a", "b"], tmp_path / "cm.png")
    with pytest.raises(ValueError, match="labels"):
        plot_confusion_matrix(np.zeros((2, 2)), ["a", "b", "c"], tmp_path / "cm.png")
    with pytest.raises(ValueError, match="non-negative"):
        plot_confusion_matrix(np.array([[1, -1], [0, 2]]), ["a", "b"], tmp_path / "cm.png")


def test_plots_leave_no_figures_open(tmp_path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # only to see that the plots never register a figure with it

    before = plt.get_fignums()
    plot_cam(np.zeros((32, 32, 3), np.uint8), np.eye(8), tmp_path / "h.png", tmp_path / "o.png")
    plot_confusion_matrix(np.eye(2), ["a", "b"], tmp_path / "cm.png")
    assert plt.get_fignums() == before
