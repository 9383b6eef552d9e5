"""A folder of BraTS-like cases through ``medinfer predict brats`` (one process) with the full network, against the
bare compute of the same cases. Prints JSON.

For ``--cases`` cases (default 5) and for the first case alone: the end-to-end wall time of the CLI (process start
to exit) with the steps one after the other (``--prefetch 0``) and pipelined (``--prefetch 2``: the next case read
and preprocessed in threads while one runs, the previous one post-processed and written meanwhile), split into
start-up (``startup_s`` of the report: process start to the first case's read) and the stages of the report
(read, preprocess, infer, postprocess, write, summed over the cases), the child's peak memory; and beside it the
bare compute: the same network through MONAI's SlidingWindowInferer on in-memory tensors of each case's cropped,
preprocessed size, summed over the cases. ``over_compute`` is end to end over compute (the goal: ≤ 1.2 for the
folder, pipelined). The network is randomly initialised: speed does not depend on the weights.

Usage::

    python benchmarks/brats_infer.py [--cases 5] [--shape 240 240 155] [--device cpu] [--sw-batch-size 1]
                                     [--repeats 1] [--workdir DIR]

The default ``--shape`` is BraTS's 240 × 240 × 155 (1 mm): about 4 minutes on two idle CPU cores (5 cases, each
two 128³ windows of the full network, through four CLI processes and the bare compute). ``--shape 128 128 112`` makes
each case one window and the benchmark about twice as fast, but start-up then weighs more in the ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import torch
from monai.inferers import SlidingWindowInferer

from pipelines.brats.synthetic import make_case
from pipelines.common.checkpoint import save_checkpoint
from pipelines.common.predict import DEFAULT_PREFETCH, default_prefetch

BRATS_SHAPE = (240, 240, 155)
STAGES = ("read", "preprocess", "infer", "postprocess", "write")


def write_case(folder: Path, shape: tuple[int, int, int], seed: int = 0) -> Path:
    """A synthetic case on a BraTS-like grid (1 mm, LPS-like orientation as distributed), centred on the brain."""
    affine = np.diag([-1.0, -1.0, 1.0, 1.0])
    affine[:3, 3] = [(shape[0] - 1) / 2.0, (shape[1] - 1) / 2.0, -(shape[2] - 1) / 2.0]
    data = make_case(np.random.default_rng(seed), shape, affine)
    case = folder / f"BraTS20_Benchmark_{seed + 1:03d}"
    case.mkdir(parents=True, exist_ok=True)
    for role, arr in data.items():
        dtype = np.uint8 if role == "seg" else np.int16
        nib.save(nib.Nifti1Image(np.round(arr).astype(dtype), affine), str(case / f"{case.name}_{role}.nii.gz"))
    return case


def predict(inputs: list[Path], n: int, out: Path, ckpt: Path, args: argparse.Namespace, prefetch: int | None) -> dict:
    """One ``medinfer predict brats`` process over ``inputs``: its wall time, start-up and summed stage times."""
    cmd = [
        sys.executable, "-m", "app.cli", "predict", "brats", *map(str, inputs), "-o", str(out),
        "--checkpoint", str(ckpt), "--device", args.device, "--sw-batch-size", str(args.sw_batch_size),
    ]  # fmt: skip
    if prefetch is not None:
        cmd += ["--prefetch", str(prefetch)]
    env = {**os.environ, "MEDINFER_CHECKPOINTS": str(ckpt.parent)}
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True, env=env)
    wall = time.perf_counter() - t0
    report = json.loads((out / "report.json").read_text(encoding="utf-8"))
    assert report["counts"]["ok"] == n, report["counts"]
    stages = {k: sum(r["timings"].get(k, 0.0) for r in report["results"]) for k in (*STAGES, "queue")}
    return {"wall_s": wall, "startup_s": report.get("startup_s"), "stages_s": stages}


def summary(runs: list[dict], compute_s: float) -> dict[str, Any]:
    best = min(runs, key=lambda r: r["wall_s"])
    work = sum(best["stages_s"][k] for k in STAGES)
    return {
        "end_to_end_s": round(best["wall_s"], 3),
        "startup_s": round(best["startup_s"], 3) if best["startup_s"] is not None else None,
        "stages_s": {k: round(v, 3) for k, v in best["stages_s"].items()},
        # the part of the wall time that is neither start-up nor a case's own work (negative: steps overlapped)
        "unaccounted_s": round(best["wall_s"] - (best["startup_s"] or 0.0) - work, 3),
        "over_compute": round(best["wall_s"] / compute_s, 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=5)
    parser.add_argument("--shape", type=int, nargs=3, default=list(BRATS_SHAPE), metavar=("X", "Y", "Z"))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--sw-batch-size", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args()
    shape = (args.shape[0], args.shape[1], args.shape[2])

    work = args.workdir or Path(tempfile.mkdtemp(prefix="brats_bench_"))
    data = work / "data"
    cases = [write_case(data, shape, seed) for seed in range(args.cases)]
    from pipelines.common.task import get_task

    ckpt = get_task("brats").untrained_checkpoint("full")
    roi_size = tuple(ckpt.config["roi_size"])
    model = ckpt.build_model()
    ckpt_path = save_checkpoint(ckpt, work / "full.pt")

    # end to end: the folder, then the first case alone; sequential and pipelined side by side
    runs: dict[str, dict[str, list[dict]]] = {"folder": {}, "one_case": {}}
    for i in range(args.repeats):
        for mode, prefetch in (("sequential", 0), ("pipelined", DEFAULT_PREFETCH)):
            runs["folder"].setdefault(mode, []).append(
                predict([data], args.cases, work / f"folder_{mode}{i}", ckpt_path, args, prefetch)
            )
            runs["one_case"].setdefault(mode, []).append(
                predict([cases[0]], 1, work / f"one_{mode}{i}", ckpt_path, args, prefetch)
            )
    peak_child_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024.0

    # the bare compute: the same network, MONAI's inferer, in-memory tensors of each case's inferred size
    from pipelines.brats.infer import BratsPredictor
    from pipelines.common.checkpoint import load_checkpoint
    from pipelines.common.task import InputItem, PredictOptions

    predictor = BratsPredictor(load_checkpoint(ckpt_path), PredictOptions(device=args.device))
    default_mode = "pipelined" if default_prefetch(predictor) else "sequential"
    roles = ("t1", "t1ce", "t2", "flair")
    inferred = []
    for case in cases:
        prep = predictor.prepare(InputItem(case.name, {r: case / f"{case.name}_{r}.nii.gz" for r in roles}))
        inferred.append(tuple(int(s) for s in prep.data.shape[1:]))
    net = model.to(args.device).eval()
    inferer = SlidingWindowInferer(roi_size, sw_batch_size=args.sw_batch_size, overlap=0.5, mode="gaussian")
    compute: list[float] = []
    for size in inferred:
        x = torch.randn(1, 4, *size, device=args.device)
        best = float("inf")
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            with torch.no_grad():
                inferer(x, net)
            best = min(best, time.perf_counter() - t0)
        compute.append(best)

    folder = {mode: summary(r, sum(compute)) for mode, r in runs["folder"].items()}
    one = {mode: summary(r, compute[0]) for mode, r in runs["one_case"].items()}
    print(
        json.dumps(
            {
                "benchmark": "brats_infer",
                "device": args.device,
                "torch_threads": torch.get_num_threads(),
                "cases": args.cases,
                "input_shape": [4, *shape],
                "brats_size": list(shape) == list(BRATS_SHAPE),
                "inferred_shapes": [[4, *s] for s in inferred],
                "roi_size": list(roi_size),
                "sw_batch_size": args.sw_batch_size,
                "repeats": args.repeats,
                "monai_sliding_window_compute_s": {
                    "per_case": [round(c, 3) for c in compute],
                    "sum": round(sum(compute), 3),
                },
                "folder": folder,
                "one_case": one,
                "pipelined_over_sequential": round(
                    folder["pipelined"]["end_to_end_s"] / folder["sequential"]["end_to_end_s"], 3
                ),
                "goal": {
                    "what": "folder end to end over the bare compute (<= 1.2), in the mode medinfer predict takes "
                    "by default here (pipelined only where reading ahead has a core of its own)",
                    "default_mode": default_mode,
                    "value": folder[default_mode]["over_compute"],
                },
                "peak_child_rss_mb": round(peak_child_mb, 1),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
