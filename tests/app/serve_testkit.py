"""A test-only analytic task, ``addone``: the model computes ``x + 1``, so every result is known in closed form.

Inputs are ``.npy`` vectors or ``.csv`` number lists (CSV needs the ``sampling_rate`` task option, like a signal
without a header). ``finish`` writes the output as ``<name>_out.npy`` (role ``mask``) and, when explained, a
``<name>_explanation.json`` (role ``explanation``). A vector whose first value is 13 passes ``prepare`` but makes
``run`` raise, to test that a bad neighbour does not fail its batch. ``register()`` adds the task to the
registries while the service tests run and ``unregister()`` removes it, so other suites' batteries over every model
never see it.
``MEDINFER_TEST_DELAY_S`` slows each batch down.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from fastapi.testclient import TestClient
from pydantic import Field
from torch import nn

from app.main import create_app
from app.settings import Settings
from models.registry import ModelSpec, register_model
from pipelines.common.checkpoint import Checkpoint, make_provenance, save_checkpoint
from pipelines.common.config import TaskOptions
from pipelines.common.errors import InputError
from pipelines.common.task import (
    Collected,
    InputContract,
    InputItem,
    ItemOutput,
    OutputHead,
    PredictOptions,
    Predictor,
    Prepared,
    Task,
    TrainOptions,
    expand_paths,
    register_task,
)

TASK = "addone"
MODEL = "addone_plus"
SUFFIXES = (".npy", ".csv")


class PlusOne(nn.Module):
    """``y = x + 1 + bias`` with a zero bias (so the state dict is not empty)."""

    def __init__(self) -> None:
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + 1.0 + self.bias


SPEC = ModelSpec(
    task=TASK,
    spatial_dims=1,
    in_channels=("x",),
    label_names=("y",),
    output_activation="identity",
    roi_size=(4,),
    data_card="addone.md",
    paper="arithmetic",
)


def addone_plus() -> nn.Module:
    return PlusOne()


class AddOneOptions(TaskOptions):
    """The analytic task's one option."""

    sampling_rate: float | None = Field(None, gt=0, le=100_000, description="Rate of CSV inputs.")


class AddOnePredictor(Predictor[AddOneOptions]):
    options_model = AddOneOptions

    def __init__(self, checkpoint: Checkpoint, options: PredictOptions) -> None:
        super().__init__(checkpoint, options)
        self.max_batch = max(1, options.batch_size)
        self.batches: list[int] = []

    def prepare(self, item: InputItem) -> Prepared:
        options = self.item_options(item)
        path = item.paths["x"]
        if path.stat().st_size == 0:
            raise InputError(path, "is empty (0 bytes)")
        if path.suffix == ".csv" and options.sampling_rate is None:
            raise InputError(path, "CSV needs a sampling_rate")
        try:
            if path.suffix == ".npy":
                arr = np.load(path, allow_pickle=False)
            else:
                arr = np.loadtxt(path, delimiter=",", ndmin=1)
        except (ValueError, OSError, EOFError) as exc:
            raise InputError(path, f"is not a readable array ({type(exc).__name__})") from exc
        arr = np.asarray(arr, dtype=np.float32).reshape(-1)
        if arr.size == 0 or not np.isfinite(arr).all():
            raise InputError(path, "holds no finite values")
        return Prepared(item, torch.from_numpy(arr), {"rate": options.sampling_rate}, options=options)

    def run(self, batch: Sequence[Prepared]) -> list[Any]:
        delay = float(os.environ.get("MEDINFER_TEST_DELAY_S", "0") or 0)
        if delay:
            time.sleep(delay)
        self.batches.append(len(batch))
        if any(float(p.data[0]) == 13.0 for p in batch):
            raise InputError(next(p.item.name for p in batch if float(p.data[0]) == 13.0), "unlucky input")
        with torch.no_grad():
            return [self.model(p.data.to(self.device)).cpu() for p in batch]

    def finish(self, prepared: Prepared, raw: Any, out_dir: Path) -> ItemOutput:
        out = raw.numpy()
        path = out_dir / f"{prepared.item.name}_out.npy"
        np.save(path, out)
        output = ItemOutput({"values": out.tolist(), "sampling_rate": prepared.context["rate"]})
        output.add("mask", path, out_dir)
        if self.wants_explanation(prepared.item):
            exp = out_dir / f"{prepared.item.name}_explanation.json"
            exp.write_text(json.dumps({"saliency": [1.0] * len(out)}))
            output.add("explanation", exp, out_dir)
        return output

    def warmup(self) -> None:
        with torch.no_grad():
            self.model(torch.zeros(4, device=self.device))


class AddOneTask(Task):
    name = TASK
    title = "x + 1 (test-only analytic task)"
    data_card = "addone.md"
    default_model = MODEL
    options_model = AddOneOptions

    @property
    def contract(self) -> InputContract:
        return InputContract(
            description="a vector of numbers",
            kind="signal",
            channels=("x",),
            formats=("NumPy (.npy)", "CSV with a sampling rate (.csv)"),
            heads=(OutputHead("y", ("y",), "identity"),),
        )

    def generate(self, out_dir: Path, n: int, seed: int, dicom: bool, variant: str | None) -> tuple[Path, dict]:
        out_dir.mkdir(parents=True, exist_ok=True)
        rng = np.random.default_rng(seed)
        for i in range(n):
            np.save(out_dir / f"vec{i:03d}.npy", rng.normal(size=4).astype(np.float32))
        return out_dir, {}

    def untrained_checkpoint(self, preset: str = "tiny", seed: int = 0) -> Checkpoint:
        return checkpoint()

    def train(self, options: TrainOptions) -> Path:
        options.out_dir.mkdir(parents=True, exist_ok=True)
        write_checkpoint(options.out_dir / "best.pt")
        return options.out_dir

    def evaluate(self, data_dir: Path, checkpoint: Checkpoint, out_dir: Path, options: PredictOptions) -> dict:
        return {}

    def collect_inputs(self, inputs: Sequence[str]) -> Collected:
        out = Collected()
        for path in expand_paths(inputs):
            if not path.exists():
                out.errors.append(InputError(path, "does not exist"))
                continue
            files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
            for f in files:
                if f.suffix.lower() not in SUFFIXES:
                    if not path.is_dir():
                        out.errors.append(InputError(f, "has an unsupported format; expected .npy or .csv"))
                    continue
                out.items.append(InputItem(name=f.stem, paths={"x": f}))
        return out

    def load_predictor(self, checkpoint: Checkpoint, options: PredictOptions) -> Predictor:
        return AddOnePredictor(checkpoint, options)

    def example_inputs(self, root: Path, n: int, seed: int) -> list[str]:
        return [str(p) for p in sorted(self.synth(root, n, seed).glob("*.npy"))]


def checkpoint() -> Checkpoint:
    """A checkpoint of the analytic model."""
    return Checkpoint(
        task=TASK,
        model_name=MODEL,
        model_kwargs={},
        state_dict=PlusOne().state_dict(),
        labels=["y"],
        heads={"y": ["y"]},
        metrics={"mae": 0.0},
        provenance=make_provenance("arithmetic", "addone.md", 0),
    )


def write_checkpoint(path: Path) -> Path:
    """A real checkpoint file of the analytic model."""
    return save_checkpoint(checkpoint(), path)


def install(checkpoints: Path) -> Path:
    """Install the analytic checkpoint (and a model card) as ``<checkpoints>/addone.pt``."""
    checkpoints.mkdir(parents=True, exist_ok=True)
    (checkpoints / f"{TASK}.MODEL_CARD.md").write_text("# addone\n\nnot a medical device; not for diagnosis\n")
    return write_checkpoint(checkpoints / f"{TASK}.pt")


def npy_bytes(values: list[float]) -> bytes:
    """An in-memory ``.npy`` file."""
    import io

    buf = io.BytesIO()
    np.save(buf, np.asarray(values, dtype=np.float32))
    return buf.getvalue()


def started_client(settings: Settings, *, wait_ready: bool = True, headers: dict[str, str] | None = None) -> TestClient:
    """A started ``TestClient`` of the real app (lifespan run), waiting until ``/readyz`` is 200."""
    client = TestClient(create_app(settings), headers=headers)
    client.__enter__()
    if wait_ready:
        deadline = time.monotonic() + 60
        while client.get("/readyz").status_code != 200:
            if time.monotonic() > deadline:
                client.__exit__(None, None, None)
                raise RuntimeError(f"service not ready: {client.get('/readyz').json()}")
            time.sleep(0.02)
    return client


_TASK = AddOneTask()


def register() -> None:
    """Register the analytic model and task (idempotent)."""
    register_model(MODEL, SPEC)(addone_plus)
    register_task(_TASK)


def unregister() -> None:
    """Remove them again, so that other suites' batteries over every model and task never see them."""
    from models import registry as model_registry
    from pipelines.common import task as task_registry

    model_registry._REGISTRY.pop(MODEL, None)
    task_registry._TASKS.pop(TASK, None)


JOBS = "/api/v1/jobs"


def wait_job(
    client: TestClient, job_id: str, states: tuple[str, ...] = ("succeeded", "failed"), timeout: float = 30
) -> Any:
    """Poll a job until it reaches one of ``states``."""
    deadline = time.monotonic() + timeout
    while True:
        body = client.get(f"{JOBS}/{job_id}").json()
        if body["state"] in states:
            return body
        if time.monotonic() > deadline:
            raise AssertionError(f"job stuck: {body}")
        time.sleep(0.02)


def wait_until(cond: Callable[[], bool], timeout: float = 10.0) -> None:
    """Poll ``cond`` until it holds (work that ends after the response: a request's folder is removed by the
    service's cleanup thread once every thread working for it has returned)."""
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.01)
