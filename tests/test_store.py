"""The queue file (vqclip/queue/store.py) in this process: adding, claiming, leases, beats,
retries, cancels, stored locations, upgrades of older queue files and every message a user
reads. No worker runs and no process starts (tests/test_queue.py does that): this is what
mutation testing of the store runs (scripts/mutants.sh store), so it must stay fast."""

from __future__ import annotations

import json
import os
import re
import socket
import sqlite3
import time
from datetime import datetime
from pathlib import Path

import pytest

from vqclip.config import ConfigError, RunConfig
from vqclip.queue import store
from vqclip.queue.store import Job, JobQueue, QueueError, QueueWarning

ISO_SECOND = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\+00:00")
GONE = f"{socket.gethostname()}:999999999"  # a process of this machine that does not exist
ME = f"{socket.gethostname()}:{os.getpid()}"  # this process: alive


@pytest.fixture
def home(tmp_path) -> Path:
    return tmp_path / "runs"


@pytest.fixture
def queue(home) -> JobQueue:
    return JobQueue(home / "queue.sqlite")


@pytest.fixture
def config(home) -> RunConfig:
    return RunConfig(prompt="a cat", iterations=2, snapshots="last", out=str(home))


def _set(queue: JobQueue, job_id: int, **columns) -> None:
    """Change a job's row as another process (or a hand edit) would."""
    names = ", ".join(f"{name} = ?" for name in columns)
    with sqlite3.connect(queue.path) as db:
        db.execute(f"UPDATE jobs SET {names} WHERE id = ?", (*columns.values(), job_id))
    # (the with-block commits)


def _row(queue: JobQueue, job_id: int, columns: str) -> tuple:
    with sqlite3.connect(queue.path) as db:
        return db.execute(f"SELECT {columns} FROM jobs WHERE id = ?", (job_id,)).fetchone()


# --- constants and iterations ---------------------------------------------------------------


def test_the_lease_and_beat_are_those_the_readme_gives():
    # README "Leases": renewed every 15 s; a job not beaten for 120 s is stale.
    assert (store.BEAT_SECONDS, store.LEASE_SECONDS) == (15.0, 120.0)


def test_check_iterations_allows_the_bound_and_refuses_past_it_in_full():
    store.check_iterations(100_000)
    store.check_iterations("many")  # not a number: the config's own check says so, not this
    store.check_iterations(10**30 * 1.0)  # a float is refused by validate(), not here
    with pytest.raises(ConfigError) as caught:
        store.check_iterations(100_001)
    assert str(caught.value) == (
        "iterations 100,001 is more than a queued job may run (at most 100,000). Give "
        "--iterations 100000 or fewer; a run can be continued further later with "
        "`vqclip resume RUN_DIR --iterations N`."
    )
    assert caught.value.field == "iterations"


def test_add_refuses_a_job_past_the_bound_and_takes_one_at_it(queue, config):
    with pytest.raises(ConfigError, match="at most 100,000"):
        queue.add(config.replace(iterations=100_001))
    assert queue.jobs() == []
    assert queue.get(queue.add(config.replace(iterations=100_000))).config.iterations == 100_000


def test_add_validates_the_settings_first(queue, config):
    with pytest.raises(ConfigError, match="lr"):
        queue.add(config.replace(lr=-1.0))
    assert queue.jobs() == []


# --- the file ---------------------------------------------------------------------------------


def test_a_new_queue_is_a_wal_database_of_this_format(queue):
    assert queue.path.is_file() and queue.lease == 120.0
    assert queue.home == queue.path.parent
    with sqlite3.connect(queue.path) as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert db.execute("PRAGMA user_version").fetchone()[0] == 1
        columns = [row[1] for row in db.execute("PRAGMA table_info(jobs)")]
    assert columns == ["id", "status", "config", "run_dir", "worker", "error", "created",
                       "updated", "uid", "heartbeat", "iteration"]  # fmt: skip


def test_a_queue_is_found_again_from_a_relative_path(tmp_path, monkeypatch, config):
    monkeypatch.chdir(tmp_path)
    queue = JobQueue("runs/q.sqlite")
    assert queue.home == tmp_path / "runs" and queue.home.is_absolute()
    job_id = queue.add(config.replace(out="runs/out"))
    monkeypatch.chdir(tmp_path / "runs")
    assert JobQueue(tmp_path / "runs" / "q.sqlite").get(job_id).config.out == str(
        tmp_path / "runs" / "out"
    )


def test_a_missing_queue_is_refused_when_not_to_be_made(tmp_path):
    path = tmp_path / "typo" / "deeper" / "q.sqlite"
    with pytest.raises(QueueError) as caught:
        JobQueue(path, create=False)
    assert str(caught.value) == (
        f"There is no queue at {str(path)!r}. Check --queue, or add a job first with "
        "`vqclip queue add` (which makes the file)."
    )
    assert not (tmp_path / "typo").exists()
    JobQueue(path)  # made, with its folders
    assert JobQueue(path, create=False).jobs() == []


def test_a_directory_is_refused_as_a_queue(tmp_path):
    with pytest.raises(QueueError) as caught:
        JobQueue(tmp_path, create=False)
    assert str(caught.value) == (
        f"The queue {str(tmp_path)!r} is a directory; give a file, e.g. "
        f"{tmp_path / 'queue.sqlite'}."
    )


def test_a_queue_folder_that_is_a_file_or_cannot_be_made(tmp_path, monkeypatch):
    (tmp_path / "f").write_text("x")
    with pytest.raises(QueueError) as caught:
        JobQueue(tmp_path / "f" / "q.sqlite")
    assert str(caught.value) == (
        f"The queue's folder {str(tmp_path / 'f')!r} cannot be made (File exists: it is a "
        "file, not a directory). Point --queue (or --out) at a folder you can write to."
    )
    real = Path.mkdir

    def refused(self, *args, **kwargs):
        if self == tmp_path / "locked":
            raise PermissionError(13, "Permission denied", str(self))
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Path, "mkdir", refused)
    with pytest.raises(QueueError) as caught:
        JobQueue(tmp_path / "locked" / "q.sqlite")
    assert str(caught.value) == (
        f"The queue's folder {str(tmp_path / 'locked')!r} cannot be made (Permission denied). "
        "Point --queue (or --out) at a folder you can write to."
    )


def test_files_that_are_no_queue_are_refused_in_full_and_left_as_they_were(tmp_path):
    junk = tmp_path / "junk.sqlite"
    junk.write_bytes(b"these bytes are no database " * 40)
    with pytest.raises(QueueError) as caught:
        JobQueue(junk)
    assert str(caught.value) == (
        f"{junk} is not a vqclip queue (file is not a database). Point --queue at another "
        "file, or move this one away to start an empty queue."
    )
    assert junk.read_bytes() == b"these bytes are no database " * 40

    photos = tmp_path / "photos.db"
    with sqlite3.connect(photos) as db:
        db.execute("CREATE TABLE albums (id INTEGER)")
        db.execute("CREATE TABLE tags (id INTEGER)")
    with pytest.raises(QueueError) as caught:
        JobQueue(photos)
    assert str(caught.value) == (
        f"{photos} is another program's SQLite database (it holds the tables albums, tags), "
        "not a vqclip queue; it was left as it was. Point --queue at another file."
    )
    cron = tmp_path / "cron.db"
    with sqlite3.connect(cron) as db:
        db.execute("CREATE TABLE jobs (id INTEGER, status TEXT, config TEXT)")  # no run_dir
    with pytest.raises(QueueError) as caught:
        JobQueue(cron)
    assert str(caught.value) == (
        f"{cron} holds a 'jobs' table that is not a vqclip queue's; it was left as it was. "
        "Point --queue at another file."
    )
    half = tmp_path / "half.db"  # the four columns a queue is known by, but not the others
    with sqlite3.connect(half) as db:
        db.execute("CREATE TABLE jobs (id INTEGER, status TEXT, config TEXT, run_dir TEXT)")
    with pytest.raises(QueueError, match="holds a 'jobs' table that is not a vqclip queue's"):
        JobQueue(half)
    for path, tables in ((photos, ["albums", "tags"]), (cron, ["jobs"]), (half, ["jobs"])):
        with sqlite3.connect(path) as db:
            assert sorted(r[0] for r in db.execute("SELECT name FROM sqlite_master")) == tables
            assert db.execute("PRAGMA journal_mode").fetchone()[0] == "delete"  # not switched


def test_an_empty_file_becomes_a_queue(tmp_path, config):
    (tmp_path / "q.sqlite").write_bytes(b"")
    assert JobQueue(tmp_path / "q.sqlite").add(config) == 1


# --- network file systems -------------------------------------------------------------------

NETWORK = ["nfs", "nfs4", "cifs", "smb3", "smbfs", "9p", "afs", "ceph", "glusterfs", "lustre",
           "gpfs", "beegfs", "fuse.sshfs", "fuse.rclone", "fuse.gcsfuse", "fuse.s3fs",
           "fuse.glusterfs", "fuse.juicefs", "fuse.drive", "fuse.drivefs"]  # fmt: skip


def test_every_network_file_system_is_named_and_local_ones_are_not(tmp_path):
    mounts = tmp_path / "mounts"
    lines = ["/dev/sda1 / ext4 rw 0 0", f"tmpfs {tmp_path}/tmp tmpfs rw 0 0",
             f"fuse {tmp_path}/fuse fuse.localfs rw 0 0"]  # fmt: skip
    lines += [f"server:/{k} {tmp_path}/m{n} {k} rw 0 0" for n, k in enumerate(NETWORK)]
    mounts.write_text("\n".join(lines) + "\n")
    for n, kind in enumerate(NETWORK):
        assert store.network_filesystem(tmp_path / f"m{n}" / "q.sqlite", mounts) == kind
        assert store.network_filesystem(tmp_path / f"m{n}", mounts) == kind  # the mount itself
    for local in ("tmp", "fuse", "m0x", "elsewhere"):
        assert store.network_filesystem(tmp_path / local / "q.sqlite", mounts) is None


def test_network_filesystem_reads_mounts_as_the_kernel_writes_them(tmp_path, monkeypatch):
    mounts = tmp_path / "mounts"
    mounts.write_bytes(
        b"/dev/sda1 / ext4 rw 0 0\n"
        b"short line\n"
        + f"srv:/x {tmp_path}/three nfs\n".encode()  # only the three fields it reads
        + f"sshfs#me@host: {tmp_path}/far\\040away fuse.sshfs rw 0 0\n".encode()
        + f"srv:/a {tmp_path}/over ext4 rw 0 0\n".encode()
        + f"srv:/b {tmp_path}/over cifs rw 0 0\n".encode()  # mounted over it: this one counts
        + f"srv:/c {tmp_path}/nest nfs rw 0 0\n".encode()
        + f"/dev/sdb {tmp_path}/nest/local ext4 rw 0 0\n".encode()  # the deepest mount counts
        + f"srv:/d {tmp_path}/sub smb3.1 rw 0 0\n".encode()  # a subtype of a network kind
        + b"\xff\xfe not utf-8 \xff /nowhere ext4 rw 0 0\n"
    )
    assert store.network_filesystem(tmp_path / "three" / "q", mounts) == "nfs"
    assert store.network_filesystem(tmp_path / "far away" / "q", mounts) == "fuse.sshfs"
    assert store.network_filesystem(tmp_path / "over" / "q", mounts) == "cifs"
    assert store.network_filesystem(tmp_path / "nest" / "q", mounts) == "nfs"
    assert store.network_filesystem(tmp_path / "nest" / "local" / "q", mounts) is None
    assert store.network_filesystem(tmp_path / "sub" / "q", mounts) == "smb3.1"
    assert store.network_filesystem(tmp_path / "q", tmp_path / "no-such-file") is None
    only = tmp_path / "only"
    only.write_text(f"srv:/x {tmp_path}/elsewhere nfs rw 0 0\n")  # no mount holds the path
    assert store.network_filesystem(tmp_path / "q", only) is None
    (tmp_path / "three").mkdir()
    monkeypatch.chdir(tmp_path / "three")
    assert store.network_filesystem("q.sqlite", mounts) == "nfs"  # relative to here


def test_the_kernels_mount_table_is_read_and_a_network_root_counts(tmp_path, monkeypatch):
    read = []

    def mounts(self, **kwargs):  # a diskless machine: its root is on NFS
        read.append(str(self))
        return "srv:/ / nfs rw 0 0\nsrv:/b /BOX ext4 rw 0 0\n"

    monkeypatch.setattr(Path, "read_text", mounts)
    assert store.network_filesystem(tmp_path / "q.sqlite") == "nfs"
    assert store.network_filesystem("/BO/q.sqlite") == "nfs"  # /BOX is another folder
    assert store.network_filesystem("/BOX/q.sqlite") is None
    assert read == ["/proc/mounts"] * 3


def test_a_queue_on_a_network_file_system_warns_in_full(tmp_path, monkeypatch):
    monkeypatch.setattr(store, "network_filesystem", lambda path: "nfs4")
    with pytest.warns(QueueWarning) as caught:
        JobQueue(tmp_path / "q.sqlite")
    (warning,) = caught
    assert str(warning.message) == (
        f"The queue {tmp_path / 'q.sqlite'} lies on a network file system (nfs4). SQLite's WAL, "
        "which the queue uses, works only while every worker runs on one machine "
        "(https://sqlite.org/wal.html); workers on other machines sharing this file can "
        "corrupt it. Keep it on a local disk, and spread work over machines with Ray "
        "(`vqclip queue work --ray ADDRESS`)."
    )
    assert warning.filename != store.__file__  # it points at the caller, not at the store


def test_a_local_queue_does_not_warn(tmp_path, recwarn):
    JobQueue(tmp_path / "q.sqlite")
    assert not [w for w in recwarn if issubclass(w.category, QueueWarning)]


# --- adding, reading, locations ---------------------------------------------------------------


def test_add_stores_the_settings_with_a_uid_and_the_time(queue, config, home):
    before = time.time()
    first = queue.add(config.replace(prompt="Oregon 💚 painting"))
    second = queue.add(config.replace(prompt="Oregon 💚 painting"))
    assert (first, second) == (1, 2) and isinstance(first, int)
    a, b = queue.jobs()
    assert (a.id, a.status, a.run_dir, a.worker, a.error, a.heartbeat, a.iteration) == (
        1, "queued", None, None, None, None, None,
    )  # fmt: skip
    assert re.fullmatch("[0-9a-f]{32}", a.uid) and a.uid != b.uid
    assert ISO_SECOND.fullmatch(a.created) and a.created == a.updated
    assert abs(datetime.fromisoformat(a.created).timestamp() - before) <= 2  # now, in UTC
    assert a.config == config.replace(prompt="Oregon 💚 painting")
    text, uid = _row(queue, 1, "config, uid")
    assert "Oregon 💚 painting" in text and json.loads(text)["out"] == "."  # as typed, relative
    assert uid == a.uid


def test_jobs_come_in_order_and_get_names_a_missing_one(queue, config):
    ids = [queue.add(config.replace(prompt=p)) for p in ("a", "b", "c")]
    _set(queue, 1, status="done")
    assert [j.id for j in queue.jobs()] == ids
    assert queue.get(2).config.prompt == "b"
    with pytest.raises(QueueError) as caught:
        queue.get(9)
    assert (
        str(caught.value) == f"There is no job 9 in {queue.path}; `vqclip queue list` shows them."
    )


@pytest.mark.parametrize(
    ("out", "stored"),
    [
        ("{home}", "."),
        ("{home}/sub/deeper", "sub/deeper"),
        ("{home}2", "{home}2"),  # beside the queue's folder, not inside it: absolute
        ("{tmp}/elsewhere", "{tmp}/elsewhere"),
    ],
)
def test_locations_are_stored_relative_to_the_queue_folder_when_inside(
    queue, config, home, tmp_path, out, stored
):
    out, stored = (s.format(home=home, tmp=tmp_path) for s in (out, stored))
    job_id = queue.add(config.replace(out=out))
    assert json.loads(_row(queue, job_id, "config")[0])["out"] == stored
    assert queue.get(job_id).config.out == out
    queue.update(job_id, run_dir=Path(out) / "r")
    assert _row(queue, job_id, "run_dir")[0] == os.path.normpath(os.path.join(stored, "r"))
    assert queue.get(job_id).run_dir == str(Path(out) / "r")


def test_a_queue_moved_with_its_folder_finds_its_runs(tmp_path, config):
    queue = JobQueue(tmp_path / "a" / "q.sqlite")
    job_id = queue.add(config.replace(out=str(tmp_path / "a" / "runs")))
    claimed = queue.claim("me:1")
    assert claimed.run_dir == str(tmp_path / "a" / "runs" / f"job0001-a-cat-{claimed.uid[:8]}")
    (tmp_path / "a").rename(tmp_path / "b")
    moved = JobQueue(tmp_path / "b" / "q.sqlite").get(job_id)
    assert moved.config.out == str(tmp_path / "b" / "runs")
    assert moved.run_dir == str(tmp_path / "b" / "runs" / f"job0001-a-cat-{claimed.uid[:8]}")


def test_a_job_without_out_reads_as_the_queue_folders_runs(queue, config, home):
    job_id = queue.add(config)
    settings = json.loads(_row(queue, job_id, "config")[0])
    _set(queue, job_id, config=json.dumps({**settings, "out": ""}), uid=None)
    job = queue.get(job_id)
    assert job.config.out == str(home / "runs") and job.uid == ""
    del settings["out"]
    _set(queue, job_id, config=json.dumps(settings))
    assert queue.get(job_id).config.out == str(home / "runs")


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ('{"prompt": ', "Expecting value: line 1 column 12 (char 11)"),
        ("[1]", "'list' object has no attribute 'get'"),
        ('{"out": 5}', "unsupported operand type(s) for /: 'PosixPath' and 'int'"),
    ],
)
def test_a_job_with_damaged_settings_says_so_in_full_and_can_be_removed(
    queue, config, text, problem
):
    job_id = queue.add(config)
    _set(queue, job_id, config=text)
    expected = (
        f"Job {job_id} in the queue holds settings that cannot be read ({problem}). Remove it "
        f"with `vqclip queue remove {job_id}` and add it again."
    )
    for read in (queue.jobs, lambda: queue.get(job_id), lambda: queue.claim("me:1")):
        with pytest.raises(QueueError) as caught:
            read()
        assert str(caught.value) == expected
    queue.remove(job_id)
    assert queue.jobs() == []


def test_a_job_with_settings_of_the_wrong_kind_says_so(queue, config):
    job_id = queue.add(config)
    _set(queue, job_id, config=json.dumps({"prompt": "x", "iterations": "two"}))
    with pytest.raises(QueueError, match="Job 1 in the queue holds settings that cannot be read"):
        queue.get(job_id)


def test_anchored_makes_existing_files_absolute_and_leaves_names(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for name in ("init.png", "v.yaml", "v.ckpt", "c.pt", "e", "cat.png"):
        (tmp_path / name).write_text("x")
    config = RunConfig(
        prompt="a cat", init_image="init.png", vqgan_config="v.yaml",
        vqgan_checkpoint="v.ckpt", clip_model="c.pt",
        image_prompts=["cat.png:0.5", "e:1e0", "missing.png:1", "cat.png"],
    )  # fmt: skip
    got = store.anchored(config)
    assert (got.init_image, got.vqgan_config, got.vqgan_checkpoint, got.clip_model) == (
        str(tmp_path / "init.png"), str(tmp_path / "v.yaml"), str(tmp_path / "v.ckpt"),
        str(tmp_path / "c.pt"),
    )  # fmt: skip
    # (only the name is made absolute: the weight of a file named 'e' keeps its 'e')
    assert got.image_prompts == [f"{tmp_path}/cat.png:0.5", f"{tmp_path}/e:1e0", "missing.png:1",
                                 f"{tmp_path}/cat.png"]  # fmt: skip
    names = RunConfig(prompt="a cat", clip_model="ViT-B/32", init_image="")
    assert store.anchored(names) == names  # a model name and an empty setting stay


def test_add_anchors_the_files_a_job_names(queue, config, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "init.png").write_text("x")
    job_id = queue.add(config.replace(init_image="init.png"))
    assert queue.get(job_id).config.init_image == str(tmp_path / "init.png")


# --- a job's identity and its run -----------------------------------------------------------


def test_a_job_names_its_run_by_its_uid(config, home):
    def job(uid: str, **kwargs) -> Job:
        return Job(3, "queued", config.replace(**kwargs), None, None, None, "t", "t", uid)

    assert job("0123456789abcdef").run_config().name == "job0003-a-cat-01234567"
    assert job("0123456789abcdef", name="mine").run_config().name == "mine-01234567"
    assert job("").run_config().name == "job0003-a-cat"
    assert job("", name="mine").run_config() == config.replace(name="mine")
    assert job("0123456789abcdef").run_path == home / "job0003-a-cat-01234567"
    old = Job(3, "queued", config, None, None, None, "t", "t")  # made before uids: no uid
    assert old.uid == "" and old.run_path == home / "job0003-a-cat"
    assert (old.heartbeat, old.iteration) == (None, None)
    recorded = Job(3, "running", config, "/r/x", "w", None, "t", "t", "0123456789")
    assert recorded.run_path == Path("/r/x")


def test_run_dir_is_the_recorded_one_or_where_the_run_will_be(queue, config, home):
    job_id = queue.add(config)
    job = queue.get(job_id)
    assert queue.run_dir(job) == home / f"job0001-a-cat-{job.uid[:8]}"
    queue.update(job_id, run_dir=home / "elsewhere")
    assert queue.run_dir(queue.get(job_id)) == home / "elsewhere"


def test_to_dict_lists_everything_a_page_shows(queue, config):
    job_id = queue.add(config)
    claimed = queue.claim(GONE)
    queue.beat(GONE, {job_id: 1})
    job = queue.get(job_id)
    assert job.to_dict() == {
        "id": 1, "uid": claimed.uid, "status": "running", "stale": True, "prompt": "a cat",
        "iteration": 1, "iterations": 2, "config": job.config.to_dict(),
        "run_dir": claimed.run_dir, "worker": GONE, "heartbeat": job.heartbeat, "error": None,
        "created": job.created, "updated": job.updated,
    }  # fmt: skip
    assert queue.claim(ME).to_dict()["stale"] is False


# --- staleness --------------------------------------------------------------------------------


def test_a_job_is_stale_after_its_lease_without_a_beat(config):
    def job(status="running", heartbeat=100.0, worker="far:1") -> Job:
        return Job(1, status, config, None, worker, None, "t", "t", "u", heartbeat)

    assert not job().stale(lease=10.0, now=110.0)  # exactly the lease: still held
    assert job().stale(lease=10.0, now=110.5)
    assert not job().stale(lease=10.0, now=109.0)
    assert job(heartbeat=None).stale(lease=10.0, now=10.5)  # never beaten: stale
    assert not job(heartbeat=None).stale(lease=10.0, now=10.0)
    assert not job(status="queued", heartbeat=None).stale(lease=10.0, now=1e9)
    assert not job(status="stopped", heartbeat=None, worker=GONE).stale()
    assert job(worker=GONE).stale(lease=1e12)  # its process on this machine is gone
    assert not job(heartbeat=time.time(), worker=ME).stale()  # now, a fresh beat
    assert job(heartbeat=time.time() - 121, worker=ME).stale()  # 120 s by default
    assert not job(heartbeat=time.time() - 100, worker=ME).stale()


def test_alive_judges_only_processes_of_this_machine(monkeypatch):
    host = socket.gethostname()
    assert store.worker_name() == ME
    assert store._alive(None) and store._alive("") and store._alive("no-colon")
    assert store._alive(f"{host}:{os.getpid()}")
    assert not store._alive(f"{host}:999999999")
    assert store._alive("another-host:999999999")  # judged by its lease alone
    assert store._alive(f"a:b:{host}:999999999")  # not this host (the pid is after the last ':')
    assert store._alive(f"{host}:not-a-pid") and store._alive(f"{host}:{2**80}")
    monkeypatch.setattr(socket, "gethostname", lambda: "with:colon")
    assert not store._alive("with:colon:999999999")

    def forbidden(pid, signal):
        assert signal == 0  # only asks whether it exists
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(os, "kill", forbidden)
    assert store._alive("with:colon:1")  # another user's live process


# --- claiming ---------------------------------------------------------------------------------


def test_claim_takes_a_cut_job_first_then_the_oldest_queued(queue, config, home):
    queued = queue.add(config)
    stopped = queue.add(config)
    later = queue.add(config)
    queue.update(stopped, status="stopped")
    before = time.time()
    first = queue.claim("me:1")
    assert first.id == stopped and first.status == "running" and first.worker == "me:1"
    assert before <= first.heartbeat <= time.time()
    assert first.run_dir == str(home / f"job0002-a-cat-{first.uid[:8]}")
    assert _row(queue, stopped, "run_dir")[0] == f"job0002-a-cat-{first.uid[:8]}"  # relative
    assert ISO_SECOND.fullmatch(first.updated)
    assert [queue.claim("me:1").id for _ in range(2)] == [queued, later]
    assert queue.claim("me:1") is None


def test_claim_hands_out_a_running_job_whose_worker_is_gone(queue, config):
    held = queue.add(config)
    dead = queue.add(config)
    fresh = queue.add(config)
    assert queue.claim(ME).id == held
    queue.update(dead, status="running", worker=GONE)  # a beat now, but its process is gone
    _set(queue, dead, heartbeat=time.time())
    assert queue.claim("me:2").id == dead  # before the queued one
    assert queue.claim("me:2").id == fresh
    assert queue.claim("me:2") is None  # the first is held by a live worker


def test_claim_hands_out_a_job_past_its_lease(tmp_path, config):
    queue = JobQueue(tmp_path / "q.sqlite", lease=5.0)
    held = queue.add(config)
    queue.claim("far:1")
    _set(queue, held, heartbeat=time.time() - 4)
    assert queue.claim("me:1") is None
    _set(queue, held, heartbeat=time.time() - 6)  # the queue's own lease, not the default
    taken = queue.claim("me:1")
    assert (taken.id, taken.worker) == (held, "me:1")


def test_claim_with_accept_takes_only_what_it_accepts(queue, config):
    queue.add(config.replace(prompt="a"))
    wanted = queue.add(config.replace(prompt="b"))
    queue.add(config.replace(prompt="c"))
    seen = []
    job = queue.claim("me:1", accept=lambda j: seen.append(j.config.prompt) or j.id == wanted)
    assert job.id == wanted and seen == ["a", "b"]  # stops at the first accepted
    assert queue.claim("me:1", accept=lambda j: False) is None
    assert [j.status for j in queue.jobs()] == ["queued", "running", "queued"]


def test_a_failed_claim_rolls_back_and_leaves_the_queue_usable(queue, config):
    job_id = queue.add(config)

    def broken(job):
        raise KeyError("accept broke")

    with pytest.raises(KeyError, match="accept broke"):
        queue.claim("me:1", accept=broken)
    assert queue.get(job_id).status == "queued"
    assert queue.claim("me:1").id == job_id  # the write lock was given back


def test_done_and_failed_jobs_are_never_claimed(queue, config):
    for status in ("done", "failed"):
        queue.update(queue.add(config), status=status)
    assert queue.claim("me:1") is None


# --- beats and updates ------------------------------------------------------------------------


def test_beat_renews_only_the_jobs_the_worker_holds(queue, config):
    mine, theirs, ended = (queue.add(config) for _ in range(3))
    for job_id in (mine, ended):
        queue.claim("me:1", accept=lambda j, i=job_id: j.id == i)
    queue.claim("them:1")
    queue.update(ended, status="done")
    _set(queue, mine, heartbeat=1.0)
    before = time.time()
    assert queue.beat("me:1", {mine: 7, theirs: 3, ended: 2, 99: 1}) == {mine}
    got = queue.get(mine)
    assert got.iteration == 7 and before <= got.heartbeat <= time.time()
    assert queue.get(theirs).iteration is None and queue.get(ended).iteration is None
    assert queue.beat("me:1", {mine: None}) == {mine}
    assert queue.get(mine).iteration == 7  # None: the iteration is kept
    assert queue.beat("me:1", {}) == set()


def test_update_records_progress_and_ends_the_lease(queue, config, home):
    job_id = queue.add(config)
    queue.claim("me:1")
    assert queue.update(job_id, status="running", iteration=1) is True
    assert queue.get(job_id).heartbeat is not None  # still running: the lease stays
    assert queue.update(job_id, run_dir=str(home / "r"), error="boom", worker="w:2") is True
    job = queue.get(job_id)
    assert (job.run_dir, job.error, job.worker, job.iteration) == (str(home / "r"), "boom",
                                                                   "w:2", 1)  # fmt: skip
    assert job.heartbeat is not None and _row(queue, job_id, "run_dir") == ("r",)
    for status in ("stopped", "done", "failed"):
        _set(queue, job_id, heartbeat=5.0)
        assert queue.update(job_id, status=status)
        assert queue.get(job_id).status == status and queue.get(job_id).heartbeat is None
    assert queue.update(job_id, status="queued") and queue.get(job_id).status == "queued"
    assert queue.update(job_id, run_dir=None) and queue.get(job_id).run_dir is None
    assert queue.update(99, status="done") is False


def test_update_refuses_unknown_changes(queue, config):
    job_id = queue.add(config)
    with pytest.raises(ValueError) as caught:
        queue.update(job_id, status="finished")
    assert str(caught.value) == "bad job update {'status': 'finished'}"
    with pytest.raises(ValueError) as caught:
        queue.update(job_id, heartbeat=1.0)
    assert str(caught.value) == "bad job update {'heartbeat': 1.0}"
    assert queue.get(job_id).status == "queued"


def test_update_with_an_owner_only_while_that_worker_holds_the_job(queue, config):
    job_id = queue.add(config)
    queue.claim("me:1")
    assert queue.update(job_id, owner="other:1", status="done") is False
    assert queue.get(job_id).status == "running"
    assert queue.update(job_id, owner="me:1", iteration=2) is True
    assert queue.update(job_id, owner="me:1", status="done") is True
    assert queue.update(job_id, owner="me:1", error="late") is False  # no longer running
    assert queue.get(job_id).error is None and queue.get(job_id).iteration == 2


def test_an_update_stamps_the_time(queue, config):
    job_id = queue.add(config)
    _set(queue, job_id, updated="then")
    queue.update(job_id, iteration=1)
    assert ISO_SECOND.fullmatch(queue.get(job_id).updated)


# --- remove, retry, cancel --------------------------------------------------------------------


def test_remove_takes_a_job_off_but_not_one_being_run(queue, config):
    gone = queue.add(config)
    held = queue.add(config)
    queue.remove(gone)
    assert [j.id for j in queue.jobs()] == [held]
    queue.claim(ME)
    with pytest.raises(QueueError) as caught:
        queue.remove(held)
    assert str(caught.value) == (
        f"Job {held} is being run by worker {ME}; stop that worker (Ctrl-C) first, then "
        "remove the job (a worker that died frees it within 120 s)."
    )
    _set(queue, held, worker=GONE)
    queue.remove(held)  # its worker died: it can go
    assert queue.jobs() == []
    with pytest.raises(QueueError) as caught:
        queue.remove(held)
    assert (
        str(caught.value)
        == f"There is no job {held} in {queue.path}; `vqclip queue list` shows them."
    )


def test_remove_waits_for_the_queues_own_lease(tmp_path, config):
    queue = JobQueue(tmp_path / "q.sqlite", lease=30.4)
    job_id = queue.add(config)
    queue.claim("far:1")
    _set(queue, job_id, heartbeat=time.time() - 20)
    with pytest.raises(QueueError, match=r"frees it within 30 s\)\.$"):
        queue.remove(job_id)
    _set(queue, job_id, heartbeat=time.time() - 40)
    queue.remove(job_id)
    _set(queue, queue.add(config), status="running", heartbeat=None, worker="far:1")
    queue.remove(2)  # a running job that never beat is free
    assert queue.jobs() == []


def test_retry_queues_a_failed_stopped_or_stale_job_again(tmp_path, config):
    queue = JobQueue(tmp_path / "q.sqlite", lease=5.0)
    failed, stopped, stale = (queue.add(config) for _ in range(3))
    for job_id in (failed, stopped, stale):
        queue.claim("far:1", accept=lambda j, i=job_id: j.id == i)
        queue.update(job_id, iteration=1, error="was")
    queue.update(failed, status="failed")
    queue.update(stopped, status="stopped")
    _set(queue, stale, heartbeat=time.time() - 6)  # past this queue's lease
    for job_id in (failed, stopped, stale):
        _set(queue, job_id, updated="then")
        queue.retry(job_id)
        job = queue.get(job_id)
        assert (job.status, job.worker, job.error, job.heartbeat) == ("queued", None, None, None)
        assert job.iteration == 1 and job.run_dir is not None  # it resumes where it was
        assert ISO_SECOND.fullmatch(job.updated)


@pytest.mark.parametrize(
    ("status", "hint"),
    [
        ("queued", "it is queued already: `vqclip queue work` runs it"),
        ("running", "worker far:1 is running it"),
        ("done", "it is done; add it again with `vqclip queue add` for another run"),
    ],
)
def test_retry_refuses_a_job_that_needs_none_in_full(tmp_path, config, status, hint):
    queue = JobQueue(tmp_path / "q.sqlite", lease=5.0)
    job_id = queue.add(config)
    if status != "queued":
        queue.claim("far:1")
        _set(queue, job_id, heartbeat=time.time() - 4)  # within this queue's lease
        if status == "done":
            queue.update(job_id, status=status)
    with pytest.raises(QueueError) as caught:
        queue.retry(job_id)
    assert str(caught.value) == f"Job {job_id} cannot be retried: {hint}."
    assert queue.get(job_id).status == status


def test_retry_failed_queues_every_failed_job_and_names_them(queue, config):
    ids = [queue.add(config) for _ in range(4)]
    for job_id, status in zip(ids, ("failed", "done", "failed", "stopped"), strict=True):
        queue.update(job_id, status=status)
    assert queue.retry_failed() == [ids[0], ids[2]]
    assert [j.status for j in queue.jobs()] == ["queued", "done", "queued", "stopped"]
    assert queue.retry_failed() == []


def test_cancel_marks_a_waiting_job_failed_and_retry_brings_it_back(queue, config):
    waiting, stopped = queue.add(config), queue.add(config)
    queue.claim("me:1", accept=lambda j: j.id == stopped)
    queue.update(stopped, status="stopped")
    for job_id in (waiting, stopped):
        _set(queue, job_id, updated="then")
        queue.cancel(job_id)
        job = queue.get(job_id)
        assert (job.status, job.error, job.worker) == (
            "failed", "cancelled before it ran to the end", None,
        )  # fmt: skip
        assert ISO_SECOND.fullmatch(job.updated)
    queue.retry(waiting)
    assert queue.get(waiting).status == "queued" and queue.get(waiting).error is None


@pytest.mark.parametrize("status", ["running", "done", "failed"])
def test_cancel_refuses_a_job_that_is_not_waiting_in_full(queue, config, status):
    job_id = queue.add(config)
    queue.claim("me:1")
    queue.update(job_id, status=status, error="kept")
    with pytest.raises(QueueError) as caught:
        queue.cancel(job_id)
    assert str(caught.value) == (
        f"Job {job_id} is {status}, not waiting: only a queued or stopped job can be cancelled "
        "(stop a running one at its worker with Ctrl-C)."
    )
    job = queue.get(job_id)
    assert (job.status, job.error, job.worker) == (status, "kept", "me:1")


def test_cancel_names_a_missing_job(queue):
    with pytest.raises(QueueError) as caught:
        queue.cancel(4)
    assert (
        str(caught.value) == f"There is no job 4 in {queue.path}; `vqclip queue list` shows them."
    )


# --- queues made by an older vqclip -----------------------------------------------------------

OLD_SCHEMA = (
    "CREATE TABLE jobs (id INTEGER PRIMARY KEY AUTOINCREMENT, status TEXT NOT NULL, "
    "config TEXT NOT NULL, run_dir TEXT, worker TEXT, error TEXT, created TEXT NOT NULL, "
    "updated TEXT NOT NULL)"
)


def _old_queue(path: Path, rows: list[tuple[str, str, str | None]]) -> None:
    """A queue file of the format before uids and leases: (status, config text, run_dir)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with sqlite3.connect(path) as db:
        db.execute(OLD_SCHEMA)
        for status, text, run_dir in rows:
            db.execute(
                "INSERT INTO jobs (status, config, run_dir, created, updated) "
                "VALUES (?, ?, ?, 'x', 'x')",
                (status, text, run_dir),
            )


def _old_run(folder: Path) -> Path:
    folder.mkdir(parents=True)
    (folder / "run.json").write_text("{}")
    return folder


def test_an_old_queue_is_upgraded_once_with_its_cut_runs_found(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the old format stored paths relative to where it was run
    path = tmp_path / "old" / "queue.sqlite"
    found = _old_run(tmp_path / "old" / "runs" / "job0002-a-cat")
    named = _old_run(tmp_path / "old" / "runs" / "mine")
    _old_run(tmp_path / "old" / "runs" / "job0005-a-cat")  # a done job's run: not looked for
    given = tmp_path / "old" / "given"
    cfg = {"prompt": "a cat", "out": "old/runs"}
    _old_queue(path, [
        ("queued", json.dumps({**cfg, "prompt": "Oregon 💚"}), None),
        ("stopped", json.dumps(cfg), None),
        ("running", json.dumps({**cfg, "name": "mine"}), None),
        ("stopped", json.dumps({**cfg, "prompt": "nothing yet"}), None),
        ("done", json.dumps(cfg), None),
        ("stopped", json.dumps(cfg), str(given)),
        ("queued", json.dumps({"prompt": "no out"}), None),
    ])  # fmt: skip
    queue = JobQueue(path)
    jobs = {job.id: job for job in queue.jobs()}
    assert jobs[2].run_dir == str(found) and jobs[3].run_dir == str(named)
    assert jobs[4].run_dir is None and jobs[5].run_dir is None
    assert jobs[6].run_dir == str(given) and _row(queue, 6, "run_dir") == ("given",)
    # a job with a run keeps its run's old name (no uid); one without gets its own uid
    assert [jobs[i].uid for i in (2, 3, 6)] == ["", "", ""]
    for i in (1, 4, 5, 7):
        assert re.fullmatch("[0-9a-f]{32}", jobs[i].uid)
    assert len({jobs[i].uid for i in (1, 4, 5, 7)}) == 4
    assert jobs[1].config.out == str(tmp_path / "old" / "runs")
    assert jobs[7].config.out == str(tmp_path / "runs")  # 'runs' of where it was run
    text = _row(queue, 1, "config")[0]
    assert json.loads(text)["out"] == "runs" and "Oregon 💚" in text  # kept as typed
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == 1
        types = {row[1]: row[2] for row in db.execute("PRAGMA table_info(jobs)")}
    assert (types["uid"], types["heartbeat"], types["iteration"]) == ("TEXT", "REAL", "INTEGER")
    monkeypatch.chdir(tmp_path / "old" / "runs")  # opened again from elsewhere: no change
    again = {job.id: job for job in JobQueue(path).jobs()}
    assert again == jobs


def test_an_old_queue_with_damaged_jobs_is_upgraded_around_them(tmp_path):
    path = tmp_path / "q.sqlite"
    good = json.dumps({"prompt": "a cat", "out": str(tmp_path / "runs")})
    _old_queue(path, [("queued", "{bad", None), ("queued", "null", None),
                      ("queued", '{"out": 5}', None), ("queued", good, None)])  # fmt: skip
    queue = JobQueue(path)
    assert [_row(queue, i, "config, uid") for i in (1, 2, 3)] == [
        ("{bad", None), ("null", None), ('{"out": 5}', None),
    ]  # fmt: skip
    assert json.loads(_row(queue, 4, "config")[0])["out"] == "runs"
    for i in (1, 2, 3):
        with pytest.raises(QueueError, match=f"Job {i} in the queue holds settings"):
            queue.get(i)
        queue.remove(i)
    assert [j.config.prompt for j in queue.jobs()] == ["a cat"]


def test_an_old_queue_with_lease_columns_already_is_upgraded(tmp_path):
    path = tmp_path / "q.sqlite"
    with sqlite3.connect(path) as db:
        db.execute(OLD_SCHEMA)
        db.execute("ALTER TABLE jobs ADD COLUMN uid TEXT")
        db.execute(
            "INSERT INTO jobs (status, config, created, updated, uid) "
            "VALUES ('queued', '{\"prompt\": \"a\"}', 'x', 'x', 'keep')"
        )
    assert JobQueue(path).get(1).uid == "keep"


def test_the_legacy_run_of_a_job_without_a_prompt(tmp_path):
    found = _old_run(tmp_path / "job0003-run")
    assert store._legacy_run(tmp_path, 3, {}) == str(found)
    assert store._legacy_run(tmp_path, 4, {"prompt": "a cat"}) is None
