"""Which device a run uses and which precision that device computes fast.

The precision ``auto`` means is a pure function of what the hardware probes say
(:func:`choose_precision`), so it can be tested for every device class on any machine.
"""

from __future__ import annotations

import contextlib

import torch

from vqclip.hub import ModelError

__all__ = [
    "DTYPES",
    "auto_precision",
    "choose_precision",
    "cpu_supports_bf16",
    "cuda_capability",
    "fast_modules_for",
    "native_precisions",
    "native_precisions_for",
    "resolve_device",
]

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_device(name: str | torch.device = "auto") -> torch.device:
    """'auto' -> cuda when a GPU is visible, else cpu; 'cuda' without a GPU -> ModelError."""
    text = str(name).strip().lower()
    if text == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(text)
    except (RuntimeError, ValueError):
        raise ModelError(
            f"Unknown device {str(name)!r}. Use auto, cpu, cuda or cuda:N (N is the GPU number)."
        ) from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            why = (
                "this PyTorch is a CPU-only build"
                if torch.version.cuda is None
                else "no CUDA GPU or driver is visible"
            )
            raise ModelError(
                f"Device {str(name)!r} was asked for, but PyTorch cannot use a GPU here ({why}). "
                "Use --device cpu (slow) or --device auto; on Colab choose Runtime > Change "
                "runtime type > GPU; on your own machine install a CUDA build of torch."
            )
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise ModelError(
                f"Device {str(name)!r} does not exist: this machine has {count} GPU(s), "
                f"numbered 0 to {count - 1}. Use --device cuda or cuda:0."
            )
    return device


def cpu_supports_bf16() -> bool:
    """True when this CPU computes bf16 natively (AVX-512 BF16 or AMX), so bf16 is fast."""
    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    for name in probes:
        probe = getattr(torch.cpu, name, None)
        if probe is not None:
            with contextlib.suppress(Exception):
                if probe():
                    return True
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            flags = set(f.read().split())
    except OSError:
        return False
    return bool(flags & {"avx512_bf16", "amx_bf16"})


def cuda_capability(device: torch.device | str) -> tuple[int, int] | None:
    """A CUDA GPU's compute capability, e.g. (7, 5) for a T4; None when it cannot be read."""
    with contextlib.suppress(Exception):
        major, minor = torch.cuda.get_device_capability(torch.device(device))
        return int(major), int(minor)
    return None


def native_precisions_for(
    device_type: str, capability: tuple[int, int] | None, cpu_bf16: bool
) -> tuple[str, ...]:
    """The precisions a device class computes at full speed (not emulated), fastest last.

    CUDA: bf16 from compute capability 8.0 (Ampere); fp16 on tensor cores from 7.0 (V100,
    T4) and on the P100 (6.0), whose fp16 runs at twice its fp32 rate (other 6.x GPUs run
    fp16 at a small fraction of fp32). CPU: bf16 only with AVX-512 BF16 or AMX; fp16 is
    always emulated there. Anything else (mps, xpu, ...): fp32, until measured.
    """
    if device_type == "cuda" and capability is not None:
        if capability >= (8, 0):
            return ("fp32", "fp16", "bf16")
        if capability >= (7, 0) or capability == (6, 0):
            return ("fp32", "fp16")
    if device_type == "cpu" and cpu_bf16:
        return ("fp32", "bf16")
    return ("fp32",)


def choose_precision(
    device_type: str, capability: tuple[int, int] | None = None, cpu_bf16: bool = False
) -> str:
    """What ``auto`` means for a device class: bf16 where native (it needs no loss scaling),
    else fp16 where native (CUDA before Ampere, with dynamic loss scaling), else fp32."""
    natives = native_precisions_for(device_type, capability, cpu_bf16)
    return next(p for p in ("bf16", "fp16", "fp32") if p in natives)


def _probe(device: torch.device | str) -> tuple[str, tuple[int, int] | None, bool]:
    """(device type, CUDA capability or None, CPU has native bf16) for the pure functions."""
    device = torch.device(device)
    if device.type == "cuda":
        return "cuda", cuda_capability(device), False
    return device.type, None, device.type == "cpu" and cpu_supports_bf16()


def native_precisions(device: torch.device | str) -> tuple[str, ...]:
    """The precisions this device computes at full speed, from its hardware probes."""
    return native_precisions_for(*_probe(device))


def auto_precision(device: torch.device | str) -> str:
    """The precision ``auto`` resolves to on this device, from its hardware probes."""
    return choose_precision(*_probe(device))


def fast_modules_for(device_type: str, precision: str) -> bool:
    """Whether a run uses vqclip's lean modules (vqclip.fast) or the models as loaded.

    bf16 and fp16 always do: their weights are cast once instead of autocast re-casting
    them every step, with fp32 statistics in the norms. fp32 does on the CPU
    (``FAST_FP32_ON_CPU``); on CUDA fp32 keeps taming's and CLIP's modules until a GPU
    measurement says otherwise (auto never picks fp32 on a GPU with fp16 or bf16).
    """
    if precision in ("bf16", "fp16"):
        return True
    return device_type == "cpu" and FAST_FP32_ON_CPU


# fp32 on the CPU runs the lean modules: measured on 2 cores of an AMD EPYC with AVX2 only
# (benchmarks/RESULTS.md, a shared and busy machine), CLIP's vision tower is ~20 % faster
# lean and the decoder ~20 % slower (parts timed in interleaved rounds): ~7 % faster per
# iteration at 32 cutouts, and peak memory 3.1 GiB instead of 4.4 at 256x256.
FAST_FP32_ON_CPU = True
