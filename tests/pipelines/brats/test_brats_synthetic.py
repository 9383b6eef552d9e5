"""Synthetic BraTS data: layout, nested labels, MRI-like contrast, geometry variety, determinism; config."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from pipelines.brats import synthetic
from pipelines.brats.config import BratsConfig
from pipelines.brats.datasets import discover_cases
from pipelines.common.trainer import split_indices


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return synthetic.generate(tmp_path_factory.mktemp("syn"), n=5, seed=21, spacing=4.0)


def _load(case: Path, role: str) -> np.ndarray:
    return np.asarray(nib.load(str(next(case.glob(f"*_{role}.nii.gz")))).dataobj, dtype=np.float32)


def test_contrast_follows_mri(data: Path) -> None:
    for case in sorted(p for p in data.iterdir() if p.is_dir()):
        seg = _load(case, "seg")
        brain = (_load(case, "t1") > 0) & (seg == 0)
        mean = {m: {k: _load(case, m)[mask].mean() for k, mask in
                    {"brain": brain, "ed": seg == 2, "ncr": seg == 1, "et": seg == 4}.items()}
                for m in ("t1", "t1ce", "t2", "flair")}  # fmt: skip
        assert mean["flair"]["ed"] > 1.5 * mean["flair"]["brain"], "edema bright on FLAIR"
        assert mean["t2"]["ed"] > 1.5 * mean["t2"]["brain"], "edema bright on T2"
        assert mean["t1ce"]["et"] > 1.5 * mean["t1ce"]["brain"], "enhancing rim bright on T1ce"
        assert mean["t1"]["ncr"] < 0.7 * mean["t1"]["brain"], "necrosis dark on T1"
        assert mean["t2"]["ncr"] > mean["t2"]["brain"], "necrosis bright on T2"
        assert _load(case, "flair")[_load(case, "t1") == 0].max() == 0, "skull-stripped: background is 0"


def test_labels_nested_and_positions_vary(data: Path) -> None:
    centres, volumes = [], []
    for case in sorted(p for p in data.iterdir() if p.is_dir()):
        seg = _load(case, "seg")
        assert set(np.unique(seg).tolist()) == {0, 1, 2, 4}
        img = nib.load(str(next(case.glob("*_seg.nii.gz"))))
        idx = np.argwhere(seg > 0).mean(0)
        centres.append(img.affine[:3, :3] @ idx + img.affine[:3, 3])
        volumes.append((seg > 0).sum() * abs(np.linalg.det(img.affine[:3, :3])))
    assert np.std(np.array(centres), axis=0).max() > 5.0, "tumour positions vary (mm)"
    assert max(volumes) > 1.3 * min(volumes), "tumour sizes vary"


def test_geometry_plan_and_determinism(tmp_path: Path) -> None:
    plan = synthetic.geometry_plan(10)
    assert plan.count("oblique") == 1
    assert {"ras", "lps", "aniso"} <= set(plan)
    a = synthetic.generate(tmp_path / "a", n=2, seed=9, spacing=5.0)
    b = synthetic.generate(tmp_path / "b", n=2, seed=9, spacing=5.0)
    c = synthetic.generate(tmp_path / "c", n=2, seed=10, spacing=5.0)
    fa = sorted(a.rglob("*.nii.gz"))
    for f in fa:
        other = b / f.relative_to(a)
        assert np.array_equal(np.asarray(nib.load(str(f)).dataobj), np.asarray(nib.load(str(other)).dataobj))
    t1a = _load(next(p for p in a.iterdir() if p.is_dir()), "t1")
    t1c = _load(next(p for p in c.iterdir() if p.is_dir()), "t1")
    assert t1a.shape != t1c.shape or not np.array_equal(t1a, t1c)


def test_discover_and_split(data: Path) -> None:
    cases = discover_cases(data)
    assert len(cases) == 5
    assert all({"t1", "t1ce", "t2", "flair", "seg"} <= set(c) for c in cases)
    train, val = split_indices(len(cases), 0.2, seed=0)
    assert len(val) == 1
    assert len(train) == 4
    assert sorted(train + val) == list(range(5))
    assert split_indices(len(cases), 0.2, seed=0) == (train, val)
    with pytest.raises(ValueError, match="no complete"):
        discover_cases(data / "BraTS20_Training_21001" / "nowhere")


def test_config_presets_and_overrides(tmp_path: Path) -> None:
    full = BratsConfig.load("full")
    assert (full.lr, full.weight_decay, full.lr_decay, full.batch_size, full.roi_size) == (
        5e-4,
        5e-5,
        0.985,
        2,
        (128, 128, 128),
    )
    assert (full.depth, full.base_filters, full.dropout, full.deep_supervision_levels) == (5, 16, 0.3, 3)
    yaml_file = tmp_path / "c.yaml"
    yaml_file.write_text("head: regions\nbeta: 4.0\nroi_size: [64, 64, 64]\n", encoding="utf-8")
    cfg = BratsConfig.load("tiny", yaml_file, epochs=3)
    assert (cfg.head, cfg.beta, cfg.roi_size, cfg.epochs, cfg.preset) == ("regions", 4.0, (64, 64, 64), 3, "tiny")
    assert BratsConfig.from_checkpoint(cfg.to_dict()) == cfg
    yaml_file.write_text("learning_rate: 1\n", encoding="utf-8")
    with pytest.raises(ValueError, match="unknown config key 'learning_rate'"):
        BratsConfig.load("tiny", yaml_file)
    with pytest.raises(ValueError, match="divisible"):
        BratsConfig.build({"roi_size": (100, 100, 100)})
    with pytest.raises(ValueError, match=r"config key 'thresholds'.*increasing"):
        BratsConfig.build({"thresholds": (0.0, -1.0, 2.0)})
    with pytest.raises(ValueError, match="config key 'head'"):
        BratsConfig.build({"head": "sigmoid"})
    with pytest.raises(ValueError, match="preset"):
        BratsConfig.load("medium")
    # a medinfer 0.1 checkpoint's config carried a key nobody read; it still loads
    assert BratsConfig.from_checkpoint({**cfg.to_dict(), "sw_overlap": 0.5}) == cfg
    with pytest.raises(ValueError, match="sw_overlap"):
        BratsConfig.build({"sw_overlap": 0.5})
