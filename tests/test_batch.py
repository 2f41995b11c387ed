"""Candidates of one shape optimised together as one batch through the decoder and CLIP:
each equals the same run made alone, resumes and reproduces alone, and memory decides how
many go together."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vqclip import engine, memory
from vqclip import plan as plan_module
from vqclip.cli import main
from vqclip.observers import generate, generate_batch, reproduce, resume
from vqclip.plan import group_plans, prepare
from vqclip.queue import JobQueue
from vqclip.queue.worker import work
from vqclip.state import load_state, read_run


def pixels(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"), dtype=np.int16)


def losses(run_dir: Path) -> list[float]:
    return [json.loads(line)["loss"] for line in (run_dir / "log.jsonl").open()]


@pytest.fixture
def trio(tiny_config):
    """Three candidates of one shape that differ in everything a candidate may: prompt,
    seed, learning rate, optimiser, TV weight, cutout shape and augmentations."""
    base = tiny_config.replace(iterations=8, snapshots="0,4,last", size=[32, 32], cutn=4)
    return [
        base.replace(name="a", prompt="a red barn", seed=1),
        base.replace(name="b", prompt="Oregon 💚 watercolor", seed=2, lr=0.05, tv_weight=0.1),
        base.replace(name="c", prompt="fog:2 | text:-1", seed=3, optimizer="adamw", cut_pow=0.7,
                     augment=False),
    ]  # fmt: skip


@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16"])
def test_each_batched_candidate_equals_the_same_run_alone(
    trio, tiny_models, tmp_path, monkeypatch, precision
):
    monkeypatch.setattr(plan_module, "FP16_ON_CPU_FOR_TESTS", True)  # the CUDA path's loss scaling
    configs = [c.replace(precision=precision, out=str(tmp_path / "batched")) for c in trio]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # bf16 and fp16 are emulated on this CPU
        batched = generate_batch(configs, tiny_models, batch=3, progress=False)
        alone = [
            generate(c.replace(out=str(tmp_path / "alone")), tiny_models, progress=False)
            for c in configs
        ]
    for together, single in zip(batched, alone):
        assert together.status == "done"
        plan = read_run(together.run_dir)["plan"]
        assert plan["candidates"] == 3 and plan["clip_batch"] == 3 * 4  # all cutouts at once
        assert "candidates" not in read_run(single.run_dir)["plan"]
        tolerance = 1e-4 if precision == "fp32" else 2e-2
        z_together = load_state(together.run_dir)["z"]
        z_alone = load_state(single.run_dir)["z"]
        assert torch.allclose(z_together, z_alone, atol=tolerance, rtol=tolerance)
        assert losses(together.run_dir) == pytest.approx(losses(single.run_dir), rel=tolerance)
        diff = np.abs(pixels(together.final) - pixels(single.final))
        assert diff.max() <= (1 if precision == "fp32" else 8)
    # and the candidates are not one another: different prompts and seeds, different pictures
    assert not np.array_equal(pixels(batched[0].final), pixels(batched[1].final))
    # fp16's loss scale is each candidate's own and saved with it
    if precision == "fp16":
        assert all(load_state(r.run_dir)["scaler"]["scale"] > 0 for r in batched)


def test_a_batched_candidate_reproduces_and_resumes_alone(trio, tiny_models, tmp_path):
    stops = iter([False] * 3 + [True])  # Stop while the batch is at iteration 3
    cut = generate_batch(
        trio, tiny_models, batch=3, progress=False, should_stop=lambda: next(stops)
    )
    assert [r.status for r in cut] == ["stopped"] * 3 and {r.iteration for r in cut} == {3}
    whole = generate_batch(
        [c.replace(out=str(tmp_path / "whole")) for c in trio], tiny_models, progress=False
    )
    for stopped, full in zip(cut, whole):
        with pytest.warns(UserWarning, match="one batch with 2 other sweep candidate"):
            done = resume(stopped.run_dir, tiny_models, progress=False)
        assert done.status == "done" and done.iteration == 8
        assert np.abs(pixels(done.final) - pixels(full.final)).max() <= 1
        with pytest.warns(UserWarning, match="one batch"):
            again = reproduce(full.final, tmp_path / "again", tiny_models)
        assert np.abs(pixels(again) - pixels(full.final)).max() <= 1
        assert again.name == "final.png"


def test_memory_decides_how_many_candidates_go_together(tiny_config, tiny_models, monkeypatch):
    configs = [tiny_config.replace(seed=s, size=[32, 32], cutn=4) for s in range(5)]
    plans = [prepare(c, tiny_models) for c in configs]
    models = plans[0].models  # as prepared for the run: what the estimate sees
    args = dict(size=[32, 32], cutn=4, precision="fp32", device="cpu", models=models)
    loaded = memory.estimate_peak_memory(**args).runtime + memory._weights_bytes(
        models, "fp32", False
    )
    two = memory.estimate_peak_memory(**args, candidates=2).total  # all 8 cutouts at once
    three = memory.estimate_peak_memory(**args, clip_batch=1, candidates=3).total  # leanest
    assert two < three
    room = three - 1 - loaded  # two candidates fit, three do not even one cutout at a time
    monkeypatch.setattr(memory, "available_memory", lambda device: room)
    batches = group_plans(plans, limit=8)
    assert [len(b) for b in batches] == [2, 2, 1]
    assert [p.config.seed for b in batches for p in b] == [0, 1, 2, 3, 4]
    for plan in batches[0]:
        assert plan.candidates == 2 and plan.clip_batch == 8 and not plan.checkpointing
        assert plan.estimate.total == two
    assert batches[2][0].candidates == 1 and "candidates" not in batches[2][0].record()

    monkeypatch.setattr(memory, "available_memory", lambda device: None)  # unknown: limit
    assert [len(b) for b in group_plans(plans, limit=3)] == [3, 2]


def test_only_runs_of_one_shape_are_batched(tiny_config, tiny_models):
    configs = [
        tiny_config.replace(seed=1, size=[32, 32]),
        tiny_config.replace(seed=2, size=[64, 64]),
        tiny_config.replace(seed=3, size=[32, 32]),
        tiny_config.replace(seed=4, size=[32, 32], iterations=5),
        tiny_config.replace(seed=5, size=[32, 32], cutn=2),
    ]
    batches = group_plans([prepare(c, tiny_models) for c in configs], limit=8)
    assert [[p.config.seed for p in b] for b in batches] == [[1, 3], [2], [4], [5]]
    with pytest.raises(ValueError, match="one shape"):
        next(engine.run_batch([prepare(c, tiny_models) for c in configs[:2]]))


def test_a_worker_batches_new_jobs_of_one_shape_and_resumes_cut_ones_alone(
    trio, tiny_models, tmp_path
):
    queue = JobQueue(tmp_path / "queue.sqlite")
    ids = [queue.add(c) for c in trio]
    other = queue.add(trio[0].replace(name="d", size=[64, 64]))  # another shape: alone
    stops = iter([False] * 2 + [True])
    first = work(queue, models=tiny_models, batch=4, progress=False, say=print,
                 should_stop=lambda: next(stops, False))  # fmt: skip
    assert [(j.id, j.status) for j in first] == [(i, "stopped") for i in ids]
    assert queue.get(other).status == "queued"
    rest = work(queue, models=tiny_models, batch=4, progress=False, say=print)
    assert sorted(j.id for j in rest) == [*ids, other] and {j.status for j in rest} == {"done"}
    for job_id in ids:  # resumed alone from their states, so each is its own run still
        record = read_run(queue.get(job_id).run_dir)
        assert record["plan"]["candidates"] == 3 and record["iteration"] == 8
    assert "candidates" not in read_run(queue.get(other).run_dir)["plan"]


def test_sweep_batch_flag(tmp_path, tiny_flags, capsys):
    out = tmp_path / "o"
    common = ["sweep", "a barn", "--styles", "painting,watercolor", "--seeds", "1,2",
              "--size", "32", "32", "--cutn", "2", "--iterations", "3", "--snapshots", "last",
              "--out", str(out), "--quiet", *tiny_flags]  # fmt: skip
    assert main([*common, "--name", "one", "--batch", "1"]) == 0
    assert main([*common, "--name", "four", "--batch", "4"]) == 0
    ranked = {}
    for name in ("one", "four"):
        ranking = json.loads((out / name / "ranking.json").read_text())["ranking"]
        ranked[name] = [(row["style"], row["seed"], row["score"]) for row in ranking]
        together = {
            read_run(out / name / row["run"])["plan"].get("candidates", 1) for row in ranking
        }
        assert together == ({1} if name == "one" else {4})
    # The tiny CLIP scores one seed's styles within 1e-5 of each other, so rounding may swap
    # such near-ties: compare each candidate's score, and that each ranking is in order.
    scores = {name: {(style, seed): score for style, seed, score in rows}
              for name, rows in ranked.items()}  # fmt: skip
    assert scores["one"].keys() == scores["four"].keys() and len(scores["one"]) == 4
    for key, score in scores["one"].items():
        assert score == pytest.approx(scores["four"][key], abs=1e-4), key
    for rows in ranked.values():
        assert [r[2] for r in rows] == sorted((r[2] for r in rows), reverse=True)

    capsys.readouterr()
    assert main([*common, "--name", "zero", "--batch", "0"]) == 2
    err = capsys.readouterr().err
    assert "--batch" in err and "'0' is not a whole number of 1 or more" in err
    assert not (out / "zero").exists()


def test_a_job_refused_before_its_batch_begins_fails_alone(trio, tiny_models, tmp_path):
    picture = tmp_path / "start.png"
    Image.new("RGB", (32, 32), (200, 40, 40)).save(picture)
    queue = JobQueue(tmp_path / "queue.sqlite")
    ids = [
        queue.add(trio[0]),
        queue.add(trio[1].replace(init_image=str(picture))),
        queue.add(trio[2]),
    ]
    picture.unlink()  # gone before the worker gets to it
    said: list[str] = []
    jobs = work(queue, models=tiny_models, batch=3, progress=False, say=said.append)
    assert [(j.id, j.status) for j in jobs] == [
        (ids[0], "done"),
        (ids[1], "failed"),
        (ids[2], "done"),
    ]
    assert "start.png" in queue.get(ids[1]).error
    assert any("(in one batch with job" in line for line in said)
    for job_id in (ids[0], ids[2]):  # run alone after all
        assert "candidates" not in read_run(queue.get(job_id).run_dir)["plan"]


def test_queue_work_batch_flag(trio, tmp_path, capsys):
    queue = JobQueue(tmp_path / "queue.sqlite")
    ids = [queue.add(c.replace(iterations=2, snapshots="last")) for c in trio[:2]]
    assert main(["queue", "work", "--queue", str(queue.path), "--batch", "2", "--quiet"]) == 0
    assert "2 job(s) run; 2 done, 0 failed." in capsys.readouterr().out
    for job_id in ids:
        assert read_run(queue.get(job_id).run_dir)["plan"]["candidates"] == 2
    assert main(["queue", "work", "--queue", str(queue.path), "--batch", "two"]) == 2
    assert "'two' is not a whole number of 1 or more" in capsys.readouterr().err
