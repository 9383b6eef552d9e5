"""ProtoECGNet explanations: each explained label's logit split into its prototypes' contributions, the matched
window where the similarity peaks, PTB-XL statement names, and the 12-lead picture on ECG paper (its claims checked
on the figure itself), drawn now or deferred and drawn from its data later."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from models.protoecgnet import LEADS, PTBXL_LABELS
from models.registry import create_model
from pipelines.common.checkpoint import Checkpoint
from pipelines.common.config import ConfigError
from pipelines.common.task import InputItem, PredictOptions
from pipelines.ecg.config import TINY, EcgOptions
from pipelines.ecg.explain import (
    DATA_SUFFIX,
    MM_PER_MV,
    MM_PER_S,
    ROW_MV,
    PrototypeTable,
    decode_signal,
    encode_signal,
    explain_labels,
    explanation_figure,
    picture_name,
)
from pipelines.ecg.infer import EcgPredictor, synthetic_waveform
from pipelines.ecg.stages import project_prototypes
from pipelines.ecg.statements import STATEMENTS

FS = 100.0


@pytest.fixture(scope="module")
def checkpoint() -> Checkpoint:
    """A tiny ProtoECGNet whose prototypes were projected onto 6 random records carrying every label."""
    torch.manual_seed(0)
    kwargs = dict(TINY["model_kwargs"])
    model = create_model("ecg_protoecgnet", **kwargs)
    rng = np.random.default_rng(0)
    x = torch.as_tensor(rng.normal(0, 0.3, (6, 12, 1000)), dtype=torch.float32)
    sources, segments = project_prototypes(model, x, np.ones((6, 71)), [f"train{i}" for i in range(6)])
    # thresholds that make the 2 most probable labels of the test record positive (few pictures: fast tests)
    with torch.no_grad():
        probs = torch.sigmoid(model(torch.as_tensor(_record()[None])).logits[0]).numpy()
    thresholds = np.where(probs >= np.sort(probs)[-2], 0.0, 1.0).tolist()
    return Checkpoint(
        task="ecg",
        model_name="ecg_protoecgnet",
        model_kwargs=kwargs,
        state_dict=model.state_dict(),
        labels=list(PTBXL_LABELS),
        preprocessing={"sampling_rate_hz": FS, "highpass_hz": 0.5},
        extra={"prototype_sources": sources, "prototype_segments": segments, "thresholds": thresholds},
    )


def _predictor(checkpoint: Checkpoint, **options: object) -> EcgPredictor:
    return EcgPredictor(checkpoint, PredictOptions(device="cpu", explain=True, **options))  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def predictor(checkpoint: Checkpoint) -> EcgPredictor:
    return _predictor(checkpoint)


def _record(seed: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (synthetic_waveform(rate_bpm=60 + 10 * seed) + rng.normal(0, 0.02, (12, 1000))).astype(np.float32)


def _explained(predictor: EcgPredictor, tmp_path: Path, name: str = "rec", **task: object) -> tuple[dict, Path]:
    item = InputItem(name, {}, explain=True, options=EcgOptions(sampling_rate=FS, **task), data=_record())  # type: ignore[arg-type]
    prepared = predictor.prepare(item)
    (raw,) = predictor.run([prepared])
    out = tmp_path / "out"
    return predictor.finish(prepared, raw, out).data, out


def test_one_forward_pass_gives_the_logits_and_the_window_similarities(predictor: EcgPredictor) -> None:
    model = predictor.model
    x = torch.as_tensor(_record()[None])
    with torch.no_grad():
        plain = model(x)
        out, windows = model.forward_windows(x)
        for a, b in zip(plain, out, strict=True):
            torch.testing.assert_close(a, b)
        slices = model.prototype_slices()
        for name, w in windows.items():
            branch = model.branch(name)
            torch.testing.assert_close(w, branch.window_similarities(branch.latent(x)))
            torch.testing.assert_close(w.mean(-1), out.similarities[:, slices[name]])


def test_each_labels_logit_is_its_bias_plus_its_prototypes_contributions(predictor: EcgPredictor) -> None:
    """Closed form: ``logit = bias + Σ w·s``; the listed prototypes are the label's own, largest contribution first,
    each contribution its weight times its similarity; explained = predicted positive or requested."""
    x = torch.as_tensor(_record()[None])
    with torch.no_grad():
        out, windows = predictor.model.forward_windows(x)
    logits = out.logits[0].double().numpy()
    probs = 1 / (1 + np.exp(-logits))
    thresholds = np.sort(probs)[-4] * np.ones(71)  # the 4 most probable labels are positive
    table = PrototypeTable.of(predictor.model, PTBXL_LABELS, [])
    sims = out.similarities[0].numpy()
    win = {k: v[0].numpy() for k, v in windows.items()}
    entries = explain_labels(table, probs, thresholds, probs >= thresholds, sims, win, ("LVOLT",), FS, k=2)
    positives = {PTBXL_LABELS[i] for i in np.flatnonzero(probs >= thresholds)}
    assert len(positives) == 4
    assert {e["label"] for e in entries} == positives | {"LVOLT"}
    assert [e["label"] for e in entries] == [c for c in PTBXL_LABELS if c in positives | {"LVOLT"}]
    weight = predictor.model.fusion.weight.detach().double().numpy()
    for e in entries:
        i = PTBXL_LABELS.index(e["label"])
        assert e["positive"] == (e["label"] in positives)
        assert e["requested"] == (e["label"] == "LVOLT")
        assert e["name"] == STATEMENTS[e["label"]]
        assert e["logit"] == pytest.approx(logits[i], abs=1e-5)
        assert e["bias"] + e["own_prototypes"] + e["other_prototypes"] == pytest.approx(e["logit"], abs=1e-5)
        own = np.flatnonzero(table.label_of == i)
        assert e["own_prototypes"] == pytest.approx(float((weight[i, own] * sims[own]).sum()), abs=1e-5)
        assert len(e["prototypes"]) == 2
        contributions = [p["contribution"] for p in e["prototypes"]]
        assert contributions == sorted(contributions, reverse=True)
        assert contributions[0] == pytest.approx(float((weight[i, own] * sims[own]).max()), abs=1e-5)
        for p in e["prototypes"]:
            assert p["label"] == e["label"]  # the label's own prototypes
            assert p["contribution"] == pytest.approx(p["weight"] * p["similarity"], abs=1e-5)
            assert p["weight"] == pytest.approx(weight[i, p["prototype"]], abs=1e-6)


def test_the_matched_window_is_where_the_similarity_peaks(predictor: EcgPredictor) -> None:
    model = predictor.model
    x = torch.as_tensor(_record()[None])
    with torch.no_grad():
        out, windows = model.forward_windows(x)
        morph = model.branch("morphology")
        peaks = morph.window_similarities(morph.latent(x))[0].numpy()  # (P, nW), computed on its own
    table = PrototypeTable.of(model, PTBXL_LABELS, [])
    probs = np.zeros(71)
    win = {k: v[0].numpy() for k, v in windows.items()}
    entries = explain_labels(
        table, probs, np.ones(71), np.zeros(71, bool), out.similarities[0].numpy(), win, ("STE_", "NORM"), FS
    )
    ste, norm = (next(e for e in entries if e["label"] == c) for c in ("STE_", "NORM"))
    for p in ste["prototypes"]:
        w = p["window"]
        best = int(np.argmax(peaks[p["branch_prototype"]]))
        assert w["index"] == best
        assert w["similarity"] == pytest.approx(float(peaks[p["branch_prototype"], best]), abs=1e-5)
        # 3 of the 32 feature columns: about 0.94 s, at the window's place in the record
        assert w["start_sample"] == int(best * 1000 / 32)
        assert 90 <= w["end_sample"] - w["start_sample"] <= 95
        assert w["start_s"] == pytest.approx(w["start_sample"] / FS)
    for p in norm["prototypes"]:  # diffuse prototypes are global: the whole record
        assert (p["window"]["start_sample"], p["window"]["end_sample"]) == (0, 1000)


def test_explained_labels_are_the_predicted_positives_and_the_requested(
    predictor: EcgPredictor, tmp_path: Path
) -> None:
    data, out = _explained(predictor, tmp_path, explain_labels=("INVT",))
    positive = {c for group in data["positive"].values() for c in group}
    labels = data["explanation"]["labels"]
    assert {e["label"] for e in labels} == positive | {"INVT"}
    for e in labels:
        branch = e["branch"]
        assert e["probability"] == data["probabilities"][branch][e["label"]]
        assert e["positive"] == data["decisions"][branch][e["label"]]
        assert e["positive"] == (e["probability"] >= e["threshold"])
        assert e["picture"] == picture_name("rec", e["label"])
        assert (out / e["picture"]).is_file()
        source = e["prototypes"][0]["source"]
        assert source["record_id"].startswith("train")  # projected onto a training record
    assert {"rec.json", f"rec{DATA_SUFFIX}"} <= set(data["files"])


def test_no_positive_label_says_how_to_ask(checkpoint: Checkpoint, tmp_path: Path) -> None:
    ckpt = dataclasses.replace(checkpoint, extra={**checkpoint.extra, "thresholds": [1.0] * 71})
    data, out = _explained(_predictor(ckpt), tmp_path)
    assert data["explanation"]["labels"] == []
    assert "explain_labels" in data["explanation"]["note"]
    assert not list(out.glob("*.png"))


def test_unknown_labels_to_explain_are_refused_by_name() -> None:
    assert EcgOptions.parse({"explain_labels": "STE_, INVT,STE_"}).explain_labels == ("STE_", "INVT")
    assert EcgOptions.parse({"explain_labels": ["AFIB"]}).explain_labels == ("AFIB",)
    with pytest.raises(ConfigError, match=r"unknown PTB-XL statement code ste_ \(did you mean STE_\?\)"):
        EcgOptions.parse({"explain_labels": "ste_"})
    with pytest.raises(ConfigError, match="XYZ"):
        EcgOptions.parse({"explain_labels": "AFIB,XYZ"})


def test_statement_names_cover_the_models_labels_in_order() -> None:
    assert tuple(STATEMENTS) == PTBXL_LABELS
    assert STATEMENTS["STE_"] == "non-specific ST elevation"
    assert STATEMENTS["STD_"] == "non-specific ST depression"


# -- the picture -----------------------------------------------------------------------------------------------
def _entry(predictor: EcgPredictor, tmp_path: Path) -> tuple[dict, np.ndarray, np.ndarray]:
    data, out = _explained(predictor, tmp_path, explain_labels=("STE_",))
    entry = next(e for e in data["explanation"]["labels"] if e["label"] == "STE_")
    drawing = json.loads((out / f"rec{DATA_SUFFIX}").read_text())
    signal, segment = decode_signal(drawing["signal"]), decode_signal(drawing["segments"]["STE_"])
    return entry, signal, segment


def test_the_picture_is_on_ecg_paper_and_says_what_it_shows(predictor: EcgPredictor, tmp_path: Path) -> None:
    from matplotlib.collections import LineCollection
    from matplotlib.patches import Rectangle

    entry, signal, segment = _entry(predictor, tmp_path)
    np.testing.assert_allclose(signal, _record_input(predictor), atol=6e-4)  # the model input, in mV
    fig = explanation_figure(signal, entry, segment, FS)
    fig.canvas.draw()
    record_ax, source_ax = fig.axes
    text = " ".join(t.get_text() for t in fig.texts)
    assert "STE_: non-specific ST elevation" in text
    assert f"p = {entry['probability']:.3f}, threshold {entry['threshold']:.3f}" in text
    assert ("positive" if entry["positive"] else "negative, explained on request") in text
    proto = entry["prototypes"][0]
    assert f"top prototype {proto['prototype']}" in text
    assert f"{proto['contribution']:+.3g} of logit" in text
    for ax in (record_ax, source_ax):
        # paper speed and gain: axes size in mm over the data range it shows
        box = ax.get_window_extent().transformed(fig.dpi_scale_trans.inverted())
        x0, x1 = ax.get_xlim()
        y0, y1 = ax.get_ylim()
        assert box.width * 25.4 / (x1 - x0) == pytest.approx(MM_PER_S, rel=1e-3)
        assert box.height * 25.4 / (y1 - y0) == pytest.approx(MM_PER_MV, rel=1e-3)
        assert [t.get_text() for t in ax.get_yticklabels()] == list(LEADS)
    # the highlighted window is the matched one
    (span,) = [p for p in record_ax.patches if isinstance(p, Rectangle)]
    assert span.get_x() == pytest.approx(proto["window"]["start_s"])
    assert span.get_x() + span.get_width() == pytest.approx(proto["window"]["end_s"])
    # the traces are the record and the prototype's source window, in mV, one row per lead
    traces = [c for c in record_ax.collections if isinstance(c, LineCollection) and len(c.get_segments()) == 12]
    lines = traces[0].get_segments()
    for i in range(12):
        np.testing.assert_allclose(lines[i][:, 1] + ROW_MV * i, signal[i], atol=1e-5)
        np.testing.assert_allclose(lines[i][:, 0], np.arange(1000) / FS)
    (source_trace,) = [
        c for c in source_ax.collections if isinstance(c, LineCollection) and len(c.get_segments()) == 12
    ]
    src = proto["source"]
    n = src["end_sample"] - src["start_sample"]
    for i, line in enumerate(source_trace.get_segments()):
        np.testing.assert_allclose(line[:, 1] + ROW_MV * i, segment[i, :n], atol=1e-5)
        assert line[0, 0] == pytest.approx(src["start_s"])
    assert f"from training record {src['record_id']}" in source_ax.get_title(loc="left")


def _record_input(predictor: EcgPredictor) -> np.ndarray:
    item = InputItem("rec", {}, options=EcgOptions(sampling_rate=FS), data=_record())
    return predictor.prepare(item).data


def test_deferred_pictures_are_drawn_later_from_their_data(checkpoint: Checkpoint, tmp_path: Path) -> None:
    eager, eager_out = _explained(_predictor(checkpoint), tmp_path / "eager")
    lazy_predictor = _predictor(checkpoint, defer_pictures=True)
    item = InputItem("rec", {}, explain=True, options=EcgOptions(sampling_rate=FS), data=_record())
    prepared = lazy_predictor.prepare(item)
    (raw,) = lazy_predictor.run([prepared])
    out = tmp_path / "lazy"
    result = lazy_predictor.finish(prepared, raw, out)
    assert result.data["explanation"] == eager["explanation"]
    deferred = [f for f in result.files if f.deferred]
    assert deferred
    assert {f.role for f in deferred} == {"explanation"}
    assert all(f.to_dict()["deferred"] is True for f in deferred)
    for f in deferred:
        assert not (out / f.path).exists()
        assert lazy_predictor.draw(out, f.path) == out / f.path
        with Image.open(out / f.path) as drawn, Image.open(eager_out / f.path) as now:
            assert np.array_equal(np.asarray(drawn.convert("RGB")), np.asarray(now.convert("RGB")))
    assert lazy_predictor.draw(out, "rec.json") is None
    assert lazy_predictor.draw(out, "other_explain_NORM.png") is None
    assert not list(out.glob(".*.tmp"))


def test_no_pictures_writes_the_explanation_only(predictor: EcgPredictor, tmp_path: Path) -> None:
    data, out = _explained(predictor, tmp_path, explain_labels=("NORM",), pictures=False)
    assert data["explanation"]["labels"]
    assert sorted(p.name for p in out.iterdir()) == ["predictions.csv", "rec.json"]


def test_signals_are_kept_to_the_microvolt() -> None:
    rng = np.random.default_rng(3)
    signal = rng.normal(0, 1, (12, 1000)).astype(np.float32)
    encoded = encode_signal(signal)
    assert encoded["shape"] == [12, 1000]
    np.testing.assert_allclose(decode_signal(encoded), signal, atol=5e-4 + 1e-6)
    assert json.loads(json.dumps(encoded)) == encoded
    clipped = decode_signal(encode_signal(np.array([[40.0, -40.0]])))
    np.testing.assert_array_equal(clipped, np.array([[32.767, -32.768]], dtype=np.float32))


def test_label_codes_make_safe_picture_names() -> None:
    assert picture_name("r", "LAO/LAE") == "r_explain_LAO_LAE.png"
    assert picture_name("r", "PRC(S)") == "r_explain_PRC_S.png"
    assert picture_name("r", "STE_") == "r_explain_STE.png"
    names = {picture_name("r", c) for c in PTBXL_LABELS}
    assert len(names) == len(PTBXL_LABELS)  # no two statements share a picture
