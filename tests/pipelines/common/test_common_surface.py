"""Surface distances, Dice/HD95/MASD per region and signed distance maps: closed forms, empty rule, MONAI agreement."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import ndimage

from pipelines.common import metrics as m


def _ball(shape: tuple[int, ...], spacing: tuple[float, ...], radius: float) -> tuple[np.ndarray, np.ndarray]:
    """Voxels whose centre lies within ``radius`` mm of a slightly off-grid centre, and every centre's distance (mm)."""
    centre = [n * s / 2 + 0.13 * (i + 1) for i, (n, s) in enumerate(zip(shape, spacing, strict=True))]
    axes = [np.arange(n) * s - c for n, s, c in zip(shape, spacing, centre, strict=True)]
    grids = np.meshgrid(*axes, indexing="ij")
    dist = np.sqrt(sum(g**2 for g in grids))
    return dist <= radius, dist


def _cube(shape: tuple[int, int, int], lo: int, hi: int) -> np.ndarray:
    mask = np.zeros(shape, bool)
    mask[lo:hi, lo:hi, lo:hi] = True
    return mask


def _blob(seed: int, shape: tuple[int, int, int] = (48, 40, 16)) -> np.ndarray:
    """A random smooth blob (thresholded smoothed noise), away from the array border."""
    rng = np.random.default_rng(seed)
    field = ndimage.gaussian_filter(rng.standard_normal(shape), sigma=(4, 4, 1.5))
    mask = field > 0.02
    mask[:2], mask[-2:], mask[:, :2], mask[:, -2:], mask[:, :, :1], mask[:, :, -1:] = (False,) * 6
    return mask


# --- Signed distance map ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("shape", "spacing"),
    [((40, 40, 40), (1.0, 1.0, 1.0)), ((60, 60, 16), (0.5, 0.5, 2.0))],
)
def test_sdm_of_a_sphere_matches_the_analytic_distance(shape: tuple[int, ...], spacing: tuple[float, ...]) -> None:
    radius = 10.0
    mask, dist = _ball(shape, spacing, radius)
    sdm = m.signed_distance_map(mask, spacing)
    assert sdm.dtype == np.float32
    assert sdm.shape == mask.shape
    err = sdm - (dist - radius)
    assert np.abs(err).mean() < 0.5
    assert np.abs(err).max() <= math.hypot(*spacing)  # one voxel diagonal
    # sign convention: negative inside, positive outside, the centre about −r
    assert np.all(sdm[mask] < 0)
    assert np.all(sdm[~mask] > 0)
    assert sdm.min() == pytest.approx(-radius, abs=max(spacing))


def test_sdm_half_voxel_convention_along_an_axis() -> None:
    mask = np.zeros((10, 3, 3), bool)
    mask[:5] = True  # boundary half-way between the centres at x = 8 mm and x = 10 mm
    sdm = m.signed_distance_map(mask, (2.0, 1.0, 1.0))
    expected = 2.0 * np.arange(10) - 9.0  # (n − ½)·2 mm from the boundary
    assert np.array_equal(sdm[:, 1, 1], expected.astype(np.float32))
    assert np.array_equal(sdm, np.broadcast_to(expected[:, None, None], sdm.shape).astype(np.float32))


@pytest.mark.parametrize("clip", [0.4, 1.5, 3.0, 50.0])
def test_sdm_clip_equals_clipping_the_full_map(clip: float) -> None:
    spacing = (0.5, 0.7, 3.0)
    mask = _blob(1)
    full = m.signed_distance_map(mask, spacing)
    clipped = m.signed_distance_map(mask, spacing, clip=clip)
    assert clipped.min() >= -clip
    assert clipped.max() <= clip
    assert np.array_equal(clipped, np.clip(full, -clip, clip))  # the cropped computation changes nothing


def test_sdm_of_empty_and_full_masks() -> None:
    shape, spacing = (6, 5, 4), (0.5, 0.5, 3.0)
    diagonal = math.sqrt(3.0**2 + 2.5**2 + 12.0**2)
    empty, full = np.zeros(shape, bool), np.ones(shape, bool)
    assert np.all(m.signed_distance_map(empty, spacing, clip=5.0) == 5.0)
    assert np.all(m.signed_distance_map(full, spacing, clip=5.0) == -5.0)
    assert np.allclose(m.signed_distance_map(empty, spacing), diagonal)
    assert np.allclose(m.signed_distance_map(full, spacing), -diagonal)


@pytest.mark.parametrize(
    ("spacing", "clip", "match"),
    [
        ((1.0, 1.0), None, "spacing"),
        ((1.0, 1.0, 1.0, 1.0), None, "spacing"),
        ((1.0, 0.0, 1.0), None, "spacing"),
        ((1.0, 1.0, 1.0), 0.0, "clip"),
        ((1.0, 1.0, 1.0), math.inf, "clip"),
    ],
)
def test_sdm_rejects_bad_arguments(spacing: tuple[float, ...], clip: float | None, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        m.signed_distance_map(np.ones((3, 3, 3), bool), spacing, clip=clip)


# --- Surface distances and per-region scores ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("shape", "spacing"),
    [((34, 34, 34), (1.0, 1.0, 1.0)), ((68, 68, 23), (0.5, 0.5, 1.5))],
)
def test_concentric_spheres(shape: tuple[int, ...], spacing: tuple[float, ...]) -> None:
    r1, r2 = 10.0, 14.0
    inner, _ = _ball(shape, spacing, r1)
    outer, _ = _ball(shape, spacing, r2)
    out = m.segmentation_scores(inner[None], outer[None], spacing, ["zone"])
    voxel = max(spacing)
    assert out["masd_zone"] == pytest.approx(r2 - r1, abs=voxel)
    assert out["hd95_zone"] == pytest.approx(r2 - r1, abs=voxel)
    assert out["dice_zone"] == pytest.approx(2 * r1**3 / (r1**3 + r2**3), rel=0.02)
    assert out["present_zone"] == 1.0


def test_identical_masks_score_perfectly() -> None:
    mask = _blob(2)[None]
    out = m.segmentation_scores(mask, mask.copy(), (0.5, 0.5, 3.0), ["a"])
    assert out == {"dice_a": 1.0, "hd95_a": 0.0, "masd_a": 0.0, "present_a": 1.0}


@pytest.mark.parametrize(
    ("pred_any", "ref_any", "expected"),
    [
        (False, False, {"dice_z": 1.0, "hd95_z": 0.0, "masd_z": 0.0, "present_z": 0.0}),
        (True, False, {"dice_z": 0.0, "hd95_z": math.nan, "masd_z": math.nan, "present_z": 0.0}),  # spurious
        (False, True, {"dice_z": 0.0, "hd95_z": math.nan, "masd_z": math.nan, "present_z": 1.0}),  # missed
    ],
)
def test_empty_region_rule(pred_any: bool, ref_any: bool, expected: dict[str, float]) -> None:
    cube = _cube((8, 8, 8), 2, 5)
    pred = (cube if pred_any else np.zeros_like(cube))[None]
    ref = (cube if ref_any else np.zeros_like(cube))[None]
    out = m.segmentation_scores(pred, ref, (1.0, 1.0, 1.0), ["z"])
    assert list(out) == list(expected)
    for key, value in expected.items():
        assert out[key] == value or (math.isnan(value) and math.isnan(out[key])), key
    assert math.isnan(m.summarize([out["hd95_z"]])["mean"]) == (pred_any != ref_any)  # NaN is skipped


def test_surface_distances_of_empty_masks() -> None:
    cube, empty = _cube((8, 8, 8), 2, 5), np.zeros((8, 8, 8), bool)
    d_pr, d_rp = m.surface_distances(empty, empty, (1, 1, 1))
    assert d_pr.size == 0
    assert d_rp.size == 0
    d_pr, d_rp = m.surface_distances(cube, empty, (1, 1, 1))
    assert d_pr.size == 26  # 3³ − 1³ surface voxels, nothing to reach
    assert np.all(np.isinf(d_pr))
    assert d_rp.size == 0


@pytest.mark.parametrize("axis", [0, 1, 2])
@pytest.mark.parametrize("k", [1, 3])
def test_shifted_cube_hd95_is_the_shift_in_mm(axis: int, k: int) -> None:
    spacing = (0.5, 0.7, 3.0)
    ref = _cube((20, 20, 20), 5, 11)
    pred = np.roll(ref, k, axis=axis)
    d_pr, d_rp = m.surface_distances(pred, ref, spacing)
    shift = k * spacing[axis]  # the same voxel shift weighs s_axis mm
    assert d_pr.max() == pytest.approx(shift)
    assert d_rp.max() == pytest.approx(shift)
    assert np.array_equal(np.sort(d_pr), np.sort(d_rp))  # mirror-symmetric configuration
    out = m.segmentation_scores(pred[None], ref[None], spacing, ["c"])
    assert out["hd95_c"] == pytest.approx(shift)  # the 36 leading-face voxels (> 5 % of 152) are all at k·s
    assert out["dice_c"] == pytest.approx((6 - k) / 6)
    assert out["masd_c"] == pytest.approx(d_pr.mean())


def test_directed_distances_are_asymmetric() -> None:
    """A cube plus one stray voxel D voxels away: only the pred → ref direction sees it; P95 ignores it."""
    spacing, n, far = (0.5, 0.7, 3.0), 6, 8
    ref = _cube((24, 24, 24), 4, 4 + n)
    pred = ref.copy()
    pred[4 + n - 1 + far, 6, 6] = True  # `far` voxels beyond the cube's face along axis 0
    d_pr, d_rp = m.surface_distances(pred, ref, spacing)
    n_surface = n**3 - (n - 2) ** 3
    assert d_rp.size == n_surface
    assert np.all(d_rp == 0)
    assert d_pr.size == n_surface + 1
    assert d_pr.max() == pytest.approx(far * spacing[0])
    assert np.count_nonzero(d_pr) == 1
    out = m.segmentation_scores(pred[None], ref[None], spacing, ["c"])
    assert out["hd95_c"] == 0.0
    assert out["masd_c"] == pytest.approx((far * spacing[0] / (n_surface + 1) + 0.0) / 2)


def test_border_voxels_are_surface_and_cropping_changes_nothing() -> None:
    full = np.ones((5, 6, 7), bool)
    d_pr, d_rp = m.surface_distances(full, full, (1, 1, 1))
    assert d_pr.size == 5 * 6 * 7 - 3 * 4 * 5  # everything on the array border is surface
    assert np.all(d_pr == 0)
    assert np.all(d_rp == 0)
    pred, ref, spacing = _blob(3), _blob(4), (0.5, 0.5, 3.0)
    pad = ((7, 3), (0, 11), (2, 5))
    padded = m.surface_distances(np.pad(pred, pad), np.pad(ref, pad), spacing)
    for a, b in zip(m.surface_distances(pred, ref, spacing), padded, strict=True):
        assert np.array_equal(a, b)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_agrees_with_monai_on_random_blobs(seed: int) -> None:
    """HD95 equals MONAI's symmetric percentile HD (same 6-connected edges, same linear-interpolation percentile).

    MASD is the mean of the two directed means; MONAI's symmetric average surface distance pools both directions into
    one mean instead, which the same directed distances reproduce.
    """
    import torch
    from monai.metrics import compute_average_surface_distance, compute_hausdorff_distance

    spacing = (0.5, 0.6, 3.0)
    pred, ref = _blob(10 + seed), _blob(20 + seed)
    out = m.segmentation_scores(pred[None], ref[None], spacing, ["b"])
    p = torch.as_tensor(pred[None, None]).float()
    r = torch.as_tensor(ref[None, None]).float()
    hd95 = compute_hausdorff_distance(p, r, include_background=True, percentile=95, directed=False, spacing=spacing)
    assert out["hd95_b"] == pytest.approx(float(hd95[0, 0]), rel=1e-5)
    d_pr, d_rp = m.surface_distances(pred, ref, spacing)
    assert out["masd_b"] == pytest.approx((d_pr.mean() + d_rp.mean()) / 2)
    asd = compute_average_surface_distance(p, r, include_background=True, symmetric=True, spacing=spacing)
    assert float(asd[0, 0]) == pytest.approx(np.concatenate([d_pr, d_rp]).mean(), rel=1e-5)
    legacy = m.dice_hd95(pred[None], ref[None], spacing, ["b"])
    assert out["dice_b"] == pytest.approx(legacy["dice_b"], rel=1e-6)
    assert out["hd95_b"] == pytest.approx(legacy["hd95_b"], rel=1e-5)


def test_segmentation_scores_rejects_bad_arguments() -> None:
    stack = np.zeros((2, 4, 4, 4), bool)
    with pytest.raises(ValueError, match="differs"):
        m.segmentation_scores(stack, stack[:, :2], (1, 1, 1), ["a", "b"])
    with pytest.raises(ValueError, match="region_names"):
        m.segmentation_scores(stack, stack, (1, 1, 1), ["a"])
    with pytest.raises(ValueError, match="spacing"):
        m.segmentation_scores(stack, stack, (1, 1), ["a", "b"])
    with pytest.raises(ValueError, match="differs"):
        m.surface_distances(stack[0], stack[0, :2], (1, 1, 1))
