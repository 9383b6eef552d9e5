"""ProtoECGNet: shapes per branch and fusion, similarity geometry, classifier init, stage freezing, projection."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from models import create_model, get_model_spec
from models.protoecgnet import BRANCH_LABELS, PTBXL_LABELS, ProtoECGNet, ProtoOutput

TINY = dict(get_model_spec("ecg_protoecgnet").tiny_kwargs)


@pytest.fixture(scope="module")
def tiny() -> ProtoECGNet:
    torch.manual_seed(0)
    return create_model("ecg_protoecgnet", **TINY).eval()


def test_partition_is_the_papers() -> None:
    assert len(PTBXL_LABELS) == 71 and len(set(PTBXL_LABELS)) == 71
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
    assert model.fusion.in_features == 1037 and model.fusion.out_features == 71 and model.fusion.bias is not None
    assert model.branch("morphology").backbone.stem[0].kernel_size == (12, 7)


def test_shapes_per_branch_and_fusion(tiny: ProtoECGNet) -> None:
    x = torch.randn(3, 12, 1000)
    with torch.no_grad():
        out = tiny(x)
        assert isinstance(out, ProtoOutput)
        assert (
            out.logits.shape == (3, 71) and out.branch_logits.shape == (3, 71) and out.feature_logits.shape == (3, 71)
        )
        assert out.similarities.shape == (3, tiny.num_prototypes)
        for name, c in (("rhythm", 16), ("morphology", 52), ("diffuse", 3)):
            b = tiny.branch(name)
            logits, sims = b(x)
            assert logits.shape == (3, c) and sims.shape == (3, c * 2)
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
    assert torch.all(w[0, :2] == 1.0) and torch.all(w[0, 2:] == -0.5) and torch.all(w[1, 2:4] == 1.0)
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
    "kwargs",
    [
        {"branch_indices": [[0], [1]]},
        {"prototypes_per_class": [1, 2]},
        {"proto_time_len": [3, 40]},
        {"dropout": 1.5},
        {"branch_indices": [[0, 0], [1], [2]]},
    ],
)
def test_bad_arguments_raise(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        ProtoECGNet(**{**TINY, **kwargs})


def test_bad_input_shape_raises(tiny: ProtoECGNet) -> None:
    with pytest.raises(ValueError, match="expected input"):
        tiny(torch.randn(12, 1000))


def test_frozen_parts_stay_in_eval_mode() -> None:
    from pipelines.ecg.stages import Stage, set_trainable

    model = create_model("ecg_protoecgnet", **TINY)
    set_trainable(model, Stage.CLASSIFIER)
    model.train()
    assert not model.branch("rhythm").backbone.training and not model.branch("rhythm").add_on.training
    set_trainable(model, Stage.JOINT)
    model.train()
    assert model.branch("morphology").backbone.training
    np.testing.assert_equal(model.branch("rhythm").prototype_class_identity.sum(0).numpy(), np.full(16, 2.0))
