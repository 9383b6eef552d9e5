"""One config system for every task: a frozen pydantic model per task, presets, a YAML override, one loader.

A task's training configuration subclasses :class:`TaskConfig`. Its field defaults are the published recipe
(the ``full`` preset); ``PRESETS`` holds the other presets as overrides of those defaults (``tiny`` for CPU
tests and the demo). :meth:`TaskConfig.load` applies, in order: the preset, a YAML file of overrides, then
``--epochs``. Mappings (per-stage epochs, network keyword arguments) are merged key by key rather than
replaced. Every error is a :class:`ConfigError` (a ``ValueError``) that names the key and what is wrong.

A config is saved into each checkpoint (:meth:`TaskConfig.to_dict`) and rebuilt from it with
:meth:`TaskConfig.from_checkpoint`, which forgives the keys older releases stored and this one dropped
(``LEGACY_KEYS``) so that every checkpoint a user holds keeps loading.

A task's options (:class:`TaskOptions`: its predict and train flags) live in ``pipelines/<task>/options.py``,
which imports pydantic and this module only (no torch, numpy or ``models``): the CLI checks a task's flags there
before anything heavy loads (:mod:`pipelines.common.catalog`).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar, Self

from pydantic import BaseModel, ConfigDict, Field, ValidationError

__all__ = ["ConfigError", "TaskConfig", "TaskOptions", "VolumeOptions", "merge_overrides", "validation_message"]


class ConfigError(ValueError):
    """A configuration or option value is unknown or invalid; the message names the key."""


def validation_message(exc: ValidationError, what: str = "config key", source: str = "") -> str:
    """One readable line per pydantic error, each naming the key (``config key 'roi_size': ...``)."""
    lines = []
    for err in exc.errors():
        key = ".".join(str(p) for p in err.get("loc", ())) or "(root)"
        if err.get("type") == "extra_forbidden":
            lines.append(f"unknown {what} {key!r}")
        else:
            given = err.get("input")
            shown = "" if isinstance(given, dict) else f" (got {given!r})"
            lines.append(f"{what} {key!r}: {err.get('msg', 'invalid value')}{shown}")
    prefix = f"{source}: " if source else ""
    return prefix + "; ".join(lines)


def merge_overrides(base: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """``base`` updated by ``overrides``; where both hold a mapping, the mappings are merged key by key."""
    out = dict(base)
    for key, value in overrides.items():
        current = out.get(key)
        if isinstance(current, Mapping) and isinstance(value, Mapping):
            out[key] = {**current, **value}
        else:
            out[key] = value
    return out


class TaskOptions(BaseModel):
    """Base of a task's typed options (inference or training flags); unknown keys are errors.

    The CLI turns every field into a flag (``sw_batch_size`` → ``--sw-batch-size``; booleans ``--x/--no-x``) and
    also takes ``--option key=value``; the service takes them as an ``options`` JSON form field. Field
    descriptions are the help texts.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    @classmethod
    def parse(cls, values: Mapping[str, Any], source: str = "") -> Self:
        """Validate ``values`` (from flags, a form field or settings).

        Raises:
            ConfigError: an unknown option or an invalid value, named.
        """
        try:
            return cls.model_validate(dict(values))
        except ValidationError as exc:
            raise ConfigError(validation_message(exc, "option", source)) from None

    def updated(self, values: Mapping[str, Any], source: str = "") -> Self:
        """A copy with ``values`` applied on top, validated."""
        return self.parse({**self.model_dump(), **values}, source)


class VolumeOptions(TaskOptions):
    """Inference options every volume segmenter has (the family's predictor is
    :class:`~pipelines.common.segmentation.SegmentationPredictor`; the model lives here, without torch, so that the
    CLI knows a task's flags before loading it)."""

    tta: bool = Field(False, description="Mirror test-time augmentation: average the 8 flips of the three axes.")
    overlap: float = Field(0.5, ge=0.0, le=0.95, description="Overlap of neighbouring sliding windows.")
    sw_batch_size: int = Field(4, ge=1, le=256, description="Sliding windows per forward pass.")
    overlay: bool = Field(
        False,
        description="Also write a preview PNG: three orthogonal views through the largest region, an axial mosaic, "
        "a legend with volumes in mL.",
    )
    dicom_seg: bool = Field(
        True,
        description="For a DICOM series input, also write the regions as a DICOM SEG (<case>_seg.dcm) that "
        "references the series.",
    )


class TaskConfig(BaseModel):
    """Base of every task's training configuration.

    Class attributes a task sets:
        PRESETS: preset name → overrides of the field defaults (``full`` is always the defaults).
        LEGACY_KEYS: keys that checkpoints of earlier releases stored and that no longer exist.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    PRESETS: ClassVar[Mapping[str, Mapping[str, Any]]] = {}
    LEGACY_KEYS: ClassVar[frozenset[str]] = frozenset()

    preset: str = "full"

    @classmethod
    def preset_names(cls) -> tuple[str, ...]:
        return ("full", *(p for p in cls.PRESETS if p != "full"))

    @classmethod
    def build(cls, values: Mapping[str, Any], source: str = "") -> Self:
        """Validate a full or partial mapping of fields.

        Raises:
            ConfigError: unknown keys or invalid values, each named.
        """
        try:
            return cls.model_validate(dict(values))
        except ValidationError as exc:
            raise ConfigError(validation_message(exc, "config key", source)) from None

    @classmethod
    def load(
        cls,
        preset: str = "full",
        config_path: str | Path | None = None,
        epochs: int | None = None,
        overrides: Mapping[str, Any] | None = None,
    ) -> Self:
        """The preset, then the YAML file's keys, then ``overrides``, then ``epochs``.

        Args:
            preset: ``full`` (the published recipe) or a name in ``PRESETS``.
            config_path: a YAML mapping of config keys.
            epochs: epochs for every stage (a per-stage mapping gets the value for each stage).
            overrides: further keys (tests, the API).

        Raises:
            ConfigError: unknown preset, unreadable YAML, unknown keys or invalid values.
        """
        if preset not in cls.preset_names():
            raise ConfigError(f"unknown preset {preset!r}; presets: {', '.join(cls.preset_names())}")
        values: dict[str, Any] = cls().model_dump()
        values = merge_overrides(values, {**cls.PRESETS.get(preset, {}), "preset": preset})
        if config_path is not None:
            values = merge_overrides(values, read_yaml_mapping(config_path))
        if overrides:
            values = merge_overrides(values, overrides)
        if epochs is not None:
            current = values.get("epochs")
            values["epochs"] = dict.fromkeys(current, int(epochs)) if isinstance(current, Mapping) else int(epochs)
        return cls.build(values, str(config_path) if config_path is not None else "")

    @classmethod
    def from_checkpoint(cls, data: Mapping[str, Any]) -> Self:
        """Rebuild the config a checkpoint stored (keys of ``LEGACY_KEYS`` are dropped).

        Raises:
            ConfigError: the stored config does not fit this task's config.
        """
        return cls.build({k: v for k, v in data.items() if k not in cls.LEGACY_KEYS}, "checkpoint config")

    def to_dict(self) -> dict[str, Any]:
        """JSON-able mapping (tuples as lists), as stored in checkpoints."""
        return self.model_dump(mode="json")


def read_yaml_mapping(path: str | Path) -> dict[str, Any]:
    """The mapping a YAML file holds.

    Raises:
        ConfigError: unreadable file, YAML syntax error, or not a mapping.
    """
    import yaml

    p = Path(path)
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"{p}: cannot be read ({exc.strerror or exc})") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{p}: not valid YAML ({exc})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: expected a mapping of config keys, got {type(data).__name__}")
    return data
