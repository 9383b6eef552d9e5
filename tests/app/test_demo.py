"""``medinfer demo``: demo checkpoints trained once and cached apart from the user's, never overwriting them;
provenance with ``synthetic_demo`` on every result, report and model listing; a busy port found before any
training; the closing table and curl examples.

The analytic ``addone`` task stands in for a real one (its training is a file write, counted here); the real tasks'
training records the same provenance through the trainer (tests/pipelines/*/test_*_learning.py).
"""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import pytest
import serve_testkit
from serve_testkit import AddOneTask, started_client
from typer.testing import CliRunner

from app.cli import app as cli
from app.demo import Demo, curl_example, output_table, service_lines
from app.settings import Settings, port_problem
from pipelines.common.checkpoint import load_checkpoint, make_provenance, save_checkpoint
from pipelines.common.config import TaskConfig
from pipelines.common.synthetic import mark_synthetic
from pipelines.common.task import InputItem, TrainOptions


class _TinyConfig(TaskConfig):
    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {"tiny": {}}


@pytest.fixture
def trained(monkeypatch: pytest.MonkeyPatch) -> list[TrainOptions]:
    """Every training the demo asks for; each writes a checkpoint with the provenance a real run records."""
    calls: list[TrainOptions] = []

    def train(self: AddOneTask, options: TrainOptions) -> Path:
        calls.append(options)
        options.out_dir.mkdir(parents=True, exist_ok=True)
        ckpt = serve_testkit.checkpoint()
        ckpt.provenance = {
            **make_provenance(options.data_dir.name, "synthetic.md", options.seed, task="addone", synthetic=True),
            **options.provenance,
        }
        save_checkpoint(ckpt, options.out_dir / "best.pt")
        return options.out_dir

    def generate(self: AddOneTask, out_dir: Path, n: int, seed: int, dicom: bool, variant: str | None) -> Any:
        root, info = original_generate(self, out_dir, n, seed, dicom, variant)
        mark_synthetic(root, {"task": "addone"})
        return root, info

    original_generate = AddOneTask.generate
    monkeypatch.setattr(AddOneTask, "train", train)
    monkeypatch.setattr(AddOneTask, "generate", generate)
    monkeypatch.setattr(AddOneTask, "config_class", _TinyConfig)
    return calls


@pytest.fixture
def user_checkpoints(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The user's own checkpoints folder, holding their addone model."""
    folder = tmp_path / "mine"
    serve_testkit.install(folder)
    monkeypatch.setenv("MEDINFER_CHECKPOINTS", str(folder))
    return folder


def _demo(out: Path, **kwargs: Any) -> Demo:
    lines: list[str] = []
    demo = Demo(out, quiet=True, echo=lines.append, **kwargs)
    demo.lines = lines  # type: ignore[attr-defined]
    return demo


def test_demo_checkpoints_are_trained_once_then_reused(tmp_path: Path, trained: list[TrainOptions]) -> None:
    out = tmp_path / "demo"
    done, _ = _demo(out).run(["addone"])
    assert len(trained) == 1
    assert trained[0].preset == "tiny"
    assert trained[0].quiet
    ckpt_path = out / "checkpoints" / "addone.pt"
    assert done[0].checkpoint == ckpt_path
    assert done[0].trained
    first_bytes = ckpt_path.read_bytes()
    data_stamp = (out / "data" / "addone.demo.json").stat().st_mtime_ns

    again = _demo(out)
    done, _ = again.run(["addone"])
    assert len(trained) == 1, "the cached checkpoint was trained again"
    assert not done[0].trained
    assert ckpt_path.read_bytes() == first_bytes
    assert (out / "data" / "addone.demo.json").stat().st_mtime_ns == data_stamp, "the data were written again"
    assert any("reusing" in line for line in again.lines)  # type: ignore[attr-defined]
    assert done[0].report["counts"]["ok"] >= 1


def test_predictions_are_redone_only_when_their_checkpoint_or_inputs_change(
    tmp_path: Path, trained: list[TrainOptions]
) -> None:
    out = tmp_path / "demo"
    _demo(out).run(["addone"])
    report = out / "predictions" / "addone" / "report.json"
    made = report.stat().st_mtime_ns
    done, _ = _demo(out).run(["addone"])
    assert report.stat().st_mtime_ns == made, "the same predictions were made again"
    assert done[0].report == json.loads(report.read_text(encoding="utf-8"))
    _demo(out, seed=2).run(["addone"])  # another checkpoint (and other inputs)
    assert report.stat().st_mtime_ns != made
    made = report.stat().st_mtime_ns
    (out / "predictions" / "addone" / "stray.txt").write_text("x")
    _demo(out, seed=2, retrain=True).run(["addone"])
    assert report.stat().st_mtime_ns != made
    assert not (out / "predictions" / "addone" / "stray.txt").exists(), "a rerun mixed with the last run's files"


def test_a_checkpoint_trained_another_way_or_broken_is_trained_again(
    tmp_path: Path, trained: list[TrainOptions]
) -> None:
    out = tmp_path / "demo"
    _demo(out).run(["addone"])
    _demo(out, seed=1).run(["addone"])  # another seed: another key
    assert len(trained) == 2
    (out / "checkpoints" / "addone.pt").write_bytes(b"not a checkpoint")
    demo = _demo(out, seed=1)
    demo.run(["addone"])
    assert len(trained) == 3
    assert any("does not load" in line for line in demo.lines)  # type: ignore[attr-defined]
    _demo(out, seed=1, retrain=True).run(["addone"])
    assert len(trained) == 4


def test_the_users_checkpoints_are_never_touched(
    tmp_path: Path, trained: list[TrainOptions], user_checkpoints: Path
) -> None:
    before = {p.name: p.read_bytes() for p in user_checkpoints.iterdir()}
    _demo(tmp_path / "demo").run(["addone"])
    assert {p.name: p.read_bytes() for p in user_checkpoints.iterdir()} == before
    assert load_checkpoint(tmp_path / "demo" / "checkpoints" / "addone.pt").provenance["trained_by"] == "medinfer demo"


def test_results_and_the_report_say_the_model_is_a_synthetic_demo(tmp_path: Path, trained: list[TrainOptions]) -> None:
    out = tmp_path / "demo"
    done, _ = _demo(out).run(["addone"])
    report = json.loads((out / "predictions" / "addone" / "report.json").read_text(encoding="utf-8"))
    assert report["model"]["synthetic_demo"] is True
    assert report["model"]["provenance"]["trained_by"] == "medinfer demo"
    assert report["model"]["provenance"]["synthetic"] is True
    assert report["model"]["provenance"]["demo_key"]["task"] == "addone"
    assert done[0].report["model"] == report["model"]


def test_the_service_says_so_in_listings_and_answers(tmp_path: Path, trained: list[TrainOptions]) -> None:
    out = tmp_path / "demo"
    _demo(out).run(["addone"])
    settings = Settings(checkpoints=out / "checkpoints", data_dir=tmp_path / "data", tasks="addone", device="cpu")
    client = started_client(settings)
    try:
        (info,) = client.get("/api/v1/models").json()["models"]
        assert info["synthetic_demo"] is True
        assert info["provenance"]["trained_by"] == "medinfer demo"
        assert info["data_card"]["name"] == "synthetic.md"
        npy = serve_testkit.npy_bytes([1.0, 2.0])
        for query in ("", "?save=true"):
            r = client.post(f"/api/v1/models/addone/predict{query}", files={"files": ("a.npy", npy)})
            assert r.status_code == 200, r.text
            assert r.json()["model"]["synthetic_demo"] is True
            assert r.json()["model"]["provenance"]["trained_by"] == "medinfer demo"
        job = client.post("/api/v1/jobs", data={"task": "addone"}, files={"files": ("a.npy", npy)}).json()
        serve_testkit.wait_until(
            lambda: client.get(f"/api/v1/jobs/{job['id']}").json()["state"] in ("succeeded", "failed")
        )
        result = client.get(f"/api/v1/jobs/{job['id']}/result").json()
        assert result["model"]["synthetic_demo"] is True
    finally:
        client.__exit__(None, None, None)


def test_the_closing_table_names_what_was_written(tmp_path: Path, trained: list[TrainOptions]) -> None:
    out = tmp_path / "demo"
    done, examples = _demo(out).run(["addone"])
    table = "\n".join(output_table(done))
    assert str(out / "checkpoints" / "addone.pt") in table
    assert "trained now" in table
    assert "report.json" in table
    by_role = done[0].files_by_role()
    assert set(by_role) == {"mask", "explanation"}  # what addone writes, explained
    for files in by_role.values():
        assert files
        assert all(f.is_file() for f in files)
        assert str(files[0]) in table
    lines = "\n".join(service_lines(out / "checkpoints", examples, 8765))
    assert "http://127.0.0.1:8765/docs" in lines
    assert "/api/v1/models/addone/predict" in lines
    assert f"medinfer serve --checkpoints {out / 'checkpoints'} --port 8765" in lines


# -- the port, before anything ---------------------------------------------------------------------------------------
@pytest.fixture
def busy_port() -> Iterator[int]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(1)
        yield sock.getsockname()[1]


def test_port_problem_tells_a_busy_port_from_a_free_one(busy_port: int) -> None:
    assert "already in use" in (port_problem("127.0.0.1", busy_port) or "")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        free = sock.getsockname()[1]
    assert port_problem("127.0.0.1", free) is None


def test_demo_reports_a_busy_port_before_any_training(
    tmp_path: Path, busy_port: int, trained: list[TrainOptions]
) -> None:
    out = tmp_path / "demo"
    result = CliRunner().invoke(cli, ["demo", "-o", str(out), "--task", "addone", "--port", str(busy_port)])
    assert result.exit_code == 2
    assert f"port {busy_port} on 127.0.0.1 is already in use" in result.output
    assert trained == []
    assert not out.exists()


def test_serve_reports_a_busy_port_before_loading_models(
    tmp_path: Path, busy_port: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    import app.main

    def no_app(*args: object, **kwargs: object) -> None:
        raise AssertionError("the app was built although the port is busy")

    monkeypatch.setattr(app.main, "create_app", no_app)
    monkeypatch.setenv("MEDINFER_CHECKPOINTS", str(tmp_path))
    result = CliRunner().invoke(cli, ["serve", "--port", str(busy_port)])
    assert result.exit_code == 2
    assert "already in use" in result.output


def test_demo_refuses_an_unknown_task(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["demo", "-o", str(tmp_path / "d"), "--task", "nosuch", "--no-serve"])
    assert result.exit_code == 2
    assert "unknown task 'nosuch'" in result.output


# -- curl examples -----------------------------------------------------------------------------------------------
def test_curl_example_sends_every_file_of_the_stem(tmp_path: Path) -> None:
    for name in ("rec.hea", "rec.dat", "other.hea"):
        (tmp_path / name).write_bytes(b"x")
    cmd = curl_example("ecg", InputItem("rec", {"record": tmp_path / "rec.hea"}), 8123)
    assert f"-F files=@{tmp_path / 'rec.dat'}" in cmd
    assert f"-F files=@{tmp_path / 'rec.hea'}" in cmd
    assert "other.hea" not in cmd
    assert cmd.endswith("http://127.0.0.1:8123/api/v1/models/ecg/predict")


def test_curl_example_zips_a_folder(tmp_path: Path) -> None:
    (tmp_path / "case").mkdir()
    cmd = curl_example("brats", InputItem("case", {"t1": tmp_path / "case"}), 8000)
    assert "zip -qr - ." in cmd
    assert "filename=case.zip" in cmd


# -- the real tasks' demo inputs -------------------------------------------------------------------------------------
#: what the demo predicts on, per task: every input kind the issue names (suffix or folder content)
DEMO_KINDS = {
    "brats": {"NIfTI case folder"},
    "prostate": {"NIfTI case folder", "DICOM series"},
    "breakhis": {"PNG"},
    "ecg": {"WFDB", "DICOM waveform"},
}


def _kind(path: Path) -> str:
    if path.is_dir():
        files = [f.name for f in path.iterdir()]
        return "DICOM series" if all(f.endswith(".dcm") for f in files) else "NIfTI case folder"
    return {".png": "PNG", ".hea": "WFDB", ".dcm": "DICOM waveform"}.get(path.suffix, path.suffix)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(DEMO_KINDS))
def test_demo_inputs_cover_each_input_kind_of_the_task(name: str, tmp_path: Path) -> None:
    from pipelines.common.task import get_task

    task = get_task(name)
    data = task.synth(tmp_path / "data" / name, n=12 if name == "ecg" else 1, seed=0)
    inputs = [Path(p) for p in task.demo_inputs(data)]
    assert {_kind(p) for p in inputs} == DEMO_KINDS[name]
    collected = task.collect_inputs([str(p) for p in inputs])
    assert not collected.errors
    assert len(collected.items) == len(inputs)
