"""Batch prediction over many inputs with one report: shared by ``medinfer predict`` and service jobs.

:func:`run_predictions` overlaps the three steps of a :class:`~pipelines.common.task.Predictor` (nnU-Net's
predictor preprocesses the next cases in background workers the same way): a few threads read and preprocess
the next batches while the current batch runs, and one thread finishes (post-processes and writes) the previous
batch meanwhile. Reading is NumPy, SciPy, nibabel and zlib work that mostly releases the GIL. What is prepared
ahead is bounded (``prefetch`` batches), and the report is the same as that of the steps one after the other.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import math
import os
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from pipelines.common.csvsafe import safe_writer
from pipelines.common.errors import InputError
from pipelines.common.task import Collected, InputItem, ItemOutput, OutputFile, Predictor, Prepared

logger = logging.getLogger(__name__)

REPORT_JSON = "report.json"
REPORT_CSV = "report.csv"
#: the leading columns of ``report.csv``; then ``source.<role>`` per input role, then one column per scalar output
REPORT_COLUMNS = ("input", "status", "error", "seconds", "name")
#: top-level output keys left out of ``report.csv`` (in ``report.json`` all the same): the model block is the same
#: on every row, and file lists, explanations and pictures' descriptions are no per-input scalar results
CSV_EXCLUDED = ("model", "files", "explanation", "preview")
#: what joins a list of strings (``warnings``, ``positive.rhythm``) into one cell
CSV_LIST_SEPARATOR = " | "
#: the prefix of an output column whose name would be a leading or a ``source.`` column's
CSV_OUTPUTS_PREFIX = "outputs."
#: names no input may take: ``report.json``/``report.csv`` are the run's own (a classifier writes ``<name>.json``)
RESERVED_NAMES = (Path(REPORT_JSON).stem,)
#: batches read and preprocessed ahead of the forward pass unless a predictor says otherwise (``Predictor.prefetch``)
DEFAULT_PREFETCH = Predictor.prefetch
#: the names of the threads of a run (``<prefix>-prepare_0``, ``<prefix>-finish_0``)
THREAD_PREFIX = "medinfer-predict"

_T = TypeVar("_T")


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
    paths it was read from, by role, as given. ``seconds`` is the input's own work (its prepare, its forward pass
    or share of its batch's, its finish), not the time it waited for other inputs; ``timings`` splits it by step
    (``read``, ``preprocess``, ``infer``...) and adds ``queue``, the time it waited prepared for its forward pass.
    A result whose outputs hold NaN or infinity is never ``ok``: it becomes an ``error`` saying so, and such
    outputs are dropped whatever the status (JSON has no NaN).
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
    """All results of one prediction run; ``startup_s``: seconds from process start to the first input's prepare
    (``medinfer predict`` measures it; absent from the JSON when not measured)."""

    task: str
    checkpoint: str
    results: list[ItemResult]
    startup_s: float | None = None
    #: the model behind the results (:meth:`Checkpoint.model_info`: version, ``synthetic_demo``, provenance)
    model: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return all(r.status == "ok" for r in self.results)

    def to_dict(self) -> dict[str, Any]:
        counts = {s: sum(r.status == s for r in self.results) for s in ("ok", "error", "skipped")}
        out: dict[str, Any] = {"task": self.task, "checkpoint": self.checkpoint, "counts": counts}
        if self.model:
            out["model"] = self.model
        if self.startup_s is not None and math.isfinite(self.startup_s):
            out["startup_s"] = round(self.startup_s, 4)
        out["results"] = [r.to_dict() for r in self.results]
        return out

    def write(self, out_dir: Path) -> None:
        """Write ``report.json`` and ``report.csv`` (:func:`report_table` of the JSON's results); no cell of the CSV
        can start a spreadsheet formula.

        Raises:
            ValueError: a NaN or infinity would reach the JSON (strict JSON has none).
        """
        out_dir.mkdir(parents=True, exist_ok=True)
        text = json.dumps(self.to_dict(), indent=2, default=str, allow_nan=False)
        (out_dir / REPORT_JSON).write_text(text, encoding="utf-8")
        header, rows = report_table(json.loads(text)["results"])
        with (out_dir / REPORT_CSV).open("w", newline="", encoding="utf-8") as fh:
            writer = safe_writer(fh)
            writer.writerow(header)
            writer.writerows(rows)


def csv_scalars(value: Any, path: str = "") -> dict[str, Any]:
    """The scalars of a JSON value by dotted path, as ``report.csv`` writes them.

    A mapping gives its keys' scalars (``volumes_ml.WT``; an empty mapping gives none); a list of strings one
    cell joined by :data:`CSV_LIST_SEPARATOR`; any other list one entry per element (``shape.0``, ``shape.1``);
    an empty list one empty cell. Booleans become ``true``/``false``, ``None`` an empty cell; numbers stay
    numbers (a float is written as Python and JSON write it, unrounded), strings stay strings.

    Args:
        value: a value parsed from JSON (mappings, lists, strings, numbers, booleans, ``None``).
        path: the dotted path of ``value`` (``""`` at the top, where a scalar has no column and gives nothing).
    """
    if isinstance(value, Mapping):
        out: dict[str, Any] = {}
        for key, item in value.items():
            out.update(csv_scalars(item, f"{path}.{key}" if path else str(key)))
        return out
    if not path:
        return {}
    if isinstance(value, list):
        if all(isinstance(v, str) for v in value):  # also the empty list: one empty cell
            return {path: CSV_LIST_SEPARATOR.join(value)}
        out = {}
        for i, item in enumerate(value):
            out.update(csv_scalars(item, f"{path}.{i}"))
        return out
    if isinstance(value, bool):
        return {path: "true" if value else "false"}
    if value is None:
        return {path: ""}
    return {path: value}


def _output_columns(outputs: Mapping[str, Any]) -> dict[str, Any]:
    """One result's output columns: :func:`csv_scalars` of its outputs less :data:`CSV_EXCLUDED`, a name that is a
    leading or a ``source.`` column's prefixed with :data:`CSV_OUTPUTS_PREFIX`."""
    kept = {k: v for k, v in outputs.items() if k not in CSV_EXCLUDED}
    return {
        (f"{CSV_OUTPUTS_PREFIX}{name}" if name in REPORT_COLUMNS or name.startswith("source.") else name): value
        for name, value in csv_scalars(kept).items()
    }


def report_table(results: Sequence[Mapping[str, Any]]) -> tuple[list[str], list[list[Any]]]:
    """``report.csv``'s header and rows from ``report.json``'s results (:meth:`ItemResult.to_dict`, read back).

    The columns are :data:`REPORT_COLUMNS`, then ``source.<role>`` for every input role, then one column per scalar
    of the outputs (:func:`csv_scalars`: ``volumes_ml.WT``, ``probabilities.rhythm.AFIB``, ``shape.0``), less
    :data:`CSV_EXCLUDED`. Each group's columns are the union over all rows in order of first appearance; a row
    lacking one has an empty cell there. No cell holds JSON.
    """
    sources = [{f"source.{role}": path for role, path in (r.get("source") or {}).items()} for r in results]
    outputs = [_output_columns(r.get("outputs") or {}) for r in results]
    header = list(REPORT_COLUMNS)
    for group in (sources, outputs):
        header += list(dict.fromkeys(name for cells in group for name in cells))
    rows = []
    for r, source, output in zip(results, sources, outputs, strict=True):
        cells = {
            "input": r["input"],
            "status": r["status"],
            "error": r.get("error") or "",
            "seconds": r.get("seconds", ""),
            "name": r.get("name") or "",
            **source,
            **output,
        }
        rows.append([cells.get(name, "") for name in header])
    return header, rows


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


def usable_cores() -> int:
    """CPU cores this process may run on (its affinity mask where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not on Linux
        return os.cpu_count() or 1


def default_workers() -> int:
    """Threads that read and preprocess inputs ahead of the forward pass: one per CPU core this process may use
    beside the one running the forward pass, at least 1 and at most 4 (more would only hold more prepared inputs in
    memory)."""
    return max(1, min(4, usable_cores() - 1))


def default_prefetch(predictor: Predictor) -> int:
    """The predictor's ``prefetch`` where reading ahead has a core of its own: on a GPU (the forward pass leaves
    the CPU to the readers), or when the cores outnumber torch's intra-op threads; else 0.

    On a CPU whose every core runs the forward pass, a reading thread beside it only slows it down: five BraTS
    cases took 1.43× their bare compute pipelined against 1.36× one step after the other on 2 cores
    (``benchmarks/brats_infer.py``).
    """
    device = getattr(predictor, "device", None)
    if getattr(device, "type", "cpu") == "cuda":
        return int(predictor.prefetch)
    import torch

    return int(predictor.prefetch) if usable_cores() > torch.get_num_threads() else 0


class _Deferred(Future[_T]):
    """A call made when its result is first asked for, in the asking thread."""

    def __init__(self, call: Callable[[], _T]) -> None:
        super().__init__()
        self._call: Callable[[], _T] | None = call

    def result(self, timeout: float | None = None) -> _T:
        call, self._call = self._call, None
        if call is not None:
            try:
                self.set_result(call())
            except Exception as exc:  # kept, as a pool thread keeps it
                self.set_exception(exc)
        return super().result(timeout)


class _InlineExecutor(Executor):
    """Makes each call when its result is asked for, in the caller's thread: the sequential run (``prefetch=0``),
    which prepares the inputs of a batch one after the other and stops at the first exception."""

    def submit(self, fn: Callable[..., _T], /, *args: Any, **kwargs: Any) -> Future[_T]:
        return _Deferred(functools.partial(fn, *args, **kwargs))


@dataclass
class _Ready:
    """One input after ``prepare``: the prepared input, or the error result of an ``InputError``."""

    outcome: Prepared | ItemResult
    prepare_s: float
    done: float  # perf_counter when prepare returned
    started_at: float  # wall clock when prepare began


def _prepare_one(predictor: Predictor, item: InputItem) -> _Ready:
    """``prepare`` one input (in a worker thread when prefetching); an ``InputError`` becomes its error result,
    anything else propagates."""
    started_at = time.time()
    t0 = time.perf_counter()
    try:
        prepared = predictor.prepare(item)
    except InputError as exc:
        t1 = time.perf_counter()
        return _Ready(_result(item, "error", error=str(exc), seconds=t1 - t0), t1 - t0, t1, started_at)
    t1 = time.perf_counter()
    return _Ready(prepared, t1 - t0, t1, started_at)


@dataclass
class _Finishing:
    """A batch whose ``finish`` runs (in the finishing thread when prefetching): its results come from ``future``."""

    future: Future[list[ItemResult]]
    size: int


class _Pipeline:
    """The run of :func:`run_predictions`: prepare ahead → run (caller's thread) → finish behind.

    Its results equal the sequential run's whatever the overlap: results are appended batch by batch in input
    order, and a batch that the sequential run would not have reached (an earlier failure stopped the run) is
    ``skipped`` even when it was prepared or run ahead; what that speculative work raised is then dropped, as the
    sequential run would never have raised it. ``run`` of batch k may overlap ``finish`` of batch k-1, but batch
    k is finished only once batch k-1's results are in.
    """

    def __init__(
        self,
        predictor: Predictor,
        out_dir: Path,
        *,
        continue_on_error: bool,
        progress: Callable[[int], None] | None,
        prefetch: int,
        prepare_pool: Executor,
        finish_pool: Executor,
    ) -> None:
        self.predictor = predictor
        self.out_dir = out_dir
        self.continue_on_error = continue_on_error
        self.progress = progress
        self.prefetch = prefetch
        self.prepare_pool = prepare_pool
        self.finish_pool = finish_pool
        self.results: list[ItemResult] = []
        self.stop = False
        self.first_prepare_at: float | None = None
        self._chunks: list[list[InputItem]] = []
        self._submitted: dict[int, list[Future[_Ready]]] = {}  # started, not yet taken
        self._next_submit = 0  # the first batch not started
        self._finishing: _Finishing | None = None
        self._failed_ahead = False  # the batch being finished already holds a failure (prepare or run)

    def run(self, chunks: list[list[InputItem]]) -> None:
        self._chunks = chunks
        for k, chunk in enumerate(chunks):
            self._batch(k, chunk)
        self._join()

    # -- stages ------------------------------------------------------------------------------------------------
    def _submit_through(self, last: int) -> None:
        """Start preparing the batches up to ``last`` (inclusive) not yet started; each batch is started once."""
        while self._next_submit <= min(last, len(self._chunks) - 1):
            k = self._next_submit
            self._submitted[k] = [self.prepare_pool.submit(_prepare_one, self.predictor, it) for it in self._chunks[k]]
            self._next_submit += 1

    def _gather(self, k: int) -> tuple[list[_Ready], Exception | None]:
        """Batch k's prepared inputs in order, and the first exception other than ``InputError`` (the sequential run
        stops at it: the inputs after it are not used)."""
        readies: list[_Ready] = []
        for future in self._submitted.pop(k):
            try:
                readies.append(future.result())
            except Exception as exc:
                return readies, exc
        if self.first_prepare_at is None and readies:
            self.first_prepare_at = min(r.started_at for r in readies)
        return readies, None

    def _skip(self, k: int, chunk: list[InputItem]) -> None:
        self._submitted.pop(k, None)  # prepared ahead for nothing: dropped with whatever it raised
        self.results.extend(_result(it, "skipped", error="stopped after an earlier failure") for it in chunk)

    def _join(self) -> None:
        """Wait for the batch being finished; append its results, log failures, decide whether to stop."""
        finishing, self._finishing = self._finishing, None
        self._failed_ahead = False
        if finishing is None:
            return
        chunk_results = finishing.future.result()  # an exception of finish (not InputError) propagates here
        for res in chunk_results:
            if res.status == "error":
                logger.info("input failed: %s", res.error)
                if not self.continue_on_error:
                    self.stop = True
            self.results.append(res)
        if self.progress is not None:
            self.progress(finishing.size)

    def _batch(self, k: int, chunk: list[InputItem]) -> None:
        if self.stop or self._failed_ahead:
            self._join()  # batch k-1 stops the run: no point reading or running batch k
        if self.stop:
            self._skip(k, chunk)
            return
        self._submit_through(k + self.prefetch)
        readies, fatal = self._gather(k)
        if fatal is not None:
            self._join()
            if self.stop:
                self._skip(k, chunk)
                return
            raise fatal
        prepared = [r.outcome for r in readies if isinstance(r.outcome, Prepared)]
        raws: list[Any] = [None] * len(prepared)
        run_error: str | None = None
        run_fatal: Exception | None = None
        t_run = time.perf_counter()
        if prepared:
            try:
                raws = run_batch(self.predictor, prepared)
            except InputError as exc:
                run_error = str(exc)
            except Exception as exc:  # raised only if batch k-1 does not stop the run, as sequentially
                run_fatal = exc
        run_s = time.perf_counter() - t_run
        self._join()  # batch k-1's finish overlapped this run
        if self.stop:
            self._skip(k, chunk)
            return
        if run_fatal is not None:
            raise run_fatal
        self._failed_ahead = not self.continue_on_error and (run_error is not None or len(prepared) < len(readies))
        future = self.finish_pool.submit(self._finish, readies, raws, run_error, run_s, t_run)
        self._finishing = _Finishing(future, len(chunk))
        if self.prefetch == 0:
            self._join()

    def _finish(
        self, readies: list[_Ready], raws: list[Any], run_error: str | None, run_s: float, t_run: float
    ) -> list[ItemResult]:
        return finish_batch(self.predictor, self.out_dir, readies, raws, run_error, run_s, t_run)


def run_batch(predictor: Predictor, prepared: list[Prepared]) -> list[Any]:
    """The predictor's forward pass over one batch: one raw output per prepared input.

    Raises:
        ValueError: ``run`` returned another number of outputs (a bug in the predictor, never the input's fault).
    """
    raws = predictor.run(prepared)
    if len(raws) != len(prepared):
        raise ValueError(f"{type(predictor).__name__}.run returned {len(raws)} outputs for {len(prepared)} inputs")
    return raws


def finish_batch(
    predictor: Predictor,
    out_dir: Path,
    readies: list[_Ready],
    raws: list[Any],
    run_error: str | None,
    run_s: float,
    t_run: float,
) -> list[ItemResult]:
    """Finish one batch in input order: its results (an ``InputError`` of ``finish`` is that input's error).

    ``raws`` are ``run``'s outputs for the prepared inputs among ``readies`` (in order), ``run_error`` the message of
    an ``InputError`` that ``run`` raised (every prepared input of the batch fails with it), ``run_s`` the batch's
    forward pass and ``t_run`` when it began, on the clock of the readies' ``done`` (their ``queue`` timing is the
    difference). Shared by :func:`run_predictions` and the Ray runner (:mod:`pipelines.common.ray_predict`).
    """
    raw_of = iter(raws)
    run_share = run_s / max(1, len(raws))
    out: list[ItemResult] = []
    for ready in readies:
        prep = ready.outcome
        if isinstance(prep, ItemResult):  # prepare's InputError
            out.append(prep)
            continue
        raw = next(raw_of)
        if run_error is not None:
            out.append(_result(prep.item, "error", error=run_error))
            continue
        t0 = time.perf_counter()
        try:
            output = predictor.finish(prep, raw, out_dir)
            status, error = "ok", None
        except InputError as exc:
            output, status, error = ItemOutput({}), "error", str(exc)
        finish_s = time.perf_counter() - t0
        # ``run`` may time itself per input (volumes); otherwise each input gets its share of the batch
        infer_s = prep.timings.get("infer", run_share)
        timings = {**prep.timings, "infer": infer_s, "queue": max(0.0, t_run - ready.done)}
        out.append(
            _result(
                prep.item,
                status,
                outputs=output.data,
                error=error,
                seconds=ready.prepare_s + infer_s + finish_s,
                timings=timings,
                files=output.files,
            )
        )
    return out


def run_predictions(
    predictor: Predictor,
    items: Collected | Sequence[InputItem],
    out_dir: Path,
    *,
    task: str,
    continue_on_error: bool = False,
    progress: Callable[[int], None] | None = None,
    prefetch: int | None = None,
    workers: int | None = None,
    started_at: float | None = None,
) -> Report:
    """Prepare, run and finish every item, in batches of ``predictor.max_batch``.

    A bad input gets an ``error`` result naming the file and the problem; without ``continue_on_error``
    the remaining inputs are marked ``skipped``. Paths that could not be grouped (``Collected.errors``) are
    reported first, as errors. ``report.json`` and ``report.csv`` are always written.

    Output names are made unique first (:func:`unique_names`: a second ``case`` becomes ``case-2``), so two
    inputs of the same name never overwrite each other's files; each result records its output ``name`` and
    the ``source`` paths it came from.

    With ``prefetch`` > 0 the steps overlap: ``workers`` threads read and preprocess the next ``prefetch``
    batches while the current one runs (in the caller's thread), and one thread finishes (post-processes and
    writes) the previous batch meanwhile. Results, their order, errors and ``progress`` calls are those of
    ``prefetch=0`` (one step after the other); an exception other than ``InputError`` propagates where the
    sequential run would raise it, after the threads have stopped.

    The overlap pays when the forward pass is long and runs in few large operations (a volume's sliding window):
    reading beside it costs the forward pass little. It does not when batches are many and small (ECG records):
    a small network's forward pass takes and gives back the GIL at every operation, so a reading thread beside it
    makes it wait at each one, and the run gets slower than sequentially. A predictor says which it is by a
    ``prefetch`` attribute, used when ``prefetch`` is not given.

    Args:
        predictor: a loaded predictor.
        items: grouped inputs (a :class:`Collected`, or items only).
        out_dir: where results and the reports go.
        task: task name for the report.
        continue_on_error: keep going after a failed input.
        progress: called with the number of inputs just completed.
        prefetch: batches prepared ahead of the forward pass (0: sequential, nothing in other threads); ``None``:
            :func:`default_prefetch` (the predictor's ``prefetch`` where reading ahead has a core of its own).
        workers: threads preparing inputs (default :func:`default_workers`).
        started_at: wall-clock time (``time.time()``) the process started; the report's ``startup_s`` is then
            the time from it to the first input's ``prepare``.

    Raises:
        ValueError: ``prefetch`` or ``workers`` below their minimum (0 and 1).
    """
    if prefetch is None:
        prefetch = default_prefetch(predictor)
    if prefetch < 0:
        raise ValueError(f"prefetch must be 0 or more, got {prefetch}")
    if workers is not None and workers < 1:
        raise ValueError(f"workers must be 1 or more, got {workers}")
    out_dir.mkdir(parents=True, exist_ok=True)
    collected = items if isinstance(items, Collected) else Collected(list(items))
    pending = unique_names(collected.items, RESERVED_NAMES)
    batch_size = max(1, int(predictor.max_batch))
    chunks = [pending[i : i + batch_size] for i in range(0, len(pending), batch_size)]
    if prefetch == 0:
        prepare_pool: Executor = _InlineExecutor()
        finish_pool: Executor = _InlineExecutor()
    else:
        prepare_pool = ThreadPoolExecutor(workers or default_workers(), thread_name_prefix=f"{THREAD_PREFIX}-prepare")
        finish_pool = ThreadPoolExecutor(1, thread_name_prefix=f"{THREAD_PREFIX}-finish")
    pipeline = _Pipeline(
        predictor,
        out_dir,
        continue_on_error=continue_on_error,
        progress=progress,
        prefetch=prefetch,
        prepare_pool=prepare_pool,
        finish_pool=finish_pool,
    )
    pipeline.results = [ItemResult(exc.path, "error", error=str(exc)) for exc in collected.errors]
    pipeline.stop = bool(pipeline.results) and not continue_on_error
    if collected.errors and progress is not None:
        progress(len(collected.errors))
    try:
        pipeline.run(chunks)
    finally:
        # nothing outlives the run: queued reads are dropped, running ones end
        prepare_pool.shutdown(wait=True, cancel_futures=True)
        finish_pool.shutdown(wait=True, cancel_futures=True)
    startup = None
    if started_at is not None and pipeline.first_prepare_at is not None:
        startup = max(0.0, pipeline.first_prepare_at - started_at)
    report = Report(
        task=task,
        checkpoint=str(predictor.checkpoint.path or ""),
        results=pipeline.results,
        startup_s=startup,
        model=predictor.checkpoint.model_info(),
    )
    report.write(out_dir)
    return report
