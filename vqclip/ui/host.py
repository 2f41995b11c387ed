"""What the panel's boxes that run work of their own (the sweep, the motion) use of the panel
they sit in: its public side, so that no box imports the panel and no box calls its private
methods."""

from __future__ import annotations

from typing import Protocol

import ipywidgets as W

from vqclip.config import RunConfig
from vqclip.models import Models
from vqclip.ui.form import Form
from vqclip.ui.runner import Runner
from vqclip.ui.steer import SteerBox


class PanelHost(Protocol):
    """The form, the runner, the shared views and how a job begins and ends."""

    form: Form
    runner: Runner
    progress: W.IntProgress
    progress_text: W.HTML
    live_image: W.Image
    steer_box: SteerBox
    error: BaseException | None

    def say(self, text: str, kind: str = "info") -> None: ...

    def begin(self, iterations: int) -> bool: ...

    def load_models(self, config: RunConfig) -> Models: ...

    def end_with(self, text: str, kind: str = "info") -> None: ...
