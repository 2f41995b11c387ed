"""The optimisation loop, as a generator of Steps, and nothing else.

Each iteration k (0..iterations): decode the quantised latent to an image, cut it into
cutouts, embed them with CLIP, measure each prompt's loss, yield ``Step(k)``, then take
one optimiser step (none after the last). So Step k's image is the picture after k
optimiser steps, and its losses are that picture's losses; Step 0 is the starting image.

Observers read Steps; they never write back. Stopping is the consumer leaving the loop.
Nothing here reads a tensor back to the host, so a step never waits for the device.
"""

from __future__ import annotations

import contextlib
import copy
import secrets
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from PIL import Image

from vqclip.config import RunConfig
from vqclip.cutouts import make_cutouts
from vqclip.models import VQGAN, Models
from vqclip.ops import (
    clamp_with_grad,
    cosine_similarity,
    spherical_distance,
    straight_through,
    total_variation,
    vector_quantize,
)
from vqclip.prompts import Target, encode_images, encode_targets, load_rgb

OPTIMIZERS: dict[str, Callable[..., torch.optim.Optimizer]] = {
    "adam": torch.optim.Adam,
    "adamw": torch.optim.AdamW,
    "sgd": lambda params, lr: torch.optim.SGD(params, lr=lr, momentum=0.9, nesterov=True),
    "adagrad": torch.optim.Adagrad,
    "rmsprop": torch.optim.RMSprop,
}


@dataclass(frozen=True)
class Step:
    """One iteration of a run, as observers see it. Tensors are detached and stay on the device."""

    iteration: int  # optimiser steps taken before this image (0 = the starting image)
    iterations: int  # the run's planned total
    loss: torch.Tensor  # [] total loss of this image
    prompt_losses: torch.Tensor  # [P] each prompt's weighted loss
    similarities: torch.Tensor  # [P] mean cosine similarity of the cutouts to each prompt
    labels: tuple[str, ...]  # [P] prompt labels
    lr: float
    pixels: torch.Tensor = field(repr=False)  # [3, H, W] float in [0, 1]
    _state: Callable[[], dict[str, Any] | None] = field(repr=False, compare=False)

    @property
    def is_last(self) -> bool:
        return self.iteration == self.iterations

    def image(self) -> Image.Image:
        """The picture as an 8-bit RGB PIL image (reads it back to the host)."""
        array = self.pixels.float().mul(255).round().clamp(0, 255).byte()
        return Image.fromarray(array.permute(1, 2, 0).cpu().numpy())

    def stats(self) -> dict[str, Any]:
        """Host numbers for logs and displays: iteration, loss, lr, each prompt's loss and similarity."""
        losses, sims = self.prompt_losses.tolist(), self.similarities.tolist()
        return {
            "iteration": self.iteration,
            "loss": float(self.loss),
            "lr": self.lr,
            "prompts": [
                {"prompt": label, "loss": loss, "similarity": sim}
                for label, loss, sim in zip(self.labels, losses, sims)
            ],
        }

    def state(self) -> dict[str, Any] | None:
        """A copy of what continuing the run needs (latent, optimiser, RNG, iteration).

        It is the run's latest consistent point: this step while the consumer handles it,
        the next one once its update is done, None while an update is half-done (after a
        Ctrl-C there; use the state saved at the last snapshot instead).
        """
        return self._state()


def prepare(config: RunConfig, factor: int) -> RunConfig:
    """Validate, fix the seed (a random one if none) and round the size to the VQGAN's factor."""
    config.validate()
    seed = config.seed if config.seed is not None else secrets.randbelow(2**31)
    size = [max(factor, round(v / factor) * factor) for v in config.size]
    if size != list(config.size):
        warnings.warn(
            f"Size {config.size[0]}x{config.size[1]} is not a multiple of the VQGAN's "
            f"downsampling factor {factor}; using {size[0]}x{size[1]}.",
            stacklevel=2,
        )
    return config.replace(seed=seed, size=size)


def synthesize(vqgan: VQGAN, z: torch.Tensor) -> torch.Tensor:
    """Latent z [B, C, h, w] -> image [B, 3, h*f, w*f] in [0, 1], through the codebook."""
    z_q = vector_quantize(z, vqgan.codebook)
    return clamp_with_grad(vqgan.decode(z_q).add(1).div(2), 0, 1)


def initial_latent(
    config: RunConfig, vqgan: VQGAN, generator: torch.Generator, device: torch.device
) -> torch.Tensor:
    """The starting latent [1, C, h, w]: the init image's, random codebook entries, or noise."""
    width, height = (v // vqgan.factor for v in config.size)
    codebook = vqgan.codebook  # [N, C]
    if config.init_image:
        pixels = load_rgb(config.init_image, tuple(config.size)).to(device)
        with torch.no_grad():
            return vqgan.encode(pixels * 2 - 1).float()
    if config.latent_init == "codes":
        codes = torch.randint(vqgan.n_embed, (1, height, width), generator=generator, device=device)
        return F.embedding(codes, codebook).movedim(-1, 1)
    noise = torch.randn(1, vqgan.embed_dim, height, width, generator=generator, device=device)
    return noise * codebook.std() + codebook.mean()


def prompt_losses(embeds: torch.Tensor, targets: list[Target]) -> tuple[torch.Tensor, torch.Tensor]:
    """Cutout embeddings [K, D] against each target -> (weighted losses [P], similarities [P])."""
    losses, sims = [], []
    for target in targets:
        sign = 1.0 if target.weight >= 0 else -1.0
        dist = spherical_distance(embeds, target.embeds) * sign  # [K, Kt]
        # Below `stop` the loss still reads its value but no longer pulls (its gradient is 0).
        held = straight_through(dist, torch.clamp(dist, min=target.stop))
        losses.append(abs(target.weight) * held.mean())
        sims.append(cosine_similarity(embeds, target.embeds).mean())
    if not targets:
        empty = embeds.new_zeros(0)
        return empty, empty
    return torch.stack(losses), torch.stack(sims)


def precision_context(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """Autocast for bf16/fp16 compute; fp32 (and auto, for now) runs as is."""
    dtypes = {"bf16": torch.bfloat16, "fp16": torch.float16}
    if precision not in dtypes:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtypes[precision])


def resolve_precision(precision: str, device: torch.device) -> str:
    """auto -> the precision this engine uses by default on the device."""
    if precision == "fp16" and device.type == "cpu":
        raise ValueError(
            "fp16 is not supported on the CPU (it is slow and loses precision there). "
            "Use --precision bf16 or fp32 on the CPU, or fp16 on a CUDA GPU."
        )
    return "fp32" if precision == "auto" else precision


def run(config: RunConfig, models: Models, resume: dict[str, Any] | None = None) -> Iterator[Step]:
    """Optimise a latent toward the config's prompts, yielding a Step per iteration.

    ``config`` should come from ``prepare`` (seed fixed, size rounded) so it is the exact
    recipe; ``resume`` is a ``Step.state()`` to continue from, or ``{"z": latent}`` to start
    from a given latent with a fresh optimiser (a branch).
    """
    device, vqgan, perceptor = models.device, models.vqgan, models.clip
    precision = resolve_precision(config.precision, device)
    generator = torch.Generator(device=device).manual_seed(config.seed)
    targets = encode_targets(config, perceptor, models.clip_size, device)
    labels = tuple(t.label for t in targets)

    z = initial_latent(config, vqgan, generator, device)
    z_anchor = z.detach().clone() if config.init_image else None  # what init_weight pulls to
    z.requires_grad_(True)
    optimizer = OPTIMIZERS[config.optimizer]([z], lr=config.lr)
    start = 0
    if resume is not None:  # a saved state, or just a latent ({"z": …}) to branch from
        with torch.no_grad():
            z.copy_(resume["z"].to(device))
        if resume.get("optimizer") is not None:
            optimizer.load_state_dict(resume["optimizer"])
        if resume.get("rng") is not None:
            generator.set_state(resume["rng"])
        start = resume.get("iteration", 0)
    codebook = vqgan.codebook
    z_min = codebook.min(0).values[None, :, None, None]  # [1, C, 1, 1]
    z_max = codebook.max(0).values[None, :, None, None]
    # The run's latest consistent point: the iteration about to be computed, the RNG state
    # before its cutouts, and whether z and the optimiser agree with it (not mid-update).
    point: dict[str, Any] = {"iteration": start, "rng": generator.get_state(), "ok": True}

    def current_state() -> dict[str, Any] | None:
        if not point["ok"]:
            return None
        return {
            "iteration": point["iteration"],
            "z": z.detach().clone(),
            "optimizer": copy.deepcopy(optimizer.state_dict()),
            "rng": point["rng"].clone(),
        }

    for k in range(start, config.iterations + 1):
        last = k == config.iterations
        with torch.set_grad_enabled(not last), precision_context(device, precision):
            pixels = synthesize(vqgan, z)  # [1, 3, H, W]
            cutouts = make_cutouts(
                pixels,
                cutn=config.cutn,
                cut_size=models.clip_size,
                cut_pow=config.cut_pow,
                generator=generator,
                augmentations=config.augment,
                whole=config.full_cutout,
            )  # [cutn, 3, S, S]
            losses, sims = prompt_losses(encode_images(perceptor, cutouts), targets)
            total = losses.sum()
            if config.tv_weight:
                total = total + config.tv_weight * total_variation(pixels.float())
            if z_anchor is not None and config.init_weight:
                total = total + config.init_weight * F.mse_loss(z, z_anchor)
        yield Step(
            iteration=k,
            iterations=config.iterations,
            loss=total.detach().float(),
            prompt_losses=losses.detach().float(),
            similarities=sims.detach().float(),
            labels=labels,
            lr=optimizer.param_groups[0]["lr"],
            pixels=pixels.detach()[0].float(),
            _state=current_state,
        )
        if last:
            return
        optimizer.zero_grad(set_to_none=True)
        if total.requires_grad:  # e.g. an init image alone with init_weight 0 has nothing to learn
            total.backward()
        point["ok"] = False
        optimizer.step()
        with torch.no_grad():  # keep the latent inside the codebook's range
            z.copy_(torch.maximum(torch.minimum(z, z_max), z_min))
        point.update(iteration=k + 1, rng=generator.get_state(), ok=True)
