"""``medinfer predict ecg`` on the classification family: what is the ecg task's own is reading and
preprocessing a record, ProtoECGNet's similarities and best windows, and the prototype explanation."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import numpy as np
import torch

from models.protoecgnet import BRANCH_NAMES, LEADS, ProtoECGNet
from pipelines.common.classification import ClassificationPredictor, Head, head_thresholds
from pipelines.common.errors import InputError
from pipelines.common.task import InputItem, ItemOutput, Prepared
from pipelines.ecg.config import EcgOptions
from pipelines.ecg.explain import (
    DATA_SUFFIX,
    PrototypeTable,
    draw_entry,
    draw_picture,
    drawing_data,
    explain_labels,
    picture_name,
    write_drawing_data,
)
from pipelines.ecg.readers import EcgRecord, central_window, read_record, unit_scale_to_mv
from pipelines.ecg.transforms import check_sampling_rate, preprocess_signal

__all__ = ["HEAD", "PREDICTIONS_CSV", "EcgPredictor", "record_from_array", "synthetic_waveform"]

PREDICTIONS_CSV = "predictions.csv"
#: the one output head: the 71 PTB-XL statements, reported grouped by branch
HEAD = "statements"


def synthetic_waveform(seconds: float = 10.0, fs: float = 100.0, rate_bpm: float = 72.0) -> np.ndarray:
    """A cheap ECG-like (12, n) signal in mV (Gaussian P, QRS and T per beat) for warm-up and benchmarks."""
    t = np.arange(int(seconds * fs)) / fs
    rr = 60.0 / rate_bpm
    phase = (t % rr) - rr * 0.3
    beat = (
        0.15 * np.exp(-((phase + 0.16) ** 2) / (2 * 0.02**2))
        + 1.0 * np.exp(-(phase**2) / (2 * 0.012**2))
        + 0.3 * np.exp(-((phase - 0.25) ** 2) / (2 * 0.04**2))
    )
    gains = np.linspace(0.6, 1.2, 12)[:, None]
    return gains * beat[None, :]


def record_from_array(signal: Any, sampling_rate: float | None, signal_unit: str | None, name: str) -> EcgRecord:
    """A record given in memory (an Open Inference Protocol tensor): (12, n) in the model's lead order, read as an
    NPY record of the same values is (the central ``MAX_READ_SECONDS``, scaled to mV), so that both give the same
    model input.

    Args:
        signal: (12, n) numbers, leads in the order of ``models.protoecgnet.LEADS``.
        sampling_rate: its rate in Hz (required: an array carries none).
        signal_unit: its unit (default mV).
        name: how messages name it.

    Raises:
        InputError: no or a refused rate, an unknown unit, not (12, n) numbers.
    """
    if sampling_rate is None:
        raise InputError(name, "a signal given as a tensor carries no sampling rate; give the sampling_rate parameter")
    fs = check_sampling_rate(sampling_rate, name)
    scale = unit_scale_to_mv(signal_unit or "mV", name)
    arr = np.asarray(signal)
    if arr.dtype.kind not in "iuf":
        raise InputError(name, f"a signal must hold numbers, got {arr.dtype}")
    if arr.ndim != 2 or arr.shape[0] != len(LEADS):
        raise InputError(
            name, f"expected a (12, samples) signal in the model's lead order, got shape {list(arr.shape)}"
        )
    return EcgRecord(central_window(arr, fs) * scale, fs, None, Path(name), arr.shape[1])


class EcgPredictor(ClassificationPredictor[EcgOptions]):
    """ProtoECGNet predictor: records in batches of ``batch_size``; probabilities and decisions by branch.

    Args:
        checkpoint: an ``ecg`` checkpoint.
        options: ``batch_size`` records per forward pass, ``amp`` (CUDA only), ``explain``; task options
            ``sampling_rate`` for CSV/NPY inputs and ``signal_unit``.

    What the reading had to assume (units, a CSV read in part, a rate below the model's) is stated in the result's
    ``warnings``; a record whose model output is not finite is an error, never a result with NaN.
    """

    options_model = EcgOptions
    #: sequential: on 2 cores, reading ahead made `medinfer predict ecg` 10-15% slower (benchmarks/ecg_predict.py)
    prefetch = 0
    id_field = "record"
    csv_name = PREDICTIONS_CSV

    def __init__(self, checkpoint: Any, options: Any) -> None:
        super().__init__(checkpoint, options)
        self.model: ProtoECGNet
        self.highpass_hz = float(checkpoint.preprocessing.get("highpass_hz", 0.5))
        self.fs = float(checkpoint.preprocessing.get("sampling_rate_hz", 100.0))
        self.sources: list[dict[str, Any]] = list(checkpoint.extra.get("prototype_sources", []))
        self.segments: dict[str, torch.Tensor] = dict(checkpoint.extra.get("prototype_segments", {}))

    def heads_from_checkpoint(self) -> list[Head]:
        labels = tuple(self.checkpoint.labels)
        groups = {b: tuple(int(i) for i in self.model.branch_index(b).cpu().tolist()) for b in BRANCH_NAMES}
        thresholds = head_thresholds(self.checkpoint, HEAD, len(labels))
        return [Head(HEAD, labels, "sigmoid", thresholds, groups)]

    @property
    def thresholds(self) -> np.ndarray:
        return np.asarray(self.heads[0].thresholds, dtype=np.float64)

    # -- the task's own steps ----------------------------------------------------------------------------------
    def read(self, item: InputItem, options: EcgOptions) -> tuple[np.ndarray, dict[str, Any]]:
        """A record file, or a signal given in memory (``item.data``: see :func:`record_from_array`), preprocessed
        by the one rule set (``preprocess_signal``)."""
        if item.data is not None:
            path: str | Path = item.name
            rec = record_from_array(item.data, options.sampling_rate, options.signal_unit, item.name)
        else:
            path = next(iter(item.paths.values()))
            rec = read_record(path, options.sampling_rate, options.signal_unit)
        x = preprocess_signal(rec.signal, rec.fs, rec.leads, path, target_fs=self.fs, highpass_hz=self.highpass_hz)
        context: dict[str, Any] = {"input_fs": rec.fs, "input_seconds": round(rec.seconds, 3)}
        warnings = list(rec.warnings)
        if rec.fs < self.fs:
            warnings.append(
                f"sampled at {rec.fs:g} Hz, below the model's {self.fs:g} Hz: upsampled, so nothing above "
                f"{rec.fs / 2:g} Hz is in it"
            )
        if warnings:
            context["warnings"] = warnings
        return x, context

    def finish(self, prepared: Prepared, raw: Any, out_dir: Path | None) -> ItemOutput:
        """The result of one record; prototype similarities with NaN or infinity are this record's error, never
        JSON (the probabilities are checked by ``ClassificationPredictor.check_finite``)."""
        if self.wants_explanation(prepared.item):
            extras = [raw.get("sims"), *(raw.get("windows") or {}).values()]
            if any(v is not None and not np.all(np.isfinite(np.asarray(v, dtype=np.float64))) for v in extras):
                item = prepared.item
                shown = next(iter(item.paths.values())) if item.paths else item.name
                raise InputError(
                    shown, "the model's prototype similarities are not finite (NaN or inf) for this record"
                )
        return super().finish(prepared, raw, out_dir)

    def forward(self, x: torch.Tensor, explain: Any) -> tuple[dict[str, Any], dict[str, Any]]:
        """Fusion logits; with explanations, the similarities and every prototype's window similarities of the
        same pass."""
        if not any(explain):
            return {HEAD: self.model(x).logits}, {}
        out, windows = self.model.forward_windows(x)
        extras: dict[str, Any] = {
            "sims": out.similarities.float().cpu().numpy(),
            "windows": {name: w.float().cpu().numpy() for name, w in windows.items()},
        }
        return {HEAD: out.logits}, extras

    def probabilities(self, x: torch.Tensor | np.ndarray) -> np.ndarray:
        """Fusion probabilities (B, L) of a preprocessed batch (B, 12, N)."""
        return self.predict_arrays(x)[0][HEAD]

    @functools.cached_property
    def prototype_table(self) -> PrototypeTable:
        """The model's prototypes, classes and fusion weights as arrays (made on the first explanation)."""
        return PrototypeTable.of(self.model, self.checkpoint.labels, self.sources)

    def explain(self, prepared: Prepared, raw: dict[str, Any], out_dir: Path, output: ItemOutput) -> dict[str, Any]:
        """Each predicted-positive label's (and each requested label's) prototypes and logit parts; with
        ``pictures``, one picture per label on ECG paper (drawn now, or deferred: :meth:`draw`) and the drawing
        data (``<name>_explain.json``) a front end can draw them from."""
        options: EcgOptions = prepared.options
        table = self.prototype_table
        head, probs = self.heads[0], raw["probs"][HEAD]
        entries = explain_labels(
            table,
            probs,
            self.thresholds,
            head.decide(probs),
            raw["sims"],
            raw["windows"],
            options.explain_labels,
            self.fs,
        )
        explanation: dict[str, Any] = {
            "method": "ProtoECGNet prototypes: logit = bias + sum over prototypes of weight x similarity",
            "units": {"signal": "mV", "time": "s", "sampling_rate_hz": self.fs},
            "labels": entries,
        }
        if not entries:
            explanation["note"] = "no label is predicted positive; name labels to explain with explain_labels"
        if not options.pictures or not entries:
            return explanation
        name = prepared.item.name
        segments = {}
        for entry in entries:
            proto = entry["prototypes"][0] if entry["prototypes"] else None
            seg = self.segments.get(proto["branch"]) if proto else None
            if proto is not None and seg is not None and proto["source"]["start_sample"] is not None:
                segments[entry["label"]] = seg[proto["branch_prototype"]].float().numpy()
            entry["picture"] = picture_name(name, entry["label"])
        data = drawing_data(prepared.data, self.fs, entries, segments)
        output.add("explanation_data", write_drawing_data(data, out_dir / f"{name}{DATA_SUFFIX}"), out_dir)
        defer = self.options.defer_pictures
        for entry in entries:
            png = out_dir / entry["picture"]
            if not defer:
                draw_entry(data, entry, png)
            output.add("explanation", png, out_dir, deferred=defer)
        return explanation

    def draw(self, out_dir: Path, rel: str) -> Path | None:
        """A deferred explanation picture, drawn from the record's ``<name>_explain.json``."""
        return draw_picture(out_dir, rel)

    def warmup(self) -> None:
        x = preprocess_signal(synthetic_waveform(), 100.0, None, "<warmup>", highpass_hz=self.highpass_hz)
        self.predict_arrays(x[None])
