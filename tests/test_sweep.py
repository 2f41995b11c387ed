"""Sweeps: prompts x styles x seeds as ordinary runs, resumable, ranked by CLIP, on sheets."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from vqclip.config import ConfigError, RunConfig, parse_prompts
from vqclip.observers import generate
from vqclip.state import read_run
from vqclip.sweep import (
    RANKING_FILE,
    SHEET_FILE,
    clip_score,
    expand,
    rank_sweep,
    read_sweep,
    run_sweep,
    sheets,
    start_sweep,
    styled,
)


def quiet(_: str) -> None:
    pass


@pytest.fixture
def base(tiny_config):
    return tiny_config.replace(iterations=4, snapshots="0,2,last", cutn=2, size=[32, 32])


def test_styles_go_on_every_prompt_that_pulls():
    assert styled("Oregon 💚", "painting") == "Oregon 💚 painting"
    assert styled("Oregon 💚", "") == "Oregon 💚"
    mixed = styled("a lighthouse:2 | fog:0.5:0.8 | text:-1", "watercolor")
    assert [(s.text, s.weight) for s in parse_prompts(mixed)] == [
        ("a lighthouse watercolor", 2.0),
        ("fog watercolor", 0.5),
        ("text", -1.0),
    ]
    assert parse_prompts(mixed)[1].stop == 0.8
    assert styled("Time: 12:30", "fantasy") == "Time: 12:30 fantasy"


def test_expand_is_prompts_by_styles_by_seeds(base):
    found = expand(base, ["Oregon 💚", "a unicorn"], ["painting", "pencil drawing"], [1, 2])
    assert len(found) == 8
    assert [c.config.prompt for c in found[:4]] == [
        "Oregon 💚 painting",
        "Oregon 💚 painting",
        "Oregon 💚 pencil drawing",
        "Oregon 💚 pencil drawing",
    ]
    assert [c.seed for c in found[:4]] == [1, 2, 1, 2]
    assert len({c.config.name for c in found}) == 8
    with pytest.raises(ConfigError, match="at least one prompt"):
        expand(base, ["  "], ["painting"], [1])
    with pytest.raises(ConfigError, match="at least one seed"):
        expand(base, ["a cat"], ["painting"], [])


def test_a_sweep_runs_ranks_and_draws_its_sheets(base, tiny_models):
    folder = start_sweep(base, ["Oregon 💚"], ["painting", "pencil drawing", "watercolor"], [1, 2])
    jobs = run_sweep(folder, tiny_models, progress=False, say=quiet)
    assert len(jobs) == 6 and {job.status for job in jobs} == {"done"}
    record = read_sweep(folder)
    for entry, job in zip(record["candidates"], jobs):
        assert (folder / entry["run"]).resolve() == Path(job.run_dir).resolve()
        assert entry["job"] == job.id
        assert read_run(folder / entry["run"])["config"]["seed"] == entry["seed"]

    # a candidate is an ordinary run: alone, with its recipe, it gives the same picture
    fourth = RunConfig.from_dict(record["candidates"][3]["config"])
    alone = generate(fourth.replace(out=str(folder.parent / "alone")), tiny_models, progress=False)
    assert (
        alone.final.read_bytes()
        == (folder / record["candidates"][3]["run"] / "final.png").read_bytes()
    )

    rows = rank_sweep(folder, tiny_models.clip, "tiny")
    assert len(rows) == 6
    assert [r["score"] for r in rows] == sorted((r["score"] for r in rows), reverse=True)
    best = rows[0]
    size = tiny_models.clip_size
    final = folder / best["run"] / "final.png"
    assert best["score"] == pytest.approx(clip_score(tiny_models.clip, final, "Oregon 💚", size))
    styled_text = f"Oregon 💚 {best['style']}"
    assert best["styled_score"] == pytest.approx(
        clip_score(tiny_models.clip, final, styled_text, size)
    )
    assert json.loads((folder / RANKING_FILE).read_text())["judge"] == "tiny"

    written = sheets(folder)
    names = [p.name for p in written]
    assert names == [SHEET_FILE, "grid_seed1.png", "grid_seed2.png", "evolution.png"]
    with Image.open(folder / SHEET_FILE) as sheet:
        assert sheet.width == 4 * 256 and sheet.height > 2 * 256  # 6 tiles: 2 rows of 4
    with Image.open(folder / "grid_seed1.png") as grid:
        assert grid.width == 3 * 256  # one row: the three styles
    with Image.open(folder / "evolution.png") as evolution:
        assert evolution.width == 3 * 256  # iterations 0, 2 and 4 across


def test_an_interrupted_sweep_finishes_without_redoing_candidates(base, tiny_models):
    folder = start_sweep(base, ["a unicorn"], ["painting", "watercolor"], [5], name="s")
    polls: list[int] = []
    first = run_sweep(
        folder,
        tiny_models,
        progress=False,
        should_stop=lambda: polls.append(1) or len(polls) > 6,
        say=quiet,
    )
    assert [job.status for job in first] == ["done", "stopped"]
    done = Path(first[0].run_dir) / "final.png"
    done_bytes, done_mtime = done.read_bytes(), done.stat().st_mtime_ns

    rest = run_sweep(folder, tiny_models, progress=False, say=quiet)
    assert [job.id for job in rest] == [first[1].id]  # only the cut one, resumed
    assert rest[0].status == "done" and rest[0].run_dir == first[1].run_dir
    assert done.stat().st_mtime_ns == done_mtime and done.read_bytes() == done_bytes
    with pytest.raises(Exception, match="already holds a sweep"):
        start_sweep(base, ["a unicorn"], ["painting"], [5], name="s")
