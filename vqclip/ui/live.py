"""The panel's live view of a run: an observer that shows the picture, progress and plot."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from PIL import Image

from vqclip.config import RunConfig
from vqclip.engine import Step
from vqclip.observers import Observer
from vqclip.plan import Plan
from vqclip.schedules import parse_schedule
from vqclip.ui import estimate
from vqclip.ui.gallery import plot_png
from vqclip.ui.look import escape, png

if TYPE_CHECKING:  # the panel it shows in (only for the type: the panel imports this)
    from vqclip.ui.panel import Panel


class LiveView(Observer):
    """Shows every ``every``-th Step (image, progress, plot) and each snapshot as it is made.
    It only reads Steps; it runs on whichever thread runs the loop."""

    def __init__(self, panel: Panel, config: RunConfig, start: int, every: int) -> None:
        self.panel, self.every = panel, max(1, every)
        self.keep = set(parse_schedule(config.snapshots).iterations(config.iterations))
        self.mark = (start, time.monotonic())  # for iterations per second
        self.shown, self.plotted, self.last = -1, 0.0, None
        self.pace = estimate.Pace(config.iterations, estimate.work_of(config), panel.clock)

    def start(self, plan: Plan) -> None:
        """The run's resolved settings are known: show its seed and what was changed."""
        self.panel.seed_used = plan.config.seed
        if self.mark[0] == 0:  # a resume has said where it continues from
            notes = "; ".join(plan.notices)
            self.panel.say(f"running, seed {plan.config.seed}" + (f" ({notes})" if notes else ""))

    def __call__(self, step: Step) -> None:
        self.last, image = step, None
        self.pace.step(step.iteration)
        if step.changes:  # seen on every step, not only the shown ones
            self.panel.steer_box.took(step.iteration, step.changes)
        if step.iteration in self.keep:
            image = step.image()  # reads the picture back from the device: only when needed
            self.panel.gallery_view.add(step.iteration, image)
        if step.iteration % self.every == 0 or step.is_last or step.changes:
            self.show(step, image)  # a change of prompts is shown (and marked on the plot)

    def show(self, step: Step, image: Image.Image | None = None) -> None:
        now, (it0, t0) = time.monotonic(), self.mark
        rate = (step.iteration - it0) / (now - t0) if step.iteration > it0 and now > t0 else None
        self.mark, self.shown = (step.iteration, now), step.iteration
        plot = now - self.plotted >= 1.0 or step.is_last  # a plot costs ~50 ms: at most 1/s
        if plot:
            self.plotted = now
        self._draw(step.stats(), image or step.image(), step.iterations, rate, plot)

    def _draw(
        self, stats: dict[str, Any], image: Image.Image, total: int, rate: float | None, plot: bool
    ) -> None:
        """The picture, the progress line (loss, each prompt's similarity, speed, time left)
        and, when ``plot``, the plot of the run so far."""
        panel, left = self.panel, self.pace.line()
        panel.history.append(stats)
        panel.live_image.value = png(image)
        panel.progress.max, panel.progress.value = total, stats["iteration"]
        sims = " · ".join(
            f"{escape(p['prompt'][:30])} {p['similarity']:.3f}" for p in stats["prompts"][:4]
        )
        panel.progress_text.value = (
            f"it {stats['iteration']}/{total} · loss {stats['loss']:.4f}"
            + (f" · {sims}" if sims else "")
            + (f" · {rate:.2f} it/s" if rate else "")
            + (f" · {escape(left)}" if left else "")
        )
        if plot:
            panel.plot.value = plot_png(panel.history)

    def close(self, status: str) -> None:
        if self.last is not None and self.shown != self.last.iteration:
            self.show(self.last)  # the picture the run stopped at
        elif self.panel.history:
            self.panel.plot.value = plot_png(self.panel.history)
