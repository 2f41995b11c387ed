"""Tiny random-weight models built from the real taming and CLIP classes, in the real file
formats, for tests and offline trials (``vqclip make-tiny-models DIR``)."""

from __future__ import annotations

import contextlib
import copy
import io
import os
import sys
import threading
import types
import warnings
from collections import OrderedDict
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import nn

from vqclip.clip_model import import_clip
from vqclip.state import atomic_write
from vqclip.vqgan import VQGAN

__all__ = ["make_tiny_clip", "make_tiny_models"]


_TINY_SEED = 0
_TINY_DDCONFIG: dict[str, Any] = {
    "double_z": False,
    "z_channels": 32,
    "resolution": 64,
    "in_channels": 3,
    "out_ch": 3,
    "ch": 32,
    "ch_mult": [1, 2, 2],
    "num_res_blocks": 1,
    "attn_resolutions": [16],
    "dropout": 0.0,
}
_TINY_CLIP: dict[str, Any] = {
    "embed_dim": 64,
    "image_resolution": 32,
    "vision_layers": 2,
    # CLIP makes width // 64 heads in the vision tower, and build_model infers the text
    # tower's the same way (anything else changes on reload). Several heads in each, and a
    # different number per tower, so a lean module that mixes heads up (merging them without
    # transposing, reading another tower's count) computes something else: with one head
    # such errors vanish.
    "vision_width": 192,  # 3 heads
    "vision_patch_size": 16,
    "context_length": 77,
    "vocab_size": 49408,
    "transformer_width": 128,
    "transformer_heads": 128 // 64,  # 2 heads
    "transformer_layers": 2,
}


def _tiny_vqgan_yaml() -> dict[str, Any]:
    """A taming-style config for the tiny VQGAN (f = 4), lossconfig included but never built."""
    return {
        "model": {
            "base_learning_rate": 4.5e-06,
            "target": "taming.models.vqgan.VQModel",
            "params": {
                "embed_dim": 32,
                "n_embed": 256,
                "ddconfig": copy.deepcopy(_TINY_DDCONFIG),
                "lossconfig": {
                    "target": "taming.modules.losses.vqperceptual.VQLPIPSWithDiscriminator",
                    "params": {
                        "disc_conditional": False,
                        "disc_in_channels": 3,
                        "disc_start": 250001,
                        "disc_weight": 0.8,
                        "codebook_weight": 1.0,
                    },
                },
            },
        }
    }


def _tiny_vqgan() -> VQGAN:
    """The tiny VQGAN that make_tiny_models saves: seeded, with a wide codebook."""
    params = _tiny_vqgan_yaml()["model"]["params"]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(_TINY_SEED)
        model = VQGAN(params["ddconfig"], params["embed_dim"], params["n_embed"])
    generator = torch.Generator(device="cpu").manual_seed(_TINY_SEED)
    with torch.no_grad():
        # taming initialises codes within ±1/n_embed, so all codes decode alike; spread them
        # so that choosing different codes changes the picture (and losses move in tests).
        model.codebook.uniform_(-1.0, 1.0, generator=generator)
    return model.eval().requires_grad_(False)


def _tiny_clip(resolution: int = 32) -> nn.Module:
    """The tiny CLIP that make_tiny_models saves (32 px; make_tiny_clip's at another input
    resolution), fp32 with every weight fp16-representable."""
    clip = import_clip()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(_TINY_SEED)
        model = clip.model.CLIP(**{**_TINY_CLIP, "image_resolution": resolution})
    with torch.no_grad():
        for tensor in model.parameters():
            tensor.copy_(tensor.half().float())  # what loading from the fp16 file gives back
    return model.eval().requires_grad_(False)


@contextlib.contextmanager
def _lightning_class_for_pickling() -> Iterator[type]:
    """Yield a class that pickles as pytorch_lightning...ModelCheckpoint, Lightning or not.

    The class is registered in sys.modules only while this context is open (pickle looks
    classes up by module name to write them); everything is restored afterwards.
    """
    names = (
        "pytorch_lightning",
        "pytorch_lightning.callbacks",
        "pytorch_lightning.callbacks.model_checkpoint",
    )
    saved = {name: sys.modules.get(name) for name in names}
    leaf = types.ModuleType(names[-1])
    cls = type("ModelCheckpoint", (), {"__module__": names[-1], "__qualname__": "ModelCheckpoint"})
    leaf.ModelCheckpoint = cls  # type: ignore[attr-defined]
    try:
        for name in names[:-1]:
            sys.modules.setdefault(name, types.ModuleType(name))
        sys.modules[names[-1]] = leaf
        yield cls
    finally:
        for name, module in saved.items():
            if module is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = module


def _lightning_checkpoint_bytes(state_dict: Mapping[str, torch.Tensor]) -> bytes:
    """A checkpoint laid out like a real taming/Lightning ``last.ckpt``, as bytes."""
    state = OrderedDict(state_dict)
    # Real checkpoints carry the loss network too; the loader must drop these.
    state["loss.logvar"] = torch.zeros((), device="cpu")
    state["loss.discriminator.main.0.weight"] = torch.zeros(8, 3, 4, 4, device="cpu")
    with _lightning_class_for_pickling() as model_checkpoint:
        checkpoint = {
            "epoch": 3,
            "global_step": 1234,
            "pytorch-lightning_version": "1.0.8",
            "callbacks": {
                model_checkpoint: {
                    "monitor": "val/rec_loss",
                    "best_model_score": torch.tensor(0.25, device="cpu"),
                    "best_model_path": "logs/checkpoints/last.ckpt",
                    "current_score": None,
                    "dirpath": "logs/checkpoints",
                }
            },
            "optimizer_states": [
                {
                    "state": {},
                    "param_groups": [
                        {
                            "lr": 4.5e-06,
                            "betas": (0.5, 0.9),
                            "eps": 1e-08,
                            "weight_decay": 0,
                            "amsgrad": False,
                            "params": list(range(len(state_dict))),
                        }
                    ],
                }
            ],
            "lr_schedulers": [],
            "state_dict": state,
        }
        buffer = io.BytesIO()  # a buffer, not a path: the archive name must not vary
        torch.save(checkpoint, buffer)
    return buffer.getvalue()


_TINY_CLIP_ARCHIVE: dict[int, bytes] = {}  # resolution -> archive, built once per process


def _tiny_clip_archive(resolution: int = 32) -> bytes:
    """The tiny CLIP as a TorchScript archive in fp16, the format of OpenAI's released files.

    The archive's debug records hold the Python stack of the trace, so the trace runs in a
    fresh thread (the same stack whoever calls); TorchScript also numbers the class names it
    generates per process, so the archive is built once per process and reused.
    """
    if resolution not in _TINY_CLIP_ARCHIVE:
        model = _tiny_clip(resolution)
        result: list[bytes | BaseException] = []

        def trace() -> None:
            image = torch.zeros(1, 3, resolution, resolution, device="cpu")  # [B, 3, S, S]
            tokens = torch.zeros(1, 77, dtype=torch.long, device="cpu")  # [B, context]
            tokens[0, :2] = torch.tensor([49406, 49407], device="cpu")  # start and end of text
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")  # tracer and TorchScript deprecation notes
                    traced = torch.jit.trace(model, (image, tokens), check_trace=False)
                    traced = traced.half()  # released CLIP weights are fp16
                    buffer = io.BytesIO()  # not a path: the archive name must not vary
                    torch.jit.save(traced, buffer)
                result.append(buffer.getvalue())
            except BaseException as exc:
                result.append(exc)

        worker = threading.Thread(target=trace, name="vqclip-tiny-clip")
        worker.start()
        worker.join()
        if isinstance(result[0], BaseException):
            raise result[0]
        _TINY_CLIP_ARCHIVE[resolution] = result[0]
    return _TINY_CLIP_ARCHIVE[resolution]


def make_tiny_models(directory: str | os.PathLike) -> dict[str, Path]:
    """Write tiny random-weight models in the real on-disk formats, for tests and offline trials.

    - ``vqgan.yaml``: a taming config (VQModel, embed_dim 32, n_embed 256, ch 32,
      ch_mult [1, 2, 2] so f = 4) with a lossconfig that is never built;
    - ``vqgan.ckpt``: a Lightning-style checkpoint (epoch, global_step, optimizer_states,
      ``callbacks`` keyed by the ModelCheckpoint class, ``state_dict`` with ``loss.*``);
    - ``clip.pt``: a tiny ViT CLIP (32 px input; 3 heads in the vision tower, 2 in the
      text tower) as a TorchScript archive with fp16 weights, like OpenAI's files, for
      ``clip.load(path, jit=False)``.

    Same seed, same bytes. The weights are noise: the pictures they make are noise too.
    """
    folder = Path(directory)
    folder.mkdir(parents=True, exist_ok=True)
    paths = {
        "vqgan_config": folder / "vqgan.yaml",
        "vqgan_checkpoint": folder / "vqgan.ckpt",
        "clip": folder / "clip.pt",
    }
    text = "# Tiny random VQGAN written by vqclip.make_tiny_models: noise, not pictures.\n"
    atomic_write(paths["vqgan_config"], text + yaml.safe_dump(_tiny_vqgan_yaml(), sort_keys=False))
    atomic_write(paths["vqgan_checkpoint"], _lightning_checkpoint_bytes(_tiny_vqgan().state_dict()))
    atomic_write(paths["clip"], _tiny_clip_archive())
    return {role: path.resolve() for role, path in paths.items()}


def make_tiny_clip(directory: str | os.PathLike, resolution: int = 48) -> Path:
    """Write a second tiny CLIP, ``clip{resolution}.pt``, like make_tiny_models' clip.pt
    but with another input resolution (48 px by default; a multiple of its 16 px patches),
    so a CLIP ensemble of the two sees cutouts of two sizes. Same resolution, same bytes."""
    if resolution % _TINY_CLIP["vision_patch_size"]:
        raise ValueError(f"resolution {resolution} is not a multiple of the 16 px patches")
    path = Path(directory) / f"clip{resolution}.pt"
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, _tiny_clip_archive(resolution))
    return path.resolve()
