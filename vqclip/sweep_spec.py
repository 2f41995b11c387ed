"""What a sweep is made of, read from a YAML or JSON file or from ``--vary``, and checked.

A sweep file names the prompts, styles and seeds, at most one more setting to vary, the
sweep's folder name and any generate setting::

    prompts: ["Oregon 💚", "a unicorn"]
    styles: [painting, pencil drawing, watercolor]
    seeds: [1, 2]
    vary: {lr: [0.05, 0.1]}
    iterations: 40
    snapshots: 10,last

Every mistake is a ConfigError that names the key or the value and says what would work,
before any model loads. This module does not import torch.
"""

from __future__ import annotations

import difflib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vqclip.config import ConfigError, RunConfig, settings

SWEEP_KEYS = ("prompts", "styles", "seeds", "vary", "name")
# The settings a sweep cannot vary: the prompt and seed are axes of their own, the models
# and speed settings are shared by every candidate (models load once), output is per sweep.
_FIXED_GROUPS = ("models", "speed", "output")
_NOT_VARIED = ("prompt", "seed")


@dataclass(frozen=True)
class SweepSpec:
    """The parts of a sweep; an empty part means 'not given' (flags or defaults fill it)."""

    prompts: list[str] = field(default_factory=list)
    styles: list[str] = field(default_factory=list)
    seeds: list[int] = field(default_factory=list)
    vary: tuple[str, list[Any]] | None = None  # one setting and its values
    name: str | None = None
    settings: dict[str, Any] = field(default_factory=dict)  # generate settings for every run


def varying_settings() -> list[str]:
    """The settings ``vary`` may change: the generation settings, not the models, speed or
    output ones, nor the prompt and seed (axes of their own)."""
    return [
        s.name
        for s in settings()
        if s.group not in _FIXED_GROUPS
        and s.name not in _NOT_VARIED
        and s.kind not in ("lines", "ints", "floats")
    ]


def _kind(name: str) -> str:
    """'int', 'float', 'str', 'bool' or 'size' for a setting's values."""
    kind = next(s.kind for s in settings() if s.name == name)
    return {"pair": "size", "seed": "int", "choice": "str", "text": "str"}.get(kind, kind)


def parse_value(name: str, value: Any, where: str) -> Any:
    """One value of setting ``name`` from a file (typed) or the command line (text), checked
    for its kind: '0.05' -> 0.05 for lr, '128x96' or 128 -> [128, 96] or [128, 128] for size."""
    kind = _kind(name)
    text = value.strip() if isinstance(value, str) else value
    try:
        if kind == "size":
            if isinstance(text, str):
                parts = text.lower().split("x")
                return [int(parts[0]), int(parts[-1])] if len(parts) <= 2 else _bad()
            if isinstance(text, int) and not isinstance(text, bool):
                return [text, text]
            if isinstance(text, list) and len(text) == 2:
                return [_whole(v) for v in text]
            return _bad()
        if kind == "bool":
            if isinstance(text, bool):
                return text
            words = {"true": True, "yes": True, "on": True, "false": False, "no": False}
            return words[str(text).lower()] if str(text).lower() in words else _bad()
        if kind == "int":
            return _whole(text)
        if kind == "float":
            if isinstance(text, bool):
                return _bad()
            return float(text)
        return str(text)
    except (ValueError, TypeError):
        example = {
            "size": "128x128 (width x height) or 128 for a square",
            "int": "a whole number such as 8",
            "float": "a number such as 0.05",
            "bool": "true or false",
        }[kind]
        raise ConfigError(f"{where}: {value!r} is not a valid {name}; give {example}.") from None


def _whole(value: Any) -> int:
    if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
        raise ValueError(value)
    return int(value)


def _bad() -> Any:
    raise ValueError


def check_vary(name: str, values: Any, where: str) -> tuple[str, list[Any]]:
    """A checked (setting, values) axis; the setting may be spelt as its flag (cut-pow)."""
    name = str(name).strip().replace("-", "_")
    allowed = varying_settings()
    if name not in allowed:
        if name in _NOT_VARIED:
            hint = f"the {name} is an axis of its own: give {name}s (e.g. --{name}s) instead."
        elif name in {s.name for s in settings()}:
            hint = f"{name} is shared by every candidate of a sweep; run one sweep per {name}."
        else:
            close = difflib.get_close_matches(name, allowed, n=1)
            hint = f"did you mean {close[0]}? " if close else ""
            hint += "Settings that can vary: " + ", ".join(allowed) + "."
        raise ConfigError(f"{where}: {name!r} cannot vary: {hint}")
    if not isinstance(values, list):
        values = [values]
    parsed = [parse_value(name, v, f"{where} {name}") for v in values]
    unique = list({json.dumps(v): v for v in parsed}.values())
    if not unique:
        raise ConfigError(f"{where} {name}: give at least one value, e.g. lr=0.05,0.1.")
    return name, unique


def parse_vary(text: str) -> tuple[str, list[Any]]:
    """``--vary lr=0.05,0.1`` (or ``size=128x128,256x256``) -> ('lr', [0.05, 0.1])."""
    name, sep, values = text.partition("=")
    if not sep or not name.strip() or not values.strip():
        raise ConfigError(
            f"--vary {text!r} needs one setting and its values, e.g. --vary lr=0.05,0.1 or "
            "--vary size=128x128,256x256."
        )
    return check_vary(name, [v for v in values.split(",") if v.strip()], "--vary")


def read_sweep_file(path: str | Path) -> SweepSpec:
    """A SweepSpec from a YAML (.yaml, .yml) or JSON file, every key and value checked."""
    file = Path(path)
    if not file.is_file():
        raise ConfigError(f"Sweep file {str(path)!r} does not exist. Check the path.")
    where = file.name
    try:
        text = file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError(f"Sweep file {str(path)!r} could not be read: {error}") from None
    if file.suffix.lower() in (".yaml", ".yml"):
        import yaml

        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as error:
            raise ConfigError(f"Sweep file {str(path)!r} is not valid YAML: {error}") from None
    else:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as error:
            raise ConfigError(
                f"Sweep file {str(path)!r} is not valid JSON ({error}); name it .yaml for YAML."
            ) from None
    if not isinstance(data, dict):
        raise ConfigError(
            f"{where} must hold a mapping such as 'prompts: [...]', 'styles: [...]', "
            "'seeds: [1, 2]' and generate settings; it holds none."
        )
    data = dict(data)
    if "prompt" in data:  # one prompt, like the command line's PROMPT
        if "prompts" in data:
            raise ConfigError(f"{where} gives both prompt and prompts: keep one.")
        data["prompts"] = data.pop("prompt")
    known = set(SWEEP_KEYS) | {s.name for s in settings()} - {"seed"}
    unknown = sorted(str(k) for k in data if k not in known)
    if unknown:
        tips = []
        for key in unknown:
            close = difflib.get_close_matches(key, sorted(known), n=1)
            if key == "seed":
                close = ["seeds"]
            tips.append(f"{key!r} (did you mean {close[0]}?)" if close else repr(key))
        raise ConfigError(
            f"Unknown key(s) in {where}: {', '.join(tips)}. A sweep file holds "
            f"{', '.join(SWEEP_KEYS)} and any generate setting "
            f"({', '.join(sorted(known - set(SWEEP_KEYS)))}). Check the spelling, or remove them."
        )
    vary = data.pop("vary", None)
    if vary is not None:
        if not isinstance(vary, dict) or len(vary) != 1:
            raise ConfigError(
                f"{where}: vary takes one setting and its values, e.g. 'vary: {{lr: [0.05, "
                f"0.1]}}'; got {vary!r}. Run one sweep per setting to vary two."
            )
        ((name, values),) = vary.items()
        vary = check_vary(name, values, f"{where} vary")
    name = data.pop("name", None)
    spec = SweepSpec(
        prompts=_strings(data.pop("prompts", []), "prompts", where),
        styles=_strings(data.pop("styles", []), "styles", where),
        seeds=_seeds(data.pop("seeds", []), where),
        vary=vary,
        name=None if name is None else str(name),
        settings={key: _setting_value(key, value, where) for key, value in data.items()},
    )
    RunConfig.from_dict(spec.settings)  # unknown settings are caught above; types at validate
    return spec


def _strings(value: Any, key: str, where: str) -> list[str]:
    """A list of strings; one string is one item, except styles, which split at commas as
    --styles does."""
    if isinstance(value, str):
        value = value.split(",") if key == "styles" else [value]
    if not isinstance(value, list) or not all(isinstance(v, (str, int, float)) for v in value):
        raise ConfigError(
            f"{where}: {key} must be a list of text, e.g. {key}: [a, b]; got {value!r}."
        )
    return [str(v).strip() for v in value if str(v).strip()]


def _seeds(value: Any, where: str) -> list[int]:
    if isinstance(value, str):
        value = [v for v in value.split(",") if v.strip()]
    elif not isinstance(value, list):
        value = [value]
    try:
        seeds = [_whole(v.strip() if isinstance(v, str) else v) for v in value]
    except (ValueError, TypeError):
        raise ConfigError(
            f"{where}: seeds {value!r} must be whole numbers, e.g. seeds: [1, 2, 3]."
        ) from None
    return seeds


def _setting_value(key: str, value: Any, where: str) -> Any:
    """A generate setting from the file: text where a number belongs is parsed like the
    flag; everything else is checked by RunConfig.validate with the CLI's messages."""
    kind = _kind(key) if key in varying_settings() else None
    if kind in ("int", "float", "bool", "size") and value is not None:
        return parse_value(key, value, where)
    return value


__all__ = [
    "SweepSpec",
    "check_vary",
    "parse_vary",
    "read_sweep_file",
    "varying_settings",
]
