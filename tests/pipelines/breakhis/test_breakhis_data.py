"""BreaKHis data: file-name parsing, discovery in the real tree, patient-wise and image-wise splits, class counts
and the synthetic generator (size, determinism, a benign/malignant signal that survives a resize to 64×64)."""

from __future__ import annotations

import logging
import re
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipelines.breakhis.datasets import (
    BENIGN,
    BINARY_LABELS,
    MAGNIFICATIONS,
    MALIGNANT,
    SUBTYPE_NAMES,
    SUBTYPES,
    ImageRecord,
    class_counts,
    discover_images,
    folder_conflicts,
    leaked_patients,
    parse_name,
    split_images,
    split_patients,
)
from pipelines.breakhis.synthetic import IMAGE_SIZE, write_synthetic_breakhis

BREAST = ("histology_slides", "breast")


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A synthetic BreaKHis_v1 tree: one patient per subtype, 2 images at each magnification (64 images)."""
    return write_synthetic_breakhis(tmp_path_factory.mktemp("breakhis"), n=1, seed=0)


# ------------------------------------------------------------------------------------------------ file names


@pytest.mark.parametrize(
    ("name", "tumour", "subtype", "patient", "mag", "seq"),
    [
        ("SOB_B_A-14-22549AB-40-001.png", "benign", "A", "14-22549AB", 40, 1),
        ("SOB_M_DC-14-2523-400-014.png", "malignant", "DC", "14-2523", 400, 14),
        ("SOB_M_LC-14-12204-100-003.png", "malignant", "LC", "14-12204", 100, 3),
        ("SOB_B_PT-14-21998AB-200-012.png", "benign", "PT", "14-21998AB", 200, 12),
        ("SOB_B_TA-14-3411F-40-001.png", "benign", "TA", "14-3411F", 40, 1),
        ("SOB_M_MC-14-13418DE-100-007.png", "malignant", "MC", "14-13418DE", 100, 7),
        ("SOB_M_PC-15-190EF-400-020.png", "malignant", "PC", "15-190EF", 400, 20),
        ("SOB_B_F-14-9133-40-001.PNG", "benign", "F", "14-9133", 40, 1),
        ("sob_m_dc-14-2773-40-005.png", "malignant", "DC", "14-2773", 40, 5),
    ],
)
def test_parse_real_names(name: str, tumour: str, subtype: str, patient: str, mag: int, seq: int) -> None:
    path = Path("BreaKHis_v1/some/folder") / name
    r = parse_name(path)
    assert r == ImageRecord(path, tumour, subtype, patient, mag, seq)
    assert r.binary_index == BINARY_LABELS.index(tumour)
    assert SUBTYPES[r.subtype_index] == subtype


@pytest.mark.parametrize(
    "name",
    [
        "image.png",
        "SOB_B_A-14-22549AB-40-001.jpg",  # not a PNG
        "SOB_B_A-14-22549AB-40-001",
        "SOB_X_A-14-22549AB-40-001.png",  # neither B nor M
        "SOB_B_XY-14-22549AB-40-001.png",  # unknown subtype code
        "SOB_B_A-14-22549AB-50-001.png",  # unknown magnification
        "SOB_B_A_14-22549AB",  # the patient folder
        "SOB_B_A-14-22549AB-40.png",  # no seq
        "CNB_B_A-14-22549AB-40-001.png",
        "xSOB_B_A-14-22549AB-40-001.png",
    ],
)
def test_parse_foreign_names_is_none(name: str) -> None:
    assert parse_name(name) is None


@pytest.mark.parametrize("name", ["SOB_B_DC-14-2523-400-014.png", "SOB_M_A-14-22549AB-40-001.png"])
def test_parse_inconsistent_name_raises_naming_the_file(name: str) -> None:
    with pytest.raises(ValueError, match=name):
        parse_name(Path("x") / name)


@pytest.mark.parametrize(
    ("kwargs", "problem"),
    [
        ({"tumour": "cancer"}, "tumour"),
        ({"subtype": "XY"}, "subtype"),
        ({"tumour": "malignant"}, "is benign"),
        ({"magnification": 50}, "magnification"),
    ],
)
def test_record_validates(kwargs: dict, problem: str) -> None:
    base = {"path": Path("a.png"), "tumour": "benign", "subtype": "A", "patient": "14-1", "magnification": 40, "seq": 1}
    with pytest.raises(ValueError, match=problem):
        ImageRecord(**{**base, **kwargs})


def test_constants_agree() -> None:
    assert set(BENIGN) | set(MALIGNANT) == set(SUBTYPES) == set(SUBTYPE_NAMES)
    assert SUBTYPES[:4] == BENIGN
    assert SUBTYPES[4:] == MALIGNANT
    assert MAGNIFICATIONS == (40, 100, 200, 400)


# ------------------------------------------------------------------------------------------------ discovery


@pytest.mark.parametrize(
    ("parts", "expected"),
    [
        ((), 64),
        (("BreaKHis_v1",), 64),
        (("BreaKHis_v1", "histology_slides"), 64),
        (("BreaKHis_v1", *BREAST), 64),
        (("BreaKHis_v1", *BREAST, "malignant"), 32),
        (("BreaKHis_v1", *BREAST, "benign", "SOB", "adenosis"), 8),
    ],
)
def test_discover_at_any_depth(tree: Path, parts: tuple[str, ...], expected: int) -> None:
    root = tree.parent.joinpath(*parts)
    records = discover_images(root)
    assert len(records) == expected
    assert all(root in r.path.parents for r in records)


def test_discover_counts_and_order(tree: Path) -> None:
    records = discover_images(tree)
    assert len(records) == len(SUBTYPES) * 1 * len(MAGNIFICATIONS) * 2
    assert Counter(r.subtype for r in records) == dict.fromkeys(SUBTYPES, 8)
    assert Counter(r.magnification for r in records) == dict.fromkeys(MAGNIFICATIONS, 16)
    assert len({r.patient for r in records}) == len(SUBTYPES)
    keys = [(r.subtype_index, r.patient, r.magnification, r.seq) for r in records]
    assert keys == sorted(keys)
    assert discover_images(tree) == records


def test_discovered_files_agree_with_their_folders(tree: Path) -> None:
    for r in discover_images(tree):
        assert folder_conflicts(r) == []
        letter = r.tumour[0].upper()
        assert r.path.parent.name == f"{r.magnification}X"
        assert r.path.parent.parent.name == f"SOB_{letter}_{r.subtype}_{r.patient}"
        assert r.path.parents[2].name == SUBTYPE_NAMES[r.subtype]
        assert r.path.parents[4].name == r.tumour
        assert r.path.name.startswith(f"SOB_{letter}_{r.subtype}-{r.patient}-{r.magnification}-")


@pytest.mark.parametrize(("mags", "expected"), [([40], 16), ([100, 400], 32), (MAGNIFICATIONS, 64)])
def test_discover_filters_magnification(tree: Path, mags: list[int], expected: int) -> None:
    records = discover_images(tree, magnifications=mags)
    assert len(records) == expected
    assert {r.magnification for r in records} == set(mags)


@pytest.mark.parametrize("mags", [[50], []])
def test_discover_rejects_unknown_magnification(tree: Path, mags: list[int]) -> None:
    with pytest.raises(ValueError, match="magnifications"):
        discover_images(tree, magnifications=mags)


def test_discover_empty_folder_names_root(tmp_path: Path) -> None:
    (tmp_path / "BreaKHis_v1" / "histology_slides").mkdir(parents=True)
    Image.new("RGB", (4, 4)).save(tmp_path / "BreaKHis_v1" / "not_breakhis.png")
    with pytest.raises(ValueError, match="no BreaKHis images") as err:
        discover_images(tmp_path / "BreaKHis_v1")
    assert str(tmp_path / "BreaKHis_v1") in str(err.value)
    with pytest.raises(ValueError, match="not a folder"):
        discover_images(tmp_path / "missing")


def test_discover_warns_on_folder_disagreement_and_keeps_the_name(
    tree: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    src = next(iter(discover_images(tree, magnifications=[40])))
    wrong = tmp_path / "breast" / "malignant" / "SOB" / "ductal_carcinoma" / "100X"
    wrong.mkdir(parents=True)
    shutil.copy(src.path, wrong / src.path.name)
    with caplog.at_level(logging.WARNING, logger="pipelines.breakhis.datasets"):
        (r,) = discover_images(tmp_path)
    assert (r.magnification, r.subtype, r.tumour) == (40, src.subtype, "benign")
    for problem in ("folder 100X", "folder ductal_carcinoma", "folder malignant"):
        assert problem in caplog.text


def test_discover_refuses_an_inconsistent_name(tree: Path, tmp_path: Path) -> None:
    src = next(iter(discover_images(tree)))
    shutil.copy(src.path, tmp_path / "SOB_B_DC-14-1-40-001.png")
    with pytest.raises(ValueError, match=re.escape("SOB_B_DC-14-1-40-001.png")):
        discover_images(tmp_path)


# ------------------------------------------------------------------------------------------------ splits

#: patients per subtype in the real BreaKHis (24 benign, 58 malignant)
REAL_PATIENTS = {"A": 4, "F": 10, "PT": 3, "TA": 7, "DC": 38, "LC": 5, "MC": 9, "PC": 6}


def _records(patients: dict[str, int], seed: int = 0) -> list[ImageRecord]:
    """Records without files: a varying number of images per patient and magnification."""
    rng = np.random.default_rng(seed)
    out = []
    for code, count in patients.items():
        tumour = "benign" if code in BENIGN else "malignant"
        for j in range(count):
            patient = f"14-{code}{j}"
            for mag in MAGNIFICATIONS:
                for seq in range(1, int(rng.integers(2, 9))):
                    out.append(ImageRecord(Path(f"{patient}-{mag}-{seq}.png"), tumour, code, patient, mag, seq))
    return out


@pytest.mark.parametrize("seed", [0, 1, 2, 7])
@pytest.mark.parametrize(("val", "test"), [(0.15, 0.15), (0.2, 0.1), (0.1, 0.3), (0.0, 0.3)])
def test_patient_split_is_patient_wise_and_stratified(seed: int, val: float, test: float) -> None:
    records = _records(REAL_PATIENTS)
    splits = split_patients(records, val, test, seed)
    assert sum(len(s) for s in splits) == len(records)
    assert sorted(map(id, (r for s in splits for r in s))) == sorted(map(id, records))
    for i in range(3):
        for j in range(i + 1, 3):
            assert leaked_patients(splits[i], splits[j]) == set()
    wanted = [True, val > 0, test > 0]  # every subtype has >= 3 patients
    for code in REAL_PATIENTS:
        assert [any(r.subtype == code for r in s) for s in splits] == wanted, code
    # the large subtype follows the fractions
    dc_test = {r.patient for r in splits[2] if r.subtype == "DC"}
    assert len(dc_test) == int(np.floor(38 * test + 0.5))


def test_patient_split_same_seed_same_split() -> None:
    records = _records(REAL_PATIENTS)
    a = split_patients(records, 0.15, 0.15, seed=3)
    assert split_patients(records, 0.15, 0.15, seed=3) == a
    others = [split_patients(records, 0.15, 0.15, seed=s) for s in range(4, 8)]
    assert any(o != a for o in others)


def test_patient_split_keeps_small_subtypes_in_train() -> None:
    records = _records({"A": 1, "F": 2, "PT": 3, "DC": 4})
    train, val, test = split_patients(records, 0.3, 0.3, seed=0)
    assert {r.subtype for r in train} == {"A", "F", "PT", "DC"}
    assert {r.subtype for r in val} >= {"PT", "DC"}
    assert {r.subtype for r in test} >= {"PT", "DC"}
    assert "A" not in {r.subtype for r in val + test}


def test_patient_with_two_subtypes_stays_whole() -> None:
    records = _records({"DC": 6, "LC": 6})
    extra = ImageRecord(Path("x.png"), "malignant", "LC", "14-DC0", 40, 99)  # patient 14-DC0 also has LC images
    for seed in range(5):
        splits = split_patients([*records, extra], 0.3, 0.3, seed)
        homes = [k for k, s in enumerate(splits) if any(r.patient == "14-DC0" for r in s)]
        assert len(homes) == 1


@pytest.mark.parametrize(("val", "test"), [(-0.1, 0.2), (0.2, 1.0), (0.5, 0.5), (0.7, 0.4)])
def test_split_rejects_bad_fractions(val: float, test: float) -> None:
    records = _records({"A": 3})
    for split in (split_patients, split_images):
        with pytest.raises(ValueError, match="fraction"):
            split(records, val, test, 0)


@pytest.mark.parametrize("seed", [0, 1])
def test_image_split_leaks_patients_and_is_stratified(tree: Path, seed: int) -> None:
    records = discover_images(tree)
    train, val, test = split_images(records, 0.25, 0.25, seed)
    assert leaked_patients(train, test)
    assert leaked_patients(train, val)
    for code in SUBTYPES:  # 8 images per subtype → 2 val, 2 test, 4 train
        assert [sum(r.subtype == code for r in s) for s in (train, val, test)] == [4, 2, 2]
    assert split_images(records, 0.25, 0.25, seed) == (train, val, test)


def test_image_split_of_many_images_follows_fractions() -> None:
    records = _records(REAL_PATIENTS)
    _, val, test = split_images(records, 0.1, 0.2, seed=0)
    per_subtype = Counter(r.subtype for r in records)
    for code, n in per_subtype.items():
        assert sum(r.subtype == code for r in test) == int(np.floor(n * 0.2 + 0.5))
        assert sum(r.subtype == code for r in val) == int(np.floor(n * 0.1 + 0.5))


def test_class_counts_closed_form(tree: Path) -> None:
    counts = {"A": 3, "F": 0, "PT": 1, "TA": 2, "DC": 5, "LC": 0, "MC": 1, "PC": 4}
    records = [
        ImageRecord(Path(f"{c}{i}.png"), "benign" if c in BENIGN else "malignant", c, f"14-{c}", 40, i)
        for c, k in counts.items()
        for i in range(k)
    ]
    np.testing.assert_array_equal(class_counts(records, "subtype"), [3, 0, 1, 2, 5, 0, 1, 4])
    np.testing.assert_array_equal(class_counts(records, "binary"), [6, 10])
    assert class_counts([], "subtype").shape == (8,)
    np.testing.assert_array_equal(class_counts(discover_images(tree), "binary"), [32, 32])
    np.testing.assert_array_equal(class_counts(discover_images(tree), "subtype"), [8] * 8)
    with pytest.raises(ValueError, match="target"):
        class_counts(records, "grade")


# ------------------------------------------------------------------------------------------------ synthetic


def test_synthetic_images_are_breakhis_sized_rgb(tree: Path) -> None:
    for r in discover_images(tree, magnifications=[40, 400])[::3]:
        with Image.open(r.path) as img:
            assert img.format == "PNG"
            assert img.size == IMAGE_SIZE == (700, 460)
            assert img.mode == "RGB"


def test_synthetic_is_byte_identical_for_a_seed(tree: Path, tmp_path: Path) -> None:
    again = write_synthetic_breakhis(tmp_path, n=1, seed=0)
    files = sorted(p.relative_to(tree) for p in tree.rglob("*.png"))
    assert files == sorted(p.relative_to(again) for p in again.rglob("*.png"))
    assert all((tree / f).read_bytes() == (again / f).read_bytes() for f in files)


def test_synthetic_seed_changes_images() -> None:
    from pipelines.breakhis.synthetic import make_image, patient_params, patient_stain

    def image(seed: int) -> np.ndarray:
        rng = np.random.default_rng([seed, 4, 0])
        stain, params = patient_stain(rng), patient_params(rng, "DC")
        return make_image("DC", 100, stain, params, np.random.default_rng([seed, 4, 0, 100, 1]))

    a, b = image(0), image(1)
    assert a.shape == (460, 700, 3)
    assert a.dtype == np.uint8
    assert np.array_equal(a, image(0))
    assert not np.array_equal(a, b)


def test_synthetic_rejects_bad_n(tmp_path: Path) -> None:
    for n in (0, -1, 1.5):
        with pytest.raises(ValueError, match="n must"):
            write_synthetic_breakhis(tmp_path, n=n)


def _dark_purple_fraction(path: Path) -> float:
    """Pixels of a 64×64 thumbnail that are dark and bluer than green: haematoxylin-stained nuclei."""
    with Image.open(path) as img:
        a = np.asarray(img.convert("RGB").resize((64, 64), Image.Resampling.BILINEAR), dtype=np.float32)
    return float(((a.mean(axis=2) < 140) & (a[..., 2] > a[..., 1] + 10)).mean())


def test_synthetic_malignant_is_more_nuclear_at_64px(tree: Path) -> None:
    records = discover_images(tree)
    frac = np.array([_dark_purple_fraction(r.path) for r in records])
    malignant = np.array([r.binary_index for r in records]) == 1
    mags = np.array([r.magnification for r in records])
    assert frac[malignant].mean() > 1.5 * frac[~malignant].mean()
    for mag in MAGNIFICATIONS:  # the signal is there at every magnification
        at = mags == mag
        assert frac[at & malignant].mean() > 1.3 * frac[at & ~malignant].mean()


def test_synthetic_colour_varies_per_patient_not_per_class() -> None:
    from pipelines.breakhis.synthetic import patient_stain

    def stains(k: int) -> np.ndarray:
        return np.array([patient_stain(np.random.default_rng([0, k, j])).haematoxylin for j in range(30)])

    benign, malignant = stains(SUBTYPES.index("A")), stains(SUBTYPES.index("DC"))
    assert benign.std(axis=0).min() > 0.02  # patients differ
    # same distribution for both classes: the class means differ by much less than the patient spread
    assert np.all(np.abs(benign.mean(axis=0) - malignant.mean(axis=0)) < benign.std(axis=0))
