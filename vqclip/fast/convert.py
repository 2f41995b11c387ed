"""Swapping the fast modules into loaded models, once per (precision, levers)."""

from __future__ import annotations

import copy
import dataclasses
import weakref
from typing import TYPE_CHECKING

import torch
from torch import nn

from vqclip.device import DTYPES, fast_modules_for
from vqclip.fast.decoder import FastDecoder
from vqclip.fast.kernels import Levers
from vqclip.fast.vision import AutocastVisual, FastVisionTransformer

if TYPE_CHECKING:
    from vqclip.models import Models

__all__ = ["optimize_models", "prepared_precision"]


_PREPARED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # vqgan -> {key: Models}


def prepared_precision(models: Models) -> str | None:
    """The precision ``optimize_models`` gave these models the lean modules in, or None when
    they run as loaded."""
    decoder = models.vqgan.decoder
    if isinstance(decoder, FastDecoder):
        return next(name for name, dtype in DTYPES.items() if dtype == decoder.dtype)
    return None


def optimize_models(
    models: Models,
    precision: str,
    *,
    fast: bool | None = None,
    inplace: bool = False,
    checkpointing: bool = False,
    levers: Levers = Levers(),
) -> Models:
    """Models ready to run at ``precision``, with the lean modules or as loaded.

    ``fast`` (default: what ``fast_modules_for`` chose for the device class and precision)
    swaps in the lean decoder and vision tower with frozen weights in the precision's dtype;
    otherwise the models run as loaded and are returned unchanged. ``inplace`` converts the
    given models (their original decoder and vision weights are freed: use it when nothing
    else needs them); otherwise the result is built beside them and cached, so the next run
    with the same models and options reuses it. Either way ``vqgan.checkpointing`` is set.
    """
    if fast is None:
        fast = fast_modules_for(models.device.type, precision)
    done = prepared_precision(models)
    if done is not None:  # converted in place already
        if not fast or done != precision:
            raise ValueError(
                f"These models were converted to {done} in place, so their original weights "
                f"are gone. Load the models again to run in {precision}."
            )
        models.vqgan.checkpointing = checkpointing
        return models
    if not fast:
        models.vqgan.checkpointing = checkpointing
        return models
    dtype = DTYPES[precision]
    key = (precision, levers)
    if not inplace:
        cache = _PREPARED.get(models.vqgan)
        # The same VQGAN may be paired with other CLIPs (an ensemble): those must match too.
        if cache is not None and key in cache and _same(cache[key][0], models.clips):
            cache[key][1].vqgan.checkpointing = checkpointing
            return cache[key][1]
    decoder = FastDecoder(
        models.vqgan.decoder, dtype, inplace=inplace, checkpointing=checkpointing, levers=levers
    )
    # Each CLIP of an ensemble gets its own lean vision tower (each at its own input size).
    visuals = [_fast_visual(clip.visual, dtype, inplace, levers) for clip in models.clips]
    if inplace:
        models.vqgan.decoder = decoder
        for clip, fast_visual in zip(models.clips, visuals):
            clip.visual = fast_visual
        return models
    vqgan, clips = _shallow_copy(models.vqgan), [_shallow_copy(clip) for clip in models.clips]
    vqgan.decoder = decoder
    for clip, fast_visual in zip(clips, visuals):
        clip.visual = fast_visual
    result = dataclasses.replace(models, vqgan=vqgan, clip=clips[0], more_clips=tuple(clips[1:]))
    cache = _PREPARED.setdefault(models.vqgan, {})
    cache.clear()  # one prepared copy at a time: its weights are large
    cache[key] = (models.clips, result)
    return result


def _same(these: tuple[nn.Module, ...], those: tuple[nn.Module, ...]) -> bool:
    return len(these) == len(those) and all(a is b for a, b in zip(these, those))


def _fast_visual(visual: nn.Module, dtype: torch.dtype, inplace: bool, levers: Levers) -> nn.Module:
    """CLIP's vision tower as a lean module: the ViT rebuilt, other towers autocast."""
    if hasattr(visual, "transformer") and hasattr(visual, "proj"):
        return FastVisionTransformer(visual, dtype, inplace=inplace, levers=levers)
    return AutocastVisual(visual, dtype)


def _shallow_copy(module: nn.Module) -> nn.Module:
    """A copy of module sharing its sub-modules, parameters and buffers (not their tables)."""
    clone = copy.copy(module)
    clone._modules = dict(module._modules)
    clone._parameters = dict(module._parameters)
    clone._buffers = dict(module._buffers)
    return clone
