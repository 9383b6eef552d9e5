"""ModelRuntime pieces without a server: CUDA out-of-memory fallback to the CPU, per-request option views."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
import torch

from app.metrics import Metrics
from app.runtime import DeviceThreads, ModelRuntime, discover_models
from app.settings import Settings
from pipelines.common.task import PredictOptions, Prepared, get_task


class FakeCudaPredictor:
    """Pretends to sit on CUDA and to run out of memory there; works on the CPU."""

    max_batch = 4

    def __init__(self) -> None:
        self.device = torch.device("cuda")
        self.moves: list[str] = []
        self.options = PredictOptions()

    def move_to(self, device: str) -> None:
        self.moves.append(device)
        self.device = torch.device(device)

    def run(self, batch: Sequence[Prepared]) -> list[Any]:
        if self.device.type == "cuda":
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
        return [p.data + 1 for p in batch]


def runtime(settings: Settings) -> ModelRuntime:
    return ModelRuntime(get_task("addone"), None, settings, DeviceThreads(), Metrics())


def test_cuda_oom_retries_the_batch_on_cpu(settings: Settings, caplog: pytest.LogCaptureFixture) -> None:
    rt = runtime(settings)
    fake = FakeCudaPredictor()
    rt.predictor = fake  # type: ignore[assignment]
    out = rt._run_batch([Prepared(None, 1), Prepared(None, 2)])  # type: ignore[arg-type]
    assert out == [2, 3]
    assert fake.moves == ["cpu", "cuda"]  # back on the GPU for the next batch
    assert "out of memory" in caplog.text
    assert "retrying it on the CPU" in caplog.text


def test_other_errors_are_not_retried(settings: Settings) -> None:
    rt = runtime(settings)
    fake = FakeCudaPredictor()
    fake.run = lambda batch: (_ for _ in ()).throw(ValueError("bad shape"))  # type: ignore[method-assign]
    rt.predictor = fake  # type: ignore[assignment]
    with pytest.raises(ValueError, match="bad shape"):
        rt._run_batch([Prepared(None, 1)])  # type: ignore[arg-type]
    assert fake.moves == []


def test_request_options_are_validated_and_leave_the_defaults_alone(settings: Settings) -> None:
    rt = runtime(settings)
    assert rt.default_options.sampling_rate is None  # type: ignore[attr-defined]
    per_request = rt.request_options({"sampling_rate": 250.0})
    assert per_request.sampling_rate == 250.0  # type: ignore[attr-defined]
    assert rt.default_options.sampling_rate is None  # type: ignore[attr-defined]
    assert rt.request_options({}) is rt.default_options
    with pytest.raises(ValueError, match="unknown option 'device'"):
        rt.request_options({"device": "cuda:7"})
    with pytest.raises(ValueError, match="sampling_rate"):
        rt.request_options({"sampling_rate": -1})


def test_served_defaults_come_from_the_settings(settings: Settings) -> None:
    rt = runtime(settings.model_copy(update={"task_options": {"addone": {"sampling_rate": 50}}}))
    assert rt.default_options.sampling_rate == 50.0  # type: ignore[attr-defined]
    with pytest.raises(ValueError, match=r"MEDINFER_TASK_OPTIONS\[addone\].*speed"):
        discover_models(settings.model_copy(update={"task_options": {"addone": {"speed": 2}}}))
    with pytest.raises(ValueError, match="unknown task"):
        discover_models(settings.model_copy(update={"task_options": {"nosuch": {}}}))
    broken = runtime(settings.model_copy(update={"task_options": {"addone": {"sampling_rate": "fast"}}}))
    assert broken.state == "failed"
    assert "sampling_rate" in (broken.error or "")


def test_discover_models(settings: Settings, tmp_path: Path) -> None:
    assert [t.name for t, _ in discover_models(settings)] == ["addone"]
    everything = settings.model_copy(update={"tasks": ""})
    found = {t.name: c for t, c in discover_models(everything)}
    assert found["addone"] is not None
    assert all(c is not None for c in found.values())
    with pytest.raises(ValueError, match="unknown task"):
        discover_models(settings.model_copy(update={"tasks": "nosuch"}))
