"""Data-parallel training under ``torchrun`` (PyTorch's DistributedDataParallel): one process per device.

``medinfer train TASK ... --distributed`` runs under ``torchrun``, which starts the processes and sets ``RANK``,
``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT`` (multi-node rendezvous is torchrun's).
:func:`init_distributed` joins the process group (NCCL on CUDA, one device per ``LOCAL_RANK``; gloo on CPU);
:class:`~pipelines.common.trainer.TrainingRun` then notices the group (:func:`current`) and

- shards each stage's training loader (:func:`shard_loader`: ``DistributedSampler``, ``set_epoch`` every epoch);
- wraps the training step in DDP per stage (:func:`wrap_step`), so gradients are averaged across processes;
- validates on rank 0 over the whole validation set and broadcasts the metrics (:func:`broadcast_object`), so
  every rank takes the same best-epoch decision, and copies rank 0's buffers (batch-norm statistics) to every
  rank after each epoch (:func:`sync_buffers`), so all ranks hold identical weights and the checkpoint is theirs;
- writes checkpoints, metrics, the curve and the card on rank 0 only, then waits at a barrier.

Batch sizes are per process: ``N`` processes train with an effective batch of ``N × batch_size``, and an epoch
covers the training set once across all processes. Batch norm is per process (no ``SyncBatchNorm``).
Nothing here imports torch at module import (the CLI checks the environment before loading a task).
"""

from __future__ import annotations

import copy
import logging
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    import torch
    from torch import nn

__all__ = [
    "TORCHRUN_ENV",
    "DistInfo",
    "all_reduce_mean",
    "barrier",
    "broadcast_object",
    "current",
    "gather_objects",
    "init_distributed",
    "missing_torchrun_env",
    "process_device",
    "set_epoch",
    "shard_loader",
    "shutdown",
    "sync_buffers",
    "wrap_step",
]

logger = logging.getLogger(__name__)

#: what ``torchrun`` sets in every process it starts
TORCHRUN_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
#: how long a collective waits (rank 0 validates while the others wait at the broadcast)
TIMEOUT = timedelta(minutes=60)

T = TypeVar("T")


@dataclass(frozen=True)
class DistInfo:
    """This process's place in the process group."""

    rank: int
    world_size: int
    local_rank: int
    backend: str

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that logs, validates and writes."""
        return self.rank == 0


def missing_torchrun_env(environ: Mapping[str, str] | None = None) -> list[str]:
    """The torchrun variables absent from ``environ`` (default: this process's environment)."""
    env = os.environ if environ is None else environ
    return [name for name in TORCHRUN_ENV if not env.get(name)]


def _process_device_name(device: str, local_rank: int) -> str:
    """``cpu``, or ``cuda:LOCAL_RANK`` for ``auto`` with CUDA and ``cuda``.

    Raises:
        ValueError: an explicit ``cuda:N`` (each process uses the device of its local rank).
    """
    from pipelines.common.device import resolve_device

    resolved = resolve_device(device)
    if resolved == "cpu":
        return "cpu"
    if resolved != "cuda":
        raise ValueError(
            f"--device {device} with --distributed: each process uses cuda:LOCAL_RANK; pass --device cuda or auto "
            "(choose the GPUs with CUDA_VISIBLE_DEVICES)"
        )
    return f"cuda:{local_rank}"


def init_distributed(device: str = "auto") -> DistInfo:
    """Join the process group torchrun set up: NCCL on CUDA (this process on ``cuda:LOCAL_RANK``), gloo on CPU.

    Args:
        device: ``auto``, ``cpu`` or ``cuda`` (``medinfer train --device``).

    Raises:
        ValueError: not started by torchrun (names the missing variables), or an explicit ``cuda:N``.
    """
    missing = missing_torchrun_env()
    if missing:
        raise ValueError(
            f"--distributed runs under torchrun, which sets {', '.join(TORCHRUN_ENV)}; missing: {', '.join(missing)} "
            "(e.g. torchrun --nproc_per_node 2 -m app.cli train TASK --data D -o RUN --distributed)"
        )
    import torch
    import torch.distributed as dist

    local_rank = int(os.environ["LOCAL_RANK"])
    name = _process_device_name(device, local_rank)
    backend = "nccl" if name.startswith("cuda") else "gloo"
    if name.startswith("cuda"):
        torch.cuda.set_device(torch.device(name))  # NCCL's collectives and object broadcasts use this device
    if not dist.is_initialized():
        dist.init_process_group(backend=backend, init_method="env://", timeout=TIMEOUT)
    info = DistInfo(dist.get_rank(), dist.get_world_size(), local_rank, backend)
    logger.info("joined process group: rank %d of %d (%s, %s)", info.rank, info.world_size, backend, name)
    return info


def shutdown() -> None:
    """Leave the process group (nothing when none was joined)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def current() -> DistInfo | None:
    """This process's place when it has joined a process group (:func:`init_distributed`), else ``None``."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return None
    rank = dist.get_rank()
    return DistInfo(rank, dist.get_world_size(), int(os.environ.get("LOCAL_RANK", rank)), str(dist.get_backend()))


def process_device(device: torch.device, info: DistInfo) -> torch.device:
    """The device this process trains on: ``cuda:LOCAL_RANK`` for a CUDA device, else ``device``."""
    import torch

    return torch.device("cuda", info.local_rank) if device.type == "cuda" else device


# -- collectives (no-ops without a process group) ---------------------------------------------------------------
def barrier() -> None:
    """Wait for every rank (nothing without a process group)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def broadcast_object(obj: T) -> T:
    """Rank 0's ``obj`` on every rank (picklable objects; ``obj`` itself without a process group)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather_objects(obj: T) -> list[T]:
    """Every rank's ``obj``, in rank order, on every rank (``[obj]`` without a process group)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def all_reduce_mean(total: float, count: int) -> float:
    """The mean over every rank of values whose local sum is ``total`` over ``count`` items (``nan`` for none)."""
    import torch
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else None
        t = torch.tensor([float(total), float(count)], dtype=torch.float64, device=device)
        dist.all_reduce(t)
        total, count = float(t[0]), int(t[1])
    return total / count if count else float("nan")


def sync_buffers(model: nn.Module) -> None:
    """Copy rank 0's buffers (batch-norm running statistics) to every rank.

    DDP averages gradients, so parameters stay identical, but each rank updates its batch-norm statistics on its
    own batches (and rank 0's validation may recompute them): after this every rank holds rank 0's.
    """
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return
    for buffer in model.buffers():
        dist.broadcast(buffer.data, src=0)


# -- the training step under DDP --------------------------------------------------------------------------------
def _step_module(model: nn.Module, step: Callable[[Any], torch.Tensor]) -> nn.Module:
    from torch import nn

    class TrainStep(nn.Module):
        """The model as a submodule and a task's training step as ``forward`` (``batch`` → loss).

        DDP prepares its gradient reduction on the output of its wrapped module's ``forward``; a task's step calls
        whatever parts of the model its method needs (a branch, ``forward_with_aux``), so the step itself is the
        forward that DDP wraps.
        """

        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, batch: Any) -> torch.Tensor:
            return step(batch)

    return TrainStep()


def wrap_step(
    model: nn.Module, step: Callable[[Any], torch.Tensor], device: torch.device, *, find_unused_parameters: bool
) -> nn.Module:
    """DDP around ``step`` (a task's loss of one batch, calling ``model``): ``wrapped(batch)`` is the loss.

    Only parameters that require gradients at this point join the reduction: build it per stage, after the
    stage has frozen what it does not train. Construction broadcasts rank 0's parameters and buffers.

    Args:
        model: the bare network (the one the task's hooks use and the checkpoint stores).
        step: ``batch`` → scalar loss.
        device: this process's device.
        find_unused_parameters: when a step leaves some trainable parameters without a gradient.
    """
    from torch.nn.parallel import DistributedDataParallel

    wrapped = _step_module(model, step)
    ids = [device.index if device.index is not None else 0] if device.type == "cuda" else None
    return DistributedDataParallel(
        wrapped, device_ids=ids, output_device=ids[0] if ids else None,
        find_unused_parameters=find_unused_parameters,
    )  # fmt: skip


# -- sharding a training loader ---------------------------------------------------------------------------------
class _Indices(Sequence[int]):
    """A sized stand-in dataset for ``DistributedSampler`` over a sampler's draws."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: Any) -> Any:
        return i


def _sharded_sampler_class() -> type:
    from torch.utils.data import DistributedSampler

    class ShardedSampler(DistributedSampler):
        """This rank's share of a sampler's draws (weighted or with replacement), via ``DistributedSampler``.

        Every rank draws the same sequence from its copy of the sampler (its own generator, seeded alike), and
        ``DistributedSampler`` (no shuffling) gives each rank every ``world_size``-th draw, padded to equal
        lengths so that every rank runs the same number of steps.
        """

        def __init__(self, sampler: Any, num_replicas: int, rank: int) -> None:
            super().__init__(_Indices(len(sampler)), num_replicas=num_replicas, rank=rank, shuffle=False)  # type: ignore[arg-type]
            self.base = sampler

        def __iter__(self) -> Iterator[int]:
            drawn = list(self.base)
            return iter([drawn[i] for i in super().__iter__()])

    return ShardedSampler


def _sharded(sampler: Any, dataset: Any, info: DistInfo, seed: int) -> Any:
    import torch
    from torch.utils.data import DistributedSampler, RandomSampler, SequentialSampler

    if isinstance(sampler, SequentialSampler):
        return DistributedSampler(dataset, num_replicas=info.world_size, rank=info.rank, shuffle=False)
    if isinstance(sampler, RandomSampler) and not sampler.replacement and sampler.num_samples == len(dataset):
        return DistributedSampler(dataset, num_replicas=info.world_size, rank=info.rank, shuffle=True, seed=seed)
    # weighted, with replacement, or another sampler: shard its draws; a copy with its own generator, so that
    # the task's loader (rank 0 may iterate it to validate) does not move this one's stream on one rank only
    base = copy.copy(sampler)
    if hasattr(base, "generator"):
        base.generator = torch.Generator().manual_seed(seed)
    else:
        logger.warning("%s has no generator: ranks may draw different sequences", type(sampler).__name__)
    return _sharded_sampler_class()(base, info.world_size, info.rank)


def shard_loader(loader: Any, info: DistInfo, seed: int) -> Any:
    """``loader`` rebuilt with this rank's share of each epoch (same dataset, batch size, collate and workers).

    A plain or shuffled loader gets ``DistributedSampler`` (shuffled with ``seed`` and the epoch); a weighted or
    with-replacement sampler is sharded draw by draw (:func:`_sharded_sampler_class`). Every rank gets the same
    number of batches (``DistributedSampler`` pads by repeating samples).

    Raises:
        ValueError: not a map-style ``DataLoader`` with a batch size (an iterable dataset or a custom batch
            sampler cannot be sharded here).
    """
    from torch.utils.data import DataLoader, IterableDataset

    if not isinstance(loader, DataLoader) or isinstance(loader.dataset, IterableDataset) or loader.batch_size is None:
        raise ValueError(
            f"--distributed: the training loader ({type(loader).__name__}) is not a map-style DataLoader with a "
            "batch size, so it cannot be sharded across processes"
        )
    sampler = _sharded(loader.sampler, loader.dataset, info, seed)
    return DataLoader(
        loader.dataset,
        batch_size=loader.batch_size,
        sampler=sampler,
        num_workers=loader.num_workers,
        collate_fn=loader.collate_fn,
        pin_memory=loader.pin_memory,
        drop_last=loader.drop_last,
        timeout=loader.timeout,
        worker_init_fn=loader.worker_init_fn,
        multiprocessing_context=loader.multiprocessing_context,
        generator=loader.generator,
        prefetch_factor=loader.prefetch_factor if loader.num_workers else None,
        persistent_workers=loader.persistent_workers,
    )


def set_epoch(loader: Any, epoch: int) -> None:
    """Tell a sharded loader's ``DistributedSampler`` the epoch (its shuffle's seed is ``seed + epoch``)."""
    sampler = getattr(loader, "sampler", None)
    if sampler is not None and hasattr(sampler, "set_epoch"):
        sampler.set_epoch(epoch)
