"""vqclip: text to image with VQGAN + CLIP, made to watch the image evolve.

Three lines in a notebook::

    import vqclip
    models = vqclip.load_models(vqclip.RunConfig())          # once per session
    result = vqclip.generate(vqclip.RunConfig(prompt="a unicorn"), models)

Names load on first use, so ``import vqclip`` itself is quick and has no side effects.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.2.0"

_HOME = {
    "RunConfig": "vqclip.config",
    "load_models": "vqclip.models",
    "make_tiny_models": "vqclip.models",
    "Models": "vqclip.models",
    "run": "vqclip.engine",
    "Step": "vqclip.engine",
    "generate": "vqclip.observers",
    "resume": "vqclip.observers",
    "branch": "vqclip.observers",
    "reproduce": "vqclip.observers",
}
__all__ = ["__version__", *_HOME]


def __getattr__(name: str) -> Any:
    if name not in _HOME:
        raise AttributeError(f"module 'vqclip' has no attribute {name!r}")
    return getattr(importlib.import_module(_HOME[name]), name)


def __dir__() -> list[str]:
    return sorted(__all__)
