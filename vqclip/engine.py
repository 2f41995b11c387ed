"""The optimisation loop, as a generator of Steps, and nothing else.

Each iteration k (0..iterations): decode the quantised latent to an image, cut it into
cutouts, embed them with CLIP, measure each prompt's loss and (except after the last)
compute the latent's gradient, yield ``Step(k)``, then take one optimiser step. So Step k's
image is the picture after k optimiser steps, and its losses are that picture's losses;
Step 0 is the starting image.

How a run computes is resolved once by ``plan.prepare`` into a ``Plan`` (seed, size,
precision, CLIP micro-batches, checkpointing, the prepared models), which ``run`` follows
and which is recorded with the run. A step that runs out of memory is retried leaner, with a warning,
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
from vqclip.config import RunConfig, parse_change
from vqclip.ensemble import clip_weights
from vqclip.plan import Plan, prepare, resolve_precision  # noqa: F401  (also engine's API)
from vqclip.prompts import Target, encode_each, load_rgb
from vqclip.scoring import evaluate_batch
from vqclip.timeline import Steering
from vqclip.vqgan import VQGAN

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
    changes: tuple[str, ...] = ()  # the timeline lines that took effect at this iteration
    weights: tuple[float, ...] = ()  # [P] each prompt's weight (> 0 pulls, < 0 pushes)

    @property
    def is_last(self) -> bool:
        return self.iteration == self.iterations

    def image(self) -> Image.Image:
        """The picture as an 8-bit RGB PIL image (reads it back to the host)."""
        array = self.pixels.float().mul(255).round().clamp(0, 255).byte()
        return Image.fromarray(array.permute(1, 2, 0).cpu().numpy())

    def stats(self) -> dict[str, Any]:
        """Host numbers for logs and displays: iteration, loss, lr, each prompt's loss and
        similarity (by label: prompts change along a timeline), and the timeline lines that
        took effect here, if any."""
        losses, sims = self.prompt_losses.tolist(), self.similarities.tolist()
        stats = {
            "iteration": self.iteration,
            "loss": float(self.loss),
            "lr": self.lr,
            "prompts": [
                {"prompt": label, "loss": loss, "similarity": sim}
                for label, loss, sim in zip(self.labels, losses, sims)
            ],
        }
        if self.changes:
            stats["timeline"] = list(self.changes)
        return stats

    def recipe(self, base: dict[str, Any], iteration: int | None = None) -> dict[str, Any]:
        """``base`` (a run's recipe) as it stands at this step, for the picture of
        ``iteration`` (default: this one): the config with the timeline as steered so far and
        the plan with its leaner retries, so a replay takes the same changes."""
        return {
            **base,
            "config": self.plan.config.recipe(),
            "plan": self.plan.record(),
            "iteration": self.iteration if iteration is None else iteration,
        }

    def state(self) -> dict[str, Any] | None:
        """A copy of what continuing the run needs (latent, optimiser, RNG, iteration).

        It is the run's latest consistent point: this step while the consumer handles it,
        the next one once its update is done, None while an update is half-done (a Ctrl-C
        on the main thread waits for the update, so it is only seen from other threads).
        """
        return self._state()


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


def precision_context(
    device: torch.device, precision: str, fast: bool
) -> contextlib.AbstractContextManager:
    """Autocast for a low precision on models run as loaded; the lean modules hold their
    weights in the run's dtype already, and fp32 runs as is."""
    if fast or precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=hardware.DTYPES[precision])


class _Candidate:
    """One run's own part of the loop: its prompts, latent, optimiser, RNG and loss scale.

    Several candidates of one shape share each step's decoder and CLIP passes (a batch);
    everything that makes a run that run stays here, so each equals the run made alone.
    """

    def __init__(
        self, plan: Plan, resume: dict[str, Any] | None, steering: Steering | None = None
    ) -> None:
        config, models, device = plan.config, plan.models, plan.device
        self.plan, self.config, self.steering = plan, config, steering
        self.generator = torch.Generator(device=device).manual_seed(config.seed)
        # The prompts in force are encoded by ``follow`` at the first iteration computed,
        # and again at each change of the timeline; texts and images encoded once are kept.
        # One cache and one list of targets per CLIP (an ensemble has several), and each
        # CLIP's share of the loss, from the recipe's clip_model.
        self.encoded: list[dict[tuple[str, str], torch.Tensor]] = [{} for _ in models.clips]
        self.clip_targets: list[list[Target]] = []
        self.clip_weights = clip_weights(config.clip_model)
        self.targets: list[Target] | None = None
        self.labels: tuple[str, ...] = ()  # of the prompts in force
        self.weights: tuple[float, ...] = ()
        self.change_at = {parse_change(line).iteration for line in config.timeline}
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

    def follow(self, k: int) -> tuple[str, ...]:
        """At the top of iteration k: take the changes steered since the last step into the
        timeline (the plan's config records them), and encode the prompts in force when they
        change here. Outside the precision context, as at the start, so a replay encodes
        them alike. Returns the timeline lines that take effect at k."""
        if self.steering is not None:
            new = self.steering.take(k, self.config)
            if new:
                self.config = self.config.replace(timeline=[*self.config.timeline, *new])
                self.plan.config = self.config
                self.change_at.add(k)
        if self.targets is not None and k not in self.change_at:
            return ()
        models = self.plan.models
        now = self.config.prompts_at(k)
        self.clip_targets = encode_each(
            now, models.clips, models.clip_sizes, self.plan.device, self.encoded
        )
        self.targets = self.clip_targets[0]
        self.labels = tuple(t.label for t in self.targets)
        self.weights = tuple(t.weight for t in self.targets)
        return tuple(line for line in self.config.timeline if parse_change(line).iteration == k)

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


def run(
    plan: Plan, resume: dict[str, Any] | None = None, steering: Steering | None = None
) -> Iterator[Step]:
    """Optimise a latent toward the plan's prompts, yielding a Step per iteration.

    ``plan`` comes from ``prepare``; an out-of-memory retry records its leaner settings in
    it (``plan.changes``). ``resume`` is a ``Step.state()`` to continue from, or
    ``{"z": latent}`` to start from a given latent with a fresh optimiser (a branch).
    ``steering`` hands prompt changes asked for meanwhile to the run, which records them
    in its timeline (``plan.config.timeline``).
    """
    steps = run_batch([plan], [resume], [steering])
    try:
        for (step,) in steps:
            yield step
    finally:
        steps.close()


def run_batch(
    plans: Sequence[Plan],
    resumes: Sequence[dict[str, Any] | None] | None = None,
    steerings: Sequence[Steering | None] | None = None,
) -> Iterator[tuple[Step, ...]]:
    """Optimise several runs of one shape as one batch, yielding each iteration's Steps
    (one per plan, in order).

    The runs share each step's decoder and CLIP passes (a batch dimension through both);
    each keeps its own seed, prompts, optimiser and loss scale, so each equals the same run
    made alone up to float rounding. The plans come from ``group_plans`` (one shape, one
    CLIP micro-batch and checkpointing, the same models); ``resumes`` as for ``run``, all
    at the same iteration; ``steerings`` as for ``run``, one per plan.
    """
    first = plans[0]
    _check_batchable(plans)
    device = first.device
    if device.type == "cpu":  # faster, but keeps up to ~1/3 more memory at large sizes
        room = memory.available_memory(device)
        if room is None or room > 2 * first.estimate.activations:
            memory.tune_cpu_allocator()
    resumes = resumes or [None] * len(plans)
    steerings = steerings or [None] * len(plans)
    runs = [_Candidate(plan, r, s) for plan, r, s in zip(plans, resumes, steerings)]
    starts = {r.point["iteration"] for r in runs}
    if len(starts) > 1:
        raise ValueError(f"Runs batched together must be at one iteration; these are at {starts}.")
    try:
        yield from _iterate(runs, plans, starts.pop())
    finally:
        for steering in steerings:
            if steering is not None:
                steering.stop()


def _iterate(
    runs: list[_Candidate], plans: Sequence[Plan], start: int
) -> Iterator[tuple[Step, ...]]:
    """run_batch's loop, from iteration ``start`` to the plans' last."""
    first = plans[0]
    models, device, config = first.models, first.device, first.config
    vqgan = models.vqgan
    codebook = vqgan.codebook
    z_min = codebook.min(0).values[None, :, None, None]  # [1, C, 1, 1]
    z_max = codebook.max(0).values[None, :, None, None]
    for k in range(start, config.iterations + 1):
        last = k == config.iterations
        changes = [r.follow(k) for r in runs]  # before the step: never rewinds
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
                weights=r.weights,
                lr=r.optimizer.param_groups[0]["lr"],
                pixels=pixels,
                plan=r.plan,
                _state=r.state,
                changes=change,
            )
            for r, change, (total, losses, sims, pixels) in zip(runs, changes, results)
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
