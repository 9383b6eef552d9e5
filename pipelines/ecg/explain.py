"""Case-based explanations: the most similar prototypes per branch, where they matched, and where they came from."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from models.protoecgnet import LEADS, PTBXL_LABELS, ProtoECGNet
from pipelines.common.plots import new_figure
from pipelines.ecg.stages import window_to_samples

__all__ = ["plot_explanation", "top_prototypes"]


def top_prototypes(
    model: ProtoECGNet,
    branch: str,
    similarities: np.ndarray,
    windows: np.ndarray | None,
    sources: list[dict[str, Any]],
    fs: float = 100.0,
    k: int = 5,
) -> list[dict[str, Any]]:
    """The ``k`` prototypes of a branch with the highest similarity to one record.

    Args:
        model: the network (for class membership and geometry).
        branch: branch name.
        similarities: (P_branch,) the branch's prototype similarities (mean over windows for 2D).
        windows: (P_branch, 2) best window index and its scaled similarity, for 2D branches; None for 1D.
        sources: the checkpoint's prototype sources (all branches).
        fs: the model's rate, for seconds.
        k: how many.

    Returns:
        One dict per prototype: prototype, label, similarity, matched window in the input (samples and seconds;
        the whole record for global prototypes) and the prototype's training source.
    """
    b = model.branch(branch)
    by_index = {s["prototype"]: s for s in sources if s.get("branch") == branch}
    label_idx = model.branch_index(branch).cpu().numpy()
    order = np.argsort(-similarities)[:k]
    n = model.num_samples
    out = []
    for p in order.tolist():
        label_i = int(label_idx[p // b.prototypes_per_class])
        label = PTBXL_LABELS[label_i] if model.num_labels == len(PTBXL_LABELS) else str(label_i)
        if b.kind == "2d" and windows is not None and b.proto_time_len < model.feature_columns:
            w = int(windows[p, 0])
            start, end = window_to_samples(w, b.proto_time_len, model.feature_columns, n)
            window_sim = float(windows[p, 1])
        else:
            start, end, window_sim = 0, n, float(similarities[p])
        src = by_index.get(p, {})
        out.append(
            {
                "prototype": p,
                "label": label,
                "similarity": float(similarities[p]),
                "window": {
                    "start_sample": start,
                    "end_sample": end,
                    "start_s": start / fs,
                    "end_s": end / fs,
                    "similarity": window_sim,
                },
                "source": {
                    "record_id": src.get("record_id"),
                    "start_sample": src.get("start"),
                    "end_sample": src.get("end"),
                    "score": src.get("score"),
                },
            }
        )
    return out


def plot_explanation(
    signal: np.ndarray,
    entry: dict[str, Any],
    segment: np.ndarray | None,
    path: Path,
    title: str = "",
    fs: float = 100.0,
) -> Path:
    """12 leads of the input with the matched window highlighted, beside the prototype's source segment.

    Args:
        signal: (12, N) model input in mV.
        entry: one item of :func:`top_prototypes`.
        segment: (12, S) the prototype's source segment (None when the prototype was never projected).
        path: PNG to write.
        title: figure title (no patient identifiers).
        fs: sampling rate in Hz.
    """
    fig = new_figure((13, 12))
    axes = fig.subplots(12, 2, sharex="col", gridspec_kw={"width_ratios": [3, 1.2]})
    t = np.arange(signal.shape[1]) / fs
    win = entry["window"]
    src = entry["source"]
    for i, lead in enumerate(LEADS):
        ax = axes[i, 0]
        ax.plot(t, signal[i], lw=0.7, color="k")
        ax.axvspan(win["start_s"], win["end_s"], color="tab:orange", alpha=0.3)
        ax.set_ylabel(lead, rotation=0, labelpad=14, fontsize=8)
        ax.tick_params(labelsize=6)
        ax2 = axes[i, 1]
        if segment is not None and src.get("end_sample") is not None:
            length = int(src["end_sample"]) - int(src["start_sample"])
            ts = (int(src["start_sample"]) + np.arange(length)) / fs
            ax2.plot(ts, segment[i, :length], lw=0.7, color="tab:blue")
        ax2.tick_params(labelsize=6)
    axes[0, 0].set_title(f"input: matched window {win['start_s']:.2f}-{win['end_s']:.2f} s", fontsize=9)
    axes[0, 1].set_title(
        f"prototype {entry['prototype']} ({entry['label']}): training record {src.get('record_id')}", fontsize=9
    )
    axes[-1, 0].set_xlabel("s")
    axes[-1, 1].set_xlabel("s")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=70)
    return path
