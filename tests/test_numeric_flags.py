"""Every numeric flag of every subcommand, given zero, a negative number, NaN, infinity or a
number too large: refused with exit 2 and a one-line message naming the flag or the setting,
nothing written; or, where the value means something (documented in --help), accepted.

(`queue serve --port` and an upper bound on --iterations belong to the queue's own tests.)
"""

from __future__ import annotations

from pathlib import Path

import pytest

from vqclip.cli import main

HUGE = "9" * 400  # a whole number no float holds
BAD = ["nan", "inf", "-inf", "1e400", HUGE]


def tree(folder: Path) -> dict[str, bytes | None]:
    return {
        str(p.relative_to(folder)): (None if p.is_dir() else p.read_bytes())
        for p in sorted(folder.rglob("*"))
    }


@pytest.fixture
def work(a_run, tmp_path, monkeypatch, tiny_flags) -> Path:
    """The working directory (a write there shows in the tree): a copy of the run, a queue
    with one job."""
    import shutil

    monkeypatch.chdir(tmp_path)
    shutil.copytree(a_run, tmp_path / "run")
    assert main(["queue", "add", "a cat", "--queue", "q.sqlite", "--out", "out", *tiny_flags]) == 0
    return tmp_path


# (command, flag, values refused, words the message holds); the value goes after the flag
SMALL = ["--size", "32", "32", "--iterations", "1", "--cutn", "1", "--snapshots", "last"]


def small_run_except(flag: str | None) -> list[str]:
    """SMALL without ``flag`` and its values (the value under test takes their place)."""
    groups = [
        ["--size", "32", "32"],
        ["--iterations", "1"],
        ["--cutn", "1"],
        ["--snapshots", "last"],
    ]
    return [word for group in groups if group[0] != flag for word in group]


RUN_FLAGS = [
    ("--iterations", ["0", "-1", "1.5", "1000001", *BAD], "iterations"),
    ("--seed", ["-1", str(2**63), "1.5", *BAD], "seed"),
    ("--lr", ["0", "-0.1", *BAD], "lr"),
    ("--cutn", ["0", "-1", "2.5", "10001", *BAD], "cutn"),
    ("--cut-pow", ["0", "-1", *BAD], "cut_pow"),
    ("--tv-weight", ["-1", *BAD], "tv_weight"),
    ("--init-weight", ["-1", *BAD], "init_weight"),
    ("--clip-batch", ["-1", "0.5", "10001", *BAD], "clip_batch"),
    ("--noise-prompt-seed", ["-1", str(2**63), *BAD], "noise prompt seeds"),
    ("--noise-prompt-weight", ["nan", "inf", "-inf", "1e400", HUGE], "noise prompt weights"),
]
OTHER_FLAGS = [
    (["export", "run"], "--fps", ["0", "-1", "100.5", *BAD], "--fps"),
    (["export", "run"], "--hold", ["-1", "3601", *BAD], "--hold"),
    (["strip", "run"], "--columns", ["0", "-1", "1.5", "101", *BAD], "--columns"),
    (["strip", "run"], "--at", ["-1", "1.5", "nan", "inf", "1e400", HUGE], ("--at", "No snapshot")),
    (
        ["resume", "run", "--quiet"],
        "--iterations",
        ["0", "-1", "1.5", "1000001", *BAD],
        "--iterations",
    ),
    (["branch", "run", "--quiet"], "--at", ["-1", "1.5", "1000001", *BAD], "--at"),
    (["sweep", "a cat", "--quiet"], "--workers", ["0", "-1", "1.5", *BAD[:4]], "--workers"),
    (["sweep", "a cat", "--quiet"], "--batch", ["0", "-1", "1.5", *BAD[:4]], "--batch"),
    (
        ["sweep", "a cat", "--quiet"],
        "--seeds",
        ["-1", str(2**63), "1.5", *BAD],
        ("seed must be a whole number", "seeds", "whole numbers"),
    ),
    (["queue", "work", "--queue", "q.sqlite"], "--batch", ["0", "-1", *BAD[:4]], "--batch"),
]
# generate gets every value; queue add and sweep read the same settings the same way, so
# they get two values of each (the last two: never a plain zero)
CASES = [
    (command, flag, value, says)
    for command, some in (
        (["generate", "a cat"], slice(None)),
        (["queue", "add", "a cat", "--queue", "q.sqlite"], slice(-2, None)),
        (["sweep", "a cat", "--quiet"], slice(-2, None)),
    )  # fmt: skip
    for flag, values, says in RUN_FLAGS
    for value in values[some]
    if not (command[0] == "sweep" and flag == "--seed")  # a sweep's seeds are --seeds
] + [
    (command, flag, value, says) for command, flag, values, says in OTHER_FLAGS for value in values
]
CASES += [(["generate", "a cat"], "--size", [v, "64"], "size") for v in ["0", "-1", "4097", *BAD]]
CASES += [
    (["queue", "remove"], None, v, ("job", "argument id")) for v in ["0", "-1", "nan", "inf", HUGE]
]


def _id(case) -> str:
    command, flag, value, _ = case
    value = value if isinstance(value, str) else " ".join(value)
    return f"{command[0]}-{command[1] if command[0] == 'queue' else ''}{flag or ''}={value[:8]}"


@pytest.mark.parametrize(("command", "flag", "value", "says"), CASES, ids=map(_id, CASES))
def test_a_numeric_flag_out_of_range_is_refused_with_exit_2(
    command, flag, value, says, work, tiny_flags, capsys
):
    if isinstance(value, list):  # --size W H
        argv = [*command, flag, *value]
    else:  # --flag=-inf: argparse would read a lone -inf as an option
        argv = [*command, f"{flag}={value}" if flag else value]
    if command[0] in ("generate", "sweep") or command[:2] == ["queue", "add"]:
        argv += [*tiny_flags, "--out", "out", *small_run_except(flag)]
    before = tree(work)
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.startswith("vqclip: error: ") and err.count("\n") == 1, err
    says = (says,) if isinstance(says, str) else says  # the setting, or the flag, is named
    assert any(words in err for words in (*says, f"argument {flag}: invalid")), err
    assert "Traceback" not in err
    assert len(err) < 1500  # a value of hundreds of digits is not echoed whole
    assert tree(work) == before


@pytest.mark.parametrize(
    ("argv", "made"),
    [
        (["export", "run", "--hold", "0"], "run/animation.gif"),  # no hold on the last frame
        (["export", "run", "--fps", "100"], "run/animation.gif"),
        (["strip", "run", "--at", "0,2"], "run/strip_0_2.png"),  # 0: the starting image
        (["strip", "run", "--columns", "1"], "run/strip_0_1_2.png"),
    ],
)
def test_edge_values_that_mean_something_are_accepted(argv, made, work, capsys):
    assert main(argv) == 0, capsys.readouterr().err
    assert (work / made).is_file()


@pytest.mark.parametrize(
    "flags",
    [
        ["--clip-batch", "0"],  # 0: as many cutouts at a time as fit (--help says so)
        ["--tv-weight", "0", "--init-weight", "0"],  # 0: the term is off
        ["--seed", "0", "--noise-prompt-seed", "0"],  # 0 is a seed like any other
    ],
)
def test_zero_where_it_means_something_runs(flags, work, tiny_flags, capsys):
    code = main(["generate", "a cat", *SMALL, *tiny_flags, "--out", "out", "--quiet", *flags])
    assert code == 0, capsys.readouterr().err
    assert len(list((work / "out").glob("*/final.png"))) == 1
