"""CLIP's vision towers on the same weights, in any dtype: the ViT rebuilt batch-first,
any other tower (the ResNets) run as loaded under autocast."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from vqclip.fast.kernels import Build, Levers, attention, cast

__all__ = ["FastVisionTransformer"]

_QUICK_GELU = 1.702  # CLIP's QuickGELU: x * sigmoid(1.702 x) = silu(1.702 x) / 1.702


def _layer_norm(norm: nn.LayerNorm, x: torch.Tensor) -> torch.Tensor:
    """LayerNorm in x's dtype (fp32 statistics inside the kernel) with the norm's fp32 weights."""
    return F.layer_norm(x, norm.normalized_shape, norm.weight, norm.bias, norm.eps)


class FastResidualAttentionBlock(nn.Module):
    """CLIP's ResidualAttentionBlock, batch-first ([N, L, D]), on the same weights.

    QuickGELU runs as SiLU: c_fc's weights carry its 1.702 input scale and c_proj's its
    1/1.702 output scale, so the activation is one fused kernel each way.
    """

    def __init__(self, block: nn.Module, build: Build) -> None:
        super().__init__()
        attn = block.attn
        if attn.in_proj_weight is None or block.attn_mask is not None:
            raise ValueError("only CLIP's vision blocks (packed in_proj, no mask) are supported")
        dtype = build.dtype
        self.heads, self.explicit = attn.num_heads, build.levers.explicit_attention
        self.ln_1, self.ln_2 = build.norm(block.ln_1), build.norm(block.ln_2)
        self.in_proj_weight = nn.Parameter(_tensor(attn.in_proj_weight, dtype), requires_grad=False)
        self.in_proj_bias = nn.Parameter(_tensor(attn.in_proj_bias, dtype), requires_grad=False)
        self.out_proj = cast(attn.out_proj, dtype, torch.contiguous_format, build.inplace)
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
        build = Build(dtype, torch.contiguous_format, inplace, levers)
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


class AutocastVisual(nn.Module):
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
