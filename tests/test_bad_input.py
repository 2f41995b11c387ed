"""Bad input gets a one-paragraph error with exit 2 and writes nothing (issue 12's first finds)."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from vqclip.cli import main


def truncated_png(folder: Path) -> Path:
    path = folder / "cut.png"
    Image.new("RGB", (64, 64), (10, 200, 30)).save(path)
    path.write_bytes(path.read_bytes()[:120])  # the header survives, the pixels do not
    return path


def existing_file(folder: Path) -> Path:
    path = folder / "taken"
    path.write_text("not a directory")
    return path


# (id, extra flags given a temp folder, what the message must say)
CASES = [
    ("size-below-one-latent-cell", lambda d: ["--size", "3", "3"], ["smaller than one latent cell", "at least 4"]),
    ("empty-snapshot-schedule", lambda d: ["--snapshots", ",,,"], ["names no iteration", "'last'"]),
    ("truncated-init-image", lambda d: ["--init-image", str(truncated_png(d))], ["init_image", "could not be read as a picture", "save it again"]),
    ("truncated-image-prompt", lambda d: ["--image-prompt", f"{truncated_png(d)}:0.5"], ["image prompt", "could not be read"]),
    ("out-is-a-file", lambda d: ["--out", str(existing_file(d))], ["is a file, not a directory"]),
    ("fp16-on-the-cpu", lambda d: ["--precision", "fp16"], ["fp16 was asked for on the CPU", "fp32"]),
]  # fmt: skip


@pytest.mark.parametrize(("flags", "says"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_cli_refuses_with_exit_2_and_writes_nothing(flags, says, tiny_flags, tmp_path, capsys):
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    given = flags(inputs)
    out = ["--out", str(tmp_path / "runs")] if "--out" not in given else []
    base = [f for f in tiny_flags if f != "fp32" and f != "--precision"]
    if "--precision" not in given:
        base += ["--precision", "fp32"]
    before = sorted(p.name for p in inputs.iterdir())

    code = main(["generate", "a lighthouse", *base, "--size", "32", "32", "--iterations", "2",
                 *out, *given])  # fmt: skip

    err = capsys.readouterr().err
    assert code == 2, err
    assert err.startswith("vqclip: error: ") and err.count("\n") == 1  # one paragraph
    assert "Traceback" not in err
    for words in says:
        assert words in err
    assert not (tmp_path / "runs").exists()
    assert sorted(p.name for p in inputs.iterdir()) == before


def test_a_size_that_is_rounded_is_reported(tiny_flags, tmp_path, capsys):
    code = main(["generate", "a lighthouse", *tiny_flags, "--size", "7", "7", "--iterations", "1",
                 "--out", str(tmp_path / "runs"), "--quiet"])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 0
    assert "vqclip: notice: Size 7x7 is not a multiple" in err and "using 8x8" in err
