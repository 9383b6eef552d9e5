"""Start-up of the ``medinfer`` CLI: wall time of fresh processes (best of ``--repeats``), printed as JSON.

- ``medinfer --help`` and ``medinfer models``: the whole process;
- ``medinfer predict ecg <one record>`` and ``medinfer predict brats <one case>``: the whole process and its time to
  first case (``startup_s`` of ``report.json``: from the process's start, as the OS reports it, to the first
  input's read), with the import time of the heavy packages that process loads (``python -X importtime``: each
  package's own cumulative time where it is first imported, nested ones included in their importer's).

Usage::

    python benchmarks/startup.py [--repeats 5] [--preset tiny|full] [--brats-shape 96 96 64] [--workdir DIR]
                                 [--device cpu]

Checkpoints are randomly initialised (``--preset``; loading cost grows with the network) and the inputs synthetic;
the brats case is small so that its forward pass does not drown the start-up.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

#: packages whose import time is reported (when the process imports them)
HEAVY = (
    "torch", "monai", "scipy", "numpy", "pandas", "matplotlib", "sklearn", "pydicom", "highdicom", "nibabel",
    "SimpleITK", "wfdb", "neurokit2", "PIL", "pydantic", "typer", "tqdm", "models", "pipelines.common.task",
)  # fmt: skip
CLI = [sys.executable, "-m", "app.cli"]


def timed(cmd: list[str], env: dict[str, str], report: Path | None = None) -> dict[str, float]:
    """One fresh process: its wall time, and its report's ``startup_s``."""
    t0 = time.perf_counter()
    res = subprocess.run(cmd, capture_output=True, env=env, text=True)
    wall = time.perf_counter() - t0
    if res.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({res.returncode}): {res.stderr[-2000:]}")
    out = {"total_s": wall}
    if report is not None:
        out["time_to_first_case_s"] = float(json.loads(report.read_text(encoding="utf-8"))["startup_s"])
    return out


def best_of(n: int, cmd: list[str], env: dict[str, str], report: Path | None = None) -> dict[str, Any]:
    runs = [timed(cmd, env, report) for _ in range(n)]
    best = {k: round(min(r[k] for r in runs), 3) for k in runs[0]}
    return {**best, "runs_total_s": [round(r["total_s"], 3) for r in runs]}


def imports(cmd: list[str], env: dict[str, str]) -> dict[str, Any]:
    """In one run of ``cmd``: the seconds each of ``HEAVY`` took to import (cumulative, where first imported), and
    the task packages loaded."""
    res = subprocess.run([sys.executable, "-X", "importtime", *cmd[1:]], capture_output=True, env=env, text=True)
    found: dict[str, float] = {}
    tasks: list[str] = []
    for line in res.stderr.splitlines():
        m = re.match(r"import time:\s+\d+ \|\s+(\d+) \|\s*(\S+)\s*$", line)
        if m is None:
            continue
        name = m.group(2)
        if name in HEAVY and name not in found:
            found[name] = round(int(m.group(1)) / 1e6, 3)
        elif re.fullmatch(r"pipelines\.[a-z_]+", name) and name != "pipelines.common":
            tasks.append(name.split(".")[1])
    return {"import_s": dict(sorted(found.items(), key=lambda kv: -kv[1])), "task_packages_loaded": sorted(tasks)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--preset", default="tiny", choices=["tiny", "full"])
    parser.add_argument("--brats-shape", type=int, nargs=3, default=[96, 96, 64], metavar=("X", "Y", "Z"))
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--device", default="cpu", help="device of the predict runs: cpu, cuda[:N] or auto")
    args = parser.parse_args()

    from pipelines.common.checkpoint import save_checkpoint
    from pipelines.common.task import get_task

    work = args.workdir or Path(tempfile.mkdtemp(prefix="startup_bench_"))
    env = {**os.environ, "MEDINFER_CHECKPOINTS": str(work / "installed")}
    ecg, brats = get_task("ecg"), get_task("brats")
    ecg_ckpt = save_checkpoint(ecg.untrained_checkpoint(args.preset), work / "ecg.pt")
    brats_ckpt = save_checkpoint(brats.untrained_checkpoint(args.preset), work / "brats.pt")
    record = ecg.example_inputs(work / "ecg_in", 1, seed=0)[0]

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from brats_infer import write_case

    case = write_case(work / "brats_in", (args.brats_shape[0], args.brats_shape[1], args.brats_shape[2]))

    predict = {
        "ecg": [*CLI, "predict", "ecg", record, "-o", str(work / "out_ecg"), "--checkpoint", str(ecg_ckpt)],
        "brats": [*CLI, "predict", "brats", str(case), "-o", str(work / "out_brats"), "--checkpoint", str(brats_ckpt)],
    }
    result: dict[str, Any] = {
        "benchmark": "startup",
        "repeats": args.repeats,
        "preset": args.preset,
        "device": args.device,
        "python": sys.version.split()[0],
        "help": best_of(args.repeats, [*CLI, "--help"], env),
        "models": best_of(args.repeats, [*CLI, "models"], env),
    }
    for task, cmd in predict.items():
        cmd = [*cmd, "--device", args.device]
        result[f"predict_{task}"] = {
            **best_of(args.repeats, cmd, env, work / f"out_{task}" / "report.json"),
            **imports(cmd, env),
        }
    result["brats_input_shape"] = [4, *args.brats_shape]
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
