"""Prompts -> target embeddings in CLIP space (text, image and noise prompts).

Parsing the "text:weight:stop | …" syntax lives in config.py (it is validation, and needs no
torch); this module turns parsed prompts into unit-length CLIP embeddings on the device.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from PIL import Image

from vqclip.config import ConfigError, PromptSpec, RunConfig, parse_prompt, parse_prompts
from vqclip.cutouts import make_cutouts

with warnings.catch_warnings():  # clip-anytorch imports pkg_resources, which warns about itself
    warnings.filterwarnings("ignore", message="pkg_resources is deprecated")
    import clip

# CLIP's own input normalisation (RGB in [0, 1] -> model input).
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass(frozen=True)
class Target:
    """What one prompt pulls toward (weight > 0) or pushes from (weight < 0)."""

    label: str
    embeds: torch.Tensor  # [K, D], float32, unit length; the loss averages over the K rows
    weight: float
    stop: float


def clip_normalize(
    image: torch.Tensor,
    mean: tuple[float, ...] = CLIP_MEAN,
    std: tuple[float, ...] = CLIP_STD,
) -> torch.Tensor:
    """RGB [N, 3, S, S] in [0, 1] -> CLIP's normalised input, on the image's device and dtype."""
    mean_t = torch.tensor(mean, device=image.device, dtype=image.dtype)[:, None, None]
    std_t = torch.tensor(std, device=image.device, dtype=image.dtype)[:, None, None]
    return (image - mean_t) / std_t


def clip_stats(model: torch.nn.Module) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The input (mean, std) a CLIP model expects: its own ``image_mean`` / ``image_std`` if
    it carries them, else OpenAI's (which every OpenAI CLIP shares). Read per model, so an
    ensemble of CLIPs trained with other statistics normalises each cutout for its judge."""
    return getattr(model, "image_mean", CLIP_MEAN), getattr(model, "image_std", CLIP_STD)


def clip_dtype(model: torch.nn.Module) -> torch.dtype:
    """The dtype of CLIP's weights (fp16 on CUDA as released, fp32 on CPU)."""
    return model.visual.conv1.weight.dtype


def encode_images(model: torch.nn.Module, images: torch.Tensor) -> torch.Tensor:
    """CLIP image embeddings of images [N, 3, S, S] in [0, 1] -> [N, D] float32."""
    normalised = clip_normalize(images, *clip_stats(model))
    return model.encode_image(normalised.to(clip_dtype(model))).float()


def tokenize(text: str, device: torch.device) -> torch.Tensor:
    """Tokenize for CLIP; text beyond its 77-token context is cut, with a warning."""
    with torch.device("cpu"):  # clip.tokenize makes its tensor on the default device
        try:
            tokens = clip.tokenize(text)
        except RuntimeError:
            warnings.warn(
                f"The prompt {text[:60]!r}… is longer than CLIP's 77-token limit; "
                "only its beginning is used.",
                stacklevel=2,
            )
            tokens = clip.tokenize(text, truncate=True)
    return tokens.to(device)


@torch.no_grad()
def encode_text(model: torch.nn.Module, text: str, device: torch.device) -> torch.Tensor:
    """Unit-length CLIP text embedding [1, D] float32."""
    return F.normalize(model.encode_text(tokenize(text, device)).float(), dim=-1)


def open_rgb(path: str, label: str = "image") -> Image.Image:
    """An image file read whole and converted to RGB; ConfigError naming the file if it cannot be."""
    try:
        with Image.open(path) as im:
            im.load()  # reads every byte now: a truncated file fails here, not mid-run
            return _to_rgb(im)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
        raise ConfigError(
            f"The {label} file {path!r} could not be read as a picture "
            f"({type(error).__name__}: {error}). It may be truncated, not an image, or in a "
            "format Pillow cannot read: open it in an image viewer, or save it again as PNG "
            "or JPEG."
        ) from None


def _to_rgb(im: Image.Image) -> Image.Image:
    """RGB with 8 bits a channel. Pillow's own convert clips 16-bit greyscale (modes I;16 and
    I, as 16-bit PNGs open) at 255, which turns nearly every pixel white: scale it instead."""
    if im.mode.startswith("I;16") or im.mode == "I":
        import numpy as np

        values = np.asarray(im, dtype=np.float64)
        eight = np.clip(np.round(values / 257.0), 0, 255).astype(np.uint8)
        return Image.fromarray(eight).convert("RGB")  # uint8 [H, W] -> L
    return im.convert("RGB")


def load_rgb(path: str, size: tuple[int, int]) -> torch.Tensor:
    """Image file -> [1, 3, H, W] float32 in [0, 1] on the CPU, scaled to cover size and centre-cropped."""
    with open_rgb(path) as im:
        width, height = size
        scale = max(width / im.width, height / im.height)
        im = im.resize((max(width, round(im.width * scale)), max(height, round(im.height * scale))))
        left, top = (im.width - width) // 2, (im.height - height) // 2
        im = im.crop((left, top, left + width, top + height))
        data = torch.frombuffer(bytearray(im.tobytes()), dtype=torch.uint8)
    return data.view(height, width, 3).permute(2, 0, 1)[None].float() / 255


@torch.no_grad()
def encode_image_prompt(
    model: torch.nn.Module, spec: PromptSpec, config: RunConfig, cut_size: int, device: torch.device
) -> Target:
    """An image prompt's target: the embeddings of cutouts of that image, made like the run's."""
    image = load_rgb(spec.text, tuple(config.size)).to(device)
    generator = torch.Generator(device=device).manual_seed(config.seed or 0)
    cutouts = make_cutouts(
        image,
        cutn=config.cutn,
        cut_size=cut_size,
        cut_pow=config.cut_pow,
        generator=generator,
        augmentations=config.augment,
        whole=config.full_cutout,
    )
    embeds = F.normalize(encode_images(model, cutouts), dim=-1)
    return Target(f"image:{spec.text}", embeds, spec.weight, spec.stop)


def noise_target(seed: int, weight: float, dim: int, device: torch.device) -> Target:
    """A seeded random direction in CLIP space, the same on every device."""
    generator = torch.Generator(device="cpu").manual_seed(
        seed
    )  # CPU draw: identical across devices
    embed = F.normalize(torch.randn(1, dim, generator=generator, device="cpu"), dim=-1)
    return Target(f"noise:{seed}", embed.to(device), weight, float("-inf"))


def encode_targets(
    config: RunConfig,
    model: torch.nn.Module,
    cut_size: int,
    device: torch.device,
    cache: dict[tuple[str, str], torch.Tensor] | None = None,
) -> list[Target]:
    """All of a config's prompts as targets: text prompts, then image prompts, then noise prompts.

    ``cache`` keeps each text's and image's embeddings across calls, so a change of weights
    alone (a prompt timeline) encodes nothing again."""
    cache = {} if cache is None else cache
    targets = []
    for spec in parse_prompts(config.prompt):
        if ("text", spec.text) not in cache:
            cache["text", spec.text] = encode_text(model, spec.text, device)
        targets.append(Target(spec.text, cache["text", spec.text], spec.weight, spec.stop))
    for spec in map(parse_prompt, config.image_prompts):
        if ("image", spec.text) not in cache:
            image = encode_image_prompt(model, spec, config, cut_size, device)
            cache["image", spec.text] = image.embeds
        targets.append(
            Target(f"image:{spec.text}", cache["image", spec.text], spec.weight, spec.stop)
        )
    dim = model.text_projection.shape[1]
    weights = list(config.noise_prompt_weights)
    weights += [1.0] * (len(config.noise_prompt_seeds) - len(weights))
    targets += [
        noise_target(seed, weight, dim, device)
        for seed, weight in zip(config.noise_prompt_seeds, weights)
    ]
    return targets


def encode_each(
    config: RunConfig,
    clips: tuple[torch.nn.Module, ...],
    cut_sizes: tuple[int, ...],
    device: torch.device,
    caches: list[dict[tuple[str, str], torch.Tensor]] | None = None,
) -> list[list[Target]]:
    """``encode_targets`` for each CLIP of an ensemble (one CLIP: a list of one), each in
    its own embedding space, its image prompts cut at its own input size, with its own cache
    in ``caches`` (one dict per CLIP, filled as ``encode_targets`` fills one)."""
    caches = [{} for _ in clips] if caches is None else caches
    return [
        encode_targets(config, clip, size, device, cache)
        for clip, size, cache in zip(clips, cut_sizes, caches)
    ]
