"""The sweep and queue commands, end to end on the tiny models."""

from __future__ import annotations

import json

from PIL import Image

from vqclip.cli import main
from vqclip.sweep import BEST_SHEET_FILE, RANKING_FILE, SHEET_FILE, read_sweep


def settings(tiny_flags: list[str]) -> list[str]:
    return [*tiny_flags, "--size", "32", "32", "--cutn", "2", "--quiet"]


def test_sweep_command_writes_runs_ranking_and_sheet(tiny_flags, tmp_path, capsys):
    styles = tmp_path / "styles.txt"
    styles.write_text("painting\npencil drawing\n\nwatercolor\n")
    code = main(["sweep", "Oregon 💚", "--styles", str(styles), "--seeds", "1,2",
                 "--iterations", "3", "--snapshots", "1,last", "--out", str(tmp_path / "out"),
                 "--name", "oregon", *settings(tiny_flags)])  # fmt: skip
    out = capsys.readouterr().out
    assert code == 0
    folder = tmp_path / "out" / "oregon"
    record = read_sweep(folder)
    assert [(c["style"], c["seed"]) for c in record["candidates"]] == [
        ("painting", 1), ("painting", 2), ("pencil drawing", 1), ("pencil drawing", 2),
        ("watercolor", 1), ("watercolor", 2),
    ]  # fmt: skip
    ranking = json.loads((folder / RANKING_FILE).read_text())
    assert len(ranking["ranking"]) == 6 and "optimised" in ranking["judge"]
    with Image.open(folder / SHEET_FILE) as sheet:
        assert sheet.width == 4 * 256
    assert f"sheet: {folder / SHEET_FILE}" in out and "best: Oregon 💚 /" in out
    assert "6 of 6 candidates done, 0 failed" in out
    assert len(list((folder / "runs").iterdir())) == 6  # one run folder per candidate

    # finished candidates are not run again
    before = (folder / record["candidates"][0]["run"] / "final.png").stat().st_mtime_ns
    assert main(["sweep", "--resume", str(folder), "--quiet"]) == 0
    after = (folder / record["candidates"][0]["run"] / "final.png").stat().st_mtime_ns
    assert before == after
    assert len(list((folder / "runs").iterdir())) == 6


def test_sweep_with_two_worker_processes(tiny_flags, tmp_path, capsys):
    code = main(["sweep", "a unicorn", "--styles", "painting,watercolor", "--seeds", "1,2",
                 "--iterations", "2", "--snapshots", "last", "--workers", "2",
                 "--out", str(tmp_path), "--name", "w", *settings(tiny_flags)])  # fmt: skip
    said = capsys.readouterr()
    assert code == 0, said.err
    record = read_sweep(tmp_path / "w")
    assert all(c["run"] for c in record["candidates"])
    jobs = json.loads(
        _run(["queue", "list", "--json", "--queue", str(tmp_path / "w" / "queue.sqlite")], capsys)
    )
    assert {j["status"] for j in jobs} == {"done"}
    assert len({j["run_dir"] for j in jobs}) == 4  # each candidate run once, by one worker


def _run(argv: list[str], capsys) -> str:
    assert main(argv) == 0, capsys.readouterr().err
    return capsys.readouterr().out


def test_queue_commands(tiny_flags, tmp_path, capsys):
    out = str(tmp_path / "runs")
    queue = str(tmp_path / "runs" / "queue.sqlite")
    said = _run(["queue", "add", "a lighthouse", "--iterations", "2", "--out", out,
                 *settings(tiny_flags)[:-1]], capsys)  # fmt: skip
    assert f"job 1 queued in {queue}" in said
    _run(["queue", "add", "fog", "--iterations", "2", "--out", out, *settings(tiny_flags)[:-1]],
         capsys)  # fmt: skip
    listed = _run(["queue", "list", "--queue", queue], capsys)
    assert "queued" in listed and "'a lighthouse'" in listed
    _run(["queue", "remove", "2", "--queue", queue], capsys)
    assert "job(s) run; 1 done" in _run(["queue", "work", "--queue", queue, "--quiet"], capsys)
    (job,) = json.loads(_run(["queue", "list", "--json", "--queue", queue], capsys))
    assert job["status"] == "done" and job["prompt"] == "a lighthouse"

    assert main(["queue", "add", "", "--out", out, *settings(tiny_flags)[:-1]]) == 2
    assert "Nothing to aim for" in capsys.readouterr().err
    assert main(["queue", "remove", "7", "--queue", queue]) == 2
    assert "no job 7" in capsys.readouterr().err


def test_sweep_from_a_file_with_a_varied_setting_and_ranked_snapshots(tiny_flags, tmp_path, capsys):
    plan = tmp_path / "sweep.yaml"
    plan.write_text(
        "prompts: ['Oregon 💚']\n"
        "styles: [painting, watercolor]\n"
        "seeds: [1]\n"
        "vary: {lr: [0.05, 0.2]}\n"
        "name: from-file\n"
        "iterations: 3\n"
        "snapshots: 1,last\n"
        f"out: {json.dumps(str(tmp_path / 'out'))}\n",
        encoding="utf-8",
    )
    code = main(["sweep", "--file", str(plan), "--seeds", "4", "--rank-snapshots",
                 *settings(tiny_flags)])  # fmt: skip
    said = capsys.readouterr()
    assert code == 0, said.err
    folder = tmp_path / "out" / "from-file"
    record = read_sweep(folder)
    assert record["vary"] == {"lr": [0.05, 0.2]}
    assert [(c["style"], c["vary"]["lr"], c["seed"]) for c in record["candidates"]] == [
        ("painting", 0.05, 4),
        ("painting", 0.2, 4),
        ("watercolor", 0.05, 4),
        ("watercolor", 0.2, 4),
    ]  # the flag's seed replaces the file's
    assert [c["config"]["iterations"] for c in record["candidates"]] == [3] * 4
    ranking = json.loads((folder / RANKING_FILE).read_text())
    assert ranking["snapshots_ranked"] is True
    assert all([s["iteration"] for s in row["snapshots"]] == [1, 3] for row in ranking["ranking"])
    assert (folder / BEST_SHEET_FILE).is_file()
    assert "best snapshot: Oregon 💚 / " in said.out and ", lr 0." in said.out


def test_sweep_with_vary_from_the_command_line(tiny_flags, tmp_path, capsys):
    code = main(["sweep", "a unicorn", "--vary", "size=32x32,48x32", "--iterations", "2",
                 "--snapshots", "last", "--out", str(tmp_path), "--name", "v",
                 *settings(tiny_flags)])  # fmt: skip
    assert code == 0, capsys.readouterr().err
    record = read_sweep(tmp_path / "v")
    assert [c["config"]["size"] for c in record["candidates"]] == [[32, 32], [48, 32]]


def test_bad_sweep_input_is_refused_before_models_load(tiny_flags, tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("prompts: [a cat]\nstlyes: [painting]\n", encoding="utf-8")
    assert main(["sweep", "--file", str(bad), "--out", str(tmp_path), *tiny_flags]) == 2
    assert "'stlyes' (did you mean styles?)" in capsys.readouterr().err
    assert main(["sweep", "a cat", "--vary", "lrr=1", "--out", str(tmp_path), *tiny_flags]) == 2
    assert "'lrr' cannot vary: did you mean lr?" in capsys.readouterr().err
    assert main(["sweep", "a cat", "--vary", "lr=0.1,-2", "--out", str(tmp_path),
                 *tiny_flags]) == 2  # fmt: skip
    assert "lr (learning rate) must be a positive number, got -2.0" in capsys.readouterr().err
    assert not list(tmp_path.glob("*/sweep.json"))
    assert main(["sweep", "--resume", str(tmp_path), "--vary", "lr=0.1"]) == 2
    assert "--vary would be ignored; leave them out" in capsys.readouterr().err


def _cut_second_run(monkeypatch, before_second=None) -> None:
    """Make the sweep's worker stop its second candidate after two steps (as Ctrl-C would:
    its state saved), or run ``before_second`` first and let it go on."""
    from vqclip.queue import worker

    real, calls = worker.run_job, []

    def run_job(job, models, **options):
        calls.append(job.id)
        if len(calls) != 2:
            return real(job, models, **options)
        if before_second is not None:
            before_second()
            return real(job, models, **options)
        polls = []
        result = real(
            job, models, **{**options, "should_stop": lambda: polls.append(1) or len(polls) > 2}
        )
        assert result.status == "stopped"
        raise KeyboardInterrupt

    monkeypatch.setattr(worker, "run_job", run_job)


def test_a_sweep_resumes_the_same_from_another_directory(tiny_flags, tmp_path, monkeypatch, capsys):
    here, there = tmp_path / "here", tmp_path / "there"
    here.mkdir(), there.mkdir()
    monkeypatch.chdir(here)
    _cut_second_run(monkeypatch)
    code = main(["sweep", "a unicorn", "--styles", "painting,watercolor", "--seeds", "1",
                 "--iterations", "4", "--snapshots", "2,last", "--out", "out", "--name", "s",
                 *settings(tiny_flags)])  # fmt: skip
    assert code == 130, capsys.readouterr().err
    folder = here / "out" / "s"
    first = read_sweep(folder)["candidates"][0]
    done = folder / first["run"] / "final.png"
    mtime = done.stat().st_mtime_ns
    monkeypatch.undo()
    monkeypatch.chdir(there)
    capsys.readouterr()
    assert main(["sweep", "--resume", str(folder), "--quiet"]) == 0, capsys.readouterr().err
    said = capsys.readouterr().out
    assert list(there.iterdir()) == []  # nothing made where it was resumed
    assert len(list((folder / "runs").iterdir())) == 2  # the cut one resumed in place
    assert done.stat().st_mtime_ns == mtime  # the finished one was not run again
    assert "2 of 2 candidates done" in said and "best: a unicorn /" in said
    ranking = json.loads((folder / RANKING_FILE).read_text())
    assert len(ranking["ranking"]) == 2 and ranking["missing"] == []


def test_a_sweep_with_a_failed_candidate_says_so_and_exits_1(
    tiny_flags, tmp_path, monkeypatch, capsys
):
    from PIL import Image as PILImage

    picture = tmp_path / "red.png"
    PILImage.new("RGB", (32, 32), (200, 30, 30)).save(picture)
    _cut_second_run(monkeypatch, before_second=picture.unlink)  # deleted mid-sweep
    code = main(["sweep", "a unicorn", "--init-image", str(picture), "--vary", "lr=0.1,0.2",
                 "--iterations", "2", "--snapshots", "last", "--out", str(tmp_path), "--name", "f",
                 *settings(tiny_flags)])  # fmt: skip
    said = capsys.readouterr()
    assert code == 1, said.err
    assert "1 of 2 candidates done, 1 failed" in said.out
    assert "best of the 1 finished: " in said.out and "\nbest: " not in said.out
    assert "failed: a unicorn" in said.err and "red.png" in said.err
    assert "sweep --resume" in said.err
    monkeypatch.undo()
    PILImage.new("RGB", (32, 32), (200, 30, 30)).save(picture)
    assert main(["sweep", "--resume", str(tmp_path / "f"), "--quiet"]) == 0
    assert "2 of 2 candidates done, 0 failed" in capsys.readouterr().out
