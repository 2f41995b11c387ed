"""A worker drains a queue: claims a job, runs (or resumes) it, records how it ended.

Models load once and are reused while consecutive jobs name the same ones. Ctrl-C stops
the current run with everything saved and marks its job "stopped"; a crash or a kill
leaves it "running" with a dead worker. Either way the next ``work`` resumes it first.
"""

from __future__ import annotations

from collections.abc import Callable

from vqclip.config import RunConfig, slug
from vqclip.models import Models
from vqclip.observers import RunResult, generate, generate_batch, load_run_models, resume
from vqclip.queue.store import Job, JobQueue, QueueError, worker_name
from vqclip.state import STATE_FILE, find_run

_MODEL_FIELDS = ("vqgan", "vqgan_config", "vqgan_checkpoint", "clip_model", "device", "precision")


def job_config(job: Job) -> RunConfig:
    """The job's settings, with a run directory name that finds the run again after a crash."""
    return job.config.replace(name=job.config.name or f"job{job.id:04d}-{slug(job.config.prompt)}")


def run_job(job: Job, models: Models, **options) -> RunResult:
    """Run a claimed job, resuming its run where a stop or a crash left it."""
    config = job_config(job)
    found = find_run(config.out, config.name)
    if found is not None and (found / STATE_FILE).is_file():
        return resume(found, models, **options)
    return generate(config, models, **options)


def _fresh(job: Job) -> bool:
    """Whether the job has no run yet (a run cut short resumes alone, from its state)."""
    config = job_config(job)
    found = find_run(config.out, config.name)
    return found is None or not (found / STATE_FILE).is_file()


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
        if any(find_run(c.out, c.name) for c in configs):
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
                    say(f"job {other.id}: {other.config.prompt!r} (in one batch with job {job.id})")
            options = {"progress": progress, "should_stop": should_stop}
            if len(jobs) == 1:
                outcomes: list[RunResult | Exception] = [run_job(job, models, **options)]
            else:
                outcomes = _run_together(jobs, models, size, **options)
        except KeyboardInterrupt:
            for j in jobs:
                found = find_run(job_config(j).out, job_config(j).name)
                queue.update(j.id, status="stopped", run_dir=found and str(found))
            raise
        except Exception as error:  # a bad job must not stop the queue
            outcomes = [error] * len(jobs)
        for j, outcome in zip(jobs, outcomes):
            if isinstance(outcome, Exception):
                error = f"{type(outcome).__name__}: {outcome}"
                queue.update(j.id, status="failed", error=error)
                say(f"job {j.id}: failed: {outcome}")
            else:
                queue.update(j.id, status=outcome.status, run_dir=str(outcome.run_dir))
                say(f"job {j.id}: {outcome.status} at iteration {outcome.iteration}: "
                    f"{outcome.run_dir}")  # fmt: skip
        for j in jobs[len(outcomes) :]:  # a Stop came before their turn: still to run
            queue.update(j.id, status="queued", worker=None)
        jobs = jobs[: len(outcomes)]
        ran.extend(queue.get(j.id) for j in jobs)
        if once or any(j.status == "stopped" for j in ran[-len(jobs) :]):
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
    while (job := queue.claim(worker)) is not None:
        gpus = 1 if job_config(job).device in ("cuda", "auto") and _cluster_has_gpus(ray) else 0
        task = ray.remote(num_cpus=1, num_gpus=gpus)(_run_job_remotely)
        pending[task.remote(job)] = job
        say(f"job {job.id}: sent to Ray: {job.config.prompt!r}")
    try:
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            job = pending.pop(done[0])
            status, run_dir, error = ray.get(done[0])
            queue.update(job.id, status=status, run_dir=run_dir, error=error)
            ran.append(queue.get(job.id))
            say(f"job {job.id}: {status}" + (f": {error}" if error else f": {run_dir}"))
    except KeyboardInterrupt:
        for ref, job in pending.items():
            ray.cancel(ref, force=True)
            queue.update(job.id, status="stopped")  # resumes from its last snapshot
        raise
    return ran


def _cluster_has_gpus(ray) -> bool:
    return ray.cluster_resources().get("GPU", 0) > 0
