"""Shared fixtures: one torch thread, a private model cache, tiny real-architecture models."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

# Two cores: oversubscribed intra-op threads make torch many times slower.
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def model_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch):
    """Point VQCLIP_CACHE at a fresh temp dir for every test: no test touches ~/.cache."""
    path = tmp_path_factory.mktemp("cache")
    monkeypatch.setenv("VQCLIP_CACHE", str(path))
    return path


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """make_tiny_models' files in a session temp dir: {"vqgan_config", "vqgan_checkpoint",
    "clip"} -> Path (vqgan.yaml, vqgan.ckpt, clip.pt in one directory)."""
    from vqclip.models import make_tiny_models

    return make_tiny_models(tmp_path_factory.mktemp("tiny_models"))


@pytest.fixture(scope="session")
def tiny_models(tiny_model_dir: dict[str, Path]):
    """The tiny models loaded on CPU through the public path (RunConfig -> load_models)."""
    from vqclip.config import RunConfig
    from vqclip.models import load_models

    config = RunConfig(
        vqgan_config=str(tiny_model_dir["vqgan_config"]),
        vqgan_checkpoint=str(tiny_model_dir["vqgan_checkpoint"]),
        clip_model=str(tiny_model_dir["clip"]),
        device="cpu",
    )
    return load_models(config, progress=False)
