"""Sweeps and queues beyond one process: Ray tasks give the same ranking as one process."""

from __future__ import annotations

import json

import pytest
from conftest import import_unless_required

from vqclip.queue import JobQueue
from vqclip.queue.worker import work_on_ray
from vqclip.sweep import RANKING_FILE, rank_sweep, run_sweep, start_sweep

ray = import_unless_required("ray", "VQCLIP_REQUIRE_RAY")  # .ci/run installs Ray


@pytest.fixture(scope="module")
def local_ray():
    """A Ray of two CPUs started inside the test (no cluster, no dashboard)."""
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def quiet(_: str) -> None:
    pass


def test_a_sweep_on_ray_ranks_like_one_process(local_ray, tiny_config, tiny_models, tmp_path):
    base = tiny_config.replace(iterations=3, snapshots="last", cutn=2, size=[32, 32])
    rankings = []
    for where, ray_address in (("here", None), ("ray", "local")):
        folder = start_sweep(
            base.replace(out=str(tmp_path / where)),
            ["Oregon 💚"],
            ["painting", "watercolor"],
            [1, 2],
            name="s",
        )
        jobs = run_sweep(folder, tiny_models, ray=ray_address, progress=False, say=quiet)
        assert sorted(job.status for job in jobs) == ["done"] * 4
        rank_sweep(folder, tiny_models.clip, "tiny")
        rankings.append(json.loads((folder / RANKING_FILE).read_text()))
    runs = [[row.pop("run") for row in ranking["ranking"]] for ranking in rankings]
    assert rankings[1] == rankings[0]
    # each run folder is the candidate's name plus its own job's uid
    assert [r.rsplit("-", 1)[0] for r in runs[1]] == [r.rsplit("-", 1)[0] for r in runs[0]]


def test_a_failing_job_on_ray_is_recorded_and_the_rest_run(local_ray, tiny_config, tmp_path):
    queue = JobQueue(tmp_path / "q.sqlite")
    good = queue.add(tiny_config.replace(iterations=1, snapshots="last", cutn=2, size=[32, 32]))
    bad = queue.add(tiny_config.replace(iterations=1, snapshots="last", cutn=2, size=[32, 32]))
    broken = tmp_path / "broken.ckpt"
    broken.write_bytes(b"not a checkpoint")
    queue.update(bad, status="queued")
    with queue._transaction() as db:  # the model file vanished after the job was queued
        config = json.loads(
            db.execute("SELECT config FROM jobs WHERE id = ?", (bad,)).fetchone()[0]
        )
        config["vqgan_checkpoint"] = str(broken)
        db.execute("UPDATE jobs SET config = ? WHERE id = ?", (json.dumps(config), bad))
    ran = {job.id: job for job in work_on_ray(queue, say=quiet)}
    assert ran[good].status == "done" and ran[bad].status == "failed"
    assert "broken.ckpt" in ran[bad].error
