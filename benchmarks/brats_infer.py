"""One BraTS-sized case (4 × 240 × 240 × 155, 1 mm) through ``medinfer predict`` with the full network.

Prints JSON: the end-to-end time of the CLI split into read, preprocess, infer, postprocess and write (from
its report), the child's peak memory, and beside it the same network through MONAI's SlidingWindowInferer
on an in-memory tensor of the same (cropped, preprocessed) size — the pure compute — plus their ratio.
The network is randomly initialised: speed does not depend on the weights.

Usage: python benchmarks/brats_infer.py [--device cpu] [--sw-batch-size 1] [--repeats 1] [--workdir DIR]
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

import nibabel as nib
import numpy as np
import torch
from monai.inferers import SlidingWindowInferer

from pipelines.brats.synthetic import make_case
from pipelines.common.checkpoint import save_checkpoint

SHAPE = (240, 240, 155)


def write_case(folder: Path, seed: int = 0) -> Path:
    """A synthetic case on the BraTS grid (1 mm, 240 × 240 × 155, LPS-like orientation as distributed)."""
    affine = np.diag([-1.0, -1.0, 1.0, 1.0])
    affine[:3, 3] = [120.0, 120.0, -77.0]
    data = make_case(np.random.default_rng(seed), SHAPE, affine)
    case = folder / "BraTS20_Benchmark_001"
    case.mkdir(parents=True, exist_ok=True)
    for role, arr in data.items():
        dtype = np.uint8 if role == "seg" else np.int16
        nib.save(nib.Nifti1Image(np.round(arr).astype(dtype), affine), str(case / f"{case.name}_{role}.nii.gz"))
    return case


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--sw-batch-size", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args()

    work = args.workdir or Path(tempfile.mkdtemp(prefix="brats_bench_"))
    case = write_case(work / "data")
    from pipelines.common.task import get_task

    ckpt = get_task("brats").untrained_checkpoint("full")
    roi_size = tuple(ckpt.config["roi_size"])
    model = ckpt.build_model()
    ckpt_path = save_checkpoint(ckpt, work / "full.pt")

    runs = []
    for i in range(args.repeats):
        out = work / f"pred{i}"
        cmd = [
            sys.executable, "-m", "app.cli", "predict", "brats", str(case), "-o", str(out),
            "--checkpoint", str(ckpt_path), "--device", args.device, "--sw-batch-size", str(args.sw_batch_size),
        ]  # fmt: skip
        t0 = time.perf_counter()
        subprocess.run(cmd, check=True, capture_output=True, env={**os.environ, "MEDINFER_CHECKPOINTS": str(work)})
        wall = time.perf_counter() - t0
        result = json.loads((out / "report.json").read_text(encoding="utf-8"))["results"][0]
        runs.append({"wall_s": wall, "timings_s": result["timings"]})
    peak_child_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024.0

    # the same network, MONAI's inferer, an in-memory tensor of the size medinfer infers on (brain crop, 1 mm)
    from pipelines.brats.infer import BratsPredictor
    from pipelines.common.checkpoint import load_checkpoint
    from pipelines.common.task import InputItem, PredictOptions

    predictor = BratsPredictor(load_checkpoint(ckpt_path), PredictOptions(device=args.device))
    roles = {"t1": "t1", "t1ce": "t1ce", "t2": "t2", "flair": "flair"}
    prep = predictor.prepare(InputItem(case.name, {r: case / f"{case.name}_{s}.nii.gz" for r, s in roles.items()}))
    cropped_shape = tuple(int(s) for s in prep.data.shape[1:])
    x = torch.randn(1, 4, *cropped_shape, device=args.device)
    net = model.to(args.device).eval()
    inferer = SlidingWindowInferer(roi_size, sw_batch_size=args.sw_batch_size, overlap=0.5, mode="gaussian")
    compute = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        with torch.no_grad():
            inferer(x, net)
        compute.append(time.perf_counter() - t0)

    best = min(runs, key=lambda r: r["wall_s"])
    e2e, comp = best["wall_s"], min(compute)
    print(
        json.dumps(
            {
                "benchmark": "brats_infer",
                "device": args.device,
                "torch_threads": torch.get_num_threads(),
                "input_shape": [4, *SHAPE],
                "inferred_shape": [4, *cropped_shape],
                "roi_size": list(roi_size),
                "sw_batch_size": args.sw_batch_size,
                "repeats": args.repeats,
                "medinfer_predict": {
                    "end_to_end_s": round(e2e, 3),
                    "stages_s": {k: round(v, 3) for k, v in best["timings_s"].items()},
                    "process_overhead_s": round(e2e - sum(best["timings_s"].values()), 3),
                    "peak_rss_mb": round(peak_child_mb, 1),
                },
                "monai_sliding_window_compute_s": round(comp, 3),
                "end_to_end_over_compute": round(e2e / comp, 3),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
