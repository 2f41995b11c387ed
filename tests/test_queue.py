"""The SQLite job queue: add, list, remove, claim; workers that drain it and resume cut jobs."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from vqclip.config import ConfigError
from vqclip.queue import JobQueue, QueueError
from vqclip.queue import worker as queue_worker
from vqclip.queue.worker import work
from vqclip.state import read_run


@pytest.fixture
def job(tiny_config):
    return tiny_config.replace(iterations=4, snapshots="0,2,last", cutn=2, size=[32, 32])


@pytest.fixture
def queue(tmp_path):
    return JobQueue(tmp_path / "runs" / "queue.sqlite")


def test_add_list_remove(queue, job):
    first = queue.add(job.replace(prompt="Oregon 💚 painting"))
    second = queue.add(job.replace(prompt="a unicorn", seed=None))
    jobs = queue.jobs()
    assert [(j.id, j.status, j.config.prompt) for j in jobs] == [
        (first, "queued", "Oregon 💚 painting"),
        (second, "queued", "a unicorn"),
    ]
    assert queue.path.is_file()
    with queue._connect() as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    queue.remove(first)
    assert [j.id for j in queue.jobs()] == [second]
    with pytest.raises(QueueError, match="no job 99"):
        queue.remove(99)


def test_a_bad_job_is_refused_when_added(queue, job):
    with pytest.raises(ConfigError, match="lr"):
        queue.add(job.replace(lr=-1.0))
    assert queue.jobs() == []


def test_a_file_that_is_not_a_queue_is_refused(tmp_path):
    junk = tmp_path / "junk.sqlite"
    junk.write_bytes(b"this is not a database" * 100)
    with pytest.raises(QueueError, match="is not a vqclip queue"):
        JobQueue(junk)
    with pytest.raises(QueueError, match="is a directory"):
        JobQueue(tmp_path)


def test_work_drains_the_queue_with_models_loaded_once(queue, job, monkeypatch):
    loads = []
    real = queue_worker.load_run_models
    monkeypatch.setattr(
        queue_worker, "load_run_models", lambda config, **kw: loads.append(1) or real(config, **kw)
    )
    ids = [queue.add(job.replace(prompt=p)) for p in ("a lighthouse", "a unicorn", "fog")]
    ran = work(queue, progress=False, say=lambda _: None)
    assert [j.id for j in ran] == ids and len(loads) == 1
    for done in queue.jobs():
        assert done.status == "done" and done.worker.endswith(f":{os.getpid()}")
        assert read_run(done.run_dir)["config"]["prompt"] == done.config.prompt
    assert work(queue, progress=False, say=lambda _: None) == []


def test_once_runs_one_job(queue, job):
    queue.add(job)
    queue.add(job)
    assert len(work(queue, once=True, progress=False, say=lambda _: None)) == 1
    assert [j.status for j in queue.jobs()] == ["done", "queued"]


def test_ctrl_c_leaves_the_job_to_be_resumed_first_to_the_same_bytes(queue, job, tmp_path):
    whole = JobQueue(tmp_path / "whole" / "queue.sqlite")
    whole.add(job.replace(out=str(tmp_path / "whole")))
    (expected,) = work(whole, progress=False, say=lambda _: None)

    cut = queue.add(job)
    later = queue.add(job.replace(prompt="later"))
    polls: list[int] = []

    def ctrl_c() -> bool:  # the user presses Ctrl-C during the third iteration
        polls.append(1)
        if len(polls) == 3:
            raise KeyboardInterrupt
        return False

    with pytest.raises(KeyboardInterrupt):
        work(queue, progress=False, should_stop=ctrl_c, say=lambda _: None)
    stopped = queue.get(cut)
    assert stopped.status == "stopped" and read_run(stopped.run_dir)["status"] == "stopped"
    assert queue.get(later).status == "queued"

    ran = work(queue, progress=False, say=lambda _: None)
    assert [j.id for j in ran] == [cut, later]  # the cut job first
    resumed = queue.get(cut)
    assert resumed.run_dir == stopped.run_dir and resumed.status == "done"
    final = Path(resumed.run_dir) / "final.png"
    from vqclip.credentials import content_bytes  # the file without its unique signature

    assert content_bytes(final) == content_bytes(Path(expected.run_dir) / "final.png")


def test_a_job_whose_worker_died_is_handed_out_again_first(queue, job):
    dead = queue.add(job)
    fresh = queue.add(job)
    # a worker on this machine that was killed mid-run (no process has that id)
    queue.update(dead, status="running", worker=f"{socket.gethostname()}:999999999")
    assert queue.claim("me:1").id == dead
    assert queue.claim("me:1").id == fresh
    assert queue.claim("me:1") is None  # both taken by a live worker (this process is alive)


def test_two_worker_processes_never_take_the_same_job(queue, job, tmp_path):
    ids = [
        queue.add(job.replace(prompt=f"job {k}", iterations=1, snapshots="last")) for k in range(6)
    ]
    code = textwrap.dedent(
        f"""
        import torch
        torch.set_num_threads(1)
        from vqclip.queue import JobQueue
        from vqclip.queue.worker import work
        ran = work(JobQueue({str(queue.path)!r}), progress=False, say=lambda _: None)
        print(",".join(str(j.id) for j in ran))
        """
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    workers = [
        subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, env=env)
        for _ in range(2)
    ]
    outputs = [w.communicate(timeout=300)[0].strip() for w in workers]
    assert [w.returncode for w in workers] == [0, 0]
    taken = [[int(i) for i in out.split(",") if i] for out in outputs]
    assert sorted(taken[0] + taken[1]) == ids  # every job once, none twice
    assert {j.status for j in queue.jobs()} == {"done"}
    assert len({j.run_dir for j in queue.jobs()}) == len(ids)


# --- a job owns its run (by its uid), leases, retries, locations -----------------------------


class Killed(BaseException):
    """Stands for SIGKILL: nothing in the worker catches it."""


def _dead(queue: JobQueue, job_id: int) -> None:
    """Mark a running job's worker as a process of this machine that no longer exists."""
    queue.update(job_id, worker=f"{socket.gethostname()}:999999999")


def _runs(out: Path) -> list[str]:
    return sorted(p.name for p in out.iterdir() if p.is_dir())


def test_the_same_settings_queued_twice_make_two_runs(queue, job):
    same = job.replace(name="same", iterations=2, snapshots="last")
    first, second = queue.add(same), queue.add(same)
    work(queue, progress=False, say=lambda _: None)
    a, b = queue.get(first), queue.get(second)
    assert a.uid != b.uid and a.run_dir != b.run_dir
    for done in (a, b):
        record = read_run(done.run_dir)
        assert done.status == "done" and record["status"] == "done" and record["iteration"] == 2
        assert record["config"]["name"] == f"same-{done.uid[:8]}"  # the job's identity
    assert len(_runs(queue.path.parent)) == 2


def test_a_queue_made_again_never_adopts_an_old_run(queue, job):
    old = queue.add(job.replace(iterations=2, snapshots="last"))
    work(queue, progress=False, say=lambda _: None)
    old_run = queue.get(old).run_dir
    for path in queue.path.parent.glob("queue.sqlite*"):
        path.unlink()
    again = JobQueue(queue.path)
    new = again.add(job.replace(iterations=3, snapshots="last"))  # job 1 again, same prompt
    assert new == old
    work(again, progress=False, say=lambda _: None)
    done = again.get(new)
    assert done.status == "done" and done.run_dir != old_run, done.error
    assert read_run(done.run_dir)["iteration"] == 3 and read_run(old_run)["iteration"] == 2


def test_a_kill_before_the_first_snapshot_leaves_no_twin_folder(queue, job, monkeypatch):
    cut = queue.add(job)
    from vqclip import observers

    real = observers._execute

    def killed(*args, **kwargs):
        raise Killed  # after the run directory and its run.json were made, before a snapshot

    monkeypatch.setattr(observers, "_execute", killed)
    with pytest.raises(Killed):
        work(queue, progress=False, say=lambda _: None)
    made = _runs(queue.path.parent)
    assert len(made) == 1 and read_run(queue.path.parent / made[0])["status"] == "running"
    _dead(queue, cut)
    monkeypatch.setattr(observers, "_execute", real)
    work(queue, progress=False, say=lambda _: None)
    assert _runs(queue.path.parent) == made  # resumed in place: no '-2' twin
    assert read_run(queue.get(cut).run_dir)["status"] == "done"


def test_a_job_whose_worker_stopped_beating_is_handed_out_again(queue, job, tmp_path, capsys):
    from vqclip.cli import main
    from vqclip.queue.store import LEASE_SECONDS

    held = queue.add(job)
    assert queue.claim("elsewhere:42").id == held  # a worker on another machine
    assert queue.claim("me:1") is None  # its lease is fresh
    with pytest.raises(QueueError, match="being run by worker elsewhere:42"):
        queue.remove(held)
    assert main(["queue", "list", "--queue", str(queue.path)]) == 0
    listed = capsys.readouterr().out
    assert "running" in listed and "elsewhere:42" in listed and "0/4" in listed
    import sqlite3

    with sqlite3.connect(queue.path) as db:  # that machine went away: no beat since
        db.execute("UPDATE jobs SET heartbeat = heartbeat - ?", (LEASE_SECONDS + 1,))
    assert main(["queue", "list", "--queue", str(queue.path)]) == 0
    assert "stale" in capsys.readouterr().out
    taken = queue.claim("me:1")
    assert taken.id == held and taken.worker == "me:1"
    assert queue.beat("elsewhere:42", {held: 3}) == set()  # the old worker holds nothing now
    assert queue.beat("me:1", {held: 3}) == {held} and queue.get(held).iteration == 3


def test_a_worker_beats_with_its_progress_and_yields_a_job_taken_over(tmp_path, job):
    import sqlite3
    import time

    queue = JobQueue(tmp_path / "q.sqlite", lease=0.4)  # beats every 0.1 s
    held = queue.add(job.replace(iterations=40, snapshots="last"))
    seen = []

    def probe() -> bool:
        time.sleep(0.03)
        now = queue.get(held)
        seen.append((now.heartbeat, now.iteration))
        if len(seen) == 30:  # another worker takes the job over (ours looked dead to it)
            with sqlite3.connect(queue.path) as db:
                db.execute("UPDATE jobs SET worker = 'other:1', heartbeat = ? WHERE id = ?",
                           (time.time() + 60, held))  # fmt: skip
        return False

    work(queue, progress=False, should_stop=probe, say=lambda _: None)
    beats = [b for b, _ in seen[:29]]
    assert len(set(beats)) >= 3 and beats == sorted(beats)  # renewed while it ran
    assert max(i or 0 for _, i in seen) >= 10  # its progress, from the run's log
    after = queue.get(held)
    assert len(seen) < 40  # it stopped once it lost the lease ...
    assert after.worker == "other:1" and after.status == "running"  # ... and left the job be
    assert read_run(after.run_dir)["status"] == "stopped"  # with its state saved


def test_a_failed_job_is_retried(queue, job, tmp_path, capsys):
    from PIL import Image

    from vqclip.cli import main

    picture = tmp_path / "init.png"
    Image.new("RGB", (32, 32), (200, 40, 40)).save(picture)
    failing = queue.add(job.replace(init_image=str(picture)))
    picture.unlink()  # deleted after it was queued
    assert main(["queue", "work", "--queue", str(queue.path), "--quiet"]) == 1
    said = capsys.readouterr()
    assert "1 failed" in said.out and "queue retry --failed" in said.err
    assert queue.get(failing).status == "failed"
    with pytest.raises(QueueError, match="cannot be retried: it is queued already"):
        queue.add(job) and queue.retry(queue.jobs()[-1].id)
    queue.remove(queue.jobs()[-1].id)
    Image.new("RGB", (32, 32), (200, 40, 40)).save(picture)
    assert main(["queue", "retry", "--failed", "--queue", str(queue.path)]) == 0
    assert f"job {failing} queued again" in capsys.readouterr().out
    assert main(["queue", "work", "--queue", str(queue.path), "--quiet"]) == 0
    assert queue.get(failing).status == "done" and queue.get(failing).error is None


def test_queue_commands_give_the_same_result_from_any_directory(
    tiny_flags, tmp_path, monkeypatch, capsys
):
    from vqclip.cli import main

    here, there = tmp_path / "here", tmp_path / "there"
    here.mkdir(), there.mkdir()
    (here / "models").symlink_to(Path(tiny_flags[1]).parent)  # model files named relatively
    flags = ["--vqgan-config", "models/vqgan.yaml", "--vqgan-checkpoint", "models/vqgan.ckpt",
             "--clip", "models/clip.pt", *tiny_flags[6:]]  # fmt: skip
    monkeypatch.chdir(here)
    assert main(["queue", "add", "a lighthouse", "--iterations", "2", "--snapshots", "last",
                 "--size", "32", "32", "--cutn", "2", "--out", "runs", *flags]) == 0  # fmt: skip
    capsys.readouterr()
    monkeypatch.chdir(there)
    queue = str(here / "runs" / "queue.sqlite")
    assert main(["queue", "work", "--queue", queue, "--quiet"]) == 0, capsys.readouterr().err
    capsys.readouterr()
    assert list(there.iterdir()) == []  # nothing made where the worker was started
    (made,) = [p for p in (here / "runs").iterdir() if p.is_dir()]
    assert read_run(made)["status"] == "done"
    monkeypatch.chdir(tmp_path)
    assert main(["queue", "list", "--queue", "here/runs/queue.sqlite"]) == 0
    assert str(made) in capsys.readouterr().out
    assert JobQueue(queue).run_dir(JobQueue(queue).get(1)) == made


def test_the_iteration_bound_holds_wherever_a_job_is_made(queue, job, tiny_flags, tmp_path, capsys):
    from vqclip.cli import main
    from vqclip.queue.store import MAX_QUEUED_ITERATIONS

    with pytest.raises(ConfigError, match="at most 100,000"):
        queue.add(job.replace(iterations=MAX_QUEUED_ITERATIONS + 1))
    assert queue.jobs() == []
    out = tmp_path / "elsewhere"
    assert main(["queue", "add", "a cat", "--iterations", "500000", "--out", str(out),
                 *tiny_flags]) == 2  # fmt: skip
    assert "more than a queued job may run" in capsys.readouterr().err
    assert not out.exists()


def test_a_queue_on_a_network_file_system_warns(tmp_path, monkeypatch):
    from vqclip.queue import store

    mounts = tmp_path / "mounts"
    mounts.write_text(
        "/dev/sda1 / ext4 rw 0 0\n"
        f"server:/export {tmp_path / 'shared'} nfs4 rw,relatime 0 0\n"
        f"sshfs#me@host: {tmp_path}/far\\040away fuse.sshfs rw 0 0\n"
    )
    assert store.network_filesystem(tmp_path / "shared" / "q.sqlite", str(mounts)) == "nfs4"
    assert store.network_filesystem(tmp_path / "far away" / "q", str(mounts)) == "fuse.sshfs"
    assert store.network_filesystem(tmp_path / "sharedx" / "q", str(mounts)) is None
    assert store.network_filesystem(tmp_path / "q", str(mounts)) is None
    assert store.network_filesystem(tmp_path / "q", str(tmp_path / "none")) is None
    monkeypatch.setattr(store, "network_filesystem", lambda path: "nfs4")
    with pytest.warns(store.QueueWarning, match=r"network file system \(nfs4\).*Ray"):
        JobQueue(tmp_path / "q.sqlite")


def test_claims_in_a_tight_loop_from_several_processes_never_take_a_job_twice(tmp_path, job):
    queue = JobQueue(tmp_path / "q.sqlite")
    ids = [queue.add(job.replace(prompt=f"job {k}")) for k in range(300)]
    go = tmp_path / "go"
    code = textwrap.dedent(
        f"""
        import pathlib, sys, time
        from vqclip.queue import JobQueue
        from vqclip.queue.store import worker_name
        queue, go, taken = JobQueue({str(queue.path)!r}), pathlib.Path({str(go)!r}), []
        (go.parent / f"ready{{sys.argv[1]}}").touch()
        while not go.exists():
            time.sleep(0.001)
        while (job := queue.claim(worker_name())) is not None:
            taken.append(job.id)
            queue.update(job.id, owner=worker_name(), status="done")  # (a worker gone is freed)
        print(",".join(map(str, taken)))
        """
    )
    workers = [
        subprocess.Popen([sys.executable, "-c", code, str(n)], stdout=subprocess.PIPE, text=True)
        for n in range(4)
    ]
    while len(list(tmp_path.glob("ready*"))) < 4:  # every one has opened the queue
        time.sleep(0.01)
    go.touch()  # all four start claiming at once
    outputs = [w.communicate(timeout=300)[0].strip() for w in workers]
    assert [w.returncode for w in workers] == [0] * 4
    taken = [int(i) for out in outputs for i in out.split(",") if i]
    assert sorted(taken) == ids  # every job once, none twice
    assert sum(bool(out) for out in outputs) >= 2  # they really contended


def test_a_queue_made_by_an_older_vqclip_is_upgraded_in_place(tmp_path, job, monkeypatch):
    import json
    import sqlite3

    monkeypatch.chdir(tmp_path)
    path = tmp_path / "old" / "queue.sqlite"
    path.parent.mkdir()
    with sqlite3.connect(path) as db:  # the format before uids and leases
        db.execute(
            "CREATE TABLE jobs (id INTEGER PRIMARY KEY AUTOINCREMENT, status TEXT NOT NULL, "
            "config TEXT NOT NULL, run_dir TEXT, worker TEXT, error TEXT, created TEXT NOT NULL, "
            "updated TEXT NOT NULL)"
        )
        settings = {**job.to_dict(), "out": "old/runs"}  # relative to where it was run
        db.execute(
            "INSERT INTO jobs (status, config, created, updated) VALUES ('queued', ?, 'x', 'x')",
            (json.dumps(settings),),
        )
    (queued,) = JobQueue(path).jobs()
    assert len(queued.uid) == 32 and queued.config.out == str(tmp_path / "old" / "runs")
    with sqlite3.connect(path) as db:
        assert json.loads(db.execute("SELECT config FROM jobs").fetchone()[0])["out"] == "runs"
    assert JobQueue(path).get(1).uid == queued.uid  # upgraded once
