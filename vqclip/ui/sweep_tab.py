"""The panel's sweep: the prompt and settings above, in several styles and seeds, run as a
resumable sweep (vqclip.sweep) through the panel's runner, then ranked by CLIP and shown
as a contact sheet."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import ipywidgets as W

from vqclip.config import ConfigError, RunConfig, slug
from vqclip.sweep import (
    SWEEP_FILE,
    load_judge,
    rank_sweep,
    read_sweep,
    run_sweep,
    sheets,
    start_sweep,
)
from vqclip.ui.host import PanelHost
from vqclip.ui.look import TIP, image_widget, wrap


def _same_sweep(record: dict, base: RunConfig, prompts: list, styles: list, seeds: list) -> bool:
    """Whether a sweep.json describes this very sweep (where its runs go aside)."""
    mine = {k: v for k, v in base.to_dict().items() if k not in ("out", "name", "seed")}
    theirs = {k: v for k, v in record.get("base", {}).items() if k not in ("out", "name", "seed")}
    return (record.get("prompts"), record.get("styles"), record.get("seeds"), theirs) == (
        list(prompts),
        list(styles),
        list(seeds),
        mine,
    )


def named_sweep_folder(
    base: RunConfig, prompts: list[str], styles: list[str], seeds: list[int], name: str
) -> Path:
    """The folder of the sweep called ``name`` under ``base.out``: the one there when it holds
    these very prompts, styles, seeds and settings (it continues), else a new one. A changed
    idea under the same name never continues or ranks the old sweep: it goes to NAME-2 (or
    the next free number), and a line says so."""
    k, folder = 1, Path(base.out) / name
    while (folder / SWEEP_FILE).exists():
        if _same_sweep(read_sweep(folder), base, prompts, styles, seeds):
            print(f"Continuing the sweep in {folder} (candidates already done are skipped).")
            return folder
        k += 1
        folder = Path(base.out) / f"{name}-{k}"
    if k > 1:
        print(
            f"The sweep {name!r} in {Path(base.out) / name} has another idea, styles, seeds or "
            f"settings: this one goes to {folder.name}, and the old one stays as it was."
        )
    return start_sweep(base, prompts, styles, seeds, name=folder.name)


class SweepBox:
    """Styles and seeds for the panel's prompt, a Sweep button, the ranked sheet."""

    def __init__(self, panel: PanelHost) -> None:
        self.panel = panel
        self.styles = W.Text(
            "painting, pencil drawing, watercolor",
            description="styles",
            placeholder="comma separated; empty for the bare prompt",
            layout=W.Layout(width="420px"),
        )
        self.seeds = W.Text("1, 2", description="seeds", layout=W.Layout(width="200px"))
        setattr(self.styles, TIP, "Each style is added to the prompt: one candidate per style.")
        setattr(self.seeds, TIP, "One candidate per seed for every style.")
        self.button = W.Button(description="Sweep", icon="th", layout=W.Layout(width="100px"))
        self.button.add_class("vqclip-sweep")
        self.button.on_click(lambda _: self.sweep())
        self.sheet = image_widget("vqclip-sheet", width=640)
        self.folder: Path | None = None
        self.widget = W.VBox([wrap([self.styles, self.seeds, self.button]), self.sheet])

    def sweep(self) -> bool:
        """Run the form's settings in every style and seed; False if it cannot start."""
        panel = self.panel
        config = panel.form.check()
        if config is None:
            panel.say(f"cannot sweep: {panel.form.problem_text}", "error")
            return False
        try:
            styles = [s.strip() for s in self.styles.value.split(",")]
            seeds = [int(s) for s in self.seeds.value.replace(" ", "").split(",") if s]
        except ValueError:
            panel.say(
                f"seeds must be whole numbers separated by commas, not {self.seeds.value!r}",
                "error",
            )
            return False
        name = f"{datetime.now():%Y%m%d-%H%M%S}-sweep-{slug(config.prompt)}"
        try:
            folder = start_sweep(
                config.replace(seed=None, name=None), [config.prompt], styles, seeds, name
            )
        except ConfigError as error:
            panel.say(f"cannot sweep: {error}", "error")
            return False
        self.folder, self.sheet.value = folder, b""
        total = len(read_sweep(folder)["candidates"])
        if not panel.begin(total):
            return False
        return panel.runner.start(lambda: self._work(folder, config))

    def _work(self, folder: Path, config: RunConfig) -> None:
        """On the runner: every candidate not yet done, then the ranking and the sheet."""
        panel, done = self.panel, 0

        def say(line: str) -> None:  # the queue worker's lines: one per candidate started/ended
            nonlocal done
            done += any(end in line for end in (" done at ", " stopped at ", " failed"))
            panel.progress.value = done
            panel.say(line)

        try:
            models = panel.load_models(config)
            run_sweep(folder, models, progress=False, should_stop=panel.runner.should_stop, say=say)
            rows = rank_sweep(folder, *load_judge(None, models))
            if rows:
                self.sheet.value = sheets(folder)[0].read_bytes()
            total = len(read_sweep(folder)["candidates"])
            panel.end_with(f"sweep: {len(rows)} of {total} candidates ranked: {folder}")
        except KeyboardInterrupt:
            panel.end_with(f"sweep stopped; run it again with vqclip sweep --resume {folder}")
        except Exception as error:  # shown in the panel, like a run's
            panel.error = error
            panel.end_with(f"sweep failed: {type(error).__name__}: {error}", "error")
