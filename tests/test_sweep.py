"""Sweeps: prompts x styles x seeds as ordinary runs, resumable, ranked by CLIP, on sheets."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import clip
import pytest
import torch
from PIL import Image

from vqclip.config import ConfigError, RunConfig, parse_prompts
from vqclip.credentials import content_bytes
from vqclip.observers import generate
from vqclip.state import read_run
from vqclip.sweep import (
    BEST_SHEET_FILE,
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
from vqclip.sweep_spec import parse_vary, read_sweep_file


def quiet(_: str) -> None:
    pass


def score_by_hand(model: torch.nn.Module, path: Path, text: str) -> float:
    """CLIP's cosine of a 32 px picture and a text, from the model's own encoders and
    CLIP's published normalisation, without vqclip's code."""
    with Image.open(path) as im:
        assert im.size == (32, 32)  # the tiny CLIP's input: no resizing to agree on
        pixels = torch.tensor(list(im.convert("RGB").getdata()), dtype=torch.float32)
    image = pixels.T.reshape(1, 3, 32, 32) / 255  # [1, 3, 32, 32] in [0, 1]
    mean = torch.tensor([0.48145466, 0.4578275, 0.40821073]).view(1, 3, 1, 1)
    std = torch.tensor([0.26862954, 0.26130258, 0.27577711]).view(1, 3, 1, 1)
    with torch.no_grad():
        a = model.encode_image((image - mean) / std)
        b = model.encode_text(clip.tokenize([text]))
    return torch.cosine_similarity(a, b).item()


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
    assert content_bytes(alone.final) == content_bytes(
        folder / record["candidates"][3]["run"] / "final.png"
    )

    rows = rank_sweep(folder, tiny_models.clip, "tiny")
    assert len(rows) == 6
    assert [r["score"] for r in rows] == sorted((r["score"] for r in rows), reverse=True)
    for row in rows:  # each score against CLIP's cosine written out by hand
        final = folder / row["run"] / "final.png"
        assert row["score"] == pytest.approx(score_by_hand(tiny_models.clip, final, "Oregon 💚"))
        styled_text = f"Oregon 💚 {row['style']}"
        assert row["styled_score"] == pytest.approx(
            score_by_hand(tiny_models.clip, final, styled_text)
        )
    size = tiny_models.clip_size
    assert clip_score(tiny_models.clip, final, "Oregon 💚", size) == pytest.approx(row["score"])
    assert json.loads((folder / RANKING_FILE).read_text())["judge"] == "tiny"

    written = sheets(folder)
    names = [p.name for p in written]
    # a grid per seed, in the order the seeds were given (not by score)
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


# --- one more axis, and sweeps from a file ---------------------------------------------------


def test_vary_adds_one_setting_as_an_axis(base):
    found = expand(base, ["a unicorn"], ["painting"], [1, 2], vary=("lr", [0.05, "0.1"]))
    assert [(c.config.lr, c.seed) for c in found] == [(0.05, 1), (0.05, 2), (0.1, 1), (0.1, 2)]
    assert [c.vary for c in found] == [{"lr": 0.05}] * 2 + [{"lr": 0.1}] * 2
    assert found[2].config.name == "002-a-unicorn-painting-lr0.1-s1"
    assert found[2].label == "a unicorn / painting · lr 0.1"
    sizes = expand(base, ["a unicorn"], [""], [1], vary=("size", ["32x48", 64]))
    assert [c.config.size for c in sizes] == [[32, 48], [64, 64]]
    assert parse_vary("cut-pow=0.5, 2") == ("cut_pow", [0.5, 2.0])
    assert parse_vary("size=128x96,64") == ("size", [[128, 96], [64, 64]])


@pytest.mark.parametrize(
    "text, message",
    [
        ("lr", "needs one setting and its values, e.g. --vary lr=0.05,0.1"),
        ("lrr=0.1", "'lrr' cannot vary: did you mean lr?"),
        ("seed=1,2", "give seeds"),
        ("device=cpu,cuda", "shared by every candidate"),
        ("lr=fast", "'fast' is not a valid lr; give a number such as 0.05"),
        ("cutn=1.5", "'1.5' is not a valid cutn; give a whole number"),
        ("size=1x2x3", "give 128x128 (width x height)"),
        ("augment=maybe", "give true or false"),
    ],
)
def test_a_bad_vary_is_refused_with_the_fix(text, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        parse_vary(text)


def test_vary_values_are_checked_like_the_flags(base):
    with pytest.raises(ConfigError, match="lr .*must be a positive number"):
        expand(base, ["a unicorn"], [""], [1], vary=("lr", [0.1, -1]))


def test_a_sweep_file_in_yaml_or_json(tmp_path):
    yaml_file = tmp_path / "sweep.yaml"
    yaml_file.write_text(
        "prompts: ['Oregon 💚', 'Time: 12:30']\n"
        "styles: painting, pencil drawing\n"
        "seeds: [1, 2]\n"
        "vary: {lr: [0.05, 0.1]}\n"
        "name: oregon\n"
        "iterations: 40\n"
        "size: 64x48\n"
        "snapshots: 10,last\n",
        encoding="utf-8",
    )
    spec = read_sweep_file(yaml_file)
    assert spec.prompts == ["Oregon 💚", "Time: 12:30"]
    assert spec.styles == ["painting", "pencil drawing"]
    assert spec.seeds == [1, 2] and spec.name == "oregon"
    assert spec.vary == ("lr", [0.05, 0.1])
    assert spec.settings == {"iterations": 40, "size": [64, 48], "snapshots": "10,last"}

    json_file = tmp_path / "sweep.json"
    json_file.write_text(
        json.dumps({"prompt": "a unicorn", "seeds": "3,4", "vary": {"size": [32, [64, 32]]}})
    )
    spec = read_sweep_file(json_file)
    assert spec.prompts == ["a unicorn"] and spec.seeds == [3, 4] and spec.styles == []
    assert spec.vary == ("size", [[32, 32], [64, 32]])


@pytest.mark.parametrize(
    "text, message",
    [
        ("stlyes: [painting]", "Unknown key(s) in bad.yaml: 'stlyes' (did you mean styles?)"),
        ("seed: 3", "'seed' (did you mean seeds?)"),
        ("vary: {lr: [0.1], cutn: [2]}", "vary takes one setting and its values"),
        ("vary: {clip_model: [a, b]}", "clip_model is shared by every candidate"),
        ("vary: {lr: [fast]}", "bad.yaml vary lr: 'fast' is not a valid lr"),
        ("seeds: [1, two]", "seeds [1, 'two'] must be whole numbers, e.g. seeds: [1, 2, 3]"),
        ("prompts: {a: 1}", "prompts must be a list of text"),
        ("iterations: many", "'many' is not a valid iterations; give a whole number"),
        ("- a\n- b", "must hold a mapping"),
        ("prompts: [a\n", "is not valid YAML"),
    ],
)
def test_a_bad_sweep_file_names_the_key_and_the_fix(tmp_path, text, message):
    bad = tmp_path / "bad.yaml"
    bad.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError, match=re.escape(message)):
        read_sweep_file(bad)


def test_missing_sweep_file(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        read_sweep_file(tmp_path / "nope.yaml")


# --- ranking the snapshots too ----------------------------------------------------------------


def test_snapshots_are_ranked_on_request(base, tiny_models):
    folder = start_sweep(
        base, ["a unicorn"], ["painting", ""], [1], name="snaps", vary=("lr", [0.05, 0.2])
    )
    run_sweep(folder, tiny_models, progress=False, say=quiet)
    plain = rank_sweep(folder, tiny_models.clip, "tiny")
    assert all("snapshots" not in row for row in plain)
    rows = rank_sweep(folder, tiny_models.clip, "tiny judge", snapshots=True)
    assert len(rows) == 4
    assert [r["score"] for r in rows] == sorted((r["score"] for r in rows), reverse=True)
    size = tiny_models.clip_size
    for row in rows:
        assert [s["iteration"] for s in row["snapshots"]] == [0, 2, 4]
        for s in row["snapshots"]:
            for value in (s["score"], s["styled_score"]):
                assert isinstance(value, float) and math.isfinite(value) and -1 <= value <= 1
        best = max(row["snapshots"], key=lambda s: s["score"])
        assert (row["best_iteration"], row["best_score"]) == (best["iteration"], best["score"])
        first = folder / row["run"] / "snapshots" / "000000.png"
        assert row["snapshots"][0]["score"] == pytest.approx(
            clip_score(tiny_models.clip, first, "a unicorn", size)
        )
        assert row["vary"] in ({"lr": 0.05}, {"lr": 0.2})
    saved = json.loads((folder / RANKING_FILE).read_text())
    assert saved["judge"] == "tiny judge" and saved["snapshots_ranked"] is True
    assert saved["ranking"] == rows

    names = [p.name for p in sheets(folder)]
    assert names == [SHEET_FILE, "grid_seed1.png", "evolution.png", BEST_SHEET_FILE]
    with Image.open(folder / "grid_seed1.png") as grid:
        assert grid.width == 2 * 256  # styles across; the two lr values down
    with Image.open(folder / BEST_SHEET_FILE) as best_sheet:
        assert best_sheet.width == 4 * 256


# --- the sweep's axes as given, failures counted and retried, one GPU per worker --------------


def test_prompts_are_trimmed_and_each_run_once_like_styles(base, tmp_path):
    assert len(expand(base, ["a unicorn ", "a unicorn", "  ", " fog"], ["painting "], [1])) == 2
    folder = start_sweep(base, ["a unicorn ", "a unicorn", " fog"], ["painting ", "painting"], [1])
    record = read_sweep(folder)
    assert record["prompts"] == ["a unicorn", "fog"]  # what the grids look rows up by
    assert record["styles"] == ["painting"]
    assert [c["prompt"] for c in record["candidates"]] == ["a unicorn", "fog"]


def test_a_refused_sweep_leaves_no_folder(base, tmp_path):
    out = Path(base.out)
    with pytest.raises(ConfigError, match="more than a queued job may run"):
        start_sweep(base, ["a unicorn"], [""], [1], name="big", vary=("iterations", [4, 500_000]))
    assert not out.exists() or list(out.iterdir()) == []


def test_a_failed_candidate_is_reported_and_tried_again_on_resume(base, tiny_models, tmp_path):
    pictures = [tmp_path / "red.png", tmp_path / "blue.png"]
    for picture, colour in zip(pictures, [(200, 30, 30), (30, 30, 200)]):
        Image.new("RGB", (32, 32), colour).save(picture)
    folder = start_sweep(
        base, ["a unicorn"], [""], [1], name="f", vary=("init_image", [str(p) for p in pictures])
    )
    pictures[1].unlink()  # deleted mid-sweep
    jobs = run_sweep(folder, tiny_models, progress=False, say=quiet)
    assert [job.status for job in jobs] == ["done", "failed"]
    record = read_sweep(folder)
    assert [c["status"] for c in record["candidates"]] == ["done", "failed"]
    assert "blue.png" in record["candidates"][1]["error"]
    rank_sweep(folder, tiny_models.clip, "tiny")
    ranking = json.loads((folder / RANKING_FILE).read_text())
    (missing,) = ranking["missing"]  # what the sheets mark as missing
    assert missing["status"] == "failed" and "blue.png" in missing["error"]

    Image.new("RGB", (32, 32), (30, 30, 200)).save(pictures[1])
    said: list[str] = []
    again = run_sweep(folder, tiny_models, progress=False, say=said.append)
    assert [(job.id, job.status) for job in again] == [(jobs[1].id, "done")]
    assert any("failed before; trying it again" in line for line in said)


def test_helper_workers_are_pinned_one_gpu_each(base, tiny_models, monkeypatch):
    import torch

    from vqclip import sweep

    started: list[dict | None] = []

    class Helper:  # stands in for a `vqclip queue work` process (this test has no GPUs)
        def __init__(self, command, env=None):
            started.append(env)

        def wait(self):
            return 0

        def terminate(self):
            pass

    monkeypatch.setattr(sweep.subprocess, "Popen", Helper)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 3)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    folder = start_sweep(base.replace(device="auto"), ["a unicorn"], [""], [1], name="g")
    run_sweep(folder, tiny_models, workers=3, progress=False, say=quiet)
    assert [env["CUDA_VISIBLE_DEVICES"] for env in started] == ["1", "2"]  # this one is on 0

    started.clear()
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,6,7")  # numbered as the machine allows
    run_sweep(folder, tiny_models, workers=2, progress=False, say=quiet)
    assert [env["CUDA_VISIBLE_DEVICES"] for env in started] == ["6"]

    started.clear()
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)  # one GPU: nothing to pin
    run_sweep(folder, tiny_models, workers=2, progress=False, say=quiet)
    assert started == [None]
