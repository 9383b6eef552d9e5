"""The Isensee-2017 residual U-Net: heads, deep supervision, configuration checks."""

from __future__ import annotations

import pytest
import torch

from models.nested_unet import HEAD_CHANNELS, NestedUNet


@pytest.mark.parametrize("head", sorted(HEAD_CHANNELS))
def test_heads_and_deep_supervision_shapes(head: str) -> None:
    model = NestedUNet(head=head, depth=4, base_filters=4, deep_supervision_levels=3)
    out = model.forward_with_aux(torch.randn(1, 4, 32, 32, 16))
    assert out.logits.shape == (1, HEAD_CHANNELS[head], 32, 32, 16)
    assert [a.shape[2:] for a in out.aux] == [(16, 16, 8), (8, 8, 4)]


def test_full_network_matches_paper_layout() -> None:
    model = NestedUNet()
    filters = [level.conv[0].out_channels for level in model.encoder]
    assert filters == [16, 32, 64, 128, 256]
    assert [level.conv[0].stride for level in model.encoder] == [(1, 1, 1)] + [(2, 2, 2)] * 4
    assert len(model.seg) == 3
    assert model.out_channels == 1
    assert model.encoder[1].context[1].p == pytest.approx(0.3)
    assert isinstance(model.encoder[0].conv[1], torch.nn.InstanceNorm3d)


def test_residual_context_is_added() -> None:
    model = NestedUNet(depth=2, base_filters=2, deep_supervision_levels=1, dropout=0.0).eval()
    level = model.encoder[0]
    x = torch.randn(1, 4, 8, 8, 8)
    conv = level.conv(x)
    assert torch.allclose(level(x), conv + level.context(conv))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"head": "sigmoid"}, "head"),
        ({"depth": 1}, "depth"),
        ({"base_filters": 0}, "base_filters"),
        ({"dropout": 1.0}, "dropout"),
        ({"depth": 3, "deep_supervision_levels": 3}, "deep_supervision_levels"),
    ],
)
def test_bad_arguments_raise(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        NestedUNet(**kwargs)


def test_indivisible_size_raises() -> None:
    with pytest.raises(ValueError, match="divisible by 8"):
        NestedUNet(depth=4, base_filters=2)(torch.randn(1, 4, 12, 16, 16))
