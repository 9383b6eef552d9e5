"""Readers for one 12-lead ECG record: WFDB (.hea/.dat), DICOM 12-lead waveform, CSV and NPY.

Every reader returns an :class:`EcgRecord` in mV with its own rate and lead names; ``transforms.preprocess_signal``
then maps leads by name, resamples and fixes the length. Readers never log or return patient identifiers.
"""

from __future__ import annotations

import csv
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from models.protoecgnet import LEADS
from pipelines.common.errors import InputError

__all__ = [
    "ARRAY_SUFFIXES",
    "DICOM_SUFFIXES",
    "WFDB_SUFFIXES",
    "EcgRecord",
    "read_array",
    "read_dicom",
    "read_record",
    "read_wfdb",
    "unit_scale_to_mv",
    "write_dicom_ecg",
]

logger = logging.getLogger(__name__)

WFDB_SUFFIXES = (".hea", ".dat")
DICOM_SUFFIXES = (".dcm", ".dicom")
ARRAY_SUFFIXES = (".csv", ".npy")

#: DICOM SOP class "12-lead ECG Waveform Storage"
TWELVE_LEAD_ECG_SOP = "1.2.840.10008.5.1.4.1.1.9.1.1"

_UNITS = {"mv": 1.0, "millivolt": 1.0, "uv": 1e-3, "µv": 1e-3, "μv": 1e-3, "microvolt": 1e-3, "v": 1e3, "volt": 1e3}


@dataclass
class EcgRecord:
    """A raw record: ``signal`` (n_leads, n) in mV at ``fs`` Hz, rows named by ``leads`` (None: canonical order)."""

    signal: np.ndarray
    fs: float
    leads: list[str] | None
    path: Path

    @property
    def seconds(self) -> float:
        return self.signal.shape[-1] / self.fs


def unit_scale_to_mv(unit: str, path: str | Path) -> float:
    """Factor that converts a unit (mV, uV, µV, V, UCUM codes) to mV.

    Raises:
        InputError: unknown unit.
    """
    key = str(unit or "").strip().lower()
    if key == "":
        logger.warning("%s: no signal unit given; assuming mV", path)
        return 1.0
    if key not in _UNITS:
        raise InputError(path, f"unsupported signal unit {unit!r} (expected mV, uV or V)")
    return _UNITS[key]


def read_wfdb(path: str | Path) -> EcgRecord:
    """A WFDB record given as ``name.hea``, ``name.dat`` or ``name`` (any rate; units converted to mV).

    Raises:
        InputError: no header, unreadable record.
    """
    import wfdb

    path = Path(path)
    base = path.with_suffix("") if path.suffix.lower() in WFDB_SUFFIXES else path
    header = base.with_suffix(".hea")
    if not header.is_file():
        raise InputError(path, "WFDB header (.hea) not found")
    try:
        rec = wfdb.rdrecord(str(base))
    except Exception as exc:  # wfdb raises assorted types for a corrupt record
        raise InputError(path, f"not a readable WFDB record ({type(exc).__name__}: {exc})") from exc
    if rec.p_signal is None:
        raise InputError(path, "WFDB record has no physical signal")
    sig = np.asarray(rec.p_signal, dtype=np.float64).T
    units = rec.units or [""] * sig.shape[0]
    scales = np.array([unit_scale_to_mv(u, path) for u in units])[:, None]
    return EcgRecord(sig * scales, float(rec.fs), list(rec.sig_name), path)


def _waveform_group(ds, path: Path) -> int:
    seq = getattr(ds, "WaveformSequence", None)
    if not seq:
        raise InputError(path, "DICOM file has no WaveformSequence (not an ECG waveform)")
    for i, item in enumerate(seq):
        if int(getattr(item, "NumberOfWaveformChannels", 0)) >= len(LEADS):
            return i
    return 0


def read_dicom(path: str | Path) -> EcgRecord:
    """A DICOM ECG waveform (12-lead ECG Waveform Storage or General ECG), leads from the channel source codes.

    Sensitivity, correction factor and baseline are applied by pydicom; the channel sensitivity unit is
    converted to mV. Patient attributes are never read.

    Raises:
        InputError: not DICOM, no waveform, unreadable waveform data.
    """
    import pydicom
    from pydicom.errors import InvalidDicomError

    path = Path(path)
    try:
        ds = pydicom.dcmread(path)
    except (InvalidDicomError, OSError, ValueError) as exc:
        raise InputError(path, f"not a readable DICOM file ({type(exc).__name__})") from exc
    group = _waveform_group(ds, path)
    item = ds.WaveformSequence[group]
    try:
        data = np.asarray(ds.waveform_array(group), dtype=np.float64).T  # (channels, samples)
        fs = float(item.SamplingFrequency)
    except (AttributeError, ValueError, KeyError) as exc:
        raise InputError(path, f"unreadable DICOM waveform ({type(exc).__name__}: {exc})") from exc
    names, scales = [], []
    for ch in item.ChannelDefinitionSequence:
        src = ch.ChannelSourceSequence[0] if "ChannelSourceSequence" in ch else None
        label = getattr(ch, "ChannelLabel", "") or ""
        names.append(str(getattr(src, "CodeMeaning", "") or label or getattr(src, "CodeValue", "")))
        unit = ""
        if "ChannelSensitivityUnitsSequence" in ch:
            unit = str(ch.ChannelSensitivityUnitsSequence[0].CodeValue)
        scales.append(unit_scale_to_mv(unit, path))
    return EcgRecord(data * np.asarray(scales)[:, None], fs, names, path)


def read_array(path: str | Path, sampling_rate: float | None) -> EcgRecord:
    """A CSV (rows = samples, columns = leads; a header row of lead names, else canonical order) or NPY
    ((12, n) or (n, 12), canonical order) in mV at ``sampling_rate``.

    Raises:
        InputError: no sampling rate given, unreadable file, not 12 columns.
    """
    path = Path(path)
    if sampling_rate is None or sampling_rate <= 0:
        raise InputError(path, "CSV/NPY files carry no sampling rate; pass --sampling-rate HZ")
    names: list[str] | None = None
    try:
        if path.suffix.lower() == ".npy":
            arr = np.load(path, allow_pickle=False)
        else:
            with path.open(newline="") as fh:
                rows = [r for r in csv.reader(fh) if r]
            if not rows:
                raise InputError(path, "empty CSV file")
            try:
                [float(v) for v in rows[0]]
            except ValueError:
                names, rows = [c.strip() for c in rows[0]], rows[1:]
            arr = np.array([[float(v) if v.strip() else np.nan for v in r] for r in rows], dtype=np.float64).T
    except (OSError, ValueError) as exc:
        raise InputError(path, f"unreadable {path.suffix} file ({type(exc).__name__}: {exc})") from exc
    arr = np.asarray(arr, dtype=np.float64)
    if arr.ndim != 2:
        raise InputError(path, f"expected a 2D array, got shape {arr.shape}")
    if names is None:
        if arr.shape[0] != len(LEADS) and arr.shape[1] == len(LEADS):
            arr = arr.T
        if arr.shape[0] != len(LEADS):
            raise InputError(path, f"expected 12 leads in canonical order, got shape {arr.shape}")
    return EcgRecord(arr, float(sampling_rate), names, path)


def read_record(path: str | Path, sampling_rate: float | None = None) -> EcgRecord:
    """Read one record by its suffix (.hea/.dat/no suffix → WFDB, .dcm → DICOM, .csv/.npy → array).

    Raises:
        InputError: missing file or unsupported format.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix in WFDB_SUFFIXES or (suffix == "" and path.with_suffix(".hea").is_file()):
        if not path.exists() and not path.with_suffix(".hea").is_file():
            raise InputError(path, "does not exist")
        return read_wfdb(path)
    if not path.exists():
        raise InputError(path, "does not exist")
    if suffix in DICOM_SUFFIXES:
        return read_dicom(path)
    if suffix in ARRAY_SUFFIXES:
        return read_array(path, sampling_rate)
    raise InputError(path, f"unsupported ECG format {suffix or '(no suffix)'}; use WFDB, DICOM, CSV or NPY")


def write_dicom_ecg(
    path: str | Path,
    signal_mv: np.ndarray,
    fs: float,
    leads: list[str] | tuple[str, ...] = LEADS,
    sensitivity_uv: float = 1.0,
) -> Path:
    """Write a DICOM 12-lead ECG waveform (for fixtures and ``synth --dicom``); no patient data.

    Args:
        path: output file.
        signal_mv: (n_leads, n) in mV.
        fs: sampling rate in Hz.
        leads: lead names in row order (written as "Lead X" channel sources, SCPECG codes).
        sensitivity_uv: µV per stored integer unit.
    """
    from pydicom.dataset import Dataset as DicomDataset
    from pydicom.dataset import FileMetaDataset
    from pydicom.sequence import Sequence
    from pydicom.uid import UID, ExplicitVRLittleEndian, generate_uid

    path = Path(path)
    sig = np.asarray(signal_mv, dtype=np.float64)
    raw = np.clip(np.round(sig * 1000.0 / sensitivity_uv), -32768, 32767).astype("<i2")
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(TWELVE_LEAD_ECG_SOP)
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = DicomDataset()
    ds.file_meta = meta
    ds.SOPClassUID = TWELVE_LEAD_ECG_SOP
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.Modality = "ECG"
    ds.PatientName = "SYNTHETIC"
    ds.PatientID = "SYNTHETIC"
    channels = []
    for i, lead in enumerate(leads):
        src = DicomDataset()
        src.CodeValue = f"5.6.3-9-{i + 1}"
        src.CodingSchemeDesignator = "SCPECG"
        src.CodeMeaning = f"Lead {lead}"
        unit = DicomDataset()
        unit.CodeValue = "uV"
        unit.CodingSchemeDesignator = "UCUM"
        unit.CodeMeaning = "microvolt"
        ch = DicomDataset()
        ch.ChannelSourceSequence = Sequence([src])
        ch.ChannelSensitivity = f"{sensitivity_uv:g}"
        ch.ChannelSensitivityUnitsSequence = Sequence([unit])
        ch.ChannelSensitivityCorrectionFactor = "1"
        ch.ChannelBaseline = "0"
        ch.ChannelSampleSkew = "0"
        ch.WaveformBitsStored = 16
        channels.append(ch)
    wave = DicomDataset()
    wave.WaveformOriginality = "ORIGINAL"
    wave.NumberOfWaveformChannels = sig.shape[0]
    wave.NumberOfWaveformSamples = sig.shape[1]
    wave.SamplingFrequency = f"{fs:g}"
    wave.ChannelDefinitionSequence = Sequence(channels)
    wave.WaveformBitsAllocated = 16
    wave.WaveformSampleInterpretation = "SS"
    wave.WaveformData = raw.T.tobytes()  # interleaved: sample-major, channel-minor
    ds.WaveformSequence = Sequence([wave])
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path
