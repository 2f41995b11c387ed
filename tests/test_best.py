"""Keep-best: best.png is the run's best-scoring picture, reproducible, kept across a resume,
marked in the gallery, shown by `vqclip info`, and a sweep can rank by it."""

from __future__ import annotations

import io
import json
import math
import shutil
from types import SimpleNamespace

import pytest
import torch
from PIL import Image

from vqclip import best as keep_best
from vqclip.best import KeepBest, read_best, score, score_factors
from vqclip.config import ConfigError
from vqclip.credentials import content_bytes
from vqclip.export import list_snapshots, read_recipe
from vqclip.observers import generate, read_log, reproduce, resume
from vqclip.schedules import parse_schedule
from vqclip.state import BEST_FILE, FINAL_FILE, read_run

PROMPT = "a unicorn | fog:0.5 | text:-1"
WEIGHTS = (1.0, 0.5, -1.0)


def logged_scores(run_dir) -> dict[int, float]:
    """Each iteration's score computed here from log.jsonl's similarities, as the README
    defines it: sum(w * s) / sum of the positive weights."""
    scores = {}
    for row in read_log(run_dir):
        sims = [p["similarity"] for p in row["prompts"]]
        assert len(sims) == len(WEIGHTS)
        scores[row["iteration"]] = sum(w * s for w, s in zip(WEIGHTS, sims)) / 1.5
    return scores


def first_max(scores: dict[int, float]) -> int:
    top = max(scores.values())
    return min(i for i, s in scores.items() if s == top)


def stop_after(polls: int):
    """should_stop saying yes at its ``polls``-th call: after iteration ``polls - 1``."""
    calls = iter(range(polls - 1))
    return lambda: next(calls, None) is None


@pytest.fixture
def config(tiny_config):
    return tiny_config.replace(prompt=PROMPT, iterations=16)


def test_best_png_is_the_true_maximum_of_the_logged_scores(config, tiny_models, monkeypatch):
    writes: list[int] = []
    real = keep_best.save_png
    monkeypatch.setattr(
        keep_best,
        "save_png",
        lambda im, p, r, t, c: writes.append(r["iteration"]) or real(im, p, r, t, c),
    )
    result = generate(config, tiny_models, progress=False)
    scores = logged_scores(result.run_dir)
    recipe = read_recipe(result.run_dir / BEST_FILE)
    k = first_max(scores)
    assert recipe["best"]["iteration"] == recipe["iteration"] == k
    assert recipe["best"]["score"] == pytest.approx(scores[k], abs=1e-6)
    runner_up = max(s for i, s in scores.items() if i != k)
    assert scores[k] - runner_up > 1e-4  # a clear winner: the comparison above means something
    keep = parse_schedule(config.snapshots).iterations(config.iterations)
    assert k not in keep  # kept although no snapshot was scheduled there
    assert (
        recipe["config"]["prompt"] == PROMPT and recipe["plan"] == read_run(result.run_dir)["plan"]
    )
    # Written only when a snapshot is, and only when the best changed since: not per improvement.
    expected, so_far = [], None
    for t in sorted(keep):
        at = first_max({i: s for i, s in scores.items() if i <= t})
        if at != so_far:
            expected.append(at)
            so_far = at
    assert writes == expected


def test_best_png_reproduces_to_the_same_bytes(config, tiny_models, tmp_path):
    result = generate(config, tiny_models, progress=False)
    made = result.run_dir / BEST_FILE
    again = reproduce(made, tmp_path / "again", tiny_models)
    assert content_bytes(again) == content_bytes(made)  # the file but its signature
    final = Image.open(result.run_dir / FINAL_FILE).tobytes()
    assert Image.open(made).tobytes() != final  # the best is another picture than the last


def test_a_stopped_and_resumed_run_keeps_its_best_across_the_resume(config, tiny_models, tmp_path):
    whole = generate(config.replace(out=str(tmp_path / "whole")), tiny_models, progress=False)
    k = read_recipe(whole.run_dir / BEST_FILE)["best"]["iteration"]
    stop = k + 2  # after the best, with worse pictures to come
    assert stop < config.iterations
    stopped = generate(config, tiny_models, progress=False, should_stop=stop_after(stop + 1))
    assert stopped.status == "stopped" and stopped.iteration == stop
    assert read_best(stopped.run_dir / BEST_FILE)[0] == k
    done = resume(stopped.run_dir, tiny_models, progress=False)
    assert done.status == "done"
    assert read_best(done.run_dir / BEST_FILE) == read_best(whole.run_dir / BEST_FILE)
    same = Image.open(done.run_dir / BEST_FILE).tobytes()
    assert same == Image.open(whole.run_dir / BEST_FILE).tobytes()
    # ... while the best of the resumed part alone would be another iteration
    after = {i: s for i, s in logged_scores(done.run_dir).items() if i >= stop}
    assert first_max(after) != k


@pytest.mark.parametrize("ending", [KeyboardInterrupt, RuntimeError])
def test_a_run_ended_by_ctrl_c_or_a_failure_still_writes_its_best(
    config, tiny_models, tmp_path, ending
):
    polls = iter(range(12))

    def poll() -> bool:  # Ctrl-C, or a crash, after iteration 12
        if next(polls, None) is None:
            raise ending("now")
        return False

    with pytest.raises(ending):
        generate(config, tiny_models, progress=False, should_stop=poll)
    (run_dir,) = (tmp_path / "runs").iterdir()
    scores = logged_scores(run_dir)
    assert max(scores) == 12
    k = first_max(scores)
    keep = parse_schedule(config.snapshots).iterations(config.iterations)
    assert k > max(i for i in keep if i <= 12)  # found after the last snapshot written
    assert read_best(run_dir / BEST_FILE)[0] == k  # so written when the run ended
    again = reproduce(run_dir / BEST_FILE, tmp_path / "again", tiny_models)
    assert content_bytes(again) == content_bytes(run_dir / BEST_FILE)


def test_the_score_weighs_as_the_loss_does():
    sims = torch.tensor([0.3, 0.1, 0.2])
    assert float(score(sims, (1.0, 1.0, 1.0))) == pytest.approx(0.2)  # the plain mean
    assert float(score(sims, (2.0, 1.0, 1.0))) == pytest.approx(0.9 / 4)  # weighted mean
    assert float(score(sims, (1.0, 1.0, -1.0))) == pytest.approx((0.4 - 0.2) / 2)  # pushes
    assert float(score(sims, (-1.0, -3.0, 0.0))) == pytest.approx(-0.6 / 4)  # none pulls
    assert math.isnan(float(score(sims, (0.0, 0.0, 0.0))))  # nothing to judge
    assert score_factors(()) is None


def test_the_keeper_holds_the_first_of_equal_scores_and_never_nan(tmp_path):
    keeper = KeepBest(tmp_path, [], {})  # no snapshot: nothing is written, all stays here
    scored = [(0.125, 0.0), (0.5, 0.25), (0.25, 0.0), (math.nan, 0.0), (0.75, 0.5), (0.0, 0.0)]
    for i, sims in enumerate(scored):  # scores 0.125, 0.25, 0.25 (a tie), NaN, 0.25, 0
        keeper(SimpleNamespace(iteration=i, similarities=torch.tensor(sims), weights=(1.0, -1.0),
                               labels=("a", "b"), pixels=torch.full((3, 2, 2), i / 8)))  # fmt: skip
    assert int(keeper.iteration) == 1 and float(keeper.score) == 0.25
    assert torch.equal(keeper.pixels, torch.full((3, 2, 2), 1 / 8))
    assert not (tmp_path / BEST_FILE).exists()


def test_a_run_on_an_init_image_alone_writes_no_best(config, tiny_models, tmp_path):
    picture = tmp_path / "init.png"
    Image.new("RGB", (64, 64), "red").save(picture)
    result = generate(
        config.replace(prompt="", init_image=str(picture), iterations=3),
        tiny_models,
        progress=False,
    )
    assert result.status == "done" and not (result.run_dir / BEST_FILE).exists()


def test_an_unreadable_best_png_is_reported_and_replaced(tmp_path):
    Image.new("RGB", (4, 4)).save(tmp_path / BEST_FILE)  # a PNG without a recipe
    with pytest.warns(UserWarning, match="no readable keep-best record"):
        assert read_best(tmp_path / BEST_FILE) is None


def test_info_on_a_run_shows_its_best(config, tiny_models, capsys):
    from vqclip.cli import main

    result = generate(config, tiny_models, progress=False)
    k, value = read_best(result.run_dir / BEST_FILE)
    capsys.readouterr()
    assert main(["info", str(result.run_dir)]) == 0
    out = capsys.readouterr().out
    assert f"best: iteration {k}, score {value:.4f}" in out
    assert main(["info", str(result.run_dir), "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["best"] == {
        "iteration": k,
        "score": value,
        "image": str(result.run_dir / BEST_FILE),
    }
    assert main(["info", str(result.run_dir / BEST_FILE)]) == 0
    assert f"best: iteration {k}, score {value:.4f}" in capsys.readouterr().out


def test_the_gallery_marks_the_best(config, tiny_models):
    from vqclip.ui.gallery import Gallery

    result = generate(config, tiny_models, progress=False)
    k, value = read_best(result.run_dir / BEST_FILE)
    saved = [i for i, _ in list_snapshots(result.run_dir)]
    gallery = Gallery()
    gallery.load(result.run_dir)
    assert gallery.best_iteration == k and k not in saved
    (best,) = gallery.best.children  # its own thumbnail, above the snapshots
    assert best.children[1].value == f"★ best · it {k} · score {value:.3f}"
    assert _pixels(best.children[0].value) == _pixels((result.run_dir / BEST_FILE).read_bytes())
    assert [item.children[1].value for item in gallery.thumbnails.children] == [
        f"it {i}" for i in saved
    ]
    assert not any("vqclip-best" in item._dom_classes for item in gallery.thumbnails.children)

    # A snapshot of the best iteration is starred (here: best.png copied in as one).
    shutil.copy(result.run_dir / BEST_FILE, result.run_dir / "snapshots" / f"{k:06d}.png")
    gallery.load(result.run_dir)
    starred = [item for item in gallery.thumbnails.children if "vqclip-best" in item._dom_classes]
    assert [item.children[1].value for item in starred] == [f"it {k}"]
    assert starred[0].children[2].value == "★ best"
    gallery.scrubber.value = sorted([*saved, k]).index(k)
    shown = sorted([*saved, k]).index(k) + 1
    assert gallery.label.value.startswith(f"it {k} ({shown} of {len(saved) + 1}) · ★ best")
    gallery.set([])  # a new run: the old best goes with its snapshots
    assert gallery.best_iteration is None and gallery.best.children == ()


def _pixels(data: bytes) -> bytes:
    with Image.open(io.BytesIO(data)) as image:
        return image.convert("RGB").tobytes()


def test_a_sweep_ranks_by_each_candidates_best_on_request(config, tiny_models, monkeypatch):
    from vqclip import sweep
    from vqclip.sweep import clip_score, rank_sweep, run_sweep, start_sweep

    base = config.replace(prompt="a unicorn", iterations=8, snapshots="last", size=[32, 32])
    folder = start_sweep(base, ["a unicorn"], ["painting", "watercolor", "fog:-1"], [3], name="b")
    run_sweep(folder, tiny_models, progress=False, say=lambda _: None)
    size = tiny_models.clip.visual.input_resolution

    def judged(row, name):
        return clip_score(tiny_models.clip, folder / row["run"] / name, "a unicorn", size)

    finals = rank_sweep(folder, tiny_models.clip, "tiny")
    rows = rank_sweep(folder, tiny_models.clip, "tiny", by="best")
    assert json.loads((folder / sweep.RANKING_FILE).read_text())["ranked_by"] == "best"
    assert {row["image"] for row in finals} == {FINAL_FILE}
    assert {row["image"] for row in rows} == {BEST_FILE}
    assert [row["score"] for row in rows] == [judged(row, BEST_FILE) for row in rows]
    assert [row["score"] for row in finals] == [judged(row, FINAL_FILE) for row in finals]
    assert [row["score"] for row in rows] == sorted((row["score"] for row in rows), reverse=True)
    assert {row["index"]: row["score"] for row in rows} != {r["index"]: r["score"] for r in finals}
    drawn: list[list] = []
    real = sweep.contact_sheet
    monkeypatch.setattr(
        sweep,
        "contact_sheet",
        lambda images, *a, **k: drawn.append(images) or real(images, *a, **k),
    )
    sweep.sheets(folder)
    assert drawn[0] == [folder / row["run"] / BEST_FILE for row in rows]  # the sheet shows them
    with pytest.raises(ConfigError, match="'final' picture or its 'best'"):
        rank_sweep(folder, tiny_models.clip, "tiny", by="worst")


def test_the_sweep_command_ranks_by_best(tiny_flags, tmp_path, capsys):
    from vqclip.cli import main

    args = ["sweep", "a unicorn", "--styles", "painting", "--iterations", "6", "--size", "32",
            "32", "--cutn", "2", "--snapshots", "last", "--out", str(tmp_path), "--name", "s",
            "--quiet", *tiny_flags]  # fmt: skip
    assert main([*args, "--rank-by", "worst"]) == 2
    assert "invalid choice: 'worst'" in capsys.readouterr().err and not (tmp_path / "s").exists()
    assert main([*args, "--rank-by", "best"]) == 0
    out = capsys.readouterr().out
    ranking = json.loads((tmp_path / "s" / "ranking.json").read_text())
    (row,) = ranking["ranking"]
    assert ranking["ranked_by"] == "best" and row["image"] == BEST_FILE
    assert f"{tmp_path / 's' / row['run'] / BEST_FILE}" in out
