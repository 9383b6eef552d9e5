"""The ``prostate`` task's options: ``medinfer predict prostate`` (also the service's ``options`` field) and
``medinfer train prostate``'s flags beyond the config.

pydantic and torch-free modules only (no torch, numpy or ``models``): the CLI reads these models to check a
command's flags before the task loads (:func:`pipelines.common.catalog.options_models`).
"""

from __future__ import annotations

from pydantic import Field

from pipelines.common.config import TaskOptions, VolumeOptions

__all__ = ["ProstateOptions", "ProstateTrainOptions", "options_model", "train_options_model"]


class ProstateOptions(VolumeOptions):
    """``medinfer predict prostate`` options (also the service's ``options`` field)."""

    largest_component: bool = Field(
        True, description="Keep only the largest connected component of each zone (UATS's island removal)."
    )


class ProstateTrainOptions(TaskOptions):
    """``medinfer train prostate`` flags beyond the config."""

    unlabelled: str | None = Field(
        None,
        description="A folder of extra T2 volumes without zones (<case>/t2.nii.gz) used by stage 2's consistency "
        "term; cases without zones.nii.gz under --data are used the same way.",
    )


#: what the task's ``options_model`` and ``train_options_model`` are (the catalog reads these two names)
options_model = ProstateOptions
train_options_model = ProstateTrainOptions
