"""Load benchmark of the ecg service, stated as ratios against an in-process floor. Prints one JSON document.

    python benchmarks/serve_load.py [--clients 16 64] [--duration 10] [--mode multipart oip oip-binary]
        [--records 64] [--sampling-rate 500] [--max-batch-size 32] [--max-batch-delay-ms 5]
        [--checkpoints DIR] [--client asyncio|threads] [--torch-threads N] [--device cpu|cuda]

It writes ``--records`` distinct synthetic 12-lead WFDB records once (``.hea`` + ``.dat`` at ``--sampling-rate``)
and every figure cycles through them. Without ``--checkpoints`` it first trains a tiny ecg checkpoint on eight
other synthetic records (seconds to a minute on CPU). The temporary folder (records, server data, logs) is removed
after a run that succeeded and kept, with its path printed, after one that failed.

The figures:

- ``floor``: records per second of the service's own steps in this process, no HTTP: the predictor loaded as the
  service loads it (``max_batch_size`` per forward pass), then per batch ``prepare`` each record, ``run`` the
  batch and ``finish`` each, for ``--duration`` seconds. Variants: ``files`` reads the uploaded files and finishes
  into a folder (the files the service writes); ``memory`` finishes without files (``finish(prepared, raw,
  None)``); ``tensor`` prepares from the decoded array in memory (what an Open Inference Protocol request hands
  over). A variant the code does not support yet is reported ``available: false`` with the reason. Each gives
  milliseconds per record of each step too. ``records_floor`` is the faster of ``files`` and ``memory`` (the
  least the service's work costs), ``tensor_floor`` is ``tensor``.
- ``service``: the real server (``python -m app.cli serve`` on 127.0.0.1, uvicorn), one with dynamic batching
  (``max_batch_size``) and one without (1), both started once; each run against one is followed by the same run
  against the other. Per request mode and client count: ``clients`` concurrent clients,
  one keep-alive connection each, send requests back to back for ``--duration`` seconds. ``throughput_rps``
  counts only checked 200 responses; ``p50_ms``/``p99_ms`` are their latencies and ``p99_over_p50`` the tail;
  ``mean_batch_size`` is read from the server's ``/metrics``; ``errors`` counts the rest by status (or by
  exception); ``throughput_over_floor`` divides by ``records_floor`` (and ``throughput_over_tensor_floor`` by
  ``tensor_floor`` for the tensor modes); ``client_cpu_ms_per_request`` is this process's CPU time per request
  (``time.process_time``): what the load generator took from the server's cores; ``load_average_1m`` at the end
  of each run and floor variant shows whether something else shared the cores meanwhile. Measured on a shared
  2-core machine, torch's intra-op threads stall when another process holds a core (a batch's forward pass took
  up to 100× its time alone): the floor and the server use the same intra-op threads, the server's default
  (``app.runtime.torch_threads``: the cores left beside the decode threads) unless ``--torch-threads`` sets both.
- Modes: ``multipart`` posts each record's files to ``/api/v1/models/ecg/predict``; ``oip`` posts the record's
  signal as an FP32 ``[12, N]`` tensor in Open Inference Protocol JSON to ``/v2/models/ecg/infer``; ``oip-binary``
  sends the same tensor in the binary tensor extension (``Inference-Header-Content-Length``); tensors hold the
  record's values in mV with its rate as the ``sampling_rate`` parameter. A mode the server
  refuses (404 before the route exists) is reported ``available: false`` with the status and message.
- ``summary``, per mode: ``throughput_over_floor`` and ``p99_over_p50`` per client count with batching,
  ``batching_over_none`` (throughput with batching / without) at the largest client count, and for the tensor
  modes ``throughput_over_tensor_floor``; ``service.batching_over_none`` gives that ratio at every client count.

Responses are checked: every 200 body holds the expected marker, and the first and every 16th of each client is
parsed in full (every result ``ok``; tensor outputs present). Request bodies are encoded once; the load generator
writes whole pre-built requests on raw asyncio streams (``benchmarks/_http.py``); ``--client threads`` uses
:mod:`http.client` in a thread per client instead, which costs this process more CPU per request.
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import _http  # beside this script (run as `python benchmarks/serve_load.py`)
import numpy as np

TASK = "ecg"
MODES = ("multipart", "oip", "oip-binary")
TENSOR_MODES = frozenset({"oip", "oip-binary"})
HOST = "127.0.0.1"
PREDICT_PATH = f"/api/v1/models/{TASK}/predict"
OIP_PATH = f"/v2/models/{TASK}/infer"
#: every this-many-th 200 response of a client is parsed in full (the first one too)
FULL_CHECK_EVERY = 16


@dataclass
class Record:
    """One synthetic record: its files as uploaded and its signal (12, N) in mV as decoded."""

    name: str
    files: list[tuple[str, bytes]]
    signal: np.ndarray
    fs: float
    header: Path


@dataclass
class Requests:
    """The pre-encoded requests of one mode: whole messages (asyncio client) and their parts (thread client)."""

    path: str
    messages: list[bytes]
    bodies: list[bytes]
    headers: list[dict[str, str]]
    marker: bytes
    check: Callable[[Any], str | None]


# -- data and checkpoint -----------------------------------------------------------------------------------------
def tiny_checkpoint(work: Path) -> Path:
    """Train and install a tiny ecg checkpoint on eight synthetic records; return the checkpoints folder."""
    from pipelines.common.checkpoint import install_checkpoint
    from pipelines.common.task import TrainOptions, get_task

    task = get_task(TASK)
    data = task.synth(work / "data", n=8, seed=0)
    run = task.train(TrainOptions(data_dir=data, out_dir=work / "run", preset="tiny", epochs=1, device="cpu"))
    folder = work / "checkpoints"
    install_checkpoint(run, TASK, folder)
    return folder


def write_records(work: Path, n: int, fs: int) -> list[Record]:
    """``n`` distinct synthetic WFDB records at ``fs`` Hz (seed 1, apart from the training records)."""
    import wfdb

    from pipelines.common.task import get_task

    root = get_task(TASK).synth(work / "records", n=n, seed=1)
    out = []
    for hea in sorted((root / f"records{fs}").rglob("*.hea")):
        stem = hea.name[: -len(".hea")]
        files = sorted(f for f in hea.parent.iterdir() if f.is_file() and f.name.split(".")[0] == stem)
        rec = wfdb.rdrecord(str(hea.with_suffix("")))
        signal = np.asarray(rec.p_signal, dtype=np.float64).T  # (12, N) mV, 0.001 mV steps
        out.append(Record(stem, [(f.name, f.read_bytes()) for f in files], signal, float(rec.fs), hea))
    if len(out) != n:
        raise RuntimeError(f"expected {n} records at {fs} Hz under {root}, found {len(out)}")
    return out


# -- the in-process floor ----------------------------------------------------------------------------------------
def floor(
    checkpoints: Path,
    records: list[Record],
    batch_size: int,
    duration: float,
    work: Path,
    threads: int | None = None,
    device: str = "cpu",
) -> dict[str, Any]:
    """Records per second of prepare → run (batches of ``batch_size``) → finish in this process on ``device``, per
    variant (torch's intra-op threads: ``threads``, else as the environment sets them)."""
    import torch

    if threads is not None:
        torch.set_num_threads(threads)

    from pipelines.common.checkpoint import installed_checkpoint, load_checkpoint
    from pipelines.common.task import InputItem, PredictOptions, get_task

    task = get_task(TASK)
    path = installed_checkpoint(TASK, checkpoints)
    if path is None:
        raise FileNotFoundError(f"no {TASK}.pt under {checkpoints}")
    options = task.parse_options({})
    predictor = task.load_predictor(
        load_checkpoint(path, task=TASK), PredictOptions(device=device, batch_size=batch_size, task=options)
    )
    predictor.warmup()
    file_items = task.collect_inputs([str(r.header) for r in records]).items
    tensor_items = [
        InputItem(r.name, {}, data=r.signal.astype(np.float32), options=task.parse_options({"sampling_rate": r.fs}))
        for r in records
    ]
    out_root = work / "floor-out"

    def timed(items: list[Any], to_files: bool) -> dict[str, Any]:
        spent = {"prepare": 0.0, "run": 0.0, "finish": 0.0}
        done, k = 0, 0
        t_start = time.perf_counter()
        while time.perf_counter() - t_start < duration or done < len(items):
            batch = [items[(k * batch_size + i) % len(items)] for i in range(batch_size)]
            out_dir = out_root / f"{k:06d}" if to_files else None
            t0 = time.perf_counter()
            prepared = [predictor.prepare(it) for it in batch]
            t1 = time.perf_counter()
            raws = predictor.run(prepared)
            t2 = time.perf_counter()
            for p, raw in zip(prepared, raws, strict=True):
                predictor.finish(p, raw, out_dir)  # None: the in-memory finish
            t3 = time.perf_counter()
            spent["prepare"] += t1 - t0
            spent["run"] += t2 - t1
            spent["finish"] += t3 - t2
            done += len(batch)
            k += 1
        elapsed = time.perf_counter() - t_start
        return {
            "available": True,
            "records": done,
            "seconds": round(elapsed, 2),
            "records_per_s": round(done / elapsed, 2),
            **{f"{step}_ms_per_record": round(1000 * s / done, 3) for step, s in spent.items()},
            "load_average_1m": round(os.getloadavg()[0], 2),
        }

    def variant(items: list[Any], to_files: bool, expected: tuple[type[BaseException], ...]) -> dict[str, Any]:
        try:  # one untimed pass over a batch: warms the path, and tells whether the code supports it yet
            first = items[:batch_size]
            out_dir = out_root / "check" if to_files else None
            for p, raw in zip(
                prepared := [predictor.prepare(it) for it in first], predictor.run(prepared), strict=True
            ):
                predictor.finish(p, raw, out_dir)
        except expected as exc:
            return {"available": False, "reason": f"{type(exc).__name__}: {exc}"}
        return timed(items, to_files)

    results = {"files": variant(file_items, True, ())}
    results["memory"] = variant(file_items, False, (TypeError, AttributeError))
    in_memory = results["memory"]["available"]
    # an in-memory input the predictor cannot read yet fails in its own way (StopIteration, KeyError...)
    results["tensor"] = variant(tensor_items, not in_memory, (Exception,))
    results["tensor"]["finish"] = "memory" if in_memory else "files"
    best = max(("files", "memory"), key=lambda v: results[v].get("records_per_s", 0.0))
    return {
        "batch_size": batch_size,
        "torch_threads": torch.get_num_threads(),
        **results,
        "records_floor": best,
        "records_floor_per_s": results[best]["records_per_s"],
        "tensor_floor_per_s": results["tensor"].get("records_per_s"),
    }


# -- requests ----------------------------------------------------------------------------------------------------
def check_predict(doc: Any) -> str | None:
    """Why a predict response body is not a good result (``None``: it is)."""
    results = doc.get("results") if isinstance(doc, dict) else None
    if not results:
        return "no results"
    bad = [r.get("status") for r in results if r.get("status") != "ok"]
    return f"result status {bad[0]}" if bad else None


def check_oip(doc: Any) -> str | None:
    """Why an Open Inference Protocol response body holds no outputs (``None``: it holds them)."""
    outputs = doc.get("outputs") if isinstance(doc, dict) else None
    if not outputs or not all(isinstance(o, dict) and o.get("data") is not None for o in outputs):
        return "no outputs"
    return None


def encode(mode: str, records: list[Record], host: str) -> Requests:
    """Every record's request of ``mode``, encoded once."""
    bodies: list[bytes] = []
    headers: list[dict[str, str]] = []
    for r in records:
        if mode == "multipart":
            body, ctype = _http.multipart_body([("files", name, data) for name, data in r.files])
            bodies.append(body)
            headers.append({"Content-Type": ctype})
        elif mode == "oip":
            bodies.append(_http.oip_json_body(r.name, r.signal, {"sampling_rate": r.fs}))
            headers.append({"Content-Type": "application/json"})
        elif mode == "oip-binary":
            body, head_len = _http.oip_binary_body(r.name, r.signal, {"sampling_rate": r.fs})
            bodies.append(body)
            headers.append(
                {"Content-Type": "application/octet-stream", "Inference-Header-Content-Length": str(head_len)}
            )
        else:
            raise ValueError(f"unknown mode {mode!r}; known: {', '.join(MODES)}")
    path = PREDICT_PATH if mode == "multipart" else OIP_PATH
    messages = [_http.request_bytes("POST", path, host, b, h) for b, h in zip(bodies, headers, strict=True)]
    if mode == "multipart":
        return Requests(path, messages, bodies, headers, b'"status":"ok"', check_predict)
    return Requests(path, messages, bodies, headers, b'"outputs"', check_oip)


class Tally:
    """What the clients of one run saw (one event loop, or threads under a lock)."""

    def __init__(self, check: Callable[[Any], str | None], marker: bytes) -> None:
        self.check, self.marker = check, marker
        self.latencies: list[float] = []
        self.errors: dict[str, int] = {}
        self.checked = 0
        self.lock = threading.Lock()

    def error(self, key: str) -> None:
        with self.lock:
            self.errors[key] = self.errors.get(key, 0) + 1

    def response(self, r: _http.HTTPResponse, seconds: float, full: bool) -> float:
        """Record a response; returns how long its client should pause (on 503)."""
        if r.status != 200:
            self.error(str(r.status))
            return float(r.headers.get("retry-after", "1")) / 10 if r.status == 503 else 0.0
        problem = None
        if full or self.marker not in r.body:
            try:
                problem = self.check(json.loads(r.body))
            except ValueError:
                problem = "body is not JSON"
        if problem is not None:
            self.error(f"200 but {problem}")
            return 0.0
        with self.lock:
            self.latencies.append(seconds)
            self.checked += full
        return 0.0


async def load_asyncio(port: int, req: Requests, clients: int, duration: float, tally: Tally) -> None:
    stop = time.perf_counter() + duration

    async def worker(index: int) -> None:
        conn = _http.AsyncConnection(HOST, port)
        n = 0
        try:
            while time.perf_counter() < stop:
                message = req.messages[(index + n * clients) % len(req.messages)]
                t0 = time.perf_counter()
                try:
                    r = await conn.request(message)
                except (OSError, asyncio.IncompleteReadError, _http.ProtocolError) as exc:
                    tally.error(type(exc).__name__)
                    await asyncio.sleep(0.05)
                    continue
                pause = tally.response(r, time.perf_counter() - t0, n % FULL_CHECK_EVERY == 0)
                n += 1
                if pause:
                    await asyncio.sleep(pause)
        finally:
            await conn.close()

    await asyncio.gather(*(worker(i) for i in range(clients)))


def load_threads(port: int, req: Requests, clients: int, duration: float, tally: Tally) -> None:
    stop = time.perf_counter() + duration

    def worker(index: int) -> None:
        conn = _http.ThreadConnection(HOST, port)
        n = 0
        try:
            while time.perf_counter() < stop:
                i = (index + n * clients) % len(req.bodies)
                t0 = time.perf_counter()
                try:
                    r = conn.request("POST", req.path, req.bodies[i], req.headers[i])
                except (OSError, http.client.HTTPException) as exc:
                    tally.error(type(exc).__name__)
                    time.sleep(0.05)
                    continue
                pause = tally.response(r, time.perf_counter() - t0, n % FULL_CHECK_EVERY == 0)
                n += 1
                if pause:
                    time.sleep(pause)
        finally:
            conn.close()

    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def batch_stats(port: int, task: str = TASK) -> tuple[float, float]:
    """(sum, count) of the server's batch-size histogram of ``task``."""
    text = _http.get(HOST, port, "/metrics").body.decode()
    out = []
    for key in ("sum", "count"):
        m = re.search(rf'medinfer_batch_size_{key}{{task="{task}"}} ([0-9.e+]+)', text)
        out.append(float(m.group(1)) if m else 0.0)
    return out[0], out[1]


def run_load(port: int, req: Requests, clients: int, duration: float, client: str, task: str = TASK) -> dict[str, Any]:
    """``clients`` concurrent clients sending ``req`` to ``task`` for ``duration`` seconds; the run's figures."""
    tally = Tally(req.check, req.marker)
    s0, c0 = batch_stats(port, task)
    cpu0, t0 = time.process_time(), time.perf_counter()
    if client == "asyncio":
        asyncio.run(load_asyncio(port, req, clients, duration, tally))
    else:
        load_threads(port, req, clients, duration, tally)
    elapsed, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    s1, c1 = batch_stats(port, task)
    lat = np.asarray(tally.latencies) * 1000
    sent = len(tally.latencies) + sum(tally.errors.values())
    p50 = float(np.percentile(lat, 50)) if lat.size else None
    p99 = float(np.percentile(lat, 99)) if lat.size else None
    return {
        "clients": clients,
        "requests_ok": len(tally.latencies),
        "bodies_parsed": tally.checked,
        "errors": tally.errors,
        "seconds": round(elapsed, 2),
        "throughput_rps": round(len(tally.latencies) / elapsed, 2),
        "p50_ms": round(p50, 1) if p50 is not None else None,
        "p99_ms": round(p99, 1) if p99 is not None else None,
        "p99_over_p50": round(p99 / p50, 2) if p50 and p99 is not None else None,
        "mean_batch_size": round((s1 - s0) / (c1 - c0), 2) if c1 > c0 else None,
        "client_cpu_ms_per_request": round(1000 * cpu / sent, 3) if sent else None,
        "load_average_1m": round(os.getloadavg()[0], 2),
    }


def error_message(r: _http.HTTPResponse) -> str:
    """The message of an error response: the service's ``{"error": {"message"}}``, the Open Inference Protocol's
    ``{"error": "..."}``, FastAPI's ``{"detail"}``, else the start of the body."""
    try:
        doc = r.json()
    except ValueError:
        doc = None
    if isinstance(doc, dict):
        error = doc.get("error")
        if isinstance(error, dict) and error.get("message"):
            return str(error["message"])
        if isinstance(error, str):
            return error
        if doc.get("detail"):
            return str(doc["detail"])
    return r.body[:200].decode("utf-8", "replace")


def probe(port: int, req: Requests) -> str | None:
    """Why the server does not take this mode's requests (``None``: it answers the first one well)."""
    conn = _http.ThreadConnection(HOST, port)
    try:
        r = conn.request("POST", req.path, req.bodies[0], req.headers[0])
    finally:
        conn.close()
    if r.status != 200:
        return f"POST {req.path} answered {r.status}: {error_message(r)}"[:400]
    try:
        return req.check(r.json())
    except ValueError:
        return f"POST {req.path} answered 200 with a body that is not JSON"


# -- the server --------------------------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def serve(
    checkpoints: Path,
    data_dir: Path,
    max_batch: int,
    delay_ms: float,
    queue: int,
    log: Path,
    threads: int | None = None,
    task: str = TASK,
    device: str = "cpu",
) -> tuple[subprocess.Popen[bytes], int]:
    """Start ``python -m app.cli serve`` of ``task`` on a free port (torch's intra-op threads: ``threads`` through
    ``MEDINFER_TORCH_THREADS``, else the server's default); return it once ``/readyz`` answers 200."""
    port = free_port()
    env = {
        **os.environ,
        "MEDINFER_TASKS": task,
        "MEDINFER_MAX_BATCH_SIZE": str(max_batch),
        "MEDINFER_MAX_BATCH_DELAY_MS": str(delay_ms),
        "MEDINFER_MAX_QUEUE": str(queue),
    }
    if threads is not None:
        env["MEDINFER_TORCH_THREADS"] = str(threads)
    env.pop("MEDINFER_API_KEYS", None)
    env.pop("MEDINFER_API_KEYS_FILE", None)
    cmd = [sys.executable, "-m", "app.cli", "serve", "--host", HOST, "--port", str(port)]
    cmd += ["--checkpoints", str(checkpoints), "--data-dir", str(data_dir), "--device", device]
    proc = subprocess.Popen(cmd, env=env, stdout=log.open("ab"), stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited ({proc.returncode}); see {log}")
        try:
            if _http.get(HOST, port, "/readyz", timeout=2).status == 200:
                return proc, port
        except OSError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise TimeoutError(f"server never became ready; see {log}")


def ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 3) if a is not None and b else None


def batching_ratios(service: dict[str, Any], mode: str) -> dict[str, float | None]:
    """Throughput with batching / without, per client count (empty when the mode was unavailable)."""
    on, off = service["batching"]["modes"][mode], service["no_batching"]["modes"][mode]
    if not on.get("available") or not off.get("available"):
        return {}
    runs_off = {r["clients"]: r for r in off["runs"]}
    return {str(r["clients"]): ratio(r["throughput_rps"], runs_off[r["clients"]]["throughput_rps"]) for r in on["runs"]}


def summarize(service: dict[str, Any], modes: list[str], clients: list[int]) -> dict[str, Any]:
    """The issue's ratios per mode: throughput/floor and p99/p50 per client count (batching on), and batching
    on/off at the largest client count."""
    out: dict[str, Any] = {}
    top = str(max(clients))
    for mode in modes:
        on = service["batching"]["modes"][mode]
        off = service["no_batching"]["modes"][mode]
        if not on.get("available") or not off.get("available"):
            out[mode] = {"available": False, "reason": on.get("reason") or off.get("reason")}
            continue
        runs_on = {str(r["clients"]): r for r in on["runs"]}
        entry: dict[str, Any] = {
            "throughput_over_floor": {c: r["throughput_over_floor"] for c, r in runs_on.items()},
            "p99_over_p50": {c: r["p99_over_p50"] for c, r in runs_on.items()},
            "batching_over_none": {top: batching_ratios(service, mode)[top]},
        }
        if mode in TENSOR_MODES:
            entry["throughput_over_tensor_floor"] = {c: r["throughput_over_tensor_floor"] for c, r in runs_on.items()}
        out[mode] = entry
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--checkpoints", type=Path, help=f"folder with {TASK}.pt (default: train a tiny one)")
    parser.add_argument("--clients", type=int, nargs="+", default=[16, 64])
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per floor variant and per run")
    parser.add_argument("--max-batch-size", type=int, default=32)
    parser.add_argument("--max-batch-delay-ms", type=float, default=5.0)
    parser.add_argument("--mode", nargs="+", choices=MODES, default=list(MODES), help="request modes")
    parser.add_argument("--records", type=int, default=64, help="distinct synthetic records, cycled through")
    parser.add_argument("--sampling-rate", type=int, choices=(100, 500), default=500, help="of the records (Hz)")
    parser.add_argument("--client", choices=("asyncio", "threads"), default="asyncio", help="load generator")
    parser.add_argument(
        "--torch-threads",
        type=int,
        help="torch intra-op threads of the floor and the server (default: the server's default, "
        "app.runtime.torch_threads)",
    )
    parser.add_argument("--device", default="cpu", help="device of the floor and the servers: cpu, cuda[:N] or auto")
    args = parser.parse_args()
    if (
        args.records < 1
        or min(args.clients) < 1
        or args.duration <= 0
        or (args.torch_threads is not None and args.torch_threads < 1)
    ):
        parser.error("--records, --clients, --duration and --torch-threads must be positive")

    load_start = os.getloadavg()
    work = Path(tempfile.mkdtemp(prefix="medinfer-bench-"))
    try:
        out = measure(args, work)
    except BaseException:
        print(f"benchmark failed; its records, checkpoint and server logs are kept in {work}", file=sys.stderr)
        raise
    shutil.rmtree(work, ignore_errors=True)  # the servers' result folders: one per request
    out["setup"]["load_average_start"] = [round(x, 2) for x in load_start]
    out["setup"]["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    print(json.dumps(out, indent=2))


def measure(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """The floor, then every mode and client count against the server with and without batching."""
    checkpoints = args.checkpoints or tiny_checkpoint(work / "train")
    records = write_records(work, args.records, args.sampling_rate)
    if args.torch_threads is None:  # the server's own default (MEDINFER_TORCH_THREADS, else its rule)
        from app.runtime import torch_threads
        from app.settings import Settings

        args.torch_threads = torch_threads(Settings())
    base_floor = floor(checkpoints, records, args.max_batch_size, args.duration, work, args.torch_threads, args.device)
    records_floor, tensor_floor = base_floor["records_floor_per_s"], base_floor["tensor_floor_per_s"]

    queue = max(args.clients) * 2
    configs = {"batching": args.max_batch_size, "no_batching": 1}
    service: dict[str, Any] = {label: {"max_batch_size": mb, "modes": {}} for label, mb in configs.items()}
    servers: dict[str, tuple[subprocess.Popen[bytes], int]] = {}
    try:
        # both servers up at once (an idle one costs nothing), each run of one beside the same run of the other:
        # whatever else shares the cores meanwhile weighs on both sides of a batching on/off ratio alike
        for label, max_batch in configs.items():
            servers[label] = serve(
                checkpoints,
                work / f"data-{label}",
                max_batch,
                args.max_batch_delay_ms,
                queue,
                work / f"server-{label}.log",
                args.torch_threads,
                device=args.device,
            )
        for mode in args.mode:
            req = encode(mode, records, HOST)
            ready = []
            for label, (_, port) in servers.items():
                problem = probe(port, req)
                if problem is None:
                    run_load(port, req, 4, 1.5, args.client)  # warm the server's paths of this mode
                    ready.append(label)
                    service[label]["modes"][mode] = {"available": True, "runs": []}
                else:
                    service[label]["modes"][mode] = {"available": False, "reason": problem}
            for n in args.clients:
                for label in ready:
                    run = run_load(servers[label][1], req, n, args.duration, args.client)
                    run["throughput_over_floor"] = ratio(run["throughput_rps"], records_floor)
                    if mode in TENSOR_MODES:
                        run["throughput_over_tensor_floor"] = ratio(run["throughput_rps"], tensor_floor)
                    service[label]["modes"][mode]["runs"].append(run)
    finally:
        for proc, _ in servers.values():
            proc.terminate()
        for proc, _ in servers.values():
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
    service["batching_over_none"] = {mode: batching_ratios(service, mode) for mode in args.mode}

    import torch

    return {
        "summary": summarize(service, args.mode, args.clients),
        "setup": {
            "task": TASK,
            "device": args.device,
            "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "server_torch_threads": args.torch_threads,
            "switch_interval_ms": float(os.environ.get("MEDINFER_SWITCH_INTERVAL_MS", "5")),
            "records": args.records,
            "sampling_rate_hz": args.sampling_rate,
            "duration_s": args.duration,
            "max_batch_size": args.max_batch_size,
            "max_batch_delay_ms": args.max_batch_delay_ms,
            "client": args.client,
        },
        "floor": base_floor,
        "service": service,
    }


if __name__ == "__main__":
    main()
