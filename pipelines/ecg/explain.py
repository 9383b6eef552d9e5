"""Case-based explanations of ProtoECGNet: for each label explained, the prototypes behind its logit, where each
matched the record, and the training record it came from; and the picture of it on ECG paper.

The fusion layer makes each label's logit a sum over prototypes, ``logit_l = bias_l + Σ_j w_lj · s_j``, with
``s_j`` the similarity of prototype ``j`` to the record (for time-localised prototypes, the mean over windows of
the scaled cosine similarity) and ``w_lj`` the class-connection weight. :func:`explain_labels` splits each
explained label's logit into its bias, its own prototypes' contributions ``w_lj · s_j`` and the rest, and lists
the own prototypes with the largest contributions; a prototype's matched window is where its window similarity
peaks. Everything comes from the prediction's own forward pass (:meth:`ProtoECGNet.forward_windows`); nothing is
recomputed.

The picture (:func:`explanation_figure`) is a standard 12 × 1 layout on ECG paper: 25 mm/s, 10 mm/mV, 1 mm minor
and 5 mm major grid, a 1 mV calibration pulse before each lead, the lead names, the matched window highlighted on
every lead, and the prototype's source window beside it on the same paper. Drawing is far slower than explaining,
so pictures can be drawn later from ``<name>_explain.json`` (:func:`draw_picture`): the service draws one when its
link is first fetched.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from models.protoecgnet import BRANCH_NAMES, LEADS, ProtoECGNet
from pipelines.common.paths import file_safe_names
from pipelines.common.plots import new_figure, save_figure
from pipelines.ecg.stages import window_to_samples
from pipelines.ecg.statements import statement_name

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = [
    "DATA_SUFFIX",
    "MM_PER_MV",
    "MM_PER_S",
    "ROW_MV",
    "PrototypeTable",
    "decode_signal",
    "draw_entry",
    "draw_picture",
    "drawing_data",
    "encode_signal",
    "explain_labels",
    "explanation_figure",
    "picture_name",
    "write_drawing_data",
]

#: ECG paper: paper speed and gain
MM_PER_S = 25.0
MM_PER_MV = 10.0
#: baseline-to-baseline distance of the leads' rows, in mV (15 mm)
ROW_MV = 1.5
#: what the drawing data of a record's pictures is written as: ``<name>_explain.json``
DATA_SUFFIX = "_explain.json"
#: a picture: ``<name>_explain_<label>.png``
PICTURE_INFIX = "_explain_"
#: own prototypes listed per label
TOP_K = 3
_MM = 1 / 25.4  # inches per mm
_HIGHLIGHT = "#f28e2b"


def picture_name(record: str, label: str) -> str:
    """The PNG of one label's explanation, the label made file-safe (``LAO/LAE`` → ``LAO_LAE``, ``STE_`` → ``STE``:
    :func:`~pipelines.common.paths.file_safe_names`)."""
    return f"{record}{PICTURE_INFIX}{file_safe_names([label])[0]}.png"


@dataclass(frozen=True)
class PrototypeTable:
    """What the explanation needs of a loaded model, as arrays (made once per predictor).

    Attributes:
        labels: the model's label codes.
        weight: (L, P) fusion (class-connection) weights; ``bias``: (L,).
        label_of: (P,) the label index each prototype belongs to.
        branch_of: (P,) branch name of each prototype; ``local``: (P,) its index within the branch.
        windowed: (P,) whether the prototype is time-localised (slid over windows).
        time_len: (P,) its width in feature columns; ``columns``: feature columns; ``num_samples``: input samples.
        sources: (branch, local index) → the training source recorded by projection.
    """

    labels: tuple[str, ...]
    weight: np.ndarray
    bias: np.ndarray
    label_of: np.ndarray
    branch_of: tuple[str, ...]
    local: np.ndarray
    windowed: np.ndarray
    time_len: np.ndarray
    columns: int
    num_samples: int
    sources: dict[tuple[str, int], dict[str, Any]]

    @classmethod
    def of(cls, model: ProtoECGNet, labels: Sequence[str], sources: Iterable[dict[str, Any]]) -> PrototypeTable:
        label_of, branch_of, local, windowed, time_len = [], [], [], [], []
        for name in BRANCH_NAMES:
            b = model.branch(name)
            classes = model.branch_index(name).cpu()[b.prototype_classes()].tolist()
            for p in range(b.num_prototypes):
                label_of.append(int(classes[p]))
                branch_of.append(name)
                local.append(p)
                windowed.append(b.kind == "2d" and b.proto_time_len < model.feature_columns)
                time_len.append(b.proto_time_len)
        return cls(
            labels=tuple(labels),
            weight=model.fusion.weight.detach().double().cpu().numpy(),
            bias=model.fusion.bias.detach().double().cpu().numpy(),
            label_of=np.asarray(label_of),
            branch_of=tuple(branch_of),
            local=np.asarray(local),
            windowed=np.asarray(windowed),
            time_len=np.asarray(time_len),
            columns=model.feature_columns,
            num_samples=model.num_samples,
            sources={(s["branch"], int(s["prototype"])): s for s in sources if "branch" in s and "prototype" in s},
        )

    def window(self, j: int, windows: dict[str, np.ndarray], fs: float) -> dict[str, Any]:
        """Where prototype ``j`` matched: its best window (samples, seconds, peak similarity), or the whole record
        for a global prototype."""
        branch, p = self.branch_of[j], int(self.local[j])
        row = np.asarray(windows[branch][p], dtype=np.float64)
        if self.windowed[j]:
            w = int(np.argmax(row))
            start, end = window_to_samples(w, int(self.time_len[j]), self.columns, self.num_samples)
            peak = float(row[w])
        else:
            w, start, end, peak = 0, 0, self.num_samples, float(row.max())
        return {
            "index": w,
            "start_sample": start,
            "end_sample": end,
            "start_s": round(start / fs, 4),
            "end_s": round(end / fs, 4),
            "similarity": round(peak, 6),
        }

    def source(self, j: int, fs: float) -> dict[str, Any]:
        """The training record window prototype ``j`` was projected onto (``None`` fields when never projected)."""
        src = self.sources.get((self.branch_of[j], int(self.local[j])), {})
        start, end = src.get("start"), src.get("end")
        return {
            "record_id": src.get("record_id"),
            "start_sample": start,
            "end_sample": end,
            "start_s": None if start is None else round(int(start) / fs, 4),
            "end_s": None if end is None else round(int(end) / fs, 4),
            "score": src.get("score"),
        }


def explain_labels(
    table: PrototypeTable,
    probs: np.ndarray,
    thresholds: np.ndarray,
    positive: np.ndarray,
    sims: np.ndarray,
    windows: dict[str, np.ndarray],
    requested: Sequence[str] = (),
    fs: float = 100.0,
    k: int = TOP_K,
) -> list[dict[str, Any]]:
    """The explanation of each predicted-positive label and each requested one, in the model's label order.

    Args:
        table: the model's :class:`PrototypeTable`.
        probs: (L,) probabilities; ``thresholds``: (L,) decision thresholds; ``positive``: (L,) the decisions
            (``Head.decide``).
        sims: (P,) the record's prototype similarities (what the fusion layer weighs).
        windows: per branch, (P_branch, nW) the similarity of each prototype to each window.
        requested: label codes to explain whatever their decision.
        fs: the model's sampling rate, for seconds.
        k: own prototypes listed per label.

    Returns:
        Per label: its code, full name, branch, probability, threshold, decision, whether it was requested, the
        logit and its parts (``bias + own_prototypes + other_prototypes``), and its ``k`` own prototypes with the
        largest contributions (similarity, weight, contribution, matched window, training source).
    """
    sims = np.asarray(sims, dtype=np.float64)
    wanted = set(requested)
    chosen = [i for i, c in enumerate(table.labels) if positive[i] or c in wanted]
    out = []
    for i in chosen:
        contributions = table.weight[i] * sims
        own = np.flatnonzero(table.label_of == i)
        top = own[np.argsort(-contributions[own], kind="stable")[:k]]
        own_sum = float(contributions[own].sum())
        code = table.labels[i]
        out.append(
            {
                "label": code,
                "name": statement_name(code),
                "branch": table.branch_of[int(own[0])] if len(own) else None,
                "probability": round(float(probs[i]), 6),
                "threshold": round(float(thresholds[i]), 6),
                "positive": bool(positive[i]),
                "requested": code in wanted,
                "logit": round(float(table.bias[i] + contributions.sum()), 6),
                "bias": round(float(table.bias[i]), 6),
                "own_prototypes": round(own_sum, 6),
                "other_prototypes": round(float(contributions.sum()) - own_sum, 6),
                "prototypes": [
                    {
                        "prototype": int(j),
                        "branch": table.branch_of[int(j)],
                        "branch_prototype": int(table.local[j]),
                        "label": table.labels[int(table.label_of[j])],
                        "similarity": round(float(sims[j]), 6),
                        "weight": round(float(table.weight[i, j]), 6),
                        "contribution": round(float(contributions[j]), 6),
                        "window": table.window(int(j), windows, fs),
                        "source": table.source(int(j), fs),
                    }
                    for j in top
                ],
            }
        )
    return out


# -- the picture ---------------------------------------------------------------------------------------------
def _grid(ax: Any, x0: float, x1: float, y0: float, y1: float) -> None:
    """ECG paper over ``[x0, x1] × [y0, y1]`` (s, mV): 1 mm minor and 5 mm major lines."""
    from matplotlib.collections import LineCollection

    for step, color, width in ((0.04, "#f6d0d0", 0.4), (0.2, "#e69a9a", 0.8)):
        xs = np.arange(np.ceil(x0 / step) * step, x1 + 1e-9, step)
        ys = np.arange(np.ceil(y0 / (step * 2.5)) * step * 2.5, y1 + 1e-9, step * 2.5)  # 0.04 s ↔ 0.1 mV (1 mm)
        segments = [((x, y0), (x, y1)) for x in xs] + [((x0, y), (x1, y)) for y in ys]
        ax.add_collection(LineCollection(segments, colors=color, linewidths=width, zorder=0))


def _leads(ax: Any, t: np.ndarray, signal: np.ndarray, color: str) -> None:
    """The 12 leads, lead ``i`` on the baseline ``-i · ROW_MV``."""
    from matplotlib.collections import LineCollection

    offsets = -ROW_MV * np.arange(len(LEADS))[:, None]
    lines = np.stack([np.broadcast_to(t, signal.shape), signal + offsets], axis=-1)
    ax.add_collection(LineCollection(list(lines), colors=color, linewidths=0.8, zorder=3))


def _panel(fig: Figure, rect_mm: tuple[float, float, float, float], size_mm: tuple[float, float], x0: float,
           x1: float) -> Any:  # fmt: skip
    """An axes placed in mm from the figure's bottom left, showing ``[x0, x1]`` s and the 12 rows at paper scale."""
    left, bottom, width, height = rect_mm
    fw, fh = size_mm
    ax = fig.add_axes((left / fw, bottom / fh, width / fw, height / fh))
    y0, y1 = -ROW_MV * (len(LEADS) - 1) - 1.0, 1.5
    ax.set_xlim(x0, x1)
    ax.set_ylim(y0, y1)
    _grid(ax, x0, x1, y0, y1)
    ax.set_yticks(-ROW_MV * np.arange(len(LEADS)), LEADS, fontsize=8)
    ax.tick_params(axis="x", labelsize=7)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    return ax


def explanation_figure(
    signal: np.ndarray,
    entry: dict[str, Any],
    segment: np.ndarray | None,
    fs: float = 100.0,
) -> Figure:
    """One label's explanation on ECG paper: the record with the top prototype's matched window highlighted,
    and beside it the window of the training record the prototype was projected onto.

    Args:
        signal: (12, N) the model's input in mV (model lead order).
        entry: one item of :func:`explain_labels` (its first prototype is drawn).
        segment: (12, S) the prototype's source window in mV (``None``: never projected).
        fs: sampling rate in Hz.

    Returns:
        The figure, sized so that the paper is exactly 25 mm/s and 10 mm/mV; nothing is drawn on a screen.
    """
    proto = entry["prototypes"][0] if entry["prototypes"] else None
    n = signal.shape[1]
    pulse = 0.28  # s before 0 for the calibration pulse
    rec_w = (n / fs + pulse) * MM_PER_S
    src = proto["source"] if proto else {}
    has_source = segment is not None and src.get("start_sample") is not None
    seg_len = int(src["end_sample"]) - int(src["start_sample"]) if has_source else 0
    src_w = max(seg_len / fs * MM_PER_S, 45.0) if has_source else 45.0
    rows_h = (ROW_MV * (len(LEADS) - 1) + 2.5) * MM_PER_MV
    left, gap, right, bottom, top = 16.0, 14.0, 6.0, 11.0, 27.0
    size = (left + rec_w + gap + src_w + right, bottom + rows_h + top)
    fig = new_figure((size[0] * _MM, size[1] * _MM))

    ax = _panel(fig, (left, bottom, rec_w, rows_h), size, -pulse, n / fs)
    t = np.arange(n) / fs
    _leads(ax, t, signal, "black")
    # the 1 mV, 0.2 s calibration pulse before each lead
    cal_t = np.array([-pulse, -0.24, -0.24, -0.04, -0.04, -0.0])
    cal_v = np.array([0.0, 0.0, 1.0, 1.0, 0.0, 0.0])
    _leads(ax, cal_t, np.broadcast_to(cal_v, (len(LEADS), len(cal_t))), "black")
    ax.text(-0.14, 1.1, "1 mV", ha="center", va="bottom", fontsize=6)
    ax.set_xlabel("s   (25 mm/s, 10 mm/mV; grid 1 mm = 0.04 s × 0.1 mV)", fontsize=7)
    if proto:
        win = proto["window"]
        ax.axvspan(win["start_s"], win["end_s"], color=_HIGHLIGHT, alpha=0.28, zorder=1, lw=0)
        where = (
            f"matched window {win['start_s']:.2f}-{win['end_s']:.2f} s (window similarity {win['similarity']:.3g})"
            if win["end_sample"] - win["start_sample"] < n
            else "global prototype: compared with the whole record"
        )
        ax.set_title(f"this record: {where}", fontsize=8, loc="left")

    ax2 = _panel(
        fig,
        (left + rec_w + gap, bottom, src_w, rows_h),
        size,
        src["start_s"] if has_source else 0.0,
        (src["start_s"] + src_w / MM_PER_S) if has_source else src_w / MM_PER_S,
    )
    if has_source and proto is not None and segment is not None:
        _leads(ax2, src["start_s"] + np.arange(seg_len) / fs, segment[:, :seg_len], "#1f4e9c")
        ax2.set_title(
            f"prototype {proto['prototype']} ({proto['label']})\nfrom training record {src['record_id']},\n"
            f"{src['start_s']:.2f}-{src['end_s']:.2f} s",
            fontsize=7,
            loc="left",
        )
    else:
        ax2.set_title("prototype never projected\nonto a training record", fontsize=8, loc="left")
    ax2.set_xlabel("s (source record)", fontsize=7)

    decision = "positive" if entry["positive"] else "negative"
    asked = ", explained on request" if entry.get("requested") and not entry["positive"] else ""
    head = (
        f"{entry['label']}: {entry['name']}  p = {entry['probability']:.3f}, threshold {entry['threshold']:.3f} "
        f"({decision}{asked})"
    )
    if proto:
        detail = (
            f"top prototype {proto['prototype']}: similarity {proto['similarity']:.3g} x weight {proto['weight']:.3g} "
            f"= {proto['contribution']:+.3g} of logit {entry['logit']:.3g} (bias {entry['bias']:+.3g}, own prototypes "
            f"{entry['own_prototypes']:+.3g}, others {entry['other_prototypes']:+.3g})"
        )
    else:
        detail = "this label has no prototypes"
    fig.text(left / size[0], 1 - 6 / size[1], head, fontsize=10, weight="bold", va="top")
    fig.text(left / size[0], 1 - 12 / size[1], detail, fontsize=8, va="top")
    return fig


# -- drawing later ---------------------------------------------------------------------------------------------
def drawing_data(signal: np.ndarray, fs: float, entries: Sequence[dict[str, Any]], segments: dict[str, np.ndarray]
                 ) -> dict[str, Any]:  # fmt: skip
    """What a front end (or :func:`draw_picture`) needs to draw a record's pictures, as JSON: the model input and
    each picture's prototype source window, each as ``{"shape": [12, n], "int16_le_base64": ...}``: the values in
    µV as little-endian 16-bit integers (±32.767 mV; the model's input is far inside it), base64-encoded."""
    return {
        "sampling_rate_hz": fs,
        "unit": "uV",
        "leads": list(LEADS),
        "signal": encode_signal(signal),
        "labels": list(entries),
        "segments": {label: encode_signal(seg) for label, seg in segments.items()},
    }


def encode_signal(values: np.ndarray) -> dict[str, Any]:
    """(leads, n) mV → ``{"shape", "int16_le_base64"}`` in µV (clipped to the int16 range)."""
    microvolts = np.clip(np.rint(np.asarray(values, dtype=np.float64) * 1000.0), -32768, 32767).astype("<i2")
    return {"shape": list(microvolts.shape), "int16_le_base64": base64.b64encode(microvolts.tobytes()).decode("ascii")}


def decode_signal(encoded: dict[str, Any]) -> np.ndarray:
    """:func:`encode_signal` back to (leads, n) float32 mV."""
    raw = np.frombuffer(base64.b64decode(encoded["int16_le_base64"]), dtype="<i2")
    return (raw.reshape(encoded["shape"]).astype(np.float32) / 1000.0).astype(np.float32)


def write_drawing_data(data: dict[str, Any], path: Path) -> Path:
    """:func:`drawing_data` as compact JSON (no indentation: it is mostly numbers)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, separators=(",", ":"), allow_nan=False), encoding="utf-8")
    return path


def draw_picture(out_dir: Path, rel: str) -> Path | None:
    """Draw the picture ``rel`` of a finished result from its ``<name>_explain.json``; ``None`` when ``rel`` is no
    picture of one (or its data is gone)."""
    rel_path = Path(rel)
    if rel_path.suffix != ".png" or PICTURE_INFIX not in rel_path.name:
        return None
    parts = rel_path.name.split(PICTURE_INFIX)
    for cut in range(1, len(parts)):
        record = PICTURE_INFIX.join(parts[:cut])
        data_path = out_dir / rel_path.parent / f"{record}{DATA_SUFFIX}"
        if not data_path.is_file():
            continue
        data = json.loads(data_path.read_text(encoding="utf-8"))
        for entry in data.get("labels", []):
            if picture_name(record, entry["label"]) == rel_path.name:
                return draw_entry(data, entry, out_dir / rel_path)
    return None


def draw_entry(data: dict[str, Any], entry: dict[str, Any], path: Path) -> Path:
    """One label's picture from a record's :func:`drawing_data` (drawn now or later, the same picture)."""
    segment = data["segments"].get(entry["label"])
    fig = explanation_figure(
        decode_signal(data["signal"]),
        entry,
        None if segment is None else decode_signal(segment),
        float(data["sampling_rate_hz"]),
    )
    return save_figure(fig, path, 100, colors=64)  # paper, traces and text: 64 colours, a quarter of the RGB size
