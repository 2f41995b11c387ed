"""The panel's steering box: new prompts for the running run, applied at its next step."""

from __future__ import annotations

from collections.abc import Callable
from html import escape

import ipywidgets as W

from vqclip.config import ConfigError
from vqclip.timeline import Steering


class SteerBox:
    """A prompt box and Apply beside the live image. While a run goes (``start``), Apply asks
    its Steering for the new prompts: refused at once with the reason if they are not usable,
    else recorded in the run's timeline at the next step (``took`` shows when)."""

    def __init__(self, show: Callable[[Callable[[], None]], None] = lambda show: show()) -> None:
        # ``show`` runs a change of the box's widgets: at once, or (a foreground run's click)
        # deferred to the run's own request, where Colab displays it (Runner.later).
        self.defer = show
        self.steering: Steering | None = None
        self.unit = "step"
        self.text = W.Textarea(
            placeholder="new prompts while it runs, e.g. a castle:1 | fog:0.5",
            layout=W.Layout(width="260px", height="64px"),
        )
        self.apply_button = W.Button(
            description="Apply", icon="random", disabled=True, layout=W.Layout(width="90px")
        )
        self.apply_button.add_class("vqclip-steer-apply")
        self.apply_button.on_click(lambda _: self.apply())
        self.status = W.HTML()
        self.status.add_class("vqclip-steer-status")
        self.widget = W.VBox([W.HTML("<b>Steer</b>"), self.text, self.apply_button, self.status])
        self.widget.add_class("vqclip-steer")

    def start(self, prompt: str, unit: str = "step") -> Steering:
        """A run starts with ``prompt``: a new Steering for it, the box holding its prompt.
        ``unit`` is when a change applies: the next "step" of a run, "frame" of an animation."""
        self.steering, self.unit = Steering(), unit
        self.text.value = prompt
        self.apply_button.disabled = False
        self.status.value = ""
        return self.steering

    def end(self) -> None:
        self.steering = None
        self.apply_button.disabled = True

    def apply(self) -> bool:
        """Send the box's prompts to the running run; False (and the reason shown) if refused."""
        if self.steering is None:
            self._show("no run is going: press Run, then steer it here", error=True)
            return False
        try:
            line = self.steering.steer(self.text.value)
        except ConfigError as error:
            self._show(f"not applied: {error}", error=True)
            return False
        self._show(f"asked: {line} (applies at the next {self.unit})")
        return True

    def took(self, at: int, lines: tuple[str, ...]) -> None:
        """The run recorded ``lines`` at iteration (an animation: frame) ``at``."""
        where = "frame" if self.unit == "frame" else "iteration"
        self._show(f"in force from {where} {at}: " + "; ".join(lines))

    def _show(self, text: str, error: bool = False) -> None:
        color = "#c0392b" if error else "inherit"
        html = f'<small style="color:{color}">{escape(text)}</small>'
        self.defer(lambda: setattr(self.status, "value", html))
