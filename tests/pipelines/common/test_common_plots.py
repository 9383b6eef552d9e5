"""Plots are drawn without pyplot: no module imports it, and plots drawn from several threads at once are intact."""

from __future__ import annotations

import ast
import subprocess
import sys
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

from pipelines.common.plots import plot_cam, plot_confusion_matrix, plot_curves

ROOT = Path(__file__).resolve().parents[3]


def _pyplot_imports(path: Path) -> list[int]:
    """Lines of ``path`` that import ``matplotlib.pyplot`` (``import matplotlib.pyplot``, ``from matplotlib import
    pyplot``, ``from matplotlib.pyplot import ...``)."""
    lines = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import) and any(a.name.startswith("matplotlib.pyplot") for a in node.names):
            lines.append(node.lineno)
        elif isinstance(node, ast.ImportFrom) and node.module is not None:
            if node.module.startswith("matplotlib.pyplot") or (
                node.module == "matplotlib" and any(a.name == "pyplot" for a in node.names)
            ):
                lines.append(node.lineno)
    return lines


def test_no_module_imports_pyplot() -> None:
    sources = [p for package in ("app", "pipelines", "models") for p in sorted((ROOT / package).rglob("*.py"))]
    assert len(sources) > 20
    found = {str(p.relative_to(ROOT)): lines for p in sources if (lines := _pyplot_imports(p))}
    assert found == {}, f"pyplot keeps process-wide state; draw on matplotlib.figure.Figure instead: {found}"


def test_the_checker_finds_pyplot(tmp_path: Path) -> None:
    imports = ("import matplotlib.pyplot as plt", "from matplotlib import pyplot", "from matplotlib.pyplot import gcf")
    for text in imports:
        (tmp_path / "m.py").write_text(f"def f():\n    {text}\n")
        assert _pyplot_imports(tmp_path / "m.py") == [2], text


def test_drawing_leaves_pyplot_unimported(tmp_path: Path) -> None:
    code = (
        "import sys, numpy as np; from pathlib import Path; from pipelines.common import plots; "
        f"d = Path({str(tmp_path)!r}); "
        "plots.plot_cam(np.zeros((16, 16, 3), np.uint8), np.eye(4), d / 'h.png', d / 'o.png'); "
        "plots.plot_confusion_matrix(np.eye(2), ['a', 'b'], d / 'cm.png'); "
        "assert 'matplotlib.pyplot' not in sys.modules, 'pyplot was imported'"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "o.png").stat().st_size > 0


def _ecg_explanation(path: Path, seed: int) -> Path:
    from pipelines.common.plots import save_figure
    from pipelines.ecg.explain import explanation_figure

    rng = np.random.default_rng(seed)
    window = {"index": 3, "start_sample": 100, "end_sample": 250, "start_s": 1.0, "end_s": 2.5, "similarity": 2.0}
    source = {"record_id": "7", "start_sample": 100, "end_sample": 200, "start_s": 1.0, "end_s": 2.0, "score": 0.1}
    proto = {"prototype": 3, "label": "NORM", "similarity": 0.5, "weight": 1.0, "contribution": 0.5}
    entry = {
        "label": "NORM", "name": "normal ECG", "probability": 0.7, "threshold": 0.5, "positive": True,
        "requested": False, "logit": 0.8, "bias": 0.1, "own_prototypes": 0.5, "other_prototypes": 0.2,
        "prototypes": [{**proto, "window": window, "source": source}],
    }  # fmt: skip
    figure = explanation_figure(rng.normal(size=(12, 1000)), entry, rng.normal(size=(12, 100)))
    return save_figure(figure, path, 100, colors=64)


def _preview(volume: np.ndarray, labels: np.ndarray, path: Path) -> Path:
    from pipelines.common.preview import plan_preview, preview_figure, save_preview

    plan = plan_preview(labels, np.eye(4), case="c", modality="T2W", names={}, colors={}, regions_ml={})
    return save_preview(preview_figure(volume, labels, np.eye(4), plan), path)


def _plots(seed: int) -> list[Callable[[Path], object]]:
    """The shared plots, each with inputs that differ by ``seed`` (so that threads draw different images)."""
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 255, size=(48, 64, 3), dtype=np.uint8)
    cam = rng.random((6, 8))
    cm = rng.integers(0, 20, size=(3, 3))
    history = [{"epoch": e, "loss": float(rng.random()), "val_dice": float(rng.random())} for e in range(5)]
    labels = np.zeros((24, 20, 16), dtype=np.uint8)
    labels[5:15, 4:12, 3:10] = rng.integers(1, 3, size=(10, 8, 7))
    volume = rng.random((24, 20, 16)) * 100
    return [
        lambda d: _preview(volume, labels, d / "ov.png"),
        lambda d: plot_cam(image, cam, d / "heat.png", d / "overlay.png", title=f"s{seed}"),
        lambda d: plot_confusion_matrix(cm, ["a", "b", "c"], d / "cm.png", title=f"s{seed}"),
        lambda d: plot_curves(history, d / "curves.png"),
    ]


def _pixels(folder: Path) -> dict[str, np.ndarray]:
    out = {}
    for png in sorted(folder.glob("*.png")):
        with Image.open(png) as im:
            im.verify()  # a complete, uncorrupted PNG
        with Image.open(png) as im:
            out[png.name] = np.asarray(im.convert("RGB"))
    return out


def test_plots_from_several_threads_at_once_match_serial_ones(tmp_path: Path) -> None:
    """Four threads draw at the same moment (one of them the 12-lead ECG explanation as well); every PNG is valid
    and equals the one drawn alone from the same inputs."""
    threads = 4
    serial = {}
    for seed in range(threads):
        folder = tmp_path / f"serial{seed}"
        folder.mkdir()
        for draw in _plots(seed):
            draw(folder)
        serial[seed] = _pixels(folder)
    start = threading.Barrier(threads)

    def worker(seed: int) -> dict[str, np.ndarray]:
        folder = tmp_path / f"thread{seed}"
        folder.mkdir()
        plots = _plots(seed)
        start.wait()
        if seed == 0:
            _ecg_explanation(folder / "ecg.png", seed)
        for draw in plots:
            draw(folder)
        return _pixels(folder)

    with ThreadPoolExecutor(threads) as pool:
        drawn = list(pool.map(worker, range(threads)))
    for seed, images in enumerate(drawn):
        if seed == 0:
            # ECG paper at 100 dpi: 16 + (10 s + 0.28 s pulse) · 25 + 14 + 45 + 6 mm wide, 11 + 19 mV · 10 + 27 mm high
            assert images.pop("ecg.png").shape == (897, 1330, 3)
        assert sorted(images) == ["cm.png", "curves.png", "heat.png", "ov.png", "overlay.png"]
        for name, pixels in images.items():
            assert pixels.shape == serial[seed][name].shape, (seed, name)
            assert np.array_equal(pixels, serial[seed][name]), f"thread {seed} drew {name} differently"
    assert not np.array_equal(drawn[0]["cm.png"], drawn[1]["cm.png"]), "the threads drew different inputs"
