"""Fused autograd functions for frozen weights, and how fast modules are built from loaded ones.

Any float dtype: the same kernels run in fp32, bf16 and fp16.
"""

from __future__ import annotations

import copy
import dataclasses

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["Levers", "attention", "frozen_conv2d", "group_norm"]

# Explicit attention (one matmul, softmax, matmul) beats torch's flash kernel on CPU for
# short sequences (3-6x for CLIP's 50 tokens, 3x for a 32x32 VQGAN latent in bf16); past
# this many tokens its [L, L] matrix costs more memory than it saves time.
_EXPLICIT_ATTENTION_MAX_TOKENS = 4096


@dataclasses.dataclass(frozen=True)
class Levers:
    """Switches for the parts of the fast path, all on by default (for measuring each one)."""

    channels_last: bool | None = None  # decoder in channels-last memory (None: on the CPU)
    fused_norm: bool = True  # GroupNorm + SiLU as one function with a channels-last backward
    lean_conv: bool = True  # convolutions keep only their frozen weight for the backward
    explicit_attention: bool | None = None  # None: explicit on the CPU for short sequences
    first_token_only: bool = True  # CLIP's last block computes only the class token

    def channels_last_on(self, device: torch.device) -> bool:
        return device.type == "cpu" if self.channels_last is None else self.channels_last


# --- fused autograd functions for frozen weights -------------------------------------------


class _FrozenConv2d(torch.autograd.Function):
    """conv2d whose backward gives only the input's gradient and keeps only the weight.

    Autograd's convolution keeps its input for the weight's gradient even when the weight
    is frozen; with frozen weights that input is dead memory (a third of the decoder's).
    """

    @staticmethod
    def forward(ctx, x, weight, bias, stride, padding):
        ctx.save_for_backward(weight)
        ctx.conf = (x.shape, stride, padding)
        return F.conv2d(x, weight, bias, stride, padding)

    @staticmethod
    def backward(ctx, grad):
        (weight,) = ctx.saved_tensors
        shape, stride, padding = ctx.conf
        dx = torch.nn.grad.conv2d_input(shape, weight, grad, stride, padding)
        return dx, None, None, None, None


def frozen_conv2d(conv: nn.Conv2d, x: torch.Tensor, lean: bool = True) -> torch.Tensor:
    """A frozen nn.Conv2d applied to x, saving only its weight for the backward pass."""
    if not lean or conv.weight.requires_grad or conv.padding_mode != "zeros":
        return conv(x)
    if not torch.is_grad_enabled() or not x.requires_grad:
        return F.conv2d(x, conv.weight, conv.bias, conv.stride, conv.padding)
    return _FrozenConv2d.apply(x, conv.weight, conv.bias, conv.stride, conv.padding)


class _GroupNormSiLU(torch.autograd.Function):
    """GroupNorm (frozen affine), optionally followed by SiLU, keeping only its input.

    The backward recomputes the normalised values and works on per-channel coefficient
    vectors, so every pass runs along the contiguous channel axis of a channels-last
    tensor (torch's bf16 channels-last GroupNorm backward is much slower here).
    """

    @staticmethod
    def forward(ctx, x, weight, bias, groups, eps, silu):
        n, c = x.shape[:2]
        y, mean, rstd = torch.native_group_norm(
            x, weight, bias, n, c, x.numel() // (n * c), groups, eps
        )
        ctx.save_for_backward(x, weight, bias, mean, rstd)
        ctx.conf = (groups, silu)
        return F.silu(y, inplace=True) if silu else y

    @staticmethod
    def backward(ctx, grad):
        x, weight, bias, mean, rstd = ctx.saved_tensors
        groups, silu = ctx.conf
        n, c = x.shape[:2]
        per = c // groups
        count = x.numel() // (n * groups)  # elements in one group of one sample
        shape = (n, c) + (1,) * (x.dim() - 2)  # per-channel coefficients broadcast over x
        mean_c = mean.float().repeat_interleave(per, 1).view(shape)
        rstd_c = rstd.float().repeat_interleave(per, 1).view(shape)
        gamma = weight.float().view(1, c, *shape[2:])
        scale = rstd_c * gamma  # y = x * scale + shift
        if silu:
            shift = bias.float().view(1, c, *shape[2:]) - mean_c * scale
            y = torch.addcmul(shift.to(x.dtype), x, scale.to(x.dtype))
            grad = torch.ops.aten.silu_backward(grad, y)
            del y
        dims = tuple(range(2, x.dim()))
        sum_g = grad.sum(dims, keepdim=True).float()  # per channel: sum of dL/dy
        sum_gx = (grad * x).sum(dims, keepdim=True).float()  # and of dL/dy * x
        # Group sums of gamma * dL/dy and of gamma * dL/dy * x_hat, spread back to channels.
        s1 = (gamma * sum_g).view(n, groups, per).sum(-1).repeat_interleave(per, -1).view(shape)
        s2 = (gamma * rstd_c * (sum_gx - mean_c * sum_g)).view(n, groups, per).sum(-1)
        s2 = s2.repeat_interleave(per, -1).view(shape)
        # dx = rstd * (g - mean(g) - x_hat * mean(g x_hat)) with g = gamma * dL/dy
        k_x = -rstd_c * rstd_c * s2 / count
        k_0 = -rstd_c * s1 / count - mean_c * k_x
        dx = torch.addcmul(k_0.to(x.dtype), x, k_x.to(x.dtype)).addcmul_(grad, scale.to(x.dtype))
        return dx, None, None, None, None, None


def group_norm(
    norm: nn.GroupNorm, x: torch.Tensor, silu: bool = False, fused: bool = True
) -> torch.Tensor:
    """A frozen nn.GroupNorm (then SiLU if asked) in one function, saving only its input."""
    if not fused or norm.weight is None or norm.weight.requires_grad:
        y = norm(x)
        return F.silu(y) if silu else y
    if not torch.is_grad_enabled() or not x.requires_grad:
        n, c = x.shape[:2]
        y = torch.native_group_norm(
            x, norm.weight, norm.bias, n, c, x.numel() // (n * c), norm.num_groups, norm.eps
        )[0]
        return F.silu(y, inplace=True) if silu else y
    return _GroupNormSiLU.apply(x, norm.weight, norm.bias, norm.num_groups, norm.eps, silu)


def attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, explicit: bool | None = None
) -> torch.Tensor:
    """Softmax attention of q [..., L, E] over k, v [..., S, E] -> [..., L, E], scaled by E**-0.5.

    On CUDA and for long sequences this is torch's scaled_dot_product_attention; on the CPU
    for short ones (``explicit`` None) it is the explicit computation, several times faster.
    """
    if explicit is None:
        explicit = q.device.type == "cpu" and k.shape[-2] <= _EXPLICIT_ATTENTION_MAX_TOKENS
    if not explicit:
        return F.scaled_dot_product_attention(q, k, v)
    weights = (q * q.shape[-1] ** -0.5) @ k.transpose(-1, -2)  # [..., L, S]
    return weights.softmax(-1) @ v


@dataclasses.dataclass(frozen=True)
class Build:
    """How to build fast modules: compute dtype, memory format, in place or on copies, levers."""

    dtype: torch.dtype
    memory_format: torch.memory_format
    inplace: bool
    levers: Levers

    @classmethod
    def of(cls, module: nn.Module, dtype: torch.dtype, inplace: bool, levers: Levers) -> Build:
        """The build for a module's device (channels-last on the CPU unless levers say)."""
        device = next(module.parameters()).device
        channels_last = levers.channels_last_on(device)
        memory_format = torch.channels_last if channels_last else torch.contiguous_format
        return cls(dtype, memory_format, inplace, levers)

    def cast(self, module: nn.Module) -> nn.Module:
        """A weighted module (or a copy) with its weights in dtype, 4-d ones in memory_format."""
        return cast(module, self.dtype, self.memory_format, self.inplace)

    def norm(self, module: nn.Module) -> nn.Module:
        """A norm with fp32 affine weights (the mixed kernels read bf16 input with them)."""
        return cast(module, torch.float32, torch.contiguous_format, self.inplace)


def cast(module: nn.Module, dtype: torch.dtype, memory_format: torch.memory_format, inplace: bool):
    tensors = list(module.parameters()) + list(module.buffers())
    if all(
        t.dtype == dtype and (t.dim() != 4 or t.is_contiguous(memory_format=memory_format))
        for t in tensors
    ):
        return module
    target = module if inplace else copy.deepcopy(module)
    return target.to(dtype=dtype, memory_format=memory_format)
