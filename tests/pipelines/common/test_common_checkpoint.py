"""Checkpoints: round trip with weights_only, run-folder resolution, clear errors, installation."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from models import create_model, get_model_spec
from pipelines.common.checkpoint import (
    Checkpoint,
    install_checkpoint,
    installed_checkpoint,
    load_checkpoint,
    make_provenance,
    save_checkpoint,
)
from pipelines.common.errors import CheckpointError


def _ckpt() -> Checkpoint:
    spec = get_model_spec("brats_nested_unet")
    torch.manual_seed(0)
    model = create_model("brats_nested_unet", **spec.tiny_kwargs)
    return Checkpoint(
        task="brats",
        model_name="brats_nested_unet",
        model_kwargs=dict(spec.tiny_kwargs),
        state_dict=model.state_dict(),
        labels=["WT", "TC", "ET"],
        config={"roi_size": [16, 16, 16], "nested": {"a": [1, 2]}},
        metrics={"dice_WT": 0.5},
        provenance=make_provenance("synthetic", "synthetic.md", 7, task="brats"),
        extra={"thresholds": torch.tensor([0.5, 0.25])},
    )


def test_round_trip_rebuilds_the_same_model(tmp_path: Path) -> None:
    ckpt = _ckpt()
    path = save_checkpoint(ckpt, tmp_path / "run" / "best.pt")
    raw = torch.load(path, weights_only=True)  # plain data only: no code is unpickled
    assert {"format_version", "task", "model_name", "model_kwargs", "config", "state_dict", "labels"} <= set(raw)
    assert {"task", "dataset", "data_card", "seed", "trained_at", "code_version", "synthetic"} == set(raw["provenance"])
    loaded = load_checkpoint(tmp_path / "run")  # a run folder resolves to its best checkpoint
    assert loaded.path == path
    assert loaded.config == ckpt.config
    assert loaded.labels == ckpt.labels
    assert torch.equal(loaded.extra["thresholds"], torch.tensor([0.5, 0.25]))
    x = torch.randn(1, 4, 16, 16, 16)
    original = create_model("brats_nested_unet", **ckpt.model_kwargs)
    original.load_state_dict(ckpt.state_dict)
    with torch.no_grad():
        assert torch.equal(loaded.build_model().eval()(x), original.eval()(x))


def test_errors_are_clear(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "missing.pt")
    with pytest.raises(CheckpointError, match=r"no best\.pt"):
        load_checkpoint(tmp_path)
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a torch file")
    with pytest.raises(CheckpointError, match="not a readable medinfer checkpoint"):
        load_checkpoint(bad)
    torch.save({"hello": 1}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="missing keys"):
        load_checkpoint(tmp_path / "other.pt")
    path = save_checkpoint(_ckpt(), tmp_path / "b.pt")
    with pytest.raises(CheckpointError, match="for task 'brats', not 'ecg'"):
        load_checkpoint(path, task="ecg")


def test_refuses_pickled_code(tmp_path: Path) -> None:
    class Evil:
        def __reduce__(self) -> tuple:
            return (print, ("pwned",))

    torch.save({"format_version": 1, "payload": Evil()}, tmp_path / "evil.pt")
    with pytest.raises(CheckpointError):
        load_checkpoint(tmp_path / "evil.pt")


def test_install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MEDINFER_CHECKPOINTS", str(tmp_path / "installed"))
    run = tmp_path / "run"
    save_checkpoint(_ckpt(), run / "best.pt")
    (run / "MODEL_CARD.md").write_text("card", encoding="utf-8")
    assert installed_checkpoint("brats") is None
    dst = install_checkpoint(run, "brats")
    assert dst == tmp_path / "installed" / "brats.pt"
    assert installed_checkpoint("brats") == dst
    assert (tmp_path / "installed" / "brats.MODEL_CARD.md").read_text(encoding="utf-8") == "card"
    with pytest.raises(CheckpointError):
        install_checkpoint(run, "ecg")


def test_provenance_of_synthetic_data_names_the_real_dataset_it_stands_in_for() -> None:
    prov = make_provenance("brats", "synthetic.md", 3, task="brats", synthetic=True, stands_in_for="brats.md")
    assert prov["synthetic"] is True
    assert prov["stands_in_for"] == "brats.md"
    assert "stands_in_for" not in make_provenance("BraTS2020", "brats.md", 3, task="brats", stands_in_for="brats.md")


def test_model_info_carries_version_provenance_and_the_synthetic_flag() -> None:
    ckpt = _ckpt()
    ckpt.provenance = make_provenance("ecg", "synthetic.md", 0, task="ecg", synthetic=True, stands_in_for="ptbxl.md")
    info = ckpt.model_info()
    assert info["synthetic_demo"] is True
    assert info["version"] == ckpt.version
    assert info["provenance"]["stands_in_for"] == "ptbxl.md"
    ckpt.provenance["synthetic"] = False
    assert ckpt.model_info()["synthetic_demo"] is False
