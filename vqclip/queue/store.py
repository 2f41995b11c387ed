"""The queue file: one SQLite database (WAL mode) of jobs, each a RunConfig to run.

Several workers (processes, machines sharing the folder) can drain one queue: a job is
claimed inside an IMMEDIATE transaction, so two workers never take the same one. A job
whose worker died (killed, crashed, the machine restarted) is handed out again first, and
its run resumes from its saved state rather than starting over.
"""

from __future__ import annotations

import json
import os
import socket
import sqlite3
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from vqclip.config import RunConfig

STATUSES = ("queued", "running", "stopped", "done", "failed")
_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    status TEXT NOT NULL DEFAULT 'queued',
    config TEXT NOT NULL,
    run_dir TEXT,
    worker TEXT,
    error TEXT,
    created TEXT NOT NULL,
    updated TEXT NOT NULL
)
"""


class QueueError(ValueError):
    """The queue file or a request on it is unusable; the message says what to do."""


@dataclass(frozen=True)
class Job:
    """One queued run and how far it got."""

    id: int
    status: str
    config: RunConfig
    run_dir: str | None
    worker: str | None
    error: str | None
    created: str
    updated: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "status": self.status,
            "prompt": self.config.prompt,
            "config": self.config.to_dict(),
            "run_dir": self.run_dir,
            "worker": self.worker,
            "error": self.error,
            "created": self.created,
            "updated": self.updated,
        }


def worker_name() -> str:
    """This process as a queue worker: host and process id."""
    return f"{socket.gethostname()}:{os.getpid()}"


def _alive(worker: str | None) -> bool:
    """Whether a worker named by worker_name() still runs (only known for this host)."""
    if not worker or ":" not in worker:
        return False
    host, pid = worker.rsplit(":", 1)
    if host != socket.gethostname():
        return True  # another machine's worker: trust it
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, ValueError):
        return True
    return True


class JobQueue:
    """The jobs in one SQLite file (made with its folder when missing)."""

    def __init__(self, path: str | os.PathLike, create: bool = True) -> None:
        """Open the queue at ``path``; with ``create`` False a missing file is a QueueError
        (reading a mistyped path must not start a new, empty queue no worker drains)."""
        self.path = Path(path)
        if self.path.is_dir():
            raise QueueError(
                f"The queue {str(self.path)!r} is a directory; give a file, e.g. "
                f"{self.path / 'queue.sqlite'}."
            )
        if not create and not self.path.is_file():
            raise QueueError(
                f"There is no queue at {str(self.path)!r}. Check --queue, or add a job "
                "first with `vqclip queue add` (which makes the file)."
            )
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as error:  # a file where the folder should be, or no permission
            raise QueueError(
                f"The queue's folder {str(self.path.parent)!r} cannot be made ({error.strerror}"
                f"{': it is a file, not a directory' if self.path.parent.is_file() else ''}). "
                "Point --queue (or --out) at a folder you can write to."
            ) from None
        try:
            with self._connect() as db:
                tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master")}
                if tables - {"jobs", "sqlite_sequence"}:  # another program's database
                    raise QueueError(
                        f"{self.path} is another program's SQLite database (it holds the "
                        f"tables {', '.join(sorted(tables))}), not a vqclip queue; it was left "
                        "as it was. Point --queue at another file."
                    )
                columns = {row[1] for row in db.execute("PRAGMA table_info(jobs)")}
                if columns and not {"id", "status", "config", "run_dir"} <= columns:
                    raise QueueError(
                        f"{self.path} holds a 'jobs' table that is not a vqclip queue's; it was "
                        "left as it was. Point --queue at another file."
                    )
                db.execute("PRAGMA journal_mode=WAL")
                db.execute(_SCHEMA)
        except sqlite3.DatabaseError as error:
            raise QueueError(
                f"{self.path} is not a vqclip queue ({error}). Point --queue at another file, "
                "or move this one away to start an empty queue."
            ) from None

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        try:
            yield db
        finally:
            db.close()

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """BEGIN IMMEDIATE: takes the write lock at once, so claims never interleave."""
        with self._connect() as db:
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")

    def add(self, config: RunConfig) -> int:
        """Queue a run of ``config`` (validated now, so a bad one never waits in line)."""
        config.validate()
        now = _now()
        with self._transaction() as db:
            cursor = db.execute(
                "INSERT INTO jobs (status, config, created, updated) VALUES ('queued', ?, ?, ?)",
                (json.dumps(config.to_dict(), ensure_ascii=False), now, now),
            )
            return int(cursor.lastrowid)

    def jobs(self) -> list[Job]:
        with self._connect() as db:
            rows = db.execute("SELECT * FROM jobs ORDER BY id").fetchall()
        return [_job(row) for row in rows]

    def get(self, job_id: int) -> Job:
        with self._connect() as db:
            row = db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        if row is None:
            raise QueueError(
                f"There is no job {job_id} in {self.path}; `vqclip queue list` shows them."
            )
        return _job(row)

    def remove(self, job_id: int) -> None:
        """Take a job off the queue (its run directory, if any, stays)."""
        with self._connect() as db:  # not get(): a job with damaged settings must go too
            row = db.execute("SELECT status, worker FROM jobs WHERE id = ?", (job_id,)).fetchone()
        if row is None:
            self.get(job_id)  # says there is no such job
        status, worker = row
        if status == "running" and _alive(worker):
            raise QueueError(
                f"Job {job_id} is being run by worker {worker}; stop that worker (Ctrl-C) "
                "first, then remove the job."
            )
        with self._transaction() as db:
            db.execute("DELETE FROM jobs WHERE id = ?", (job_id,))

    def claim(self, worker: str, accept: Callable[[Job], bool] | None = None) -> Job | None:
        """The next job for ``worker``, marked running: first one cut short (stopped, or
        running with a dead worker) so it resumes, then the oldest queued; None when empty.
        With ``accept``, only a job it accepts (e.g. one that can join a batch)."""
        with self._transaction() as db:
            rows = db.execute(
                "SELECT * FROM jobs WHERE status IN ('running', 'stopped', 'queued') "
                "ORDER BY CASE status WHEN 'queued' THEN 1 ELSE 0 END, id"
            ).fetchall()
            for row in rows:
                job = _job(row)
                if job.status == "running" and _alive(job.worker):
                    continue
                if accept is not None and not accept(job):
                    continue
                db.execute(
                    "UPDATE jobs SET status = 'running', worker = ?, updated = ? WHERE id = ?",
                    (worker, _now(), job.id),
                )
                return self._reread(db, job.id)
        return None

    def update(self, job_id: int, **changes: Any) -> None:
        """Record a job's progress: status, run_dir, error."""
        unknown = set(changes) - {"status", "run_dir", "error", "worker"}
        if unknown or changes.get("status", "queued") not in STATUSES:
            raise ValueError(f"bad job update {changes}")
        columns = ", ".join(f"{name} = ?" for name in changes)
        with self._transaction() as db:
            db.execute(
                f"UPDATE jobs SET {columns}, updated = ? WHERE id = ?",
                (*changes.values(), _now(), job_id),
            )

    @staticmethod
    def _reread(db: sqlite3.Connection, job_id: int) -> Job:
        return _job(db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone())

    # --- used by the page (web.py): cancel a waiting job, retry a failed one ---------------
    # (the queue branch adds its own retry(): on merging, keep that one and drop this one)

    def _move(self, job_id: int, allowed: tuple[str, ...], status: str, error: str | None,
              refusal: str) -> None:  # fmt: skip
        with self._transaction() as db:  # read and change in one transaction: no race
            row = db.execute("SELECT status FROM jobs WHERE id = ?", (job_id,)).fetchone()
            if row is None:
                raise QueueError(
                    f"There is no job {job_id} in {self.path}; `vqclip queue list` shows them."
                )
            if row[0] not in allowed:
                raise QueueError(refusal.format(id=job_id, status=row[0]))
            db.execute(
                "UPDATE jobs SET status = ?, error = ?, worker = NULL, updated = ? WHERE id = ?",
                (status, error, _now(), job_id),
            )

    def cancel(self, job_id: int) -> None:
        """Keep a waiting job from running: it is marked failed ("cancelled"); retry() puts
        it back. A running job is stopped at its worker (Ctrl-C), not here."""
        self._move(job_id, ("queued", "stopped"), "failed", "cancelled before it ran to the end",
                   "Job {id} is {status}, not waiting: only a queued or stopped job can be "
                   "cancelled (stop a running one at its worker with Ctrl-C).")  # fmt: skip

    def retry(self, job_id: int) -> None:
        """Queue a failed job again (its run, if it had begun, resumes)."""
        self._move(job_id, ("failed",), "queued", None,
                   "Job {id} is {status}, not failed: only a failed job can be retried.")  # fmt: skip


def _job(row: tuple) -> Job:
    job_id, status, config, run_dir, worker, error, created, updated = row
    try:
        settings = RunConfig.from_dict(json.loads(config))
    except (ValueError, TypeError, AttributeError) as problem:  # edited or damaged by hand
        raise QueueError(
            f"Job {job_id} in the queue holds settings that cannot be read ({problem}). "
            f"Remove it with `vqclip queue remove {job_id}` and add it again."
        ) from None
    return Job(job_id, status, settings, run_dir, worker, error, created, updated)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")
