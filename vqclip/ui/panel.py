"""The panel's layout and what its buttons do: the form, Run/Stop, the live view, the
gallery, uploads, export and downloads, and the list of runs to resume."""

from __future__ import annotations

import os
import time
import warnings
from pathlib import Path
from typing import Any

import ipywidgets as W
from IPython.display import display

from vqclip.config import ConfigError, RunConfig
from vqclip.export import list_snapshots
from vqclip.models import Models
from vqclip.observers import RunInterrupted, RunResult, generate, read_log, resume
from vqclip.state import FINAL_FILE, read_run
from vqclip.ui import cache, estimate
from vqclip.ui.files import ExportBox, RunChooser, Uploads
from vqclip.ui.form import Form
from vqclip.ui.gallery import Gallery, plot_png
from vqclip.ui.live import LiveView
from vqclip.ui.look import TIP, escape, image_widget, wrap
from vqclip.ui.motion_tab import MotionBox
from vqclip.ui.runner import Runner, clicks_seen_mid_run
from vqclip.ui.steer import SteerBox
from vqclip.ui.sweep_tab import SweepBox


class Panel:
    """A notebook panel over ``generate``: settings from RunConfig, Run/Stop, live view, export.

    ``config`` gives the starting values (default RunConfig()); ``models`` are used for runs
    whose model settings match it (other choices load through the per-kernel cache); ``out``
    is where run directories go (default: the config's ``out``); ``mode`` is how runs go on
    (see vqclip.ui.runner: ``auto`` is foreground on Colab, background elsewhere).
    """

    clock = staticmethod(time.monotonic)  # times the steps for the time left (tests fake it)

    def __init__(
        self,
        config: RunConfig | None = None,
        models: Models | None = None,
        out: str | os.PathLike | None = None,
        mode: str = "auto",
    ) -> None:
        tiny = cache.tiny_model_settings()
        config = config or RunConfig(**({"size": list(cache.TINY_SIZE)} if tiny else {}))
        config = config.replace(**tiny, **({"out": str(out)} if out is not None else {}))
        if models is not None:
            cache.remember_models(config, models)
        self.runner = Runner(mode)
        self.runner.on_stop_request = lambda: self.say("stopping after this step…")
        self.runner.on_end = self._show_ending
        self._ending: tuple[str, str] | None = None  # (line, kind) the run ended with
        self.last_result: RunResult | None = None
        self.error: BaseException | None = None
        self.run_dir: Path | None = None  # the run the gallery shows
        self.seed_used: int | None = None
        self.history: list[dict[str, Any]] = []  # stats of the displayed steps, for the plot
        self._started = False  # a run (or sweep) was started in this panel
        self.form = Form(config)
        self.fields = {name: f.input for name, f in self.form.fields.items()}
        self.field_errors = {name: f.error for name, f in self.form.fields.items()}
        self.problem = self.form.problem
        self._build_run_controls(tiny)
        self._build_views()
        self.files_in = Uploads(self.form, self.say)
        self.files_out = ExportBox(lambda: self.run_dir, self.say)
        for box, names in (
            (self.files_in, ("upload_init", "upload_prompt", "upload_note")),
            (self.files_out, ("export_format", "export_fps", "export_hold", "export_label",
                              "export_button", "download_buttons", "export_link",
                              "export_preview")),
        ):  # fmt: skip
            for name in names:  # the panel's own names for them, as before the split
                setattr(self, name, getattr(box, name))
        self.export, self.download = self.files_out.export, self.files_out.download
        self.runs = RunChooser(
            lambda: self.form.fields["out"].input.value,
            self.show_run,
            self.resume,
            lambda: self.running,
        )
        self.run_chooser, self.refresh_button = self.runs.run_chooser, self.runs.refresh_button
        self.resume_to, self.resume_button = self.runs.resume_to, self.runs.resume_button
        self.sweep_box = SweepBox(self)
        self.motion_box = MotionBox(self)
        self.widget = W.VBox(
            [
                *([self.banner] if tiny else []),
                self.form.fields["prompt"].box,
                self.form.tabs,
                self.files_in.widget,
                self.form.problem,
                W.HBox([self.run_button, self.stop_button, self.display_every]),
                self.status,
                self.model_status,
                self.model_output,
                wrap([self.progress, self.progress_text]),
                wrap([self.live_image, self.plot, self.steer_box.widget]),
                W.HTML("<b>Snapshots</b>"),
                self.gallery_view.widget,
                W.HTML("<b>Export and download</b>"),
                self.files_out.widget,
                W.HTML("<b>Runs</b>"),
                self.runs.widget,
                W.HTML("<b>Sweep: this prompt in several styles and seeds, ranked by CLIP</b>"),
                self.sweep_box.widget,
                W.HTML("<b>Motion: frames that follow a camera move, or restyle a video</b>"),
                self.motion_box.widget,
            ]
        )
        self.widget.add_class("vqclip-panel")
        self.form.observe(lambda _: self.form.check())
        self.form.observe(self._show_model_choice, cache.MODEL_FIELDS)
        self.form.check()
        self.runs.refresh()

    # --- building -----------------------------------------------------------------------
    def _build_run_controls(self, tiny: dict[str, str]) -> None:
        self.banner = W.HTML(
            '<div style="background:#fff3cd;border:1px solid #e0a800;padding:4px 8px">'
            f"<b>⚠ {cache.TINY_BANNER}</b> ({cache.TINY_ENV}="
            f"{escape(os.environ.get(cache.TINY_ENV, ''))}). "
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
        setattr(self.display_every, TIP, "Refresh the live image every N iterations.")
        self.status = W.HTML("ready")
        self.status.add_class("vqclip-status")
        self.model_status = W.HTML()
        self.model_status.add_class("vqclip-model-status")
        self.model_output = W.Output()  # download progress bars while models load
        self._show_model_choice()

    def _build_views(self) -> None:
        self.progress = W.IntProgress(0, min=0, max=1, layout=W.Layout(width="300px"))
        self.progress_text = W.HTML()
        self.progress_text.add_class("vqclip-progress")
        self.live_image = image_widget("vqclip-live", width=256)
        self.plot = image_widget("vqclip-plot")
        self.gallery_view = Gallery()
        self.steer_box = SteerBox(show=self.runner.later)
        self.gallery = self.gallery_view.thumbnails
        self.scrubber, self.play = self.gallery_view.scrubber, self.gallery_view.play
        self.scrub_label, self.frame_image = self.gallery_view.label, self.gallery_view.frame

    # --- display --------------------------------------------------------------------------
    def display(self) -> None:
        display(self.widget)

    def _ipython_display_(self) -> None:
        self.display()

    # --- the form -------------------------------------------------------------------------
    @property
    def mode(self) -> str:
        """How runs go on here: "foreground" or "background"."""
        return self.runner.mode

    def config(self) -> RunConfig:
        """The RunConfig the form describes; ConfigError (also shown in the panel) if invalid."""
        config = self.form.check()
        if config is None:
            raise ConfigError(self.form.problem_text)
        return config

    def _show_model_choice(self, _: Any = None) -> None:
        try:
            config = RunConfig(**self.form.values(cache.MODEL_FIELDS))
        except ConfigError:
            return
        state = "loaded" if cache.is_loaded(config) else "they load when you press Run"
        self.model_status.value = f"models: {escape(cache.model_label(config))}: {state}"

    # --- running --------------------------------------------------------------------------
    @property
    def running(self) -> bool:
        return self.runner.running

    @property
    def started(self) -> bool:
        """Whether a run, a resume or a sweep was started in this panel."""
        return self._started

    def run(self) -> bool:
        """Run the form's settings. Background: starts and returns at once; foreground:
        returns when the run has ended (Stop, or an interrupt). False if it cannot start."""
        config = self.form.check()
        if config is None:
            self.say(f"cannot run: {self.form.problem_text}", "error")
            return False
        step_work = estimate.work_of(config)
        return self._start(lambda: self._generate(config), config.iterations, step_work)

    def resume(self, run_dir: str | os.PathLike | None = None) -> bool:
        """Continue ``run_dir`` (default: the chosen run, else the last one), as ``run`` runs."""
        target = (
            run_dir or self.run_chooser.value or (self.last_result and self.last_result.run_dir)
        )
        if target is None:
            self.say("no run to resume: start one with Run first", "error")
            return False
        target = Path(target)
        iterations = self.resume_to.value or None
        record = read_run(target)
        planned = record["config"]["iterations"]
        if record.get("status") == "done" and (iterations or planned) <= record["iteration"]:
            self.say(
                f"{target.name} is done at iteration {record['iteration']}: set 'to iteration' "
                "higher to continue it",
                "error",
            )
            return False
        return self._start(lambda: self._resume(target, iterations), iterations or 1)

    def stop(self) -> None:
        """Ask the run to stop after its current step; everything made so far is kept."""
        self.runner.stop()
        if self.running and self.mode == "background":
            self.say("stopping after this step…")

    def wait(self, timeout: float | None = None) -> RunResult | None:
        """Wait for a background run (a foreground run has ended when ``run`` returns); its
        result, or its error raised here. None if it was stopped before it began.

        Blocks the kernel, so Stop cannot be clicked meanwhile: notebooks use ``result()``.
        TimeoutError if it is still going after ``timeout`` seconds; RuntimeError if no run
        was started.
        """
        if not self._started:
            raise RuntimeError("No run was started in this panel yet: press Run first.")
        if not self.runner.join(timeout):
            raise TimeoutError(f"The run is still going after {timeout} s.")
        if self.error is not None:
            raise self.error
        return self.last_result

    def result(self) -> RunResult | None:
        """The last finished run, without waiting: safe in a notebook's Run All. None (and a
        line saying what to do) while nothing has finished."""
        if self.running:
            print("A run is still going: press Stop, or run this cell again when it has ended.")
            return None
        if self.last_result is None:
            print("No run yet: type a prompt in the panel, press Run, then run this cell again.")
        return self.last_result

    def _start(self, work: Any, iterations: int, step_work: float | None = None) -> bool:
        if not self.begin(iterations, step_work):
            return False
        if not self.runner.start(lambda: self._work(work)):
            self._set_busy(False)
            self.say("a run is already going: press Stop first", "error")
            return False
        return True

    def begin(self, iterations: int, step_work: float | None = None) -> bool:
        """Clear the views for a new run of ``iterations`` steps (each of ``step_work``, for
        a first estimate of its time); False if one is going."""
        if self.running:
            self.say("a run is already going: press Stop first", "error")
            return False
        self._started = True
        self.error, self.seed_used, self.history = None, None, []
        self.run_dir = None
        self.gallery_view.set([])
        self.progress.value, self.progress.max, self.progress.bar_style = 0, iterations, ""
        self.progress_text.value = (
            escape(estimate.before(iterations, step_work)) if step_work else ""
        )
        self.export_preview.children = ()
        self.export_link.value = ""
        self._set_busy(True)
        if self.mode == "foreground" and not clicks_seen_mid_run():
            self.say("running in the foreground; to stop, interrupt the kernel (■)")
        return True

    def _work(self, work: Any) -> None:
        """The run, then how it ended. Never raises: errors are shown (and kept for wait).
        The ending line is shown by ``_show_ending`` once the runner is free."""
        result = None
        try:
            try:
                result = work()
            except RunInterrupted as stopped:  # the kernel was interrupted: all is saved
                result = stopped.result
            except KeyboardInterrupt:
                result = None  # interrupted while the models loaded: nothing was started
            self.last_result = result or self.last_result
            if result is None:
                self.end_with("stopped before the run began")
            else:
                self.end_with(
                    f"{result.status} at iteration {result.iteration}, seed "
                    f"{result.config.seed}: {result.run_dir}"
                )
                self.progress.bar_style = {"done": "success", "stopped": "warning"}.get(
                    result.status, "danger"
                )
        except Exception as error:  # shown in the panel; wait() raises it again
            self.error = error
            self.progress.bar_style = "danger"
            self.end_with(f"failed: {type(error).__name__}: {error}", "error")
        finally:
            if result is not None:
                self.run_dir = result.run_dir
                self.gallery_view.load(result.run_dir)  # the files: a stop's last picture too
                self.runs.refresh(select=result.run_dir)

    def end_with(self, text: str, kind: str = "info") -> None:
        """The line a run or sweep ends with, shown once the runner is free."""
        self._ending = (text, kind)

    def _show_ending(self) -> None:
        """After a run or sweep, with the runner free: buttons back, then the last line."""
        ending, self._ending = self._ending, None
        self.steer_box.end()
        if self.running:  # a new run began in between: its own end will speak
            return
        self._set_busy(False)
        if ending is not None:
            self.say(*ending)

    def _generate(self, config: RunConfig) -> RunResult | None:
        models = self.load_models(config)
        if self.runner.should_stop():
            return None
        view = LiveView(self, config, 0, self.display_every.value)
        with warnings.catch_warnings():  # the plan's notices are shown in the panel instead
            warnings.simplefilter("ignore")
            return generate(
                config,
                models,
                observers=[view],
                progress=False,
                should_stop=self.runner.should_stop,
                steering=self.steer_box.start(config.prompt),
            )

    def _resume(self, run_dir: Path, iterations: int | None) -> RunResult | None:
        config = RunConfig.from_dict(read_run(run_dir)["config"])
        if iterations is not None:
            config = config.replace(iterations=iterations)
        self.progress.max = config.iterations
        models = self.load_models(config)
        if self.runner.should_stop():
            return None
        self.seed_used = config.seed
        self._show_files(run_dir)
        start = self.history[-1]["iteration"] if self.history else 0
        self.say(f"resuming {run_dir.name} from iteration {start}, seed {config.seed}")
        view = LiveView(self, config, start, self.display_every.value)
        return resume(
            run_dir,
            models,
            iterations=iterations,
            observers=[view],
            progress=False,
            should_stop=self.runner.should_stop,
            steering=self.steer_box.start(config.prompts_at(start).prompt),
        )

    def load_models(self, config: RunConfig) -> Models:
        label = escape(cache.model_label(config))
        if not cache.is_loaded(config):
            self.model_status.value = f"models: loading {label}… (the first use downloads them)"
        if self.mode == "foreground":
            # Download bars show under the model line. Only here: an Output widget captures
            # whatever the kernel prints meanwhile, so in a background thread it would swallow
            # the output of the cells the user runs while the models load.
            self.model_output.clear_output()
            with self.model_output:
                models = cache.cached_models(config, progress=True)
            self.model_output.clear_output()
        else:
            models = cache.cached_models(config)
        self.model_status.value = f"models: {label}: loaded on {models.device}"
        return models

    def _set_busy(self, busy: bool) -> None:
        self.run_button.disabled = self.resume_button.disabled = busy
        idle_with_run = not busy and self.run_dir is not None
        self.export_button.disabled = not idle_with_run
        for button in self.download_buttons.values():
            button.disabled = not idle_with_run
        self.stop_button.disabled = not busy

    def say(self, text: str, kind: str = "info") -> None:
        """A line in the panel's status: how a run goes, or what went wrong."""
        color = "#c0392b" if kind == "error" else "inherit"
        self.status.value = f'<span style="color:{color}">{escape(text)}</span>'

    @property
    def gallery_iterations(self) -> list[int]:
        """The iterations the gallery shows, in order."""
        return self.gallery_view.iterations

    # --- runs: show one -----------------------------------------------
    def show_run(self, run_dir: str | os.PathLike) -> None:
        """Show an existing run in the gallery, scrubber, plot and live image (not while running)."""
        run_dir = Path(run_dir)
        self.run_dir = run_dir
        self._show_files(run_dir)
        record = read_run(run_dir)
        self.seed_used = record["config"].get("seed")
        self.say(f"{run_dir.name}: {record.get('status')} at iteration {record.get('iteration')}")
        self._set_busy(False)

    def _show_files(self, run_dir: Path) -> None:
        """Gallery, plot and picture of a run from its files."""
        self.gallery_view.load(run_dir)
        self.history = read_log(run_dir)
        self.plot.value = plot_png(self.history) if self.history else b""
        final = run_dir / FINAL_FILE
        frames = list_snapshots(run_dir)
        shown = final if final.is_file() else (frames[-1][1] if frames else None)
        self.live_image.value = shown.read_bytes() if shown else b""
        if self.history:
            last = self.history[-1]
            self.progress.max = max(1, read_run(run_dir)["config"]["iterations"])
            self.progress.value = last["iteration"]
            self.progress_text.value = f"it {last['iteration']} · loss {last['loss']:.4f}"
