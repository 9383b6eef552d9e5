"""Batch prediction over many inputs with one report: shared by ``medinfer predict`` and service jobs."""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pipelines.common.csvsafe import safe_writer
from pipelines.common.errors import InputError
from pipelines.common.task import Collected, InputItem, ItemOutput, OutputFile, Predictor, Prepared

logger = logging.getLogger(__name__)

REPORT_JSON = "report.json"
REPORT_CSV = "report.csv"
#: the columns of ``report.csv`` (``name`` and ``source`` last, so the older columns keep their places)
REPORT_COLUMNS = ("input", "status", "outputs", "error", "seconds", "name", "source")
#: names no input may take: ``report.json``/``report.csv`` are the run's own (a classifier writes ``<name>.json``)
RESERVED_NAMES = (Path(REPORT_JSON).stem,)


def non_finite(data: Any, where: str = "") -> tuple[str, str] | None:
    """Where the first NaN or infinity in (nested mappings and sequences of) ``data`` is, and which it is.

    Returns:
        ``(where, "NaN" | "inf")`` with ``where`` a key path like ``probabilities.B`` or ``values[3]``; ``None``
        when every number is finite.
    """
    if isinstance(data, float | np.floating):
        value = float(data)
        return None if math.isfinite(value) else (where or "value", "NaN" if math.isnan(value) else "inf")
    if isinstance(data, np.ndarray):
        if data.dtype.kind not in "fc":
            return None
        bad = ~np.isfinite(data)
        if not bad.any():
            return None
        first = np.argwhere(bad)[0]
        kind = "NaN" if np.isnan(data[tuple(first)]) else "inf"
        return f"{where}[{', '.join(str(int(i)) for i in first)}]", kind
    if isinstance(data, Mapping):
        for key, value in data.items():
            found = non_finite(value, f"{where}.{key}" if where else str(key))
            if found is not None:
                return found
    elif isinstance(data, list | tuple):
        for i, value in enumerate(data):
            found = non_finite(value, f"{where}[{i}]")
            if found is not None:
                return found
    return None


@dataclass
class ItemResult:
    """Outcome of one input: ``status`` is ``ok``, ``error`` or ``skipped``; ``files`` are the files written.

    ``name`` is the input's output name (unique within a run: its files are named after it) and ``source`` the
    paths it was read from, by role, as given. A result whose outputs hold NaN or infinity is never ``ok``: it
    becomes an ``error`` saying so, and such outputs are dropped whatever the status (JSON has no NaN).
    """

    input: str
    status: str
    outputs: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    seconds: float = 0.0
    timings: dict[str, float] = field(default_factory=dict)
    files: list[OutputFile] = field(default_factory=list)
    name: str | None = None
    source: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        bad = non_finite(self.outputs)
        if bad is not None:
            if self.status == "ok":
                where, kind = bad
                self.status = "error"
                self.error = f"{self.input}: model output is not finite ({kind} at {where}); no result for this input"
            self.outputs = {}
        self.timings = {k: v for k, v in self.timings.items() if math.isfinite(v)}
        if not math.isfinite(self.seconds):
            self.seconds = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "input": self.input,
            "name": self.name,
            "source": dict(self.source),
            "status": self.status,
            "outputs": self.outputs,
            "files": [f.to_dict() for f in self.files],
            "error": self.error,
            "seconds": round(self.seconds, 4),
            "timings": {k: round(v, 4) for k, v in self.timings.items()},
        }


@dataclass
class Report:
    """All results of one prediction run."""

    task: str
    checkpoint: str
    results: list[ItemResult]

    @property
    def ok(self) -> bool:
        return all(r.status == "ok" for r in self.results)

    def to_dict(self) -> dict[str, Any]:
        counts = {s: sum(r.status == s for r in self.results) for s in ("ok", "error", "skipped")}
        return {
            "task": self.task,
            "checkpoint": self.checkpoint,
            "counts": counts,
            "results": [r.to_dict() for r in self.results],
        }

    def write(self, out_dir: Path) -> None:
        """Write ``report.json`` and ``report.csv``; no cell of the CSV can start a spreadsheet formula.

        Raises:
            ValueError: a NaN or infinity would reach the JSON (strict JSON has none).
        """
        out_dir.mkdir(parents=True, exist_ok=True)
        text = json.dumps(self.to_dict(), indent=2, default=str, allow_nan=False)
        (out_dir / REPORT_JSON).write_text(text, encoding="utf-8")
        with (out_dir / REPORT_CSV).open("w", newline="", encoding="utf-8") as fh:
            writer = safe_writer(fh)
            writer.writerow(REPORT_COLUMNS)
            for r in self.results:
                writer.writerow(
                    [
                        r.input,
                        r.status,
                        json.dumps(r.outputs, default=str, allow_nan=False),
                        r.error or "",
                        f"{r.seconds:.4f}",
                        r.name or "",
                        json.dumps(r.source) if r.source else "",
                    ]
                )


def _result(item: InputItem, status: str, **fields: Any) -> ItemResult:
    """An item's result, shown by its one path (or its name), with its output name and source paths."""
    shown = str(next(iter(item.paths.values()))) if len(item.paths) == 1 else item.name
    source = {role: str(path) for role, path in item.paths.items()}
    return ItemResult(shown, status, name=item.name, source=source, **fields)


def unique_names(items: Iterable[InputItem], reserved: Iterable[str] = ()) -> list[InputItem]:
    """The items with output names unique within a run, so that no input's files overwrite another's.

    In input order, the first item of a name keeps it; a later one becomes ``<name>-2``, ``-3``... (the first
    free number). Names are compared case-insensitively (``Case`` and ``case`` share a file on macOS and
    Windows); a name in ``reserved`` (the stems of the run's own files, e.g. ``report``) is never used.

    Args:
        items: the run's items in input order.
        reserved: names no item may take.
    """
    items = list(items)
    taken = {r.casefold() for r in reserved}
    firsts = {it.name.casefold() for it in items} - taken  # each name's first holder keeps it
    out: list[InputItem] = []
    for item in items:
        key = item.name.casefold()
        if key in firsts:
            firsts.discard(key)
            taken.add(key)
            out.append(item)
            continue
        k = 2
        while (candidate := f"{item.name}-{k}").casefold() in taken or candidate.casefold() in firsts:
            k += 1
        taken.add(candidate.casefold())
        out.append(dataclasses.replace(item, name=candidate))
    return out


def run_predictions(
    predictor: Predictor,
    items: Collected | Sequence[InputItem],
    out_dir: Path,
    *,
    task: str,
    continue_on_error: bool = False,
    progress: Callable[[int], None] | None = None,
) -> Report:
    """Prepare, run and finish every item, in batches of ``predictor.max_batch``.

    A bad input gets an ``error`` result naming the file and the problem; without ``continue_on_error``
    the remaining inputs are marked ``skipped``. Paths that could not be grouped (``Collected.errors``) are
    reported first, as errors. ``report.json`` and ``report.csv`` are always written.

    Output names are made unique first (:func:`unique_names`: a second ``case`` becomes ``case-2``), so two
    inputs of the same name never overwrite each other's files; each result records its output ``name`` and
    the ``source`` paths it came from.

    Args:
        predictor: a loaded predictor.
        items: grouped inputs (a :class:`Collected`, or items only).
        out_dir: where results and the reports go.
        task: task name for the report.
        continue_on_error: keep going after a failed input.
        progress: called with the number of inputs just completed.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    collected = items if isinstance(items, Collected) else Collected(list(items))
    results = [ItemResult(exc.path, "error", error=str(exc)) for exc in collected.errors]
    stop = bool(results) and not continue_on_error
    if collected.errors and progress is not None:
        progress(len(collected.errors))
    pending = unique_names(collected.items, RESERVED_NAMES)
    batch_size = max(1, int(predictor.max_batch))
    while pending:
        chunk, pending = pending[:batch_size], pending[batch_size:]
        if stop:
            results.extend(_result(it, "skipped", error="stopped after an earlier failure") for it in chunk)
            continue
        prepared: list[tuple[Prepared, float, int]] = []
        chunk_results: dict[int, ItemResult] = {}
        for idx, item in enumerate(chunk):
            t0 = time.perf_counter()
            try:
                prepared.append((predictor.prepare(item), t0, idx))
            except InputError as exc:
                chunk_results[idx] = _result(item, "error", error=str(exc), seconds=time.perf_counter() - t0)
        if prepared:
            t_run = time.perf_counter()
            try:
                raws = predictor.run([p for p, _, _ in prepared])
                run_error: str | None = None
            except InputError as exc:
                raws, run_error = [None] * len(prepared), str(exc)
            run_share = (time.perf_counter() - t_run) / len(prepared)
            for (prep, t0, idx), raw in zip(prepared, raws, strict=True):
                if run_error is not None:
                    chunk_results[idx] = _result(prep.item, "error", error=run_error)
                    continue
                try:
                    output = predictor.finish(prep, raw, out_dir)
                    status, error = "ok", None
                except InputError as exc:
                    output, status, error = ItemOutput({}), "error", str(exc)
                # ``run`` may time itself per input (volumes); otherwise each input gets its share of the batch
                timings = {**prep.timings, "infer": prep.timings.get("infer", run_share)}
                elapsed = time.perf_counter() - t0
                chunk_results[idx] = _result(
                    prep.item,
                    status,
                    outputs=output.data,
                    error=error,
                    seconds=elapsed,
                    timings=timings,
                    files=output.files,
                )
        for idx in range(len(chunk)):
            res = chunk_results[idx]
            if res.status == "error":
                logger.info("input failed: %s", res.error)
                if not continue_on_error:
                    stop = True
            results.append(res)
        if progress is not None:
            progress(len(chunk))
    report = Report(task=task, checkpoint=str(predictor.checkpoint.path or ""), results=results)
    report.write(out_dir)
    return report
