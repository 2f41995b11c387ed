"""The two networks of a run: ``Models`` and ``load_models``, the public entry to the model layer.

Files and downloads live in :mod:`vqclip.hub`, the VQGAN in :mod:`vqclip.vqgan`, CLIP in
:mod:`vqclip.clip_model`, tiny test models in :mod:`vqclip.testing`; their public names are
re-exported here so ``from vqclip.models import ...`` keeps working.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from vqclip.clip_model import load_clip
from vqclip.config import RunConfig
from vqclip.device import resolve_device
from vqclip.hub import ModelError, ModelInfo, cache_dir, download
from vqclip.testing import make_tiny_models
from vqclip.vqgan import VQGAN, load_vqgan

__all__ = [
    "VQGAN",
    "ModelError",
    "ModelInfo",
    "Models",
    "cache_dir",
    "download",
    "load_clip",
    "load_models",
    "load_vqgan",
    "make_tiny_models",
    "resolve_device",
]


@dataclass
class Models:
    """The two networks of a run, their identities, and the device they live on."""

    vqgan: VQGAN
    clip: nn.Module
    vqgan_info: ModelInfo
    clip_info: ModelInfo
    device: torch.device

    @property
    def clip_size(self) -> int:
        """CLIP's input resolution in pixels (224 for ViT-B/32)."""
        return int(self.clip.visual.input_resolution)


def load_models(config: RunConfig, progress: bool = True) -> Models:
    """Load the VQGAN and CLIP named by a RunConfig onto its device."""
    device = resolve_device(config.device)
    if config.vqgan_config is not None or config.vqgan_checkpoint is not None:
        vqgan, vqgan_info = load_vqgan(
            config_path=config.vqgan_config,
            checkpoint_path=config.vqgan_checkpoint,
            device=device,
            progress=progress,
        )
    else:
        vqgan, vqgan_info = load_vqgan(config.vqgan, device=device, progress=progress)
    clip_model, clip_info = load_clip(config.clip_model, device=device, progress=progress)
    return Models(vqgan, clip_model, vqgan_info, clip_info, device)
