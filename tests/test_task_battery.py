"""One battery over every registered task (timm's model tests are the example): a new task gets it by registering.

For each task, with a seeded untrained checkpoint of its tiny preset: synthetic inputs → ``collect_inputs`` →
``medinfer predict`` through the CLI and the same input through the service → the report's schema and every
file it names → a corrupted copy of an input gives a clear error naming it, in both faces → for volume tasks,
every written volume has the input's grid (shape and affine). Options and heads are checked against the
task's declarations.
"""

from __future__ import annotations

import io
import json
import shutil
import time
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from app.cli import app
from app.main import create_app
from app.settings import Settings
from pipelines.common.checkpoint import load_checkpoint, save_checkpoint
from pipelines.common.task import InputItem, Task, get_task, list_tasks

TASKS = list_tasks()


@dataclass
class Setup:
    task: Task
    checkpoint: Path
    checkpoints_dir: Path
    inputs: list[str]
    work: Path


@pytest.fixture(scope="module", params=TASKS)
def setup(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Setup:
    task = get_task(request.param)
    work = tmp_path_factory.mktemp(f"battery_{task.name}")
    folder = work / "checkpoints"
    ckpt = save_checkpoint(task.untrained_checkpoint("tiny", seed=0), folder / f"{task.name}.pt")
    inputs = task.example_inputs(work / "inputs", 2, seed=11)
    return Setup(task, ckpt, folder, inputs, work)


@pytest.fixture(scope="module")
def client(setup: Setup) -> Iterator[TestClient]:
    settings = Settings(
        checkpoints=setup.checkpoints_dir,
        data_dir=setup.work / "service",
        tasks=setup.task.name,
        device="cpu",
        max_batch_delay_ms=2,
        max_upload_mb=64,
        max_unpacked_mb=256,
    )
    with TestClient(create_app(settings)) as c:
        deadline = time.monotonic() + 120
        while c.get("/readyz").status_code != 200:
            assert time.monotonic() < deadline, c.get("/readyz").json()
            time.sleep(0.05)
        yield c


# -- helpers -------------------------------------------------------------------------------------------------
def item_files(item: InputItem) -> list[Path]:
    """Every file an input consists of: its paths (folders walked) and the files of the same stem beside them."""
    out: list[Path] = []
    for path in item.paths.values():
        if path.is_dir():
            out.extend(sorted(p for p in path.rglob("*") if p.is_file()))
        else:
            stem = path.name.split(".")[0]
            out.extend(sorted(p for p in path.parent.iterdir() if p.is_file() and p.name.split(".")[0] == stem))
    return list(dict.fromkeys(out))


def copy_input(raw: str, dest: Path) -> str:
    """Copy one input (a folder, or a file with its same-stem siblings) under ``dest``; return the new path."""
    src = Path(raw)
    dest.mkdir(parents=True, exist_ok=True)
    if src.is_dir():
        shutil.copytree(src, dest / src.name, ignore=shutil.ignore_patterns("*seg*"))
        return str(dest / src.name)
    stem = src.name.split(".")[0]
    for sibling in src.parent.iterdir():
        if sibling.is_file() and sibling.name.split(".")[0] == stem:
            shutil.copy2(sibling, dest / sibling.name)
    return str(dest / src.name)


def upload(raw: str) -> list[tuple[str, tuple[str, bytes]]]:
    """The multipart files of one input: a folder as a zip, a file with its same-stem siblings."""
    src = Path(raw)
    if src.is_dir():
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w") as zf:
            for f in sorted(src.rglob("*")):
                if f.is_file() and "seg" not in f.name:
                    zf.write(f, f"{src.name}/{f.relative_to(src)}")
        return [("files", (f"{src.name}.zip", buf.getvalue()))]
    stem = src.name.split(".")[0]
    files = sorted(p for p in src.parent.iterdir() if p.is_file() and p.name.split(".")[0] == stem)
    return [("files", (p.name, p.read_bytes())) for p in files]


def corrupt(item: InputItem) -> Path:
    """Truncate the largest file of an input to 40 %; return it."""
    victim = max(item_files(item), key=lambda p: p.stat().st_size)
    data = victim.read_bytes()
    victim.write_bytes(data[: int(len(data) * 0.4)])
    return victim


def predict_cli(setup: Setup, inputs: list[str], out: Path, *extra: str) -> tuple[int, dict]:
    result = CliRunner().invoke(
        app,
        [
            "predict",
            setup.task.name,
            *inputs,
            "-o",
            str(out),
            "--checkpoint",
            str(setup.checkpoint),
            "--device",
            "cpu",
            "--continue-on-error",
            *extra,
        ],
    )
    report = json.loads((out / "report.json").read_text(encoding="utf-8")) if (out / "report.json").is_file() else {}
    return result.exit_code, report


# -- the battery ---------------------------------------------------------------------------------------------
def test_declarations(setup: Setup) -> None:
    task = setup.task
    contract = task.contract
    assert contract.kind in ("volume", "signal", "image")
    assert contract.channels
    assert contract.heads
    ckpt = load_checkpoint(setup.checkpoint, task=task.name)
    declared = {h.name: list(h.labels) for h in contract.heads}
    assert ckpt.heads, "a checkpoint names its heads"
    assert all(declared.get(name) == labels for name, labels in ckpt.heads.items()), ckpt.heads
    assert ckpt.labels == [label for labels in ckpt.heads.values() for label in labels]
    assert ckpt.extra.get("untrained") is True
    assert ckpt.synthetic_demo
    defaults = task.parse_options({})
    assert isinstance(defaults, task.options_model)
    for model in (task.options_model, task.train_options_model):
        for name, field in model.model_fields.items():
            assert field.description, f"{task.name}: option {name} has no help text"
    with pytest.raises(ValueError, match="unknown option 'no_such_option'"):
        task.parse_options({"no_such_option": 1})
    assert task.config_class.load("tiny").preset == "tiny"


def test_collect_and_predict_through_the_cli(setup: Setup, tmp_path: Path) -> None:
    collected = setup.task.collect_inputs(setup.inputs)
    assert len(collected.items) == len(setup.inputs)
    assert not collected.errors
    code, report = predict_cli(setup, setup.inputs, tmp_path, "--explain")
    assert code == 0, report
    assert report["task"] == setup.task.name
    assert report["counts"] == {"ok": 2, "error": 0, "skipped": 0}
    assert report["model"]["synthetic_demo"] is True  # the model's provenance travels with its results
    assert report["model"]["provenance"]["synthetic"] is True
    for res in report["results"]:
        assert set(res) >= {"input", "status", "outputs", "files", "error", "seconds", "timings"}
        assert res["outputs"], "an input's result holds data"
        roles = [f["role"] for f in res["files"]]
        assert "result" in roles, roles
        for f in res["files"]:
            assert (tmp_path / f["path"]).is_file(), f
            assert (tmp_path / f["path"]).stat().st_size > 0, f
        (result_file,) = [f["path"] for f in res["files"] if f["role"] == "result"]
        assert json.loads((tmp_path / result_file).read_text(encoding="utf-8")) == json.loads(
            json.dumps(res["outputs"])
        )
    assert (tmp_path / "report.csv").is_file()


def test_predict_through_the_service(setup: Setup, client: TestClient) -> None:
    name = setup.task.name
    info = client.get(f"/api/v1/models/{name}").json()
    ckpt_heads = load_checkpoint(setup.checkpoint).heads
    assert {h["name"]: h["labels"] for h in info["heads"]} == ckpt_heads  # the checkpoint's, as declared
    declared = {h.name: h.activation for h in setup.task.contract.heads}
    assert all(h["activation"] == declared[h["name"]] for h in info["heads"])
    assert info["options_schema"] == setup.task.options_model.model_json_schema()
    assert info["synthetic_demo"] is True
    r = client.post(f"/api/v1/models/{name}/explain", files=upload(setup.inputs[0]))
    assert r.status_code == 200, r.text
    assert r.json()["model"]["synthetic_demo"] is True
    (res,) = r.json()["results"]
    assert res["status"] == "ok", res
    assert res["outputs"]
    assert {"result"} <= {f["role"] for f in res["files"]}
    for link in res["files"]:
        got = client.get(link["url"])
        assert got.status_code == 200, link
        if link.get("deferred"):  # drawn by this first fetch
            assert link["size"] == 0
            assert len(got.content) > 0, link
        else:
            assert len(got.content) == link["size"] > 0, link
    bad_option = client.post(
        f"/api/v1/models/{name}/predict", files=upload(setup.inputs[0]), data={"options": '{"no_such": 1}'}
    )
    assert bad_option.status_code == 422
    assert "no_such" in bad_option.json()["error"]["message"]


def test_a_corrupted_input_gives_a_clear_error(setup: Setup, client: TestClient, tmp_path: Path) -> None:
    bad = copy_input(setup.inputs[0], tmp_path / "bad")
    (item,) = setup.task.collect_inputs([bad]).items
    victim = corrupt(item)
    stem = victim.name.split(".")[0]
    code, report = predict_cli(setup, [bad, setup.inputs[1]], tmp_path / "out")
    assert code == 1
    failed, good = report["results"]
    assert failed["status"] == "error"
    assert good["status"] == "ok"
    assert stem in failed["error"] or victim.parent.name in failed["error"], failed["error"]
    r = client.post(f"/api/v1/models/{setup.task.name}/predict", files=upload(bad))
    assert r.status_code == 400, r.text
    message = r.json()["error"]["message"]
    # the service names an input by its upload (files[i]), never by the client's file or folder names
    assert "files[" in message, message
    assert victim.parent.name not in message, message
    assert str(tmp_path) not in message  # no server paths
    assert client.get("/readyz").status_code == 200


def test_volumes_come_back_in_the_input_grid(setup: Setup, tmp_path: Path) -> None:
    if setup.task.contract.kind != "volume":
        pytest.skip(f"{setup.task.name} does not output volumes")
    import nibabel as nib

    from pipelines.common.io import read_volume

    code, report = predict_cli(setup, setup.inputs[:1], tmp_path, "--explain")
    assert code == 0
    (item,) = setup.task.collect_inputs(setup.inputs[:1]).items
    ref = read_volume(next(iter(item.paths.values())))
    volumes = [f for f in report["results"][0]["files"] if f["path"].endswith((".nii", ".nii.gz"))]
    assert {f["role"] for f in volumes} >= {"segmentation", "probabilities"}
    for f in volumes:
        img = nib.load(str(tmp_path / f["path"]))
        assert img.shape[:3] == ref.shape, f
        np.testing.assert_allclose(img.affine, ref.affine, atol=1e-4)
