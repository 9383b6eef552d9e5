"""The sampling rates the ``ecg`` task accepts: the model's rate, the accepted range and the exactness rule.

Standard library only (no numpy, torch or ``models``): the task's options model (``pipelines.ecg.options``)
validates a ``sampling_rate`` with :func:`rate_problem`, and the CLI checks options before anything heavy loads.
``pipelines.ecg.transforms`` re-exports every name here and does the resampling.
"""

from __future__ import annotations

import math
from fractions import Fraction

__all__ = ["MAX_FS", "MAX_RESAMPLE_FACTOR", "MIN_FS", "SAMPLING_RATE", "rate_problem", "resample_factors"]

#: the model's rate (Hz): PTB-XL's ``filename_lr`` records
SAMPLING_RATE = 100.0
#: the sampling rates accepted from form fields, WFDB headers and DICOM alike (Hz)
MIN_FS = 50.0
MAX_FS = 20_000.0
#: the largest polyphase up or down factor: beyond it a rate only converts approximately (or at absurd cost)
MAX_RESAMPLE_FACTOR = 10_000


def _exact(value: float) -> Fraction:
    # the shortest decimal that reads back as this float: "257.3" is 2573/10, not the binary neighbour
    return Fraction(repr(float(value)))


def resample_factors(fs: float, target: float) -> tuple[int, int]:
    """The exact polyphase factors (up, down) from ``fs`` to ``target`` Hz.

    Raises:
        ValueError: the ratio needs a factor above ``MAX_RESAMPLE_FACTOR`` (only an approximation would fit).
    """
    ratio = _exact(target) / _exact(fs)
    if max(ratio.numerator, ratio.denominator) > MAX_RESAMPLE_FACTOR:
        raise ValueError(
            f"sampling rate {float(fs)!r} Hz converts to {target:g} Hz only approximately (polyphase factors "
            f"{ratio.numerator}/{ratio.denominator}, limit {MAX_RESAMPLE_FACTOR}), which would stretch time; "
            "give the exact rate (e.g. 360 rather than 360.0001)"
        )
    return ratio.numerator, ratio.denominator


def rate_problem(fs: float, target: float = SAMPLING_RATE) -> str | None:
    """What is wrong with a sampling rate (out of range, or convertible to ``target`` only approximately), or None."""
    fs = float(fs)
    if not math.isfinite(fs) or fs <= 0:
        return f"invalid sampling rate {fs!r} Hz"
    if not MIN_FS <= fs <= MAX_FS:
        return f"sampling rate {fs!r} Hz is outside the accepted range {MIN_FS:g}-{MAX_FS:g} Hz"
    try:
        resample_factors(fs, target)
    except ValueError as exc:
        return str(exc)
    return None
