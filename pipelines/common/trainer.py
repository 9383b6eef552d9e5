"""A small training loop with hooks (nnU-Net style): a method overrides one hook, not the loop.

Hooks: :meth:`Trainer.configure_optimizers`, :meth:`Trainer.train_step`, :meth:`Trainer.validate`,
:meth:`Trainer.on_epoch_end`. The loop handles devices, AMP (CUDA only), gradient clipping, the learning
rate schedule, best/last checkpoints, ``metrics.json`` and the training-curve PNG.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable, Iterable
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pipelines.common.plots import plot_curves

logger = logging.getLogger(__name__)


class Trainer:
    """Generic epoch loop.

    Args:
        model: the network (moved to ``device``).
        device: torch device string.
        epochs: number of epochs.
        out_dir: run folder for ``metrics.json`` and the curve.
        monitor: validation metric that selects the best checkpoint.
        mode: ``max`` or ``min`` for ``monitor``.
        amp: use mixed precision (only honoured on CUDA).
        grad_clip: max gradient norm, or ``None``.
        save_fn: called as ``save_fn(kind, epoch, metrics)`` with kind ``best`` or ``last``.
        iterations_per_epoch: cap on train batches per epoch (``None`` = one pass over the loader).
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        device: str,
        epochs: int,
        out_dir: Path,
        monitor: str,
        mode: str = "max",
        amp: bool = True,
        grad_clip: float | None = 12.0,
        save_fn: Callable[[str, int, dict[str, float]], None] | None = None,
        iterations_per_epoch: int | None = None,
    ) -> None:
        if epochs < 1:
            raise ValueError(f"epochs must be >= 1, got {epochs}")
        if mode not in ("max", "min"):
            raise ValueError(f"mode must be 'max' or 'min', got {mode!r}")
        self.model = model.to(device)
        self.device = torch.device(device)
        self.epochs = epochs
        self.out_dir = Path(out_dir)
        self.monitor = monitor
        self.mode = mode
        self.use_amp = bool(amp) and self.device.type == "cuda"
        self.grad_clip = grad_clip
        self.save_fn = save_fn
        self.iterations_per_epoch = iterations_per_epoch
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.use_amp)
        self.history: list[dict[str, float]] = []
        self.best_value = -math.inf if mode == "max" else math.inf
        self.best_epoch = -1
        self.optimizer, self.scheduler = self.configure_optimizers()

    # -- hooks ---------------------------------------------------------------------------------------------
    def configure_optimizers(self) -> tuple[torch.optim.Optimizer, Any]:
        """Return ``(optimizer, scheduler_or_None)``; the scheduler steps once per epoch."""
        return torch.optim.Adam(self.model.parameters(), lr=1e-3), None

    def train_step(self, batch: Any) -> torch.Tensor:
        """Loss of one batch (the loop does backward and the optimiser step)."""
        raise NotImplementedError

    def validate(self, val_data: Any) -> dict[str, float]:
        """Validation metrics for the epoch (must include ``monitor``)."""
        return {}

    def on_epoch_end(self, epoch: int, metrics: dict[str, float]) -> None:
        """Called after validation and checkpointing."""

    # -- loop ----------------------------------------------------------------------------------------------
    def autocast(self) -> Any:
        return torch.autocast("cuda", dtype=torch.float16) if self.use_amp else nullcontext()

    def to_device(self, batch: Any) -> Any:
        if isinstance(batch, torch.Tensor):
            return batch.to(self.device, non_blocking=True)
        if isinstance(batch, dict):
            return {k: self.to_device(v) for k, v in batch.items()}
        if isinstance(batch, list | tuple):
            return type(batch)(self.to_device(v) for v in batch)
        return batch

    def _improved(self, value: float) -> bool:
        if math.isnan(value):
            return False
        return value > self.best_value if self.mode == "max" else value < self.best_value

    def fit(self, train_loader: Iterable[Any], val_data: Any = None) -> list[dict[str, float]]:
        """Run all epochs; return the per-epoch history."""
        self.out_dir.mkdir(parents=True, exist_ok=True)
        for epoch in range(1, self.epochs + 1):
            t0 = time.perf_counter()
            self.model.train()
            losses: list[float] = []
            for i, batch in enumerate(train_loader):
                if self.iterations_per_epoch is not None and i >= self.iterations_per_epoch:
                    break
                batch = self.to_device(batch)
                self.optimizer.zero_grad(set_to_none=True)
                with self.autocast():
                    loss = self.train_step(batch)
                if not torch.isfinite(loss):
                    raise FloatingPointError(f"non-finite training loss at epoch {epoch}, batch {i}")
                self.scaler.scale(loss).backward()
                if self.grad_clip is not None:
                    self.scaler.unscale_(self.optimizer)
                    nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip)
                self.scaler.step(self.optimizer)
                self.scaler.update()
                losses.append(float(loss.detach()))
            if self.scheduler is not None:
                self.scheduler.step()
            self.model.eval()
            with torch.no_grad():
                val = self.validate(val_data) if val_data is not None else {}
            metrics = {"epoch": float(epoch), "train_loss": float(sum(losses) / max(len(losses), 1)), **val}
            metrics["lr"] = float(self.optimizer.param_groups[0]["lr"])
            metrics["seconds"] = time.perf_counter() - t0
            self.history.append(metrics)
            value = metrics.get(self.monitor, -metrics["train_loss"] if self.mode == "max" else metrics["train_loss"])
            if self._improved(float(value)) or self.best_epoch < 0:
                self.best_value, self.best_epoch = float(value), epoch
                if self.save_fn is not None:
                    self.save_fn("best", epoch, metrics)
            if self.save_fn is not None:
                self.save_fn("last", epoch, metrics)
            logger.info("epoch %d/%d %s", epoch, self.epochs, {k: round(v, 4) for k, v in metrics.items()})
            self.on_epoch_end(epoch, metrics)
        self.write_history()
        return self.history

    def write_history(self) -> None:
        """``metrics.json`` (history, best epoch) and ``training_curve.png``."""
        summary = {
            "monitor": self.monitor,
            "best_epoch": self.best_epoch,
            "best_value": self.best_value,
            "history": self.history,
        }
        (self.out_dir / "metrics.json").write_text(json.dumps(summary, indent=2), encoding="utf-8")
        plot_curves(self.history, self.out_dir / "training_curve.png")
