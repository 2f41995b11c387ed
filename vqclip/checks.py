"""ConfigError and the checks of single values every layer of the settings uses: a file
that must exist, a folder name safe everywhere, a value named in brief in a message, the
limits a run must stay within, and the model-free memory figure a too-large size is refused
with. No torch, and nothing above it in the package. The underscore helpers (``_check``,
``_about``, ``_visible``…) are shared by the settings' modules (config, settings,
validation, prompt_syntax) and are no part of the package's public surface."""

from __future__ import annotations

import math
import os
import unicodedata
from pathlib import Path
from typing import Any


class ConfigError(ValueError):
    """A setting is invalid; the message says which, why, and how to fix it.

    ``field`` names the RunConfig field it is about (None when no single one is), so the
    panel can put the message beside that field.
    """

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


MAX_SIDE = 4096  # pixels on a side; a square beyond it needs 41 GiB or more for the decoder alone
MAX_ITERATIONS = 1_000_000  # steps; days of work even on a fast GPU
MAX_CUTN = 10_000  # cutouts per step; runs use 32 to 128, and more would not fit in memory
# The default VQGAN's decoder (vqgan_imagenet_f16_16384: ch 128, ch_mult [1,1,2,2,4], 2 res
# blocks + 1 per level): channels of its up levels from full resolution down, as
# memory.estimate_peak_memory reads them from a loaded model. Kept here, without torch, so a
# size too large for any device is refused with a figure before anything loads.
_DEFAULT_DECODER_CHANNELS = (128, 128, 256, 256, 512)
_DEFAULT_DECODER_BLOCKS = 3


# The most memory one GPU holds (AMD MI355X, NVIDIA B300: 288 GB, 2025): a size whose decoder
# alone needs more fits on none.
_LARGEST_GPU_BYTES = 288 * 10**9


def _gib(count: int) -> str:
    """Bytes as 'about 41 GiB' (thousands separated); from a million GiB on, as the power of
    ten below, 'at least 10**394 GiB' (such counts can be beyond any float)."""
    whole = count // 2**30
    if whole < 10**6:
        return f"about {count / 2**30:,.0f} GiB"
    power = int(math.log10(whole))  # a float's log can be one off near a power of ten
    power += 10 ** (power + 1) <= whole
    power -= 10**power > whole
    return f"at least 10**{power} GiB"


def decoder_floor_bytes(size: list[int] | tuple[int, int]) -> int:
    """Bytes the default VQGAN's decoder holds at its peak for ``size`` at the leanest
    settings (bf16, gradient checkpointing): the memory estimate's decoder part, no models."""
    pixels = int(size[0]) * int(size[1])
    kept = sum(
        _DEFAULT_DECODER_BLOCKS * (pixels >> (2 * i)) * ch
        for i, ch in enumerate(_DEFAULT_DECODER_CHANNELS)
    )
    transient = 6 * pixels * _DEFAULT_DECODER_CHANNELS[0]
    return (kept + transient) * 2


def _memory_reason(size: list[int]) -> str:
    """What the default decoder would need at ``size``, as a clause of the too-large message;
    empty when that is under 1 GiB (a thin strip), where memory is no reason to give."""
    need = decoder_floor_bytes(size)
    if need < 2**30:
        return ""
    beyond = ", more than any GPU has" if need > _LARGEST_GPU_BYTES else ""
    return (
        f": the default VQGAN's decoder alone would need {_gib(need)} of memory for it, even in "
        f"bf16 with checkpointing{beyond}"
    )


def check_file(path: str | os.PathLike, label: str, field: str | None = None) -> None:
    """ConfigError (about ``field``) unless ``path`` names an existing file (not a folder,
    not missing)."""
    path = str(path)
    _check(
        not _control(path),
        f"{label} path {path!r} holds a control character; no file is named like that. "
        "Type the path again.",
        field,
    )
    _check(
        not Path(path).is_dir(),
        f"{label} {path!r} is a directory, not a file. Give the path of a file inside it.",
        field,
    )
    _check(
        Path(path).is_file(),
        f"{label} file {path!r} does not exist. Check the path (relative paths start from "
        f"{Path.cwd()}).",
        field,
    )


# Names Windows keeps for devices, whatever the extension: a folder "con" or "nul.txt"
# cannot be made there (runs are copied between machines, so refuse them everywhere).
_RESERVED = {"con", "prn", "aux", "nul"} | {f"{p}{i}" for p in ("com", "lpt") for i in range(10)}
_NOT_IN_NAMES = '/\\:*?"<>|'
MAX_NAME_CHARS = 100


def check_name(name: str, label: str = "name") -> str:
    """ConfigError unless ``name`` is one plain folder name, safe on every system: it cannot
    climb out of the output folder (no '/', '\\', '..'), is no device name (CON, NUL, COM1…)
    and is short; return it."""
    fix = f"Give --{label} a plain folder name such as 'lighthouse-1', or leave it out."
    _check(
        isinstance(name, str) and _visible(name),
        f"{label} {name!r} is empty or invisible. {fix}",
    )
    _check(not _control(name), f"{label} {name!r} holds a control character. {fix}")
    bad = sorted({c for c in name if c in _NOT_IN_NAMES})
    _check(
        not bad,
        f"{label} {name!r} holds {' '.join(bad)}, which a folder name cannot hold (a path "
        f"would put the run outside the output folder). {fix}",
    )
    _check(
        name == name.strip() and not name.endswith("."),
        f"{label} {name!r} starts or ends with a space or ends with a dot ('.' and '..' "
        f"name folders that already exist). {fix}",
    )
    _check(
        name.split(".")[0].strip().lower() not in _RESERVED,
        f"{label} {name!r} is a device name on Windows (CON, PRN, AUX, NUL, COM1-9, LPT1-9), "
        f"so no folder can carry it there. {fix}",
    )
    _check(
        len(name) <= MAX_NAME_CHARS,
        f"{label} is {len(name)} characters long; at most {MAX_NAME_CHARS} fit in a folder "
        f"name on every system. {fix}",
    )
    return name


def _control(text: str) -> bool:
    return any(unicodedata.category(c) == "Cc" for c in text)


def _finite(value: Any) -> bool:
    """Whether a number (check_shapes ran first: no text, no true/false) is finite."""
    try:
        return math.isfinite(value)
    except OverflowError:  # a whole number beyond any float (10**400): no finite float
        return False


def _whole(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def brief(value: Any, limit: int = 60) -> str:
    """repr(value) cut to ``limit`` characters, so a message about it stays one readable
    paragraph (a pasted list of thousands of items, a number of thousands of digits)."""
    try:
        text = repr(value)
    except ValueError:  # an int beyond Python's 4300-digit limit for printing
        return "a number of thousands of digits"
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _check(ok: bool, message: str, field: str | None = None) -> None:
    if not ok:
        raise ConfigError(message, field)


def _about(field: str, read: Any, *args: Any) -> Any:
    """``read(*args)``, with any ConfigError it raises marked as being about ``field``."""
    try:
        return read(*args)
    except ConfigError as error:
        raise ConfigError(str(error), field) from None


def _is_number(text: str) -> bool:
    try:
        return math.isfinite(float(text))
    except ValueError:
        return False


def _visible(text: str) -> bool:
    """Whether text has a character that shows (not whitespace or a zero-width mark)."""
    return any(not c.isspace() and unicodedata.category(c) not in ("Cf", "Cc") for c in text)
