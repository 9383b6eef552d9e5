"""breakhis Grad-CAM pictures say what they show: the explained head, its arg-max class and probability as in the
result JSON (a subtype model's binary marginal too), a labelled colour bar on both, and the overlay's hottest colour
at the map's peak (``peak_xy``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from matplotlib import colormaps
from PIL import Image

from pipelines.breakhis.config import BreakhisConfig, BreakhisTrainOptions
from pipelines.breakhis.infer import cam_peak_xy, cam_title
from pipelines.breakhis.train import BreakhisRun
from pipelines.common import explain, plots
from pipelines.common.checkpoint import load_checkpoint, save_checkpoint
from pipelines.common.predict import run_predictions
from pipelines.common.task import PredictOptions, TrainOptions, get_task

TASK = get_task("breakhis")
SIZE = 32  # the network's input (the tiny preset at 32 pixels: seconds on a CPU)
GREY = 128


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    work = tmp_path_factory.mktemp("breakhis_gradcam")
    out = {}
    for target in ("binary", "subtype"):
        config = BreakhisConfig.load("tiny", overrides={"image_size": SIZE})
        opts = TrainOptions(work, work / "run", device="cpu", task=BreakhisTrainOptions(target=target))
        ckpt = BreakhisRun(TASK, config, opts).untrained_checkpoint()
        out[target] = save_checkpoint(ckpt, work / f"{target}.pt")
    return out


@pytest.fixture
def drawn(monkeypatch: pytest.MonkeyPatch) -> list[plots.CamFigures]:
    """The figures every Grad-CAM drawing builds, in order (they are saved as they are)."""
    made: list[plots.CamFigures] = []
    build = plots.cam_figures

    def spy(*args: Any, **kwargs: Any) -> plots.CamFigures:
        made.append(build(*args, **kwargs))
        return made[-1]

    monkeypatch.setattr(plots, "cam_figures", spy)
    return made


def _predict(ckpt: Path, images: list[Path], out: Path) -> list[dict[str, Any]]:
    predictor = TASK.load_predictor(load_checkpoint(ckpt), PredictOptions(device="cpu", batch_size=2, explain=True))
    report = run_predictions(predictor, TASK.collect_inputs([str(p) for p in images]), out, task="breakhis")
    assert report.ok, [r.error for r in report.results]
    return json.loads((out / "report.json").read_text(encoding="utf-8"))["results"]


def _png(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"), dtype=np.float64) / 255.0


def test_cam_title_names_head_class_and_probability() -> None:
    assert cam_title("binary", "malignant", 0.93456) == "malignant, p = 0.935 (binary head)"
    assert cam_title("subtype", "DC", 0.6, ("malignant", 0.88)) == (
        "DC, p = 0.600 (subtype head)\nbinary marginal: malignant, p = 0.880"
    )
    cam = np.zeros((4, 8))
    cam[3, 1] = 1.0
    assert cam_peak_xy(cam, 700, 460) == [131.2, 402.5]  # the cell's centre, in image pixels


@pytest.mark.parametrize("target", ["binary", "subtype"])
def test_titles_say_the_arg_max_class_and_its_probability(
    target: str, checkpoints: dict[str, Path], drawn: list[plots.CamFigures], tmp_path: Path
) -> None:
    rng = np.random.default_rng(3)
    images = []
    for name in ("a", "b", "c"):
        Image.fromarray(rng.integers(0, 255, (46, 70, 3), dtype=np.uint8)).save(tmp_path / f"{name}.png")
        images.append(tmp_path / f"{name}.png")
    results = _predict(checkpoints[target], images, tmp_path / "out")
    assert len(drawn) == len(results)
    for res, figures in zip(results, drawn, strict=True):
        out, name = res["outputs"], res["name"]
        head = out[target] if target == "subtype" else out
        ex = out["explanation"]
        cls = max(head["probabilities"], key=head["probabilities"].get)
        assert (ex["head"], ex["class"], ex["probability"]) == (target, cls, head["probabilities"][cls])
        title = f"{cls}, p = {head['probabilities'][cls]:.3f} ({target} head)"
        if target == "subtype":
            binary = out["binary"]["probabilities"]
            top = max(binary, key=binary.get)
            assert ex["binary_marginal"] == {"class": top, "probability": binary[top]}
            title += f"\nbinary marginal: {top}, p = {binary[top]:.3f}"
        else:
            assert "binary_marginal" not in ex
        assert ex["title"] == title
        assert ex["colorbar"] == "Grad-CAM, relative (0-1)"
        for fig in figures:
            assert fig.axes[0].get_title() == title
            assert fig.axes[1].get_ylabel() == ex["colorbar"]
        roles = {f["role"]: f["path"] for f in res["files"]}
        assert roles["explanation"] == f"{name}_gradcam.png"
        assert roles["overlay"] == f"{name}_gradcam_overlay.png"
        for role in ("explanation", "overlay"):
            assert (tmp_path / "out" / roles[role]).stat().st_size > 1000


def test_the_overlay_is_hottest_at_peak_xy(
    checkpoints: dict[str, Path], drawn: list[plots.CamFigures], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A map with a known peak (Grad-CAM replaced) over a uniform grey 700 × 460 image: ``peak_xy`` is that peak,
    and there the overlay PNG shows the colormap's top colour blended with the grey, the heatmap PNG the top
    colour itself."""
    row, col = 22, 9
    yy, xx = np.mgrid[0:SIZE, 0:SIZE]
    cam = np.exp(-((yy - row) ** 2 + (xx - col) ** 2) / 18.0).astype(np.float32)

    def known_cam(model: torch.nn.Module, x: torch.Tensor, layer: str, class_index: Any = None) -> np.ndarray:
        return np.repeat(cam[None], x.shape[0], axis=0)

    monkeypatch.setattr(explain, "grad_cam", known_cam)
    Image.fromarray(np.full((460, 700, 3), GREY, np.uint8)).save(tmp_path / "grey.png")
    (res,) = _predict(checkpoints["subtype"], [tmp_path / "grey.png"], tmp_path / "out")
    x, y = res["outputs"]["explanation"]["peak_xy"]
    assert [x, y] == [round((col + 0.5) * 700 / SIZE, 1), round((row + 0.5) * 460 / SIZE, 1)]
    (figures,) = drawn
    roles = {f["role"]: tmp_path / "out" / f["path"] for f in res["files"]}
    top = np.asarray(colormaps["jet"](1.0)[:3])

    def at(fig: Any, path: Path, px: float, py: float) -> np.ndarray:
        pixels = _png(path)
        dx, dy = fig.axes[0].transData.transform((px, py))
        return pixels[int(pixels.shape[0] - dy), int(dx)]

    hottest = 0.55 * GREY / 255 + 0.45 * top  # plot_cam's alpha 0.45
    np.testing.assert_allclose(at(figures.overlay, roles["overlay"], x - 0.5, y - 0.5), hottest, atol=6 / 255)
    np.testing.assert_allclose(at(figures.heatmap, roles["explanation"], col, row), top, atol=3 / 255)
    overlay = _png(roles["overlay"])
    rows, cols = np.nonzero(np.abs(overlay - hottest).max(axis=2) < 6 / 255)
    assert rows.size > 0
    where = figures.overlay.axes[0].transData.inverted().transform(np.stack([cols, overlay.shape[0] - rows], axis=1))
    assert np.abs(where[:, 0] + 0.5 - x).max() < 700 / SIZE  # within a map cell of peak_xy
    assert np.abs(where[:, 1] + 0.5 - y).max() < 460 / SIZE
