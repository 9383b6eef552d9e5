"""The pipelined runner (prepare ahead, finish behind) gives the sequential runner's report, and overlaps for real."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from pipelines.common.checkpoint import Checkpoint
from pipelines.common.errors import InputError
from pipelines.common.predict import THREAD_PREFIX, Report, run_predictions
from pipelines.common.task import Collected, InputItem, ItemOutput, PredictOptions, Predictor, Prepared

WAIT_S = 20.0  # an event that never comes fails the test after this long; one that comes ends the wait at once


class Toy(Predictor):
    """Reads a number and adds one. ``bad`` fails prepare, ``boom`` raises RuntimeError in prepare, 50 fails run
    (its whole batch), 13 fails finish, ``crash-run``/``crash-finish`` (values 66/77) raise RuntimeError there."""

    def __init__(self, max_batch: int) -> None:  # no checkpoint needed for an analytic model
        self.max_batch = max_batch
        self.options = PredictOptions()
        self.checkpoint = Checkpoint("toy", "toy", {}, {}, [])
        self.lock = threading.Lock()
        self.prepared: list[str] = []

    def prepare(self, item: InputItem) -> Prepared:
        path = item.paths["x"]
        text = path.read_text(encoding="utf-8")
        with self.lock:
            self.prepared.append(item.name)
        if text == "boom":
            raise RuntimeError(f"{path.name}: reader bug")
        try:
            return Prepared(item, float(text), timings={"read": 0.0})
        except ValueError as exc:
            raise InputError(path, "is not a number") from exc

    def run(self, batch: Sequence[Prepared]) -> list[Any]:
        values = [p.data for p in batch]
        if 50 in values:
            raise InputError(batch[values.index(50)].item.paths["x"], "the batch failed")
        if 66 in values:
            raise RuntimeError("run bug")
        return [v + 1 for v in values]

    def finish(self, prepared: Prepared, raw: Any, out_dir: Path) -> ItemOutput:
        if raw == 14:
            raise InputError(prepared.item.paths["x"], "unlucky")
        if raw == 78:
            raise RuntimeError("finish bug")
        path = out_dir / f"{prepared.item.name}.txt"
        path.write_text(str(raw), encoding="utf-8")
        output = ItemOutput({"y": raw})
        output.add("result", path, out_dir)
        return output


def _items(folder: Path, values: list[str]) -> list[InputItem]:
    folder.mkdir(parents=True, exist_ok=True)
    items = []
    for i, v in enumerate(values):
        p = folder / f"in{i}.txt"
        p.write_text(v, encoding="utf-8")
        items.append(InputItem(p.stem, {"x": p}))
    return items


def _comparable(report: Report) -> list[dict[str, Any]]:
    """A report's results without what is timing."""
    return [{k: v for k, v in r.to_dict().items() if k not in ("seconds", "timings")} for r in report.results]


def _files(out: Path) -> dict[str, str]:
    return {
        p.name: p.read_text(encoding="utf-8")
        for p in sorted(out.iterdir())
        if p.is_file() and p.name != "report.csv" and p.name != "report.json"
    }


def _live_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith(THREAD_PREFIX)]


VALUES = ["1", "2", "bad", "4", "13", "6", "50", "8", "9", "10", "11"]


@pytest.mark.parametrize("continue_on_error", [True, False])
@pytest.mark.parametrize("max_batch", [1, 2, 3])
@pytest.mark.parametrize("grouping_error", [False, True])
def test_prefetch_gives_the_sequential_report(
    tmp_path: Path, continue_on_error: bool, max_batch: int, grouping_error: bool
) -> None:
    items = _items(tmp_path / "in", VALUES)
    errors = [InputError(tmp_path / "gone.txt", "does not exist")] if grouping_error else []
    runs: dict[int, tuple[Report, list[int], dict[str, str]]] = {}
    for prefetch in (0, 1, 2, 5):
        out = tmp_path / f"out{prefetch}"
        calls: list[int] = []
        predictor = Toy(max_batch)
        report = run_predictions(
            predictor,
            Collected(list(items), list(errors)),
            out,
            task="toy",
            continue_on_error=continue_on_error,
            progress=calls.append,
            prefetch=prefetch,
            workers=3,
        )
        runs[prefetch] = (report, calls, _files(out))
        assert len(predictor.prepared) == len(set(predictor.prepared)), "an input was read twice"
        if continue_on_error:
            assert sorted(predictor.prepared) == sorted(it.name for it in items)
        csv = (out / "report.csv").read_text(encoding="utf-8").splitlines()
        assert [line.split(",")[:2] for line in csv[1:]] == [[r.input, r.status] for r in report.results]
    sequential, seq_calls, seq_files = runs[0]
    if continue_on_error and not grouping_error:  # the inputs' own failures, in order, each named
        statuses = [r.status for r in sequential.results]
        assert [statuses[2], statuses[4], statuses[6]] == ["error", "error", "error"]
        assert statuses.count("skipped") == 0
        assert "in2.txt: is not a number" in (sequential.results[2].error or "")
        assert "unlucky" in (sequential.results[4].error or "")
        assert "the batch failed" in (sequential.results[6].error or "")
    for prefetch in (1, 2, 5):
        report, calls, files = runs[prefetch]
        assert _comparable(report) == _comparable(sequential), prefetch
        assert calls == seq_calls
        assert files == seq_files
        assert (
            json.loads((tmp_path / f"out{prefetch}" / "report.json").read_text(encoding="utf-8"))["counts"]
            == (sequential.to_dict()["counts"])
        )
    assert _live_threads() == []


def test_sequential_mode_prepares_nothing_ahead(tmp_path: Path) -> None:
    """``prefetch=0`` is the old runner: after a failure nothing more is read, and nothing runs in other threads."""
    predictor = Toy(max_batch=2)
    report = run_predictions(predictor, _items(tmp_path, ["1", "bad", "3", "4"]), tmp_path / "o", task="t", prefetch=0)
    assert [r.status for r in report.results] == ["ok", "error", "skipped", "skipped"]
    assert predictor.prepared == ["in0", "in1"]


class Overlapping(Toy):
    """Proves the overlap with events: ``run`` of batch k waits until the prepare of batch k+1 has started, and
    until the finish of batch k-1 has started; sequentially neither can happen, and the wait times out."""

    def __init__(self, n: int) -> None:
        super().__init__(max_batch=1)
        self.n = n
        self.prepare_started = [threading.Event() for _ in range(n)]
        self.finish_started = [threading.Event() for _ in range(n)]
        self.seen: list[tuple[int, bool, bool]] = []

    def prepare(self, item: InputItem) -> Prepared:
        self.prepare_started[int(item.name.removeprefix("in"))].set()
        return super().prepare(item)

    def run(self, batch: Sequence[Prepared]) -> list[Any]:
        k = int(batch[0].item.name.removeprefix("in"))
        next_prepared = k + 1 >= self.n or self.prepare_started[k + 1].wait(WAIT_S)
        last_finishing = k == 0 or self.finish_started[k - 1].wait(WAIT_S)
        self.seen.append((k, next_prepared, last_finishing))
        return super().run(batch)

    def finish(self, prepared: Prepared, raw: Any, out_dir: Path) -> ItemOutput:
        self.finish_started[int(prepared.item.name.removeprefix("in"))].set()
        return super().finish(prepared, raw, out_dir)


def test_prepare_and_finish_overlap_the_forward_pass(tmp_path: Path) -> None:
    predictor = Overlapping(6)
    items = _items(tmp_path / "in", [str(i) for i in range(6)])
    report = run_predictions(predictor, items, tmp_path / "o", task="t", prefetch=2)
    assert report.ok
    assert predictor.seen == [(k, True, True) for k in range(6)]
    assert _live_threads() == []


class Bounded(Toy):
    """``run`` of the first batch waits until every batch that may be prepared ahead has been, then a little for
    any that may not."""

    def __init__(self, n: int, prefetch: int) -> None:
        super().__init__(max_batch=2)
        self.started = [threading.Event() for _ in range(n)]
        self.allowed = 2 * (1 + prefetch)  # the running batch and ``prefetch`` more
        self.beyond: bool | None = None

    def prepare(self, item: InputItem) -> Prepared:
        self.started[int(item.name.removeprefix("in"))].set()
        return super().prepare(item)

    def run(self, batch: Sequence[Prepared]) -> list[Any]:
        if self.beyond is None:
            assert all(e.wait(WAIT_S) for e in self.started[: self.allowed])
            self.beyond = self.started[self.allowed].wait(0.3)
        return super().run(batch)


@pytest.mark.parametrize("prefetch", [1, 2])
def test_prefetch_is_bounded(tmp_path: Path, prefetch: int) -> None:
    predictor = Bounded(12, prefetch)
    report = run_predictions(
        predictor, _items(tmp_path, [str(i) for i in range(12)]), tmp_path / "o", task="t", prefetch=prefetch, workers=8
    )
    assert report.ok
    assert predictor.beyond is False


@pytest.mark.parametrize(("where", "message"), [("boom", "reader bug"), ("66", "run bug"), ("77", "finish bug")])
@pytest.mark.parametrize("max_batch", [1, 2])
def test_other_exceptions_propagate_and_stop_the_threads(
    tmp_path: Path, where: str, message: str, max_batch: int
) -> None:
    """A bug (not an ``InputError``) propagates as sequentially, after what came before it was finished."""
    values = ["1", "2", "3", where, "5", "boom", "7"]
    written = {}
    for prefetch in (0, 2):
        out = tmp_path / f"out{prefetch}"
        with pytest.raises(RuntimeError, match=message):
            run_predictions(Toy(max_batch), _items(tmp_path / "in", values), out, task="t", prefetch=prefetch)
        assert _live_threads() == []
        written[prefetch] = _files(out)
    assert written[2] == written[0]
    assert "in0.txt" in written[0]


@pytest.mark.parametrize("failure", ["bad", "13", "50"])  # fails prepare, finish, run
@pytest.mark.parametrize(("bug", "message"), [("boom", "reader bug"), ("66", "run bug")])
@pytest.mark.parametrize("continue_on_error", [True, False])
def test_a_bug_after_a_stopping_failure_is_never_reached(
    tmp_path: Path, failure: str, bug: str, message: str, continue_on_error: bool
) -> None:
    """Sequentially, the bug after a failure is never reached once that failure stopped the run: prepared or run
    ahead, its exception is dropped; when the run goes on, it propagates."""
    items = _items(tmp_path, ["1", failure, bug, "4"])
    if continue_on_error:
        with pytest.raises(RuntimeError, match=message):
            run_predictions(Toy(1), items, tmp_path / "o", task="t", continue_on_error=True, prefetch=3)
        return
    for prefetch in (0, 3):
        report = run_predictions(Toy(1), items, tmp_path / f"o{prefetch}", task="t", prefetch=prefetch, workers=4)
        assert [r.status for r in report.results] == ["ok", "error", "skipped", "skipped"]
    assert _live_threads() == []


def test_seconds_are_each_inputs_own_work(tmp_path: Path) -> None:
    """An input's ``seconds`` leaves out the time it waited for the others of its batch: sequentially, the seconds
    of all the inputs add up to no more than the run took (each input waits ~0.15 s for the others to be read)."""

    class Slow(Toy):
        def prepare(self, item: InputItem) -> Prepared:
            time.sleep(0.05)
            return super().prepare(item)

    t0 = time.perf_counter()
    report = run_predictions(Slow(4), _items(tmp_path, ["1", "2", "3", "4"]), tmp_path / "o", task="t", prefetch=0)
    wall = time.perf_counter() - t0
    assert sum(r.seconds for r in report.results) <= wall
    for r in report.results:
        assert set(r.timings) == {"read", "infer", "queue"}
        assert r.seconds >= 0.05


def test_startup_is_reported_only_when_measured(tmp_path: Path) -> None:
    items = _items(tmp_path, ["1"])
    report = run_predictions(Toy(1), items, tmp_path / "a", task="t", started_at=time.time() - 5.0)
    assert report.startup_s is not None
    assert 5.0 <= report.startup_s < 60.0
    assert json.loads((tmp_path / "a" / "report.json").read_text(encoding="utf-8"))["startup_s"] >= 5.0
    plain = run_predictions(Toy(1), items, tmp_path / "b", task="t")
    assert "startup_s" not in json.loads((tmp_path / "b" / "report.json").read_text(encoding="utf-8"))
    assert plain.startup_s is None


class MainThreadOnly(Toy):
    """Says that overlapping does not pay for it (``prefetch = 0``); records the thread of each step."""

    prefetch = 0

    def __init__(self) -> None:
        super().__init__(max_batch=2)
        self.threads: set[str] = set()

    def prepare(self, item: InputItem) -> Prepared:
        self.threads.add(threading.current_thread().name)
        return super().prepare(item)

    def finish(self, prepared: Prepared, raw: Any, out_dir: Path) -> ItemOutput:
        self.threads.add(threading.current_thread().name)
        return super().finish(prepared, raw, out_dir)


def test_the_predictor_chooses_the_default_prefetch(tmp_path: Path) -> None:
    items = _items(tmp_path, ["1", "2", "3", "4", "5"])
    own = MainThreadOnly()
    run_predictions(own, items, tmp_path / "a", task="t")
    assert own.threads == {threading.main_thread().name}
    told = MainThreadOnly()
    run_predictions(told, items, tmp_path / "b", task="t", prefetch=1)  # an explicit prefetch wins
    assert {name.rsplit("_", 1)[0] for name in told.threads} == {f"{THREAD_PREFIX}-prepare", f"{THREAD_PREFIX}-finish"}


@pytest.mark.parametrize(
    ("device", "cores", "torch_threads", "expected"),
    [("cpu", 2, 2, 0), ("cpu", 4, 2, 2), ("cuda", 2, 2, 2), ("cpu", 1, 1, 0)],
)
def test_reading_ahead_needs_a_core_of_its_own(
    monkeypatch: pytest.MonkeyPatch, device: str, cores: int, torch_threads: int, expected: int
) -> None:
    """By default a predictor reads ahead on a GPU, or on a CPU with cores beside torch's threads; else not."""
    import torch

    import pipelines.common.predict as runner

    monkeypatch.setattr(runner, "usable_cores", lambda: cores)
    monkeypatch.setattr(torch, "get_num_threads", lambda: torch_threads)
    predictor = Toy(1)
    predictor.device = torch.device(device)  # type: ignore[attr-defined]
    assert predictor.prefetch == 2
    assert runner.default_prefetch(predictor) == expected


def test_bad_pipeline_settings_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="prefetch must be 0 or more"):
        run_predictions(Toy(1), [], tmp_path, task="t", prefetch=-1)
    with pytest.raises(ValueError, match="workers must be 1 or more"):
        run_predictions(Toy(1), [], tmp_path, task="t", workers=0)


@pytest.mark.slow  # the CLI end to end with a (random) tiny ECG network: ~10 s
def test_ecg_cli_report_is_the_same_with_and_without_prefetch(tmp_path: Path) -> None:
    """``medinfer predict ecg`` on synthetic records and a broken one: sequential, pipelined and the default."""
    from app.cli import app
    from pipelines.common.checkpoint import save_checkpoint
    from pipelines.common.task import get_task

    task = get_task("ecg")
    ckpt = save_checkpoint(task.untrained_checkpoint("tiny"), tmp_path / "ecg.pt")
    inputs = task.example_inputs(tmp_path / "records", 4, seed=3)
    broken = tmp_path / "records" / "broken.npy"
    broken.write_bytes(b"not an array")
    inputs.insert(2, str(broken))
    reports = {}
    for name, extra in (("sequential", ["--prefetch", "0"]), ("pipelined", ["--prefetch", "2"]), ("default", [])):
        out = tmp_path / name
        args = ["predict", "ecg", *inputs, "-o", str(out), "--checkpoint", str(ckpt), "--device", "cpu"]
        res = CliRunner().invoke(app, [*args, "--batch-size", "2", "--continue-on-error", *extra])
        assert res.exit_code == 1, res.output  # the broken record failed, the others not
        data = json.loads((out / "report.json").read_text(encoding="utf-8"))
        assert data["startup_s"] > 0
        for r in data["results"]:
            r.pop("seconds")
            r.pop("timings")
        files = {p.name: p.read_text(encoding="utf-8") for p in sorted(out.iterdir()) if p.suffix in (".json", ".csv")}
        files.pop("report.json")
        files.pop("report.csv")
        reports[name] = (data["counts"], data["results"], files)
    assert reports["pipelined"] == reports["sequential"]
    assert reports["default"] == reports["sequential"]
    counts, results, _ = reports["sequential"]
    assert counts == {"ok": 4, "error": 1, "skipped": 0}
    assert results[2]["status"] == "error"
    assert "broken.npy" in results[2]["error"]
