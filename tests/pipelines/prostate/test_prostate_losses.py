"""The dual-path method's pieces: targets, consistency, fusion, ramp-up, disagreement, supervised loss."""

from __future__ import annotations

import math

import pytest
import torch

from models.dual_path_unet import DualPathOutput
from pipelines.prostate.losses import (
    DualPathLoss,
    consistency,
    disagreement,
    fuse,
    path_targets,
    rampup,
    split_logits,
)


def _logits_from_probs(p: torch.Tensor) -> torch.Tensor:
    return p.clamp(min=1e-6).log()


def test_path_targets_map_other_zones_to_background() -> None:
    zones = torch.tensor([0, 1, 2, 3, 4]).view(1, 1, 5, 1, 1)
    a, b = path_targets(zones)
    assert a.flatten().tolist() == [0, 1, 2, 0, 0]
    assert b.flatten().tolist() == [0, 0, 1, 2, 3]


def test_consistency_is_zero_when_the_paths_agree_on_shared_classes() -> None:
    torch.manual_seed(0)
    shape = (2, 6, 5, 3)
    # any split of the rest of the mass: bg and TZ equal in both paths
    bg = torch.rand(shape) * 0.5
    tz = torch.rand(shape) * 0.4
    rest = 1 - bg - tz
    pa = torch.stack([bg, rest, tz], 1)
    share = torch.rand(shape)
    pb = torch.stack([bg, tz, rest * share, rest * (1 - share)], 1)
    assert float(consistency(_logits_from_probs(pa), _logits_from_probs(pb))) == pytest.approx(0.0, abs=1e-10)
    assert float(disagreement(pa, pb).abs().max()) == pytest.approx(0.0, abs=1e-6)


def test_consistency_is_positive_when_they_disagree_and_has_gradients() -> None:
    torch.manual_seed(1)
    la = torch.randn(1, 3, 4, 4, 2, requires_grad=True)
    lb = torch.randn(1, 4, 4, 4, 2, requires_grad=True)
    value = consistency(la, lb)
    assert float(value.detach()) > 0
    value.backward()
    assert la.grad is not None
    assert lb.grad is not None
    assert float(la.grad.abs().sum()) > 0


def test_background_is_not_compared_where_a_path_sees_its_own_zone() -> None:
    # path A is sure of PZ, path B (whose background holds PZ) is sure of background: no disagreement
    pa = torch.tensor([0.0, 1.0, 0.0]).view(1, 3, 1, 1, 1)
    pb = torch.tensor([1.0, 0.0, 0.0, 0.0]).view(1, 4, 1, 1, 1)
    assert float(consistency(_logits_from_probs(pa), _logits_from_probs(pb))) == pytest.approx(0.0, abs=1e-8)
    # both "outside the gland" per their own zones, but bg differs: that is compared
    pa = torch.tensor([0.9, 0.0, 0.1]).view(1, 3, 1, 1, 1)
    pb = (
        torch.tensor([0.1, 0.1, 0.0, 0.0]).view(1, 4, 1, 1, 1)
        / 0.2
        * torch.tensor([0.5, 0.5, 0, 0]).view(1, 4, 1, 1, 1)
    )
    expected = ((0.1 - 0.5) ** 2 + (0.9 - 0.5) ** 2) / 2
    assert float(consistency(_logits_from_probs(pa), _logits_from_probs(pb))) == pytest.approx(expected, rel=1e-4)
    assert float(disagreement(pa, pb)) == pytest.approx((0.4 + 0.4) / 2, rel=1e-4)


def test_fusion_averages_shared_classes_and_keeps_exclusive_ones() -> None:
    pa = torch.tensor([0.2, 0.5, 0.3]).view(1, 3, 1)
    pb = torch.tensor([0.4, 0.1, 0.3, 0.2]).view(1, 4, 1)
    fused = fuse(pa, pb)[0, :, 0]
    raw = torch.tensor([0.3, 0.5, 0.2, 0.3, 0.2])
    torch.testing.assert_close(fused, raw / raw.sum())
    assert float(fused.sum()) == pytest.approx(1.0)
    # one-hot paths fuse to the zone each path is sure of
    for zone, (a, b) in {0: (0, 0), 1: (1, 0), 2: (2, 1), 3: (0, 2), 4: (0, 3)}.items():
        pa = torch.nn.functional.one_hot(torch.tensor([a]), 3).float().view(1, 3, 1)
        pb = torch.nn.functional.one_hot(torch.tensor([b]), 4).float().view(1, 4, 1)
        assert int(fuse(pa, pb).argmax(1)) == zone


def test_rampup_rises_from_near_zero_to_one() -> None:
    assert rampup(0, 10) == pytest.approx(math.exp(-5))
    assert rampup(10, 10) == 1.0
    assert rampup(20, 10) == 1.0
    assert rampup(3, 0) == 1.0
    values = [rampup(e, 10) for e in range(11)]
    assert values == sorted(values)


def test_split_logits_separates_the_paths() -> None:
    logits = torch.arange(7.0).view(1, 7, 1, 1, 1)
    a, b = split_logits(logits)
    assert a.flatten().tolist() == [0, 1, 2]
    assert b.flatten().tolist() == [3, 4, 5, 6]


def test_supervised_loss_is_lower_for_the_right_answer_and_counts_distance_maps() -> None:
    zones = torch.zeros(1, 1, 8, 8, 2, dtype=torch.long)
    zones[..., 2:5, 2:5, :] = 1
    zones[..., 5:7, 5:7, :] = 3
    ta, tb = path_targets(zones)
    good = DualPathOutput(
        torch.nn.functional.one_hot(ta[:, 0], 3).movedim(-1, 1).float() * 20,
        torch.nn.functional.one_hot(tb[:, 0], 4).movedim(-1, 1).float() * 20,
        torch.zeros(1, 2, 8, 8, 2),
        torch.zeros(1, 3, 8, 8, 2),
    )
    bad = DualPathOutput(*(torch.zeros_like(t) for t in good))
    loss = DualPathLoss(aux_weight=1.0)
    assert float(loss(good, zones, None)) < float(loss(bad, zones, None))
    sdm = torch.ones(1, 4, 8, 8, 2)
    assert float(loss(good, zones, sdm)) == pytest.approx(float(loss(good, zones, None)) + 2.0, rel=1e-5)
    assert float(DualPathLoss(aux_weight=0.0)(good, zones, sdm)) == pytest.approx(float(loss(good, zones, None)))
