"""Golden outputs: brats and ecg predictions on fixed checkpoints and fixed inputs never change by accident.

The checkpoints are built here from a seed (no weights are committed) and the inputs come from the seeded
synthetic generators. Every file ``medinfer predict`` writes per input is summarised (JSON and CSV in full,
label maps by hash and counts, probability maps by sums and sampled voxels, PNGs by size and mean) and compared
with ``tests/golden/<task>.json``. Floats compare within 1e-5; hashes, labels, decisions and names exactly.
``report.json``/``report.csv`` are left out: they hold timings.

To write the golden files anew after an intended change of outputs (say so in the commit)::

    MEDINFER_WRITE_GOLDEN=1 .venv/bin/pytest tests/test_golden_outputs.py
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from app.cli import app
from models import create_model
from pipelines.common.checkpoint import Checkpoint, save_checkpoint
from pipelines.common.task import get_task

GOLDEN = Path(__file__).resolve().parent / "golden"
WRITE = os.environ.get("MEDINFER_WRITE_GOLDEN") == "1"
TOL = 1e-5
#: ecg: how many explained labels are compared in full (all are compared by code)
EXPLAINED = 3

#: the provenance of both checkpoints (their version string appears in results)
PROVENANCE = {
    "dataset": "golden",
    "data_card": "synthetic.md",
    "seed": 0,
    "trained_at": "2026-01-01T00:00:00Z",
    "code_version": "golden",
}

#: the tiny brats config as checkpoints of medinfer 0.1 stored it (loading it is part of the contract)
BRATS_CONFIG: dict[str, Any] = {
    "preset": "tiny",
    "model_name": "brats_nested_unet",
    "head": "multilevel",
    "depth": 3,
    "base_filters": 8,
    "dropout": 0.1,
    "deep_supervision_levels": 2,
    "beta": 2.0,
    "thresholds": [-2.0, 0.0, 2.0],
    "target_spacing": [3.0, 3.0, 3.0],
    "roi_size": [32, 32, 32],
    "batch_size": 2,
    "epochs": 30,
    "iterations_per_epoch": None,
    "lr": 0.003,
    "weight_decay": 5e-05,
    "lr_decay": 0.97,
    "val_fraction": 0.2,
    "ds_weights": [1.0, 0.5],
    "sw_batch_size": 4,
    "sw_overlap": 0.5,
    "cache_rate": 1.0,
    "num_workers": 0,
    "intensity_shift": 0.1,
    "intensity_scale": 0.1,
}

#: the tiny ecg config as checkpoints of medinfer 0.1 stored it
ECG_CONFIG: dict[str, Any] = {
    "model_kwargs": {
        "prototypes_per_class": [2, 2, 2],
        "proto_time_len": [3, 32],
        "proto_dim": 32,
        "widths": [16, 16, 32, 32],
        "layers": [1, 1, 1, 1],
        "dropout": 0.0,
    },
    "epochs": {"feature_extractor": 12, "joint": 10, "classifier": 6, "fusion": 40},
    "batch_size": 32,
    "lr": {"feature_extractor": 0.003, "joint": 0.001, "classifier": 0.01, "fusion": 0.02},
    "weight_decay": 0.0001,
    "clst": 0.004,
    "sep": 0.0004,
    "spars": 0.0,
    "div": 25.0,
    "cnrst": 3.0,
    "l1_classifier": 0.0001,
    "l1_fusion": 0.0001,
    "highpass_hz": 0.5,
    "branches": ["rhythm", "morphology", "diffuse"],
    "init_checkpoint": None,
    "num_threads": 0,
    "eval_batch_size": 128,
}


def brats_checkpoint(path: Path) -> Path:
    """A seeded, untrained tiny brats checkpoint in the 0.1 layout."""
    kwargs = {
        "in_channels": 4,
        "head": "multilevel",
        "depth": 3,
        "base_filters": 8,
        "dropout": 0.1,
        "deep_supervision_levels": 2,
    }
    torch.manual_seed(0)
    model = create_model("brats_nested_unet", **kwargs)
    ckpt = Checkpoint(
        task="brats",
        model_name="brats_nested_unet",
        model_kwargs=kwargs,
        state_dict=model.state_dict(),
        labels=["WT", "TC", "ET"],
        config=BRATS_CONFIG,
        preprocessing={"channels": ["t1", "t1ce", "t2", "flair"], "orientation": "RAS"},
        provenance=PROVENANCE,
        extra={"synthetic": True},
    )
    return save_checkpoint(ckpt, path)


def ecg_checkpoint(path: Path) -> Path:
    """A seeded tiny ecg checkpoint with thresholds and prototype sources, in the 0.1 layout."""
    from models.protoecgnet import BRANCH_NAMES, PTBXL_LABELS

    kwargs = dict(ECG_CONFIG["model_kwargs"])
    torch.manual_seed(1)
    model = create_model("ecg_protoecgnet", **kwargs, fc_head="pool")  # 0.1 had only the pooled head
    gen = torch.Generator().manual_seed(2)
    sources, segments = [], {}
    for branch in BRANCH_NAMES:
        b = model.branch(branch)
        length = 1000 if b.proto_time_len in (1, 32) else 94
        segments[branch] = (0.3 * torch.randn(b.num_prototypes, 12, length, generator=gen)).to(torch.float16)
        index = model.branch_index(branch).tolist()
        for p in range(b.num_prototypes):
            start = 0 if length == 1000 else 31 * p % 900
            sources.append(
                {
                    "branch": branch,
                    "prototype": p,
                    "label": PTBXL_LABELS[index[p // b.prototypes_per_class]],
                    "record_id": str(100 + p),
                    "record_index": p,
                    "window": 0,
                    "start": start,
                    "end": start + min(length, 1000) - (length == 94),
                    "score": 0.5 + p / 100,
                }
            )
    ckpt = Checkpoint(
        task="ecg",
        model_name="ecg_protoecgnet",
        model_kwargs=kwargs,
        state_dict=model.state_dict(),
        labels=list(PTBXL_LABELS),
        config=ECG_CONFIG,
        preprocessing={"sampling_rate_hz": 100.0, "num_samples": 1000, "highpass_hz": 0.5, "units": "mV"},
        provenance=PROVENANCE,
        extra={
            "thresholds": [round(0.2 + 0.6 * i / 70, 4) for i in range(71)],
            "prototype_sources": sources,
            "prototype_segments": segments,
            "stages_done": ["feature_extractor", "joint", "projection", "classifier", "fusion"],
        },
    )
    return save_checkpoint(ckpt, path)


# -- summaries of written files -------------------------------------------------------------------------------
def _sha(arr: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(arr).tobytes()).hexdigest()


def summarise(path: Path) -> dict[str, Any]:
    """What is compared of one output file."""
    name = path.name
    if name.endswith(".json"):
        data = json.loads(path.read_text(encoding="utf-8"))
        if isinstance(data.get("explanation"), dict) and "labels" in data["explanation"]:
            # an untrained network explains dozens of labels: their codes all, the first EXPLAINED in full
            labels = data["explanation"]["labels"]
            codes = [e["label"] for e in labels]
            data = {**data, "explanation": {**data["explanation"], "labels": labels[:EXPLAINED], "codes": codes}}
        return {"kind": "json", "data": data}
    if name.endswith(".csv"):
        with path.open(newline="", encoding="utf-8") as fh:
            return {"kind": "csv", "rows": list(csv.reader(fh))}
    if name.endswith(".png"):
        from PIL import Image

        with Image.open(path) as im:
            pixels = np.asarray(im.convert("RGB"), dtype=np.float64)
        return {"kind": "png", "size": list(pixels.shape), "mean": float(pixels.mean())}
    if name.endswith((".nii", ".nii.gz")):
        import nibabel as nib

        img = nib.load(str(path))
        data = np.asarray(img.dataobj)
        out: dict[str, Any] = {
            "kind": "nifti",
            "shape": list(data.shape),
            "dtype": str(data.dtype),
            "affine": np.asarray(img.affine).round(5).tolist(),
            "qform_code": int(img.header["qform_code"]),
            "sform_code": int(img.header["sform_code"]),
        }
        if np.issubdtype(data.dtype, np.integer):
            values, counts = np.unique(data, return_counts=True)
            out["sha256"] = _sha(data)
            out["counts"] = {str(int(v)): int(c) for v, c in zip(values, counts, strict=True)}
        else:
            flat = data.reshape(-1, data.shape[-1]) if data.ndim == 4 else data.reshape(-1, 1)
            picks = np.random.default_rng(0).choice(flat.shape[0], size=min(256, flat.shape[0]), replace=False)
            out["sums"] = flat.astype(np.float64).sum(0).tolist()
            out["samples"] = flat[np.sort(picks)].astype(np.float64).tolist()
        return out
    if name.endswith(".dcm"):  # a DICOM SEG: what it says and references (its own UIDs are new every time)
        import pydicom

        ds = pydicom.dcmread(path)
        return {
            "kind": "dicom_seg",
            "sop_class": str(ds.SOPClassUID),
            "referenced_series": str(ds.ReferencedSeriesSequence[0].SeriesInstanceUID),
            "frame_of_reference": str(ds.FrameOfReferenceUID),
            "segments": [
                [d.SegmentLabel, d.SegmentedPropertyTypeCodeSequence[0].CodeValue] for d in ds.SegmentSequence
            ],
            "frames": int(ds.NumberOfFrames),
            "sha256": _sha(ds.pixel_array),
        }
    raise AssertionError(f"unexpected output file {name}")


def summarise_folder(folder: Path) -> dict[str, Any]:
    return {
        str(p.relative_to(folder)): summarise(p)
        for p in sorted(folder.rglob("*"))
        if p.is_file() and not p.name.startswith("report.")
    }


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value) if any(c in value for c in ".e") else None
        except ValueError:
            return None
    return None


def assert_same(expected: Any, actual: Any, where: str = "") -> None:
    """Equal, with floats (and float-looking strings) within ``TOL``."""
    if isinstance(expected, dict):
        assert isinstance(actual, dict), f"{where}: expected a mapping"
        assert sorted(expected) == sorted(actual), f"{where}: keys {sorted(actual)} != {sorted(expected)}"
        for k in expected:
            assert_same(expected[k], actual[k], f"{where}/{k}")
        return
    if isinstance(expected, list):
        assert isinstance(actual, list), f"{where}: expected a list"
        assert len(actual) == len(expected), f"{where}: lengths differ"
        for i, (e, a) in enumerate(zip(expected, actual, strict=True)):
            assert_same(e, a, f"{where}[{i}]")
        return
    e_num, a_num = _number(expected), _number(actual)
    if e_num is not None and a_num is not None and not isinstance(expected, int):
        if math.isnan(e_num):
            assert math.isnan(a_num), f"{where}: {actual} != NaN"
            return
        assert abs(e_num - a_num) <= TOL * max(1.0, abs(e_num)), f"{where}: {actual} != {expected}"
        return
    assert expected == actual, f"{where}: {actual!r} != {expected!r}"


def check_golden(task: str, outputs: dict[str, dict[str, Any]]) -> None:
    path = GOLDEN / f"{task}.json"
    if WRITE:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(outputs, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    expected = json.loads(path.read_text(encoding="utf-8"))
    assert_same(expected, json.loads(json.dumps(outputs)), task)


def _predict(args: list[str]) -> None:
    result = CliRunner().invoke(app, ["predict", *args])
    assert result.exit_code == 0, result.output


@pytest.mark.slow
def test_brats_outputs_are_unchanged(tmp_path: Path) -> None:
    ckpt = brats_checkpoint(tmp_path / "brats.pt")
    data = get_task("brats").synth(tmp_path / "data", n=2, seed=7, dicom=True)
    cases = sorted(p for p in data.iterdir() if p.is_dir())
    runs = {
        "plain": [str(cases[0]), str(cases[1] / "dicom"), "--overlay", "--explain"],
        "tta": [str(cases[0]), "--tta", "--labels", "brats2023", "--overlap", "0.25"],
    }
    outputs = {}
    for name, args in runs.items():
        out = tmp_path / name
        _predict(["brats", *args, "-o", str(out), "--checkpoint", str(ckpt), "--device", "cpu"])
        outputs[name] = summarise_folder(out)
    check_golden("brats", outputs)


@pytest.mark.slow
def test_ecg_outputs_are_unchanged(tmp_path: Path) -> None:
    from pipelines.ecg.readers import read_wfdb

    ckpt = ecg_checkpoint(tmp_path / "ecg.pt")
    data = get_task("ecg").synth(tmp_path / "data", n=6, seed=3, dicom=True)
    records = sorted((data / "records100").rglob("*.hea"))[:4]
    dicoms = sorted((data / "dicom").glob("*.dcm"))[4:6]
    rec = read_wfdb(records[0])
    csv_path = tmp_path / "as_csv.csv"
    np.savetxt(csv_path, rec.signal.T, delimiter=",", fmt="%.5f")
    out = tmp_path / "out"
    inputs = [str(p) for p in (*records, *dicoms, csv_path)]
    _predict(
        [
            "ecg",
            *inputs,
            "-o",
            str(out),
            "--checkpoint",
            str(ckpt),
            "--device",
            "cpu",
            "--explain",
            "--no-pictures",  # the untrained network explains dozens of labels; tests/pipelines/ecg checks pictures
            "--batch-size",
            "3",
            "--sampling-rate",
            "100",
        ]
    )
    check_golden("ecg", {"explain": summarise_folder(out)})
