"""Validation of a whole RunConfig, before any model loads: each value of the kind its
setting holds (``check_shapes``: JSON read from a file can hold anything), then within its
bounds, files that exist, prompts that can be read and something to aim for (``validate``).
The first problem found raises ConfigError naming its field, with a message that says how
to fix it. ``RunConfig.validate`` and ``RunConfig.check_shapes`` call these. No torch.
"""

from __future__ import annotations

import os
import re
from typing import TYPE_CHECKING, Any

from vqclip.checks import (
    MAX_CUTN,
    MAX_ITERATIONS,
    MAX_SIDE,
    ConfigError,
    _about,
    _check,
    _control,
    _finite,
    _memory_reason,
    _visible,
    _whole,
    brief,
    check_file,
    check_name,
)
from vqclip.ensemble import parse_clip_spec
from vqclip.prompt_syntax import parse_change, parse_prompt, parse_prompts
from vqclip.registry import VQGAN_MODELS
from vqclip.schedules import ScheduleError, parse_schedule
from vqclip.settings import Setting, describe

if TYPE_CHECKING:
    from vqclip.config import RunConfig


def check_shapes(config: RunConfig) -> RunConfig:
    """ConfigError naming the first setting whose value is of the wrong kind (a number
    where text belongs, text where a list of numbers belongs, null where a value is
    needed…); the values themselves are checked by ``validate``. Returns config."""
    for setting in describe(type(config)):
        value = getattr(config, setting.name)
        if not _shape_ok(setting, value):
            message = _SHAPES[setting.kind]  # every kind _describe gives
            if setting.kind == "pair":  # the message validate gives for a bad size
                raise ConfigError(
                    f"size must be two positive whole numbers (width height), got "
                    f"{brief(value)}. Try --size 256 256.",
                    "size",
                )
            raise ConfigError(
                f"{setting.name} must be {message}"
                f"{' (or empty)' if setting.optional and setting.kind != 'seed' else ''}, "
                f"got {brief(value)} ({_kind_of(value)}). Write it as {setting.flag} shows "
                f"in `vqclip generate --help`.",
                setting.name,
            )
    return config


def validate(config: RunConfig) -> RunConfig:
    """Raise ConfigError for the first invalid setting; return config when all are valid."""
    check_shapes(config)
    described = describe(type(config))
    _check(
        len(config.size) == 2 and all(isinstance(v, int) and v > 0 for v in config.size),
        f"size must be two positive whole numbers (width height), got {brief(config.size)}. "
        "Try --size 256 256.",
        "size",
    )
    _check(
        max(config.size) <= MAX_SIDE,
        f"size {brief(config.size[0], 12)}x{brief(config.size[1], 12)} is larger than "
        f"{MAX_SIDE} pixels on a side, the most vqclip makes{_memory_reason(config.size)}. "
        "Try --size 512 512 or less (upscale the result afterwards).",
        "size",
    )
    _check(
        isinstance(config.iterations, int) and 1 <= config.iterations <= MAX_ITERATIONS,
        f"iterations must be a whole number of at least 1 and at most {MAX_ITERATIONS:,}, "
        f"got {brief(config.iterations)}.",
        "iterations",
    )
    _check(
        isinstance(config.cutn, int) and 1 <= config.cutn <= MAX_CUTN,
        f"cutn (cutouts per step) must be at least 1 and at most {MAX_CUTN}, got "
        f"{brief(config.cutn)}. 32 is typical.",
        "cutn",
    )
    _check(
        isinstance(config.clip_batch, int) and 0 <= config.clip_batch <= MAX_CUTN,
        f"clip_batch must be 0 (automatic) or a positive whole number up to {MAX_CUTN}, "
        f"got {brief(config.clip_batch)}. Try 8 when memory is short.",
        "clip_batch",
    )
    _check(
        _finite(config.cut_pow) and config.cut_pow > 0,
        f"cut_pow must be a positive number, got {brief(config.cut_pow)}. 1.0 is typical.",
        "cut_pow",
    )
    _check(
        _finite(config.lr) and config.lr > 0,
        f"lr (learning rate) must be a positive number, got {brief(config.lr)}. 0.1 is typical.",
        "lr",
    )
    for name in ("init_weight", "tv_weight"):
        value = getattr(config, name)
        _check(
            _finite(value) and value >= 0,
            f"{name} must be zero or a positive number, got {brief(value)}.",
            name,
        )
    choices = {s.name: s.choices for s in described}  # the schema's, declared with the field
    for name in ("optimizer", "device", "precision", "latent_init", "checkpointing"):
        value = getattr(config, name)
        _check(
            value in choices[name],
            f"{name} {value!r} is not one of {', '.join(choices[name])}.",
            name,
        )
    _check(
        config.seed is None or (isinstance(config.seed, int) and 0 <= config.seed < 2**63),
        f"seed must be a whole number from 0 to 2**63-1, or empty for a random one; "
        f"got {brief(config.seed)}.",
        "seed",
    )
    _check(
        (config.vqgan_config is None) == (config.vqgan_checkpoint is None),
        "vqgan_config and vqgan_checkpoint go together: give both local files "
        "(the yaml and the .ckpt), or neither to use a model from the registry.",
        "vqgan_checkpoint" if config.vqgan_checkpoint is None else "vqgan_config",
    )
    for label, path in (
        ("vqgan_config", config.vqgan_config),
        ("vqgan_checkpoint", config.vqgan_checkpoint),
        ("init_image", config.init_image),
    ):
        if path is not None:
            check_file(path, label, label)
    _check(
        (config.signing_cert is None) == (config.signing_key is None),
        "signing_cert and signing_key go together: give both (your certificate chain and "
        "its private key), or neither to sign with the local identity.",
        "signing_key" if config.signing_key is None else "signing_cert",
    )
    for label in ("signing_cert", "signing_key"):
        if getattr(config, label) is not None:
            check_file(getattr(config, label), label, label)
    if config.timestamp_url is not None:
        _check(
            re.match(r"https?://\S+$", config.timestamp_url) is not None,
            f"timestamp_url {brief(config.timestamp_url)} is not an http(s) URL; give the "
            "address of an RFC 3161 timestamp authority, or leave it empty.",
            "timestamp_url",
        )
    out = str(config.out)  # text or a path: check_shapes ran first
    _check(
        _visible(out) and not _control(out),
        f"out {config.out!r} is no usable folder name: give --out a directory path of "
        "visible characters, e.g. --out runs.",
        "out",
    )
    if config.name is not None:
        _about("name", check_name, config.name)
    if config.vqgan_config is None:
        _check(
            config.vqgan in VQGAN_MODELS,
            f"Unknown VQGAN model {config.vqgan!r}. Known models: "
            f"{', '.join(VQGAN_MODELS)}; or give local files with "
            "--vqgan-config and --vqgan-checkpoint.",
            "vqgan",
        )
    parse_clip_spec(config.clip_model)  # one CLIP, or an ensemble "name:weight,name:weight"
    _check_aims(config)
    _check_timeline(config)
    try:
        schedule = parse_schedule(config.snapshots)
    except ScheduleError as error:
        raise ConfigError(str(error), "snapshots") from None
    beyond = sorted(i for i in schedule.at if i > config.iterations)
    _check(
        not beyond,
        f"Snapshot iteration(s) {', '.join(map(str, beyond))} are beyond the run's "
        f"{config.iterations} iterations. Raise --iterations, or keep snapshots from 0 to "
        f"{config.iterations} ('last' is the final one).",
        "snapshots",
    )
    return config


def _check_aims(config: RunConfig) -> None:
    """The prompts: each readable, their files there, and something to aim for."""
    for seed in config.noise_prompt_seeds:
        _check(
            0 <= seed < 2**63,
            f"noise prompt seeds must be whole numbers from 0 to 2**63-1; got {brief(seed)}.",
            "noise_prompt_seeds",
        )
    for weight in config.noise_prompt_weights:
        _check(
            _finite(weight),
            f"noise prompt weights must be finite numbers such as 1, 0.5 or -1; got "
            f"{brief(weight)}.",
            "noise_prompt_weights",
        )
    _check(
        len(config.noise_prompt_weights) <= len(config.noise_prompt_seeds),
        f"{len(config.noise_prompt_weights)} noise prompt weights were given for "
        f"{len(config.noise_prompt_seeds)} noise prompt seeds; give one weight per seed at most.",
        "noise_prompt_weights",
    )
    prompts = _about("prompt", parse_prompts, config.prompt)
    images = [_about("image_prompts", parse_prompt, p) for p in config.image_prompts]
    for image in images:
        check_file(image.text, "Image prompt", "image_prompts")
    _check(
        bool(prompts or images or config.noise_prompt_seeds or config.init_image),
        "Nothing to aim for: give a text prompt, an image prompt, a noise prompt or an init image.",
        "prompt",
    )
    noise = config.noise_prompt_weights[: len(config.noise_prompt_seeds)]
    noise += [1.0] * (len(config.noise_prompt_seeds) - len(noise))  # unweighted ones pull
    _check(
        any(p.weight for p in prompts + images) or any(noise) or bool(config.init_image),
        "Nothing to aim for: every prompt has weight 0, so nothing pulls or pushes the "
        "picture. Give a prompt a weight other than 0 (e.g. 'cat:1').",
        "prompt",
    )


def _check_timeline(config: RunConfig) -> None:
    """Each timeline line readable, and the prompts in force after each change still
    something to aim for (the message names the line)."""
    changes = [_about("timeline", parse_change, line) for line in config.timeline]
    for change in changes:  # (a change beyond the last iteration is only a notice)
        try:
            _check_aims(config.prompts_at(change.iteration))
        except ConfigError as error:
            raise ConfigError(
                f"After the timeline line {change.line()!r}: {error}", "timeline"
            ) from None


_PATHLIKE = (str, os.PathLike)
# kind -> (is one value of that kind, what the message says belongs there)
_SHAPES = {
    "text": "text",
    "choice": "text",
    "bool": "true or false",
    "int": "a whole number",
    "seed": "a whole number, or empty for a random one",
    "float": "a number",
    "pair": "two whole numbers",
    "lines": "a list of text",
    "ints": "a list of whole numbers",
    "floats": "a list of numbers",
}


def _shape_ok(setting: Setting, value: Any) -> bool:
    """Whether value is of the kind the setting holds (not whether it is a good value)."""
    kind = setting.kind
    if value is None:
        return setting.optional
    if kind in ("text", "choice"):
        return isinstance(value, _PATHLIKE)
    if kind == "bool":
        return isinstance(value, bool)
    if kind in ("int", "seed"):
        return _whole(value)
    if kind == "float":
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    one = {"pair": _whole, "ints": _whole, "lines": lambda v: isinstance(v, str)}.get(
        kind, lambda v: isinstance(v, (int, float)) and not isinstance(v, bool)
    )
    return (
        isinstance(value, (list, tuple))
        and (kind != "pair" or len(value) == 2)
        and all(one(v) for v in value)
    )


def _kind_of(value: Any) -> str:
    """How JSON would name value's type, for messages about a value of the wrong kind."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true/false"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "text"
    if isinstance(value, (list, tuple)):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__
