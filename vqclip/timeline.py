"""Prompts that change while a run goes: steering a running run, story mode, text passages.

A run's prompt timeline is its ``timeline`` setting: lines such as "200: a tree" (parsed by
``config.parse_change``), applied at the top of their iteration. Everything here only writes
such lines: ``Steering`` takes requests from another thread (the panel's Apply, a notebook
cell) and hands them to the run, which fixes the iteration and records them; ``story``,
``passage`` and ``read_timeline`` make them before a run starts. So a steered run replays
from its recipe like any other.
"""

from __future__ import annotations

import json
import re
import threading
import warnings
from pathlib import Path
from typing import Any

from vqclip.config import (
    ConfigError,
    PromptChange,
    RunConfig,
    parse_change,
    parse_prompt,
    parse_prompts,
)

STORY_SEPARATOR = "^"  # nerdyrodent/VQGAN-CLIP's story syntax: "a seed ^ a sprout ^ a tree"


class Steering:
    """Prompt changes asked for while a run goes, handed to the run between two steps.

    ``steer`` may be called from any thread; it checks the change against the run's settings
    at once (a bad prompt is refused here with a ConfigError, and never reaches the run). The
    run calls ``take`` at the top of each iteration: the changes asked for since become
    timeline lines at that iteration. Requests of one kind made before the run takes them
    replace each other: the last one is applied.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pending: dict[str, str] = {}  # kind -> value, in the order first asked
        self._config: RunConfig | None = None  # the running run's settings, timeline so far
        self._next = 0  # the iteration a change asked for now applies at

    def steer(
        self,
        prompt: str | None = None,
        *,
        images: str | list[str] | None = None,
        noise: str | None = None,
    ) -> str:
        """Ask for new text prompts (``"a tree:1 | fog:0.5"``), image prompts (paths with
        optional weights) or noise prompts (``"7:0.5 | 9"``) from the next step on; return
        the line(s) as they would be recorded. ConfigError when the change is not usable."""
        if isinstance(images, list):
            images = " | ".join(images)
        asked = {"prompt": prompt, "images": images, "noise": noise}
        asked = {kind: value.strip() for kind, value in asked.items() if value is not None}
        if not asked:
            raise ConfigError("Nothing to steer: give a prompt, images or noise prompts.")
        with self._lock:
            pending = {**self._pending, **asked}
            if self._config is not None:
                self._check(self._config, self._next, pending)
            else:  # before the run starts: what can be checked without its settings
                for kind, value in asked.items():
                    settings = parse_change(PromptChange(1, kind, value).line()).settings()
                    if kind == "prompt":
                        parse_prompts(value)
                    for image in settings.get("image_prompts", []):
                        parse_prompt(image)
            self._pending = pending
            return "\n".join(_lines(max(self._next, 1), pending))

    def take(self, iteration: int, config: RunConfig) -> list[str]:
        """For the run, at the top of ``iteration``: the timeline lines of the changes asked
        for since the last call (checked again against ``config``; none if they no longer
        fit). Changes asked for before the first step apply at iteration 1: the prompts of
        iteration 0 are the run's own."""
        with self._lock:
            lines: list[str] = []
            if iteration > 0:
                pending, self._pending = self._pending, {}
                lines = _lines(iteration, pending)
                try:
                    self._check(config, iteration, pending)
                except ConfigError as error:  # asked before the run could check it all
                    warnings.warn(
                        f"The steered change {'; '.join(lines)} was not applied: {error}",
                        stacklevel=2,
                    )
                    lines = []
            self._next = iteration + 1
            self._config = config.replace(timeline=[*config.timeline, *lines]) if lines else config
            return lines

    def stop(self) -> None:
        """The run has ended: later requests are refused with a message saying so."""
        with self._lock:
            self._next = -1

    @staticmethod
    def _check(config: RunConfig, iteration: int, pending: dict[str, str]) -> None:
        if not pending:
            return
        if iteration < 0:
            raise ConfigError("The run has ended: nothing to steer. Resume it to go on.")
        if iteration > config.iterations:
            raise ConfigError(
                f"The run is at its last iteration ({config.iterations}): no step is left to "
                "steer. Resume it with more iterations to go on."
            )
        lines = _lines(max(iteration, 1), pending)
        config.replace(timeline=[*config.timeline, *lines]).validate()


def _lines(iteration: int, pending: dict[str, str]) -> list[str]:
    return [PromptChange(iteration, kind, value).line() for kind, value in pending.items()]


def story(parts: list[str], every: int, start: int = 0) -> tuple[str, list[str]]:
    """A story's parts (each a prompt, "|"-separated prompts allowed) -> (the first prompt,
    timeline lines switching to each next part every ``every`` iterations)."""
    parts = [part.strip() for part in parts if part.strip()]
    if not parts:
        raise ConfigError("The story is empty: give prompts separated by '^'.")
    if not isinstance(every, int) or every < 1:
        raise ConfigError(
            f"story_every must be a whole number of iterations of at least 1, got {every!r}."
        )
    for part in parts:
        parse_prompts(part)  # the message names a malformed prompt
    return parts[0], [f"{start + i * every}: {part}" for i, part in enumerate(parts) if i]


def split_story(text: str) -> list[str]:
    """ "a seed:1 ^ a sprout ^ a tree" -> its parts."""
    return [part.strip() for part in text.split(STORY_SEPARATOR) if part.strip()]


# A sentence ends at . ! ? or … (with closing quotes or brackets) followed by space.
_CLOSE = "[\"')\\]»”’]"  # what may close a sentence after its stop, and stays with it
_SENTENCE_END = re.compile(rf"(?:(?<=[.!?…])|(?<=[.!?…]{_CLOSE})|(?<=[.!?…]{_CLOSE}{_CLOSE}))\s+")


def passage(text: str) -> list[str]:
    """A passage of prose -> its sentences, each a prompt (line breaks inside one are spaces,
    a blank line ends one; "|" and ":" that would read as prompt syntax are made plain)."""
    sentences = []
    for paragraph in re.split(r"\n\s*\n", text):
        flat = " ".join(paragraph.split())
        for sentence in _SENTENCE_END.split(flat):
            # "|" separates prompts and a trailing ":2" would be a weight: neither is prose
            sentence = sentence.replace("|", ",").strip()
            sentence = re.sub(r":(?=\s*[-+.\d])", " -", sentence)
            if any(c.isalnum() for c in sentence):
                sentences.append(sentence)
    if not sentences:
        raise ConfigError("The passage holds no sentence: give some text with words in it.")
    return sentences


def read_timeline(path: str | Path) -> tuple[dict[str, Any], list[str]]:
    """A timeline file -> (the prompt settings it gives for iteration 0, the timeline lines).

    YAML or JSON, a mapping of iteration to prompts (``0: a seed``, ``100: a sprout``), or to
    a mapping of kinds (``200: {prompt: a tree, images: [a.png], noise: "7:0.5"}``); any other
    file is read as lines in the timeline setting's own form ("100: a sprout")."""
    file = Path(path)
    if not file.is_file():
        raise ConfigError(f"Timeline file {str(path)!r} does not exist. Check the path.")
    text = file.read_text(encoding="utf-8")
    if file.suffix.lower() in (".yaml", ".yml", ".json"):
        import yaml

        try:
            data = json.loads(text) if file.suffix.lower() == ".json" else yaml.safe_load(text)
        except (ValueError, yaml.YAMLError) as error:
            raise ConfigError(
                f"Timeline file {str(path)!r} cannot be read ({' '.join(str(error).split())})."
                " Fix the file: it maps iterations to prompts, e.g. '0: a seed' then "
                "'100: a sprout' on the next line."
            ) from None
        return _from_mapping(data, str(path))
    lines = [line for line in text.splitlines() if line.strip() and not line.startswith("#")]
    return _split_start([_change_at(line) for line in lines])


def _change_at(line: str) -> PromptChange:
    """A line of a timeline file, where iteration 0 (the run's starting prompts) may appear."""
    start = re.match(r"^\s*0+(?=\s*[A-Za-z]*\s*:)", line)
    if start:  # parse it as iteration 1, then put it back at 0
        change = parse_change("1" + line[start.end() :])
        return PromptChange(0, change.kind, change.value)
    return parse_change(line)


def _split_start(changes: list[PromptChange]) -> tuple[dict[str, Any], list[str]]:
    start: dict[str, Any] = {}
    for change in changes:
        if change.iteration == 0:
            start.update(change.settings())
    return start, [c.line() for c in changes if c.iteration > 0]


def _from_mapping(data: Any, path: str) -> tuple[dict[str, Any], list[str]]:
    if not isinstance(data, dict) or not all(_whole(key) for key in data):
        raise ConfigError(
            f"Timeline file {path!r} must map iterations (whole numbers) to prompts, e.g. "
            "'0: a seed' and '100: a sprout' on separate lines."
        )
    changes = []
    for at in sorted(data, key=int):
        kinds = data[at] if isinstance(data[at], dict) else {"prompt": data[at]}
        for kind, value in kinds.items():
            if isinstance(value, list):
                value = " | ".join(map(str, value))
            if not isinstance(value, (str, int, float)) or kind not in (
                "prompt",
                "images",
                "noise",
            ):
                raise ConfigError(
                    f"Timeline file {path!r}: at {at}, {kind!r}: {value!r} is not a prompt; "
                    "give text, or prompt/images/noise keys with text."
                )
            changes.append(_change_at(PromptChange(int(at), kind, str(value).strip()).line()))
    return _split_start(changes)


def _whole(value: Any) -> bool:
    try:
        return int(value) >= 0 and str(int(value)) == str(value).strip()
    except (TypeError, ValueError):
        return False
