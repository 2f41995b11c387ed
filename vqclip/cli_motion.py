"""``vqclip motion``: the animation command (its flags, and running or resuming one).

The run flags are generate's (built from RunConfig's settings by the functions ``vqclip.cli``
hands in, so imports point one way); the motion flags fill a
``vqclip.motion.MotionConfig`` over a ``--motion-file``. A timeline given with --timeline or
--timeline-file counts frames: "24: a forest" takes effect at frame 24.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import Any

from vqclip.config import ConfigError, RunConfig

EXIT_INTERRUPTED = 130  # as vqclip.cli's

# flag -> MotionConfig field, for those given (argparse.SUPPRESS leaves the others out)
_MOTION_FIELDS = ("frames", "steps_per_frame", "first_steps", "zoom", "pan_x", "pan_y", "rotate",
                  "easing", "warp", "fps", "init_video", "blend")  # fmt: skip


def _pan(text: str) -> tuple[float, float]:
    parts = text.split(",")
    try:
        x, y = (float(v) for v in parts)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--pan {text!r} must be two numbers X,Y: pixels per frame the picture moves right "
            "and down (e.g. 2,0); for keyframes use --pan-x and --pan-y"
        ) from None
    return x, y


def add_motion_command(
    commands: Any,
    add_config_flags: Callable[[argparse.ArgumentParser], None],
    within: Callable[[type, float, float, str], Callable[[str], Any]],
    config_from_args: Callable[[argparse.Namespace], RunConfig],
    with_story: Callable[[RunConfig, argparse.Namespace], RunConfig],
) -> None:
    """Add ``motion`` to the CLI's subcommands; the functions are vqclip.cli's."""
    mot = commands.add_parser(
        "motion", help="an animation: each frame continues the last after a camera move"
    )
    mot.add_argument("--config", help="JSON or YAML file of run settings (flags override it)")
    mot.add_argument("--quiet", action="store_true", help="no progress bar")
    mot.add_argument(
        "--resume", metavar="ANIM_DIR", help="continue this animation after its last frame"
    )
    mot.add_argument(
        "--timeline-file", metavar="FILE", help="YAML/JSON (frame: prompt) or timeline lines"
    )
    cam = mot.add_argument_group(
        "motion (camera values: one number, or keyframes '0:1.0, 60:1.03')"
    )
    kw: dict[str, Any] = {"default": argparse.SUPPRESS}
    cam.add_argument(
        "--motion-file", metavar="FILE", help="YAML: frames, zoom: {0: 1.0, 60: 1.03}, ..."
    )
    cam.add_argument("--frames", type=within(int, 1, 100_000, "a whole number from 1 to 100000"),
                     help="frames to make (default 48)", **kw)  # fmt: skip
    cam.add_argument("--steps-per-frame", dest="steps_per_frame",
                     type=within(int, 1, 10_000, "a whole number from 1 to 10000"),
                     help="optimisation steps per frame (default 10)", **kw)  # fmt: skip
    cam.add_argument("--first-steps", dest="first_steps",
                     type=within(int, 1, 1_000_000, "a whole number from 1 to 1000000"),
                     help="steps of frame 0, from the seed (default: --steps-per-frame)", **kw)  # fmt: skip
    cam.add_argument("--zoom", help="zoom per frame, > 1 comes closer (default 1)", **kw)
    cam.add_argument("--pan", type=_pan, metavar="X,Y", help="pixels per frame right,down", **kw)
    cam.add_argument("--pan-x", dest="pan_x", help="pixels per frame right (keyframes)", **kw)
    cam.add_argument("--pan-y", dest="pan_y", help="pixels per frame down (keyframes)", **kw)
    cam.add_argument("--rotate", help="degrees per frame, clockwise (default 0)", **kw)
    cam.add_argument("--easing", choices=("linear", "smooth"), help="between keyframes", **kw)
    cam.add_argument("--warp", choices=("pixel", "latent"),
                     help="move the picture and re-encode (default), or move the latent", **kw)  # fmt: skip
    cam.add_argument("--fps", type=within(float, 0.1, 120, "a number from 0.1 to 120"),
                     help="frames per second of the video (default 12)", **kw)  # fmt: skip
    cam.add_argument("--init-video", dest="init_video", metavar="VIDEO",
                     help="restyle this video, frame by frame", **kw)  # fmt: skip
    cam.add_argument("--blend", type=within(float, 0, 1, "a number from 0 to 1"),
                     help="weight of each new video frame against the previous result "
                     "(default 0.5; 1 styles each frame alone)", **kw)  # fmt: skip
    cam.add_argument("--gif", action="store_true", help="also write ANIM/animation.gif at the end")
    add_config_flags(mot)
    mot.set_defaults(func=lambda args: cmd_motion(args, config_from_args, with_story))


def motion_from_args(args: argparse.Namespace) -> Any:
    from vqclip.motion_config import MotionConfig, read_motion_file

    motion = read_motion_file(args.motion_file) if args.motion_file else MotionConfig()
    given = {name: getattr(args, name) for name in _MOTION_FIELDS if hasattr(args, name)}
    if hasattr(args, "pan"):
        if "pan_x" in given or "pan_y" in given:
            raise ConfigError(
                "--pan gives both pan values: leave out --pan-x and --pan-y, or --pan."
            )
        given["pan_x"], given["pan_y"] = args.pan
    return MotionConfig.from_dict({**motion.to_dict(), **given}).validate()


def cmd_motion(
    args: argparse.Namespace,
    config_from_args: Callable[[argparse.Namespace], RunConfig],
    with_story: Callable[[RunConfig, argparse.Namespace], RunConfig],
) -> int:
    if args.resume:
        stray = [name for name in (*_MOTION_FIELDS, "pan", "prompt") if hasattr(args, name)]
        if stray or args.motion_file:
            raise ConfigError(
                "--resume continues an animation with its recorded settings; leave out the "
                f"other settings ({', '.join(stray) or 'motion-file'})."
            )
        return run_animation(None, None, args.resume, quiet=args.quiet, gif=args.gif)
    extra = argparse.Namespace(story=None, passage=None, story_every=None,
                               timeline_file=args.timeline_file)  # fmt: skip
    config = with_story(config_from_args(args), extra)
    motion = motion_from_args(args)
    return run_animation(config, motion, None, quiet=args.quiet, gif=args.gif)


def run_animation(
    config: RunConfig | None,
    motion: Any,
    resume_dir: str | None,
    *,
    quiet: bool = False,
    gif: bool = False,
) -> int:
    """Make (or continue) an animation with a progress bar; export its MP4 when done."""
    from vqclip.credentials import LOCAL
    from vqclip.motion import animate, export_animation, read_animation, resume_animation

    if resume_dir is not None:
        frames = resume_animation(resume_dir)
        total = read_animation(resume_dir)["motion"]["frames"]
    else:
        frames = animate(config, motion)
        total = motion.frames
    print(f"animation directory: {frames.anim_dir}")
    bar = None
    if not quiet:
        from tqdm.auto import tqdm

        bar = tqdm(total=total, unit="frame", dynamic_ncols=True)
    try:
        with frames:
            for frame in frames:
                if bar is not None:
                    bar.n = frame.index + 1
                    bar.set_postfix_str(frame.prompts[:32], refresh=True)
    except KeyboardInterrupt:
        print(
            f"\nvqclip: stopped. Every finished frame is saved in {frames.anim_dir}; continue "
            f"with `vqclip motion --resume {frames.anim_dir}`.",
            file=sys.stderr,
        )
        return EXIT_INTERRUPTED
    finally:
        if bar is not None:
            bar.close()
    record = read_animation(frames.anim_dir)
    signing = LOCAL if record["config"].get("credentials", True) else None
    for path in export_animation(frames.anim_dir, gif=gif, mp4=True, credentials=signing):
        print(path)
    print(f"status: {record['status']} at frame {record['frame']} of {total}")
    return 0
