"""BreaKHis_v1 on disk → image records, patient-wise and image-wise splits, class counts.

The real tree (Spanhol et al. 2016; 7,909 PNGs of 82 patients, 700×460 RGB)::

    BreaKHis_v1/histology_slides/breast/{benign,malignant}/SOB/<subtype folder>/<patient folder>/<mag>X/<file>.png
    e.g. .../benign/SOB/adenosis/SOB_B_A_14-22549AB/40X/SOB_B_A-14-22549AB-40-001.png

Every fact is in the file name ``SOB_<B|M>_<subtype code>-<year>-<slide id>-<magnification>-<seq>.png``; the
patient is ``<year>-<slide id>`` (``14-22549AB``). The file name is authoritative: the folders are only
cross-checked. Papers that report near-perfect accuracy mostly split images at random, which puts images of one
patient on both sides of the split; :func:`split_patients` is the honest protocol, :func:`split_images` the
comparison with those figures.
"""

from __future__ import annotations

import logging
import re
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import numpy as np

from models.efficientnet import BINARY_LABELS, SUBTYPES

__all__ = [
    "BENIGN",
    "BINARY_LABELS",
    "MAGNIFICATIONS",
    "MALIGNANT",
    "SUBTYPES",
    "SUBTYPE_NAMES",
    "ImageRecord",
    "class_counts",
    "discover_images",
    "folder_conflicts",
    "leaked_patients",
    "parse_name",
    "patient_subtypes",
    "split_images",
    "split_patients",
    "tumour_of",
]

logger = logging.getLogger(__name__)
_T = TypeVar("_T")

# SUBTYPES (model order A, F, PT, TA, DC, LC, MC, PC) and BINARY_LABELS ("benign", "malignant") have their one
# home in models/efficientnet.py, beside the heads they label; they are re-exported here.
#: subtype code → the folder BreaKHis keeps it in
SUBTYPE_NAMES: dict[str, str] = {
    "A": "adenosis",
    "F": "fibroadenoma",
    "PT": "phyllodes_tumor",
    "TA": "tubular_adenoma",
    "DC": "ductal_carcinoma",
    "LC": "lobular_carcinoma",
    "MC": "mucinous_carcinoma",
    "PC": "papillary_carcinoma",
}
BENIGN: tuple[str, ...] = ("A", "F", "PT", "TA")
MALIGNANT: tuple[str, ...] = ("DC", "LC", "MC", "PC")
#: objective magnifications, as in the ``<mag>X`` folders and the file names
MAGNIFICATIONS: tuple[int, ...] = (40, 100, 200, 400)

_TUMOUR_LETTER = {"B": "benign", "M": "malignant"}
_CODES = "|".join(sorted(SUBTYPES, key=len, reverse=True))
_MAGS = "|".join(str(m) for m in MAGNIFICATIONS)
#: SOB_B_A-14-22549AB-40-001.png
_FILE_RE = re.compile(
    rf"^SOB_(?P<letter>[BM])_(?P<code>{_CODES})-(?P<year>\d+)-(?P<slide>[0-9A-Z]+)-(?P<mag>{_MAGS})-(?P<seq>\d+)\.png$",
    re.IGNORECASE,
)
#: SOB_B_A_14-22549AB (patient folder)
_PATIENT_DIR_RE = re.compile(r"^SOB_(?P<letter>[BM])_(?P<code>[A-Z]+)_(?P<patient>\d+-[0-9A-Z]+)$", re.IGNORECASE)
_MAG_DIR_RE = re.compile(r"^(?P<mag>\d+)X$", re.IGNORECASE)
_FOLDER_CODE = {name: code for code, name in SUBTYPE_NAMES.items()}
#: how many folder/file disagreements are spelled out in the log before only the count is given
_MAX_LOGGED = 5


def tumour_of(subtype: str) -> str:
    """``"benign"`` or ``"malignant"`` for a subtype code.

    Raises:
        ValueError: an unknown code.
    """
    if subtype in BENIGN:
        return "benign"
    if subtype in MALIGNANT:
        return "malignant"
    raise ValueError(f"subtype must be one of {', '.join(SUBTYPES)}, got {subtype!r}")


@dataclass(frozen=True)
class ImageRecord:
    """One BreaKHis image and what its file name says about it.

    Attributes:
        path: the PNG.
        tumour: ``"benign"`` or ``"malignant"``.
        subtype: subtype code, one of :data:`SUBTYPES`.
        patient: ``<year>-<slide id>``, e.g. ``"14-22549AB"``; the key for patient-wise splits.
        magnification: 40, 100, 200 or 400.
        seq: the image's number within its patient and magnification.

    Raises:
        ValueError: an unknown tumour, subtype or magnification, or a tumour that contradicts the subtype.
    """

    path: Path
    tumour: str
    subtype: str
    patient: str
    magnification: int
    seq: int

    def __post_init__(self) -> None:
        if self.tumour not in BINARY_LABELS:
            raise ValueError(f"tumour must be one of {', '.join(BINARY_LABELS)}, got {self.tumour!r}")
        if tumour_of(self.subtype) != self.tumour:
            raise ValueError(f"subtype {self.subtype} is {tumour_of(self.subtype)}, not {self.tumour}")
        if self.magnification not in MAGNIFICATIONS:
            raise ValueError(
                f"magnification must be one of {', '.join(map(str, MAGNIFICATIONS))}, got {self.magnification}"
            )

    @property
    def binary_index(self) -> int:
        """Index of the tumour class in :data:`BINARY_LABELS` (0 benign, 1 malignant)."""
        return BINARY_LABELS.index(self.tumour)

    @property
    def subtype_index(self) -> int:
        """Index of the subtype in :data:`SUBTYPES` (the 8-class head's order)."""
        return SUBTYPES.index(self.subtype)


def parse_name(path: str | Path) -> ImageRecord | None:
    """The record a BreaKHis file name describes; only the name is read, never the folders or the file.

    Names are matched case-insensitively (``.PNG`` too); the subtype code and the patient id are upper-cased.

    Args:
        path: a file path or bare name, e.g. ``SOB_B_A-14-22549AB-40-001.png``.

    Returns:
        The record (its ``path`` is ``path``), or None when the name is not a BreaKHis name (another pattern, an
        unknown subtype code or magnification).

    Raises:
        ValueError: naming the file, when the name is a BreaKHis name whose B/M letter contradicts its subtype
            code (``SOB_B_DC-...``). Such a file is mislabelled, not foreign: training on either reading would be
            wrong and silently skipping it would hide the problem, so the caller must fix or remove it.
    """
    path = Path(path)
    m = _FILE_RE.match(path.name)
    if m is None:
        return None
    code = m["code"].upper()
    tumour = _TUMOUR_LETTER[m["letter"].upper()]
    if tumour_of(code) != tumour:
        raise ValueError(
            f"{path}: inconsistent BreaKHis name: {m['letter'].upper()} ({tumour}) but subtype {code} is "
            f"{tumour_of(code)}"
        )
    return ImageRecord(
        path=path,
        tumour=tumour,
        subtype=code,
        patient=f"{m['year']}-{m['slide'].upper()}",
        magnification=int(m["mag"]),
        seq=int(m["seq"]),
    )


def _nearest(parts: Sequence[str], match: Callable[[str], _T | None]) -> _T | None:
    """The first non-None ``match(part)`` walking from the file's parent folder upwards."""
    for part in reversed(parts):
        found = match(part)
        if found is not None:
            return found
    return None


def folder_conflicts(record: ImageRecord) -> list[str]:
    """Where the folders above a file disagree with its name (empty when they agree or are absent).

    Checked, each against the nearest such folder: ``<mag>X``, the subtype folder (``adenosis``...), ``benign`` /
    ``malignant`` and the patient folder ``SOB_<B|M>_<code>_<patient>``.
    """
    parts = record.path.parts[:-1]
    problems: list[str] = []
    mag = _nearest(parts, lambda p: int(m["mag"]) if (m := _MAG_DIR_RE.match(p)) else None)
    if mag is not None and mag != record.magnification:
        problems.append(f"folder {mag}X but magnification {record.magnification} in the name")
    code = _nearest(parts, lambda p: _FOLDER_CODE.get(p.lower()))
    if code is not None and code != record.subtype:
        problems.append(f"folder {SUBTYPE_NAMES[code]} but subtype {record.subtype} in the name")
    tumour = _nearest(parts, lambda p: p.lower() if p.lower() in BINARY_LABELS else None)
    if tumour is not None and tumour != record.tumour:
        problems.append(f"folder {tumour} but {record.tumour} in the name")
    patient_dir = _nearest(parts, _PATIENT_DIR_RE.match)
    if patient_dir is not None:
        expected = (record.tumour[0].upper(), record.subtype, record.patient)
        found = (patient_dir["letter"].upper(), patient_dir["code"].upper(), patient_dir["patient"].upper())
        if found != expected:
            problems.append(f"patient folder {patient_dir[0]} but SOB_{'_'.join(expected)} from the name")
    return problems


def _check_magnifications(magnifications: Iterable[int] | None) -> tuple[int, ...] | None:
    if magnifications is None:
        return None
    mags = tuple(int(m) for m in magnifications)
    bad = [m for m in mags if m not in MAGNIFICATIONS]
    if bad or not mags:
        raise ValueError(
            f"magnifications must be a non-empty subset of {', '.join(map(str, MAGNIFICATIONS))}, got {list(mags)}"
        )
    return mags


def _sort_key(r: ImageRecord) -> tuple:
    return (r.subtype_index, r.patient, r.magnification, r.seq, str(r.path))


def discover_images(root: str | Path, magnifications: Iterable[int] | None = None) -> list[ImageRecord]:
    """Every BreaKHis image under ``root``, sorted by (subtype, patient, magnification, seq, path).

    ``root`` may be ``BreaKHis_v1``, ``histology_slides``, ``breast``, any folder above them or below them (a
    subtype or patient folder): all ``*.png`` files (any case) whose names parse are taken, other PNGs are
    ignored. Where the folders above a file disagree with its name (a ``40X`` folder holding a ``-100-`` file,
    a ``benign`` folder holding ``SOB_M_...``), a warning is logged and the name's facts are kept.

    Args:
        root: the folder to search.
        magnifications: keep only these (e.g. ``[40]``); None keeps all four.

    Returns:
        The records.

    Raises:
        ValueError: ``root`` is not a folder, a magnification is not one of :data:`MAGNIFICATIONS`, no image
            was found (the message names ``root``), or a file name contradicts itself (see :func:`parse_name`).
    """
    root = Path(root)
    if not root.is_dir():
        raise ValueError(f"{root}: not a folder (expected a BreaKHis_v1 tree)")
    mags = _check_magnifications(magnifications)
    records: list[ImageRecord] = []
    foreign = 0
    conflicts: list[str] = []
    for path in root.rglob("*"):
        if path.suffix.lower() != ".png" or not path.is_file():
            continue
        record = parse_name(path)
        if record is None:
            foreign += 1
            continue
        conflicts.extend(f"{path}: {problem}" for problem in folder_conflicts(record))
        if mags is None or record.magnification in mags:
            records.append(record)
    if foreign:
        logger.info("%s: ignored %d PNG files without a BreaKHis name", root, foreign)
    if conflicts:
        shown = "; ".join(conflicts[:_MAX_LOGGED])
        more = f" (and {len(conflicts) - _MAX_LOGGED} more)" if len(conflicts) > _MAX_LOGGED else ""
        logger.warning(
            "%s: %d folder/file-name disagreements, file names kept: %s%s", root, len(conflicts), shown, more
        )
    if not records:
        at = f" at magnification {', '.join(f'{m}X' for m in mags)}" if mags else ""
        raise ValueError(
            f"{root}: no BreaKHis images{at} found (expected SOB_<B|M>_<subtype>-<year>-<slide>-<mag>-<seq>.png files)"
        )
    records.sort(key=_sort_key)
    logger.info("%s: %d images of %d patients", root, len(records), len({r.patient for r in records}))
    return records


def _check_fractions(val_fraction: float, test_fraction: float) -> None:
    for name, value in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if not 0.0 <= value < 1.0:
            raise ValueError(f"{name} must be in [0, 1), got {value}")
    if val_fraction + test_fraction >= 1.0:
        raise ValueError(
            f"val_fraction + test_fraction must be below 1 to leave training data, got {val_fraction} + {test_fraction}"
        )


def _split_sizes(n: int, val_fraction: float, test_fraction: float) -> tuple[int, int]:
    """(n_val, n_test) for a stratum of ``n`` units: rounded fractions, at least one each when ``n >= 3`` (and the
    fraction is not 0), and always at least one unit left for training."""
    n_val = int(np.floor(n * val_fraction + 0.5))
    n_test = int(np.floor(n * test_fraction + 0.5))
    floor_val = floor_test = 0
    if n >= 3:
        floor_val, floor_test = int(val_fraction > 0), int(test_fraction > 0)
        n_val, n_test = max(n_val, floor_val), max(n_test, floor_test)
    while n_val + n_test > max(n - 1, 0):
        if n_val >= n_test and n_val > floor_val:
            n_val -= 1
        elif n_test > floor_test:
            n_test -= 1
        else:
            n_val -= 1
    return n_val, n_test


def _stratified(groups: dict[str, list], val_fraction: float, test_fraction: float, seed: int) -> tuple[set, set]:
    """Shuffle each subtype's units with one generator (subtypes in model order) → (val units, test units)."""
    rng = np.random.default_rng(seed)
    val: set = set()
    test: set = set()
    for code in SUBTYPES:
        units = groups.get(code, [])
        if not units:
            continue
        order = [units[i] for i in rng.permutation(len(units))]
        n_val, n_test = _split_sizes(len(units), val_fraction, test_fraction)
        test.update(order[:n_test])
        val.update(order[n_test : n_test + n_val])
    return val, test


def patient_subtypes(records: Iterable[ImageRecord]) -> dict[str, str]:
    """Each patient's subtype: the one most of its images have (ties: model order).

    A patient id is the split key; should one appear under two subtypes, it is kept whole in one split and
    stratified by its main subtype (a warning names it).
    """
    per_patient: dict[str, Counter] = defaultdict(Counter)
    for r in records:
        per_patient[r.patient][r.subtype] += 1
    out: dict[str, str] = {}
    for patient, counts in per_patient.items():
        if len(counts) > 1:
            logger.warning("patient %s has images of several subtypes %s", patient, dict(counts))
        out[patient] = min(counts, key=lambda c: (-counts[c], SUBTYPES.index(c)))
    return out


def split_patients(
    records: Sequence[ImageRecord], val_fraction: float, test_fraction: float, seed: int = 0
) -> tuple[list[ImageRecord], list[ImageRecord], list[ImageRecord]]:
    """Patient-wise (train, val, test) split, stratified by subtype: no patient has images in two splits.

    Each subtype's patients are shuffled (``numpy.random.default_rng(seed)``, subtypes in model order) and
    ``round(n · fraction)`` of them go to test and to val, the rest to train; a subtype with 3 or more patients
    puts at least one patient in every split whose fraction is not 0, and every subtype keeps at least one
    training patient. With few patients per subtype (3 for PT in the real set) the image fractions follow the
    patients' image counts, not the requested fractions.

    Args:
        records: the images, e.g. from :func:`discover_images`.
        val_fraction: fraction of each subtype's patients for validation, in [0, 1).
        test_fraction: fraction for test; ``val_fraction + test_fraction < 1``.
        seed: the shuffle's seed (same seed and records → same split).

    Returns:
        (train, val, test) records, each in the order of ``records``.

    Raises:
        ValueError: a fraction out of range.
    """
    _check_fractions(val_fraction, test_fraction)
    main = patient_subtypes(records)
    groups: dict[str, list[str]] = defaultdict(list)
    for patient in sorted(main):
        groups[main[patient]].append(patient)
    val, test = _stratified(groups, val_fraction, test_fraction, seed)
    splits: tuple[list[ImageRecord], list[ImageRecord], list[ImageRecord]] = ([], [], [])
    for r in records:
        splits[2 if r.patient in test else 1 if r.patient in val else 0].append(r)
    return splits


def split_images(
    records: Sequence[ImageRecord], val_fraction: float, test_fraction: float, seed: int = 0
) -> tuple[list[ImageRecord], list[ImageRecord], list[ImageRecord]]:
    """Image-wise (train, val, test) split, stratified by subtype, to compare with papers that split this way.

    Warning: this leaks patients across splits. Images of one patient (often near-duplicate fields of one
    slide at four magnifications) land in train and test, so test accuracy measures recognising patients
    rather than tumours and is optimistic; :func:`leaked_patients` shows the overlap. Use
    :func:`split_patients` for an honest estimate.

    Each subtype's images are shuffled (``numpy.random.default_rng(seed)``) and split with the fractions as in
    :func:`split_patients` (at least one image per split for a subtype with 3 or more images).

    Returns:
        (train, val, test) records, each in the order of ``records``.

    Raises:
        ValueError: a fraction out of range.
    """
    _check_fractions(val_fraction, test_fraction)
    groups: dict[str, list[int]] = defaultdict(list)
    for i, r in enumerate(records):
        groups[r.subtype].append(i)
    val, test = _stratified(groups, val_fraction, test_fraction, seed)
    splits: tuple[list[ImageRecord], list[ImageRecord], list[ImageRecord]] = ([], [], [])
    for i, r in enumerate(records):
        splits[2 if i in test else 1 if i in val else 0].append(r)
    return splits


def leaked_patients(a: Iterable[ImageRecord], b: Iterable[ImageRecord]) -> set[str]:
    """Patients with images in both ``a`` and ``b`` (empty for a patient-wise split)."""
    return {r.patient for r in a} & {r.patient for r in b}


def class_counts(records: Iterable[ImageRecord], target: str) -> np.ndarray:
    """Images per class: (2,) benign, malignant for ``"binary"``; (8,) in :data:`SUBTYPES` order for
    ``"subtype"``; int64.

    Raises:
        ValueError: another target.
    """
    if target == "binary":
        index, n = (r.binary_index for r in records), len(BINARY_LABELS)
    elif target == "subtype":
        index, n = (r.subtype_index for r in records), len(SUBTYPES)
    else:
        raise ValueError(f"target must be 'binary' or 'subtype', got {target!r}")
    return np.bincount(np.fromiter(index, dtype=np.int64), minlength=n).astype(np.int64)
