"""The one config system: presets, YAML overrides merged key by key, errors naming the key, legacy keys."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import pytest
from pydantic import Field

from pipelines.common.config import ConfigError, TaskConfig, TaskOptions, merge_overrides


class Cfg(TaskConfig):
    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {"tiny": {"width": 8, "epochs": {"a": 2, "b": 3}}}
    LEGACY_KEYS: ClassVar[frozenset[str]] = frozenset({"old_knob"})

    width: int = Field(64, ge=1)
    epochs: dict[str, int] = Field(default_factory=lambda: {"a": 10, "b": 20})
    kwargs: dict[str, Any] = Field(default_factory=lambda: {"depth": 4, "act": "relu"})
    shape: tuple[int, int] = (4, 4)


def test_presets_start_from_the_published_defaults() -> None:
    full = Cfg.load()
    assert (full.preset, full.width, full.epochs) == ("full", 64, {"a": 10, "b": 20})
    tiny = Cfg.load("tiny")
    assert (tiny.preset, tiny.width, tiny.epochs, tiny.kwargs["depth"]) == ("tiny", 8, {"a": 2, "b": 3}, 4)
    assert Cfg.preset_names() == ("full", "tiny")
    with pytest.raises(ConfigError, match="unknown preset 'huge'; presets: full, tiny"):
        Cfg.load("huge")


def test_yaml_overrides_merge_mappings_and_epochs_applies_to_every_stage(tmp_path: Path) -> None:
    y = tmp_path / "c.yaml"
    y.write_text("kwargs:\n  depth: 2\nshape: [8, 2]\nepochs:\n  b: 5\n", encoding="utf-8")
    cfg = Cfg.load("tiny", y)
    assert cfg.kwargs == {"depth": 2, "act": "relu"}
    assert cfg.shape == (8, 2)
    assert cfg.epochs == {"a": 2, "b": 5}
    assert Cfg.load("tiny", y, epochs=7).epochs == {"a": 7, "b": 7}
    assert Cfg.load("full", overrides={"width": 3}).width == 3
    assert merge_overrides({"m": {"x": 1}, "n": 1}, {"m": {"y": 2}, "n": 2}) == {"m": {"x": 1, "y": 2}, "n": 2}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("widht: 3\n", "unknown config key 'widht'"),
        ("width: 0\n", "config key 'width': Input should be greater than or equal to 1"),
        ("shape: [1, 2, 3]\n", "config key 'shape'"),
        ("epochs:\n  a: many\n", "config key 'epochs.a'"),
        ("- a\n- b\n", "expected a mapping of config keys, got list"),
        ("width: [\n", "not valid YAML"),
    ],
)
def test_bad_yaml_names_the_file_and_the_key(tmp_path: Path, text: str, message: str) -> None:
    y = tmp_path / "bad.yaml"
    y.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError, match=message) as exc:
        Cfg.load("tiny", y)
    assert str(y) in str(exc.value)


def test_frozen_round_trip_and_legacy_keys() -> None:
    cfg = Cfg.load("tiny")
    with pytest.raises(ValueError, match="frozen"):
        cfg.width = 3  # type: ignore[misc]
    stored = cfg.to_dict()
    assert stored["shape"] == [4, 4]  # JSON in the checkpoint
    assert Cfg.from_checkpoint(stored) == cfg
    assert Cfg.from_checkpoint({**stored, "old_knob": 1}) == cfg  # an older release's key is forgiven
    with pytest.raises(ConfigError, match="checkpoint config: unknown config key 'new_knob'"):
        Cfg.from_checkpoint({**stored, "new_knob": 1})


def test_options_parse_and_update() -> None:
    class Opts(TaskOptions):
        rate: float | None = Field(None, gt=0)

    assert Opts.parse({}).rate is None
    opts = Opts.parse({"rate": "250"})
    assert opts.rate == 250.0
    assert opts.updated({"rate": 5}).rate == 5.0
    assert opts.rate == 250.0
    with pytest.raises(ConfigError, match="unknown option 'speed'"):
        Opts.parse({"speed": 1})
    with pytest.raises(ConfigError, match="form: option 'rate'"):
        Opts.parse({"rate": -1}, "form")
