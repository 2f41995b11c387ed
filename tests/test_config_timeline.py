"""The settings added with the prompt timeline and content credentials, checked in full:
the timeline's syntax and its messages, the prompts in force, and the signing settings."""

from __future__ import annotations

import json

import pytest

from vqclip.config import ConfigError, PromptChange, RunConfig, _is_number, parse_change

HOW = (
    "Write 'ITERATION: prompts' (e.g. '200: a tree:1 | fog:0.5'), 'ITERATION images: "
    "a.png | b.png:0.5' or 'ITERATION noise: 7:0.5 | 9', the iteration a whole number of at "
    "least 1."
)


@pytest.mark.parametrize(
    "line,change",
    [
        ("1: a tree", PromptChange(1, "prompt", "a tree")),  # the first step may change
        ("5: a tree", PromptChange(5, "prompt", "a tree")),
        ("  12   :  a tree:1 | fog:0.5  ", PromptChange(12, "prompt", "a tree:1 | fog:0.5")),
        ("7 images: a.png | b.png:0.5", PromptChange(7, "images", "a.png | b.png:0.5")),
        ("7IMAGES:a.png", PromptChange(7, "images", "a.png")),
        ("9 Noise: 3:0.5 | 4", PromptChange(9, "noise", "3:0.5 | 4")),
        ("9 noise:", PromptChange(9, "noise", "")),
        ("3:\nmulti\nline", PromptChange(3, "prompt", "multi\nline")),
    ],
)
def test_a_line_reads_as_its_change_and_writes_back(line, change):
    assert parse_change(line) == change
    assert parse_change(change.line()) == change


def test_lines_are_written_in_one_form():
    assert PromptChange(5, "prompt", "a tree").line() == "5: a tree"
    assert PromptChange(5, "images", "a.png").line() == "5 images: a.png"
    assert PromptChange(5, "noise", "3").line() == "5 noise: 3"


def test_each_kind_sets_its_own_settings():
    assert PromptChange(1, "prompt", " a | b:2 ").settings() == {"prompt": " a | b:2 "}
    assert PromptChange(1, "images", " a.png | | b.png:0.5 ").settings() == {
        "image_prompts": ["a.png", "b.png:0.5"]
    }
    assert PromptChange(1, "noise", "3:0.5 | 4 | 5: ").settings() == {
        "noise_prompt_seeds": [3, 4, 5],
        "noise_prompt_weights": [0.5, 1.0, 1.0],
    }
    assert PromptChange(1, "noise", "").settings() == {
        "noise_prompt_seeds": [],
        "noise_prompt_weights": [],
    }


@pytest.mark.parametrize(
    "line,message",
    [
        ("a tree", f"The timeline line 'a tree' is not a change of prompts. {HOW}"),
        ("-5: a tree", f"The timeline line '-5: a tree' is not a change of prompts. {HOW}"),
        (7, f"The timeline line 7 is not a change of prompts. {HOW}"),
        ("0: a tree", f"The timeline line '0: a tree' is at iteration 0. {HOW}"),
        (" 00 : a tree ", f"The timeline line '00 : a tree' is at iteration 0. {HOW}"),
        (
            "5 colour: red",
            f"The timeline line '5 colour: red' names 'colour', which is not images or noise. {HOW}",
        ),
        (
            "5 noise: 3 | x:1",
            "The timeline line '5 noise: 3 | x:1' has the noise prompt 'x:1'; write each as SEED "
            "or SEED:WEIGHT with plain numbers, e.g. '7:0.5 | 9'.",
        ),
        (
            "5 noise: 3:heavy",
            "The timeline line '5 noise: 3:heavy' has the noise prompt '3:heavy'; write each as "
            "SEED or SEED:WEIGHT with plain numbers, e.g. '7:0.5 | 9'.",
        ),
        (
            "5 noise: 3:nan",
            "The timeline line '5 noise: 3:nan' has the noise prompt '3:nan'; write each as SEED "
            "or SEED:WEIGHT with plain numbers, e.g. '7:0.5 | 9'.",
        ),
    ],
)
def test_a_line_that_is_no_change_says_how_to_write_one(line, message):
    with pytest.raises(ConfigError) as error:
        parse_change(line)
    assert str(error.value) == message


def test_numbers_are_finite_plain_numbers():
    assert _is_number("0.5") and _is_number(" -2 ") and _is_number("1e3")
    assert not _is_number("inf") and not _is_number("nan") and not _is_number("x")


def test_the_prompts_in_force_take_each_kinds_last_line_up_to_the_iteration():
    config = RunConfig(
        prompt="a seed",
        image_prompts=["x.png"],
        noise_prompt_seeds=[1],
        timeline=["8: a tree", "4: a sprout", "4 noise: 2:0.5", "8: a forest", "9 images:"],
        iterations=20,
    )
    assert config.prompts_at(3) == config.replace(timeline=[])
    at4 = config.prompts_at(4)
    assert (at4.prompt, at4.noise_prompt_seeds, at4.noise_prompt_weights) == (
        "a sprout",
        [2],
        [0.5],
    )
    assert at4.image_prompts == ["x.png"] and at4.timeline == []
    assert config.prompts_at(8).prompt == "a forest"  # two lines at one iteration: the last
    assert config.prompts_at(9).image_prompts == [] and config.prompts_at(9).prompt == "a forest"
    assert config.timeline == [
        "8: a tree",
        "4: a sprout",
        "4 noise: 2:0.5",
        "8: a forest",
        "9 images:",
    ]


@pytest.mark.parametrize(
    "timeline,message",
    [
        (["a tree"], f"The timeline line 'a tree' is not a change of prompts. {HOW}"),
        (
            ["5: fog:0"],
            "After the timeline line '5: fog:0': Nothing to aim for: every prompt has weight 0, "
            "so nothing pulls or pushes the picture. Give a prompt a weight other than 0 (e.g. "
            "'cat:1').",
        ),
        (
            ["3: a tree", "5:"],
            "After the timeline line '5: ': Nothing to aim for: give a text prompt, an image "
            "prompt, a noise prompt or an init image.",
        ),
        (
            ["5:", "5 noise: 3:-0"],  # a noise prompt of weight 0 aims at nothing either
            "After the timeline line '5: ': Nothing to aim for: every prompt has weight 0, so "
            "nothing pulls or pushes the picture. Give a prompt a weight other than 0 (e.g. "
            "'cat:1').",
        ),
    ],
)
def test_a_timeline_is_checked_line_by_line_naming_the_line(timeline, message):
    with pytest.raises(ConfigError) as error:
        RunConfig(prompt="a seed", iterations=20, timeline=timeline).validate()
    assert (str(error.value), error.value.field) == (message, "timeline")


def test_a_timeline_that_keeps_something_to_aim_for_passes():
    config = RunConfig(
        prompt="fog:0", noise_prompt_seeds=[3], timeline=["5 noise:", "5: a tree", "99: a sky"]
    )
    assert config.validate() is config  # past the end: a notice when the run starts


@pytest.mark.parametrize(
    "changes,field,message",
    [
        (
            {"signing_cert": "cert.pem"},
            "signing_key",
            "signing_cert and signing_key go together: give both (your certificate chain and "
            "its private key), or neither to sign with the local identity.",
        ),
        (
            {"signing_key": "key.pem"},
            "signing_cert",
            "signing_cert and signing_key go together: give both (your certificate chain and "
            "its private key), or neither to sign with the local identity.",
        ),
        (
            {"signing_cert": "cert.pem", "signing_key": "gone.pem"},
            "signing_key",
            "signing_key file 'gone.pem' does not exist.",
        ),
        (
            {"signing_cert": "gone.pem", "signing_key": "key.pem"},
            "signing_cert",
            "signing_cert file 'gone.pem' does not exist.",
        ),
        (
            {"timestamp_url": "ftp://tsa.example"},
            "timestamp_url",
            "timestamp_url 'ftp://tsa.example' is not an http(s) URL; give the address of an "
            "RFC 3161 timestamp authority, or leave it empty.",
        ),
        (
            {"timestamp_url": "http://tsa.example/ now"},
            "timestamp_url",
            "timestamp_url 'http://tsa.example/ now' is not an http(s) URL; give the address of "
            "an RFC 3161 timestamp authority, or leave it empty.",
        ),
    ],
)
def test_the_signing_settings_are_refused_naming_the_setting(
    changes, field, message, tmp_path, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "cert.pem").write_text("x")
    (tmp_path / "key.pem").write_text("x")
    with pytest.raises(ConfigError) as error:
        RunConfig(prompt="a cat", **changes).validate()
    assert str(error.value).startswith(message) and error.value.field == field


def test_good_signing_settings_pass(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "cert.pem").write_text("x")
    (tmp_path / "key.pem").write_text("x")
    for changes in (
        {"signing_cert": "cert.pem", "signing_key": "key.pem"},
        {"timestamp_url": "https://tsa.example/sign"},
        {"timestamp_url": "http://tsa.example"},
    ):
        assert RunConfig(prompt="a cat", **changes).validate()


def test_json_keeps_text_as_typed():
    assert '"prompt": "Oregon 💚"' in RunConfig(prompt="Oregon 💚").to_json()
    assert json.loads(RunConfig(prompt="é").to_json())["prompt"] == "é"
