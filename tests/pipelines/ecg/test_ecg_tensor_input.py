"""A signal given in memory (an Open Inference Protocol tensor, ``InputItem.data``) is read as the NPY record of the
same values: the same window, units and checks, hence the same model input; refusals name the input."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from pipelines.common.errors import InputError
from pipelines.common.task import InputItem, PredictOptions, TensorSpec, get_task
from pipelines.ecg.config import EcgOptions
from pipelines.ecg.infer import EcgPredictor, record_from_array, synthetic_waveform
from pipelines.ecg.readers import read_array


@pytest.mark.parametrize("seconds", [10.0, 75.0])  # 75 s: beyond the 60 s read, centrally windowed like an NPY
def test_a_tensor_reads_as_the_npy_of_its_values(tmp_path: Path, seconds: float) -> None:
    sig = synthetic_waveform(seconds, 250.0) * 1000.0  # in µV
    np.save(tmp_path / "rec.npy", sig.astype(np.float32))
    from_file = read_array(tmp_path / "rec.npy", 250.0, "uV")
    from_memory = record_from_array(sig.astype(np.float32), 250.0, "uV", "inputs[0]")
    np.testing.assert_array_equal(from_memory.signal, from_file.signal)
    assert (from_memory.fs, from_memory.seconds, from_memory.leads) == (from_file.fs, from_file.seconds, None)


@pytest.mark.parametrize(
    ("signal", "rate", "unit", "words"),
    [
        (np.zeros((12, 1000)), None, None, "sampling_rate"),
        (np.zeros((12, 1000)), 10.0, None, "outside the accepted range"),
        (np.zeros((12, 1000)), 100.0, "furlong", "unsupported signal unit"),
        (np.zeros((11, 1000)), 100.0, None, "(12, samples)"),
        (np.zeros(1000), 100.0, None, "(12, samples)"),
        (np.full((12, 1000), "a"), 100.0, None, "numbers"),
    ],
)
def test_refusals_name_the_tensor(signal: np.ndarray, rate: float | None, unit: str | None, words: str) -> None:
    with pytest.raises(InputError, match="inputs\\[0\\]\\[2\\]") as info:
        record_from_array(signal, rate, unit, "inputs[0][2]")
    assert words in info.value.problem


@pytest.fixture(scope="module")
def predictor() -> EcgPredictor:
    ckpt = get_task("ecg").untrained_checkpoint("tiny")
    return EcgPredictor(ckpt, PredictOptions(device="cpu"))


def test_prepare_of_a_tensor_is_prepare_of_its_file(predictor: EcgPredictor, tmp_path: Path) -> None:
    sig = synthetic_waveform(10.0, 500.0)
    np.save(tmp_path / "rec.npy", sig)
    options = EcgOptions(sampling_rate=500.0)
    by_file = predictor.prepare(InputItem("rec", {"record": tmp_path / "rec.npy"}, options=options))
    by_data = predictor.prepare(InputItem("input-000", {}, options=options, data=sig))
    np.testing.assert_array_equal(by_data.data, by_file.data)
    assert by_data.context == by_file.context
    bad = sig.copy()
    bad[4, 7] = np.nan
    with pytest.raises(InputError, match="NaN or infinite values in lead\\(s\\) aVL") as info:
        predictor.prepare(InputItem("input-001", {}, options=options, data=bad))
    assert str(info.value.path) == "input-001"


def test_an_explained_tensor_with_non_finite_similarities_is_named(predictor: EcgPredictor) -> None:
    item = InputItem("input-002", {}, explain=True, options=EcgOptions(sampling_rate=100.0), data=synthetic_waveform())
    prepared = predictor.prepare(item)
    raw = {"probs": {"statements": np.full(71, 0.5)}, "sims": np.array([np.nan])}
    with pytest.raises(InputError, match="prototype similarities are not finite") as info:
        predictor.finish(prepared, raw, None)
    assert str(info.value.path) == "input-002"


def test_the_task_declares_its_tensor() -> None:
    spec = get_task("ecg").contract.tensor
    assert isinstance(spec, TensorSpec)
    assert (spec.name, spec.datatype, spec.shape, spec.required_options) == (
        "signal",
        "FP32",
        (12, -1),
        ("sampling_rate",),
    )
    assert get_task("ecg").contract.to_dict()["tensor"]["datatypes"] == ["FP32", "FP64"]
    assert get_task("brats").contract.tensor is None
    with pytest.raises(ValueError, match="datatypes"):
        TensorSpec("x", ("FLOAT",), (1,))
    with pytest.raises(ValueError, match="shape"):
        TensorSpec("x", ("FP32",), (0, -1))
