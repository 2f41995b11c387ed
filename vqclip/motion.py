"""Animations that move: each frame continues the last after a camera move, or restyles a video.

The public API (what the CLI, the panel's Motion tab and notebooks use)::

    from vqclip import RunConfig
    from vqclip.motion import MotionConfig, animate, resume_animation, export_animation

    config = RunConfig(prompt="a lighthouse", size=[256, 256], seed=1, timeline=["24: a forest"])
    motion = MotionConfig(frames=48, steps_per_frame=10, zoom="0:1.0, 24:1.03", rotate=0.5)
    with animate(config, motion, models) as frames:    # the directory exists already
        for frame in frames:                           # a Frame per finished frame
            show(frame.image)                          # frame.path: its PNG, already on disk
    export_animation(frames.anim_dir, mp4=True)        # ANIM/animation.mp4 (and .gif)

- ``MotionConfig``: frames, steps per frame, the camera (zoom, pan_x, pan_y, rotate: one
  number or keyframes "FRAME:VALUE, ..."), easing, the warp ("pixel" or "latent"), fps, and
  for restyling a video ``init_video`` and ``blend``. ``validate()`` raises ConfigError.
- ``animate(config, motion, models, out=..., steering=None, should_stop=None)``: an
  ``Animation``, an iterator of ``Frame`` (index, PIL image, PNG path, prompts in force, the
  last step's stats) with ``anim_dir``, ``close()`` and ``with`` support; bad settings raise
  ConfigError before anything is written. A ``Steering`` changes the prompts from the next
  frame on, recorded in animation.json's timeline. The
  run's ``timeline`` is indexed by FRAME: "24: a forest" takes effect at frame 24. Frame 0
  takes ``first_steps`` (default ``steps_per_frame``) from the run's seed or init image.
- ``resume_animation(anim_dir, models)``: the same generator, continuing after the last
  finished frame; on the CPU the frames are byte-identical to an uninterrupted animation.
- Stopping: close it (``break`` inside ``with``), press Ctrl-C, or let ``should_stop()`` (polled
  every step: a Stop button in another thread) return True. The frame being computed is
  dropped; every finished frame stays on disk and animation.json says where it stopped.
- ``export_animation(anim_dir, gif=True, mp4=False, ...)``: GIF and/or MP4 (H.264, yuv420p)
  of the frames, optional prompt labels and ffmpeg frame interpolation.
- ``reproduce_frame(png, out)``: a frame made again (``vqclip reproduce`` calls it);
  ``read_animation``, ``finished_frames``, ``frames_difference`` (flicker, in 8-bit levels).

An animation directory holds animation.json (settings, status, the last finished frame),
frames/000000.png ... (each PNG with its recipe: ``vqclip reproduce`` re-derives its start
from the previous frame's file beside it, and for restyling from the input video) and, with
the latent warp, latents/000000.pt (each frame's latent, which the next frame starts from).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import secrets
import warnings
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from vqclip import credentials as signing
from vqclip.config import RunConfig, slug
from vqclip.credentials import signing_for
from vqclip.engine import Step, run
from vqclip.export import (
    ExportError,
    format_parameters,
    label_image,
    make_gif,
    make_mp4,
    read_recipe,
    save_png,
    to_pil,
)
from vqclip.models import Models
from vqclip.motion_config import MotionConfig, read_motion_file  # noqa: F401 (API)
from vqclip.observers import check_models, cpu_threads, describe, load_run_models
from vqclip.plan import prepare
from vqclip.state import RunError, atomic_path, new_run_dir, remove_torn_writes, write_json
from vqclip.timeline import Steering
from vqclip.warp import start_latent, video_frames

ANIM_FILE = "animation.json"
ANIM_FORMAT = 1
FRAME_DIR = "frames"
LATENT_DIR = "latents"


@dataclass(frozen=True)
class Frame:
    """One finished frame of an animation, already on disk."""

    index: int
    frames: int  # the animation's planned total
    image: Image.Image = field(repr=False)
    path: Path  # its PNG (recipe inside)
    anim_dir: Path
    prompts: str  # the text prompts in force
    stats: dict[str, Any] = field(repr=False, default_factory=dict)  # the last step's stats

    @property
    def is_last(self) -> bool:
        return self.index == self.frames - 1


class Animation(Iterator[Frame]):
    """The frames of an animation as they finish: iterate it; ``anim_dir`` is known at once
    (the directory exists before the first frame); ``close()`` stops it between steps."""

    def __init__(self, anim_dir: Path, frames: Generator[Frame, None, None]) -> None:
        self.anim_dir, self._frames = anim_dir, frames

    def __next__(self) -> Frame:
        return next(self._frames)

    def close(self) -> None:
        self._frames.close()

    def __enter__(self) -> Animation:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def frame_name(index: int) -> str:
    return f"{index:06d}.png"


def frame_seed(seed: int, index: int) -> int:
    """Frame ``index``'s seed, derived from the animation's: the same on every machine."""
    if index == 0:
        return seed
    digest = hashlib.sha256(f"vqclip-motion:{seed}:{index}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % 2**63


def finished_frames(anim_dir: str | Path) -> int:
    """How many frames, from 0 on without a gap, are finished in ``anim_dir``."""
    folder = Path(anim_dir) / FRAME_DIR
    count = 0
    while (folder / frame_name(count)).is_file():
        count += 1
    return count


# --- the loop --------------------------------------------------------------------------


def animate(
    config: RunConfig,
    motion: MotionConfig,
    models: Models | None = None,
    *,
    out: str | Path | None = None,
    steering: Steering | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> Animation:
    """Make a new animation under ``out`` (default: the config's ``out``), yielding each
    finished Frame. Settings are checked, and the directory made, before the first frame."""
    motion.validate()
    config = config.replace(seed=secrets.randbelow(2**31) if config.seed is None else config.seed)
    by_frame(config, motion).validate()
    if motion.init_video:  # a broken video is refused before anything is written
        count = len(video_frames(motion.init_video))
        if count < motion.frames:
            warnings.warn(
                f"The video {motion.init_video} has {count} frames, fewer than the {motion.frames} "
                f"asked for: the animation restyles those {count}.",
                stacklevel=2,
            )
            motion = dataclasses.replace(motion, frames=count)
    signing.prepare(signing_for(config))
    models = models or load_run_models(config, progress=False)
    first = prepare(frame_config(config, motion, 0), models, checked=True)
    plan = {**first.record(), "changes": []}
    anim_dir = new_run_dir(out or config.out, config.name or _default_name(config))
    record = {
        "version": ANIM_FORMAT,
        "kind": "animation",
        "status": "running",
        "frame": 0,
        "config": config.to_dict(),
        "motion": motion.to_dict(),
        "plan": plan,
        "threads": torch.get_num_threads(),
    }
    write_json(anim_dir / ANIM_FILE, record)
    return Animation(anim_dir, _frames(anim_dir, record, models, 0, steering, should_stop))


def resume_animation(
    anim_dir: str | Path,
    models: Models | None = None,
    *,
    steering: Steering | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> Animation:
    """Continue an animation after its last finished frame (a kill mid-write leaves a
    temporary file, removed here); yields the Frames still to make."""
    anim_dir = Path(anim_dir)
    record = read_animation(anim_dir)
    config = RunConfig.from_dict(record["config"])
    MotionConfig.from_dict(record["motion"]).validate()
    signing.prepare(signing_for(config))
    models = models or load_run_models(config, progress=False)
    remove_torn_writes(anim_dir)
    start = finished_frames(anim_dir)
    return Animation(anim_dir, _frames(anim_dir, record, models, start, steering, should_stop))


def read_animation(anim_dir: str | Path) -> dict[str, Any]:
    """animation.json of an animation directory; RunError when it is not one."""
    import json

    path = Path(anim_dir) / ANIM_FILE
    if not path.is_file():
        raise RunError(
            f"{anim_dir} is not a vqclip animation directory: it has no {ANIM_FILE}. Give the "
            "directory `vqclip motion` printed."
        )
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as error:
        raise RunError(
            f"{path} is not valid JSON ({error}); the animation record is damaged."
        ) from None
    if (
        not isinstance(record, dict)
        or not isinstance(record.get("config"), dict)
        or not isinstance(record.get("motion"), dict)
    ):
        raise RunError(f"{path} holds no 'config' and 'motion': the animation record is damaged.")
    return record


def _frames(
    anim_dir: Path,
    record: dict[str, Any],
    models: Models,
    start: int,
    steering: Steering | None,
    should_stop: Callable[[], bool] | None,
) -> Iterator[Frame]:
    config = RunConfig.from_dict(record["config"])
    motion = MotionConfig.from_dict(record["motion"])
    status, frame = "stopped", start
    try:
        with cpu_threads(record.get("threads")):
            for frame in range(start, motion.frames):
                if steering is not None and frame > 0:  # changes asked for meanwhile
                    lines = steering.take(frame, by_frame(config, motion))
                    if lines:
                        config = config.replace(timeline=[*config.timeline, *lines])
                        record = _update(anim_dir, record, config=config.to_dict())
                done = _make_frame(anim_dir, record, config, motion, models, frame, should_stop)
                if done is None:  # stopped mid-frame
                    return
                record = _update(anim_dir, record, frame=frame + 1)
                yield done
            status = "done"
    except BaseException as error:
        status = "stopped" if isinstance(error, (KeyboardInterrupt, GeneratorExit)) else "failed"
        raise
    finally:
        if steering is not None:
            steering.stop()
        with contextlib.suppress(OSError):  # an interrupt may come between a frame's PNG and
            # the record's count of it: the files say how many frames are finished
            _update(anim_dir, record, status=status, frame=finished_frames(anim_dir))


def _update(anim_dir: Path, record: dict[str, Any], **changes: Any) -> dict[str, Any]:
    record = {**record, **changes}
    write_json(anim_dir / ANIM_FILE, record)
    return record


def by_frame(config: RunConfig, motion: MotionConfig) -> RunConfig:
    """The animation's settings as one run whose iterations are its frames: what its timeline
    (which counts frames) and a steered change are checked against. Snapshots do not apply."""
    return config.replace(iterations=motion.frames, snapshots="last")


def frame_config(config: RunConfig, motion: MotionConfig, index: int) -> RunConfig:
    """The run that makes frame ``index``: the prompts in force, its own seed and steps."""
    settings: dict[str, Any] = {
        "seed": frame_seed(config.seed, index),
        "iterations": motion.steps(index),
        "snapshots": "last",
    }
    if index > 0 or motion.init_video:
        settings["init_image"] = None  # it starts from the previous frame or the video
    return config.prompts_at(index).replace(**settings)


def _make_frame(
    anim_dir: Path,
    record: dict[str, Any],
    config: RunConfig,
    motion: MotionConfig,
    models: Models,
    index: int,
    should_stop: Callable[[], bool] | None,
) -> Frame | None:
    """Compute frame ``index`` from what is on disk, write it (latent first), return it."""
    run_config = frame_config(config, motion, index)
    plan = prepare(run_config, models, recorded=record.get("plan"), checked=True)
    how = _start_recipe(anim_dir, motion, index)
    z = start_latent(how, anim_dir / FRAME_DIR, models, tuple(plan.config.size), plan.precision)
    last: Step | None = None
    steps = run(plan, None if z is None else {"z": z})
    try:
        for step in steps:
            last = step
            if should_stop is not None and should_stop() and not step.is_last:
                return None
    finally:
        steps.close()
    recipe = last.recipe({**describe(plan), "motion": how})
    if motion.warp == "latent":  # the next frame starts from it; written before the PNG
        state = last.state()
        path = anim_dir / LATENT_DIR / f"{index:06d}.pt"
        with atomic_path(path) as tmp:
            torch.save(state["z"].detach().cpu(), tmp)
    image = last.image()
    path = save_png(image, anim_dir / FRAME_DIR / frame_name(index), recipe,
                    format_parameters(recipe), signing_for(config))  # fmt: skip
    return Frame(index, motion.frames, image, path, anim_dir, run_config.prompt, last.stats())


def _start_recipe(anim_dir: Path, motion: MotionConfig, index: int) -> dict[str, Any]:
    """What frame ``index`` starts from, as its recipe records it (names relative to the
    frame's folder, so a copied animation still reproduces)."""
    how: dict[str, Any] = {"frame": index, "frames": motion.frames, "warp": motion.warp}
    if index > 0:
        how["camera"] = motion.camera(index)
        if motion.warp == "latent":
            how["previous"] = f"../{LATENT_DIR}/{index - 1:06d}.pt"
        else:
            how["previous"] = frame_name(index - 1)
    if motion.init_video:
        how["video"] = {"path": str(Path(motion.init_video).resolve()), "index": index}
        how["blend"] = motion.blend
    return how


def _default_name(config: RunConfig) -> str:
    from datetime import datetime

    return f"{datetime.now():%Y%m%d-%H%M%S}-motion-{slug(config.prompt)}-s{config.seed}"


# --- export and reproduce ---------------------------------------------------------------


def export_animation(
    anim_dir: str | Path,
    gif: bool = True,
    mp4: bool = False,
    fps: float | None = None,
    labels: bool = False,
    interpolate: int = 1,
    hold_last: float = 0.0,
    credentials: signing.Signing | None = signing.LOCAL,
) -> list[Path]:
    """Write ANIM/animation.gif and/or ANIM/animation.mp4 of the finished frames at ``fps``
    (default the animation's), optionally labelled with the prompts in force; the MP4 can be
    ``interpolate`` times smoother (ffmpeg's motion-compensated minterpolate)."""
    anim_dir = Path(anim_dir)
    record = read_animation(anim_dir)
    motion = MotionConfig.from_dict(record["motion"])
    fps = fps or motion.fps
    if not isinstance(interpolate, int) or not 1 <= interpolate <= 8:
        raise ExportError(
            f"interpolate must be a whole number from 1 (off) to 8, got {interpolate!r}."
        )
    count = finished_frames(anim_dir)
    if count == 0:
        raise ExportError(f"{anim_dir} has no finished frame yet: nothing to export.")
    paths = [anim_dir / FRAME_DIR / frame_name(i) for i in range(count)]
    frames = [to_pil(p) for p in paths]
    texts = None
    if labels:
        texts = [_label(p) for p in paths]
        frames = [label_image(im, text) for im, text in zip(frames, texts)]
    metadata = {"animation": record["motion"], "config": record["config"], "frames": count}
    options = {"fps": fps, "hold_last": hold_last, "metadata": metadata, "credentials": credentials}
    written = []
    if gif:
        written.append(make_gif(frames, anim_dir / "animation.gif", **options))
    if mp4:
        filters = None
        if interpolate > 1:
            filters = f"minterpolate=fps={fps * interpolate:g}:mi_mode=mci"
        written.append(make_mp4(frames, anim_dir / "animation.mp4", filters=filters, **options))
    return written


def _label(path: Path) -> str:
    try:
        return str(read_recipe(path)["config"].get("prompt") or "")
    except (ExportError, KeyError, AttributeError):
        return "?"


def is_frame(recipe: dict[str, Any]) -> bool:
    return isinstance(recipe.get("motion"), dict)


def reproduce_frame(
    image: str | Path, out: str | Path = "reproduced", models: Models | None = None
) -> Path:
    """Make an animation frame again from its recipe and the frame before it (beside it);
    with the same models and device (CPU) its content bytes are identical."""
    image = Path(image)
    recipe = read_recipe(image)
    if not is_frame(recipe):
        raise RunError(f"{image} is not a frame of a vqclip animation: use `vqclip reproduce`.")
    config = RunConfig.from_dict(recipe["config"]).validate()
    models = models or load_run_models(config, progress=False)
    check_models(recipe, models)
    how = recipe["motion"]
    with cpu_threads(recipe.get("threads")):
        plan = prepare(config, models, recorded=recipe.get("plan"))
        z = start_latent(how, image.parent, models, tuple(plan.config.size), plan.precision)
        step = None
        for step in run(plan, None if z is None else {"z": z}):
            if step.iteration == recipe["iteration"]:
                break
    return save_png(step.image(), Path(out) / image.name, recipe, format_parameters(recipe))


def frames_difference(paths: list[Path]) -> float:
    """Mean absolute change between consecutive frames, in 8-bit levels (0..255): flicker."""
    import numpy as np

    arrays = [np.asarray(to_pil(p).convert("RGB"), dtype=np.float64) for p in paths]
    if len(arrays) < 2:
        return 0.0
    return float(np.mean([np.abs(a - b).mean() for a, b in zip(arrays, arrays[1:])]))
