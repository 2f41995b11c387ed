"""The settings form: one widget per RunConfig setting, built from its Setting description,
each problem shown beside the field it is about (ConfigError.field)."""

from __future__ import annotations

from typing import Any

import ipywidgets as W
import traitlets

from vqclip.config import ConfigError, RunConfig, Setting, settings
from vqclip.registry import CLIP_MODELS, VQGAN_MODELS
from vqclip.ui.look import LABEL_WIDTH, TIP, escape

GROUPS = ("generation", "prompts", "models", "speed", "output")  # tab order


class Pair(W.HBox):
    """Two whole numbers side by side (width × height) with a Python-side ``value`` list."""

    value = traitlets.List()

    def __init__(self, value: list[int], description: str, tip: str) -> None:
        self._a = W.IntText(value[0], description=description, layout=W.Layout(width="210px"))
        self._b = W.IntText(value[1], layout=W.Layout(width="80px"))
        self._a.style.description_width = LABEL_WIDTH
        setattr(self._a, TIP, tip)
        super().__init__([self._a, W.HTML("&nbsp;×&nbsp;"), self._b])
        self.value = [int(v) for v in value]
        self._a.observe(self._from_parts, "value")
        self._b.observe(self._from_parts, "value")
        self.observe(self._to_parts, "value")

    def _from_parts(self, _: Any) -> None:
        self.value = [self._a.value, self._b.value]

    def _to_parts(self, change: dict) -> None:
        self._a.value, self._b.value = change["new"]


# Widgets whose value is already the setting's value (no text to parse).
_TYPED = (Pair, W.Dropdown, W.Checkbox, W.IntText, W.FloatText)


class Field:
    """One setting: its input widget (chosen by the Setting's widget hint), and its error."""

    def __init__(self, setting: Setting, value: Any) -> None:
        self.setting = setting
        label = setting.name.replace("_", " ")
        common = {"description": label, "style": {"description_width": LABEL_WIDTH}}
        common[TIP] = setting.help
        wide = W.Layout(width="420px")
        hint, kind = setting.widget, setting.kind
        if setting.name == "prompt":
            self.input = W.Textarea(
                value,
                placeholder="a lighthouse:1 | fog:0.5 | text:-1   (text:weight | …)",
                layout=W.Layout(width="640px", height="64px"),
                **common,
            )
        elif hint == "pair":
            self.input = Pair(value, label, setting.help)
        elif hint == "dropdown":
            known = list(setting.choices) or list(
                VQGAN_MODELS if setting.name == "vqgan" else CLIP_MODELS
            )
            options = known + ([value] if value not in known else [])
            self.input = W.Dropdown(options=options, value=value, **common)
        elif hint == "checkbox":
            self.input = W.Checkbox(value, indent=False, **common)
        elif hint == "combobox":  # a text box with a "random" choice in its drop-down list
            text = setting.format(value)
            self.input = W.Combobox(value=text, options=["random"], placeholder="random", **common)
        elif kind == "lines":
            placeholder = "one per line"
            self.input = W.Textarea(
                setting.format(value), placeholder=placeholder, layout=wide, **common
            )
        elif kind in ("ints", "floats"):
            placeholder = "comma separated"
            self.input = W.Text(
                setting.format(value), placeholder=placeholder, layout=wide, **common
            )
        elif kind == "int":
            self.input = W.IntText(value, **common)
        elif kind == "float":
            self.input = W.FloatText(value, **common)
        else:  # text, and optional text: empty means None
            self.input = W.Text(setting.format(value), layout=wide, **common)
        self.error = W.HTML(layout=W.Layout(margin="0 0 0 8px"))
        self.error.add_class("vqclip-error")
        self.box = W.HBox([self.input, self.error])

    @property
    def name(self) -> str:
        return self.setting.name

    def value(self) -> Any:
        """The setting as RunConfig wants it; ConfigError when the text cannot be read."""
        raw = self.input.value
        if isinstance(self.input, _TYPED):
            return list(raw) if isinstance(raw, list) else raw
        return self.setting.parse(raw)

    def set(self, value: Any) -> None:
        if isinstance(self.input, W.Dropdown) and value not in self.input.options:
            self.input.options = [*self.input.options, value]
        if isinstance(self.input, _TYPED):
            self.input.value = value
        else:
            self.input.value = self.setting.format(value)

    def show(self, message: str) -> None:
        self.error.value = (
            f'<span style="color:#c0392b">{escape(message)}</span>' if message else ""
        )


class Form:
    """Every setting but the prompt in tabs by group, the prompt box above them, and the
    first problem in one line under them."""

    def __init__(self, config: RunConfig) -> None:
        self.fields = {s.name: Field(s, getattr(config, s.name)) for s in settings()}
        pages, titles = [], []
        for group in GROUPS:
            boxes = [
                f.box
                for f in self.fields.values()
                if f.setting.group == group and f.name != "prompt"
            ]
            if boxes:
                pages.append(W.VBox(boxes))
                titles.append(group)
        self.tabs = W.Tab(pages)
        for k, title in enumerate(titles):
            self.tabs.set_title(k, title)
        self.problem = W.HTML()
        self.problem.add_class("vqclip-problem")
        self.problem_text = ""

    def observe(self, callback: Any, names: tuple[str, ...] | None = None) -> None:
        """Call ``callback`` when any field (or those named) changes."""
        for name, field in self.fields.items():
            if names is None or name in names:
                field.input.observe(callback, "value")

    def check(self) -> RunConfig | None:
        """Read and validate every field, showing each problem beside its field; the config,
        or None when something is wrong (then ``problem_text`` says what)."""
        values, first = {}, None
        for field in self.fields.values():
            try:
                values[field.name] = field.value()
                field.show("")
            except ConfigError as error:
                field.show(str(error))
                first = first or str(error)
        config = None
        if first is None:
            try:
                config = RunConfig(**values).validate()
            except ConfigError as error:
                first = str(error)
                if error.field in self.fields:
                    self.fields[error.field].show(first)
        self.problem_text = first or ""
        self.problem.value = (
            f'<span style="color:#c0392b">⚠ {escape(first)}</span>' if first else ""
        )
        return config

    def values(self, names: tuple[str, ...]) -> dict[str, Any]:
        """Those fields' values (ConfigError if one cannot be read)."""
        return {name: self.fields[name].value() for name in names}
