"""The queue file: one SQLite database (WAL mode) of jobs, each a RunConfig to run.

Several workers (processes on this machine) can drain one queue: a job is claimed inside
an IMMEDIATE transaction, so two workers never take the same one. A claimed job carries a
lease: its worker beats every ``BEAT_SECONDS``; a job whose worker stopped beating for
``LEASE_SECONDS`` (killed, crashed, its machine gone), or whose process on this machine is
gone, is handed out again first, and its run resumes from its saved state.

Locations hold from anywhere: a job's output folder and run directory are stored relative
to the queue file's folder when they lie inside it (absolute otherwise) and read back as
absolute paths, so a queue works the same from any working directory and moves with its
folder. A job owns its run by its own identity: a random ``uid`` made when it is queued
names its run directory (and so the run.json's recorded name), never a folder that a job
of the same settings, or of an older queue at the same path, left behind.

SQLite's WAL needs every process that opens the file on one machine (its shared memory
index does not work over a network file system, https://sqlite.org/wal.html): a queue on
NFS, SMB or a similar mount gets a warning; spread work over machines with Ray.
"""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import time
import uuid
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from vqclip.config import ConfigError, RunConfig, parse_prompt, slug
from vqclip.ensemble import is_ensemble, parse_clip_spec
from vqclip.state import find_run

STATUSES = ("queued", "running", "stopped", "done", "failed")
# The most iterations a queued job may ask for (CLI, sweep, page): tighter than a single
# run's config.MAX_ITERATIONS, since nobody watches a queued job to stop it.
MAX_QUEUED_ITERATIONS = 100_000
LEASE_SECONDS = 120.0  # a running job whose worker has not beaten for this long is free again
BEAT_SECONDS = 15.0  # how often a worker renews its lease
_FORMAT = 1  # PRAGMA user_version: 1 = paths relative to the queue's folder, uids, leases
_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    status TEXT NOT NULL DEFAULT 'queued',
    config TEXT NOT NULL,
    run_dir TEXT,
    worker TEXT,
    error TEXT,
    created TEXT NOT NULL,
    updated TEXT NOT NULL,
    uid TEXT,
    heartbeat REAL,
    iteration INTEGER
)
"""
_NEW_COLUMNS = {"uid": "TEXT", "heartbeat": "REAL", "iteration": "INTEGER"}
# The columns of the first format: a 'jobs' table without every one is another program's.
_FIRST_COLUMNS = {"id", "status", "config", "run_dir", "worker", "error", "created", "updated"}
# File systems on which SQLite's WAL is unsafe between machines (/proc/mounts types).
_NETWORK_FS = {
    "nfs", "nfs4", "cifs", "smb3", "smbfs", "9p", "afs", "ceph", "glusterfs", "lustre",
    "gpfs", "beegfs", "fuse.sshfs", "fuse.rclone", "fuse.gcsfuse", "fuse.s3fs",
    "fuse.glusterfs", "fuse.juicefs", "fuse.drive", "fuse.drivefs",
}  # fmt: skip


class QueueError(ValueError):
    """The queue file or a request on it is unusable; the message says what to do."""


class QueueWarning(UserWarning):
    """The queue works, but something about where it lies can lose or mix up work."""


def check_iterations(iterations: int) -> None:
    """Refuse a job longer than MAX_QUEUED_ITERATIONS (a typo such as 999999999999 would hold a
    worker for years), with the fix."""
    if isinstance(iterations, int) and iterations > MAX_QUEUED_ITERATIONS:
        raise ConfigError(
            f"iterations {iterations:,} is more than a queued job may run (at most "
            f"{MAX_QUEUED_ITERATIONS:,}). Give --iterations {MAX_QUEUED_ITERATIONS} or fewer; a run can be "
            "continued further later with `vqclip resume RUN_DIR --iterations N`.",
            field="iterations",
        )


_FILE_SETTINGS = ("init_image", "vqgan_config", "vqgan_checkpoint", "clip_model")


def anchored(config: RunConfig) -> RunConfig:
    """``config`` with the files it names (init image, image prompts, model files) as
    absolute paths when they exist from here, so a worker started in any directory finds
    them. Names (a registry model, 'ViT-B/32') stay as they are."""

    def absolute(value: Any) -> Any:
        if isinstance(value, str) and value and os.path.exists(value):
            return os.path.abspath(value)
        return value

    def image(item: str) -> str:  # 'path:weight' keeps its weight
        text = parse_prompt(item).text
        return item.replace(text, absolute(text), 1)

    changes: dict[str, Any] = {name: absolute(getattr(config, name)) for name in _FILE_SETTINGS}
    if is_ensemble(config.clip_model):  # each CLIP's file: 'a.pt:1,b.pt:0.5'
        members = parse_clip_spec(config.clip_model)
        changes["clip_model"] = ",".join(f"{absolute(m.name)}:{m.weight!r}" for m in members)
    changes["image_prompts"] = [image(item) for item in config.image_prompts or []]
    return config.replace(**changes)


@dataclass(frozen=True)
class Job:
    """One queued run and how far it got. Paths (``config.out``, ``run_dir``) are absolute."""

    id: int
    status: str
    config: RunConfig
    run_dir: str | None
    worker: str | None
    error: str | None
    created: str
    updated: str
    uid: str = ""  # the job's own identity: names its run directory
    heartbeat: float | None = None  # time.time() of its worker's last beat, while running
    iteration: int | None = None  # how far its run got, as its worker last saw

    def run_config(self) -> RunConfig:
        """The settings its run is made with: the run directory's name carries the job's
        uid, so no other job (nor an older queue's job of the same number) shares it."""
        name = self.config.name or f"job{self.id:04d}-{slug(self.config.prompt)}"
        return self.config.replace(name=f"{name}-{self.uid[:8]}" if self.uid else name)

    @property
    def run_path(self) -> Path:
        """Its run directory: the one recorded, else where its run is (or will be) made."""
        if self.run_dir:
            return Path(self.run_dir)
        config = self.run_config()
        return Path(config.out) / str(config.name)

    def stale(self, lease: float = LEASE_SECONDS, now: float | None = None) -> bool:
        """Whether it is marked running but its worker is gone: no beat for ``lease``
        seconds, or its process on this machine no longer exists."""
        return self.status == "running" and _gone(self.worker, self.heartbeat, lease, now)

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "uid": self.uid,
            "status": self.status,
            "stale": self.stale(),
            "prompt": self.config.prompt,
            "iteration": self.iteration,
            "iterations": self.config.iterations,
            "config": self.config.to_dict(),
            "run_dir": self.run_dir,
            "worker": self.worker,
            "heartbeat": self.heartbeat,
            "error": self.error,
            "created": self.created,
            "updated": self.updated,
        }


def worker_name() -> str:
    """This process as a queue worker: host and process id."""
    return f"{socket.gethostname()}:{os.getpid()}"


def _gone(worker: str | None, heartbeat: float | None, lease: float, now: float | None) -> bool:
    """A running job's worker is gone: no beat for ``lease`` seconds, or its process on this
    machine no longer exists."""
    now = time.time() if now is None else now
    return now - (heartbeat or 0.0) > lease or not _alive(worker)


def _alive(worker: str | None) -> bool:
    """False when a worker named by worker_name() is known gone: a process of this host
    that no longer exists. Another machine's worker is judged by its lease alone."""
    if not worker or ":" not in worker:
        return True
    host, pid = worker.rsplit(":", 1)
    if host != socket.gethostname():
        return True
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, ValueError, OverflowError):
        return True
    return True


def network_filesystem(path: str | os.PathLike, mounts: str = "/proc/mounts") -> str | None:
    """The type of the network file system ``path`` lies on (e.g. 'nfs4'), or None when it
    is local or unknown (no /proc/mounts: macOS, Windows)."""
    try:
        lines = Path(mounts).read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return None
    target, best, kind = os.path.abspath(path), "", None
    for line in lines:
        fields = line.split()
        if len(fields) < 3:
            continue
        point = fields[1].replace("\\040", " ")
        inside = target == point or target.startswith(point.rstrip("/") + "/")
        if inside and len(point) >= len(best):
            best, kind = point, fields[2]
    if kind is None:
        return None
    return kind if kind in _NETWORK_FS or kind.split(".")[0] in _NETWORK_FS else None


class JobQueue:
    """The jobs in one SQLite file (made with its folder when missing)."""

    def __init__(
        self, path: str | os.PathLike, create: bool = True, lease: float = LEASE_SECONDS
    ) -> None:
        """Open the queue at ``path``; with ``create`` False a missing file is a QueueError
        (reading a mistyped path must not start a new, empty queue no worker drains).
        ``lease``: seconds without a beat after which a running job is handed out again."""
        self.path = Path(path)
        self.lease = lease
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
        self.home = Path(os.path.abspath(self.path.parent))  # relative job paths start here
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
                if columns and not columns >= _FIRST_COLUMNS:
                    raise QueueError(
                        f"{self.path} holds a 'jobs' table that is not a vqclip queue's; it was "
                        "left as it was. Point --queue at another file."
                    )
                db.execute("PRAGMA journal_mode=WAL")
                db.execute(_SCHEMA)
            self._upgrade()
        except sqlite3.DatabaseError as error:
            raise QueueError(
                f"{self.path} is not a vqclip queue ({error}). Point --queue at another file, "
                "or move this one away to start an empty queue."
            ) from None
        kind = network_filesystem(self.path)
        if kind is not None:
            warnings.warn(
                f"The queue {self.path} lies on a network file system ({kind}). SQLite's "
                "WAL, which the queue uses, works only while every worker runs on one "
                "machine (https://sqlite.org/wal.html); workers on other machines sharing "
                "this file can corrupt it. Keep it on a local disk, and spread work over "
                "machines with Ray (`vqclip queue work --ray ADDRESS`).",
                QueueWarning,
                stacklevel=2,
            )

    def _upgrade(self) -> None:
        """Bring a queue made by an older vqclip to this format: a uid for every job, lease
        columns, paths relative to the queue's folder (an older queue stored them as given,
        relative to the directory of whoever ran it: this one is the best guess left)."""
        with self._transaction() as db:
            if db.execute("PRAGMA user_version").fetchone()[0] >= _FORMAT:
                return
            columns = {row[1] for row in db.execute("PRAGMA table_info(jobs)")}
            for name, kind in _NEW_COLUMNS.items():
                if name not in columns:
                    db.execute(f"ALTER TABLE jobs ADD COLUMN {name} {kind}")
            rows = db.execute("SELECT id, config, run_dir, status, uid FROM jobs").fetchall()
            for job_id, text, run_dir, status, uid in rows:
                try:
                    config = json.loads(text)
                    config["out"] = self._store(config.get("out") or "runs")
                except (ValueError, TypeError, AttributeError):
                    continue  # damaged: reading it says so, and remove still works
                if run_dir is None and status in ("running", "stopped"):
                    run_dir = _legacy_run(self.home / config["out"], job_id, config)
                db.execute(
                    "UPDATE jobs SET config = ?, run_dir = ?, uid = ? WHERE id = ?",
                    (
                        json.dumps(config, ensure_ascii=False),
                        run_dir and self._store(run_dir),
                        uid or (None if run_dir else uuid.uuid4().hex),
                        job_id,
                    ),
                )
            db.execute(f"PRAGMA user_version = {_FORMAT}")

    def _store(self, path: str | os.PathLike) -> str:
        """A path as the queue keeps it: relative to its folder when inside it, so the queue
        works from any directory and moves with its folder; absolute otherwise."""
        absolute = os.path.abspath(path)
        if absolute == str(self.home) or absolute.startswith(str(self.home) + os.sep):
            return os.path.relpath(absolute, self.home)
        return absolute

    def _resolve(self, stored: str) -> str:
        return str(self.home / stored)  # an absolute stored path stays as it is

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
        """Queue a run of ``config`` (validated now, so a bad one never waits in line), with
        a new uid: the same settings queued twice are two jobs with two runs."""
        config.validate()
        check_iterations(config.iterations)
        settings = anchored(config).to_dict()
        settings["out"] = self._store(config.out)
        now = _now()
        with self._transaction() as db:
            cursor = db.execute(
                "INSERT INTO jobs (status, config, created, updated, uid) "
                "VALUES ('queued', ?, ?, ?, ?)",
                (json.dumps(settings, ensure_ascii=False), now, now, uuid.uuid4().hex),
            )
            return int(cursor.lastrowid)

    def jobs(self) -> list[Job]:
        with self._connect() as db:
            rows = db.execute(f"SELECT {_COLUMNS} FROM jobs ORDER BY id").fetchall()
        return [self._job(row) for row in rows]

    def get(self, job_id: int) -> Job:
        with self._connect() as db:
            row = db.execute(f"SELECT {_COLUMNS} FROM jobs WHERE id = ?", (job_id,)).fetchone()
        if row is None:
            raise QueueError(
                f"There is no job {job_id} in {self.path}; `vqclip queue list` shows them."
            )
        return self._job(row)

    def run_dir(self, job: Job) -> Path:
        """The job's run directory (absolute, whatever the working directory): where its
        pictures are once it has started."""
        return job.run_path

    def remove(self, job_id: int) -> None:
        """Take a job off the queue (its run directory, if any, stays)."""
        with self._connect() as db:  # not get(): a job with damaged settings must go too
            row = db.execute(
                "SELECT status, worker, heartbeat FROM jobs WHERE id = ?", (job_id,)
            ).fetchone()
        if row is None:
            self.get(job_id)  # says there is no such job
        status, worker, heartbeat = row
        if status == "running" and not self._stale(worker, heartbeat):
            raise QueueError(
                f"Job {job_id} is being run by worker {worker}; stop that worker (Ctrl-C) "
                f"first, then remove the job (a worker that died frees it within "
                f"{self.lease:.0f} s)."
            )
        with self._transaction() as db:
            db.execute("DELETE FROM jobs WHERE id = ?", (job_id,))

    def retry(self, job_id: int) -> None:
        """Queue a failed or stopped job again; its run continues from its saved state (or
        starts, when it failed before it began)."""
        job = self.get(job_id)
        if job.status in ("failed", "stopped") or job.stale(self.lease):
            with self._transaction() as db:
                db.execute(
                    "UPDATE jobs SET status = 'queued', worker = NULL, error = NULL, "
                    "heartbeat = NULL, updated = ? WHERE id = ? AND status = ?",
                    (_now(), job_id, job.status),
                )
            return
        hint = {
            "queued": "it is queued already: `vqclip queue work` runs it",
            "running": f"worker {job.worker} is running it",
            "done": "it is done; add it again with `vqclip queue add` for another run",
        }[job.status]
        raise QueueError(f"Job {job_id} cannot be retried: {hint}.")

    def retry_failed(self) -> list[int]:
        """Queue every failed job again; return their ids."""
        failed = [job.id for job in self.jobs() if job.status == "failed"]
        for job_id in failed:
            self.retry(job_id)
        return failed

    def _stale(self, worker: str | None, heartbeat: float | None) -> bool:
        return _gone(worker, heartbeat, self.lease, None)

    def claim(self, worker: str, accept: Callable[[Job], bool] | None = None) -> Job | None:
        """The next job for ``worker``, marked running with a fresh lease: first one cut
        short (stopped, or running with a worker gone) so it resumes, then the oldest
        queued; None when empty. With ``accept``, only a job it accepts (e.g. one that can
        join a batch). The job's run directory is recorded as it is claimed."""
        with self._transaction() as db:
            rows = db.execute(
                f"SELECT {_COLUMNS} FROM jobs WHERE status IN ('running', 'stopped', 'queued') "
                "ORDER BY CASE status WHEN 'queued' THEN 1 ELSE 0 END, id"
            ).fetchall()
            for row in rows:  # read one at a time: a long queue is not parsed per claim
                status, worker_then, heartbeat = row[1], row[4], row[9]
                if status == "running" and not self._stale(worker_then, heartbeat):
                    continue
                job = self._job(row)
                if accept is not None and not accept(job):
                    continue
                db.execute(
                    "UPDATE jobs SET status = 'running', worker = ?, heartbeat = ?, "
                    "run_dir = ?, updated = ? WHERE id = ?",
                    (worker, time.time(), self._store(job.run_path), _now(), job.id),
                )
                return self._job(
                    db.execute(f"SELECT {_COLUMNS} FROM jobs WHERE id = ?", (job.id,)).fetchone()
                )
        return None

    def beat(self, worker: str, progress: dict[int, int | None]) -> set[int]:
        """Renew ``worker``'s lease on the jobs of ``progress`` (job id -> iteration reached,
        None when unknown); return those it still holds (another worker may have taken one
        whose lease ran out)."""
        held = set()
        with self._transaction() as db:
            for job_id, iteration in progress.items():
                cursor = db.execute(
                    "UPDATE jobs SET heartbeat = ?, iteration = COALESCE(?, iteration) "
                    "WHERE id = ? AND worker = ? AND status = 'running'",
                    (time.time(), iteration, job_id, worker),
                )
                if cursor.rowcount:
                    held.add(job_id)
        return held

    def update(self, job_id: int, *, owner: str | None = None, **changes: Any) -> bool:
        """Record a job's progress: status, run_dir, error, worker, iteration. With
        ``owner``, only while that worker still holds the job (a worker whose lease ran out
        must not overwrite the one that took the job over); return whether it was recorded."""
        unknown = set(changes) - {"status", "run_dir", "error", "worker", "iteration"}
        if unknown or changes.get("status", "queued") not in STATUSES:
            raise ValueError(f"bad job update {changes}")
        if changes.get("run_dir") is not None:
            changes["run_dir"] = self._store(changes["run_dir"])
        if changes.get("status") not in (None, "running"):
            changes["heartbeat"] = None  # no lease once it has ended
        columns = "".join(f"{name} = ?, " for name in changes)
        where, values = "id = ?", [job_id]
        if owner is not None:
            where, values = "id = ? AND worker = ? AND status = 'running'", [job_id, owner]
        with self._transaction() as db:
            cursor = db.execute(
                f"UPDATE jobs SET {columns}updated = ? WHERE {where}",
                (*changes.values(), _now(), *values),
            )
            return bool(cursor.rowcount)

    def _job(self, row: tuple) -> Job:
        job_id, status, config, run_dir, worker, error, created, updated, *rest = row
        try:
            settings = json.loads(config)
            settings["out"] = self._resolve(settings.get("out") or "runs")
            settings = RunConfig.from_dict(settings)
        except (ValueError, TypeError, AttributeError) as problem:  # edited or damaged by hand
            raise QueueError(
                f"Job {job_id} in the queue holds settings that cannot be read ({problem}). "
                f"Remove it with `vqclip queue remove {job_id}` and add it again."
            ) from None
        run_dir = run_dir and self._resolve(run_dir)
        uid, heartbeat, iteration = rest
        return Job(
            job_id, status, settings, run_dir, worker, error, created, updated,
            uid or "", heartbeat, iteration,
        )  # fmt: skip

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


_COLUMNS = "id, status, config, run_dir, worker, error, created, updated, uid, heartbeat, iteration"


def _legacy_run(out: Path, job_id: int, config: dict[str, Any]) -> str | None:
    """Where an older vqclip put a cut job's run (its name, no uid), found once on upgrade."""
    name = config.get("name") or f"job{job_id:04d}-{slug(str(config.get('prompt', '')))}"
    found = find_run(out, name)
    return str(found) if found is not None else None


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")
