"""``medinfer demo``: synthetic data, tiny demo checkpoints trained once and cached, explained predictions on a
sample of every input kind, a table of what was written, then the service.

Everything lives under the demo folder (``demo_output/`` by default)::

    data/<task>/             synthetic data in the real layout (kept; rewritten only when the recipe changes)
    data/<task>.demo.json    what the data were made with (task, seed, count, recipe)
    runs/<task>/             the training run (metrics.json, training_curve.png, MODEL_CARD.md)
    checkpoints/<task>.pt    the demo checkpoints, apart from the user's ``$MEDINFER_CHECKPOINTS``
    predictions/<task>/      report.json, report.csv and every file predict wrote

A checkpoint is reused when it loads and its ``demo_key`` (task, seed, count, the tiny preset's config, the demo
recipe and medinfer's version) matches what this run would train; otherwise (or with ``--retrain``) it is
trained again. The user's installed checkpoints are never read or written. Every demo checkpoint's provenance
says ``synthetic: true`` and ``trained_by: medinfer demo``, and so does every result made with it.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

#: bump to retrain every cached demo model (a change of how the demo trains that its key does not show)
DEMO_RECIPE = 1
DEMO_HOST = "127.0.0.1"
#: files a task's predictions write, by role, in the order the table shows them
SHOWN_ROLES = (
    "overlay",
    "explanation",
    "segmentation",
    "probabilities",
    "disagreement",
    "dicom_seg",
    "result",
)


class DemoError(Exception):
    """The demo cannot go on (a busy port, a task that failed to train); the message says why."""


def _digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _medinfer_version() -> str:
    try:
        return metadata.version("medinfer")
    except metadata.PackageNotFoundError:
        return "0+unknown"


@dataclass
class TaskDemo:
    """What the demo did for one task."""

    task: str
    data: Path
    checkpoint: Path
    run_dir: Path | None
    trained: bool
    predictions: Path
    report: dict[str, Any] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)

    def files_by_role(self) -> dict[str, list[Path]]:
        """Every file the predictions wrote, by role (paths under ``predictions``)."""
        out: dict[str, list[Path]] = {}
        for result in self.report.get("results", []):
            for f in result.get("files", []):
                out.setdefault(f["role"], []).append(self.predictions / f["path"])
        return out


class Demo:
    """One ``medinfer demo`` run (see the module docstring).

    Args:
        out: the demo folder.
        seed: seed of the synthetic data and of training.
        retrain: train every demo model again even when a cached one matches.
        quiet: no progress bars or progress lines (results and the table still print).
        echo: where lines go (``typer.echo`` in the CLI).
    """

    def __init__(
        self,
        out: Path,
        *,
        seed: int = 0,
        retrain: bool = False,
        quiet: bool = False,
        echo: Callable[[str], None] = print,
    ) -> None:
        self.out = Path(out)
        self.seed = seed
        self.retrain = retrain
        self.quiet = quiet
        self.echo = echo

    @property
    def checkpoints(self) -> Path:
        return self.out / "checkpoints"

    # -- stamps: what a cached step was made with ----------------------------------------------------------------
    @staticmethod
    def _stamped(path: Path, made: dict[str, Any]) -> dict[str, Any] | None:
        """The stamp at ``path`` when it records ``made`` (else ``None``)."""
        try:
            stamp = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        return stamp if isinstance(stamp, dict) and stamp.get("made") == made else None

    @staticmethod
    def _stamp(path: Path, made: dict[str, Any], **more: Any) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"made": made, **more}, indent=2, default=str), encoding="utf-8")

    # -- data ----------------------------------------------------------------------------------------------------
    def data_stamp(self, task: Any) -> dict[str, Any]:
        return {"task": task.name, "seed": self.seed, "n": task.demo_synth_n(), "recipe": DEMO_RECIPE}

    def data(self, task: Any) -> tuple[Path, list[str]]:
        """The task's synthetic training data and held-out demo inputs: cached when made the same way, else now."""
        from pipelines.common.synthetic import is_synthetic

        root = self.out / "data" / task.name
        stamp_path = self.out / "data" / f"{task.name}.demo.json"
        made = self.data_stamp(task)
        stamp = self._stamped(stamp_path, made)
        if stamp is not None and is_synthetic(root) and all(Path(p).exists() for p in stamp.get("inputs", [])):
            self.echo(f"[{task.name}] synthetic data: reusing {_shown(root)}")
            return root, list(stamp["inputs"])
        if root.exists():
            shutil.rmtree(root)
        stamp_path.unlink(missing_ok=True)
        self.echo(f"[{task.name}] synthetic data: writing {made['n']} in the real layout to {_shown(root)}")
        data = Path(task.synth(root, n=made["n"], seed=self.seed))
        inputs = task.demo_inputs(data)
        self._stamp(stamp_path, made, inputs=inputs)
        return data, inputs

    # -- checkpoints ---------------------------------------------------------------------------------------------
    def demo_key(self, task: Any) -> dict[str, Any]:
        """What a cached demo checkpoint must have been trained with to be reused."""
        config = task.config_class.load("tiny").to_dict()
        return {**self.data_stamp(task), "config": _digest(config), "medinfer": _medinfer_version()}

    def cached_checkpoint(self, task: Any, key: dict[str, Any]) -> Path | None:
        """The cached demo checkpoint of ``task`` when it loads and was trained as ``key`` says, else ``None``."""
        from pipelines.common.checkpoint import load_checkpoint
        from pipelines.common.errors import CheckpointError

        path = self.checkpoints / f"{task.name}.pt"
        if self.retrain or not path.is_file():
            return None
        try:
            ckpt = load_checkpoint(path, task=task.name)
            ckpt.build_model()  # the network of today's code must accept it
        except (CheckpointError, RuntimeError, ValueError, KeyError, TypeError) as exc:
            self.echo(f"[{task.name}] cached demo checkpoint {path} does not load ({exc}); training again")
            return None
        if ckpt.provenance.get("demo_key") != key:
            self.echo(f"[{task.name}] cached demo checkpoint {path} was trained another way; training again")
            return None
        return path

    def checkpoint(self, task: Any, data: Path) -> tuple[Path, Path | None, bool]:
        """The task's demo checkpoint: (its path, the run folder, whether it was trained now)."""
        from pipelines.common.checkpoint import install_checkpoint
        from pipelines.common.task import TrainOptions

        key = self.demo_key(task)
        run_dir = self.out / "runs" / task.name
        cached = self.cached_checkpoint(task, key)
        if cached is not None:
            self.echo(f"[{task.name}] demo checkpoint: reusing {cached} (--retrain to train it again)")
            return cached, run_dir if run_dir.is_dir() else None, False
        self.echo(f"[{task.name}] training the tiny preset on the synthetic data")
        options = TrainOptions(
            data_dir=data,
            out_dir=run_dir,
            preset="tiny",
            seed=self.seed,
            provenance={"trained_by": "medinfer demo", "demo_key": key},
            quiet=self.quiet,
        )
        if run_dir.exists():
            shutil.rmtree(run_dir)
        run = task.train(options)
        dst = install_checkpoint(run, task.name, directory=self.checkpoints)
        self.echo(f"[{task.name}] demo checkpoint: {dst}")
        return dst, Path(run), True

    # -- predictions ---------------------------------------------------------------------------------------------
    def predict(self, task: Any, checkpoint: Path, inputs: list[str]) -> tuple[Path, dict[str, Any], Any]:
        """Explained predictions on the demo inputs; (folder, report, the first input for curl).

        The last run's are kept when they were made from the same inputs, checkpoint file and code."""
        from tqdm import tqdm

        from pipelines.common.checkpoint import code_version, load_checkpoint
        from pipelines.common.predict import REPORT_JSON, run_predictions
        from pipelines.common.task import PredictOptions

        collected = task.collect_inputs(inputs)
        first = collected.items[0] if collected.items else None
        pred_dir = self.out / "predictions" / task.name
        stamp_path = self.out / "predictions" / f"{task.name}.demo.json"
        made = {
            "inputs": inputs,
            "checkpoint": hashlib.sha256(checkpoint.read_bytes()).hexdigest(),
            "code": code_version(),
            "options": task.demo_options,
        }
        if not self.retrain and self._stamped(stamp_path, made) and (pred_dir / REPORT_JSON).is_file():
            self.echo(f"[{task.name}] predictions: reusing {_shown(pred_dir)} (same inputs, checkpoint and code)")
            return pred_dir, json.loads((pred_dir / REPORT_JSON).read_text(encoding="utf-8")), first
        stamp_path.unlink(missing_ok=True)
        if pred_dir.exists():
            shutil.rmtree(pred_dir)  # a rerun's report must not mix with the last one's files
        options = PredictOptions(explain=True, task=task.parse_options(task.demo_options))
        predictor = task.load_predictor(load_checkpoint(checkpoint, task=task.name), options)
        desc = f"[{task.name}] predict --explain"
        disable = True if self.quiet else None  # None: a bar on a terminal only
        with tqdm(total=len(collected), desc=desc, unit="input", file=sys.stderr, disable=disable) as bar:
            report = run_predictions(
                predictor, collected, pred_dir, task=task.name, continue_on_error=True, progress=bar.update
            )
        counts = report.to_dict()["counts"]
        self.echo(f"[{task.name}] predictions: {counts['ok']} ok, {counts['error']} failed -> {_shown(pred_dir)}")
        for r in report.results:
            if r.status == "error":
                self.echo(f"[{task.name}]   failed: {r.error}")
        self._stamp(stamp_path, made)
        return pred_dir, report.to_dict(), first

    # -- the whole run -------------------------------------------------------------------------------------------
    def run_task(self, name: str) -> tuple[TaskDemo, Any]:
        from pipelines.common.task import get_task

        task = get_task(name)
        seconds: dict[str, float] = {}
        t0 = time.perf_counter()
        data, inputs = self.data(task)
        seconds["data"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        ckpt, run_dir, trained = self.checkpoint(task, data)
        seconds["train" if trained else "cached"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        pred_dir, report, first = self.predict(task, ckpt, inputs)
        seconds["predict"] = time.perf_counter() - t0
        demo = TaskDemo(name, data, ckpt, run_dir, trained, pred_dir, report, seconds)
        return demo, first

    def run(self, names: Sequence[str]) -> tuple[list[TaskDemo], dict[str, Any]]:
        """Every named task in turn; (what was done, the first input of each task for the curl examples)."""
        done: list[TaskDemo] = []
        examples: dict[str, Any] = {}
        for name in names:
            demo, first = self.run_task(name)
            done.append(demo)
            if first is not None:
                examples[name] = first
        return done, examples


def _shown(path: Path) -> str:
    """A path as the user will type it: relative to the working folder when under it."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def output_table(done: Sequence[TaskDemo]) -> list[str]:
    """The lines of the table the demo ends with: per task, what it wrote and where (one example per kind)."""
    rows: list[tuple[str, str, str]] = []
    for d in done:
        took = ", ".join(f"{k} {v:.0f} s" for k, v in d.seconds.items())
        rows.append((d.task, "checkpoint", f"{_shown(d.checkpoint)} ({'trained now' if d.trained else 'cached'})"))
        if d.run_dir is not None and (d.run_dir / "training_curve.png").is_file():
            rows.append(("", "training curve", _shown(d.run_dir / "training_curve.png")))
            rows.append(("", "model card", _shown(d.run_dir / "MODEL_CARD.md")))
        by_role = d.files_by_role()
        for role in [*SHOWN_ROLES, *sorted(set(by_role) - set(SHOWN_ROLES))]:
            files = by_role.get(role, [])
            if not files:
                continue
            more = f" (+{len(files) - 1} more)" if len(files) > 1 else ""
            rows.append(("", role, f"{_shown(files[0])}{more}"))
        counts = d.report.get("counts", {})
        rows.append(
            (
                "",
                "report",
                f"{_shown(d.predictions / 'report.json')} ({counts.get('ok', 0)} ok, "
                f"{counts.get('error', 0)} failed; {took})",
            )
        )
    width = [max((len(r[i]) for r in rows), default=0) for i in range(2)]
    return [f"  {a:<{width[0]}}  {b:<{width[1]}}  {c}" for a, b, c in rows]


def curl_example(task: str, item: Any, port: int) -> str:
    """A curl command predicting on one demo input (files of the same stem travel together, e.g. .hea + .dat)."""
    url = f"http://{DEMO_HOST}:{port}/api/v1/models/{task}/predict"
    files: list[Path] = []
    for path in item.paths.values():
        p = Path(path)
        if p.is_dir():
            return f"(cd {_shown(p)} && zip -qr - .) | curl -s -F 'files=@-;filename={p.name}.zip' {url}"
        stem = p.name.split(".")[0]
        files.extend(sorted(f for f in p.parent.iterdir() if f.is_file() and f.name.split(".")[0] == stem))
    form = " ".join(f"-F files=@{_shown(f)}" for f in dict.fromkeys(files))
    return f"curl -s {form} {url}"


def service_lines(checkpoints: Path, examples: dict[str, Any], port: int) -> list[str]:
    """How to reach the demo service: the docs URL and one curl example per task."""
    base = f"http://{DEMO_HOST}:{port}"
    lines = [
        f"The service, serving the demo checkpoints ({_shown(checkpoints)}):",
        f"  docs (Swagger UI, works offline): {base}/docs",
        f"  readiness:                        curl -s {base}/readyz",
        f"  models and provenance:            curl -s {base}/api/v1/models",
    ]
    lines += [f"  {task}: {curl_example(task, item, port)}" for task, item in examples.items()]
    lines.append(f"  the same later: medinfer serve --checkpoints {_shown(checkpoints)} --port {port}")
    return lines
