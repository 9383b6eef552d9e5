"""DICOM ECGs as vendors write them: pydicom's own ``waveform_ecg.dcm`` (SCP-ECG coded, a RHYTHM and a MEDIAN BEAT
group) and files built here with pydicom in a vendor's layout (MDC-coded sources, extra channels, µV sensitivities,
the median beat first), never with medinfer's own writer."""

from __future__ import annotations

import time
import tracemalloc
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import UID, ExplicitVRLittleEndian, generate_uid

from models.protoecgnet import LEADS
from pipelines.common.errors import InputError
from pipelines.ecg.readers import MAX_READ_SECONDS, read_record, write_dicom_ecg
from pipelines.ecg.transforms import preprocess_signal

GENERAL_ECG = "1.2.840.10008.5.1.4.1.1.9.1.2"
MDC = {"I": 1, "II": 2, "III": 61, "aVR": 62, "aVL": 63, "aVF": 64, **{f"V{i}": i + 2 for i in range(1, 7)}}
MEANINGS = {"I": "Lead I (Einthoven)", "II": "Lead II", "III": "Lead III", "aVR": "Lead aVR (Goldberger)"}


def waveform_ecg() -> Path:
    found = get_testdata_file("waveform_ecg.dcm")
    assert isinstance(found, str)
    path = Path(found)
    assert Path(pydicom.__file__).parent in path.parents  # shipped with pydicom, not downloaded
    return path


def ecg_like(fs: float, seconds: float) -> np.ndarray:
    n = round(fs * seconds)
    t = np.arange(n) / fs
    qrs = np.exp(-(((t % 0.8) - 0.3) ** 2) / (2 * 0.012**2))
    gains = np.linspace(0.4, 1.6, 12)[:, None]
    return gains * qrs[None] + 0.05 * np.sin(2 * np.pi * (0.5 + 0.1 * np.arange(12))[:, None] * t[None])


def channel(
    code: tuple[str, str] | None,
    meaning: str,
    unit: str | None = "uV",
    sensitivity: float = 2.5,
    correction: float = 1.0,
    baseline: float = 0.0,
) -> Dataset:
    ch = Dataset()
    src = Dataset()
    if code is not None:
        src.CodingSchemeDesignator, src.CodeValue = code
    src.CodeMeaning = meaning
    ch.ChannelSourceSequence = Sequence([src])
    ch.ChannelSensitivity = f"{sensitivity:g}"
    if unit is not None:
        u = Dataset()
        u.CodeValue, u.CodingSchemeDesignator, u.CodeMeaning = unit, "UCUM", unit
        ch.ChannelSensitivityUnitsSequence = Sequence([u])
    ch.ChannelSensitivityCorrectionFactor = f"{correction:g}"
    ch.ChannelBaseline = f"{baseline:g}"
    ch.ChannelSampleSkew = "0"
    ch.WaveformBitsStored = 16
    return ch


def group(channels: list[Dataset], raw: np.ndarray, fs: float, label: str, originality: str) -> Dataset:
    """A multiplex group: ``raw`` (channels, samples) int16, interleaved sample-major."""
    g = Dataset()
    if originality:
        g.WaveformOriginality = originality
    if label:
        g.MultiplexGroupLabel = label
    g.NumberOfWaveformChannels = len(channels)
    g.NumberOfWaveformSamples = raw.shape[1]
    g.SamplingFrequency = f"{fs:g}"
    g.ChannelDefinitionSequence = Sequence(channels)
    g.WaveformBitsAllocated = 16
    g.WaveformSampleInterpretation = "SS"
    g.WaveformData = np.ascontiguousarray(raw.T).astype("<i2").tobytes()
    return g


def save(path: Path, groups: list[Dataset]) -> Path:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(GENERAL_ECG)
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = GENERAL_ECG
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "ECG"
    ds.PatientName = "Vendor^Test"
    ds.WaveformSequence = Sequence(groups)
    ds.save_as(path, enforce_file_format=True)
    return path


#: the rhythm group's channel order: shuffled leads, a right-sided lead and respiration among them
ORDER = ["V1", "V2", "II", "V4R", "I", "V3", "III", "aVR", "RESP", "aVL", "aVF", "V4", "V5", "V6"]


def vendor_file(
    path: Path, fs: float = 500, seconds: float = 10, median_first: bool = True, **overrides: Any
) -> tuple[Path, np.ndarray]:
    """A vendor-style General ECG: MDC-coded sources, µV units at 2.5 µV per unit, a MEDIAN BEAT group first and a
    RHYTHM group with 14 channels; returns the file and the canonical (12, n) signal in mV it encodes."""
    sig = ecg_like(fs, seconds)
    channels, rows = [], []
    for name in ORDER:
        if name in LEADS:
            lead = LEADS.index(name)
            meaning = MEANINGS.get(name, f"Lead {name}")
            code = overrides.get("codes", {}).get(name, ("MDC", f"2:{MDC[name]}"))
            meaning = overrides.get("meanings", {}).get(name, meaning)
            if name == "II":
                channels.append(channel(code, meaning, sensitivity=5, correction=0.5, baseline=-100))
            else:
                channels.append(channel(code, meaning))
            if name == "II":  # physical = raw * 5 * 0.5 - 100 µV
                rows.append(np.round((sig[lead] * 1000 + 100) / 2.5))
            else:
                rows.append(np.round(sig[lead] * 1000 / 2.5))
        elif name == "V4R":
            channels.append(channel(("MDC", "2:12"), "Lead V4R"))
            rows.append(np.round(sig[9] * 400))
        else:
            channels.append(channel(("99VENDOR", "RSP"), "Respiration", unit="Ohm"))
            rows.append(np.zeros(sig.shape[1]))
    rhythm = group(
        channels, np.array(rows), fs, overrides.get("label", "RHYTHM"), overrides.get("originality", "ORIGINAL")
    )
    median_rows = np.array(rows)[:, : int(fs * 1.2)]
    median = group(channels, median_rows, fs, overrides.get("median_label", "MEDIAN BEAT"), "DERIVED")
    quantised = np.round(sig * 1000 / 2.5) * 2.5 / 1000
    return save(path, [median, rhythm] if median_first else [rhythm, median]), quantised


# -- pydicom's vendor file ---------------------------------------------------------------------------------------------
def test_pydicoms_file_reads_its_rhythm_group() -> None:
    path = waveform_ecg()
    rec = read_record(path)
    assert rec.fs == 1000.0
    assert rec.leads == list(LEADS)  # from the SCP-ECG codes 5.6.3-9-1, -2, -61 ... (III is -61, not -3)
    ds = pydicom.dcmread(path)
    np.testing.assert_allclose(rec.signal, ds.waveform_array(0).T / 1000)  # the RHYTHM group, µV → mV
    assert rec.seconds == 10.0
    assert rec.warnings == []
    x = preprocess_signal(rec.signal, rec.fs, rec.leads, path)
    assert x.shape == (12, 1000)


def test_pydicoms_file_maps_by_code_when_meanings_are_useless(tmp_path: Path) -> None:
    ds = pydicom.dcmread(waveform_ecg())
    for item in ds.WaveformSequence:
        for k, ch in enumerate(item.ChannelDefinitionSequence):
            ch.ChannelSourceSequence[0].CodeMeaning = f"channel {k}"
    ds.WaveformSequence = Sequence(list(reversed(list(ds.WaveformSequence))))  # the median beat first
    path = tmp_path / "coded.dcm"
    ds.save_as(path)
    rec = read_record(path)
    assert rec.leads == list(LEADS)
    np.testing.assert_allclose(rec.signal, pydicom.dcmread(waveform_ecg()).waveform_array(0).T / 1000)


def test_pydicoms_file_maps_by_meaning_when_codes_are_private(tmp_path: Path) -> None:
    ds = pydicom.dcmread(waveform_ecg())
    for item in ds.WaveformSequence:
        for ch in item.ChannelDefinitionSequence:
            ch.ChannelSourceSequence[0].CodingSchemeDesignator = "99PRIVATE"
            ch.ChannelSourceSequence[0].CodeValue = "X"
    path = tmp_path / "labelled.dcm"
    ds.save_as(path)
    rec = read_record(path)
    assert rec.leads == list(LEADS)  # from "Lead I (Einthoven)", "Lead II", ...
    x = preprocess_signal(rec.signal, rec.fs, rec.leads, path)
    ref = read_record(waveform_ecg())
    np.testing.assert_allclose(x, preprocess_signal(ref.signal, ref.fs, ref.leads, "ref"))


def test_a_code_that_contradicts_its_meaning_is_refused(tmp_path: Path) -> None:
    ds = pydicom.dcmread(waveform_ecg())
    ds.WaveformSequence[0].ChannelDefinitionSequence[2].ChannelSourceSequence[0].CodeValue = "5.6.3-9-3"  # V1
    path = tmp_path / "conflict.dcm"
    ds.save_as(path)
    with pytest.raises(InputError, match=r"conflicting DICOM lead coding.*'Lead III'.*III, V1") as err:
        read_record(path)
    assert str(path) in str(err.value)


# -- a vendor layout built here ----------------------------------------------------------------------------------------
def test_a_vendor_general_ecg_with_mdc_codes(tmp_path: Path) -> None:
    path, expected = vendor_file(tmp_path / "vendor.dcm")
    rec = read_record(path)
    assert rec.fs == 500.0
    assert rec.signal.shape == (12, 5000)  # the RHYTHM group, not the 1.2 s median beat listed first
    x = preprocess_signal(rec.signal, rec.fs, rec.leads, path)
    ref = preprocess_signal(expected, 500, None, "ref")
    np.testing.assert_allclose(x, ref, atol=1e-4)
    assert rec.leads is not None
    row_ii = rec.leads.index("II")
    np.testing.assert_allclose(rec.signal[row_ii], expected[1], atol=1.5e-3)  # sensitivity × correction + baseline
    assert rec.warnings == []


@pytest.mark.parametrize(
    ("overrides", "chosen_samples"),
    [
        ({"label": "", "median_label": ""}, 5000),  # no labels: the ORIGINAL group
        ({"label": "", "median_label": "", "originality": ""}, 5000),  # nothing said: the longest group
    ],
)
def test_the_rhythm_group_is_found_without_labels(tmp_path: Path, overrides: dict, chosen_samples: int) -> None:
    path, _ = vendor_file(tmp_path / "v.dcm", **overrides)
    assert read_record(path).signal.shape[1] == chosen_samples


def test_a_file_with_only_a_median_beat_is_refused(tmp_path: Path) -> None:
    path, _ = vendor_file(tmp_path / "v.dcm")
    ds = pydicom.dcmread(path)
    ds.WaveformSequence = Sequence([ds.WaveformSequence[0]])
    ds.save_as(path)
    with pytest.raises(InputError, match="only a median"):
        read_record(path)


def test_unmappable_channels_are_named(tmp_path: Path) -> None:
    codes = {"V1": None, "V2": None}
    meanings = {"V1": "V1-V2", "V2": "V2-V3"}
    path, _ = vendor_file(tmp_path / "bipolar.dcm", codes=codes, meanings=meanings)
    with pytest.raises(InputError, match="missing lead") as err:
        read_record(path)
    message = str(err.value)
    assert "'V1-V2', 'V2-V3', 'Lead V4R', 'Respiration'" in message
    assert str(path) in message


def test_a_long_dicom_converts_only_its_central_minute(tmp_path: Path) -> None:
    fs, seconds = 500, 600
    path, expected = vendor_file(tmp_path / "long.dcm", fs=fs, seconds=seconds)
    tracemalloc.start()
    try:
        rec = read_record(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    n = fs * seconds
    # the file's bytes are read (twice over, by pydicom); waveform_array would add all 14 channels × n as float64
    assert peak < 14 * n * 8
    w = int(MAX_READ_SECONDS * fs)
    start = (n - w) // 2
    assert rec.signal.shape == (12, w)
    assert rec.seconds == seconds
    assert rec.leads is not None
    order = [LEADS.index(lead) for lead in rec.leads]
    np.testing.assert_allclose(rec.signal, expected[order, start : start + w], atol=1.5e-3)


def _edit(path: Path, fn: Any) -> Path:
    ds = pydicom.dcmread(path)
    fn(ds.WaveformSequence[1])
    ds.save_as(path)
    return path


@pytest.mark.parametrize(
    ("edit", "says"),
    [
        (lambda g: setattr(g, "WaveformData", g.WaveformData[:1000]), "truncated"),
        (lambda g: setattr(g, "NumberOfWaveformSamples", 2**32 - 1), "need 120259084260: truncated"),
        (lambda g: setattr(g, "NumberOfWaveformChannels", 65), "65 channels; at most 64"),
        (lambda g: setattr(g, "SamplingFrequency", "30000"), "outside the accepted range"),
        (lambda g: setattr(g, "SamplingFrequency", "499.9999"), "approximately"),
        (lambda g: setattr(g, "WaveformSampleInterpretation", "MB"), "interpretation 'MB'"),
        (lambda g: setattr(g, "NumberOfWaveformChannels", 13), "declares 13 channels but defines 14"),
    ],
)
def test_dicom_headers_are_bounded_before_decoding(tmp_path: Path, edit: Any, says: str) -> None:
    path, _ = vendor_file(tmp_path / "v.dcm")
    _edit(path, edit)
    t0 = time.perf_counter()
    with pytest.raises(InputError) as err:
        read_record(path)
    assert time.perf_counter() - t0 < 1.0
    assert says in str(err.value)
    assert str(path) in str(err.value)


def test_channels_without_units_are_read_as_mv_with_a_warning(tmp_path: Path) -> None:
    path, _ = vendor_file(tmp_path / "v.dcm")

    def drop_units(g: Dataset) -> None:
        for ch in g.ChannelDefinitionSequence:
            del ch.ChannelSensitivityUnitsSequence

    _edit(path, drop_units)
    rec = read_record(path)
    assert any("no signal unit" in w for w in rec.warnings)
    with pytest.raises(InputError, match="is the record in µV"):  # 2.5 "mV" per unit: the plausibility rule
        preprocess_signal(rec.signal, rec.fs, rec.leads, path)
    fixed = read_record(path, signal_unit="uV")
    assert fixed.warnings == []
    preprocess_signal(fixed.signal, fixed.fs, fixed.leads, path)


def test_medinfers_writer_uses_the_cid_3001_codes(tmp_path: Path) -> None:
    path = write_dicom_ecg(tmp_path / "w.dcm", ecg_like(500, 10), 500)
    ds = pydicom.dcmread(path)
    codes = [ch.ChannelSourceSequence[0].CodeValue for ch in ds.WaveformSequence[0].ChannelDefinitionSequence]
    assert codes == [f"5.6.3-9-{n}" for n in (1, 2, 61, 62, 63, 64, 3, 4, 5, 6, 7, 8)]
    assert read_record(path).leads == list(LEADS)
