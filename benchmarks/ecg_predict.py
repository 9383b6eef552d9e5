"""Records per second of ECG prediction (the code path of ``medinfer predict ecg``) at several batch sizes,
beside the time to read and preprocess the same records alone. Prints JSON.

Usage::

    python benchmarks/ecg_predict.py [--n 1000] [--batch-sizes 1 8 32 128] [--checkpoint RUN_OR_FILE]
                                     [--preset tiny|full] [--device cpu]

Without ``--checkpoint`` a randomly initialised network of the chosen preset is used (speed does not depend on
the weights). Records are 500 Hz WFDB files written from a cheap waveform (not neurokit2), so the benchmark
measures prediction, not data generation.
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8, 32, 128])
    ap.add_argument("--checkpoint", default=None)
    ap.add_argument("--preset", default="tiny", choices=["tiny", "full"])
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()

    from pipelines.common.predict import run_predictions
    from pipelines.common.task import PredictOptions, get_task

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
        "batch_sizes": {},
    }
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "records"
        folder.mkdir()
        paths = _write_records(folder, args.n)
        items = task.collect_inputs([str(folder)]).items
        predictor = task.load_predictor(ckpt, PredictOptions(device=args.device, batch_size=1))
        t0 = time.perf_counter()
        for it in items:
            predictor.prepare(it)
        read_s = time.perf_counter() - t0
        result["read_only"] = {"seconds": round(read_s, 3), "records_per_s": round(len(paths) / read_s, 1)}
        for bs in args.batch_sizes:
            predictor = task.load_predictor(ckpt, PredictOptions(device=args.device, batch_size=bs))
            predictor.warmup()
            out = Path(tmp) / f"out_bs{bs}"
            t0 = time.perf_counter()
            report = run_predictions(predictor, items, out, task="ecg", continue_on_error=True)
            s = time.perf_counter() - t0
            assert report.ok
            result["batch_sizes"][str(bs)] = {"seconds": round(s, 3), "records_per_s": round(len(items) / s, 1)}
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
