"""How a run computes, resolved once: the Plan.

``prepare`` turns a config and models into a ``Plan``: the seed fixed, the size rounded to
the VQGAN's factor, the precision resolved for the device, and the CLIP micro-batch and
checkpointing chosen from the memory the device has (or taken from a recorded plan, so a
resume or reproduce computes as the original did). ``group_plans`` sorts plans of one
shape into batches the engine can optimise together. The engine follows a Plan; nothing
here runs a step.
"""

from __future__ import annotations

import secrets
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from vqclip import device as hardware
from vqclip import memory
from vqclip.config import ConfigError, RunConfig, parse_change, parse_prompt
from vqclip.ensemble import clip_weights
from vqclip.fast import optimize_models, prepared_precision
from vqclip.models import Models
from vqclip.prompts import open_rgb

CPU_CLIP_BATCH = 16  # the fast path's default CLIP micro-batch on the CPU

# A test hook: True lets fp16 run on the CPU through the very code a CUDA GPU runs (loss
# scaling included). Users get a clear refusal instead: a CPU only emulates fp16.
FP16_ON_CPU_FOR_TESTS = False


def resolve_precision(precision: str, device: torch.device) -> str:
    """auto -> bf16 where the device computes it natively (CPUs with AVX-512 BF16 or AMX,
    CUDA GPUs from Ampere on), fp16 on CUDA GPUs without bf16 (T4, V100, P100), else fp32;
    fp16 on the CPU is refused with a ConfigError, an emulated bf16 or fp16 warned about."""
    device = torch.device(device)
    if precision == "fp16" and device.type == "cpu" and not FP16_ON_CPU_FOR_TESTS:
        raise ConfigError(
            "precision fp16 was asked for on the CPU, which only emulates fp16: it would be "
            "hundreds of times slower than fp32 and less exact. On the CPU use --precision "
            "auto (fp32, or bf16 where the CPU has it natively) or fp32; fp16 is for CUDA GPUs "
            "without bf16, such as Colab's T4."
        )
    if precision == "auto":
        return hardware.auto_precision(device)
    if precision == "bf16" and device.type == "cpu" and not hardware.cpu_supports_bf16():
        warnings.warn(
            "This CPU has no native bf16 (AVX-512 BF16 or AMX), so bf16 is emulated and "
            "slower than fp32 here; --precision auto or fp32 is faster.",
            stacklevel=2,
        )
    elif device.type == "cuda" and precision not in hardware.native_precisions(device):
        warnings.warn(
            f"This GPU computes {precision} only by emulation or at a fraction of its fp32 "
            f"speed; --precision auto ({hardware.auto_precision(device)} here) is faster.",
            stacklevel=2,
        )
    return precision


@dataclass
class Plan:
    """How a run computes, fixed once by ``prepare`` and recorded as it ran.

    ``config`` is the exact recipe (validated, seed fixed, size rounded). ``clip_batch`` and
    ``checkpointing`` are what the run starts with; ``changes`` lists the iterations where
    an out-of-memory retry switched to leaner settings, so a replay makes the same switch at
    the same iteration (micro-batches change float rounding, so this keeps the bytes).
    """

    config: RunConfig
    models: Models  # prepared for ``precision``
    precision: str  # as resolved: fp32, bf16 or fp16
    clip_batch: int
    checkpointing: bool
    estimate: memory.MemoryEstimate
    changes: list[dict[str, Any]] = field(default_factory=list)  # {iteration, clip_batch, ...}
    notices: list[str] = field(default_factory=list)  # what prepare changed, for the user
    candidates: int = 1  # runs optimised together in one batch (a sweep's), this one among them

    @property
    def device(self) -> torch.device:
        return self.models.device

    @property
    def resize_dtype(self) -> torch.dtype | None:
        """The dtype the lean path crops cutouts in: the run's low precision, or None (fp32)."""
        return None if self.precision == "fp32" else hardware.DTYPES[self.precision]

    @property
    def fast(self) -> bool:
        """Whether the lean modules (vqclip.fast) run, rather than the models as loaded."""
        return prepared_precision(self.models) is not None

    def settings_at(self, iteration: int) -> tuple[int, bool]:
        """(clip_batch, checkpointing) in force at ``iteration``."""
        batch, ckpt = self.clip_batch, self.checkpointing
        for change in self.changes:
            if change["iteration"] <= iteration:
                batch, ckpt = change["clip_batch"], change["checkpointing"]
        return batch, ckpt

    def change(self, iteration: int, clip_batch: int, checkpointing: bool) -> None:
        """Record leaner settings from ``iteration`` on (replacing any recorded after it)."""
        kept = [c for c in self.changes if c["iteration"] < iteration]
        kept.append(
            {"iteration": iteration, "clip_batch": clip_batch, "checkpointing": checkpointing}
        )
        self.changes = kept

    def record(self) -> dict[str, Any]:
        """The plan as run.json and every PNG carry it."""
        record = {
            "device": self.device.type,
            "precision": self.precision,
            "clip_batch": self.clip_batch,
            "checkpointing": self.checkpointing,
            "modules": "lean" if self.fast else "plain",
            "changes": [dict(c) for c in self.changes],
        }
        if self.candidates > 1:  # a replay computes it alone: the same up to float rounding
            record["candidates"] = self.candidates
        return record


def prepare(
    config: RunConfig,
    models: Models,
    recorded: dict[str, Any] | None = None,
    *,
    checked: bool = False,
) -> Plan:
    """Resolve a config once into the Plan a run computes with.

    Validates (unless the caller has: ``checked``; a run's settings are checked once on
    the way to the loop), fixes the seed (a random one if none), rounds the size to the VQGAN's factor
    (saying so in ``notices`` and a warning), resolves the precision, and chooses the CLIP
    micro-batch and checkpointing: from ``recorded`` (a run's recorded plan, so a resume or
    reproduce computes as the original did) or else from the memory the device has.
    ``clip_batch`` 0 (auto) feeds all cutouts at once when they fit (16 at a time on the
    CPU's bf16 path), else the largest micro-batch that fits; ``checkpointing`` "auto" turns
    on only when nothing fits without it. memory.DoesNotFit (saying what would fit) when even
    the leanest settings do not fit.
    """
    if not checked:
        config.validate()
    device = models.device
    wanted = len(clip_weights(config.clip_model))
    if wanted != len(models.clips):  # a caller's models for another clip_model
        raise ConfigError(
            f"clip_model {config.clip_model!r} names {wanted} CLIP model(s), but the models "
            f"given hold {len(models.clips)}. Load the models from these settings "
            "(load_models(config)), or give a clip_model that names the CLIPs loaded.",
            "clip_model",
        )
    precision = resolve_precision(config.precision, device)
    factor = models.vqgan.factor
    if min(config.size) < factor:
        raise ConfigError(
            f"size {config.size[0]}x{config.size[1]} is smaller than one latent cell of this "
            f"VQGAN ({factor}x{factor} pixels), so there is nothing to paint. Use a size of at "
            f"least {factor} on each side; {16 * factor}x{16 * factor} is typical."
        )
    if config.init_image:  # read them whole now: a broken file is refused before any run starts
        open_rgb(config.init_image, "init_image")
    changes = [parse_change(line) for line in config.timeline]
    later = [item for c in changes for item in c.settings().get("image_prompts", [])]
    for spec in [*config.image_prompts, *later]:
        open_rgb(parse_prompt(spec).text, "image prompt")
    seed = config.seed if config.seed is not None else secrets.randbelow(2**31)
    size = [round(v / factor) * factor for v in config.size]
    notices = []
    beyond = [c.line() for c in changes if c.iteration > config.iterations]
    if beyond:  # kept: a resume to more iterations reaches them
        notices.append(
            f"The timeline's change(s) {'; '.join(beyond)} lie beyond the run's "
            f"{config.iterations} iterations, so they do not take effect unless it is "
            "resumed further."
        )
        warnings.warn(notices[-1], stacklevel=2)
    if size != list(config.size):
        notices.append(
            f"Size {config.size[0]}x{config.size[1]} is not a multiple of the VQGAN's "
            f"downsampling factor {factor}; using {size[0]}x{size[1]}."
        )
        warnings.warn(notices[-1], stacklevel=2)
    config = config.replace(seed=seed, size=size)
    cutn = 1 if config.full_cutout else config.cutn
    if recorded and "clip_batch" in recorded:
        batch, ckpt = int(recorded["clip_batch"]), bool(recorded["checkpointing"])
        changes = [dict(c) for c in recorded.get("changes", [])]
    else:
        batch, ckpt = _choose_batching(config, precision, models, cutn)
        changes = []
    # The modules a recorded run computed with (lean or taming's and CLIP's own: other float
    # rounding), so its bytes come back. Recipes from before this was recorded ran fp32 plain.
    lean = None
    if recorded and "clip_batch" in recorded:
        lean = recorded.get("modules", "plain" if precision == "fp32" else "lean") == "lean"
    estimate = memory.estimate_peak_memory(
        size, cutn, precision, device, models, batch, ckpt, fast=lean
    )
    prepared = optimize_models(models, precision, fast=lean, checkpointing=ckpt)
    batch = max(1, min(batch, cutn))
    # A run batched with others (part of the way) keeps saying so when continued alone.
    together = int((recorded or {}).get("candidates", 1))
    return Plan(config, prepared, precision, batch, ckpt, estimate, changes, notices, together)


def _choose_batching(
    config: RunConfig, precision: str, models: Models, cutn: int, candidates: int = 1
) -> tuple[int, bool]:
    """The CLIP micro-batch and checkpointing the config asks for, or the fastest that fit,
    for ``candidates`` runs of this shape optimised together (DoesNotFit if none does;
    several candidates never turn checkpointing on by themselves: fewer at once is faster)."""
    device, size = models.device, list(config.size)

    def fits(batch: int, ckpt: bool) -> bool:
        try:
            memory.check_fits(
                size, cutn, precision, device, models, batch, ckpt, candidates=candidates
            )
        except memory.DoesNotFit:
            return False
        return True

    # On the CPU the fast path feeds CLIP 16 cutouts at a time by default: measured 2-3 %
    # slower than all 32 at once at 256x256, for 0.1 GiB less peak memory (and more at cutn 64).
    every = cutn * candidates
    first = every if precision != "bf16" or device.type != "cpu" else min(every, CPU_CLIP_BATCH)
    smaller = [b for b in (cutn, 16, 8, 4, 2, 1) if b < first]
    batches = [config.clip_batch] if config.clip_batch else list(dict.fromkeys([first, *smaller]))
    auto_ckpt = [False, True] if candidates == 1 else [False]
    ckpts = {"on": [True], "off": [False]}.get(config.checkpointing, auto_ckpt)
    choice = next(((b, c) for c in ckpts for b in batches if fits(b, c)), None)
    if choice is None:  # raise the estimate's own error for the smallest settings asked
        memory.check_fits(
            size, cutn, precision, device, models, batches[-1], ckpts[-1], candidates=candidates
        )
        choice = (batches[-1], ckpts[-1])
    return choice


def group_plans(plans: Sequence[Plan], limit: int) -> list[list[Plan]]:
    """Sort prepared plans into batches ``run_batch`` can optimise together: runs of one
    shape (models, size, cutn, iterations, precision, asked-for CLIP batching), at most
    ``limit`` at a time and as many as memory allows, in their order. The plans of a batch
    are given its shared CLIP micro-batch, checkpointing and memory estimate."""
    shapes: dict[tuple, list[Plan]] = {}
    for plan in plans:
        config = plan.config
        cutn = 1 if config.full_cutout else config.cutn
        key = (id(plan.models), tuple(config.size), cutn, config.iterations, plan.precision,
               plan.fast, config.clip_batch, config.checkpointing)  # fmt: skip
        shapes.setdefault(key, []).append(plan)
    batches = []
    for same in shapes.values():
        first, cutn = same[0], (1 if same[0].config.full_cutout else same[0].config.cutn)
        size = min(limit, len(same))
        while size > 1:
            try:
                clip_batch, ckpt = _choose_batching(
                    first.config, first.precision, first.models, cutn, size
                )
                break
            except memory.DoesNotFit:
                size -= 1
        for start in range(0, len(same), max(1, size)):
            batch = same[start : start + max(1, size)]
            if len(batch) > 1:
                estimate = memory.estimate_peak_memory(
                    first.config.size, cutn, first.precision, first.device, first.models,
                    clip_batch, ckpt, first.fast, len(batch),
                )  # fmt: skip
                for plan in batch:
                    plan.clip_batch, plan.checkpointing = clip_batch, ckpt
                    plan.estimate, plan.candidates = estimate, len(batch)
            batches.append(batch)
    return batches
