"""The SQLite job queue: add, list, remove, claim; workers that drain it and resume cut jobs."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap
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
    assert final.read_bytes() == (Path(expected.run_dir) / "final.png").read_bytes()


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
