"""Cutouts: many random crops of the image, resized to CLIP's input size, made in one batch.

Crop sizes follow ``cut_pow``: size = min_size + (max_size - min_size) * u ** cut_pow with u
uniform in [0, 1), so cut_pow > 1 favours small crops (detail) and cut_pow < 1 large ones
(composition). All crops come from one ``roi_align`` call, which averages several samples
per output pixel when a crop is larger than CLIP's input, so downscaling does not alias.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torchvision.ops import roi_align


def crop_boxes(
    batch: int,
    cutn: int,
    height: int,
    width: int,
    cut_size: int,
    cut_pow: float,
    generator: torch.Generator,
    device: torch.device,
) -> torch.Tensor:
    """Random square crops as roi_align boxes [batch * cutn, 5] = (image index, x0, y0, x1, y1)."""
    max_size = min(height, width)
    min_size = min(height, width, cut_size)
    u = torch.rand(batch, cutn, 3, generator=generator, device=device)  # size, x, y draws
    size = (u[..., 0].pow(cut_pow) * (max_size - min_size) + min_size).floor()  # [B, cutn]
    x0 = (u[..., 1] * (width - size + 1)).floor()
    y0 = (u[..., 2] * (height - size + 1)).floor()
    index = torch.arange(batch, device=device, dtype=size.dtype)[:, None].expand_as(size)
    boxes = torch.stack([index, x0, y0, x0 + size, y0 + size], dim=-1)  # [B, cutn, 5]
    return boxes.reshape(-1, 5)


def whole_image_boxes(batch: int, height: int, width: int, device: torch.device) -> torch.Tensor:
    """One box per image covering all of it: [batch, 5]."""
    boxes = torch.zeros(batch, 5, device=device)
    boxes[:, 0] = torch.arange(batch, device=device)
    boxes[:, 3], boxes[:, 4] = width, height
    return boxes


def crop_and_resize(image: torch.Tensor, boxes: torch.Tensor, size: int) -> torch.Tensor:
    """Crop image [B, 3, H, W] at boxes [K, 5] and resize each to [K, 3, size, size]."""
    # aligned=True puts pixel centres at +0.5, so a box equal to the output size copies pixels
    # exactly; sampling_ratio=-1 averages ceil(box / size) samples per output pixel (antialias).
    return roi_align(image, boxes.to(image.dtype), (size, size), 1.0, -1, aligned=True)


def augment(cutouts: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random flips, small affine jitter and pixel noise on cutouts [K, 3, S, S]."""
    k, device = cutouts.shape[0], cutouts.device
    u = torch.rand(k, 6, generator=generator, device=device)
    angle = (u[:, 0] - 0.5) * (math.pi / 6)  # ±15°
    scale = 0.95 + 0.1 * u[:, 1]
    flip = torch.where(u[:, 2] < 0.5, -1.0, 1.0)
    shift = (u[:, 3:5] - 0.5) * 0.2  # ±10 % of the cutout
    cos, sin = angle.cos() / scale, angle.sin() / scale
    theta = torch.stack(
        [
            torch.stack([cos * flip, -sin, shift[:, 0]], dim=-1),
            torch.stack([sin * flip, cos, shift[:, 1]], dim=-1),
        ],
        dim=1,
    )  # [K, 2, 3]: output grid -> input coordinates
    grid = F.affine_grid(theta.to(cutouts.dtype), list(cutouts.shape), align_corners=False)
    moved = F.grid_sample(cutouts, grid, padding_mode="reflection", align_corners=False)
    noise = torch.randn(cutouts.shape, generator=generator, device=device, dtype=cutouts.dtype)
    return moved + noise * (0.1 * u[:, 5, None, None, None]).to(cutouts.dtype)


def make_cutouts(
    image: torch.Tensor,
    *,
    cutn: int,
    cut_size: int,
    cut_pow: float,
    generator: torch.Generator,
    augmentations: bool = True,
    whole: bool = False,
) -> torch.Tensor:
    """Image [B, 3, H, W] in [0, 1] -> cutouts [B * cutn, 3, cut_size, cut_size] (cutn = 1 if whole)."""
    batch, _, height, width = image.shape
    if whole:
        boxes = whole_image_boxes(batch, height, width, image.device)
    else:
        boxes = crop_boxes(batch, cutn, height, width, cut_size, cut_pow, generator, image.device)
    cutouts = crop_and_resize(image, boxes, cut_size)
    return augment(cutouts, generator) if augmentations else cutouts
