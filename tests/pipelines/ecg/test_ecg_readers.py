"""Readers: WFDB at 500 Hz with shuffled leads, DICOM round trip, CSV/NPY, and clear errors for bad records."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import wfdb

from models.protoecgnet import LEADS
from pipelines.common.errors import InputError
from pipelines.ecg.readers import read_record, write_dicom_ecg
from pipelines.ecg.transforms import canonical_lead, preprocess_signal


def _signal(fs: int, seconds: float = 10.0) -> np.ndarray:
    t = np.arange(int(fs * seconds)) / fs
    # each lead a different mixture, so a lead mix-up shows
    return np.stack([np.sin(2 * np.pi * (1 + i * 0.37) * t) * (0.5 + 0.1 * i) for i in range(12)])


def _wfdb(folder: Path, name: str, sig_mv: np.ndarray, fs: int, order: list[int], units: str = "mV") -> Path:
    scale = {"mV": 1.0, "uV": 1000.0}[units]
    wfdb.wrsamp(
        name,
        fs=fs,
        units=[units] * len(order),
        sig_name=[LEADS[i] for i in order],
        p_signal=(sig_mv[order] * scale).T,
        fmt=["16"] * len(order),
        adc_gain=[1000.0 / scale if units == "mV" else 1.0] * len(order),
        baseline=[0] * len(order),
        write_dir=str(folder),
    )
    return folder / f"{name}.hea"


def test_wfdb_500hz_shuffled_reads_back_canonical(tmp_path: Path) -> None:
    sig500 = _signal(500)
    order = list(np.random.default_rng(0).permutation(12))
    hea = _wfdb(tmp_path, "rec", sig500, 500, order, units="uV")
    rec = read_record(hea)
    assert rec.fs == 500
    assert rec.leads == [LEADS[i] for i in order]
    x = preprocess_signal(rec.signal, rec.fs, rec.leads, hea, highpass_hz=0)
    assert x.shape == (12, 1000)
    assert x.dtype == np.float32
    expected = preprocess_signal(_signal(100), 100, None, "ref", highpass_hz=0)  # canonical order, 100 Hz
    np.testing.assert_allclose(x[:, 50:-50], expected[:, 50:-50], atol=0.01)
    # the record path without a suffix and the .dat name read the same record
    for p in (tmp_path / "rec", tmp_path / "rec.dat"):
        np.testing.assert_array_equal(read_record(p).signal, rec.signal)


def test_dicom_round_trip(tmp_path: Path) -> None:
    sig = _signal(500)
    path = write_dicom_ecg(tmp_path / "ecg.dcm", sig, 500)
    rec = read_record(path)
    assert rec.fs == 500
    assert [canonical_lead(n) for n in rec.leads] == list(LEADS)
    np.testing.assert_allclose(rec.signal, np.round(sig * 1000) / 1000, atol=1e-9)  # 1 µV resolution
    x = preprocess_signal(rec.signal, rec.fs, rec.leads, path)
    assert x.shape == (12, 1000)


def test_dicom_does_not_leak_identifiers(tmp_path: Path) -> None:
    import pydicom

    path = write_dicom_ecg(tmp_path / "ecg.dcm", _signal(100), 100)
    ds = pydicom.dcmread(path)
    ds.PatientName = "Doe^Jane"
    ds.save_as(path)
    rec = read_record(path)
    assert "Doe" not in repr(rec.leads)
    assert "Doe" not in str(rec.path)


def test_csv_with_header_and_npy(tmp_path: Path) -> None:
    sig = _signal(250)
    order = list(range(11, -1, -1))
    csv_path = tmp_path / "r.csv"
    np.savetxt(csv_path, sig[order].T, delimiter=",", header=",".join(LEADS[i] for i in order), comments="")
    rec = read_record(csv_path, sampling_rate=250)
    x = preprocess_signal(rec.signal, rec.fs, rec.leads, csv_path, highpass_hz=0)
    npy = tmp_path / "r.npy"
    np.save(npy, sig.T)  # (n, 12) is transposed to (12, n)
    rec2 = read_record(npy, sampling_rate=250)
    x2 = preprocess_signal(rec2.signal, rec2.fs, rec2.leads, npy, highpass_hz=0)
    np.testing.assert_allclose(x, x2, atol=1e-5)
    with pytest.raises(InputError, match="sampling-rate"):
        read_record(npy)


def test_length_rule(tmp_path: Path) -> None:
    long = _signal(100, 14.0)
    x = preprocess_signal(long, 100, None, "long", highpass_hz=0)
    np.testing.assert_allclose(x, long[:, 200:1200].astype(np.float32))  # central 10 s
    short = _signal(100, 9.0)
    x = preprocess_signal(short, 100, None, "short", highpass_hz=0)
    assert x.shape == (12, 1000)
    assert np.all(x[:, 900:] == 0)


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda s, order: (s, order[:-1]), "missing lead"),
        (lambda s, order: (s[:, :300], order), "too short"),
        (lambda s, order: (np.where(np.arange(s.shape[1]) == 7, np.nan, s), order), "NaN"),
        (lambda s, order: (np.vstack([s[:3], np.zeros_like(s[3:4]), s[4:]]), order), "flat line"),
    ],
)
def test_bad_records_name_the_file(tmp_path: Path, mutate, message: str) -> None:
    sig, order = mutate(_signal(100), list(range(12)))
    if np.isnan(sig).any():  # WFDB stores NaN as its sentinel and reads it back as NaN
        hea = _wfdb(tmp_path, "bad", sig, 100, order)
    else:
        hea = _wfdb(tmp_path, "bad", sig[: len(order)] if len(order) < 12 else sig, 100, order)

    def read_and_preprocess() -> None:
        rec = read_record(hea)
        preprocess_signal(rec.signal, rec.fs, rec.leads, hea)

    with pytest.raises(InputError, match=message) as err:
        read_and_preprocess()
    assert str(hea) in str(err.value)


def test_missing_and_unsupported_files(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="does not exist"):
        read_record(tmp_path / "nope.dcm")
    other = tmp_path / "x.txt"
    other.write_text("hi")
    with pytest.raises(InputError, match="unsupported"):
        read_record(other)
    bad = tmp_path / "bad.dcm"
    bad.write_bytes(b"not dicom")
    with pytest.raises(InputError, match="DICOM") as err:
        read_record(bad)
    assert str(bad) in str(err.value)


@pytest.mark.parametrize(
    ("label", "lead"),
    [
        ("Lead I (Einthoven)", "I"),
        ("Lead II", "II"),
        ("Lead aVR (Goldberger)", "aVR"),
        ("Lead V1 (Wilson)", "V1"),
        ("MDC_ECG_LEAD_V6", "V6"),
        ("avf", "aVF"),
        ("Lead X", None),
        ("(Einthoven)", None),
    ],
)
def test_vendor_lead_labels(label: str, lead: str | None) -> None:
    assert canonical_lead(label) == lead
