"""Seconds per WFDB record read: medinfer's ``read_wfdb`` (NumPy decoder) beside ``wfdb.rdrecord`` on the same
window and channels, and beside the header parse alone (``parse_wfdb_header``, with reading the ``.hea``). Prints
JSON; never asserts times.

Usage::

    python benchmarks/ecg_read.py [--n 200] [--repeats 5] [--seconds 10] [--fs 500] [--formats 16 212]

For each format, ``--n`` 12-lead records of ``--seconds`` at ``--fs`` Hz are written with ``wfdb.wrsamp``; each
timing is the best over ``--repeats`` passes of the mean over the records. ``signal_read_s`` is the signal read
alone (the window's bytes to physical values, ``_wfdb_signal``); ``header_over_signal_read`` is
``header_parse_s / signal_read_s``.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np


def _write_records(folder: Path, n: int, seconds: float, fs: int, fmt: str) -> list[Path]:
    import wfdb

    from models.protoecgnet import LEADS

    rng = np.random.default_rng(0)
    length = round(seconds * fs)
    t = np.arange(length) / fs
    gain = {"16": 1000.0, "212": 200.0}.get(fmt, 200.0)
    paths = []
    for i in range(n):
        sig = np.sin(2 * np.pi * (1 + 0.1 * np.arange(12))[:, None] * t) + rng.normal(0, 0.05, (12, length))
        name = f"{i:05d}"
        wfdb.wrsamp(name, fs=fs, units=["mV"] * 12, sig_name=list(LEADS), p_signal=sig.T, fmt=[fmt] * 12,
                    adc_gain=[gain] * 12, baseline=[0] * 12, write_dir=str(folder))  # fmt: skip
        paths.append(folder / f"{name}.hea")
    return paths


def _best(fn: Callable[[Path], object], paths: list[Path], repeats: int) -> float:
    """The best over ``repeats`` passes of the mean seconds per record."""
    fn(paths[0])  # warm up imports and caches
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        for p in paths:
            fn(p)
        best = min(best, (time.perf_counter() - t0) / len(paths))
    return best


def _bench_format(paths: list[Path], repeats: int) -> dict[str, float]:
    import wfdb

    from pipelines.ecg.readers import WfdbHeader, _wfdb_signal, _window, parse_wfdb_header, read_wfdb
    from pipelines.ecg.transforms import lead_indices

    def header(p: Path) -> WfdbHeader:
        return parse_wfdb_header(p.read_bytes().decode("latin-1"), p)

    headers = {p: header(p) for p in paths}
    windows: dict[Path, tuple[list[int], int, int, int]] = {}
    for p, h in headers.items():
        assert h.n_samples is not None
        channels = sorted(lead_indices([s.description for s in h.signals], p))
        windows[p] = (channels, *_window(h.n_samples, h.fs), h.n_samples)

    def rdrecord(p: Path) -> object:
        channels, start, stop, _ = windows[p]
        return wfdb.rdrecord(str(p.with_suffix("")), sampfrom=start, sampto=stop, channels=channels)

    def signal_read(p: Path) -> object:
        channels, start, stop, n = windows[p]
        return _wfdb_signal(headers[p], p.parent, channels, start, stop, n, p)

    ours = _best(read_wfdb, paths, repeats)
    theirs = _best(rdrecord, paths, repeats)
    parse = _best(header, paths, repeats)
    signal = _best(signal_read, paths, repeats)
    return {
        "read_wfdb_s": ours,
        "wfdb_rdrecord_s": theirs,
        "rdrecord_over_read_wfdb": theirs / ours,
        "header_parse_s": parse,
        "signal_read_s": signal,
        "header_over_signal_read": parse / signal,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--fs", type=int, default=500)
    ap.add_argument("--formats", nargs="+", default=["16", "212"])
    args = ap.parse_args()

    import wfdb

    result: dict = {
        "benchmark": "ecg_read",
        "records": args.n,
        "seconds_per_record": args.seconds,
        "fs": args.fs,
        "repeats": args.repeats,
        "machine": platform.machine(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "wfdb": wfdb.__version__,
        "formats": {},
    }
    for fmt in args.formats:
        with tempfile.TemporaryDirectory() as tmp:
            paths = _write_records(Path(tmp), args.n, args.seconds, args.fs, fmt)
            result["formats"][fmt] = _bench_format(paths, args.repeats)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
