"""CSV cells that a spreadsheet never runs as a formula (OWASP "CSV injection").

Every CSV the app writes (``report.csv``, ``predictions.csv``, ``per_class.csv``...) goes through
:func:`safe_writer` (or :func:`safe_cell`): a text cell starting with ``=``, ``+``, ``-``, ``@``, a tab or a
carriage return gets a leading single quote, so a file named ``=HYPERLINK(...)`` shows as text. Numbers stay
numbers: a number (``-0.5``) or a string that is a plain decimal number (``"-0.500000"``, ``"1e-3"``) is written
unchanged.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Iterable, Mapping
from numbers import Number
from typing import IO, Any

__all__ = ["FORMULA_PREFIXES", "SafeDictWriter", "SafeWriter", "safe_cell", "safe_row", "safe_writer"]

#: a cell starting with one of these may run as a formula (OWASP)
FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")
_PLAIN_NUMBER = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?")


def safe_cell(value: Any) -> Any:
    """``value`` as a cell that cannot start a formula: numbers unchanged, other values as text, a leading
    ``'`` added to text that starts with a formula character and is not a plain number."""
    if value is None or isinstance(value, Number):  # bool, int, float, NumPy scalars
        return value
    text = str(value)
    if text.startswith(FORMULA_PREFIXES) and not _PLAIN_NUMBER.fullmatch(text):
        return "'" + text
    return text


def safe_row(row: Iterable[Any]) -> list[Any]:
    """Every cell of a row through :func:`safe_cell`."""
    return [safe_cell(v) for v in row]


class SafeWriter:
    """``csv.writer`` whose every cell goes through :func:`safe_cell`."""

    def __init__(self, fh: IO[str], **kwargs: Any) -> None:
        self._writer = csv.writer(fh, **kwargs)

    def writerow(self, row: Iterable[Any]) -> Any:
        return self._writer.writerow(safe_row(row))

    def writerows(self, rows: Iterable[Iterable[Any]]) -> None:
        for row in rows:
            self.writerow(row)


class SafeDictWriter:
    """``csv.DictWriter`` whose header and every value go through :func:`safe_cell`."""

    def __init__(self, fh: IO[str], fieldnames: Iterable[str], **kwargs: Any) -> None:
        self.fieldnames = list(fieldnames)
        self._writer = SafeWriter(fh, **kwargs)

    def writeheader(self) -> Any:
        return self._writer.writerow(self.fieldnames)

    def writerow(self, row: Mapping[str, Any]) -> Any:
        unknown = set(row) - set(self.fieldnames)
        if unknown:
            raise ValueError(f"dict contains fields not in fieldnames: {', '.join(sorted(map(repr, unknown)))}")
        return self._writer.writerow([row.get(k, "") for k in self.fieldnames])

    def writerows(self, rows: Iterable[Mapping[str, Any]]) -> None:
        for row in rows:
            self.writerow(row)


def safe_writer(fh: IO[str], **kwargs: Any) -> SafeWriter:
    """A CSV writer on ``fh`` (as ``csv.writer``) that neutralises formula cells."""
    return SafeWriter(fh, **kwargs)
