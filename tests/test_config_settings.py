"""How each setting is described to the CLI and the panel (kind, widget, flag, optional) and
how text typed into the panel or the queue's form is read back: by value, kind by kind, with
the complete message for text that cannot be read. Also the prompt syntax at its edges
(surrounding spaces, limits) and the folder names made from prompts."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest

from vqclip.config import (
    ConfigError,
    PromptSpec,
    RunConfig,
    Setting,
    _describe,
    _setting,
    brief,
    parse_prompt,
    parse_prompts,
    settings,
    slug,
)

# name -> (kind, widget, optional, flag, positional, group, element)
DESCRIBED = {
    "prompt": ("text", "textarea", False, "--prompt", True, "prompts", str),
    "image_prompts": ("lines", "textarea", False, "--image-prompt", False, "prompts", str),
    "noise_prompt_seeds": ("ints", "text", False, "--noise-prompt-seed", False, "prompts", int),
    "noise_prompt_weights": ("floats", "text", False, "--noise-prompt-weight", False, "prompts",
                             float),
    "init_image": ("text", "text", True, "--init-image", False, "prompts", str),
    "init_weight": ("float", "text", False, "--init-weight", False, "prompts", float),
    "size": ("pair", "pair", False, "--size", False, "generation", int),
    "iterations": ("int", "text", False, "--iterations", False, "generation", int),
    "seed": ("seed", "combobox", True, "--seed", False, "generation", int),
    "lr": ("float", "text", False, "--lr", False, "generation", float),
    "optimizer": ("choice", "dropdown", False, "--optimizer", False, "generation", str),
    "augment": ("bool", "checkbox", False, "--augment", False, "generation", str),
    "full_cutout": ("bool", "checkbox", False, "--full-cutout", False, "generation", str),
    "vqgan": ("text", "dropdown", False, "--vqgan", False, "models", str),
    "vqgan_config": ("text", "text", True, "--vqgan-config", False, "models", str),
    "clip_model": ("text", "dropdown", False, "--clip", False, "models", str),
    "device": ("choice", "dropdown", False, "--device", False, "speed", str),
    "clip_batch": ("int", "text", False, "--clip-batch", False, "speed", int),
    "snapshots": ("text", "text", False, "--snapshots", False, "output", str),
    "name": ("text", "text", True, "--name", False, "output", str),
}  # fmt: skip


def described() -> dict[str, Setting]:
    return {s.name: s for s in settings()}


def test_each_setting_is_described_by_its_annotation_and_metadata():
    got = described()
    for name, (kind, widget, optional, flag, positional, group, element) in DESCRIBED.items():
        s = got[name]
        assert (s.kind, s.widget, s.optional, s.flag, s.positional, s.group, s.element) == (
            kind, widget, optional, flag, positional, group, element,
        ), name  # fmt: skip
    assert got["precision"].choices == ("auto", "fp32", "bf16", "fp16")
    assert got["latent_init"].choices == ("codes", "noise") and got["lr"].choices == ()
    assert got["lr"].help == "Learning rate (step size) of the optimiser."
    # Defaults are the dataclass's, lists included (each a fresh copy).
    defaults = RunConfig()
    for s in got.values():
        assert s.default == getattr(defaults, s.name), s.name
    assert got["size"].default == [256, 256] and got["image_prompts"].default == []
    assert RunConfig().size is not RunConfig().size
    assert settings()[0].name == "prompt"  # in the order of the fields


# (setting, text typed, value read)
READS = [
    ("image_prompts", "  a.png \n\n b.png:0.5  \n", ["a.png", "b.png:0.5"]),
    ("image_prompts", " \n ", []),
    ("noise_prompt_seeds", " 1, 2,,3 ", [1, 2, 3]),
    ("noise_prompt_seeds", "", []),
    ("noise_prompt_weights", "0.5,, -1, ", [0.5, -1.0]),
    ("size", " 640 480 ", [640, 480]),
    ("size", "640x480", [640, 480]),
    ("size", "640 × 480", [640, 480]),
    ("size", "640 ,480", [640, 480]),
    ("size", "640X480", [640, 480]),  # a capital X, as some people type it
    ("size", " 640 X 480 ", [640, 480]),
    ("augment", " ON ", True),
    ("augment", "Yes", True),
    ("augment", "1", True),
    ("augment", "true", True),
    ("augment", "off", False),
    ("augment", "", False),
    ("seed", "", None),
    ("seed", " Random ", None),
    ("seed", " 12 ", 12),
    ("iterations", " 7 ", 7),
    ("lr", " 1e-1 ", 0.1),
    ("prompt", "  a cat  ", "  a cat  "),  # kept as typed: the prompt syntax reads it
    ("snapshots", " pow2 ", " pow2 "),
    ("init_image", "  ", None),
    ("init_image", " a.png ", " a.png "),
    ("vqgan", "  ", "  "),  # not optional: refused later by validate, with the known names
    ("optimizer", "sgd", "sgd"),
]


@pytest.mark.parametrize("name, text, value", READS)
def test_typed_text_is_read_by_the_settings_kind(name, text, value):
    got = described()[name].parse(text)
    assert got == value and type(got) is type(value)


PAIR = "size needs two whole numbers, width and height (e.g. 640x480 or 640 480), got {!r}."
# (setting, text typed, the complete message)
UNREADABLE = [
    ("size", "640", PAIR.format("640")),
    ("size", "1 2 3", PAIR.format("1 2 3")),  # the text as typed, not as split
    ("size", "640x480x", PAIR.format("640x480x")),  # trailing junk is no size
    ("size", " x640x480", PAIR.format("x640x480")),
    ("size", "640,,480", PAIR.format("640,,480")),
    ("size", "640x", PAIR.format("640x")),
    ("size", "", PAIR.format("")),
    ("size", "ax2", "size: 'a' is not a whole number."),
    ("noise_prompt_seeds", "1, x ", "noise_prompt_seeds: 'x' is not a whole number."),
    ("noise_prompt_weights", "half", "noise_prompt_weights: 'half' is not a number."),
    ("seed", " x ", "seed: 'x' is not a whole number."),
    ("iterations", "ten", "iterations: 'ten' is not a whole number."),
    ("lr", " fast ", "lr: 'fast' is not a number."),
    ("prompt", " fog: ", "The prompt 'fog:' ends in ':' with no weight after it. Write "
     "'text:weight' (e.g. 'fog:0.5'), or leave the colon out."),
    ("snapshots", "every:0", "Snapshot item 'every:0': every:N needs N of at least 1. Use "
     "comma-separated items: an iteration number (50), every:N (every:100), pow2, last."),
]  # fmt: skip


@pytest.mark.parametrize("name, text, message", UNREADABLE)
def test_text_that_cannot_be_read_names_its_setting(name, text, message):
    with pytest.raises(ConfigError) as caught:
        described()[name].parse(text)
    assert (str(caught.value), caught.value.field) == (message, name)


def test_an_optional_number_reads_empty_as_none():
    for kind, element in (("int", int), ("float", float)):
        s = Setting(name="limit", kind=kind, default=None, help="", group="", optional=True)
        assert s.parse("") is None and s.parse(" random ") is None
        assert s.parse(" 5 ") == 5 and type(s.parse("5")) is element
        assert s.format(None) == ""
    with pytest.raises(ConfigError, match=r"^limit: 'x' is not a whole number\.$"):
        Setting(name="limit", kind="int", default=None, help="", group="").parse("x")


def test_values_are_written_as_text_that_reads_back():
    got = described()
    assert got["image_prompts"].format(["a.png", "b.png:0.5"]) == "a.png\nb.png:0.5"
    assert got["noise_prompt_weights"].format([0.5, -1.0]) == "0.5, -1.0"
    assert got["size"].format([640, 480]) == "640, 480"
    assert got["seed"].format(None) == "random" and got["seed"].format(3) == "3"
    assert got["init_image"].format(None) == "" and got["augment"].format(False) == "False"


# (typed, the prompts read): surrounding spaces go, the weight and stop are read.
PROMPTS = [
    ("  a lighthouse  ", [PromptSpec("a lighthouse")]),
    (" fog:0.5 ", [PromptSpec("fog", 0.5)]),
    (" fog :2 | rain: x ", [PromptSpec("fog", 2.0), PromptSpec("rain: x")]),
    ("sun:2:0.5 ", [PromptSpec("sun", 2.0, 0.5)]),
    ("sun:-1:inf", [PromptSpec("sun", -1.0, math.inf)]),
    (" fog : 2 : 0.5 ", [PromptSpec("fog : 2 : 0.5")]),  # a space after the colon: text
    ("a\tb\nc\r", [PromptSpec("a\tb\nc")]),  # tabs and line breaks are no control characters
    ("x" * 10_000, [PromptSpec("x" * 10_000)]),
]


@pytest.mark.parametrize("text, specs", PROMPTS)
def test_prompts_are_read_without_their_surrounding_spaces(text, specs):
    assert parse_prompts(text) == specs


def test_one_prompt_is_read_without_its_surrounding_spaces():
    assert parse_prompt(" a.png:0.5 ") == PromptSpec("a.png", 0.5)
    assert parse_prompt(" a.png ") == PromptSpec("a.png")
    assert parse_prompt("  :  ") == PromptSpec(":")  # a lone colon is text
    assert parse_prompt("sun:1:0.2") == PromptSpec("sun", 1.0, 0.2)
    assert parse_prompt("sun:1").stop == -math.inf


WEIGHT = "weights must be finite numbers such as 1, 0.5 or -1."
# (typed, the complete message)
BAD_PROMPTS = [
    (" fog: ", "The prompt 'fog:' ends in ':' with no weight after it. Write 'text:weight' "
     "(e.g. 'fog:0.5'), or leave the colon out."),
    ("fog:nan", f"The prompt 'fog:nan' has weight 'nan'; {WEIGHT}"),
    (" fog:inf ", f"The prompt 'fog:inf' has weight 'inf'; {WEIGHT}"),
    ("fog :-Infinity", f"The prompt 'fog :-Infinity' has weight '-Infinity'; {WEIGHT}"),
    (" fog:1..2 ", "The prompt 'fog:1..2' ends in ':1..2', which looks like a weight but is not "
     "a number. Write 'text:weight' or 'text:weight:stop' with plain numbers (e.g. 'fog:0.5' "
     "or 'fog:-1:0.8'), or put a space after the colon to keep it as text."),
    (":2", "A prompt in ':2' has a weight but no text. Write 'text:weight', e.g. 'fog:0.5'."),
    ("fog:1e999", "The prompt 'fog' has weight inf; weights must be finite numbers."),
    ("x" * 10_001, "The prompt is 10001 characters long; CLIP reads only about 77 tokens (a "
     "few hundred characters) of each prompt. Use a shorter prompt (at most 10000 characters), "
     "or split the text into several '|' prompts."),
    ("a\x07b", "The prompt holds the control character U+0007, which is no text CLIP can read "
     "(often a paste from a terminal or a file with binary data). Type the prompt again, or "
     "paste it as plain text."),
    ("a | \u200b", "A prompt in 'a | \\u200b' holds only invisible characters (zero-width "
     "spaces or joiners, or other formatting marks). Type visible words, or remove it."),
    ("a|\u200b", "A prompt in 'a|\\u200b' holds only invisible characters (zero-width "
     "spaces or joiners, or other formatting marks). Type visible words, or remove it."),
]  # fmt: skip


@pytest.mark.parametrize("text, message", BAD_PROMPTS)
def test_each_malformed_prompt_gets_its_complete_message(text, message):
    with pytest.raises(ConfigError) as caught:
        parse_prompts(text)
    assert str(caught.value) == message


@pytest.mark.parametrize(
    "text, name",
    [
        ("A Lighthouse | fog:0.5", "a-lighthouse"),  # the first prompt only
        ("  Misty   harbour_at-dawn!  ", "misty-harbour-at-dawn"),
        ("--a--b--", "a-b"),
        ("x" * 39 + " y", "x" * 39),  # cut at 40, and no dash left at the end
        ("é" * 50, "é" * 40),
        ("  ", "run"),
    ],
)
def test_slug_is_lowercase_words_joined_by_dashes(text, name):
    assert slug(text) == name


def test_slug_is_cut_at_the_limit_asked():
    assert slug("a lighthouse in the fog", limit=12) == "a-lighthouse"
    assert slug("a lighthouse in the fog", 13) == "a-lighthouse"


def extra() -> type:
    """Settings of kinds RunConfig does not use (yet): how a new one would be described.
    Made inside the tests, so that _setting runs while they do (not once at import)."""

    @dataclasses.dataclass
    class Extra:
        limit: int | None = _setting(None, "A cap, or empty for none.", group="speed")
        ratio: float | None = _setting(None, "A ratio, or empty.")
        tags: list[str] = _setting(["a"], "Tags.", group="output", flag="tag", recipe=False)
        options: dict = _setting({"k": 1}, "Options.")
        level: int = _setting(3, "A level.")

    return Extra


def test_a_setting_field_carries_its_help_group_and_extras():
    Extra = extra()
    limit, ratio, tags, options, level = dataclasses.fields(Extra)
    assert dict(limit.metadata) == {"help": "A cap, or empty for none.", "group": "speed"}
    assert dict(ratio.metadata) == {"help": "A ratio, or empty.", "group": "generation"}
    assert dict(tags.metadata) == {"help": "Tags.", "group": "output", "flag": "tag",
                                   "recipe": False}  # fmt: skip
    assert limit.default is None and tags.default is dataclasses.MISSING
    assert level.default == 3 and dict(level.metadata) == {
        "help": "A level.",
        "group": "generation",
    }
    # A list or dict default is copied for each config, never shared between them.
    first, second = Extra(), Extra()
    assert first.tags == ["a"] and first.options == {"k": 1}
    assert first.tags is not second.tags and first.options is not second.options
    first.tags.append("b")
    assert Extra().tags == ["a"]


def test_optional_numbers_are_described_as_numbers_read_empty_as_none():
    limit, ratio, tags, _, level = (_describe(f) for f in dataclasses.fields(extra()))
    assert (limit.kind, limit.optional, limit.widget, limit.element) == ("int", True, "text", int)
    assert (ratio.kind, ratio.optional, ratio.element) == ("float", True, float)
    assert (level.kind, level.optional, level.default) == ("int", False, 3)
    assert limit.parse("") is None and limit.parse(" 8 ") == 8 and ratio.parse("0.5") == 0.5
    assert (tags.kind, tags.widget, tags.flag, tags.default) == (
        "lines",
        "textarea",
        "--tag",
        ["a"],
    )


def test_the_recipe_is_every_setting_but_where_the_run_is_written_and_who_signs_it():
    config = RunConfig(prompt="a cat", seed=3, out="elsewhere", name="mine")
    recipe = config.recipe()
    where = ("out", "name", "credentials", "signing_cert", "signing_key", "timestamp_url")
    assert recipe == {k: v for k, v in config.to_dict().items() if k not in where}
    assert recipe["prompt"] == "a cat" and recipe["seed"] == 3


def test_json_is_indented_and_keeps_text_as_typed():
    config = RunConfig(prompt="Oregon 💚", size=[64, 32])
    text = config.to_json()
    assert text == json.dumps(config.to_dict(), indent=2, ensure_ascii=False)
    assert text.startswith('{\n  "prompt": "Oregon 💚",\n  "image_prompts": []')
    assert RunConfig.from_json(text) == config


def test_brief_cuts_a_long_value_to_the_limit():
    assert brief("x" * 58) == repr("x" * 58)  # 60 characters with the quotes: kept
    assert brief("x" * 59) == "'" + "x" * 58 + "…"  # 61: cut to 60
    assert brief([1, 2, 3], 9) == "[1, 2, 3]" and brief([1, 2, 3, 4], 9) == "[1, 2, 3…"
    assert brief(10**5000) == "a number of thousands of digits"
