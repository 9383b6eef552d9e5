"""Load benchmark of the service: N concurrent clients send ECG predictions for a fixed time, with dynamic
batching on and with ``max_batch_size=1``, in one run. Prints JSON: throughput, p50/p99 latency and mean batch
size per configuration and client count, and the throughput ratio (batching / no batching).

    python benchmarks/serve_load.py --clients 16 64 --duration 10

Without ``--checkpoints`` it trains a tiny ecg checkpoint on synthetic records first (about a minute on CPU).
The server is the real one (``medinfer serve`` under uvicorn on 127.0.0.1), started once per configuration.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def synth(task: str, work: Path) -> Path:
    """A small synthetic dataset of ``task`` (seed 0)."""
    from pipelines.common.task import get_task

    return get_task(task).synth(work / "data", n=8, seed=0)


def tiny_checkpoint(task: str, data: Path, work: Path) -> Path:
    """Train and install a tiny checkpoint of ``task`` under ``work``; return the checkpoints folder."""
    from pipelines.common.checkpoint import install_checkpoint
    from pipelines.common.task import TrainOptions, get_task

    run = get_task(task).train(TrainOptions(data_dir=data, out_dir=work / "run", preset="tiny", epochs=1, device="cpu"))
    folder = work / "checkpoints"
    install_checkpoint(run, task, folder)
    return folder


def sample_upload(task: str, data: Path) -> list[tuple[str, tuple[str, bytes]]]:
    """The files of one synthetic input (every file of its stem, e.g. ``.hea`` and ``.dat``)."""
    from pipelines.common.task import get_task

    t = get_task(task)
    item = t.collect_inputs([str(data)]).items[0]
    path = Path(next(iter(item.paths.values())))
    stem = path.name.split(".")[0]
    files = sorted(f for f in path.parent.iterdir() if f.is_file() and f.name.split(".")[0] == stem)
    return [("files", (f.name, f.read_bytes())) for f in files]


def batch_stats(metrics: str, task: str) -> tuple[float, float]:
    """(sum, count) of the batch-size histogram."""
    out = []
    for key in ("sum", "count"):
        m = re.search(rf'medinfer_batch_size_{key}{{task="{task}"}} ([0-9.e+]+)', metrics)
        out.append(float(m.group(1)) if m else 0.0)
    return out[0], out[1]


async def load(base: str, task: str, files: Any, clients: int, duration: float) -> dict[str, Any]:
    """``clients`` concurrent loops posting predictions for ``duration`` seconds."""
    latencies: list[float] = []
    errors: dict[str, int] = {}
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=base, timeout=120, limits=limits) as client:
        s0, c0 = batch_stats((await client.get("/metrics")).text, task)
        stop = time.perf_counter() + duration

        async def worker() -> None:
            while time.perf_counter() < stop:
                t0 = time.perf_counter()
                r = await client.post(f"/api/v1/models/{task}/predict", files=files)
                if r.status_code == 200:
                    latencies.append(time.perf_counter() - t0)
                else:
                    errors[str(r.status_code)] = errors.get(str(r.status_code), 0) + 1
                    if r.status_code == 503:
                        await asyncio.sleep(float(r.headers.get("Retry-After", "1")) / 10)

        t_start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(clients)))
        elapsed = time.perf_counter() - t_start
        s1, c1 = batch_stats((await client.get("/metrics")).text, task)
    lat = np.asarray(latencies) * 1000
    return {
        "clients": clients,
        "requests_ok": len(latencies),
        "errors": errors,
        "seconds": round(elapsed, 2),
        "throughput_rps": round(len(latencies) / elapsed, 2),
        "p50_ms": round(float(np.percentile(lat, 50)), 1) if lat.size else None,
        "p99_ms": round(float(np.percentile(lat, 99)), 1) if lat.size else None,
        "mean_batch_size": round((s1 - s0) / (c1 - c0), 2) if c1 > c0 else None,
    }


def serve(
    task: str,
    checkpoints: Path,
    data_dir: Path,
    max_batch: int,
    delay_ms: float,
    queue: int,
    log: Path,
    device: str = "cpu",
):
    port = free_port()
    env = {
        **os.environ,
        "MEDINFER_TASKS": task,
        "MEDINFER_MAX_BATCH_SIZE": str(max_batch),
        "MEDINFER_MAX_BATCH_DELAY_MS": str(delay_ms),
        "MEDINFER_MAX_QUEUE": str(queue),
    }
    env.pop("MEDINFER_API_KEYS", None)
    cmd = [sys.executable, "-m", "app.cli", "serve", "--host", "127.0.0.1", "--port", str(port)]
    cmd += ["--checkpoints", str(checkpoints), "--data-dir", str(data_dir), "--device", device]
    proc = subprocess.Popen(cmd, env=env, stdout=log.open("ab"), stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited ({proc.returncode}); see {log}")
        try:
            if httpx.get(f"{base}/readyz", timeout=2).status_code == 200:
                return proc, base
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise TimeoutError("server never became ready")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="ecg")
    parser.add_argument("--checkpoints", type=Path, help="folder with <task>.pt (default: train a tiny one)")
    parser.add_argument("--clients", type=int, nargs="+", default=[16, 64])
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per client count and configuration")
    parser.add_argument("--max-batch-size", type=int, default=32)
    parser.add_argument("--max-batch-delay-ms", type=float, default=5.0)
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="medinfer-bench-"))
    data = synth(args.task, work)
    checkpoints = args.checkpoints or tiny_checkpoint(args.task, data, work / "train")
    files = sample_upload(args.task, data)
    queue = max(args.clients) * 2
    results: dict[str, Any] = {}
    for label, max_batch in (("batching", args.max_batch_size), ("no_batching", 1)):
        proc, base = serve(
            args.task, checkpoints, work / f"data-{label}", max_batch, args.max_batch_delay_ms, queue,
            work / f"server-{label}.log",
        )  # fmt: skip
        try:
            asyncio.run(load(base, args.task, files, 4, 2.0))  # warm the server's paths
            results[label] = {
                "max_batch_size": max_batch,
                "runs": [asyncio.run(load(base, args.task, files, n, args.duration)) for n in args.clients],
            }
        finally:
            proc.terminate()
            proc.wait(30)
    ratio = {
        str(b["clients"]): round(b["throughput_rps"] / n["throughput_rps"], 2) if n["throughput_rps"] else None
        for b, n in zip(results["batching"]["runs"], results["no_batching"]["runs"], strict=True)
    }
    import torch

    out = {
        "task": args.task,
        "device": "cpu",
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "duration_s": args.duration,
        "max_batch_delay_ms": args.max_batch_delay_ms,
        **results,
        "throughput_ratio_batching_over_none": ratio,
    }
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
