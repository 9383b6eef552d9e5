"""ECG preprocessing shared by training, evaluation, the CLI and the service (never copied between them).

One rule set turns any read record into the model's input (12, 1000) float32 in mV at 100 Hz:

1. leads are mapped by name to I, II, III, aVR, aVL, aVF, V1–V6 (any order, extra leads ignored; a missing
   lead is an error);
2. NaN/inf anywhere, amplitudes no ECG in mV can have (µV or V labelled mV), or a flat lead (peak-to-peak below
   10 µV) is an error;
3. the sampling rate must lie in [``MIN_FS``, ``MAX_FS``] and convert exactly to 100 Hz with polyphase factors of
   at most ``MAX_RESAMPLE_FACTOR`` (a rate that could only be approximated would stretch time, so it is refused;
   these rules live in :mod:`pipelines.ecg.rates`, torch- and numpy-free, for the options model);
   a record longer than 12 s is cut to its central 12 s first (the 1 s margins absorb the filter's edges);
4. resampled to 100 Hz with a polyphase filter (``scipy.signal.resample_poly``);
5. length rule [INF]: longer than 10 s → the central 10 s; 8–10 s → zero-padded at the end (after the high-pass
   filter, 0 mV is the isoelectric baseline); shorter than 8 s → an error;
6. baseline wander removed by a zero-phase first-order Butterworth high-pass at 0.5 Hz (``filtfilt``).
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from models.protoecgnet import LEADS
from pipelines.common.errors import InputError
from pipelines.ecg.rates import MAX_FS, MAX_RESAMPLE_FACTOR, MIN_FS, rate_problem, resample_factors

__all__ = [
    "FLAT_PEAK_TO_PEAK_MV",
    "MAX_FS",
    "MAX_PLAUSIBLE_MV",
    "MAX_RESAMPLE_FACTOR",
    "MIN_FS",
    "MIN_SECONDS",
    "TARGET_SECONDS",
    "canonical_lead",
    "check_sampling_rate",
    "check_signal",
    "fit_length",
    "highpass",
    "lead_indices",
    "map_leads",
    "preprocess_signal",
    "rate_problem",
    "resample",
    "resample_factors",
    "robust_amplitude_mv",
]

TARGET_SECONDS = 10.0
MIN_SECONDS = 8.0
FLAT_PEAK_TO_PEAK_MV = 0.01
#: a robust amplitude (see :func:`robust_amplitude_mv`) above this is no ECG in mV: µV labelled mV, most likely
MAX_PLAUSIBLE_MV = 20.0
#: margin kept on each side of the central 10 s when a long record is cut before resampling (filter edges)
RESAMPLE_MARGIN_SECONDS = 1.0

_CANON = {name.upper(): name for name in LEADS}
#: other spellings of the limb leads: European D1-D3 / DI-DIII and MIT-BIH's modified limb leads (MLII)
_ALIASES = {"D1": "I", "D2": "II", "D3": "III", "DI": "I", "DII": "II", "DIII": "III"}
_ALIASES.update({f"ML{lead}": lead for lead in ("I", "II", "III")})


def canonical_lead(name: str) -> str | None:
    """The canonical name of a lead label or None.

    Accepts ``"Lead aVR"``, ``"AVR"``, ``"v1"``, ``"MDC_ECG_LEAD_II"``, ``"ECG II"``, the DICOM code meanings
    vendors write, such as ``"Lead I (Einthoven)"`` or ``"Lead aVR (Goldberger)"`` (a parenthesised system name),
    the European ``D1``-``D3``/``DI``-``DIII`` and WFDB's modified limb leads ``MLI``-``MLIII`` (MIT-BIH's
    ``MLII``). Bipolar or derived labels (``V1-V2``, ``-aVR``, ``V4R``) are no canonical lead.
    """
    s = str(name).strip().upper()
    s = re.sub(r"\s*\(.*?\)\s*", "", s)  # "(EINTHOVEN)", "(GOLDBERGER)", "(WILSON)"
    s = re.sub(r"^(MDC_ECG_LEAD_|ECG[\s_]+LEAD[\s_-]*|LEAD[\s_-]*|ECG[\s_]+)", "", s)
    s = s.replace(" ", "").replace("_", "")
    return _CANON.get(s) or _ALIASES.get(s)


def lead_indices(names: list[str], path: str | Path) -> list[int]:
    """For each canonical lead in order, the index of the name that is it.

    Raises:
        InputError: a lead is missing (naming the channels that map to no lead) or named twice.
    """
    index: dict[str, int] = {}
    unmapped: list[str] = []
    for i, raw in enumerate(names):
        canon = canonical_lead(raw)
        if canon is None:
            unmapped.append(repr(str(raw)))
            continue
        if canon in index:
            raise InputError(path, f"lead {canon} appears twice ({names[index[canon]]!r} and {raw!r})")
        index[canon] = i
    missing = [lead for lead in LEADS if lead not in index]
    if missing:
        found = ", ".join(map(str, names)) or "none"
        other = f"; channels mapped to no lead: {', '.join(unmapped)}" if unmapped else ""
        raise InputError(
            path,
            f"missing lead(s) {', '.join(missing)}; found {found}{other} (a 12-lead record needs I, II, III, aVR, "
            "aVL, aVF, V1-V6; bipolar or derived leads such as V1-V2 are not converted)",
        )
    return [index[lead] for lead in LEADS]


def map_leads(signal: np.ndarray, names: list[str], path: str | Path) -> np.ndarray:
    """Reorder a (n_leads, n) signal into the canonical 12 leads by name.

    Raises:
        InputError: a lead is missing or named twice.
    """
    return np.asarray(signal)[lead_indices(names, path)]


def robust_amplitude_mv(signal: np.ndarray) -> float:
    """The median over leads of each lead's 99th percentile of ``|x - median(x)|``: an R wave's height, give or
    take, that neither a few spikes nor a lead off can move (about 0.3-2 mV for an ECG in mV)."""
    sig = np.asarray(signal, dtype=np.float64)
    dev = np.abs(sig - np.median(sig, axis=-1, keepdims=True))
    return float(np.median(np.percentile(dev, 99, axis=-1)))


def check_signal(signal: np.ndarray, path: str | Path, leads: tuple[str, ...] = LEADS) -> None:
    """Reject NaN/inf values, amplitudes that no ECG in mV can have, and flat leads.

    Raises:
        InputError: naming the file and the offending leads, or the amplitude found and the likely unit.
    """
    bad = [leads[i] for i in range(signal.shape[0]) if not np.all(np.isfinite(signal[i]))]
    if bad:
        raise InputError(path, f"NaN or infinite values in lead(s) {', '.join(bad)}")
    amplitude = robust_amplitude_mv(signal)
    if amplitude > MAX_PLAUSIBLE_MV:
        raise InputError(
            path,
            f"amplitudes up to {amplitude:.4g} mV (median over leads of the 99th percentile), beyond any ECG in mV "
            f"(limit {MAX_PLAUSIBLE_MV:g} mV): is the record in µV? Give its unit (signal_unit=uV for CSV/NPY, or "
            "the units in the WFDB header / DICOM channel sensitivity)",
        )
    ptp = np.ptp(signal, axis=1)
    flat = [leads[i] for i in range(signal.shape[0]) if ptp[i] < FLAT_PEAK_TO_PEAK_MV]
    if len(flat) == signal.shape[0] and float(ptp.max()) > 0:
        raise InputError(
            path,
            f"every lead is flat (peak-to-peak at most {float(ptp.max()):.3g} mV, below 10 µV): is the record in V? "
            "Give its unit (signal_unit=V for CSV/NPY, or the units in the WFDB header / DICOM channel sensitivity)",
        )
    if flat:
        raise InputError(path, f"flat line in lead(s) {', '.join(flat)} (peak-to-peak below 10 µV)")


def check_sampling_rate(fs: float, path: str | Path, target: float = 100.0) -> float:
    """``fs`` as a float when it is in range and converts exactly to ``target``.

    Raises:
        InputError: naming the file, the rate and the limit.
    """
    try:
        value = float(fs)
    except (TypeError, ValueError):
        raise InputError(path, f"invalid sampling rate {fs!r}") from None
    problem = rate_problem(value, target)
    if problem is not None:
        raise InputError(path, problem)
    return value


def resample(signal: np.ndarray, fs: float, target: float) -> np.ndarray:
    """Polyphase resampling of (n_leads, n) from ``fs`` to ``target`` Hz with the exact ratio.

    Raises:
        ValueError: a ratio that could only be approximated (see :func:`resample_factors`).
    """
    from scipy.signal import resample_poly

    up, down = resample_factors(fs, target)
    if up == down:
        return np.asarray(signal, dtype=np.float64)
    return resample_poly(np.asarray(signal, dtype=np.float64), up, down, axis=-1)


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
        InputError: missing lead, NaN, implausible amplitude, flat line, too short, bad rate.
    """
    fs = check_sampling_rate(fs, path, target_fs)
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
    keep = round((TARGET_SECONDS + 2 * RESAMPLE_MARGIN_SECONDS) * fs)
    if sig.shape[-1] > keep:  # only the central 10 s is used: resample no more than it and its margins
        start = (sig.shape[-1] - keep) // 2
        sig = sig[:, start : start + keep]
    sig = resample(sig, fs, target_fs)
    sig = fit_length(sig, target_fs, path, pad=False)
    sig = highpass(sig, target_fs, highpass_hz)
    sig = fit_length(sig, target_fs, path, pad=True)
    return np.ascontiguousarray(sig, dtype=np.float32)
