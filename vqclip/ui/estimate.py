"""How long a run has left, from the steps measured so far (no guess from the hardware).

The first measured step pays for warm-up (kernels compiled, memory allocated), so the pace
is the mean of the steps after it. Before a run has measured two steps, the pace of the
last run in this kernel, scaled by the work of a step (pixels × cutouts × CLIPs), gives a first
estimate; it is labelled as such.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from vqclip.config import RunConfig
from vqclip.ensemble import clip_weights

_last: dict[str, float] = {}  # this kernel's last measured pace: seconds per (pixel × cutout)


def work(size: list[int], cutn: int, clips: int = 1) -> float:
    """The work of one step, up to a constant: pixels × cutouts × CLIPs judging them (each
    CLIP of an ensemble runs every cutout: counted alike, though a larger CLIP costs more)."""
    return float(size[0] * size[1] * max(1, cutn) * max(1, clips))


def work_of(config: RunConfig) -> float:
    """``work`` of a step of ``config``."""
    return work(config.size, config.cutn, len(clip_weights(config.clip_model)))


def duration(seconds: float) -> str:
    """12 -> '12 s', 150 -> '2.5 min', 7200 -> '2.0 h'."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


class Pace:
    """Times the steps of one run: ``step(i)`` at each; ``line()`` says the time left."""

    def __init__(self, total: int, step_work: float, clock: Callable[[], float] = time.monotonic):
        self.total, self.step_work, self.clock = total, step_work, clock
        self.marks: list[tuple[int, float]] = []  # (iteration, clock) of each step seen

    def step(self, iteration: int) -> None:
        self.marks.append((iteration, self.clock()))
        if self.seconds_per_step() is not None:
            _last["per_work"] = self.seconds_per_step() / self.step_work

    def seconds_per_step(self) -> float | None:
        """The mean time of the steps after the first one seen; None before two are."""
        if len(self.marks) < 3:
            return None
        (i0, t0), (i1, t1) = self.marks[1], self.marks[-1]
        return (t1 - t0) / (i1 - i0) if i1 > i0 else None

    def left(self) -> float | None:
        pace = self.seconds_per_step()
        if pace is None or not self.marks:
            return None
        return pace * max(0, self.total - self.marks[-1][0])

    def line(self) -> str:
        """'≈ 4.2 min left (8.4 s/step)', an estimate from the last run, or 'measuring…'."""
        left, pace = self.left(), self.seconds_per_step()
        if left is not None and pace is not None:
            return f"≈ {duration(left)} left ({pace:.2g} s/step)"
        return before(self.total - (self.marks[-1][0] if self.marks else 0), self.step_work)


def before(steps: int, step_work: float) -> str:
    """The time ``steps`` steps may take, from this kernel's last run; or that it is unknown."""
    if "per_work" not in _last:
        return "time left: measured after the first steps"
    return f"≈ {duration(steps * step_work * _last['per_work'])} left (at the last run's pace)"
