"""Batch prediction over many inputs with one report: shared by ``medinfer predict`` and service jobs."""

from __future__ import annotations

import csv
import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipelines.common.errors import InputError
from pipelines.common.task import Collected, InputItem, ItemOutput, OutputFile, Predictor, Prepared

logger = logging.getLogger(__name__)

REPORT_JSON = "report.json"
REPORT_CSV = "report.csv"


@dataclass
class ItemResult:
    """Outcome of one input: ``status`` is ``ok``, ``error`` or ``skipped``; ``files`` are the files written."""

    input: str
    status: str
    outputs: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    seconds: float = 0.0
    timings: dict[str, float] = field(default_factory=dict)
    files: list[OutputFile] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "input": self.input,
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
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / REPORT_JSON).write_text(json.dumps(self.to_dict(), indent=2, default=str), encoding="utf-8")
        with (out_dir / REPORT_CSV).open("w", newline="", encoding="utf-8") as fh:
            writer = csv.writer(fh)
            writer.writerow(["input", "status", "outputs", "error", "seconds"])
            for r in self.results:
                writer.writerow(
                    [r.input, r.status, json.dumps(r.outputs, default=str), r.error or "", f"{r.seconds:.4f}"]
                )


def _describe(item: InputItem) -> str:
    if len(item.paths) == 1:
        return str(next(iter(item.paths.values())))
    return item.name


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
    pending = list(collected.items)
    batch_size = max(1, int(predictor.max_batch))
    while pending:
        chunk, pending = pending[:batch_size], pending[batch_size:]
        if stop:
            results.extend(
                ItemResult(_describe(it), "skipped", error="stopped after an earlier failure") for it in chunk
            )
            continue
        prepared: list[tuple[Prepared, float, int]] = []
        chunk_results: dict[int, ItemResult] = {}
        for idx, item in enumerate(chunk):
            t0 = time.perf_counter()
            try:
                prepared.append((predictor.prepare(item), t0, idx))
            except InputError as exc:
                chunk_results[idx] = ItemResult(
                    _describe(item), "error", error=str(exc), seconds=time.perf_counter() - t0
                )
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
                    chunk_results[idx] = ItemResult(_describe(prep.item), "error", error=run_error)
                    continue
                try:
                    output = predictor.finish(prep, raw, out_dir)
                    status, error = "ok", None
                except InputError as exc:
                    output, status, error = ItemOutput({}), "error", str(exc)
                # ``run`` may time itself per input (volumes); otherwise each input gets its share of the batch
                timings = {**prep.timings, "infer": prep.timings.get("infer", run_share)}
                elapsed = time.perf_counter() - t0
                chunk_results[idx] = ItemResult(
                    _describe(prep.item), status, output.data, error, elapsed, timings, output.files
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
