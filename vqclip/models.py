"""The networks of a run: ``Models`` and ``load_models``, the public entry to the model layer.

Files and downloads live in :mod:`vqclip.hub`, the VQGAN in :mod:`vqclip.vqgan`, CLIP in
:mod:`vqclip.clip_model`, tiny test models in :mod:`vqclip.testing`; their public names are
re-exported here so ``from vqclip.models import ...`` keeps working.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from vqclip.clip_model import load_clip
from vqclip.config import ConfigError, RunConfig
from vqclip.device import resolve_device
from vqclip.ensemble import parse_clip_spec
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
    """The networks of a run, their identities, and the device they live on.

    ``clip`` is the run's CLIP, or the first of an ensemble (``clip_model`` naming several,
    vqclip.ensemble); an ensemble's further CLIPs follow in ``more_clips``, in the order
    the setting names them. ``clips`` lists them all.
    """

    vqgan: VQGAN
    clip: nn.Module
    vqgan_info: ModelInfo
    clip_info: ModelInfo
    device: torch.device
    more_clips: tuple[nn.Module, ...] = ()
    more_clip_infos: tuple[ModelInfo, ...] = ()

    @property
    def clip_size(self) -> int:
        """CLIP's input resolution in pixels (224 for ViT-B/32); the first CLIP's in an ensemble."""
        return int(self.clip.visual.input_resolution)

    @property
    def clips(self) -> tuple[nn.Module, ...]:
        """Every CLIP that judges the picture, in the setting's order (one, or an ensemble)."""
        return (self.clip, *self.more_clips)

    @property
    def clip_infos(self) -> tuple[ModelInfo, ...]:
        return (self.clip_info, *self.more_clip_infos)

    @property
    def clip_sizes(self) -> tuple[int, ...]:
        """Each CLIP's input resolution: the size of the cutouts it sees."""
        return tuple(int(clip.visual.input_resolution) for clip in self.clips)


def load_models(config: RunConfig, progress: bool = True) -> Models:
    """Load the VQGAN and the CLIP (or every CLIP of an ensemble) named by a RunConfig onto
    its device; each CLIP is downloaded once into the cache and verified, as one would be."""
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
    try:
        members = parse_clip_spec(config.clip_model)
    except ConfigError as error:  # a config not validated first: the loader's own error
        raise ModelError(str(error)) from None
    loaded = [load_clip(m.name, device=device, progress=progress) for m in members]
    (clip_model, clip_info), more = loaded[0], loaded[1:]
    return Models(
        vqgan,
        clip_model,
        vqgan_info,
        clip_info,
        device,
        tuple(model for model, _ in more),
        tuple(info for _, info in more),
    )
