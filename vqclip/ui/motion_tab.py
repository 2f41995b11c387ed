"""The panel's motion: the prompt and settings above, animated frame by frame after a camera
move (zoom, pan, rotate; numbers or keyframes "FRAME:VALUE, …") or restyling a video, run
through the panel's runner (vqclip.motion). Frames arrive in the live image as they finish;
Stop keeps every finished frame, Resume continues the animation to the same bytes, and the
end shows the GIF beside a download of the MP4."""

from __future__ import annotations

import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import ipywidgets as W

from vqclip import colab
from vqclip.config import ConfigError, RunConfig
from vqclip.export import ExportError
from vqclip.models import Models
from vqclip.motion import (
    ANIM_FILE,
    FRAME_DIR,
    Animation,
    Frame,
    MotionConfig,
    animate,
    export_animation,
    read_animation,
    resume_animation,
)
from vqclip.state import RunError
from vqclip.ui.estimate import duration
from vqclip.ui.host import PanelHost
from vqclip.ui.look import TIP, escape, image_widget, png, wrap

CAMERA_HINT = "one number, or keyframes FRAME:VALUE, e.g. 0:1.0, 24:1.03"


def animation_dirs(out: str | Path) -> list[Path]:
    """Animation directories under ``out``, newest first."""
    found = [p.parent for p in Path(out).glob(f"*/{ANIM_FILE}")]
    return sorted(found, key=lambda p: (p / ANIM_FILE).stat().st_mtime, reverse=True)


def newest_cut_animation(out: str | Path) -> Path | None:
    """The newest animation under ``out`` that a disconnect, crash or kill cut off (its record
    still says "running") before its last frame, or None. Animations stopped on purpose are
    left alone: Resume in the panel continues those."""
    for anim_dir in animation_dirs(out):
        try:
            record = read_animation(anim_dir)
            cut = record.get("status") == "running"
            if cut and int(record.get("frame", 0)) < int(record["motion"]["frames"]):
                return anim_dir
        except (RunError, KeyError, TypeError, ValueError):  # not one to continue
            continue
    return None


def _label(anim_dir: Path) -> str:
    try:
        record = read_animation(anim_dir)
        made, planned = record.get("frame"), record["motion"].get("frames")
        return f"{anim_dir.name}  ({record.get('status')}, {made}/{planned})"
    except (RunError, KeyError, TypeError):
        return anim_dir.name


class MotionBox:
    """Camera and video settings, Animate, Resume, and the finished animation."""

    def __init__(self, panel: PanelHost) -> None:
        self.panel = panel
        self.anim_dir: Path | None = None  # the animation shown (started, or resumed)

        def number(kind: Any, value: float, name: str, tip: str, **bounds: Any) -> W.Widget:
            box = kind(value, description=name, layout=W.Layout(width="190px"), **bounds)
            box.style.description_width = "110px"
            setattr(box, TIP, tip)
            return box

        def text(value: str, name: str, tip: str, width: str = "300px") -> W.Text:
            box = W.Text(value, description=name, layout=W.Layout(width=width))
            box.style.description_width = "60px"
            setattr(box, TIP, tip)
            return box

        self.frames = number(W.BoundedIntText, 48, "frames", "How many frames.", min=1, max=100_000)
        self.steps = number(W.BoundedIntText, 10, "steps / frame",
                            "Optimisation steps for each frame after the first.",
                            min=1, max=10_000)  # fmt: skip
        self.fps = number(W.BoundedFloatText, 12, "fps", "Frames per second of the video.",
                          min=0.1, max=120)  # fmt: skip
        self.zoom = text("1.02", "zoom", f"Above 1 comes closer each frame: {CAMERA_HINT}.")
        self.pan_x = text("0", "pan x", f"Pixels right per frame: {CAMERA_HINT}.", "200px")
        self.pan_y = text("0", "pan y", f"Pixels down per frame: {CAMERA_HINT}.", "200px")
        self.rotate = text("0", "rotate", f"Degrees clockwise per frame: {CAMERA_HINT}.", "200px")
        self.warp = W.Dropdown(options=["pixel", "latent"], value="pixel", description="warp",
                               layout=W.Layout(width="190px"))  # fmt: skip
        setattr(self.warp, TIP, "pixel: move the picture and encode it again (sharper); "
                                "latent: move the latent codes.")  # fmt: skip
        self.video = text("", "video", "A video to restyle frame by frame (path); empty: none.")
        self.blend = number(W.BoundedFloatText, 0.5, "blend",
                            "How much of each new video frame goes into its start (0..1).",
                            min=0, max=1, step=0.05)  # fmt: skip
        self.button = W.Button(description="Animate", icon="film", layout=W.Layout(width="110px"))
        self.button.add_class("vqclip-animate")
        self.button.on_click(lambda _: self.animate())
        self.resume_button = W.Button(
            description="Resume", icon="forward", layout=W.Layout(width="110px")
        )
        self.resume_button.add_class("vqclip-motion-resume")
        setattr(self.resume_button, TIP, "Continue the chosen animation after its last frame.")
        self.resume_button.on_click(lambda _: self.resume())
        self.download_button = W.Button(
            description="MP4", icon="download", layout=W.Layout(width="90px")
        )
        self.download_button.on_click(lambda _: self.download())
        self.link = W.HTML()
        self.preview = image_widget("vqclip-motion-preview", width=256)
        self.chooser = W.Dropdown(description="animation", layout=W.Layout(width="430px"))
        self.chooser.style.description_width = "70px"
        self.chooser.add_class("vqclip-motion-chooser")
        setattr(self.chooser, TIP, "The animations in the output folder: choose one to see "
                                   "it, or to Resume it.")  # fmt: skip
        self.chooser.observe(self._on_choose, "value")
        self._quiet = False  # True while the code (not the user) changes the chooser
        refresh = W.Button(icon="refresh", layout=W.Layout(width="40px"))
        refresh.on_click(lambda _: self.refresh())
        self.widget = W.VBox(
            [
                wrap([self.frames, self.steps, self.fps, self.warp]),
                wrap([self.zoom, self.pan_x, self.pan_y, self.rotate]),
                wrap([self.video, self.blend]),
                wrap([self.button, self.chooser, refresh, self.resume_button]),
                wrap([self.download_button, self.link]),
                self.preview,
            ]
        )
        self.widget.add_class("vqclip-motion")
        self.refresh()

    def refresh(self, select: Path | None = None) -> None:
        """List the animations under the output folder again, choosing ``select`` (or keeping
        the one chosen) without showing it again."""
        found = animation_dirs(self.panel.form.fields["out"].input.value or "runs")
        keep = select or self.chooser.value
        self._quiet = True
        try:
            self.chooser.options = [(_label(p), p) for p in found]
            self.chooser.value = keep if keep in found else None
        finally:
            self._quiet = False

    def _on_choose(self, change: dict) -> None:
        if self._quiet or change["new"] is None or self.panel.runner.running:
            return
        self.show(change["new"])

    def show(self, anim_dir: str | Path) -> None:
        """Show an animation on disk: its video (or its last frame) and how far it got; Resume
        then continues it."""
        anim_dir = Path(anim_dir)
        self.anim_dir = anim_dir
        gif, frames = anim_dir / "animation.gif", sorted((anim_dir / FRAME_DIR).glob("*.png"))
        shown = gif if gif.is_file() else (frames[-1] if frames else None)
        self.preview.format = "gif" if shown == gif else "png"
        self.preview.value = shown.read_bytes() if shown else b""
        try:
            record = read_animation(anim_dir)
        except RunError as error:
            self.panel.say(f"cannot show {anim_dir.name}: {error}", "error")
            return
        self.panel.say(
            f"{anim_dir.name}: {record.get('status')}, {len(frames)} of "
            f"{record['motion'].get('frames')} frames"
        )

    def set(self, motion: MotionConfig) -> None:
        """Fill the fields from ``motion`` (a notebook's form)."""
        self.frames.value, self.steps.value = motion.frames, motion.steps_per_frame
        self.fps.value, self.warp.value, self.blend.value = motion.fps, motion.warp, motion.blend
        for name in ("zoom", "pan_x", "pan_y", "rotate"):
            getattr(self, name).value = str(getattr(motion, name))
        self.video.value = motion.init_video or ""

    def motion(self) -> MotionConfig:
        """The motion settings as typed; ConfigError naming the bad one."""
        return MotionConfig(
            frames=self.frames.value,
            steps_per_frame=self.steps.value,
            zoom=self.zoom.value.strip() or "1",
            pan_x=self.pan_x.value.strip() or "0",
            pan_y=self.pan_y.value.strip() or "0",
            rotate=self.rotate.value.strip() or "0",
            warp=self.warp.value,
            fps=float(self.fps.value),
            init_video=self.video.value.strip() or None,
            blend=float(self.blend.value),
        ).validate()

    def animate(self) -> bool:
        """Animate the form's prompt and settings; False if it cannot start."""
        panel = self.panel
        config = panel.form.check()
        if config is None:
            panel.say(f"cannot animate: {panel.form.problem_text}", "error")
            return False
        try:
            motion = self.motion()
        except ConfigError as error:
            panel.say(f"cannot animate: {error}", "error")
            return False
        if not panel.begin(motion.frames):
            return False
        return self._go(config, config.prompt, partial(animate, config, motion))

    def resume(self, anim_dir: str | Path | None = None) -> bool:
        """Continue ``anim_dir`` (default: the one chosen or shown, else the newest under the
        form's output folder) after its last finished frame; False if it cannot start."""
        panel = self.panel
        found = animation_dirs(panel.form.fields["out"].input.value or "runs")
        chosen = Path(anim_dir) if anim_dir else self.chooser.value or self.anim_dir
        chosen = chosen or (found[0] if found else None)
        if chosen is None:
            panel.say("no animation to resume: press Animate first", "error")
            return False
        try:
            record = read_animation(chosen)
        except RunError as error:
            panel.say(f"cannot resume: {error}", "error")
            return False
        frames = int(record["motion"]["frames"])
        if record.get("status") == "done" or int(record.get("frame", 0)) >= frames:
            panel.say(f"{chosen.name} is finished ({frames} frames): nothing to resume")
            return False
        config = RunConfig.from_dict(record["config"])
        if not panel.begin(frames):
            return False
        panel.progress.value = done = int(record.get("frame", 0))
        return self._go(config, config.prompts_at(done).prompt, partial(resume_animation, chosen))

    def _go(self, config: RunConfig, prompt: str, begin: Callable[..., Animation]) -> bool:
        """Start ``begin(models, steering=…, should_stop=…)`` on the panel's runner, the Steer
        box holding ``prompt`` (the one in force) for changes from the next frame."""
        self.preview.value, self.link.value = b"", ""
        panel = self.panel
        steering = panel.steer_box.start(prompt, unit="frame")
        start = partial(begin, steering=steering, should_stop=panel.runner.should_stop)
        return panel.runner.start(lambda: self._work(config, start))

    def _work(self, config: RunConfig, start: Callable[[Models], Animation]) -> None:
        """On the runner (``start`` begins the animation with the loaded models): the frames
        as they finish, then the GIF and MP4 of them."""
        panel = self.panel
        try:
            models = panel.load_models(config)
            if panel.runner.should_stop():
                panel.end_with("stopped before the animation began")
                return
            animation: Animation = start(models)
            self.anim_dir = animation.anim_dir
            self.refresh(select=self.anim_dir)
            began, first, prompts = time.monotonic(), None, None
            with animation:
                for frame in animation:
                    first = frame.index if first is None else first
                    if prompts is not None and frame.prompts != prompts:  # steered, or a story
                        panel.steer_box.took(frame.index, (frame.prompts,))
                    prompts = frame.prompts
                    self._show(frame, (time.monotonic() - began) / (frame.index - first + 1))
            record = read_animation(self.anim_dir)
            shown = self._export() if record["frame"] > 0 else ""
            if record["status"] == "done":
                panel.end_with(f"animation done, {record['frame']} frames: {shown}")
                panel.progress.bar_style = "success"
            else:
                panel.end_with(
                    f"animation stopped after frame {record['frame']}: Resume continues it "
                    f"({self.anim_dir})"
                )
                panel.progress.bar_style = "warning"
        except KeyboardInterrupt:  # the kernel's interrupt: every finished frame is kept
            panel.end_with(f"animation stopped: Resume continues it ({self.anim_dir})")
        except (ConfigError, RunError, ExportError) as error:
            panel.error = error
            panel.end_with(f"cannot animate: {error}", "error")
        except Exception as error:  # shown in the panel, like a run's
            panel.error = error
            panel.progress.bar_style = "danger"
            panel.end_with(f"animation failed: {type(error).__name__}: {error}", "error")
        finally:
            self.refresh()  # the chooser's line of it: how far it got

    def _show(self, frame: Frame, seconds_per_frame: float) -> None:
        panel = self.panel
        panel.live_image.value = png(frame.image)
        panel.progress.max, panel.progress.value = frame.frames, frame.index + 1
        left = (frame.frames - frame.index - 1) * seconds_per_frame
        loss = frame.stats.get("loss")
        panel.progress_text.value = (
            f"frame {frame.index + 1}/{frame.frames}"
            + (f" · loss {loss:.4f}" if loss is not None else "")
            + f" · {escape(frame.prompts[:40])}"
            + (f" · about {duration(left)} left" if left > 0 else "")
        )

    def _export(self) -> str:
        """The GIF (shown) and MP4 (for download) of the finished frames."""
        gif, mp4 = export_animation(self.anim_dir, gif=True, mp4=True)
        self.preview.format = "gif"
        self.preview.value = gif.read_bytes()
        return str(mp4)

    def download(self) -> Path | None:
        """The shown animation's MP4 to the user (Colab's download, or a link elsewhere)."""
        mp4 = self.anim_dir / "animation.mp4" if self.anim_dir else None
        if mp4 is None or not mp4.is_file():
            self.panel.say("no animation video yet: Animate (or Resume) to the end first", "error")
            return None
        try:
            link = colab.download(mp4)
        except Exception as error:  # Colab's download failed: the file is still there
            self.panel.say(f"download failed ({type(error).__name__}: {error}); the file: {mp4}")
            return None
        if link is not None:
            self.link.value = f"download: {link}"
        return mp4
