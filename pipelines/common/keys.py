"""Dictionary keys shared by transforms, datasets, trainers and inferers."""

from __future__ import annotations

IMAGE = "image"
LABEL = "label"
PRED = "pred"
PROB = "prob"
CASE_ID = "case_id"
SOURCE = "source"
LEVELS = "levels"
SIGNAL = "signal"
TARGET = "target"
