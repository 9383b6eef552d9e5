"""Synthetic PROSTATEx-like T2-weighted cases with PI-RADS v2 zone labels, in medinfer's prostate layout.

Each case is ``<case>/t2.nii.gz`` (int16, axial T2w-like) and ``<case>/zones.nii.gz`` (uint8: 0 background,
1 PZ, 2 TZ, 3 DPU, 4 AFS) on the same grid; every third case (every case with ``dicom=True``) also holds the
T2 as an MR DICOM series in ``<case>/dicom/``.

The anatomy is a caricature defined in world millimetres (RAS), not a model of a real gland: an ellipsoidal
gland, slightly tilted and wider at the base, with a central/anterior transition zone (TZ) of nodular texture,
a peripheral zone (PZ) making the posterior and postero-lateral crescent around it, a dark anterior
fibromuscular band (AFS) over the anterior surface, and a thin, slightly curved urethra (DPU) running
superior–inferior inside the TZ. Around the gland: a thin dark capsule, textured periprostatic fat, the rectum
behind, the bladder above, obturator muscles at the sides and the pubic symphysis in front. Contrast follows
T2w MRI (PZ bright, TZ intermediate and heterogeneous, AFS dark, urethra moderately bright), under a smooth
bias field, Rician noise, a per-case intensity scale and a few bright outlier voxels (so that percentile
normalisation matters). Shapes and textures are smooth functions of world position, so any grid samples the
same anatomy; grids vary per case (RAS or LPS axes, 0.8–1.2 mm in-plane, slices at least 3× thicker).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.ndimage import gaussian_filter

from pipelines.common.dicom import write_dicom_series
from pipelines.common.io import affine_spacing
from pipelines.prostate.datasets import IMAGE_NAMES, LABEL_NAMES

#: file names of one case (the layout the prostate task reads)
T2_FILE = IMAGE_NAMES[0]
ZONES_FILE = LABEL_NAMES[0]
DICOM_DIR = "dicom"

# zone label values written to zones.nii.gz
BG, PZ, TZ, DPU, AFS = 0, 1, 2, 3, 4

#: in-plane field of view and slab thickness along S (mm)
FOV_INPLANE_MM = (114.0, 126.0)
FOV_SLAB_MM = (80.0, 92.0)
#: in-plane and slice spacing (mm) before ``spacing_scale``; slices are at least ``MIN_ANISOTROPY``× thicker
INPLANE_SPACING_MM = (0.8, 1.2)
SLICE_SPACING_MM = (3.0, 4.0)
MIN_ANISOTROPY = 3.0
#: matrix caps (the FOV shrinks instead), which keep every file well under 1 MB
MAX_MATRIX = (136, 136, 26)


def case_name(seed: int, index: int) -> str:
    """Case folder name, PROSTATEx-style: ``ProstateX-{seed:02d}{index:02d}``."""
    return f"ProstateX-{seed:02d}{index:02d}"


def case_orientation(index: int) -> str:
    """Axis convention of case ``index``: even cases are RAS, odd cases LPS (``diag(-1, -1, 1)``)."""
    return "ras" if index % 2 == 0 else "lps"


def has_dicom(index: int, dicom: bool = False) -> bool:
    """Whether case ``index`` also gets a DICOM series: every third case, or every case with ``dicom``."""
    return dicom or index % 3 == 0


def _rot_x(angle: float) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    return np.array([[1.0, 0.0, 0.0], [0.0, c, -s], [0.0, s, c]])


@dataclass(frozen=True)
class Grid:
    """A voxel grid: shape ``(X, Y, Z)`` and the 4×4 voxel→RAS-mm affine."""

    shape: tuple[int, int, int]
    affine: np.ndarray

    @property
    def spacing(self) -> np.ndarray:
        return affine_spacing(self.affine)

    def world(self) -> np.ndarray:
        """World (RAS mm) coordinates of every voxel centre, ``(X, Y, Z, 3)`` float32."""
        ijk = np.stack(np.meshgrid(*[np.arange(s, dtype=np.float32) for s in self.shape], indexing="ij"), axis=-1)
        return ijk @ self.affine[:3, :3].T.astype(np.float32) + self.affine[:3, 3].astype(np.float32)


def sample_grid(rng: np.random.Generator, orientation: str, spacing_scale: float = 1.0) -> Grid:
    """An axial acquisition grid (slices along S), centred on world (0, 0, 0).

    Args:
        rng: random generator.
        orientation: ``ras`` (array axes R, A, S) or ``lps`` (L, P, S).
        spacing_scale: multiplies every spacing (coarser, smaller volumes when > 1).

    Raises:
        ValueError: unknown orientation or non-positive ``spacing_scale``.
    """
    if orientation not in ("ras", "lps"):
        raise ValueError(f"orientation must be 'ras' or 'lps', got {orientation!r}")
    if not (np.isfinite(spacing_scale) and spacing_scale > 0):
        raise ValueError(f"spacing_scale must be a positive number, got {spacing_scale}")
    inplane = rng.uniform(*INPLANE_SPACING_MM)
    slice_mm = max(rng.uniform(*SLICE_SPACING_MM), MIN_ANISOTROPY * inplane)
    spacing = np.array([inplane, inplane, slice_mm]) * spacing_scale
    fov_inplane = rng.uniform(*FOV_INPLANE_MM)
    fov = np.array([fov_inplane, fov_inplane, rng.uniform(*FOV_SLAB_MM)])
    shape = tuple(min(cap, max(8, round(f / s))) for f, s, cap in zip(fov, spacing, MAX_MATRIX, strict=True))
    axes = np.eye(3) if orientation == "ras" else np.diag([-1.0, -1.0, 1.0])
    affine = np.eye(4)
    affine[:3, :3] = axes @ np.diag(spacing)
    affine[:3, 3] = -affine[:3, :3] @ ((np.array(shape) - 1) / 2.0)
    return Grid(shape, affine)


@dataclass(frozen=True)
class SmoothField:
    """A smooth random field in world mm: a normalised sum of plane waves (grid-independent by construction).

    Args:
        freqs: ``(K, 3)`` wave vectors in radians per mm.
        phases: ``(K,)`` phases in radians.
    """

    freqs: np.ndarray
    phases: np.ndarray

    @classmethod
    def sample(cls, rng: np.random.Generator, wavelength_mm: tuple[float, float], k: int = 16) -> SmoothField:
        directions = rng.standard_normal((k, 3))
        directions /= np.linalg.norm(directions, axis=1, keepdims=True)
        wavelengths = rng.uniform(*wavelength_mm, size=k)
        return cls(directions * (2.0 * np.pi / wavelengths)[:, None], rng.uniform(0.0, 2.0 * np.pi, size=k))

    def __call__(self, world: np.ndarray) -> np.ndarray:
        """Field values at points ``world`` (``(..., 3)`` mm): zero mean, unit variance on average."""
        waves = np.cos(world @ self.freqs.T + self.phases)
        return (waves.sum(axis=-1) * np.sqrt(2.0 / len(self.phases))).astype(np.float32)

    def on_grid(self, grid: Grid) -> np.ndarray:
        """The same values at every voxel centre of ``grid``, ``(X, Y, Z)`` float32.

        A plane wave's phase is linear in the voxel index, so the wave factorises along the grid axes and the
        sum over waves is one matrix product instead of ``K`` cosines per voxel.
        """
        k = len(self.phases)
        start = self.freqs @ grid.affine[:3, 3] + self.phases  # (K,)
        step = self.freqs @ grid.affine[:3, :3]  # (K, 3): phase change per voxel along each array axis
        nx, ny, nz = grid.shape
        ex = np.exp(1j * (start[:, None] + step[:, 0, None] * np.arange(nx)))
        ey = np.exp(1j * step[:, 1, None] * np.arange(ny))
        ez = np.exp(1j * step[:, 2, None] * np.arange(nz))
        exy = (ex[:, :, None] * ey[:, None, :]).reshape(k, nx * ny)
        values = (exy.T @ ez).real.reshape(grid.shape)
        return (values * np.sqrt(2.0 / k)).astype(np.float32)


#: mean relative T2 intensity per tissue, before per-case jitter
BASE_CONTRAST = {
    "fat": 0.62,
    "muscle": 0.30,
    "capsule": 0.30,
    "pz": 1.00,
    "tz": 0.52,
    "afs": 0.20,
    "dpu": 0.80,
    "rectal_wall": 0.28,
    "rectal_lumen": 0.08,
    "bladder": 1.45,
    "bone": 0.18,
    "marrow": 0.48,
}


@dataclass(frozen=True)
class Anatomy:
    """One synthetic pelvis in world mm (RAS). Local gland axes: x → R, y → A, z → S, tilted by ``tilt``.

    Args:
        centre: gland centre (world mm).
        radii: gland semi-axes (LR, AP, SI) in mm.
        tilt: rotation of the gland about the LR axis (radians).
        taper: relative widening of the gland towards the base (superior).
        tz_centre: TZ centre in local gland coordinates (mm).
        tz_radii: TZ semi-axes (mm).
        afs_thickness: thickness of the anterior fibromuscular band (mm).
        afs_half_angle: half-angle of the anterior sector the AFS covers, seen from the gland axis (radians).
        dpu_radius: urethra radius (mm).
        dpu_path: lateral offset, AP offset, AP slope and AP curvature of the urethra's centreline (mm).
        nodules: ``(K, 5)`` TZ nodules: local centre (mm), radius (mm), relative intensity change.
        lesion: a dark PZ focus (local centre, radius, relative intensity change) or ``None``.
        contrast: mean relative T2 intensity per tissue.
        scale: intensity scale of the case.
        noise: Rician noise level relative to the median signal.
        fields: smooth fields (gland outline, fat texture, fine texture, bias).
    """

    centre: np.ndarray
    radii: np.ndarray
    tilt: float
    taper: float
    tz_centre: np.ndarray
    tz_radii: np.ndarray
    afs_thickness: float
    afs_half_angle: float
    dpu_radius: float
    dpu_path: np.ndarray
    nodules: np.ndarray
    lesion: np.ndarray | None
    contrast: dict[str, float]
    scale: float
    noise: float
    fields: dict[str, SmoothField]

    def to_local(self, world: np.ndarray) -> np.ndarray:
        """World points ``(..., 3)`` → local gland coordinates (mm)."""
        rot = _rot_x(self.tilt).astype(np.float32)
        return (world - self.centre.astype(np.float32)) @ rot

    def to_world(self, local: np.ndarray) -> np.ndarray:
        """Local gland coordinates ``(..., 3)`` → world points (mm)."""
        return local @ _rot_x(self.tilt).T + self.centre


def sample_anatomy(rng: np.random.Generator, fov_centre: np.ndarray) -> Anatomy:
    """Draw one case's anatomy; the gland centre lies within 7 mm (in-plane) and 5 mm (along S) of ``fov_centre``."""
    r, phi = 7.0 * np.sqrt(rng.uniform()), rng.uniform(0.0, 2.0 * np.pi)
    offset = np.array([r * np.cos(phi), r * np.sin(phi), rng.uniform(-5.0, 5.0)])
    radii = np.array([rng.uniform(20.0, 25.0), rng.uniform(15.0, 19.0), rng.uniform(17.5, 22.5)])
    a_lr, a_ap, a_si = radii
    afs_thickness = rng.uniform(4.0, 6.0)
    tz_radii = radii * np.array([rng.uniform(0.62, 0.76), rng.uniform(0.58, 0.68), rng.uniform(0.75, 0.88)])
    # the TZ reaches forward into the AFS band, so that no PZ sliver separates them
    tz_y = a_ap - afs_thickness + rng.uniform(1.0, 2.5) - tz_radii[1]
    tz_centre = np.array([rng.uniform(-1.0, 1.0), tz_y, a_si * rng.uniform(0.0, 0.12)])
    n_nodules = int(rng.integers(6, 15))
    unit = rng.standard_normal((n_nodules, 3))
    unit *= (rng.uniform(0.0, 0.85, n_nodules) / np.linalg.norm(unit, axis=1))[:, None]
    nodules = np.column_stack(
        [tz_centre + unit * tz_radii, rng.uniform(2.5, 7.0, n_nodules), rng.uniform(-0.35, 0.35, n_nodules)]
    )
    lesion = None
    if rng.uniform() < 0.35:  # a dark PZ focus (still labelled PZ): the PZ is not uniform either
        angle = rng.uniform(-2.2, 2.2)  # from posterior, towards either side
        pos = np.array([0.75 * a_lr * np.sin(angle), -0.75 * a_ap * np.cos(angle), rng.uniform(-0.5, 0.3) * a_si])
        lesion = np.array([*pos, rng.uniform(3.0, 5.5), -rng.uniform(0.3, 0.45)])
    contrast = {name: value * rng.uniform(0.92, 1.08) for name, value in BASE_CONTRAST.items()}
    fields = {
        "outline": SmoothField.sample(rng, (25.0, 60.0), k=12),
        "fat": SmoothField.sample(rng, (6.0, 20.0)),
        "fine": SmoothField.sample(rng, (2.5, 6.0), k=24),
        "bias": SmoothField.sample(rng, (120.0, 300.0), k=8),
    }
    return Anatomy(
        centre=np.asarray(fov_centre, dtype=np.float64) + offset,
        radii=radii,
        tilt=float(rng.uniform(np.deg2rad(-12.0), np.deg2rad(12.0))),
        taper=float(rng.uniform(0.05, 0.15)),
        tz_centre=tz_centre,
        tz_radii=tz_radii,
        afs_thickness=float(afs_thickness),
        afs_half_angle=float(rng.uniform(np.deg2rad(38.0), np.deg2rad(50.0))),
        dpu_radius=float(rng.uniform(2.5, 3.5)),
        dpu_path=np.array([rng.uniform(-1, 1), rng.uniform(-1.5, 0.5), rng.uniform(-1.5, 1.5), rng.uniform(-2, 2)]),
        nodules=nodules,
        lesion=lesion,
        contrast=contrast,
        scale=float(rng.uniform(300.0, 1500.0)),
        noise=float(rng.uniform(0.02, 0.045)),
        fields=fields,
    )


def _gland_rho(anat: Anatomy, local: np.ndarray, outline: np.ndarray) -> np.ndarray:
    """Normalised radius of the gland (< 1 inside): wider at the base, flatter behind, gently lobulated."""
    a_lr, a_ap, a_si = (float(r) for r in anat.radii)
    w = local[..., 2] / a_si
    widen = 1.0 + anat.taper * np.clip(w, -1.0, 1.0)
    u = local[..., 0] / (a_lr * widen)
    v = np.abs(local[..., 1] / (a_ap * widen))
    # a superellipse behind the centre: the posterior surface lies flatter against the rectum
    v2 = np.where(local[..., 1] < 0, v**2.8, v * v)
    return np.sqrt(u * u + v2 + w * w) + 0.045 * outline


def zone_map(anat: Anatomy, grid: Grid) -> np.ndarray:
    """PI-RADS v2 zones at the voxel centres of ``grid``: uint8 0 bg, 1 PZ, 2 TZ, 3 DPU, 4 AFS.

    No zones overlap by construction: AFS is the outer shell of the gland's anterior sector, TZ an inner
    ellipsoid minus the AFS, DPU a tube that replaces TZ voxels only, PZ the rest of the gland.
    """
    local = anat.to_local(grid.world())
    x, y, z = local[..., 0], local[..., 1], local[..., 2]
    rho = _gland_rho(anat, local, anat.fields["outline"].on_grid(grid))
    gland = rho < 1.0
    zones = np.zeros(grid.shape, dtype=np.uint8)
    zones[gland] = PZ
    in_sector = np.arctan2(np.abs(x), y) < anat.afs_half_angle
    afs = gland & in_sector & (rho > 1.0 - anat.afs_thickness / anat.radii[1])
    tz = gland & (_rho2(local, anat.tz_centre, anat.tz_radii) < 1.0) & (rho < 0.93) & ~afs
    zones[tz] = TZ
    zones[afs] = AFS
    # DPU: a tube along S through the TZ, curving in the sagittal plane
    dx, dy, slope, curve = (float(p) for p in anat.dpu_path)
    t = (z - float(anat.tz_centre[2])) / float(anat.tz_radii[2])
    cx = float(anat.tz_centre[0]) + dx
    cy = float(anat.tz_centre[1]) + dy + slope * t + curve * t * t
    tube = (x - cx) ** 2 + (y - cy) ** 2 < anat.dpu_radius**2
    zones[tube & tz & (np.abs(t) < 0.9)] = DPU
    return zones


def _rho2(points: np.ndarray, centre: np.ndarray, radii: np.ndarray) -> np.ndarray:
    """Squared normalised ellipsoidal radius of ``points`` (``(..., D)``) about ``centre`` (< 1 inside)."""
    out = np.zeros(points.shape[:-1], dtype=np.float32)
    for d in range(points.shape[-1]):
        out += ((points[..., d] - np.float32(centre[d])) / np.float32(radii[d])) ** 2
    return out


def t2_image(anat: Anatomy, grid: Grid, zones: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """T2w-like intensities (float32, in the case's scale) on ``grid``, whose zone labels are ``zones``."""
    c = anat.contrast
    world = grid.world()
    local = anat.to_local(world)
    rho = _gland_rho(anat, local, anat.fields["outline"].on_grid(grid))
    fine = anat.fields["fine"].on_grid(grid)
    # periprostatic fat: textured, with darker strands (septa, vessels)
    img = c["fat"] * (1.0 + 0.18 * np.tanh(1.5 * anat.fields["fat"].on_grid(grid))) + 0.04 * fine
    g = anat.centre
    a_lr, a_ap, a_si = anat.radii
    # rectum behind the gland (dark wall, near signal-free lumen), bladder above it (bright urine)
    rectum = _rho2(world[..., :2], g[:2] + np.array([0.0, -(a_ap + 16.0)]), np.array([17.0, 11.0]))
    img = np.where(rectum < 1.0, c["rectal_wall"], img)
    img = np.where(rectum < 0.5, c["rectal_lumen"] * (1.0 + 0.5 * fine), img)
    bladder = _rho2(world, g + np.array([0.0, 4.0, a_si + 24.0]), np.array([34.0, 28.0, 20.0]))
    img = np.where(bladder < 1.0, c["muscle"], img)
    img = np.where(bladder < 0.87, c["bladder"], img)
    # obturator internus at the sides, pubic symphysis (cortex and marrow) in front
    for side in (-1.0, 1.0):
        obturator = _rho2(world, g + np.array([side * (a_lr + 24.0), 2.0, 0.0]), np.array([7.0, 24.0, 45.0]))
        img = np.where(obturator < 1.0, c["muscle"] * (1.0 + 0.08 * fine), img)
    pubis = _rho2(world, g + np.array([0.0, a_ap + 20.0, 8.0]), np.array([14.0, 7.0, 30.0]))
    img = np.where(pubis < 1.0, c["bone"], img)
    img = np.where(pubis < 0.5, c["marrow"] * (1.0 + 0.1 * fine), img)
    # the capsule: a thin dark rim just outside the gland
    img = np.where((rho >= 1.0) & (rho < 1.0 + 1.3 / a_ap), c["capsule"], img)
    # the zones
    img = np.where(zones == PZ, c["pz"] * (1.0 + 0.05 * fine), img)
    if anat.lesion is not None:
        focus2 = _rho2(local, anat.lesion[:3], np.full(3, anat.lesion[3]))
        img = np.where((zones == PZ) & (focus2 < 1.0), img * (1.0 + anat.lesion[4] * (1.0 - focus2)), img)
    tz_mask = zones == TZ
    tz_local = local[tz_mask]
    tz_vals = c["tz"] * (1.0 + 0.1 * fine[tz_mask])
    for nodule in anat.nodules:  # BPH-like nodules: soft-edged blobs brighter or darker than the TZ stroma
        d2 = _rho2(tz_local, nodule[:3], np.full(3, nodule[3]))
        tz_vals = tz_vals + c["tz"] * nodule[4] * np.clip(1.0 - d2, 0.0, None)
    img[tz_mask] = tz_vals
    img = np.where(zones == AFS, c["afs"] * (1.0 + 0.05 * fine), img)
    img = np.where(zones == DPU, c["dpu"] * (1.0 + 0.05 * fine), img)
    # the point spread of a real acquisition, a bias field, Rician noise
    img = gaussian_filter(img.astype(np.float32), sigma=(0.6, 0.6, 0.25))
    img = img * (1.0 + 0.15 * anat.fields["bias"].on_grid(grid))
    sigma = anat.noise * float(np.median(img))
    real = img + rng.normal(0.0, sigma, img.shape)
    imag = rng.normal(0.0, sigma, img.shape)
    img = np.sqrt(real * real + imag * imag) * anat.scale
    # a few bright outliers outside the gland (spikes, slow-flow vessels), which percentile windows ignore
    candidates = np.flatnonzero(zones.ravel() == BG)
    idx = rng.choice(candidates, size=min(int(rng.integers(20, 80)), candidates.size), replace=False)
    np.put(img, idx, anat.scale * rng.uniform(3.0, 8.0, idx.size))
    return img.astype(np.float32)


def make_case(seed: int, index: int, spacing_scale: float = 1.0) -> tuple[np.ndarray, np.ndarray, Grid, Anatomy]:
    """Case ``index`` of the dataset of ``seed``: T2 (int16), zones (uint8), grid and anatomy.

    The anatomy depends only on ``(seed, index)``: not on ``spacing_scale``, nor on the number of cases.
    """
    anatomy_rng, grid_rng, noise_rng = (np.random.default_rng([seed, index, k]) for k in range(3))
    grid = sample_grid(grid_rng, case_orientation(index), spacing_scale)
    anat = sample_anatomy(anatomy_rng, fov_centre=np.zeros(3))
    zones = zone_map(anat, grid)
    t2 = t2_image(anat, grid, zones, noise_rng)
    t2 = np.clip(np.round(t2), 0, np.iinfo(np.int16).max).astype(np.int16)
    return t2, zones, grid, anat


def _save_nifti(array: np.ndarray, affine: np.ndarray, path: Path) -> None:
    import nibabel as nib

    img = nib.Nifti1Image(array, affine)
    img.set_sform(affine, code=1)
    img.set_qform(affine, code=1)
    img.header.set_xyzt_units("mm")
    nib.save(img, str(path))


def generate(out_dir: Path, n: int = 8, seed: int = 0, dicom: bool = False, spacing_scale: float = 1.0) -> Path:
    """Write ``n`` synthetic cases under ``out_dir`` in the prostate layout.

    Args:
        out_dir: dataset root; one folder per case (``ProstateX-SSII``: seed, case index).
        n: number of cases.
        seed: random seed (same seed → same NIfTI files, byte for byte).
        dicom: write every case's T2 as an MR DICOM series in ``<case>/dicom/`` (else every third case).
        spacing_scale: multiplies every voxel spacing (> 1 gives coarser, smaller volumes).

    Returns:
        ``out_dir``.

    Raises:
        ValueError: ``n < 1`` or a non-positive ``spacing_scale``.
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    if not (np.isfinite(spacing_scale) and spacing_scale > 0):
        raise ValueError(f"spacing_scale must be a positive number, got {spacing_scale}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        t2, zones, grid, _ = make_case(seed, i, spacing_scale)
        folder = out_dir / case_name(seed, i)
        folder.mkdir(parents=True, exist_ok=True)
        _save_nifti(t2, grid.affine, folder / T2_FILE)
        _save_nifti(zones, grid.affine, folder / ZONES_FILE)
        if has_dicom(i, dicom):
            write_dicom_series(t2, grid.affine, folder / DICOM_DIR, description="t2_tse_tra", case_index=i)
    return out_dir
