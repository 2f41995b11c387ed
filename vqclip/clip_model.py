"""CLIP, loaded with clip-anytorch by name (downloaded once, verified) or from a local file."""

from __future__ import annotations

import re
import types
import warnings
from pathlib import Path

import torch
from torch import nn

from vqclip import registry
from vqclip.config import DEFAULT_CLIP
from vqclip.device import resolve_device
from vqclip.hub import (
    OFFLINE_HELP,
    DownloadFailed,
    ModelError,
    ModelInfo,
    cache_dir,
    download,
    recorded_sha,
    sha256_file,
    verify_cached,
)

__all__ = ["import_clip", "load_clip"]


def import_clip() -> types.ModuleType:
    with warnings.catch_warnings():
        # clip-anytorch imports pkg_resources, which warns about its own deprecation.
        warnings.filterwarnings("ignore", message="pkg_resources is deprecated")
        import clip

    return clip


def _sha_in_url(url: str) -> str | None:
    """The sha256 that OpenAI's CLIP URLs carry as their folder name, if any."""
    folder = url.rsplit("/", 2)[-2] if url.count("/") >= 2 else ""
    return folder.lower() if re.fullmatch(r"[0-9a-fA-F]{64}", folder) else None


def load_clip(
    name_or_path: str = DEFAULT_CLIP,
    *,
    device: str | torch.device = "cpu",
    progress: bool = True,
) -> tuple[nn.Module, ModelInfo]:
    """Load CLIP by name (downloaded into the cache and verified) or from a local file.

    Returns the model in eval mode, frozen, on ``device``: fp32 on CPU, the released fp16
    weights on CUDA.
    """
    device = resolve_device(device)
    url = registry.CLIP_MODELS.get(name_or_path)
    if url is not None:
        expected = _sha_in_url(url)
        path = cache_dir() / "clip" / url.rsplit("/", 1)[-1]
        if path.exists():
            digest = verify_cached(path, expected)
        else:
            try:
                what = f"CLIP {name_or_path} weights"
                download([url], path, what=what, progress=progress, sha256=expected)
            except DownloadFailed as exc:
                tried = "; ".join(f"{u} ({reason})" for u, reason in exc.failures)
                raise ModelError(
                    f"Could not get the CLIP model {name_or_path!r}: no download address "
                    f"worked (offline, or the host is down). Tried {tried}. The file belongs "
                    f"at {path}. To fix it: download it elsewhere from that address and put "
                    "it at exactly that path (if you already have it, e.g. in ~/.cache/clip, "
                    "copy it there; its sha256 must match the folder name in the URL); or "
                    f"pass a local file with --clip FILE.pt; or, {OFFLINE_HELP}."
                ) from None
            digest = recorded_sha(path)  # just checked against the URL while downloading
        label = name_or_path
    else:
        path = Path(name_or_path).expanduser()
        if not path.is_file():
            raise ModelError(
                f"CLIP model {name_or_path!r} is neither a known name nor an existing file. "
                f"Known names: {', '.join(registry.CLIP_MODELS)}."
            )
        path = path.resolve()
        digest = sha256_file(path)
        label = path.name
    model = _clip_from_file(path, device)
    return model, ModelInfo(label, {"weights": str(path)}, {"weights": digest})


def _clip_from_file(path: Path, device: torch.device) -> nn.Module:
    clip = import_clip()
    try:
        with warnings.catch_warnings(), torch.random.fork_rng(devices=[]):
            # Official files are TorchScript archives; torch 2.9+ flags TorchScript as
            # deprecated, which says nothing useful here (only the weights are read).
            warnings.filterwarnings("ignore", message=r".*torch\.jit", category=FutureWarning)
            model, _ = clip.load(str(path), device=str(device), jit=False)
    except Exception as exc:
        raise ModelError(
            f"Could not load CLIP weights from {path} ({type(exc).__name__}: {exc}). It may "
            "be incomplete or not a CLIP model file; download it again or check the path."
        ) from None
    if device.type != "cuda":
        model = model.float()  # released weights are fp16, which CPUs must not compute in
    return model.eval().requires_grad_(False)
