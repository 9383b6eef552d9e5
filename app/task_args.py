"""Command-line flags from a task's typed options model: generic, so the CLI never names a task's option.

Every field of the model is a flag: ``max_size`` → ``--max-size VALUE`` (or ``--max-size=VALUE``),
a boolean ``tta`` → ``--tta`` / ``--no-tta``; ``--option KEY=VALUE`` sets any field by name. Values are
strings here and validated (converted) by the model itself, so a wrong value is reported by key.
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel

__all__ = ["TaskArgsError", "describe_options", "parse_task_args"]

NONE_WORDS = frozenset({"none", "null", "default"})


class TaskArgsError(ValueError):
    """A task flag is unknown or lacks its value."""


def _is_bool(model: type[BaseModel], name: str) -> bool:
    annotation = model.model_fields[name].annotation
    return annotation is bool


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _field_name(model: type[BaseModel], key: str) -> str | None:
    name = key.strip().lstrip("-").replace("-", "_")
    return name if name in model.model_fields else None


def flags_of(model: type[BaseModel]) -> list[str]:
    """Every flag the model declares (booleans with their ``--no-`` form)."""
    out = []
    for name in model.model_fields:
        out.append(_flag(name))
        if _is_bool(model, name):
            out.append("--no-" + name.replace("_", "-"))
    return out


def _unknown(model: type[BaseModel], token: str, what: str) -> TaskArgsError:
    known = flags_of(model)
    close = difflib.get_close_matches(token.split("=", 1)[0], known, n=2)
    hint = f"; did you mean {' or '.join(close)}?" if close else ""
    listing = ", ".join(known) if known else "none"
    return TaskArgsError(f"unknown option {token.split('=', 1)[0]} for {what}{hint} (its options: {listing})")


def _value(raw: str) -> Any:
    return None if raw.strip().lower() in NONE_WORDS else raw


def parse_task_args(model: type[BaseModel], tokens: Sequence[str], what: str) -> tuple[dict[str, Any], list[str]]:
    """Split command-line tokens into the model's option values and the remaining (positional) tokens.

    Args:
        model: the task's options model.
        tokens: tokens the CLI did not parse itself, in order.
        what: what the options belong to, for messages (``task NAME``).

    Returns:
        ``(values, positional)``: raw values by field name (validated later by the model) and the other tokens.

    Raises:
        TaskArgsError: an unknown flag, or a flag without its value.
    """
    values: dict[str, Any] = {}
    positional: list[str] = []
    i = 0
    while i < len(tokens):
        token = tokens[i]
        i += 1
        if not token.startswith("--"):
            positional.append(token)
            continue
        if token == "--option" or token.startswith("--option="):
            if token == "--option":
                if i >= len(tokens):
                    raise TaskArgsError("--option needs KEY=VALUE")
                pair, i = tokens[i], i + 1
            else:
                pair = token.split("=", 1)[1]
            key, sep, raw = pair.partition("=")
            name = _field_name(model, key)
            if not sep:
                raise TaskArgsError(f"--option {pair!r}: expected KEY=VALUE")
            if name is None:
                raise _unknown(model, _flag(key.replace("_", "-")), what)
            values[name] = _value(raw)
            continue
        flag, has_value, inline = token.partition("=")
        name = _field_name(model, flag)
        if name is not None and _is_bool(model, name):
            values[name] = _value(inline) if has_value else True
            continue
        if name is None and flag.startswith("--no-"):
            negated = _field_name(model, flag[5:])
            if negated is not None and _is_bool(model, negated) and not has_value:
                values[negated] = False
                continue
        if name is None:
            raise _unknown(model, token, what)
        if has_value:
            values[name] = _value(inline)
        elif i < len(tokens):
            values[name], i = _value(tokens[i]), i + 1
        else:
            raise TaskArgsError(f"{flag} needs a value")
    return values, positional


def describe_options(model: type[BaseModel]) -> list[dict[str, Any]]:
    """Flag, type, default and help of every option (for ``medinfer models`` and help texts)."""
    schema = model.model_json_schema()
    rows = []
    for name, field in model.model_fields.items():
        prop = schema.get("properties", {}).get(name, {})
        parts: list[str] = []
        for part in prop.get("anyOf", [prop]):
            if "enum" in part:
                parts.extend(str(v) for v in part["enum"])
            elif "type" in part:
                parts.append("none" if part["type"] == "null" else str(part["type"]))
        kind = "|".join(parts)
        rows.append(
            {
                "flag": _flag(name) + ("/--no-" + name.replace("_", "-") if _is_bool(model, name) else ""),
                "name": name,
                "type": kind or "value",
                "default": field.default,
                "help": field.description or "",
            }
        )
    return rows
