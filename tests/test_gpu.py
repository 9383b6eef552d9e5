"""CUDA paths, run by ``benchmarks/gpu_check.sh`` on a GPU machine (skipped where torch sees no CUDA device).

Every registered model's forward and backward on CUDA (float32, and one optimiser step under mixed precision), each
task's prediction on CUDA against the CPU's (with and without AMP), device selection (``auto`` picks CUDA for the
predictor, training and the service), training on CUDA under autocast, the service's CPU fallback when CUDA runs out
of memory (a real allocator error), and the service's dynamic batching on CUDA (the analytic task and a real model).
"""

from __future__ import annotations

import logging
import sys
import threading
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient

from app.settings import Settings
from models import create_model, get_model_spec, list_models
from pipelines.common.checkpoint import BEST_NAME, Checkpoint, load_checkpoint, save_checkpoint
from pipelines.common.device import autocast, resolve_device
from pipelines.common.task import PredictOptions, Prepared, Task, TrainOptions, get_task, list_tasks

# the service tests' analytic task and client helpers (tests/app/serve_testkit.py)
sys.path.insert(0, str(Path(__file__).resolve().parent / "app"))
import serve_testkit

pytestmark = pytest.mark.gpu

CUDA = "cuda"
ALL_MODELS = list_models()
TASKS = list_tasks()


def _outputs(out: object) -> list[torch.Tensor]:
    """Every tensor of a model's output (NamedTuple outputs: each field; lists of auxiliary outputs: each)."""
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, tuple | list):
        return [t for field in out for t in _outputs(field)]
    return []


def _floats(raw: object) -> list[np.ndarray]:
    """Every floating-point array of a predictor's raw output (tensors, arrays, nested in dicts and sequences)."""
    if isinstance(raw, torch.Tensor):
        return [raw.detach().float().cpu().numpy()] if raw.is_floating_point() else []
    if isinstance(raw, np.ndarray):
        return [raw.astype(np.float64)] if np.issubdtype(raw.dtype, np.floating) else []
    if isinstance(raw, dict):
        return [a for value in raw.values() for a in _floats(value)]
    if isinstance(raw, list | tuple):
        return [a for value in raw for a in _floats(value)]
    return []


def _example(name: str, batch: int = 2) -> torch.Tensor:
    spec = get_model_spec(name)
    return torch.randn(batch, len(spec.in_channels), *spec.example_size)


def _assert_close(got: np.ndarray | torch.Tensor, want: np.ndarray | torch.Tensor, tolerance: float) -> None:
    """``got`` within ``tolerance`` of ``want``, relative to the larger of 1 and ``want``'s largest magnitude."""
    got_t, want_t = torch.as_tensor(np.asarray(got, dtype=np.float64)), torch.as_tensor(np.asarray(want, np.float64))
    scale = max(1.0, float(want_t.abs().max())) if want_t.numel() else 1.0
    torch.testing.assert_close(got_t, want_t, rtol=tolerance, atol=tolerance * scale)


# -- every registered model --------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ALL_MODELS)
def test_model_forward_and_backward_on_cuda(name: str) -> None:
    spec = get_model_spec(name)
    torch.manual_seed(0)
    model = create_model(name, **spec.tiny_kwargs).eval()
    x = _example(name)
    with torch.no_grad():
        on_cpu = _outputs(model(x))[0]
        model.to(CUDA)
        on_cuda = _outputs(model(x.to(CUDA)))[0]
    assert on_cuda.device.type == "cuda"
    _assert_close(on_cuda.cpu(), on_cpu, 1e-2)  # cuDNN may convolve in TF32

    model.train()
    forward = getattr(model, "forward_with_aux", model)  # training-time outputs (deep supervision, aux heads)
    outs = _outputs(forward(x.to(CUDA)))
    assert all(torch.isfinite(t).all() for t in outs)
    torch.stack([t.float().sum() for t in outs]).sum().backward()
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    missing = [n for n, p in params if p.grad is None]
    assert not missing, f"parameters without gradient on CUDA: {missing[:5]}"
    assert all(p.grad is not None and p.grad.device.type == "cuda" for _, p in params)
    assert all(torch.isfinite(p.grad).all() for _, p in params if p.grad is not None)


@pytest.mark.parametrize("name", ALL_MODELS)
def test_model_takes_an_optimiser_step_under_amp_on_cuda(name: str) -> None:
    spec = get_model_spec(name)
    torch.manual_seed(0)
    model = create_model(name, **spec.tiny_kwargs).to(CUDA).train()
    forward = getattr(model, "forward_with_aux", model)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-2)
    scaler = torch.amp.GradScaler("cuda", init_scale=256.0)  # small: one overflow would skip the only step
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    with autocast(CUDA, True):  # the training loop's and the predictors' own switch
        assert torch.is_autocast_enabled("cuda")
        outs = _outputs(forward(_example(name).to(CUDA)))
        loss = sum(t.float().square().mean() for t in outs)
    assert any(t.dtype == torch.float16 for t in outs), "autocast ran nothing in float16"
    assert isinstance(loss, torch.Tensor)
    scaler.scale(loss).backward()
    scaler.step(optimizer)
    scaler.update()
    assert scaler.get_scale() == 256.0, "gradients overflowed: the step was skipped"
    changed = [n for n, p in model.named_parameters() if p.requires_grad and not torch.equal(p, before[n])]
    assert changed, "the optimiser step changed no parameter"
    assert all(torch.isfinite(p).all() for p in model.parameters())


# -- every task's prediction ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module", params=TASKS)
def task_inputs(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Task, Checkpoint, list[str]]:
    """A task, a seeded untrained checkpoint of its tiny preset and two synthetic inputs."""
    task = get_task(request.param)
    inputs = task.example_inputs(tmp_path_factory.mktemp(f"gpu_{task.name}"), 2, seed=3)
    return task, task.untrained_checkpoint("tiny", seed=0), inputs


def _predict_raw(task: Task, checkpoint: Checkpoint, inputs: list[str], options: PredictOptions) -> list[Any]:
    """Raw outputs of ``run`` for ``inputs`` (in batches of the predictor's ``max_batch``), the model's device."""
    predictor = task.load_predictor(checkpoint, options)
    assert predictor.device.type == torch.device(resolve_device(options.device)).type
    assert all(p.device.type == predictor.device.type for p in predictor.model.parameters())
    collected = task.collect_inputs(inputs)
    assert not collected.errors
    prepared = [predictor.prepare(item) for item in collected.items]
    raws: list[Any] = []
    for start in range(0, len(prepared), predictor.max_batch):
        raws.extend(predictor.run(prepared[start : start + predictor.max_batch]))
    return raws


@pytest.mark.parametrize("amp", [False, True])
def test_task_predicts_on_cuda_as_on_cpu(task_inputs: tuple[Task, Checkpoint, list[str]], amp: bool) -> None:
    task, checkpoint, inputs = task_inputs
    on_cpu = _predict_raw(task, checkpoint, inputs, PredictOptions(device="cpu"))
    on_cuda = _predict_raw(task, checkpoint, inputs, PredictOptions(device=CUDA, amp=amp))
    assert len(on_cuda) == len(on_cpu) == len(inputs)
    for got, want in zip(on_cuda, on_cpu, strict=True):
        got_arrays, want_arrays = _floats(got), _floats(want)
        assert len(got_arrays) == len(want_arrays) > 0, f"{task.name}: no floating-point output to compare"
        for g, w in zip(got_arrays, want_arrays, strict=True):
            assert g.shape == w.shape
            _assert_close(g, w, 5e-2 if amp else 5e-3)


# -- device selection and training ----------------------------------------------------------------------------------
def test_auto_selects_cuda() -> None:
    assert resolve_device("auto") == "cuda"
    assert resolve_device("cuda") == "cuda"
    assert resolve_device("cuda:0") == "cuda:0"
    assert resolve_device("cpu") == "cpu"
    task = get_task(TASKS[0])
    predictor = task.load_predictor(task.untrained_checkpoint("tiny"), PredictOptions(device="auto"))
    assert predictor.device.type == "cuda"
    assert all(p.device.type == "cuda" for p in predictor.model.parameters())


@pytest.mark.parametrize("name", ["ecg", "brats"])
def test_training_runs_on_cuda_under_autocast(name: str, tmp_path: Path) -> None:
    """One epoch of the tiny preset with ``device="auto"``: on CUDA, every training step under autocast."""
    task = get_task(name)
    data = task.synth(tmp_path / "data", n=4, seed=0)
    run = task.make_run(TrainOptions(data_dir=data, out_dir=tmp_path / "run", preset="tiny", epochs=1, device="auto"))
    steps: list[tuple[bool, str]] = []
    train_step = run.train_step

    def spy(batch: Any, stage: Any) -> torch.Tensor:
        steps.append((torch.is_autocast_enabled("cuda"), next(run.model.parameters()).device.type))
        return train_step(batch, stage)

    run.train_step = spy
    out = Path(run.run())
    assert run.device.type == "cuda"
    assert steps, "no training step ran"
    assert all(amp and device == "cuda" for amp, device in steps), steps
    assert all(np.isfinite(epoch["train_loss"]) for epoch in run.history)
    best = load_checkpoint(out / BEST_NAME, task=name)
    assert all(t.device.type == "cpu" for t in best.state_dict.values())  # saved loadable anywhere
    best.build_model(torch.device("cpu"))


# -- the service on CUDA ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def addone_checkpoints(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The analytic ``addone`` task registered (and removed again after this module) with its checkpoint."""
    serve_testkit.register()
    folder = tmp_path_factory.mktemp("gpu_addone")
    serve_testkit.install(folder)
    yield folder
    serve_testkit.unregister()


@pytest.fixture
def addone_client(addone_checkpoints: Path, tmp_path: Path) -> Iterator[TestClient]:
    """The service of ``addone`` on ``auto`` (CUDA here), batches of up to 8 formed within 50 ms."""
    settings = Settings(
        checkpoints=addone_checkpoints,
        data_dir=tmp_path / "data",
        tasks="addone",
        device="auto",
        max_batch_size=8,
        max_batch_delay_ms=50,
    )
    client = serve_testkit.started_client(settings)
    try:
        yield client
    finally:
        client.__exit__(None, None, None)


def _runtime(client: TestClient, task: str) -> Any:
    """The service's :class:`~app.runtime.ModelRuntime` of ``task``."""
    app: Any = client.app
    return app.state.service.runtimes[task]


def _post_values(client: TestClient, values: Sequence[float]) -> list[dict[str, Any]]:
    """One request per value, from 8 threads at once; each answer's only result."""

    def one(value: float) -> dict[str, Any]:
        files = {"files": ("v.npy", serve_testkit.npy_bytes([value]))}
        r = client.post("/api/v1/models/addone/predict", files=files)
        assert r.status_code == 200, r.text
        (result,) = r.json()["results"]
        return dict(result)

    with ThreadPoolExecutor(8) as pool:
        return list(pool.map(one, values))


def test_service_batches_on_cuda(addone_client: TestClient) -> None:
    runtime = _runtime(addone_client, "addone")
    assert runtime.device == "cuda"  # device "auto"
    predictor = runtime.predictor
    assert predictor.device.type == "cuda"
    values = [float(i) for i in range(100, 124)]  # not 13: the analytic task's run refuses it
    results = _post_values(addone_client, values)
    assert [r["outputs"]["values"] for r in results] == [[v + 1.0] for v in values]
    sizes = [r["timings"]["batch_size"] for r in results]
    assert max(sizes) > 1, "concurrent requests were not batched"
    assert max(sizes) <= 8
    assert max(predictor.batches) > 1
    assert all(p.device.type == "cuda" for p in predictor.model.parameters())


def test_cuda_out_of_memory_falls_back_to_the_cpu(
    addone_client: TestClient, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    runtime = _runtime(addone_client, "addone")
    predictor = runtime.predictor
    total = torch.cuda.get_device_properties(0).total_memory
    devices: list[str] = []

    def forward(self: serve_testkit.PlusOne, x: torch.Tensor) -> torch.Tensor:
        devices.append(x.device.type)
        if x.is_cuda:  # twice the card's memory: the CUDA caching allocator itself raises OutOfMemoryError
            torch.empty(2 * total, dtype=torch.uint8, device=x.device)
        return x + 1.0 + self.bias

    monkeypatch.setattr(serve_testkit.PlusOne, "forward", forward)  # after warm-up: the service is ready on CUDA
    with caplog.at_level(logging.WARNING, logger="app.runtime"):
        results = _post_values(addone_client, [1.0, 2.0, 3.0, 4.0])
    assert [r["outputs"]["values"] for r in results] == [[2.0], [3.0], [4.0], [5.0]]
    assert "cuda" in devices
    assert "cpu" in devices, "the batch was not retried on the CPU"
    assert "retrying it on the CPU" in caplog.text
    assert predictor.device.type == "cuda", "the model stays on CUDA for the next batch"
    assert all(p.device.type == "cuda" for p in predictor.model.parameters())
    assert addone_client.get("/readyz").status_code == 200


def test_service_batches_a_real_model_on_cuda(tmp_path: Path) -> None:
    """The ecg model (seeded, untrained, tiny) served on CUDA: concurrent uploads share forward passes there."""
    task = get_task("ecg")
    folder = tmp_path / "checkpoints"
    save_checkpoint(task.untrained_checkpoint("tiny", seed=0), folder / "ecg.pt")
    records = sorted((task.synth(tmp_path / "inputs", n=8, seed=5) / "records100").rglob("*.hea"))
    settings = Settings(
        checkpoints=folder,
        data_dir=tmp_path / "data",
        tasks="ecg",
        device=CUDA,
        max_batch_size=8,
        max_batch_delay_ms=50,
        max_upload_mb=64,
        max_unpacked_mb=256,
    )
    client = serve_testkit.started_client(settings)
    try:
        predictor = _runtime(client, "ecg").predictor
        batches: list[tuple[int, str]] = []
        lock = threading.Lock()
        run = predictor.run

        def spy(batch: Sequence[Prepared]) -> list[Any]:
            with lock:
                batches.append((len(batch), next(predictor.model.parameters()).device.type))
            return run(batch)

        predictor.run = spy

        def one(record: Path) -> dict[str, Any]:
            stem = record.name.split(".")[0]
            siblings = sorted(p for p in record.parent.iterdir() if p.is_file() and p.name.split(".")[0] == stem)
            r = client.post("/api/v1/models/ecg/predict", files=[("files", (p.name, p.read_bytes())) for p in siblings])
            assert r.status_code == 200, r.text
            (result,) = r.json()["results"]
            return dict(result)

        with ThreadPoolExecutor(8) as pool:
            results = list(pool.map(one, records * 2))
    finally:
        client.__exit__(None, None, None)
    assert all(r["status"] == "ok" for r in results), results
    assert batches
    assert all(device == "cuda" for _, device in batches)
    assert max(size for size, _ in batches) > 1, f"concurrent uploads were not batched: {batches}"
