"""The ``breakhis`` task's options: ``medinfer predict breakhis`` / the service's ``options`` field, and
``medinfer train breakhis``'s flags beyond the config (the paper's two-step training).

pydantic and torch-free modules only (no torch, numpy or ``models``): the CLI reads these models to check a
command's flags before the task loads (:func:`pipelines.common.catalog.options_models`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from pipelines.common.config import TaskOptions

__all__ = ["BreakhisOptions", "BreakhisTrainOptions", "options_model", "train_options_model"]


class BreakhisOptions(TaskOptions):
    """``medinfer predict breakhis`` options (also the service's ``options`` field)."""

    resize_warning: bool = Field(
        True, description="Warn in the result when an image is not BreakHis's 700x460 (it is resized either way)."
    )


class BreakhisTrainOptions(TaskOptions):
    """``medinfer train breakhis`` flags beyond the config: the paper's two-step training."""

    target: Literal["binary", "subtype"] = Field(
        "binary", description="Train the benign/malignant model (step 1) or the 8-subtype model (step 2)."
    )
    transfer_from: Path | None = Field(
        None,
        description="A binary breakhis run folder or checkpoint whose trunk initialises this model (the head is "
        "replaced); the trunk stays frozen for the config's freeze_epochs.",
    )
    init_weights: Path | None = Field(
        None,
        description="A local EfficientNet state dict of the same variant (ImageNet weights you bring) for the "
        "trunk; its classifier is skipped. Nothing is downloaded.",
    )

    @field_validator("transfer_from", "init_weights")
    @classmethod
    def _exists(cls, value: Path | None) -> Path | None:
        if value is not None and not Path(value).expanduser().exists():
            raise ValueError(f"{value}: not found")
        return value

    @model_validator(mode="after")
    def _one_start(self) -> BreakhisTrainOptions:
        if self.transfer_from is not None and self.init_weights is not None:
            raise ValueError("give either transfer_from or init_weights, not both")
        return self


#: what the task's ``options_model`` and ``train_options_model`` are (the catalog reads these two names)
options_model = BreakhisOptions
train_options_model = BreakhisTrainOptions
