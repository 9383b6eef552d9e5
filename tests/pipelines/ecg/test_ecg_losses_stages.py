"""ProtoECGNet losses against closed-form values, stage freezing, and projection exactness."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from models import create_model, get_model_spec
from pipelines.ecg import losses as L
from pipelines.ecg.stages import Stage, project_prototypes, set_trainable, trainable_names, window_to_samples

# a hand-made case: 2 classes, 2 prototypes each (prototype p belongs to class p // 2)
IDENT = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])
SIMS = torch.tensor([[0.9, 0.2, -0.1, 0.4], [0.3, 0.1, 0.8, 0.5]])
Y = torch.tensor([[1.0, 0.0], [1.0, 1.0]])


def test_pos_weight_closed_form() -> None:
    y = np.array([[1, 0, 1], [1, 0, 0], [1, 1, 0]])  # n = 3, 1, 1; Σ = 5
    torch.testing.assert_close(L.pos_weight(y), torch.tensor([2 / 3, 4.0, 4.0]))


def test_jaccard_closed_form() -> None:
    y = np.array([[1, 1, 0], [1, 0, 0], [0, 1, 0]])
    co = L.jaccard_cooccurrence(y)
    # |A∩B| = 1, |A∪B| = 3; class 2 has no positives → 0 off the diagonal, 1 on it
    torch.testing.assert_close(co, torch.tensor([[1.0, 1 / 3, 0.0], [1 / 3, 1.0, 0.0], [0.0, 0.0, 1.0]]))


def test_cluster_loss_closed_form() -> None:
    # (b0,c0): max(0.9,0.2)=0.9; (b0,c1): 0; (b1,c0): 0.3; (b1,c1): 0.8 → −(0.9+0+0.3+0.8)/4
    torch.testing.assert_close(L.cluster_loss(SIMS, Y, IDENT), torch.tensor(-2.0 / 4))


def test_separation_loss_closed_form() -> None:
    # (b0,c0): max over p of s·(1−M) = max(0,0,−0.1,0.4) = 0.4; (b0,c1): max(0.9,0.2,−0.1,0.4)=0.9
    # (b1,c0): max(0,0,0.8,0.5)=0.8; (b1,c1): max(0.3,0.1,0,0)=0.3
    torch.testing.assert_close(L.separation_loss(SIMS, Y, IDENT), torch.tensor((0.4 + 0.9 + 0.8 + 0.3) / 4))


def test_sparsity_loss_closed_form() -> None:
    torch.testing.assert_close(L.sparsity_loss(SIMS), torch.tensor(((0.9 + 0.2 + 0.4) + (0.3 + 0.1 + 0.8 + 0.5)) / 2))


def test_diversity_loss_closed_form() -> None:
    protos = torch.tensor([[1.0, 0.0], [2.0, 0.0], [0.0, 3.0]])  # normalised: e1, e1, e2
    # Gram − I has two off-diagonal ones → ||·||² = 2, / P² = 9
    torch.testing.assert_close(L.diversity_loss(protos), torch.tensor(2 / 9))
    assert L.diversity_loss(torch.eye(4)).item() == pytest.approx(0.0)


def test_contrastive_loss_closed_form() -> None:
    protos = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])
    co = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    # S: 1 within class, 0 across (clamped to 1−1e−6); pos = same-class blocks (8 ones), neg = the other 8
    expected = -((8 * (1 - 1e-6)) / 8 - 0.0) / math.sqrt(4)
    torch.testing.assert_close(L.contrastive_loss(protos, IDENT, co), torch.tensor(expected))
    # with full co-occurrence, pos is all ones and neg all zeros: only the pull term remains
    full = L.contrastive_loss(protos, IDENT, torch.ones(2, 2))
    torch.testing.assert_close(full, torch.tensor(-((8 * (1 - 1e-6)) / 16) / 2))


def test_offclass_l1_closed_form() -> None:
    w = torch.tensor([[1.0, 2.0, -3.0, 4.0], [-5.0, 6.0, 7.0, -8.0]])  # (C, P)
    # off-class entries: class 0 → prototypes 2, 3 (|−3|+|4|), class 1 → prototypes 0, 1 (|−5|+|6|)
    assert L.offclass_l1(w, IDENT).item() == pytest.approx(18.0)


def test_prototype_loss_sums_weighted_terms() -> None:
    protos = torch.randn(4, 3)
    logits = torch.randn(2, 2)
    pw = torch.tensor([1.0, 2.0])
    co = torch.tensor([[1.0, 0.5], [0.5, 1.0]])
    w = L.PrototypeLossWeights()
    total, terms = L.prototype_loss(logits, SIMS, Y, protos, IDENT, pw, co, w)
    expected = (
        torch.nn.functional.binary_cross_entropy_with_logits(logits, Y, pos_weight=pw)
        + 0.004 * L.cluster_loss(SIMS, Y, IDENT)
        + 0.0004 * L.separation_loss(SIMS, Y, IDENT)
        + 250 * L.diversity_loss(protos)
        + 300 * L.contrastive_loss(protos, IDENT, co)
    )
    torch.testing.assert_close(total, expected)
    assert set(terms) == {"bce", "clst", "sep", "div", "cnrst"}


def _tiny():
    torch.manual_seed(0)
    return create_model("ecg_protoecgnet", **dict(get_model_spec("ecg_protoecgnet").tiny_kwargs))


@pytest.mark.parametrize(
    ("stage", "expected"),
    [
        (Stage.FEATURE_EXTRACTOR, ("backbone.", "fc.")),
        (Stage.JOINT, ("backbone.", "add_on.", "prototypes")),
        (Stage.CLASSIFIER, ("classifier.",)),
        (Stage.PROJECTION, ()),
    ],
)
def test_stage_freezing_exact(stage: Stage, expected: tuple[str, ...]) -> None:
    model = _tiny()
    params = set_trainable(model, stage, branches=("rhythm", "diffuse"))
    names = trainable_names(model)
    want = {
        n
        for n, _ in model.named_parameters()
        if (n.startswith("branches.rhythm.") or n.startswith("branches.diffuse."))
        and any(n.split(".", 2)[2].startswith(e) for e in expected)
    }
    assert names == want
    assert {id(p) for p in params} == {id(p) for n, p in model.named_parameters() if n in want}


def test_stage_freezing_fusion() -> None:
    model = _tiny()
    set_trainable(model, Stage.FUSION)
    assert trainable_names(model) == {"fusion.weight", "fusion.bias"}
    assert Stage.parse("Feature-Extractor") is Stage.FEATURE_EXTRACTOR
    with pytest.raises(ValueError, match="stages"):
        Stage.parse("push")


def test_projection_prototypes_equal_training_latents() -> None:
    model = _tiny().eval()
    g = torch.Generator().manual_seed(1)
    x = torch.randn(6, 12, 1000, generator=g)
    y = np.zeros((6, 71), np.float32)
    idx = {b: model.branch_index(b).numpy() for b in ("rhythm", "morphology", "diffuse")}
    y[[0, 2, 4], idx["rhythm"][0]] = 1  # rhythm class 0 carried by records 0, 2, 4
    y[[1, 3], idx["morphology"][5]] = 1
    y[:, idx["diffuse"][0]] = 1
    ids = [f"rec{i}" for i in range(6)]
    before = {b: model.branch(b).prototypes.detach().clone() for b in idx}
    with torch.no_grad():
        ws_before = {b: model.branch(b).window_similarities(model.branch(b).latent(x)) for b in idx}
    sources, segments = project_prototypes(model, x, y, ids, batch_size=1)
    by = {(s["branch"], s["prototype"]): s for s in sources}
    latents: dict = {}
    with torch.no_grad():
        for name in ("rhythm", "morphology", "diffuse"):
            b = model.branch(name)
            for p in range(b.num_prototypes):
                s = by[(name, p)]
                cls = p // b.prototypes_per_class
                carriers = np.flatnonzero(y[:, idx[name][cls]])
                if len(carriers) == 0:  # no training positives: untouched, no source
                    assert s["record_id"] is None
                    assert torch.equal(b.prototypes[p], before[name][p])
                    continue
                r = s["record_index"]
                assert r in carriers
                assert s["record_id"] == ids[r]
                if (name, r) not in latents:
                    latents[(name, r)] = b.latent(x[r : r + 1])[0]
                z = latents[(name, r)]
                latent = z if b.kind == "1d" else z[:, :, s["window"] : s["window"] + b.proto_time_len]
                assert torch.equal(b.prototypes[p], latent), (name, p)
                # the recorded score is the old prototype's best similarity over the class's records and windows
                assert s["score"] == pytest.approx(float(ws_before[name][carriers, p].max()), abs=1e-5)
                # and the replaced prototype now matches its source exactly
                assert float(b.window_similarities(latent[None] if b.kind == "1d" else z[None])[0, p].max()) == (
                    pytest.approx(b.window_scale, abs=1e-4)
                )
                start, end = s["start"], s["end"]
                if b.kind == "2d":
                    assert (start, end) == window_to_samples(s["window"], b.proto_time_len, 32, 1000)
                seg = segments[name][p, :, : end - start].float()
                torch.testing.assert_close(seg, x[r, :, start:end], atol=2e-3, rtol=1e-3)
    assert by[("morphology", 10)]["end"] - by[("morphology", 10)]["start"] in (93, 94)  # 3 of 32 columns
