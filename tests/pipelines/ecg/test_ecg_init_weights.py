"""``medinfer train ecg --init-weights FILE``: local ImageNet ResNet-18 weights for the 2D branches, no download."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from medinfer_testlib import torchvision_resnet18_state
from typer.testing import CliRunner

from app.cli import app
from pipelines.common.task import TrainOptions, get_task
from pipelines.ecg.config import EcgConfig, EcgTrainOptions
from pipelines.ecg.train import EcgRun

#: ResNet-18 widths (the layout ImageNet weights have) with few prototypes, so the model stays small
RESNET18 = {"widths": [64, 128, 256, 512], "layers": [2, 2, 2, 2], "proto_dim": 16}


def _run(tmp_path: Path, weights: Path, **kwargs: object) -> EcgRun:
    config = EcgConfig.load("tiny", overrides={"model_kwargs": {**RESNET18, **kwargs}})
    options = TrainOptions(tmp_path, tmp_path / "run", task=EcgTrainOptions(init_weights=weights))
    return EcgRun(get_task("ecg"), config, options)


def test_2d_branches_start_from_the_file(tmp_path: Path) -> None:
    source = torchvision_resnet18_state(prefix="module.")
    weights = tmp_path / "resnet18.pth"
    torch.save({"state_dict": source}, weights)  # a wrapped state dict, as training scripts often save
    run = _run(tmp_path, weights)
    model = run.build_model()
    for name in ("morphology", "diffuse"):
        backbone = model.branch(name).backbone
        assert torch.equal(backbone.layer3[1].conv2.weight, source["module.layer3.1.conv2.weight"])
        assert torch.equal(backbone.stem[1].running_mean, source["module.bn1.running_mean"])
        assert backbone.stem[0].weight.shape == (64, 1, 12, 7)  # the replaced first conv keeps its own init
    assert run.extra["init_weights"] == {"file": "resnet18.pth", "tensors_loaded": 238}
    note = next(n for n in run.departure_notes() if "resnet18.pth" in n)
    assert "all layers but the replaced" in note


def test_a_wrong_file_is_a_clear_error(tmp_path: Path) -> None:
    weights = tmp_path / "w.pth"
    torch.save(torchvision_resnet18_state(), weights)
    with pytest.raises(ValueError, match=r"w.pth: state_dict\['bn1.weight'\] has shape \(64,\)"):
        _run(tmp_path, weights, widths=[16, 16, 32, 32]).build_model()  # tiny widths
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a torch file")
    with pytest.raises(ValueError, match=r"junk\.pth: not a readable state dict"):
        _run(tmp_path, junk).build_model()
    missing = CliRunner().invoke(
        app, ["train", "ecg", "--data", str(tmp_path), "-o", str(tmp_path / "r"), "--init-weights", "nowhere.pth"]
    )
    assert missing.exit_code == 2
    assert "nowhere.pth: file not found" in missing.output


def test_without_the_file_the_card_states_the_random_start(tmp_path: Path) -> None:
    run = EcgRun(get_task("ecg"), EcgConfig.load("tiny"), TrainOptions(tmp_path, tmp_path / "run"))
    run.build_model()
    notes = " ".join(run.departure_notes())
    assert "start from random weights" in notes
    assert "--init-weights FILE" in notes
    assert "averages the feature map" in notes  # the tiny preset's pooled stage-1 head is a stated departure
    full = EcgConfig.load("full")
    assert full.model_kwargs["fc_head"] == "flatten"  # the authors' head in the published recipe
