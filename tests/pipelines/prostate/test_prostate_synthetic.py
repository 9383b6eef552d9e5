"""Synthetic prostate data: layout, zone labels, anatomy in world mm, grid independence, DICOM, contrast, seeds."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from scipy.ndimage import binary_dilation

from pipelines.common.io import read_volume
from pipelines.prostate import synthetic

N_CASES, SEED = 4, 3
ZONE_VALUES = {"PZ": 1, "TZ": 2, "DPU": 3, "AFS": 4}


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return synthetic.generate(tmp_path_factory.mktemp("prostate_syn"), n=N_CASES, seed=SEED)


def _cases(root: Path) -> list[Path]:
    return sorted(p for p in root.iterdir() if p.is_dir())


def _load(case: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """T2 (float), zones (uint8) and the shared affine of a case."""
    t2 = nib.load(str(case / synthetic.T2_FILE))
    zones = nib.load(str(case / synthetic.ZONES_FILE))
    assert t2.get_data_dtype() == np.int16
    assert zones.get_data_dtype() == np.uint8
    assert t2.shape == zones.shape
    np.testing.assert_allclose(t2.affine, zones.affine)
    return np.asarray(t2.dataobj, dtype=np.float64), np.asarray(zones.dataobj), np.asarray(t2.affine)


def _world(affine: np.ndarray, ijk: np.ndarray) -> np.ndarray:
    return ijk @ affine[:3, :3].T + affine[:3, 3]


def _centroid(zones: np.ndarray, affine: np.ndarray, value: int | None = None) -> np.ndarray:
    mask = zones > 0 if value is None else zones == value
    return _world(affine, np.argwhere(mask).mean(axis=0))


def test_layout_geometry_and_labels(data: Path) -> None:
    cases = _cases(data)
    assert [c.name for c in cases] == [synthetic.case_name(SEED, i) for i in range(N_CASES)]
    assert cases[0].name == "ProstateX-0300"
    orientations = set()
    for i, case in enumerate(cases):
        files = {p.name for p in case.iterdir()}
        assert {synthetic.T2_FILE, synthetic.ZONES_FILE} <= files
        assert (synthetic.DICOM_DIR in files) == (i % 3 == 0), "every third case has a DICOM series"
        for name in (synthetic.T2_FILE, synthetic.ZONES_FILE):
            assert (case / name).stat().st_size < 1_000_000
        _, zones, affine = _load(case)
        assert set(np.unique(zones).tolist()) == {0, 1, 2, 3, 4}, "every zone in every case"
        spacing = np.linalg.norm(affine[:3, :3], axis=0)
        assert spacing[2] >= 3.0 * spacing[0] - 1e-6, "anisotropic: thick axial slices"
        assert 0.8 - 1e-6 <= spacing[0] <= 1.2 + 1e-6
        np.testing.assert_allclose(spacing[0], spacing[1])
        np.testing.assert_allclose(affine[:3, 2] / spacing[2], [0, 0, 1], atol=1e-9, err_msg="slices along S")
        assert 90 <= zones.shape[0] <= 150
        assert 18 <= zones.shape[2] <= 30
        orientations.add((float(np.sign(affine[0, 0])), float(np.sign(affine[1, 1]))))
    assert orientations == {(1.0, 1.0), (-1.0, -1.0)}, "RAS and LPS cases"


def test_anatomy_in_world_coordinates(data: Path) -> None:
    """Zones are arranged alike in RAS world mm whatever the array axes: TZ before PZ, AFS before TZ."""
    for case in _cases(data):
        _, zones, affine = _load(case)
        c = {name: _centroid(zones, affine, v) for name, v in ZONE_VALUES.items()}
        fov_centre = _world(affine, (np.array(zones.shape) - 1) / 2.0)
        gland = _centroid(zones, affine)
        assert np.linalg.norm((gland - fov_centre)[:2]) < 10.0, "gland near the centre of the field of view"
        assert abs(gland[2] - fov_centre[2]) < 10.0
        assert c["TZ"][1] > c["PZ"][1] + 1.0, "TZ anterior of PZ (A axis of RAS)"
        assert c["AFS"][1] > c["TZ"][1] + 4.0, "AFS anterior of TZ"
        assert np.linalg.norm((c["DPU"] - c["TZ"])[:2]) < 6.0, "urethra runs through the TZ"
        # the gland fits a centred 84 × 84 mm in-plane crop
        ras = _world(affine, np.argwhere(zones > 0))
        assert np.abs(ras[:, :2] - fov_centre[:2]).max() < 42.0


def test_dpu_is_a_thin_tube_inside_the_tz(data: Path) -> None:
    for case in _cases(data):
        _, zones, affine = _load(case)
        spacing = np.linalg.norm(affine[:3, :3], axis=0)
        dpu = zones == ZONE_VALUES["DPU"]
        # the in-plane ring (2 voxels) around the DPU is mostly TZ (not all: the tube nears the TZ's ends)
        ring = binary_dilation(dpu, structure=np.ones((5, 5, 1), dtype=bool)) & ~dpu
        assert (zones[ring] == ZONE_VALUES["TZ"]).mean() >= 0.75
        # ≥ 80% of DPU voxels have a TZ voxel in-plane within the tube's largest radius (3.5 mm) + 2 voxels
        reach = int(np.ceil(3.5 / spacing[0])) + 2
        in_plane = np.ones((3, 3, 1), dtype=bool)
        near_tz = binary_dilation(zones == ZONE_VALUES["TZ"], structure=in_plane, iterations=reach)
        assert near_tz[dpu].mean() >= 0.8
        # thin: each slice's cross-section is a small disc (radius ≤ 3.5 mm)
        slices = np.flatnonzero(dpu.any(axis=(0, 1)))
        assert len(slices) >= 3, "the tube spans several slices"
        for k in slices:
            area_mm2 = dpu[:, :, k].sum() * spacing[0] * spacing[1]
            assert area_mm2 <= np.pi * 4.0**2
            extent = np.ptp(np.argwhere(dpu[:, :, k]), axis=0) + 1
            assert extent.max() * spacing[0] <= 9.0


def test_zones_present_through_the_gland(data: Path) -> None:
    for case in _cases(data):
        _, zones, _ = _load(case)
        gland_slices = np.flatnonzero((zones > 0).any(axis=(0, 1)))
        for name, value in ZONE_VALUES.items():
            present = np.mean([(zones[:, :, k] == value).any() for k in gland_slices])
            assert present >= 0.5, f"{name} in most slices through the gland"


def test_same_anatomy_on_any_grid() -> None:
    """Labels are sampled from anatomy in world mm: a flipped (LPS) grid and a coarser grid see the same gland."""
    _, zones, grid, anat = synthetic.make_case(SEED, 0)
    assert grid.affine[0, 0] > 0
    flip = np.diag([-1.0, -1.0, 1.0, 1.0])
    flip[:2, 3] = np.array(grid.shape[:2]) - 1
    lps = synthetic.Grid(grid.shape, grid.affine @ flip)  # the same voxel centres, reversed along x and y
    zones_lps = synthetic.zone_map(anat, lps)
    assert (zones_lps == zones[::-1, ::-1, :]).mean() > 0.999
    _, zones_coarse, coarse, anat_coarse = synthetic.make_case(SEED, 0, spacing_scale=1.5)
    np.testing.assert_array_equal(anat_coarse.centre, anat.centre)
    assert np.all(coarse.spacing > 1.4 * grid.spacing)
    for value in (1, 2, 4):
        ml = (zones == value).sum() * np.prod(grid.spacing) / 1000.0
        ml_coarse = (zones_coarse == value).sum() * np.prod(coarse.spacing) / 1000.0
        assert ml_coarse == pytest.approx(ml, rel=0.15)


def test_smooth_field_on_grid_matches_pointwise() -> None:
    field = synthetic.SmoothField.sample(np.random.default_rng(0), (3.0, 8.0), k=12)
    grid = synthetic.sample_grid(np.random.default_rng(1), "lps")
    np.testing.assert_allclose(field.on_grid(grid), field(grid.world()), atol=1e-3)


def test_dicom_series_matches_nifti(data: Path) -> None:
    with_dicom = [c for c in _cases(data) if (c / synthetic.DICOM_DIR).is_dir()]
    assert len(with_dicom) == 2  # cases 0 (RAS) and 3 (LPS)
    for case in with_dicom:
        nifti = read_volume(case / synthetic.T2_FILE)
        series = read_volume(case / synthetic.DICOM_DIR)
        assert series.kind == "dicom"
        assert series.meta.get("modality") == "MR"
        np.testing.assert_array_equal(series.array, nifti.array)
        np.testing.assert_allclose(series.affine, nifti.affine, atol=1e-3)


def test_t2_contrast(data: Path) -> None:
    means = []
    for case in _cases(data):
        t2, zones, _ = _load(case)
        mean = {name: t2[zones == v].mean() for name, v in ZONE_VALUES.items()}
        assert mean["PZ"] > 1.3 * mean["TZ"], "PZ bright"
        assert mean["AFS"] < 0.7 * mean["TZ"], "AFS dark"
        assert mean["TZ"] < mean["DPU"] < mean["PZ"], "urethra moderately bright"
        assert t2[zones == ZONE_VALUES["TZ"]].std() > t2[zones == ZONE_VALUES["AFS"]].std(), "TZ heterogeneous"
        assert t2.min() >= 0
        assert t2.max() > 2.0 * np.percentile(t2, 99.5), "bright outliers beyond the percentile window"
        means.append(mean["PZ"])
    assert max(means) > 1.3 * min(means), "intensity scale varies per case"


def test_same_seed_same_files(tmp_path: Path) -> None:
    a = synthetic.generate(tmp_path / "a", n=1, seed=7, spacing_scale=1.6)
    b = synthetic.generate(tmp_path / "b", n=1, seed=7, spacing_scale=1.6)
    c = synthetic.generate(tmp_path / "c", n=1, seed=8, spacing_scale=1.6)
    files = sorted(p for p in a.rglob("*") if p.is_file())
    assert any(p.suffix == ".dcm" for p in files)
    for f in files:
        assert f.read_bytes() == (b / f.relative_to(a)).read_bytes(), f.name
    t2_a = np.asarray(nib.load(str(next(a.iterdir()) / synthetic.T2_FILE)).dataobj)
    t2_c = np.asarray(nib.load(str(next(c.iterdir()) / synthetic.T2_FILE)).dataobj)
    assert t2_a.shape != t2_c.shape or not np.array_equal(t2_a, t2_c)


def test_dicom_flag_writes_every_case(tmp_path: Path) -> None:
    root = synthetic.generate(tmp_path, n=2, seed=1, dicom=True, spacing_scale=2.0)
    assert all((case / synthetic.DICOM_DIR).is_dir() for case in _cases(root))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"n": 0}, "n must be"), ({"spacing_scale": 0.0}, "spacing_scale"), ({"spacing_scale": float("nan")}, "spacing")],
)
def test_bad_arguments(tmp_path: Path, kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        synthetic.generate(tmp_path, **kwargs)
    with pytest.raises(ValueError, match="orientation"):
        synthetic.sample_grid(np.random.default_rng(0), "ras+")
