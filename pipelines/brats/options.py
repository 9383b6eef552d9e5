"""The ``brats`` task's options: ``medinfer predict brats`` (also the service's ``options`` field) and
``medinfer train brats``'s flags beyond the config.

pydantic and torch-free modules only (no torch, numpy or ``models``): the CLI reads these models to check a
command's flags before the task loads (:func:`pipelines.common.catalog.options_models`).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from pipelines.common.config import TaskOptions, VolumeOptions

__all__ = ["BratsOptions", "BratsTrainOptions", "options_model", "train_options_model"]


class BratsOptions(VolumeOptions):
    """``medinfer predict brats`` options (also the service's ``options`` field)."""

    labels: Literal["brats2018", "brats2023"] | None = Field(
        None, description="Output label convention: brats2018 (0/1/2/4) or brats2023 (0/1/2/3); default: the input's."
    )


class BratsTrainOptions(TaskOptions):
    """``medinfer train brats`` flags beyond the config."""

    all_cases: bool = Field(
        False,
        description="Final retrain on every labelled case with the fixed recipe and no validation split (the "
        "paper's last step); keeps the last epoch.",
    )


#: what the task's ``options_model`` and ``train_options_model`` are (the catalog reads these two names)
options_model = BratsOptions
train_options_model = BratsTrainOptions
