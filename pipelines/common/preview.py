"""The preview of a volume segmentation: three orthogonal views through the largest region, an axial mosaic and
a legend with each class's volume.

What the picture claims is decided first, by :func:`plan_preview`, as a :class:`PreviewPlan` (NumPy on the label
map and its affine only): the centre of the largest 26-connected component of the foreground (labels > 0), the
axial, coronal and sagittal slices through it, up to :data:`MAX_TILES` evenly spaced axial slices spanning the
foreground for the mosaic, one legend entry per label class present (colour, name, volume in mL) and the named
regions' volumes. The result JSON states the plan (:meth:`PreviewPlan.to_json`) so that another front end can
draw the same picture; :func:`preview_figure` draws it and :func:`save_preview` writes the PNG.

Display: the arrays are reoriented to RAS with nibabel (``io_orientation`` / ``apply_orientation``), so that a
patient looks the same whatever the order and direction its voxels are stored in, and drawn in millimetres (an
anisotropic voxel keeps its shape), in the radiological convention: the patient's right on the image's left in
the axial and coronal views, anterior on the left in the sagittal view, superior (axial: anterior) at the top.
Letters on each view's edges (:data:`MARKERS`) say so. Slice indices in the figure are those of the RAS-reoriented
array; the JSON gives both those and the input array's.

Matplotlib's object API on an Agg canvas (:func:`~pipelines.common.plots.new_figure`), never pyplot: the service
draws from several threads at once.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from pipelines.common.io import affine_spacing, affine_voxel_ml
from pipelines.common.plots import new_figure

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = [
    "CONVENTION",
    "MARKERS",
    "MAX_TILES",
    "NO_REGION",
    "LegendEntry",
    "PreviewPlan",
    "ViewSlice",
    "plan_preview",
    "preview_figure",
    "ras_view",
    "save_preview",
]

#: the views by the RAS axis normal to them (0 sagittal, 1 coronal, 2 axial)
NORMAL_AXIS = {"sagittal": 0, "coronal": 1, "axial": 2}
#: the order the three views are drawn in, left to right
DRAWN = ("axial", "coronal", "sagittal")
#: the letter on each edge of each view (radiological convention)
MARKERS: dict[str, dict[str, str]] = {
    "axial": {"left": "R", "right": "L", "top": "A", "bottom": "P"},
    "coronal": {"left": "R", "right": "L", "top": "S", "bottom": "I"},
    "sagittal": {"left": "A", "right": "P", "top": "S", "bottom": "I"},
}
CONVENTION = "radiological convention: the patient's right is on the image's left"
#: what the picture says when the label map has no foreground
NO_REGION = "no region found"
#: the most axial slices the mosaic shows
MAX_TILES = 12
MOSAIC_COLUMNS = 6
#: the longest side, in pixels, a view (a mosaic tile) is drawn with: larger slices are subsampled for speed
VIEW_PIXELS = 256
TILE_PIXELS = 160
#: opacity of the label colours over the image
ALPHA = 0.45
DPI = 100
#: a PNG larger than this is written with a palette of 256 colours
MAX_PNG_BYTES = 300_000
FIGSIZE = (13.0, 8.0)
BACKGROUND = "black"
FOREGROUND = "white"
MARKER_COLOR = "#ffd700"
#: a dark box under the letters and slice numbers drawn over the image
_LABEL_BOX = {"facecolor": BACKGROUND, "edgecolor": "none", "pad": 1.0}


@dataclass(frozen=True)
class LegendEntry:
    """One label class drawn: its value in the label map, name, colour (``#rrggbb``) and volume in mL."""

    name: str
    value: int
    color: str
    volume_ml: float

    @property
    def text(self) -> str:
        """The legend's text for this class."""
        return f"{self.name}: {self.volume_ml:.2f} mL"

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "value": self.value, "color": self.color, "volume_ml": self.volume_ml}


@dataclass(frozen=True)
class ViewSlice:
    """The slice one view shows: its index along the RAS axis normal to the view, and the same plane in the
    input array (the input's axis along which it is a slice, and the index there)."""

    view: str
    ras_axis: int
    ras_index: int
    input_axis: int
    input_index: int

    def to_json(self) -> dict[str, Any]:
        return {
            "ras_axis": self.ras_axis,
            "ras_index": self.ras_index,
            "input_axis": self.input_axis,
            "input_index": self.input_index,
            "markers": dict(MARKERS[self.view]),
        }


@dataclass(frozen=True)
class PreviewPlan:
    """What a preview shows and claims (see the module's docstring); :meth:`to_json` is the result's ``preview``.

    Args:
        case: the case's name (no patient identifiers).
        modality: the name of the image shown (``FLAIR``, ``T2W``...).
        found: whether the label map has any foreground; if not, the views go through the volume's centre.
        views: the axial, coronal and sagittal slices, by view name.
        mosaic: the mosaic's axial slices (indices of the RAS-reoriented array), inferior to superior.
        mosaic_input_axis: the input array's axis the mosaic's slices are taken along.
        mosaic_input: the same slices as indices along that axis.
        legend: one entry per label class present, by label value.
        regions_ml: the named regions' volumes in mL (brats: the nested WT, TC, ET; prostate: the zones).
    """

    case: str
    modality: str
    found: bool
    views: Mapping[str, ViewSlice]
    mosaic: tuple[int, ...]
    mosaic_input_axis: int
    mosaic_input: tuple[int, ...]
    legend: tuple[LegendEntry, ...]
    regions_ml: Mapping[str, float]

    @property
    def centre_ras(self) -> tuple[int, int, int]:
        """The voxel the three views cross at, in the RAS-reoriented array."""
        return self.views["sagittal"].ras_index, self.views["coronal"].ras_index, self.views["axial"].ras_index

    @property
    def centre_input(self) -> tuple[int, int, int]:
        """The same voxel in the input array."""
        out = [0, 0, 0]
        for view in self.views.values():
            out[view.input_axis] = view.input_index
        return out[0], out[1], out[2]

    @property
    def title(self) -> str:
        slices = ", ".join(f"{v} {self.views[v].ras_index}" for v in DRAWN)
        found = "" if self.found else f" ({NO_REGION})"
        return f"{self.case}: {self.modality}{found}; {slices}"

    @property
    def regions_text(self) -> str:
        """The named regions' volumes, one per line."""
        return "\n".join(f"{name} {ml:.2f} mL" for name, ml in self.regions_ml.items())

    def to_json(self) -> dict[str, Any]:
        return {
            "modality": self.modality,
            "title": self.title,
            "display": f"RAS-reoriented arrays, {CONVENTION}",
            "found": self.found,
            "centre": {"ras": list(self.centre_ras), "input": list(self.centre_input)},
            "views": {v: self.views[v].to_json() for v in DRAWN},
            "mosaic": {
                "view": "axial",
                "ras_indices": list(self.mosaic),
                "input_axis": self.mosaic_input_axis,
                "input_indices": list(self.mosaic_input),
            },
            "legend": [e.to_json() for e in self.legend],
            "regions_ml": dict(self.regions_ml),
        }


# -- geometry ----------------------------------------------------------------------------------------------------
def _orientation(affine: np.ndarray) -> np.ndarray:
    import nibabel as nib

    return np.asarray(nib.orientations.io_orientation(np.asarray(affine, dtype=np.float64)))


def _to_ras(array: np.ndarray, ornt: np.ndarray) -> np.ndarray:
    import nibabel as nib

    return np.asarray(nib.orientations.apply_orientation(array, ornt))


def _ras_spacing(affine: np.ndarray, ornt: np.ndarray) -> np.ndarray:
    """Voxel size in mm along each RAS axis of the reoriented array."""
    spacing = affine_spacing(affine)
    out = np.ones(3)
    for axis, (ras_axis, _) in enumerate(ornt):
        out[int(ras_axis)] = spacing[axis]
    return out


def _input_index(ornt: np.ndarray, shape: Sequence[int], ras_axis: int, ras_index: int) -> tuple[int, int]:
    """(input axis, index along it) of the plane ``ras_index`` along RAS axis ``ras_axis``."""
    for axis, (r, flip) in enumerate(ornt):
        if int(r) == ras_axis:
            return axis, ras_index if flip > 0 else int(shape[axis]) - 1 - ras_index
    raise ValueError(f"RAS axis {ras_axis} is not in the orientation {ornt.tolist()}")


def ras_view(
    volume_ras: np.ndarray, view: str, index: int, box: tuple[slice, slice, slice] | None = None
) -> np.ndarray:
    """The 2D slice ``view`` shows of a RAS-reoriented volume, as displayed: row 0 at the top, column 0 on the
    left (radiological convention, see :data:`MARKERS`).

    In-plane, the rows run along the higher RAS axis and the columns along the lower one, both reversed: axial
    (Y, X) anterior at the top and the patient's right on the left; coronal (Z, X); sagittal (Z, Y). ``box``
    crops the in-plane axes (its slice along the view's normal axis is not used).
    """
    where: list[int | slice] = list(box) if box is not None else [slice(None)] * 3
    where[NORMAL_AXIS[view]] = index
    return volume_ras[tuple(where)][::-1, ::-1].T  # basic indexing: a view (np.take would copy the volume)


def _pixel_mm(view: str, spacing_ras: np.ndarray) -> tuple[float, float]:
    """(row height, column width) in mm of ``view``'s pixels."""
    col_axis, row_axis = (a for a in range(3) if a != NORMAL_AXIS[view])
    return float(spacing_ras[row_axis]), float(spacing_ras[col_axis])


# -- the plan ----------------------------------------------------------------------------------------------------
def _counts(labels: np.ndarray) -> dict[int, int]:
    """Voxels per non-zero label value (``bincount`` for non-negative integers: ``np.unique`` sorts). The caller
    passes the foreground's bounding box only, which is much faster on a small lesion."""
    if np.issubdtype(labels.dtype, np.integer) and labels.size and int(labels.min()) >= 0:
        counts = np.bincount(labels.ravel())
        return {int(v): int(c) for v, c in enumerate(counts) if v != 0 and c > 0}
    values, counts = np.unique(labels, return_counts=True)
    return {int(v): int(c) for v, c in zip(values, counts, strict=True) if v != 0}


def _bounding_box(mask: np.ndarray, margin: int = 0) -> tuple[slice, slice, slice] | None:
    """The smallest box holding every true voxel of ``mask`` and ``margin`` voxels more on each side (within the
    array); ``None`` when there is none."""
    from scipy import ndimage

    boxes = ndimage.find_objects(mask.view(np.uint8) if mask.dtype == bool else mask.astype(np.uint8))
    if not boxes or boxes[0] is None:
        return None
    a, b, c = (
        slice(max(0, s.start - margin), min(n, s.stop + margin)) for s, n in zip(boxes[0], mask.shape, strict=True)
    )
    return a, b, c


def _largest_component_centre(
    foreground: np.ndarray, box: tuple[slice, slice, slice], spacing: np.ndarray
) -> tuple[int, int, int]:
    """The centroid voxel of the largest 26-connected component, or, when that voxel lies outside it (a ring, a
    crescent), the component's voxel nearest to the centroid in mm (the first in C order on a tie). ``box``
    holds the whole foreground (:func:`_bounding_box`)."""
    from scipy import ndimage

    components, _ = ndimage.label(foreground[box], structure=np.ones((3, 3, 3), dtype=bool))
    sizes = np.bincount(components.ravel())
    sizes[0] = 0
    voxels = np.argwhere(components == int(np.argmax(sizes)))
    centroid = voxels.mean(axis=0)
    nearest = voxels[int(np.argmin((((voxels - centroid) * spacing) ** 2).sum(axis=1)))]
    rounded = np.floor(centroid + 0.5).astype(int)
    inside = bool((voxels == rounded).all(axis=1).any())
    best = rounded if inside else nearest
    offset = [s.start for s in box]
    return int(best[0] + offset[0]), int(best[1] + offset[1]), int(best[2] + offset[2])


def _evenly_spaced(first: int, last: int, most: int) -> tuple[int, ...]:
    n = min(most, last - first + 1)
    return tuple(sorted({int(v) for v in np.floor(np.linspace(first, last, n) + 0.5)}))


def plan_preview(
    labels: np.ndarray,
    affine: np.ndarray,
    *,
    case: str,
    modality: str,
    names: Mapping[int, str],
    colors: Mapping[int, str],
    regions_ml: Mapping[str, float],
    max_tiles: int = MAX_TILES,
) -> PreviewPlan:
    """Decide what the preview of ``labels`` shows.

    Args:
        labels: (X, Y, Z) integer label map on the input's grid (0 is background).
        affine: its 4×4 voxel → RAS mm matrix.
        case: the case's name, for the title (no patient identifiers).
        modality: the name of the image the preview shows.
        names: label value → class name (a value without one is called ``label <value>``).
        colors: label value → matplotlib colour (a value without one gets the next of tab10's).
        regions_ml: the named regions' volumes, as the result states them.
        max_tiles: the most axial slices in the mosaic.

    Returns:
        The :class:`PreviewPlan`.

    Raises:
        ValueError: ``labels`` is not 3D or ``max_tiles`` is below 1.
    """
    from matplotlib.colors import to_hex

    if labels.ndim != 3:
        raise ValueError(f"labels must be a 3D (X, Y, Z) map; got shape {labels.shape}")
    if max_tiles < 1:
        raise ValueError(f"max_tiles must be at least 1, got {max_tiles}")
    ornt = _orientation(affine)
    lab = _to_ras(labels, ornt)
    spacing = _ras_spacing(affine, ornt)
    foreground = lab > 0
    box = _bounding_box(foreground)
    found = box is not None
    if box is not None:
        centre = _largest_component_centre(foreground, box, spacing)
        mosaic = _evenly_spaced(box[2].start, box[2].stop - 1, max_tiles)
    else:
        centre = (lab.shape[0] // 2, lab.shape[1] // 2, lab.shape[2] // 2)
        mosaic = _evenly_spaced(0, lab.shape[2] - 1, max_tiles)
    views = {}
    for view, ras_axis in NORMAL_AXIS.items():
        axis, index = _input_index(ornt, labels.shape, ras_axis, centre[ras_axis])
        views[view] = ViewSlice(view, ras_axis, centre[ras_axis], axis, index)
    z_axis = views["axial"].input_axis
    mosaic_input = tuple(_input_index(ornt, labels.shape, 2, z)[1] for z in mosaic)
    voxel_ml = affine_voxel_ml(affine)
    legend = []
    counts = _counts(lab[box]) if box is not None else {}
    for i, (value, count) in enumerate(sorted(counts.items())):
        color = to_hex(colors.get(value, f"C{i % 10}"))
        legend.append(LegendEntry(names.get(value, f"label {value}"), value, color, round(count * voxel_ml, 3)))
    return PreviewPlan(
        case=case,
        modality=modality,
        found=found,
        views=views,
        mosaic=mosaic,
        mosaic_input_axis=z_axis,
        mosaic_input=mosaic_input,
        legend=tuple(legend),
        regions_ml={k: round(float(v), 3) for k, v in regions_ml.items()},
    )


# -- the picture -------------------------------------------------------------------------------------------------
def _window(image_ras: np.ndarray) -> tuple[float, float]:
    """Grey levels: the 0.5th-99.5th percentiles of the non-zero voxels (of every other voxel along each axis,
    which is as good and 8 times faster)."""
    sample = image_ras[::2, ::2, ::2]
    values = sample[sample != 0]
    if values.size == 0:
        values = sample.ravel()
    lo, hi = (float(v) for v in np.percentile(values, [0.5, 99.5]))
    return (lo, hi) if hi > lo else (lo, lo + 1.0)


def _blend(grey: np.ndarray, labels: np.ndarray, legend: Sequence[LegendEntry], lo: float, hi: float) -> np.ndarray:
    """(H, W, 3) RGB in [0, 1]: the windowed grey slice with each class's colour blended in."""
    from matplotlib.colors import to_rgb

    level = np.clip((grey.astype(np.float32) - lo) / (hi - lo), 0.0, 1.0)
    rgb = np.repeat(level[..., None], 3, axis=2)
    for entry in legend:
        mask = labels == entry.value
        if mask.any():
            rgb[mask] = (1.0 - ALPHA) * rgb[mask] + ALPHA * np.asarray(to_rgb(entry.color), dtype=np.float32)
    return rgb


def _stride(shape: Sequence[int], most: int) -> int:
    return max(1, math.ceil(max(shape) / most))


def _caption(ax: Axes, text: str) -> None:
    """A title above ``ax`` (a plain text: ``set_title`` measures the hidden axis's ticks at every draw)."""
    ax.text(0.5, 1.01, text, transform=ax.transAxes, ha="center", va="bottom", color=FOREGROUND, fontsize=10)


def _marker(ax: Axes, view: str) -> None:
    spots = {
        "left": (0.02, 0.5, "left", "center"),
        "right": (0.98, 0.5, "right", "center"),
        "top": (0.5, 0.98, "center", "top"),
        "bottom": (0.5, 0.02, "center", "bottom"),
    }
    for edge, letter in MARKERS[view].items():
        x, y, ha, va = spots[edge]
        ax.text(
            x,
            y,
            letter,
            transform=ax.transAxes,
            ha=ha,
            va=va,
            color=MARKER_COLOR,
            fontsize=10,
            fontweight="bold",
            bbox=_LABEL_BOX,
        )


def preview_figure(image: np.ndarray, labels: np.ndarray, affine: np.ndarray, plan: PreviewPlan) -> Figure:
    """Draw ``plan``: the three views through its centre, the legend and region volumes, and the axial mosaic.

    Args:
        image: (X, Y, Z) the volume shown (``plan.modality``), on the same grid as ``labels``.
        labels: (X, Y, Z) the label map the plan was made from.
        affine: their 4×4 voxel → RAS mm matrix.
        plan: :func:`plan_preview`'s answer for ``labels`` and ``affine``.

    Returns:
        The figure (on its own Agg canvas; nothing is written).

    Raises:
        ValueError: ``image`` and ``labels`` differ in shape.
    """
    from matplotlib.patches import Patch

    if image.shape != labels.shape or image.ndim != 3:
        raise ValueError(f"image {image.shape} and labels {labels.shape} must be one 3D grid")
    ornt = _orientation(affine)
    img = _to_ras(image, ornt)
    lab = _to_ras(labels, ornt)
    spacing = _ras_spacing(affine, ornt)
    lo, hi = _window(img)
    # the display is cropped to what holds an image or a label (a skull-stripped brain fills half its grid)
    box = _bounding_box((img != 0) | (lab > 0), margin=2) or (slice(None), slice(None), slice(None))

    fig = new_figure(FIGSIZE)
    fig.set_facecolor(BACKGROUND)
    fig.text(0.5, 0.985, plan.title, ha="center", va="top", color=FOREGROUND, fontsize=12, fontweight="bold")
    fig.text(
        0.5,
        0.948,
        f"{CONVENTION}; slice indices of the RAS-reoriented volume",
        ha="center",
        va="top",
        color=FOREGROUND,
        fontsize=9,
    )
    # one scale (mm per inch) for the three views: each shows a square of the volume's largest extent
    side = float(max(len(range(*b.indices(n))) * s for b, n, s in zip(box, img.shape, spacing, strict=True)))
    for i, view in enumerate(DRAWN):
        ax = fig.add_axes((0.005 + 0.228 * i, 0.44, 0.22, 0.45))
        ax.set_facecolor(BACKGROUND)
        index = plan.views[view].ras_index
        grey, lab2d = ras_view(img, view, index, box), ras_view(lab, view, index, box)
        step = _stride(grey.shape, VIEW_PIXELS)
        rgb = _blend(grey[::step, ::step], lab2d[::step, ::step], plan.legend, lo, hi)
        row_mm, col_mm = _pixel_mm(view, spacing)
        height, width = grey.shape[0] * row_mm, grey.shape[1] * col_mm
        ax.imshow(rgb, extent=(0.0, width, height, 0.0), interpolation="nearest")
        ax.set_xlim((width - side) / 2, (width + side) / 2)
        ax.set_ylim((height + side) / 2, (height - side) / 2)
        ax.set_axis_off()
        _caption(ax, f"{view} {index}")
        _marker(ax, view)

    panel = fig.add_axes((0.69, 0.44, 0.3, 0.45))
    panel.set_axis_off()
    if plan.legend:
        handles = [Patch(facecolor=e.color, edgecolor=FOREGROUND, label=e.text) for e in plan.legend]
        legend = panel.legend(
            handles=handles,
            loc="upper left",
            title=f"{plan.modality}: classes drawn",
            fontsize=9,
            title_fontsize=9,
            frameon=False,
            labelcolor=FOREGROUND,
        )
        legend.get_title().set_color(FOREGROUND)
    else:
        panel.text(0.5, 0.8, NO_REGION, ha="center", va="center", color=MARKER_COLOR, fontsize=14)
    if plan.regions_ml:
        panel.text(
            0.0, 0.0, f"region volumes:\n{plan.regions_text}", va="bottom", ha="left", color=FOREGROUND, fontsize=9
        )

    _draw_mosaic(fig, img, lab, box, spacing, plan, lo, hi)
    return fig


def _draw_mosaic(
    fig: Figure,
    img: np.ndarray,
    lab: np.ndarray,
    box: tuple[slice, slice, slice],
    spacing: np.ndarray,
    plan: PreviewPlan,
    lo: float,
    hi: float,
) -> None:
    """The mosaic's tiles composed into one image (one Axes instead of one per tile: much faster to draw)."""
    first = ras_view(img, "axial", plan.mosaic[0], box)
    step = _stride(first.shape, TILE_PIXELS)
    tile_h, tile_w = first[::step, ::step].shape
    gap = max(1, tile_w // 40)
    n_cols = min(MOSAIC_COLUMNS, len(plan.mosaic))
    n_rows = math.ceil(len(plan.mosaic) / n_cols)
    canvas = np.zeros((n_rows * (tile_h + gap) - gap, n_cols * (tile_w + gap) - gap, 3), dtype=np.float32)
    row_mm, col_mm = _pixel_mm("axial", spacing)
    row_mm, col_mm = row_mm * step, col_mm * step
    ax = fig.add_axes((0.01, 0.01, 0.98, 0.38))
    ax.set_facecolor(BACKGROUND)
    for k, z in enumerate(plan.mosaic):
        r, c = divmod(k, n_cols)
        top, left = r * (tile_h + gap), c * (tile_w + gap)
        grey = ras_view(img, "axial", z, box)[::step, ::step]
        canvas[top : top + tile_h, left : left + tile_w] = _blend(
            grey, ras_view(lab, "axial", z, box)[::step, ::step], plan.legend, lo, hi
        )
        ax.text(
            (left + 1) * col_mm,
            (top + 1) * row_mm,
            f"z {z}",
            ha="left",
            va="top",
            color=MARKER_COLOR,
            fontsize=8,
            bbox=_LABEL_BOX,
        )
    ax.imshow(canvas, extent=(0.0, canvas.shape[1] * col_mm, canvas.shape[0] * row_mm, 0.0), interpolation="nearest")
    ax.set_axis_off()
    _caption(
        ax, f"axial mosaic, {plan.modality}: slices {plan.mosaic[0]} to {plan.mosaic[-1]} (R on the left, A at the top)"
    )


def save_preview(fig: Figure, path: Path, dpi: int = DPI) -> Path:
    """Write ``fig`` as an RGB PNG; one larger than :data:`MAX_PNG_BYTES` (a noisy image compresses badly) is
    written with a palette of 256 colours instead, at about half the size: the background, text and marker
    colours and the legends' exactly, the others chosen by median cut (:func:`~pipelines.common.plots.save_figure`)."""
    from matplotlib.colors import to_hex

    from pipelines.common.plots import save_figure

    legends = [
        to_hex(handle.get_facecolor())
        for ax in fig.axes
        if (legend := ax.get_legend()) is not None
        for handle in legend.legend_handles
        if handle is not None and hasattr(handle, "get_facecolor")
    ]
    exact = (BACKGROUND, FOREGROUND, MARKER_COLOR, *legends)
    return save_figure(fig, path, dpi, max_bytes=MAX_PNG_BYTES, exact=exact)
