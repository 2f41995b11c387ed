"""How prompts are written: 'text:weight:stop' items joined by '|', and the timeline's
lines ('ITERATION: prompts', 'ITERATION images: …', 'ITERATION noise: …'), read into
PromptSpec and PromptChange with a message saying how to write them when they cannot be
read. No torch."""

from __future__ import annotations

import math
import re
import unicodedata
from dataclasses import dataclass
from typing import Any

from vqclip.checks import _check, _is_number, _visible, brief


@dataclass(frozen=True)
class PromptSpec:
    """One parsed prompt: the text (or image path), its weight, and the distance it stops at."""

    text: str
    weight: float = 1.0
    stop: float = -math.inf


_NUMBER = r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?"
# A weight is a trailing ':number' (or ':number:number' for weight and stop) whose colon
# follows text that does not end in a digit or colon, so times ("12:30"), ratios and
# URLs stay text. Write "Time 12:30 :2" (with a space) to weight a text ending in digits.
_WEIGHTED = re.compile(
    rf"^(?P<text>(?:.*?[^\d:])?)\s*:(?P<weight>{_NUMBER})(?::(?P<stop>{_NUMBER}|-?inf))?\s*$",
    re.DOTALL,
)


# A colon right after text, followed by number-like characters to the end: meant as a weight.
_WEIGHT_LIKE = re.compile(r"[^\d:\s]\s*:(?P<suffix>[-+]?\.?\d\S*)$")


_NOT_FINITE = re.compile(r"[^\d:\s]\s*:(?P<suffix>[-+]?(?:nan|inf(?:inity)?))$", re.IGNORECASE)
MAX_PROMPT_CHARS = 10_000  # CLIP reads 77 tokens (a few hundred characters) of each prompt


def parse_prompt(item: str) -> PromptSpec:
    """'text:weight:stop' -> PromptSpec; text without a trailing numeric weight keeps weight 1."""
    _check(
        not item.strip().endswith(":") or item.strip() == ":",
        f"The prompt {item.strip()!r} ends in ':' with no weight after it. Write "
        "'text:weight' (e.g. 'fog:0.5'), or leave the colon out.",
    )
    odd = _NOT_FINITE.search(item.strip())
    _check(
        odd is None,
        f"The prompt {item.strip()!r} has weight {odd and odd['suffix']!r}; weights must be "
        "finite numbers such as 1, 0.5 or -1.",
    )
    match = _WEIGHTED.match(item.strip())
    if not match:
        meant = _WEIGHT_LIKE.search(item.strip())
        _check(
            meant is None,
            f"The prompt {item.strip()!r} ends in ':{meant and meant['suffix']}', which looks "
            "like a weight but is not a number. Write 'text:weight' or 'text:weight:stop' "
            "with plain numbers (e.g. 'fog:0.5' or 'fog:-1:0.8'), or put a space after the "
            "colon to keep it as text.",
        )
        return PromptSpec(item.strip())
    weight, stop = float(match["weight"]), match["stop"]
    return PromptSpec(match["text"].strip(), weight, float(stop) if stop else -math.inf)


def parse_prompts(text: str) -> list[PromptSpec]:
    """'a lighthouse:1 | fog:0.5 | text:-1' -> [PromptSpec, …]; empty items are dropped."""
    _check(
        len(text) <= MAX_PROMPT_CHARS,
        f"The prompt is {len(text)} characters long; CLIP reads only about 77 tokens (a few "
        f"hundred characters) of each prompt. Use a shorter prompt (at most "
        f"{MAX_PROMPT_CHARS} characters), or split the text into several '|' prompts.",
    )
    control = next((c for c in text if unicodedata.category(c) == "Cc" and c not in "\t\n\r"), None)
    _check(
        control is None,
        f"The prompt holds the control character U+{ord(control or ' '):04X}, which is no "
        "text CLIP can read (often a paste from a terminal or a file with binary data). "
        "Type the prompt again, or paste it as plain text.",
    )
    specs = [parse_prompt(item) for item in text.split("|") if _visible(item)]
    hidden = [item for item in text.split("|") if item.strip() and not _visible(item)]
    _check(
        not hidden,
        f"A prompt in {text!r} holds only invisible characters (zero-width spaces or joiners, "
        "or other formatting marks). Type visible words, or remove it.",
    )
    for spec in specs:
        _check(
            spec.text != "",
            f"A prompt in {text!r} has a weight but no text. Write 'text:weight', e.g. 'fog:0.5'.",
        )
        _check(
            math.isfinite(spec.weight),
            f"The prompt {spec.text!r} has weight {spec.weight}; weights must be finite numbers.",
        )
    return specs


# A timeline line: "120: prompts", "120 images: a.png | b.png:0.5" or "120 noise: 7:0.5 | 9".
_CHANGE = re.compile(r"^\s*(?P<at>\d+)\s*(?P<kind>[A-Za-z]*)\s*:(?P<value>.*)$", re.DOTALL)
CHANGE_KINDS = ("prompt", "images", "noise")


@dataclass(frozen=True)
class PromptChange:
    """One timeline line: from ``iteration`` on, the prompts of ``kind`` are ``value``."""

    iteration: int
    kind: str  # prompt (text prompts), images or noise
    value: str  # as the setting is written: "a:1 | b:0.5", "a.png | b.png:0.5", "7:0.5 | 9"

    def line(self) -> str:
        """The line as the timeline setting holds it (``parse_change`` reads it back)."""
        kind = "" if self.kind == "prompt" else f" {self.kind}"
        return f"{self.iteration}{kind}: {self.value}"

    def settings(self) -> dict[str, Any]:
        """The RunConfig settings this change sets."""
        items = [item.strip() for item in self.value.split("|") if item.strip()]
        if self.kind == "prompt":
            return {"prompt": self.value}
        if self.kind == "images":
            return {"image_prompts": items}
        seeds, weights = [], []
        for item in items:  # "7:0.5" -> seed 7, weight 0.5; "9" -> seed 9, weight 1
            seed, _, weight = item.partition(":")
            seeds.append(int(seed))
            weights.append(float(weight) if weight.strip() else 1.0)
        return {"noise_prompt_seeds": seeds, "noise_prompt_weights": weights}


def parse_change(line: str) -> PromptChange:
    """A timeline line -> PromptChange; ConfigError saying how to write one."""
    how = (
        "Write 'ITERATION: prompts' (e.g. '200: a tree:1 | fog:0.5'), 'ITERATION images: "
        "a.png | b.png:0.5' or 'ITERATION noise: 7:0.5 | 9', the iteration a whole number of "
        "at least 1."
    )
    match = _CHANGE.match(line) if isinstance(line, str) else None
    _check(match is not None, f"The timeline line {brief(line)} is not a change of prompts. {how}")
    kind = match["kind"].lower() or "prompt"
    _check(
        kind in CHANGE_KINDS,
        f"The timeline line {line.strip()!r} names {match['kind']!r}, which is not images or "
        f"noise. {how}",
    )
    change = PromptChange(int(match["at"]), kind, match["value"].strip())
    _check(change.iteration >= 1, f"The timeline line {line.strip()!r} is at iteration 0. {how}")
    if kind == "noise":
        for item in (i.strip() for i in change.value.split("|") if i.strip()):
            seed, _, weight = item.partition(":")
            _check(
                seed.strip().isdigit() and (not weight.strip() or _is_number(weight)),
                f"The timeline line {line.strip()!r} has the noise prompt {item!r}; write "
                "each as SEED or SEED:WEIGHT with plain numbers, e.g. '7:0.5 | 9'.",
            )
    return change
