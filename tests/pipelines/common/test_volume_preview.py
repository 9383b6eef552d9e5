"""The volume preview (three views through the largest region, an axial mosaic, a legend with volumes) claims what
it shows, and the probability maps are one file per named region.

Synthetic label maps are built in the patient's RAS frame and stored in several orientations (RAS, LPS, LPI and a
permuted SRA): whatever the storage, the same patient must be drawn identically.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pytest
from matplotlib.axes import Axes
from matplotlib.colors import to_hex
from matplotlib.figure import Figure
from matplotlib.legend import Legend
from matplotlib.patches import Patch
from PIL import Image

from pipelines.common import preview as preview_module
from pipelines.common.io import Volume, read_volume
from pipelines.common.paths import file_safe_names
from pipelines.common.preview import (
    MAX_PNG_BYTES,
    NO_REGION,
    VIEW_PIXELS,
    PreviewPlan,
    plan_preview,
    preview_figure,
    save_preview,
)
from pipelines.common.segmentation import SegmentationPredictor

#: what each view must show on its (left, right, top, bottom) edges: the radiological convention
EXPECTED_MARKERS = {
    "axial": {"left": "R", "right": "L", "top": "A", "bottom": "P"},
    "coronal": {"left": "R", "right": "L", "top": "S", "bottom": "I"},
    "sagittal": {"left": "A", "right": "P", "top": "S", "bottom": "I"},
}
VIEWS = ("axial", "coronal", "sagittal")


# -- synthetic patients and their storage ---------------------------------------------------------------------------
def store(ras: np.ndarray, spacing: tuple[float, float, float], kind: str) -> tuple[np.ndarray, np.ndarray]:
    """A volume given on the patient's RAS grid, as stored in orientation ``kind``: (array, affine)."""
    sx, sy, sz = spacing
    nx, ny, nz = ras.shape
    affine = np.eye(4)
    if kind == "RAS":
        affine[:3, :3] = np.diag(spacing)
        return ras, affine
    if kind == "LPS":
        affine[:3, :3] = np.diag([-sx, -sy, sz])
        affine[:3, 3] = [sx * (nx - 1), sy * (ny - 1), 0.0]
        return ras[::-1, ::-1, :].copy(), affine
    if kind == "LPI":
        affine[:3, :3] = np.diag([-sx, -sy, -sz])
        affine[:3, 3] = [sx * (nx - 1), sy * (ny - 1), sz * (nz - 1)]
        return ras[::-1, ::-1, ::-1].copy(), affine
    if kind == "SRA":  # array axes (z, x, y)
        affine[:3, :3] = np.array([[0.0, sx, 0.0], [0.0, 0.0, sy], [sz, 0.0, 0.0]])
        return np.transpose(ras, (2, 0, 1)).copy(), affine
    raise ValueError(kind)


STORAGES = ["RAS", "LPS", "LPI", "SRA"]


def test_the_storages_are_what_they_say() -> None:
    ras = np.zeros((4, 5, 6))
    for kind in STORAGES:
        _, affine = store(ras, (1.0, 1.0, 2.0), kind)
        assert "".join(nib.aff2axcodes(affine)) == kind


def plan_of(labels: np.ndarray, affine: np.ndarray, **kw: Any) -> PreviewPlan:
    args: dict[str, Any] = {
        "case": "case-7",
        "modality": "FLAIR",
        "names": {},
        "colors": {},
        "regions_ml": {},
    } | kw
    return plan_preview(labels, affine, **args)


def two_blobs(shape: tuple[int, int, int] = (30, 32, 20)) -> tuple[np.ndarray, np.ndarray]:
    """RAS labels with a big blob (an 8×8×6 box of 2s around a 1) and a small one (3×3×3 of 3s) that shares no
    axial, coronal or sagittal plane with it; and the big blob's mask."""
    labels = np.zeros(shape, dtype=np.uint8)
    labels[4:12, 5:13, 3:9] = 2
    labels[7, 8, 5] = 1
    big = labels > 0
    labels[20:23, 22:25, 14:17] = 3
    return labels, big


# -- the plan: where the views go ---------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", STORAGES)
def test_the_views_cross_at_the_largest_component(kind: str) -> None:
    ras, big_ras = two_blobs()
    labels, affine = store(ras, (1.0, 1.2, 2.5), kind)
    big, _ = store(big_ras, (1.0, 1.2, 2.5), kind)
    plan = plan_of(labels, affine)
    assert plan.found
    # the big box's centroid (7.5, 8.5, 5.5) rounded half up, in the patient's frame, whatever the storage
    assert plan.centre_ras == (8, 9, 6)
    assert big[plan.centre_input]
    for view in plan.views.values():
        plane: list[Any] = [slice(None)] * 3
        plane[view.input_axis] = view.input_index
        assert big[tuple(plane)].any(), view
        assert not (labels[tuple(plane)] == 3).any(), f"{view} also cuts the small blob"


def test_a_hollow_component_is_crossed_inside_it() -> None:
    """A shell's centroid is in its hole: the views go through the shell's voxel nearest to it instead."""
    x, y, z = np.indices((40, 40, 30))
    r = np.sqrt((x - 20) ** 2 + (y - 20) ** 2 + (z - 15) ** 2)
    labels = ((r <= 9) & (r > 6)).astype(np.uint8)
    labels[1:4, 1:4, 1:4] = 2  # a solid, smaller blob elsewhere
    plan = plan_of(labels, np.eye(4))
    assert labels[plan.centre_input] == 1
    # the shell's voxel nearest to its centre
    assert np.linalg.norm(np.subtract(plan.centre_ras, (20, 20, 15))) == pytest.approx(r[labels == 1].min())


@pytest.mark.parametrize("kind", ["RAS", "LPI"])
def test_the_mosaic_spans_the_foreground_along_the_patients_axis(kind: str) -> None:
    ras = np.zeros((12, 12, 50), dtype=np.uint8)
    ras[4:8, 4:8, 3:41] = 1
    labels, affine = store(ras, (1.0, 1.0, 1.0), kind)
    plan = plan_of(labels, affine)
    assert len(plan.mosaic) == 12
    assert (plan.mosaic[0], plan.mosaic[-1]) == (3, 40)
    assert np.all(np.diff(plan.mosaic) > 0)
    assert set(np.diff(plan.mosaic)) <= {3, 4}  # evenly spaced: 37 slices in 11 steps
    flipped = kind == "LPI"
    assert plan.mosaic_input_axis == 2
    assert list(plan.mosaic_input) == [49 - z if flipped else z for z in plan.mosaic]
    few = np.zeros((12, 12, 50), dtype=np.uint8)
    few[5, 5, 10:14] = 1
    assert plan_of(few, np.eye(4)).mosaic == (10, 11, 12, 13)


def test_an_empty_prediction_is_drawn_through_the_centre_and_says_so() -> None:
    labels, affine = store(np.zeros((21, 30, 9), dtype=np.uint8), (1.0, 1.0, 3.0), "LPS")
    image = np.random.default_rng(0).uniform(1, 2, labels.shape).astype(np.float32)
    plan = plan_of(labels, affine, regions_ml={"WT": 0.0})
    assert not plan.found
    assert plan.centre_ras == (10, 15, 4)
    assert plan.mosaic == tuple(range(9))
    assert plan.legend == ()
    assert NO_REGION in plan.title
    fig = preview_figure(image, labels, affine, plan)
    assert legends(fig) == []
    assert NO_REGION in all_texts(fig)
    assert plan.to_json()["found"] is False
    assert plan.to_json()["legend"] == []


# -- the legend -------------------------------------------------------------------------------------------------
def test_the_legend_lists_exactly_the_classes_present_with_their_volumes() -> None:
    spacing = (0.5, 0.8, 3.0)
    voxel_ml = 0.5 * 0.8 * 3.0 / 1000.0
    ras = np.zeros((30, 30, 20), dtype=np.uint8)
    ras[1:11, 1:11, 1:11] = 1  # 1000 voxels
    ras[15:20, 15:20, 12:16] = 4  # 100
    ras[25:27, 25:27, 2:4] = 7  # 8, a value with neither name nor colour
    labels, affine = store(ras, spacing, "LPS")
    names = {1: "core", 2: "absent", 4: "rim"}
    colors = {1: "red", 2: "blue", 4: "#00ff00"}
    plan = plan_of(labels, affine, names=names, colors=colors, regions_ml={"WT": 1.3296, "TC": 1.2})
    expected = [
        ("core", 1, "#ff0000", 1000 * voxel_ml),
        ("rim", 4, "#00ff00", 100 * voxel_ml),
        ("label 7", 7, to_hex("C2"), 8 * voxel_ml),
    ]
    got = [(e.name, e.value, e.color, e.volume_ml) for e in plan.legend]
    assert [g[:3] for g in got] == [e[:3] for e in expected]
    assert [g[3] for g in got] == pytest.approx([e[3] for e in expected], abs=5e-4)
    fig = preview_figure(np.ones(labels.shape, np.float32), labels, affine, plan)
    (legend,) = legends(fig)
    assert [t.get_text() for t in legend.get_texts()] == [f"{n}: {ml:.2f} mL" for n, _, _, ml in expected]
    assert patch_colours(legend) == [c for _, _, c, _ in expected]
    assert "FLAIR" in legend.get_title().get_text()
    text = all_texts(fig)
    assert "WT 1.33 mL" in text
    assert "TC 1.20 mL" in text


# -- the picture: orientation, aspect, title -----------------------------------------------------------------------
def all_texts(fig: Figure) -> str:
    texts = [t.get_text() for t in fig.texts]
    for ax in fig.axes:
        texts += [t.get_text() for t in ax.texts]
    return "\n".join(texts)


def legends(fig: Figure) -> list[Legend]:
    return [lg for ax in fig.axes if (lg := ax.get_legend()) is not None]


def patch_colours(legend: Legend) -> list[str]:
    """The legend's colour patches, as ``#rrggbb``."""
    return [to_hex(h.get_facecolor()) for h in legend.legend_handles if isinstance(h, Patch)]


def view_axes(fig: Figure) -> dict[str, Axes]:
    """Each view's Axes, found by its caption (``axial 12``...); ``mosaic`` for the mosaic's."""
    found: dict[str, Axes] = {}
    for ax in fig.axes:
        for t in ax.texts:
            if m := re.fullmatch(r"(axial|coronal|sagittal) \d+", t.get_text()):
                found[m.group(1)] = ax
            elif t.get_text().startswith("axial mosaic"):
                found["mosaic"] = ax
    return found


def markers(ax: Axes) -> dict[str, str]:
    """The orientation letters on ``ax``, by the edge they sit on (positions in axes coordinates)."""
    out = {}
    for t in ax.texts:
        if t.get_text() in ("R", "L", "A", "P", "S", "I"):
            assert t.get_transform() == ax.transAxes
            x, y = t.get_position()
            edge = "left" if x < 0.1 else "right" if x > 0.9 else "top" if y > 0.9 else "bottom" if y < 0.1 else "?"
            out[edge] = t.get_text()
    return out


def drawn(ax: Axes) -> np.ndarray:
    return np.asarray(ax.get_images()[0].get_array())


def patient(shape: tuple[int, int, int] = (30, 28, 18)) -> tuple[np.ndarray, np.ndarray]:
    """A RAS image with texture and one region at the patient's right, anterior and superior."""
    image = np.random.default_rng(1).uniform(1.0, 2.0, shape).astype(np.float32)
    labels = np.zeros(shape, dtype=np.uint8)
    labels[20:26, 18:24, 12:16] = 1
    return image, labels


def test_the_same_patient_is_drawn_identically_whatever_the_storage() -> None:
    image_ras, labels_ras = patient()
    spacing = (1.0, 1.5, 2.0)
    rendered: dict[str, dict[str, np.ndarray]] = {}
    for kind in STORAGES:
        image, _ = store(image_ras, spacing, kind)
        labels, affine = store(labels_ras, spacing, kind)
        fig = preview_figure(image, labels, affine, plan_of(labels, affine, colors={1: "red"}))
        axes = view_axes(fig)
        assert set(axes) == {*VIEWS, "mosaic"}
        rendered[kind] = {name: drawn(ax) for name, ax in axes.items()}
        for view in VIEWS:
            assert markers(axes[view]) == EXPECTED_MARKERS[view], (kind, view)
    for kind in STORAGES[1:]:
        for name, pixels in rendered["RAS"].items():
            np.testing.assert_array_equal(rendered[kind][name], pixels, err_msg=f"{kind} {name}")


def test_the_patients_right_is_on_the_images_left() -> None:
    """The region is at the patient's right (high RAS x), anterior (high y) and superior (high z): it must be drawn
    where the markers say those sides are."""
    image, labels = patient()
    fig = preview_figure(image, labels, np.eye(4), plan_of(labels, np.eye(4), colors={1: "red"}))
    axes = view_axes(fig)
    for view in VIEWS:
        rgb = drawn(axes[view])
        rows, cols = np.nonzero(rgb[..., 0] != rgb[..., 1])  # coloured, not grey
        assert rows.size > 0, view
        left = cols.mean() < rgb.shape[1] / 2
        top = rows.mean() < rgb.shape[0] / 2
        where = EXPECTED_MARKERS[view]
        # right, anterior, superior: on the side whose marker is R, A or S
        assert where["left" if left else "right"] in ("R", "A"), view
        assert where["top" if top else "bottom"] in ("A", "S"), view


def test_anisotropic_voxels_keep_their_shape() -> None:
    spacing = (0.7, 1.0, 4.0)
    image, labels = patient((20, 24, 10))
    stored, affine = store(image, spacing, "LPS")
    lab, _ = store(labels, spacing, "LPS")
    fig = preview_figure(stored, lab, affine, plan_of(lab, affine))
    axes = view_axes(fig)
    sizes = {"axial": (24 * 1.0, 20 * 0.7), "coronal": (10 * 4.0, 20 * 0.7), "sagittal": (10 * 4.0, 24 * 1.0)}
    for view, (height, width) in sizes.items():
        x0, x1, y0, y1 = axes[view].get_images()[0].get_extent()
        assert (abs(x1 - x0), abs(y1 - y0)) == pytest.approx((width, height)), view
        assert axes[view].get_aspect() == 1.0  # one mm is as long across as up
    # one scale for the three views: each shows a square of the largest extent (40 mm)
    for view in VIEWS:
        assert np.ptp(axes[view].get_xlim()) == pytest.approx(40.0)
        assert np.ptp(axes[view].get_ylim()) == pytest.approx(40.0)


def test_large_slices_are_subsampled_but_keep_their_size_in_mm() -> None:
    labels = np.zeros((600, 40, 6), dtype=np.uint8)
    labels[300:320, 10:20, 2:4] = 1
    image = np.ones(labels.shape, np.float32)
    fig = preview_figure(image, labels, np.eye(4), plan_of(labels, np.eye(4)))
    axial = view_axes(fig)["axial"]
    assert max(drawn(axial).shape[:2]) <= VIEW_PIXELS
    x0, x1, _, _ = axial.get_images()[0].get_extent()
    assert x1 - x0 == pytest.approx(600.0)


def test_the_display_is_cropped_to_what_holds_an_image_or_a_label() -> None:
    """A skull-stripped brain is zero around it: the views show its box and 2 voxels more on each side."""
    image = np.zeros((40, 40, 10), np.float32)
    image[10:20, 5:25, 2:8] = 1.0
    labels = np.zeros(image.shape, np.uint8)
    labels[12:15, 10:12, 4:6] = 1
    labels[30, 30, 9] = 2  # a label outside the image counts too
    fig = preview_figure(image, labels, np.diag([0.5, 1.0, 2.0, 1.0]), plan_of(labels, np.diag([0.5, 1.0, 2.0, 1.0])))
    x0, x1, y0, y1 = view_axes(fig)["axial"].get_images()[0].get_extent()
    # x: voxels 10 to 30 and 2 more each side, 25 of 0.5 mm; y: 5 to 30 and 2 more, 30 of 1 mm
    assert (x1 - x0, y0 - y1) == pytest.approx((25 * 0.5, 30 * 1.0))


def test_the_title_names_the_case_the_modality_and_the_slices() -> None:
    image, labels = patient()
    plan = plan_of(labels, np.eye(4), modality="T2W")
    fig = preview_figure(image, labels, np.eye(4), plan)
    titles = [t.get_text() for t in fig.texts]
    assert plan.title in titles
    assert plan.title.startswith("case-7: T2W")
    x, y, z = plan.centre_ras
    assert f"axial {z}, coronal {y}, sagittal {x}" in plan.title
    assert any("patient's right is on the image's left" in t for t in titles)
    mosaic = view_axes(fig)["mosaic"]
    tiles = [t.get_text() for t in mosaic.texts if t.get_text().startswith("z ")]
    assert tiles == [f"z {k}" for k in plan.mosaic]


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match="3D"):
        plan_of(np.zeros((4, 4), np.uint8), np.eye(4))
    with pytest.raises(ValueError, match="max_tiles"):
        plan_of(np.zeros((4, 4, 4), np.uint8), np.eye(4), max_tiles=0)
    plan = plan_of(np.zeros((4, 4, 4), np.uint8), np.eye(4))
    with pytest.raises(ValueError, match="one 3D grid"):
        preview_figure(np.zeros((4, 4, 5), np.float32), np.zeros((4, 4, 4), np.uint8), np.eye(4), plan)


def test_a_noisy_preview_is_written_with_a_palette_that_keeps_the_legend_colours(tmp_path: Path) -> None:
    """Noise compresses badly: a noisy image with three nested regions is over the limit in full colour."""
    rng = np.random.default_rng(2)
    shape = (200, 200, 48)
    image = rng.standard_normal(shape, dtype=np.float32) * 30 + 100
    x, y, z = np.ogrid[:200, :200, :48]
    r = np.sqrt((x - 120) ** 2 + (y - 90) ** 2 + (z - 24) ** 2)
    labels = np.select([r < 8, r < 18, r < 30], [3, 2, 1], 0).astype(np.uint8)
    colors = {1: "#1f77b4", 2: "#2ca02c", 3: "#d62728"}
    plan = plan_of(labels, np.eye(4), colors=colors)
    path = save_preview(preview_figure(image, labels, np.eye(4), plan), tmp_path / "p.png")
    assert path.stat().st_size <= MAX_PNG_BYTES
    with Image.open(path) as im:
        assert im.mode == "P"
        assert im.size == (1300, 800)
        pixels = {tuple(int(v) for v in p) for p in np.asarray(im.convert("RGB")).reshape(-1, 3)}
    for color in colors.values():
        assert tuple(int(color[i : i + 2], 16) for i in (1, 3, 5)) in pixels, color


def test_a_smooth_preview_is_written_in_full_colour(tmp_path: Path) -> None:
    image, labels = patient()
    path = save_preview(preview_figure(image, labels, np.eye(4), plan_of(labels, np.eye(4))), tmp_path / "p.png")
    with Image.open(path) as im:
        assert im.mode == "RGB"


# -- file names of the probability maps ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("names", "expected"),
    [
        (["WT", "TC", "ET"], ["WT", "TC", "ET"]),
        (["a/b", "x y", "../etc", ".hidden", "Ödem"], ["a_b", "x_y", "etc", "hidden", "dem"]),
        (["", "...", "//"], ["map0", "map1", "map2"]),
        (["WT", "wt", "W T", "W/T"], ["WT", "wt_2", "W_T", "W_T_2"]),
        (["r" * 100], ["r" * 64]),
    ],
)
def test_region_names_are_made_file_safe(names: list[str], expected: list[str]) -> None:
    assert file_safe_names(names) == expected


# -- through the predictors ---------------------------------------------------------------------------------------
def capture_figures(monkeypatch: pytest.MonkeyPatch) -> list[Figure]:
    """The figures the predictors save (still written)."""
    figures: list[Figure] = []
    original: Callable[..., Path] = preview_module.save_preview

    def keep(fig: Figure, path: Path, *args: Any, **kwargs: Any) -> Path:
        figures.append(fig)
        return original(fig, path, *args, **kwargs)

    monkeypatch.setattr(preview_module, "save_preview", keep)
    return figures


def check_preview_matches_figure(result: dict[str, Any], fig: Figure, labels: np.ndarray, ref: Volume) -> None:
    """The result's ``preview`` states what the figure draws, and its legend what the label map holds."""
    preview = result["preview"]
    assert preview["title"] in [t.get_text() for t in fig.texts]
    assert preview["title"].startswith(f"{result['case']}: {preview['modality']}")
    values, counts = np.unique(labels, return_counts=True)
    present = {int(v): int(c) for v, c in zip(values, counts, strict=True) if v != 0}
    assert [e["value"] for e in preview["legend"]] == sorted(present)
    for entry in preview["legend"]:
        assert entry["volume_ml"] == pytest.approx(present[entry["value"]] * ref.voxel_volume_ml, abs=1e-3)
    drawn_legends = legends(fig)
    texts = [t.get_text() for lg in drawn_legends for t in lg.get_texts()]
    assert texts == [f"{e['name']}: {e['volume_ml']:.2f} mL" for e in preview["legend"]]
    colours = [c for lg in drawn_legends for c in patch_colours(lg)]
    assert colours == [e["color"] for e in preview["legend"]]
    assert preview["regions_ml"] == result["volumes_ml"]
    axes = view_axes(fig)
    for view in VIEWS:
        stated = preview["views"][view]
        assert any(t.get_text() == f"{view} {stated['ras_index']}" for t in axes[view].texts)
        assert markers(axes[view]) == stated["markers"] == EXPECTED_MARKERS[view]
        assert preview["centre"]["input"][stated["input_axis"]] == stated["input_index"]
    tiles = [t.get_text() for t in axes["mosaic"].texts if t.get_text().startswith("z ")]
    assert tiles == [f"z {k}" for k in preview["mosaic"]["ras_indices"]]
    if labels.any():
        assert labels[tuple(preview["centre"]["input"])] != 0


def check_probability_files(
    result: dict[str, Any], output_files: list[Any], out: Path, ref: Volume, expected: np.ndarray, regions: list[str]
) -> None:
    files = result["files"]["probabilities"]
    assert list(files) == regions
    assert [f.path for f in output_files if f.role == "probabilities"] == list(files.values())
    for i, (region, name) in enumerate(files.items()):
        assert name == f"{result['case']}_prob_{region}.nii.gz"
        img = nib.load(str(out / name))
        assert isinstance(img, nib.Nifti1Image)
        assert img.shape == ref.shape
        np.testing.assert_allclose(img.affine, ref.affine, atol=1e-5)
        assert img.get_data_dtype() == np.float32
        np.testing.assert_array_equal(np.asarray(img.dataobj), expected[i].astype(np.float32))
        assert img.header["descrip"].item() == f"P({region}) medinfer".encode()
        assert img.header.get_intent() == ("estimate", (), region)
    assert not [p for p in out.iterdir() if p.name.startswith(".medinfer-")]  # no temporary folder left


@pytest.fixture(scope="module")
def brats_case(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from pipelines.brats import synthetic

    root = synthetic.generate(tmp_path_factory.mktemp("preview_brats"), n=1, seed=4, spacing=4.0)
    return next(p for p in root.iterdir() if p.is_dir())


def test_brats_writes_a_preview_of_flair_and_a_probability_map_per_region(
    brats_case: Path, brats_random_checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from models.nested_unet import BRATS_REGIONS
    from pipelines.brats.config import BratsOptions
    from pipelines.brats.infer import BratsPredictor
    from pipelines.common.checkpoint import load_checkpoint
    from pipelines.common.task import PredictOptions, get_task

    options = PredictOptions(device="cpu", explain=True, task=BratsOptions.parse({"overlay": True, "overlap": 0.0}))
    predictor = BratsPredictor(load_checkpoint(brats_random_checkpoint, task="brats"), options)
    (item,) = get_task("brats").collect_inputs([str(brats_case)]).items
    prep = predictor.prepare(item)
    labels, maps = predictor.postprocess(prep, predictor.run([prep])[0])
    figures = capture_figures(monkeypatch)
    output = predictor.write_outputs(prep, labels, maps, tmp_path)
    result, ref = output.data, prep.context["ref"]
    assert result["preview"]["modality"] == "FLAIR"
    (fig,) = figures
    written = read_volume(tmp_path / result["files"]["segmentation"]).array.astype(np.uint8)
    check_preview_matches_figure(result, fig, written, ref)
    names = {e["value"]: e["name"] for e in result["preview"]["legend"]}
    assert set(names.values()) <= {"edema (ED)", "necrosis/non-enhancing (NCR/NET)", "enhancing (ET)"}
    expected = predictor.probabilities(maps, prep)
    check_probability_files(result, output.files, tmp_path, ref, expected, list(BRATS_REGIONS))
    with Image.open(tmp_path / result["files"]["overlay"]) as im:
        assert im.size == (1300, 800)
    # without --overlay: no picture, so no claims about one
    plain = dataclasses.replace(prep, options=prep.options.model_copy(update={"overlay": False}))
    assert "preview" not in predictor.write_outputs(plain, labels, maps, tmp_path / "plain").data
    # the family's default names the maps after the checkpoint's labels; a count that differs is a bug
    assert SegmentationPredictor.probability_names(predictor, prep) == ["WT", "TC", "ET"]
    monkeypatch.setattr(predictor, "probability_names", lambda _prep: ["WT", "TC"])
    with pytest.raises(RuntimeError, match="2 probability names"):
        predictor.write_outputs(prep, labels, maps, tmp_path / "miscounted")


def test_prostate_writes_a_preview_of_t2w_and_a_probability_map_per_zone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from models.dual_path_unet import ZONES
    from pipelines.common.checkpoint import load_checkpoint, save_checkpoint
    from pipelines.common.task import InputItem, PredictOptions, get_task
    from pipelines.prostate.config import ProstateOptions
    from pipelines.prostate.infer import ZONE_LEGEND, ProstatePredictor

    t2_ras = np.random.default_rng(5).uniform(50.0, 400.0, (48, 44, 12)).astype(np.float32)
    t2, affine = store(t2_ras, (0.8, 0.8, 3.0), "LPS")
    path = tmp_path / "case" / "t2.nii.gz"
    path.parent.mkdir()
    nib.save(nib.Nifti1Image(t2, affine), str(path))
    ckpt = save_checkpoint(get_task("prostate").untrained_checkpoint("tiny", seed=0), tmp_path / "p.pt")
    options = PredictOptions(device="cpu", explain=True, task=ProstateOptions.parse({"overlay": True}))
    predictor = ProstatePredictor(load_checkpoint(ckpt, task="prostate"), options)
    prep = predictor.prepare(InputItem("case", {"t2": path}))
    labels, maps = predictor.postprocess(prep, predictor.run([prep])[0])
    figures = capture_figures(monkeypatch)
    out = tmp_path / "out"
    output = predictor.write_outputs(prep, labels, maps, out)
    result, ref = output.data, prep.context["ref"]
    assert result["preview"]["modality"] == "T2W"
    (fig,) = figures
    check_preview_matches_figure(result, fig, labels, ref)
    assert {e["name"] for e in result["preview"]["legend"]} <= set(ZONE_LEGEND.values())
    check_probability_files(result, output.files, out, ref, predictor.probabilities(maps, prep), list(ZONES))
    assert result["files"]["disagreement"] == "case_disagreement.nii.gz"  # still one file
