"""Prompts become folder names (runs, sweep candidates, queue jobs, sweep folders): whatever a
prompt holds, the name is one plain folder inside the output directory, valid on every
system. Names given outright (--name) are checked, not cleaned: see test_bad_input_api."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_bad_input_api import tree

from vqclip.cli import main
from vqclip.config import ConfigError, check_name, slug
from vqclip.observers import default_run_name, generate
from vqclip.queue import Job
from vqclip.queue.worker import job_config
from vqclip.state import RunError, new_run_dir
from vqclip.sweep import expand, start_sweep

HOSTILE = {
    "parent-dirs": "../../../etc/passwd",
    "absolute": "/etc/passwd",
    "dot-dot": "..",
    "dot": ".",
    "windows-path": "C:\\Windows\\System32\\config",
    "unc-path": "\\\\server\\share\\x",
    "home": "~/.ssh/id_rsa",
    "reserved-con": "CON",
    "reserved-nul": "nul",
    "reserved-com1": "COM1",
    "reserved-with-extension": "LPT9.txt",
    "glob-characters": "*?[]",
    "shell": "$(rm -rf ~) `id` $HOME",
    "300-characters": "x" * 300,
    "300-accented": "é" * 300,
    "emoji-only": "💚💚💚",
    "emoji-prompts": "🌊:1 | 🔥:-1",
    "right-to-left-override": "abc\u202egpj.exe",
    "trailing-dots-and-spaces": "a cat. . .  ",
}


def assert_safe(name: str, out: Path) -> None:
    assert check_name(name) == name  # plain, not reserved, at most 100 characters
    run = new_run_dir(out, name)
    assert run.parent == out and run.resolve().parent == out.resolve()


@pytest.fixture
def out(tmp_path: Path) -> Path:
    (tmp_path / "out").mkdir()
    return tmp_path / "out"


@pytest.mark.parametrize("prompt", HOSTILE.values(), ids=HOSTILE.keys())
def test_run_names_from_prompts_stay_inside_out(prompt, tiny_config, out, tmp_path):
    config = tiny_config.replace(prompt=prompt, seed=12345678901234)
    before = {p for p in tmp_path.iterdir()}
    assert_safe(default_run_name(config), out)
    assert_safe(job_config(Job(4321, "queued", config, None, None, None, "", "")).name, out)
    for candidate in expand(config, [prompt], ["", "painting", "../style"], [1, 2**62]):
        assert_safe(candidate.config.name, out)
    assert {p for p in tmp_path.iterdir()} == before  # every name landed inside out
    assert len(list(out.iterdir())) == 1 + 1 + 6


@pytest.mark.parametrize("prompt", HOSTILE.values(), ids=HOSTILE.keys())
def test_sweep_folders_from_prompts_stay_inside_out(prompt, tiny_config, out):
    folder = start_sweep(tiny_config.replace(out=str(out)), [prompt], [""], [1])
    assert folder.parent == out and check_name(folder.name) == folder.name


def test_slug_keeps_words_and_drops_everything_else():
    assert slug("Oregon 💚 painting") == "oregon-painting"
    assert (
        slug("Attack ships on fire off the shoulder of Orion")
        == "attack-ships-on-fire-off-the-shoulder-of"
    )
    assert slug("💚💚💚") == slug("../..") == slug("/") == "run"
    assert slug("a\x00b/c") == "abc"
    assert len(slug("é" * 300)) == 40


def test_a_run_of_a_hostile_prompt_is_written_inside_out(tiny_config, tiny_models, tmp_path):
    config = tiny_config.replace(prompt="../../escaped 💚", iterations=1, snapshots="last")
    result = generate(config, tiny_models, progress=False)
    assert result.run_dir.parent == Path(config.out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["runs"]
    assert "-escaped-s7" in result.run_dir.name


def test_new_run_dir_refuses_a_name_that_is_a_path(out):
    for name in ("../x", "/abs", "a/b", ".", ".."):
        with pytest.raises(RunError, match="not a plain folder name"):
            new_run_dir(out, name)
    assert list(out.iterdir()) == []


def test_a_sweep_folder_name_that_is_a_path_is_refused(tiny_config, out):
    with pytest.raises(ConfigError, match="plain folder name"):
        start_sweep(tiny_config.replace(out=str(out)), ["a cat"], [""], [1], name="../x")
    assert list(out.iterdir()) == []


@pytest.mark.parametrize("name", ["../escaped", "/tmp/abs", "CON", "a\\b", "."])
def test_cli_sweep_and_generate_refuse_a_name_that_is_a_path(
    name, tiny_flags, tmp_path, capsys, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    before = tree(tmp_path)
    for command in ("sweep", "generate"):
        code = main([command, "a cat", *tiny_flags, "--size", "32", "32", "--iterations", "1",
                     "--out", str(tmp_path / "runs"), "--name", name])  # fmt: skip
        err = capsys.readouterr().err
        assert code == 2, err
        assert "plain folder name" in err and err.count("\n") == 1
    assert tree(tmp_path) == before
