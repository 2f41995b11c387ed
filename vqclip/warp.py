"""Camera moves for animations: keyframed values and the affine warp of a picture or latent.

A keyframe string is ``"0:1.0, 60:1.03"`` (frame: value, frames whole numbers from 0) or one
number for a constant. Between two keys the value eases linearly or smoothly (smoothstep);
before the first key it holds the first value, after the last the last.

``affine_warp`` moves a picture [B, C, H, W] by one frame's camera: zoom about the centre
(> 1 comes closer), pan in pixels (the picture moves right and down), rotate in degrees
(clockwise on screen). Pure tensor maths, every tensor on the input's device.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from vqclip.config import ConfigError

EASINGS = ("linear", "smooth")
_KEY = re.compile(r"^\s*(\d+)\s*:\s*([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)\s*$")


@dataclass(frozen=True)
class Keyframes:
    """Values at chosen frames, eased in between. ``keys``: (frame, value) sorted by frame."""

    keys: tuple[tuple[int, float], ...]

    def at(self, frame: float, easing: str = "linear") -> float:
        """The value at ``frame`` (held before the first key and after the last)."""
        keys = self.keys
        if frame <= keys[0][0]:
            return keys[0][1]
        for (f0, v0), (f1, v1) in zip(keys, keys[1:]):
            if frame <= f1:
                t = (frame - f0) / (f1 - f0)
                if easing == "smooth":
                    t = t * t * (3 - 2 * t)  # smoothstep: no jolt at either key
                return v0 + (v1 - v0) * t
        return keys[-1][1]

    def text(self) -> str:
        """The keyframes as ``parse_keyframes`` reads them back."""
        if len(self.keys) == 1 and self.keys[0][0] == 0:
            return _number(self.keys[0][1])
        return ", ".join(f"{f}:{_number(v)}" for f, v in self.keys)


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def parse_keyframes(
    value: Any, name: str, low: float = -math.inf, high: float = math.inf
) -> Keyframes:
    """ "0:1.0, 60:1.03", a number, or a mapping {frame: value} -> Keyframes; ConfigError
    naming ``name`` with how to write one when it is not that, or a value lies outside
    [low, high]."""
    how = (
        f"Write {name} as one number (e.g. 1.02) or as keyframes 'FRAME:VALUE, FRAME:VALUE' "
        f"(e.g. '0:1.0, 60:1.03'), frames whole numbers from 0."
    )
    keys: dict[int, float] = {}
    if isinstance(value, bool):
        raise ConfigError(f"{name} is {value!r}, not a number. {how}", name)
    if isinstance(value, (int, float)):
        keys[0] = float(value)
    elif isinstance(value, Mapping):
        for frame, item in value.items():
            try:
                frame_n, item_f = int(str(frame)), float(item)
            except (TypeError, ValueError):
                raise ConfigError(f"{name} has the key {frame!r}: {item!r}. {how}", name) from None
            if frame_n < 0 or isinstance(item, bool):
                raise ConfigError(f"{name} has the key {frame!r}: {item!r}. {how}", name)
            keys[frame_n] = item_f
    elif isinstance(value, str) and _is_number(value):
        keys[0] = float(value)
    elif isinstance(value, str) and value.strip():
        for part in value.split(","):
            match = _KEY.match(part)
            if match is None:
                raise ConfigError(
                    f"{name} {value.strip()!r} is not keyframes: {part.strip()!r} is not "
                    f"'FRAME:VALUE'. {how}",
                    name,
                )
            frame_n = int(match[1])
            if frame_n in keys:
                raise ConfigError(
                    f"{name} {value.strip()!r} gives frame {frame_n} twice. {how}", name
                )
            keys[frame_n] = float(match[2])
    elif not isinstance(value, str):
        raise ConfigError(f"{name} is {value!r}. {how}", name)
    if not keys:
        raise ConfigError(f"{name} is empty. {how}", name)
    for frame, item in keys.items():
        if not (math.isfinite(item) and low <= item <= high):
            raise ConfigError(
                f"{name} is {item:g} at frame {frame}; it must lie between {low:g} and {high:g}.",
                name,
            )
    return Keyframes(tuple(sorted(keys.items())))


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def camera_matrix(
    zoom: float,
    pan: tuple[float, float],
    rotate: float,
    size: tuple[int, int],
    device: torch.device,
) -> torch.Tensor:
    """The [1, 2, 3] matrix F.affine_grid takes: for each output pixel (normalised coords),
    where to read the input so the picture is zoomed, rotated about its centre and panned
    by ``pan`` pixels of a ``size`` = (W, H) picture."""
    width, height = size
    angle = math.radians(rotate)
    cos, sin = math.cos(angle) / zoom, math.sin(angle) / zoom
    # In pixel units about the centre: p_in = R(-angle) (p_out - pan) / zoom; y points down,
    # so a positive angle turns the picture clockwise on screen.
    m = torch.tensor([[cos, sin], [-sin, cos]], dtype=torch.float64, device=device)
    n = torch.tensor([width / 2, height / 2], dtype=torch.float64, device=device)
    a = m * n[None, :] / n[:, None]  # N^-1 M N, N = diag(W/2, H/2): normalised coords
    shift = torch.tensor(pan, dtype=torch.float64, device=device)
    b = -(m @ shift) / n
    return torch.cat([a, b[:, None]], dim=1)[None].float()  # [1, 2, 3]


def is_still(zoom: float, pan: tuple[float, float], rotate: float) -> bool:
    return zoom == 1 and pan[0] == 0 and pan[1] == 0 and rotate == 0


def affine_warp(
    image: torch.Tensor, zoom: float, pan: tuple[float, float], rotate: float, scale: float = 1.0
) -> torch.Tensor:
    """[B, C, H, W] moved by the camera (bilinear; edges reflected). ``scale`` is the size of
    one element in pixels (a latent cell of an f16 VQGAN is 16): pan stays in pixels."""
    if is_still(zoom, pan, rotate):
        return image.clone()  # exactly the same picture, not a resampled one
    b, _, h, w = image.shape
    theta = camera_matrix(zoom, (pan[0] / scale, pan[1] / scale), rotate, (w, h), image.device)
    grid = F.affine_grid(theta.expand(b, 2, 3), [b, image.shape[1], h, w], align_corners=False)
    out = F.grid_sample(
        image.float(), grid, mode="bilinear", padding_mode="reflection", align_corners=False
    )
    return out.to(image.dtype)
