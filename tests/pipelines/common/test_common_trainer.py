"""The shared training runner with an analytic task: a line fitted by SGD, stages, clipping, AMP and seeding."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, ClassVar

import pytest
import torch
from pydantic import Field
from torch import nn

from models.registry import ModelSpec, register_model
from pipelines.common.checkpoint import load_checkpoint
from pipelines.common.config import TaskConfig, TaskOptions
from pipelines.common.device import amp_enabled, autocast
from pipelines.common.task import OutputHead, TrainOptions
from pipelines.common.trainer import BEST_NAME, CardText, Stage, TrainingRun

X = torch.linspace(-1, 1, 64).unsqueeze(1)
Y = 3 * X + 1


class LineConfig(TaskConfig):
    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {"tiny": {"epochs": 5}}

    epochs: int = Field(60, ge=1)
    lr: float = 0.3


class FakeContract:
    heads = (OutputHead("y", ("y",), "identity"),)


class FakeTask:
    """What the runner reads of a task."""

    name = "line"
    data_card = "line.md"
    train_options_model = TaskOptions
    contract = FakeContract()


@pytest.fixture(autouse=True, scope="module")
def _line_model() -> Iterator[None]:
    from models import registry

    spec = ModelSpec("line", 1, ("x",), ("y",), "identity", (1,), "line.md", "ordinary least squares")
    register_model("line_linear", spec)(lambda: nn.Linear(1, 1))
    yield
    registry._REGISTRY.pop("line_linear", None)


class LineRun(TrainingRun[LineConfig]):
    """y = 3x + 1 by SGD; validation MSE selects the best epoch."""

    grad_clip = None
    model_name = "line_linear"  # type: ignore[assignment]
    model_kwargs: dict[str, Any] = {}  # type: ignore[assignment]  # noqa: RUF012

    def load_data(self) -> None:
        self.loader = [(X, Y)]

    def build_model(self) -> nn.Module:
        return nn.Linear(1, 1)

    def make_loader(self, stage: Stage) -> Iterable[Any]:
        return self.loader

    def configure_optimizers(self, stage: Stage) -> tuple[torch.optim.Optimizer, Any]:
        return torch.optim.SGD(self.model.parameters(), lr=self.config.lr), None

    def train_step(self, batch: Any, stage: Stage) -> torch.Tensor:
        return nn.functional.mse_loss(self.model(batch[0]), batch[1])

    def validate(self, stage: Stage) -> dict[str, float]:
        return {"mse": float(nn.functional.mse_loss(self.model(X), Y))}

    def monitor(self, stage: Stage) -> tuple[str, str]:
        return "mse", "min"

    def card(self) -> CardText:
        return CardText("line", "fits a line", "tests", "64 points", self.best_metrics())


def _run(tmp_path: Path, cls: type[LineRun] = LineRun, **config: Any) -> LineRun:
    options = TrainOptions(data_dir=tmp_path / "data", out_dir=tmp_path / "run", device="cpu", seed=3)
    (tmp_path / "data").mkdir(parents=True, exist_ok=True)
    return cls(FakeTask(), LineConfig.load("full", overrides=config), options)  # type: ignore[arg-type]


def test_runner_learns_a_line_and_writes_a_run_folder(tmp_path: Path) -> None:
    run = _run(tmp_path)
    out = run.run()
    assert run.model.weight.item() == pytest.approx(3.0, abs=0.05)
    assert run.model.bias.item() == pytest.approx(1.0, abs=0.05)
    for name in ("best.pt", "last.pt", "metrics.json", "training_curve.png", "MODEL_CARD.md", "config.json"):
        assert (out / name).is_file(), name
    summary = json.loads((out / "metrics.json").read_text(encoding="utf-8"))
    history = summary["history"]
    assert len(history) == 60
    assert [h["epoch"] for h in history[:3]] == [1.0, 2.0, 3.0]
    best_epoch = min(history, key=lambda h: h["mse"])["epoch"]
    assert summary["best_epoch"] == best_epoch
    assert summary["monitor"] == "mse"
    best = load_checkpoint(out / BEST_NAME)
    assert best.metrics["epoch"] == best_epoch
    assert best.task == "line"
    assert best.heads == {"y": ["y"]}
    assert load_checkpoint(out / "last.pt").metrics["epoch"] == 60
    rebuilt = best.build_model()
    with torch.no_grad():
        assert float(nn.functional.mse_loss(rebuilt(X), Y)) == pytest.approx(summary["best_value"], rel=1e-5)
    card = (out / "MODEL_CARD.md").read_text(encoding="utf-8")
    assert "not a medical device" in card.lower()
    assert "no gradient clipping" in card
    assert "float32 on CPU" in card
    assert "ordinary least squares" in card  # the paper comes from the model registry
    assert json.loads((out / "config.json").read_text(encoding="utf-8"))["epochs"] == 60


def test_same_seed_same_weights(tmp_path: Path) -> None:
    class Noisy(LineRun):
        def build_model(self) -> nn.Module:
            return nn.Sequential(nn.Linear(1, 8), nn.Dropout(0.5), nn.Linear(8, 1))

    a = _run(tmp_path / "a", Noisy, epochs=3)
    a.run()
    b = _run(tmp_path / "b", Noisy, epochs=3)
    b.run()
    for (ka, va), (kb, vb) in zip(a.model.state_dict().items(), b.model.state_dict().items(), strict=True):
        assert ka == kb
        assert torch.equal(va, vb)


def test_stages_run_in_order_and_a_stage_without_gradients_runs_itself(tmp_path: Path) -> None:
    calls: list[str] = []

    class Staged(LineRun):
        def stages(self) -> list[Stage]:
            return [Stage("warm", 2), Stage("freeze", gradient=False), Stage("fine", 3)]

        def run_stage(self, stage: Stage) -> None:
            calls.append(stage.name)
            if stage.gradient:
                super().run_stage(stage)

        def on_stage_end(self, stage: Stage) -> None:
            calls.append(f"end {stage.name}")

    run = _run(tmp_path, Staged)
    run.run()
    assert calls == ["warm", "end warm", "freeze", "end freeze", "fine", "end fine"]
    assert [h["epoch"] for h in run.history] == [1.0, 2.0, 3.0, 4.0, 5.0]  # counted across stages
    assert set(run.stage_metrics) == {"warm", "fine"}
    assert run.stage_metrics["fine"]["best_epoch"] in (1, 2, 3)
    with pytest.raises(NotImplementedError, match="freeze"):
        TrainingRun.run_stage(run, Stage("freeze", gradient=False))


def test_gradients_are_clipped_to_the_stated_norm(tmp_path: Path) -> None:
    class Clipped(LineRun):
        grad_clip = 0.5

        def configure_optimizers(self, stage: Stage) -> tuple[torch.optim.Optimizer, Any]:
            return torch.optim.SGD(self.model.parameters(), lr=1.0), None

        def train_step(self, batch: Any, stage: Stage) -> torch.Tensor:
            return 1e4 * self.model(batch[0]).sum()  # a gradient of norm ~1e5

    run = _run(tmp_path, Clipped, epochs=1)
    run.load_data()
    run.model = run.build_model()
    before = torch.cat([p.detach().flatten().clone() for p in run.model.parameters()])
    run.fit(Stage("train", 1))
    after = torch.cat([p.detach().flatten() for p in run.model.parameters()])
    assert float((after - before).norm()) == pytest.approx(0.5, rel=1e-4)  # one SGD step of lr 1 on a clipped grad
    assert "gradients clipped to norm 0.5" in run.runner_notes()[0]


def test_a_non_finite_loss_stops_the_run(tmp_path: Path) -> None:
    class Diverging(LineRun):
        def train_step(self, batch: Any, stage: Stage) -> torch.Tensor:
            return self.model(batch[0]).sum() * float("nan")

    with pytest.raises(FloatingPointError, match="stage train, epoch 1"):
        _run(tmp_path, Diverging).run()


def test_amp_only_on_cuda() -> None:
    assert amp_enabled("cpu", True) is False
    assert amp_enabled(torch.device("cpu"), True) is False
    assert amp_enabled("cuda:1", True) is True
    assert amp_enabled("cuda", False) is False
    with autocast("cpu", True):
        assert not torch.is_autocast_enabled()
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.float32
