"""Records per second of ECG prediction (the code path of ``medinfer predict ecg``) at several batch sizes, with the
steps one after the other (``prefetch`` 0) and pipelined (``prefetch`` 2: records read ahead in threads while a
batch runs, results written behind), beside the read-only floor: the same records through ``prepare`` alone, in a loop.
Prints JSON.

Usage::

    python benchmarks/ecg_predict.py [--n 1000] [--batch-sizes 1 8 32 128] [--checkpoint RUN_OR_FILE]
                                     [--preset tiny|full] [--device cpu] [--prefetch 2] [--workers N]

``over_read_floor`` is records/s of prediction over records/s of the floor: 1.0 means prediction costs no more
than reading. The goal figure is the pipelined ratio at the CLI's default batch size (``goal``). Without
``--checkpoint`` a randomly initialised network of the chosen preset is used (speed does not depend on the
weights). Records are 500 Hz WFDB files written from a cheap waveform (not neurokit2), so the benchmark measures
prediction, not data generation.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def _write_records(folder: Path, n: int) -> list[str]:
    import wfdb
    from scipy.signal import resample_poly

    from models.protoecgnet import LEADS
    from pipelines.ecg.infer import synthetic_waveform

    rng = np.random.default_rng(0)
    paths = []
    for i in range(n):
        sig = synthetic_waveform(rate_bpm=float(rng.uniform(50, 120))) + rng.normal(0, 0.02, (12, 1000))
        sig = resample_poly(sig, 5, 1, axis=1)
        name = f"{i:05d}_hr"
        wfdb.wrsamp(name, fs=500, units=["mV"] * 12, sig_name=list(LEADS), p_signal=sig.T, fmt=["16"] * 12,
                    adc_gain=[1000.0] * 12, baseline=[0] * 12, write_dir=str(folder))  # fmt: skip
        paths.append(str(folder / f"{name}.hea"))
    return paths


def _checkpoint(path: str | None, preset: str):
    from pipelines.common.checkpoint import load_checkpoint
    from pipelines.common.task import get_task

    if path:
        return load_checkpoint(path, task="ecg")
    return get_task("ecg").untrained_checkpoint(preset, seed=0)


def _cli_default_batch_size() -> int:
    """The ``--batch-size`` ``medinfer predict`` uses when none is given."""
    import typer.main

    from app.cli import app

    predict = typer.main.get_command(app).commands["predict"]  # type: ignore[attr-defined]
    return int(next(p.default for p in predict.params if p.name == "batch_size"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8, 32, 128])
    ap.add_argument("--checkpoint", default=None)
    ap.add_argument("--preset", default="tiny", choices=["tiny", "full"])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--prefetch", type=int, default=None, help="pipelined runs' prefetch (default: the runner's)")
    ap.add_argument("--workers", type=int, default=None, help="pipelined runs' read threads (default: the runner's)")
    ap.add_argument("--torch-threads", type=int, default=None, help="torch's intra-op threads (default: torch's)")
    args = ap.parse_args()
    if args.torch_threads:
        torch.set_num_threads(args.torch_threads)

    from pipelines.common.predict import DEFAULT_PREFETCH, default_workers, run_predictions
    from pipelines.common.task import PredictOptions, get_task

    prefetch = DEFAULT_PREFETCH if args.prefetch is None else args.prefetch
    workers = args.workers or default_workers()
    default_bs = _cli_default_batch_size()
    batch_sizes = sorted({*args.batch_sizes, default_bs})
    task = get_task("ecg")
    ckpt = _checkpoint(args.checkpoint, args.preset)
    result: dict = {
        "benchmark": "ecg_predict",
        "records": args.n,
        "model": "checkpoint" if args.checkpoint else f"random init, preset {args.preset}",
        "device": args.device,
        "torch_threads": torch.get_num_threads(),
        "machine": platform.machine(),
        "torch": torch.__version__,
        "pipelined": {"prefetch": prefetch, "workers": workers},
        # what ``medinfer predict ecg`` uses when --prefetch is not given
        "cli_default_prefetch": int(
            getattr(task.load_predictor(ckpt, PredictOptions(device=args.device)), "prefetch", DEFAULT_PREFETCH)
        ),
        "cli_default_batch_size": default_bs,
    }
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "records"
        folder.mkdir()
        paths = _write_records(folder, args.n)
        items = task.collect_inputs([str(folder)]).items
        predictor = task.load_predictor(ckpt, PredictOptions(device=args.device, batch_size=1))
        for it in items[:20]:  # warm the readers' caches and imports, as the runs below find them
            predictor.prepare(it)
        t0 = time.perf_counter()
        for it in items:
            predictor.prepare(it)
        read_s = time.perf_counter() - t0
        floor = len(paths) / read_s
        result["read_only"] = {"seconds": round(read_s, 3), "records_per_s": round(floor, 1)}
        rows: dict[str, dict] = {}
        for bs in batch_sizes:
            predictor = task.load_predictor(ckpt, PredictOptions(device=args.device, batch_size=bs))
            predictor.warmup()
            row: dict = {}
            for mode, pf in (("sequential", 0), ("pipelined", prefetch)):
                out = Path(tmp) / f"out_bs{bs}_{mode}"
                t0 = time.perf_counter()
                report = run_predictions(
                    predictor, items, out, task="ecg", continue_on_error=True, prefetch=pf, workers=workers
                )
                s = time.perf_counter() - t0
                assert report.ok
                rate = len(items) / s
                stages = {
                    k: round(sum(r.timings.get(k, 0.0) for r in report.results) / len(report.results) * 1000, 3)
                    for k in ("read", "infer", "queue")
                }
                row[mode] = {
                    "seconds": round(s, 3),
                    "records_per_s": round(rate, 1),
                    "over_read_floor": round(rate / floor, 3),
                    "mean_ms_per_record": stages,
                }
            row["pipelined_speedup"] = round(row["sequential"]["seconds"] / row["pipelined"]["seconds"], 3)
            rows[str(bs)] = row
        result["batch_sizes"] = rows
        at_default = rows[str(default_bs)]
        result["goal"] = {
            "what": "records/s of pipelined predict at the CLI's default batch size over the read-only floor (>= 0.9)",
            "batch_size": default_bs,
            "sequential_over_read_floor": at_default["sequential"]["over_read_floor"],
            "pipelined_over_read_floor": at_default["pipelined"]["over_read_floor"],
        }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
