"""ECG preprocessing shared by training, evaluation, the CLI and the service (never copied between them).

One rule set turns any read record into the model's input (12, 1000) float32 in mV at 100 Hz:

1. leads are mapped by name to I, II, III, aVR, aVL, aVF, V1–V6 (any order, extra leads ignored; a missing
   lead is an error);
2. NaN/inf anywhere, or a flat lead (peak-to-peak below 10 µV), is an error;
3. resampled to 100 Hz with a polyphase filter (``scipy.signal.resample_poly``);
4. length rule [INF]: longer than 10 s → the central 10 s; 8–10 s → zero-padded at the end (after the high-pass
   filter, 0 mV is the isoelectric baseline); shorter than 8 s → an error;
5. baseline wander removed by a zero-phase first-order Butterworth high-pass at 0.5 Hz (``filtfilt``).
"""

from __future__ import annotations

import re
from fractions import Fraction
from pathlib import Path

import numpy as np

from models.protoecgnet import LEADS
from pipelines.common.errors import InputError

__all__ = [
    "FLAT_PEAK_TO_PEAK_MV",
    "MIN_SECONDS",
    "TARGET_SECONDS",
    "canonical_lead",
    "check_signal",
    "fit_length",
    "highpass",
    "map_leads",
    "preprocess_signal",
    "resample",
]

TARGET_SECONDS = 10.0
MIN_SECONDS = 8.0
FLAT_PEAK_TO_PEAK_MV = 0.01

_CANON = {name.upper(): name for name in LEADS}


def canonical_lead(name: str) -> str | None:
    """The canonical name of a lead label or None.

    Accepts ``"Lead aVR"``, ``"AVR"``, ``"v1"``, ``"MDC_ECG_LEAD_II"`` and the DICOM code meanings vendors
    write, such as ``"Lead I (Einthoven)"`` or ``"Lead aVR (Goldberger)"`` (a parenthesised system name).
    """
    s = str(name).strip().upper()
    s = re.sub(r"\s*\(.*?\)\s*", "", s)  # "(EINTHOVEN)", "(GOLDBERGER)", "(WILSON)"
    s = re.sub(r"^(MDC_ECG_LEAD_|LEAD[\s_-]*)", "", s)
    s = s.replace(" ", "").replace("_", "")
    return _CANON.get(s)


def map_leads(signal: np.ndarray, names: list[str], path: str | Path) -> np.ndarray:
    """Reorder a (n_leads, n) signal into the canonical 12 leads by name.

    Raises:
        InputError: a lead is missing or named twice.
    """
    index: dict[str, int] = {}
    for i, raw in enumerate(names):
        canon = canonical_lead(raw)
        if canon is None:
            continue
        if canon in index:
            raise InputError(path, f"lead {canon} appears twice")
        index[canon] = i
    missing = [lead for lead in LEADS if lead not in index]
    if missing:
        raise InputError(path, f"missing lead(s) {', '.join(missing)}; found {', '.join(map(str, names)) or 'none'}")
    return np.asarray(signal)[[index[lead] for lead in LEADS]]


def check_signal(signal: np.ndarray, path: str | Path, leads: tuple[str, ...] = LEADS) -> None:
    """Reject NaN/inf values and flat leads.

    Raises:
        InputError: naming the file and the offending leads.
    """
    bad = [leads[i] for i in range(signal.shape[0]) if not np.all(np.isfinite(signal[i]))]
    if bad:
        raise InputError(path, f"NaN or infinite values in lead(s) {', '.join(bad)}")
    ptp = np.ptp(signal, axis=1)
    flat = [leads[i] for i in range(signal.shape[0]) if ptp[i] < FLAT_PEAK_TO_PEAK_MV]
    if flat:
        raise InputError(path, f"flat line in lead(s) {', '.join(flat)} (peak-to-peak below 10 µV)")


def resample(signal: np.ndarray, fs: float, target: float) -> np.ndarray:
    """Polyphase resampling of (n_leads, n) from ``fs`` to ``target`` Hz (rational approximation of the ratio)."""
    from scipy.signal import resample_poly

    if abs(fs - target) < 1e-9:
        return np.asarray(signal, dtype=np.float64)
    ratio = Fraction(target / fs).limit_denominator(1000)
    return resample_poly(np.asarray(signal, dtype=np.float64), ratio.numerator, ratio.denominator, axis=-1)


def fit_length(signal: np.ndarray, fs: float, path: str | Path, pad: bool = True) -> np.ndarray:
    """Central 10 s of a longer record; ``pad`` zero-pads an 8–10 s record at the end.

    Raises:
        InputError: shorter than 8 s.
    """
    n_target = round(TARGET_SECONDS * fs)
    n = signal.shape[-1]
    if n < round(MIN_SECONDS * fs):
        raise InputError(path, f"record too short: {n / fs:.2f} s; at least {MIN_SECONDS:g} s are needed")
    if n > n_target:
        start = (n - n_target) // 2
        return signal[..., start : start + n_target]
    if n < n_target and pad:
        return np.pad(signal, [(0, 0)] * (signal.ndim - 1) + [(0, n_target - n)])
    return signal


def highpass(signal: np.ndarray, fs: float, cutoff_hz: float = 0.5) -> np.ndarray:
    """Zero-phase first-order Butterworth high-pass per lead (baseline-wander removal); ``cutoff_hz=0`` is a no-op."""
    if cutoff_hz <= 0:
        return signal
    from scipy.signal import butter, filtfilt

    b, a = butter(1, cutoff_hz, btype="highpass", fs=fs)
    return filtfilt(b, a, signal, axis=-1)


def preprocess_signal(
    signal: np.ndarray,
    fs: float,
    lead_names: list[str] | None,
    path: str | Path,
    *,
    target_fs: float = 100.0,
    highpass_hz: float = 0.5,
) -> np.ndarray:
    """The model input from a raw record.

    Args:
        signal: (n_leads, n) in mV.
        fs: its sampling rate in Hz.
        lead_names: names of the rows (None: already in canonical order, 12 rows).
        path: the file, for error messages.
        target_fs: the model's rate (100 Hz).
        highpass_hz: baseline-wander cut-off.

    Returns:
        (12, 10·target_fs) float32 in mV.

    Raises:
        InputError: missing lead, NaN, flat line, too short, bad rate.
    """
    if not np.isfinite(fs) or fs <= 0:
        raise InputError(path, f"invalid sampling rate {fs!r}")
    sig = np.asarray(signal, dtype=np.float64)
    if sig.ndim != 2:
        raise InputError(path, f"expected a 2D (leads, samples) signal, got shape {sig.shape}")
    if lead_names is None:
        if sig.shape[0] != len(LEADS):
            raise InputError(path, f"expected 12 leads, got {sig.shape[0]}")
    else:
        sig = map_leads(sig, list(lead_names), path)
    check_signal(sig, path)
    if sig.shape[-1] < round(MIN_SECONDS * fs):
        fit_length(sig, fs, path)  # raises with the record's duration
    sig = resample(sig, fs, target_fs)
    sig = fit_length(sig, target_fs, path, pad=False)
    sig = highpass(sig, target_fs, highpass_hz)
    sig = fit_length(sig, target_fs, path, pad=True)
    return np.ascontiguousarray(sig, dtype=np.float32)
