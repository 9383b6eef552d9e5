"""Data-parallel training under torchrun (``medinfer train --distributed``): 2 CPU processes with gloo.

The torchrun tests start ``torchrun --standalone --nproc_per_node 2`` on this file, whose ``__main__`` either runs
the CLI in each process and reports, per rank, a hash of the trained model, the run's history, every write into the
run folder (a ``sys.addaudithook`` hook) and, for ecg, whether the sharded projection equalled a single-process
projection of the same model; or (``collectives``) reports what the collectives of ``pipelines.common.distributed``
returned on each rank. The other tests run in this process.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, IterableDataset, TensorDataset, WeightedRandomSampler

from pipelines.common import distributed
from pipelines.common.distributed import DistInfo, shard_loader

ROOT = Path(__file__).resolve().parents[3]
RUN_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


def state_hash(state: dict[str, torch.Tensor]) -> str:
    """SHA-256 over a state dict's names and bytes."""
    h = hashlib.sha256()
    for name, value in sorted(state.items()):
        h.update(name.encode())
        h.update(value.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


# -- in-process ---------------------------------------------------------------------------------------------------
def test_distributed_without_torchrun_is_a_usage_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    from app.cli import app

    for name in RUN_ENV:
        monkeypatch.delenv(name, raising=False)
    res = CliRunner().invoke(
        app, ["train", "ecg", "--data", str(tmp_path), "-o", str(tmp_path / "run"), "--distributed"]
    )
    assert res.exit_code == 2
    assert "--distributed runs under torchrun" in res.output
    assert "missing: RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT" in res.output
    assert not (tmp_path / "run").exists()


def test_init_distributed_names_the_missing_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in RUN_ENV:
        monkeypatch.setenv(name, "0")
    monkeypatch.delenv("MASTER_PORT")
    with pytest.raises(ValueError, match="missing: MASTER_PORT"):
        distributed.init_distributed("cpu")
    assert distributed.current() is None


@pytest.mark.parametrize(("device", "expected"), [("cpu", "cpu"), ("cuda", "cuda:3"), ("auto", "cuda:3")])
def test_each_process_takes_the_gpu_of_its_local_rank(
    device: str, expected: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert distributed._process_device_name(device, 3) == expected


def test_an_explicit_gpu_index_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    with pytest.raises(ValueError, match="cuda:LOCAL_RANK"):
        distributed._process_device_name("cuda:1", 0)


def _indices(loader: Any) -> list[int]:
    return [int(i) for (batch,) in loader for i in batch]


def test_a_shuffled_loader_is_split_into_disjoint_equal_shards_reshuffled_each_epoch() -> None:
    loader = DataLoader(TensorDataset(torch.arange(10)), batch_size=2, shuffle=True)
    shards = [shard_loader(loader, DistInfo(r, 2, r, "gloo"), seed=0) for r in range(2)]
    seen = []
    for epoch in (0, 1):
        for s in shards:
            distributed.set_epoch(s, epoch)
        seen.append([_indices(s) for s in shards])
    for first, second in seen:
        assert len(first) == len(second) == 5
        assert sorted(first + second) == list(range(10))
    assert seen[0] != seen[1]


def test_a_weighted_sampler_is_sharded_draw_by_draw() -> None:
    weights = [1.0, 1.0, 1.0, 5.0, 5.0, 0.0, 0.0, 2.0]
    sampler = WeightedRandomSampler(weights, num_samples=9, replacement=True, generator=torch.Generator())
    loader = DataLoader(TensorDataset(torch.arange(8)), batch_size=3, sampler=sampler)
    shards = [shard_loader(loader, DistInfo(r, 2, r, "gloo"), seed=7) for r in range(2)]
    reference = WeightedRandomSampler(
        weights, num_samples=9, replacement=True, generator=torch.Generator().manual_seed(7)
    )
    for _ in range(2):
        _indices(loader)  # the task's own loader (rank 0 may iterate it to validate) moves no shard's stream
        draws = list(reference)
        padded = [*draws, draws[0]]  # DistributedSampler pads to equal shares by repeating the first
        assert [_indices(s) for s in shards] == [padded[0::2], padded[1::2]]


def test_an_iterable_loader_cannot_be_sharded() -> None:
    class Stream(IterableDataset):
        def __iter__(self) -> Any:
            return iter(range(4))

    with pytest.raises(ValueError, match="cannot be sharded"):
        shard_loader(DataLoader(Stream(), batch_size=2), DistInfo(0, 2, 0, "gloo"), seed=0)


@pytest.mark.parametrize("records", ["random", "identical"])
def test_the_sharded_projection_equals_a_single_process_projection(records: str) -> None:
    """Rank 0 and rank 1 each hold half the batches; the merged result is the single process's, ties included."""
    from models import create_model
    from models.protoecgnet import BRANCH_NAMES, ProtoECGNet
    from pipelines.ecg.config import MODEL_NAME, TINY
    from pipelines.ecg.stages import project_prototypes
    from pipelines.ecg.train import project_sharded, projection_candidates

    torch.manual_seed(0)
    model = create_model(MODEL_NAME, **{**TINY["model_kwargs"], "widths": [4, 4, 8, 8], "proto_dim": 8}).eval()
    assert isinstance(model, ProtoECGNet)
    n, batch = 12, 3  # batches 0 and 2 on rank 0, 1 and 3 on rank 1
    rng = np.random.default_rng(0)
    x = torch.randn(n, 12, 1000) if records == "random" else torch.randn(1, 12, 1000).expand(n, -1, -1).contiguous()
    y = (rng.random((n, model.num_labels)) < 0.3).astype(np.float32)
    y[3:6, 0] = 1.0  # class 0: first positive on rank 1 (record 3), later ones on rank 0 too
    y[:3, 0], y[6, 0] = 0.0, 1.0
    ids = [f"r{i}" for i in range(n)]

    single = copy.deepcopy(model)
    ref_sources, ref_segments = project_prototypes(single, x, y, ids, batch_size=batch)
    other = projection_candidates(model, x, y, ids, branches=BRANCH_NAMES, batch_size=batch, rank=1, world_size=2)
    sources, segments = project_sharded(
        model, x, y, ids, branches=BRANCH_NAMES, batch_size=batch, rank=0, world_size=2,
        gather=lambda local: [local, other],
    )  # fmt: skip

    assert sources == ref_sources
    assert segments.keys() == ref_segments.keys()
    for name in segments:
        assert torch.equal(segments[name], ref_segments[name])
        assert torch.equal(model.branch(name).prototypes, single.branch(name).prototypes)
    found = [s for s in sources if s["record_index"] is not None]
    assert {s["record_index"] // batch % 2 for s in found} == {0, 1}  # both ranks' candidates won somewhere
    if records == "identical":  # every record ties: each prototype takes the first record carrying its class
        columns = {
            (s["branch"], s["prototype"]): int(
                model.branch_index(s["branch"])[s["prototype"] // model.branch(s["branch"]).prototypes_per_class]
            )
            for s in found
        }
        assert [s["record_index"] for s in found] == [
            int(np.flatnonzero(y[:, columns[s["branch"], s["prototype"]]])[0]) for s in found
        ]
        assert {s["record_index"] for s in found if columns[s["branch"], s["prototype"]] == 0} == {3}


# -- torchrun: 2 processes ----------------------------------------------------------------------------------------
def _torchrun(tmp_path: Path, args: list[str]) -> tuple[list[dict[str, Any]], str]:
    reports = tmp_path / "reports"
    reports.mkdir()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1"}  # fmt: skip
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", __file__,
           str(reports), *args]  # fmt: skip
    res = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-4000:]
    return [json.loads((reports / f"rank{r}.json").read_text()) for r in range(2)], res.stderr


def _check_ranks(ranks: list[dict[str, Any]], run: Path, checkpoint: str, task: str) -> None:
    from pipelines.common.checkpoint import load_checkpoint

    assert [r["rank"] for r in ranks] == [0, 1]
    assert ranks[0]["hash"] == ranks[1]["hash"]
    # metrics reduced or broadcast: every rank took the same decisions from the same numbers
    assert ranks[0]["history"] == ranks[1]["history"]
    assert ranks[1]["writes"] == []
    assert {Path(w).name for w in ranks[0]["writes"]} >= {"best.pt", "last.pt", "metrics.json", "MODEL_CARD.md"}
    ckpt = load_checkpoint(run / checkpoint, task=task)
    model = ckpt.build_model("cpu")
    assert state_hash(model.state_dict()) == ranks[0]["hash"]
    assert "data-parallel on 2 processes" in (run / "MODEL_CARD.md").read_text(encoding="utf-8")


@pytest.mark.slow
def test_collectives_on_two_processes(tmp_path: Path) -> None:
    ranks, _ = _torchrun(tmp_path, ["collectives"])
    for r in ranks:
        assert r["running_mean"] == [1.0, 1.0, 1.0]  # rank 0's batch-norm statistics everywhere
        assert r["broadcast"] == {"from": 0}  # rank 0's validation metrics everywhere
        assert r["gathered"] == [0, 10]  # every rank's projection candidates, in rank order
        assert r["mean"] == 2.0  # (3 + 5) / (1 + 3): the training loss over every rank's batches
    assert [r["rank"] for r in ranks] == [0, 1]


@pytest.mark.slow
def test_ecg_trains_on_two_processes(tmp_path: Path) -> None:
    from pipelines.common.task import get_task

    data = get_task("ecg").synth(tmp_path / "ptbxl", n=24, seed=0)
    config = tmp_path / "ecg.yaml"
    config.write_text(
        "epochs: {feature_extractor: 1, joint: 1, classifier: 1, fusion: 1}\nbatch_size: 4\neval_batch_size: 4\n"
        "model_kwargs: {widths: [4, 4, 8, 8], proto_dim: 8}\n",
        encoding="utf-8",
    )
    run = tmp_path / "run"
    ranks, log = _torchrun(tmp_path, ["train", "ecg", "--data", str(data), "-o", str(run), "--preset", "tiny",
                                      "--config", str(config), "--device", "cpu", "--distributed"])  # fmt: skip
    _check_ranks(ranks, run, "best.pt", "ecg")
    assert [r["projection_equal"] for r in ranks] == [True, True]
    assert log.count("[ecg] stage 1/5 feature_extractor") == 1  # progress from rank 0 only


@pytest.mark.slow
def test_brats_trains_on_two_processes(tmp_path: Path) -> None:
    from pipelines.common.task import get_task

    data = get_task("brats").synth(tmp_path / "brats", n=3, seed=0)
    config = tmp_path / "brats.yaml"
    config.write_text(
        "epochs: 2\nbase_filters: 4\nroi_size: [16, 16, 16]\niterations_per_epoch: 4\nbatch_size: 1\n", encoding="utf-8"
    )
    run = tmp_path / "run"
    ranks, log = _torchrun(tmp_path, ["train", "brats", "--data", str(data), "-o", str(run), "--preset", "tiny",
                                      "--config", str(config), "--device", "cpu", "--distributed"])  # fmt: skip
    _check_ranks(ranks, run, "last.pt", "brats")
    assert log.count("[brats] train epoch 2/2  step 2/2") == 1  # 4 iterations per epoch, 2 on each rank


# -- what each torchrun process runs ------------------------------------------------------------------------------
def _collectives(reports: Path) -> int:
    """Each rank's results of the collectives, from rank-dependent inputs."""
    info = distributed.init_distributed("cpu")
    norm = torch.nn.BatchNorm1d(3)
    stats = norm.running_mean
    assert stats is not None
    stats.fill_(info.rank + 1.0)
    distributed.sync_buffers(norm)
    report = {
        "rank": info.rank,
        "running_mean": stats.tolist(),
        "broadcast": distributed.broadcast_object({"from": info.rank}),
        "gathered": distributed.gather_objects(info.rank * 10),
        "mean": distributed.all_reduce_mean((3.0, 5.0)[info.rank], (1, 3)[info.rank]),
    }
    distributed.barrier()
    distributed.shutdown()
    (reports / f"rank{info.rank}.json").write_text(json.dumps(report), encoding="utf-8")
    return 0


def _worker(reports: Path, argv: list[str]) -> int:
    """Run ``medinfer`` with ``argv`` and write ``rank{RANK}.json``: model hash, history, writes into the run."""
    from app import cli
    from pipelines.common.trainer import TrainingRun

    rank = int(os.environ["RANK"])
    out_dir = Path(argv[argv.index("-o") + 1]).resolve()
    writes: list[str] = []

    def inside(path: Any) -> bool:
        if not isinstance(path, str | bytes | os.PathLike):
            return False
        p = Path(os.fsdecode(path)).resolve()
        return p == out_dir or out_dir in p.parents

    def audit(event: str, args: tuple[Any, ...]) -> None:
        written = event == "open" and (
            any(c in (args[1] or "") for c in "wax+") or args[2] & (os.O_WRONLY | os.O_RDWR | os.O_CREAT)
        )
        if (written or event in ("os.mkdir", "os.rename", "os.remove")) and inside(args[0]):
            writes.append(os.fsdecode(args[1] if event == "os.rename" else args[0]))

    runs: list[Any] = []
    run = TrainingRun.run

    def recorded(self: Any) -> Path:
        runs.append(self)
        return run(self)

    TrainingRun.run = recorded  # type: ignore[method-assign]
    report: dict[str, Any] = {"rank": rank}
    if "ecg" in argv:
        from pipelines.ecg.stages import project_prototypes
        from pipelines.ecg.train import EcgRun

        project = EcgRun.project

        def checked(self: EcgRun) -> None:
            single = copy.deepcopy(self.model)
            project(self)
            cfg = self.config
            sources, segments = project_prototypes(
                single, self.x_train, self.train_data.y, self.train_data.ids, branches=cfg.branches,
                batch_size=cfg.eval_batch_size,
            )  # fmt: skip
            report["projection_equal"] = (
                sources == self.extra["prototype_sources"]
                and all(torch.equal(v, self.extra["prototype_segments"][k]) for k, v in segments.items())
                and state_hash(single.state_dict()) == state_hash(self.model.state_dict())
            )

        EcgRun.project = checked  # type: ignore[method-assign]
    sys.addaudithook(audit)
    sys.argv = ["medinfer", *argv]
    try:
        cli.main()
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    model = runs[-1].model
    report.update(
        hash=state_hash(model.state_dict()),
        history=[{k: v for k, v in h.items() if k != "seconds"} for h in runs[-1].history],
        writes=writes,
    )
    (reports / f"rank{rank}.json").write_text(json.dumps(report), encoding="utf-8")
    return code


if __name__ == "__main__":
    if sys.argv[2:] == ["collectives"]:
        sys.exit(_collectives(Path(sys.argv[1])))
    sys.exit(_worker(Path(sys.argv[1]), sys.argv[2:]))
