"""Bad input through the Python API: generate, RunConfig.validate, resume and reproduce.

Each row names the exact error type and words that say what is wrong and how to fix it;
every call must leave the folder it works in exactly as it was (nothing written, nothing
half-written), and a run directory given to resume byte for byte as it was.
"""

from __future__ import annotations

import json
import shutil
import struct
import zlib
from pathlib import Path

import pytest
import torch
from PIL import Image, PngImagePlugin

import vqclip
from vqclip import state
from vqclip.config import ConfigError, decoder_floor_bytes
from vqclip.export import ExportError
from vqclip.memory import DoesNotFit
from vqclip.models import ModelError
from vqclip.state import RunError


def tree(folder: Path) -> dict[str, bytes | None]:
    """Every path under folder with its bytes (None for a directory): what a call changed."""
    return {
        str(p.relative_to(folder)): (None if p.is_dir() else p.read_bytes())
        for p in sorted(folder.rglob("*"))
    }


def png_bytes(width: int, height: int, mode: str = "RGB") -> bytes:
    """A PNG whose header claims width x height (no pixels behind it): a decompression bomb."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b""))
        + chunk(b"IEND", b"")
    )


def truncated_png(d: Path) -> str:
    Image.new("RGB", (64, 64), (10, 200, 30)).save(d / "cut.png")
    (d / "cut.png").write_bytes((d / "cut.png").read_bytes()[:120])
    return str(d / "cut.png")


def text_file(d: Path) -> str:
    (d / "notes.png").write_text("this is not a picture")
    return str(d / "notes.png")


def bomb(d: Path) -> str:
    (d / "bomb.png").write_bytes(png_bytes(20000, 20000))
    return str(d / "bomb.png")


def a_file(d: Path) -> str:
    (d / "taken").write_text("not a directory")
    return str(d / "taken")


FIX_SIZE = "Try --size 256 256"
# (id, changes given the inputs folder, the exact error type, words of the problem and the
#  fix, "validate" when RunConfig.validate refuses it, "run" when only preparing the run can)
CASES = [
    # prompts
    ("empty-prompt", lambda d: {"prompt": ""}, ConfigError, ["Nothing to aim for", "give a text prompt"], "validate"),
    ("whitespace-prompt", lambda d: {"prompt": " \t\n "}, ConfigError, ["Nothing to aim for", "give a text prompt"], "validate"),
    ("only-separators", lambda d: {"prompt": "| | |"}, ConfigError, ["Nothing to aim for", "give a text prompt"], "validate"),
    ("only-a-weight", lambda d: {"prompt": ":2"}, ConfigError, ["has a weight but no text", "Write 'text:weight'"], "validate"),
    ("all-weights-zero", lambda d: {"prompt": "cat:0 | dog:0"}, ConfigError, ["every prompt has weight 0", "other than 0"], "validate"),
    ("weight-missing", lambda d: {"prompt": "a:"}, ConfigError, ["ends in ':' with no weight", "leave the colon out"], "validate"),
    ("weight-not-a-number", lambda d: {"prompt": "fog:1x"}, ConfigError, ["looks like a weight but is not a number", "plain numbers"], "validate"),
    ("weight-and-two-stops", lambda d: {"prompt": "a:1:2:3"}, ConfigError, ["'a:1:2:3'", "plain numbers"], "validate"),
    ("weight-nan", lambda d: {"prompt": "a:nan"}, ConfigError, ["weight 'nan'", "finite numbers such as 1"], "validate"),
    ("weight-inf", lambda d: {"prompt": "a:-inf"}, ConfigError, ["weight '-inf'", "finite numbers such as 1"], "validate"),
    ("invisible-characters", lambda d: {"prompt": "\u200b\u200d\u2060"}, ConfigError, ["only invisible characters", "Type visible words"], "validate"),
    ("nul-in-prompt", lambda d: {"prompt": "a\x00cat"}, ConfigError, ["control character U+0000", "Type the prompt again"], "validate"),
    ("escape-in-prompt", lambda d: {"prompt": "a \x1b[31mred\x1b[0m cat"}, ConfigError, ["control character U+001B", "plain text"], "validate"),
    ("giant-prompt", lambda d: {"prompt": "word " * 20_000}, ConfigError, ["100000 characters", "shorter prompt"], "validate"),
    # sizes and numbers
    ("size-zero", lambda d: {"size": [0, 64]}, ConfigError, ["size must be two positive whole numbers", FIX_SIZE], "validate"),
    ("size-negative", lambda d: {"size": [-64, 64]}, ConfigError, ["size must be two positive", FIX_SIZE], "validate"),
    ("size-not-a-number", lambda d: {"size": ["big", 64]}, ConfigError, ["'big'", FIX_SIZE], "validate"),
    ("size-one-number", lambda d: {"size": [64]}, ConfigError, ["[64]", FIX_SIZE], "validate"),
    ("size-a-float", lambda d: {"size": [64.5, 64]}, ConfigError, ["64.5", FIX_SIZE], "validate"),
    ("size-huge", lambda d: {"size": [20000, 20000]}, ConfigError, ["20000x20000 is larger than 4096", "GiB", "--size 512 512"], "validate"),
    ("size-below-one-latent-cell", lambda d: {"size": [3, 3]}, ConfigError, ["smaller than one latent cell", "at least 4"], "run"),
    ("iterations-zero", lambda d: {"iterations": 0}, ConfigError, ["iterations must be a whole number of at least 1"], "validate"),
    ("iterations-negative", lambda d: {"iterations": -5}, ConfigError, ["iterations must be a whole number of at least 1"], "validate"),
    ("iterations-as-text", lambda d: {"iterations": "300"}, ConfigError, ["iterations must be a whole number", "'300'"], "validate"),
    ("lr-zero", lambda d: {"lr": 0.0}, ConfigError, ["lr (learning rate) must be a positive number", "0.1 is typical"], "validate"),
    ("lr-negative", lambda d: {"lr": -0.1}, ConfigError, ["lr (learning rate) must be a positive", "0.1 is typical"], "validate"),
    ("lr-nan", lambda d: {"lr": float("nan")}, ConfigError, ["lr (learning rate) must be a positive", "0.1 is typical"], "validate"),
    ("lr-inf", lambda d: {"lr": float("inf")}, ConfigError, ["lr (learning rate) must be a positive", "0.1 is typical"], "validate"),
    ("cutn-zero", lambda d: {"cutn": 0}, ConfigError, ["cutn (cutouts per step) must be at least 1", "32 is typical"], "validate"),
    ("cut-pow-zero", lambda d: {"cut_pow": 0}, ConfigError, ["cut_pow must be a positive number", "1.0 is typical"], "validate"),
    ("clip-batch-negative", lambda d: {"clip_batch": -1}, ConfigError, ["clip_batch must be 0 (automatic)", "Try 8"], "validate"),
    ("tv-weight-nan", lambda d: {"tv_weight": float("nan")}, ConfigError, ["tv_weight must be zero or a positive number"], "validate"),
    ("init-weight-negative", lambda d: {"init_weight": -1.0}, ConfigError, ["init_weight must be zero or a positive number"], "validate"),
    ("seed-negative", lambda d: {"seed": -1}, ConfigError, ["seed must be a whole number from 0 to 2**63-1", "or empty"], "validate"),
    ("seed-too-large", lambda d: {"seed": 2**63}, ConfigError, ["seed must be a whole number from 0 to 2**63-1"], "validate"),
    ("noise-weights-without-seeds", lambda d: {"noise_prompt_weights": [1.0]}, ConfigError, ["1 noise prompt weights were given for 0", "one weight per seed"], "validate"),
    # choices
    ("unknown-optimiser", lambda d: {"optimizer": "lion"}, ConfigError, ["optimizer 'lion' is not one of adam"], "validate"),
    ("unknown-device", lambda d: {"device": "tpu"}, ConfigError, ["device 'tpu' is not one of auto, cpu, cuda"], "validate"),
    ("unknown-precision", lambda d: {"precision": "fp64"}, ConfigError, ["precision 'fp64' is not one of auto"], "validate"),
    ("unknown-latent-init", lambda d: {"latent_init": "zeros"}, ConfigError, ["latent_init 'zeros' is not one of codes, noise"], "validate"),
    ("unknown-checkpointing", lambda d: {"checkpointing": "maybe"}, ConfigError, ["checkpointing 'maybe' is not one of auto"], "validate"),
    ("unknown-vqgan", lambda d: {"vqgan": "vqgan_imagenet_f32", "vqgan_config": None, "vqgan_checkpoint": None}, ConfigError, ["Unknown VQGAN model 'vqgan_imagenet_f32'", "--vqgan-config"], "validate"),
    ("unknown-clip-file", lambda d: {"clip_model": str(d / "nope.pt")}, ConfigError, ["neither a known name nor an existing file", "Known names: RN50"], "validate"),
    ("cuda-without-a-gpu", lambda d: {"device": "cuda"}, ModelError, ["cannot use a GPU here", "Use --device cpu"], "run"),
    ("fp16-on-the-cpu", lambda d: {"precision": "fp16"}, ConfigError, ["fp16 was asked for on the CPU", "fp32"], "run"),
    # snapshot schedules
    ("empty-snapshot-schedule", lambda d: {"snapshots": ",,,"}, ConfigError, ["names no iteration", "'last'"], "validate"),
    ("negative-snapshot", lambda d: {"snapshots": "-5"}, ConfigError, ["negative"], "validate"),
    ("unparsable-snapshot", lambda d: {"snapshots": "often"}, ConfigError, ["not understood"], "validate"),
    ("snapshot-beyond-the-run", lambda d: {"snapshots": "0,500"}, ConfigError, ["500 are beyond the run's 12 iterations", "Raise --iterations"], "validate"),
    # files
    ("missing-init-image", lambda d: {"init_image": str(d / "nope.png")}, ConfigError, ["does not exist", "Check the path"], "validate"),
    ("init-image-is-a-directory", lambda d: {"init_image": str(d)}, ConfigError, ["is a directory, not a file", "a file inside it"], "validate"),
    ("init-image-not-a-picture", lambda d: {"init_image": text_file(d)}, ConfigError, ["could not be read as a picture", "save it again as PNG"], "run"),
    ("truncated-init-image", lambda d: {"init_image": truncated_png(d)}, ConfigError, ["could not be read as a picture", "save it again as PNG"], "run"),
    ("init-image-decompression-bomb", lambda d: {"init_image": bomb(d)}, ConfigError, ["could not be read as a picture", "DecompressionBombError"], "run"),
    ("missing-image-prompt", lambda d: {"image_prompts": [str(d / "gone.png") + ":0.5"]}, ConfigError, ["Image prompt file", "does not exist", "Check the path"], "validate"),
    ("image-prompt-is-a-directory", lambda d: {"image_prompts": [str(d)]}, ConfigError, ["Image prompt", "is a directory, not a file"], "validate"),
    ("truncated-image-prompt", lambda d: {"image_prompts": [truncated_png(d)]}, ConfigError, ["image prompt file", "could not be read as a picture"], "run"),
    ("vqgan-config-without-checkpoint", lambda d: {"vqgan_checkpoint": None}, ConfigError, ["go together", "give both local files"], "validate"),
    ("vqgan-config-is-a-directory", lambda d: {"vqgan_config": str(d)}, ConfigError, ["vqgan_config", "is a directory, not a file"], "validate"),
    # where the run is written
    ("out-is-a-file", lambda d: {"out": a_file(d)}, RunError, ["is a file, not a directory", "move the file away"], "run"),
    ("out-empty", lambda d: {"out": ""}, ConfigError, ["is no usable folder name", "--out runs"], "validate"),
    ("out-with-nul", lambda d: {"out": "runs\x00x"}, ConfigError, ["is no usable folder name", "--out runs"], "validate"),
    ("name-climbs-out", lambda d: {"name": "../escaped"}, ConfigError, ["holds /", "outside the output folder", "plain folder name"], "validate"),
    ("name-is-an-absolute-path", lambda d: {"name": str(d / "abs")}, ConfigError, ["holds /", "plain folder name"], "validate"),
    ("name-with-backslash", lambda d: {"name": "..\\escaped"}, ConfigError, ["holds \\", "plain folder name"], "validate"),
    ("name-is-dot-dot", lambda d: {"name": ".."}, ConfigError, ["ends with a dot", "plain folder name"], "validate"),
    ("name-with-nul", lambda d: {"name": "a\x00b"}, ConfigError, ["control character", "plain folder name"], "validate"),
    ("name-reserved-on-windows", lambda d: {"name": "COM1"}, ConfigError, ["device name on Windows", "plain folder name"], "validate"),
    ("name-reserved-with-extension", lambda d: {"name": "nul.txt"}, ConfigError, ["device name on Windows"], "validate"),
    ("name-300-characters", lambda d: {"name": "n" * 300}, ConfigError, ["300 characters long", "at most 100"], "validate"),
]  # fmt: skip
IDS = [c[0] for c in CASES]


@pytest.fixture
def inputs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A folder for the case's files; the working directory is tmp_path, so a relative
    write would show up in the tree compared before and after."""
    monkeypatch.chdir(tmp_path)
    folder = tmp_path / "inputs"
    folder.mkdir()
    return folder


@pytest.mark.parametrize(("changes", "error", "says", "stage"), [c[1:] for c in CASES], ids=IDS)
def test_validate_refuses_or_leaves_it_to_the_run(changes, error, says, stage, tiny_config, inputs):
    config = tiny_config.replace(**changes(inputs))
    if stage == "run":
        assert config.validate() is config  # only the models or the device can tell
        return
    with pytest.raises(ConfigError) as caught:
        config.validate()
    assert type(caught.value) is error
    for words in says:
        assert words in str(caught.value)


@pytest.mark.parametrize(("changes", "error", "says", "stage"), [c[1:] for c in CASES], ids=IDS)
def test_generate_refuses_and_writes_nothing(
    changes, error, says, stage, tiny_config, tiny_models, inputs, tmp_path
):
    config = tiny_config.replace(**changes(inputs))  # every case stops before a step
    before = tree(tmp_path)
    models = None if config.device == "cuda" else tiny_models  # load_run_models says why
    with pytest.raises(Exception) as caught:
        vqclip.generate(config, models, progress=False)
    assert type(caught.value) is error, caught.value
    message = str(caught.value)
    for words in says:
        assert words in message
    assert "\n" not in message and "Traceback" not in message  # one paragraph
    assert tree(tmp_path) == before


def test_the_size_limit_message_carries_the_memory_estimate(tiny_config):
    with pytest.raises(ConfigError) as caught:
        tiny_config.replace(size=[20000, 20000]).validate()
    gib = decoder_floor_bytes([20000, 20000]) / 2**30
    assert f"about {gib:,.0f} GiB" in str(caught.value) and gib > 500


def test_the_size_limit_estimate_is_the_memory_estimate_of_the_default_vqgan():
    """config's model-free figure equals the memory module's decoder estimate on the real default
    architecture (built on the meta device: shapes only, no memory, no download)."""
    from taming.modules.diffusionmodules.model import Decoder

    from vqclip import memory

    ddconfig = dict(double_z=False, z_channels=256, resolution=256, in_channels=3, out_ch=3,
                    ch=128, ch_mult=[1, 1, 2, 2, 4], num_res_blocks=2, attn_resolutions=[16],
                    dropout=0.0)  # fmt: skip
    with torch.device("meta"):
        decoder = Decoder(**ddconfig)
    models = type("M", (), {"vqgan": type("V", (), {"decoder": decoder})()})()
    for size in ([20000, 20000], [5000, 3000], [512, 512]):
        assert memory._decoder_bytes(models, size, "bf16", True, True) == decoder_floor_bytes(size)


def test_a_size_within_the_limit_that_does_not_fit_is_refused_before_the_run(
    tiny_config, tiny_models, inputs, tmp_path, monkeypatch
):
    """prepare compares the estimate with the memory the device has before any run tensor
    exists; here the machine is told it has 1 GiB free."""
    from vqclip import memory

    monkeypatch.setattr(memory, "available_memory", lambda device: 2**30)
    before = tree(tmp_path)
    with pytest.raises(DoesNotFit) as caught:
        vqclip.generate(tiny_config.replace(size=[4096, 4096]), tiny_models, progress=False)
    message = str(caught.value)
    assert "A 4096x4096 run" in message and "GiB" in message and "only 1.0 GiB is free" in message
    assert "--size 1024 1024" in message or "Even the smallest" in message
    assert tree(tmp_path) == before


def test_an_output_folder_that_cannot_be_written_is_refused(
    tiny_config, tiny_models, inputs, tmp_path, monkeypatch
):
    """Tests run as root, whom permissions do not stop, so the refusal the kernel gives an
    ordinary user (EACCES on mkdir) is injected where the run directory is made."""
    out = tmp_path / "locked"
    out.mkdir()
    real = Path.mkdir

    def refused(self, *args, **kwargs):
        if self.parent == out:
            raise PermissionError(13, "Permission denied", str(self))
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Path, "mkdir", refused)
    before = tree(tmp_path)
    with pytest.raises(RunError) as caught:
        vqclip.generate(tiny_config.replace(out=str(out)), tiny_models, progress=False)
    message = str(caught.value)
    assert "Cannot write in the output directory" in message and "Permission denied" in message
    assert "a directory you can write to" in message
    assert tree(tmp_path) == before


def test_a_run_dir_whose_snapshots_folder_fails_is_removed(tmp_path, monkeypatch):
    real = Path.mkdir

    def full(self, *args, **kwargs):
        if self.name == state.SNAPSHOT_DIR:
            raise OSError(28, "No space left on device")
        return real(self, *args, **kwargs)

    (tmp_path / "out").mkdir()
    monkeypatch.setattr(Path, "mkdir", full)
    with pytest.raises(RunError, match="No space left on device"):
        state.new_run_dir(tmp_path / "out", "run")
    assert list((tmp_path / "out").iterdir()) == []  # no half-made run directory


# --- resume: run directories that are not what they should be ------------------------------


def _edit_record(run: Path, change) -> None:
    record = json.loads((run / "run.json").read_text())
    (run / "run.json").write_text(json.dumps(change(record)))


RUN_CASES = [
    ("does-not-exist", lambda run: run.parent / "gone", ["has no run.json", "Give the directory that `vqclip generate` created"]),
    ("a-file-not-a-directory", lambda run: run / "final.png", ["has no run.json", "Give the directory"]),
    ("no-run-record", lambda run: (run / "run.json").unlink() or run, ["has no run.json", "Give the directory"]),
    ("run-record-not-json", lambda run: (run / "run.json").write_text("{\"status\": ") and run, ["is not valid JSON", "the run record is damaged", "restore run.json"]),
    ("run-record-not-utf8", lambda run: (run / "run.json").write_bytes(b"\xff\xfe{}") and run, ["is not valid JSON", "restore run.json"]),
    ("run-record-a-list", lambda run: (run / "run.json").write_text("[]") and run, ["holds no run settings", "restore run.json"]),
    ("run-record-without-settings", lambda run: _edit_record(run, lambda r: {**r, "config": None}) or run, ["holds no run settings", "vqclip reproduce"]),
    ("run-from-a-newer-vqclip", lambda run: _edit_record(run, lambda r: {**r, "version": 2}) or run, ["written by a newer vqclip (run format 2", "pip install -U vqclip"]),
    ("run-version-not-a-number", lambda run: _edit_record(run, lambda r: {**r, "version": "2.0"}) or run, ["run format '2.0'", "Upgrade vqclip"]),
    ("saved-state-damaged", lambda run: (run / "state.pt").write_bytes(b"PK\x03\x04 torn") and run, ["state.pt could not be read", "resume from a copy of the run, or start it again"]),
    ("saved-state-is-foreign", lambda run: (run / "state.pt").write_bytes(b"\x80\x04K\x01.") and run, ["state.pt could not be read", "start it again"]),
    ("already-finished", lambda run: run, ["is already at iteration 2 of 2", "Pass a larger --iterations"]),
]  # fmt: skip


@pytest.mark.parametrize(
    ("damage", "says"), [c[1:] for c in RUN_CASES], ids=[c[0] for c in RUN_CASES]
)
def test_resume_refuses_a_damaged_or_foreign_run_and_changes_nothing(
    damage, says, a_run, tiny_models, tmp_path
):
    run = Path(shutil.copytree(a_run, tmp_path / a_run.name))
    target = damage(run)
    before = tree(tmp_path)
    with pytest.raises(RunError) as caught:
        vqclip.resume(target, tiny_models, progress=False)
    assert type(caught.value) is RunError
    for words in says:
        assert words in str(caught.value)
    assert tree(tmp_path) == before


def test_a_run_records_its_format_version(a_run):
    assert json.loads((a_run / "run.json").read_text())["version"] == state.RUN_FORMAT


def test_a_run_written_before_the_format_version_still_resumes(a_run, tiny_models, tmp_path):
    run = Path(shutil.copytree(a_run, tmp_path / a_run.name))
    _edit_record(run, lambda r: {k: v for k, v in r.items() if k != "version"})
    assert vqclip.resume(run, tiny_models, iterations=3, progress=False).status == "done"


# --- reproduce: files that carry no recipe ---------------------------------------------------


def _png_with(d: Path, text: str | None) -> str:
    info = PngImagePlugin.PngInfo()
    if text is not None:
        info.add_text("vqclip", text)
    Image.new("RGB", (8, 8)).save(d / "p.png", pnginfo=info)
    return str(d / "p.png")


def _jpeg(d: Path) -> str:
    Image.new("RGB", (8, 8)).save(d / "p.jpg")
    return str(d / "p.jpg")


def _recipe_of_unknown_settings(d: Path, a_run: Path) -> str:
    from vqclip.export import read_recipe

    recipe = read_recipe(a_run / "final.png")
    recipe["config"]["hyperdrive"] = True
    return _png_with(d, json.dumps(recipe))


PNG_CASES = [
    ("missing-file", lambda d, run: str(d / "gone.png"), ExportError, ["does not exist", "Check the path"]),
    ("a-directory", lambda d, run: str(d), ExportError, ["is a directory, not a PNG", "a PNG file inside it"]),
    ("not-an-image", lambda d, run: text_file(d), ExportError, ["is not an image", "Pass a PNG written by vqclip"]),
    ("a-jpeg", lambda d, run: _jpeg(d), ExportError, ["is a JPEG image, not a PNG", "Use the original file"]),
    ("png-without-metadata", lambda d, run: _png_with(d, None), ExportError, ["a PNG without a vqclip recipe", "stripped its metadata", "Use the original file"]),
    ("png-with-other-metadata", lambda d, run: _other_chunk(d), ExportError, ["a PNG without a vqclip recipe"]),
    ("recipe-not-json", lambda d, run: _png_with(d, "{\"config\": "), ExportError, ["its JSON is corrupt", "Use the original file"]),
    ("recipe-not-an-object", lambda d, run: _png_with(d, "[1, 2]"), ExportError, ["not a JSON object", "Use the original file"]),
    ("truncated-png", lambda d, run: truncated_png(d), ExportError, ["is a damaged PNG", "Use the original file"]),
    ("recipe-with-unknown-settings", _recipe_of_unknown_settings, ConfigError, ["Unknown setting(s) hyperdrive", "remove them"]),
]  # fmt: skip


def _other_chunk(d: Path) -> str:
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", "a cat, Steps: 20")  # another tool's recipe
    Image.new("RGB", (8, 8)).save(d / "other.png", pnginfo=info)
    return str(d / "other.png")


@pytest.mark.parametrize(
    ("make", "error", "says"), [c[1:] for c in PNG_CASES], ids=[c[0] for c in PNG_CASES]
)
def test_reproduce_refuses_files_without_a_recipe_and_writes_nothing(
    make, error, says, a_run, tiny_models, inputs, tmp_path
):
    image = make(inputs, a_run)
    before = tree(tmp_path)
    with pytest.raises(Exception) as caught:
        vqclip.reproduce(image, tmp_path / "reproduced", tiny_models)
    assert type(caught.value) is error, caught.value
    for words in says:
        assert words in str(caught.value)
    assert tree(tmp_path) == before


# --- the same through the command line: exit 2, one paragraph, nothing written -------------


@pytest.mark.parametrize(
    ("damage", "says"), [c[1:] for c in RUN_CASES], ids=[c[0] for c in RUN_CASES]
)
def test_cli_resume_refuses_with_exit_2(damage, says, a_run, tmp_path, capsys):
    from vqclip.cli import main

    run = Path(shutil.copytree(a_run, tmp_path / a_run.name))
    target = damage(run)
    before = tree(tmp_path)
    code = main(["resume", str(target), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.startswith("vqclip: error: ") and err.count("\n") == 1
    for words in says:
        assert words in err
    assert tree(tmp_path) == before


# info prints a recipe as it is (unknown settings too); only running it needs known ones
CLI_PNG_CASES = [("reproduce", *c) for c in PNG_CASES] + [
    ("info", *c) for c in PNG_CASES if c[2] is ExportError
]


@pytest.mark.parametrize(
    ("command", "make", "says"),
    [(c[0], c[2], c[4]) for c in CLI_PNG_CASES],
    ids=[f"{c[0]}-{c[1]}" for c in CLI_PNG_CASES],
)
def test_cli_info_and_reproduce_refuse_with_exit_2(
    command, make, says, a_run, inputs, tmp_path, capsys
):
    from vqclip.cli import main

    image = make(inputs, a_run)
    before = tree(tmp_path)
    extra = ["--out", str(tmp_path / "reproduced")] if command == "reproduce" else []
    code = main([command, image, *extra])
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.startswith("vqclip: error: ") and err.count("\n") == 1
    for words in says:
        assert words in err
    assert tree(tmp_path) == before


# --- odd pictures people really have: accepted, read as the picture they show ---------------


@pytest.mark.parametrize("kind", ["one-pixel", "16-bit", "cmyk", "palette", "alpha", "animated"])
def test_generate_accepts_odd_pictures_as_init_and_image_prompt(
    kind, tiny_config, tiny_models, inputs
):
    from test_bad_input import ODD_BUT_FINE

    picture = str(ODD_BUT_FINE[kind](inputs))
    config = tiny_config.replace(
        init_image=picture, image_prompts=[f"{picture}:0.5"], iterations=1, snapshots="last"
    )
    assert vqclip.generate(config, tiny_models, progress=False).status == "done"


def test_a_16_bit_picture_keeps_its_tones(tmp_path):
    """Pillow's convert('RGB') clips 16-bit greyscale at 255 (nearly all white); open_rgb
    scales it to 8 bits, so a 16-bit gradient stays a gradient."""
    import numpy as np

    from vqclip.prompts import open_rgb

    ramp = np.linspace(0, 65535, 64 * 64).reshape(64, 64).astype(np.uint16)
    Image.fromarray(ramp).save(tmp_path / "ramp.png")
    with Image.open(tmp_path / "ramp.png") as im:
        assert im.mode == "I;16"
    rgb = np.asarray(open_rgb(str(tmp_path / "ramp.png")))
    assert rgb.shape == (64, 64, 3)
    assert rgb[0, 0, 0] == 0 and rgb[-1, -1, 0] == 255 and 120 <= rgb[32, 0, 0] <= 136
    assert np.all(np.diff(rgb[:, 0, 0].astype(int)) >= 0)  # still a ramp, not white


def test_paths_may_be_given_as_path_objects(tiny_config, tiny_model_dir, tmp_path):
    """The checks above read paths as text; pathlib paths from a notebook pass as before."""
    picture = tmp_path / "init.png"
    Image.new("RGB", (8, 8)).save(picture)
    config = tiny_config.replace(
        out=tmp_path / "runs", init_image=picture, vqgan_config=tiny_model_dir["vqgan_config"]
    )
    assert config.validate() is config
