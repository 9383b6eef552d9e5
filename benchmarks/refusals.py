"""Seconds and peak traced memory of reading hostile inputs, beside a valid input of the same kind. Prints JSON.

Usage::

    python benchmarks/refusals.py [--repeat 3]

Each hostile input is small on disk (or sparse) but claims far more than it holds: a 24 h 12-lead Holter at
500 Hz (about 1 GB on disk, sparse: its central minute is read), a CSV of a million columns, a DICOM series
whose headers claim 65535×65535 slices, a DICOM series whose JPEG frames declare 60000×60000 pixels, and a
16³ NIfTI of 900 mm voxels (about 9e10 voxels once resampled to the untrained tiny brats model's 3 mm).
Each is read by the same code as ``medinfer predict`` (the readers, and brats's ``prepare`` for the last);
the valid baselines are a 10 s WFDB record, a 10 s CSV, a 16-slice DICOM series and a 64³ NIfTI through
the same calls. ``peak_mb`` is the peak of ``tracemalloc`` (Python and NumPy allocations; GDCM's own
buffers are not traced), ``claimed_mb`` what the input's headers claim it decodes to (float64 samples,
float32 voxels). Nothing here is timed by the tests.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from models.protoecgnet import LEADS

FS = 500


def _holter(folder: Path, hours: float) -> Path:
    """A 12-lead format-16 WFDB record claiming ``hours`` of samples, written sparse."""
    n = int(hours * 3600 * FS)
    lines = [f"holter 12 {FS} {n}"] + [f"holter.dat 16 1000/mV 16 0 0 0 0 {lead}" for lead in LEADS]
    (folder / "holter.hea").write_text("\n".join(lines) + "\n")
    t = np.arange(60 * FS) / FS
    window = np.stack([np.sin(2 * np.pi * (1 + i / 10) * t) for i in range(12)])
    with (folder / "holter.dat").open("wb") as fh:
        fh.truncate(n * 12 * 2)
        fh.seek(((n - window.shape[1]) // 2) * 12 * 2)
        fh.write(np.round(window.T * 1000).astype("<i2").tobytes())
    return folder / "holter.hea"


def _csv(folder: Path, columns: int, rows: int) -> Path:
    path = folder / f"c{columns}x{rows}.csv"
    rng = np.random.default_rng(0)
    np.savetxt(path, rng.normal(0, 0.5, (rows, columns)), delimiter=",", fmt="%.3f")
    return path


def _series(folder: Path, n: int = 16) -> Path:
    from pipelines.common.dicom import write_dicom_series

    rng = np.random.default_rng(0)
    write_dicom_series(rng.normal(500, 100, (32, 32, n)), np.diag([1.0, 1.0, 3.0, 1.0]), folder, "T2", 0)
    return folder


def _rewrite(folder: Path, change: Callable[[Any], None], syntax: str | None = None) -> Path:
    import pydicom

    for f in sorted(folder.glob("*.dcm")):
        ds = pydicom.dcmread(f)
        change(ds)
        if syntax is not None:
            ds.file_meta.TransferSyntaxUID = pydicom.uid.UID(syntax)
        ds.save_as(f)
    return folder


def _claim_rows(ds: Any) -> None:
    ds.Rows = ds.Columns = 65535


def _jpeg_claiming(ds: Any) -> None:
    """Replace the pixels by a real 32×32 JPEG whose frame header (SOF0) says 60000×60000."""
    import io

    from PIL import Image
    from pydicom.encaps import encapsulate

    buf = io.BytesIO()
    Image.fromarray(np.zeros((ds.Rows, ds.Columns), np.uint8)).save(buf, "JPEG")
    frame = bytearray(buf.getvalue())
    sof = frame.index(b"\xff\xc0")
    frame[sof + 5 : sof + 9] = (60000).to_bytes(2, "big") * 2
    ds.PixelData = encapsulate([bytes(frame)])
    ds["PixelData"].VR = "OB"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PhotometricInterpretation = "MONOCHROME2"


def _nifti(folder: Path, name: str, size: int, mm: float) -> Path:
    import nibabel as nib

    rng = np.random.default_rng(0)
    path = folder / name
    nib.save(nib.Nifti1Image(rng.normal(300, 50, (size,) * 3).astype(np.float32), np.diag([mm, mm, mm, 1.0])), path)
    return path


def _measure(fn: Callable[[], Any], repeat: int) -> dict[str, Any]:
    """Best seconds over ``repeat`` calls, the peak traced memory of one call, and its outcome."""
    from pipelines.common.errors import InputError

    outcome = "read"
    message = ""
    tracemalloc.start()
    try:
        fn()
    except InputError as exc:
        outcome, message = "refused", str(exc).split(": ", 1)[-1][:160]
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        try:
            fn()
        except InputError:
            pass
        times.append(time.perf_counter() - t0)
    return {"outcome": outcome, "seconds": round(min(times), 4), "peak_mb": round(peak / 2**20, 2), "says": message}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3, help="timed calls per case (best is reported)")
    args = parser.parse_args()

    from pipelines.common.io import read_volume
    from pipelines.common.task import InputItem, PredictOptions, get_task
    from pipelines.ecg.readers import read_record

    brats = get_task("brats")
    predictor: Any = brats.load_predictor(brats.untrained_checkpoint(), PredictOptions(device="cpu"))

    def brats_prepare(path: Path) -> Callable[[], Any]:
        # the same file as all four modalities would be refused as identical: give four distinct copies
        import nibabel as nib

        img: Any = nib.load(str(path))
        paths = {}
        for i, m in enumerate(("t1", "t1ce", "t2", "flair")):
            copy = path.with_name(f"{path.name.split('.')[0]}_{m}.nii.gz")
            nib.save(nib.Nifti1Image(np.asarray(img.dataobj) * (i + 1), img.affine), copy)
            paths[m] = copy
        return lambda: predictor.prepare(InputItem("case", paths))

    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for sub in ("h", "r"):
            (root / sub).mkdir()
        record = root / "r" / "rec"
        import wfdb

        t = np.arange(10 * FS) / FS
        sig = np.stack([np.sin(2 * np.pi * (1 + i / 10) * t) for i in range(12)], axis=1)
        wfdb.wrsamp("rec", fs=FS, units=["mV"] * 12, sig_name=list(LEADS), p_signal=sig, fmt=["16"] * 12,
                    write_dir=str(record.parent))  # fmt: skip
        # every input is written before anything is timed
        holter = _holter(root / "h", 24)
        csv_ok, csv_wide = _csv(root, 12, 10 * FS), _csv(root, 1_000_000, 1)
        series_ok = _series(root / "s1")
        series_rows = _rewrite(_series(root / "s2"), _claim_rows)
        series_jpeg = _rewrite(_series(root / "s3"), _jpeg_claiming, "1.2.840.10008.1.2.4.50")
        nifti_ok, nifti_big = _nifti(root, "ok.nii.gz", 64, 1.0), _nifti(root, "big.nii.gz", 16, 900.0)
        mm = min(predictor.target_spacing() or (1.0,))
        cases: list[tuple[str, str, float, Callable[[], Any]]] = [
            ("ecg_wfdb_10s", "baseline", 10 * FS * 12 * 8, lambda: read_record(record.with_suffix(".hea"))),
            ("ecg_wfdb_holter_24h", "hostile", 24 * 3600 * FS * 12 * 8, lambda: read_record(holter)),
            ("ecg_csv_10s", "baseline", 10 * FS * 12 * 8, lambda: read_record(csv_ok, FS)),
            ("ecg_csv_million_columns", "hostile", 1e6 * 8, lambda: read_record(csv_wide, FS)),
            ("dicom_series_32x32x16", "baseline", 32 * 32 * 16 * 4, lambda: read_volume(series_ok)),
            ("dicom_series_claiming_65535x65535", "hostile", 65535**2 * 16 * 4, lambda: read_volume(series_rows)),
            ("dicom_jpeg_claiming_60000x60000", "hostile", 60000**2 * 16 * 4, lambda: read_volume(series_jpeg)),
            ("brats_nifti_64cubed_1mm", "baseline", 64**3 * 4 * 4, brats_prepare(nifti_ok)),
            ("brats_nifti_16cubed_900mm", "hostile", (16 * 900 / mm) ** 3 * 4 * 4, brats_prepare(nifti_big)),
        ]
        for name, kind, claimed, fn in cases:
            row = {"case": name, "kind": kind, "claimed_mb": round(claimed / 2**20, 1), **_measure(fn, args.repeat)}
            rows.append(row)
    print(json.dumps({"machine": platform.processor() or platform.machine(), "results": rows}, indent=2))


if __name__ == "__main__":
    main()
