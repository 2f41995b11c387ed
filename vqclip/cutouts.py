"""Cutouts: many random crops of the image, resized to CLIP's input size, made in one batch.

Crop sizes follow ``cut_pow``: size = min_size + (max_size - min_size) * u ** cut_pow with u
uniform in [0, 1), so cut_pow > 1 favours small crops (detail) and cut_pow < 1 large ones
(composition). All crops come from one ``roi_align`` call, which averages several samples
per output pixel when a crop is larger than CLIP's input, so downscaling does not alias.

``resize="matmul"`` computes the very same sampling as two matrix products per crop (the
sampling is separable: rows, then columns). It is what the fast path uses: several times
faster than roi_align's backward pass on the CPU, and deterministic on CUDA, where
roi_align's backward adds with atomics.
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


def resize_weights(start: torch.Tensor, length: torch.Tensor, size: int, n: int) -> torch.Tensor:
    """roi_align's sampling along one axis as a matrix: [K, size, n] for K crops of ``n`` pixels.

    ``start``/``length`` [K] are the crops' first pixel edge and extent. Each output pixel
    averages ceil(length / size) evenly spaced bilinear samples, exactly as roi_align does
    with aligned=True and sampling_ratio=-1 (so rows times columns reproduce it in 2-d).
    """
    k, dtype, device = start.shape[0], start.dtype, start.device
    grid = torch.ceil(length / size).clamp(min=1)  # [K] samples per output pixel
    most = int(math.ceil(n / size)) + 1  # bound on grid without reading it back
    step = length / size  # [K] output pixel extent
    i = torch.arange(size, device=device, dtype=dtype)[None, :, None]  # [1, S, 1]
    j = torch.arange(most, device=device, dtype=dtype)[None, None, :]  # [1, 1, G]
    begin = (start - 0.5)[:, None, None]  # aligned=True: pixel centres sit at +0.5
    pos = begin + i * step[:, None, None] + (j + 0.5) * (step / grid)[:, None, None]  # [K, S, G]
    valid = (j < grid[:, None, None]) & (pos >= -1) & (pos <= n)
    pos = pos.clamp(min=0)
    low = pos.floor()
    top = low >= n - 1
    low = torch.where(top, torch.full_like(low, n - 1), low)
    high = torch.where(top, low, low + 1)
    frac = torch.where(top, torch.zeros_like(pos), pos - low)
    scale = valid.to(dtype) / grid[:, None, None]
    weights = torch.zeros(k, size, n, device=device, dtype=dtype)
    weights.scatter_add_(2, low.long(), (1 - frac) * scale)
    weights.scatter_add_(2, high.long(), frac * scale)
    return weights


def crop_and_resize_matmul(
    image: torch.Tensor, boxes: torch.Tensor, size: int, dtype: torch.dtype | None = None
) -> torch.Tensor:
    """crop_and_resize as matrix products: image [B, 3, H, W], boxes [K, 5] -> [K, 3, S, S].

    The products run in ``dtype`` (default the image's); the result has the image's dtype.
    """
    out_dtype = image.dtype
    batch, channels, height, width = image.shape
    boxes = boxes.float()
    rows = resize_weights(boxes[:, 2], boxes[:, 4] - boxes[:, 2], size, height)  # [K, S, H]
    cols = resize_weights(boxes[:, 1], boxes[:, 3] - boxes[:, 1], size, width)  # [K, S, W]
    dtype = dtype or image.dtype
    image, rows, cols = image.to(dtype), rows.to(dtype), cols.to(dtype)
    k = boxes.shape[0]
    if batch == 1:  # one GEMM for all rows, then one batched GEMM for the columns
        plane = image[0].transpose(0, 1).reshape(height, channels * width)  # [H, 3W]
        half = (rows.reshape(k * size, height) @ plane).view(k, size * channels, width)
        out = half @ cols.transpose(1, 2)  # [K, S*3, S]
        out = out.view(k, size, channels, size).transpose(1, 2)
    else:
        images = image.index_select(0, boxes[:, 0].long())  # [K, 3, H, W]
        out = rows[:, None] @ images @ cols[:, None].transpose(-1, -2)
    return out.to(out_dtype).contiguous()


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
    resize: str = "roi_align",
    resize_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """Image [B, 3, H, W] in [0, 1] -> cutouts [B * cutn, 3, cut_size, cut_size] (cutn = 1 if whole).

    ``resize`` is "roi_align" or "matmul": the same sampling, computed two ways; the
    matmul one can run in a lower ``resize_dtype`` (the cutouts keep the image's dtype).
    """
    batch, _, height, width = image.shape
    if whole:
        boxes = whole_image_boxes(batch, height, width, image.device)
    else:
        boxes = crop_boxes(batch, cutn, height, width, cut_size, cut_pow, generator, image.device)
    if resize == "matmul":
        cutouts = crop_and_resize_matmul(image, boxes, cut_size, resize_dtype)
    else:
        cutouts = crop_and_resize(image, boxes, cut_size)
    return augment(cutouts, generator) if augmentations else cutouts
