"""Synthetic BraTS-like cases in the real on-disk layout.

Each case is a skull-stripped, brain-like ellipsoid with grey/white texture and a glioma made of nested
regions: edema (WT∖TC), a tumour core whose outer shell enhances (ET) around a necrotic centre (NCR).
Contrast follows real MRI: edema bright on FLAIR and T2, enhancing rim bright on T1ce, necrosis dark on
T1/T1ce and bright on T2. Sizes, positions, intensity scale and noise vary, and so does geometry: RAS and
LPS affines, anisotropic spacing, and exactly one oblique affine per dataset. The anatomy is defined in
world millimetres, so every grid sees the same kind of head.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from scipy.ndimage import zoom

from pipelines.brats.transforms import NAMING_2018, NAMING_2023
from pipelines.common.dicom import write_dicom_series

#: mean intensity per tissue (background, brain, edema, necrosis, enhancing) and modality
CONTRAST = {
    "t1": (0.0, 0.62, 0.48, 0.28, 0.55),
    "t1ce": (0.0, 0.62, 0.50, 0.26, 1.25),
    "t2": (0.0, 0.45, 1.00, 1.15, 0.75),
    "flair": (0.0, 0.50, 1.15, 0.70, 0.90),
}
FILE_ROLE = {
    NAMING_2018: {"t1": "t1", "t1ce": "t1ce", "t2": "t2", "flair": "flair", "seg": "seg"},
    NAMING_2023: {"t1": "t1n", "t1ce": "t1c", "t2": "t2w", "flair": "t2f", "seg": "seg"},
}
FOV_MM = np.array([150.0, 180.0, 140.0])


def _rotation(rx: float, ry: float, rz: float) -> np.ndarray:
    cx, sx, cy, sy, cz, sz = np.cos(rx), np.sin(rx), np.cos(ry), np.sin(ry), np.cos(rz), np.sin(rz)
    rot_x = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    rot_y = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rot_z = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return rot_z @ rot_y @ rot_x


def case_geometry(kind: str, spacing: float) -> tuple[tuple[int, int, int], np.ndarray]:
    """Grid shape and affine for a geometry kind: ``ras``, ``lps``, ``aniso`` or ``oblique``."""
    sp = np.array([spacing, spacing, spacing])
    if kind == "aniso":
        sp = np.array([spacing * 0.8, spacing * 0.8, spacing * 1.8])
    shape = tuple(int(np.ceil(f / s)) for f, s in zip(FOV_MM, sp, strict=True))
    rot = np.eye(3)
    if kind == "lps":
        rot = np.diag([-1.0, -1.0, 1.0])
    elif kind == "oblique":
        rot = _rotation(np.deg2rad(12), np.deg2rad(-8), np.deg2rad(17))
    affine = np.eye(4)
    affine[:3, :3] = rot @ np.diag(sp)
    # centre the grid on the world origin
    affine[:3, 3] = -affine[:3, :3] @ ((np.array(shape) - 1) / 2.0)
    return shape, affine  # type: ignore[return-value]


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, ...], coarse: int = 6) -> np.ndarray:
    low = rng.standard_normal((coarse, coarse, coarse))
    return zoom(low, [s / coarse for s in shape], order=3)[: shape[0], : shape[1], : shape[2]]


def make_case(rng: np.random.Generator, shape: tuple[int, int, int], affine: np.ndarray) -> dict[str, np.ndarray]:
    """One case: the four modalities (float32) and the label map in the 2018 convention (uint8)."""
    ijk = np.stack(np.meshgrid(*[np.arange(s) for s in shape], indexing="ij"), axis=-1).astype(np.float32)
    world = ijk @ affine[:3, :3].T.astype(np.float32) + affine[:3, 3].astype(np.float32)
    brain_axes = np.array([60.0, 75.0, 55.0]) * rng.uniform(0.9, 1.08, 3)
    brain_centre = rng.uniform(-5, 5, 3)
    rho_brain = np.linalg.norm((world - brain_centre) / brain_axes, axis=-1)
    brain = rho_brain < 1.0

    # tumour: centre well inside the brain, random radii and orientation, lobulated by smooth noise
    centre = brain_centre + rng.uniform(-0.45, 0.45, 3) * brain_axes
    radii = rng.uniform(16.0, 30.0) * rng.uniform(0.75, 1.25, 3)
    rot = _rotation(*rng.uniform(-np.pi, np.pi, 3))
    local = (world - centre) @ rot
    lobes = 0.12 * _smooth_noise(rng, shape)
    rho = np.linalg.norm(local / radii, axis=-1) + lobes
    core_frac = rng.uniform(0.45, 0.7)
    necrosis_frac = rng.uniform(0.35, 0.7)
    wt = (rho < 1.0) & brain
    tc = (rho < core_frac) & brain
    ncr = (rho < core_frac * necrosis_frac) & brain
    label = np.zeros(shape, dtype=np.uint8)
    label[wt] = 2
    label[tc] = 4
    label[ncr] = 1

    texture = _smooth_noise(rng, shape, coarse=10)
    tissue = np.zeros(shape, dtype=np.int64)
    tissue[brain] = 1
    tissue[label == 2] = 2
    tissue[label == 1] = 3
    tissue[label == 4] = 4
    bias = 1.0 + 0.1 * _smooth_noise(rng, shape, coarse=3)
    out: dict[str, np.ndarray] = {}
    for modality, means in CONTRAST.items():
        img: np.ndarray = np.asarray(means, dtype=np.float32)[tissue]
        img = img + brain * 0.06 * texture  # grey/white matter texture
        img = img * bias + brain * rng.normal(0.0, 0.04, shape)
        img = np.where(brain, np.clip(img, 0.02, None), 0.0) * rng.uniform(300.0, 900.0)
        out[modality] = img.astype(np.float32)
    out["seg"] = label
    return out


def geometry_plan(n: int) -> list[str]:
    """Geometry kind per case: cycles RAS, LPS, anisotropic; exactly one oblique case (the 4th, or the last)."""
    kinds = [("ras", "lps", "aniso")[i % 3] for i in range(n)]
    if n:
        kinds[min(3, n - 1)] = "oblique"
    return kinds


def generate(
    out_dir: Path,
    n: int = 8,
    seed: int = 0,
    naming: str = NAMING_2018,
    dicom: bool = False,
    spacing: float = 2.4,
) -> Path:
    """Write ``n`` synthetic cases under ``out_dir`` in the BraTS layout.

    Args:
        out_dir: dataset root; one folder per case.
        n: number of cases.
        seed: random seed (same seed → same dataset).
        naming: ``brats2018`` (``BraTS20_Training_001_t1.nii.gz``, labels 0/1/2/4) or ``brats2023``
            (``BraTS-GLI-00001-000-t1n.nii.gz``, labels 0/1/2/3).
        dicom: also write each case's modalities as DICOM series under ``<case>/dicom/<modality>/``.
        spacing: base voxel size in mm (real BraTS is 1 mm; larger keeps synthetic data small).

    Returns:
        ``out_dir``.
    """
    import nibabel as nib

    if naming not in FILE_ROLE:
        raise ValueError(f"naming must be one of {sorted(FILE_ROLE)}, got {naming!r}")
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i, kind in enumerate(geometry_plan(n)):
        if naming == NAMING_2018:
            case, sep = f"BraTS20_Training_{seed:02d}{i + 1:03d}", "_"
        else:
            case, sep = f"BraTS-GLI-{seed:02d}{i + 1:03d}-000", "-"
        shape, affine = case_geometry(kind, spacing * rng.uniform(0.95, 1.05))
        data = make_case(rng, shape, affine)
        folder = out_dir / case
        folder.mkdir(parents=True, exist_ok=True)
        for role, arr in data.items():
            if role == "seg" and naming == NAMING_2023:
                arr = np.where(arr == 4, 3, arr).astype(np.uint8)
            dtype = np.uint8 if role == "seg" else np.int16
            img = nib.Nifti1Image(np.round(arr).astype(dtype), affine)
            img.set_sform(affine, code=1)
            img.set_qform(affine, code=1)
            img.header.set_xyzt_units("mm")
            nib.save(img, str(folder / f"{case}{sep}{FILE_ROLE[naming][role]}.nii.gz"))
            if dicom and role != "seg":
                write_dicom_series(arr, affine, folder / "dicom" / role, description=role.upper(), case_index=i)
    return out_dir
