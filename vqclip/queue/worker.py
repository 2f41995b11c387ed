"""A worker drains a queue: claims a job, runs (or resumes) it, records how it ended.

Models load once and are reused while consecutive jobs name the same ones. Ctrl-C stops
the current run with everything saved and marks its job "stopped"; a crash or a kill
leaves it "running" with a dead worker. Either way the next ``work`` resumes it first.
"""

from __future__ import annotations

from collections.abc import Callable

from vqclip.config import RunConfig, slug
from vqclip.models import Models
from vqclip.observers import RunResult, generate, load_run_models, resume
from vqclip.queue.store import Job, JobQueue, worker_name
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


def work(
    queue: JobQueue,
    *,
    models: Models | None = None,
    once: bool = False,
    progress: bool = True,
    should_stop: Callable[[], bool] | None = None,
    say: Callable[[str], None] = print,
) -> list[Job]:
    """Run jobs until the queue is empty (or one job with ``once``); return those run.

    ``models``, when given, run every job (the caller loaded what the jobs name); otherwise
    models load for the first job and again only when a job names others.
    """
    worker, ran = worker_name(), []
    loaded: tuple | None = None
    while (job := queue.claim(worker)) is not None:
        config = job_config(job)
        key = tuple(getattr(config, name) for name in _MODEL_FIELDS)
        say(f"job {job.id}: {config.prompt!r}")
        try:
            if models is None or (loaded is not None and key != loaded):
                models, loaded = None, None  # free the last pair before loading another
                models, loaded = load_run_models(config, progress=progress), key
            result = run_job(job, models, progress=progress, should_stop=should_stop)
        except KeyboardInterrupt:
            found = find_run(config.out, config.name)
            queue.update(job.id, status="stopped", run_dir=found and str(found))
            raise
        except Exception as error:  # a bad job must not stop the queue
            queue.update(job.id, status="failed", error=f"{type(error).__name__}: {error}")
            say(f"job {job.id}: failed: {error}")
        else:
            queue.update(job.id, status=result.status, run_dir=str(result.run_dir))
            say(f"job {job.id}: {result.status} at iteration {result.iteration}: {result.run_dir}")
        ran.append(queue.get(job.id))
        if once or ran[-1].status == "stopped":  # Stop ends the worker, not just this job
            break
    return ran
