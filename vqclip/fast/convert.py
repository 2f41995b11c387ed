"""Swapping the fast modules into loaded models, once per (precision, levers)."""

from __future__ import annotations

import copy
import dataclasses
import weakref
from typing import TYPE_CHECKING

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
        if cache is not None and key in cache:
            cache[key].vqgan.checkpointing = checkpointing
            return cache[key]
    decoder = FastDecoder(
        models.vqgan.decoder, dtype, inplace=inplace, checkpointing=checkpointing, levers=levers
    )
    visual = models.clip.visual
    if hasattr(visual, "transformer") and hasattr(visual, "proj"):
        fast_visual: nn.Module = FastVisionTransformer(
            visual, dtype, inplace=inplace, levers=levers
        )
    else:
        fast_visual = AutocastVisual(visual, dtype)
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
