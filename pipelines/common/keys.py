"""Dictionary keys shared by transforms, datasets, trainers and inferers."""

from __future__ import annotations

IMAGE = "image"
LABEL = "label"
CASE_ID = "case_id"
