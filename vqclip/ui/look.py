"""Small pieces every part of the panel uses: labels, escaping, PNG bytes, layout boxes."""

from __future__ import annotations

import io
from typing import Any

import ipywidgets as W
from PIL import Image

LABEL_WIDTH = "120px"
# ipywidgets 8 renamed description_tooltip; Colab may still run 7.
TIP = "tooltip" if int(W.__version__.split(".")[0]) >= 8 else "description_tooltip"


def escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def png(image: Image.Image, size: int | None = None) -> bytes:
    if size is not None:
        image = image.copy()
        image.thumbnail((size, size))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def wrap(children: list[W.Widget]) -> W.Box:
    """A row that wraps onto the next line in a narrow notebook instead of cutting widgets off."""
    return W.Box(children, layout=W.Layout(flex_flow="row wrap", align_items="center"))


def image_widget(css_class: str, **options: Any) -> W.Image:
    """A PNG Image widget that is hidden while it has no picture (no broken-image icon)."""
    image = W.Image(format="png", layout=W.Layout(display="none", margin="2px"), **options)
    image.add_class(css_class)

    def toggle(change: dict) -> None:
        image.layout.display = "" if len(change["new"]) else "none"

    image.observe(toggle, "value")
    return image
