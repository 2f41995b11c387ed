"""Recipes of an unexpected shape at every place one is read: valid JSON that holds what
vqclip never writes (a key missing, a list where an object belongs, a number where text
belongs, null, a number too large) gets a one-paragraph error, never a traceback.

The entry points: `vqclip info` and `reproduce` (a PNG's recipe), `resume` and `branch` (a run
directory's run.json), `generate --config run.json`, the Python API of each, and the panel's
list of runs (state.read_run). Each is given every shape below; nothing is written.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
from PIL import Image, PngImagePlugin

import vqclip
from vqclip.config import ConfigError
from vqclip.export import ExportError, read_recipe
from vqclip.state import RunError, read_run


def _set(key, value):
    return lambda r: {**r, key: value}


def _setting(key, value):
    return lambda r: {**r, "config": {**r["config"], key: value}}


def _drop(key):
    return lambda r: {k: v for k, v in r.items() if k != key}


def _noise(seeds, weights):
    return lambda r: {
        **r,
        "config": {**r["config"], "noise_prompt_seeds": seeds, "noise_prompt_weights": weights},
    }


HUGE = 10**400  # a whole number no float holds
# (id, change to a record, "shape" when the record itself is malformed, so every reader
#  refuses it, or "value" when it is well formed but no run can use it: `info` shows it)
SHAPES = [
    ("no-config", _drop("config"), "shape"),
    ("no-iteration", _drop("iteration"), "shape"),
    ("config-a-list", _set("config", ["a unicorn"]), "shape"),
    ("config-null", _set("config", None), "shape"),
    ("config-a-number", _set("config", 7), "shape"),
    ("prompt-a-number", _setting("prompt", 42), "shape"),
    ("prompt-a-list", _setting("prompt", ["a", "b"]), "shape"),
    ("size-a-number", _setting("size", 64), "shape"),
    ("size-null", _setting("size", None), "shape"),
    ("size-of-text", _setting("size", ["64", "64"]), "shape"),
    ("size-three-numbers", _setting("size", [32, 32, 32]), "shape"),
    ("iterations-text", _setting("iterations", "300"), "shape"),
    ("iterations-null", _setting("iterations", None), "shape"),
    ("iterations-a-fraction", _setting("iterations", 2.5), "shape"),
    ("iterations-infinite", _setting("iterations", float("inf")), "shape"),
    ("iterations-true", _setting("iterations", True), "shape"),
    ("lr-text", _setting("lr", "0.1"), "shape"),
    ("seed-text", _setting("seed", "7"), "shape"),
    ("augment-a-number", _setting("augment", 1), "shape"),
    ("optimizer-a-list", _setting("optimizer", ["adam"]), "shape"),
    ("image-prompts-text", _setting("image_prompts", "a.png"), "shape"),
    ("image-prompts-numbers", _setting("image_prompts", [1, 2]), "shape"),
    ("noise-seeds-an-object", _setting("noise_prompt_seeds", {"a": 1}), "shape"),
    ("clip-model-null", _setting("clip_model", None), "shape"),
    ("snapshots-a-number", _setting("snapshots", 5), "shape"),
    ("vqgan-a-list", _setting("vqgan", ["x"]), "shape"),
    ("iteration-text", _set("iteration", "2"), "shape"),
    ("iteration-negative", _set("iteration", -1), "shape"),
    ("threads-text", _set("threads", "1"), "shape"),
    ("threads-huge", _set("threads", 10**9), "shape"),
    ("plan-a-list", _set("plan", [1, 2]), "shape"),
    ("plan-batch-text", lambda r: {**r, "plan": {**r["plan"], "clip_batch": "2"}}, "shape"),
    ("plan-changes-of-numbers", lambda r: {**r, "plan": {**r["plan"], "changes": [1]}}, "shape"),
    ("models-a-list", _set("models", ["vqgan"]), "shape"),
    ("models-digest-a-number", _set("models", {"vqgan": {"sha256": {"checkpoint": 5}}}), "shape"),
    ("parent-a-number", _set("parent", 3), "shape"),
    ("parent-recipe-a-list", _set("parent", {"run": "x", "iteration": 1, "recipe": []}), "shape"),
    ("iterations-huge", _setting("iterations", float(10**300) * 10**10), "shape"),
    ("iterations-negative", _setting("iterations", -5), "value"),
    ("seed-huge", _setting("seed", HUGE), "value"),
    ("size-huge", _setting("size", [HUGE, HUGE]), "value"),
    ("lr-huge", _setting("lr", HUGE), "value"),
    ("noise-seed-huge", _setting("noise_prompt_seeds", [HUGE]), "value"),
    ("noise-weight-nan", _noise([1], [float("nan")]), "value"),
]
IDS = [s[0] for s in SHAPES]


def tree(folder: Path) -> dict[str, bytes | None]:
    return {
        str(p.relative_to(folder)): (None if p.is_dir() else p.read_bytes())
        for p in sorted(folder.rglob("*"))
    }


def damaged_run(a_run: Path, folder: Path, change) -> Path:
    run = Path(shutil.copytree(a_run, folder / a_run.name))
    record = json.loads((run / "run.json").read_text())
    (run / "run.json").write_text(json.dumps(change(record)))
    return run


def damaged_png(a_run: Path, folder: Path, change) -> Path:
    with Image.open(a_run / "final.png") as im:
        recipe = json.loads(im.text["vqclip"])
    info = PngImagePlugin.PngInfo()
    info.add_itxt("vqclip", json.dumps(change(recipe)))
    Image.new("RGB", (32, 32)).save(folder / "odd.png", pnginfo=info)
    return folder / "odd.png"


@pytest.fixture
def work(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)  # a write to the working directory shows in the tree
    return tmp_path


def one_paragraph(error: BaseException) -> str:
    message = str(error)
    assert type(error) in (ConfigError, RunError, ExportError), repr(error)
    assert message and "\n" not in message and "Traceback" not in message
    assert len(message) < 1500, message  # a pasted huge value is cut, not echoed whole
    return message


@pytest.mark.parametrize(("change", "kind"), [s[1:] for s in SHAPES], ids=IDS)
def test_the_api_refuses_each_shape_at_each_entry_point(change, kind, a_run, tiny_models, work):
    """resume, branch and reproduce through the Python API, read_recipe (what `info` shows)
    and read_run (what the panel's run list reads): a clear error and nothing written."""
    run = damaged_run(a_run, work, change)
    png = damaged_png(a_run, work, change)
    before = tree(work)
    calls = {
        "resume": lambda: vqclip.resume(run, tiny_models, progress=False),
        "branch": lambda: vqclip.branch(run, 1, tiny_models, progress=False),
        "reproduce": lambda: vqclip.reproduce(png, work / "again", tiny_models),
    }
    if kind == "shape":
        calls |= {"read_recipe": lambda: read_recipe(png), "read_run": lambda: read_run(run)}
    for name, call in calls.items():
        with pytest.raises(Exception) as caught:
            call()
        one_paragraph(caught.value)
        assert tree(work) == before, name


def _cli(argv: list[str], capsys) -> tuple[int, str, str]:
    from vqclip.cli import main

    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize(("change", "kind"), [s[1:] for s in SHAPES], ids=IDS)
def test_the_cli_refuses_each_shape_with_exit_2(change, kind, a_run, work, capsys):
    run = damaged_run(a_run, work, change)
    png = damaged_png(a_run, work, change)
    before = tree(work)
    commands = {
        "resume": ["resume", str(run), "--quiet"],
        "branch": ["branch", str(run), "--at", "1", "--quiet"],
        "reproduce": ["reproduce", str(png), "--out", str(work / "again")],
        "config": ["generate", "--config", str(run / "run.json"), "--quiet"],
        "info": ["info", str(png)],
    }
    record = json.loads((a_run / "run.json").read_text())
    if change(record).get("config", 0) == record["config"]:
        del commands["config"]  # --config reads only the settings, which this leaves alone
    for name, argv in commands.items():
        code, out, err = _cli(argv, capsys)
        if name == "info" and kind == "value":
            assert code == 0 and "Steps" in out, err  # shown as it is; running it refuses
            continue
        assert code == 2, (name, err)
        assert err.startswith("vqclip: error: ") and err.count("\n") == 1, (name, err)
        assert "Traceback" not in err
        assert tree(work) == before, name


def test_a_number_of_thousands_of_digits_is_refused_not_a_traceback(a_run, work, capsys):
    """Python refuses to read an int of more than 4300 digits (ValueError): the JSON is
    then as unreadable as a torn file, and said so."""
    run = Path(shutil.copytree(a_run, work / a_run.name))
    text = (run / "run.json").read_text()
    (run / "run.json").write_text(text.replace('"seed": 3', '"seed": 1' + "0" * 5000, 1))
    assert '"seed": 1000' in (run / "run.json").read_text()
    code, _, err = _cli(["resume", str(run), "--quiet"], capsys)
    assert code == 2 and "is not valid JSON" in err and err.count("\n") == 1
    with Image.open(a_run / "final.png") as im:
        recipe = im.text["vqclip"]
    info = PngImagePlugin.PngInfo()
    long = re.sub(r'"seed": ?3', '"seed": 1' + "0" * 5000, recipe, count=1)
    assert long != recipe
    info.add_itxt("vqclip", long)
    Image.new("RGB", (8, 8)).save(work / "long.png", pnginfo=info)
    code, _, err = _cli(["info", str(work / "long.png")], capsys)
    assert code == 2 and "its JSON is corrupt" in err and err.count("\n") == 1


@pytest.mark.parametrize(
    ("changes", "field", "says"),
    [
        ({"size": 64}, "size", "size must be two positive whole numbers"),
        ({"prompt": 42}, "prompt", "prompt must be text, got 42 (a number)"),
        ({"iterations": "300"}, "iterations", "iterations must be a whole number, got '300'"),
        ({"seed": 2.0}, "seed", "seed must be a whole number, or empty for a random one"),
        ({"image_prompts": "a.png"}, "image_prompts", "must be a list of text, got 'a.png'"),
        ({"augment": "yes"}, "augment", "augment must be true or false"),
        ({"lr": None}, "lr", "lr must be a number, got None (null)"),
        ({"init_image": 3}, "init_image", "init_image must be text (or empty), got 3"),
        ({"noise_prompt_weights": ["1"]}, "noise_prompt_weights", "a list of numbers"),
        ({"size": [HUGE, 1]}, "size", "is larger than 4096 pixels"),
        ({"lr": HUGE}, "lr", "lr (learning rate) must be a positive number"),
        ({"noise_prompt_seeds": [-1]}, "noise_prompt_seeds", "from 0 to 2**63-1"),
    ],
)
def test_each_setting_of_the_wrong_kind_is_named(changes, field, says):
    config = vqclip.RunConfig(prompt="a unicorn").replace(**changes)
    with pytest.raises(ConfigError) as caught:
        config.validate()
    assert caught.value.field == field and says in str(caught.value)
    one_paragraph(caught.value)


@pytest.mark.parametrize("data", [[], "prompt: x", 7, None])
def test_settings_that_are_no_mapping_are_refused(data):
    with pytest.raises(ConfigError, match="must be a mapping of setting: value"):
        vqclip.RunConfig.from_dict(data)


def test_a_long_value_is_cut_in_the_message():
    with pytest.raises(ConfigError) as caught:
        vqclip.RunConfig.from_dict({"prompt": list(range(10_000))})
    assert len(str(caught.value)) < 400 and "…" in str(caught.value)
