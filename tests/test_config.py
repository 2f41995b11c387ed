"""RunConfig: prompt syntax, validation messages, JSON round trip, CLI flags built from it."""

import math

import pytest

from vqclip.cli import build_parser, config_from_args
from vqclip.config import ConfigError, PromptSpec, RunConfig, parse_prompts

INF = -math.inf


@pytest.mark.parametrize(
    "text, expected",
    [
        ("a lighthouse", [PromptSpec("a lighthouse", 1.0, INF)]),
        (
            "a watercolor painting of a lighthouse:1 | fog:0.4",
            [
                PromptSpec("a watercolor painting of a lighthouse", 1.0, INF),
                PromptSpec("fog", 0.4, INF),
            ],
        ),
        (
            "a lighthouse:1 | fog:0.5 | text:-1",
            [
                PromptSpec("a lighthouse", 1.0, INF),
                PromptSpec("fog", 0.5, INF),
                PromptSpec("text", -1.0, INF),
            ],
        ),
        ("sunset:2:0.75", [PromptSpec("sunset", 2.0, 0.75)]),
        ("sunset:-1:-inf", [PromptSpec("sunset", -1.0, INF)]),
        ("Time: 12:30", [PromptSpec("Time: 12:30", 1.0, INF)]),
        ("Time 12:30 :2", [PromptSpec("Time 12:30", 2.0, INF)]),
        (
            "32, 9784, 7571840, 11140566368",
            [PromptSpec("32, 9784, 7571840, 11140566368", 1.0, INF)],
        ),
        ("Oregon 💚 painting", [PromptSpec("Oregon 💚 painting", 1.0, INF)]),
        ("Oregon 💚 cyberpunk:1.5", [PromptSpec("Oregon 💚 cyberpunk", 1.5, INF)]),
        ("see https://example.org/a/b", [PromptSpec("see https://example.org/a/b", 1.0, INF)]),
        ("Kermit in the matrix:.5", [PromptSpec("Kermit in the matrix", 0.5, INF)]),
        (
            "darth vader in the style of ukiyo-e:1e-1",
            [PromptSpec("darth vader in the style of ukiyo-e", 0.1, INF)],
        ),
        ("a | | b", [PromptSpec("a"), PromptSpec("b")]),
        ("", []),
        (
            "Attack ships on fire off the shoulder of Orion. I watched C-beams glitter in the "
            "dark near the Tannhäuser Gate, science fiction painting",
            [
                PromptSpec(
                    "Attack ships on fire off the shoulder of Orion. I watched C-beams glitter in the "
                    "dark near the Tannhäuser Gate, science fiction painting"
                )
            ],
        ),
    ],
)
def test_prompt_parsing(text, expected):
    assert parse_prompts(text) == expected


@pytest.mark.parametrize(
    "text, fragment", [("fog:0.4x", "':0.4x'"), ("fog:1..2", "':1..2'"), (":2", "no text")]
)
def test_malformed_prompt_weights_are_reported(text, fragment):
    with pytest.raises(ConfigError, match="weight") as info:
        parse_prompts(text)
    assert fragment in str(info.value)


def test_json_round_trip_keeps_every_setting():
    config = RunConfig(
        prompt="Oregon 💚 painting", seed=7, size=[128, 96], image_prompts=["a.png:0.5"]
    )
    assert RunConfig.from_json(config.to_json()) == config


def test_unknown_setting_is_named():
    with pytest.raises(ConfigError, match="Unknown setting.*colour"):
        RunConfig.from_dict({"prompt": "x", "colour": "red"})


@pytest.mark.parametrize(
    "changes, fragment",
    [
        ({"size": [0, 256]}, "size must be two positive"),
        ({"size": [-5, 256]}, "size must be two positive"),
        ({"iterations": 0}, "iterations must be"),
        ({"cutn": 0}, "cutn"),
        ({"lr": 0.0}, "lr"),
        ({"cut_pow": -1.0}, "cut_pow"),
        ({"optimizer": "lbfgs"}, "optimizer 'lbfgs' is not one of"),
        ({"clip_batch": -1}, "clip_batch must be 0 (automatic) or a positive"),
        ({"checkpointing": "maybe"}, "checkpointing 'maybe' is not one of auto, on, off"),
        ({"vqgan": "vqgan_nope"}, "Unknown VQGAN model 'vqgan_nope'"),
        ({"clip_model": "ViT-Z/99"}, "CLIP model 'ViT-Z/99'"),
        ({"init_image": "/no/such/file.png"}, "init_image file '/no/such/file.png' does not exist"),
        ({"vqgan_config": "/no/such.yaml"}, "go together"),
        ({"snapshots": "10,every:0"}, "every:0"),
        ({"snapshots": "10,soon"}, "'soon' is not understood"),
        ({"prompt": "fog:0.4x"}, "looks like a weight"),
        ({"prompt": ""}, "Nothing to aim for"),
        ({"seed": -1}, "seed must be"),
    ],
)
def test_validation_messages(changes, fragment):
    config = RunConfig(prompt="a unicorn").replace(**changes)
    with pytest.raises(ConfigError) as info:
        config.validate()
    assert fragment in str(info.value)


def test_default_config_is_valid():
    assert RunConfig(prompt="a unicorn").validate().iterations == 300


def test_cli_flags_come_from_the_config():
    args = build_parser().parse_args(
        [
            "generate",
            "a heptagonal stop sign:1 | red:0.3",
            "--size",
            "128",
            "64",
            "--seed",
            "7",
            "--image-prompt",
            "a.png",
            "--image-prompt",
            "b.png:0.5",
            "--no-augment",
            "--snapshots",
            "10,every:5",
            "--clip",
            "ViT-B/16",
            "--optimizer",
            "adamw",
        ]
    )
    config = config_from_args(args)
    assert config.prompt == "a heptagonal stop sign:1 | red:0.3"
    assert config.size == [128, 64] and config.seed == 7
    assert config.image_prompts == ["a.png", "b.png:0.5"]
    assert config.augment is False and config.clip_model == "ViT-B/16"
    assert config.optimizer == "adamw" and config.snapshots == "10,every:5"
    assert config.lr == RunConfig().lr  # not given: the dataclass default


def test_cli_config_file_is_overridden_by_flags(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("prompt: a unicorn\niterations: 42\nlr: 0.05\n")
    args = build_parser().parse_args(["generate", "--config", str(path), "--lr", "0.2"])
    config = config_from_args(args)
    assert (config.prompt, config.iterations, config.lr) == ("a unicorn", 42, 0.2)


def test_the_example_configs_in_assets_are_valid(monkeypatch):
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    monkeypatch.chdir(root)  # they name assets/ paths relative to the repository
    files = sorted((root / "assets" / "configs").glob("*.yaml"))
    assert files
    for path in files:
        args = build_parser().parse_args(["generate", "--config", str(path), "a unicorn"])
        config_from_args(args).validate()


def test_every_setting_reads_back_what_it_writes():
    from vqclip.config import settings

    examples = {"size": [48, 32], "seed": 12, "image_prompts": ["a.png:0.5", "b.png"],
                "noise_prompt_seeds": [1, 2], "noise_prompt_weights": [0.5, -1.0],
                "init_image": None, "name": "mine", "lr": 0.05, "augment": False}  # fmt: skip
    described = {s.name: s for s in settings()}
    assert set(described) == set(RunConfig().to_dict())
    for setting in described.values():
        value = examples.get(setting.name, setting.default)
        assert setting.parse(setting.format(value)) == value, setting.name
    assert described["seed"].parse("random") is None and described["seed"].format(None) == "random"
    for text in ("640 480", "640x480", "640 × 480", "640, 480"):
        assert described["size"].parse(text) == [640, 480]
    assert described["noise_prompt_seeds"].parse("1, 2") == [1, 2]
    assert described["optimizer"].kind == "choice" and "adam" in described["optimizer"].choices
    assert described["clip_model"].flag == "--clip" and described["prompt"].positional


def test_a_setting_that_cannot_be_read_names_itself():
    from vqclip.config import settings

    described = {s.name: s for s in settings()}
    with pytest.raises(ConfigError, match="iterations: 'ten' is not a whole number") as error:
        described["iterations"].parse("ten")
    assert error.value.field == "iterations"
    with pytest.raises(ConfigError, match="size needs two whole numbers") as error:
        described["size"].parse("640")
    assert error.value.field == "size"


@pytest.mark.parametrize(
    "changes, field",
    [
        ({"iterations": 0}, "iterations"),
        ({"size": [0, 64]}, "size"),
        ({"lr": float("nan")}, "lr"),
        ({"optimizer": "adamax"}, "optimizer"),
        ({"prompt": "fog:"}, "prompt"),
        ({"prompt": "cat:0"}, "prompt"),
        ({"snapshots": "every:0"}, "snapshots"),
        ({"snapshots": "500"}, "snapshots"),
        ({"init_image": "/nowhere.png"}, "init_image"),
        ({"image_prompts": ["/nowhere.png"]}, "image_prompts"),
        ({"seed": -1}, "seed"),
    ],
)
def test_validation_errors_name_their_field(changes, field):
    with pytest.raises(ConfigError) as error:
        RunConfig(**{"prompt": "a unicorn", "iterations": 100, **changes}).validate()
    assert error.value.field == field
