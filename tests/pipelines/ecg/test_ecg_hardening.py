"""Bounds on what an ECG file may become, amplitude plausibility, tolerant lead names and NaN-free results.

Every refusal is an ``InputError`` naming the file and the limit; the long-record tests check that only a window is
read (tracemalloc peak far below the whole record) and that it is the right window.
"""

from __future__ import annotations

import io
import json
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import torch
import wfdb

from models.protoecgnet import LEADS, PTBXL_LABELS
from models.registry import create_model
from pipelines.common.checkpoint import Checkpoint
from pipelines.common.config import ConfigError
from pipelines.common.errors import InputError
from pipelines.common.task import InputItem, PredictOptions
from pipelines.ecg import readers
from pipelines.ecg.config import TINY, EcgOptions
from pipelines.ecg.infer import EcgPredictor
from pipelines.ecg.readers import MAX_READ_SECONDS, parse_wfdb_header, read_record
from pipelines.ecg.transforms import (
    canonical_lead,
    check_signal,
    preprocess_signal,
    rate_problem,
    resample,
    resample_factors,
    robust_amplitude_mv,
)


def ecg_like(fs: float, seconds: float, seed: int = 0) -> np.ndarray:
    """(12, n) in mV: a 1 mV spike train at 72 bpm plus a small sine per lead, so leads differ."""
    n = round(fs * seconds)
    t = np.arange(n) / fs
    phase = t % (60 / 72)
    qrs = np.exp(-((phase - 0.3) ** 2) / (2 * 0.012**2))
    rng = np.random.default_rng(seed)
    gains = rng.uniform(0.5, 1.5, (12, 1))
    return gains * qrs[None] + 0.1 * np.sin(2 * np.pi * (0.7 + 0.1 * np.arange(12))[:, None] * t[None])


def write_wfdb(folder: Path, name: str, sig_mv: np.ndarray, fs: float, units: str = "mV", names=LEADS) -> Path:
    scale = {"mV": 1.0, "uV": 1000.0}[units]
    wfdb.wrsamp(
        name,
        fs=fs,
        units=[units] * sig_mv.shape[0],
        sig_name=list(names),
        p_signal=(sig_mv * scale).T,
        fmt=["16"] * sig_mv.shape[0],
        adc_gain=[1000.0 / scale] * sig_mv.shape[0],
        baseline=[0] * sig_mv.shape[0],
        write_dir=str(folder),
    )
    return folder / f"{name}.hea"


def header_text(
    n_sig: int = 12, fs: str = "500", samples: str = "5000", line: str = "r.dat 16 1000/mV 16 0 0 0 0"
) -> str:
    lines = [f"r {n_sig} {fs} {samples}"]
    lines += [f"{line} {LEADS[i % 12]}{'' if i < 12 else i}" for i in range(n_sig)]
    return "\n".join(lines) + "\n"


# -- sampling rate -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("rate", "says"),
    [(10, "greater than or equal to 50"), (30_000, "less than or equal to 20000"), (360.0001, "approximately")],
)
def test_the_rate_option_is_bounded_and_exact(rate: float, says: str) -> None:
    with pytest.raises(ConfigError, match="sampling_rate") as err:
        EcgOptions.parse({"sampling_rate": rate})
    assert says in str(err.value)


def test_accepted_rates_and_unit_spellings() -> None:
    assert EcgOptions.parse({"sampling_rate": 257.3}).sampling_rate == 257.3
    assert EcgOptions.parse({"signal_unit": "µV"}).signal_unit == "uV"
    assert EcgOptions.parse({"signal_unit": "millivolt"}).signal_unit == "mV"
    with pytest.raises(ConfigError, match="signal_unit"):
        EcgOptions.parse({"signal_unit": "mmHg"})


def test_cli_exits_2_naming_the_rate(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from app.cli import app

    csv_path = tmp_path / "r.csv"
    np.savetxt(csv_path, ecg_like(100, 10).T, delimiter=",", fmt="%.4f")
    res = CliRunner().invoke(app, ["predict", "ecg", str(csv_path), "-o", str(tmp_path / "o"), "--sampling-rate", "5"])
    assert res.exit_code == 2, res.output
    assert "sampling_rate" in res.output


def test_rates_are_converted_exactly_or_refused() -> None:
    assert resample_factors(500, 100) == (1, 5)
    assert resample_factors(257.3, 100) == (1000, 2573)  # an exact decimal rate is fine
    with pytest.raises(ValueError, match="polyphase factors"):
        resample_factors(360.0001, 100)
    with pytest.raises(ValueError, match="polyphase factors"):  # never an approximation that stretches time
        resample(np.zeros((12, 3600)), 360.0001, 100)
    assert rate_problem(360.0001) is not None
    assert "outside" in str(rate_problem(49.0))
    assert rate_problem(float("nan")) is not None
    # 257.3 Hz used to be approximated (1000/2573 limited to denominators <= 1000): a 5 Hz sine must stay 5 Hz
    fs = 257.3
    t = np.arange(round(30 * fs)) / fs
    out = resample(np.sin(2 * np.pi * 5 * t)[None], fs, 100)
    expected = np.sin(2 * np.pi * 5 * np.arange(out.shape[-1]) / 100)
    np.testing.assert_allclose(out[0, 200:-200], expected[200:-200], atol=0.02)


def test_a_wfdb_rate_that_is_only_approximate_is_refused(tmp_path: Path) -> None:
    hea = write_wfdb(tmp_path, "r", ecg_like(360, 10), 360)
    hea.write_text(hea.read_text().replace("r 12 360 3600", "r 12 360.0001 3600", 1))
    with pytest.raises(InputError, match="approximately") as err:
        read_record(hea)
    assert str(hea) in str(err.value)


def test_preprocess_refuses_a_rate_out_of_range() -> None:
    with pytest.raises(InputError, match="outside the accepted range"):
        preprocess_signal(ecg_like(100, 10), 40_000, None, "x")


def test_a_long_record_is_cut_before_resampling_with_the_same_result() -> None:
    sig = ecg_like(500, 40)
    x = preprocess_signal(sig, 500, None, "long")
    # the reference: resample the whole record, then take the central 10 s (the former order)
    full = resample(sig, 500, 100)
    start = (full.shape[-1] - 1000) // 2
    ref = preprocess_signal(full[:, start - 100 : start + 1100], 100, None, "ref")
    np.testing.assert_allclose(x[:, 20:-20], ref[:, 20:-20], atol=2e-3)


# -- WFDB header bounds ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "says"),
    [
        (header_text(n_sig=65), "65 signals; 1 to 64"),
        (header_text(samples="99999999999999"), "at most 4294967296"),
        (header_text(fs="20"), "outside the accepted range"),
        (header_text(line="r.dat 16:900 1000/mV 16 0 0 0 0"), "skew of 900 samples; at most 500"),
        (header_text(line="r.dat 999 1000/mV 16 0 0 0 0"), "format 999 is not supported"),
        (header_text(line="r.dat 8 1000/mV 16 0 0 0 0"), "format 8 is not supported"),
        (header_text(line="r.dat 16x100 1000/mV 16 0 0 0 0"), "samples per frame"),
        (header_text(line="../secret.dat 16 1000/mV 16 0 0 0 0"), "plain file name"),
        (header_text(line="sub/r.dat 16 1000/mV 16 0 0 0 0"), "plain file name"),
        (header_text(line="r.dat 16 abc/mV 16 0 0 0 0"), "invalid gain"),
        ("r/2 12 500 5000\n", "multi-segment"),
        ("r 12 500 5000\nr.dat 16 1000/mV 16 0 0 0 0 I\n", "12 signals but has 1 signal lines"),
        ("# only a comment\n", "empty WFDB header"),
    ],
)
def test_wfdb_headers_are_bounded_before_reading(tmp_path: Path, text: str, says: str) -> None:
    hea = tmp_path / "r.hea"
    hea.write_text(text)
    (tmp_path / "r.dat").write_bytes(b"\0" * 240_000)
    t0 = time.perf_counter()
    with pytest.raises(InputError) as err:
        read_record(hea)
    assert time.perf_counter() - t0 < 1.0
    assert says in str(err.value)
    assert str(hea) in str(err.value)


def test_an_oversized_header_is_refused_unread(tmp_path: Path) -> None:
    hea = tmp_path / "r.hea"
    hea.write_text(header_text() + "#" * (70 * 1024))
    with pytest.raises(InputError, match="bytes; at most 65536"):
        read_record(hea)


def test_a_signal_file_that_is_missing_or_elsewhere_is_refused(tmp_path: Path) -> None:
    hea = tmp_path / "r.hea"
    hea.write_text(header_text())
    with pytest.raises(InputError, match="not found beside the header"):
        read_record(hea)
    outside = tmp_path.parent / f"{tmp_path.name}_outside.dat"
    outside.write_bytes(b"\0" * 240_000)
    (tmp_path / "r.dat").symlink_to(outside)
    with pytest.raises(InputError, match="not found beside the header"):
        read_record(hea)


def test_the_header_parser_reads_the_fields() -> None:
    h = parse_wfdb_header(
        "rec 2 360/1(0) 650000 12:00:00 01/01/2000\nrec.dat 212:3+24 200(1024)/uV 11 1024 995 -22131 0 MLII\n"
        "rec.dat 212 200 11 1024 1011 20052 0 V1-V2\n",
        "rec.hea",
    )
    assert (h.n_sig, h.fs, h.n_samples) == (2, 360.0, 650000)
    a, b = h.signals
    assert (a.fmt, a.skew, a.byte_offset, a.gain, a.baseline, a.units, a.description) == (
        "212",
        3,
        24,
        200.0,
        1024,
        "uV",
        "MLII",
    )
    assert (b.units, b.description) == (None, "V1-V2")


# -- long records are cropped while reading ----------------------------------------------------------------------------
def _sparse_holter(folder: Path, fs: int, hours: float, truncate_to: int | None = None) -> tuple[Path, int, np.ndarray]:
    """A 12-lead format-16 record claiming ``hours`` of samples; only its central minute holds data (a sparse file)."""
    n = int(hours * 3600 * fs)
    w = int(MAX_READ_SECONDS * fs)
    start = (n - w) // 2
    window = ecg_like(fs, MAX_READ_SECONDS)
    hea = folder / "holter.hea"
    lines = [f"holter 12 {fs} {n}"] + [f"holter.dat 16 1000/mV 16 0 0 0 0 {lead}" for lead in LEADS]
    hea.write_text("\n".join(lines) + "\n")
    with (folder / "holter.dat").open("wb") as fh:
        fh.truncate(truncate_to if truncate_to is not None else n * 12 * 2)
        if truncate_to is None:
            fh.seek(start * 12 * 2)
            fh.write(np.round(window.T * 1000).astype("<i2").tobytes())
    return hea, n, np.round(window * 1000) / 1000


def test_a_24h_wfdb_holter_is_read_as_its_central_minute(tmp_path: Path) -> None:
    hea, n, window = _sparse_holter(tmp_path, fs=500, hours=24)
    tracemalloc.start()
    t0 = time.perf_counter()
    try:
        rec = read_record(hea)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert time.perf_counter() - t0 < 5.0
    whole = n * 12 * 8  # the record as float64: 4.1 GB
    assert peak < 50e6 < whole / 50
    assert rec.signal.shape == (12, int(MAX_READ_SECONDS * 500))
    assert rec.seconds == pytest.approx(24 * 3600)
    np.testing.assert_allclose(rec.signal, window, atol=1e-9)
    x = preprocess_signal(rec.signal, rec.fs, rec.leads, hea)
    assert x.shape == (12, 1000)


def test_a_wfdb_file_shorter_than_its_header_claims_is_refused(tmp_path: Path) -> None:
    hea, _, _ = _sparse_holter(tmp_path, fs=500, hours=24, truncate_to=12 * 2 * 5000)
    t0 = time.perf_counter()
    with pytest.raises(InputError, match="holds 5000 samples per signal but the header claims 43200000") as err:
        read_record(hea)
    assert time.perf_counter() - t0 < 1.0
    assert str(hea) in str(err.value)


def test_a_wfdb_record_without_a_sample_count_uses_the_file_length(tmp_path: Path) -> None:
    sig = ecg_like(250, 12)
    hea = write_wfdb(tmp_path, "r", sig, 250)
    lines = hea.read_text().splitlines()
    lines[0] = "r 12 250"
    hea.write_text("\n".join(lines) + "\n")
    rec = read_record(hea)
    assert rec.signal.shape == (12, 3000)
    np.testing.assert_allclose(rec.signal, np.round(sig * 1000) / 1000, atol=1e-9)
    with (tmp_path / "r.dat").open("ab") as fh:  # now 70 s: too long to read to the end without a count
        fh.write(b"\0" * (12 * 2 * 250 * 58))
    with pytest.raises(InputError, match="no number of samples"):
        read_record(hea)


def test_only_the_twelve_leads_of_a_wfdb_record_are_read(tmp_path: Path) -> None:
    sig = np.vstack([ecg_like(100, 10), 5 * ecg_like(100, 10, seed=1)[:3]])
    hea = write_wfdb(tmp_path, "r", sig, 100, names=[*LEADS, "V4R", "RESP", "V1-V2"])
    rec = read_record(hea)
    assert rec.leads == list(LEADS)
    np.testing.assert_allclose(rec.signal, np.round(sig[:12] * 1000) / 1000, atol=1e-9)


def test_a_long_npy_is_memory_mapped_and_cut(tmp_path: Path) -> None:
    fs, minutes = 500, 10
    sig = np.zeros((12, fs * 60 * minutes), np.float32)
    n = sig.shape[1]
    start = (n - int(MAX_READ_SECONDS * fs)) // 2
    window = ecg_like(fs, MAX_READ_SECONDS).astype(np.float32)
    sig[:, start : start + window.shape[1]] = window
    npy = tmp_path / "long.npy"
    np.save(npy, sig.T)  # (n, 12)
    del sig
    tracemalloc.start()
    try:
        rec = read_record(npy, sampling_rate=fs)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < n * 12 * 8 / 4
    np.testing.assert_array_equal(rec.signal, window.astype(np.float64))
    assert rec.seconds == pytest.approx(60 * minutes)


def test_an_npy_whose_header_claims_more_than_the_file_is_refused(tmp_path: Path) -> None:
    npy = tmp_path / "liar.npy"
    np.save(npy, np.zeros((1000, 12), np.float32))
    data = npy.read_bytes().replace(b"(1000, 12)", b"(9999999, 12)")
    npy.write_bytes(data)
    with pytest.raises(InputError, match=r"liar\.npy"):
        read_record(npy, sampling_rate=100)


def test_a_long_csv_is_read_up_to_its_first_minute_and_says_so(tmp_path: Path) -> None:
    fs = 100
    sig = ecg_like(fs, MAX_READ_SECONDS)
    buf = io.StringIO()
    buf.write(",".join(LEADS) + "\n")
    np.savetxt(buf, sig.T, delimiter=",", fmt="%.5f")
    buf.write("this,is,never,parsed\n" * 1000)  # beyond the first minute: not read at all
    path = tmp_path / "long.csv"
    path.write_text(buf.getvalue())
    rec = read_record(path, sampling_rate=fs)
    assert rec.signal.shape == (12, int(MAX_READ_SECONDS * fs))
    np.testing.assert_allclose(rec.signal, sig, atol=1e-5)
    assert any("first 60 s" in w for w in rec.warnings)
    exact = tmp_path / "exact.csv"
    exact.write_text(buf.getvalue().split("this,is")[0])
    assert read_record(exact, sampling_rate=fs).warnings == []


@pytest.mark.parametrize(
    ("text", "says"),
    [
        (",".join(f"c{i}" for i in range(65)) + "\n", "65 columns; at most 64"),
        ("1," * 5000 + "1\n", "line longer than 8192"),
        ("1,2,3\n4,5,6\n", "12 leads"),
        (",".join(LEADS) + "\n" + "1," * 11 + "\n", "could not convert"),
        ("\n\n", "empty CSV"),
    ],
)
def test_csv_bounds(tmp_path: Path, text: str, says: str) -> None:
    path = tmp_path / "bad.csv"
    path.write_text(text)
    with pytest.raises(InputError, match=says) as err:
        read_record(path, sampling_rate=100)
    assert str(path) in str(err.value)


def test_the_csv_text_read_is_bounded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(readers, "MAX_CSV_BYTES", 10_000)
    path = tmp_path / "big.csv"
    np.savetxt(path, ecg_like(100, 10).T, delimiter=",", fmt="%.5f")
    with pytest.raises(InputError, match="MiB of CSV text"):
        read_record(path, sampling_rate=100)


# -- amplitude plausibility and units --------------------------------------------------------------------------------
def test_robust_amplitude_ignores_spikes_and_a_lead_off() -> None:
    sig = ecg_like(100, 10)
    spiky = sig.copy()
    spiky[:, 500] = 500.0  # one pacing spike
    spiky[3] = 0.0  # a lead off
    assert robust_amplitude_mv(spiky) == pytest.approx(robust_amplitude_mv(sig), rel=0.2)
    assert 0.3 < robust_amplitude_mv(sig) < 2


def test_a_record_in_uv_labelled_mv_is_refused(tmp_path: Path) -> None:
    hea = write_wfdb(tmp_path, "r", ecg_like(500, 10), 500, units="uV")
    hea.write_text(hea.read_text().replace("/uV", "/mV"))  # says mV, holds µV
    rec = read_record(hea)
    with pytest.raises(InputError, match=r"is the record in µV\?") as err:
        preprocess_signal(rec.signal, rec.fs, rec.leads, hea)
    assert str(hea) in str(err.value)


def test_a_csv_in_uv_needs_its_unit(tmp_path: Path) -> None:
    sig = ecg_like(250, 10)
    path = tmp_path / "uv.csv"
    np.savetxt(path, sig.T * 1000, delimiter=",", fmt="%.3f")
    rec = read_record(path, sampling_rate=250)
    with pytest.raises(InputError, match="signal_unit=uV"):
        preprocess_signal(rec.signal, rec.fs, rec.leads, path)
    rec = read_record(path, sampling_rate=250, signal_unit="uV")
    np.testing.assert_allclose(rec.signal, sig, atol=1e-6)
    preprocess_signal(rec.signal, rec.fs, rec.leads, path)


def test_a_record_in_volts_is_refused_with_a_hint(tmp_path: Path) -> None:
    sig = ecg_like(100, 10)
    path = tmp_path / "v.npy"
    np.save(path, sig / 1000)
    rec = read_record(path, sampling_rate=100)
    with pytest.raises(InputError, match=r"every lead is flat .* is the record in V\?"):
        preprocess_signal(rec.signal, rec.fs, rec.leads, path)
    rec = read_record(path, sampling_rate=100, signal_unit="V")
    preprocess_signal(rec.signal, rec.fs, rec.leads, path)


def test_one_flat_lead_keeps_its_own_message() -> None:
    sig = ecg_like(100, 10)
    sig[4] = 0.0
    with pytest.raises(InputError, match=r"flat line in lead\(s\) aVL"):
        check_signal(sig, "x")


def test_a_wfdb_header_without_units_is_read_as_mv_and_says_so(tmp_path: Path) -> None:
    sig = ecg_like(100, 10)
    hea = write_wfdb(tmp_path, "r", sig, 100)
    hea.write_text(hea.read_text().replace("/mV", ""))
    rec = read_record(hea)
    np.testing.assert_allclose(rec.signal, np.round(sig * 1000) / 1000, atol=1e-9)
    (warning,) = rec.warnings
    assert "no signal unit" in warning
    assert "I, II" in warning
    rec_uv = read_record(hea, signal_unit="uV")  # the option names the unit the header leaves out
    assert rec_uv.warnings == []
    np.testing.assert_allclose(rec_uv.signal, rec.signal / 1000)


# -- lead names --------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("label", "lead"),
    [
        ("MLII", "II"),
        ("MLI", "I"),
        ("D1", "I"),
        ("DII", "II"),
        ("D3", "III"),
        ("avr", "aVR"),
        ("ECG V5", "V5"),
        ("Lead III", "III"),
        ("V1-V2", None),
        ("-aVR", None),
        ("V4R", None),
        ("MLIV", None),
        ("RESP", None),
    ],
)
def test_wfdb_and_european_lead_names(label: str, lead: str | None) -> None:
    assert canonical_lead(label) == lead


def test_bipolar_channels_are_refused_by_name(tmp_path: Path) -> None:
    names = ["I", "II", "III", "aVR", "aVL", "aVF", "V1-V2", "V2-V3", "V3", "V4", "V5", "V6"]
    hea = write_wfdb(tmp_path, "bip", ecg_like(100, 10), 100, names=names)
    with pytest.raises(InputError, match="missing lead") as err:
        read_record(hea)
    message = str(err.value)
    assert "'V1-V2', 'V2-V3'" in message
    assert "V1, V2" in message


def test_a_lead_named_twice_is_refused(tmp_path: Path) -> None:
    names = ["I", "MLII", "II", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6"]
    hea = write_wfdb(tmp_path, "twice", ecg_like(100, 10), 100, names=names)
    with pytest.raises(InputError, match="lead II appears twice"):
        read_record(hea)


# -- results: warnings stated, never NaN -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def predictor() -> EcgPredictor:
    """An untrained tiny ProtoECGNet (its outputs do not matter here, only what reaches the result)."""
    torch.manual_seed(0)
    kwargs = dict(TINY["model_kwargs"])
    model = create_model("ecg_protoecgnet", **kwargs)
    ckpt = Checkpoint(
        task="ecg",
        model_name="ecg_protoecgnet",
        model_kwargs=kwargs,
        state_dict=model.state_dict(),
        labels=list(PTBXL_LABELS),
        preprocessing={"sampling_rate_hz": 100.0, "highpass_hz": 0.5},
    )
    return EcgPredictor(ckpt, PredictOptions(device="cpu"))


def _item(path: Path) -> InputItem:
    return InputItem(name=path.stem, paths={"record": path})


def test_warnings_reach_the_result(predictor: EcgPredictor, tmp_path: Path) -> None:
    hea = write_wfdb(tmp_path, "r", ecg_like(60, 10), 60)
    hea.write_text(hea.read_text().replace("/mV", ""))
    prepared = predictor.prepare(_item(hea))
    (raw,) = predictor.run([prepared])
    out = predictor.finish(prepared, raw, tmp_path / "out")
    warnings = out.data["warnings"]
    assert any("no signal unit" in w for w in warnings)
    assert any("below the model's 100 Hz" in w for w in warnings)
    saved = json.loads((tmp_path / "out" / "r.json").read_text())
    assert saved["warnings"] == warnings


def test_a_clean_record_has_no_warnings_key(predictor: EcgPredictor, tmp_path: Path) -> None:
    hea = write_wfdb(tmp_path, "r", ecg_like(500, 10), 500)
    prepared = predictor.prepare(_item(hea))
    assert "warnings" not in prepared.context


def test_a_non_finite_model_output_is_an_error_not_json(predictor: EcgPredictor, tmp_path: Path) -> None:
    hea = write_wfdb(tmp_path, "r", ecg_like(100, 10), 100)
    prepared = predictor.prepare(_item(hea))
    (raw,) = predictor.run([prepared])
    raw["probs"]["statements"] = np.full_like(raw["probs"]["statements"], np.nan)
    with pytest.raises(InputError, match="not finite") as err:
        predictor.finish(prepared, raw, tmp_path / "out")
    assert str(hea) in str(err.value)
    assert not (tmp_path / "out" / "r.json").exists()


def test_non_finite_similarities_never_reach_an_explanation(predictor: EcgPredictor, tmp_path: Path) -> None:
    hea = write_wfdb(tmp_path, "r", ecg_like(100, 10), 100)
    item = InputItem(name="r", paths={"record": hea}, explain=True)
    prepared = predictor.prepare(item)
    (raw,) = predictor.run([prepared])
    raw["sims"] = np.full_like(raw["sims"], np.nan)
    with pytest.raises(InputError, match="prototype similarities are not finite") as err:
        predictor.finish(prepared, raw, tmp_path / "out")
    assert str(hea) in str(err.value)
    # without an explanation no similarities are kept (they reach no JSON), and the probabilities are finite
    plain = predictor.prepare(_item(hea))
    (raw,) = predictor.run([plain])
    assert "sims" not in raw
    assert "windows" not in raw
    out = predictor.finish(plain, raw, tmp_path / "out")
    assert "explanation" not in out.data


# -- corrupt files: only ever an InputError ----------------------------------------------------------------------------
def test_corrupt_files_only_ever_raise_input_errors(tmp_path: Path) -> None:
    """Seeded byte flips in a vendor DICOM, NPY headers and WFDB headers; every failure names the file."""
    import random
    import warnings

    from pydicom.data import get_testdata_file

    rng = random.Random(0)
    dicom = Path(str(get_testdata_file("waveform_ecg.dcm"))).read_bytes()
    buf = io.BytesIO()
    np.save(buf, np.zeros((50, 12), np.float32))
    npy = buf.getvalue()
    hea = write_wfdb(tmp_path, "r", ecg_like(100, 10), 100)
    header, dat = hea.read_text(), (tmp_path / "r.dat").read_bytes()
    cases: list[tuple[Path, float | None]] = []
    for i in range(160):  # 154 flips the meta group length: pydicom's BytesLengthException
        data = bytearray(dicom)
        for _ in range(rng.randint(1, 20)):
            data[rng.randrange(20_000)] = rng.randrange(256)
        if i % 4 == 0 or i == 154:
            (tmp_path / f"d{i}.dcm").write_bytes(bytes(data))
            cases.append((tmp_path / f"d{i}.dcm", None))
        raw = bytearray(npy)
        for _ in range(rng.randint(1, 5)):
            raw[rng.randrange(len(raw))] = rng.randrange(256)
        (tmp_path / f"n{i}.npy").write_bytes(bytes(raw))  # 7: an unterminated header, tokenize.TokenError
        cases.append((tmp_path / f"n{i}.npy", 100.0))
        folder = tmp_path / f"w{i}"
        folder.mkdir()
        text = list(header)
        for _ in range(rng.randint(1, 6)):
            text[rng.randrange(len(text))] = rng.choice("0123456789 ./x:+-()\n#abcI~")
        (folder / "r.hea").write_text("".join(text))
        (folder / "r.dat").write_bytes(dat[: rng.randrange(len(dat) + 1)])
        cases.append((folder / "r.hea", None))
    unnamed, other = [], []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom warns about every invalid value it meets
        for path, rate in cases:
            try:
                read_record(path, sampling_rate=rate)
            except InputError as exc:
                if str(path) not in str(exc):
                    unnamed.append(str(exc))
            except Exception as exc:
                other.append(f"{path.name}: {type(exc).__name__}")
    assert other == []
    assert unnamed == []
