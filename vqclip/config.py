"""RunConfig: every setting of a run and its default, in one place.

The CLI flags and the notebook panel are generated from the fields below (their
``metadata`` carries the help text, choices and grouping), so a new setting is added
here and nowhere else. The rest of the settings' code sits beside it, one concern a module:
``vqclip.settings`` (how a field describes itself: kind, flag, widget, parsing typed text),
``vqclip.validation`` (whether a whole config is valid, before any model loads),
``vqclip.prompt_syntax`` (the prompt and timeline syntax) and ``vqclip.checks`` (ConfigError
and checks of single values). Their public names are importable from here too. This module
does not import torch.
"""

from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import dataclass
from typing import Any

from vqclip import validation
from vqclip.checks import (  # noqa: F401  (re-exported: `from vqclip.config import …`)
    MAX_CUTN,
    MAX_ITERATIONS,
    MAX_NAME_CHARS,
    MAX_SIDE,
    ConfigError,
    _check,
    _is_number,
    brief,
    check_file,
    check_name,
    decoder_floor_bytes,
)
from vqclip.prompt_syntax import (  # noqa: F401  (re-exported)
    CHANGE_KINDS,
    MAX_PROMPT_CHARS,
    PromptChange,
    PromptSpec,
    parse_change,
    parse_prompt,
    parse_prompts,
)
from vqclip.settings import Setting, _describe, _setting, describe  # noqa: F401  (re-exported)

DEFAULT_VQGAN = "vqgan_imagenet_f16_16384"
DEFAULT_CLIP = "ViT-B/32"
OPTIMIZERS = ("adam", "adamw", "sgd", "adagrad", "rmsprop")
DEVICES = ("auto", "cpu", "cuda")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
LATENT_INITS = ("codes", "noise")
CHECKPOINTING = ("auto", "on", "off")


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
        return validation.check_shapes(self)

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
        """Raise ConfigError for the first invalid setting; return self when all are valid
        (the checks are ``vqclip.validation``'s)."""
        return validation.validate(self)


def settings() -> list[Setting]:
    """Every RunConfig setting, in order, described once for the CLI and the panel."""
    return describe(RunConfig)


def slug(text: str, limit: int = 40) -> str:
    """A filesystem-safe short form of a prompt, for run directory names."""
    words = re.sub(r"[^\w\s-]", "", text.split("|")[0], flags=re.UNICODE).strip().lower()
    return re.sub(r"[\s_-]+", "-", words)[:limit].strip("-") or "run"
