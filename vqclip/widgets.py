"""The notebook panel: a form generated from RunConfig, Run and Stop, a live image, progress, a
loss/similarity plot, a snapshot gallery with a frame scrubber, export and resume.

The only vqclip module that imports ipywidgets or IPython. Three lines in a notebook::

    from vqclip.widgets import panel
    ui = panel(prompt="a lighthouse:1 | fog:0.5")
    ui

How Stop works: Run starts ``generate`` in a background thread and returns at once, so the
kernel is idle and keeps handling widget messages (button clicks) in JupyterLab, Notebook and
Colab alike. Stop sets a StopFlag that ``generate`` polls after every step; the run then ends
"stopped" with every snapshot, the log and the state saved, ready for Resume.

Environment variables (for offline trials, tests and headless notebook runs):

- ``VQCLIP_TINY_MODELS=DIR``: use the tiny random models in DIR (made there if missing); the
  panel says so in a banner, since they paint noise, not pictures.
- ``VQCLIP_AUTORUN=1``: ``panel()`` presses Run at once (notebooks executed without a person).
- ``VQCLIP_ITERATIONS=N``: ``panel()`` runs N iterations, whatever the notebook asks for.
"""

from __future__ import annotations

import dataclasses
import io
import os
import threading
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import ipywidgets as W
import traitlets
from IPython.display import FileLink, display
from PIL import Image

from vqclip.config import ConfigError, RunConfig, parse_prompts, settings
from vqclip.engine import Plan, Step
from vqclip.export import ExportError, export_run, list_snapshots
from vqclip.models import Models, load_models, make_tiny_models
from vqclip.observers import Observer, RunResult, StopFlag, generate, read_log, resume
from vqclip.registry import CLIP_MODELS, VQGAN_MODELS
from vqclip.schedules import ScheduleError, parse_schedule
from vqclip.state import FINAL_FILE, RUN_FILE, read_run

__all__ = ["Panel", "panel", "cached_models", "tiny_model_settings"]

TINY_ENV = "VQCLIP_TINY_MODELS"
AUTORUN_ENV = "VQCLIP_AUTORUN"
ITERATIONS_ENV = "VQCLIP_ITERATIONS"
TINY_BANNER = "tiny random models: noise, not pictures"
TINY_SIZE = [64, 64]  # the tiny VQGAN has f = 4: 256 px would be 16x slower and no prettier

_GROUPS = ("generation", "prompts", "models", "speed", "output")  # tab order
_LABEL_WIDTH = "120px"
# ipywidgets 8 renamed description_tooltip; Colab may still run 7.
_TIP = "tooltip" if int(W.__version__.split(".")[0]) >= 8 else "description_tooltip"


# --- models: loaded once per kernel --------------------------------------------------------

_MODEL_FIELDS = ("vqgan", "vqgan_config", "vqgan_checkpoint", "clip_model", "device")
_models: dict[tuple, Models] = {}
_models_lock = threading.Lock()


def _model_key(config: RunConfig) -> tuple:
    key = {name: getattr(config, name) for name in _MODEL_FIELDS}
    if config.vqgan_config is not None:  # local files override the registry name
        key["vqgan"] = None
    return tuple(key.values())


def _model_label(config: RunConfig) -> str:
    vqgan = Path(config.vqgan_config).name if config.vqgan_config else config.vqgan
    clip = config.clip_model
    clip = clip if clip in CLIP_MODELS else Path(clip).name
    return f"{vqgan} + {clip} ({config.device})"


def cached_models(config: RunConfig, say: Callable[[str], None] = lambda _: None) -> Models:
    """The models ``config`` names, loaded once per kernel and reused by every later run.

    Only one pair is kept: a second pair of real models may not fit beside the first on a GPU.
    """
    key = _model_key(config)
    with _models_lock:
        if key not in _models:
            _models.clear()
            say(f"loading models {_model_label(config)}… (the first use downloads them)")
            _models[key] = load_models(config, progress=False)
        return _models[key]


def _remember_models(config: RunConfig, models: Models) -> None:
    with _models_lock:
        _models.clear()
        _models[_model_key(config)] = models


def tiny_model_settings() -> dict[str, str]:
    """Model settings for the tiny models in $VQCLIP_TINY_MODELS (made if missing), else {}."""
    folder = os.environ.get(TINY_ENV)
    if not folder:
        return {}
    names = {"vqgan_config": "vqgan.yaml", "vqgan_checkpoint": "vqgan.ckpt", "clip": "clip.pt"}
    paths = {role: Path(folder) / name for role, name in names.items()}
    if not all(path.is_file() for path in paths.values()):
        paths = make_tiny_models(folder)
    return {
        "vqgan_config": str(paths["vqgan_config"]),
        "vqgan_checkpoint": str(paths["vqgan_checkpoint"]),
        "clip_model": str(paths["clip"]),
    }


# --- the form: one widget per RunConfig field ----------------------------------------------


class _Pair(W.HBox):
    """Two whole numbers side by side (width × height) with a Python-side ``value`` list."""

    value = traitlets.List()

    def __init__(self, value: list[int], description: str, tip: str) -> None:
        self._a = W.IntText(value[0], description=description, layout=W.Layout(width="210px"))
        self._b = W.IntText(value[1], layout=W.Layout(width="80px"))
        self._a.style.description_width = _LABEL_WIDTH
        setattr(self._a, _TIP, tip)
        super().__init__([self._a, W.HTML("&nbsp;×&nbsp;"), self._b])
        self.value = [int(v) for v in value]
        self._a.observe(self._from_parts, "value")
        self._b.observe(self._from_parts, "value")
        self.observe(self._to_parts, "value")

    def _from_parts(self, _: Any) -> None:
        self.value = [self._a.value, self._b.value]

    def _to_parts(self, change: dict) -> None:
        self._a.value, self._b.value = change["new"]


def _kind(f: dataclasses.Field) -> str:
    return str(f.type).replace(" | None", "")


class _Field:
    """One RunConfig setting: its input widget, how to read it, and its error beside it."""

    def __init__(self, f: dataclasses.Field, value: Any) -> None:
        self.name, self.kind, meta = f.name, _kind(f), f.metadata
        self.optional = "None" in str(f.type)
        label, tip = f.name.replace("_", " "), meta["help"]
        common = {"description": label, "style": {"description_width": _LABEL_WIDTH}, _TIP: tip}
        width = W.Layout(width="420px")
        if f.name == "prompt":
            self.input = W.Textarea(
                value,
                placeholder="a lighthouse:1 | fog:0.5 | text:-1   (text:weight | …)",
                layout=W.Layout(width="640px", height="64px"),
                **common,
            )
        elif meta.get("nargs") == 2:
            self.input = _Pair(value, label, tip)
        elif "choices" in meta or f.name in ("vqgan", "clip_model"):
            known = meta.get("choices") or list(VQGAN_MODELS if f.name == "vqgan" else CLIP_MODELS)
            options = list(known) + ([value] if value not in known else [])
            self.input = W.Dropdown(options=options, value=value, **common)
        elif self.kind == "bool":
            self.input = W.Checkbox(value, indent=False, **common)
        elif f.name == "seed":  # a text box with a "random" choice in its drop-down list
            text = "random" if value is None else str(value)
            self.input = W.Combobox(value=text, options=["random"], placeholder="random", **common)
        elif self.kind == "list[str]":
            self.input = W.Textarea(
                "\n".join(value), placeholder="one per line", layout=width, **common
            )
        elif self.kind.startswith("list["):
            self.input = W.Text(
                ", ".join(map(str, value)), placeholder="comma separated", layout=width, **common
            )
        elif self.kind == "int" and not self.optional:
            self.input = W.IntText(value, **common)
        elif self.kind == "float":
            self.input = W.FloatText(value, **common)
        else:  # str and optional str: empty means None
            self.input = W.Text("" if value is None else str(value), layout=width, **common)
        self.error = W.HTML(layout=W.Layout(margin="0 0 0 8px"))
        self.error.add_class("vqclip-error")
        self.box = W.HBox([self.input, self.error])

    def value(self) -> Any:
        """The setting as RunConfig wants it; ConfigError when the text cannot be read."""
        raw = self.input.value
        if isinstance(self.input, (_Pair, W.Dropdown, W.Checkbox, W.IntText, W.FloatText)):
            return list(raw) if isinstance(raw, list) else raw
        text = raw.strip()
        if self.name == "seed":
            return None if text.lower() in ("", "random") else self._number(int, text)
        if self.kind == "list[str]":
            return [line.strip() for line in raw.splitlines() if line.strip()]
        if self.kind.startswith("list["):
            cast = int if self.kind == "list[int]" else float
            return [self._number(cast, item) for item in text.split(",") if item.strip()]
        if self.name == "prompt":
            parse_prompts(raw)  # says which prompt is malformed, beside the box
            return raw
        if self.name == "snapshots":
            try:
                parse_schedule(text)
            except ScheduleError as error:
                raise ConfigError(str(error)) from None
        return None if (self.optional and not text) else raw

    def _number(self, cast: type, text: str) -> Any:
        try:
            return cast(text.strip())
        except ValueError:
            kind = "a whole number" if cast is int else "a number"
            raise ConfigError(f"{self.name}: {text.strip()!r} is not {kind}.") from None

    def set(self, value: Any) -> None:
        if isinstance(self.input, W.Dropdown) and value not in self.input.options:
            self.input.options = [*self.input.options, value]
        if isinstance(self.input, (_Pair, W.Dropdown, W.Checkbox, W.IntText, W.FloatText)):
            self.input.value = value
        elif self.name == "seed":
            self.input.value = "random" if value is None else str(value)
        elif isinstance(value, list):
            sep = "\n" if self.kind == "list[str]" else ", "
            self.input.value = sep.join(map(str, value))
        else:
            self.input.value = "" if value is None else str(value)

    def show(self, message: str) -> None:
        self.error.value = (
            f'<span style="color:#c0392b">{_escape(message)}</span>' if message else ""
        )


# Which field a RunConfig.validate() message is about, when it does not start with its name.
_MESSAGE_OWNERS = {
    "Image prompt": "image_prompts",
    "Unknown VQGAN": "vqgan",
    "CLIP model": "clip_model",
    "Nothing to aim": "prompt",
    "Snapshot": "snapshots",
    "noise prompt": "noise_prompt_weights",
}


def _owner(message: str, names: list[str]) -> str | None:
    for start, name in _MESSAGE_OWNERS.items():
        if message.startswith(start) or message.split(" ", 1)[-1].startswith(start):
            return name
    first = message.split(" ", 1)[0].rstrip(":")
    return first if first in names else None


# --- helpers ---------------------------------------------------------------------------------


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _png(image: Image.Image, size: int | None = None) -> bytes:
    if size is not None:
        image = image.copy()
        image.thumbnail((size, size))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _wrap(children: list[W.Widget]) -> W.Box:
    """A row that wraps onto the next line in a narrow notebook instead of cutting widgets off."""
    return W.Box(children, layout=W.Layout(flex_flow="row wrap", align_items="center"))


def _image(css_class: str, **options: Any) -> W.Image:
    """A PNG Image widget that is hidden while it has no picture (no broken-image icon)."""
    image = W.Image(format="png", layout=W.Layout(display="none", margin="2px"), **options)
    image.add_class(css_class)

    def toggle(change: dict) -> None:
        image.layout.display = "" if len(change["new"]) else "none"

    image.observe(toggle, "value")
    return image


def _plain(text: str) -> str:
    """Drop emoji and CJK from plot labels: matplotlib's default font has no glyphs for them."""
    return "".join(c for c in text if ord(c) < 0x2600 or 0x27C0 <= ord(c) < 0x2E80).strip()


def _plot_png(history: list[dict[str, Any]]) -> bytes:
    """Loss (left axis) and each prompt's similarity (right axis) against iteration, as PNG."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(4.2, 2.6), dpi=80, layout="constrained")
    FigureCanvasAgg(fig)  # never touches pyplot's global backend
    ax = fig.subplots()
    its = [row["iteration"] for row in history]
    ax.plot(its, [row["loss"] for row in history], color="black", label="loss")
    ax.set_xlabel("iteration")
    ax.set_ylabel("loss")
    prompts = history[-1]["prompts"] if history else []
    if prompts:
        sim = ax.twinx()
        sim.set_ylabel("similarity")
        for k, prompt in enumerate(prompts[:6]):
            ys = [row["prompts"][k]["similarity"] for row in history if len(row["prompts"]) > k]
            sim.plot(its[-len(ys) :], ys, "--", label=_plain(prompt["prompt"])[:24] or f"#{k}")
        sim.legend(fontsize=7, loc="lower right")
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()


def _run_dirs(out: str | os.PathLike) -> list[Path]:
    """Run directories under ``out``, newest first."""
    found = [p.parent for p in Path(out).glob(f"*/{RUN_FILE}")]
    return sorted(found, key=lambda p: (p / RUN_FILE).stat().st_mtime, reverse=True)


def _run_label(run_dir: Path) -> str:
    try:
        record = read_run(run_dir)
        return f"{run_dir.name}  ({record.get('status')}, it {record.get('iteration')})"
    except Exception:
        return run_dir.name


# --- the live view: an observer that only reads Steps ---------------------------------------


class _LiveView(Observer):
    """Shows every ``every``-th Step (image, progress, plot) and each snapshot as it is made."""

    def __init__(self, panel: Panel, config: RunConfig, start: int, every: int) -> None:
        self.panel, self.every = panel, max(1, every)
        self.keep = set(parse_schedule(config.snapshots).iterations(config.iterations))
        self.mark = (start, time.monotonic())  # for iterations per second
        self.shown, self.plotted, self.last = -1, 0.0, None

    def start(self, plan: Plan) -> None:
        """The run's resolved settings are known: show its seed and what was changed."""
        self.panel.seed_used = plan.config.seed
        if self.mark[0] == 0:  # a resume has said where it continues from
            notes = "; ".join(plan.notices)
            self.panel._say(f"running, seed {plan.config.seed}" + (f" ({notes})" if notes else ""))

    def __call__(self, step: Step) -> None:
        self.last, image = step, None
        if step.iteration in self.keep:
            image = step.image()  # reads the picture back from the device: only when needed
            self.panel._add_frame(step.iteration, image)
        if step.iteration % self.every == 0 or step.is_last:
            self.show(step, image)

    def show(self, step: Step, image: Image.Image | None = None) -> None:
        now, (it0, t0) = time.monotonic(), self.mark
        rate = (step.iteration - it0) / (now - t0) if step.iteration > it0 and now > t0 else None
        self.mark, self.shown = (step.iteration, now), step.iteration
        plot = now - self.plotted >= 1.0 or step.is_last  # a plot costs ~50 ms: at most 1/s
        if plot:
            self.plotted = now
        image = image or step.image()
        self.panel._show_step(step.stats(), image, step.iterations, rate, plot)

    def close(self, status: str) -> None:
        if self.last is not None and self.shown != self.last.iteration:
            self.show(self.last)  # the picture the run stopped at
        elif self.panel.history:
            self.panel.plot.value = _plot_png(self.panel.history)


# --- the panel -------------------------------------------------------------------------------


class Panel:
    """A notebook panel over ``generate``: settings from RunConfig, Run/Stop, live view, export.

    ``config`` gives the starting values (default RunConfig()); ``models`` are used for runs
    whose model settings match it (other choices load through the per-kernel cache); ``out``
    is where run directories go (default: the config's ``out``).
    """

    def __init__(
        self,
        config: RunConfig | None = None,
        models: Models | None = None,
        out: str | os.PathLike | None = None,
    ) -> None:
        tiny = tiny_model_settings()
        config = config or RunConfig(**({"size": list(TINY_SIZE)} if tiny else {}))
        config = config.replace(**tiny, **({"out": str(out)} if out is not None else {}))
        if models is not None:
            _remember_models(config, models)
        self.last_result: RunResult | None = None
        self.error: BaseException | None = None
        self.run_dir: Path | None = None  # the run the gallery shows
        self.seed_used: int | None = None
        self.history: list[dict[str, Any]] = []  # stats of the displayed steps, for the plot
        self._frames: list[tuple[int, bytes]] = []  # (iteration, PNG bytes) of the gallery
        self._thumbs: dict[int, tuple[bytes, W.Widget]] = {}
        self._frames_lock = threading.RLock()
        self._stop = StopFlag()
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()
        self._quiet = False  # True while the code (not the user) changes the run chooser
        self._build_form(config)
        self._build_run_controls(tiny)
        self._build_views()
        self._build_export_and_resume()
        self.widget = W.VBox(
            [
                *([self.banner] if tiny else []),
                self._fields["prompt"].box,
                self.form,
                self.problem,
                W.HBox([self.run_button, self.stop_button, self.display_every]),
                self.status,
                self.model_status,
                _wrap([self.progress, self.progress_text]),
                _wrap([self.live_image, self.plot]),
                W.HTML("<b>Snapshots</b>"),
                self.gallery,
                _wrap([self.play, self.scrubber, self.scrub_label]),
                self.frame_image,
                W.HTML("<b>Export</b>"),
                self.export_box,
                W.HTML("<b>Runs</b>"),
                self.resume_box,
            ]
        )
        self.widget.add_class("vqclip-panel")
        self._check_form()
        self._refresh_runs()

    # --- building -----------------------------------------------------------------------
    def _build_form(self, config: RunConfig) -> None:
        self._fields = {f.name: _Field(f, getattr(config, f.name)) for f in settings()}
        self.fields: dict[str, W.Widget] = {n: f.input for n, f in self._fields.items()}
        self.field_errors: dict[str, W.HTML] = {n: f.error for n, f in self._fields.items()}
        pages, titles = [], []
        for group in _GROUPS:
            boxes = [
                fld.box
                for f, fld in zip(settings(), self._fields.values())
                if f.metadata["group"] == group and f.name != "prompt"
            ]
            if boxes:
                pages.append(W.VBox(boxes))
                titles.append(group)
        self.form = W.Tab(pages)
        for k, title in enumerate(titles):
            self.form.set_title(k, title)
        self.problem = W.HTML()
        self.problem.add_class("vqclip-problem")
        for fld in self._fields.values():
            fld.input.observe(self._check_form, "value")
        for name in _MODEL_FIELDS:
            self._fields[name].input.observe(self._show_model_choice, "value")

    def _build_run_controls(self, tiny: dict[str, str]) -> None:
        self.banner = W.HTML(
            '<div style="background:#fff3cd;border:1px solid #e0a800;padding:4px 8px">'
            f"<b>⚠ {TINY_BANNER}</b> ({TINY_ENV}={_escape(os.environ.get(TINY_ENV, ''))}). "
            "Unset it to paint with the real models.</div>"
        )
        self.banner.add_class("vqclip-banner")
        self.run_button = W.Button(description="Run", button_style="success", icon="play")
        self.stop_button = W.Button(
            description="Stop", button_style="danger", icon="stop", disabled=True
        )
        self.run_button.add_class("vqclip-run")
        self.stop_button.add_class("vqclip-stop")
        self.run_button.on_click(lambda _: self.run())
        self.stop_button.on_click(lambda _: self.stop())
        self.display_every = W.BoundedIntText(
            5, min=1, max=10_000, description="show every", layout=W.Layout(width="150px")
        )
        setattr(self.display_every, _TIP, "Refresh the live image every N iterations.")
        self.status = W.HTML("ready")
        self.status.add_class("vqclip-status")
        self.model_status = W.HTML()
        self.model_status.add_class("vqclip-model-status")
        self._show_model_choice()

    def _build_views(self) -> None:
        self.progress = W.IntProgress(0, min=0, max=1, layout=W.Layout(width="300px"))
        self.progress_text = W.HTML()
        self.progress_text.add_class("vqclip-progress")
        self.live_image = _image("vqclip-live", width=256)
        self.plot = _image("vqclip-plot")
        self.gallery = W.Box(layout=W.Layout(flex_flow="row wrap"))
        self.gallery.add_class("vqclip-gallery")
        self.scrubber = W.IntSlider(0, min=0, max=0, readout=False, disabled=True)
        self.play = W.Play(0, min=0, max=0, interval=250, disabled=True)
        W.jslink((self.play, "value"), (self.scrubber, "value"))  # plays without the kernel
        self.scrub_label = W.HTML()
        self.frame_image = _image("vqclip-frame", width=256)
        self.scrubber.observe(self._show_frame, "value")

    def _build_export_and_resume(self) -> None:
        self.export_format = W.Dropdown(options=["GIF", "MP4"], layout=W.Layout(width="80px"))
        self.export_fps = W.BoundedFloatText(
            10, min=0.1, max=60, description="fps", layout=W.Layout(width="110px")
        )
        self.export_hold = W.BoundedFloatText(
            1.0, min=0, max=60, description="hold last (s)", layout=W.Layout(width="160px")
        )
        self.export_fps.style.description_width = self.export_hold.style.description_width = (
            "initial"
        )
        self.export_label = W.Checkbox(True, description="label iterations", indent=False)
        self.export_button = W.Button(
            description="Export", icon="film", disabled=True, layout=W.Layout(width="100px")
        )
        self.export_button.add_class("vqclip-export")
        self.export_button.on_click(lambda _: self.export())
        self.export_link = W.Output()
        self.export_preview = W.Box()
        self.export_box = W.VBox(
            [
                _wrap(
                    [
                        self.export_format,
                        self.export_fps,
                        self.export_hold,
                        self.export_label,
                        self.export_button,
                    ]
                ),
                self.export_link,
                self.export_preview,
            ]
        )
        self.run_chooser = W.Dropdown(description="run", layout=W.Layout(width="430px"))
        self.run_chooser.style.description_width = "40px"
        self.run_chooser.observe(self._on_choose_run, "value")
        self.refresh_button = W.Button(icon="refresh", layout=W.Layout(width="40px"))
        setattr(self.refresh_button, _TIP, "List the run directories again.")
        self.refresh_button.on_click(lambda _: self._refresh_runs())
        self.resume_to = W.IntText(0, description="to iteration", layout=W.Layout(width="170px"))
        self.resume_to.style.description_width = "initial"
        setattr(self.resume_to, _TIP, "0 keeps the run's planned total.")
        self.resume_button = W.Button(
            description="Resume", icon="forward", layout=W.Layout(width="100px")
        )
        self.resume_button.add_class("vqclip-resume")
        self.resume_button.on_click(lambda _: self.resume())
        self.resume_box = _wrap(
            [self.run_chooser, self.refresh_button, self.resume_to, self.resume_button]
        )

    # --- display --------------------------------------------------------------------------
    def display(self) -> None:
        display(self.widget)

    def _ipython_display_(self) -> None:
        self.display()

    # --- the form -------------------------------------------------------------------------
    def config(self) -> RunConfig:
        """The RunConfig the form describes; ConfigError (also shown in the panel) if invalid."""
        config = self._check_form()
        if config is None:
            raise ConfigError(self._problem_text)
        return config

    def _check_form(self, _: Any = None) -> RunConfig | None:
        """Read and validate every field, showing each problem beside its field."""
        values, first = {}, None
        for fld in self._fields.values():
            try:
                values[fld.name] = fld.value()
                fld.show("")
            except ConfigError as error:
                fld.show(str(error))
                first = first or str(error)
        config = None
        if first is None:
            try:
                config = RunConfig(**values).validate()
            except ConfigError as error:
                first = str(error)
                owner = _owner(first, list(self._fields))
                if owner is not None:
                    self._fields[owner].show(first)
        self._problem_text = first or ""
        self.problem.value = (
            f'<span style="color:#c0392b">⚠ {_escape(first)}</span>' if first else ""
        )
        return config

    def _show_model_choice(self, _: Any = None) -> None:
        try:
            config = RunConfig(**{n: self._fields[n].value() for n in _MODEL_FIELDS})
        except ConfigError:
            return
        ready = _model_key(config) in _models
        state = "loaded" if ready else "they load when you press Run"
        self.model_status.value = f"models: {_escape(_model_label(config))}: {state}"

    # --- running --------------------------------------------------------------------------
    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def run(self) -> bool:
        """Start a run of the form's settings in the background; False if it cannot start."""
        config = self._check_form()
        if config is None:
            self._say(f"cannot run: {self._problem_text}", "error")
            return False
        return self._start(lambda: self._generate(config), config.iterations)

    def resume(self, run_dir: str | os.PathLike | None = None) -> bool:
        """Continue ``run_dir`` (default: the chosen run, else the last one) in the background."""
        target = (
            run_dir or self.run_chooser.value or (self.last_result and self.last_result.run_dir)
        )
        if target is None:
            self._say("no run to resume: start one with Run first", "error")
            return False
        target = Path(target)
        iterations = self.resume_to.value or None
        record = read_run(target)
        planned = record["config"]["iterations"]
        if record.get("status") == "done" and (iterations or planned) <= record["iteration"]:
            self._say(
                f"{target.name} is done at iteration {record['iteration']}: set 'to iteration' "
                "higher to continue it",
                "error",
            )
            return False
        return self._start(lambda: self._resume(target, iterations), iterations or 1)

    def stop(self) -> None:
        """Ask the run to stop after its current step; everything made so far is kept."""
        if self.running:
            self._stop.set()
            self._say("stopping after this step…")

    def wait(self, timeout: float | None = None) -> RunResult | None:
        """Wait for the background run; its result, or its error raised here.

        None if it was stopped before it began (while models loaded). TimeoutError if it is
        still going after ``timeout`` seconds; RuntimeError if no run was started.
        """
        thread = self._thread
        if thread is None:
            raise RuntimeError("No run was started in this panel yet: press Run first.")
        thread.join(timeout)
        if thread.is_alive():
            raise TimeoutError(f"The run is still going after {timeout} s.")
        if self.error is not None:
            raise self.error
        return self.last_result

    def _start(self, work: Callable[[], RunResult | None], iterations: int) -> bool:
        with self._start_lock:  # a double click must not start two runs
            if self.running:
                self._say("a run is already going: press Stop first", "error")
                return False
            self._stop.clear()
            self.error, self.seed_used, self.history = None, None, []
            self.run_dir = None
            self._set_frames([])
            self.progress.value, self.progress.max, self.progress.bar_style = 0, iterations, ""
            self.progress_text.value = ""
            self.export_preview.children = ()
            self.export_link.outputs = ()
            self._set_busy(True)
            self._thread = threading.Thread(target=self._work, args=(work,), daemon=True)
            self._thread.name = "vqclip-run"
            self._thread.start()
            return True

    def _work(self, work: Callable[[], RunResult | None]) -> None:
        """The background thread: run, then show how it ended. Never raises."""
        result = None
        try:
            result = work()
            self.last_result = result or self.last_result
            if result is None:
                self._say("stopped before the run began")
            else:
                seed = f", seed {result.config.seed}"
                self._say(
                    f"{result.status} at iteration {result.iteration}{seed}: {result.run_dir}"
                )
                self.progress.bar_style = {"done": "success", "stopped": "warning"}.get(
                    result.status, "danger"
                )
        except BaseException as error:  # shown in the panel; wait() raises it again
            self.error = error
            self.progress.bar_style = "danger"
            self._say(f"failed: {type(error).__name__}: {error}", "error")
        finally:
            if result is not None:
                self.run_dir = result.run_dir
                self._load_frames(result.run_dir)  # the files: includes a stop's last picture
                self._refresh_runs(select=result.run_dir)
            self._set_busy(False)

    def _generate(self, config: RunConfig) -> RunResult | None:
        models = self._load(config)
        if self._stop():
            return None
        view = _LiveView(self, config, 0, self.display_every.value)
        with warnings.catch_warnings():  # the plan's notices are shown in the panel instead
            warnings.simplefilter("ignore")
            return generate(
                config, models, observers=[view], progress=False, should_stop=self._stop
            )

    def _resume(self, run_dir: Path, iterations: int | None) -> RunResult | None:
        config = RunConfig.from_dict(read_run(run_dir)["config"])
        if iterations is not None:
            config = config.replace(iterations=iterations)
        self.progress.max = config.iterations
        models = self._load(config)
        if self._stop():
            return None
        self.seed_used = config.seed
        self._show_files(run_dir)
        start = self.history[-1]["iteration"] if self.history else 0
        self._say(f"resuming {run_dir.name} from iteration {start}, seed {config.seed}")
        view = _LiveView(self, config, start, self.display_every.value)
        return resume(
            run_dir,
            models,
            iterations=iterations,
            observers=[view],
            progress=False,
            should_stop=self._stop,
        )

    def _load(self, config: RunConfig) -> Models:
        label = _escape(_model_label(config))
        if _model_key(config) not in _models:
            self.model_status.value = f"models: loading {label}… (the first use downloads them)"
        models = cached_models(config)
        self.model_status.value = f"models: {label}: loaded on {models.device}"
        return models

    def _set_busy(self, busy: bool) -> None:
        self.run_button.disabled = self.resume_button.disabled = busy
        self.export_button.disabled = busy or self.run_dir is None
        self.stop_button.disabled = not busy

    def _say(self, text: str, kind: str = "info") -> None:
        color = "#c0392b" if kind == "error" else "inherit"
        self.status.value = f'<span style="color:{color}">{_escape(text)}</span>'

    # --- live view (called from the run thread) -------------------------------------------
    def _show_step(
        self,
        stats: dict[str, Any],
        image: Image.Image,
        total: int,
        rate: float | None,
        plot: bool,
    ) -> None:
        self.history.append(stats)
        self.live_image.value = _png(image)
        self.progress.max, self.progress.value = total, stats["iteration"]
        sims = " · ".join(
            f"{_escape(p['prompt'][:30])} {p['similarity']:.3f}" for p in stats["prompts"][:4]
        )
        speed = f" · {rate:.2f} it/s" if rate else ""
        self.progress_text.value = (
            f"it {stats['iteration']}/{total} · loss {stats['loss']:.4f}"
            + (f" · {sims}" if sims else "")
            + speed
        )
        if plot:
            self.plot.value = _plot_png(self.history)

    # --- gallery and scrubber ---------------------------------------------------------------
    def _add_frame(self, iteration: int, image: Image.Image) -> None:
        with self._frames_lock:
            frames = [f for f in self._frames if f[0] != iteration] + [(iteration, _png(image))]
            self._set_frames(sorted(frames))

    def _load_frames(self, run_dir: Path) -> None:
        """The gallery from the run's snapshot files (a stopped run's last picture included)."""
        self._set_frames([(i, path.read_bytes()) for i, path in list_snapshots(run_dir)])

    def _set_frames(self, frames: list[tuple[int, bytes]]) -> None:
        with self._frames_lock:
            at_end = self.scrubber.value >= self.scrubber.max
            self._frames = frames
            # Thumbnails already made are reused: a long run adds snapshots one by one.
            thumbs = {
                i: self._thumbs[i] for i, data in frames if self._thumbs.get(i, (b"",))[0] == data
            }
            thumbs.update(
                {i: (data, self._thumb(i, data)) for i, data in frames if i not in thumbs}
            )
            self._thumbs = thumbs
            self.gallery.children = tuple(thumbs[i][1] for i, _ in frames)
            top = max(0, len(frames) - 1)
            self.scrubber.max = self.play.max = top
            self.scrubber.disabled = self.play.disabled = len(frames) < 2
            if at_end or self.scrubber.value > top:
                self.scrubber.value = top  # follow the newest snapshot
            self._show_frame()

    @staticmethod
    def _thumb(iteration: int, data: bytes) -> W.Widget:
        with Image.open(io.BytesIO(data)) as image:
            thumb = _png(image.convert("RGB"), 96)
        label = W.HTML(f"it {iteration}")
        label.add_class("vqclip-thumb-label")
        item = W.VBox([W.Image(value=thumb, format="png", width=96), label])
        item.add_class("vqclip-thumb")
        return item

    def _show_frame(self, _: Any = None) -> None:
        with self._frames_lock:
            if not self._frames:
                self.scrub_label.value, self.frame_image.value = "no snapshots yet", b""
                return
            k = min(self.scrubber.value, len(self._frames) - 1)
            iteration, data = self._frames[k]
        self.frame_image.value = data
        self.scrub_label.value = f"it {iteration} ({k + 1} of {len(self._frames)})"

    @property
    def gallery_iterations(self) -> list[int]:
        """The iterations the gallery shows, in order."""
        with self._frames_lock:
            return [i for i, _ in self._frames]

    # --- runs: choose, show, export ---------------------------------------------------------
    def _refresh_runs(self, select: Path | None = None) -> None:
        out = self._fields["out"].input.value or "runs"
        runs = _run_dirs(out)
        self._quiet = True
        try:
            self.run_chooser.options = [(_run_label(p), p) for p in runs]
            chosen = select if select in runs else None
            self.run_chooser.value = chosen
        finally:
            self._quiet = False

    def _on_choose_run(self, change: dict) -> None:
        if self._quiet or change["new"] is None or self.running:
            return
        self.show_run(change["new"])

    def show_run(self, run_dir: str | os.PathLike) -> None:
        """Show an existing run in the gallery, scrubber, plot and live image (not while running)."""
        run_dir = Path(run_dir)
        self.run_dir = run_dir
        self._show_files(run_dir)
        record = read_run(run_dir)
        self.seed_used = record["config"].get("seed")
        self._say(f"{run_dir.name}: {record.get('status')} at iteration {record.get('iteration')}")
        self._set_busy(False)

    def _show_files(self, run_dir: Path) -> None:
        """Gallery, plot and picture of a run from its files."""
        self._load_frames(run_dir)
        self.history = read_log(run_dir)
        self.plot.value = _plot_png(self.history) if self.history else b""
        final = run_dir / FINAL_FILE
        frames = list_snapshots(run_dir)
        shown = final if final.is_file() else (frames[-1][1] if frames else None)
        self.live_image.value = shown.read_bytes() if shown else b""
        if self.history:
            last = self.history[-1]
            self.progress.max = max(1, read_run(run_dir)["config"]["iterations"])
            self.progress.value = last["iteration"]
            self.progress_text.value = f"it {last['iteration']} · loss {last['loss']:.4f}"

    def export(self) -> list[Path]:
        """Animate the shown run's snapshots as the export controls say; link and preview it."""
        if self.run_dir is None:
            self._say("nothing to export yet: run, or choose a run", "error")
            return []
        mp4 = self.export_format.value == "MP4"
        self._say("exporting…")
        try:
            paths = export_run(
                self.run_dir,
                gif=not mp4,
                mp4=mp4,
                fps=self.export_fps.value,
                hold_last=self.export_hold.value,
                label=self.export_label.value,
            )
        except (ExportError, OSError) as error:
            self._say(f"export failed: {error}", "error")
            return []
        path = paths[0]
        shown = os.path.relpath(path) if not os.path.isabs(os.path.relpath(path)) else str(path)
        self.export_link.outputs = ()
        self.export_link.append_display_data(FileLink(shown, result_html_prefix="exported: "))
        data = path.read_bytes()
        if mp4:
            preview = W.Video(value=data, format="mp4", width=256, autoplay=True, loop=True)
        else:
            preview = W.Image(value=data, format="gif", width=256)
        preview.add_class("vqclip-export-preview")
        self.export_preview.children = (preview,)
        self._say(f"exported {path}")
        return paths


def panel(**config_overrides: Any) -> Panel:
    """A Panel starting from RunConfig defaults with these overrides (the notebook entry point).

    Honours $VQCLIP_TINY_MODELS, $VQCLIP_ITERATIONS and $VQCLIP_AUTORUN (see the module doc).
    """
    if os.environ.get(TINY_ENV):
        config_overrides.setdefault("size", list(TINY_SIZE))
    if os.environ.get(ITERATIONS_ENV):
        config_overrides["iterations"] = int(os.environ[ITERATIONS_ENV])
    ui = Panel(RunConfig.from_dict(config_overrides))
    if os.environ.get(AUTORUN_ENV) == "1":
        ui.run()
    return ui
