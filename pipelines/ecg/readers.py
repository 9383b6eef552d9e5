"""Readers for one 12-lead ECG record: WFDB (.hea/.dat), DICOM 12-lead waveform, CSV and NPY.

Every reader returns an :class:`EcgRecord` in mV with its own rate and lead names; ``transforms.preprocess_signal``
then maps leads by name, resamples and fixes the length. Readers never log or return patient identifiers.

What a file may become is bounded before anything is allocated [INF]:

- the sampling rate lies in ``MIN_FS``-``MAX_FS`` (``transforms.check_sampling_rate``) and converts exactly to the
  model's rate;
- at most ``MAX_READ_SECONDS`` (60 s) is read: the central 60 s of a WFDB, DICOM or NPY record (a 24 h Holter is
  cropped while reading; only the central 10 s reach the model anyway), the first 60 s of a CSV (a text file
  cannot be entered in the middle; the result then carries a warning);
- leads are mapped from the header before reading, and only the 12 leads are read;
- a WFDB header is parsed here first: at most ``MAX_HEADER_BYTES``, ``MAX_CHANNELS`` signals, ``MAX_RECORD_SAMPLES``
  samples, a skew of at most ``MAX_SKEW_SECONDS``, known formats, signal files beside the header, and files that
  hold what the header claims;
- a WFDB signal is decoded here with NumPy from the bytes of its window only (packed formats from the group that
  holds the window's first sample): the values ``wfdb.rdrecord`` gives, without importing wfdb (whose header parser
  goes through pandas and costs more than the read);
- a DICOM waveform's channels × samples are checked against ``WaveformData`` and only the window is converted;
- a CSV has at most ``MAX_CHANNELS`` columns, ``MAX_CSV_LINE_BYTES`` per line and ``MAX_CSV_BYTES`` read; an NPY is
  memory-mapped and sliced.

A channel without a unit is read as mV (the WFDB default) unless the ``signal_unit`` option says otherwise, and the
result says so; the amplitude check of ``transforms.check_signal`` catches µV or V labelled mV.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from models.protoecgnet import LEADS
from pipelines.common.errors import InputError
from pipelines.ecg.transforms import MAX_FS, canonical_lead, check_sampling_rate, lead_indices

__all__ = [
    "ARRAY_SUFFIXES",
    "DICOM_SUFFIXES",
    "MAX_CHANNELS",
    "MAX_CSV_BYTES",
    "MAX_CSV_LINE_BYTES",
    "MAX_HEADER_BYTES",
    "MAX_READ_SECONDS",
    "MAX_RECORD_SAMPLES",
    "MAX_SKEW_SECONDS",
    "WFDB_SUFFIXES",
    "EcgRecord",
    "LeadConflictError",
    "WfdbHeader",
    "WfdbSignal",
    "central_window",
    "dicom_channel_lead",
    "parse_wfdb_header",
    "read_array",
    "read_dicom",
    "read_record",
    "read_wfdb",
    "unit_scale_to_mv",
    "write_dicom_ecg",
]

WFDB_SUFFIXES = (".hea", ".dat")
DICOM_SUFFIXES = (".dcm", ".dicom")
ARRAY_SUFFIXES = (".csv", ".npy")

#: DICOM SOP class "12-lead ECG Waveform Storage"
TWELVE_LEAD_ECG_SOP = "1.2.840.10008.5.1.4.1.1.9.1.1"

#: the longest stretch of a record that is read (s); the model uses its central 10 s
MAX_READ_SECONDS = 60.0
#: the most signals (WFDB) or channels (DICOM multiplex group, CSV columns) a record may declare
MAX_CHANNELS = 64
#: the largest WFDB header (bytes)
MAX_HEADER_BYTES = 64 * 1024
#: the most samples per signal a WFDB or DICOM header may claim (a 24 h Holter at 20 kHz is 1.7e9)
MAX_RECORD_SAMPLES = 2**32
#: the largest WFDB skew (s)
MAX_SKEW_SECONDS = 1.0
#: the longest CSV line and the most CSV text read (bytes)
MAX_CSV_LINE_BYTES = 8 * 1024
MAX_CSV_BYTES = 256 * 1024 * 1024

_UNITS = {
    "mv": 1.0,
    "millivolt": 1.0,
    "uv": 1e-3,
    "µv": 1e-3,
    "μv": 1e-3,
    "microvolt": 1e-3,
    "nv": 1e-6,
    "nanovolt": 1e-6,
    "v": 1e3,
    "volt": 1e3,
}

#: WFDB formats read, as their on-disk layout: samples per group, bytes per group, and the bytes that hold the
#: first k samples of a group (k = 0 .. samples per group - 1). 8 (differences: needs the whole record before the
#: window) and the FLAC formats 508/516/524 (no byte-exact window) are not read.
_WFDB_LAYOUT: dict[str, tuple[int, int, tuple[int, ...]]] = {
    "16": (1, 2, (0,)),
    "61": (1, 2, (0,)),
    "80": (1, 1, (0,)),
    "160": (1, 2, (0,)),
    "24": (1, 3, (0,)),
    "32": (1, 4, (0,)),
    "212": (2, 3, (0, 2)),  # two 12-bit samples in 3 bytes
    "310": (3, 4, (0, 2, 4)),  # three 10-bit samples in two 16-bit words; the 2nd sample is in the 2nd word
    "311": (3, 4, (0, 2, 3)),  # three 10-bit samples in one 32-bit word
}
#: the digital value that marks an invalid sample in each format (read as NaN; wfdb's ``INVALID_SAMPLE_VALUE``)
_WFDB_INVALID: dict[str, int] = {
    "16": -(2**15),
    "61": -(2**15),
    "80": -(2**7),
    "160": -(2**15),
    "24": -(2**23),
    "32": -(2**31),
    "212": -(2**11),
    "310": -(2**9),
    "311": -(2**9),
}

#: DICOM CID 3001 lead codes: SCP-ECG and ISO/IEEE 11073 MDC (``2:n``, or its context-free number 131072 + n)
_LEAD_NUMBERS = {"I": 1, "II": 2, "III": 61, "aVR": 62, "aVL": 63, "aVF": 64, **{f"V{i}": i + 2 for i in range(1, 7)}}
_CODED_LEADS: dict[tuple[str, str], str] = {}
for _lead, _n in _LEAD_NUMBERS.items():
    _CODED_LEADS[("SCPECG", f"5.6.3-9-{_n}")] = _lead
    _CODED_LEADS[("MDC", f"2:{_n}")] = _lead
    _CODED_LEADS[("MDC", str(2 * 65536 + _n))] = _lead

#: DICOM waveform sample types read; mu-law and A-law (MB, AB) are companded and not
_DICOM_DTYPES = {
    (8, "SB"): "i1",
    (8, "UB"): "u1",
    (16, "SS"): "i2",
    (16, "US"): "u2",
    (32, "SL"): "i4",
    (32, "UL"): "u4",
    (64, "SV"): "i8",
    (64, "UV"): "u8",
}


@dataclass
class EcgRecord:
    """A raw record: ``signal`` (n_leads, n) in mV at ``fs`` Hz, rows named by ``leads`` (None: canonical order).

    ``total_samples`` is the record's whole length when only a window of it was read; ``warnings`` are what the
    result must state about the reading (units assumed, a CSV read only in part).
    """

    signal: np.ndarray
    fs: float
    leads: list[str] | None
    path: Path
    total_samples: int | None = None
    warnings: list[str] = field(default_factory=list)

    @property
    def seconds(self) -> float:
        """The record's duration (not only the window read)."""
        n = self.total_samples if self.total_samples is not None else self.signal.shape[-1]
        return n / self.fs


def unit_scale_to_mv(unit: str, path: str | Path) -> float:
    """Factor that converts a unit (mV, uV, µV, V, UCUM codes) to mV; an empty unit is mV.

    Raises:
        InputError: unknown unit.
    """
    key = str(unit or "").strip().lower()
    if key == "":
        return 1.0
    if key not in _UNITS:
        raise InputError(path, f"unsupported signal unit {unit!r} (expected mV, uV or V)")
    return _UNITS[key]


def _window(n: int, fs: float) -> tuple[int, int]:
    """The central ``MAX_READ_SECONDS`` of ``n`` samples: (start, stop)."""
    w = min(n, round(MAX_READ_SECONDS * fs))
    start = (n - w) // 2
    return start, start + w


def central_window(leads_first: np.ndarray, fs: float) -> np.ndarray:
    """A float64 copy of the central ``MAX_READ_SECONDS`` of a (leads, n) array (a view or a memory map: only
    the window is copied)."""
    start, stop = _window(leads_first.shape[1], fs)
    return np.array(leads_first[:, start:stop], dtype=np.float64)


def _no_unit_warning(channels: list[str]) -> str:
    return (
        f"no signal unit in the file for {', '.join(channels)}: read as mV (pass signal_unit to say otherwise); "
        "amplitudes were checked for plausibility only"
    )


# -- WFDB --------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class WfdbSignal:
    """One signal line of a WFDB header (the fields the reader uses)."""

    file_name: str
    fmt: str
    samples_per_frame: int
    skew: int
    byte_offset: int
    gain: float
    baseline: int
    units: str | None
    description: str


@dataclass(frozen=True)
class WfdbHeader:
    """A single-segment WFDB header: rate, samples per signal (None when the header omits it) and signals."""

    n_sig: int
    fs: float
    n_samples: int | None
    signals: tuple[WfdbSignal, ...]


_FMT_RE = re.compile(r"^(\d+)(?:x(\d+))?(?::(\d+))?(?:\+(\d+))?$")
_GAIN_RE = re.compile(r"^([+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)(?:\((-?\d+)\))?(?:/(\S*))?$")
_FS_RE = re.compile(r"^(\d+(?:\.\d*)?|\.\d+)(?:/\S*)?$")
_FILE_RE = re.compile(r"^[\w][\w.-]*$")
_INT_RE = re.compile(r"^-?\d+$")


def parse_wfdb_header(text: str, path: str | Path) -> WfdbHeader:
    """Parse and bound a WFDB header (``header(5)`` syntax) before any signal is read.

    A signal without a baseline (``gain(baseline)/units``) has its ADC zero as baseline, else 0 (as wfdb reads it).

    Raises:
        InputError: a multi-segment record, more than ``MAX_CHANNELS`` signals, a rate outside the accepted range,
            more than ``MAX_RECORD_SAMPLES`` samples, an unknown format, a skew beyond ``MAX_SKEW_SECONDS``, a signal
            file name with a path, a baseline beyond 32 bits, or a malformed line.
    """
    lines = [ln.strip() for ln in text.splitlines()]
    lines = [ln for ln in lines if ln and not ln.startswith("#")]
    if not lines:
        raise InputError(path, "empty WFDB header")
    record = lines[0].split()
    if len(record) < 2:
        raise InputError(path, "WFDB header: the record line needs a name and a number of signals")
    if "/" in record[0]:
        raise InputError(path, "multi-segment WFDB records are not supported; give a single-segment record")
    if not record[1].isdigit():
        raise InputError(path, f"WFDB header: invalid number of signals {record[1]!r}")
    n_sig = int(record[1])
    if not 1 <= n_sig <= MAX_CHANNELS:
        raise InputError(path, f"WFDB header declares {n_sig} signals; 1 to {MAX_CHANNELS} are accepted")
    fs = 250.0  # the WFDB default
    if len(record) > 2:
        m = _FS_RE.match(record[2])
        if m is None:
            raise InputError(path, f"WFDB header: invalid sampling frequency {record[2]!r}")
        fs = float(m.group(1))
    fs = check_sampling_rate(fs, path)
    n_samples: int | None = None
    if len(record) > 3:
        if not record[3].isdigit():
            raise InputError(path, f"WFDB header: invalid number of samples {record[3]!r}")
        n_samples = int(record[3])
        if n_samples > MAX_RECORD_SAMPLES:
            raise InputError(
                path, f"WFDB header claims {n_samples} samples per signal; at most {MAX_RECORD_SAMPLES} are accepted"
            )
    if len(lines) - 1 < n_sig:
        raise InputError(path, f"WFDB header declares {n_sig} signals but has {len(lines) - 1} signal lines")
    max_skew = round(MAX_SKEW_SECONDS * fs)
    signals = []
    for i, line in enumerate(lines[1 : 1 + n_sig]):
        fields = line.split(maxsplit=8)
        where = f"WFDB header, signal {i + 1}"
        if len(fields) < 2:
            raise InputError(path, f"{where}: needs a file name and a format")
        name = fields[0]
        if not _FILE_RE.match(name) or ".." in name:
            raise InputError(
                path, f"{where}: signal file {name!r} must be a plain file name beside the header (no path)"
            )
        fm = _FMT_RE.match(fields[1])
        if fm is None:
            raise InputError(path, f"{where}: invalid format field {fields[1]!r}")
        fmt = fm.group(1)
        if fmt not in _WFDB_LAYOUT:
            raise InputError(
                path,
                f"{where}: WFDB format {fmt} is not supported (supported: {', '.join(sorted(_WFDB_LAYOUT, key=int))})",
            )
        spf = int(fm.group(2) or 1)
        if spf < 1 or spf * fs > MAX_FS:
            raise InputError(
                path, f"{where}: {spf} samples per frame at {fs:g} Hz is beyond the accepted {MAX_FS:g} Hz"
            )
        skew = int(fm.group(3) or 0)
        if skew > max_skew:
            raise InputError(
                path, f"{where}: skew of {skew} samples; at most {max_skew} ({MAX_SKEW_SECONDS:g} s) is accepted"
            )
        gain, baseline, units = 200.0, 0, None
        if len(fields) > 2:
            gm = _GAIN_RE.match(fields[2])
            if gm is None:
                raise InputError(path, f"{where}: invalid gain field {fields[2]!r}")
            gain = float(gm.group(1)) or 200.0  # 0 means the default 200
            units = gm.group(3) or None
            if gm.group(2) is not None:
                baseline = int(gm.group(2))
            elif len(fields) > 4:  # no baseline: the ADC zero (the field after the ADC resolution), as wfdb reads it
                if _INT_RE.match(fields[4]) is None:
                    raise InputError(path, f"{where}: invalid ADC zero {fields[4]!r}")
                baseline = int(fields[4])
        if not np.isfinite(gain):
            raise InputError(path, f"{where}: invalid gain {fields[2]!r}")
        if not -(2**31) <= baseline < 2**31:
            raise InputError(path, f"{where}: baseline {baseline} is beyond the 32-bit range of WFDB samples")
        description = fields[8].strip() if len(fields) > 8 else ""
        signals.append(WfdbSignal(name, fmt, spf, skew, int(fm.group(4) or 0), gain, baseline, units, description))
    return WfdbHeader(n_sig, fs, n_samples, tuple(signals))


def _wfdb_files(header: WfdbHeader) -> dict[str, list[int]]:
    """The signal files of a record, each with the indices of its signals in frame order."""
    files: dict[str, list[int]] = {}
    for i, sig in enumerate(header.signals):
        files.setdefault(sig.file_name, []).append(i)
    return files


def _wfdb_bytes(fmt: str, samples: int) -> int:
    """The bytes that hold the first ``samples`` samples of a signal file (after its byte offset)."""
    per_group, group_bytes, partial = _WFDB_LAYOUT[fmt]
    whole, rest = divmod(samples, per_group)
    return whole * group_bytes + partial[rest]


def _wfdb_samples_held(fmt: str, size: int) -> int:
    """The samples that ``size`` bytes of a signal file hold whole."""
    per_group, group_bytes, partial = _WFDB_LAYOUT[fmt]
    whole, rest = divmod(max(size, 0), group_bytes)
    return whole * per_group + max(k for k in range(per_group) if partial[k] <= rest)


def _wfdb_file_samples(header: WfdbHeader, folder: Path, path: Path) -> int:
    """Check every signal file against the header; the samples per signal they hold (the header's when given).

    Raises:
        InputError: a missing file, mixed formats in one file, or a file shorter than the header claims.
    """
    held: list[int] = []
    for name, indices in _wfdb_files(header).items():
        sigs = [header.signals[i] for i in indices]
        dat = folder / name
        # a plain name (the parser allows no path): only a symbolic link can lead out of the folder
        if not dat.is_file() or (dat.is_symlink() and dat.resolve().parent != folder.resolve()):
            raise InputError(path, f"signal file {name} not found beside the header")
        if len({(s.fmt, s.byte_offset) for s in sigs}) != 1:
            raise InputError(path, f"signal file {name}: its signals declare different formats or byte offsets")
        samples = _wfdb_samples_held(sigs[0].fmt, dat.stat().st_size - sigs[0].byte_offset)
        frames = samples // sum(s.samples_per_frame for s in sigs)
        if header.n_samples is not None and frames < header.n_samples:
            raise InputError(
                path,
                f"signal file {name} holds {frames} samples per signal but the header claims {header.n_samples}: "
                "truncated or not this record's file",
            )
        held.append(frames)
    return header.n_samples if header.n_samples is not None else min(held)


def _wfdb_decode(fmt: str, raw: bytes) -> np.ndarray:
    """The samples in whole groups of a signal file's bytes, as signed integers."""
    if fmt in ("16", "61", "32"):
        return np.frombuffer(raw, {"16": "<i2", "61": ">i2", "32": "<i4"}[fmt])
    if fmt == "80":  # offset binary
        return np.frombuffer(raw, np.uint8).astype(np.int16) - 128
    if fmt == "160":
        return np.frombuffer(raw, "<u2").astype(np.int32) - 32768
    b = np.frombuffer(raw, np.uint8).astype(np.int32)
    if fmt == "24":
        b = b.reshape(-1, 3)
        v = b[:, 0] | (b[:, 1] << 8) | (b[:, 2] << 16)
        return v - ((v >> 23) << 24)
    if fmt == "212":  # sample 0: byte 0 and the low nibble of byte 1; sample 1: byte 2 and the high nibble
        b = b.reshape(-1, 3)
        out = np.empty((len(b), 2), np.int32)
        out[:, 0] = b[:, 0] | ((b[:, 1] & 0x0F) << 8)
        out[:, 1] = b[:, 2] | ((b[:, 1] >> 4) << 8)
        bits = 12
    else:
        b = b.reshape(-1, 4)
        out = np.empty((len(b), 3), np.int32)
        if fmt == "310":  # bits 1-10 of each little-endian 16-bit word; the third from bits 11-15 of both
            w0, w1 = b[:, 0] | (b[:, 1] << 8), b[:, 2] | (b[:, 3] << 8)
            out[:, 0] = (w0 >> 1) & 0x3FF
            out[:, 1] = (w1 >> 1) & 0x3FF
            out[:, 2] = (w0 >> 11) | ((w1 >> 11) << 5)
        else:  # 311: bits 0-9, 10-19 and 20-29 of a little-endian 32-bit word (bits 30-31 unused)
            w = b[:, 0] | (b[:, 1] << 8) | (b[:, 2] << 16) | ((b[:, 3] & 0x3F) << 24)
            out[:, 0] = w & 0x3FF
            out[:, 1] = (w >> 10) & 0x3FF
            out[:, 2] = (w >> 20) & 0x3FF
        bits = 10
    flat = out.reshape(-1)
    return flat - ((flat >> (bits - 1)) << bits)  # two's complement


def _wfdb_read_frames(
    dat: Path, fmt: str, byte_offset: int, per_frame: int, first: int, stop: int, path: Path
) -> np.ndarray:
    """Frames ``first`` to ``stop - 1`` of one signal file as (frames, samples per frame) integers.

    Only their bytes are read: from the group that holds the first sample (formats 212, 310 and 311 pack 2 or 3
    samples in a group of bytes) to the byte that completes the last.

    Raises:
        InputError: the file ends before the last frame, or cannot be read.
    """
    per_group, group_bytes, _ = _WFDB_LAYOUT[fmt]
    lo, hi = first * per_frame, stop * per_frame
    group = lo // per_group
    begin = group * per_group
    need = _wfdb_bytes(fmt, hi) - group * group_bytes
    whole = -(-(hi - begin) // per_group) * group_bytes
    try:
        with dat.open("rb") as fh:
            fh.seek(byte_offset + group * group_bytes)
            raw = fh.read(whole)
    except OSError as exc:
        raise InputError(path, f"signal file {dat.name} could not be read ({type(exc).__name__})") from exc
    if len(raw) < need:
        raise InputError(path, f"signal file {dat.name} holds fewer than {stop} samples per signal: truncated")
    if len(raw) < whole:  # the last group is cut short after the last sample needed
        raw += bytes(whole - len(raw))
    return _wfdb_decode(fmt, raw)[lo - begin : hi - begin].reshape(stop - first, per_frame)


def _wfdb_signal(
    header: WfdbHeader, folder: Path, channels: list[int], start: int, stop: int, n: int, path: Path
) -> np.ndarray:
    """Physical values of the signals ``channels`` over samples ``start`` to ``stop - 1`` of a record of ``n``,
    (channels, stop - start) float64: ``wfdb.rdrecord(base, start, stop, channels).p_signal.T``.

    Only the window's bytes are read. Sample i of a signal skewed by s lies in frame i + s (its samples beyond the
    record are invalid); a signal with k samples per frame gives their mean, truncated to an integer as wfdb does;
    physical = (digital - baseline) / gain, and the format's invalid-sample value is NaN.
    """
    length = stop - start
    row = {c: r for r, c in enumerate(channels)}
    digital = np.empty((len(channels), length), np.int64)
    for name, indices in _wfdb_files(header).items():
        wanted = [i for i in indices if i in row]
        if not wanted:
            continue
        sigs = [header.signals[i] for i in indices]
        fmt = sigs[0].fmt
        cols = [0]
        for s in sigs:
            cols.append(cols[-1] + s.samples_per_frame)
        last = min(stop + max(header.signals[i].skew for i in wanted), n)
        frames = _wfdb_read_frames(folder / name, fmt, sigs[0].byte_offset, cols[-1], start, last, path)
        for i in wanted:
            sig = header.signals[i]
            col = cols[indices.index(i)]
            block = frames[sig.skew : sig.skew + length, col : col + sig.samples_per_frame]
            got = len(block)
            if sig.samples_per_frame == 1:
                digital[row[i], :got] = block[:, 0]
            else:
                digital[row[i], :got] = (block.sum(axis=1, dtype=np.int64) / sig.samples_per_frame).astype(np.int64)
            digital[row[i], got:] = _WFDB_INVALID[fmt]
    sigs = [header.signals[c] for c in channels]
    invalid = digital == np.array([_WFDB_INVALID[s.fmt] for s in sigs], np.int64)[:, None]
    baselines = np.array([s.baseline for s in sigs], np.int64)[:, None]
    gains = np.array([s.gain for s in sigs], np.float64)[:, None]
    out = (digital.astype(np.float64) - baselines) / gains
    out[invalid] = np.nan
    return out


def read_wfdb(path: str | Path, signal_unit: str | None = None) -> EcgRecord:
    """A WFDB record given as ``name.hea``, ``name.dat`` or ``name`` (any accepted rate; units converted to mV).

    The header is parsed and bounded here; then only the 12 leads of the central ``MAX_READ_SECONDS`` are decoded,
    with NumPy, from the bytes that hold them (the values of ``wfdb.rdrecord`` with ``channels``, ``sampfrom`` and
    ``sampto``; wfdb itself is not imported).

    Args:
        path: the record.
        signal_unit: unit of signals whose header gives none (default mV, the WFDB default).

    Raises:
        InputError: no header, a header beyond the bounds (see :func:`parse_wfdb_header`), missing leads, signal
            files that do not hold what the header claims, unreadable record.
    """
    path = Path(path)
    base = path.with_suffix("") if path.suffix.lower() in WFDB_SUFFIXES else path
    header_path = base.with_suffix(".hea")
    if not header_path.is_file():
        raise InputError(path, "WFDB header (.hea) not found")
    size = header_path.stat().st_size
    if size > MAX_HEADER_BYTES:
        raise InputError(path, f"WFDB header of {size} bytes; at most {MAX_HEADER_BYTES} are accepted")
    header = parse_wfdb_header(header_path.read_bytes().decode("latin-1"), path)
    names = [s.description for s in header.signals]
    channels = sorted(lead_indices(names, path))
    n = _wfdb_file_samples(header, base.parent, path)
    if n == 0:
        raise InputError(path, "WFDB record holds no samples")
    sampfrom, sampto = _window(n, header.fs)
    if header.n_samples is None and sampto - sampfrom < n:
        raise InputError(
            path,
            f"WFDB header gives no number of samples and its signal files hold more than {MAX_READ_SECONDS:g} s; "
            "add the number of samples to the record line",
        )
    sig = _wfdb_signal(header, base.parent, channels, sampfrom, sampto, n, path)
    unitless = [names[c] for c in channels if header.signals[c].units is None]
    default_unit = signal_unit or "mV"
    units = [header.signals[c].units or default_unit for c in channels]
    scales = np.array([unit_scale_to_mv(u, path) for u in units])[:, None]
    warnings = [_no_unit_warning(unitless)] if unitless and signal_unit is None else []
    return EcgRecord(sig * scales, header.fs, [names[c] for c in channels], path, n, warnings)


# -- DICOM -------------------------------------------------------------------------------------------------------
def _group_facts(item: Any) -> tuple[str, str, int, int]:
    label = str(item.get("MultiplexGroupLabel", "") or "").strip()
    originality = str(item.get("WaveformOriginality", "") or "").strip().upper()
    try:
        channels = int(item.get("NumberOfWaveformChannels", 0) or 0)
        samples = int(item.get("NumberOfWaveformSamples", 0) or 0)
    except (TypeError, ValueError):
        channels, samples = 0, 0
    return label, originality, channels, samples


def _choose_group(seq: Any, path: Path) -> int:
    """The rhythm multiplex group: 12+ channels, labelled RHYTHM, else ORIGINAL, else the longest.

    Raises:
        InputError: no group with 12 channels, or only a median beat.
    """
    facts = [_group_facts(item) for item in seq]
    full = [i for i, f in enumerate(facts) if f[2] >= len(LEADS)]
    if not full:
        found = "; ".join(f"{f[0] or 'unlabelled'}: {f[2]} channels" for f in facts)
        raise InputError(path, f"no DICOM waveform multiplex group with 12 or more channels ({found})")
    rhythm = [i for i in full if facts[i][0].upper() == "RHYTHM"]
    original = [i for i in full if facts[i][1] == "ORIGINAL"]
    pool = rhythm or original or full
    best = max(pool, key=lambda i: facts[i][3])
    if "MEDIAN" in facts[best][0].upper() or "AVERAGE" in facts[best][0].upper():
        raise InputError(path, "the DICOM file holds only a median (average) beat, no rhythm waveform")
    return best


class LeadConflictError(ValueError):
    """A DICOM channel whose source code and label name different leads."""


def dicom_channel_lead(channel: Any) -> tuple[str | None, str]:
    """The canonical lead of a DICOM channel definition (or None) and a label for messages.

    The coded channel source (SCP-ECG ``5.6.3-9-n`` or MDC ``2:n``/``131072 + n``) decides first; the code meaning
    and the channel label are read tolerantly (``Lead I (Einthoven)``, ``avr``, ``D2``) when the code is unknown.

    Raises:
        LeadConflictError: the code and a label name different leads.
    """
    src = channel.ChannelSourceSequence[0] if channel.get("ChannelSourceSequence") else None
    scheme = str(getattr(src, "CodingSchemeDesignator", "") or "").strip().upper()
    code = str(getattr(src, "CodeValue", "") or "").strip()
    meaning = str(getattr(src, "CodeMeaning", "") or "").strip()
    label = str(channel.get("ChannelLabel", "") or "").strip()
    coded = _CODED_LEADS.get((scheme, code))
    if coded is None and scheme == "MDC" and code.upper().startswith("MDC_ECG_LEAD_"):
        coded = canonical_lead(code)
    named = {lead for lead in (canonical_lead(meaning), canonical_lead(label)) if lead is not None}
    leads = named | ({coded} if coded else set())
    shown = meaning or label or f"{scheme} {code}".strip() or "unlabelled"
    if len(leads) > 1:
        raise LeadConflictError(f"channel {shown!r} (code {scheme} {code}) names leads {', '.join(sorted(leads))}")
    return (coded or next(iter(named), None)), shown


def read_dicom(path: str | Path, signal_unit: str | None = None) -> EcgRecord:
    """A DICOM ECG waveform (12-lead ECG Waveform Storage, General or Ambulatory ECG).

    The rhythm multiplex group is taken (not a median beat), leads are mapped from the coded channel sources
    first, then from their meanings and labels; channels × samples are checked against the waveform data and only
    the 12 leads of the central ``MAX_READ_SECONDS`` are converted (physical = raw × sensitivity × correction +
    baseline, in the channel's sensitivity unit, then mV). Patient attributes are never read.

    Args:
        path: the file.
        signal_unit: unit of channels with no sensitivity unit (default mV).

    Raises:
        InputError: not DICOM, no usable waveform, bounds exceeded, unmappable or conflicting leads, short data.
    """
    import pydicom

    path = Path(path)
    try:
        ds = pydicom.dcmread(path)
    except Exception as exc:  # pydicom raises assorted types for a corrupt file (InvalidDicomError, BytesLength...)
        raise InputError(path, f"not a readable DICOM file ({type(exc).__name__})") from exc
    try:
        return _dicom_record(ds, path, signal_unit)
    except InputError:
        raise
    except Exception as exc:  # pydicom converts elements lazily and raises assorted types for a corrupt one
        raise InputError(path, f"unreadable DICOM waveform ({type(exc).__name__})") from exc


def _dicom_record(ds: Any, path: Path, signal_unit: str | None) -> EcgRecord:
    seq = ds.get("WaveformSequence")
    if not seq:
        raise InputError(path, "DICOM file has no WaveformSequence (not an ECG waveform)")
    group = _choose_group(seq, path)
    item = seq[group]
    _, _, n_ch, n = _group_facts(item)
    if n_ch > MAX_CHANNELS:
        raise InputError(path, f"DICOM waveform of {n_ch} channels; at most {MAX_CHANNELS} are accepted")
    if not 1 <= n <= MAX_RECORD_SAMPLES:
        raise InputError(path, f"DICOM waveform of {n} samples; 1 to {MAX_RECORD_SAMPLES} are accepted")
    if "SamplingFrequency" not in item:
        raise InputError(path, "DICOM waveform has no SamplingFrequency")
    fs = check_sampling_rate(item.SamplingFrequency, path)
    bits = int(item.get("WaveformBitsAllocated", 0) or 0)
    interpretation = str(item.get("WaveformSampleInterpretation", "") or "").strip().upper()
    code = _DICOM_DTYPES.get((bits, interpretation))
    if code is None:
        raise InputError(path, f"unsupported DICOM waveform samples: {bits} bits, interpretation {interpretation!r}")
    defs = item.get("ChannelDefinitionSequence") or []
    if len(defs) != n_ch:
        raise InputError(path, f"DICOM waveform declares {n_ch} channels but defines {len(defs)}")
    names: list[str] = []
    try:
        for ch in defs:
            lead, shown = dicom_channel_lead(ch)
            names.append(lead or shown)
    except LeadConflictError as exc:
        raise InputError(path, f"conflicting DICOM lead coding: {exc}") from exc
    channels = sorted(lead_indices(names, path))
    data = item.get("WaveformData")
    itemsize = bits // 8
    need = n * n_ch * itemsize
    if data is None or len(data) < need:
        held = 0 if data is None else len(data)
        raise InputError(
            path, f"DICOM WaveformData holds {held} bytes; {n_ch} channels × {n} samples need {need}: truncated"
        )
    start, stop = _window(n, fs)
    dtype = np.dtype(code).newbyteorder("<" if ds.original_encoding[1] in (True, None) else ">")
    raw = np.frombuffer(data, dtype=dtype, count=(stop - start) * n_ch, offset=start * n_ch * itemsize)
    sig = raw.reshape(stop - start, n_ch)[:, channels].T.astype(np.float64)
    unitless = []
    for row, c in enumerate(channels):
        ch = defs[c]
        unit = ""
        if ch.get("ChannelSensitivityUnitsSequence"):
            u = ch.ChannelSensitivityUnitsSequence[0]
            unit = str(u.get("CodeValue", "") or u.get("CodeMeaning", "") or "")
        if not unit:
            unitless.append(names[c])
        to_mv = unit_scale_to_mv(unit or signal_unit or "mV", path)
        sensitivity = float(ch.get("ChannelSensitivity", 1.0) or 1.0)
        correction = float(ch.get("ChannelSensitivityCorrectionFactor", 1.0) or 1.0)
        baseline = float(ch.get("ChannelBaseline", 0.0) or 0.0)
        sig[row] = (sig[row] * sensitivity * correction + baseline) * to_mv
    warnings = [_no_unit_warning(unitless)] if unitless and signal_unit is None else []
    return EcgRecord(sig, fs, [names[c] for c in channels], path, n, warnings)


# -- CSV and NPY ---------------------------------------------------------------------------------------------------
def _csv_lines(fh: Any, path: Path) -> Iterator[str]:
    """Non-blank lines, each at most ``MAX_CSV_LINE_BYTES``, at most ``MAX_CSV_BYTES`` in all."""
    total = 0
    while True:
        line = fh.readline(MAX_CSV_LINE_BYTES + 1)
        if not line:
            return
        if len(line) > MAX_CSV_LINE_BYTES:
            raise InputError(path, f"CSV line longer than {MAX_CSV_LINE_BYTES} characters")
        total += len(line)
        if total > MAX_CSV_BYTES:
            raise InputError(path, f"more than {MAX_CSV_BYTES // 2**20} MiB of CSV text in {MAX_READ_SECONDS:g} s")
        if line.strip():
            yield line


def _read_csv(path: Path, max_rows: int) -> tuple[np.ndarray, list[str] | None, bool]:
    """(n, leads) values, their names (None: canonical order) and whether rows were left unread."""
    with path.open(newline="", encoding="utf-8-sig") as fh:
        lines = _csv_lines(fh, path)
        first = next(lines, None)
        if first is None:
            raise InputError(path, "empty CSV file")
        cells = next(csv.reader([first]))
        if len(cells) > MAX_CHANNELS:
            raise InputError(
                path, f"CSV with {len(cells)} columns; at most {MAX_CHANNELS} (one per lead, one row per sample)"
            )
        try:
            [float(v) for v in cells]
            names = None
        except ValueError:
            names = [c.strip() for c in cells]
        if names is None:
            if len(cells) != len(LEADS):
                raise InputError(
                    path,
                    f"a CSV without a header row needs 12 leads as columns in canonical order (one row per sample); "
                    f"got {len(cells)} columns",
                )
            columns = list(range(len(LEADS)))
        else:
            columns = sorted(lead_indices(names, path))
        more = False

        def rows() -> Iterator[str]:
            nonlocal more
            if names is None:
                yield first
            count = 1 if names is None else 0
            for line in lines:
                if count >= max_rows:
                    more = True
                    return
                count += 1
                yield line

        arr = np.loadtxt(rows(), delimiter=",", quotechar='"', usecols=columns, ndmin=2, dtype=np.float64)
    return arr, (None if names is None else [names[c] for c in columns]), more


def _read_npy(path: Path, fs: float) -> tuple[np.ndarray, int]:
    """(12, window) values of an NPY record (memory-mapped; only the window is copied) and its length."""
    try:
        arr = np.load(path, mmap_mode="r", allow_pickle=False)
    except Exception as exc:  # numpy's header parser raises assorted types (ValueError, tokenize.TokenError...)
        raise InputError(path, f"not a readable NPY file ({type(exc).__name__})") from exc
    if not isinstance(arr, np.ndarray) or arr.dtype.kind not in "iuf":
        raise InputError(path, "an NPY record must hold one numeric array")
    if arr.ndim != 2:
        raise InputError(path, f"expected a 2D array, got shape {arr.shape}")
    if arr.shape[0] == len(LEADS):
        leads_first = arr
    elif arr.shape[1] == len(LEADS):
        leads_first = arr.T
    else:
        raise InputError(path, f"expected 12 leads in canonical order, got shape {arr.shape}")
    return central_window(leads_first, fs), leads_first.shape[1]


def read_array(path: str | Path, sampling_rate: float | None, signal_unit: str | None = None) -> EcgRecord:
    """A CSV (rows = samples, columns = leads; a header row of lead names, else 12 columns in canonical order) or
    NPY ((12, n) or (n, 12), canonical order) at ``sampling_rate``, in ``signal_unit`` (default mV).

    An NPY is memory-mapped and its central ``MAX_READ_SECONDS`` copied; a CSV is read up to its first
    ``MAX_READ_SECONDS`` (the rest is not read, and the record says so in its warnings).

    Raises:
        InputError: no or a refused sampling rate, unreadable file, bounds exceeded, not 12 leads.
    """
    path = Path(path)
    if sampling_rate is None:
        raise InputError(path, "CSV/NPY files carry no sampling rate; pass --sampling-rate HZ")
    fs = check_sampling_rate(sampling_rate, path)
    scale = unit_scale_to_mv(signal_unit or "mV", path)
    names: list[str] | None = None
    warnings: list[str] = []
    total: int | None = None
    try:
        if path.suffix.lower() == ".npy":
            arr, total = _read_npy(path, fs)
        else:
            values, names, more = _read_csv(path, round(MAX_READ_SECONDS * fs))
            arr = values.T
            if more:
                warnings.append(
                    f"the CSV is longer than {MAX_READ_SECONDS:g} s: only its first {MAX_READ_SECONDS:g} s were "
                    "read (and their central 10 s used)"
                )
    except (OSError, ValueError, EOFError, csv.Error) as exc:
        if isinstance(exc, InputError):
            raise
        raise InputError(path, f"unreadable {path.suffix} file ({type(exc).__name__}: {exc})") from exc
    return EcgRecord(arr * scale, fs, names, path, total, warnings)


def read_record(path: str | Path, sampling_rate: float | None = None, signal_unit: str | None = None) -> EcgRecord:
    """Read one record by its suffix (.hea/.dat/no suffix → WFDB, .dcm → DICOM, .csv/.npy → array).

    Args:
        path: the record.
        sampling_rate: rate of a CSV/NPY record (Hz).
        signal_unit: unit of CSV/NPY values, and of WFDB/DICOM channels whose file gives none (default mV).

    Raises:
        InputError: missing file or unsupported format.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix in WFDB_SUFFIXES or (suffix == "" and path.with_suffix(".hea").is_file()):
        if not path.exists() and not path.with_suffix(".hea").is_file():
            raise InputError(path, "does not exist")
        return read_wfdb(path, signal_unit)
    if not path.exists():
        raise InputError(path, "does not exist")
    if suffix in DICOM_SUFFIXES:
        return read_dicom(path, signal_unit)
    if suffix in ARRAY_SUFFIXES:
        return read_array(path, sampling_rate, signal_unit)
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
        leads: lead names in row order (written as "Lead X" channel sources with their SCP-ECG codes, CID 3001;
            a name that is no canonical lead gets a label only).
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
    for lead in leads:
        src = DicomDataset()
        canon = canonical_lead(lead)
        if canon is not None:
            src.CodeValue = f"5.6.3-9-{_LEAD_NUMBERS[canon]}"
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
