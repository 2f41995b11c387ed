"""Bad input to the queue: `vqclip queue add` flags, queue files that are not queues, the
phone page's form (form_config) and its Tornado app. Every refusal names the problem and the
fix, exits 2 on the command line, and leaves the folder exactly as it was."""

from __future__ import annotations

import html
import sqlite3
import sys
from pathlib import Path

import pytest
from test_bad_input import CASES as CLI_CASES
from test_bad_input_api import tree
from test_queue_web import post, serve

from vqclip.cli import main
from vqclip.config import ConfigError
from vqclip.queue import JobQueue, QueueError
from vqclip.queue.web import form_config

# Rows only a run can find (the models, the device, reading the pictures whole): a queue is
# drained by workers that may sit on other machines (a GPU for 'cuda'), so queue add takes them.
AT_RUN_TIME = {
    "size-below-one-latent-cell", "cuda-without-a-gpu", "fp16-on-the-cpu",
    "init-image-not-a-picture", "truncated-init-image", "truncated-image-prompt",
    "init-image-decompression-bomb",
}  # fmt: skip
ADD_CASES = [c for c in CLI_CASES if c[0] not in AT_RUN_TIME] + [
    ("name-reserved-con", "a cat", lambda d: ["--name", "CON"], ["device name on Windows"]),
    ("queue-is-a-directory", "a cat", lambda d: ["--queue", str(d)], ["is a directory; give a file"]),
    ("queue-is-not-sqlite", "a cat", lambda d: ["--queue", str(junk(d))], ["is not a vqclip queue", "move this one away"]),
    ("queue-of-another-program", "a cat", lambda d: ["--queue", str(foreign_db(d))], ["another program's SQLite database", "left as it was"]),
    ("queue-folder-is-a-file", "a cat", lambda d: ["--queue", str(junk(d) / "q.sqlite")], ["it is a file, not a directory", "a folder you can write to"]),
]  # fmt: skip


def junk(d: Path) -> Path:
    (d / "junk.sqlite").write_bytes(b"these bytes are no database " * 40)
    return d / "junk.sqlite"


def foreign_db(d: Path) -> Path:
    with sqlite3.connect(d / "photos.db") as db:
        db.execute("CREATE TABLE albums (id INTEGER, title TEXT)")
    return d / "photos.db"


@pytest.mark.parametrize(
    ("prompt", "flags", "says"), [c[1:] for c in ADD_CASES], ids=[c[0] for c in ADD_CASES]
)
def test_queue_add_refuses_with_exit_2_and_makes_no_queue(
    prompt, flags, says, tiny_flags, tmp_path, capsys, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    given = flags(inputs)
    out = ["--out", str(tmp_path / "runs")] if "--out" not in given else []
    before = tree(tmp_path)

    code = main(["queue", "add", prompt, *tiny_flags, "--size", "32", "32", "--iterations", "2",
                 *out, *given])  # fmt: skip

    err = capsys.readouterr().err
    assert code == 2, err
    assert err.startswith("vqclip: error: ") and err.count("\n") == 1 and "Traceback" not in err
    for words in says:
        assert words in err
    assert tree(tmp_path) == before  # no queue file, no folder, the odd files untouched


# --- queue files ---------------------------------------------------------------------------


def test_an_empty_file_becomes_an_empty_queue(tmp_path, tiny_config):
    (tmp_path / "q.sqlite").write_bytes(b"")
    queue = JobQueue(tmp_path / "q.sqlite")
    assert queue.jobs() == []
    assert queue.add(tiny_config) == 1


def damaged_job(d: Path, config) -> Path:
    queue = JobQueue(d / "q.sqlite")
    queue.add(config)
    with queue._connect() as db:
        db.execute("UPDATE jobs SET config = '{\"prompt\": ' WHERE id = 1")
    return d / "q.sqlite"


QUEUE_FILES = [
    ("not-sqlite", lambda d, c: junk(d), "list", ["is not a vqclip queue (file is not a database)", "move this one away"]),
    ("a-directory", lambda d, c: d, "list", ["is a directory; give a file", "queue.sqlite"]),
    ("another-programs-database", lambda d, c: foreign_db(d), "list", ["another program's SQLite database", "albums"]),
    ("a-foreign-jobs-table", lambda d, c: _foreign_jobs(d), "list", ["not a vqclip queue's", "another file"]),
    ("not-sqlite-to-work", lambda d, c: junk(d), "work", ["is not a vqclip queue", "move this one away"]),
    ("not-sqlite-to-remove", lambda d, c: junk(d), "remove", ["is not a vqclip queue", "move this one away"]),
    ("a-job-with-damaged-settings", damaged_job, "list", ["Job 1 in the queue holds settings that cannot be read", "vqclip queue remove 1"]),
    ("a-job-with-damaged-settings-to-work", damaged_job, "work", ["Job 1 in the queue holds settings", "vqclip queue remove 1"]),
    ("remove-a-job-that-is-not-there", lambda d, c: JobQueue(d / "q.sqlite").path, "remove", ["There is no job 1", "vqclip queue list"]),
    ("a-mistyped-queue-to-list", lambda d, c: d / "typo" / "qeueu.sqlite", "list", ["There is no queue at", "vqclip queue add"]),
    ("a-mistyped-queue-to-work", lambda d, c: d / "qeueu.sqlite", "work", ["There is no queue at", "Check --queue"]),
    ("a-mistyped-queue-to-remove", lambda d, c: d / "qeueu.sqlite", "remove", ["There is no queue at", "Check --queue"]),
]  # fmt: skip


def _foreign_jobs(d: Path) -> Path:
    with sqlite3.connect(d / "jobs.db") as db:
        db.execute("CREATE TABLE jobs (name TEXT, cron TEXT)")
    return d / "jobs.db"


@pytest.mark.parametrize(
    ("make", "action", "says"), [c[1:] for c in QUEUE_FILES], ids=[c[0] for c in QUEUE_FILES]
)
def test_queue_files_that_are_not_queues_are_refused_and_left_alone(
    make, action, says, tiny_config, tmp_path, capsys
):
    path = make(tmp_path, tiny_config)
    before = tree(tmp_path)
    extra = ["1"] if action == "remove" else (["--once", "--quiet"] if action == "work" else [])
    code = main(["queue", action, *extra, "--queue", str(path)])
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.startswith("vqclip: error: ") and err.count("\n") == 1
    for words in says:
        assert words in err
    assert tree(tmp_path) == before
    if action == "list":  # the Python API: the exact error type
        with pytest.raises(QueueError):
            JobQueue(path, create=False).jobs()
    if path.is_file() and action == "list":
        with pytest.raises(QueueError):
            JobQueue(path).jobs()


def test_a_job_with_damaged_settings_can_be_removed(tiny_config, tmp_path, capsys):
    path = damaged_job(tmp_path, tiny_config)
    assert main(["queue", "remove", "1", "--queue", str(path)]) == 0
    assert JobQueue(path).jobs() == []


# --- the phone page ------------------------------------------------------------------------

FORMS = [
    ("empty-prompt", {"prompt": ""}, ["Nothing to aim for", "give a text prompt"]),
    ("whitespace-prompt", {"prompt": "  \n "}, ["Nothing to aim for"]),
    ("only-separators", {"prompt": "|||"}, ["Nothing to aim for"]),
    ("nul-in-prompt", {"prompt": "a\x00cat"}, ["control character U+0000", "Type the prompt again"]),
    ("invisible-prompt", {"prompt": "\u200b\u200b"}, ["only invisible characters", "Type visible words"]),
    ("giant-prompt", {"prompt": "word " * 20_000}, ["100000 characters", "shorter prompt"]),
    ("weight-not-a-number", {"prompt": "fog:1x"}, ["looks like a weight", "plain numbers"]),
    ("weight-nan", {"prompt": "fog:nan"}, ["weight 'nan'", "finite numbers"]),
    ("all-weights-zero", {"prompt": "cat:0"}, ["every prompt has weight 0", "other than 0"]),
    ("iterations-zero", {"prompt": "a cat", "iterations": "0"}, ["iterations must be a whole number of at least 1"]),
    ("iterations-negative", {"prompt": "a cat", "iterations": "-3"}, ["iterations must be a whole number of at least 1"]),
    ("iterations-words", {"prompt": "a cat", "iterations": "many"}, ["iterations must be a whole number, got 'many'"]),
    ("iterations-exponent", {"prompt": "a cat", "iterations": "1e3"}, ["iterations must be a whole number, got '1e3'"]),
    ("width-negative", {"prompt": "a cat", "width": "-5"}, ["size must be two positive whole numbers", "--size 256 256"]),
    ("width-zero", {"prompt": "a cat", "width": "0"}, ["size must be two positive whole numbers"]),
    ("width-huge", {"prompt": "a cat", "width": "20000", "height": "20000"}, ["larger than 4096", "GiB", "512 512"]),
    ("height-decimal", {"prompt": "a cat", "height": "1.5"}, ["height must be a whole number, got '1.5'"]),
    ("seed-negative", {"prompt": "a cat", "seed": "-1"}, ["seed must be a whole number from 0 to 2**63-1"]),
    ("seed-too-large", {"prompt": "a cat", "seed": str(2**64)}, ["seed must be a whole number from 0 to 2**63-1"]),
    ("seed-words", {"prompt": "a cat", "seed": "lucky"}, ["seed must be a whole number, got 'lucky'"]),
]  # fmt: skip


@pytest.fixture
def defaults(tiny_config):
    return tiny_config.replace(iterations=2, cutn=2, size=[32, 32], snapshots="last")


@pytest.mark.parametrize(("form", "says"), [c[1:] for c in FORMS], ids=[c[0] for c in FORMS])
def test_the_form_refuses_as_the_command_line_does(form, says, defaults):
    with pytest.raises(ConfigError) as caught:
        form_config(defaults, form)
    assert type(caught.value) is ConfigError
    for words in says:
        assert words in str(caught.value)


@pytest.fixture(scope="module")
def page(tmp_path_factory, tiny_model_dir):
    """One page for every form row (a server per row would cost more than the rows)."""
    from vqclip.config import RunConfig

    folder = tmp_path_factory.mktemp("page")
    defaults = RunConfig(
        prompt="", size=[32, 32], iterations=2, cutn=2, snapshots="last", device="cpu",
        vqgan_config=str(tiny_model_dir["vqgan_config"]),
        vqgan_checkpoint=str(tiny_model_dir["vqgan_checkpoint"]),
        clip_model=str(tiny_model_dir["clip"]), out=str(folder / "runs"),
    )  # fmt: skip
    queue = JobQueue(folder / "runs" / "queue.sqlite")
    for base in serve(queue, defaults):
        yield base, queue, folder


@pytest.mark.parametrize(("form", "says"), [c[1:] for c in FORMS], ids=[c[0] for c in FORMS])
def test_the_page_answers_400_with_the_message_and_queues_nothing(form, says, page):
    base, queue, folder = page
    before = tree(folder)
    code, body = post(f"{base}/add", **form)
    assert code == 400
    shown = html.unescape(body.split('<p class="error">')[1].split("</p>")[0])
    for words in says:
        assert words in shown
    assert queue.jobs() == []
    assert tree(folder) == before
    # what was typed is given back to correct, escaped (a prompt is never markup)
    assert html.escape(form.get("prompt", "")) in body


def test_the_page_escapes_a_prompt_that_is_markup(page):
    base, queue, _ = page
    code, body = post(f"{base}/add", prompt="<script>alert(1)</script>:1x")
    assert code == 400 and "<script>alert" not in body and "&lt;script&gt;" in body
    assert queue.jobs() == []


def test_queue_add_json_config_that_does_not_parse(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "s.json").write_text('{"prompt": "a cat",')
    assert main(["queue", "add", "--config", str(tmp_path / "s.json")]) == 2
    err = capsys.readouterr().err
    assert "cannot be read as JSON" in err and "Fix the file" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.json"]


# --- sweeps: their lists of prompts, styles and seeds ----------------------------------------

SWEEPS = [
    ("seeds-not-numbers", ["a cat", "--seeds", "one,two"], ["not a comma-separated list of whole numbers", "1,2,3"]),
    ("seed-negative", ["a cat", "--seeds", "1,-2"], ["seed must be a whole number from 0"]),
    ("styles-a-directory", ["a cat", "--styles", "{d}"], ["is a directory", "a text file, one per line"]),
    ("prompts-a-directory", ["--prompts", "{d}"], ["is a directory", "a text file, one per line"]),
    ("no-prompt", ["--seeds", "1"], ["A sweep needs at least one prompt", "--prompts FILE"]),
    ("a-bad-prompt-in-the-file", ["--prompts", "{d}/ideas.txt"], ["looks like a weight", "plain numbers"]),
    ("resume-not-a-sweep", ["--resume", "{d}"], ["is not a sweep folder", "sweep.json"]),
    ("flags-beside-resume", ["--resume", "{d}", "--seeds", "3", "--iterations", "9"], ["--resume finishes a sweep", "--seeds", "--iterations", "would be ignored"]),
    ("two-vary", ["a cat", "--vary", "lr=0.1,0.2", "--vary", "cutn=2,4"], ["--vary was given 2 times", "Keep one --vary"]),
    ("ray-without-ray", ["a cat", "--ray", "local"], ["Ray is not installed", "pip install"]),
    ("iterations-past-the-bound", ["a cat", "--iterations", "500000"], ["iterations 500,000 is more than", "100000 or fewer"]),
    ("a-model-file-damaged", ["a cat", "--vqgan-checkpoint", "{d}/ideas.txt"], ["ideas.txt"]),
]  # fmt: skip


@pytest.mark.parametrize(("argv", "says"), [c[1:] for c in SWEEPS], ids=[c[0] for c in SWEEPS])
def test_sweep_refuses_with_exit_2_and_makes_no_folder(
    argv, says, tiny_flags, tmp_path, capsys, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    (inputs / "ideas.txt").write_text("a lighthouse\nfog:1x\n")
    before = tree(tmp_path)
    args = [a.format(d=inputs) for a in argv]
    if "--ray" in args:
        monkeypatch.setitem(sys.modules, "ray", None)  # Ray not installed: import fails
    flags = [] if "--resume" in args else [*tiny_flags, "--iterations", "1", "--out", "runs"]
    code = main(["sweep", *flags, *args])
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.startswith("vqclip: error: ") and err.count("\n") == 1
    for words in says:
        assert words in err
    assert tree(tmp_path) == before
