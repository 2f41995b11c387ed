"""Google Colab: knowing when we are on it. No import of google.colab at module level.

Colab differs from local Jupyter in ways vqclip must follow (DESIGN.md section 8): widget
updates from a background thread are not shown there, the VM's disk is lost on disconnect,
files reach the user through ``google.colab.files.download``.
"""

from __future__ import annotations

import sys


def in_colab() -> bool:
    """Whether this kernel runs on Google Colab (its ``google.colab`` package is imported)."""
    return "google.colab" in sys.modules
