"""Synthetic BreaKHis: H&E-like 700×460 RGB PNGs in the real ``BreaKHis_v1`` tree, with real-style names.

Colour follows Beer–Lambert stain mixing: every pixel holds a haematoxylin and an eosin concentration, and the
RGB is ``background · exp(−(h · H + e · E))`` with optical-density vectors ``H`` (purple-blue) and ``E``
(pink). Each patient draws its own stain vectors, stain strengths and glass colour from one distribution that
is the same for every class, so colour alone says nothing about the tumour (only the amount of nuclei does).
Everything is drawn with vectorised numpy and PIL (no per-pixel Python): about 0.1 s per image.

Tissue is stroma (streaky collagen bundles, spindle fibroblast nuclei, a patient-dependent number of lymphocytes,
sometimes empty tears) plus the subtype's architecture. Nuclei are polygons (rotated ellipses with a radial
wobble) drawn with PIL, with a darker rim and chromatin texture. Benign nuclei are small, round, regular and
moderately stained; malignant ones larger, pleomorphic (size, shape and outline vary), darker, with coarse
chromatin and visible nucleoli, and the tumours are more cellular:

- A, adenosis: crowded small acini (two cell layers: luminal cells radial, myoepithelial cells flat) with small
  or obliterated lumens.
- F, fibroadenoma: abundant loose stroma with few fibroblasts; compressed, slit-like curved ducts.
- PT, phyllodes tumour: hypercellular spindle-cell stroma; leaf-like clefts lined by one cell layer.
- TA, tubular adenoma: packed small round tubules with clear lumens and one regular layer; scant stroma.
- DC, ductal carcinoma: sheets and nests of large pleomorphic dark nuclei, some cribriform holes.
- LC, lobular carcinoma: small monotonous dark cells in single-file lines infiltrating the stroma.
- MC, mucinous carcinoma: pale blue-grey mucin lakes with small floating clusters of tumour cells.
- PC, papillary carcinoma: branching finger-like fibrovascular fronds lined by stratified columnar nuclei in
  empty papillary spaces.

Magnification scales everything in the field: one tissue unit is 1 px at 40X, 1.5 at 100X, 2.2 at 200X and
3.2 at 400X (compressed from the optical 10× so that nuclei and structures stay visible after a resize to
64×64 at every magnification). Each image has its own generator, ``default_rng([seed, subtype, patient,
magnification, seq])``, and each patient its own (stain and tissue parameters), so output is deterministic.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from pipelines.breakhis.datasets import BENIGN, MAGNIFICATIONS, SUBTYPE_NAMES, SUBTYPES, tumour_of

__all__ = [
    "IMAGES_PER_MAGNIFICATION",
    "IMAGE_SIZE",
    "UNIT_PX",
    "Stain",
    "make_image",
    "patient_params",
    "patient_stain",
    "write_synthetic_breakhis",
]

logger = logging.getLogger(__name__)

#: (width, height) of every BreaKHis image
IMAGE_SIZE: tuple[int, int] = (700, 460)
#: images written per patient and magnification (seq 001, 002)
IMAGES_PER_MAGNIFICATION = 2
#: pixels per tissue unit at each magnification
UNIT_PX: dict[int, float] = {40: 1.0, 100: 1.5, 200: 2.2, 400: 3.2}

_W, _H = IMAGE_SIZE
_YY, _XX = np.mgrid[0:_H, 0:_W].astype(np.float32)
# unit optical-density directions (R, G, B), after Ruifrok & Johnston's H&E vectors, pinker eosin
_H_OD = np.array([0.62, 0.72, 0.31])
_E_OD = np.array([0.12, 0.86, 0.49])
_K_POLY = 16
_T = np.linspace(0.0, 2.0 * np.pi, _K_POLY, endpoint=False)


@dataclass(frozen=True)
class Stain:
    """One patient's staining: optical density per unit concentration (3,) and the glass colour (3,) 0–255."""

    haematoxylin: np.ndarray
    eosin: np.ndarray
    background: np.ndarray


def patient_stain(rng: np.random.Generator) -> Stain:
    """A patient's stain: directions, strengths and glass colour vary, from one class-independent distribution."""

    def direction(base: np.ndarray, spread: float) -> np.ndarray:
        v = np.clip(base + rng.normal(0.0, spread, 3), 0.02, None)
        return v / np.linalg.norm(v)

    h = direction(_H_OD, 0.07) * rng.uniform(1.3, 2.1)
    e = direction(_E_OD, 0.08) * rng.uniform(0.7, 1.35)
    bg = np.clip(rng.uniform(228, 250) + rng.normal(0.0, 4.0, 3), 215, 255)
    return Stain(h, e, bg)


@dataclass(frozen=True)
class _Cell:
    """Nuclear morphology of a cell type, lengths in tissue units."""

    radius: float
    size_cv: float
    elongation: tuple[float, float]  # major/minor axis ratio range
    wobble: float  # radial irregularity of the outline
    dark: float  # haematoxylin concentration
    dark_cv: float
    nucleolus: bool = False

    def scaled(self, size: float = 1.0, dark: float = 1.0) -> _Cell:
        return _Cell(
            self.radius * size,
            self.size_cv,
            self.elongation,
            self.wobble,
            self.dark * dark,
            self.dark_cv,
            self.nucleolus,
        )


BENIGN_EPI = _Cell(3.4, 0.08, (1.05, 1.35), 0.04, 0.75, 0.07)
MYOEPI = _Cell(2.9, 0.10, (2.2, 3.0), 0.03, 0.80, 0.08)
FIBROBLAST = _Cell(3.0, 0.15, (3.0, 4.5), 0.05, 0.75, 0.10)
LYMPHOCYTE = _Cell(2.2, 0.08, (1.0, 1.15), 0.03, 1.25, 0.06)
_TUMOUR_CELLS: dict[str, _Cell] = {
    "DC": _Cell(5.0, 0.24, (1.0, 1.8), 0.15, 1.20, 0.16, True),
    "LC": _Cell(4.3, 0.10, (1.05, 1.4), 0.06, 1.2, 0.09),
    "MC": _Cell(5.0, 0.20, (1.0, 1.6), 0.12, 1.2, 0.14, True),
    "PC": _Cell(4.6, 0.18, (1.6, 2.3), 0.10, 1.20, 0.14, True),
}


@dataclass
class _Nuclei:
    """Nuclei to draw, in pixels: centres, semi-axes, orientation, outline wobble, darkness, nucleolus flag."""

    cols: list[np.ndarray] = field(default_factory=list)

    def add(
        self, rng: np.random.Generator, points: np.ndarray, cell: _Cell, u: float, theta: np.ndarray | None = None
    ) -> None:
        """Nuclei of a cell type at ``points`` (N, 2) pixels; ``theta`` (N,) orients their long axes (else random)."""
        x, y = np.asarray(points, dtype=np.float64).reshape(-1, 2).T
        n = x.size
        if n == 0:
            return
        r = cell.radius * u * np.clip(1.0 + cell.size_cv * rng.standard_normal(n), 0.5, 1.8)
        el = rng.uniform(*cell.elongation, n)
        a, b = r * np.sqrt(el), r / np.sqrt(el)
        th = (
            rng.uniform(0.0, np.pi, n)
            if theta is None
            else np.asarray(theta, dtype=np.float64) + 0.15 * rng.standard_normal(n)
        )
        dark = cell.dark * np.clip(1.0 + cell.dark_cv * rng.standard_normal(n), 0.5, 1.6)
        wob = np.full(n, cell.wobble)
        nucleolus = np.full(n, float(cell.nucleolus))
        self.cols.append(np.stack([x, y, a, b, np.broadcast_to(th, (n,)), wob, dark, nucleolus], axis=1))

    def table(self) -> np.ndarray:
        return np.concatenate(self.cols) if self.cols else np.zeros((0, 8))


class _Layout:
    """What a subtype lays out over the stroma: nuclei and region masks (8-bit, 255 inside).

    Regions: ``epithelium`` (cytoplasm of epithelial cells), ``space`` (empty: lumens, clefts, papillary
    spaces) and ``mucin``.
    """

    def __init__(self, stroma_eosin: float) -> None:
        self.nuclei = _Nuclei()
        self.stroma_eosin = stroma_eosin
        self.masks: dict[str, Image.Image] = {}

    def draw(self, region: str) -> ImageDraw.ImageDraw:
        """A pen on a region's mask (created empty on first use)."""
        if region not in self.masks:
            self.masks[region] = Image.new("L", IMAGE_SIZE, 0)
        return ImageDraw.Draw(self.masks[region])

    def fill(self, region: str, mask: np.ndarray) -> None:
        """Set a region from a boolean (H, W) mask."""
        self.masks[region] = Image.fromarray(mask.astype(np.uint8) * 255)


def _noise(rng: np.random.Generator, cell_px: float) -> np.ndarray:
    """Smooth Gaussian noise (H, W), unit variance, with features about ``cell_px`` pixels across."""
    gh, gw = int(np.ceil(_H / cell_px)) + 3, int(np.ceil(_W / cell_px)) + 3
    low = rng.standard_normal((gh, gw)).astype(np.float32)
    big = np.asarray(
        Image.fromarray(low, mode="F").resize((int(gw * cell_px), int(gh * cell_px)), Image.Resampling.BICUBIC)
    )
    oy, ox = int(rng.integers(0, int(cell_px) + 1)), int(rng.integers(0, int(cell_px) + 1))
    out = big[oy : oy + _H, ox : ox + _W]
    return (out - out.mean()) / (out.std() + 1e-6)


def _blobs(rng: np.random.Generator, cell_px: float, coverage: float) -> np.ndarray:
    """Boolean (H, W) mask of smooth random blobs covering about ``coverage`` of the field."""
    n = _noise(rng, cell_px)
    return n > np.quantile(n[::4, ::4], 1.0 - coverage)


def _grid(rng: np.random.Generator, spacing: float, jitter: float, margin: float = 0.0) -> np.ndarray:
    """Jittered hexagonal grid of points (N, 2) covering the field (plus ``margin`` pixels around it)."""
    ys = np.arange(-margin, _H + margin, spacing * 0.866)
    pts = []
    for i, y in enumerate(ys):
        xs = np.arange(-margin + (spacing / 2 if i % 2 else 0.0), _W + margin, spacing)
        pts.append(np.stack([xs, np.full_like(xs, y)], axis=1))
    p = np.concatenate(pts) + rng.uniform(0, spacing, 2)[None, :] * [1, 0.866] - [spacing / 2, spacing * 0.433]
    return p + rng.normal(0.0, jitter, p.shape)


def _inside(points: np.ndarray, mask: np.ndarray) -> np.ndarray:
    xi = np.clip(points[:, 0].astype(int), 0, _W - 1)
    yi = np.clip(points[:, 1].astype(int), 0, _H - 1)
    on = (points[:, 0] >= 0) & (points[:, 0] < _W) & (points[:, 1] >= 0) & (points[:, 1] < _H)
    return points[on & mask[yi, xi]]


def _path(rng: np.random.Generator, start, heading: float, length: float, step: float, wiggle: float) -> np.ndarray:
    """A smooth random path (N, 2) of ``length`` pixels; the heading drifts by ``wiggle`` radians per step."""
    n = max(2, int(length / step))
    turn = np.convolve(rng.normal(0.0, wiggle, n), np.ones(3) / 3, mode="same")
    ang = heading + np.cumsum(turn)
    steps = step * np.stack([np.cos(ang), np.sin(ang)], axis=1)
    return np.asarray(start, dtype=np.float64) + np.vstack([[0.0, 0.0], np.cumsum(steps, axis=0)[:-1]])


def _along(path: np.ndarray, spacing: float, offset: float = 0.0, phase: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Points every ``spacing`` pixels along ``path`` shifted ``offset`` along its normal, and the tangent angle."""
    d = np.diff(path, axis=0)
    s = np.concatenate([[0.0], np.cumsum(np.hypot(d[:, 0], d[:, 1]))])
    if s[-1] <= spacing:
        return np.zeros((0, 2)), np.zeros(0)
    t = np.arange(phase % spacing, s[-1], spacing)
    x, y = np.interp(t, s, path[:, 0]), np.interp(t, s, path[:, 1])
    ang = np.interp(t, s[:-1] + np.diff(s) / 2, np.unwrap(np.arctan2(d[:, 1], d[:, 0])))
    pts = np.stack([x - offset * np.sin(ang), y + offset * np.cos(ang)], axis=1)
    return pts, ang


def _ring(
    rng: np.random.Generator,
    nuc: _Nuclei,
    ellipse: tuple[float, float, float, float, float],
    cell: _Cell,
    u: float,
    spacing: float,
    radial: bool,
) -> None:
    """Nuclei every ``spacing`` pixels around an ellipse (cx, cy, rx, ry, rotation), oriented radially (columnar
    cells) or tangentially (flat cells)."""
    cx, cy, rx, ry, rot = ellipse
    perimeter = np.pi * (3 * (rx + ry) - np.sqrt((3 * rx + ry) * (rx + 3 * ry)))
    k = max(3, int(perimeter / spacing))
    t = np.linspace(0, 2 * np.pi, k, endpoint=False) + rng.uniform(0, 2 * np.pi) + rng.normal(0, 0.08, k)
    ex, ey = rx * np.cos(t), ry * np.sin(t)
    c, s = np.cos(rot), np.sin(rot)
    x, y = cx + c * ex - s * ey, cy + s * ex + c * ey
    normal = np.arctan2(ry * np.sin(t), rx * np.cos(t)) + rot
    nuc.add(rng, np.stack([x, y], axis=1), cell, u, theta=normal if radial else normal + np.pi / 2)


def _ellipse(
    draw: ImageDraw.ImageDraw, cx: float, cy: float, rx: float, ry: float, rot: float, fill: int = 255
) -> None:
    t = np.linspace(0, 2 * np.pi, 24, endpoint=False)
    c, s = np.cos(rot), np.sin(rot)
    pts = np.stack([cx + c * rx * np.cos(t) - s * ry * np.sin(t), cy + s * rx * np.cos(t) + c * ry * np.sin(t)], 1)
    draw.polygon(pts.ravel().tolist(), fill=fill)


def _line(draw: ImageDraw.ImageDraw, path: np.ndarray, width: float, fill: int = 255) -> None:
    draw.line(path.ravel().tolist(), fill=fill, width=max(1, round(width)), joint=None)


# ---------------------------------------------------------------------------------------------------------- subtypes


def _adenosis(rng: np.random.Generator, u: float, p: dict[str, float]) -> _Layout:
    out = _Layout(stroma_eosin=0.8)
    epi, space = out.draw("epithelium"), out.draw("space")
    cell = BENIGN_EPI.scaled(p["size"])
    lobule = _blobs(rng, 140 * u, p["cover"])
    for cx, cy in _inside(_grid(rng, 36 * u, 5 * u, 20 * u), lobule):
        rx = rng.uniform(10, 14) * u
        ry, rot = rx * rng.uniform(0.6, 1.0), rng.uniform(0, np.pi)
        _ellipse(epi, cx, cy, rx + 1.5 * u, ry + 1.5 * u, rot)
        lumen = rng.uniform(0.0, 0.38)
        if lumen > 0.12:  # else obliterated
            _ellipse(space, cx, cy, rx * lumen, ry * lumen, rot)
        inner = 0.5 + 0.5 * lumen
        _ring(rng, out.nuclei, (cx, cy, rx * inner, ry * inner, rot), cell, u, 7.0 * u, radial=True)
        _ring(rng, out.nuclei, (cx, cy, rx, ry, rot), MYOEPI, u, 9.0 * u, radial=False)
    return out


def _fibroadenoma(rng: np.random.Generator, u: float, p: dict[str, float]) -> _Layout:
    out = _Layout(stroma_eosin=0.6)
    epi, space = out.draw("epithelium"), out.draw("space")
    cell = BENIGN_EPI.scaled(p["size"])
    for _ in range(max(1, round(rng.uniform(4, 7) * p["cover"] / u**2))):
        start = rng.uniform([0, 0], [_W, _H])
        path = _path(rng, start, rng.uniform(0, 2 * np.pi), rng.uniform(90, 220) * u, 3 * u, 0.12)
        _line(epi, path, 20 * u)
        _line(space, path, rng.uniform(1.0, 3.0) * u)  # compressed, slit-like lumen
        for side in (-1, 1):
            pts, ang = _along(path, 7.0 * u, side * 4.0 * u, rng.uniform(0, 7))
            out.nuclei.add(rng, pts, cell, u, theta=ang + np.pi / 2)
            pts, ang = _along(path, 9.0 * u, side * 8.5 * u, rng.uniform(0, 9))
            out.nuclei.add(rng, pts, MYOEPI, u, theta=ang)
    return out


def _phyllodes(rng: np.random.Generator, u: float, p: dict[str, float]) -> _Layout:
    out = _Layout(stroma_eosin=0.7)
    epi, space = out.draw("epithelium"), out.draw("space")
    cell = BENIGN_EPI.scaled(p["size"])
    for _ in range(max(1, round(rng.uniform(2.6, 4.5) / u**2))):
        start = rng.uniform([0, 0], [_W, _H])
        path = _path(rng, start, rng.uniform(0, 2 * np.pi), rng.uniform(120, 260) * u, 3 * u, 0.10)
        width = rng.uniform(5, 10) * u
        _line(epi, path, width + 9 * u)
        _line(space, path, width)  # leaf-like cleft
        for side in (-1, 1):
            pts, ang = _along(path, 7.0 * u, side * (width / 2 + 3.2 * u), rng.uniform(0, 7))
            out.nuclei.add(rng, pts, cell, u, theta=ang + np.pi / 2)
    return out


def _tubular_adenoma(rng: np.random.Generator, u: float, p: dict[str, float]) -> _Layout:
    out = _Layout(stroma_eosin=0.8)
    epi, space = out.draw("epithelium"), out.draw("space")
    cell = BENIGN_EPI.scaled(p["size"])
    keep = _blobs(rng, 200 * u, min(0.95, p["cover"] + 0.25))
    for cx, cy in _inside(_grid(rng, 30 * u, 2.5 * u, 20 * u), keep):
        r = rng.uniform(10.5, 12.5) * u
        ry, rot = r * rng.uniform(0.8, 1.0), rng.uniform(0, np.pi)
        _ellipse(epi, cx, cy, r + 1.0 * u, ry + 1.0 * u, rot)
        lumen = rng.uniform(0.35, 0.45)
        _ellipse(space, cx, cy, r * lumen, ry * lumen, rot)
        inner = 0.45 + 0.5 * lumen
        _ring(rng, out.nuclei, (cx, cy, r * inner, ry * inner, rot), cell, u, 7.2 * u, radial=True)
        _ring(rng, out.nuclei, (cx, cy, r, ry, rot), MYOEPI, u, 12.0 * u, radial=False)
    return out


def _ductal(rng: np.random.Generator, u: float, p: dict[str, float]) -> _Layout:
    out = _Layout(stroma_eosin=0.95)  # desmoplastic stroma
    cell = _TUMOUR_CELLS["DC"].scaled(p["size"], p["dark"])
    nests = _blobs(rng, rng.uniform(50, 90) * u, p["cover"])
    out.fill("epithelium", nests)
    space = out.draw("space")
    holes = _inside(_grid(rng, 45 * u, 12 * u), nests)
    holes = holes[rng.random(len(holes)) < p["cribriform"]]
    pts = _inside(_grid(rng, 2.25 * cell.radius * u, 1.5 * u), nests)
    for hx, hy in holes:
        rh = rng.uniform(4, 8) * u
        _ellipse(space, hx, hy, rh, rh * rng.uniform(0.7, 1.0), rng.uniform(0, np.pi))
        pts = pts[np.hypot(pts[:, 0] - hx, pts[:, 1] - hy) > rh + 2 * u]
    out.nuclei.add(rng, pts, cell, u)
    return out


def _lobular(rng: np.random.Generator, u: float, p: dict[str, float]) -> _Layout:
    out = _Layout(stroma_eosin=0.85)
    epi = out.draw("epithelium")
    cell = _TUMOUR_CELLS["LC"].scaled(p["size"], p["dark"])
    heading = rng.uniform(0, np.pi)
    gap = p["file_gap"] * u
    normal = np.array([-np.sin(heading), np.cos(heading)])
    centre = np.array([_W / 2, _H / 2])
    reach = np.hypot(_W, _H) / 2
    for off in np.arange(-reach, reach, gap) + rng.uniform(0, gap):
        if rng.random() < 0.15:
            continue
        h = heading + rng.normal(0, 0.1)
        start = centre + normal * (off + rng.normal(0, gap * 0.2)) - reach * np.array([np.cos(h), np.sin(h)])
        path = _path(rng, start, h, 2 * reach, 3 * u, 0.015)
        pts, ang = _along(path, 2.3 * cell.radius * u, 0.0, rng.uniform(0, 10))
        keep = rng.random(len(pts)) > 0.1
        _line(epi, path, 2.4 * cell.radius * u, fill=150)
        out.nuclei.add(rng, pts[keep], cell, u, theta=ang[keep])
    return out


def _mucinous(rng: np.random.Generator, u: float, p: dict[str, float]) -> _Layout:
    out = _Layout(stroma_eosin=0.8)
    epi = out.draw("epithelium")
    cell = _TUMOUR_CELLS["MC"].scaled(p["size"], p["dark"])
    lakes = _blobs(rng, rng.uniform(70, 110) * u, p["cover"])
    out.fill("mucin", lakes)
    for cx, cy in _inside(_grid(rng, p["cluster_gap"] * u, 10 * u), lakes):
        rc = rng.uniform(8, 16) * u
        rot, ry = rng.uniform(0, np.pi), rc * rng.uniform(0.55, 1.0)
        _ellipse(epi, cx, cy, rc + 2 * u, ry + 2 * u, rot)
        k = max(3, int(np.pi * rc * ry / (2.2 * cell.radius * u) ** 2))
        rad, t = np.sqrt(rng.random(k)), rng.uniform(0, 2 * np.pi, k)
        ex, ey = rc * rad * np.cos(t), ry * rad * np.sin(t)
        c, s = np.cos(rot), np.sin(rot)
        out.nuclei.add(rng, np.stack([cx + c * ex - s * ey, cy + s * ex + c * ey], axis=1), cell, u)
    return out


def _papillary(rng: np.random.Generator, u: float, p: dict[str, float]) -> _Layout:
    out = _Layout(stroma_eosin=0.8)
    epi, space = out.draw("epithelium"), out.draw("space")
    space.rectangle([0, 0, _W, _H], fill=255)  # papillary spaces, the fronds drawn over them
    cell = _TUMOUR_CELLS["PC"].scaled(p["size"], p["dark"])
    layers = int(p["layers"])
    cores: list[tuple[np.ndarray, float]] = []
    for _ in range(12):  # branching fronds, cut anywhere by the section, until they fill ``cover`` of the field
        if cores and 1.0 - np.asarray(out.masks["space"])[::4, ::4].mean() / 255 >= p["cover"]:
            break
        start, heading = rng.uniform([0, 0], [_W, _H]), rng.uniform(0, 2 * np.pi)
        length, core = rng.uniform(150, 280) * u, rng.uniform(9, 14) * u
        branches = [(start, heading, length, core, 0), (start, heading + np.pi, 0.5 * length, core, 1)]
        while branches:
            start, heading, length, core, depth = branches.pop()
            path = _path(rng, start, heading, length, 3 * u, 0.08)
            band = core + 2 * (layers * 2.2 * cell.radius * u + 1 * u)
            _line(epi, path, band)
            _line(space, path, band, fill=0)
            cores.append((path, core))
            for side in (-1, 1):  # stratified columnar cells, perpendicular to the core
                for layer in range(layers):
                    off = side * (core / 2 + (1.2 + 2.1 * layer) * cell.radius * u)
                    pts, ang = _along(path, 1.9 * cell.radius * u, off, rng.uniform(0, 10))
                    out.nuclei.add(rng, pts, cell, u, theta=ang + np.pi / 2)
            if depth < 2:
                for _ in range(int(rng.integers(1, 3))):
                    at = path[int(rng.uniform(0.25, 0.8) * len(path))]
                    turn = rng.choice([-1, 1]) * rng.uniform(0.5, 1.1)
                    branches.append((at, heading + turn, length * 0.55, core * 0.8, depth + 1))
    for path, core in cores:  # fibrovascular cores are stroma
        _line(epi, path, core, fill=0)
    return out


_LAYOUTS = {
    "A": _adenosis,
    "F": _fibroadenoma,
    "PT": _phyllodes,
    "TA": _tubular_adenoma,
    "DC": _ductal,
    "LC": _lobular,
    "MC": _mucinous,
    "PC": _papillary,
}


def patient_params(rng: np.random.Generator, subtype: str) -> dict[str, float]:
    """Tissue parameters fixed for one patient: nuclear size and darkness (grade), cellularity, inflammation,
    tears; the subtype's own ones (cover, spacing) after the shared ones."""
    p: dict[str, float] = {
        "size": rng.uniform(0.92, 1.08),
        "dark": rng.uniform(0.9, 1.1),
        "lymphocytes": rng.uniform(0.0, 1.0) ** 2,
        "fibroblast_gap": rng.uniform(26, 40),
        "tears": rng.uniform(0.0, 0.5),
    }
    if subtype == "A":
        p["cover"] = rng.uniform(0.45, 0.75)
    elif subtype == "F":
        p["cover"] = rng.uniform(0.7, 1.1)
        p["fibroblast_gap"] = rng.uniform(32, 46)
    elif subtype == "PT":
        p["fibroblast_gap"] = rng.uniform(10, 13)
    elif subtype == "TA":
        p["cover"] = rng.uniform(0.6, 0.75)
    elif subtype == "DC":
        p["cover"] = rng.uniform(0.5, 0.8)
        p["cribriform"] = rng.uniform(0.0, 0.5)
    elif subtype == "LC":
        p["file_gap"] = rng.uniform(9.5, 13)
    elif subtype == "MC":
        p["cover"] = rng.uniform(0.6, 0.8)
        p["cluster_gap"] = rng.uniform(28, 38)
    elif subtype == "PC":
        p["layers"] = int(rng.integers(2, 4))
        p["cover"] = rng.uniform(0.45, 0.65)
    return p


def _stroma_cells(
    rng: np.random.Generator, nuc: _Nuclei, free: np.ndarray, u: float, p: dict[str, float], fibre_angle: float
) -> None:
    """Spindle fibroblasts along the collagen and patches of lymphocytes, where ``free`` (H, W) is stroma."""
    pts = _inside(_grid(rng, p["fibroblast_gap"] * u, 5 * u), free)
    nuc.add(rng, pts, FIBROBLAST, u, theta=np.full(len(pts), fibre_angle))
    if p["lymphocytes"] > 0.02:
        gap = 16 * u / np.sqrt(p["lymphocytes"])
        pts = _inside(_grid(rng, gap, 6 * u), free & _blobs(rng, 80 * u, 0.4))
        nuc.add(rng, pts, LYMPHOCYTE, u)


def _erode(arr: np.ndarray, steps: int) -> np.ndarray:
    """Cross-shaped grey erosion of a (H, W) array, ``steps`` pixels deep."""
    out = arr.copy()
    for _ in range(steps):
        src = out.copy()
        out[1:] = np.minimum(out[1:], src[:-1])
        out[:-1] = np.minimum(out[:-1], src[1:])
        out[:, 1:] = np.minimum(out[:, 1:], src[:, :-1])
        out[:, :-1] = np.minimum(out[:, :-1], src[:, 1:])
    return out


def _draw_nuclei(rng: np.random.Generator, table: np.ndarray, u: float) -> np.ndarray:
    """Nuclear haematoxylin (H, W), 0 outside nuclei: wobbly rotated ellipses, darker rims, nucleoli at 200X+."""
    img = Image.new("L", IMAGE_SIZE, 0)
    draw = ImageDraw.Draw(img)
    if len(table):
        x, y, a, b, th, wob, dark, nucleolus = table.T
        near = (x > -2 * a) & (x < _W + 2 * a) & (y > -2 * a) & (y < _H + 2 * a)
        x, y, a, b, th, wob, dark, nucleolus = table[near][rng.permutation(int(near.sum()))].T
        n = len(x)
        ph = rng.uniform(0, 2 * np.pi, (n, 3))
        amp = wob[:, None] * rng.uniform(0.4, 1.0, (n, 3))
        r = 1.0 + sum(amp[:, [i]] * np.cos(k * _T[None, :] + ph[:, [i]]) for i, k in enumerate((2, 3, 5)))
        ex, ey = a[:, None] * r * np.cos(_T), b[:, None] * r * np.sin(_T)
        c, s = np.cos(th)[:, None], np.sin(th)[:, None]
        poly = np.stack([x[:, None] + c * ex - s * ey, y[:, None] + s * ex + c * ey], axis=2).reshape(n, -1)
        level = np.clip(dark * 100, 1, 160).astype(int).tolist()
        for pts, fill in zip(poly.tolist(), level, strict=True):
            draw.polygon(pts, fill=fill)
        if u >= 2.0:
            rr = 0.16 * np.sqrt(a * b)
            off = rng.normal(0, 0.25, (n, 2)) * b[:, None]
            for i in np.flatnonzero(nucleolus > 0):
                cx, cy = x[i] + off[i, 0], y[i] + off[i, 1]
                box = [cx - rr[i], cy - rr[i], cx + rr[i], cy + rr[i]]
                draw.ellipse(box, fill=min(250, int(level[i] * 1.6)))
    arr = np.asarray(img)
    rim = (arr > 0) & (_erode(arr, 1 if u < 2.0 else 2) == 0)
    out = arr.astype(np.float32) / 100.0
    out[rim] *= 1.3
    return out


def _soft(img: Image.Image | None, radius: float) -> np.ndarray | None:
    """A mask as float (H, W) in [0, 1] with softened edges; None when absent or empty."""
    if img is None or img.getbbox() is None:
        return None
    return np.asarray(img.filter(ImageFilter.BoxBlur(radius)), dtype=np.float32) / 255.0


def _fibres(rng: np.random.Generator, u: float, angle: float) -> np.ndarray:
    """Collagen bundles (H, W) in [0, 1]: noise streaked along ``angle``, long along and thin across."""
    across, along = 4.5 * u, 32.0 * u
    side = np.hypot(_W, _H)
    low = rng.standard_normal((int(side / across) + 4, int(side / along) + 4)).astype(np.float32)
    c, s = np.cos(angle), np.sin(angle)
    # output pixel (x, y) → grid (column along the fibres, row across them), centred, one affine resampling
    a, b = c / along, s / along
    d, e = -s / across, c / across
    cx, cy = _W / 2, _H / 2
    data = (a, b, low.shape[1] / 2 - a * cx - b * cy, d, e, low.shape[0] / 2 - d * cx - e * cy)
    img = Image.fromarray(low, mode="F").transform(IMAGE_SIZE, Image.Transform.AFFINE, data, Image.Resampling.BILINEAR)
    return 0.5 + 0.5 * np.tanh(1.2 * np.asarray(img))


def make_image(
    subtype: str, magnification: int, stain: Stain, params: dict[str, float], rng: np.random.Generator
) -> np.ndarray:
    """One synthetic field (460, 700, 3) uint8 of a subtype at a magnification.

    Args:
        subtype: a code of :data:`SUBTYPES`.
        magnification: 40, 100, 200 or 400.
        stain: the patient's stain (:func:`patient_stain`).
        params: the patient's tissue parameters (:func:`patient_params`).
        rng: this image's generator.

    Raises:
        ValueError: an unknown subtype or magnification.
    """
    if subtype not in _LAYOUTS:
        raise ValueError(f"subtype must be one of {', '.join(SUBTYPES)}, got {subtype!r}")
    if magnification not in UNIT_PX:
        raise ValueError(f"magnification must be one of {', '.join(map(str, MAGNIFICATIONS))}, got {magnification}")
    u = UNIT_PX[magnification]
    layout = _LAYOUTS[subtype](rng, u, params)
    epi = _soft(layout.masks.get("epithelium"), 0.8 * u)
    space = _soft(layout.masks.get("space"), 0.6 * u)
    mucin = _soft(layout.masks.get("mucin"), 2.0 * u)
    if rng.random() < params["tears"]:
        tear = _blobs(rng, 60 * u, rng.uniform(0.03, 0.1)).astype(np.float32)
        space = tear if space is None else np.maximum(space, tear)
    free = np.ones((_H, _W), dtype=bool)
    for region, limit in ((epi, 0.1), (space, 0.5), (mucin, 0.3)):
        if region is not None:
            free &= region < limit
    fibre_angle = rng.uniform(0, np.pi)
    _stroma_cells(rng, layout.nuclei, free, u, params, fibre_angle)

    # stroma: collagen bundles with slow density changes; faint haematoxylin everywhere
    slow = _noise(rng, 40 * u)
    e = layout.stroma_eosin * (0.55 + 0.6 * _fibres(rng, u, fibre_angle)) * (1.0 + 0.12 * slow)
    h = np.float32(0.05) * (1.0 - 0.2 * slow)
    if epi is not None:
        e += epi * (0.5 - e)
        h += epi * 0.12
    if mucin is not None:
        wisps = 0.5 + 0.5 * np.tanh(_noise(rng, 9 * u))
        e += mucin * (0.07 - e)
        h += mucin * (0.1 + 0.12 * wisps - h)
    if space is not None:
        e *= 1 - space
        h *= 1 - space

    nuclei = _draw_nuclei(rng, layout.nuclei.table(), u)
    inside = nuclei > 0
    coarse = 0.28 if tumour_of(subtype) == "malignant" else 0.14
    grain = rng.standard_normal(int(inside.sum()), dtype=np.float32)
    h[inside] = nuclei[inside] * (1.0 + coarse * grain)
    e[inside] *= 0.3

    strength = rng.uniform(0.93, 1.07, 2)  # small per-image staining differences within a slide
    hv = (stain.haematoxylin * strength[0]).astype(np.float32)
    ev = (stain.eosin * strength[1]).astype(np.float32)
    od = h[..., None] * hv + e[..., None] * ev
    rgb = stain.background.astype(np.float32) * np.exp(-od)
    rgb += rng.integers(-3, 4, rgb.shape, dtype=np.int8)  # sensor noise, std 2
    img = Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8), mode="RGB")
    img = img.filter(ImageFilter.BoxBlur(rng.uniform(0.4, 0.9)))  # focus
    return np.asarray(img)


def _patient_ids(rng: np.random.Generator, count: int) -> list[str]:
    """Real-style patient ids ``<year>-<slide id>`` (``14-22549AB``), unique within a dataset."""
    numbers = rng.choice(np.arange(1000, 30000), size=count, replace=False)
    years = rng.choice([13, 14, 15], size=count, p=[0.1, 0.8, 0.1])
    suffixes = rng.choice(["", "", "", "AB", "CD", "EF", "G", "DE"], size=count)
    return [f"{y}-{n}{s}" for y, n, s in zip(years, numbers, suffixes, strict=True)]


def write_synthetic_breakhis(out_dir: str | Path, n: int, seed: int = 0) -> Path:
    """Write a synthetic BreaKHis tree under ``out_dir`` and return its ``BreaKHis_v1`` folder.

    ``n`` patients per subtype, each with :data:`IMAGES_PER_MAGNIFICATION` images (seq 001, 002) at every
    magnification: ``8 · n · 4 · 2`` PNGs of 700×460 RGB at
    ``BreaKHis_v1/histology_slides/breast/<benign|malignant>/SOB/<subtype folder>/SOB_<B|M>_<code>_<patient>/
    <mag>X/SOB_<B|M>_<code>-<patient>-<mag>-<seq>.png``. The synthetic-data marker is left to the caller.

    Args:
        out_dir: where to write (created if missing).
        n: patients per subtype, >= 1.
        seed: same seed → byte-identical files.

    Raises:
        ValueError: ``n`` < 1.
    """
    if int(n) != n or n < 1:
        raise ValueError(f"n must be a positive integer (patients per subtype), got {n}")
    root = Path(out_dir) / "BreaKHis_v1"
    breast = root / "histology_slides" / "breast"
    ids = _patient_ids(np.random.default_rng([seed, 1000]), len(SUBTYPES) * n)
    count = 0
    for k, code in enumerate(SUBTYPES):
        tumour = tumour_of(code)
        letter = "B" if code in BENIGN else "M"
        for j in range(n):
            patient = ids[k * n + j]
            prng = np.random.default_rng([seed, k, j])
            stain, params = patient_stain(prng), patient_params(prng, code)
            folder = breast / tumour / "SOB" / SUBTYPE_NAMES[code] / f"SOB_{letter}_{code}_{patient}"
            for mag in MAGNIFICATIONS:
                (folder / f"{mag}X").mkdir(parents=True, exist_ok=True)
                for seq in range(1, IMAGES_PER_MAGNIFICATION + 1):
                    rgb = make_image(code, mag, stain, params, np.random.default_rng([seed, k, j, mag, seq]))
                    name = f"SOB_{letter}_{code}-{patient}-{mag}-{seq:03d}.png"
                    Image.fromarray(rgb, mode="RGB").save(folder / f"{mag}X" / name, compress_level=1)
                    count += 1
    logger.info("wrote %d synthetic BreaKHis images of %d patients to %s", count, len(ids), root)
    return root
