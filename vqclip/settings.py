"""The settings schema: how each RunConfig field describes itself to the CLI and the panel.

A field is declared with ``_setting`` (its default, help text, group and hints); ``describe``
turns a config class's fields into ``Setting`` objects (kind, flag, widget, how to read the
value from typed text and write it back), which ``vqclip.cli`` and ``vqclip.ui.form`` both
render, so a new setting is added in one place. No torch.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from typing import Any

from vqclip.checks import ConfigError, _about
from vqclip.prompt_syntax import parse_prompts
from vqclip.schedules import ScheduleError, parse_schedule


def _setting(default: Any, help: str, group: str = "generation", **extra: Any) -> Any:
    """A dataclass field whose metadata feeds the CLI and the widget panel."""
    meta = {"help": help, "group": group, **extra}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class Setting:
    """One RunConfig field as the CLI and the panel both see it: what kind of value it holds,
    how to read it from text and write it back, and the widget that fits it.

    Kinds: ``text``, ``int``, ``float``, ``bool``, ``choice``, ``pair`` (two whole numbers),
    ``seed`` (a whole number or empty for random), ``lines`` (a list of text, one per line)
    and ``ints``/``floats`` (comma-separated lists). ``optional`` text reads empty as None.
    """

    name: str
    kind: str
    default: Any
    help: str
    group: str
    optional: bool = False
    choices: tuple[str, ...] = ()
    flag: str = ""  # the CLI flag, e.g. "--clip"
    positional: bool = False  # the CLI takes it without a flag (the prompt)
    widget: str = ""  # the panel's hint: "textarea", "dropdown", "pair", "combobox", …

    @property
    def element(self) -> type:
        """The type of one item: what argparse converts each word of the flag with."""
        return {"int": int, "pair": int, "seed": int, "ints": int}.get(
            self.kind, float if self.kind in ("float", "floats") else str
        )

    def parse(self, text: str) -> Any:
        """The value from text as a person types it (the panel, the queue's web form);
        ConfigError naming this setting when the text cannot be read."""
        text = str(text)
        if self.kind == "lines":
            return [line.strip() for line in text.splitlines() if line.strip()]
        if self.kind == "pair":  # "640 480", "640x480", "640X480", "640 × 480" or "640, 480"
            items = re.split(r"\s*[xX×,]\s*|\s+", text.strip())
            if len(items) != 2 or not all(items):  # "640", "1 2 3", "640x480x", "640,,480"
                raise ConfigError(
                    f"{self.name} needs two whole numbers, width and height (e.g. 640x480 or "
                    f"640 480), got {text.strip()!r}.",
                    self.name,
                )
            return [self._number(item) for item in items]
        if self.kind in ("ints", "floats"):
            return [self._number(item) for item in text.split(",") if item.strip()]
        if self.kind == "bool":
            return text.strip().lower() in ("1", "true", "yes", "on")
        stripped = text.strip()
        if self.kind == "seed" or self.optional and self.kind in ("int", "float"):
            return None if stripped.lower() in ("", "random") else self._number(stripped)
        if self.kind in ("int", "float"):
            return self._number(stripped)
        if self.name == "prompt":
            _about("prompt", parse_prompts, text)  # the message names the malformed prompt
            return text
        if self.name == "snapshots":
            try:
                parse_schedule(stripped)
            except ScheduleError as error:
                raise ConfigError(str(error), self.name) from None
        return None if (self.optional and not stripped) else text

    def format(self, value: Any) -> str:
        """The value as text that ``parse`` reads back."""
        if value is None:
            return "random" if self.kind == "seed" else ""
        if self.kind == "lines":
            return "\n".join(value)
        if self.kind in ("ints", "floats", "pair"):
            return ", ".join(map(str, value))
        return str(value)

    def _number(self, text: str) -> int | float:
        try:
            return self.element(text.strip())
        except ValueError:
            kind = "a whole number" if self.element is int else "a number"
            raise ConfigError(f"{self.name}: {text.strip()!r} is not {kind}.", self.name) from None


def _describe(f: dataclasses.Field) -> Setting:
    """The Setting for one RunConfig field: the one place its annotation is read."""
    meta, annotation = f.metadata, str(f.type)
    core = annotation.replace(" | None", "")
    if f.name == "seed":
        kind = "seed"
    elif meta.get("nargs") == 2:
        kind = "pair"
    elif "choices" in meta:
        kind = "choice"
    else:
        kind = {
            "list[str]": "lines",
            "list[int]": "ints",
            "list[float]": "floats",
            "bool": "bool",
            "int": "int",
            "float": "float",
        }.get(core, "text")
    widget = {"pair": "pair", "choice": "dropdown", "bool": "checkbox", "seed": "combobox"}
    hint = "textarea" if f.name == "prompt" or kind == "lines" else widget.get(kind, "text")
    if f.name in ("vqgan", "clip_model"):
        hint = "dropdown"  # known names, and a path typed in stays as an extra option
    default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
    return Setting(
        name=f.name,
        kind=kind,
        default=default,
        help=meta["help"],
        group=meta["group"],
        optional="None" in annotation,
        choices=tuple(meta.get("choices", ())),
        flag="--" + meta.get("flag", f.name.replace("_", "-")),
        positional=bool(meta.get("positional")),
        widget=hint,
    )


def describe(config_class: type) -> list[Setting]:
    """Every setting of a config dataclass (RunConfig), in order, described once."""
    return [_describe(f) for f in dataclasses.fields(config_class)]
