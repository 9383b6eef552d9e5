"""Images per second of ``breakhis`` prediction: through the CLI at batch sizes 1, 16 and 64, and through the
service with dynamic batching on and off, in one run. Prints JSON.

    python benchmarks/breakhis_predict.py                       # tiny preset (64x64), untrained, CPU
    python benchmarks/breakhis_predict.py --preset full --device cuda --clients 16 64

The checkpoint is a seeded untrained subtype model of the preset (speed does not depend on the weights) unless
``--checkpoint`` names one. The images are synthetic BreakHis PNGs (700x460). CLI figures are whole processes
(``medinfer predict``: start-up, reading, the forward passes, writing); ``in_process`` is the prediction runner
alone on a loaded model. The service is the real one (``medinfer serve`` under uvicorn), started once with
``MEDINFER_MAX_BATCH_SIZE`` as given and once with 1, each loaded by N concurrent clients.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _http
from serve_load import HOST, Requests, check_predict, run_load, serve  # the harness of the ECG load benchmark


def checkpoint(work: Path, preset: str, path: str | None) -> Path:
    """A subtype checkpoint installed as ``work/checkpoints/breakhis.pt``."""
    from pipelines.breakhis.config import BreakhisTrainOptions
    from pipelines.common.checkpoint import save_checkpoint
    from pipelines.common.task import TrainOptions, get_task

    folder = work / "checkpoints"
    folder.mkdir(parents=True, exist_ok=True)
    if path:
        shutil.copyfile(path, folder / "breakhis.pt")
        return folder / "breakhis.pt"
    task = get_task("breakhis")
    options = TrainOptions(work, work, preset=preset, task=BreakhisTrainOptions(target="subtype"))
    return save_checkpoint(task.make_run(options).untrained_checkpoint(), folder / "breakhis.pt")


def cli_rate(images: Path, ckpt: Path, out: Path, batch: int, device: str) -> dict[str, Any]:
    """One ``medinfer predict breakhis`` over the folder."""
    cmd = [sys.executable, "-m", "app.cli", "predict", "breakhis", str(images), "-o", str(out)]
    cmd += ["--checkpoint", str(ckpt), "--device", device, "--batch-size", str(batch)]
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True)
    wall = time.perf_counter() - t0
    report = json.loads((out / "report.json").read_text(encoding="utf-8"))
    n = report["counts"]["ok"]
    return {"batch_size": batch, "images": n, "seconds": round(wall, 2), "images_per_s": round(n / wall, 1)}


def in_process_rate(images: Path, ckpt: Path, out: Path, batch: int, device: str) -> dict[str, Any]:
    """The prediction runner alone on a loaded model (no start-up)."""
    from pipelines.common.checkpoint import load_checkpoint
    from pipelines.common.predict import run_predictions
    from pipelines.common.task import PredictOptions, get_task

    task = get_task("breakhis")
    predictor = task.load_predictor(load_checkpoint(ckpt), PredictOptions(device=device, batch_size=batch))
    predictor.warmup()
    collected = task.collect_inputs([str(images)])
    t0 = time.perf_counter()
    report = run_predictions(predictor, collected, out, task="breakhis")
    wall = time.perf_counter() - t0
    n = sum(r.status == "ok" for r in report.results)
    return {"batch_size": batch, "images": n, "seconds": round(wall, 2), "images_per_s": round(n / wall, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="tiny", choices=["tiny", "full"])
    parser.add_argument("--checkpoint", default=None)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--patients", type=int, default=2, help="synthetic patients per subtype (64 images each)")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 16, 64])
    parser.add_argument("--clients", type=int, nargs="+", default=[16])
    parser.add_argument("--duration", type=float, default=10.0, help="seconds of load per configuration")
    parser.add_argument("--max-batch-size", type=int, default=16)
    parser.add_argument("--max-batch-delay-ms", type=float, default=10.0)
    args = parser.parse_args()

    import torch

    from pipelines.common.task import get_task

    work = Path(tempfile.mkdtemp(prefix="medinfer-breakhis-bench-"))
    images = get_task("breakhis").synth(work / "images", n=args.patients, seed=0)
    ckpt = checkpoint(work, args.preset, args.checkpoint)
    result: dict[str, Any] = {
        "task": "breakhis",
        "preset": args.preset,
        "device": args.device,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "cli": [cli_rate(images, ckpt, work / f"cli{b}", b, args.device) for b in args.batch_sizes],
        "in_process": [in_process_rate(images, ckpt, work / f"inproc{b}", b, args.device) for b in args.batch_sizes],
    }
    sample = next(images.rglob("*.png"))
    body, ctype = _http.multipart_body([("files", sample.name, sample.read_bytes())])
    path = "/api/v1/models/breakhis/predict"
    message = _http.request_bytes("POST", path, HOST, body, {"Content-Type": ctype})
    req = Requests(path, [message], [body], [{"Content-Type": ctype}], b'"status":"ok"', check_predict)
    service: dict[str, Any] = {}
    for label, max_batch in (("batching", args.max_batch_size), ("no_batching", 1)):
        proc, port = serve(
            ckpt.parent, work / f"service-{label}", max_batch, args.max_batch_delay_ms, max(args.clients) * 2,
            work / f"server-{label}.log", task="breakhis", device=args.device,
        )  # fmt: skip
        try:
            run_load(port, req, 2, 2.0, "asyncio", task="breakhis")  # warm the server's paths
            runs = [run_load(port, req, n, args.duration, "asyncio", task="breakhis") for n in args.clients]
            service[label] = {"max_batch_size": max_batch, "runs": runs}
        finally:
            proc.terminate()
            proc.wait(30)
    result["service"] = service
    result["service_ratio_batching_over_none"] = {
        str(b["clients"]): round(b["throughput_rps"] / n["throughput_rps"], 2) if n["throughput_rps"] else None
        for b, n in zip(service["batching"]["runs"], service["no_batching"]["runs"], strict=True)
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
