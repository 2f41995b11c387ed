"""Speed and memory machinery: precision choice, fast model variants, memory estimates.

The fast path keeps the frozen weights in bf16 once (instead of autocast re-casting them
every step) and runs the networks through modules of our own that hold the same
sub-modules as taming's and CLIP's (nothing in those packages is patched):

- VQGAN decoder: channels-last bf16 convolutions whose backward keeps only the weight (the
  weights are frozen, so the input a convolution would save is never needed); GroupNorm and
  SiLU fused into one autograd function with a vectorised channels-last backward (torch's
  own bf16 channels-last GroupNorm backward is ~10x slower here); attention as one
  batched matmul per block; optional gradient checkpointing per block.
- CLIP ViT: batch-first blocks (no NLD/LND permutes), the patch embedding as one matmul,
  LayerNorm in bf16 with fp32 statistics, explicit attention for CLIP's short sequences,
  QuickGELU as SiLU with its 1.702 scale folded into the neighbouring weights.

Norm weights, the codebook, the encoder and CLIP's text tower stay in fp32: they are cheap
or run once per run. ``fp32`` uses the models as loaded, unchanged.
"""

from __future__ import annotations

import contextlib
import copy
import ctypes
import dataclasses
import os
import sys
import weakref
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

if TYPE_CHECKING:
    from vqclip.models import Models

__all__ = [
    "DoesNotFit",
    "FastAttnBlock",
    "Levers",
    "FastDecoder",
    "FastResnetBlock",
    "FastVisionTransformer",
    "MemoryEstimate",
    "auto_precision",
    "available_memory",
    "check_fits",
    "cpu_supports_bf16",
    "estimate_peak_memory",
    "is_out_of_memory",
    "optimize_models",
    "prepared_precision",
    "tune_cpu_allocator",
]

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
GIB = 2**30
_QUICK_GELU = 1.702  # CLIP's QuickGELU: x * sigmoid(1.702 x) = silu(1.702 x) / 1.702
# Explicit attention (one matmul, softmax, matmul) beats torch's flash kernel on CPU for
# short sequences (3-6x for CLIP's 50 tokens, 3x for a 32x32 VQGAN latent in bf16); past
# this many tokens its [L, L] matrix costs more memory than it saves time.
_EXPLICIT_ATTENTION_MAX_TOKENS = 4096


# --- hardware and precision ----------------------------------------------------------------


def cpu_supports_bf16() -> bool:
    """True when this CPU computes bf16 natively (AVX-512 BF16 or AMX), so bf16 is fast."""
    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    for name in probes:
        probe = getattr(torch.cpu, name, None)
        if probe is not None:
            with contextlib.suppress(Exception):
                if probe():
                    return True
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            flags = set(f.read().split())
    except OSError:
        return False
    return bool(flags & {"avx512_bf16", "amx_bf16"})


def auto_precision(device: torch.device | str) -> str:
    """The precision "auto" means on a device: bf16 where it is fast and safe, else fp32."""
    device = torch.device(device)
    if device.type == "cuda":
        with contextlib.suppress(Exception):
            if torch.cuda.is_bf16_supported(including_emulation=False):
                return "bf16"
        return "fp32"
    if device.type == "cpu" and cpu_supports_bf16():
        return "bf16"
    return "fp32"


class DoesNotFit(MemoryError):
    """A run will not fit (or has run out of) memory; the message says which settings would."""


_ALLOCATOR: dict[str, bool] = {}


def tune_cpu_allocator() -> bool:
    """Let the C allocator keep large freed blocks for reuse (Linux glibc; once per process).

    By default glibc hands every block over 32 MiB (an fp32 activation of a 256x256 image
    with 128 channels is exactly that) straight back to the kernel, so each step faults in
    its memory again: ~1.7 GiB of page faults per fp32 decoder pass, as long as the maths.
    Raising the mmap and trim thresholds keeps that memory in the process between steps.
    The cost: freed memory is returned to the system later (or at exit). Set the
    environment variable VQCLIP_MALLOC_TUNING=0 to leave the allocator alone.
    """
    if "done" in _ALLOCATOR:
        return _ALLOCATOR["done"]
    ok = False
    if sys.platform.startswith("linux") and os.environ.get("VQCLIP_MALLOC_TUNING", "1") != "0":
        with contextlib.suppress(OSError, AttributeError):
            mallopt = ctypes.CDLL("libc.so.6").mallopt  # glibc; musl has none
            mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
            m_trim_threshold, m_mmap_threshold = -1, -3
            ok = mallopt(m_mmap_threshold, 1 << 30) == 1
            ok = mallopt(m_trim_threshold, (1 << 31) - 1) == 1 and ok
    _ALLOCATOR["done"] = ok
    return ok


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


# --- the VQGAN decoder -------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Build:
    """How to build fast modules: compute dtype, memory format, in place or on copies, levers."""

    dtype: torch.dtype
    memory_format: torch.memory_format
    inplace: bool
    levers: Levers

    @classmethod
    def of(cls, module: nn.Module, dtype: torch.dtype, inplace: bool, levers: Levers) -> _Build:
        """The build for a module's device (channels-last on the CPU unless levers say)."""
        device = next(module.parameters()).device
        channels_last = levers.channels_last_on(device)
        memory_format = torch.channels_last if channels_last else torch.contiguous_format
        return cls(dtype, memory_format, inplace, levers)

    def cast(self, module: nn.Module) -> nn.Module:
        """A weighted module (or a copy) with its weights in dtype, 4-d ones in memory_format."""
        return _cast(module, self.dtype, self.memory_format, self.inplace)

    def norm(self, module: nn.Module) -> nn.Module:
        """A norm with fp32 affine weights (the mixed kernels read bf16 input with them)."""
        return _cast(module, torch.float32, torch.contiguous_format, self.inplace)


def _cast(module: nn.Module, dtype: torch.dtype, memory_format: torch.memory_format, inplace: bool):
    tensors = list(module.parameters()) + list(module.buffers())
    if all(
        t.dtype == dtype and (t.dim() != 4 or t.is_contiguous(memory_format=memory_format))
        for t in tensors
    ):
        return module
    target = module if inplace else copy.deepcopy(module)
    return target.to(dtype=dtype, memory_format=memory_format)


class FastResnetBlock(nn.Module):
    """taming's ResnetBlock (no time embedding, dropout 0) on the same convolutions and norms."""

    def __init__(
        self,
        block: nn.Module,
        dtype: torch.dtype | _Build = torch.float32,
        *,
        inplace: bool = False,
        levers: Levers = Levers(),
    ) -> None:
        super().__init__()
        build = dtype if isinstance(dtype, _Build) else _Build.of(block, dtype, inplace, levers)
        self.in_channels, self.out_channels = block.in_channels, block.out_channels
        self.fused, self.lean = build.levers.fused_norm, build.levers.lean_conv
        self.norm1, self.conv1 = build.norm(block.norm1), build.cast(block.conv1)
        self.norm2, self.conv2 = build.norm(block.norm2), build.cast(block.conv2)
        self.shortcut = None
        if block.in_channels != block.out_channels:
            short = block.conv_shortcut if block.use_conv_shortcut else block.nin_shortcut
            self.shortcut = build.cast(short)

    def forward(self, x: torch.Tensor, temb: Any = None) -> torch.Tensor:
        h = group_norm(self.norm1, x, silu=True, fused=self.fused)
        h = frozen_conv2d(self.conv1, h, self.lean)
        h = group_norm(self.norm2, h, silu=True, fused=self.fused)
        h = frozen_conv2d(self.conv2, h, self.lean)
        if self.shortcut is not None:
            x = frozen_conv2d(self.shortcut, x, self.lean)
        return x + h


class FastAttnBlock(nn.Module):
    """taming's AttnBlock (single-head self-attention over pixels) on the same weights."""

    def __init__(
        self,
        block: nn.Module,
        dtype: torch.dtype | _Build = torch.float32,
        *,
        inplace: bool = False,
        levers: Levers = Levers(),
    ) -> None:
        super().__init__()
        build = dtype if isinstance(dtype, _Build) else _Build.of(block, dtype, inplace, levers)
        self.in_channels = block.in_channels
        self.fused, self.lean = build.levers.fused_norm, build.levers.lean_conv
        self.explicit = build.levers.explicit_attention
        self.norm = build.norm(block.norm)
        self.q, self.k, self.v = build.cast(block.q), build.cast(block.k), build.cast(block.v)
        self.proj_out = build.cast(block.proj_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, height, width = x.shape
        h = group_norm(self.norm, x, fused=self.fused)

        def tokens(conv: nn.Conv2d) -> torch.Tensor:  # [B, C, H, W] -> [B, HW, C]
            return frozen_conv2d(conv, h, self.lean).flatten(2).transpose(1, 2)

        out = attention(tokens(self.q), tokens(self.k), tokens(self.v), self.explicit)
        out = out.transpose(1, 2).reshape(b, c, height, width)  # [B, C, H, W]
        if x.is_contiguous(memory_format=torch.channels_last):
            out = out.contiguous(memory_format=torch.channels_last)
        return x + frozen_conv2d(self.proj_out, out, self.lean)


class FastUpsample(nn.Module):
    """taming's Upsample: nearest x2, then a 3x3 convolution."""

    def __init__(self, up: nn.Module, build: _Build) -> None:
        super().__init__()
        self.with_conv, self.lean = up.with_conv, build.levers.lean_conv
        if up.with_conv:
            self.conv = build.cast(up.conv)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, scale_factor=2.0, mode="nearest")
        return frozen_conv2d(self.conv, x, self.lean) if self.with_conv else x


class FastDecoder(nn.Module):
    """taming's Decoder on the same weights (cast to ``dtype``), fast and lean in memory.

    Input [B, z_channels, h, w] of any float dtype; output [B, out_ch, H, W] in fp32. With
    ``checkpointing`` each block's activations are recomputed in the backward pass instead
    of kept (for large images).
    """

    def __init__(
        self,
        decoder: nn.Module,
        dtype: torch.dtype = torch.bfloat16,
        *,
        inplace: bool = False,
        checkpointing: bool = False,
        levers: Levers = Levers(),
    ) -> None:
        super().__init__()
        build = _Build.of(decoder, dtype, inplace, levers)
        self.dtype, self.memory_format = dtype, build.memory_format
        self.checkpointing = checkpointing
        self.fused, self.lean = levers.fused_norm, levers.lean_conv
        self.num_resolutions, self.num_res_blocks = decoder.num_resolutions, decoder.num_res_blocks
        self.give_pre_end = decoder.give_pre_end
        self.z_shape = decoder.z_shape
        self.conv_in = build.cast(decoder.conv_in)
        self.mid = nn.Module()
        self.mid.block_1 = FastResnetBlock(decoder.mid.block_1, build)
        self.mid.attn_1 = FastAttnBlock(decoder.mid.attn_1, build)
        self.mid.block_2 = FastResnetBlock(decoder.mid.block_2, build)
        self.up = nn.ModuleList()
        for level in decoder.up:
            up = nn.Module()
            up.block = nn.ModuleList(FastResnetBlock(b, build) for b in level.block)
            up.attn = nn.ModuleList(FastAttnBlock(a, build) for a in level.attn)
            if hasattr(level, "upsample"):
                up.upsample = FastUpsample(level.upsample, build)
            self.up.append(up)
        self.norm_out = build.norm(decoder.norm_out)
        self.conv_out = build.cast(decoder.conv_out)

    def _run(self, module: nn.Module, h: torch.Tensor) -> torch.Tensor:
        if self.checkpointing and torch.is_grad_enabled() and h.requires_grad:
            return checkpoint(module, h, use_reentrant=False)
        return module(h)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        z = z.to(self.dtype).contiguous(memory_format=self.memory_format)
        h = frozen_conv2d(self.conv_in, z, self.lean)
        h = self._run(self.mid.block_1, h)
        h = self._run(self.mid.attn_1, h)
        h = self._run(self.mid.block_2, h)
        for i_level in reversed(range(self.num_resolutions)):
            level = self.up[i_level]
            for i_block in range(self.num_res_blocks + 1):
                h = self._run(level.block[i_block], h)
                if len(level.attn) > 0:
                    h = self._run(level.attn[i_block], h)
            if i_level != 0:
                h = self._run(level.upsample, h)
        if self.give_pre_end:
            return h.float()
        h = group_norm(self.norm_out, h, silu=True, fused=self.fused)
        return frozen_conv2d(self.conv_out, h, self.lean).float()


# --- CLIP's vision transformer ---------------------------------------------------------


def _layer_norm(norm: nn.LayerNorm, x: torch.Tensor) -> torch.Tensor:
    """LayerNorm in x's dtype (fp32 statistics inside the kernel) with the norm's fp32 weights."""
    return F.layer_norm(x, norm.normalized_shape, norm.weight, norm.bias, norm.eps)


class FastResidualAttentionBlock(nn.Module):
    """CLIP's ResidualAttentionBlock, batch-first ([N, L, D]), on the same weights.

    QuickGELU runs as SiLU: c_fc's weights carry its 1.702 input scale and c_proj's its
    1/1.702 output scale, so the activation is one fused kernel each way.
    """

    def __init__(self, block: nn.Module, build: _Build) -> None:
        super().__init__()
        attn = block.attn
        if attn.in_proj_weight is None or block.attn_mask is not None:
            raise ValueError("only CLIP's vision blocks (packed in_proj, no mask) are supported")
        dtype = build.dtype
        self.heads, self.explicit = attn.num_heads, build.levers.explicit_attention
        self.ln_1, self.ln_2 = build.norm(block.ln_1), build.norm(block.ln_2)
        self.in_proj_weight = nn.Parameter(_tensor(attn.in_proj_weight, dtype), requires_grad=False)
        self.in_proj_bias = nn.Parameter(_tensor(attn.in_proj_bias, dtype), requires_grad=False)
        self.out_proj = _cast(attn.out_proj, dtype, torch.contiguous_format, build.inplace)
        self.c_fc = _scaled_linear(block.mlp.c_fc, _QUICK_GELU, dtype, bias_too=True)
        self.c_proj = _scaled_linear(block.mlp.c_proj, 1 / _QUICK_GELU, dtype, bias_too=False)

    def forward(self, x: torch.Tensor, first_only: bool = False) -> torch.Tensor:
        """x [N, L, D] -> [N, L, D]; with ``first_only`` just the first token's output [N, 1, D]
        (all tokens are still attended to), which is all CLIP reads of its last block."""
        n, length, width = x.shape
        h = _layer_norm(self.ln_1, x)
        if first_only:
            q = F.linear(h[:, :1], self.in_proj_weight[:width], self.in_proj_bias[:width])
            kv = F.linear(h, self.in_proj_weight[width:], self.in_proj_bias[width:])
            k, v = kv.view(n, length, 2, self.heads, -1).permute(2, 0, 3, 1, 4).unbind(0)
            q = q.view(n, 1, self.heads, -1).transpose(1, 2)
            x, length = x[:, :1], 1
        else:
            qkv = F.linear(h, self.in_proj_weight, self.in_proj_bias)  # [N, L, 3D]
            q, k, v = qkv.view(n, length, 3, self.heads, -1).permute(2, 0, 3, 1, 4).unbind(0)
        h = attention(q, k, v, self.explicit).transpose(1, 2).reshape(n, length, width)
        x = x + self.out_proj(h)  # [N, L, D]
        h = F.silu(self.c_fc(_layer_norm(self.ln_2, x)))
        return x + self.c_proj(h)


def _tensor(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return t.detach().to(dtype)


def _scaled_linear(linear: nn.Linear, scale: float, dtype, bias_too: bool) -> nn.Linear:
    """A new frozen Linear computing scale * (original weight) x (+ scaled or plain bias)."""
    out = nn.Linear(linear.in_features, linear.out_features, linear.bias is not None)
    out = out.to(device=linear.weight.device, dtype=dtype).requires_grad_(False)
    with torch.no_grad():
        out.weight.copy_(linear.weight.float() * scale)
        if linear.bias is not None:
            out.bias.copy_(linear.bias.float() * (scale if bias_too else 1.0))
    return out


class FastVisionTransformer(nn.Module):
    """CLIP's VisionTransformer on the same weights, computing in ``dtype``.

    ``conv1`` is kept as loaded (CLIP reads its dtype as the model's dtype, which the text
    tower uses); the patch embedding runs as one matmul on a ``dtype`` copy of its weight.
    Input [N, 3, S, S] of any float dtype; output [N, output_dim] in ``dtype``.
    """

    def __init__(
        self,
        visual: nn.Module,
        dtype: torch.dtype = torch.bfloat16,
        *,
        inplace: bool = False,
        levers: Levers = Levers(),
    ) -> None:
        super().__init__()
        build = _Build(dtype, torch.contiguous_format, inplace, levers)
        self.dtype, self.first_token_only = dtype, levers.first_token_only
        self.input_resolution, self.output_dim = visual.input_resolution, visual.output_dim
        self.conv1 = visual.conv1
        self.patch = visual.conv1.kernel_size[0]
        weight = visual.conv1.weight.detach()  # [D, 3, p, p]
        self.patch_weight = nn.Parameter(weight.reshape(weight.shape[0], -1).to(dtype), False)
        self.class_embedding = nn.Parameter(_tensor(visual.class_embedding, dtype), False)
        self.positional_embedding = nn.Parameter(_tensor(visual.positional_embedding, dtype), False)
        self.ln_pre = build.norm(visual.ln_pre)
        self.blocks = nn.ModuleList(
            FastResidualAttentionBlock(b, build) for b in visual.transformer.resblocks
        )
        self.ln_post = build.norm(visual.ln_post)
        self.proj = nn.Parameter(_tensor(visual.proj, dtype), False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, p = x.shape[0], self.patch
        grid_h, grid_w = x.shape[2] // p, x.shape[3] // p
        x = x[:, :, : grid_h * p, : grid_w * p].to(self.dtype)
        patches = x.reshape(n, 3, grid_h, p, grid_w, p).permute(0, 2, 4, 1, 3, 5)
        x = patches.reshape(n, grid_h * grid_w, -1) @ self.patch_weight.T  # [N, g*g, D]
        cls = self.class_embedding.expand(n, 1, -1)
        x = torch.cat([cls, x], dim=1) + self.positional_embedding  # [N, 1 + g*g, D]
        x = _layer_norm(self.ln_pre, x)
        last = len(self.blocks) - 1
        for i, block in enumerate(self.blocks):
            x = block(x, first_only=self.first_token_only and i == last)
        return _layer_norm(self.ln_post, x[:, 0, :]) @ self.proj


class _AutocastVisual(nn.Module):
    """Any other CLIP visual tower (the ResNets), run as loaded under autocast."""

    def __init__(self, visual: nn.Module, dtype: torch.dtype) -> None:
        super().__init__()
        self.visual, self.dtype = visual, dtype
        self.conv1 = visual.conv1
        self.input_resolution = visual.input_resolution
        self.output_dim = visual.output_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(x.device.type, dtype=self.dtype):
            return self.visual(x)


# --- preparing models ------------------------------------------------------------------

_PREPARED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # vqgan -> {key: Models}


def prepared_precision(models: Models) -> str | None:
    """The precision ``optimize_models`` prepared these models for, or None if untouched."""
    decoder = models.vqgan.decoder
    if isinstance(decoder, FastDecoder):
        return next(name for name, dtype in DTYPES.items() if dtype == decoder.dtype)
    return None


def optimize_models(
    models: Models,
    precision: str,
    *,
    inplace: bool = False,
    checkpointing: bool = False,
    levers: Levers = Levers(),
) -> Models:
    """Models ready to run at ``precision``: bf16 gets the fast path; fp32 and fp16 (autocast
    on CUDA) run the models as loaded, so they are returned unchanged.

    bf16 swaps in the fast decoder and vision transformer with frozen bf16 weights.
    ``inplace`` converts the given models (their fp32 decoder and vision weights are freed:
    use it when nothing else needs them); otherwise the result is built beside them and
    cached, so the next run with the same models and options reuses it.
    """
    if precision != "bf16":
        done = prepared_precision(models)
        if done is not None:
            raise ValueError(
                f"These models were converted to {done} in place, so their original weights "
                f"are gone. Load the models again to run in {precision}."
            )
        return models
    dtype = DTYPES[precision]
    current = models.vqgan.decoder
    if isinstance(current, FastDecoder):  # converted in place already
        current.checkpointing = checkpointing
        return models
    key = (precision, levers)
    if not inplace:
        cache = _PREPARED.get(models.vqgan)
        if cache is not None and key in cache:
            cache[key].vqgan.decoder.checkpointing = checkpointing
            return cache[key]
    decoder = FastDecoder(
        current, dtype, inplace=inplace, checkpointing=checkpointing, levers=levers
    )
    visual = models.clip.visual
    if hasattr(visual, "transformer") and hasattr(visual, "proj"):
        fast_visual: nn.Module = FastVisionTransformer(
            visual, dtype, inplace=inplace, levers=levers
        )
    else:
        fast_visual = _AutocastVisual(visual, dtype)
    if inplace:
        models.vqgan.decoder = decoder
        models.clip.visual = fast_visual
        return models
    vqgan, clip_model = _shallow_copy(models.vqgan), _shallow_copy(models.clip)
    vqgan.decoder, clip_model.visual = decoder, fast_visual
    result = dataclasses.replace(models, vqgan=vqgan, clip=clip_model)
    cache = _PREPARED.setdefault(models.vqgan, {})
    cache.clear()  # one prepared copy at a time: its weights are large
    cache[key] = result
    return result


def _shallow_copy(module: nn.Module) -> nn.Module:
    """A copy of module sharing its sub-modules, parameters and buffers (not their tables)."""
    clone = copy.copy(module)
    clone._modules = dict(module._modules)
    clone._parameters = dict(module._parameters)
    clone._buffers = dict(module._buffers)
    return clone


# --- memory ------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class MemoryEstimate:
    """A run's expected peak memory in bytes, by part."""

    runtime: int  # torch and its libraries (RSS before any model), fixed per device
    weights: int  # model weights as they will sit during the run
    decoder: int  # decoder activations kept for the backward pass, and its transients
    clip: int  # CLIP activations of one micro-batch of cutouts
    other: int  # cutouts, images, codebook distances, allocator slack

    @property
    def total(self) -> int:
        return self.runtime + self.weights + self.decoder + self.clip + self.other

    @property
    def activations(self) -> int:
        return self.decoder + self.clip + self.other


def _bytes(precision: str) -> int:
    return 2 if precision in ("bf16", "fp16") else 4


def _weights_bytes(models: Models, precision: str) -> int:
    """Bytes of the weights a run keeps: as loaded, plus the fast copies if it makes them."""
    total = 0
    seen: set[int] = set()
    for module in (models.vqgan, models.clip):
        for t in list(module.parameters()) + list(module.buffers()):
            if t.data_ptr() not in seen:
                seen.add(t.data_ptr())
                total += t.numel() * t.element_size()
    if precision == "bf16" and prepared_precision(models) is None:
        fast = sum(p.numel() for p in models.vqgan.decoder.parameters())
        fast += sum(p.numel() for p in models.clip.visual.parameters())
        total += fast * _bytes(precision)
    return total


def _decoder_bytes(
    models: Models, size: tuple[int, int], precision: str, checkpointing: bool
) -> int:
    """Memory the decoder holds at its peak for an image size (width, height)."""
    decoder = models.vqgan.decoder
    base = decoder.up[0].block[-1].out_channels
    channels = [level.block[-1].out_channels for level in decoder.up]
    blocks = decoder.num_res_blocks + 1
    pixels = size[0] * size[1]
    # Tensors kept per block output: the plain path ~10 (norm inputs and outputs, SiLU,
    # convolution inputs, residuals), the fast path 2 (each norm's input), checkpointing 1.
    fast = precision == "bf16"
    per_block = 1 if checkpointing and fast else (2 if fast else 10)
    kept = sum(blocks * per_block * (pixels >> (2 * i)) * ch for i, ch in enumerate(channels))
    # The backward pass holds a few full-resolution tensors at once besides.
    transient = 6 * pixels * base
    return (kept + transient) * _bytes(precision)


def _clip_bytes(models: Models, batch: int, precision: str) -> int:
    """Activations CLIP's vision tower keeps per micro-batch of cutouts (fwd + bwd)."""
    visual = models.clip.visual
    size = int(visual.input_resolution)
    blocks = getattr(visual, "blocks", None) or getattr(
        getattr(visual, "transformer", None), "resblocks", []
    )
    layers = max(1, len(blocks))
    conv1 = visual.conv1
    width, patch = conv1.out_channels, conv1.kernel_size[0]
    tokens = (size // patch) ** 2 + 1
    # Per layer and token: ~10 width-sized tensors on the fast path (measured: 9 MB per
    # ViT-B/32 cutout in bf16), ~21 through CLIP's own modules (measured: 42 MB per cutout in
    # fp32), plus the attention matrix of each head.
    heads = max(1, width // 64)
    kept = 10 if precision == "bf16" else 21
    per_layer = tokens * width * kept + heads * tokens * tokens
    return batch * layers * per_layer * _bytes(precision)


def estimate_peak_memory(
    size: tuple[int, int] | list[int],
    cutn: int,
    precision: str,
    device: torch.device | str,
    models: Models,
    clip_batch: int | None = None,
    checkpointing: bool = False,
) -> MemoryEstimate:
    """Expected peak memory of a run (``.total`` in bytes), from the models' shapes.

    It counts torch's own footprint, the weights, what the decoder and one CLIP micro-batch
    keep for the backward pass, and the cutouts. Calibrated on the CPU against measured
    peak RSS with the C allocator untuned (VQGAN f16_16384 and ViT-B/32, 128-512 px, 8-64
    cutouts, fp32 and bf16; benchmarks/RESULTS.md). The tuned allocator keeps freed blocks
    (up to ~1.2 GiB more at 512x512), so the engine tunes it only when there is room.
    """
    device = torch.device(device)
    width, height = int(size[0]), int(size[1])
    batch = max(1, min(cutn, clip_batch or cutn))
    runtime = 700 * 2**20 if device.type == "cpu" else 0  # GPU: the context is not counted
    weights = _weights_bytes(models, precision)
    decoder = _decoder_bytes(models, (width, height), precision, checkpointing)
    clip_part = _clip_bytes(models, batch, precision)
    cutouts = cutn * 3 * int(models.clip.visual.input_resolution) ** 2 * 4 * 3  # + grads, aug
    codes = width * height // 256 * models.vqgan.n_embed * 4 * 3  # distances to every code
    slack = 200 * 2**20 if device.type == "cpu" else 64 * 2**20
    return MemoryEstimate(runtime, weights, decoder, clip_part, cutouts + codes + slack)


def available_memory(device: torch.device | str) -> int | None:
    """Bytes a run may still take on the device (free GPU memory, or available RAM), or None."""
    device = torch.device(device)
    if device.type == "cuda":
        try:
            free, _ = torch.cuda.mem_get_info(device)
        except Exception:
            return None
        cached = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
        return int(free + cached)
    try:
        with open("/proc/meminfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    with contextlib.suppress(ValueError, OSError, AttributeError):
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    return None


def check_fits(
    size: tuple[int, int] | list[int],
    cutn: int,
    precision: str,
    device: torch.device | str,
    models: Models,
    clip_batch: int | None = None,
    checkpointing: bool = False,
    available: int | None = None,
) -> MemoryEstimate:
    """Raise DoesNotFit, saying what would fit, when a run will not fit in memory.

    The models are already loaded, so only what the run adds (activations, and fast weight
    copies when the models were not converted in place) is compared with ``available``
    (default: what the device has free now). Returns the estimate when it fits.
    """
    device = torch.device(device)
    estimate = estimate_peak_memory(
        size, cutn, precision, device, models, clip_batch, checkpointing
    )
    free = available if available is not None else available_memory(device)
    if free is None:
        return estimate
    loaded = estimate.runtime + _weights_bytes(models, "fp32")  # what is resident already
    need = estimate.total - loaded
    if need <= free:
        return estimate
    options = _fitting_options(
        size, cutn, precision, device, models, clip_batch, checkpointing, free + loaded
    )
    where = "GPU memory" if device.type == "cuda" else "RAM"
    raise DoesNotFit(
        f"A {size[0]}x{size[1]} run with {cutn} cutouts in {precision} needs about "
        f"{need / GIB:.1f} GiB more {where} (peak {estimate.total / GIB:.1f} GiB with the models), "
        f"but only {free / GIB:.1f} GiB is free. "
        + (
            "Any of these would fit: " + "; ".join(options) + "."
            if options
            else "Even the smallest settings would not fit: free memory, or use another device."
        )
    )


def _fitting_options(size, cutn, precision, device, models, clip_batch, checkpointing, budget):
    """Human-readable settings changes whose estimated peak fits in ``budget`` bytes."""

    def fits(**change: Any) -> bool:
        args = {
            "size": size,
            "cutn": cutn,
            "precision": precision,
            "device": device,
            "models": models,
            "clip_batch": clip_batch,
            "checkpointing": checkpointing,
            **change,
        }
        return estimate_peak_memory(**args).total <= budget

    options = []
    if (
        precision == "fp32"
        and (device.type == "cuda" or cpu_supports_bf16())
        and fits(precision="bf16")
    ):
        options.append("--precision bf16")
    for batch in (16, 8, 4, 2, 1):
        if batch < (clip_batch or cutn) and fits(clip_batch=batch):
            options.append(f"--clip-batch {batch} (CLIP sees the cutouts in micro-batches)")
            break
    if not checkpointing and fits(checkpointing=True):
        options.append("--checkpointing on (recompute decoder activations)")
    for n in (64, 32, 16, 8, 4):
        if n < cutn and fits(cutn=n):
            options.append(f"--cutn {n}")
            break
    factor = 16
    side = max(size)
    for scale in (0.75, 0.5, 0.25):
        smaller = [max(factor, int(v * scale) // factor * factor) for v in size]
        if max(smaller) < side and fits(size=smaller):
            options.append(f"--size {smaller[0]} {smaller[1]}")
            break
    return options


def out_of_memory_advice(config: Any, precision: str, iteration: int) -> str:
    """The message for a step that ran out of memory even at the leanest settings."""
    width, height = config.size
    return (
        f"Out of memory at iteration {iteration} of a {width}x{height} run in {precision}, even "
        "with CLIP seeing one cutout at a time and the decoder recomputing its activations. "
        "Memory grows with the pixel count: lower --size (e.g. "
        f"{max(16, width // 2 // 16 * 16)} {max(16, height // 2 // 16 * 16)}), use --precision "
        "bf16 where the device supports it, or close other programs using this device's memory."
    )


def is_out_of_memory(error: BaseException) -> bool:
    """True for an allocation failure torch reports (CUDA or CPU) that a retry may avoid."""
    if isinstance(error, torch.OutOfMemoryError):
        return True
    return isinstance(error, RuntimeError) and "out of memory" in str(error).lower()


def micro_batches(n: int, batch: int) -> Iterator[tuple[int, int]]:
    """(start, stop) ranges splitting range(n) into pieces of at most ``batch``."""
    batch = max(1, batch)
    for start in range(0, n, batch):
        yield start, min(n, start + batch)
