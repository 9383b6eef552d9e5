"""An image given in memory (an Open Inference Protocol tensor, ``InputItem.data``) is preprocessed as the same image
read from a file; refusals name the input."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipelines.breakhis.config import BreakhisConfig, BreakhisTrainOptions
from pipelines.breakhis.infer import BreakhisPredictor
from pipelines.breakhis.train import BreakhisRun
from pipelines.breakhis.transforms import rgb_from_array
from pipelines.common.errors import InputError
from pipelines.common.task import InputItem, PredictOptions, TrainOptions, get_task

RGB = np.random.default_rng(0).integers(0, 256, (40, 52, 3), dtype=np.uint8)


def test_uint8_and_whole_floats_are_the_image_itself() -> None:
    for data in (RGB, RGB.astype(np.float32)):
        rgb, notes = rgb_from_array(data, "inputs[0]")
        assert rgb.dtype == np.uint8
        np.testing.assert_array_equal(rgb, RGB)
        assert notes == []
    rgb, notes = rgb_from_array(RGB * 0.999, "inputs[0]")  # each value within 0.26 of its integer
    np.testing.assert_array_equal(rgb, RGB)
    assert notes == ["values rounded to 8 bits (0-255)"]


@pytest.mark.parametrize(
    ("data", "words"),
    [
        (np.zeros((40, 52), dtype=np.uint8), "(height, width, 3)"),
        (np.zeros((40, 52, 4), dtype=np.uint8), "(height, width, 3)"),
        (np.zeros((8, 52, 3), dtype=np.uint8), "at least 16 pixels"),
        (np.full((40, 52, 3), np.nan, dtype=np.float32), "NaN"),
        (np.full((40, 52, 3), 256.0, dtype=np.float32), "0-255"),
        (np.full((40, 52, 3), -1.0), "0-255"),
    ],
)
def test_refusals_name_the_tensor(data: np.ndarray, words: str) -> None:
    with pytest.raises(InputError, match="inputs\\[0\\]\\[1\\]") as info:
        rgb_from_array(data, "inputs[0][1]")
    assert words in info.value.problem


def test_too_many_pixels_are_refused_before_any_copy() -> None:
    big = np.broadcast_to(np.zeros(3, dtype=np.uint8), (200, 300, 3))  # a view: nothing allocated
    with pytest.raises(InputError, match="more than the limit 50,000"):
        rgb_from_array(big, "inputs[0]", max_pixels=50_000)


def test_prepare_of_a_tensor_is_prepare_of_its_file(tmp_path: Path) -> None:
    config = BreakhisConfig.load("tiny", overrides={"image_size": 32})
    options = TrainOptions(tmp_path, tmp_path / "run", device="cpu", task=BreakhisTrainOptions(target="subtype"))
    ckpt = BreakhisRun(get_task("breakhis"), config, options).untrained_checkpoint()
    predictor = BreakhisPredictor(ckpt, PredictOptions(device="cpu"))
    Image.fromarray(RGB).save(tmp_path / "img.png")
    by_file = predictor.prepare(InputItem("img", {"image": tmp_path / "img.png"}))
    for data in (RGB, RGB.astype(np.float32)):
        by_data = predictor.prepare(InputItem("input-000", {}, data=data))
        np.testing.assert_array_equal(by_data.data, by_file.data)
        assert by_data.context == by_file.context
