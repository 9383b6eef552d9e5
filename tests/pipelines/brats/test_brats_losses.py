"""Multi-level activation, decoding and losses: nesting, exact decoding, closed forms, gradients."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from pipelines.brats.losses import (
    LEVEL_THRESHOLDS,
    DeepSupervisionLoss,
    Head,
    decode_multilevel,
    ideal_logit,
    level_logits,
    levels_to_regions,
    mask_outside_brain,
    multilevel_activation,
    regions_to_levels,
)

T = (-2.0, 0.0, 2.0)


@pytest.mark.parametrize("beta", [0.5, 1.0, 2.0, 8.0])
def test_nesting_holds_for_any_z(beta: float) -> None:
    torch.manual_seed(0)
    z = torch.cat([torch.randn(20000) * 5, torch.tensor([-1e6, -50.0, -2.0, 0.0, 2.0, 50.0, 1e6])])
    y = multilevel_activation(z.view(1, 1, -1), beta, T)
    assert ((y >= 0) & (y <= 1)).all()
    regions = levels_to_regions(decode_multilevel(y[:, 0]))
    wt, tc, et = regions[:, 0].bool(), regions[:, 1].bool(), regions[:, 2].bool()
    assert not (et & ~tc).any()
    assert not (tc & ~wt).any()


def test_activation_closed_form_and_monotone() -> None:
    z = torch.linspace(-10, 10, 1001).view(1, 1, -1)
    y = multilevel_activation(z, 2.0, T)
    expected = (torch.sigmoid(2 * (z + 2)) + torch.sigmoid(2 * z) + torch.sigmoid(2 * (z - 2))) / 3
    assert torch.allclose(y, expected)
    assert (y[0, 0, 1:] >= y[0, 0, :-1]).all()
    assert y[0, 0, 500].item() == pytest.approx(0.5)  # z = 0 is the symmetric point


@pytest.mark.parametrize("beta", [1.0, 2.0, 4.0])
def test_level_targets_decode_back_exactly(beta: float) -> None:
    levels = torch.randint(0, 4, (2, 9, 7, 5))
    # the ideal targets σ_k = cumulative masks give y = level / 3
    y_target = levels_to_regions(levels).mean(dim=1)
    assert torch.equal(decode_multilevel(y_target), levels)
    # a logit in the middle of each level's plateau decodes back too
    z = ideal_logit(levels, beta, T).unsqueeze(1)
    head = Head("multilevel", beta, T)
    assert torch.equal(head.decode(head.maps(z)), levels)
    assert torch.equal(regions_to_levels(levels_to_regions(levels)), levels)


def test_decode_thresholds() -> None:
    eps = 1e-6
    y = torch.tensor([0.0, 1 / 6 - eps, 1 / 6 + eps, 0.5 - eps, 0.5 + eps, 5 / 6 - eps, 5 / 6 + eps, 1.0])
    assert decode_multilevel(y).tolist() == [0, 0, 1, 1, 2, 2, 3, 3]
    assert LEVEL_THRESHOLDS == pytest.approx((1 / 6, 1 / 2, 5 / 6))


def test_regions_head_enforces_nesting() -> None:
    # ET without TC is not ET; TC without WT is nothing
    maps = torch.tensor([[0.9, 0.1, 0.9], [0.1, 0.9, 0.9], [0.9, 0.9, 0.9], [0.9, 0.9, 0.1]]).T[None]
    assert regions_to_levels(maps)[0].tolist() == [1, 0, 3, 2]


def test_multilevel_loss_is_region_loss_on_shifted_logits() -> None:
    torch.manual_seed(0)
    z = torch.randn(2, 1, 6, 6, 6)
    regions = levels_to_regions(torch.randint(0, 4, (2, 6, 6, 6)))
    ml, rg = Head("multilevel", 2.0, T), Head("regions")
    assert torch.allclose(ml.loss(z, regions), rg.loss(level_logits(z, 2.0, T), regions))


def test_region_loss_closed_form() -> None:
    # all logits 0: σ = 1/2 everywhere; BCE = ln 2 per voxel; with a half-full mask per region the soft Dice
    # is 2·(n/2·1/2)/(n/2 + n/2) = 1/2, so the Dice loss is 1/2; three regions sum to 3·(ln 2 + 1/2)
    regions = torch.zeros(1, 3, 4, 4, 4)
    regions[:, :, :2] = 1
    loss = Head("regions").loss(torch.zeros(1, 3, 4, 4, 4), regions)
    assert loss.item() == pytest.approx(3 * (math.log(2) + 0.5), rel=1e-4)


def test_loss_lower_at_ideal_logit_and_gradients_finite() -> None:
    torch.manual_seed(0)
    levels = torch.randint(0, 4, (1, 8, 8, 8))
    regions = levels_to_regions(levels)
    head = Head("multilevel", 16.0, T)
    good = ideal_logit(levels, 16.0, T).unsqueeze(1)  # 1 away from every threshold: σ(±16) ≈ 0 or 1
    bad = torch.randn(1, 1, 8, 8, 8)
    assert head.loss(good, regions) < 0.01
    assert head.loss(bad, regions) > 1.0
    for z0 in (bad, torch.full((1, 1, 8, 8, 8), 1e4), torch.full((1, 1, 8, 8, 8), -1e4)):
        z = z0.clone().requires_grad_(True)
        head.loss(z, regions).backward()
        assert torch.isfinite(z.grad).all()


def test_softmax_head_levels_and_loss() -> None:
    levels = torch.randint(0, 4, (1, 5, 5, 5))
    logits = torch.nn.functional.one_hot(levels, 4).permute(0, 4, 1, 2, 3).float() * 10
    head = Head("softmax")
    assert torch.equal(head.decode(head.maps(logits)), levels)
    probs = head.region_probabilities(head.maps(logits))
    assert torch.allclose(probs, levels_to_regions(levels), atol=1e-3)
    assert head.loss(logits, levels_to_regions(levels)) < 0.05


def test_deep_supervision_weights_and_downsampling() -> None:
    head = Head("regions")
    loss = DeepSupervisionLoss(head, [1.0, 0.5])
    regions = levels_to_regions(torch.randint(0, 4, (1, 8, 8, 8)))
    full, aux = torch.zeros(1, 3, 8, 8, 8), torch.zeros(1, 3, 4, 4, 4)
    expected = (2 / 3) * head.loss(full, regions) + (1 / 3) * head.loss(aux, regions[:, :, ::2, ::2, ::2])
    assert torch.allclose(loss(full, [aux], regions), expected)
    with pytest.raises(ValueError, match="weights"):
        DeepSupervisionLoss(head, [])


def test_mask_outside_brain() -> None:
    image = torch.zeros(1, 4, 3, 3, 3)
    image[0, 2, 1, 1, 1] = -0.5  # one channel nonzero is enough (z-scored intensities can be negative)
    image[0, 0, 0, 0, 0] = 2.0
    levels = torch.full((1, 3, 3, 3), 3)
    masked = mask_outside_brain(levels, image)
    assert masked.sum() == 6
    assert masked[0, 1, 1, 1] == 3
    assert masked[0, 0, 0, 0] == 3


def test_labels_to_levels_inverts_the_2018_convention() -> None:
    from pipelines.brats.transforms import LEVEL_TO_LABEL, labels_to_levels

    levels = np.array([0, 1, 2, 3, 3, 0])
    labels = np.asarray(LEVEL_TO_LABEL["brats2018"])[levels]
    assert labels.tolist() == [0, 2, 1, 4, 4, 0]
    assert labels_to_levels(labels).tolist() == levels.tolist()
