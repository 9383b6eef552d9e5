"""The NumPy WFDB reader against ``wfdb.rdrecord``: every accepted format, byte offsets, several files, samples per
frame, skew, invalid samples, packed groups cut at the window's edges; and no ``import wfdb`` when reading.

Records are written with ``wfdb.wrsamp`` where it can, else byte by byte from the WFDB spec (``signal(5)``) by
:func:`encode` below (independent of the reader's decoder). ``read_wfdb`` must equal ``rdrecord``'s ``p_signal``
bit for bit, NaN for NaN, over the central window and the 12 lead channels.
"""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import wfdb

from models.protoecgnet import LEADS
from pipelines.common.errors import InputError
from pipelines.ecg.readers import MAX_READ_SECONDS, EcgRecord, parse_wfdb_header, read_wfdb

REPO = Path(__file__).resolve().parents[3]
FORMATS = ["16", "61", "80", "160", "24", "32", "212", "310", "311"]
BITS = {"16": 16, "61": 16, "80": 8, "160": 16, "24": 24, "32": 32, "212": 12, "310": 10, "311": 10}
FS = 100


# -- writing records ------------------------------------------------------------------------------------------------
def encode(fmt: str, samples: np.ndarray) -> bytes:
    """The bytes of a signal file holding ``samples`` (flat, frame after frame) in format ``fmt`` (``signal(5)``)."""
    v = np.asarray(samples, np.int64)
    if fmt in ("16", "61", "32"):
        return v.astype({"16": "<i2", "61": ">i2", "32": "<i4"}[fmt]).tobytes()
    if fmt == "80":
        return (v + 128).astype(np.uint8).tobytes()
    if fmt == "160":
        return (v + 32768).astype("<u2").tobytes()
    if fmt == "24":
        u = v & 0xFFFFFF
        return np.stack([u & 0xFF, (u >> 8) & 0xFF, u >> 16], axis=1).astype(np.uint8).tobytes()
    n = len(v)
    group = 2 if fmt == "212" else 3
    u = np.concatenate([v, np.zeros(-n % group, np.int64)]).reshape(-1, group)
    if fmt == "212":
        u = u & 0xFFF
        a, b = u[:, 0], u[:, 1]
        out = np.stack([a & 0xFF, (a >> 8) | ((b >> 8) << 4), b & 0xFF], axis=1)
        size = (n // 2) * 3 + (0, 2)[n % 2]
    else:
        u = u & 0x3FF
        a, b, c = u[:, 0], u[:, 1], u[:, 2]
        if fmt == "310":
            w0 = (a << 1) | ((c & 0x1F) << 11)
            w1 = (b << 1) | ((c >> 5) << 11)
            out = np.stack([w0 & 0xFF, w0 >> 8, w1 & 0xFF, w1 >> 8], axis=1)
            size = (n // 3) * 4 + (0, 2, 4)[n % 3]
        else:
            w = a | (b << 10) | (c << 20)
            out = np.stack([(w >> (8 * k)) & 0xFF for k in range(4)], axis=1)
            size = (n // 3) * 4 + (0, 2, 3)[n % 3]
    return out.astype(np.uint8).tobytes()[:size]


def digital(fmt: str, n: int, rng: np.random.Generator, invalid: float = 0.02) -> np.ndarray:
    """``n`` samples over the whole range of ``fmt``, about ``invalid`` of them the invalid-sample value."""
    lo, hi = -(2 ** (BITS[fmt] - 1)), 2 ** (BITS[fmt] - 1) - 1
    v = rng.integers(lo + 1, hi, n, endpoint=True)
    v[rng.random(n) < invalid] = lo
    v[:4] = [lo + 1, hi, -1, 0]
    return v


@dataclass
class Sig:
    """One signal line: its name and how it is stored."""

    name: str
    spf: int = 1
    skew: int = 0
    gain: str = "200"
    baseline: int | None = 0
    adc_zero: int = 0
    units: str = "mV"


@dataclass
class File:
    """One signal file: format, byte offset (filled with junk) and its signals in frame order."""

    fmt: str
    sigs: list[Sig]
    offset: int = 0


def leads(*extra: str) -> list[Sig]:
    """The 12 leads in canonical order, then signals named ``extra``."""
    return [Sig(name) for name in (*LEADS, *extra)]


def write_record(
    folder: Path,
    files: dict[str, File],
    n: int,
    seed: int = 0,
    with_length: bool = True,
    invalid: float = 0.02,
) -> Path:
    """A record ``r`` of ``n`` frames at ``FS`` Hz; returns its ``.hea``."""
    rng = np.random.default_rng(seed)
    n_sig = sum(len(f.sigs) for f in files.values())
    lines = [f"r {n_sig} {FS}" + (f" {n}" if with_length else "")]
    for name, f in files.items():
        per_frame = sum(s.spf for s in f.sigs)
        junk = bytes(rng.integers(0, 256, f.offset, dtype=np.uint8))
        (folder / name).write_bytes(junk + encode(f.fmt, digital(f.fmt, n * per_frame, rng, invalid)))
        for s in f.sigs:
            field = f.fmt + (f"x{s.spf}" if s.spf > 1 else "") + (f":{s.skew}" if s.skew else "")
            field += f"+{f.offset}" if f.offset else ""
            gain = s.gain + (f"({s.baseline})" if s.baseline is not None else "") + f"/{s.units}"
            lines.append(f"{name} {field} {gain} {BITS[f.fmt]} {s.adc_zero} 0 0 0 {s.name}")
    hea = folder / "r.hea"
    hea.write_text("\n".join(lines) + "\n")
    return hea


def window(n: int) -> tuple[int, int]:
    w = min(n, round(MAX_READ_SECONDS * FS))
    return (n - w) // 2, (n - w) // 2 + w


def reference(hea: Path, with_length: bool = True) -> np.ndarray:
    """``wfdb.rdrecord``'s physical values of the 12 leads (file order) over the central window, (leads, n)."""
    base = str(hea.with_suffix(""))
    header = wfdb.rdheader(base)
    n = header.sig_len if with_length else read_wfdb(hea).total_samples
    assert n is not None
    start, stop = window(n)
    channels = sorted(header.sig_name.index(lead) for lead in LEADS)
    rec = wfdb.rdrecord(base, sampfrom=start, sampto=stop if with_length else None, channels=channels)
    return np.asarray(rec.p_signal).T


def assert_matches_wfdb(hea: Path, with_length: bool = True) -> EcgRecord:
    rec = read_wfdb(hea)
    ref = reference(hea, with_length)
    assert rec.signal.dtype == np.float64
    assert rec.signal.shape == ref.shape
    np.testing.assert_array_equal(rec.signal, ref)
    assert np.isfinite(ref).any()
    return rec


# -- every format ---------------------------------------------------------------------------------------------------
# 13 signals a frame: records of 1000 and 1001 frames are read whole (a last packed group cut after 1 or 2 samples);
# 6101, 6103 and 6105 frames (> 60 s) are read from frame 50, 51, 52: flat sample 650, 663, 676, so the window starts
# and ends inside a 212 pair (663) and at each place in a 310/311 triplet
@pytest.mark.parametrize("n", [1000, 1001, 6101, 6103, 6105])
@pytest.mark.parametrize("fmt", FORMATS)
def test_every_format_matches_wfdb(tmp_path: Path, fmt: str, n: int) -> None:
    sigs = leads("RESP")
    sigs[0].gain, sigs[0].baseline = "1000.5", -17  # non-integer gain, a baseline
    sigs[5].gain = "-300"
    hea = write_record(tmp_path, {"r.dat": File(fmt, sigs)}, n, seed=n)
    rec = assert_matches_wfdb(hea)
    assert rec.leads == list(LEADS)
    assert rec.total_samples == n
    assert rec.signal.shape == (12, min(n, 6000))
    assert np.isnan(rec.signal).any()  # the invalid-sample value reads as NaN


@pytest.mark.parametrize("fmt", ["16", "80", "212", "24", "32"])
def test_records_written_by_wfdb_match(tmp_path: Path, fmt: str) -> None:
    rng = np.random.default_rng(int(fmt))
    n = 6103
    d = np.stack([digital(fmt, n, rng) for _ in range(13)], axis=1)
    wfdb.wrsamp(
        "r",
        fs=FS,
        units=["mV"] * 13,
        sig_name=[*LEADS, "RESP"],
        d_signal=d,
        fmt=[fmt] * 13,
        adc_gain=[200.0 + i for i in range(13)],
        baseline=[i - 6 for i in range(13)],
        write_dir=str(tmp_path),
    )
    rec = assert_matches_wfdb(tmp_path / "r.hea")
    assert np.isnan(rec.signal).any()


# -- layouts --------------------------------------------------------------------------------------------------------
def _layout(long: bool) -> dict[str, File]:
    """Four files of different formats, byte offsets, samples per frame, skews and ADC-zero baselines.

    wfdb reads a skew only when the skewed signals of one file share it, and a skewed signal with several samples
    per frame only away from the record's end: the short record (read to its end) skews single-sample signals.
    """
    s = leads()
    s[0].spf, s[1].spf = 2, 3
    s[2].baseline, s[2].adc_zero = None, -37  # no baseline: the ADC zero
    s[3].skew = s[4].skew = 3
    s[4].spf = 2 if long else 1
    s[5].baseline, s[5].adc_zero = None, 0
    s[6].spf, s[6].skew = (4, 2) if long else (4, 0)
    s[7].skew = 2
    s[8].spf = 2
    s[9].skew = s[11].skew = 5
    return {
        "a.dat": File("212", [s[0], s[1], Sig("RESP", spf=2), s[2]], offset=7),
        "b.dat": File("16", [s[3], s[4], s[5]], offset=512),
        "c.dat": File("311", [s[6], s[7], s[8]], offset=3),
        "d.dat": File("61", [s[9], s[10], s[11]]),
        "e.dat": File("80", [Sig("ABP"), Sig("PLETH")]),  # no lead: not read by either
    }


@pytest.mark.parametrize("n", [1001, 6103])
def test_several_files_offsets_frames_and_skew_match_wfdb(tmp_path: Path, n: int) -> None:
    hea = write_record(tmp_path, _layout(long=n > 6000), n, seed=n)
    rec = assert_matches_wfdb(hea)
    assert rec.leads == list(LEADS)
    if n < 6000:  # a skewed signal's last samples lie beyond the record
        assert np.isnan(rec.signal[LEADS.index("V4"), -5:]).all()
    header = parse_wfdb_header(hea.read_text(), hea)
    assert header.signals[3].baseline == -37


def test_a_record_without_a_length_matches_wfdb(tmp_path: Path) -> None:
    hea = write_record(tmp_path, {"r.dat": File("212", leads("RESP"))}, 1001, with_length=False)
    rec = assert_matches_wfdb(hea, with_length=False)
    assert rec.total_samples == 1001


def test_frames_are_averaged_and_truncated_to_integers_as_wfdb_does(tmp_path: Path) -> None:
    sigs = leads()
    sigs[0].spf = 2
    hea = write_record(tmp_path, {"r.dat": File("16", sigs)}, 1000, invalid=0)
    raw = np.frombuffer((tmp_path / "r.dat").read_bytes(), "<i2").reshape(1000, 13)
    mean = (raw[:, 0].astype(np.int64) + raw[:, 1]) / 2
    rec = assert_matches_wfdb(hea)
    np.testing.assert_array_equal(rec.signal[0], np.trunc(mean) / 200)
    assert (mean % 1 != 0).any()


def test_wfdb_sentinel_in_every_format_reads_as_nan(tmp_path: Path) -> None:
    for fmt in FORMATS:
        folder = tmp_path / fmt
        folder.mkdir()
        hea = write_record(folder, {"r.dat": File(fmt, leads())}, 200, invalid=0)
        data = bytearray((folder / "r.dat").read_bytes())
        sentinel = encode(fmt, np.full(12 * 6, -(2 ** (BITS[fmt] - 1))))
        data[: len(sentinel)] = sentinel  # frames 0-5 all invalid
        (folder / "r.dat").write_bytes(bytes(data))
        rec = assert_matches_wfdb(hea)
        assert np.isnan(rec.signal[:, :6]).all(), fmt
        assert np.isfinite(rec.signal[:, 6:]).all(), fmt


# -- where wfdb 4.3 fails or errs, the spec decides ----------------------------------------------------------------
def test_different_skews_in_one_file_are_read_as_the_spec_says(tmp_path: Path) -> None:
    """wfdb 4.3 raises on differing skews in one file; each signal is read as it is from a file of its own."""
    one, apart = tmp_path / "one", tmp_path / "apart"
    one.mkdir()
    apart.mkdir()
    sigs = leads()
    for i, s in enumerate(sigs):
        s.skew = i % 4
    n = 6103
    write_record(one, {"r.dat": File("16", sigs)}, n, invalid=0)
    raw = np.frombuffer((one / "r.dat").read_bytes(), "<i2").reshape(n, 12)
    lines = (one / "r.hea").read_text().splitlines()
    for i in range(12):
        (apart / f"{i}.dat").write_bytes(raw[:, i].tobytes())
        lines[1 + i] = lines[1 + i].replace("r.dat", f"{i}.dat", 1)
    (apart / "r.hea").write_text("\n".join(lines) + "\n")
    np.testing.assert_array_equal(read_wfdb(one / "r.hea").signal, reference(apart / "r.hea"))
    short = tmp_path / "short"
    short.mkdir()
    write_record(short, {"r.dat": File("16", sigs)}, 500, invalid=0)
    rec = read_wfdb(short / "r.hea")
    for i, s in enumerate(sigs):
        assert np.isnan(rec.signal[i, 500 - s.skew :]).all()
        assert np.isfinite(rec.signal[i, : 500 - s.skew]).all()


def test_a_skewed_multi_sample_signal_is_invalid_past_the_record_end(tmp_path: Path) -> None:
    """wfdb 4.3 marks only the last sample of such a frame invalid and averages it with padding; the whole frame
    past the end is invalid here (NaN), and everything before it equals wfdb."""
    sigs = leads()
    sigs[0].spf, sigs[0].skew = 2, 1
    hea = write_record(tmp_path, {"r.dat": File("16", sigs)}, 500, invalid=0)
    rec = read_wfdb(hea)
    ref = wfdb.rdrecord(str(hea.with_suffix("")), channels=list(range(12))).p_signal.T
    np.testing.assert_array_equal(rec.signal[:, :-1], ref[:, :-1])
    np.testing.assert_array_equal(rec.signal[1:, -1], ref[1:, -1])
    assert np.isnan(rec.signal[0, -1])


def test_format_311_ignores_its_two_unused_bits(tmp_path: Path) -> None:
    """``signal(5)``: bits 30-31 of a 311 word are unused (wfdb 4.3 reads bit 30 into the third sample)."""
    hea = write_record(tmp_path, {"r.dat": File("311", leads())}, 999)
    clean = assert_matches_wfdb(hea)
    data = np.frombuffer((tmp_path / "r.dat").read_bytes(), np.uint8).copy()
    data[3::4] |= 0xC0
    (tmp_path / "r.dat").write_bytes(data.tobytes())
    np.testing.assert_array_equal(read_wfdb(hea).signal, clean.signal)


# -- short files ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("fmt", ["16", "212", "310", "311"])
def test_a_signal_file_short_of_its_last_sample_is_refused_by_name(tmp_path: Path, fmt: str) -> None:
    # 12 signals × 100 frames: the last group holds the last samples; one byte less cuts off the last frame
    hea = write_record(tmp_path, {"s.dat": File(fmt, leads())}, 100)
    dat = tmp_path / "s.dat"
    dat.write_bytes(dat.read_bytes()[:-1])
    with pytest.raises(InputError, match=r"signal file s\.dat holds 99 samples per signal but the header claims 100"):
        read_wfdb(hea)


def test_format_310_counts_the_bytes_its_second_sample_needs(tmp_path: Path) -> None:
    """Two 310 samples take all 4 bytes of their group; 3 bytes hold only the first."""
    sigs = [*leads(), Sig("RESP")]
    hea = write_record(tmp_path, {"s.dat": File("310", sigs)}, 2, invalid=0)  # 26 samples: 8 groups and 2 samples
    dat = tmp_path / "s.dat"
    assert dat.stat().st_size == 8 * 4 + 4
    dat.write_bytes(dat.read_bytes()[:-1])
    with pytest.raises(InputError, match=r"s\.dat holds 1 samples per signal but the header claims 2"):
        read_wfdb(hea)


def test_a_file_cut_between_check_and_read_is_refused_by_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from pipelines.ecg import readers

    hea = write_record(tmp_path, {"s.dat": File("212", leads("RESP"))}, 101)
    checked = readers._wfdb_file_samples

    def check_then_cut(*args: object) -> int:
        n = checked(*args)  # type: ignore[arg-type]
        dat = tmp_path / "s.dat"
        dat.write_bytes(dat.read_bytes()[:-2])
        return n

    monkeypatch.setattr(readers, "_wfdb_file_samples", check_then_cut)
    with pytest.raises(InputError, match=r"signal file s\.dat holds fewer than 101 samples per signal") as err:
        read_wfdb(hea)
    assert str(hea) in str(err.value)


# -- header ---------------------------------------------------------------------------------------------------------
def test_a_missing_baseline_is_the_adc_zero_and_bounded() -> None:
    h = parse_wfdb_header("r 2 100 10\nr.dat 16 200/mV 16 -37 0 0 0 I\nr.dat 16 200(5)/mV 16 -37 0 0 0 II\n", "h")
    assert [s.baseline for s in h.signals] == [-37, 5]
    with pytest.raises(InputError, match="invalid ADC zero 'x'"):
        parse_wfdb_header("r 1 100 10\nr.dat 16 200/mV 16 x 0 0 0 I\n", "h")
    with pytest.raises(InputError, match="baseline 2147483648 is beyond the 32-bit range"):
        parse_wfdb_header("r 1 100 10\nr.dat 16 200(2147483648)/mV 16 0 0 0 0 I\n", "h")


# -- no wfdb on the read path ---------------------------------------------------------------------------------------
def test_reading_a_record_does_not_import_wfdb(tmp_path: Path) -> None:
    hea = write_record(tmp_path, _layout(long=True), 6103)
    expected = reference(hea)
    np.save(tmp_path / "expected.npy", expected)
    code = (
        "import sys\n"
        "import numpy as np\n"
        "from pipelines.ecg.readers import read_wfdb\n"
        "rec = read_wfdb(sys.argv[1])\n"
        "np.testing.assert_array_equal(rec.signal, np.load(sys.argv[2]))\n"
        "assert 'wfdb' not in sys.modules, 'wfdb was imported'\n"
    )
    res = subprocess.run(
        [sys.executable, "-c", code, str(hea), str(tmp_path / "expected.npy")],
        cwd=REPO,
        capture_output=True,
        text=True,
        encoding="utf-8",
        errors="replace",
        timeout=120,
        check=False,
    )
    assert res.returncode == 0, res.stderr[-2000:]
