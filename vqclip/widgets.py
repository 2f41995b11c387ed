"""The notebook panel's earlier home: ``from vqclip.widgets import panel`` keeps working.
The panel lives in vqclip.ui (form, gallery, runner, panel)."""

from vqclip.ui import *  # noqa: F403
from vqclip.ui import __all__  # noqa: F401
