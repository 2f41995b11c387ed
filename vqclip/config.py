"""RunConfig: every setting of a run and its default, in one place.

The CLI flags and the notebook panel are generated from the fields below (their
``metadata`` carries the help text, choices and grouping), so a new setting is added
here and nowhere else. Validation lives here too, so a bad value is caught once, with
a clear message, before any model loads. This module does not import torch.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vqclip.registry import VQGAN_MODELS
from vqclip.schedules import ScheduleError, parse_schedule

DEFAULT_VQGAN = "vqgan_imagenet_f16_16384"
DEFAULT_CLIP = "ViT-B/32"
OPTIMIZERS = ("adam", "adamw", "sgd", "adagrad", "rmsprop")
DEVICES = ("auto", "cpu", "cuda")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
LATENT_INITS = ("codes", "noise")
CHECKPOINTING = ("auto", "on", "off")


class ConfigError(ValueError):
    """A setting is invalid; the message says which, why, and how to fix it.

    ``field`` names the RunConfig field it is about (None when no single one is), so the
    panel can put the message beside that field.
    """

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


def _setting(default: Any, help: str, group: str = "generation", **extra: Any) -> Any:
    """A dataclass field whose metadata feeds the CLI and the widget panel."""
    meta = {"help": help, "group": group, **extra}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class RunConfig:
    """Everything that defines a run. Same config + same seed + same models = same image."""

    prompt: str = _setting(
        "",
        "Text prompts: 'text:weight:stop | text:weight | …'. Negative weights push away; "
        "only a trailing number after ':' is a weight, so 'Time: 12:30' stays text.",
        group="prompts",
        positional=True,
    )
    image_prompts: list[str] = _setting(
        [], "Image prompts, each 'PATH' or 'PATH:weight'.", group="prompts", flag="image-prompt"
    )
    noise_prompt_seeds: list[int] = _setting(
        [], "Seeds of random-embedding noise prompts.", group="prompts", flag="noise-prompt-seed"
    )
    noise_prompt_weights: list[float] = _setting(
        [],
        "Weights of the noise prompts, in the order of their seeds (default 1 each).",
        group="prompts",
        flag="noise-prompt-weight",
    )
    timeline: list[str] = _setting(
        [],
        "Prompt changes during the run, one per line: 'ITERATION: prompts' replaces the text "
        "prompts from that iteration on; 'ITERATION images: a.png | b.png:0.5' the image "
        "prompts; 'ITERATION noise: 7:0.5 | 9' the noise prompts. Story mode and steering "
        "write these lines.",
        group="prompts",
    )
    init_image: str | None = _setting(
        None, "Start from this image instead of random codes.", group="prompts"
    )
    init_weight: float = _setting(
        0.0,
        "Pull toward the init image's latent (mean squared distance to it, times this "
        "weight); 0 lets the picture drift freely from the init image.",
        group="prompts",
    )
    size: list[int] = _setting(
        [256, 256],
        "Width and height in pixels; rounded to a multiple of the VQGAN's factor (16).",
        nargs=2,
        metavar=("W", "H"),
    )
    iterations: int = _setting(300, "Number of optimisation steps.")
    seed: int | None = _setting(None, "Random seed; empty picks one and records it.")
    lr: float = _setting(0.1, "Learning rate (step size) of the optimiser.")
    optimizer: str = _setting("adam", "Optimiser.", choices=OPTIMIZERS)
    cutn: int = _setting(32, "Cutouts per step; more is smoother but slower.")
    cut_pow: float = _setting(
        1.0, "Cutout size power: above 1 favours small cutouts (detail), below 1 large ones."
    )
    augment: bool = _setting(
        True, "Random flips, small affine jitter and noise on the cutouts.", negatable=True
    )
    full_cutout: bool = _setting(
        False,
        "Use one cutout of the whole image (ignores cutn and cut_pow); "
        "with augment off the loss is exactly CLIP's view of the picture.",
    )
    tv_weight: float = _setting(0.0, "Total-variation weight: higher is smoother.")
    latent_init: str = _setting(
        "codes", "Initial latent: random codebook entries or noise.", choices=LATENT_INITS
    )
    vqgan: str = _setting(DEFAULT_VQGAN, "VQGAN model name from the registry.", group="models")
    vqgan_config: str | None = _setting(
        None, "Local VQGAN yaml (overrides --vqgan).", group="models"
    )
    vqgan_checkpoint: str | None = _setting(
        None, "Local VQGAN .ckpt, with --vqgan-config.", group="models"
    )
    clip_model: str = _setting(
        DEFAULT_CLIP,
        "CLIP model name (e.g. ViT-B/32) or a local file; several judge together as "
        "name:weight,name:weight (e.g. ViT-B/32:1,ViT-B/16:0.5).",
        group="models",
        flag="clip",
    )
    device: str = _setting("auto", "auto picks cuda when present.", group="speed", choices=DEVICES)
    precision: str = _setting(
        "auto",
        "Compute precision; auto is bf16 where fast and safe, else fp32.",
        group="speed",
        choices=PRECISIONS,
    )
    clip_batch: int = _setting(
        0,
        "Cutouts CLIP sees at a time (less memory, same result); 0 picks what fits.",
        group="speed",
    )
    checkpointing: str = _setting(
        "auto",
        "Decoder gradient checkpointing: less memory, ~1/3 slower; auto uses it only "
        "when the run would not fit otherwise.",
        group="speed",
        choices=CHECKPOINTING,
    )
    snapshots: str = _setting(
        "pow2,every:50,last",
        "Iterations to save, a union of: N, every:N, pow2, last.",
        group="output",
    )
    out: str = _setting(
        "runs", "Directory that receives one run directory per run.", group="output", recipe=False
    )
    credentials: bool = _setting(
        True,
        "Sign every PNG, GIF and MP4 with a C2PA content credential (says it is machine-made; "
        "`vqclip verify` checks it); off writes them unsigned, the recipe still inside.",
        group="output",
        recipe=False,
        negatable=True,
    )
    signing_cert: str | None = _setting(
        None,
        "Your PEM certificate chain (leaf first) to sign with; empty signs with a local "
        "identity made in the cache folder.",
        group="output",
        recipe=False,
    )
    signing_key: str | None = _setting(
        None, "The PEM private key of --signing-cert.", group="output", recipe=False
    )
    timestamp_url: str | None = _setting(
        None,
        "A timestamp authority (RFC 3161) URL: signatures then outlive the certificate; "
        "signing needs the network.",
        group="output",
        recipe=False,
    )
    name: str | None = _setting(
        None, "Run directory name; default is date-time plus prompt.", group="output", recipe=False
    )

    # --- conversion -------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def recipe(self) -> dict[str, Any]:
        """The settings that shape the image (not where it is written): what a PNG carries."""
        return {
            f.name: getattr(self, f.name)
            for f in dataclasses.fields(self)
            if f.metadata.get("recipe", True)
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunConfig:
        """The config a mapping of settings describes (a --config file, a run.json's or a
        PNG recipe's "config"); settings left out keep their defaults. ConfigError naming the
        setting when one is unknown or holds the wrong kind of value (text where a number
        belongs, a list where text belongs, null…): JSON read from a file can hold anything."""
        _check(
            isinstance(data, dict),
            f"Settings must be a mapping of setting: value (a JSON object), got "
            f"{brief(data)} ({type(data).__name__}).",
        )
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(map(str, set(data) - known))
        if unknown:
            raise ConfigError(
                f"Unknown setting(s) {', '.join(unknown)}. Known settings are: "
                f"{', '.join(sorted(known))}. Check the spelling, or remove them."
            )
        return cls(**data).check_shapes()

    def check_shapes(self) -> RunConfig:
        """ConfigError naming the first setting whose value is of the wrong kind (a number
        where text belongs, text where a list of numbers belongs, null where a value is
        needed…); the values themselves are checked by ``validate``. Returns self."""
        for setting in settings():
            value = getattr(self, setting.name)
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
        return self

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, ensure_ascii=False)

    @classmethod
    def from_json(cls, text: str) -> RunConfig:
        return cls.from_dict(json.loads(text))

    def replace(self, **changes: Any) -> RunConfig:
        return dataclasses.replace(self, **changes)

    def prompts_at(self, iteration: int) -> RunConfig:
        """This config with the prompts in force at ``iteration`` (the timeline's lines up to
        it applied in order, the last of a kind winning) and no timeline left."""
        changed: dict[str, Any] = {}
        for change in sorted(map(parse_change, self.timeline), key=lambda c: c.iteration):
            if change.iteration <= iteration:
                changed.update(change.settings())
        return self.replace(**changed, timeline=[])

    # --- validation -------------------------------------------------------------------
    def validate(self) -> RunConfig:
        """Raise ConfigError for the first invalid setting; return self when all are valid."""
        self.check_shapes()
        _check(
            len(self.size) == 2 and all(isinstance(v, int) and v > 0 for v in self.size),
            f"size must be two positive whole numbers (width height), got {brief(self.size)}. "
            "Try --size 256 256.",
            "size",
        )
        _check(
            max(self.size) <= MAX_SIDE,
            f"size {brief(self.size[0], 12)}x{brief(self.size[1], 12)} is larger than "
            f"{MAX_SIDE} pixels on a side: "
            f"the default VQGAN's decoder alone would need about "
            f"{_gib(decoder_floor_bytes(self.size))} GiB of memory for it, even in bf16 "
            "with checkpointing, and no GPU holds that. Try --size 512 512 or less (upscale "
            "the result afterwards).",
            "size",
        )
        _check(
            isinstance(self.iterations, int) and 1 <= self.iterations <= MAX_ITERATIONS,
            f"iterations must be a whole number of at least 1 and at most {MAX_ITERATIONS:,}, "
            f"got {brief(self.iterations)}.",
            "iterations",
        )
        _check(
            isinstance(self.cutn, int) and 1 <= self.cutn <= MAX_CUTN,
            f"cutn (cutouts per step) must be at least 1 and at most {MAX_CUTN}, got "
            f"{brief(self.cutn)}. 32 is typical.",
            "cutn",
        )
        _check(
            isinstance(self.clip_batch, int) and 0 <= self.clip_batch <= MAX_CUTN,
            f"clip_batch must be 0 (automatic) or a positive whole number up to {MAX_CUTN}, "
            f"got {brief(self.clip_batch)}. Try 8 when memory is short.",
            "clip_batch",
        )
        _check(
            _finite(self.cut_pow) and self.cut_pow > 0,
            f"cut_pow must be a positive number, got {brief(self.cut_pow)}. 1.0 is typical.",
            "cut_pow",
        )
        _check(
            _finite(self.lr) and self.lr > 0,
            f"lr (learning rate) must be a positive number, got {brief(self.lr)}. 0.1 is typical.",
            "lr",
        )
        for name in ("init_weight", "tv_weight"):
            value = getattr(self, name)
            _check(
                _finite(value) and value >= 0,
                f"{name} must be zero or a positive number, got {brief(value)}.",
                name,
            )
        for name, choices in (
            ("optimizer", OPTIMIZERS),
            ("device", DEVICES),
            ("precision", PRECISIONS),
            ("latent_init", LATENT_INITS),
            ("checkpointing", CHECKPOINTING),
        ):
            value = getattr(self, name)
            _check(
                value in choices,
                f"{name} {value!r} is not one of {', '.join(choices)}.",
                name,
            )
        _check(
            self.seed is None or (isinstance(self.seed, int) and 0 <= self.seed < 2**63),
            f"seed must be a whole number from 0 to 2**63-1, or empty for a random one; "
            f"got {brief(self.seed)}.",
            "seed",
        )
        _check(
            (self.vqgan_config is None) == (self.vqgan_checkpoint is None),
            "vqgan_config and vqgan_checkpoint go together: give both local files "
            "(the yaml and the .ckpt), or neither to use a model from the registry.",
            "vqgan_checkpoint" if self.vqgan_checkpoint is None else "vqgan_config",
        )
        for label, path in (
            ("vqgan_config", self.vqgan_config),
            ("vqgan_checkpoint", self.vqgan_checkpoint),
            ("init_image", self.init_image),
        ):
            if path is not None:
                check_file(path, label, label)
        _check(
            (self.signing_cert is None) == (self.signing_key is None),
            "signing_cert and signing_key go together: give both (your certificate chain and "
            "its private key), or neither to sign with the local identity.",
            "signing_key" if self.signing_key is None else "signing_cert",
        )
        for label in ("signing_cert", "signing_key"):
            if getattr(self, label) is not None:
                check_file(getattr(self, label), label, label)
        if self.timestamp_url is not None:
            _check(
                re.match(r"https?://\S+$", self.timestamp_url) is not None,
                f"timestamp_url {brief(self.timestamp_url)} is not an http(s) URL; give the "
                "address of an RFC 3161 timestamp authority, or leave it empty.",
                "timestamp_url",
            )
        out = str(self.out)  # text or a path: check_shapes ran first
        _check(
            _visible(out) and not _control(out),
            f"out {self.out!r} is no usable folder name: give --out a directory path of "
            "visible characters, e.g. --out runs.",
            "out",
        )
        if self.name is not None:
            _about("name", check_name, self.name)
        if self.vqgan_config is None:
            _check(
                self.vqgan in VQGAN_MODELS,
                f"Unknown VQGAN model {self.vqgan!r}. Known models: "
                f"{', '.join(VQGAN_MODELS)}; or give local files with "
                "--vqgan-config and --vqgan-checkpoint.",
                "vqgan",
            )
        from vqclip.ensemble import parse_clip_spec  # imported here: it imports this module

        parse_clip_spec(self.clip_model)  # one CLIP, or an ensemble "name:weight,name:weight"
        self._check_aims()
        self._check_timeline()
        try:
            schedule = parse_schedule(self.snapshots)
        except ScheduleError as error:
            raise ConfigError(str(error), "snapshots") from None
        beyond = sorted(i for i in schedule.at if i > self.iterations)
        _check(
            not beyond,
            f"Snapshot iteration(s) {', '.join(map(str, beyond))} are beyond the run's "
            f"{self.iterations} iterations. Raise --iterations, or keep snapshots from 0 to "
            f"{self.iterations} ('last' is the final one).",
            "snapshots",
        )
        return self

    def _check_aims(self) -> None:
        """The prompts: each readable, their files there, and something to aim for."""
        for seed in self.noise_prompt_seeds:
            _check(
                0 <= seed < 2**63,
                f"noise prompt seeds must be whole numbers from 0 to 2**63-1; got {brief(seed)}.",
                "noise_prompt_seeds",
            )
        for weight in self.noise_prompt_weights:
            _check(
                _finite(weight),
                f"noise prompt weights must be finite numbers such as 1, 0.5 or -1; got "
                f"{brief(weight)}.",
                "noise_prompt_weights",
            )
        _check(
            len(self.noise_prompt_weights) <= len(self.noise_prompt_seeds),
            f"{len(self.noise_prompt_weights)} noise prompt weights were given for "
            f"{len(self.noise_prompt_seeds)} noise prompt seeds; give one weight per seed at most.",
            "noise_prompt_weights",
        )
        prompts = _about("prompt", parse_prompts, self.prompt)
        images = [_about("image_prompts", parse_prompt, p) for p in self.image_prompts]
        for image in images:
            check_file(image.text, "Image prompt", "image_prompts")
        _check(
            bool(prompts or images or self.noise_prompt_seeds or self.init_image),
            "Nothing to aim for: give a text prompt, an image prompt, a noise prompt "
            "or an init image.",
            "prompt",
        )
        noise = self.noise_prompt_weights[: len(self.noise_prompt_seeds)]
        noise += [1.0] * (len(self.noise_prompt_seeds) - len(noise))  # unweighted ones pull
        _check(
            any(p.weight for p in prompts + images) or any(noise) or bool(self.init_image),
            "Nothing to aim for: every prompt has weight 0, so nothing pulls or pushes the "
            "picture. Give a prompt a weight other than 0 (e.g. 'cat:1').",
            "prompt",
        )

    def _check_timeline(self) -> None:
        """Each timeline line readable, and the prompts in force after each change still
        something to aim for (the message names the line)."""
        changes = [_about("timeline", parse_change, line) for line in self.timeline]
        for change in changes:  # (a change beyond the last iteration is only a notice)
            try:
                self.prompts_at(change.iteration)._check_aims()
            except ConfigError as error:
                raise ConfigError(
                    f"After the timeline line {change.line()!r}: {error}", "timeline"
                ) from None


MAX_SIDE = 4096  # pixels; even the leanest settings need hundreds of GiB beyond it
MAX_ITERATIONS = 1_000_000  # steps; days of work even on a fast GPU
MAX_CUTN = 10_000  # cutouts per step; runs use 32 to 128, and more would not fit in memory
# The default VQGAN's decoder (vqgan_imagenet_f16_16384: ch 128, ch_mult [1,1,2,2,4], 2 res
# blocks + 1 per level): channels of its up levels from full resolution down, as
# memory.estimate_peak_memory reads them from a loaded model. Kept here, without torch, so a
# size too large for any device is refused with a figure before anything loads.
_DEFAULT_DECODER_CHANNELS = (128, 128, 256, 256, 512)
_DEFAULT_DECODER_BLOCKS = 3


def _gib(count: int) -> str:
    """Bytes as GiB with thousands separators; a count beyond any float is 'more than 10**300'."""
    try:
        return f"{count / 2**30:,.0f}"
    except OverflowError:
        return "more than 10**300"


def decoder_floor_bytes(size: list[int] | tuple[int, int]) -> int:
    """Bytes the default VQGAN's decoder holds at its peak for ``size`` at the leanest
    settings (bf16, gradient checkpointing): the memory estimate's decoder part, no models."""
    pixels = int(size[0]) * int(size[1])
    kept = sum(
        _DEFAULT_DECODER_BLOCKS * (pixels >> (2 * i)) * ch
        for i, ch in enumerate(_DEFAULT_DECODER_CHANNELS)
    )
    transient = 6 * pixels * _DEFAULT_DECODER_CHANNELS[0]
    return (kept + transient) * 2


def check_file(path: str | os.PathLike, label: str, field: str | None = None) -> None:
    """ConfigError (about ``field``) unless ``path`` names an existing file (not a folder,
    not missing)."""
    path = str(path)
    _check(
        not _control(path),
        f"{label} path {path!r} holds a control character; no file is named like that. "
        "Type the path again.",
        field,
    )
    _check(
        not Path(path).is_dir(),
        f"{label} {path!r} is a directory, not a file. Give the path of a file inside it.",
        field,
    )
    _check(
        Path(path).is_file(),
        f"{label} file {path!r} does not exist. Check the path (relative paths start from "
        f"{Path.cwd()}).",
        field,
    )


# Names Windows keeps for devices, whatever the extension: a folder "con" or "nul.txt"
# cannot be made there (runs are copied between machines, so refuse them everywhere).
_RESERVED = {"con", "prn", "aux", "nul"} | {f"{p}{i}" for p in ("com", "lpt") for i in range(10)}
_NOT_IN_NAMES = '/\\:*?"<>|'
MAX_NAME_CHARS = 100


def check_name(name: str, label: str = "name") -> str:
    """ConfigError unless ``name`` is one plain folder name, safe on every system: it cannot
    climb out of the output folder (no '/', '\\', '..'), is no device name (CON, NUL, COM1…)
    and is short; return it."""
    fix = f"Give --{label} a plain folder name such as 'lighthouse-1', or leave it out."
    _check(
        isinstance(name, str) and _visible(name),
        f"{label} {name!r} is empty or invisible. {fix}",
    )
    _check(not _control(name), f"{label} {name!r} holds a control character. {fix}")
    bad = sorted({c for c in name if c in _NOT_IN_NAMES})
    _check(
        not bad,
        f"{label} {name!r} holds {' '.join(bad)}, which a folder name cannot hold (a path "
        f"would put the run outside the output folder). {fix}",
    )
    _check(
        name == name.strip() and not name.endswith("."),
        f"{label} {name!r} starts or ends with a space or ends with a dot ('.' and '..' "
        f"name folders that already exist). {fix}",
    )
    _check(
        name.split(".")[0].strip().lower() not in _RESERVED,
        f"{label} {name!r} is a device name on Windows (CON, PRN, AUX, NUL, COM1-9, LPT1-9), "
        f"so no folder can carry it there. {fix}",
    )
    _check(
        len(name) <= MAX_NAME_CHARS,
        f"{label} is {len(name)} characters long; at most {MAX_NAME_CHARS} fit in a folder "
        f"name on every system. {fix}",
    )
    return name


def _control(text: str) -> bool:
    return any(unicodedata.category(c) == "Cc" for c in text)


def _finite(value: Any) -> bool:
    """Whether a number (check_shapes ran first: no text, no true/false) is finite."""
    try:
        return math.isfinite(value)
    except OverflowError:  # a whole number beyond any float (10**400): no finite float
        return False


def _whole(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


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


def brief(value: Any, limit: int = 60) -> str:
    """repr(value) cut to ``limit`` characters, so a message about it stays one readable
    paragraph (a pasted list of thousands of items, a number of thousands of digits)."""
    try:
        text = repr(value)
    except ValueError:  # an int beyond Python's 4300-digit limit for printing
        return "a number of thousands of digits"
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _check(ok: bool, message: str, field: str | None = None) -> None:
    if not ok:
        raise ConfigError(message, field)


def _about(field: str, read: Any, *args: Any) -> Any:
    """``read(*args)``, with any ConfigError it raises marked as being about ``field``."""
    try:
        return read(*args)
    except ConfigError as error:
        raise ConfigError(str(error), field) from None


@dataclass(frozen=True)
class PromptSpec:
    """One parsed prompt: the text (or image path), its weight, and the distance it stops at."""

    text: str
    weight: float = 1.0
    stop: float = -math.inf


_NUMBER = r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?"
# A weight is a trailing ':number' (or ':number:number' for weight and stop) whose colon
# follows text that does not end in a digit or colon, so times ("12:30"), ratios and
# URLs stay text. Write "Time 12:30 :2" (with a space) to weight a text ending in digits.
_WEIGHTED = re.compile(
    rf"^(?P<text>(?:.*?[^\d:])?)\s*:(?P<weight>{_NUMBER})(?::(?P<stop>{_NUMBER}|-?inf))?\s*$",
    re.DOTALL,
)


# A colon right after text, followed by number-like characters to the end: meant as a weight.
_WEIGHT_LIKE = re.compile(r"[^\d:\s]\s*:(?P<suffix>[-+]?\.?\d\S*)$")


_NOT_FINITE = re.compile(r"[^\d:\s]\s*:(?P<suffix>[-+]?(?:nan|inf(?:inity)?))$", re.IGNORECASE)
MAX_PROMPT_CHARS = 10_000  # CLIP reads 77 tokens (a few hundred characters) of each prompt


def parse_prompt(item: str) -> PromptSpec:
    """'text:weight:stop' -> PromptSpec; text without a trailing numeric weight keeps weight 1."""
    _check(
        not item.strip().endswith(":") or item.strip() == ":",
        f"The prompt {item.strip()!r} ends in ':' with no weight after it. Write "
        "'text:weight' (e.g. 'fog:0.5'), or leave the colon out.",
    )
    odd = _NOT_FINITE.search(item.strip())
    _check(
        odd is None,
        f"The prompt {item.strip()!r} has weight {odd and odd['suffix']!r}; weights must be "
        "finite numbers such as 1, 0.5 or -1.",
    )
    match = _WEIGHTED.match(item.strip())
    if not match:
        meant = _WEIGHT_LIKE.search(item.strip())
        _check(
            meant is None,
            f"The prompt {item.strip()!r} ends in ':{meant and meant['suffix']}', which looks "
            "like a weight but is not a number. Write 'text:weight' or 'text:weight:stop' "
            "with plain numbers (e.g. 'fog:0.5' or 'fog:-1:0.8'), or put a space after the "
            "colon to keep it as text.",
        )
        return PromptSpec(item.strip())
    weight, stop = float(match["weight"]), match["stop"]
    return PromptSpec(match["text"].strip(), weight, float(stop) if stop else -math.inf)


def parse_prompts(text: str) -> list[PromptSpec]:
    """'a lighthouse:1 | fog:0.5 | text:-1' -> [PromptSpec, …]; empty items are dropped."""
    _check(
        len(text) <= MAX_PROMPT_CHARS,
        f"The prompt is {len(text)} characters long; CLIP reads only about 77 tokens (a few "
        f"hundred characters) of each prompt. Use a shorter prompt (at most "
        f"{MAX_PROMPT_CHARS} characters), or split the text into several '|' prompts.",
    )
    control = next((c for c in text if unicodedata.category(c) == "Cc" and c not in "\t\n\r"), None)
    _check(
        control is None,
        f"The prompt holds the control character U+{ord(control or ' '):04X}, which is no "
        "text CLIP can read (often a paste from a terminal or a file with binary data). "
        "Type the prompt again, or paste it as plain text.",
    )
    specs = [parse_prompt(item) for item in text.split("|") if _visible(item)]
    hidden = [item for item in text.split("|") if item.strip() and not _visible(item)]
    _check(
        not hidden,
        f"A prompt in {text!r} holds only invisible characters (zero-width spaces or joiners, "
        "or other formatting marks). Type visible words, or remove it.",
    )
    for spec in specs:
        _check(
            spec.text != "",
            f"A prompt in {text!r} has a weight but no text. Write 'text:weight', e.g. 'fog:0.5'.",
        )
        _check(
            math.isfinite(spec.weight),
            f"The prompt {spec.text!r} has weight {spec.weight}; weights must be finite numbers.",
        )
    return specs


# A timeline line: "120: prompts", "120 images: a.png | b.png:0.5" or "120 noise: 7:0.5 | 9".
_CHANGE = re.compile(r"^\s*(?P<at>\d+)\s*(?P<kind>[A-Za-z]*)\s*:(?P<value>.*)$", re.DOTALL)
CHANGE_KINDS = ("prompt", "images", "noise")


@dataclass(frozen=True)
class PromptChange:
    """One timeline line: from ``iteration`` on, the prompts of ``kind`` are ``value``."""

    iteration: int
    kind: str  # prompt (text prompts), images or noise
    value: str  # as the setting is written: "a:1 | b:0.5", "a.png | b.png:0.5", "7:0.5 | 9"

    def line(self) -> str:
        """The line as the timeline setting holds it (``parse_change`` reads it back)."""
        kind = "" if self.kind == "prompt" else f" {self.kind}"
        return f"{self.iteration}{kind}: {self.value}"

    def settings(self) -> dict[str, Any]:
        """The RunConfig settings this change sets."""
        items = [item.strip() for item in self.value.split("|") if item.strip()]
        if self.kind == "prompt":
            return {"prompt": self.value}
        if self.kind == "images":
            return {"image_prompts": items}
        seeds, weights = [], []
        for item in items:  # "7:0.5" -> seed 7, weight 0.5; "9" -> seed 9, weight 1
            seed, _, weight = item.partition(":")
            seeds.append(int(seed))
            weights.append(float(weight) if weight.strip() else 1.0)
        return {"noise_prompt_seeds": seeds, "noise_prompt_weights": weights}


def parse_change(line: str) -> PromptChange:
    """A timeline line -> PromptChange; ConfigError saying how to write one."""
    how = (
        "Write 'ITERATION: prompts' (e.g. '200: a tree:1 | fog:0.5'), 'ITERATION images: "
        "a.png | b.png:0.5' or 'ITERATION noise: 7:0.5 | 9', the iteration a whole number of "
        "at least 1."
    )
    match = _CHANGE.match(line) if isinstance(line, str) else None
    _check(match is not None, f"The timeline line {brief(line)} is not a change of prompts. {how}")
    kind = match["kind"].lower() or "prompt"
    _check(
        kind in CHANGE_KINDS,
        f"The timeline line {line.strip()!r} names {match['kind']!r}, which is not images or "
        f"noise. {how}",
    )
    change = PromptChange(int(match["at"]), kind, match["value"].strip())
    _check(change.iteration >= 1, f"The timeline line {line.strip()!r} is at iteration 0. {how}")
    if kind == "noise":
        for item in (i.strip() for i in change.value.split("|") if i.strip()):
            seed, _, weight = item.partition(":")
            _check(
                seed.strip().isdigit() and (not weight.strip() or _is_number(weight)),
                f"The timeline line {line.strip()!r} has the noise prompt {item!r}; write "
                "each as SEED or SEED:WEIGHT with plain numbers, e.g. '7:0.5 | 9'.",
            )
    return change


def _is_number(text: str) -> bool:
    try:
        return math.isfinite(float(text))
    except ValueError:
        return False


def _visible(text: str) -> bool:
    """Whether text has a character that shows (not whitespace or a zero-width mark)."""
    return any(not c.isspace() and unicodedata.category(c) not in ("Cf", "Cc") for c in text)


@dataclass(frozen=True)
class Setting:
    """One RunConfig field as the CLI and the panel both see it: what kind of value it holds,
    how to read it from text and write it back, and the widget that fits it.

    Kinds: ``text``, ``int``, ``float``, ``bool``, ``choice``, ``pair`` (two whole numbers),
    ``seed`` (a whole number or empty for random), ``lines`` (a list of text, one per line)
    and ``ints``/``floats`` (comma-separated lists). ``optional`` text reads empty as None.
    """

    name: str
    kind: str
    default: Any
    help: str
    group: str
    optional: bool = False
    choices: tuple[str, ...] = ()
    flag: str = ""  # the CLI flag, e.g. "--clip"
    positional: bool = False  # the CLI takes it without a flag (the prompt)
    widget: str = ""  # the panel's hint: "textarea", "dropdown", "pair", "combobox", …

    @property
    def element(self) -> type:
        """The type of one item: what argparse converts each word of the flag with."""
        return {"int": int, "pair": int, "seed": int, "ints": int}.get(
            self.kind, float if self.kind in ("float", "floats") else str
        )

    def parse(self, text: str) -> Any:
        """The value from text as a person types it (the panel, the queue's web form);
        ConfigError naming this setting when the text cannot be read."""
        text = str(text)
        if self.kind == "lines":
            return [line.strip() for line in text.splitlines() if line.strip()]
        if self.kind in ("ints", "floats", "pair"):
            if self.kind == "pair":  # "640 480", "640x480", "640 × 480" or "640, 480"
                text = re.sub(r"\s*[x×,]\s*|\s+", ",", text.strip())
            items = text.split(",")
            values = [self._number(item) for item in items if item.strip()]
            if self.kind == "pair" and len(values) != 2:
                raise ConfigError(f"{self.name} needs two whole numbers, got {text!r}.", self.name)
            return values
        if self.kind == "bool":
            return text.strip().lower() in ("1", "true", "yes", "on")
        stripped = text.strip()
        if self.kind == "seed" or self.optional and self.kind in ("int", "float"):
            return None if stripped.lower() in ("", "random") else self._number(stripped)
        if self.kind in ("int", "float"):
            return self._number(stripped)
        if self.name == "prompt":
            _about("prompt", parse_prompts, text)  # the message names the malformed prompt
            return text
        if self.name == "snapshots":
            try:
                parse_schedule(stripped)
            except ScheduleError as error:
                raise ConfigError(str(error), self.name) from None
        return None if (self.optional and not stripped) else text

    def format(self, value: Any) -> str:
        """The value as text that ``parse`` reads back."""
        if value is None:
            return "random" if self.kind == "seed" else ""
        if self.kind == "lines":
            return "\n".join(value)
        if self.kind in ("ints", "floats", "pair"):
            return ", ".join(map(str, value))
        return str(value)

    def _number(self, text: str) -> int | float:
        try:
            return self.element(text.strip())
        except ValueError:
            kind = "a whole number" if self.element is int else "a number"
            raise ConfigError(f"{self.name}: {text.strip()!r} is not {kind}.", self.name) from None


def _describe(f: dataclasses.Field) -> Setting:
    """The Setting for one RunConfig field: the one place its annotation is read."""
    meta, annotation = f.metadata, str(f.type)
    core = annotation.replace(" | None", "")
    if f.name == "seed":
        kind = "seed"
    elif meta.get("nargs") == 2:
        kind = "pair"
    elif "choices" in meta:
        kind = "choice"
    else:
        kind = {
            "list[str]": "lines",
            "list[int]": "ints",
            "list[float]": "floats",
            "bool": "bool",
            "int": "int",
            "float": "float",
        }.get(core, "text")
    widget = {"pair": "pair", "choice": "dropdown", "bool": "checkbox", "seed": "combobox"}
    hint = "textarea" if f.name == "prompt" or kind == "lines" else widget.get(kind, "text")
    if f.name in ("vqgan", "clip_model"):
        hint = "dropdown"  # known names, and a path typed in stays as an extra option
    default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
    return Setting(
        name=f.name,
        kind=kind,
        default=default,
        help=meta["help"],
        group=meta["group"],
        optional="None" in annotation,
        choices=tuple(meta.get("choices", ())),
        flag="--" + meta.get("flag", f.name.replace("_", "-")),
        positional=bool(meta.get("positional")),
        widget=hint,
    )


def settings() -> list[Setting]:
    """Every RunConfig setting, in order, described once for the CLI and the panel."""
    return [_describe(f) for f in dataclasses.fields(RunConfig)]


def slug(text: str, limit: int = 40) -> str:
    """A filesystem-safe short form of a prompt, for run directory names."""
    words = re.sub(r"[^\w\s-]", "", text.split("|")[0], flags=re.UNICODE).strip().lower()
    return re.sub(r"[\s_-]+", "-", words)[:limit].strip("-") or "run"
