"""The prediction runner, the trainer loop, the task registry and shared metrics, with analytic models."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from pipelines.common.checkpoint import Checkpoint
from pipelines.common.errors import InputError
from pipelines.common.metrics import HD95_EMPTY_PENALTY, dice_hd95, summarize
from pipelines.common.predict import run_predictions
from pipelines.common.task import (
    Collected,
    InputItem,
    ItemOutput,
    PredictOptions,
    Predictor,
    Prepared,
    get_task,
    list_tasks,
)


class PlusOne(Predictor):
    """Reads a number from a text file and adds one; ``bad`` files fail in prepare, 13 fails in finish."""

    def __init__(self, max_batch: int) -> None:  # no checkpoint needed for an analytic model
        self.max_batch = max_batch
        self.options = PredictOptions()
        self.checkpoint = Checkpoint("toy", "toy", {}, {}, [])
        self.batches: list[int] = []

    def prepare(self, item: InputItem) -> Prepared:
        path = item.paths["x"]
        try:
            return Prepared(item, float(path.read_text(encoding="utf-8")))
        except ValueError as exc:
            raise InputError(path, "is not a number") from exc

    def run(self, batch: Sequence[Prepared]) -> list[Any]:
        self.batches.append(len(batch))
        return (torch.tensor([p.data for p in batch]) + 1).tolist()

    def finish(self, prepared: Prepared, raw: Any, out_dir: Path) -> ItemOutput:
        if raw == 14:
            raise InputError(prepared.item.paths["x"], "unlucky")
        path = out_dir / f"{prepared.item.name}.txt"
        path.write_text(str(raw), encoding="utf-8")
        output = ItemOutput({"y": raw})
        output.add("result", path, out_dir)
        return output


def _items(tmp_path: Path, values: list[str]) -> list[InputItem]:
    items = []
    for i, v in enumerate(values):
        p = tmp_path / f"in{i}.txt"
        p.write_text(v, encoding="utf-8")
        items.append(InputItem(p.stem, {"x": p}))
    return items


def test_runner_batches_and_reports(tmp_path: Path) -> None:
    predictor = PlusOne(max_batch=3)
    items = _items(tmp_path, ["1", "2", "bad", "4", "13", "6", "7"])
    report = run_predictions(predictor, items, tmp_path / "out", task="toy", continue_on_error=True)
    assert predictor.batches == [2, 3, 1]  # the bad one never reaches run; batches of at most 3
    statuses = [r.status for r in report.results]
    assert statuses == ["ok", "ok", "error", "ok", "error", "ok", "ok"]
    assert [r.outputs.get("y") for r in report.results] == [2, 3, None, 5, None, 7, 8]
    data = json.loads((tmp_path / "out" / "report.json").read_text(encoding="utf-8"))
    assert data["counts"] == {"ok": 5, "error": 2, "skipped": 0}
    assert "in2.txt: is not a number" in data["results"][2]["error"]
    assert "unlucky" in data["results"][4]["error"]
    assert not report.ok


def test_runner_stops_without_continue(tmp_path: Path) -> None:
    report = run_predictions(PlusOne(max_batch=1), _items(tmp_path, ["1", "x", "3"]), tmp_path / "o", task="toy")
    assert [r.status for r in report.results] == ["ok", "error", "skipped"]


def test_report_lists_each_inputs_files_by_role(tmp_path: Path) -> None:
    report = run_predictions(PlusOne(max_batch=2), _items(tmp_path, ["1", "2"]), tmp_path / "o", task="toy")
    data = json.loads((tmp_path / "o" / "report.json").read_text(encoding="utf-8"))
    assert [r["files"] for r in data["results"]] == [
        [{"role": "result", "path": "in0.txt"}],
        [{"role": "result", "path": "in1.txt"}],
    ]
    assert report.results[0].files[0].role == "result"


def test_grouping_errors_come_first_and_stop_the_run(tmp_path: Path) -> None:
    """Paths ``collect_inputs`` could not use are errors of the report, never sentinel items."""
    items = _items(tmp_path, ["1", "2"])
    collected = Collected(items, [InputError(tmp_path / "gone.txt", "does not exist")])
    stopped = run_predictions(PlusOne(max_batch=1), collected, tmp_path / "a", task="toy")
    assert [r.status for r in stopped.results] == ["error", "skipped", "skipped"]
    assert stopped.results[0].error == f"{tmp_path / 'gone.txt'}: does not exist"
    going = run_predictions(PlusOne(max_batch=1), collected, tmp_path / "b", task="toy", continue_on_error=True)
    assert [r.status for r in going.results] == ["error", "ok", "ok"]


def test_task_registry_discovers_and_suggests() -> None:
    assert "brats" in list_tasks()
    assert get_task("brats").contract.channels == ("t1", "t1ce", "t2", "flair")
    with pytest.raises(ValueError, match="did you mean brats"):
        get_task("bratz")


def test_dice_hd95_closed_forms() -> None:
    ref = np.zeros((2, 20, 20, 20), bool)
    ref[:, 5:15, 5:15, 5:15] = True
    shifted = np.roll(ref, 1, axis=1)  # one voxel along x
    out = dice_hd95(shifted, ref, spacing=(2.0, 1.0, 1.0), region_names=("a", "b"))
    assert out["dice_a"] == pytest.approx(2 * 900 / 2000)  # overlap 9×10×10 of two 1000-voxel cubes
    assert out["hd95_a"] == pytest.approx(2.0)  # one voxel of 2 mm
    empty = np.zeros((2, 4, 4, 4), bool)
    one = empty.copy()
    one[1, 1, 1, 1] = True
    both_empty = dice_hd95(empty, empty, (1, 1, 1), ("x", "y"))
    assert both_empty == {"dice_x": 1.0, "hd95_x": 0.0, "dice_y": 1.0, "hd95_y": 0.0}
    one_empty = dice_hd95(empty, one, (1, 1, 1), ("x", "y"))
    assert one_empty["dice_y"] == 0.0
    assert one_empty["hd95_y"] == HD95_EMPTY_PENALTY
    with pytest.raises(ValueError, match="differs"):
        dice_hd95(empty, empty[:, :2], (1, 1, 1), ("x", "y"))


def test_summarize_skips_non_finite() -> None:
    s = summarize([1.0, 2.0, 3.0, float("nan")])
    assert s["mean"] == 2.0
    assert s["median"] == 2.0
    assert s["n"] == 3
    assert math.isnan(summarize([])["mean"])


def test_a_run_that_loses_outputs_is_an_error_naming_the_predictor() -> None:
    """``run_batch`` (the single-process pipeline's and the Ray actors' forward step) checks one output per input."""
    from pipelines.common.predict import run_batch

    class Short:
        def run(self, prepared: list) -> list:
            return prepared[:-1]

    with pytest.raises(ValueError, match=r"Short\.run returned 1 outputs for 2 inputs"):
        run_batch(Short(), ["a", "b"])  # type: ignore[arg-type, list-item]
    assert run_batch(type("Whole", (), {"run": lambda self, p: list(p)})(), ["a"]) == ["a"]  # type: ignore[arg-type, list-item]
