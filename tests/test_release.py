"""scripts/release.sh OWNER, on a throw-away repository made of this checkout's README,
notebooks and version: the badges and every notebook's REPO name the account, REF is
checked against the version, the commit and the tag are made; a bad call changes nothing."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

import vqclip

ROOT = Path(__file__).parents[1]
SCRIPT = ROOT / "scripts" / "release.sh"
GIT = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.com",
       "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.com"}  # fmt: skip


def git(repo: Path, *args: str) -> str:
    env = {**os.environ, **GIT}
    return subprocess.run(
        ["git", *args], cwd=repo, env=env, check=True, capture_output=True, text=True
    ).stdout


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """A fresh repository holding what release.sh reads and writes, as this checkout has it
    (REPO and the badges still name the placeholder OWNER)."""
    repo = tmp_path / "clone"
    for name in ["README.md", "vqclip/__init__.py", *(
        p.relative_to(ROOT).as_posix() for p in (ROOT / "notebooks").glob("*.ipynb")
    )]:  # fmt: skip
        (repo / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / name, repo / name)
    git(repo, "init", "-q")
    git(repo, "add", ".")
    git(repo, "commit", "-q", "-m", "start")
    return repo


def release(repo: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, **GIT}
    return subprocess.run(
        ["bash", str(SCRIPT), *args], cwd=repo, env=env, capture_output=True, text=True
    )


def setup_cells(repo: Path) -> set[str]:
    cells = set()
    for nb in (repo / "notebooks").glob("*.ipynb"):
        code = [c for c in json.loads(nb.read_text())["cells"] if c["cell_type"] == "code"]
        cells.add("".join(code[0]["source"]))
    return cells


def test_release_writes_the_account_everywhere_and_tags_the_version(repo):
    done = release(repo, "alice-b")
    assert done.returncode == 0, done.stderr
    tag = f"v{vqclip.__version__}"
    assert f"Tagged {tag}" in done.stdout
    assert git(repo, "tag").split() == [tag]
    assert git(repo, "status", "--porcelain") == ""  # committed
    readme = (repo / "README.md").read_text()
    assert "github/OWNER/vqclip" not in readme
    badges = readme.count("colab.research.google.com/github/alice-b/vqclip/blob/main/notebooks/")
    assert badges == len(list((repo / "notebooks").glob("*.ipynb"))) == 4
    (setup,) = setup_cells(repo)  # still one set-up cell, shared
    assert 'REPO = "https://github.com/alice-b/vqclip"' in setup
    for nb in (repo / "notebooks").glob("*.ipynb"):
        text = nb.read_text()
        json.loads(text)  # still a notebook
        assert (
            f"colab.research.google.com/github/alice-b/vqclip/blob/main/notebooks/{nb.name}" in text
        )


@pytest.mark.parametrize(
    "args, words",
    [
        ([], "give the GitHub account"),
        (["a/b"], "is not a GitHub account name"),
        (["-alice"], "is not a GitHub account name"),
    ],
)
def test_release_refuses_a_bad_name_and_changes_nothing(repo, args, words):
    done = release(repo, *args)
    assert done.returncode == 2 and words in done.stderr
    assert git(repo, "tag") == "" and git(repo, "status", "--porcelain") == ""


def test_release_refuses_a_ref_that_is_not_the_version_or_a_dirty_tree(repo):
    nb = repo / "notebooks" / "sweep.ipynb"
    nb.write_text(
        nb.read_text().replace(f'REF = \\"v{vqclip.__version__}\\"', 'REF = \\"v0.0.9\\"')
    )
    done = release(repo, "alice")
    assert done.returncode == 2 and "uncommitted changes" in done.stderr
    git(repo, "commit", "-q", "-am", "an old REF")
    done = release(repo, "alice")
    assert done.returncode == 2 and "sweep.ipynb does not pin REF" in done.stderr
    assert git(repo, "tag") == "" and "OWNER/vqclip" in nb.read_text()


def test_release_refuses_an_existing_tag(repo):
    git(repo, "tag", f"v{vqclip.__version__}")
    done = release(repo, "alice")
    assert done.returncode == 2 and "already exists" in done.stderr
    assert "github/OWNER/vqclip" in (repo / "README.md").read_text()
