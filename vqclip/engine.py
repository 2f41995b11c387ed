"""The optimisation loop, as a generator of Steps, and nothing else.

Each iteration k (0..iterations): decode the quantised latent to an image, cut it into
cutouts, embed them with CLIP, measure each prompt's loss and (except after the last)
compute the latent's gradient, yield ``Step(k)``, then take one optimiser step. So Step k's
image is the picture after k optimiser steps, and its losses are that picture's losses;
Step 0 is the starting image.

How a run computes is resolved once by ``prepare`` into a ``Plan`` (seed, size, precision,
CLIP micro-batches, checkpointing, the prepared models), which ``run`` follows and which is
recorded with the run. A step that runs out of memory is retried leaner, with a warning,
and the plan records the change so a replay makes it too.

Several runs of one shape (a sweep's candidates) can run as one batch: ``run_batch``
sends their latents through the decoder and their cutouts through CLIP together, while
each keeps its own seed, prompts, optimiser and RNG; ``run`` is its batch of one.

Observers read Steps; they never write back. Stopping is the consumer leaving the loop.
Nothing here reads a tensor back to the host, so a step never waits for the device (but
fp16's loss scaling, which must know whether a gradient overflowed).
"""

from __future__ import annotations

import contextlib
import copy
import secrets
import signal
import threading
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from PIL import Image

from vqclip import device as hardware
from vqclip import memory
from vqclip.config import ConfigError, RunConfig, parse_prompt
from vqclip.cutouts import make_cutouts
from vqclip.fast import optimize_models, prepared_precision
from vqclip.models import Models
from vqclip.ops import (
    clamp_with_grad,
    cosine_similarity,
    spherical_distance,
    straight_through,
    total_variation,
    vector_quantize,
)
from vqclip.prompts import Target, encode_images, encode_targets, load_rgb, open_rgb
from vqclip.vqgan import VQGAN

CPU_CLIP_BATCH = 16  # the fast path's default CLIP micro-batch on the CPU

OPTIMIZERS: dict[str, Callable[..., torch.optim.Optimizer]] = {
    "adam": torch.optim.Adam,
    "adamw": torch.optim.AdamW,
    "sgd": lambda params, lr: torch.optim.SGD(params, lr=lr, momentum=0.9, nesterov=True),
    "adagrad": torch.optim.Adagrad,
    "rmsprop": torch.optim.RMSprop,
}


@dataclass(frozen=True)
class Step:
    """One iteration of a run, as observers see it. Tensors are detached and stay on the device."""

    iteration: int  # optimiser steps taken before this image (0 = the starting image)
    iterations: int  # the run's planned total
    loss: torch.Tensor  # [] total loss of this image
    prompt_losses: torch.Tensor  # [P] each prompt's weighted loss
    similarities: torch.Tensor  # [P] mean cosine similarity of the cutouts to each prompt
    labels: tuple[str, ...]  # [P] prompt labels
    lr: float
    pixels: torch.Tensor = field(repr=False)  # [3, H, W] float in [0, 1]
    plan: Plan = field(repr=False, compare=False)  # how it was computed (read it, never change it)
    _state: Callable[[], dict[str, Any] | None] = field(repr=False, compare=False)
    weights: tuple[float, ...] = ()  # [P] each prompt's weight (> 0 pulls, < 0 pushes)

    @property
    def is_last(self) -> bool:
        return self.iteration == self.iterations

    def image(self) -> Image.Image:
        """The picture as an 8-bit RGB PIL image (reads it back to the host)."""
        array = self.pixels.float().mul(255).round().clamp(0, 255).byte()
        return Image.fromarray(array.permute(1, 2, 0).cpu().numpy())

    def stats(self) -> dict[str, Any]:
        """Host numbers for logs and displays: iteration, loss, lr, each prompt's loss and similarity."""
        losses, sims = self.prompt_losses.tolist(), self.similarities.tolist()
        return {
            "iteration": self.iteration,
            "loss": float(self.loss),
            "lr": self.lr,
            "prompts": [
                {"prompt": label, "loss": loss, "similarity": sim}
                for label, loss, sim in zip(self.labels, losses, sims)
            ],
        }

    def state(self) -> dict[str, Any] | None:
        """A copy of what continuing the run needs (latent, optimiser, RNG, iteration).

        It is the run's latest consistent point: this step while the consumer handles it,
        the next one once its update is done, None while an update is half-done (a Ctrl-C
        on the main thread waits for the update, so it is only seen from other threads).
        """
        return self._state()


def synthesize(vqgan: VQGAN, z: torch.Tensor) -> torch.Tensor:
    """Latent z [B, C, h, w] -> image [B, 3, h*f, w*f] in [0, 1], through the codebook."""
    z_q = vector_quantize(z, vqgan.codebook)
    return clamp_with_grad(vqgan.decode(z_q).add(1).div(2), 0, 1)


def initial_latent(
    config: RunConfig, vqgan: VQGAN, generator: torch.Generator, device: torch.device
) -> torch.Tensor:
    """The starting latent [1, C, h, w]: the init image's, random codebook entries, or noise."""
    width, height = (v // vqgan.factor for v in config.size)
    codebook = vqgan.codebook  # [N, C]
    if config.init_image:
        pixels = load_rgb(config.init_image, tuple(config.size)).to(device)
        with torch.no_grad():
            return vqgan.encode(pixels * 2 - 1).float()
    if config.latent_init == "codes":
        codes = torch.randint(vqgan.n_embed, (1, height, width), generator=generator, device=device)
        return F.embedding(codes, codebook).movedim(-1, 1)
    noise = torch.randn(1, vqgan.embed_dim, height, width, generator=generator, device=device)
    return noise * codebook.std() + codebook.mean()


def prompt_losses(embeds: torch.Tensor, targets: list[Target]) -> tuple[torch.Tensor, torch.Tensor]:
    """Cutout embeddings [K, D] against each target -> (weighted losses [P], similarities [P])."""
    losses, sims = [], []
    for target in targets:
        sign = 1.0 if target.weight >= 0 else -1.0
        dist = spherical_distance(embeds, target.embeds) * sign  # [K, Kt]
        # Below `stop` the loss still reads its value but no longer pulls (its gradient is 0).
        held = straight_through(dist, torch.clamp(dist, min=target.stop))
        losses.append(abs(target.weight) * held.mean())
        sims.append(cosine_similarity(embeds, target.embeds).mean())
    if not targets:
        empty = embeds.new_zeros(0)
        return empty, empty
    return torch.stack(losses), torch.stack(sims)


def precision_context(
    device: torch.device, precision: str, fast: bool
) -> contextlib.AbstractContextManager:
    """Autocast for a low precision on models run as loaded; the lean modules hold their
    weights in the run's dtype already, and fp32 runs as is."""
    if fast or precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=hardware.DTYPES[precision])


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


def prepare(config: RunConfig, models: Models, recorded: dict[str, Any] | None = None) -> Plan:
    """Resolve a config once into the Plan a run computes with.

    Validates, fixes the seed (a random one if none), rounds the size to the VQGAN's factor
    (saying so in ``notices`` and a warning), resolves the precision, and chooses the CLIP
    micro-batch and checkpointing: from ``recorded`` (a run's recorded plan, so a resume or
    reproduce computes as the original did) or else from the memory the device has.
    ``clip_batch`` 0 (auto) feeds all cutouts at once when they fit (16 at a time on the
    CPU's bf16 path), else the largest micro-batch that fits; ``checkpointing`` "auto" turns
    on only when nothing fits without it. memory.DoesNotFit (saying what would fit) when even
    the leanest settings do not fit.
    """
    config.validate()
    device = models.device
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
    for spec in config.image_prompts:
        open_rgb(parse_prompt(spec).text, "image prompt")
    seed = config.seed if config.seed is not None else secrets.randbelow(2**31)
    size = [round(v / factor) * factor for v in config.size]
    notices = []
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


class _Candidate:
    """One run's own part of the loop: its prompts, latent, optimiser, RNG and loss scale.

    Several candidates of one shape share each step's decoder and CLIP passes (a batch);
    everything that makes a run that run stays here, so each equals the run made alone.
    """

    def __init__(self, plan: Plan, resume: dict[str, Any] | None) -> None:
        config, models, device = plan.config, plan.models, plan.device
        self.plan, self.config = plan, config
        self.generator = torch.Generator(device=device).manual_seed(config.seed)
        self.targets = encode_targets(config, models.clip, models.clip_size, device)
        self.labels = tuple(t.label for t in self.targets)
        z = initial_latent(config, models.vqgan, self.generator, device)  # [1, C, h, w]
        self.z_anchor = z.detach().clone() if config.init_image else None  # init_weight's pull
        self.z = z.requires_grad_(True)
        self.optimizer = OPTIMIZERS[config.optimizer]([self.z], lr=config.lr)
        # fp16 gradients under- and overflow: dynamic loss scaling (a step whose gradient is
        # not finite is skipped and the scale lowered); a pass-through for fp32 and bf16.
        # It starts at 2**10, not torch's 2**16: a gradient of 1 times 2**16 is already past
        # fp16's largest number, which would skip the first steps, the very ones people watch.
        self.scaler = torch.amp.GradScaler(
            device.type, init_scale=2.0**10, growth_interval=100, enabled=plan.precision == "fp16"
        )
        start = 0
        if resume is not None:  # a saved state, or just a latent ({"z": …}) to branch from
            with torch.no_grad():
                self.z.copy_(resume["z"].to(device))
            if resume.get("optimizer") is not None:
                self.optimizer.load_state_dict(resume["optimizer"])
            if resume.get("rng") is not None:
                self.generator.set_state(resume["rng"])
            if resume.get("scaler"):
                self.scaler.load_state_dict(resume["scaler"])
            start = resume.get("iteration", 0)
        # The run's latest consistent point: the iteration about to be computed, the RNG
        # state before its cutouts, and whether z and the optimiser agree with it.
        self.point: dict[str, Any] = {
            "iteration": start,
            "rng": self.generator.get_state(),
            "ok": True,
        }

    def state(self) -> dict[str, Any] | None:
        if not self.point["ok"]:
            return None
        return {
            "iteration": self.point["iteration"],
            "z": self.z.detach().clone(),
            "optimizer": copy.deepcopy(self.optimizer.state_dict()),
            "rng": self.point["rng"].clone(),
            "scaler": self.scaler.state_dict() if self.scaler.is_enabled() else None,
        }

    def step(self, k: int, z_min: torch.Tensor, z_max: torch.Tensor) -> None:
        """Take optimiser step k (z now holds step k+1's latent), kept in the codebook's range."""
        self.point["ok"] = False
        if self.z.grad is not None:  # without a gradient (nothing to learn) z stays as it is
            self.scaler.step(self.optimizer)  # unscales z.grad; skips the step if not finite
            self.scaler.update()
        with torch.no_grad():
            self.z.copy_(torch.maximum(torch.minimum(self.z, z_max), z_min))
        self.point.update(iteration=k + 1, rng=self.generator.get_state(), ok=True)


def run(plan: Plan, resume: dict[str, Any] | None = None) -> Iterator[Step]:
    """Optimise a latent toward the plan's prompts, yielding a Step per iteration.

    ``plan`` comes from ``prepare``; an out-of-memory retry records its leaner settings in
    it (``plan.changes``). ``resume`` is a ``Step.state()`` to continue from, or
    ``{"z": latent}`` to start from a given latent with a fresh optimiser (a branch).
    """
    steps = run_batch([plan], [resume])
    try:
        for (step,) in steps:
            yield step
    finally:
        steps.close()


def run_batch(
    plans: Sequence[Plan], resumes: Sequence[dict[str, Any] | None] | None = None
) -> Iterator[tuple[Step, ...]]:
    """Optimise several runs of one shape as one batch, yielding each iteration's Steps
    (one per plan, in order).

    The runs share each step's decoder and CLIP passes (a batch dimension through both);
    each keeps its own seed, prompts, optimiser and loss scale, so each equals the same run
    made alone up to float rounding. The plans come from ``group_plans`` (one shape, one
    CLIP micro-batch and checkpointing, the same models); ``resumes`` as for ``run``, all
    at the same iteration.
    """
    first = plans[0]
    _check_batchable(plans)
    models, device, config = first.models, first.device, first.config
    if device.type == "cpu":  # faster, but keeps up to ~1/3 more memory at large sizes
        room = memory.available_memory(device)
        if room is None or room > 2 * first.estimate.activations:
            memory.tune_cpu_allocator()
    runs = [_Candidate(plan, r) for plan, r in zip(plans, resumes or [None] * len(plans))]
    starts = {r.point["iteration"] for r in runs}
    if len(starts) > 1:
        raise ValueError(f"Runs batched together must be at one iteration; these are at {starts}.")
    vqgan = models.vqgan
    codebook = vqgan.codebook
    z_min = codebook.min(0).values[None, :, None, None]  # [1, C, 1, 1]
    z_max = codebook.max(0).values[None, :, None, None]

    for k in range(starts.pop(), config.iterations + 1):
        last = k == config.iterations
        while True:
            batch, ckpt = first.settings_at(k)
            vqgan.checkpointing = ckpt  # every decoder can: taming's and the lean one
            try:
                with precision_context(device, first.precision, first.fast):
                    results = evaluate_batch(
                        runs,
                        models,
                        grad=not last,
                        clip_batch=batch,
                        fast=first.fast,
                        resize_dtype=first.resize_dtype if first.fast else None,
                    )
                break
            except Exception as error:
                if not memory.is_out_of_memory(error):
                    raise
                if batch <= 1 and ckpt:
                    raise memory.DoesNotFit(
                        memory.out_of_memory_advice(
                            config, first.precision, k, device, vqgan.factor
                        )
                    ) from error
            # Out of the handler, the failed attempt's tensors are free: retry leaner.
            for r in runs:
                r.z.grad = None
            if device.type == "cuda":
                torch.cuda.empty_cache()
            if batch > 1:
                batch = max(1, batch // 2)
                change = f"CLIP micro-batches of {batch} (clip_batch {batch})"
            else:
                ckpt = True
                change = "decoder checkpointing (checkpointing on)"
            for plan in plans:
                plan.change(k, batch, ckpt)
            warnings.warn(
                f"Out of memory at iteration {k}: retrying with {change}, recorded in the "
                "run's plan so a replay does the same (a little slower); lower the size or "
                "cutn to avoid it.",
                stacklevel=2,
            )
            for r in runs:  # the retry draws the same cutouts
                r.generator.set_state(r.point["rng"])
        yield tuple(
            Step(
                iteration=k,
                iterations=config.iterations,
                loss=total.detach().float(),
                prompt_losses=losses.detach().float(),
                similarities=sims.detach().float(),
                labels=r.labels,
                weights=tuple(t.weight for t in r.targets),  # of the prompts in force
                lr=r.optimizer.param_groups[0]["lr"],
                pixels=pixels,
                plan=r.plan,
                _state=r.state,
            )
            for r, (total, losses, sims, pixels) in zip(runs, results)
        )
        if last:
            return
        with _interrupt_after():
            for r in runs:
                r.step(k, z_min, z_max)


@contextlib.contextmanager
def _interrupt_after() -> Iterator[None]:
    """Hold a Ctrl-C (or a notebook's interrupt) that arrives during the optimiser updates
    until they are done, so z, the optimiser and the RNG still agree and the state saved on
    the way out is this step's, not None. Only the main thread receives signals."""
    previous = signal.getsignal(signal.SIGINT)
    if threading.current_thread() is not threading.main_thread() or previous is None:
        yield  # None: a handler set outside Python, which could not be put back
        return
    held: list[int] = []
    signal.signal(signal.SIGINT, lambda signum, frame: held.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        if held:
            signal.raise_signal(signal.SIGINT)  # now, to whoever handled it before


def _check_batchable(plans: Sequence[Plan]) -> None:
    """Refuse to batch runs that do not compute alike (a caller's mistake, not the user's)."""

    def shape(plan: Plan) -> tuple:
        config = plan.config
        cutn = 1 if config.full_cutout else config.cutn
        return (id(plan.models), tuple(config.size), cutn, config.iterations, plan.precision,
                plan.clip_batch, plan.checkpointing, str(plan.changes))  # fmt: skip

    if len({shape(plan) for plan in plans}) > 1:
        raise ValueError(
            "Only runs of one shape (models, size, cutn, iterations, precision and CLIP "
            "batching) can be optimised as one batch; group them with group_plans."
        )


def evaluate_batch(
    runs: Sequence[_Candidate],
    models: Models,
    *,
    grad: bool,
    clip_batch: int,
    fast: bool = False,
    resize_dtype: torch.dtype | None = None,
) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Decode, cut, embed and score each run's latent: per run (total [], prompt losses
    [P], similarities [P], pixels [3, H, W]).

    With ``grad`` the gradient of each run's total lands in its ``z.grad`` (replacing any),
    multiplied by its loss scale (fp16's dynamic loss scaling; 1 otherwise). The runs' cutouts
    go through CLIP together, ``clip_batch`` at a time, each micro-batch's backward pass run
    before the next forward, so CLIP's activations are bounded by one micro-batch; the result
    is the same as all at once (up to float rounding) because each loss is a mean over its
    cutouts. The returned losses are not scaled.
    """
    for r in runs:
        r.z.grad = None
    clip = models.clip
    with torch.set_grad_enabled(grad):
        z = runs[0].z if len(runs) == 1 else torch.cat([r.z for r in runs])  # [B, C, h, w]
        pixels = synthesize(models.vqgan, z).float()  # [B, 3, H, W]
        leaf = pixels.detach().requires_grad_() if grad else pixels
        cutouts = [
            make_cutouts(
                leaf[i : i + 1],
                cutn=r.config.cutn,
                cut_size=models.clip_size,
                cut_pow=r.config.cut_pow,
                generator=r.generator,
                augmentations=r.config.augment,
                whole=r.config.full_cutout,
                # The fast path crops with matrix products (the same sampling, faster), in
                # the run's low precision if it has one.
                resize="matmul" if fast else "roi_align",
                resize_dtype=resize_dtype,
            )  # [cutn, 3, S, S]
            for i, r in enumerate(runs)
        ]
        every = cutouts[0] if len(runs) == 1 else torch.cat(cutouts)  # [B * cutn, 3, S, S]
        counts = [c.shape[0] for c in cutouts]
        offsets = [sum(counts[:i]) for i in range(len(runs))]
        losses: list[Any] = [None] * len(runs)
        sims: list[Any] = [None] * len(runs)
        piece_grads = []
        for start, stop in memory.micro_batches(len(every), clip_batch):
            piece = every[start:stop]
            if grad:
                piece = piece.detach().requires_grad_()
            embeds = encode_images(clip, piece)  # [n, D]
            scaled = []
            for i, r in enumerate(runs):  # the runs whose cutouts lie in this piece
                lo, hi = max(start, offsets[i]), min(stop, offsets[i] + counts[i])
                if lo >= hi:
                    continue
                part_losses, part_sims = prompt_losses(embeds[lo - start : hi - start], r.targets)
                if hi - lo < counts[i]:  # a mean over all cutouts: the size-weighted mean of parts
                    share = (hi - lo) / counts[i]
                    part_losses, part_sims = part_losses * share, part_sims * share
                if grad and part_losses.requires_grad:
                    scaled.append(r.scaler.scale(part_losses.sum()))
                part_losses, part_sims = part_losses.detach(), part_sims.detach()
                losses[i] = part_losses if losses[i] is None else losses[i] + part_losses
                sims[i] = part_sims if sims[i] is None else sims[i] + part_sims
            if scaled:
                torch.autograd.backward(scaled)
            piece_grads.append(piece.grad if scaled else None)
        roots, root_grads, anchors = [], [], []
        if any(g is not None for g in piece_grads):
            grads = [
                g if g is not None else every.new_zeros(stop - start, *every.shape[1:])
                for g, (start, stop) in zip(
                    piece_grads, memory.micro_batches(len(every), clip_batch)
                )
            ]
            roots.append(every)
            root_grads.append(grads[0] if len(grads) == 1 else torch.cat(grads))
        totals = []
        for i, r in enumerate(runs):
            total = losses[i].sum()
            if r.config.tv_weight:
                tv = r.config.tv_weight * total_variation(leaf[i : i + 1])
                total = total + tv.detach()
                roots.append(r.scaler.scale(tv))
                root_grads.append(None)
            if r.z_anchor is not None and r.config.init_weight:
                anchor = r.config.init_weight * F.mse_loss(r.z, r.z_anchor)
                total = total + anchor.detach()
                anchors.append(r.scaler.scale(anchor))
            totals.append(total)
        if grad:
            latent_roots, latent_grads = [], []
            if roots:
                torch.autograd.backward(roots, root_grads)
                latent_roots.append(pixels)
                latent_grads.append(leaf.grad)
            latent_roots += anchors
            latent_grads += [None] * len(anchors)
            if latent_roots:
                torch.autograd.backward(latent_roots, latent_grads)
    pixels = pixels.detach()
    return [(totals[i], losses[i], sims[i], pixels[i]) for i in range(len(runs))]
