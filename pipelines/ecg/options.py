"""The ``ecg`` task's options: ``medinfer predict ecg`` / the service's ``options`` field, and ``medinfer train
ecg``'s flags beyond the config.

pydantic and torch-free modules only (no torch, numpy or ``models``): the CLI reads these models to check a
command's flags before the task loads (:func:`pipelines.common.catalog.options_models`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator

from pipelines.common.config import TaskOptions
from pipelines.ecg.rates import MAX_FS, MIN_FS, SAMPLING_RATE, rate_problem
from pipelines.ecg.statements import STATEMENTS

__all__ = ["STAGES", "EcgOptions", "EcgTrainOptions", "options_model", "train_options_model"]

#: the training stages, in order (PAPERS.md §4)
STAGES = ("feature_extractor", "joint", "projection", "classifier", "fusion")

#: spellings accepted for ``signal_unit``
_UNIT_NAMES = {
    "mv": "mV",
    "millivolt": "mV",
    "uv": "uV",
    "µv": "uV",
    "μv": "uV",
    "microvolt": "uV",
    "v": "V",
    "volt": "V",
}


class EcgOptions(TaskOptions):
    """``medinfer predict ecg`` options (also the service's ``options`` field)."""

    sampling_rate: float | None = Field(
        None,
        ge=MIN_FS,
        le=MAX_FS,
        description=f"Rate in Hz of CSV/NPY records, which carry none (WFDB and DICOM do); {MIN_FS:g}-{MAX_FS:g} Hz, "
        "exact (a rate that converts to the model's only approximately is refused).",
    )
    signal_unit: Literal["mV", "uV", "V"] | None = Field(
        None,
        description="Unit of CSV/NPY values (default mV), and of WFDB/DICOM channels whose file gives none.",
    )

    explain_labels: tuple[str, ...] = Field(
        (),
        description="With explanations: labels to explain besides the predicted positives, as PTB-XL statement "
        "codes separated by commas (e.g. STE_,INVT).",
    )
    pictures: bool = Field(
        True,
        description="With explanations: draw one picture per explained label (the service draws each when its link is "
        "first fetched); --no-pictures writes the explanation JSON only.",
    )

    @field_validator("explain_labels", mode="before")
    @classmethod
    def _labels(cls, value: Any) -> Any:
        if value is None:
            return ()
        if isinstance(value, str):
            value = value.split(",")
        if not isinstance(value, list | tuple) or not all(isinstance(c, str) for c in value):
            raise ValueError("expected statement codes separated by commas, or a list of codes")
        codes = [c.strip() for c in value]
        codes = [c for c in codes if c]
        unknown = [c for c in codes if c not in STATEMENTS]
        if unknown:
            upper = {k.upper(): k for k in STATEMENTS}
            hints = [f"{c} (did you mean {upper[c.upper()]}?)" if c.upper() in upper else c for c in unknown]
            raise ValueError(f"unknown PTB-XL statement code {', '.join(hints)}; the codes are {', '.join(STATEMENTS)}")
        return tuple(dict.fromkeys(codes))

    @field_validator("sampling_rate")
    @classmethod
    def _exact_rate(cls, value: float | None) -> float | None:
        if value is not None:
            problem = rate_problem(value, SAMPLING_RATE)
            if problem is not None:
                raise ValueError(problem)
        return value

    @field_validator("signal_unit", mode="before")
    @classmethod
    def _unit(cls, value: Any) -> Any:
        if isinstance(value, str):
            return _UNIT_NAMES.get(value.strip().lower(), value)
        return value


class EcgTrainOptions(TaskOptions):
    """``medinfer train ecg`` flags beyond the config."""

    stage: str | None = Field(
        None, description=f"Run one stage ({', '.join(STAGES)}), continuing from RUN/last.pt when present."
    )
    init_weights: Path | None = Field(
        None,
        description="A local torchvision ResNet-18 state dict (ImageNet weights you bring) for the 2D branches: "
        "every layer but the replaced first conv and the head, as the authors do. Nothing is downloaded.",
    )

    @field_validator("stage")
    @classmethod
    def _stage(cls, value: str | None) -> str | None:
        if value is None:
            return None
        name = value.lower().replace("-", "_")
        if name not in STAGES:
            raise ValueError(f"unknown stage {value!r}; stages: {', '.join(STAGES)}")
        return name

    @field_validator("init_weights")
    @classmethod
    def _exists(cls, value: Path | None) -> Path | None:
        if value is not None and not Path(value).expanduser().is_file():
            raise ValueError(f"{value}: file not found")
        return value


#: what the task's ``options_model`` and ``train_options_model`` are (the catalog reads these two names)
options_model = EcgOptions
train_options_model = EcgTrainOptions
