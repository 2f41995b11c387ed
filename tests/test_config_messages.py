"""Every refusal of a bad setting, word for word: the message a user reads (what was wrong,
how to fix it) and the field the panel puts it beside. Other tests match these messages by a
fragment; here each bad input meets its complete message, so a changed word shows."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from vqclip.config import (
    ConfigError,
    RunConfig,
    check_file,
    check_name,
    decoder_floor_bytes,
)

GO_TOGETHER = (
    "vqgan_config and vqgan_checkpoint go together: give both local files (the yaml and the "
    ".ckpt), or neither to use a model from the registry."
)
NOTHING = (
    "Nothing to aim for: give a text prompt, an image prompt, a noise prompt or an init image."
)
ALL_ZERO = (
    "Nothing to aim for: every prompt has weight 0, so nothing pulls or pushes the picture. "
    "Give a prompt a weight other than 0 (e.g. 'cat:1')."
)
TOO_LARGE = (
    "size {} is larger than 4096 pixels on a side, the most vqclip makes{}. Try --size 512 512 "
    "or less (upscale the result afterwards)."
)
NEEDS = (
    ": the default VQGAN's decoder alone would need {} of memory for it, even in bf16 "
    "with checkpointing"
)
NO_GPU = ", more than any GPU has"
FIX = "Give --name a plain folder name such as 'lighthouse-1', or leave it out."
HUGE = 10**400  # a whole number no float holds

# (id, changes to a valid config, the field named, the complete message). "{cwd}" stands for
# the folder the test runs in; a.png is a file there and d a folder.
VALIDATE = [
    ("size-zero", {"size": [0, 256]}, "size",
     "size must be two positive whole numbers (width height), got [0, 256]. Try --size 256 256."),
    ("size-one-number", {"size": [64]}, "size",
     "size must be two positive whole numbers (width height), got [64]. Try --size 256 256."),
    ("size-too-large", {"size": [100_000, 100_000]}, "size",
     TOO_LARGE.format("100000x100000", NEEDS.format("about 24,475 GiB") + NO_GPU)),
    ("size-beyond-floats-height", {"size": [1, HUGE]}, "size",
     TOO_LARGE.format("1x10000000000…", NEEDS.format("at least 10**394 GiB") + NO_GPU)),
    # 41 GiB: large GPUs hold that, so the message does not say none does
    ("size-just-too-large", {"size": [4097, 4097]}, "size",
     TOO_LARGE.format("4097x4097", NEEDS.format("about 41 GiB"))),
    # a few hundred MiB: too wide, but the memory is no reason, so it is not given as one
    ("size-too-wide-but-small", {"size": [4097, 16]}, "size", TOO_LARGE.format("4097x16", "")),
    ("size-below-the-largest-gpu", {"size": [10_000, 10_000]}, "size",
     TOO_LARGE.format("10000x10000", NEEDS.format("about 245 GiB"))),
    ("size-beyond-a-million-gib", {"size": [10**7, 10**7]}, "size",
     TOO_LARGE.format("10000000x10000000", NEEDS.format("at least 10**8 GiB") + NO_GPU)),
    ("size-beyond-floats", {"size": [HUGE, 1]}, "size",
     TOO_LARGE.format("10000000000…x1", NEEDS.format("at least 10**394 GiB") + NO_GPU)),
    # Numbers of thousands of digits (Python will not print them) or hundreds (a message
    # that long is no readable paragraph) are named in brief.
    ("size-negative-huge", {"size": [-HUGE, 1]}, "size",
     f"size must be two positive whole numbers (width height), got [-1{'0' * 56}…. Try "
     "--size 256 256."),
    ("cut-pow-negative-huge", {"cut_pow": -HUGE}, "cut_pow",
     f"cut_pow must be a positive number, got -1{'0' * 57}…. 1.0 is typical."),
    ("lr-of-5000-digits", {"lr": 10**5000}, "lr",
     "lr (learning rate) must be a positive number, got a number of thousands of digits. "
     "0.1 is typical."),
    ("tv-weight-of-5000-digits", {"tv_weight": -(10**5000)}, "tv_weight",
     "tv_weight must be zero or a positive number, got a number of thousands of digits."),
    ("seed-of-5000-digits", {"seed": 10**5000}, "seed",
     "seed must be a whole number from 0 to 2**63-1, or empty for a random one; got a number "
     "of thousands of digits."),
    ("init-weight-minus-infinity", {"init_weight": float("-inf")}, "init_weight",
     "init_weight must be zero or a positive number, got -inf."),
    ("iterations-zero", {"iterations": 0}, "iterations",
     "iterations must be a whole number of at least 1 and at most 1,000,000, got 0."),
    ("iterations-too-many", {"iterations": 1_000_001}, "iterations",
     "iterations must be a whole number of at least 1 and at most 1,000,000, got 1000001."),
    ("cutn-zero", {"cutn": 0}, "cutn",
     "cutn (cutouts per step) must be at least 1 and at most 10000, got 0. 32 is typical."),
    ("cutn-too-many", {"cutn": 10_001}, "cutn",
     "cutn (cutouts per step) must be at least 1 and at most 10000, got 10001. 32 is typical."),
    ("clip-batch-negative", {"clip_batch": -1}, "clip_batch",
     "clip_batch must be 0 (automatic) or a positive whole number up to 10000, got -1. "
     "Try 8 when memory is short."),
    ("clip-batch-too-large", {"clip_batch": 10_001}, "clip_batch",
     "clip_batch must be 0 (automatic) or a positive whole number up to 10000, got 10001. "
     "Try 8 when memory is short."),
    ("cut-pow-zero", {"cut_pow": 0.0}, "cut_pow",
     "cut_pow must be a positive number, got 0.0. 1.0 is typical."),
    ("cut-pow-nan", {"cut_pow": float("nan")}, "cut_pow",
     "cut_pow must be a positive number, got nan. 1.0 is typical."),
    ("lr-zero", {"lr": 0}, "lr",
     "lr (learning rate) must be a positive number, got 0. 0.1 is typical."),
    ("lr-infinite", {"lr": float("inf")}, "lr",
     "lr (learning rate) must be a positive number, got inf. 0.1 is typical."),
    ("init-weight-negative", {"init_weight": -1.0}, "init_weight",
     "init_weight must be zero or a positive number, got -1.0."),
    ("tv-weight-nan", {"tv_weight": float("nan")}, "tv_weight",
     "tv_weight must be zero or a positive number, got nan."),
    ("optimizer", {"optimizer": "lbfgs"}, "optimizer",
     "optimizer 'lbfgs' is not one of adam, adamw, sgd, adagrad, rmsprop."),
    ("device", {"device": "tpu"}, "device", "device 'tpu' is not one of auto, cpu, cuda."),
    ("precision", {"precision": "fp8"}, "precision",
     "precision 'fp8' is not one of auto, fp32, bf16, fp16."),
    ("latent-init", {"latent_init": "zeros"}, "latent_init",
     "latent_init 'zeros' is not one of codes, noise."),
    ("checkpointing", {"checkpointing": "maybe"}, "checkpointing",
     "checkpointing 'maybe' is not one of auto, on, off."),
    ("seed-negative", {"seed": -1}, "seed",
     "seed must be a whole number from 0 to 2**63-1, or empty for a random one; got -1."),
    ("seed-too-large", {"seed": 2**63}, "seed",
     "seed must be a whole number from 0 to 2**63-1, or empty for a random one; "
     "got 9223372036854775808."),
    ("noise-seed-negative", {"noise_prompt_seeds": [3, -1]}, "noise_prompt_seeds",
     "noise prompt seeds must be whole numbers from 0 to 2**63-1; got -1."),
    ("noise-seed-too-large", {"noise_prompt_seeds": [2**63]}, "noise_prompt_seeds",
     "noise prompt seeds must be whole numbers from 0 to 2**63-1; got 9223372036854775808."),
    ("noise-weight-nan", {"noise_prompt_seeds": [1, 2], "noise_prompt_weights": [0.5, float("nan")]},
     "noise_prompt_weights",
     "noise prompt weights must be finite numbers such as 1, 0.5 or -1; got nan."),
    ("noise-weights-too-many", {"noise_prompt_seeds": [1], "noise_prompt_weights": [1.0, 2.0]},
     "noise_prompt_weights",
     "2 noise prompt weights were given for 1 noise prompt seeds; give one weight per seed at "
     "most."),
    ("config-alone", {"vqgan_config": "a.png"}, "vqgan_checkpoint", GO_TOGETHER),
    ("checkpoint-alone", {"vqgan_checkpoint": "a.png"}, "vqgan_config", GO_TOGETHER),
    ("config-a-folder", {"vqgan_config": "d", "vqgan_checkpoint": "a.png"}, "vqgan_config",
     "vqgan_config 'd' is a directory, not a file. Give the path of a file inside it."),
    ("checkpoint-missing", {"vqgan_config": "a.png", "vqgan_checkpoint": "b.ckpt"},
     "vqgan_checkpoint",
     "vqgan_checkpoint file 'b.ckpt' does not exist. Check the path (relative paths start "
     "from {cwd})."),
    ("init-image-control", {"init_image": "a\x01.png"}, "init_image",
     "init_image path 'a\\x01.png' holds a control character; no file is named like that. "
     "Type the path again."),
    ("out-empty", {"out": ""}, "out",
     "out '' is no usable folder name: give --out a directory path of visible characters, "
     "e.g. --out runs."),
    ("out-spaces", {"out": "  "}, "out",
     "out '  ' is no usable folder name: give --out a directory path of visible characters, "
     "e.g. --out runs."),
    ("out-control", {"out": "a\x01b"}, "out",
     "out 'a\\x01b' is no usable folder name: give --out a directory path of visible "
     "characters, e.g. --out runs."),
    ("name-a-path", {"name": "../x"}, "name",
     "name '../x' holds /, which a folder name cannot hold (a path would put the run outside "
     f"the output folder). {FIX}"),
    ("vqgan", {"vqgan": "nope"}, "vqgan",
     "Unknown VQGAN model 'nope'. Known models: vqgan_imagenet_f16_16384, "
     "vqgan_imagenet_f16_1024, wikiart_16384, coco, sflckr, openimages_f8_8192; or give local "
     "files with --vqgan-config and --vqgan-checkpoint."),
    ("clip", {"clip_model": "ViT-Z/99"}, "clip_model",
     "CLIP model 'ViT-Z/99' is neither a known name nor an existing file. Known names: RN50, "
     "RN101, RN50x4, RN50x16, RN50x64, ViT-B/32, ViT-B/16, ViT-L/14, ViT-L/14@336px."),
    ("image-prompt-missing", {"image_prompts": ["a.png", " b.png:0.5 "]}, "image_prompts",
     "Image prompt file 'b.png' does not exist. Check the path (relative paths start from "
     "{cwd})."),
    ("image-prompt-bad-weight", {"image_prompts": ["a.png:0.5x"]}, "image_prompts",
     "The prompt 'a.png:0.5x' ends in ':0.5x', which looks like a weight but is not a number. "
     "Write 'text:weight' or 'text:weight:stop' with plain numbers (e.g. 'fog:0.5' or "
     "'fog:-1:0.8'), or put a space after the colon to keep it as text."),
    ("prompt-bad-weight", {"prompt": "fog:"}, "prompt",
     "The prompt 'fog:' ends in ':' with no weight after it. Write 'text:weight' (e.g. "
     "'fog:0.5'), or leave the colon out."),
    ("nothing", {"prompt": " | "}, "prompt", NOTHING),
    ("weights-all-zero", {"prompt": "cat:0 | dog:0"}, "prompt", ALL_ZERO),
    ("image-weight-zero", {"prompt": "", "image_prompts": ["a.png:0"]}, "prompt", ALL_ZERO),
    ("noise-weight-zero", {"prompt": "", "noise_prompt_seeds": [1], "noise_prompt_weights": [0.0]},
     "prompt", ALL_ZERO),
    ("snapshot-rule", {"snapshots": "every:0"}, "snapshots",
     "Snapshot item 'every:0': every:N needs N of at least 1. Use comma-separated items: an "
     "iteration number (50), every:N (every:100), pow2, last."),
    ("snapshots-beyond", {"snapshots": "5,500,400", "iterations": 300}, "snapshots",
     "Snapshot iteration(s) 400, 500 are beyond the run's 300 iterations. Raise --iterations, "
     "or keep snapshots from 0 to 300 ('last' is the final one)."),
]  # fmt: skip


@pytest.fixture
def here(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A working folder with a file a.png and a folder d."""
    (tmp_path / "a.png").write_bytes(b"")
    (tmp_path / "d").mkdir()
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.mark.parametrize(
    "changes, field, message", [row[1:] for row in VALIDATE], ids=[row[0] for row in VALIDATE]
)
def test_each_bad_setting_gets_its_complete_message(here, changes, field, message):
    config = RunConfig(prompt="a unicorn").replace(**changes)
    with pytest.raises(ConfigError) as caught:
        config.validate()
    assert str(caught.value) == message.replace("{cwd}", str(Path.cwd()))
    assert caught.value.field == field


@pytest.mark.parametrize(
    "changes",
    [
        {"size": [4096, 16], "snapshots": "last"},  # the largest side allowed
        {"iterations": 1_000_000, "snapshots": "last"},
        {"iterations": 1, "cutn": 1, "snapshots": "last"},  # the smallest allowed
        {"cutn": 10_000, "clip_batch": 10_000},
        {"clip_batch": 0, "init_weight": 0.0, "tv_weight": 0.0, "seed": 0},
        {"seed": 2**63 - 1, "noise_prompt_seeds": [0, 2**63 - 1]},
        {"prompt": "", "noise_prompt_seeds": [4]},  # an unweighted noise prompt pulls
        {"prompt": "", "noise_prompt_seeds": [4, 5], "noise_prompt_weights": [0.0]},
        {"prompt": "", "noise_prompt_seeds": [4], "noise_prompt_weights": [0.5]},
        {"prompt": "cat:0", "init_image": "a.png"},  # the init image alone is an aim
        {"prompt": "", "image_prompts": [" a.png "]},
        {"vqgan": "nope", "vqgan_config": "a.png", "vqgan_checkpoint": "a.png"},
        {"clip_model": "a.png", "name": "mine", "out": "runs/today"},
        {"snapshots": "0,300,every:100", "iterations": 300},
    ],
)
def test_settings_at_their_limits_are_valid(here, changes):
    config = RunConfig(prompt="a unicorn").replace(**changes)
    assert config.validate() is config


def test_the_decoder_floor_counts_each_level_of_the_default_decoder():
    # 3 blocks per level of (pixels >> 2i) positions x channels (128, 128, 256, 256, 512),
    # plus 6 full-resolution maps of 128 channels, 2 bytes each (bf16).
    pixels = 512 * 256
    levels = [pixels, pixels // 4, pixels // 16, pixels // 64, pixels // 256]
    kept = 3 * sum(n * c for n, c in zip(levels, (128, 128, 256, 256, 512)))
    assert decoder_floor_bytes([512, 256]) == 2 * (kept + 6 * pixels * 128)
    assert decoder_floor_bytes((16, 16)) == 2 * (3 * (256 * 128 + 64 * 128 + 16 * 256 + 4 * 256
                                                      + 1 * 512) + 6 * 256 * 128)  # fmt: skip


# (name, label, the complete message, or None when the name is accepted unchanged)
NAMES = [
    ("", "name", f"name '' is empty or invisible. {FIX}"),
    ("   ", "name", f"name '   ' is empty or invisible. {FIX}"),
    ("\u200b", "name", f"name '\\u200b' is empty or invisible. {FIX}"),
    ("\x01", "name", f"name '\\x01' is empty or invisible. {FIX}"),  # only a control character
    (7, "name", f"name 7 is empty or invisible. {FIX}"),
    ("a\x01b", "name", f"name 'a\\x01b' holds a control character. {FIX}"),
    ('x:*?"<>|\\', "name",
     'name \'x:*?"<>|\\\\\' holds " * : < > ? \\ |, which a folder name cannot hold (a path '
     f"would put the run outside the output folder). {FIX}"),
    ("a/b", "sweep",
     "sweep 'a/b' holds /, which a folder name cannot hold (a path would put the run outside "
     "the output folder). Give --sweep a plain folder name such as 'lighthouse-1', or leave "
     "it out."),
    (" a", "name", f"name ' a' starts or ends with a space or ends with a dot ('.' and '..' name "
     f"folders that already exist). {FIX}"),
    ("a ", "name", f"name 'a ' starts or ends with a space or ends with a dot ('.' and '..' name "
     f"folders that already exist). {FIX}"),
    ("a.", "name", f"name 'a.' starts or ends with a space or ends with a dot ('.' and '..' name "
     f"folders that already exist). {FIX}"),
    (". .", "name", f"name '. .' starts or ends with a space or ends with a dot ('.' and '..' "
     f"name folders that already exist). {FIX}"),
    ("..", "name", f"name '..' starts or ends with a space or ends with a dot ('.' and '..' "
     f"name folders that already exist). {FIX}"),
    *[(device, "name", f"name '{device}' is a device name on Windows (CON, PRN, AUX, NUL, "
       f"COM1-9, LPT1-9), so no folder can carry it there. {FIX}")
      for device in ("CON", "prn", "Aux", "nul.txt", "com0", "COM9", "lpt1", "lpt9.tar.gz",
                     "con .txt")],
    ("x" * 101, "name",
     f"name is 101 characters long; at most 100 fit in a folder name on every system. {FIX}"),
    ("x" * 100, "name", None),
    ("com10", "name", None),
    ("console", "name", None),
    ("a.b", "name", None),
    ("lighthouse-1", "name", None),
    (".hidden", "name", None),
]  # fmt: skip


@pytest.mark.parametrize("name, label, message", NAMES)
def test_each_folder_name_rule_gives_its_complete_message(name, label, message):
    if message is None:
        assert check_name(name, label) == name
        return
    with pytest.raises(ConfigError) as caught:
        check_name(name, label)
    assert str(caught.value) == message
    if label == "name":  # the label a name gets when none is given
        with pytest.raises(ConfigError) as caught:
            check_name(name)
        assert str(caught.value) == message


def test_check_file_names_its_label_and_field(here):
    cases = [
        ("a\x01", "Thing path 'a\\x01' holds a control character; no file is named like that. "
                  "Type the path again."),
        ("d", "Thing 'd' is a directory, not a file. Give the path of a file inside it."),
        (here / "d", f"Thing '{here / 'd'}' is a directory, not a file. Give the path of a file "
                     "inside it."),
        ("missing.png", f"Thing file 'missing.png' does not exist. Check the path (relative "
                        f"paths start from {here})."),
    ]  # fmt: skip
    for path, message in cases:
        with pytest.raises(ConfigError) as caught:
            check_file(path, "Thing", "some_field")
        assert (str(caught.value), caught.value.field) == (message, "some_field")
    assert check_file("a.png", "Thing") is None and check_file(here / "a.png", "Thing") is None


def known() -> str:
    return ", ".join(sorted(f.name for f in dataclasses.fields(RunConfig)))


HOW = "shows in `vqclip generate --help`."
# (id, settings read from a file, the field named or None, the complete message)
SHAPES = [
    ("a-list", [1], None,
     "Settings must be a mapping of setting: value (a JSON object), got [1] (list)."),
    ("null", None, None,
     "Settings must be a mapping of setting: value (a JSON object), got None (NoneType)."),
    ("unknown", {"colour": 1, "prompt": "x", 3: 4}, None,
     "Unknown setting(s) 3, colour. Known settings are: {known}. Check the spelling, or "
     "remove them."),
    ("size-a-number", {"size": 64}, "size",
     "size must be two positive whole numbers (width height), got 64. Try --size 256 256."),
    ("size-fractions", {"size": [1.5, 2]}, "size",
     "size must be two positive whole numbers (width height), got [1.5, 2]. Try --size 256 "
     "256."),
    ("size-three", {"size": [1, 2, 3]}, "size",
     "size must be two positive whole numbers (width height), got [1, 2, 3]. Try --size 256 "
     "256."),
    ("seed-text", {"seed": "7"}, "seed",
     f"seed must be a whole number, or empty for a random one, got '7' (text). Write it as "
     f"--seed {HOW}"),
    ("seed-true", {"seed": True}, "seed",
     f"seed must be a whole number, or empty for a random one, got True (true/false). Write it "
     f"as --seed {HOW}"),
    ("init-image-a-number", {"init_image": 3}, "init_image",
     f"init_image must be text (or empty), got 3 (a number). Write it as --init-image {HOW}"),
    ("augment-a-number", {"augment": 1}, "augment",
     f"augment must be true or false, got 1 (a number). Write it as --augment {HOW}"),
    ("cutn-a-fraction", {"cutn": 2.5}, "cutn",
     f"cutn must be a whole number, got 2.5 (a number). Write it as --cutn {HOW}"),
    ("lr-text", {"lr": "x"}, "lr", f"lr must be a number, got 'x' (text). Write it as --lr {HOW}"),
    ("lr-true", {"lr": False}, "lr",
     f"lr must be a number, got False (true/false). Write it as --lr {HOW}"),
    ("image-prompts-text", {"image_prompts": "a"}, "image_prompts",
     f"image_prompts must be a list of text, got 'a' (text). Write it as --image-prompt {HOW}"),
    ("image-prompts-numbers", {"image_prompts": ["a", 2]}, "image_prompts",
     f"image_prompts must be a list of text, got ['a', 2] (a list). Write it as --image-prompt "
     f"{HOW}"),
    ("noise-seeds-fractions", {"noise_prompt_seeds": [1.5]}, "noise_prompt_seeds",
     f"noise_prompt_seeds must be a list of whole numbers, got [1.5] (a list). Write it as "
     f"--noise-prompt-seed {HOW}"),
    ("noise-seeds-object", {"noise_prompt_seeds": {"a": 1}}, "noise_prompt_seeds",
     f"noise_prompt_seeds must be a list of whole numbers, got {{'a': 1}} (an object). Write "
     f"it as --noise-prompt-seed {HOW}"),
    ("noise-weights-text", {"noise_prompt_weights": ["a"]}, "noise_prompt_weights",
     f"noise_prompt_weights must be a list of numbers, got ['a'] (a list). Write it as "
     f"--noise-prompt-weight {HOW}"),
    ("noise-weights-bools", {"noise_prompt_weights": [True]}, "noise_prompt_weights",
     f"noise_prompt_weights must be a list of numbers, got [True] (a list). Write it as "
     f"--noise-prompt-weight {HOW}"),
    ("optimizer-null", {"optimizer": None}, "optimizer",
     f"optimizer must be text, got None (null). Write it as --optimizer {HOW}"),
    ("prompt-a-set", {"prompt": {1}}, "prompt",
     f"prompt must be text, got {{1}} (set). Write it as --prompt {HOW}"),
    ("name-a-number", {"name": 5}, "name",
     f"name must be text (or empty), got 5 (a number). Write it as --name {HOW}"),
    ("vqgan-config-a-list", {"vqgan_config": ["x"]}, "vqgan_config",
     f"vqgan_config must be text (or empty), got ['x'] (a list). Write it as --vqgan-config "
     f"{HOW}"),
    ("clip-an-object", {"clip_model": {"a": None}}, "clip_model",
     f"clip_model must be text, got {{'a': None}} (an object). Write it as --clip {HOW}"),
]  # fmt: skip


@pytest.mark.parametrize(
    "data, field, message", [row[1:] for row in SHAPES], ids=[row[0] for row in SHAPES]
)
def test_each_setting_of_the_wrong_kind_gets_its_complete_message(data, field, message):
    with pytest.raises(ConfigError) as caught:
        RunConfig.from_dict(data)
    assert str(caught.value) == message.replace("{known}", known())
    assert caught.value.field == field


@pytest.mark.parametrize(
    "data",
    [
        {},
        {"seed": None, "init_image": None, "name": None, "vqgan_config": None},
        {"size": (64, 32), "image_prompts": ("a.png",), "noise_prompt_seeds": [1, 2]},
        {"noise_prompt_weights": [1, -0.5], "lr": 1, "cut_pow": 2, "augment": False},
        {"out": Path("runs"), "init_image": Path("a.png")},
    ],
)
def test_settings_of_the_right_kind_are_read(data):
    config = RunConfig.from_dict(data)
    for key, value in data.items():
        assert getattr(config, key) == value


def test_the_memory_figure_at_its_bounds(monkeypatch):
    """GiB counted below a million, a power of ten from there; the decoder's need named from
    1 GiB, and 'more than any GPU has' only beyond 288 GB (the most one GPU holds)."""
    from vqclip import checks

    assert checks._gib(41 * 2**30) == "about 41 GiB"
    assert checks._gib(2**30 * 10**6 - 1) == "about 1,000,000 GiB"
    assert checks._gib(2**30 * 10**6) == "at least 10**6 GiB"
    assert checks._gib(2**30 * 10**7 - 1) == "at least 10**6 GiB"  # log10 rounds it to 7
    assert checks._gib(2**30 * (10**15 - 1)) == "at least 10**14 GiB"  # log10 says 15.0
    assert checks._gib(2**30 * 10**512) == "at least 10**512 GiB"  # log10 says 511.99…
    assert checks._gib(10**5000) == "at least 10**4990 GiB"  # beyond any float
    clause = ": the default VQGAN's decoder alone would need {} of memory for it, even in bf16 "
    clause += "with checkpointing{}"
    for need, said in [
        (2**30 - 1, ""),
        (2**30, clause.format("about 1 GiB", "")),
        (288 * 10**9, clause.format("about 268 GiB", "")),
        (288 * 10**9 + 1, clause.format("about 268 GiB", ", more than any GPU has")),
    ]:
        monkeypatch.setattr(checks, "decoder_floor_bytes", lambda size, need=need: need)
        assert checks._memory_reason([4097, 4097]) == said, need
