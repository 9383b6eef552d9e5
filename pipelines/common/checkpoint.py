"""One file per trained model, loadable with ``torch.load(weights_only=True)`` and rebuilt from the registry.

Layout (``FORMAT_VERSION`` 1)::

    {format_version, task, model_name, model_kwargs, config, state_dict, labels, heads, preprocessing, metrics,
     provenance{task, dataset, data_card, seed, trained_at, code_version, synthetic, stands_in_for, trained_by},
     extra}

``provenance.synthetic`` is true for a model trained on data written by ``medinfer synth`` (every demo model);
its ``data_card`` is then ``synthetic.md`` and ``stands_in_for`` names the card of the real dataset the
synthetic data imitate. ``trained_by`` is ``"medinfer demo"`` for the demo's models.

``labels`` lists every output name in order; ``heads`` maps each output head to its labels (checkpoints written
before heads existed have none, and :meth:`Checkpoint.head_labels` falls back to one head of all labels).

Everything but ``state_dict`` (and tensors inside ``extra``) is plain JSON-like data, so no code is ever
unpickled. ``extra`` carries method-specific tensors and records (e.g. prototype sources, thresholds).
"""

from __future__ import annotations

import datetime as _dt
import os
import shutil
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import torch
from torch import nn

from models import create_model
from pipelines.common.errors import CheckpointError
from pipelines.common.paths import checkpoints_dir

__all__ = [
    "BEST_NAME",
    "LAST_NAME",
    "Checkpoint",
    "checkpoints_dir",
    "install_checkpoint",
    "installed_checkpoint",
    "load_checkpoint",
    "make_provenance",
    "read_state_dict",
    "resolve_checkpoint_path",
    "save_checkpoint",
]

FORMAT_VERSION = 1
BEST_NAME = "best.pt"
LAST_NAME = "last.pt"
REQUIRED_KEYS = ("format_version", "task", "model_name", "model_kwargs", "state_dict", "labels", "provenance")


@dataclass
class Checkpoint:
    """An in-memory checkpoint (see the module docstring for the file layout)."""

    task: str
    model_name: str
    model_kwargs: dict[str, Any]
    state_dict: dict[str, torch.Tensor]
    labels: list[str]
    heads: dict[str, list[str]] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)
    preprocessing: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    provenance: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    format_version: int = FORMAT_VERSION
    path: Path | None = None

    def build_model(self, device: torch.device | str = "cpu") -> nn.Module:
        """Rebuild the network from the registry and load the weights (eval mode).

        Options missing from ``model_kwargs`` take the spec's ``legacy_kwargs`` (the values that held before the
        option existed), so checkpoints written by older versions keep loading after a default changes.
        """
        from models import get_model_spec  # beside create_model; imported here to keep this change to one method

        spec = get_model_spec(self.model_name)
        model = create_model(self.model_name, **{**spec.legacy_kwargs, **self.model_kwargs})
        model.load_state_dict(self.state_dict)
        return model.to(device).eval()

    def head_labels(self, default_head: str = "output") -> dict[str, list[str]]:
        """Labels per output head (one head of all labels for checkpoints that predate heads)."""
        return {k: list(v) for k, v in self.heads.items()} if self.heads else {default_head: list(self.labels)}

    @property
    def synthetic_demo(self) -> bool:
        """Whether the model was trained on synthetic data (then its outputs on real inputs mean nothing)."""
        return bool(self.provenance.get("synthetic", self.extra.get("synthetic", False)))

    def model_info(self) -> dict[str, Any]:
        """What every result, report and model listing says about the model behind it (JSON-able)."""
        return {
            "task": self.task,
            "model_name": self.model_name,
            "version": self.version,
            "synthetic_demo": self.synthetic_demo,
            "provenance": dict(self.provenance),
        }

    @property
    def version(self) -> str:
        """A short identifier: the training time stamp and code version."""
        prov = self.provenance
        return f"{prov.get('trained_at', 'unknown')}+{prov.get('code_version', 'unknown')}"


def code_version() -> str:
    """The package version plus the git commit when run from a checkout."""
    try:
        version = metadata.version("medinfer")
    except metadata.PackageNotFoundError:
        version = "0+unknown"
    try:
        root = Path(__file__).resolve().parents[2]
        sha = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=5
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        sha = ""
    return f"{version}+g{sha}" if sha else version


def make_provenance(
    dataset: str, data_card: str, seed: int, *, task: str = "", synthetic: bool = False, stands_in_for: str = ""
) -> dict[str, Any]:
    """Provenance block for a checkpoint trained now.

    Args:
        dataset: the training data's name (its folder's name).
        data_card: the card of the data it was trained on (``synthetic.md`` for synthetic data).
        seed: the training seed.
        task: the task trained.
        synthetic: the data were written by ``medinfer synth``.
        stands_in_for: for synthetic data, the card of the real dataset they imitate.
    """
    out: dict[str, Any] = {
        "task": task,
        "dataset": dataset,
        "data_card": data_card,
        "seed": int(seed),
        "trained_at": _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "code_version": code_version(),
        "synthetic": bool(synthetic),
    }
    if synthetic and stands_in_for:
        out["stands_in_for"] = stands_in_for
    return out


def save_checkpoint(ckpt: Checkpoint, path: str | Path) -> Path:
    """Write a checkpoint atomically (temporary file, then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "format_version": ckpt.format_version,
        "task": ckpt.task,
        "model_name": ckpt.model_name,
        "model_kwargs": dict(ckpt.model_kwargs),
        "config": ckpt.config,
        "state_dict": {k: v.detach().cpu() for k, v in ckpt.state_dict.items()},
        "labels": list(ckpt.labels),
        "heads": {k: list(v) for k, v in ckpt.heads.items()},
        "preprocessing": ckpt.preprocessing,
        "metrics": ckpt.metrics,
        "provenance": ckpt.provenance,
        "extra": ckpt.extra,
    }
    tmp = path.with_name(path.name + ".tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)
    return path


def load_checkpoint(path: str | Path, task: str | None = None) -> Checkpoint:
    """Load a checkpoint file with ``weights_only=True``.

    Args:
        path: a checkpoint file or a training run folder (its ``best.pt``).
        task: when given, the checkpoint must belong to this task.

    Raises:
        CheckpointError: missing, unreadable, of an unknown format, or of another task.
    """
    file = resolve_checkpoint_path(path)
    try:
        raw = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a bad file; all mean "not a checkpoint"
        raise CheckpointError(f"{file}: not a readable medinfer checkpoint ({type(exc).__name__}: {exc})") from exc
    if not isinstance(raw, Mapping) or any(k not in raw for k in REQUIRED_KEYS):
        raise CheckpointError(f"{file}: not a medinfer checkpoint (missing keys)")
    if raw["format_version"] != FORMAT_VERSION:
        raise CheckpointError(f"{file}: checkpoint format {raw['format_version']} is not supported")
    if task is not None and raw["task"] != task:
        raise CheckpointError(f"{file}: checkpoint is for task {raw['task']!r}, not {task!r}")
    return Checkpoint(
        task=raw["task"],
        model_name=raw["model_name"],
        model_kwargs=dict(raw["model_kwargs"]),
        state_dict=raw["state_dict"],
        labels=list(raw["labels"]),
        heads={str(k): list(v) for k, v in (raw.get("heads") or {}).items()},
        config=dict(raw.get("config") or {}),
        preprocessing=dict(raw.get("preprocessing") or {}),
        metrics=dict(raw.get("metrics") or {}),
        provenance=dict(raw["provenance"]),
        extra=dict(raw.get("extra") or {}),
        format_version=raw["format_version"],
        path=file,
    )


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """A local state dict (weights a user brings, e.g. ImageNet), read with ``weights_only=True``.

    A training script's wrapper ``{"state_dict": {...}}`` is unwrapped.

    Raises:
        ValueError: the file is missing, not a torch file, or not a mapping of tensors (the message names it).
    """
    p = Path(path).expanduser()
    try:
        state = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a file that is not a state dict
        raise ValueError(f"{p}: not a readable state dict ({type(exc).__name__})") from exc
    if isinstance(state, Mapping) and isinstance(state.get("state_dict"), Mapping):
        state = state["state_dict"]
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{p}: not a state dict of tensors (got {type(state).__name__})")
    return dict(state)


def resolve_checkpoint_path(path: str | Path) -> Path:
    """A checkpoint file, or a run folder's ``best.pt`` (falling back to ``last.pt``)."""
    p = Path(path).expanduser()
    if p.is_dir():
        for name in (BEST_NAME, LAST_NAME):
            if (p / name).is_file():
                return p / name
        raise CheckpointError(f"{p}: folder holds no {BEST_NAME} or {LAST_NAME}")
    if not p.is_file():
        raise CheckpointError(f"{p}: checkpoint not found")
    return p


def installed_checkpoint(task: str, directory: str | Path | None = None) -> Path | None:
    """The installed checkpoint of a task, if any (``<dir>/<task>.pt``)."""
    base = Path(directory).expanduser() if directory else checkpoints_dir()
    candidate = base / f"{task}.pt"
    return candidate if candidate.is_file() else None


def install_checkpoint(run_or_file: str | Path, task: str, directory: str | Path | None = None) -> Path:
    """Copy a run's best checkpoint (and its model card) to the checkpoints folder as ``<task>.pt``."""
    src = resolve_checkpoint_path(run_or_file)
    load_checkpoint(src, task=task)  # validate before installing
    base = Path(directory).expanduser() if directory else checkpoints_dir()
    base.mkdir(parents=True, exist_ok=True)
    dst = base / f"{task}.pt"
    shutil.copyfile(src, dst)
    card = src.parent / "MODEL_CARD.md"
    if card.is_file():
        shutil.copyfile(card, base / f"{task}.MODEL_CARD.md")
    return dst
