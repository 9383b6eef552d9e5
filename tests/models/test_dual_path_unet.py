"""The dual-path multi-task U-Net: shapes of both paths and heads, gradients, anisotropic pooling, checks."""

from __future__ import annotations

import pytest
import torch

from models import create_model, get_model_spec
from models.dual_path_unet import PATH_A_CLASSES, PATH_B_CLASSES, DualPathUNet, pooling_schedule


def test_both_paths_and_heads_have_the_right_shapes() -> None:
    model = DualPathUNet(depth=3, base_filters=4)
    x = torch.randn(2, 1, 16, 16, 4)
    out = model.forward_with_aux(x)
    assert out.logits_a.shape == (2, len(PATH_A_CLASSES), 16, 16, 4)
    assert out.logits_b.shape == (2, len(PATH_B_CLASSES), 16, 16, 4)
    assert out.sdm_a.shape == (2, 2, 16, 16, 4)
    assert out.sdm_b.shape == (2, 3, 16, 16, 4)
    assert float(out.sdm_a.abs().max()) <= 1.0  # tanh head: scaled distances in [-1, 1]
    assert torch.equal(model.eval()(x), torch.cat(list(model.forward_with_aux(x)[:2]), dim=1))


def test_every_head_gets_gradients_into_its_own_path_only() -> None:
    torch.manual_seed(0)
    model = DualPathUNet(depth=3, base_filters=4, dropout=0.0)
    x = torch.randn(2, 1, 16, 16, 4)
    for head, owner, other in (
        ("logits_a", model.path_a, model.path_b),
        ("sdm_a", model.path_a, model.path_b),
        ("logits_b", model.path_b, model.path_a),
        ("sdm_b", model.path_b, model.path_a),
    ):
        model.zero_grad(set_to_none=True)
        getattr(model.forward_with_aux(x), head).square().mean().backward()
        assert owner.encoder[0][0].weight.grad is not None
        assert float(owner.encoder[0][0].weight.grad.abs().sum()) > 0, head
        assert other.encoder[0][0].weight.grad is None, head


def test_pooling_is_anisotropic_in_the_first_two_levels() -> None:
    assert pooling_schedule(4) == [(2, 2, 1), (2, 2, 1), (2, 2, 2)]
    model = DualPathUNet()  # the published layout: depth 4, 16 filters, batch norm
    assert [m.kernel_size for m in model.path_a.down] == [(2, 2, 1), (2, 2, 1), (2, 2, 2)]
    assert model.divisor == (8, 8, 2)
    assert [b[0].out_channels for b in model.path_b.encoder] == [16, 32, 64, 128]
    assert isinstance(model.path_a.encoder[0][1], torch.nn.BatchNorm3d)
    out = model.eval()(torch.zeros(1, 1, 168, 168, 32)[..., :8, :8, :4].expand(1, 1, 8, 8, 4).contiguous())
    assert out.shape == (1, 7, 8, 8, 4)


def test_registered_with_its_spec() -> None:
    spec = get_model_spec("prostate_dual_path_unet")
    assert spec.task == "prostate"
    assert spec.label_names == ("PZ", "TZ", "DPU", "AFS")
    assert spec.roi_size == (168, 168, 32)
    model = create_model("prostate_dual_path_unet", **spec.tiny_kwargs)
    assert model(torch.randn(1, 1, *spec.example_size)).shape == (1, 7, *spec.example_size)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"depth": 1}, "depth"), ({"base_filters": 0}, "base_filters"), ({"dropout": 1.0}, "dropout"),
     ({"norm": "group"}, "norm"), ({"in_channels": 0}, "in_channels")],
)  # fmt: skip
def test_bad_arguments_raise(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        DualPathUNet(**kwargs)


def test_sizes_that_do_not_pool_are_refused() -> None:
    with pytest.raises(ValueError, match="divisible"):
        DualPathUNet(depth=3, base_filters=2)(torch.zeros(1, 1, 10, 16, 4))
