"""Pure tensor functions used by the engine; each works on whatever device its inputs are on."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def straight_through(forward: torch.Tensor, backward: torch.Tensor) -> torch.Tensor:
    """Value of ``forward`` with the gradient of ``backward``."""
    return backward + (forward - backward).detach()


def vector_quantize(z: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
    """Snap each latent vector to its nearest codebook entry; gradients pass straight through."""
    # z [B, C, h, w], codebook [N, C]
    flat = z.movedim(1, -1)  # [B, h, w, C]
    dist = flat.pow(2).sum(-1, keepdim=True) - 2 * flat @ codebook.T + codebook.pow(2).sum(1)
    codes = F.embedding(dist.argmin(-1), codebook).movedim(-1, 1)  # [B, C, h, w]
    return straight_through(codes, z)


class _ClampWithGrad(torch.autograd.Function):
    """Clamp in the forward pass; in the backward pass keep gradients that lead back in range."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, lo: float, hi: float) -> torch.Tensor:
        ctx.save_for_backward(x)
        ctx.lo, ctx.hi = lo, hi
        return x.clamp(lo, hi)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (x,) = ctx.saved_tensors
        # A descent step moves x by -grad: keep grad where that does not push x further out.
        outward = grad * (x - x.clamp(ctx.lo, ctx.hi)) < 0
        return grad.masked_fill(outward, 0), None, None


def clamp_with_grad(x: torch.Tensor, lo: float, hi: float) -> torch.Tensor:
    """x clamped to [lo, hi]; out-of-range values still receive gradients that pull them back."""
    return _ClampWithGrad.apply(x, lo, hi)


def spherical_distance(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Squared great-circle distance between every row of x [N, D] and of y [M, D] -> [N, M]."""
    x, y = F.normalize(x, dim=-1), F.normalize(y, dim=-1)
    chord = (x[:, None, :] - y[None, :, :]).norm(dim=-1)  # [N, M], in [0, 2]
    return chord.div(2).clamp(max=1).arcsin().pow(2).mul(2)


def cosine_similarity(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Cosine similarity between every row of x [N, D] and of y [M, D] -> [N, M]."""
    return F.normalize(x, dim=-1) @ F.normalize(y, dim=-1).T


def total_variation(image: torch.Tensor) -> torch.Tensor:
    """Mean squared difference of neighbouring pixels of image [B, 3, H, W] -> []."""
    dx = image[..., :, 1:] - image[..., :, :-1]
    dy = image[..., 1:, :] - image[..., :-1, :]
    return dx.pow(2).mean() + dy.pow(2).mean()
