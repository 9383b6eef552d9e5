"""One training runner for every task (nnU-Net's trainer as the model): a method overrides hooks, not the loop.

:class:`TrainingRun` does what every run does: seeding, the device, the split and loaders (through hooks), the
stages, the epoch loop with AMP (CUDA only) and gradient clipping, best/last checkpoints in one format,
``metrics.json``, the training-curve PNG and the model card. A task overrides:

- ``load_data`` (read and split the dataset) and ``make_loader`` (per stage);
- ``build_model``;
- ``train_step`` (the loss of one batch) and ``validate`` (the metrics of an epoch, with ``monitor``);
- ``configure_optimizers`` (per stage);
- ``stages`` and ``run_stage`` when the method trains in stages (ProtoECGNet) or has a stage without
  gradients (prototype projection); ``on_improved`` / ``on_stage_end`` to change what is kept;
- ``card`` (what the model card says), ``checkpoint_extra`` and ``preprocessing`` (what the checkpoint holds).

Under ``torchrun`` (``medinfer train --distributed``, :mod:`pipelines.common.distributed`) the same loop trains
data-parallel: each stage's loader is sharded, the step runs under DDP, rank 0 validates, logs and writes; every
hook runs on every rank (so they all take the same decisions), only :meth:`TrainingRun.save` and the run's
files are rank 0's.
"""

from __future__ import annotations

import abc
import json
import logging
import math
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Generic, TextIO, TypeVar

import torch
from torch import nn

from pipelines.common import distributed
from pipelines.common.checkpoint import BEST_NAME, LAST_NAME, Checkpoint, make_provenance, save_checkpoint
from pipelines.common.config import TaskConfig, TaskOptions
from pipelines.common.device import amp_enabled, autocast, resolve_device
from pipelines.common.modelcard import write_model_card
from pipelines.common.plots import plot_curves
from pipelines.common.seed import seed_everything
from pipelines.common.synthetic import is_synthetic

if TYPE_CHECKING:
    from pipelines.common.task import Task, TrainOptions

__all__ = [
    "CardText",
    "Stage",
    "TrainProgress",
    "TrainingRun",
    "format_seconds",
    "recalibrate_batchnorm",
    "split_indices",
    "to_device",
]

logger = logging.getLogger(__name__)

ConfigT = TypeVar("ConfigT", bound=TaskConfig)


@dataclass(frozen=True)
class Stage:
    """One stage of a run: its name, epochs, and whether it trains with gradients (the epoch loop)."""

    name: str
    epochs: int = 1
    gradient: bool = True


@dataclass
class CardText:
    """What a task's model card says beyond what the runner knows (see ``write_model_card``)."""

    title: str
    summary: str
    intended_use: str
    data: str
    metrics: dict[str, Any]
    method_notes: list[str] = field(default_factory=list)
    limitations: list[str] = field(default_factory=list)


def format_seconds(seconds: float) -> str:
    """``m:ss`` or ``h:mm:ss`` (what a progress line shows)."""
    total = max(0, round(seconds))
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


class TrainProgress:
    """What a run shows while it trains, on ``stream`` (standard error by default).

    On a terminal: a tqdm bar per gradient stage, step by step, with the running loss, the validation metric and
    the time left in the run. Elsewhere (logs, CI, pipes): plain lines without carriage returns, one when a stage
    starts and one per epoch: stage, epoch/total, step/total, the epoch's running loss, the monitored validation
    metric when the epoch was validated, elapsed time and the estimated time left. ``quiet``: nothing.

    The time left is the run's: the mean time of its epochs so far times the epochs left in this stage and in
    the later gradient stages (stages without gradients, e.g. prototype projection, are not counted).

    Args:
        task: the task's name (what each line starts with).
        quiet: show nothing.
        stream: where to write (``None``: ``sys.stderr`` as it is when something is written).
        tty: draw a bar (``None``: when ``stream`` is a terminal).
    """

    def __init__(
        self, task: str, *, quiet: bool = False, stream: TextIO | None = None, tty: bool | None = None
    ) -> None:
        self.task = task
        self.quiet = quiet
        self._stream = stream
        self._tty = tty
        self.stages: list[Stage] = []
        self.started = time.perf_counter()
        self.epoch_seconds: list[float] = []
        self._bar: Any = None
        self._stage: Stage | None = None
        self._steps: int | None = None
        self._epoch = 0
        self._epoch_started = self.started
        self._step = 0
        self._loss_sum = 0.0

    @property
    def stream(self) -> TextIO:
        """Where progress goes."""
        return self._stream if self._stream is not None else sys.stderr

    @property
    def tty(self) -> bool:
        """Whether a bar is drawn (the stream is a terminal, unless told)."""
        if self._tty is not None:
            return self._tty
        try:
            return bool(self.stream.isatty())
        except (AttributeError, OSError, ValueError):  # no isatty, or a closed or detached stream
            return False

    # -- events from the runner -----------------------------------------------------------------------------------
    def begin(self, stages: Sequence[Stage]) -> None:
        """The run starts with these stages."""
        self.stages = list(stages)
        self.started = time.perf_counter()
        self.epoch_seconds = []

    def stage(self, stage: Stage) -> None:
        """A stage starts: one line."""
        if self.quiet:
            return
        index = self._index(stage)
        where = f"stage {index + 1}/{len(self.stages)}" if index is not None else "stage"
        what = f"{stage.epochs} epoch{'' if stage.epochs == 1 else 's'}" if stage.gradient else "no gradient steps"
        self._write(f"[{self.task}] {where} {stage.name}: {what}")

    def start_epochs(self, stage: Stage, steps_per_epoch: int | None) -> None:
        """A gradient stage's epoch loop starts; ``steps_per_epoch`` when the loader knows its length."""
        self._stage, self._steps = stage, steps_per_epoch
        if self.quiet or not self.tty:
            return
        from tqdm import tqdm

        self._bar = tqdm(
            total=stage.epochs * steps_per_epoch if steps_per_epoch else None,
            desc=f"[{self.task}] {stage.name}",
            unit="step",
            file=self.stream,
            dynamic_ncols=True,
            leave=True,
            disable=False,
        )

    def start_epoch(self, epoch: int) -> None:
        """An epoch of the current stage starts."""
        self._epoch, self._step, self._loss_sum = epoch, 0, 0.0
        self._epoch_started = time.perf_counter()
        if self._bar is not None and self._stage is not None:
            self._bar.set_description_str(f"[{self.task}] {self._stage.name} {epoch}/{self._stage.epochs}", False)

    def step(self, loss: float) -> None:
        """One optimiser step with this batch's loss."""
        self._step += 1
        self._loss_sum += loss
        if self._bar is not None:
            self._bar.set_postfix_str(f"loss {self.running_loss:.4g}", refresh=False)
            self._bar.update(1)

    def end_epoch(self, metrics: dict[str, float], monitor: str) -> None:
        """An epoch ended with ``metrics``: it was validated when ``monitor`` (not the loss) is among them."""
        self.epoch_seconds.append(time.perf_counter() - self._epoch_started)
        if self.quiet:
            return
        metric = (monitor, float(metrics[monitor])) if monitor in metrics and monitor != "train_loss" else None
        if self._bar is None:
            self._write(self.epoch_line(metric))
            return
        parts = [f"loss {self.running_loss:.4g}"]
        if metric is not None:
            parts.append(f"{metric[0]} {metric[1]:.4g}")
        parts.append(f"left ~{self._eta_text()}")  # the run's (the bar's own estimate is the stage's)
        self._bar.set_postfix_str(", ".join(parts))

    def end_stage(self) -> None:
        """The epoch loop of a stage ended (or failed): close its bar."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    # -- what is shown --------------------------------------------------------------------------------------------
    @property
    def running_loss(self) -> float:
        """Mean training loss of the current epoch so far (``nan`` before its first step)."""
        return self._loss_sum / self._step if self._step else math.nan

    def eta(self) -> float:
        """Estimated seconds left in the run (``nan`` before the first epoch ended); see the class."""
        if not self.epoch_seconds or self._stage is None:
            return math.nan
        left = max(self._stage.epochs - self._epoch, 0)
        index = self._index(self._stage)
        if index is not None:
            left += sum(s.epochs for s in self.stages[index + 1 :] if s.gradient)
        return sum(self.epoch_seconds) / len(self.epoch_seconds) * left

    def epoch_line(self, metric: tuple[str, float] | None) -> str:
        """The plain line of the epoch that just ended (``metric``: the validation metric's name and value)."""
        name, epochs = (self._stage.name, self._stage.epochs) if self._stage is not None else ("train", self._epoch)
        steps = f"{self._step}/{self._steps}" if self._steps else str(self._step)
        parts = [f"[{self.task}] {name} epoch {self._epoch}/{epochs}", f"step {steps}", f"loss {self.running_loss:.4g}"]
        if metric is not None:
            parts.append(f"{metric[0]} {metric[1]:.4g}")
        parts.append(f"elapsed {format_seconds(time.perf_counter() - self.started)}")
        parts.append(f"eta {self._eta_text()}")
        return "  ".join(parts)

    def _eta_text(self) -> str:
        eta = self.eta()
        return "?" if math.isnan(eta) else format_seconds(eta)

    def _index(self, stage: Stage) -> int | None:
        return next((i for i, s in enumerate(self.stages) if s is stage), None)

    def _write(self, line: str) -> None:
        if self._bar is not None:
            self._bar.write(line, file=self.stream)
        else:
            print(line, file=self.stream, flush=True)


def _steps_per_epoch(loader: Iterable[Any], cap: int | None) -> int | None:
    """Training batches per epoch where the loader knows its length (for progress only; else the cap or ``None``)."""
    try:
        n = len(loader)  # type: ignore[arg-type]
    except TypeError:
        return cap
    return min(n, cap) if cap is not None else n


def to_device(batch: Any, device: torch.device) -> Any:
    """Tensors of a (nested) batch on ``device``."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, list | tuple):
        return type(batch)(to_device(v, device) for v in batch)
    return batch


class TrainingRun(abc.ABC, Generic[ConfigT]):
    """One training run of a task.

    Args:
        task: the task (its name, data card and model registry entry).
        config: the typed config (published recipe or preset, with overrides).
        options: ``medinfer train``'s options (data, run folder, device, seed, the task's training options).

    Attributes set by :meth:`run`: ``device``, ``model``, ``history`` (every epoch of every stage, ``epoch``
    counted across stages), ``stage_metrics`` (per stage), ``synthetic``, ``provenance``, ``dist`` (this
    process's place under torchrun, ``None`` in a single process).
    """

    #: gradient-norm clipping (``None``: off); stated in the model card
    grad_clip: float | None = 12.0
    #: mixed precision when training on CUDA; stated in the model card
    amp: bool = True

    def __init__(self, task: Task, config: ConfigT, options: TrainOptions) -> None:
        self.task = task
        self.config = config
        self.options = options
        self.task_options: TaskOptions = options.task if options.task is not None else task.train_options_model()
        self.out_dir = Path(options.out_dir)
        self.data_dir = Path(options.data_dir)
        self.device = torch.device("cpu")
        self.model: nn.Module = nn.Identity()
        self.history: list[dict[str, float]] = []
        self.stage_metrics: dict[str, dict[str, Any]] = {}
        self.synthetic = False
        self.provenance: dict[str, Any] = {}
        self.progress = TrainProgress(task.name, quiet=options.quiet)
        self.dist: distributed.DistInfo | None = None

    @property
    def is_main(self) -> bool:
        """Whether this process logs and writes: always in a single process, rank 0 under torchrun."""
        return self.dist is None or self.dist.is_main

    # -- hooks: data and model -----------------------------------------------------------------------------------
    @abc.abstractmethod
    def load_data(self) -> None:
        """Read and split the dataset (into attributes of the run). Raises ``ValueError`` for unusable data."""

    @abc.abstractmethod
    def build_model(self) -> nn.Module:
        """The network to train (initialised)."""

    @abc.abstractmethod
    def make_loader(self, stage: Stage) -> Iterable[Any]:
        """Training batches of a stage."""

    @property
    def model_name(self) -> str:
        """Registry name of the network (default: the config's ``model_name``)."""
        name = getattr(self.config, "model_name", None)
        if not isinstance(name, str):
            raise NotImplementedError(f"{type(self).__name__}: the config has no model_name; override model_name")
        return name

    @property
    def model_kwargs(self) -> dict[str, Any]:
        """Keyword arguments that rebuild the network from the registry (default: the config's ``model_kwargs``)."""
        kwargs = getattr(self.config, "model_kwargs", None)
        if kwargs is None:
            raise NotImplementedError(f"{type(self).__name__}: the config has no model_kwargs; override model_kwargs")
        return dict(kwargs)

    # -- hooks: the loop ------------------------------------------------------------------------------------------
    def stages(self) -> list[Stage]:
        """The stages in order (default: one, ``train``, of ``config.epochs`` epochs)."""
        return [Stage("train", int(getattr(self.config, "epochs", 1)))]

    def configure_optimizers(self, stage: Stage) -> tuple[torch.optim.Optimizer, Any]:
        """``(optimizer, scheduler_or_None)``; the scheduler steps once per epoch."""
        return torch.optim.Adam(self.model.parameters(), lr=1e-3), None

    @abc.abstractmethod
    def train_step(self, batch: Any, stage: Stage) -> torch.Tensor:
        """Loss of one batch (the loop does backward, clipping and the optimiser step)."""

    def validate(self, stage: Stage) -> dict[str, float]:
        """Validation metrics of an epoch (under ``torch.no_grad``, model in eval mode)."""
        return {}

    def monitor(self, stage: Stage) -> tuple[str, str]:
        """The metric that selects a stage's best epoch and its direction (``max``/``min``)."""
        return "train_loss", "min"

    def iterations_per_epoch(self, stage: Stage) -> int | None:
        """Cap on training batches per epoch (``None``: one pass over the loader)."""
        return None

    def find_unused_parameters(self, stage: Stage) -> bool:
        """Under DDP: whether ``train_step`` may leave some trainable parameters of this stage without a gradient.

        Default ``False``: DDP is built per stage around the parameters that require gradients after the stage
        froze the rest (ProtoECGNet's stages, breakhis's frozen trunk), so frozen parts never wait for gradients.
        """
        return False

    def run_stage(self, stage: Stage) -> None:
        """Run one stage: the epoch loop for gradient stages; a task runs its other stages itself."""
        if not stage.gradient:
            raise NotImplementedError(f"stage {stage.name!r} has no gradient loop; the task must run it")
        self.fit(stage)

    def on_improved(self, stage: Stage, epoch: int, metrics: dict[str, float]) -> None:
        """A stage's monitored metric improved (default: save ``best.pt``)."""
        self.save(BEST_NAME, {"epoch": epoch, **metrics})

    def on_epoch_end(self, stage: Stage, epoch: int, metrics: dict[str, float]) -> None:
        """After validation (default: save ``last.pt``)."""
        self.save(LAST_NAME, {"epoch": epoch, **metrics})

    def on_stage_end(self, stage: Stage) -> None:
        """After a stage (default: nothing)."""

    def finalise(self) -> None:
        """After every stage, before ``metrics.json`` and the card (default: nothing)."""

    # -- hooks: what is written ------------------------------------------------------------------------------
    def preprocessing(self) -> dict[str, Any]:
        """The checkpoint's preprocessing record."""
        return {}

    def heads(self) -> dict[str, list[str]]:
        """The output heads this run's model has, with their labels (default: every head of the contract)."""
        return {h.name: list(h.labels) for h in self.task.contract.heads}

    def checkpoint_extra(self) -> dict[str, Any]:
        """Method-specific data stored in the checkpoint (thresholds, prototype sources...)."""
        return {}

    def summary(self) -> dict[str, Any]:
        """Extra fields of ``metrics.json``."""
        return {}

    @abc.abstractmethod
    def card(self) -> CardText:
        """What the model card says about this run."""

    # -- the runner -----------------------------------------------------------------------------------------------
    def run(self) -> Path:
        """Seed, read data, build the model, run the stages, write metrics, curve and card; return the run dir."""
        seed_everything(self.options.seed)
        self.device = torch.device(resolve_device(self.options.device))
        self.dist = distributed.current()
        if self.dist is not None:
            self.device = distributed.process_device(self.device, self.dist)
            self.progress.quiet = self.progress.quiet or not self.dist.is_main
        if self.is_main:
            self.out_dir.mkdir(parents=True, exist_ok=True)
        self.synthetic = is_synthetic(self.data_dir)
        self.load_data()
        self.model = self.build_model()
        spec_card = self.task.data_card
        self.provenance = make_provenance(
            self.data_dir.name,
            "synthetic.md" if self.synthetic else spec_card,
            self.options.seed,
            task=self.task.name,
            synthetic=self.synthetic,
            stands_in_for=spec_card,
        )
        self.provenance.update(self.options.provenance)
        stages = self.stages()
        self.progress.begin(stages)
        for stage in stages:
            if self.is_main:
                logger.info("%s: stage %s (%d epochs)", self.task.name, stage.name, stage.epochs)
            self.progress.stage(stage)
            self.run_stage(stage)
            self.on_stage_end(stage)
        self.finalise()
        if self.is_main:
            self.write_metrics()
            self.write_card()
            (self.out_dir / "config.json").write_text(json.dumps(self.config.to_dict(), indent=2), encoding="utf-8")
        distributed.barrier()  # the other ranks return once rank 0 has written the run
        return self.out_dir

    def fit(self, stage: Stage) -> dict[str, float]:
        """The epoch loop of one gradient stage; returns the best epoch's metrics (``epoch`` within the stage)."""
        self.model.to(self.device)
        use_amp = amp_enabled(self.device, self.amp)
        scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
        optimizer, scheduler = self.configure_optimizers(stage)
        loader = self.make_loader(stage)
        step: nn.Module | None = None  # the step under DDP (None: a single process calls train_step itself)
        if self.dist is not None:
            loader = distributed.shard_loader(loader, self.dist, self.options.seed)
            step = distributed.wrap_step(
                self.model, lambda batch: self.train_step(batch, stage), self.device,
                find_unused_parameters=self.find_unused_parameters(stage),
            )  # fmt: skip
        cap = self.iterations_per_epoch(stage)
        monitor, mode = self.monitor(stage)
        best_value = -math.inf if mode == "max" else math.inf
        best: dict[str, float] = {}
        offset = len(self.history)
        self.progress.start_epochs(stage, _steps_per_epoch(loader, cap))
        try:
            for epoch in range(1, stage.epochs + 1):
                t0 = time.perf_counter()
                self.progress.start_epoch(epoch)
                distributed.set_epoch(loader, offset + epoch)  # a new shuffle each epoch of every stage
                self.model.train()
                losses: list[float] = []
                for i, batch in enumerate(loader):
                    if cap is not None and i >= cap:
                        break
                    batch = to_device(batch, self.device)
                    optimizer.zero_grad(set_to_none=True)
                    with autocast(self.device, self.amp):
                        loss = step(batch) if step is not None else self.train_step(batch, stage)
                    if not torch.isfinite(loss):
                        where = f"stage {stage.name}, epoch {epoch}, batch {i}"
                        raise FloatingPointError(f"non-finite training loss in {where}")
                    scaler.scale(loss).backward()
                    if self.grad_clip is not None:
                        scaler.unscale_(optimizer)
                        nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip)
                    scaler.step(optimizer)
                    scaler.update()
                    losses.append(float(loss.detach()))
                    self.progress.step(losses[-1])
                if scheduler is not None:
                    scheduler.step()
                self.model.eval()
                with torch.no_grad():
                    # under torchrun rank 0 validates on the whole validation set and every rank gets its
                    # metrics (the same best-epoch decision everywhere) and its buffers (identical weights)
                    val = self.validate(stage) if self.is_main else {}
                train_loss = float(sum(losses) / max(len(losses), 1))
                if self.dist is not None:
                    val = distributed.broadcast_object(val)
                    distributed.sync_buffers(self.model)
                    train_loss = distributed.all_reduce_mean(sum(losses), len(losses))
                metrics = {"epoch": float(epoch), "train_loss": train_loss, **val}
                metrics["lr"] = float(optimizer.param_groups[0]["lr"])
                metrics["seconds"] = time.perf_counter() - t0
                self.history.append({**metrics, "epoch": float(offset + epoch)})
                value = float(metrics.get(monitor, metrics["train_loss"]))
                improved = not math.isnan(value) and (value > best_value if mode == "max" else value < best_value)
                if improved or not best:
                    best_value, best = value, dict(metrics)
                    self.on_improved(stage, epoch, metrics)
                self.on_epoch_end(stage, epoch, metrics)
                self.progress.end_epoch(metrics, monitor)
                if self.is_main:
                    logger.info("%s %s epoch %d/%d %s", self.task.name, stage.name, epoch, stage.epochs,
                                {k: round(v, 4) for k, v in metrics.items()})  # fmt: skip
        finally:
            self.progress.end_stage()
        self.stage_metrics[stage.name] = {"monitor": monitor, "best_epoch": int(best.get("epoch", 0)), **best}
        return best

    # -- writing ----------------------------------------------------------------------------------------------------
    def checkpoint(self, metrics: dict[str, Any], extra: dict[str, Any] | None = None) -> Checkpoint:
        """The run's model as a checkpoint (the one format every task shares); ``extra`` replaces the run's."""
        if extra is None:
            extra = {"synthetic": self.synthetic, "train_options": self.task_options.model_dump(mode="json"),
                     **self.checkpoint_extra()}  # fmt: skip
        heads = self.heads()
        labels = [label for names in heads.values() for label in names]
        return Checkpoint(
            task=self.task.name,
            model_name=self.model_name,
            model_kwargs=dict(self.model_kwargs),
            state_dict={k: v.detach().cpu().clone() for k, v in self.model.state_dict().items()},
            labels=labels,
            heads=heads,
            config=self.config.to_dict(),
            preprocessing=self.preprocessing(),
            metrics=metrics,
            provenance=dict(self.provenance),
            extra=extra,
        )

    def untrained_checkpoint(self) -> Checkpoint:
        """The network at its seeded initialisation, as a checkpoint (tests and benchmarks, never predictions)."""
        from models import create_model

        torch.manual_seed(self.options.seed)
        self.model = create_model(self.model_name, **self.model_kwargs)
        self.provenance = make_provenance(
            "untrained", "synthetic.md", self.options.seed, task=self.task.name, synthetic=True
        )
        return self.checkpoint({}, extra={"untrained": True})

    def save(self, name: str, metrics: dict[str, Any]) -> Path:
        """Write the current model as ``name`` (``best.pt``/``last.pt``) in the run folder (rank 0 only under
        torchrun: the other ranks hold the same weights and return the path)."""
        if not self.is_main:
            return self.out_dir / name
        return save_checkpoint(self.checkpoint(metrics), self.out_dir / name)

    def best_metrics(self) -> dict[str, Any]:
        """The metrics the card and ``metrics.json`` headline (default: the last stage's best epoch)."""
        return next(reversed(self.stage_metrics.values()), {}) if self.stage_metrics else {}

    def write_metrics(self) -> None:
        """``metrics.json`` (every epoch, each stage's best, the task's summary) and ``training_curve.png``."""
        best = self.best_metrics()
        out = {
            "monitor": best.get("monitor"),
            "best_epoch": best.get("best_epoch"),
            "best_value": best.get(best.get("monitor", ""), None),
            "stages": self.stage_metrics,
            **self.summary(),
            "history": self.history,
        }
        (self.out_dir / "metrics.json").write_text(json.dumps(out, indent=2, default=str), encoding="utf-8")
        if self.history:
            plot_curves(self.history, self.out_dir / "training_curve.png")

    def runner_notes(self) -> list[str]:
        """What every model card states about how the runner trained."""
        clip = f"gradients clipped to norm {self.grad_clip}" if self.grad_clip is not None else "no gradient clipping"
        amp = (
            "mixed precision (float16 autocast with loss scaling) when training on CUDA; float32 on CPU"
            if self.amp
            else "float32 throughout"
        )
        seed = f"seed {self.options.seed}, device {self.device}"
        notes = [f"{clip} [INF: not stated by the paper]", f"{amp} [INF]", seed]
        if self.dist is not None:
            notes.append(
                f"trained data-parallel on {self.dist.world_size} processes (torchrun, DDP, {self.dist.backend}); "
                f"the batch size is per process (effective batch {self.dist.world_size} x the config's); batch-norm "
                "statistics per process, rank 0's kept; validation on rank 0 over the whole validation set"
            )
        return notes

    def write_card(self) -> Path:
        from models import get_model_spec

        text = self.card()
        spec = get_model_spec(self.model_name)
        return write_model_card(
            self.out_dir / "MODEL_CARD.md",
            title=text.title,
            task=self.task.name,
            model_name=self.model_name,
            paper=spec.paper,
            summary=text.summary,
            intended_use=text.intended_use,
            data=text.data + (" (synthetic data written by `medinfer synth`)." if self.synthetic else ""),
            data_card="synthetic.md" if self.synthetic else self.task.data_card,
            metrics=text.metrics,
            method_notes=[*text.method_notes, *self.runner_notes()],
            limitations=text.limitations,
            provenance=self.provenance,
            synthetic=self.synthetic,
        )


@torch.no_grad()
def recalibrate_batchnorm(model: nn.Module, batches: Iterable[torch.Tensor], max_batches: int) -> int:
    """Recompute the running statistics of the trainable batch-norm layers on training batches ("precise BN").

    Running averages with a small momentum lag behind weights that change quickly (short runs, high learning
    rates), so eval-mode outputs can collapse while train-mode ones are right. Here each trainable batch-norm
    layer gets the plain average over up to ``max_batches`` batches of its input statistics, with everything
    else in eval mode (no dropout, no stochastic depth), i.e. exactly as inference sees them. Frozen layers keep
    their statistics. The model is left in eval mode.

    Args:
        model: the network.
        batches: input tensors (B, ...) already on the model's device.
        max_batches: the most batches used (0: nothing is done).

    Returns:
        The number of batches used.
    """
    norms = [
        m
        for m in model.modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and any(p.requires_grad for p in m.parameters())
    ]
    model.eval()
    if not norms or max_batches <= 0:
        return 0
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average
        m.train()
    used = 0
    for x in batches:
        if used >= max_batches:
            break
        model(x)
        used += 1
    for m, momentum in zip(norms, momenta, strict=True):
        m.momentum = momentum
        m.eval()
    return used


def split_indices(n: int, val_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Seeded random split of ``n`` items into (train, validation) indices; at least one each when ``n`` > 1."""
    import numpy as np

    order = np.random.default_rng(seed).permutation(n)
    n_val = max(1, round(n * val_fraction)) if n > 1 else 0
    return [int(i) for i in order[n_val:]], [int(i) for i in order[:n_val]]


def take(items: Sequence[Any], indices: Sequence[int]) -> list[Any]:
    return [items[i] for i in indices]
