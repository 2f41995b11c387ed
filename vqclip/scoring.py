"""One step's computation for a batch of runs: decode each latent, cut the picture into
cutouts, embed them with CLIP (each CLIP of an ensemble) and score them against each run's
prompts, with the gradient of each run's loss landing in its latent.

The engine (vqclip.engine) calls ``evaluate_batch`` once per iteration, inside the run's
precision context; it owns everything else (optimiser, RNG state, timeline, retries).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import torch
import torch.nn.functional as F

from vqclip import memory
from vqclip.config import RunConfig
from vqclip.cutouts import make_cutouts
from vqclip.models import Models
from vqclip.ops import (
    clamp_with_grad,
    cosine_similarity,
    spherical_distance,
    straight_through,
    total_variation,
    vector_quantize,
)
from vqclip.prompts import Target, encode_images
from vqclip.vqgan import VQGAN


class Scored(Protocol):
    """What ``evaluate_batch`` reads of each run (the engine's candidates)."""

    config: RunConfig
    z: torch.Tensor  # [1, C, h, w], requires grad
    z_anchor: torch.Tensor | None  # the init image's latent, for init_weight
    generator: torch.Generator  # draws this run's cutouts
    targets: list[Target]  # the first CLIP's (labels and weights are every CLIP's)
    clip_targets: list[list[Target]]  # [CLIPs][P]: each CLIP's own embeddings of the prompts
    clip_weights: tuple[float, ...]  # each CLIP's share of the loss, summing to 1
    scaler: torch.amp.GradScaler  # fp16's loss scale; a pass-through otherwise


def synthesize(vqgan: VQGAN, z: torch.Tensor) -> torch.Tensor:
    """Latent z [B, C, h, w] -> image [B, 3, h*f, w*f] in [0, 1], through the codebook."""
    z_q = vector_quantize(z, vqgan.codebook)
    return clamp_with_grad(vqgan.decode(z_q).add(1).div(2), 0, 1)


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


def evaluate_batch(
    runs: Sequence[Scored],
    models: Models,
    *,
    grad: bool,
    clip_batch: int,
    fast: bool = False,
    resize_dtype: torch.dtype | None = None,
) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Decode, cut, embed and score each run's latent: per run (total [], prompt losses
    [P], similarities [P], pixels [3, H, W]).

    With ``grad`` the gradient of each run's total lands in its ``z.grad`` (replacing any),
    multiplied by its loss scale (fp16's dynamic loss scaling; 1 otherwise). The runs' cutouts
    go through CLIP together, ``clip_batch`` at a time, each micro-batch's backward pass run
    before the next forward, so CLIP's activations are bounded by one micro-batch; the result
    is the same as all at once (up to float rounding) because each loss is a mean over its
    cutouts. The returned losses are not scaled.

    With an ensemble (``models.clips`` holding several) each CLIP sees the cutouts at its
    own input size and scores them against its own targets (``run.clip_targets``); a run's
    prompt losses and similarities are the mean over CLIPs weighted by ``run.clip_weights``.
    """
    for r in runs:
        r.z.grad = None
    sizes = models.clip_sizes  # each CLIP's input size: the cutouts it sees
    ensemble = len(sizes) > 1
    with torch.set_grad_enabled(grad):
        z = runs[0].z if len(runs) == 1 else torch.cat([r.z for r in runs])  # [B, C, h, w]
        pixels = synthesize(models.vqgan, z).float()  # [B, 3, H, W]
        leaf = pixels.detach().requires_grad_() if grad else pixels
        # One set of cutouts per distinct CLIP input size. An ensemble's sets are drawn from
        # the same RNG state, so every CLIP sees the same crops, each cut at its own size.
        drawn = [r.generator.get_state() for r in runs] if len(set(sizes)) > 1 else None
        by_size: dict[int, torch.Tensor] = {}
        for size in dict.fromkeys(sizes):
            if drawn is not None:
                for r, state in zip(runs, drawn):
                    r.generator.set_state(state)
            cutouts = [
                make_cutouts(
                    leaf[i : i + 1],
                    cutn=r.config.cutn,
                    cut_size=size,
                    cut_pow=r.config.cut_pow,
                    generator=r.generator,
                    augmentations=r.config.augment,
                    whole=r.config.full_cutout,
                    # The fast path crops with matrix products (the same sampling, faster),
                    # in the run's low precision if it has one.
                    resize="matmul" if fast else "roi_align",
                    resize_dtype=resize_dtype,
                )  # [cutn, 3, S, S]
                for i, r in enumerate(runs)
            ]
            by_size[size] = cutouts[0] if len(runs) == 1 else torch.cat(cutouts)  # [B*cutn, ...]
        counts = [1 if r.config.full_cutout else r.config.cutn for r in runs]
        offsets = [sum(counts[:i]) for i in range(len(runs))]
        losses: list[Any] = [None] * len(runs)
        sims: list[Any] = [None] * len(runs)
        cut_grads: dict[int, torch.Tensor] = {}  # size -> d(loss)/d(cutouts), every CLIP's
        for j, (clip, size) in enumerate(zip(models.clips, sizes)):
            every = by_size[size]
            piece_grads = []
            for start, stop in memory.micro_batches(len(every), clip_batch):
                piece = every[start:stop]
                if grad:
                    piece = piece.detach().requires_grad_()
                embeds = encode_images(clip, piece)  # [n, D]
                scaled = []
                for i, r in enumerate(runs):  # the runs whose cutouts lie in this piece
                    lo, hi = max(start, offsets[i]), min(stop, offsets[i] + counts[i])
                    if lo >= hi:
                        continue
                    part_losses, part_sims = prompt_losses(
                        embeds[lo - start : hi - start], r.clip_targets[j]
                    )
                    if hi - lo < counts[i]:  # a mean over all cutouts: the size-weighted mean
                        share = (hi - lo) / counts[i]
                        part_losses, part_sims = part_losses * share, part_sims * share
                    if ensemble:  # the weighted mean over CLIPs (one CLIP: exactly its own)
                        weight = r.clip_weights[j]
                        part_losses, part_sims = part_losses * weight, part_sims * weight
                    if grad and part_losses.requires_grad:
                        scaled.append(r.scaler.scale(part_losses.sum()))
                    part_losses, part_sims = part_losses.detach(), part_sims.detach()
                    losses[i] = part_losses if losses[i] is None else losses[i] + part_losses
                    sims[i] = part_sims if sims[i] is None else sims[i] + part_sims
                if scaled:
                    torch.autograd.backward(scaled)
                piece_grads.append(piece.grad if scaled else None)
            if any(g is not None for g in piece_grads):
                grads = [
                    g if g is not None else every.new_zeros(stop - start, *every.shape[1:])
                    for g, (start, stop) in zip(
                        piece_grads, memory.micro_batches(len(every), clip_batch)
                    )
                ]
                full = grads[0] if len(grads) == 1 else torch.cat(grads)
                cut_grads[size] = full if size not in cut_grads else cut_grads[size] + full
        roots, root_grads, anchors = [], [], []
        for size, cut_grad in cut_grads.items():
            roots.append(by_size[size])
            root_grads.append(cut_grad)
        totals = []
        for i, r in enumerate(runs):
            total = losses[i].sum()
            if r.config.tv_weight:
                tv = r.config.tv_weight * total_variation(leaf[i : i + 1])
                total = total + tv.detach()
                roots.append(r.scaler.scale(tv))
                root_grads.append(None)
            if r.z_anchor is not None and r.config.init_weight:
                anchor = r.config.init_weight * F.mse_loss(r.z, r.z_anchor)
                total = total + anchor.detach()
                anchors.append(r.scaler.scale(anchor))
            totals.append(total)
        if grad:
            latent_roots, latent_grads = [], []
            if roots:
                torch.autograd.backward(roots, root_grads)
                latent_roots.append(pixels)
                latent_grads.append(leaf.grad)
            latent_roots += anchors
            latent_grads += [None] * len(anchors)
            if latent_roots:
                torch.autograd.backward(latent_roots, latent_grads)
    pixels = pixels.detach()
    return [(totals[i], losses[i], sims[i], pixels[i]) for i in range(len(runs))]
