"""Grad-CAM on a synthetic image whose only discriminative region is known lands its peak there.

A tiny CNN learns "an 8-pixel bright square somewhere on noise" (class 1) against "noise only" (class 0); its
Grad-CAM for a class-1 image must peak on the square. The model is left exactly as it was found.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from pipelines.common.explain import grad_cam

SIZE, SQUARE, NOISE = 32, 8, 0.3
TARGET = "features.4"  # the last ReLU (in place, as in many backbones)


def _images(n: int, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    x = rng.normal(0.0, NOISE, (n, 1, SIZE, SIZE)).astype(np.float32)
    y = (np.arange(n) % 2).astype(np.int64)
    for i in np.flatnonzero(y):
        r, c = rng.integers(0, SIZE - SQUARE + 1, 2)
        x[i, 0, r : r + SQUARE, c : c + SQUARE] += 1.0
    return torch.from_numpy(x), torch.from_numpy(y)


def _square_image(row: int, col: int, seed: int) -> torch.Tensor:
    x = np.random.default_rng(seed).normal(0.0, NOISE, (1, 1, SIZE, SIZE)).astype(np.float32)
    x[0, 0, row : row + SQUARE, col : col + SQUARE] += 1.0
    return torch.from_numpy(x)


def _net() -> nn.Module:
    model = nn.Sequential()
    model.features = nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 3, padding=1),
        nn.ReLU(inplace=True),
    )
    model.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
    model.fc = nn.Linear(16, 2)
    return model


@pytest.fixture(scope="module")
def trained() -> nn.Module:
    """A few seconds of CPU training; separates the classes perfectly."""
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    model = _net()
    x, y = _images(512, rng)
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(80):
        idx = torch.from_numpy(rng.choice(len(x), 64, replace=False))
        loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    x_test, y_test = _images(100, np.random.default_rng(1))
    with torch.no_grad():
        assert (model(x_test).argmax(1) == y_test).float().mean() > 0.95
    optimiser.zero_grad(set_to_none=True)
    return model


def _assert_untouched(model: nn.Module, training: bool) -> None:
    for name, module in model.named_modules():
        assert not module._forward_hooks, name
        assert not module._forward_pre_hooks, name
        assert not module._backward_hooks, name
        assert not module._backward_pre_hooks, name
        assert module.training is training, name
    assert model.features[4].inplace is True
    assert all(p.grad is None for p in model.parameters())


@pytest.mark.parametrize(("row", "col"), [(3, 5), (20, 18), (0, 24), (12, 12), (24, 0)])
def test_peak_lands_on_the_square(trained: nn.Module, row: int, col: int) -> None:
    x = _square_image(row, col, seed=100 * row + col)
    with torch.no_grad():  # the caller's grad mode does not matter
        maps = grad_cam(trained, x, TARGET)
    assert maps.shape == (1, SIZE, SIZE)
    assert maps.dtype == np.float32
    cam = maps[0]
    assert cam.min() >= 0.0
    assert cam.max() == pytest.approx(1.0)
    peak_row, peak_col = np.unravel_index(cam.argmax(), cam.shape)
    assert row - 2 <= peak_row < row + SQUARE + 2
    assert col - 2 <= peak_col < col + SQUARE + 2
    inside = np.zeros_like(cam, dtype=bool)
    inside[row : row + SQUARE, col : col + SQUARE] = True
    assert cam[inside].mean() > 5 * cam[~inside].mean()


@pytest.mark.parametrize("training", [True, False])
def test_model_is_left_as_it_was(trained: nn.Module, training: bool) -> None:
    trained.train(training)
    try:
        maps = grad_cam(trained, _square_image(4, 4, seed=0), TARGET, class_index=1)
        assert maps.shape == (1, SIZE, SIZE)
        _assert_untouched(trained, training)
        # repeated calls do not pile hooks up either
        for _ in range(3):
            grad_cam(trained, _square_image(4, 4, seed=0), TARGET)
        _assert_untouched(trained, training)
    finally:
        trained.eval()


def test_mixed_train_eval_flags_are_restored_one_by_one(trained: nn.Module) -> None:
    trained.train()
    trained.features[0].eval()  # e.g. a frozen stem inside a training model
    try:
        grad_cam(trained, _square_image(4, 4, seed=0), TARGET)
        assert trained.training
        assert trained.features[4].training
        assert not trained.features[0].training
    finally:
        trained.eval()


def test_existing_hooks_and_gradients_survive(trained: nn.Module) -> None:
    calls: list[int] = []
    handle = trained.features[4].register_forward_hook(lambda *_: calls.append(1))
    grad = torch.ones_like(trained.fc.weight)
    trained.fc.weight.grad = grad
    try:
        grad_cam(trained, _square_image(4, 4, seed=0), TARGET)
        assert calls == [1]
        assert len(trained.features[4]._forward_hooks) == 1
        assert trained.fc.weight.grad is grad
        assert bool((grad == 1).all())
    finally:
        handle.remove()
        trained.fc.weight.grad = None


def test_batch_gives_one_map_per_input(trained: nn.Module) -> None:
    x = torch.cat([_square_image(2, 2, 1), _square_image(20, 20, 2), _square_image(10, 22, 3)])
    maps = grad_cam(trained, x, TARGET)
    assert maps.shape == (3, SIZE, SIZE)
    assert maps.dtype == np.float32
    assert ((maps >= 0) & (maps <= 1)).all()


def test_each_input_is_explained_by_its_own_class(trained: nn.Module) -> None:
    """MONAI scores every input with every requested class; here each input gets its own class."""
    x = torch.cat([_square_image(2, 2, 1), _square_image(20, 20, 2), _square_image(10, 22, 3)])
    classes = [1, 0, 1]
    together = grad_cam(trained, x, TARGET, class_index=classes)
    for i, c in enumerate(classes):
        alone = grad_cam(trained, x[i : i + 1], TARGET, class_index=c)
        np.testing.assert_allclose(together[i], alone[0], atol=1e-5)


def test_frozen_model(trained: nn.Module) -> None:
    trained.requires_grad_(False)
    try:
        maps = grad_cam(trained, _square_image(12, 12, seed=5), TARGET)
        assert maps[0, 12:20, 12:20].mean() > 0.3
    finally:
        trained.requires_grad_(True)


def test_bad_arguments(trained: nn.Module) -> None:
    x = _square_image(4, 4, seed=0)
    with pytest.raises(ValueError, match=r"features\.4"):
        grad_cam(trained, x, "features.5")
    with pytest.raises(ValueError, match="entries"):
        grad_cam(trained, x, TARGET, class_index=[0, 1])
    with pytest.raises(ValueError, match="out of range"):
        grad_cam(trained, x, TARGET, class_index=2)
    with pytest.raises(ValueError, match="spatial"):
        grad_cam(trained, torch.zeros(1, 4), TARGET)
    _assert_untouched(trained, False)
