"""taming's VQGAN Decoder on the same weights, in any dtype, lean in memory."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from vqclip.fast.kernels import Build, Levers, attention, frozen_conv2d, group_norm

__all__ = ["FastAttnBlock", "FastDecoder", "FastResnetBlock"]


class FastResnetBlock(nn.Module):
    """taming's ResnetBlock (no time embedding, dropout 0) on the same convolutions and norms."""

    def __init__(
        self,
        block: nn.Module,
        dtype: torch.dtype | Build = torch.float32,
        *,
        inplace: bool = False,
        levers: Levers = Levers(),
    ) -> None:
        super().__init__()
        build = dtype if isinstance(dtype, Build) else Build.of(block, dtype, inplace, levers)
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
        dtype: torch.dtype | Build = torch.float32,
        *,
        inplace: bool = False,
        levers: Levers = Levers(),
    ) -> None:
        super().__init__()
        build = dtype if isinstance(dtype, Build) else Build.of(block, dtype, inplace, levers)
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

    def __init__(self, up: nn.Module, build: Build) -> None:
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
        build = Build.of(decoder, dtype, inplace, levers)
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
