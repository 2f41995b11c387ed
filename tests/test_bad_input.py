"""Bad input gets a one-paragraph error with exit 2 and writes nothing (issue 12's first finds)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from PIL import Image

from vqclip.cli import main


def tree(folder: Path) -> dict[str, str | None]:
    """Every path under folder with its bytes' sha256 (None for a folder)."""

    def digest(path: Path) -> str | None:
        return None if path.is_dir() else hashlib.sha256(path.read_bytes()).hexdigest()

    return {str(p.relative_to(folder)): digest(p) for p in sorted(folder.rglob("*"))}


def truncated_png(folder: Path) -> Path:
    path = folder / "cut.png"
    Image.new("RGB", (64, 64), (10, 200, 30)).save(path)
    path.write_bytes(path.read_bytes()[:120])  # the header survives, the pixels do not
    return path


def existing_file(folder: Path) -> Path:
    path = folder / "taken"
    path.write_text("not a directory")
    return path


def image(folder: Path, name: str, mode: str = "RGB", size=(64, 64), **save) -> Path:
    path = folder / name
    Image.new(mode, size).save(path, **save)
    return path


def animated_gif(folder: Path) -> Path:
    frames = [Image.new("RGB", (32, 32), c) for c in ("red", "green", "blue")]
    frames[0].save(folder / "anim.gif", save_all=True, append_images=frames[1:])
    return folder / "anim.gif"


def text_file(folder: Path, name: str = "notes.png") -> Path:
    (folder / name).write_text("this is not a picture")
    return folder / name


def written(folder: Path, name: str, data: str | bytes) -> Path:
    path = folder / name
    path.write_bytes(data if isinstance(data, bytes) else data.encode())
    return path


def bomb(folder: Path) -> Path:
    """A PNG whose header claims 20000x20000 pixels: Pillow refuses it before decoding."""
    from test_bad_input_api import png_bytes

    return written(folder, "bomb.png", png_bytes(20000, 20000))


P = "a lighthouse"
ZW = "\u200b\u200d\u2060"  # zero-width space, joiner, word joiner
# (id, prompt, extra flags given a temp folder, what the message must say)
CASES = [
    # prompts
    ("empty-prompt", "", lambda d: [], ["Nothing to aim for"]),
    ("whitespace-prompt", "   \t ", lambda d: [], ["Nothing to aim for"]),
    ("only-separators", " | | ", lambda d: [], ["Nothing to aim for"]),
    ("only-a-weight", ":2", lambda d: [], ["has a weight but no text"]),
    ("all-weights-zero", "cat:0", lambda d: [], ["weight 0", "Nothing to aim for"]),
    ("weight-missing", "a:", lambda d: [], ["weight"]),
    ("weight-not-a-number", "fog:1x", lambda d: [], ["looks like a weight"]),
    ("weight-and-two-stops", "a:1:2:3", lambda d: [], ["a:1:2:3"]),
    ("weight-nan", "a:nan", lambda d: [], ["weight"]),
    ("weight-inf", "a:inf", lambda d: [], ["weight"]),
    ("invisible-characters", ZW, lambda d: [], ["invisible"]),
    ("nul-in-prompt", "a\x00cat", lambda d: [], ["control character"]),
    ("control-character", "a\x07cat", lambda d: [], ["control character"]),
    ("giant-prompt", "word " * 20_000, lambda d: [], ["100000 characters", "shorter"]),
    # sizes and numbers
    ("size-zero", P, lambda d: ["--size", "0", "64"], ["size must be two positive whole numbers"]),
    ("size-negative", P, lambda d: ["--size", "-64", "64"], ["size"]),
    ("size-not-a-number", P, lambda d: ["--size", "big", "64"], ["invalid int value: 'big'"]),
    ("size-huge", P, lambda d: ["--size", "20000", "20000"], ["larger than 4096", "GiB of memory", "--size 512 512"]),
    ("size-below-one-latent-cell", P, lambda d: ["--size", "3", "3"], ["smaller than one latent cell", "at least 4"]),
    ("iterations-zero", P, lambda d: ["--iterations", "0"], ["iterations must be a whole number of at least 1"]),
    ("iterations-negative", P, lambda d: ["--iterations", "-5"], ["iterations"]),
    ("lr-zero", P, lambda d: ["--lr", "0"], ["lr (learning rate) must be a positive number"]),
    ("lr-negative", P, lambda d: ["--lr", "-0.1"], ["lr"]),
    ("lr-nan", P, lambda d: ["--lr", "nan"], ["lr"]),
    ("cutn-zero", P, lambda d: ["--cutn", "0"], ["cutn"]),
    ("seed-negative", P, lambda d: ["--seed", "-1"], ["seed must be a whole number"]),
    # choices
    ("unknown-optimiser", P, lambda d: ["--optimizer", "lion"], ["invalid choice: 'lion'"]),
    ("unknown-device", P, lambda d: ["--device", "tpu"], ["invalid choice: 'tpu'"]),
    ("cuda-without-a-gpu", P, lambda d: ["--device", "cuda"], ["cannot use a GPU"]),
    ("unknown-clip-file", P, lambda d: ["--clip", str(d / "nope.pt")], ["neither a known name nor an existing file"]),
    ("fp16-on-the-cpu", P, lambda d: ["--precision", "fp16"], ["fp16 was asked for on the CPU", "fp32"]),
    # schedules
    ("empty-snapshot-schedule", P, lambda d: ["--snapshots", ",,,"], ["names no iteration", "'last'"]),
    ("negative-snapshot", P, lambda d: ["--snapshots", "-5"], ["negative"]),
    ("unparsable-snapshot", P, lambda d: ["--snapshots", "often"], ["not understood"]),
    ("snapshot-beyond-the-run", P, lambda d: ["--snapshots", "500"], ["beyond", "500"]),
    # files
    ("missing-init-image", P, lambda d: ["--init-image", str(d / "nope.png")], ["does not exist"]),
    ("init-image-is-a-directory", P, lambda d: ["--init-image", str(d)], ["is a directory, not a file"]),
    ("init-image-not-a-picture", P, lambda d: ["--init-image", str(text_file(d))], ["could not be read as a picture"]),
    ("truncated-init-image", P, lambda d: ["--init-image", str(truncated_png(d))], ["init_image", "could not be read as a picture", "save it again"]),
    ("truncated-image-prompt", P, lambda d: ["--image-prompt", f"{truncated_png(d)}:0.5"], ["image prompt", "could not be read"]),
    ("missing-image-prompt", P, lambda d: ["--image-prompt", str(d / "gone.png")], ["does not exist"]),
    ("out-is-a-file", P, lambda d: ["--out", str(existing_file(d))], ["is a file, not a directory"]),
    ("missing-config-file", P, lambda d: ["--config", str(d / "none.yaml")], ["does not exist"]),
    ("config-file-is-a-directory", P, lambda d: ["--config", str(d)], ["is a directory", "JSON or YAML file"]),
    ("config-file-broken-json", P, lambda d: ["--config", str(written(d, "s.json", '{"lr": '))], ["cannot be read as JSON", "Fix the file"]),
    ("config-file-broken-yaml", P, lambda d: ["--config", str(written(d, "s.yaml", "lr: [1,"))], ["cannot be read as YAML", "Fix the file"]),
    ("config-file-not-utf8", P, lambda d: ["--config", str(written(d, "s.json", b"\xff\xfe"))], ["cannot be read as JSON"]),
    ("config-file-unknown-setting", P, lambda d: ["--config", str(written(d, "s.json", '{"steps": 9}'))], ["Unknown setting(s) steps", "Check the spelling"]),
    ("image-prompt-is-a-directory", P, lambda d: ["--image-prompt", str(d)], ["is a directory, not a file"]),
    ("vqgan-config-is-a-directory", P, lambda d: ["--vqgan-config", str(d)], ["vqgan_config", "is a directory"]),
    ("init-image-decompression-bomb", P, lambda d: ["--init-image", str(bomb(d))], ["could not be read as a picture", "DecompressionBombError"]),
    ("name-climbs-out", P, lambda d: ["--name", "../../escaped"], ["holds /", "plain folder name"]),
    ("name-is-absolute", P, lambda d: ["--name", str(d / "abs")], ["holds /", "plain folder name"]),
    ("name-reserved-on-windows", P, lambda d: ["--name", "NUL"], ["device name on Windows"]),
    ("name-300-characters", P, lambda d: ["--name", "n" * 300], ["300 characters long"]),
]  # fmt: skip

# Pictures people really have that must be accepted (converted to RGB), not refused.
ODD_BUT_FINE = {
    "one-pixel": lambda d: image(d, "dot.png", size=(1, 1)),
    "16-bit": lambda d: image(d, "deep.png", mode="I;16"),
    "cmyk": lambda d: image(d, "print.jpg", mode="CMYK"),
    "palette": lambda d: image(d, "pal.png", mode="P"),
    "alpha": lambda d: image(d, "alpha.png", mode="RGBA"),
    "animated": animated_gif,
}


@pytest.mark.parametrize(
    ("prompt", "flags", "says"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_cli_refuses_with_exit_2_and_writes_nothing(
    prompt, flags, says, tiny_flags, tmp_path, capsys, monkeypatch
):
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    given = flags(inputs)
    out = ["--out", str(tmp_path / "runs")] if "--out" not in given else []
    base = [f for f in tiny_flags if f != "fp32" and f != "--precision"]
    if "--precision" not in given:
        base += ["--precision", "fp32"]
    monkeypatch.chdir(tmp_path)  # so a write to the working directory shows in the tree too
    before = tree(tmp_path)

    code = main(["generate", prompt, *base, "--size", "32", "32", "--iterations", "2",
                 *out, *given])  # fmt: skip

    err = capsys.readouterr().err
    assert code == 2, err
    assert err.startswith("vqclip: error: ") and err.count("\n") == 1  # one paragraph
    assert "Traceback" not in err
    for words in says:
        assert words in err
    assert tree(tmp_path) == before  # no runs/, nothing added, changed or removed


def test_a_size_that_is_rounded_is_reported(tiny_flags, tmp_path, capsys):
    code = main(["generate", "a lighthouse", *tiny_flags, "--size", "7", "7", "--iterations", "1",
                 "--out", str(tmp_path / "runs"), "--quiet"])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 0
    assert "vqclip: notice: Size 7x7 is not a multiple" in err and "using 8x8" in err


@pytest.mark.parametrize("make", ODD_BUT_FINE.values(), ids=ODD_BUT_FINE.keys())
def test_odd_pictures_are_read_as_rgb(make, tiny_flags, tmp_path, capsys):
    picture = make(tmp_path)
    code = main(["generate", "a lighthouse", *tiny_flags, "--size", "32", "32", "--iterations",
                 "1", "--init-image", str(picture), "--image-prompt", str(picture),
                 "--out", str(tmp_path / "runs"), "--quiet"])  # fmt: skip
    assert code == 0, capsys.readouterr().err
