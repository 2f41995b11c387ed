"""How an animation moves: MotionConfig (frames, steps, the keyframed camera, the warp,
restyling) and keyframes, read from flags or a YAML motion file. No torch import.

A keyframe string is ``"0:1.0, 60:1.03"`` (frame: value, frames whole numbers from 0) or one
number for a constant. Between two keys the value eases linearly or smoothly (smoothstep);
before the first key it holds the first value, after the last the last.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vqclip.config import ConfigError

WARPS = ("pixel", "latent")
DEFAULT_WARP = "pixel"  # see README "Motion" and benchmarks/RESULTS.md, Motion

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


@dataclass
class MotionConfig:
    """How an animation moves. Camera values are one number or keyframes "FRAME:VALUE, ...";
    zoom > 1 comes closer each frame, pan moves the picture right/down in pixels per frame,
    rotate turns it clockwise in degrees per frame."""

    frames: int = 48
    steps_per_frame: int = 10
    first_steps: int | None = None  # frame 0's steps from the seed; None: steps_per_frame
    zoom: str | float = "1.0"
    pan_x: str | float = "0"
    pan_y: str | float = "0"
    rotate: str | float = "0"
    easing: str = "linear"  # between keyframes: linear or smooth (smoothstep)
    warp: str = DEFAULT_WARP  # pixel: warp the picture and re-encode; latent: warp the latent
    fps: float = 12.0
    init_video: str | None = None  # restyle this video: frame f starts from its frame f
    blend: float = 0.5  # weight of the new input frame against the previous result (0..1)

    def validate(self) -> MotionConfig:
        """Raise ConfigError (naming the field) for the first bad value; return self."""

        def need(ok: bool, message: str, name: str) -> None:
            if not ok:
                raise ConfigError(message, name)

        def whole(value: Any) -> bool:
            return isinstance(value, int) and not isinstance(value, bool)

        need(whole(self.frames) and 1 <= self.frames <= 100_000,
             f"frames must be a whole number from 1 to 100000, got {self.frames!r}.", "frames")  # fmt: skip
        need(whole(self.steps_per_frame) and 1 <= self.steps_per_frame <= 10_000,
             f"steps_per_frame must be a whole number from 1 to 10000, got "
             f"{self.steps_per_frame!r}; 10 is typical.", "steps_per_frame")  # fmt: skip
        need(self.first_steps is None or whole(self.first_steps) and 1 <= self.first_steps <= 1_000_000,
             f"first_steps must be a whole number from 1 to 1000000 (or empty: steps_per_frame), "
             f"got {self.first_steps!r}.", "first_steps")  # fmt: skip
        need(self.easing in EASINGS,
             f"easing must be one of {', '.join(EASINGS)}, got {self.easing!r}.", "easing")  # fmt: skip
        need(self.warp in WARPS, f"warp must be pixel or latent, got {self.warp!r}.", "warp")
        need(isinstance(self.fps, (int, float)) and not isinstance(self.fps, bool)
             and 0.1 <= self.fps <= 120,
             f"fps must be a number from 0.1 to 120, got {self.fps!r}; 12 or 24 is typical.", "fps")  # fmt: skip
        need(isinstance(self.blend, (int, float)) and not isinstance(self.blend, bool)
             and 0 <= self.blend <= 1,
             f"blend must be a number from 0 (keep the previous result) to 1 (the new input "
             f"frame alone), got {self.blend!r}; 0.5 is typical.", "blend")  # fmt: skip
        self.camera(0)  # each keyframe string readable and in range
        if self.init_video is not None:
            need(isinstance(self.init_video, str) and Path(self.init_video).is_file(),
                 f"init_video {self.init_video!r} does not exist. Check the path of the video "
                 "to restyle (MP4, GIF, WebM...).", "init_video")  # fmt: skip
        return self

    def keyframes(self) -> dict[str, Any]:
        return {
            "zoom": parse_keyframes(self.zoom, "zoom", 0.1, 10),
            "pan_x": parse_keyframes(self.pan_x, "pan_x", -4096, 4096),
            "pan_y": parse_keyframes(self.pan_y, "pan_y", -4096, 4096),
            "rotate": parse_keyframes(self.rotate, "rotate", -360, 360),
        }

    def camera(self, frame: int) -> dict[str, Any]:
        """The camera move that leads into ``frame``: zoom, pan [x, y] in px, rotate in degrees."""
        keys = {name: k.at(frame, self.easing) for name, k in self.keyframes().items()}
        return {
            "zoom": keys["zoom"],
            "pan": [keys["pan_x"], keys["pan_y"]],
            "rotate": keys["rotate"],
        }

    def steps(self, frame: int) -> int:
        return (self.first_steps or self.steps_per_frame) if frame == 0 else self.steps_per_frame

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        for name, keys in self.keyframes().items():  # one spelling in records
            data[name] = keys.text()
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MotionConfig:
        """From a mapping (a motion YAML file, animation.json's "motion"); unknown keys and
        keyframe mappings ({0: 1.0, 60: 1.03}) are handled; ConfigError when bad."""
        if not isinstance(data, dict):
            raise ConfigError(f"Motion settings must be a mapping of setting: value, got {data!r}.")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(map(str, set(data) - known))
        if unknown:
            raise ConfigError(
                f"Unknown motion setting(s): {', '.join(unknown)}. Known ones: {', '.join(sorted(known))}."
            )
        values = dict(data)
        for name in ("zoom", "pan_x", "pan_y", "rotate"):
            if isinstance(values.get(name), dict):
                values[name] = parse_keyframes(values[name], name).text()
        return cls(**values)


def read_motion_file(path: str | Path) -> MotionConfig:
    """A YAML or JSON motion file (e.g. ``zoom: {0: 1.0, 60: 1.03}``) -> MotionConfig."""
    import yaml

    file = Path(path)
    if not file.is_file():
        raise ConfigError(f"Motion file {str(path)!r} does not exist. Check the path.")
    try:
        data = yaml.safe_load(file.read_text(encoding="utf-8"))
    except (ValueError, yaml.YAMLError) as error:
        raise ConfigError(
            f"Motion file {str(path)!r} cannot be read ({' '.join(str(error).split())}). Fix "
            "it: a YAML mapping such as 'frames: 48' and 'zoom: {0: 1.0, 24: 1.03}'."
        ) from None
    return MotionConfig.from_dict(data or {})
