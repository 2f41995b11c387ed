"""CLIP ensembles: the ``clip_model`` setting names one CLIP or several, weighted.

``ViT-B/32`` (a registry name) or ``path/to/clip.pt`` (a local file) is one CLIP, as always.
``ViT-B/32:1,ViT-B/16:0.5`` is an ensemble: each CLIP judges the picture at its own input
size, and the run's loss is the weighted mean of their losses (weights are relative: they
are normalised to sum to 1, so one CLIP at any weight is exactly a single-CLIP run).

Pure parsing, no torch: the config validates the setting with it before anything loads.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from vqclip.checks import ConfigError
from vqclip.registry import CLIP_MODELS

__all__ = ["ClipMember", "clip_label", "clip_weights", "is_ensemble", "parse_clip_spec"]

FIELD = "clip_model"
_HOW = (
    "Write one CLIP (a name such as ViT-B/32, or a .pt file), or several as name:weight "
    "separated by commas with each weight a number above 0, e.g. --clip ViT-B/32:1,ViT-B/16:0.5."
)


@dataclass(frozen=True)
class ClipMember:
    """One CLIP of the setting: a registry name or a file path, and its relative weight."""

    name: str
    weight: float = 1.0


def _exists(name: str) -> bool:
    return name in CLIP_MODELS or Path(name).expanduser().is_file()


def _unknown(name: str, spec: str) -> ConfigError:
    where = "" if name == spec else f" (in the CLIP ensemble {spec!r})"
    return ConfigError(
        f"CLIP model {name!r}{where} is neither a known name nor an existing file. "
        f"Known names: {', '.join(CLIP_MODELS)}.",
        FIELD,
    )


def _member(part: str, spec: str) -> ClipMember:
    """One comma-separated entry: a name or file alone (weight 1), or name:weight."""
    if _exists(part):  # a whole name first: a file may hold a colon
        return ClipMember(part)
    if ":" not in part:
        raise _unknown(part, spec)
    name, text = (s.strip() for s in part.rsplit(":", 1))
    if not _exists(name):
        raise _unknown(name or part, spec)
    try:
        weight = float(text)
    except ValueError:
        raise ConfigError(
            f"The CLIP setting {spec!r} gives {name} the weight {text!r}, which is not a "
            f"number. {_HOW}",
            FIELD,
        ) from None
    if not math.isfinite(weight) or weight <= 0:
        raise ConfigError(
            f"The CLIP setting {spec!r} gives {name} the weight {text}; each weight must be a "
            f"number above 0 (a CLIP with no say would only cost time: leave it out). {_HOW}",
            FIELD,
        )
    return ClipMember(name, weight)


def _identity(name: str) -> str:
    """What makes two entries the same CLIP: its registry name, or its file's full path."""
    return name if name in CLIP_MODELS else str(Path(name).expanduser().resolve())


def parse_clip_spec(spec: str) -> tuple[ClipMember, ...]:
    """``clip_model`` -> its CLIPs in order; a ConfigError (naming clip_model) that says
    what is wrong and how to write it for an unknown name, a bad or non-positive weight, an
    empty entry or a CLIP named twice."""
    if not isinstance(spec, str):  # the config's type check says this better; be safe
        raise ConfigError(f"The CLIP setting must be text, got {spec!r}. {_HOW}", FIELD)
    if _exists(spec):  # one CLIP, exactly as before ensembles
        return (ClipMember(spec),)
    parts = [part.strip() for part in spec.split(",")]
    if "" in parts:
        raise ConfigError(
            f"The CLIP setting {spec!r} has an empty entry (two commas in a row, or one at an "
            f"end). {_HOW}",
            FIELD,
        )
    members = tuple(_member(part, spec) for part in parts)
    seen: dict[str, str] = {}
    for member in members:
        key = _identity(member.name)
        if key in seen:
            raise ConfigError(
                f"The CLIP setting {spec!r} names {member.name} twice; each CLIP may judge "
                "once (to give it more say, raise its weight instead). " + _HOW,
                FIELD,
            )
        seen[key] = member.name
    return members


def is_ensemble(spec: str) -> bool:
    """Whether ``clip_model`` names more than one CLIP (without touching the disk when it
    cannot: a single name or file, as every run before ensembles had)."""
    return "," in spec and not _exists(spec) and len(parse_clip_spec(spec)) > 1


def clip_weights(spec: str) -> tuple[float, ...]:
    """Each CLIP's share of the loss: its weight over the sum of weights (1.0 for one CLIP)."""
    if not is_ensemble(spec):
        return (1.0,)
    members = parse_clip_spec(spec)
    total = math.fsum(m.weight for m in members)
    return tuple(m.weight / total for m in members)


def clip_label(value: str) -> str:
    """A short label of the ``clip_model`` setting, for a PNG's parameters line and the panel:
    each CLIP's name, or its file's name, with its weight in an ensemble (never an error)."""
    if "," in value and not Path(value).is_file():  # a CLIP ensemble: name:weight,name:weight
        parts = []
        for part in value.split(","):
            name, colon, weight = part.strip().rpartition(":")
            parts.append(f"{clip_label(name)}:{weight}" if colon else clip_label(weight))
        return ",".join(parts)
    return Path(value).name if ("/" in value and Path(value).suffix) else value
