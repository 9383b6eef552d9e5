"""``medinfer predict --ray`` (Ray Data) against the single-process run: the same files, results and failures.

One local Ray instance for the module (``ray.init(num_cpus=2)``). Each task's untrained tiny checkpoint predicts a
folder of its synthetic inputs with one corrupted copy among them, with and without ``--ray``: every file written is
the same byte for byte, and so are the reports' results but their timings. The driver's order and stop rules are
also checked in process (the stages run inline), where a predictor can be made to fail on purpose.
"""

from __future__ import annotations

import csv
import json
import shutil
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from medinfer_testlib import cli_probe
from typer.testing import CliRunner

from app.cli import app
from pipelines.common import ray_predict
from pipelines.common.errors import InputError
from pipelines.common.predict import REPORT_CSV, REPORT_JSON, run_predictions
from pipelines.common.task import InputItem, PredictOptions, Predictor, Prepared, get_task, list_tasks

pytestmark = pytest.mark.slow  # a Ray instance and a model actor per run: about a minute in all on 2 cores

ray = pytest.importorskip("ray")


@pytest.fixture(scope="module")
def ray_instance() -> Iterator[Any]:
    ray.init(num_cpus=2, include_dashboard=False)
    try:
        yield ray
    finally:
        ray.shutdown()


#: synthetic inputs per task (and a copy of the first); batches of 2
SIZES = {"ecg": 5, "breakhis": 3, "brats": 2}


@dataclass
class Case:
    task: str
    checkpoint: Path
    folder: Path  # the inputs, one of them corrupted
    corrupted: Path


def _input_files(raw: str) -> list[Path]:
    """The files of one input: a folder's, or a file's and its same-stem siblings'."""
    src = Path(raw)
    if src.is_dir():
        return sorted(p for p in src.rglob("*") if p.is_file())
    stem = src.name.split(".")[0]
    return sorted(p for p in src.parent.iterdir() if p.is_file() and p.name.split(".")[0] == stem)


def _copy_input(raw: str, dest: Path) -> None:
    """One input (a case folder, or a file with its same-stem siblings) copied into ``dest``."""
    src = Path(raw)
    dest.mkdir(parents=True, exist_ok=True)
    if src.is_dir():
        shutil.copytree(src, dest / src.name, ignore=shutil.ignore_patterns("*seg*"))
    else:
        for f in _input_files(raw):
            shutil.copy2(f, dest / f.name)


def _corrupt(item: InputItem) -> Path:
    """Cut the largest file of an input to 40 %; return it."""
    files = [f for path in item.paths.values() for f in _input_files(str(path))]
    victim = max(files, key=lambda p: p.stat().st_size)
    data = victim.read_bytes()
    victim.write_bytes(data[: int(len(data) * 0.4)])
    return victim


def _case(task_name: str, n: int, root: Path) -> Case:
    """``n`` synthetic inputs in one folder, the first of them corrupted, and an intact copy of it in a subfolder
    (of the same name: the run names it ``<name>-2``)."""
    from pipelines.common.checkpoint import save_checkpoint

    task = get_task(task_name)
    ckpt = save_checkpoint(task.untrained_checkpoint("tiny", seed=0), root / f"{task_name}.pt")
    inputs = task.example_inputs(root / "made", n, seed=11)
    folder = root / "inputs"
    for raw in inputs:
        _copy_input(raw, folder)
    _copy_input(inputs[0], folder / "zz_copy")
    first = task.collect_inputs([str(folder)]).items[0]
    return Case(task_name, ckpt, folder, _corrupt(first))


@pytest.fixture(scope="module")
def cases(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Case]:
    return {name: _case(name, n, tmp_path_factory.mktemp(f"ray_{name}")) for name, n in SIZES.items()}


def predict(case: Case, out: Path, *extra: str) -> tuple[int, str]:
    args = ["predict", case.task, str(case.folder), "-o", str(out), "--checkpoint", str(case.checkpoint)]
    result = CliRunner().invoke(app, [*args, "--device", "cpu", "--batch-size", "2", *extra])
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception  # a crash, not an exit code
    return result.exit_code, result.output


def written(out: Path) -> dict[str, bytes]:
    """Every file under ``out`` by relative path; the reports are there, their contents compared apart (timings)."""
    skip = {REPORT_JSON, REPORT_CSV}
    return {p.relative_to(out).as_posix(): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()} | {
        name: b"" for name in skip if (out / name).is_file()
    }


def report_without_timings(out: Path) -> tuple[dict[str, Any], list[list[str]]]:
    doc = json.loads((out / REPORT_JSON).read_text(encoding="utf-8"))
    doc.pop("startup_s", None)
    for r in doc["results"]:
        r.pop("seconds")
        r.pop("timings")
    with (out / REPORT_CSV).open(newline="", encoding="utf-8") as fh:
        rows = list(csv.reader(fh))
    seconds = rows[0].index("seconds")
    return doc, [row[:seconds] + row[seconds + 1 :] for row in rows]


def assert_same_run(plain: Path, on_ray: Path) -> dict[str, Any]:
    files_plain, files_ray = written(plain), written(on_ray)
    assert sorted(files_ray) == sorted(files_plain)
    for name, data in files_plain.items():
        assert files_ray[name] == data, f"{name} differs"
    doc, rows = report_without_timings(plain)
    assert report_without_timings(on_ray) == (doc, rows)
    return doc


@pytest.mark.parametrize(
    ("task", "continue_on_error"),
    [("ecg", False), ("breakhis", True), ("brats", True)],
)
def test_ray_writes_what_the_single_process_run_writes(
    ray_instance: Any,
    cases: dict[str, Case],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    task: str,
    continue_on_error: bool,
) -> None:
    """The same files byte for byte, the same results and failures. Without --continue-on-error the batches after the
    failure (the first input's) are skipped and nothing of theirs is written, though the cluster may have run them
    ahead. Reading and the model ran in different processes (Ray did not fuse the stages), the model with the
    driver's torch threads (Ray's one per CPU would change the last digits of larger batches)."""
    case = cases[task]
    seen: list[Any] = []
    unpack = ray_predict._unpack

    def spy(blob: Any) -> Any:
        seen.append(unpack(blob))
        return seen[-1]

    monkeypatch.setattr(ray_predict, "_unpack", spy)  # the driver's copy; the workers keep theirs
    extra = ["--continue-on-error"] if continue_on_error else []
    code, _ = predict(case, tmp_path / "plain", *extra)
    code_ray, output = predict(case, tmp_path / "ray", *extra, "--ray")
    assert code_ray == code == 1, output  # the corrupted input failed in both
    doc = assert_same_run(tmp_path / "plain", tmp_path / "ray")
    statuses = [r["status"] for r in doc["results"]]
    assert statuses[0] == "error"
    assert str(case.folder) in doc["results"][0]["error"]  # the message names the corrupted input
    if continue_on_error:
        assert set(statuses[1:]) == {"ok"}
    else:  # batches of 2: the rest of batch 0 is finished, the others are not
        assert statuses[1] == "ok"
        assert set(statuses[2:]) == {"skipped"}
    names = [r["name"] for r in doc["results"]]
    assert len(set(names)) == len(names) == SIZES[task] + 1  # the copy too, under a name of its own
    assert seen
    import torch

    for batch in seen:
        assert batch.workers["prepare"] != batch.workers["run"]
        assert batch.workers["run_threads"] == str(torch.get_num_threads())  # the driver's: the same arithmetic


# -- the driver, in process: the stages inline, a predictor that fails on purpose ----------------------------------
class Faulty(Predictor):
    """A predictor that fails as told: an ``InputError`` in prepare (``bad``), a ``RuntimeError`` in run (``boom``)."""

    max_batch = 2

    def __init__(self, checkpoint: Any, options: PredictOptions) -> None:
        self.checkpoint = checkpoint
        self.options = options
        self.task_options = None

    def prepare(self, item: InputItem) -> Prepared:
        if item.name.startswith("bad"):
            raise InputError(item.name, "unreadable")
        return Prepared(item, len(item.name))

    def run(self, batch: Sequence[Prepared]) -> list[Any]:
        if any(p.item.name.startswith("boom") for p in batch):
            raise RuntimeError("the model broke on " + ", ".join(p.item.name for p in batch))
        return [p.data * 10 for p in batch]

    def finish(self, prepared: Prepared, raw: Any, out_dir: Path | None) -> Any:
        from pipelines.common.task import ItemOutput

        assert out_dir is not None
        (out_dir / f"{prepared.item.name}.txt").write_text(str(raw), encoding="utf-8")
        return ItemOutput({"value": raw})


def _inline_stream(_ray: Any, spec: Any, chunks: list[list[InputItem]], device: str, *_: Any) -> Iterator[dict]:
    worker = ray_predict.ModelWorker(spec, device)
    for k, chunk in enumerate(chunks):
        row = ray_predict.prepare_stage({"k": k, "blob": ray_predict._pack(ray_predict._Batch(chunk))}, spec)
        out = worker({"k": np.asarray([row["k"]]), "blob": np.asarray([row["blob"]], dtype=object)})
        yield {"k": out["k"][0], "blob": out["blob"][0]}


@pytest.fixture
def faulty(ray_instance: Any, monkeypatch: pytest.MonkeyPatch) -> Faulty:
    from pipelines.common.checkpoint import Checkpoint

    ckpt = Checkpoint(task="ecg", model_name="none", model_kwargs={}, state_dict={}, labels=[])
    predictor = Faulty(ckpt, PredictOptions(device="cpu"))
    monkeypatch.setattr(ray_predict, "_stream", _inline_stream)
    monkeypatch.setattr(ray_predict.WorkerSpec, "load", lambda self, device: predictor)
    return predictor


def _items(*names: str) -> list[InputItem]:
    return [InputItem(n, {"file": Path(f"/data/{n}.x")}) for n in names]


def _run_both(predictor: Predictor, items: list[InputItem], tmp_path: Path, **kw: Any) -> tuple[Any, Any]:
    outcomes: list[tuple[str, Any, dict[str, bytes]]] = []
    for mode, runner in (("plain", run_predictions), ("ray", ray_predict.run_predictions_ray)):
        try:
            runner(predictor, items, tmp_path / mode, task="ecg", **kw)
        except RuntimeError as exc:
            outcomes.append(("raised", str(exc), written(tmp_path / mode)))
        else:
            doc, rows = report_without_timings(tmp_path / mode)
            outcomes.append(("report", (doc, rows), written(tmp_path / mode)))
    return outcomes[0], outcomes[1]


@pytest.mark.parametrize(
    ("names", "continue_on_error", "expected"),
    [
        (("a", "bad1", "c", "d", "e"), False, ["ok", "error", "skipped", "skipped", "skipped"]),
        (("a", "bad1", "c", "d", "e"), True, ["ok", "error", "ok", "ok", "ok"]),
        (("bad0", "a", "boom", "c"), False, ["error", "ok", "skipped", "skipped"]),  # the stop hides the raise
        (("a", "b", "boom", "c"), False, None),  # raises, after batch 0 was written
        (("a", "a", "A", "report"), True, ["ok"] * 4),  # the same unique names
    ],
)
def test_driver_keeps_the_single_process_rules(
    faulty: Faulty,
    tmp_path: Path,
    names: tuple[str, ...],
    continue_on_error: bool,
    expected: list[str] | None,
) -> None:
    plain, on_ray = _run_both(faulty, _items(*names), tmp_path, continue_on_error=continue_on_error)
    assert on_ray == plain
    if expected is None:
        assert plain[0] == "raised"
        assert plain[1] == "the model broke on boom, c"
        assert sorted(plain[2]) == ["a.txt", "b.txt"]
    else:
        doc, _ = plain[1]
        assert [r["status"] for r in doc["results"]] == expected


def test_an_exception_that_cannot_travel_becomes_a_remote_error() -> None:
    assert isinstance(ray_predict._portable(KeyError("k")), KeyError)
    try:
        raise InputError("a.hea", "bad")  # a constructor of two arguments: no round trip through pickle
    except InputError as exc:
        unpicklable = ray_predict._portable(exc)
    assert isinstance(unpicklable, ray_predict.RemoteError)
    assert "InputError in a Ray worker: a.hea: bad" in str(unpicklable)
    assert "Traceback" in str(unpicklable)
    assert "test_ray_predict.py" in str(unpicklable)  # where it was raised


@pytest.mark.parametrize("task_name", list_tasks())
def test_every_tasks_prepared_input_travels_intact(task_name: str, tmp_path: Path) -> None:
    """What Ray carries: an input prepared by one predictor, pickled and back, runs to the same output, and another
    predictor (another process's: other transform objects) finishes it into the same files."""
    task = get_task(task_name)
    ckpt = task.untrained_checkpoint("tiny", seed=0)
    here, there = (task.load_predictor(ckpt, PredictOptions(device="cpu")) for _ in range(2))
    (item,) = task.collect_inputs(task.example_inputs(tmp_path / "in", 1, seed=3)).items
    prepared = here.prepare(item)
    batch = ray_predict._unpack(ray_predict._pack(ray_predict._Batch([item], raws=[prepared])))
    (travelled,) = ray_predict.release_traces(batch.raws)
    assert type(travelled.data) is type(prepared.data)
    (want,) = here.run([prepared])
    (got,) = there.run([travelled])
    assert _same(want, got)
    expected = here.finish(prepared, want, tmp_path / "here")
    assert there.finish(travelled, got, tmp_path / "there").data == expected.data
    assert written(tmp_path / "there") == written(tmp_path / "here")


def _same(a: Any, b: Any) -> bool:
    """Equal nested outputs: dicts, lists, arrays and tensors compared exactly."""
    import torch

    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list | tuple):
        return type(a) is type(b) and len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and torch.equal(a, b)
    if isinstance(a, np.ndarray):
        return isinstance(b, np.ndarray) and a.dtype == b.dtype and np.array_equal(a, b)
    return bool(a == b)


# -- the command line -------------------------------------------------------------------------------------------
def test_default_predict_does_not_import_ray(cases: dict[str, Case], tmp_path: Path) -> None:
    case = cases["ecg"]
    args = ["predict", "ecg", str(case.folder), "-o", str(tmp_path / "out"), "--checkpoint", str(case.checkpoint)]
    probe, stderr = cli_probe([*args, "--device", "cpu", "--continue-on-error"], ("ray",))
    assert probe == {"code": 1, "imported": []}, stderr  # 1: the corrupted input


def test_ray_missing_is_a_usage_error_naming_the_extra(
    cases: dict[str, Case], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray now fails
    code, output = predict(cases["ecg"], tmp_path / "out", "--ray")
    assert code == 2
    assert "pip install 'medinfer[distributed]'" in output
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--ray-workers", "2"], "--ray-workers only with --ray"),
        (["--ray-address", "h:6379", "--num-gpus-per-worker", "1"], "--ray-address, --num-gpus-per-worker only with"),
        (["--ray", "--prefetch", "1"], "--prefetch is the single-process run's"),
        (["--ray", "--num-gpus-per-worker", "1"], "with --device cpu: the actors would hold GPUs"),
    ],
)
def test_ray_options_are_checked_first(cases: dict[str, Case], tmp_path: Path, extra: list[str], message: str) -> None:
    code, output = predict(cases["ecg"], tmp_path / "out", *extra)
    assert code == 2
    assert message in " ".join(output.split())


def test_worker_device_and_pool_sizes() -> None:
    assert ray_predict.worker_device("auto", 0) == "cpu"
    assert ray_predict.worker_device("auto", 0.5) == "cuda"
    assert ray_predict.worker_device("cuda:1", 1) == "cuda:1"
    with pytest.raises(ValueError, match="--device cuda with --ray needs --num-gpus-per-worker above 0"):
        ray_predict.worker_device("cuda", 0)

    class Cluster:
        def __init__(self, cpus: float, gpus: float) -> None:
            self.resources = {"CPU": cpus, "GPU": gpus}

        def cluster_resources(self) -> dict[str, float]:
            return self.resources

    assert ray_predict.pool_sizes(Cluster(2, 0), 0, None) == (1, 2)
    assert ray_predict.pool_sizes(Cluster(16, 4), 0.5, None) == (8, 16)
    assert ray_predict.pool_sizes(Cluster(16, 4), 1, 3) == (3, 16)
    with pytest.raises(ValueError, match="2 model actor\\(s\\) would hold all 2 CPU\\(s\\)"):
        ray_predict.pool_sizes(Cluster(2, 0), 0, 2)


def test_an_unreachable_cluster_is_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(**kw: Any) -> None:
        raise ConnectionError("could not reach the GCS")

    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", refuse)
    with (
        pytest.raises(ray_predict.RayUnavailable, match=r"cannot connect to the Ray cluster at h:6379: could not"),
        ray_predict.ray_session("h:6379"),
    ):
        pass
