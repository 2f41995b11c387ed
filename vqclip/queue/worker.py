"""A worker drains a queue: claims a job, runs (or resumes) it, records how it ended.

Models load once and are reused while consecutive jobs name the same ones. Ctrl-C stops
the current run with everything saved and marks its job "stopped"; a crash or a kill
leaves it "running" until its lease runs out (at once when its process on this machine is
gone). Either way the next ``work`` resumes it first. While it runs, a thread renews the
lease and records how far the run got (``queue list`` shows it).
"""

from __future__ import annotations

import json
import shutil
import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path

from vqclip.config import RunConfig
from vqclip.models import Models
from vqclip.observers import RunResult, generate, generate_batch, load_run_models, resume
from vqclip.queue.store import BEAT_SECONDS, Job, JobQueue, QueueError, worker_name
from vqclip.state import LOG_FILE, RUN_FILE, SNAPSHOT_DIR, read_run

_MODEL_FIELDS = ("vqgan", "vqgan_config", "vqgan_checkpoint", "clip_model", "device", "precision")


def job_config(job: Job) -> RunConfig:
    """The job's run settings: its run directory's name carries the job's uid."""
    return job.run_config()


def run_job(job: Job, models: Models, **options) -> RunResult:
    """Run a claimed job, resuming its own run where a stop or a crash left it.

    The run is the job's by identity (the uid in its recorded name), never a folder another
    job of the same settings left; a run killed before its first snapshot continues in place
    (no twin folder), and one that had finished is reported as done."""
    config, run_dir = job_config(job), job.run_path
    if (run_dir / RUN_FILE).is_file():
        record = read_run(run_dir)
        if job.uid and record["config"].get("name") != config.name:
            raise QueueError(
                f"{run_dir} holds another run ({record['config'].get('name')!r}), not job "
                f"{job.id}'s; move it away, then `vqclip queue retry {job.id}`."
            )
        if record.get("status") == "done" and record.get("iteration", 0) >= config.iterations:
            return RunResult(run_dir, config, "done", record["iteration"])
        return resume(run_dir, models, **options)
    _clear_husk(run_dir)
    return generate(config, models, **options)


def _clear_husk(run_dir: Path) -> None:
    """Remove what a kill between making a run directory and writing its run.json left
    (the folder and its empty snapshots/), so the run is made again under the same name."""
    if not run_dir.is_dir():
        return
    inside = list(run_dir.iterdir())
    if all(p.name == SNAPSHOT_DIR and p.is_dir() and not any(p.iterdir()) for p in inside):
        shutil.rmtree(run_dir)
        return
    raise QueueError(
        f"{run_dir} exists but holds no run.json: it is not a run this queue made. Move it "
        "away, then retry the job (`vqclip queue retry ID`)."
    )


def _fresh(job: Job) -> bool:
    """Whether the job has no run yet (a run cut short resumes alone, from its state)."""
    return not (job.run_path / RUN_FILE).is_file()


def _progress(run_dir: Path) -> int | None:
    """The last iteration a run logged (the tail of its log.jsonl), None before any."""
    try:
        with open(run_dir / LOG_FILE, "rb") as log:
            log.seek(0, 2)
            log.seek(max(0, log.tell() - 4096))
            lines = log.read().splitlines()
        for line in reversed(lines):
            try:
                return int(json.loads(line)["iteration"])
            except (ValueError, KeyError, TypeError):
                continue
    except OSError:
        return None
    return None


class Lease:
    """Keeps a worker's claim on its jobs alive from a thread: beats every few seconds with
    each job's progress; ``lost`` is set when another worker has taken one over (ours ran
    out, e.g. the machine slept), so the run stops with its state saved."""

    def __init__(self, queue: JobQueue, worker: str, jobs: list[Job]) -> None:
        self.queue, self.worker = queue, worker
        self.jobs = {job.id: job for job in jobs}
        self.lost = threading.Event()
        self._lock, self._done = threading.Lock(), threading.Event()
        self._every = min(BEAT_SECONDS, queue.lease / 4)
        self._thread = threading.Thread(target=self._beat, name="vqclip-lease", daemon=True)

    def hold(self, job: Job) -> None:
        with self._lock:
            self.jobs[job.id] = job

    def release(self, job_id: int) -> None:
        with self._lock:
            self.jobs.pop(job_id, None)

    def _beat(self) -> None:
        while not self._done.wait(self._every):
            with self._lock:
                progress = {i: _progress(job.run_path) for i, job in self.jobs.items()}
            try:
                held = self.queue.beat(self.worker, progress)
            except sqlite3.Error:
                continue  # the file is busy: the next beat renews it, well within the lease
            if held != set(progress):
                self.lost.set()

    def __enter__(self) -> Lease:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._thread.join()


def _batch_key(config: RunConfig) -> tuple:
    """What jobs optimised together as one batch must share (see engine.group_plans)."""
    cutn = 1 if config.full_cutout else config.cutn
    shape = (tuple(config.size), cutn, config.iterations, config.clip_batch, config.checkpointing)
    return tuple(getattr(config, name) for name in _MODEL_FIELDS) + shape


def auto_batch(models: Models) -> int:
    """How many candidates of one shape to optimise together when not told: up to 8 on a
    GPU (one 128x128 candidate leaves it mostly idle), 1 on the CPU, where two at once
    measured only 1.0-1.07x faster than one after another (benchmarks/RESULTS.md) and each
    candidate would finish later."""
    return 8 if models.device.type == "cuda" else 1


def _run_together(
    jobs: list[Job], models: Models, size: int, **options
) -> list[RunResult | Exception]:
    """Run new jobs of one shape as one batch. When one of them is refused before any run
    begins (a picture it names is gone, say), run each alone instead, so only that one fails;
    a failure once the runs have begun fails them all (each run's record says so)."""
    configs = [job_config(j) for j in jobs]
    try:
        return list(generate_batch(configs, models, batch=size, **options))
    except Exception:
        if any(j.run_path.exists() for j in jobs):
            raise
    outcomes: list[RunResult | Exception] = []
    for job in jobs:
        try:
            outcomes.append(run_job(job, models, **options))
        except Exception as error:
            outcomes.append(error)
        if getattr(outcomes[-1], "status", None) == "stopped":
            break
    return outcomes


def work(
    queue: JobQueue,
    *,
    models: Models | None = None,
    once: bool = False,
    batch: int | None = None,
    progress: bool = True,
    should_stop: Callable[[], bool] | None = None,
    say: Callable[[str], None] = print,
) -> list[Job]:
    """Run jobs until the queue is empty (or one job with ``once``); return those run.

    ``models``, when given, run every job (the caller loaded what the jobs name); otherwise
    models load for the first job and again only when a job names others. ``batch``: how
    many new jobs of one shape (size, cutn, iterations, models) to optimise together as one
    batch (None: ``auto_batch``); a job cut short resumes alone.
    """
    worker, ran = worker_name(), []
    loaded: tuple | None = None
    while (job := queue.claim(worker)) is not None:
        config = job_config(job)
        key = tuple(getattr(config, name) for name in _MODEL_FIELDS)
        say(f"job {job.id}: {config.prompt!r}")
        jobs = [job]
        with Lease(queue, worker, jobs) as lease:

            def stop(lease: Lease = lease) -> bool:
                return lease.lost.is_set() or bool(should_stop and should_stop())

            try:
                if models is None or (loaded is not None and key != loaded):
                    models, loaded = None, None  # free the last pair before loading another
                    models, loaded = load_run_models(config, progress=progress), key
                size = 1 if once else (batch or auto_batch(models))
                if size > 1 and _fresh(job):
                    shape = _batch_key(config)

                    def joins(other: Job, shape: tuple = shape) -> bool:
                        return _batch_key(job_config(other)) == shape and _fresh(other)

                    while len(jobs) < size and (other := queue.claim(worker, joins)) is not None:
                        jobs.append(other)
                        lease.hold(other)
                        say(f"job {other.id}: {other.config.prompt!r} (in one batch with job "
                            f"{job.id})")  # fmt: skip
                options = {"progress": progress, "should_stop": stop}
                if len(jobs) == 1:
                    outcomes: list[RunResult | Exception] = [run_job(job, models, **options)]
                else:
                    outcomes = _run_together(jobs, models, size, **options)
            except KeyboardInterrupt:
                for j in jobs:
                    queue.update(
                        j.id, owner=worker, status="stopped", iteration=_progress(j.run_path)
                    )
                raise
            except Exception as error:  # a bad job must not stop the queue
                outcomes = [error] * len(jobs)
        for j, outcome in zip(jobs, outcomes):
            if isinstance(outcome, Exception):
                error = f"{type(outcome).__name__}: {outcome}"
                kept = queue.update(j.id, owner=worker, status="failed", error=error)
                say(f"job {j.id}: failed: {outcome}")
            else:
                kept = queue.update(
                    j.id,
                    owner=worker,
                    status=outcome.status,
                    run_dir=str(outcome.run_dir),
                    iteration=outcome.iteration,
                )
                say(f"job {j.id}: {outcome.status} at iteration {outcome.iteration}: "
                    f"{outcome.run_dir}")  # fmt: skip
            if not kept:
                say(f"job {j.id}: its lease ran out and another worker has taken it over")
        for j in jobs[len(outcomes) :]:  # a Stop came before their turn: still to run
            queue.update(j.id, owner=worker, status="queued", worker=None)
        jobs = jobs[: len(outcomes)]
        ran.extend(queue.get(j.id) for j in jobs)
        stopped = any(getattr(o, "status", None) == "stopped" for o in outcomes)
        if once or (stopped and not lease.lost.is_set()):
            break  # Stop ends the worker, not just this job
    return ran


# --- Ray: the same jobs as tasks on a cluster (pip install 'vqclip[ray]') -------------------

_RAY_MODELS: dict[tuple, Models] = {}  # per Ray worker process: models load once per worker


def _run_job_remotely(job: Job) -> tuple[str, str | None, str | None]:
    """A Ray task: run one claimed job in this worker process; (status, run_dir, error)."""
    config = job_config(job)
    key = tuple(getattr(config, name) for name in _MODEL_FIELDS)
    try:
        if key not in _RAY_MODELS:
            _RAY_MODELS.clear()  # one pair at a time: a second may not fit beside the first
            _RAY_MODELS[key] = load_run_models(config, progress=False)
        result = run_job(job, _RAY_MODELS[key], progress=False)
    except Exception as error:
        return "failed", None, f"{type(error).__name__}: {error}"
    return result.status, str(result.run_dir), None


def work_on_ray(
    queue: JobQueue,
    address: str | None = None,
    *,
    say: Callable[[str], None] = print,
) -> list[Job]:
    """Drain the queue as Ray tasks, one per job, on the cluster at ``address`` (None: the
    one ray.init finds or starts). Each task asks for a GPU when the job runs on CUDA.
    Run directories are written by the Ray workers: on several machines, the output folder
    must be shared storage they all see at the same path."""
    try:
        import ray
    except ImportError:
        raise QueueError(
            "Ray is not installed: install it with `pip install 'vqclip[ray]'` (or "
            "`pip install ray`), or drain the queue with `vqclip queue work`."
        ) from None
    if not ray.is_initialized():
        ray.init(address=address, log_to_driver=False)
    worker = f"ray@{worker_name()}"  # the driver holds the claims: if it dies they free up
    pending, ran = {}, []
    with Lease(queue, worker, []) as lease:  # the driver beats for every job sent
        while (job := queue.claim(worker)) is not None:
            gpus = 1 if job_config(job).device in ("cuda", "auto") and _cluster_has_gpus(ray) else 0
            task = ray.remote(num_cpus=1, num_gpus=gpus)(_run_job_remotely)
            pending[task.remote(job)] = job
            lease.hold(job)
            say(f"job {job.id}: sent to Ray: {job.config.prompt!r}")
        try:
            while pending:
                done, _ = ray.wait(list(pending), num_returns=1)
                job = pending.pop(done[0])
                status, run_dir, error = ray.get(done[0])
                lease.release(job.id)
                queue.update(job.id, owner=worker, status=status, run_dir=run_dir, error=error)
                ran.append(queue.get(job.id))
                say(f"job {job.id}: {status}" + (f": {error}" if error else f": {run_dir}"))
        except KeyboardInterrupt:
            for ref, job in pending.items():
                ray.cancel(ref, force=True)
                queue.update(job.id, owner=worker, status="stopped")  # resumes from its state
            raise
    return ran


def check_ray() -> None:
    """Refuse at once, before anything is written, when Ray is not installed."""
    try:
        import ray  # noqa: F401
    except ImportError:
        raise QueueError(
            "Ray is not installed: install it with `pip install 'vqclip[ray]'` (or "
            "`pip install ray`), or leave out --ray to run here."
        ) from None


def _cluster_has_gpus(ray) -> bool:
    return ray.cluster_resources().get("GPU", 0) > 0
