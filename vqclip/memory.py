"""Memory: what the device has free, what a run will need, and what to change when it will not fit."""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import os
import sys
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import torch

from vqclip.device import fast_modules_for, native_precisions
from vqclip.fast import prepared_precision

if TYPE_CHECKING:
    from vqclip.models import Models

__all__ = [
    "DoesNotFit",
    "MemoryEstimate",
    "available_memory",
    "check_fits",
    "estimate_peak_memory",
    "is_out_of_memory",
    "micro_batches",
    "out_of_memory_advice",
    "tune_cpu_allocator",
]

GIB = 2**30


class DoesNotFit(MemoryError):
    """A run will not fit (or has run out of) memory; the message says which settings would."""


_ALLOCATOR: dict[str, bool] = {}


def tune_cpu_allocator() -> bool:
    """Let the C allocator keep large freed blocks for reuse (Linux glibc; once per process).

    By default glibc hands every block over 32 MiB (an fp32 activation of a 256x256 image
    with 128 channels is exactly that) straight back to the kernel, so each step faults in
    its memory again: ~1.7 GiB of page faults per fp32 decoder pass, as long as the maths.
    Raising the mmap and trim thresholds keeps that memory in the process between steps.
    The cost: freed memory is returned to the system later (or at exit). Set the
    environment variable VQCLIP_MALLOC_TUNING=0 to leave the allocator alone.
    """
    if "done" in _ALLOCATOR:
        return _ALLOCATOR["done"]
    ok = False
    if sys.platform.startswith("linux") and os.environ.get("VQCLIP_MALLOC_TUNING", "1") != "0":
        with contextlib.suppress(OSError, AttributeError):
            mallopt = ctypes.CDLL("libc.so.6").mallopt  # glibc; musl has none
            mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
            m_trim_threshold, m_mmap_threshold = -1, -3
            ok = mallopt(m_mmap_threshold, 1 << 30) == 1
            ok = mallopt(m_trim_threshold, (1 << 31) - 1) == 1 and ok
    _ALLOCATOR["done"] = ok
    return ok


@dataclasses.dataclass(frozen=True)
class MemoryEstimate:
    """A run's expected peak memory in bytes, by part."""

    runtime: int  # torch and its libraries (RSS before any model), fixed per device
    weights: int  # model weights as they will sit during the run
    decoder: int  # decoder activations kept for the backward pass, and its transients
    clip: int  # CLIP activations of one micro-batch of cutouts
    other: int  # cutouts, images, codebook distances, allocator slack

    @property
    def total(self) -> int:
        return self.runtime + self.weights + self.decoder + self.clip + self.other

    @property
    def activations(self) -> int:
        return self.decoder + self.clip + self.other


def _bytes(precision: str) -> int:
    return 2 if precision in ("bf16", "fp16") else 4


def _weights_bytes(models: Models, precision: str, fast: bool) -> int:
    """Bytes of the weights a run keeps: as loaded, plus the lean copies if it makes them."""
    total = 0
    seen: set[int] = set()
    for module in (models.vqgan, *models.clips):
        for t in list(module.parameters()) + list(module.buffers()):
            if t.data_ptr() not in seen:
                seen.add(t.data_ptr())
                total += t.numel() * t.element_size()
    if fast and prepared_precision(models) is None:
        copies = sum(p.numel() for p in models.vqgan.decoder.parameters())
        copies += sum(p.numel() for clip in models.clips for p in clip.visual.parameters())
        total += copies * _bytes(precision)
    return total


def _decoder_bytes(
    models: Models, size: tuple[int, int], precision: str, checkpointing: bool, fast: bool
) -> int:
    """Memory the decoder holds at its peak for an image size (width, height)."""
    decoder = models.vqgan.decoder
    base = decoder.up[0].block[-1].out_channels
    channels = [level.block[-1].out_channels for level in decoder.up]
    blocks = decoder.num_res_blocks + 1
    pixels = size[0] * size[1]
    # Tensors kept per block output: the plain path ~10 (norm inputs and outputs, SiLU,
    # convolution inputs, residuals), the lean modules 2 (each norm's input), checkpointing 1
    # (each block's input; either decoder recomputes the rest one block at a time).
    per_block = 1 if checkpointing else (2 if fast else 10)
    kept = sum(blocks * per_block * (pixels >> (2 * i)) * ch for i, ch in enumerate(channels))
    # The backward pass holds a few full-resolution tensors at once besides.
    transient = 6 * pixels * base
    return (kept + transient) * _bytes(precision)


def _clip_bytes(models: Models, batch: int, precision: str, fast: bool) -> int:
    """Activations CLIP's vision tower keeps per micro-batch of cutouts (fwd + bwd); for an
    ensemble the largest CLIP's: each runs its micro-batch's backward pass before the next."""
    return max(_vision_bytes(clip.visual, batch, precision, fast) for clip in models.clips)


def _vision_bytes(visual: torch.nn.Module, batch: int, precision: str, fast: bool) -> int:
    """One vision tower's activations per micro-batch, at its own input size."""
    size = int(visual.input_resolution)
    blocks = getattr(visual, "blocks", None) or getattr(
        getattr(visual, "transformer", None), "resblocks", []
    )
    layers = max(1, len(blocks))
    conv1 = visual.conv1
    width, patch = conv1.out_channels, conv1.kernel_size[0]
    tokens = (size // patch) ** 2 + 1
    # Per layer and token: ~10 width-sized tensors on the fast path (measured: 9 MB per
    # ViT-B/32 cutout in bf16), ~21 through CLIP's own modules (measured: 42 MB per cutout in
    # fp32), plus the attention matrix of each head.
    heads = max(1, width // 64)
    kept = 10 if fast else 21
    per_layer = tokens * width * kept + heads * tokens * tokens
    return batch * layers * per_layer * _bytes(precision)


def estimate_peak_memory(
    size: tuple[int, int] | list[int],
    cutn: int,
    precision: str,
    device: torch.device | str,
    models: Models,
    clip_batch: int | None = None,
    checkpointing: bool = False,
    fast: bool | None = None,
    candidates: int = 1,
) -> MemoryEstimate:
    """Expected peak memory of a run (``.total`` in bytes), from the models' shapes.

    ``fast``: whether the run uses the lean modules (default: what the device class gets
    at this precision, ``fast_modules_for``). ``candidates``: how many runs of this shape
    are optimised together as one batch (a sweep's); CLIP's micro-batch then runs over all
    their cutouts (up to ``cutn * candidates`` at once).

    It counts torch's own footprint, the weights, what the decoder and one CLIP micro-batch
    keep for the backward pass, and the cutouts. Calibrated on the CPU against measured
    peak RSS with the C allocator untuned (VQGAN f16_16384 and ViT-B/32, 128-512 px, 8-64
    cutouts, fp32 and bf16; benchmarks/RESULTS.md). The tuned allocator keeps freed blocks
    (up to ~1.2 GiB more at 512x512), so the engine tunes it only when there is room.
    """
    device = torch.device(device)
    if fast is None:
        fast = fast_modules_for(device.type, precision)
    width, height = int(size[0]), int(size[1])
    cutn_all = cutn * candidates
    batch = max(1, min(cutn_all, clip_batch or cutn_all))
    runtime = 700 * 2**20 if device.type == "cpu" else 0  # GPU: the context is not counted
    weights = _weights_bytes(models, precision, fast)
    decoder = candidates * _decoder_bytes(models, (width, height), precision, checkpointing, fast)
    clip_part = _clip_bytes(models, batch, precision, fast)
    # One set of cutouts per distinct CLIP input size (an ensemble's), + grads, aug
    cutouts = sum(cutn_all * 3 * s**2 * 4 * 3 for s in set(models.clip_sizes))
    cells = candidates * width * height // models.vqgan.factor**2  # latent cells
    codes = cells * models.vqgan.n_embed * 4 * 3  # distances to every code
    slack = 200 * 2**20 if device.type == "cpu" else 64 * 2**20
    return MemoryEstimate(runtime, weights, decoder, clip_part, cutouts + codes + slack)


def available_memory(device: torch.device | str) -> int | None:
    """Bytes a run may still take on the device (free GPU memory, or available RAM), or None."""
    device = torch.device(device)
    if device.type == "cuda":
        try:
            free, _ = torch.cuda.mem_get_info(device)
        except Exception:
            return None
        cached = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
        return int(free + cached)
    try:
        with open("/proc/meminfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    with contextlib.suppress(ValueError, OSError, AttributeError):
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    return None


def check_fits(
    size: tuple[int, int] | list[int],
    cutn: int,
    precision: str,
    device: torch.device | str,
    models: Models,
    clip_batch: int | None = None,
    checkpointing: bool = False,
    available: int | None = None,
    fast: bool | None = None,
    candidates: int = 1,
) -> MemoryEstimate:
    """Raise DoesNotFit, saying what would fit, when a run will not fit in memory.

    The models are already loaded, so only what the run adds (activations, and fast weight
    copies when the models were not converted in place) is compared with ``available``
    (default: what the device has free now). Returns the estimate when it fits.
    """
    device = torch.device(device)
    if fast is None:
        fast = fast_modules_for(device.type, precision)
    estimate = estimate_peak_memory(
        size, cutn, precision, device, models, clip_batch, checkpointing, fast, candidates
    )
    free = available if available is not None else available_memory(device)
    if free is None:
        return estimate
    loaded = estimate.runtime + _weights_bytes(models, "fp32", False)  # resident already
    need = estimate.total - loaded
    if need <= free:
        return estimate
    if candidates > 1:  # the caller tries fewer candidates at once
        raise DoesNotFit(f"{candidates} candidates at once need {need / GIB:.1f} GiB more.")
    options = _fitting_options(
        size, cutn, precision, device, models, clip_batch, checkpointing, fast, free + loaded
    )
    where = "GPU memory" if device.type == "cuda" else "RAM"
    raise DoesNotFit(
        f"A {size[0]}x{size[1]} run with {cutn} cutouts in {precision} needs about "
        f"{need / GIB:.1f} GiB more {where} (peak {estimate.total / GIB:.1f} GiB with the models), "
        f"but only {free / GIB:.1f} GiB is free. "
        + (
            "Any of these would fit: " + "; ".join(options) + "."
            if options
            else "Even the smallest settings would not fit: free memory, or use another device."
        )
    )


def _fitting_options(
    size, cutn, precision, device, models, clip_batch, checkpointing, fast, budget
) -> list[str]:
    """Human-readable settings changes whose estimated peak fits in ``budget`` bytes; a
    lower precision only when the device computes it natively."""

    def fits(**change: Any) -> bool:
        args = {
            "size": size,
            "cutn": cutn,
            "precision": precision,
            "device": device,
            "models": models,
            "clip_batch": clip_batch,
            "checkpointing": checkpointing,
            "fast": fast,
            **change,
        }
        return estimate_peak_memory(**args).total <= budget

    options = []
    for lower in _lower_precisions(device, precision):
        if fits(precision=lower, fast=fast_modules_for(device.type, lower)):
            options.append(f"--precision {lower}")
            break
    for batch in (16, 8, 4, 2, 1):
        if batch < (clip_batch or cutn) and fits(clip_batch=batch):
            options.append(f"--clip-batch {batch} (CLIP sees the cutouts in micro-batches)")
            break
    if not checkpointing and fits(checkpointing=True):
        options.append("--checkpointing on (recompute decoder activations)")
    for n in (64, 32, 16, 8, 4):
        if n < cutn and fits(cutn=n):
            options.append(f"--cutn {n}")
            break
    factor = models.vqgan.factor
    side = max(size)
    for scale in (0.75, 0.5, 0.25):
        smaller = [max(factor, int(v * scale) // factor * factor) for v in size]
        if max(smaller) < side and fits(size=smaller):
            options.append(f"--size {smaller[0]} {smaller[1]}")
            break
    return options


def _lower_precisions(device: torch.device, precision: str) -> list[str]:
    """Precisions using fewer bytes than ``precision`` that the device computes natively,
    preferred first (bf16 before fp16: it needs no loss scaling)."""
    natives = native_precisions(device)
    return [p for p in ("bf16", "fp16") if p in natives and _bytes(p) < _bytes(precision)]


def out_of_memory_advice(
    config: Any, precision: str, iteration: int, device: torch.device | str, factor: int
) -> str:
    """The message for a step that ran out of memory even at the leanest settings; it names
    a lower precision only when ``device`` has one natively (never bf16 on a T4 or an AVX2
    CPU, never fp16 on a CPU)."""
    width, height = config.size
    smaller = [max(factor, v // 2 // factor * factor) for v in (width, height)]
    lower = _lower_precisions(torch.device(device), precision)
    hint = f"use --precision {lower[0]} (this device computes it natively), " if lower else ""
    return (
        f"Out of memory at iteration {iteration} of a {width}x{height} run in {precision}, even "
        "with CLIP seeing one cutout at a time and the decoder recomputing its activations. "
        f"Memory grows with the pixel count: lower --size (e.g. {smaller[0]} {smaller[1]}), "
        f"{hint}lower --cutn, or close other programs using this device's memory."
    )


def is_out_of_memory(error: BaseException) -> bool:
    """True for an allocation failure torch reports (CUDA or CPU) that a retry may avoid."""
    if isinstance(error, torch.OutOfMemoryError):
        return True
    return isinstance(error, RuntimeError) and "out of memory" in str(error).lower()


def micro_batches(n: int, batch: int) -> Iterator[tuple[int, int]]:
    """(start, stop) ranges splitting range(n) into pieces of at most ``batch``."""
    batch = max(1, batch)
    for start in range(0, n, batch):
        yield start, min(n, start + batch)
