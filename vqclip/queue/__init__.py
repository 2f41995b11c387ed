"""An unattended queue of runs: a SQLite file of jobs (store) and workers that drain it."""

from vqclip.queue.store import Job, JobQueue, QueueError

__all__ = ["Job", "JobQueue", "QueueError"]
