"""Keep-best: the best-scoring picture of a run, kept as best.png beside final.png.

Every Step carries each prompt's mean cosine similarity [P] and weight [P] (of the prompts
in force at that iteration). A picture's **score** is the similarity the run was asked
for, weighted as the loss weights it:

    score = sum_i w_i * s_i / sum_{w_i > 0} w_i

For prompts that all pull (w > 0) this is their weighted mean similarity (the plain mean
when the weights are equal). A negative prompt ("text:-1") lowers the score by its
similarity, in proportion to its weight, as the loss pushes the picture away from it: an
image that drifted toward what was pushed away is not the best. With no prompt that
pulls, the score is minus the weighted mean similarity to the pushing ones (sum |w| as the
divisor): the best is the picture farthest from them. A step with no weighted prompt at
all (a run on an init image alone) has nothing to judge and is skipped; a run that never
has one writes no best.png. Ties keep the earlier iteration. When a timeline changes the
prompts mid-run, each iteration is scored against the prompts in force then, and the run
keeps one best over all of them.

Cost: the comparison stays on the device (a few element-wise ops a step, no read-back).
The best step's pixels [3, H, W] are held there; best.png is written, with the full
recipe (its "iteration" is the best one, so ``vqclip reproduce best.png`` remakes it) and
``recipe["best"] = {"iteration", "score"}``, only when a snapshot is written and when the
run ends, and only if the best changed. A resumed run continues from best.png's record (a
run made before keep-best, resumed, finds its best from where it continues).
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import torch

from vqclip.credentials import LOCAL, Signing
from vqclip.engine import Plan, Step
from vqclip.export import ExportError, format_parameters, read_recipe, save_png
from vqclip.state import BEST_FILE


def score_factors(weights: Sequence[float]) -> list[float] | None:
    """Each prompt's factor in the score (see the module doc): w / sum of the positive
    weights, or w / sum of |w| when none is positive; None when no prompt has a weight."""
    total = sum(w for w in weights if w > 0) or sum(abs(w) for w in weights)
    return [w / total for w in weights] if total else None


def score(similarities: torch.Tensor, weights: Sequence[float]) -> torch.Tensor:
    """A picture's score [] from its prompts' similarities [P] and weights [P]; NaN (never
    the best) when no prompt has a weight."""
    factors = score_factors(weights)
    if factors is None:
        return similarities.new_full((), math.nan)
    return (similarities * similarities.new_tensor(factors)).sum()


def read_best(path: str | Path) -> tuple[int, float] | None:
    """(iteration, score) recorded in a best.png, or None when there is none; a file whose
    record is unreadable is reported (keep-best then starts afresh and replaces it)."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        best = read_recipe(path).get("best")
    except ExportError as error:
        best = error
    ok = isinstance(best, dict) and isinstance(best.get("iteration"), int)
    ok = ok and best["iteration"] >= 0 and isinstance(best.get("score"), (int, float))
    if not ok or isinstance(best["score"], bool) or not math.isfinite(best["score"]):
        warnings.warn(
            f"{path} holds no readable keep-best record ({best}); the run's best is found "
            "afresh from here on and will replace it.",
            stacklevel=2,
        )
        return None
    return best["iteration"], float(best["score"])


class KeepBest:
    """An observer (start, called with each Step, close) that keeps the run's best-scoring
    picture as best.png in ``run_dir``, written at the ``iterations`` snapshots are written
    at and when the run ends (done, stopped, failed or Ctrl-C), if it changed."""

    def __init__(
        self,
        run_dir: Path,
        iterations: Iterable[int],
        recipe: dict[str, Any],
        credentials: Signing | None = LOCAL,
    ) -> None:
        self.path, self.iterations, self.recipe = Path(run_dir) / BEST_FILE, set(iterations), recipe
        self.credentials = credentials  # who signs best.png's content credential (None: nobody)
        self.found = read_best(self.path)  # a resumed run's best so far
        self.written = self.found[0] if self.found else None  # the iteration best.png holds
        # (score [], iteration [] int64 (-1: none yet), pixels [3, H, W]) of the best so far,
        # on the device; each step's update goes into the spare three, then the two swap.
        self.held: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None
        self.spare: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None
        self.factors: dict[tuple[float, ...], torch.Tensor | None] = {}  # weights -> [P]
        self.last: Step | None = None

    def start(self, plan: Plan) -> None:
        pass

    def __call__(self, step: Step) -> None:
        self.last = step
        factors = self._factors(step)
        if factors is not None:
            value = (step.similarities * factors).sum()  # []
            if self.held is None:  # the first step: the best so far is the file's, if any
                at, was = self.found or (-1, -math.inf)
                self.held = (
                    value.new_full((), was),
                    torch.full((), at, dtype=torch.int64, device=value.device),
                    step.pixels.detach().clone(),
                )
                self.spare = tuple(t.clone() for t in self.held)
            (score, iteration, pixels), (new_score, new_iteration, new_pixels) = (
                self.held,
                self.spare,
            )
            better = value > score  # [] bool; NaN is never better; a tie keeps the first
            # On the device, into buffers kept for it: nothing is read back or allocated.
            torch.where(better, value, score, out=new_score)
            new_iteration.copy_(iteration).masked_fill_(better, step.iteration)
            torch.where(better, step.pixels.detach(), pixels, out=new_pixels)
            # One assignment commits all three: a Ctrl-C can never leave one step's score
            # beside another's pixels.
            self.held, self.spare = self.spare, self.held
        if step.iteration in self.iterations:
            self.write(step)

    @property
    def score(self) -> torch.Tensor | None:
        """[] the best score so far, on the device."""
        return None if self.held is None else self.held[0]

    @property
    def iteration(self) -> torch.Tensor | None:
        """[] int64, the best score's iteration (-1: none yet), on the device."""
        return None if self.held is None else self.held[1]

    @property
    def pixels(self) -> torch.Tensor | None:
        """[3, H, W] the best picture, on the device."""
        return None if self.held is None else self.held[2]

    def _factors(self, step: Step) -> torch.Tensor | None:
        """The score's factors [P] on the device, made once per set of weights (a tensor
        made from host numbers every step would wait for the device)."""
        if len(step.weights) != len(step.labels):
            raise ValueError(
                f"A Step carries {len(step.labels)} prompts but {len(step.weights)} weights; "
                "keep-best needs one weight per prompt in force."
            )
        if step.weights not in self.factors:
            factors = score_factors(step.weights)
            self.factors[step.weights] = (
                None if factors is None else step.similarities.new_tensor(factors)
            )
        return self.factors[step.weights]

    def write(self, step: Step) -> None:
        """best.png, if the best changed since it was last written (reads two numbers back)."""
        if self.held is None:
            return
        score, at, pixels = self.held
        iteration = int(at)
        if iteration < 0 or iteration == self.written:
            return
        best = {"iteration": iteration, "score": float(score)}
        # as it stands now (a steered timeline's lines after the best iteration change
        # nothing up to it), for the best iteration
        recipe = {**step.recipe(self.recipe, iteration), "best": best}
        image = dataclasses.replace(step, pixels=pixels).image()  # as Step.image makes it
        save_png(image, self.path, recipe, format_parameters(recipe), self.credentials)
        self.written = iteration

    def close(self, status: str) -> None:
        if self.last is not None:
            self.write(self.last)
