"""Records per second of ECG batch prediction with and without Ray (``medinfer predict ecg`` and ``... --ray``), in one
run on this machine. Prints JSON.

Usage::

    python benchmarks/ray_predict.py [--n 500] [--batch-size 32] [--device cpu|cuda] [--num-gpus-per-worker G]
                                     [--workers N] [--num-cpus C] [--ray-address HOST:6379] [--checkpoint RUN_OR_FILE]

Both runs predict the same WFDB records (500 Hz, written from a cheap waveform as ``benchmarks/ecg_predict.py`` does)
with the same predictor options; on the CPU the Ray runs must give the same results (``same_results``), or the script
fails (on a GPU it is reported: its kernels need not repeat bit for bit).

- ``single_process``: :func:`~pipelines.common.predict.run_predictions`, the path of ``medinfer predict``;
- ``ray_first_run``: :func:`~pipelines.common.ray_predict.run_predictions_ray` on a Ray instance just started (its
  ``ray.init`` is ``ray_init_s``, apart): worker processes start, import torch and load the model;
- ``ray_second_run``: the same again, the prepare workers warm (the model actors start again: each run has its own,
  as each ``medinfer predict --ray`` has).

``overhead`` states what Ray costs here: seconds of each Ray run over those of the single process (above 1: slower).
Each run also gives ``first_batch_s`` (to the first batch finished: for Ray, starting its workers and loading the
model) and ``after_first_batch_records_per_s`` (the rate once that fixed cost is paid; for Ray an upper bound, as its
readers prepared batches ahead while the model actor started).

Measured on the 2-core CPU machine (500 records, batch 32, tiny preset, one model actor and two readers): single
process 2.38 s (210 records/s); Ray 8.85 s on a fresh instance (57 records/s, 3.7× the time; first batch after
6.4 s) and 6.02 s again (83 records/s, 2.5×), plus 2.6 s for ``ray.init``; 204 and 426 records/s after the first
batch. Ray does not pay on one small machine; it pays where more nodes read and more GPUs run the model.
On one machine Ray adds process starts, pickling between the stages and scheduling for the same cores; what it
gains is more machines' (and GPUs') worth of readers and model actors, which one machine cannot show. Without
``--checkpoint`` a randomly initialised network of the tiny preset is used (speed does not depend on the weights).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ecg_predict import _checkpoint, _write_records  # a folder of scripts, not a package


def _results(report: Any) -> list[dict[str, Any]]:
    """A report's results without their timings (what must not depend on Ray)."""
    out = []
    for r in report.to_dict()["results"]:
        out.append({k: v for k, v in r.items() if k not in ("seconds", "timings")})
    return out


def _run(label: str, n: int, call: Any) -> tuple[Any, dict[str, Any]]:
    """Time ``call(progress)``: in all, to the first batch done, and the rate after it (the steady state, where the
    fixed cost of starting workers and loading models is behind)."""
    done: list[tuple[float, int]] = []
    t0 = time.perf_counter()
    report = call(lambda k: done.append((time.perf_counter(), k)))
    s = time.perf_counter() - t0
    if not report.ok:
        bad = next(r for r in report.results if r.status != "ok")
        raise SystemExit(f"{label}: {bad.input} {bad.status}: {bad.error}")
    row: dict[str, Any] = {"seconds": round(s, 3), "records_per_s": round(n / s, 1)}
    if done:
        first_at, first_n = done[0]
        row["first_batch_s"] = round(first_at - t0, 3)
        if len(done) > 1:
            row["after_first_batch_records_per_s"] = round((n - first_n) / (done[-1][0] - first_at), 1)
    return report, row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=500, help="records")
    ap.add_argument("--batch-size", type=int, default=32, help="records per forward pass (both runs)")
    ap.add_argument("--checkpoint", default=None)
    ap.add_argument("--preset", default="tiny", choices=["tiny", "full"])
    ap.add_argument("--device", default="cpu", help="cpu or cuda: the single process's and the Ray actors'")
    ap.add_argument(
        "--num-gpus-per-worker", type=float, default=None, help="GPUs per Ray model actor (default: 1 on cuda, else 0)"
    )
    ap.add_argument("--workers", type=int, default=None, help="Ray model actors (default: the runner's)")
    ap.add_argument("--num-cpus", type=int, default=None, help="CPUs of the local Ray instance (default: all)")
    ap.add_argument("--ray-address", default=None, help="an existing cluster instead of a local instance")
    args = ap.parse_args()

    import ray

    from pipelines.common.predict import run_predictions
    from pipelines.common.ray_predict import pool_sizes, run_predictions_ray
    from pipelines.common.task import PredictOptions, get_task

    gpus = args.num_gpus_per_worker
    if gpus is None:
        gpus = 1.0 if args.device.startswith("cuda") else 0.0
    task = get_task("ecg")
    ckpt = _checkpoint(args.checkpoint, args.preset)
    result: dict[str, Any] = {
        "benchmark": "ray_predict",
        "records": args.n,
        "batch_size": args.batch_size,
        "model": "checkpoint" if args.checkpoint else f"random init, preset {args.preset}",
        "device": args.device,
        "num_gpus_per_worker": gpus,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "machine": platform.machine(),
        "torch": torch.__version__,
        "ray": ray.__version__,
    }
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "records"
        folder.mkdir()
        _write_records(folder, args.n)
        items = task.collect_inputs([str(folder)]).items
        options = PredictOptions(device=args.device, batch_size=args.batch_size)
        predictor = task.load_predictor(ckpt, options)
        predictor.warmup()
        single, result["single_process"] = _run(
            "single process",
            len(items),
            lambda progress: run_predictions(predictor, items, Path(tmp) / "single", task="ecg", progress=progress),
        )
        t0 = time.perf_counter()
        if args.ray_address:
            ray.init(address=args.ray_address)
        else:
            ray.init(num_cpus=args.num_cpus, include_dashboard=False)
        result["ray_init_s"] = round(time.perf_counter() - t0, 3)
        try:
            actors, readers = pool_sizes(ray, gpus, args.workers)
            result["ray_cluster"] = {
                "cpus": ray.cluster_resources().get("CPU", 0),
                "gpus": ray.cluster_resources().get("GPU", 0),
                "model_actors": actors,
                "prepare_tasks_at_most": readers,
            }
            driver = task.load_predictor(ckpt, PredictOptions(device="cpu", batch_size=args.batch_size))
            same = True
            for label in ("ray_first_run", "ray_second_run"):
                report, result[label] = _run(
                    label,
                    len(items),
                    lambda progress, label=label: run_predictions_ray(
                        driver,
                        items,
                        Path(tmp) / label,
                        task="ecg",
                        progress=progress,
                        device=args.device,
                        num_gpus_per_worker=gpus,
                        workers=args.workers,
                    ),
                )
                same = same and _results(report) == _results(single)
        finally:
            ray.shutdown()
    base = result["single_process"]["seconds"]
    result["same_results"] = same
    result["overhead"] = {
        "what": "seconds of the Ray run over the single process's, same records and batch size (above 1: slower)",
        "ray_first_run": round(result["ray_first_run"]["seconds"] / base, 2),
        "ray_second_run": round(result["ray_second_run"]["seconds"] / base, 2),
        "with_ray_init": round((result["ray_first_run"]["seconds"] + result["ray_init_s"]) / base, 2),
    }
    print(json.dumps(result, indent=2))
    if not same and args.device == "cpu":  # a GPU's kernels need not be bit for bit repeatable: reported only
        raise SystemExit("the Ray runs' results differ from the single process's")


if __name__ == "__main__":
    main()
