"""Models loaded once per kernel, and the tiny offline models that tests and trials use."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from pathlib import Path

from vqclip.config import RunConfig
from vqclip.ensemble import clip_label
from vqclip.models import Models, load_models, make_tiny_models

TINY_ENV = "VQCLIP_TINY_MODELS"
TINY_BANNER = "tiny random models: noise, not pictures"
TINY_SIZE = [64, 64]  # the tiny VQGAN has f = 4: 256 px would be 16x slower and no prettier

MODEL_FIELDS = ("vqgan", "vqgan_config", "vqgan_checkpoint", "clip_model", "device")
_models: dict[tuple, Models] = {}
_models_lock = threading.Lock()


def model_key(config: RunConfig) -> tuple:
    key = {name: getattr(config, name) for name in MODEL_FIELDS}
    if config.vqgan_config is not None:  # local files override the registry name
        key["vqgan"] = None
    return tuple(key.values())


def model_label(config: RunConfig) -> str:
    vqgan = Path(config.vqgan_config).name if config.vqgan_config else config.vqgan
    return f"{vqgan} + {clip_label(config.clip_model)} ({config.device})"


def is_loaded(config: RunConfig) -> bool:
    return model_key(config) in _models


def cached_models(
    config: RunConfig, say: Callable[[str], None] = lambda _: None, progress: bool = False
) -> Models:
    """The models ``config`` names, loaded once per kernel and reused by every later run.

    Only one pair is kept: a second pair of real models may not fit beside the first on a GPU.
    ``progress`` shows download bars (in a notebook, as widgets where the call's output goes).
    """
    key = model_key(config)
    with _models_lock:
        if key not in _models:
            _models.clear()
            say(f"loading models {model_label(config)}… (the first use downloads them)")
            _models[key] = load_models(config, progress=progress)
        return _models[key]


def remember_models(config: RunConfig, models: Models) -> None:
    with _models_lock:
        _models.clear()
        _models[model_key(config)] = models


def tiny_model_settings() -> dict[str, str]:
    """Model settings for the tiny models in $VQCLIP_TINY_MODELS (made if missing), else {}."""
    folder = os.environ.get(TINY_ENV)
    if not folder:
        return {}
    names = {"vqgan_config": "vqgan.yaml", "vqgan_checkpoint": "vqgan.ckpt", "clip": "clip.pt"}
    paths = {role: Path(folder) / name for role, name in names.items()}
    if not all(path.is_file() for path in paths.values()):
        paths = make_tiny_models(folder)
    return {
        "vqgan_config": str(paths["vqgan_config"]),
        "vqgan_checkpoint": str(paths["vqgan_checkpoint"]),
        "clip_model": str(paths["clip"]),
    }
