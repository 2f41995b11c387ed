"""What a notebook calls: ``panel(**settings)`` and ``notebook_config(**settings)``, which
honour the environment variables of headless runs and offline trials (see vqclip.ui)."""

from __future__ import annotations

import os
from typing import Any

from vqclip.config import RunConfig
from vqclip.ui import cache
from vqclip.ui.panel import Panel

AUTORUN_ENV = "VQCLIP_AUTORUN"
ITERATIONS_ENV = "VQCLIP_ITERATIONS"


def notebook_config(**overrides: Any) -> RunConfig:
    """RunConfig defaults with these overrides, as a notebook asks for them: the tiny models
    and their size under $VQCLIP_TINY_MODELS, and $VQCLIP_ITERATIONS iterations if set."""
    tiny = cache.tiny_model_settings()
    if tiny:
        overrides.update(tiny, size=list(cache.TINY_SIZE))
    if os.environ.get(ITERATIONS_ENV):
        overrides["iterations"] = int(os.environ[ITERATIONS_ENV])
    return RunConfig.from_dict(overrides)


def panel(mode: str = "auto", **config_overrides: Any) -> Panel:
    """A Panel starting from RunConfig defaults with these overrides (the notebook entry point).

    Honours $VQCLIP_TINY_MODELS, $VQCLIP_ITERATIONS and $VQCLIP_AUTORUN (see vqclip.ui).
    """
    ui = Panel(notebook_config(**config_overrides), mode=mode)
    if os.environ.get(AUTORUN_ENV) == "1":
        ui.run()
    return ui
