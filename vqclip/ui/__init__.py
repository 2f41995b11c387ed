"""The notebook panel: a form generated from the settings, Run and Stop, a live image,
progress, a loss/similarity plot, a snapshot gallery with a scrubber, uploads, export,
downloads and resume. The only vqclip package that imports ipywidgets or IPython.

Three lines in a notebook::

    from vqclip.ui import panel
    ui = panel(prompt="a lighthouse:1 | fog:0.5")
    ui

Parts: ``form`` (one widget per setting, from vqclip.config.settings()), ``gallery``
(snapshots, scrubber, plot), ``live`` (the observer that shows a run as it goes), ``steer``
(new prompts for the running run), ``files`` (uploads, export, downloads, the runs on disk
and Resume), ``sweep_tab`` (the sweep), ``runner`` (foreground or background runs, Stop),
``panel`` (the layout and what Run does), ``notebook`` (``panel()`` and
``notebook_config()``, what notebooks call), ``cache`` (models loaded once per kernel).

Environment variables (for offline trials, tests and headless notebook runs):

- ``VQCLIP_TINY_MODELS=DIR``: use the tiny random models in DIR (made there if missing); the
  panel says so in a banner, since they paint noise, not pictures.
- ``VQCLIP_AUTORUN=1``: ``panel()`` presses Run at once (notebooks executed without a person).
- ``VQCLIP_ITERATIONS=N``: ``panel()`` runs N iterations, whatever the notebook asks for.
"""

from vqclip.ui.cache import TINY_BANNER, TINY_ENV, TINY_SIZE, cached_models, tiny_model_settings
from vqclip.ui.notebook import AUTORUN_ENV, ITERATIONS_ENV, notebook_config, panel
from vqclip.ui.panel import Panel
from vqclip.ui.runner import MODES

__all__ = [
    "AUTORUN_ENV",
    "ITERATIONS_ENV",
    "MODES",
    "TINY_BANNER",
    "TINY_ENV",
    "TINY_SIZE",
    "Panel",
    "cached_models",
    "notebook_config",
    "panel",
    "tiny_model_settings",
]
