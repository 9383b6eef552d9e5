"""ProtoECGNet: shapes per branch and fusion, similarity geometry, classifier init, stage freezing, projection."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from medinfer_testlib import torchvision_resnet18_state

from models import create_model, get_model_spec
from models.protoecgnet import (
    BRANCH_LABELS,
    PTBXL_LABELS,
    ProtoBranch,
    ProtoECGNet,
    ProtoOutput,
    load_resnet18_2d,
)

TINY = dict(get_model_spec("ecg_protoecgnet").tiny_kwargs)


@pytest.fixture(scope="module")
def tiny() -> ProtoECGNet:
    torch.manual_seed(0)
    return create_model("ecg_protoecgnet", **TINY).eval()


def test_partition_is_the_papers() -> None:
    assert len(PTBXL_LABELS) == 71
    assert len(set(PTBXL_LABELS)) == 71
    assert {k: len(v) for k, v in BRANCH_LABELS.items()} == {"rhythm": 16, "morphology": 52, "diffuse": 3}
    assert set(BRANCH_LABELS["diffuse"]) == {"NORM", "DIG", "EL"}
    assert {"1AVB", "2AVB", "3AVB", "IVCD", "SR", "AFIB"} <= set(BRANCH_LABELS["rhythm"])


def test_full_model_prototype_counts() -> None:
    model = ProtoECGNet()
    assert model.num_prototypes == 16 * 5 + 52 * 18 + 3 * 7 == 1037
    assert model.branch("morphology").prototypes.shape == (936, 512, 1, 3)
    assert model.branch("diffuse").prototypes.shape == (21, 512, 1, 32)
    assert model.branch("rhythm").prototypes.shape == (80, 512)
    assert model.branch("morphology").window_scale == 13
    assert model.branch("diffuse").window_scale == 4
    assert model.fusion.in_features == 1037
    assert model.fusion.out_features == 71
    assert model.fusion.bias is not None
    assert model.branch("morphology").backbone.stem[0].kernel_size == (12, 7)


def test_shapes_per_branch_and_fusion(tiny: ProtoECGNet) -> None:
    x = torch.randn(3, 12, 1000)
    with torch.no_grad():
        out = tiny(x)
        assert isinstance(out, ProtoOutput)
        assert out.logits.shape == (3, 71)
        assert out.branch_logits.shape == (3, 71)
        assert out.feature_logits.shape == (3, 71)
        assert out.similarities.shape == (3, tiny.num_prototypes)
        for name, c in (("rhythm", 16), ("morphology", 52), ("diffuse", 3)):
            b = tiny.branch(name)
            logits, sims = b(x)
            assert logits.shape == (3, c)
            assert sims.shape == (3, c * 2)
            nw = {"rhythm": 1, "morphology": 30, "diffuse": 1}[name]
            assert b.window_similarities(b.latent(x)).shape == (3, c * 2, nw)
            # the branch logits sit at the branch's label positions
            torch.testing.assert_close(out.branch_logits[:, tiny.branch_index(name)], logits)
            torch.testing.assert_close(out.feature_logits[:, tiny.branch_index(name)], b.feature_logits(x))
        assert tiny.branch("morphology").latent(x).shape == (3, 32, 1, 32)
        assert torch.isfinite(out.logits).all()


def test_similarity_is_scaled_cosine_mean_over_windows(tiny: ProtoECGNet) -> None:
    b = tiny.branch("morphology")
    x = torch.randn(2, 12, 1000)
    with torch.no_grad():
        z = b.latent(x)
        sims = b.similarities(x)
    p = 5
    proto = b.prototypes[p].detach().flatten()  # (D·T), D-major like the segment below
    scale = math.isqrt(32 * 3) / 3
    expected = torch.stack(
        [
            torch.stack([F.cosine_similarity(z[i, :, 0, w : w + 3].flatten(), proto, dim=0) for w in range(30)]).mean()
            for i in range(2)
        ]
    )
    torch.testing.assert_close(sims[:, p], scale * expected, rtol=1e-4, atol=1e-5)
    r = tiny.branch("rhythm")
    with torch.no_grad():
        zr = r.latent(x)
        torch.testing.assert_close(r.similarities(x)[:, 0], F.cosine_similarity(zr, r.prototypes[0][None], dim=1))


def test_classifier_init_plus_one_minus_half(tiny: ProtoECGNet) -> None:
    w = tiny.branch("rhythm").classifier.weight
    assert w.shape == (16, 32)
    assert torch.all(w[0, :2] == 1.0)
    assert torch.all(w[0, 2:] == -0.5)
    assert torch.all(w[1, 2:4] == 1.0)
    assert tiny.branch("rhythm").classifier.bias is None


def test_gradients_reach_every_parameter() -> None:
    torch.manual_seed(0)
    model = create_model("ecg_protoecgnet", **TINY).train()
    out = model(torch.randn(2, 12, 1000))
    loss = out.logits.sum() + out.branch_logits.sum()
    for name in ("rhythm", "morphology", "diffuse"):
        loss = loss + model.branch(name).feature_logits(torch.randn(2, 12, 1000)).sum()
    loss.backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing


def test_same_seed_same_output() -> None:
    outs = []
    for _ in range(2):
        torch.manual_seed(3)
        m = create_model("ecg_protoecgnet", **TINY).eval()
        torch.manual_seed(4)
        outs.append(m(torch.randn(1, 12, 1000)).logits)
    assert torch.equal(outs[0], outs[1])


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"branch_indices": [[0], [1]]}, "branch_indices"),
        ({"prototypes_per_class": [1, 2]}, "prototypes_per_class"),
        ({"proto_time_len": [3, 40]}, "proto_time_len"),
        ({"dropout": 1.5}, "dropout"),
        ({"branch_indices": [[0, 0], [1], [2]]}, "branch_indices"),
    ],
)
def test_bad_arguments_raise(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ProtoECGNet(**{**TINY, **kwargs})


def test_bad_input_shape_raises(tiny: ProtoECGNet) -> None:
    with pytest.raises(ValueError, match="expected input"):
        tiny(torch.randn(12, 1000))


def test_frozen_parts_stay_in_eval_mode() -> None:
    from pipelines.ecg.stages import Stage, set_trainable

    model = create_model("ecg_protoecgnet", **TINY)
    set_trainable(model, Stage.CLASSIFIER)
    model.train()
    assert not model.branch("rhythm").backbone.training
    assert not model.branch("rhythm").add_on.training
    set_trainable(model, Stage.JOINT)
    model.train()
    assert model.branch("morphology").backbone.training
    np.testing.assert_equal(model.branch("rhythm").prototype_class_identity.sum(0).numpy(), np.full(16, 2.0))


# -- the FC head of the feature-extractor stage ---------------------------------------------------------------
@pytest.mark.parametrize("fc_head", ["flatten", "pool"])
def test_fc_head(fc_head: str) -> None:
    torch.manual_seed(0)
    model = ProtoECGNet(**TINY, fc_head=fc_head).eval()
    feat, cols = 64, model.feature_columns
    assert cols == 32
    x = torch.randn(2, 12, 1000)
    for name in ("morphology", "diffuse"):
        b = model.branch(name)
        assert b.fc.in_features == (feat * cols if fc_head == "flatten" else feat)
        with torch.no_grad():
            f = b.backbone_features(x)  # (B, F, 1, W)
            expected = b.fc(f.flatten(1) if fc_head == "flatten" else f.mean(dim=(-2, -1)))
            torch.testing.assert_close(b.feature_logits(x), expected)
    rhythm = model.branch("rhythm")
    assert rhythm.fc_head == "pool"
    assert rhythm.fc.in_features == feat


def test_fc_head_defaults_to_the_authors_flatten() -> None:
    model = ProtoECGNet()
    assert model.fc_head == "flatten"
    assert model.branch("morphology").fc.in_features == 512 * 32
    assert model.branch("diffuse").fc.in_features == 512 * 32
    assert model.branch("rhythm").fc.in_features == 512


def test_fc_head_leaves_prediction_outputs_unchanged() -> None:
    torch.manual_seed(0)
    flat = ProtoECGNet(**TINY, fc_head="flatten").eval()
    pool = ProtoECGNet(**TINY, fc_head="pool").eval()
    shared = {k: v for k, v in flat.state_dict().items() if ".fc." not in k}
    missing, unexpected = pool.load_state_dict(shared, strict=False)
    assert not unexpected
    assert all(".fc." in k for k in missing)
    x = torch.randn(2, 12, 1000)
    with torch.no_grad():
        a, b = flat(x), pool(x)
    for field in ("logits", "branch_logits", "similarities"):
        assert torch.equal(getattr(a, field), getattr(b, field)), field


def test_fc_head_bad_values_raise() -> None:
    with pytest.raises(ValueError, match="fc_head"):
        ProtoECGNet(**TINY, fc_head="max")
    with pytest.raises(ValueError, match="fc_head"):
        ProtoBranch("1d", 2, 1, 8, fc_head="flatten")


def test_flatten_head_needs_the_models_length() -> None:
    model = ProtoECGNet(**TINY).eval()
    with pytest.raises(ValueError, match="feature columns"):
        model.branch("morphology").feature_logits(torch.randn(1, 12, 1200))


# -- checkpoints written before fc_head existed -----------------------------------------------------------------
def _save(path: Path, model: ProtoECGNet, model_kwargs: dict) -> Path:
    from pipelines.common.checkpoint import Checkpoint, save_checkpoint

    ckpt = Checkpoint(
        task="ecg",
        model_name="ecg_protoecgnet",
        model_kwargs=model_kwargs,
        state_dict=model.state_dict(),
        labels=list(PTBXL_LABELS),
        provenance={"dataset": "test", "data_card": "synthetic.md", "seed": 0},
    )
    return save_checkpoint(ckpt, path)


@pytest.mark.parametrize("fc_head", [None, "flatten", "pool"])
def test_checkpoint_round_trip_and_legacy_fc_head(tmp_path: Path, fc_head: str | None) -> None:
    """model_kwargs without fc_head (medinfer 0.1) mean the pool head; newer ones name theirs."""
    from pipelines.common.checkpoint import load_checkpoint

    kwargs = {k: list(v) if isinstance(v, tuple) else v for k, v in TINY.items()}
    if fc_head is not None:
        kwargs["fc_head"] = fc_head
    torch.manual_seed(0)
    model = create_model("ecg_protoecgnet", **{"fc_head": "pool", **kwargs}).eval()
    path = _save(tmp_path / "ecg.pt", model, kwargs)
    loaded = load_checkpoint(path, task="ecg").build_model()
    assert loaded.fc_head == (fc_head or "pool")
    x = torch.randn(2, 12, 1000)
    with torch.no_grad():
        a, b = model(x), loaded(x)
    for field, ta, tb in zip(ProtoOutput._fields, a, b, strict=True):
        assert torch.equal(ta, tb), field


# -- ImageNet ResNet-18 weights a user brings -------------------------------------------------------------------
RESNET18 = dict(TINY, widths=(64, 128, 256, 512), layers=(2, 2, 2, 2), proto_dim=8, prototypes_per_class=(1, 1, 1))


def _tv_key(ours: str) -> str:
    """Our backbone key → torchvision's: the stem's norm is torchvision's bn1, the blocks keep their names."""
    return ours.replace("stem.1.", "bn1.", 1) if ours.startswith("stem.1.") else ours


def _snapshot(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("prefix", ["", "module.", "resnet."])
def test_load_resnet18_copies_all_but_conv1_and_fc(prefix: str) -> None:
    torch.manual_seed(0)
    model = ProtoECGNet(**RESNET18)
    before = _snapshot(model)
    source = torchvision_resnet18_state(prefix)
    report = load_resnet18_2d(model, source)
    after = model.state_dict()
    n_keys = len(model.branch("morphology").backbone.state_dict()) - 1  # all but the first conv
    assert n_keys == 5 + 8 * 12 + 3 * 6  # stem norm; 8 blocks (conv1, bn1, conv2, bn2); 3 downsamples (conv, norm)
    for name in ("morphology", "diffuse"):
        for key in model.branch(name).backbone.state_dict():
            ours = f"branches.{name}.backbone.{key}"
            if key.startswith("stem.0."):
                assert torch.equal(after[ours], before[ours]), "the replaced first conv keeps its init"
            else:
                assert torch.equal(after[ours], source[prefix + _tv_key(key)]), key
                assert ours in report["loaded"]
    for key in after:
        if not key.startswith(("branches.morphology.backbone.", "branches.diffuse.backbone.")):
            assert torch.equal(after[key], before[key]), f"{key} must be untouched"  # rhythm, fc, add-ons...
    assert len(report["loaded"]) == 2 * n_keys
    assert sorted(report["skipped"]) == sorted(prefix + k for k in ("conv1.weight", "fc.weight", "fc.bias"))
    assert model.branch("morphology").backbone.stem[1].num_batches_tracked == source[prefix + "bn1.num_batches_tracked"]


def test_load_resnet18_without_batch_counts_and_one_branch() -> None:
    model = ProtoECGNet(**RESNET18)
    before = _snapshot(model)
    source = torchvision_resnet18_state(batches=False)
    report = load_resnet18_2d(model, source, branches=("morphology",))
    after = model.state_dict()
    assert all(k.startswith("branches.morphology.") for k in report["loaded"])
    assert not any(k.endswith("num_batches_tracked") for k in report["loaded"])
    key = "branches.morphology.backbone.layer2.0.downsample.1.running_var"
    assert torch.equal(after[key], source["layer2.0.downsample.1.running_var"])
    assert all(torch.equal(after[k], before[k]) for k in after if k.startswith("branches.diffuse."))


def test_load_resnet18_wrong_width_names_the_key() -> None:
    model = ProtoECGNet(**dict(RESNET18, widths=(32, 64, 128, 256)))
    before = _snapshot(model)
    with pytest.raises(ValueError, match=r"'bn1\.weight'.*\(64,\).*'stem\.1\.weight'.*\(32,\)"):
        load_resnet18_2d(model, torchvision_resnet18_state())
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items()), "nothing copied on error"


def test_load_resnet18_wrong_layout_raises() -> None:
    with pytest.raises(ValueError, match=r"unexpected 'layer1\.1\."):
        load_resnet18_2d(ProtoECGNet(**dict(RESNET18, layers=(1, 1, 1, 1))), torchvision_resnet18_state())
    source = torchvision_resnet18_state()
    del source["layer3.1.bn2.running_var"]
    with pytest.raises(ValueError, match=r"missing 'layer3\.1\.bn2\.running_var'"):
        load_resnet18_2d(ProtoECGNet(**RESNET18), source)
    with pytest.raises(ValueError, match="not a torchvision ResNet-18"):
        load_resnet18_2d(ProtoECGNet(**RESNET18), {"encoder.weight": torch.randn(4, 4), "head.bias": torch.randn(4)})
    with pytest.raises(ValueError, match="not a 2D branch"):
        load_resnet18_2d(ProtoECGNet(**RESNET18), torchvision_resnet18_state(), branches=("rhythm",))
