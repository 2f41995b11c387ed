"""The ``vqclip`` command. Its generate flags are built from RunConfig's fields."""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

from vqclip.config import MAX_ITERATIONS, ConfigError, RunConfig, settings

EXIT_FAILED = 1  # the command ran, but some of its work failed (it says which)
EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 130


def add_config_flags(parser: argparse.ArgumentParser, positional_prompt: bool = True) -> None:
    """One flag per RunConfig setting, defaulting to 'not given' so a --config file can fill it."""
    groups: dict[str, argparse._ArgumentGroup] = {}
    for setting in settings():
        group = groups.setdefault(setting.group, parser.add_argument_group(setting.group))
        kwargs: dict[str, Any] = {"help": setting.help, "default": argparse.SUPPRESS}
        if setting.positional and positional_prompt:
            group.add_argument(setting.name, nargs="?", **kwargs)
            continue
        kwargs["dest"] = setting.name
        if setting.kind == "bool":
            kwargs["action"] = argparse.BooleanOptionalAction
        elif setting.kind in ("lines", "ints", "floats"):
            kwargs.update(action="append", type=setting.element)  # the flag repeats
        elif setting.kind == "pair":
            kwargs.update(type=int, nargs=2, metavar=("W", "H"))
        else:
            kwargs["type"] = setting.element
            if setting.choices:
                kwargs["choices"] = setting.choices
        group.add_argument(setting.flag, **kwargs)


def given_settings(args: argparse.Namespace) -> dict[str, Any]:
    """The RunConfig settings given as flags (those left out are absent)."""
    return {name: getattr(args, name) for name in {s.name for s in settings()} & set(vars(args))}


def config_from_args(args: argparse.Namespace) -> RunConfig:
    """A RunConfig from a --config file (JSON or YAML) overridden by the flags given."""
    values: dict[str, Any] = {}
    if getattr(args, "config", None):
        values = _read_config_file(args.config)
    values.update(given_settings(args))
    return RunConfig.from_dict(values)


def _read_config_file(path: str) -> dict[str, Any]:
    file = Path(path)
    if file.is_dir():
        raise ConfigError(f"Config file {path!r} is a directory; give a JSON or YAML file.")
    if not file.is_file():
        raise ConfigError(f"Config file {path!r} does not exist. Check the path.")
    import yaml

    try:
        text = file.read_text(encoding="utf-8")
        data = yaml.safe_load(text) if file.suffix in (".yaml", ".yml") else json.loads(text)
    except (ValueError, yaml.YAMLError) as error:  # UnicodeDecodeError is a ValueError
        raise ConfigError(
            f"Config file {path!r} cannot be read as {'YAML' if file.suffix in ('.yaml', '.yml') else 'JSON'} "
            f"({' '.join(str(error).split())}). Fix the file, or write the settings as flags."
        ) from None
    data = data.get("config", data) if isinstance(data, dict) else data  # run.json works too
    if not isinstance(data, dict):
        raise ConfigError(f"Config file {path!r} must hold a mapping of setting: value.")
    return data


# --- commands ---------------------------------------------------------------------------


def with_story(config: RunConfig, args: argparse.Namespace) -> RunConfig:
    """The config with the prompts a --story, --passage or --timeline-file gives: the first
    part as the prompt, the others as timeline lines (after any --timeline lines given)."""
    from vqclip.timeline import passage, read_timeline, split_story, story

    given = [name for name in ("story", "passage", "timeline_file") if getattr(args, name, None)]
    if len(given) > 1:
        raise ConfigError(
            f"--{given[0].replace('_', '-')} and --{given[1].replace('_', '-')} both give the "
            "prompts over time: use one of --story, --passage and --timeline-file."
        )
    if not given:
        if args.story_every is not None:
            raise ConfigError("--story-every needs --story or --passage to say what to switch to.")
        return config
    if args.timeline_file:
        start, lines = read_timeline(args.timeline_file)
        return config.replace(**start, timeline=[*config.timeline, *lines])
    if args.story:
        parts = split_story(args.story)
    else:
        file = Path(args.passage)
        if not file.is_file():
            raise ConfigError(f"Passage file {args.passage!r} does not exist. Check the path.")
        parts = passage(file.read_text(encoding="utf-8"))
    every = args.story_every or max(1, config.iterations // len(parts))
    if (len(parts) - 1) * every > config.iterations:
        raise ConfigError(
            f"The story's {len(parts)} parts, {every} iterations each, need "
            f"{(len(parts) - 1) * every + 1} iterations to reach the last one; the run has "
            f"{config.iterations}. Lower --story-every or raise --iterations."
        )
    first, lines = story(parts, every)
    return config.replace(prompt=first, timeline=[*config.timeline, *lines])


def cmd_generate(args: argparse.Namespace) -> int:
    from vqclip.observers import generate

    config = with_story(config_from_args(args), args)  # generate checks it, then loads models
    return _report(lambda: generate(config, progress=not args.quiet))


def cmd_resume(args: argparse.Namespace) -> int:
    from vqclip.motion import ANIM_FILE
    from vqclip.observers import resume

    if (Path(args.run_dir) / ANIM_FILE).is_file():  # an animation continues frame by frame
        if args.iterations is not None or args.prompt is not None:
            raise ConfigError(
                f"{args.run_dir} is an animation: --iterations and --prompt do not apply. "
                "Resume it with `vqclip resume ANIM_DIR` alone (it continues after its last frame)."
            )
        from vqclip.cli_motion import run_animation

        return run_animation(None, None, args.run_dir, quiet=args.quiet)

    return _report(
        lambda: resume(
            args.run_dir, iterations=args.iterations, prompt=args.prompt, progress=not args.quiet
        )
    )


def cmd_branch(args: argparse.Namespace) -> int:
    from vqclip.observers import branch

    changes = given_settings(args)
    return _report(lambda: branch(args.run_dir, args.at, progress=not args.quiet, **changes))


def cmd_export(args: argparse.Namespace) -> int:
    from vqclip.credentials import LOCAL
    from vqclip.export import export_run
    from vqclip.motion import ANIM_FILE, export_animation

    gif = args.gif or not args.mp4  # neither flag: a GIF
    signing = LOCAL if args.credentials else None
    if (Path(args.run_dir) / ANIM_FILE).is_file():  # an animation: its frames at its fps
        for path in export_animation(
            args.run_dir,
            gif=gif,
            mp4=args.mp4,
            fps=args.fps,
            labels=args.label_prompts,
            interpolate=args.interpolate,
            hold_last=args.hold if args.hold is not None else 0.0,
            credentials=signing,
        ):
            print(path)
        return 0
    for path in export_run(
        args.run_dir,
        gif=gif,
        mp4=args.mp4,
        fps=args.fps or 10,
        hold_last=args.hold if args.hold is not None else 1.0,
        label=args.label,
        prompts=args.label_prompts,
        credentials=signing,
    ):
        print(path)
    return 0


def cmd_strip(args: argparse.Namespace) -> int:
    from vqclip.export import comparison_strip
    from vqclip.schedules import ScheduleError

    try:
        at = [int(v) for v in args.at.split(",")] if args.at else None
    except ValueError:
        raise ScheduleError(
            f"--at {args.at!r} must be comma-separated iteration numbers, e.g. 10,50,100,500."
        ) from None
    print(comparison_strip(args.run_dir, at=at, columns=args.columns))
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    from vqclip.best import read_best
    from vqclip.export import format_parameters, read_recipe
    from vqclip.motion import ANIM_FILE
    from vqclip.state import RUN_FILE

    if (Path(args.image) / RUN_FILE).is_file():  # a run directory: its status and best
        return _run_info(Path(args.image), args.json)
    if (Path(args.image) / ANIM_FILE).is_file():  # an animation: its frames and videos
        return _animation_info(Path(args.image), args.json)
    recipe = read_recipe(args.image)
    print(
        json.dumps(recipe, indent=2, ensure_ascii=False) if args.json else format_parameters(recipe)
    )
    best = read_best(args.image) if "best" in recipe and not args.json else None
    if best is not None:
        print(f"best: iteration {best[0]}, score {best[1]:.4f}")
    if not args.json:  # the JSON stays the recipe alone
        from vqclip.credentials import summary

        print(summary(args.image))
    return 0


def _run_info(run_dir: Path, as_json: bool) -> int:
    """A run directory's status, final image and best picture (keep-best's iteration and score)."""
    from vqclip.best import read_best
    from vqclip.state import BEST_FILE, FINAL_FILE, read_run

    record, best = read_run(run_dir), read_best(run_dir / BEST_FILE)
    final = run_dir / FINAL_FILE
    shown = {
        "run": str(run_dir),
        "prompt": record["config"].get("prompt"),
        "status": record["status"],
        "iteration": record["iteration"],
        "iterations": record["config"].get("iterations"),
        "final": str(final) if final.is_file() else None,
        "best": best
        and {"iteration": best[0], "score": best[1], "image": str(run_dir / BEST_FILE)},
    }
    if as_json:
        print(json.dumps(shown, indent=2, ensure_ascii=False))
        return 0
    print(f"run directory: {run_dir}\nprompt: {shown['prompt']}")
    print(f"status: {shown['status']} at iteration {shown['iteration']} of {shown['iterations']}")
    print(f"final image: {shown['final'] or 'none yet'}")
    if best is None:
        print("best: none yet")
    else:
        print(f"best: iteration {best[0]}, score {best[1]:.4f} ({run_dir / BEST_FILE})")
    return 0


def _animation_info(anim_dir: Path, as_json: bool) -> int:
    """An animation directory's status, frames made of planned, camera and videos."""
    from vqclip.motion import finished_frames, read_animation

    record = read_animation(anim_dir)
    videos = [anim_dir / name for name in ("animation.mp4", "animation.gif")]
    shown = {
        "animation": str(anim_dir),
        "prompt": record["config"].get("prompt"),
        "timeline": record["config"].get("timeline") or [],
        "status": record.get("status"),
        "frames": finished_frames(anim_dir),
        "planned": record["motion"].get("frames"),
        "motion": record["motion"],
        "videos": [str(v) for v in videos if v.is_file()],
    }
    if as_json:
        print(json.dumps(shown, indent=2, ensure_ascii=False))
        return 0
    motion = shown["motion"]
    print(f"animation directory: {anim_dir}\nprompt: {shown['prompt']}")
    for line in shown["timeline"]:
        print(f"  from frame {line}")
    print(f"status: {shown['status']}, {shown['frames']} of {shown['planned']} frames made")
    print(
        f"camera: zoom {motion.get('zoom')}, pan {motion.get('pan_x')},{motion.get('pan_y')}, "
        f"rotate {motion.get('rotate')}; {motion.get('steps_per_frame')} steps a frame, "
        f"{motion.get('warp')} warp, {motion.get('fps')} fps"
    )
    print("videos: " + (", ".join(shown["videos"]) or "none yet (vqclip export DIR)"))
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    from vqclip.credentials import verify

    verdict = verify(args.file, args.trust_anchor)  # offline: no remote manifest, no OCSP
    print(verdict.explain())
    return 0 if verdict.ok else EXIT_FAILED


def cmd_reproduce(args: argparse.Namespace) -> int:
    from vqclip.credentials import content_bytes
    from vqclip.export import read_recipe
    from vqclip.motion import is_frame, reproduce_frame
    from vqclip.observers import reproduce

    frame = is_frame(read_recipe(args.image))  # a frame starts from the one before it
    path = (reproduce_frame if frame else reproduce)(args.image, args.out)
    # Each signature is unique, so the files are compared without their content credential.
    same = content_bytes(path) == content_bytes(args.image)
    print(path)
    print(
        "identical to the original: "
        + ("yes" if same else "no (other versions or device?)")
        + " (pixels and recipe, byte for byte; each file's content credential is its own)"
    )
    return 0


def _report(start: Callable[[], Any]) -> int:
    from vqclip.observers import RunInterrupted
    from vqclip.state import read_run

    try:
        result = start()
    except RunInterrupted:
        print(
            "\nvqclip: stopped. Every snapshot so far is saved; "
            "continue with `vqclip resume RUN_DIR` (the run directory printed above).",
            file=sys.stderr,
        )
        return EXIT_INTERRUPTED
    except KeyboardInterrupt:  # while the models loaded, before any step
        print("\nvqclip: stopped before the run's first step; no step was saved.", file=sys.stderr)
        return EXIT_INTERRUPTED
    record = read_run(result.run_dir)
    print(f"run directory: {result.run_dir}")
    print(f"status: {record['status']} at iteration {record['iteration']}")
    print(f"final image: {result.final}")
    return 0


def cmd_make_tiny_models(args: argparse.Namespace) -> int:
    from vqclip.models import make_tiny_models

    paths = make_tiny_models(args.directory)
    print(
        "Wrote tiny random-weight models (they make noise, not pictures; they exist so the "
        "whole pipeline runs offline and in tests):"
    )
    for path in paths.values():
        print(f"  {path}")
    print(
        "Use them with: vqclip generate 'a prompt' "
        f"--vqgan-config {paths['vqgan_config']} --vqgan-checkpoint {paths['vqgan_checkpoint']} "
        f"--clip {paths['clip']} --size 64 64 --iterations 20"
    )
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    from vqclip.models import cache_dir
    from vqclip.registry import CLIP_MODELS, VQGAN_MODELS

    print(f"cache directory: {cache_dir()}  (set VQCLIP_CACHE to move it)")
    print("VQGAN models:")
    for name, source in VQGAN_MODELS.items():
        print(f"  {name:28s} {source.about}")
    print("CLIP models:", ", ".join(CLIP_MODELS))
    return 0


# --- many runs: sweeps and the queue ---------------------------------------------------------


def _list_arg(text: str | None, cast: Callable[[str], Any] = str) -> list[Any]:
    """'a, b' -> ['a', 'b']; a path to an existing file -> its non-empty lines."""
    if not text:
        return []
    try:
        folder, file = Path(text).is_dir(), Path(text).is_file()
    except OSError:  # too long for a file name ("9" * 400): a list, not a path
        folder = file = False
    if folder:
        raise ConfigError(
            f"{text!r} is a directory; give a comma-separated list or a text file, one per line."
        )
    lines = Path(text).read_text(encoding="utf-8").splitlines() if file else text.split(",")
    try:
        return [cast(item.strip()) for item in lines if item.strip()]
    except ValueError:
        raise ConfigError(
            f"{text!r} is not a comma-separated list of whole numbers, e.g. 1,2,3."
        ) from None


def cmd_sweep(args: argparse.Namespace) -> int:
    from vqclip.observers import load_run_models
    from vqclip.queue.worker import check_ray
    from vqclip.sweep import (
        expand,
        load_judge,
        rank_sweep,
        read_sweep,
        run_sweep,
        sheets,
        start_sweep,
        sweep_folder,
        sweep_status,
    )
    from vqclip.sweep_spec import SweepSpec, parse_vary, read_sweep_file

    if args.vary and len(args.vary) > 1:
        raise ConfigError(
            f"--vary was given {len(args.vary)} times ({', '.join(args.vary)}); a sweep varies "
            "one setting besides its prompts, styles and seeds. Keep one --vary, and run one "
            "sweep per setting to vary another."
        )
    if args.ray:
        check_ray()  # before anything is written
    if args.resume:
        changes = _sweep_changes(args)
        if changes:
            raise ConfigError(
                f"--resume finishes a sweep as it was set up, so {', '.join(changes)} would "
                "be ignored; leave them out, or start a new sweep to change what it covers "
                "(--workers, --batch, --ray, --judge, --rank-by, --rank-snapshots and --quiet "
                "apply)."
            )
        folder = Path(args.resume)
        base = RunConfig.from_dict(read_sweep(folder)["base"])
        models = load_run_models(base, progress=not args.quiet)
    else:
        spec = read_sweep_file(args.file) if args.file else SweepSpec()
        values = given_settings(args)  # flags given override the file's values
        name = values.pop("name", None) or spec.name  # names the sweep's folder
        prompts = [values.pop("prompt")] if values.get("prompt") else []
        prompts = [*prompts, *_list_arg(args.prompts)] or spec.prompts
        base = RunConfig.from_dict(
            {**spec.settings, **values, "prompt": prompts[0] if prompts else ""}
        )
        styles = _list_arg(args.styles) or spec.styles or [""]
        seeds = _list_arg(args.seeds, int) or spec.seeds or [1]
        vary = parse_vary(args.vary[0]) if args.vary else spec.vary
        expand(base, prompts, styles, seeds, vary)  # every refusal before anything is made
        sweep_folder(base, prompts, name)
        models = load_run_models(base, progress=not args.quiet)
        folder = start_sweep(base, prompts, styles, seeds, name, vary=vary)
        print(f"sweep folder: {folder}")
    try:
        run_sweep(
            folder,
            models,
            workers=args.workers,
            batch=args.batch,
            ray=args.ray,
            progress=not args.quiet,
        )
    except KeyboardInterrupt:
        print(
            f"\nvqclip: stopped; continue with `vqclip sweep --resume {folder}`.", file=sys.stderr
        )
        return EXIT_INTERRUPTED
    status = sweep_status(folder)
    total = sum(len(entries) for entries in status.values())
    judge, name = load_judge(args.judge, models)
    ranking = (
        rank_sweep(folder, judge, name, snapshots=args.rank_snapshots, by=args.rank_by)
        if status["done"]
        else []
    )
    if ranking:
        for path in sheets(folder):
            print(f"sheet: {path}")
        best = ranking[0]
        which = "best" if len(ranking) == total else f"best of the {len(ranking)} finished"
        print(f"{which}: {_describe(best)}, score {best['score']:.3f}: "
              f"{folder / best['run'] / best['image']}")  # fmt: skip
    if args.rank_snapshots:
        scored = [row for row in ranking if "best_score" in row]
        gold = max(scored, key=lambda row: row["best_score"], default=None)
        if gold is not None:
            print(f"best snapshot: {_describe(gold)}, iteration {gold['best_iteration']}, "
                  f"score {gold['best_score']:.3f}")  # fmt: skip
    print(f"{len(status['done'])} of {total} candidates done, {len(status['failed'])} failed, "
          f"{len(status['unfinished'])} unfinished.")  # fmt: skip
    if status["failed"] or status["unfinished"]:
        for entry in status["failed"]:
            print(f"vqclip: failed: {_describe(entry)}: {entry.get('error')}", file=sys.stderr)
        print(
            f"vqclip: {len(status['failed']) + len(status['unfinished'])} of {total} candidates "
            f"have no picture; fix the cause, then `vqclip sweep --resume {folder}` runs them "
            "again (a failed one from where it stopped).",
            file=sys.stderr,
        )
        return EXIT_FAILED
    return 0


def _sweep_changes(args: argparse.Namespace) -> list[str]:
    """The flags given beside --resume that would change what the sweep covers."""
    flags = {s.name: "PROMPT" if s.positional else s.flag for s in settings()}
    changes = [flags[name] for name in sorted(given_settings(args))]
    for flag in ("prompts", "styles", "seeds", "file", "vary"):
        if getattr(args, flag, None):
            changes.append(f"--{flag}")
    return changes


def _describe(row: dict[str, Any]) -> str:
    varied = "".join(f", {k} {v}" for k, v in (row.get("vary") or {}).items())
    return f"{row['prompt']} / {row['style'] or '(no style)'}{varied}, seed {row['seed']}"


def cmd_queue_add(args: argparse.Namespace) -> int:
    from vqclip.queue import JobQueue
    from vqclip.queue.store import check_iterations

    config = config_from_args(args).validate()  # a bad job makes no queue file either
    check_iterations(config.iterations)
    queue = JobQueue(args.queue or Path(config.out) / "queue.sqlite")
    print(f"job {queue.add(config)} queued in {queue.path}")
    return 0


def cmd_queue_list(args: argparse.Namespace) -> int:
    from vqclip.queue import JobQueue

    queue = JobQueue(args.queue, create=False)
    jobs = queue.jobs()
    if args.json:
        print(json.dumps([job.to_dict() for job in jobs], indent=2, ensure_ascii=False))
        return 0
    for job in jobs:
        state = "stale" if job.stale(queue.lease) else job.status
        done = job.iteration if job.iteration is not None else 0
        worker = f"  {job.worker}" if job.status == "running" else ""
        print(f"{job.id:5d}  {state:8s} {done:>6d}/{job.config.iterations:<6d} "
              f"{job.config.prompt[:60]!r}{worker}  {job.run_path}")  # fmt: skip
        if job.status == "failed" and job.error:
            print(f"       {job.error}")
    if any(job.stale(queue.lease) for job in jobs):
        print(f"stale: running, but its worker has not been heard from for {queue.lease:.0f} s "
              "or is gone; the next `vqclip queue work` resumes it.")  # fmt: skip
    if not jobs:
        print(f"{args.queue} has no jobs: add one with `vqclip queue add 'a prompt'`.")
    return 0


def cmd_queue_work(args: argparse.Namespace) -> int:
    from vqclip.queue import JobQueue
    from vqclip.queue.worker import check_ray, work, work_on_ray

    if args.ray:
        check_ray()
    queue = JobQueue(args.queue, create=False)
    try:
        if args.ray:
            ran = work_on_ray(queue, None if args.ray == "local" else args.ray)
        else:
            ran = work(queue, once=args.once, batch=args.batch, progress=not args.quiet)
    except KeyboardInterrupt:
        print("\nvqclip: stopped; the next `vqclip queue work` resumes that job first.",
              file=sys.stderr)  # fmt: skip
        return EXIT_INTERRUPTED
    failed = [j for j in ran if j.status == "failed"]
    print(f"{len(ran)} job(s) run; {sum(j.status == 'done' for j in ran)} done, "
          f"{len(failed)} failed.")  # fmt: skip
    if failed:
        print(f"vqclip: job(s) {', '.join(str(j.id) for j in failed)} failed (`vqclip queue "
              "list` shows why); fix the cause, then `vqclip queue retry --failed`.",
              file=sys.stderr)  # fmt: skip
        return EXIT_FAILED
    return 0


def cmd_queue_retry(args: argparse.Namespace) -> int:
    from vqclip.queue import JobQueue

    if (args.id is None) == (not args.failed):
        raise ConfigError("Give a job number, or --failed for every failed job (not both).")
    queue = JobQueue(args.queue, create=False)
    ids = queue.retry_failed() if args.failed else [queue.retry(args.id) or args.id]
    if not ids:
        print("no failed jobs to retry.")
    for job_id in ids:
        print(f"job {job_id} queued again; `vqclip queue work` runs it")
    return 0


def cmd_queue_remove(args: argparse.Namespace) -> int:
    from vqclip.queue import JobQueue

    JobQueue(args.queue, create=False).remove(args.id)
    print(f"job {args.id} removed")
    return 0


def cmd_queue_serve(args: argparse.Namespace) -> int:
    from vqclip.queue import JobQueue
    from vqclip.queue.net import addresses, bind, check_binding
    from vqclip.queue.web import serve

    defaults = config_from_args(args)
    defaults.replace(prompt="a check").validate()  # a bad default would refuse every job
    queue = JobQueue(args.queue, create=False)  # a mistyped path is refused, as by list/work
    sockets = bind(args.host, args.port)  # a bad or busy port is refused before printing
    token = check_binding(args.host, args.token)
    if token and not args.token:
        print(f"token (shown once; every request needs it): {token}")
    links = addresses(args.host, args.port, token)
    print(f"serving {queue.path} on {links[0]} (Ctrl-C stops)")
    for other in links[1:]:
        print(f"  also {other}")
    try:
        serve(queue, defaults, args.host, args.port, token, sockets)
    except KeyboardInterrupt:
        return 0
    return 0


BATCH_HELP = (
    "new candidates of one shape optimised together as one batch "
    "(default: up to 8 on a GPU, 1 on the CPU)"
)


def _within(kind: type, low: float, high: float, what: str) -> Callable[[str], Any]:
    """An argparse type: a finite ``kind`` from ``low`` to ``high``; anything else (NaN, inf,
    a number of hundreds of digits, one out of range) is a usage error saying what fits."""

    def read(text: str) -> Any:
        try:
            value = kind(text)
            ok = low <= value <= high  # NaN compares false; a huge int compares exactly
        except (ValueError, OverflowError):
            ok = False
        if not ok:
            raise argparse.ArgumentTypeError(f"{text!r} is not {what}")
        return value

    return read


def _count(text: str) -> int:
    """A whole number of 1 or more, for --workers and --batch."""
    value = int(text) if text.strip().isdigit() else 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of 1 or more")
    return value


def add_many_commands(commands: Any) -> None:
    """The sweep and queue subcommands."""
    sweep = commands.add_parser("sweep", help="prompts x styles x seeds, ranked by CLIP on a sheet")
    sweep.add_argument("--prompts", help="a file with one prompt per line (besides PROMPT)")
    sweep.add_argument("--styles", help="comma-separated style words, or a file, one per line")
    sweep.add_argument("--seeds", help="comma-separated seeds, or a file (default 1)")
    sweep.add_argument(
        "--file", help="YAML or JSON file: prompts, styles, seeds, vary, name, settings"
    )
    sweep.add_argument(
        "--vary",
        action="append",  # given twice is refused, not silently the last
        metavar="SETTING=V1,V2",
        help="one more axis, e.g. lr=0.05,0.1 or size=128,256",
    )
    sweep.add_argument("--resume", metavar="SWEEP_DIR", help="finish an interrupted sweep")
    sweep.add_argument("--workers", type=_count, default=1, help="worker processes (one per GPU)")
    sweep.add_argument("--batch", type=_count, help=BATCH_HELP)
    sweep.add_argument("--ray", metavar="ADDRESS", help="run candidates as Ray tasks ('local')")
    sweep.add_argument("--judge", help="CLIP model that ranks (default: the one optimised)")
    sweep.add_argument(
        "--rank-by",
        choices=("final", "best"),
        default="final",
        help="the picture of each candidate the ranking judges: final.png, or best.png "
        "(the best-scoring one of its run, kept by keep-best); default final",
    )
    sweep.add_argument(
        "--rank-snapshots", action="store_true", help="score every snapshot too; sheet of the best"
    )
    sweep.add_argument("--quiet", action="store_true", help="no progress bars")
    add_config_flags(sweep)
    sweep.set_defaults(func=cmd_sweep)

    queue = commands.add_parser(
        "queue", help="a queue of runs: add, list, work, retry, remove, serve"
    )
    jobs = queue.add_subparsers(dest="queue_command", required=True, metavar="ACTION")
    default = "runs/queue.sqlite"
    add = jobs.add_parser("add", help="queue a run (the flags of generate)")
    add.add_argument("--queue", help="the queue file (default OUT/queue.sqlite)")
    add.add_argument("--config", help="JSON or YAML file of settings (flags override it)")
    add_config_flags(add)
    add.set_defaults(func=cmd_queue_add)
    lst = jobs.add_parser("list", help="the jobs and how far each got")
    lst.add_argument("--queue", default=default, help=f"the queue file (default {default})")
    lst.add_argument("--json", action="store_true", help="as JSON")
    lst.set_defaults(func=cmd_queue_list)
    wrk = jobs.add_parser("work", help="run the queued jobs (a cut job resumes first)")
    wrk.add_argument("--queue", default=default, help=f"the queue file (default {default})")
    wrk.add_argument("--once", action="store_true", help="run one job, then stop")
    wrk.add_argument("--batch", type=_count, help=BATCH_HELP)
    wrk.add_argument("--ray", metavar="ADDRESS", help="send the jobs to Ray ('local' starts one)")
    wrk.add_argument("--quiet", action="store_true", help="no progress bars")
    wrk.set_defaults(func=cmd_queue_work)
    retry = jobs.add_parser("retry", help="queue a failed (or stopped) job again")
    retry.add_argument("id", type=int, nargs="?", help="the job's number (see list)")
    retry.add_argument("--failed", action="store_true", help="every failed job")
    retry.add_argument("--queue", default=default, help=f"the queue file (default {default})")
    retry.set_defaults(func=cmd_queue_retry)
    rm = jobs.add_parser("remove", help="take a job off the queue")
    rm.add_argument("id", type=int)
    rm.add_argument("--queue", default=default, help=f"the queue file (default {default})")
    rm.set_defaults(func=cmd_queue_remove)
    web = jobs.add_parser("serve", help="a web page to add jobs from a phone")
    web.add_argument("--queue", default=default, help=f"the queue file (default {default})")
    web.add_argument("--host", default="127.0.0.1", help="address (0.0.0.0: the whole network)")
    web.add_argument("--port", type=int, default=8765)
    web.add_argument("--token", help="the token requests need (made and shown off 127.0.0.1)")
    add_config_flags(web, positional_prompt=False)  # the defaults of jobs added on the page
    web.set_defaults(func=cmd_queue_serve)


class _Parser(argparse.ArgumentParser):
    """argparse, with usage mistakes reported as one paragraph like every other error."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"vqclip: error: {message}. See '{self.prog} --help' for the options.\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="vqclip", description="Text to image with VQGAN + CLIP; watch it evolve.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    gen = commands.add_parser("generate", help="make an image from a prompt")
    gen.add_argument("--config", help="JSON or YAML file of settings (flags override it)")
    gen.add_argument("--quiet", action="store_true", help="no progress bar")
    story = gen.add_argument_group("prompts over time (story mode)")
    story.add_argument("--story", help="prompts separated by '^', each for --story-every steps")
    story.add_argument("--passage", metavar="FILE", help="a text file: each sentence a prompt")
    story.add_argument(
        "--story-every",
        type=_within(int, 1, MAX_ITERATIONS, "a whole number of iterations of at least 1"),
        help="iterations per part (default: the run's iterations shared out)",
    )
    story.add_argument(
        "--timeline-file", metavar="FILE", help="YAML/JSON (iteration: prompt) or timeline lines"
    )
    add_config_flags(gen)
    gen.set_defaults(func=cmd_generate)

    res = commands.add_parser("resume", help="continue a stopped or finished run")
    res.add_argument("run_dir")
    res.add_argument(
        "--iterations",
        type=_within(int, 1, MAX_ITERATIONS, f"a whole number from 1 to {MAX_ITERATIONS:,}"),
        help="new total number of iterations",
    )
    res.add_argument(
        "--prompt",
        help="new text prompts from the iteration it continues at (recorded in its timeline)",
    )
    res.add_argument("--quiet", action="store_true", help="no progress bar")
    res.set_defaults(func=cmd_resume)

    br = commands.add_parser("branch", help="start a new run from a snapshot with new settings")
    br.add_argument("run_dir")
    br.add_argument(
        "--at",
        type=_within(int, 0, MAX_ITERATIONS, "an iteration number of a snapshot (0 or more)"),
        required=True,
        help="the snapshot iteration to start from",
    )
    br.add_argument("--quiet", action="store_true", help="no progress bar")
    add_config_flags(br, positional_prompt=False)
    br.set_defaults(func=cmd_branch)

    exp = commands.add_parser("export", help="animate a run's snapshots (GIF and/or MP4)")
    exp.add_argument("run_dir")
    exp.add_argument("--gif", action="store_true", help="write RUN_DIR/animation.gif (default)")
    exp.add_argument("--mp4", action="store_true", help="write RUN_DIR/animation.mp4")
    exp.add_argument(
        "--fps",
        type=_within(float, 0.01, 100, "a number of frames per second from 0.01 to 100"),
        help="frames per second, 0.01 to 100 (a GIF frame lasts at least 10 ms; default 10, "
        "an animation's own fps)",
    )
    exp.add_argument(
        "--hold",
        type=_within(float, 0, 3600, "a number of seconds from 0 to 3600"),
        help="seconds to hold the last frame, 0 (none) to 3600 (default 1; 0 for an animation)",
    )
    exp.add_argument(
        "--interpolate",
        type=_within(int, 1, 8, "a whole number from 1 (off) to 8"),
        default=1,
        help="an animation's MP4 this many times smoother (ffmpeg minterpolate; default 1: off)",
    )
    exp.add_argument(
        "--label", action=argparse.BooleanOptionalAction, default=True, help="burn in 'it N'"
    )
    exp.add_argument(
        "--label-prompts", action="store_true", help="burn in the prompts in force, too"
    )
    exp.add_argument(
        "--credentials",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="sign the files with a C2PA content credential (default; see vqclip verify)",
    )
    exp.set_defaults(func=cmd_export)

    strip = commands.add_parser("strip", help="one PNG comparing chosen iterations side by side")
    strip.add_argument("run_dir")
    strip.add_argument("--at", help="iterations, e.g. 10,50,100,500 (default: all snapshots)")
    strip.add_argument(
        "--columns",
        type=_within(int, 1, 100, "a whole number of images per row from 1 to 100"),
        help="images per row, 1 to 100 (default: at most 6, rows balanced)",
    )
    strip.set_defaults(func=cmd_strip)

    info = commands.add_parser(
        "info", help="print the recipe stored in a vqclip PNG, or a run's status and best picture"
    )
    info.add_argument("image", help="a vqclip PNG, or a run directory")
    info.add_argument("--json", action="store_true", help="the full recipe as JSON")
    info.set_defaults(func=cmd_info)

    rep = commands.add_parser("reproduce", help="make a vqclip PNG again from its recipe")
    rep.add_argument("image")
    rep.add_argument("--out", default="reproduced", help="directory for the new file")
    rep.set_defaults(func=cmd_reproduce)

    ver = commands.add_parser("verify", help="check a file's content credential (C2PA), offline")
    ver.add_argument("file", help="a PNG, GIF or MP4")
    ver.add_argument(
        "--trust-anchor",
        metavar="CA.pem",
        help="a CA certificate to trust (e.g. CACHE/credentials/local-ca.pem for this machine)",
    )
    ver.set_defaults(func=cmd_verify)

    tiny = commands.add_parser(
        "make-tiny-models", help="write tiny random-weight models for offline tests (noise only)"
    )
    tiny.add_argument("directory")
    tiny.set_defaults(func=cmd_make_tiny_models)

    lst = commands.add_parser("models", help="list known models and the cache directory")
    lst.set_defaults(func=cmd_models)
    add_many_commands(commands)
    from vqclip.cli_motion import add_motion_command

    add_motion_command(commands, add_config_flags, _within, config_from_args, with_story)
    return parser


def _user_errors() -> tuple[type[Exception], ...]:
    from vqclip.credentials import CredentialError
    from vqclip.export import ExportError
    from vqclip.memory import DoesNotFit
    from vqclip.models import ModelError
    from vqclip.queue import QueueError
    from vqclip.schedules import ScheduleError
    from vqclip.state import RunError

    errors = ConfigError, ScheduleError, ModelError, RunError, ExportError, DoesNotFit, QueueError
    return (*errors, CredentialError)


def _show_notice(message, category, filename, lineno, file=None, line=None) -> None:
    print(f"vqclip: notice: {message}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as done:  # --help, or a usage error already reported
        return done.code if isinstance(done.code, int) else 2
    warnings.showwarning = _show_notice
    warnings.filterwarnings("ignore", message="pkg_resources is deprecated")  # clip's import
    try:
        return args.func(args)
    except _user_errors() as error:
        print(f"vqclip: error: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT


if __name__ == "__main__":
    sys.exit(main())
