"""Training progress: a bar on a terminal, one plain line per stage and per epoch elsewhere, nothing with --quiet."""

from __future__ import annotations

import io
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from app.cli import app
from pipelines.common.config import TaskConfig, TaskOptions
from pipelines.common.task import TrainOptions
from pipelines.common.trainer import Stage, TrainingRun, TrainProgress, format_seconds

X = torch.linspace(-1, 1, 32).unsqueeze(1)
Y = 3 * X + 1
#: a plain epoch line: stage, epoch/total, step/total, running loss, [metric], elapsed, time left
EPOCH_LINE = re.compile(
    r"^\[(?P<task>\w+)\] (?P<stage>\w+) epoch (?P<epoch>\d+)/(?P<epochs>\d+)  step (?P<step>\d+)/(?P<steps>\d+)  "
    r"loss (?P<loss>[-\d.e+]+)(?:  (?P<metric>\w+) (?P<value>[-\d.e+na]+))?  elapsed \d+:\d\d  eta (?:\d+:)?\d+:\d\d$"
)


class Tty(io.StringIO):
    """A stream that says it is a terminal."""

    def isatty(self) -> bool:
        return True


class LineConfig(TaskConfig):
    epochs: int = 3


class LineTask:
    """What the runner reads of a task."""

    name = "line"
    data_card = "line.md"
    train_options_model = TaskOptions


class LineRun(TrainingRun[LineConfig]):
    """y = 3x + 1 by SGD in four batches per epoch; validation MSE is the monitored metric; nothing is saved."""

    grad_clip = None

    def load_data(self) -> None:
        self.batches = [(X[i::4], Y[i::4]) for i in range(4)]

    def build_model(self) -> nn.Module:
        return nn.Linear(1, 1)

    def make_loader(self, stage: Stage) -> Iterable[Any]:
        return self.batches

    def configure_optimizers(self, stage: Stage) -> tuple[torch.optim.Optimizer, Any]:
        return torch.optim.SGD(self.model.parameters(), lr=0.1), None

    def train_step(self, batch: Any, stage: Stage) -> torch.Tensor:
        return nn.functional.mse_loss(self.model(batch[0]), batch[1])

    def validate(self, stage: Stage) -> dict[str, float]:
        return {"val_mse": float(nn.functional.mse_loss(self.model(X), Y))}

    def monitor(self, stage: Stage) -> tuple[str, str]:
        return "val_mse", "min"

    def on_improved(self, stage: Stage, epoch: int, metrics: dict[str, float]) -> None:
        pass

    def on_epoch_end(self, stage: Stage, epoch: int, metrics: dict[str, float]) -> None:
        pass

    def card(self) -> Any:
        raise NotImplementedError


def _fit(tmp_path: Path, progress: TrainProgress, stages: list[Stage]) -> LineRun:
    """The stages' epoch loops of a line run, reporting to ``progress``."""
    run = LineRun(LineTask(), LineConfig(), TrainOptions(data_dir=tmp_path, out_dir=tmp_path))  # type: ignore[arg-type]
    run.progress = progress
    run.load_data()
    run.model = run.build_model()
    progress.begin(stages)
    for stage in stages:
        progress.stage(stage)
        if stage.gradient:
            run.fit(stage)
    return run


def test_plain_lines_one_per_stage_and_epoch(tmp_path: Path) -> None:
    stream = io.StringIO()  # not a terminal
    stages = [Stage("warmup", 2), Stage("projection", 1, gradient=False), Stage("main", 3)]
    _fit(tmp_path, TrainProgress("line", stream=stream), stages)
    out = stream.getvalue()
    assert "\r" not in out
    lines = out.splitlines()
    assert lines[0] == "[line] stage 1/3 warmup: 2 epochs"
    assert lines[3] == "[line] stage 2/3 projection: no gradient steps"
    assert lines[4] == "[line] stage 3/3 main: 3 epochs"
    epochs = [EPOCH_LINE.match(line) for line in lines[1:3] + lines[5:]]
    assert len(lines) == 3 + 5
    assert all(m is not None for m in epochs), lines
    found = [m.groupdict() for m in epochs if m is not None]
    assert [(m["stage"], m["epoch"], m["epochs"]) for m in found] == [
        ("warmup", "1", "2"), ("warmup", "2", "2"), ("main", "1", "3"), ("main", "2", "3"), ("main", "3", "3"),
    ]  # fmt: skip
    assert {(m["step"], m["steps"], m["metric"]) for m in found} == {("4", "4", "val_mse")}
    assert float(found[-1]["loss"]) < float(found[0]["loss"])  # the running loss is the epoch's, and it learns
    assert lines[-1].endswith("eta 0:00")  # nothing left after the last epoch


def test_quiet_prints_nothing(tmp_path: Path) -> None:
    stream = Tty()
    _fit(tmp_path, TrainProgress("line", quiet=True, stream=stream), [Stage("train", 2)])
    assert stream.getvalue() == ""


def test_terminal_gets_a_bar_per_stage(tmp_path: Path) -> None:
    stream = Tty()
    _fit(tmp_path, TrainProgress("line", stream=stream), [Stage("warmup", 2), Stage("main", 3)])
    out = stream.getvalue()
    assert "\r" in out  # redrawn in place
    assert "[line] stage 1/2 warmup: 2 epochs" in out
    assert "[line] warmup 2/2" in out
    assert "8/8" in out  # 2 epochs x 4 steps
    assert "[line] main 3/3" in out
    assert "12/12" in out
    assert "val_mse" in out
    assert re.search(r"left ~\d+:\d\d", out)  # the run's time left
    assert "[line] main epoch" not in out  # no plain epoch lines on a terminal


def test_time_left_counts_later_gradient_stages() -> None:
    progress = TrainProgress("line", stream=io.StringIO())
    first, projection, last = Stage("a", 4), Stage("p", 1, gradient=False), Stage("b", 6)
    progress.begin([first, projection, last])
    progress.start_epochs(first, 10)
    progress.start_epoch(1)
    progress.epoch_seconds = [2.0]  # one epoch of 2 s done: 3 left here, 6 in "b", none for the projection
    assert progress.eta() == pytest.approx(18.0)
    assert format_seconds(18.0) == "0:18"
    assert format_seconds(3725.4) == "1:02:05"


@pytest.fixture(scope="module")
def ecg_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("progress") / "ptbxl"
    res = CliRunner().invoke(app, ["synth", "ecg", "-o", str(out), "--n", "12", "--seed", "0"])
    assert res.exit_code == 0, res.output
    return out


def _train(data: Path, run: Path, *extra: str) -> Any:
    args = ["train", "ecg", "--data", str(data), "-o", str(run), "--preset", "tiny", "--device", "cpu"]
    # one stage (the first of ProtoECGNet's sequence), tiny preset: seconds on a CPU
    result = CliRunner().invoke(app, [*args, "--stage", "feature_extractor", *extra])
    assert result.exit_code == 0, result.output
    return result


@pytest.mark.slow
def test_cli_training_prints_plain_progress_lines(ecg_data: Path, tmp_path: Path) -> None:
    result = _train(ecg_data, tmp_path / "run", "--epochs", "2")
    lines = result.stderr.splitlines()
    assert "\r" not in result.stderr
    assert lines[0] == "[ecg] stage 1/1 feature_extractor: 2 epochs"
    matches = [EPOCH_LINE.match(line) for line in lines[1:]]
    assert len(matches) == 2
    assert all(m is not None for m in matches), lines
    assert [m["epoch"] for m in matches if m is not None] == ["1", "2"]
    assert all(m is not None and m["metric"] == "val_auroc" for m in matches)
    assert result.stdout.startswith("run written to")


@pytest.mark.slow
def test_cli_training_quiet(ecg_data: Path, tmp_path: Path) -> None:
    result = _train(ecg_data, tmp_path / "run", "--epochs", "1", "--quiet")
    assert result.stderr == ""
    assert (tmp_path / "run" / "metrics.json").is_file()


def test_quiet_still_prints_errors(tmp_path: Path) -> None:
    args = ["train", "ecg", "--data", str(tmp_path / "missing"), "-o", str(tmp_path / "run"), "--quiet"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2
    assert f"error: {tmp_path / 'missing'}: dataset folder does not exist" in result.stderr
