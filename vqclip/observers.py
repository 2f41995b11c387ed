"""What watches a run: snapshot saver, loss log, progress bar; and ``generate``, which drains a run.

Observers are called with each Step and once more when the run ends; they read, never write
back into the loop. ``generate`` owns the run directory's life: run.json is written before
the first step and updated when the run ends (done, stopped or failed), and the latest
state is saved at every snapshot and at the end, so a run can always be resumed.
"""

from __future__ import annotations

import contextlib
import json
import platform
import sys
import threading
import traceback
import warnings
from collections.abc import Callable, Generator, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

import vqclip
from vqclip import credentials
from vqclip.best import KeepBest
from vqclip.config import RunConfig, slug
from vqclip.credentials import LOCAL, Signing, signing_for
from vqclip.engine import Step, run, run_batch
from vqclip.export import format_parameters, read_recipe, save_png
from vqclip.fast import optimize_models
from vqclip.models import Models, load_models, resolve_device
from vqclip.plan import Plan, group_plans, prepare, resolve_precision
from vqclip.schedules import parse_schedule
from vqclip.state import (
    FINAL_FILE,
    LOG_FILE,
    RUN_FILE,
    RUN_FORMAT,
    SNAPSHOT_DIR,
    STATE_FILE,
    RunError,
    load_latent,
    load_state,
    new_run_dir,
    read_run,
    remove_torn_writes,
    save_latent,
    save_state,
    snapshot_name,
    update_run,
    write_json,
)
from vqclip.timeline import Steering


class Observer:
    """Base observer: ``start(plan)`` before the first step, called with every Step, then
    ``close(status)`` once the run has ended."""

    def start(self, plan: Plan) -> None:  # noqa: B027 - optional hook
        pass

    def __call__(self, step: Step) -> None:  # noqa: B027 - optional hook
        pass

    def close(self, status: str) -> None:  # noqa: B027 - optional hook
        pass


class SnapshotSaver(Observer):
    """Writes scheduled snapshots (PNG with the recipe) and the run state beside them.

    When the run ends it writes final.png; a stopped or failed run also keeps the last
    image it reached as a snapshot, so stopping when the picture looks good loses nothing.
    """

    def __init__(
        self,
        run_dir: Path,
        iterations: Iterable[int],
        recipe: dict[str, Any],
        credentials: Signing | None = LOCAL,
    ) -> None:
        self.run_dir, self.iterations, self.recipe = Path(run_dir), set(iterations), recipe
        self.credentials = credentials  # who signs each file's content credential (None: nobody)
        self.last: Step | None = None
        self.saved: list[int] = []

    def __call__(self, step: Step) -> None:
        self.last = step
        if step.iteration in self.iterations:
            self.save(step, self.run_dir / SNAPSHOT_DIR / snapshot_name(step.iteration))

    def save(self, step: Step, path: Path) -> None:
        recipe = step.recipe(self.recipe)  # a steered run's timeline grows as it goes
        save_png(step.image(), path, recipe, format_parameters(recipe), self.credentials)
        state = step.state()
        if path.parent.name == SNAPSHOT_DIR:
            self.saved.append(step.iteration)
            if state is not None and state["iteration"] == step.iteration:  # to branch from
                save_latent(self.run_dir, step.iteration, state["z"])
        if state is not None:
            save_state(self.run_dir, state)

    def close(self, status: str) -> None:
        step = self.last
        if step is None:
            return
        if status != "done" and step.iteration not in self.saved:
            self.save(step, self.run_dir / SNAPSHOT_DIR / snapshot_name(step.iteration))
        self.save(step, self.run_dir / FINAL_FILE)


class LogWriter(Observer):
    """Appends one JSON line per iteration to log.jsonl (loss, each prompt's loss and similarity, lr).

    Values are gathered on the device and read back in batches, so logging does not make
    every step wait for the device.
    """

    def __init__(self, run_dir: Path, flush_every: int = 10) -> None:
        self.path, self.flush_every = Path(run_dir) / LOG_FILE, flush_every
        self.pending: list[Step] = []

    def __call__(self, step: Step) -> None:
        self.pending.append(step)
        if len(self.pending) >= self.flush_every or step.is_last:
            self.flush()

    def flush(self) -> None:
        if not self.pending:
            return
        lines = [json.dumps(step.stats(), ensure_ascii=False) for step in self.pending]
        with open(self.path, "a", encoding="utf-8") as f:
            f.write("\n".join(lines) + "\n")
        self.pending.clear()

    def close(self, status: str) -> None:
        self.flush()


def read_log(run_dir: str | Path) -> list[dict[str, Any]]:
    """The run's per-iteration log, one row per iteration in order.

    A line torn by a crash is skipped; iterations computed again after a resume appear
    once (the later row wins).
    """
    path = Path(run_dir) / LOG_FILE
    if not path.is_file():
        return []
    rows: dict[int, dict[str, Any]] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        rows[row["iteration"]] = row
    return [rows[k] for k in sorted(rows)]


class ProgressBar(Observer):
    """A tqdm bar with loss and per-prompt similarity, refreshed every ``every`` iterations."""

    def __init__(self, total: int, every: int = 5, initial: int = 0) -> None:
        from tqdm.auto import tqdm

        self.bar = tqdm(total=total, initial=initial, unit="it", dynamic_ncols=True)
        self.every = every

    def __call__(self, step: Step) -> None:
        if step.iteration > self.bar.n:
            self.bar.update(step.iteration - self.bar.n)
        if step.iteration % self.every == 0 or step.is_last:
            stats = step.stats()
            sims = " ".join(
                f"{p['prompt'][:16]}={p['similarity']:.3f}" for p in stats["prompts"][:4]
            )
            self.bar.set_postfix_str(f"loss={stats['loss']:.4f} {sims}", refresh=True)

    def close(self, status: str) -> None:
        self.bar.close()


def describe(plan: Plan, parent: dict[str, Any] | None = None) -> dict[str, Any]:
    """The recipe of a run: every setting, the model files, versions and the resolved plan.

    A branched run also carries its parent's recipe and iteration, so its images can be
    reproduced from their own metadata.
    """
    models = plan.models
    recipe = {
        "config": plan.config.recipe(),
        "models": {"vqgan": models.vqgan_info.to_dict(), "clip": clip_record(models)},
        "versions": {
            "vqclip": vqclip.__version__,
            "torch": torch.__version__,
            "clip-anytorch": _version("clip-anytorch"),
            "python": platform.python_version(),
        },
        "device": plan.device.type,
        "precision": plan.precision,
        "plan": plan.record(),
        # CPU sums split over threads round differently: bit-exact replays use the same count
        "threads": torch.get_num_threads(),
    }
    if parent is not None:
        recipe["parent"] = parent
    return recipe


_RECIPE_KEYS = ("config", "models", "versions", "device", "precision", "plan", "threads", "parent")


def recipe_of(record: dict[str, Any]) -> dict[str, Any]:
    """The recipe part of a run.json record (what its PNGs carry, but the iteration)."""
    recipe = {key: record[key] for key in _RECIPE_KEYS if key in record}
    if "config" in recipe:
        recipe["config"] = RunConfig.from_dict(recipe["config"]).recipe()
    return recipe


def load_run_models(config: RunConfig, progress: bool = True) -> Models:
    """Models for one run, converted in place to the run's precision.

    In place because nothing else holds them: the fast path's bf16 copy would otherwise sit
    beside the fp32 weights (0.4 GiB more at the default models). To reuse models across
    runs of different precisions, load them with ``load_models`` and pass them in instead.
    A precision the device cannot run is refused before anything loads.
    """
    precision = resolve_precision(config.precision, resolve_device(config.device))
    models = load_models(config, progress=progress)
    return optimize_models(models, precision, inplace=True)


def default_run_name(config: RunConfig) -> str:
    return f"{datetime.now():%Y%m%d-%H%M%S}-{slug(config.prompt)}-s{config.seed}"


@dataclass(frozen=True)
class RunResult:
    """How a run ended and where its files are."""

    run_dir: Path
    config: RunConfig
    status: str  # done, stopped or failed
    iteration: int  # the last iteration reached

    @property
    def final(self) -> Path:
        return self.run_dir / FINAL_FILE

    @property
    def snapshots(self) -> list[Path]:
        return sorted((self.run_dir / SNAPSHOT_DIR).glob("[0-9]*.png"))


def generate(
    config: RunConfig,
    models: Models | None = None,
    *,
    observers: Sequence[Observer] = (),
    progress: bool = True,
    should_stop: Callable[[], bool] | None = None,
    steering: Steering | None = None,
) -> RunResult:
    """Run ``config`` in a new run directory with the standard observers; say where the results are.

    ``should_stop`` is polled each iteration (the panel's Stop button); Ctrl-C stops too.
    Either way the run directory is complete and ``resume`` continues the run. Prompt
    changes asked of ``steering`` (from another thread) take effect at the next step and are
    recorded in the run's timeline.
    """
    config.validate()  # bad input is refused before any model loads
    credentials.prepare(signing_for(config))  # and a certificate that cannot sign
    models = models or load_run_models(config, progress=progress)
    # a run that cannot fit says so before its directory exists
    plan = prepare(config, models, checked=True)
    run_dir = _new_run(plan)
    return _execute([plan], [run_dir], [None], observers, progress, should_stop, steering)[0]


def generate_batch(
    configs: Sequence[RunConfig],
    models: Models,
    *,
    batch: int = 8,
    progress: bool = True,
    should_stop: Callable[[], bool] | None = None,
) -> list[RunResult]:
    """Run several configs, those of one shape optimised together ``batch`` at a time (as
    many as memory allows); return their results in order.

    Each gets an ordinary run directory with its full recipe: resumable, and reproducible
    alone (the same picture up to float rounding: its recipe records that it was batched).
    A Stop or Ctrl-C stops the batch running then, with every run's state saved.
    """
    for config in configs:
        config.validate()
    plans = [prepare(config, models, checked=True) for config in configs]
    results: dict[int, RunResult] = {}
    for group in group_plans(plans, batch):
        run_dirs = [_new_run(plan) for plan in group]
        done = _execute(group, run_dirs, [None] * len(group), (), progress, should_stop)
        results.update({id(plan): result for plan, result in zip(group, done)})
        if any(result.status == "stopped" for result in done):
            break
    return [results[id(plan)] for plan in plans if id(plan) in results]


def resume(
    run_dir: str | Path,
    models: Models | None = None,
    *,
    iterations: int | None = None,
    prompt: str | None = None,
    observers: Sequence[Observer] = (),
    progress: bool = True,
    should_stop: Callable[[], bool] | None = None,
    steering: Steering | None = None,
) -> RunResult:
    """Continue a run from its saved state, optionally to a new number of iterations.

    It computes as the run did (its recorded CLIP micro-batches and checkpointing and its
    prompt timeline), so a resumed run gives the same bytes as one never interrupted. A new
    ``prompt`` takes effect from the iteration it continues at, recorded as a change of its
    timeline (the optimiser's state is kept), not as a new run.
    """
    run_dir = Path(run_dir)
    record = read_run(run_dir)
    config = RunConfig.from_dict(record["config"])
    if iterations is not None:
        config = config.replace(iterations=iterations)
    # A run killed before its first snapshot saved no state: it starts again in place, from
    # its recorded seed, which gives the very steps it would have taken.
    state = load_state(run_dir) if (run_dir / STATE_FILE).is_file() else None
    at = state["iteration"] if state else 0
    if at >= config.iterations:
        raise RunError(
            f"{run_dir} is already at iteration {at} of {config.iterations}. "
            "Pass a larger --iterations to continue it further."
        )
    if prompt is not None and at == 0:  # it starts again from its seed: a new first prompt
        config = config.replace(prompt=prompt)
    elif prompt is not None:
        config = config.replace(timeline=[*config.timeline, f"{at}: {prompt.strip()}"])
    config.validate()
    credentials.prepare(signing_for(config))
    models = models or load_run_models(config, progress=progress)
    check_models(record, models)  # a run continued with other weights would not be that run
    plan = prepare(config, models, recorded=record.get("plan"), checked=True)
    notice_drift(record, plan.device, plan.precision)
    remove_torn_writes(run_dir)  # a kill mid-write leaves a temporary file beside the whole one
    update_run(run_dir, status="running", config=plan.config.to_dict())
    with cpu_threads(record.get("threads")):
        return _execute([plan], [run_dir], [state], observers, progress, should_stop, steering)[0]


def branch(
    run_dir: str | Path,
    at: int,
    models: Models | None = None,
    *,
    observers: Sequence[Observer] = (),
    progress: bool = True,
    should_stop: Callable[[], bool] | None = None,
    **changes: Any,
) -> RunResult:
    """Start a new run from a snapshot's latent, with changed settings (e.g. a new prompt).

    The optimiser starts fresh; iteration 0 of the new run is the parent's image at ``at``.
    The new run.json and every image of it name the parent run and iteration.
    """
    run_dir = Path(run_dir)
    record = read_run(run_dir)
    latent = load_latent(run_dir, at)
    base = RunConfig.from_dict(record["config"])
    config = base.replace(name=None, **changes).validate()  # before any model loads
    credentials.prepare(signing_for(config))
    models = models or load_run_models(config, progress=progress)
    plan = prepare(config, models, checked=True)
    if plan.config.size != base.size:
        raise RunError(
            f"A branch keeps its parent's size ({base.size[0]}x{base.size[1]}); "
            f"{plan.config.size[0]}x{plan.config.size[1]} was asked for. Leave the size out."
        )
    parent = {
        "run": str(run_dir.resolve()),
        "iteration": at,
        "recipe": {**recipe_of(record), "iteration": at},
    }
    new_dir = _new_run(plan, parent)
    return _execute([plan], [new_dir], [{"z": latent}], observers, progress, should_stop)[0]


def _new_run(plan: Plan, parent: dict[str, Any] | None = None) -> Path:
    config = plan.config
    run_dir = new_run_dir(config.out, config.name or default_run_name(config))
    record = {"version": RUN_FORMAT, "status": "running", "iteration": 0, "created": _now()}
    record.update(describe(plan, parent), config=config.to_dict())
    write_json(run_dir / RUN_FILE, record)
    return run_dir


def _execute(
    plans: Sequence[Plan],
    run_dirs: Sequence[Path],
    starts: Sequence[dict[str, Any] | None],
    observers: Sequence[Observer],
    progress: bool,
    should_stop: Callable[[], bool] | None,
    steering: Steering | None = None,
) -> list[RunResult]:
    """Run one run, or several as one batch, with each its own snapshot and log writers;
    the viewers (progress, displays) watch the first, which ``steering`` steers."""
    writers: list[list[Observer]] = []
    for plan, run_dir in zip(plans, run_dirs):
        config = plan.config
        recipe = describe(plan, read_run(run_dir).get("parent"))
        keep = parse_schedule(config.snapshots).iterations(config.iterations)
        saver = SnapshotSaver(run_dir, keep, recipe, signing_for(config))
        writers.append([saver, LogWriter(run_dir)])
        writers[-1].insert(
            0, KeepBest(run_dir, keep, recipe, signing_for(config))
        )  # best.png before state.pt
    viewers = list(observers)
    if progress:
        at = starts[0].get("iteration", 0) if starts[0] else 0
        viewers.insert(0, ProgressBar(plans[0].config.iterations, initial=at))
    steps = run_batch(plans, starts, [steering] + [None] * (len(plans) - 1))
    return _drain(plans, steps, writers, viewers, run_dirs, should_stop)


def replay(recipe: dict[str, Any], models: Models) -> Step:
    """Run a recipe (a PNG's vqclip metadata) again up to its iteration; return that Step.

    The recorded plan's CLIP micro-batches and checkpointing are used, not what this
    machine's memory would choose, so the same recipe gives the same bytes.
    """
    parent = recipe.get("parent")
    start = {"z": replay(parent["recipe"], models).state()["z"]} if parent else None
    config = RunConfig.from_dict(recipe["config"])
    plan = prepare(config, models, recorded=recipe.get("plan"))
    for step in run(plan, start):
        if step.iteration == recipe["iteration"]:
            return step
    raise RunError(f"The recipe's iteration {recipe['iteration']} is beyond its run's length.")


def reproduce(
    image: str | Path, out: str | Path = "reproduced", models: Models | None = None
) -> Path:
    """Make an image again from the recipe in its PNG metadata; return the new file's path.

    With the same models, versions and device (CPU) the new file's pixels and recipe are
    byte-identical (``credentials.content_bytes``); its content credential is its own.
    """
    recipe = read_recipe(image)
    if isinstance(recipe.get("motion"), dict):  # starts from the frame before it, not a seed
        raise RunError(
            f"{image} is a frame of an animation: it starts from the frame before it. Use "
            "vqclip.motion.reproduce_frame (what `vqclip reproduce` does for a frame)."
        )
    config = RunConfig.from_dict(recipe["config"]).validate()
    models = models or load_run_models(config)
    check_models(recipe, models)
    notice_drift(recipe, models.device, resolve_precision(config.precision, models.device))
    with cpu_threads(recipe.get("threads")):
        step = replay(recipe, models)
    return save_png(step.image(), Path(out) / Path(image).name, recipe, format_parameters(recipe))


def clip_record(models: Models) -> dict[str, Any] | list[dict[str, Any]]:
    """The recipe's ``models.clip``: one CLIP's files and sha256 (as always), or for an
    ensemble a list of them, in the setting's order, each with its input size."""
    if len(models.clips) == 1:
        return models.clip_info.to_dict()
    return [
        {**info.to_dict(), "input": size}
        for info, size in zip(models.clip_infos, models.clip_sizes)
    ]


def check_models(recipe: dict[str, Any], models: Models) -> None:
    """Refuse to continue or reproduce with model files other than the recipe's (by sha256),
    or with another number of CLIPs than its ensemble had."""
    recorded = (recipe.get("models") or {}).get("clip")
    clips = recorded if isinstance(recorded, list) else [recorded]
    if recorded is None:  # a record without model identities: nothing to compare
        clips = [None] * len(models.clips)
    if len(clips) != len(models.clips):

        def names(infos: list[Any]) -> str:
            return ", ".join(str((i or {}).get("name", "?")) for i in infos)

        raise RunError(
            f"The run was made with {len(clips)} CLIP model(s) ({names(clips)}), but "
            f"{len(models.clips)} were loaded "
            f"({names([i.to_dict() for i in models.clip_infos])}). Resuming or reproducing "
            "needs the very same CLIP ensemble: leave its clip_model setting as recorded (or "
            "load the models from the run's own settings) and try again."
        )
    roles = [("vqgan", models.vqgan_info, (recipe.get("models") or {}).get("vqgan"))]
    for k, (info, entry) in enumerate(zip(models.clip_infos, clips)):
        role = "clip" if len(clips) == 1 else f"ensemble's CLIP {k + 1} ({info.name})"
        roles.append((role, info, entry))
    for role, info, entry in roles:
        wanted = (entry or {}).get("sha256") or {}
        if isinstance(wanted, str):  # one digest without its role: it must be one of the files
            wanted = {k: wanted for k, v in info.sha256.items() if v == wanted} or {"file": wanted}
        for key, digest in wanted.items():
            if info.sha256.get(key) != digest:
                raise RunError(
                    f"The {role} {key} file loaded ({info.files.get(key)}) has sha256 "
                    f"{info.sha256.get(key)}, but the run was made with {digest}. Resuming or "
                    "reproducing needs the very same model files: put them back (or point the "
                    "settings at them) and try again."
                )


def notice_drift(recipe: dict[str, Any], device: torch.device, precision: str) -> None:
    """Warn when a resume or reproduce will compute differently from the recorded run
    (another device, "auto" meaning another precision here, or alone after a batch):
    close, not byte-identical."""
    was = (recipe.get("device"), recipe.get("precision"))
    now = (device.type, precision)
    together = (recipe.get("plan") or {}).get("candidates", 1)
    if together > 1:
        warnings.warn(
            f"This run was optimised in one batch with {together - 1} other sweep "
            "candidate(s); alone it computes the same steps, but float rounding can differ a "
            "little, so the result is close to the original, and may not be byte-identical.",
            stacklevel=3,
        )
    if None not in was and was != now:
        warnings.warn(
            f"This run was computed on {was[0]} in {was[1]}, but here it runs on {now[0]} in "
            f"{now[1]}, so the result will be close to the original, not byte-identical. "
            f"Use a machine where {was[0]} and {was[1]} are available for an exact match.",
            stacklevel=3,
        )


def _drain(
    plans: Sequence[Plan],
    steps: Generator[tuple[Step, ...], None, None],
    writers: Sequence[Sequence[Observer]],
    viewers: list[Observer],
    run_dirs: Sequence[Path],
    should_stop: Callable[[], bool] | None,
) -> list[RunResult]:
    """Feed each iteration's Steps to each run's writers (snapshots, log: a failure there
    stops the runs) and the first run's Step to the viewers (progress, displays: one that
    fails is dropped with a notice, and the run goes on), and record how the runs ended."""
    status, error, iteration, interrupted = "done", None, 0, False
    recorded = [plan.record() for plan in plans]
    timelines = [len(plan.config.timeline) for plan in plans]
    viewers = list(viewers)
    everyone = [(watch, plan) for plan, own in zip(plans, writers) for watch in own]
    everyone += [(watch, plans[0]) for watch in viewers]
    try:
        for watch, plan in everyone:  # observers may predate the start hook
            getattr(watch, "start", lambda plan: None)(plan)
        for batch in steps:
            iteration = batch[0].iteration
            for i, (plan, step, run_dir) in enumerate(zip(plans, batch, run_dirs)):
                if plan.changes != recorded[i]["changes"]:  # an out-of-memory retry went leaner
                    recorded[i] = plan.record()
                    update_run(run_dir, plan=recorded[i])
                if len(plan.config.timeline) != timelines[i]:  # steered: the prompts changed
                    timelines[i] = len(plan.config.timeline)
                    update_run(run_dir, config=plan.config.to_dict())
                for watch in writers[i]:
                    _write(watch, step, run_dir)
            for watch in list(viewers):
                try:
                    watch(batch[0])
                except Exception as exc:
                    viewers.remove(watch)
                    warnings.warn(
                        f"{type(watch).__name__} failed at iteration {iteration} "
                        f"({type(exc).__name__}: {exc}); the run goes on without it.",
                        stacklevel=2,
                    )
            if should_stop is not None and should_stop() and not batch[0].is_last:
                status = "stopped"
                break
    except KeyboardInterrupt:
        status, interrupted = "stopped", True
    except BaseException as exc:
        status, error = "failed", "".join(traceback.format_exception_only(type(exc), exc)).strip()
        raise
    finally:
        steps.close()
        for watch, _ in everyone:
            try:
                watch.close(status)
            except Exception as exc:  # one observer failing must not lose the others' work
                print(
                    f"vqclip: {type(watch).__name__} failed while closing: {exc}", file=sys.stderr
                )
        for plan, run_dir in zip(plans, run_dirs):
            with contextlib.suppress(OSError):  # a full disk may refuse this; state.pt holds
                update_run(
                    run_dir,
                    status=status,
                    iteration=iteration,
                    error=error,
                    plan=plan.record(),
                    config=plan.config.to_dict(),
                )
    results = [RunResult(d, plan.config, status, iteration) for plan, d in zip(plans, run_dirs)]
    if interrupted:  # Ctrl-C still ends the caller, which can tell where the runs stopped
        raise RunInterrupted(results[0], results)
    return results


class RunInterrupted(KeyboardInterrupt):
    """Ctrl-C (or a notebook's interrupt) stopped a run; everything is saved, and ``result``
    says where it stopped. A KeyboardInterrupt, so whatever stops on Ctrl-C still does."""

    def __init__(self, result: RunResult, results: Sequence[RunResult] = ()) -> None:
        super().__init__(f"stopped at iteration {result.iteration}: {result.run_dir}")
        self.result = result
        self.results = list(results) or [result]  # every run of a batch


def _write(writer: Observer, step: Step, run_dir: Path) -> None:
    """One of the run's own files; a disk that is full or read-only stops the run clearly."""
    try:
        writer(step)
    except OSError as exc:
        raise RunError(
            f"Could not write the run's files in {run_dir} at iteration {step.iteration} "
            f"({exc.strerror or exc}). The run stopped there; every file written before is "
            f"intact. Free some space (or make the folder writable) and continue it with "
            f"`vqclip resume {run_dir}`."
        ) from exc


class StopFlag:
    """A thread-safe stop request, e.g. set by a Stop button while a run goes on."""

    def __init__(self) -> None:
        self._event = threading.Event()

    def set(self) -> None:
        self._event.set()

    def clear(self) -> None:
        self._event.clear()

    def __call__(self) -> bool:
        return self._event.is_set()


@contextlib.contextmanager
def cpu_threads(count: int | None) -> Iterator[None]:
    """Run the body with ``count`` torch CPU threads (as the original run had), then restore."""
    before = torch.get_num_threads()
    if count:
        torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def _now() -> str:
    return datetime.now().astimezone().isoformat(timespec="seconds")
