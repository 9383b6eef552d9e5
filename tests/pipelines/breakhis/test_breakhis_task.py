"""breakhis: cost-sensitive weights, the binary→subtype transfer and its freezing schedule, the predictor's two
heads, Grad-CAM explanations, bad images, and batching in the service."""

from __future__ import annotations

import io
import json
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from medinfer_testlib import patch_png_size
from PIL import Image
from typer.testing import CliRunner

from app.cli import app
from app.main import create_app
from app.settings import Settings
from pipelines.breakhis.config import BreakhisConfig, BreakhisTrainOptions
from pipelines.breakhis.datasets import discover_images
from pipelines.breakhis.train import BreakhisRun
from pipelines.common.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from pipelines.common.classification import balanced_class_weights
from pipelines.common.task import TrainOptions, get_task
from pipelines.common.trainer import Stage

TASK = get_task("breakhis")


def _run(data: Path, out: Path, target: str = "binary", transfer: Path | None = None, **cfg: Any) -> BreakhisRun:
    config = BreakhisConfig.load("tiny", overrides={"image_size": 32, **cfg})
    opts = TrainOptions(data, out, device="cpu", task=BreakhisTrainOptions(target=target, transfer_from=transfer))
    return BreakhisRun(TASK, config, opts)


def _checkpoint(tmp_path: Path, target: str, name: str) -> Path:
    run = _run(tmp_path, tmp_path / "unused", target)
    return save_checkpoint(run.untrained_checkpoint(), tmp_path / name)


def test_class_weights_are_n_over_c_times_n_c() -> None:
    w = balanced_class_weights([10, 30, 0, 60])
    np.testing.assert_allclose(w, [100 / (4 * 10), 100 / (4 * 30), 0.0, 100 / (4 * 60)])
    assert float(np.dot(w, [10, 30, 0, 60])) == pytest.approx(100 * 3 / 4)  # each present class weighs N / C
    for bad in ([0, 0], [-1, 3]):
        with pytest.raises(ValueError, match="counts"):
            balanced_class_weights(bad)


def test_transfer_copies_every_trunk_tensor_and_replaces_the_head(tmp_path: Path) -> None:
    binary = _checkpoint(tmp_path, "binary", "binary.pt")
    source = load_checkpoint(binary).build_model()
    run = _run(tmp_path, tmp_path / "run", "subtype", transfer=binary)
    model = run.build_model()
    src = source.state_dict()
    trunk = {k: v for k, v in model.state_dict().items() if k.startswith("trunk.")}
    assert trunk
    assert all(torch.equal(v, src[k]) for k, v in trunk.items())
    assert model.head.out_features == 8
    assert source.head.out_features == 2
    assert run.stages() == [Stage("frozen_trunk", 2), Stage("finetune", 10)]
    assert run.heads() == {"binary": ["benign", "malignant"], "subtype": ["A", "F", "PT", "TA", "DC", "LC", "MC", "PC"]}
    assert run.start["transfer_from"] == "binary.pt"
    subtype = _checkpoint(tmp_path, "subtype", "subtype.pt")
    with pytest.raises(ValueError, match="from a binary model"):
        _run(tmp_path, tmp_path / "r2", "binary", transfer=subtype).build_model()
    with pytest.raises(ValueError, match="efficientnet-b1"):
        _run(tmp_path, tmp_path / "r3", "subtype", transfer=binary, variant="efficientnet-b1").build_model()


@pytest.mark.slow
def test_the_trunk_stays_frozen_for_the_first_epochs(breakhis_data: Path, tmp_path: Path) -> None:
    binary = _checkpoint(tmp_path, "binary", "binary.pt")
    source = load_checkpoint(binary).build_model().state_dict()
    snapshots: list[dict[str, torch.Tensor]] = []

    class Watched(BreakhisRun):
        def on_epoch_end(self, stage: Stage, epoch: int, metrics: dict[str, float]) -> None:
            snapshots.append({k: v.detach().clone() for k, v in self.model.state_dict().items()})
            super().on_epoch_end(stage, epoch, metrics)

    config = BreakhisConfig.load("tiny", overrides={"image_size": 32, "epochs": 2, "freeze_epochs": 1})
    opts = TrainOptions(breakhis_data, tmp_path / "run", device="cpu",
                        task=BreakhisTrainOptions(target="subtype", transfer_from=binary))  # fmt: skip
    Watched(TASK, config, opts).run()
    frozen, thawed = snapshots
    trunk = [k for k in source if k.startswith("trunk.")]
    assert all(torch.equal(frozen[k], source[k]) for k in trunk)  # weights and batch-norm statistics untouched
    assert not torch.equal(frozen["head.weight"], thawed["head.weight"])  # the head trains in both stages
    assert any(not torch.equal(thawed[k], source[k]) for k in trunk if k.endswith("weight"))
    ckpt = load_checkpoint(tmp_path / "run" / "best.pt")
    assert ckpt.extra["target"] == "subtype"
    assert ckpt.extra["transfer_from"] == "binary.pt"
    split = ckpt.extra["split"]
    assert not set(split["train_patients"]) & set(split["test_patients"])
    card = (tmp_path / "run" / "MODEL_CARD.md").read_text(encoding="utf-8")
    assert "transfer: the trunk comes from the binary model `binary.pt`" in card
    assert "patient-wise split" in card


def _predict(ckpt: Path, inputs: list[str], out: Path, *extra: str) -> dict:
    args = ["predict", "breakhis", *inputs, "-o", str(out), "--checkpoint", str(ckpt), "--device", "cpu", *extra]
    CliRunner().invoke(app, args)
    return json.loads((out / "report.json").read_text(encoding="utf-8"))


@pytest.mark.slow
def test_subtype_model_reports_both_heads_and_explains(tmp_path: Path) -> None:
    subtype = _checkpoint(tmp_path, "subtype", "subtype.pt")
    images = TASK.example_inputs(tmp_path / "inputs", 3, seed=4)
    report = _predict(subtype, images, tmp_path / "out", "--explain", "--batch-size", "2")
    assert report["counts"]["ok"] == 3
    for res in report["results"]:
        out = res["outputs"]
        sub = np.asarray(list(out["subtype"]["probabilities"].values()))
        binary = out["binary"]["probabilities"]
        assert sub.sum() == pytest.approx(1.0, abs=1e-5)
        assert binary["benign"] == pytest.approx(sub[:4].sum(), abs=2e-6)  # the marginal of the subtypes
        assert binary["malignant"] == pytest.approx(sub[4:].sum(), abs=2e-6)
        assert out["binary"]["prediction"] in ("benign", "malignant")
        assert out["warnings"] == []
        assert out["input_size"] == [700, 460]
        explanation = out["explanation"]
        assert explanation["method"] == "Grad-CAM"
        assert explanation["class"] == out["subtype"]["prediction"]
        assert 0 <= explanation["peak_xy"][0] <= 700
        assert 0 <= explanation["peak_xy"][1] <= 460
        pngs = [f["path"] for f in res["files"] if f["role"] in ("explanation", "overlay")]
        assert len(pngs) == 2  # the heatmap, and the map over the image
        assert all((tmp_path / "out" / p).stat().st_size > 1000 for p in pngs)
    header = (tmp_path / "out" / "predictions.csv").read_text(encoding="utf-8").splitlines()[0].split(",")
    assert header[:3] == ["image", "binary:benign", "binary:malignant"]
    assert "subtype:prediction" in header


def test_bad_images_are_refused_by_name_and_odd_ones_converted(tmp_path: Path) -> None:
    binary = _checkpoint(tmp_path, "binary", "binary.pt")
    good = np.random.default_rng(0).integers(0, 255, (460, 700, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(good).save(buf, format="PNG")
    png = buf.getvalue()
    cases = {
        "truncated.png": (png[: len(png) // 2], "truncated or corrupt"),
        "notes.png": (b"these are my notes, not an image", "not an image"),
        "dot.png": (None, "1×1"),
        "huge.png": (patch_png_size(png, 20000, 20000), "400,000,000 pixels"),
    }
    for name, (data, _) in cases.items():
        if data is None:
            Image.new("RGB", (1, 1)).save(tmp_path / name)
        else:
            (tmp_path / name).write_bytes(data)
    Image.fromarray(good[:300, :300, 0]).save(tmp_path / "gray.png")  # grayscale and not 700x460: converted
    t0 = time.perf_counter()
    report = _predict(
        binary, [str(tmp_path / n) for n in [*cases, "gray.png"]], tmp_path / "out", "--continue-on-error"
    )
    assert time.perf_counter() - t0 < 60
    by_name = {Path(r["input"]).name: r for r in report["results"]}
    for name, (_, problem) in cases.items():
        assert by_name[name]["status"] == "error", by_name[name]
        assert name in by_name[name]["error"], by_name[name]
        assert problem in by_name[name]["error"], by_name[name]["error"]
    warnings = by_name["gray.png"]["outputs"]["warnings"]
    assert by_name["gray.png"]["status"] == "ok"
    assert len(warnings) == 2, warnings
    assert "grayscale" in warnings[0]
    assert "300x300 is not BreakHis's 700x460" in warnings[1]


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    work = tmp_path_factory.mktemp("breakhis_service")
    ckpt: Checkpoint = BreakhisRun(
        TASK, BreakhisConfig.load("tiny"), TrainOptions(work, work, task=BreakhisTrainOptions(target="subtype"))
    ).untrained_checkpoint()
    save_checkpoint(ckpt, work / "checkpoints" / "breakhis.pt")
    settings = Settings(checkpoints=work / "checkpoints", data_dir=work / "data", tasks="breakhis", device="cpu",
                        max_batch_size=8, max_batch_delay_ms=30)  # fmt: skip
    with TestClient(create_app(settings)) as c:
        deadline = time.monotonic() + 120
        while c.get("/readyz").status_code != 200:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        yield c


def test_the_service_batches_images_and_explains(client: TestClient, tmp_path: Path) -> None:
    (image,) = TASK.example_inputs(tmp_path, 1, seed=2)
    files = {"files": (Path(image).name, Path(image).read_bytes())}

    def one(_: int) -> float:
        r = client.post("/api/v1/models/breakhis/predict", files=files)
        assert r.status_code == 200, r.text
        return r.json()["results"][0]["timings"]["batch_size"]

    with ThreadPoolExecutor(8) as pool:
        sizes = list(pool.map(one, range(16)))
    assert max(sizes) > 1  # images are batched like ECG records
    r = client.post("/api/v1/models/breakhis/explain", files=files)
    assert r.status_code == 200, r.text
    res = r.json()["results"][0]
    roles = {f["name"].rsplit("_", 1)[-1]: f["role"] for f in res["files"]}
    assert roles["gradcam.png"] == "explanation"
    assert roles["overlay.png"] == "overlay"  # the map over the image, as the volume tasks' overlays
    info = client.get("/api/v1/models/breakhis").json()
    assert [h["name"] for h in info["heads"]] == ["binary", "subtype"]
    assert client.post("/api/v1/models/breakhis/predict", files={"files": ("x.png", b"junk")}).status_code == 400


def test_file_names_drive_discovery(breakhis_data: Path) -> None:
    records = discover_images(breakhis_data, magnifications=[400])
    assert len(records) == 8 * 4 * 2
    assert {r.magnification for r in records} == {400}


def test_init_weights_load_a_local_efficientnet_into_the_trunk(tmp_path: Path) -> None:
    from models.efficientnet import BreakHisNet

    imagenet = BreakHisNet("efficientnet-b0", num_classes=2)  # stands in for a user's ImageNet B0
    state = {k.removeprefix("trunk."): v for k, v in imagenet.state_dict().items() if k.startswith("trunk.")}
    state["_fc.weight"], state["_fc.bias"] = torch.zeros(1000, 1280), torch.zeros(1000)  # its 1000-class head
    weights = tmp_path / "b0_imagenet.pth"
    torch.save(state, weights)
    config = BreakhisConfig.load("tiny")
    opts = TrainOptions(tmp_path, tmp_path / "run", task=BreakhisTrainOptions(init_weights=weights))
    run = BreakhisRun(TASK, config, opts)
    model = run.build_model()
    loaded = model.state_dict()
    assert all(torch.equal(loaded[f"trunk.{k}"], v) for k, v in state.items() if not k.startswith("_fc."))
    assert run.start == {"init_weights": "b0_imagenet.pth", "tensors_loaded": len(imagenet.trunk.state_dict())}
    b1 = BreakhisConfig.load("tiny", overrides={"variant": "efficientnet-b1"})
    with pytest.raises(ValueError, match=r"b0_imagenet\.pth: .*efficientnet-b1"):
        BreakhisRun(TASK, b1, opts).build_model()
    with pytest.raises(ValueError, match="transfer_from or init_weights"):
        BreakhisTrainOptions(init_weights=weights, transfer_from=weights)
