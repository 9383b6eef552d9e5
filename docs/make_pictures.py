"""Copy one picture per task from a ``medinfer demo`` folder into ``docs/img/`` for the task pages.

    make demo                       # or: .venv/bin/medinfer demo --no-serve
    .venv/bin/python docs/make_pictures.py [--demo demo_output]

For each task the first file of the preferred role in the demo's ``predictions/<task>/report.json`` is taken
(brats and prostate: the segmentation preview; breakhis: the Grad-CAM overlay; ecg: a prototype explanation on
ECG paper, one whose prototype matched a window when there is one), and
each run's training curve beside it. Pictures are re-encoded as optimised PNGs and must stay under 1 MB each
(nothing larger is committed). Prints JSON: what was copied from where.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from PIL import Image

DOCS = Path(__file__).resolve().parent
IMG = DOCS / "img"
MAX_BYTES = 1_000_000
#: the role whose PNG each task page shows
ROLES = {"brats": "overlay", "prostate": "overlay", "breakhis": "overlay", "ecg": "explanation"}


def localised_pictures(result: dict) -> set[str]:
    """The ECG explanation pictures of a result whose top prototype matched a window, not the whole record (they
    show more than a shaded record)."""
    labels = result.get("outputs", {}).get("explanation", {}).get("labels", [])
    return {
        e["picture"]
        for e in labels
        if e.get("picture") and e["prototypes"] and e["prototypes"][0]["window"]["start_sample"] > 0
    }


def first_png(report: Path, role: str) -> Path | None:
    """The first PNG of ``role`` that a prediction report lists (for ECG explanations, the first of a prototype
    matched in a window, when there is one)."""
    data = json.loads(report.read_text(encoding="utf-8"))
    pngs = [
        (f["path"], result)
        for result in data.get("results", [])
        for f in result.get("files", [])
        if f["role"] == role and f["path"].lower().endswith(".png")
    ]
    preferred = [path for path, result in pngs if path in localised_pictures(result)]
    chosen = preferred[0] if preferred else (pngs[0][0] if pngs else None)
    return None if chosen is None else report.parent / chosen


def save_small(src: Path, dst: Path) -> Path:
    """``src`` as an optimised PNG at ``dst`` (downscaled by halves until it is under ``MAX_BYTES``)."""
    image = Image.open(src)
    image.load()
    while True:
        image.save(dst, format="PNG", optimize=True)
        if dst.stat().st_size < MAX_BYTES:
            return dst
        image = image.resize((max(1, image.width // 2), max(1, image.height // 2)))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--demo", type=Path, default=Path("demo_output"), help="the demo folder")
    args = ap.parse_args(argv)
    IMG.mkdir(exist_ok=True)
    copied: dict[str, dict[str, str]] = {}
    missing: list[str] = []
    for task, role in ROLES.items():
        report = args.demo / "predictions" / task / "report.json"
        src = first_png(report, role) if report.is_file() else None
        curve = args.demo / "runs" / task / "training_curve.png"
        if src is None or not curve.is_file():
            missing.append(task)
            continue
        copied[task] = {
            role: str(save_small(src, IMG / f"{task}_{role}.png").relative_to(DOCS)),
            "training_curve": str(save_small(curve, IMG / f"{task}_training_curve.png").relative_to(DOCS)),
            "from": str(src),
        }
    print(json.dumps({"copied": copied, "missing": missing}, indent=2))
    return 1 if missing else 0


if __name__ == "__main__":
    sys.exit(main())
