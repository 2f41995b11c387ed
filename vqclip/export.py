"""Turn images and run directories into shareable files: PNG with recipe, GIF/MP4, strips, sheets.

Every file goes through ``state.atomic_path``, so a kill mid-write leaves the old file or the
new one, never a torn one. The recipe (prompt, seed, settings, models, iteration) travels
inside each file: PNG text chunks, the GIF comment extension, the MP4 ``comment`` tag.
No torch import: tensors are handled by duck typing, so this module stays cheap to import.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import re
import textwrap
import warnings
from collections.abc import Iterable, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont, ImageOps, UnidentifiedImageError
from PIL.PngImagePlugin import PngInfo

from vqclip.config import ConfigError, RunConfig
from vqclip.credentials import LOCAL, Signing, sign_file
from vqclip.ensemble import clip_label
from vqclip.state import atomic_path, check_record

__all__ = [
    "ExportError",
    "comparison_strip",
    "contact_sheet",
    "export_run",
    "format_parameters",
    "label_image",
    "list_snapshots",
    "make_gif",
    "make_mp4",
    "read_recipe",
    "save_png",
    "to_pil",
]

MACHINE_NOTE = "Machine-generated image: made by vqclip (VQGAN + CLIP), not a photograph."
_SNAPSHOT_NAME = re.compile(r"(\d{6,})\.png")  # 000050.png; temp files start with "."

# Recipe config key -> label in the human-readable `parameters` text, in display order.
_PARAMETER_LABELS = [
    ("seed", "Seed"),
    ("size", "Size"),
    ("vqgan", "Model"),
    ("clip_model", "CLIP"),
    ("optimizer", "Optimizer"),
    ("lr", "LR"),
    ("cutn", "Cutouts"),
    ("cut_pow", "Cut pow"),
    ("augment", "Augment"),
    ("tv_weight", "TV weight"),
    ("latent_init", "Latent init"),
    ("init_image", "Init image"),
    ("init_weight", "Init weight"),
    ("image_prompts", "Image prompts"),
    ("precision", "Precision"),
]


class ExportError(ValueError):
    """An export could not be made; the message says what was wrong and what to do."""


# --- images ---------------------------------------------------------------------------------


def to_pil(image: Any) -> Image.Image:
    """PIL image, path, HxWx3 array (uint8, or float in [0, 1]) or [3,H,W] tensor -> RGB PIL."""
    if isinstance(image, Image.Image):
        return image if image.mode == "RGB" else image.convert("RGB")
    if isinstance(image, (str, os.PathLike)):
        with Image.open(image) as im:
            return im.convert("RGB")
    if hasattr(image, "detach"):  # a torch tensor, [3, H, W] or [1, 3, H, W], values in [0, 1]
        array = image.detach().float().cpu().numpy()
        if array.ndim == 4 and array.shape[0] == 1:
            array = array[0]
        if array.ndim != 3 or array.shape[0] != 3:
            raise ExportError(
                f"Cannot make an image from a tensor of shape {tuple(array.shape)}: expected "
                "[3, H, W] (or [1, 3, H, W]) with values in [0, 1]."
            )
        image = array.transpose(1, 2, 0)  # [H, W, 3]
    array = np.asarray(image)
    if array.dtype.kind == "f":
        array = (np.clip(np.nan_to_num(array), 0.0, 1.0) * 255).round().astype(np.uint8)
    shape_ok = array.ndim == 2 or (array.ndim == 3 and array.shape[2] in (3, 4))
    if array.dtype != np.uint8 or not shape_ok:
        raise ExportError(
            f"Cannot make an image from an array of shape {array.shape} and dtype {array.dtype}: "
            "expected HxWx3 uint8, or float values in [0, 1]."
        )
    return Image.fromarray(array).convert("RGB")


# Fonts for labels and captions: DejaVu Sans (shipped with matplotlib, a dependency; wide
# coverage: accents, Greek, Cyrillic, symbols), else Pillow's bundled font (ASCII only); emoji
# from Noto Emoji (monochrome, SIL Open Font License; vqclip/fonts/ with its licence, shipped as
# package data so a pip-installed vqclip, as on Colab, draws emoji too).
EMOJI_FONT = Path(__file__).resolve().parent / "fonts" / "NotoEmoji-Regular.ttf"
_JOINERS = {0x200D, 0xFE0F, 0x20E3} | set(range(0x1F3FB, 0x1F400)) | set(range(0xE0020, 0xE0080))


def _text_font_path() -> Path | None:
    spec = importlib.util.find_spec("matplotlib")  # found, not imported (slow to import)
    for folder in (spec.submodule_search_locations or []) if spec else []:
        path = Path(folder) / "mpl-data" / "fonts" / "ttf" / "DejaVuSans.ttf"
        if path.is_file():
            return path
    return None


@lru_cache(maxsize=4)
def _coverage(path: Path | None) -> frozenset[int]:
    """The code points a font file draws (empty when unknown)."""
    if path is None:
        return frozenset()
    try:
        from fontTools.ttLib import TTFont  # matplotlib's dependency

        with TTFont(path, lazy=True) as font:
            return frozenset(font.getBestCmap() or {})
    except Exception:  # no fontTools, or a damaged file: treat as covering nothing extra
        return frozenset()


class _Writer:
    """Draws text in the text font, switching to the emoji font for the characters only it
    has (so "Oregon 💚" shows a heart, not a box). Lengths in pixels."""

    def __init__(self, size: int) -> None:
        self.size = size
        path = _text_font_path()
        self.main = (
            ImageFont.truetype(str(path), size) if path else ImageFont.load_default(size=size)
        )
        self.main_has = _coverage(path)
        self.emoji = ImageFont.truetype(str(EMOJI_FONT), size) if EMOJI_FONT.is_file() else None
        self.emoji_has = _coverage(EMOJI_FONT) if self.emoji else frozenset()
        ascent, descent = self.main.getmetrics()
        self.ascent, self.line_height = ascent, ascent + descent

    def _emoji(self, text: str, k: int) -> bool:
        code = ord(text[k])
        if self.emoji is None or code not in self.emoji_has:
            return False
        emoji_style = text[k + 1 : k + 2] == "\ufe0f"  # "❤️": the emoji, not the text sign
        if not self.main_has:  # the text font's coverage is unknown: emoji lie past U+2000
            return code >= 0x2000 or emoji_style
        return code >= 0x1F000 or code not in self.main_has or emoji_style

    def runs(self, text: str) -> list[tuple[str, Any]]:
        """The text cut into pieces of one font each."""
        runs: list[tuple[str, Any]] = []
        for k, char in enumerate(text):
            joins = ord(char) in _JOINERS and runs and runs[-1][1] is self.emoji
            font = self.emoji if joins or self._emoji(text, k) else self.main
            if runs and runs[-1][1] is font:
                runs[-1] = (runs[-1][0] + char, font)
            else:
                runs.append((char, font))
        return runs

    def length(self, text: str) -> float:
        return sum(font.getlength(run) for run, font in self.runs(text))

    def draw(
        self, draw: ImageDraw.ImageDraw, xy: tuple[float, float], text: str, fill: Any
    ) -> None:
        """``text`` with its top-left at ``xy`` (every run on one baseline)."""
        x, baseline = xy[0], xy[1] + self.ascent
        for run, font in self.runs(text):
            draw.text((x, baseline), run, font=font, fill=fill, anchor="ls")
            x += font.getlength(run)


@lru_cache(maxsize=16)
def _font(size: int) -> _Writer:
    return _Writer(size)


def label_image(image: Any, text: str) -> Image.Image:
    """A copy of ``image`` with ``text`` burnt into its bottom-left corner on a dark box."""
    base = to_pil(image).convert("RGBA")
    size = max(8, round(min(base.size) / 14))  # ~18 px on a 256 px image
    writer, margin = _font(size), max(1, size // 3)
    overlay = Image.new("RGBA", base.size, (0, 0, 0, 0))
    draw = ImageDraw.Draw(overlay)
    width, height = writer.length(text), writer.line_height
    x, y = 2 * margin, base.height - 2 * margin - height  # box sits `margin` in
    draw.rectangle((x - margin, y - margin, x + width + margin, y + height + margin),
                   fill=(0, 0, 0, 170))  # translucent, so the picture still shows  # fmt: skip
    writer.draw(draw, (x, y), text, fill=(255, 255, 255, 255))
    return Image.alpha_composite(base, overlay).convert("RGB")


# --- PNG with recipe ------------------------------------------------------------------------


def _software() -> str:
    import vqclip  # late: the package __init__ may import this module

    return f"vqclip {vqclip.__version__}"


def _json(recipe: dict, ascii_only: bool = False) -> str:
    # default=str: a stray Path or enum in a recipe must not make the save fail.
    return json.dumps(recipe, ensure_ascii=ascii_only, default=str, separators=(",", ":"))


def _value(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        value = " | ".join(map(str, value))
    text = str(value)
    # Quote like other tools do, so "k: v, k: v" stays parseable when a value holds , or :
    return json.dumps(text, ensure_ascii=False) if re.search(r"[,:\n]", text) else text


def format_parameters(recipe: dict) -> str:
    """Recipe dict -> 'prompt\\nSteps: 300, Seed: 7, Size: 256x256, …' (missing keys skipped)."""
    config = recipe.get("config") or {}
    models = recipe.get("models") or {}
    versions = recipe.get("versions") or {}
    fields: list[tuple[str, Any]] = []
    iteration, total = recipe.get("iteration"), config.get("iterations")
    fields.append(("Steps", iteration if iteration is not None else total))
    if iteration is not None and total is not None and total != iteration:
        fields.append(("Total steps", total))
    for key, label in _PARAMETER_LABELS:
        value = config.get(key)
        if key == "size" and isinstance(value, (list, tuple)) and len(value) == 2:
            value = f"{value[0]}x{value[1]}"
        elif key == "vqgan" and config.get("vqgan_checkpoint"):  # local files: name the file
            value = Path(config["vqgan_checkpoint"]).name
        elif key == "clip_model" and value:
            value = clip_label(str(value))
        elif key == "precision":  # the precision actually used, not "auto"
            value = recipe.get("precision") or value
        fields.append((label, value))
    for key, label, role in (("vqgan", "Model hash", "checkpoint"), ("clip", "CLIP hash", None)):
        digests = (
            (models.get(key) or {}).get("sha256") if isinstance(models.get(key), dict) else None
        )
        if isinstance(digests, dict) and digests:  # role -> sha256, as models.ModelInfo has it
            digests = digests.get(role) or next(iter(digests.values()))
        if digests:
            fields.append((label, str(digests)[:10]))
    if versions.get("vqclip"):
        fields.append(("Version", f"vqclip {versions['vqclip']}"))
    line = ", ".join(f"{k}: {_value(v)}" for k, v in fields if v not in (None, "", [], ()))
    prompt = str(config.get("prompt") or "")
    return f"{prompt}\n{line}" if line else prompt


def save_png(
    image: Any,
    path: str | os.PathLike,
    recipe: dict | None = None,
    parameters: str | None = None,
    credentials: Signing | None = LOCAL,
) -> Path:
    """Write ``image`` as an RGB PNG atomically, with the recipe and a readable summary inside,
    signed last with a C2PA content credential (``credentials=None``: unsigned)."""
    info = PngInfo()
    if recipe is not None:
        info.add_itxt("vqclip", _json(recipe))  # iTXt is UTF-8: emoji prompts survive
        if parameters is None:
            parameters = format_parameters(recipe)
    if parameters:
        info.add_text("parameters", parameters)  # tEXt when Latin-1, else iTXt
    info.add_text("Software", _software())
    info.add_text("Comment", MACHINE_NOTE)
    picture = to_pil(image)
    with atomic_path(path) as tmp:
        picture.save(tmp, format="PNG", pnginfo=info)
        sign_file(tmp, recipe, credentials, "image/png", Path(path).name)  # the last write
    return Path(path)


def read_recipe(path: str | os.PathLike) -> dict:
    """The recipe stored in a PNG by ``save_png``; ExportError if there is none or it is broken."""
    hint = "Use the original file from the run directory (or its run.json) to recover the settings."
    if Path(path).is_dir():
        raise ExportError(f"{path} is a directory, not a PNG. Give a PNG file inside it.")
    if not Path(path).is_file():
        raise ExportError(f"{path} does not exist. Check the path of the PNG.")
    try:
        with Image.open(path) as im:
            kind = im.format
            text = im.text.get("vqclip") if kind == "PNG" else None
    except UnidentifiedImageError as err:
        raise ExportError(
            f"{path} is not an image (Pillow cannot identify it), so it holds no vqclip recipe. "
            "Pass a PNG written by vqclip, such as a snapshot or final.png of a run."
        ) from err
    except (OSError, SyntaxError, ValueError) as err:
        raise ExportError(f"{path} is a damaged PNG and cannot be read ({err}). {hint}") from err
    if kind != "PNG":
        raise ExportError(
            f"{path} is a {kind} image, not a PNG; vqclip keeps its recipe only in PNG text "
            f"chunks, and converting to {kind} drops it. {hint}"
        )
    if text is None:
        raise ExportError(
            f"{path} is a PNG without a vqclip recipe (no 'vqclip' text chunk): it was not made "
            "by vqclip, or an editor or upload site stripped its metadata. " + hint
        )
    try:
        recipe = json.loads(text)
    except ValueError as err:  # corrupt JSON, or a number of more than 4300 digits
        raise ExportError(
            f"{path} has a 'vqclip' text chunk but its JSON is corrupt ({err}); the file was "
            f"damaged or edited by hand. {hint}"
        ) from err
    if not isinstance(recipe, dict):
        raise ExportError(f"{path} has a 'vqclip' chunk that is not a JSON object. {hint}")
    # the shape run.json is checked with: every key vqclip writes holds what it writes
    return check_record(recipe, str(path), ExportError, hint, ("config", "iteration"))


# --- runs and animations --------------------------------------------------------------------


def list_snapshots(run_dir: str | os.PathLike) -> list[tuple[int, Path]]:
    """(iteration, path) of every snapshot in RUN/snapshots, sorted by iteration."""
    folder = Path(run_dir) / "snapshots"
    if not folder.is_dir():
        return []
    found = ((_SNAPSHOT_NAME.fullmatch(p.name), p) for p in folder.iterdir())
    return sorted((int(m[1]), p) for m, p in found if m and p.is_file())


def _frames(
    frames: Iterable[Any], labels: Sequence[str] | None, fps: float, hold_last: float
) -> list[Image.Image]:
    if not fps > 0 or not hold_last >= 0:
        raise ExportError(f"Need fps > 0 and hold_last >= 0 seconds; got fps={fps}, {hold_last=}.")
    images = [to_pil(f) for f in frames]
    if not images:
        raise ExportError("No frames to animate: pass at least one image or snapshot path.")
    if labels is not None and len(labels) != len(images):
        raise ExportError(f"Got {len(labels)} labels for {len(images)} frames; give one per frame.")
    size = images[0].size  # one size for all: a writer needs it, snapshots normally share it
    images = [im if im.size == size else im.resize(size, Image.Resampling.LANCZOS) for im in images]
    if labels is not None:
        images = [label_image(im, text) for im, text in zip(images, labels, strict=True)]
    return images


def _dithered(image: Image.Image) -> Image.Image:
    """RGB -> 256-colour P image with its own palette, dithered (Pillow's default bands)."""
    palette = image.quantize(256, method=Image.Quantize.MEDIANCUT)
    return image.quantize(palette=palette, dither=Image.Dither.FLOYDSTEINBERG)


def make_gif(
    frames: Iterable[Any],
    path: str | os.PathLike,
    fps: float = 10,
    loop: int = 0,
    hold_last: float = 1.0,
    labels: Sequence[str] | None = None,
    metadata: dict | None = None,
    credentials: Signing | None = LOCAL,
) -> Path:
    """Write an animated GIF atomically; the last frame stays ``hold_last`` s longer. Signed
    last with a C2PA content credential holding ``metadata`` (``credentials=None``: unsigned)."""
    images = [_dithered(im) for im in _frames(frames, labels, fps, hold_last)]
    # One frame per image and a longer last frame: Pillow would merge repeated frames anyway.
    frame_ms = round(1000 / fps)
    durations = [frame_ms] * len(images)
    durations[-1] += round(hold_last * 1000)
    extra = {"comment": _json(metadata, ascii_only=True).encode()} if metadata else {}
    with atomic_path(path) as tmp:
        images[0].save(
            tmp,
            format="GIF",
            save_all=True,
            append_images=images[1:],
            duration=durations,
            loop=loop,
            **extra,
        )
        sign_file(tmp, metadata, credentials, "image/gif", Path(path).name)  # the last write
    return Path(path)


def make_mp4(
    frames: Iterable[Any],
    path: str | os.PathLike,
    fps: float = 10,
    hold_last: float = 1.0,
    labels: Sequence[str] | None = None,
    metadata: dict | None = None,
    credentials: Signing | None = LOCAL,
    filters: str | None = None,
) -> Path:
    """Write an H.264 MP4 atomically (bundled ffmpeg); the last frame repeats for ``hold_last``
    s. Signed last with a C2PA content credential (``credentials=None``: unsigned).
    ``filters``: an ffmpeg video filter chain applied on the way (e.g. minterpolate)."""
    import imageio.v3 as iio  # late: only MP4 export needs imageio/ffmpeg

    arrays = [np.asarray(im) for im in _frames(frames, labels, fps, hold_last)]
    h, w = arrays[0].shape[:2]
    # H.264 with yuv420p needs even sides: repeat the edge row/column rather than rescale.
    arrays = [np.pad(a, ((0, h % 2), (0, w % 2), (0, 0)), mode="edge") for a in arrays]
    arrays += [arrays[-1]] * round(hold_last * fps)
    params = ["-crf", "18", "-movflags", "+faststart", "-f", "mp4"]  # -f: the temp name ends .tmp
    if filters:
        params += ["-vf", filters]
    if metadata:
        params += ["-metadata", f"comment={_json(metadata)}"]
    with atomic_path(path) as tmp:
        iio.imwrite(
            tmp,
            arrays,
            plugin="FFMPEG",
            extension=".mp4",
            fps=fps,
            codec="libx264",
            pixelformat="yuv420p",
            quality=None,  # quality is set by -crf above
            macro_block_size=2,  # sizes are already even; stops imageio rescaling to 16
            ffmpeg_log_level="error",
            output_params=params,
        )
        sign_file(tmp, metadata, credentials, "video/mp4", Path(path).name)  # the last write
    return Path(path)


def _run_recipe(run_dir: Path, snapshots: list[tuple[int, Path]]) -> dict | None:
    """The run's recipe: from its last snapshot's PNG, else run.json, else None."""
    if snapshots:
        try:
            return read_recipe(snapshots[-1][1])
        except (ExportError, OSError):
            pass
    try:
        data = json.loads((run_dir / "run.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _no_snapshots(run_dir: Path) -> ExportError:
    return ExportError(
        f"No snapshots in {run_dir / 'snapshots'} (files named like 000050.png), so there is "
        "nothing to show. Check the run directory, or run again with a snapshot schedule such "
        "as --snapshots '10,25,50,100,every:100,last'."
    )


def export_run(
    run_dir: str | os.PathLike,
    gif: bool = True,
    mp4: bool = False,
    fps: float = 10,
    hold_last: float = 1.0,
    label: bool = True,
    prompts: bool = False,
    credentials: Signing | None = LOCAL,
) -> list[Path]:
    """Animate a run's snapshots into RUN/animation.gif and/or RUN/animation.mp4, each frame
    labelled with its iteration (``label``) and the text prompts in force (``prompts``: a
    prompt timeline changes them), each file signed with a content credential
    (``credentials=None``: unsigned)."""
    run = Path(run_dir)
    snapshots = list_snapshots(run)
    if not snapshots:
        raise _no_snapshots(run)
    frames = [to_pil(p) for _, p in snapshots]
    labels = None
    if label or prompts:
        labels = [
            " · ".join(
                [f"it {i}"] * label + [_prompts_in_force(path, i, PROMPT_LABEL_CHARS)] * prompts
            )
            for i, path in snapshots
        ]
    recipe = _run_recipe(run, snapshots)
    options = {"fps": fps, "hold_last": hold_last, "labels": labels, "metadata": recipe}
    options["credentials"] = credentials
    written = []
    if gif:
        written.append(make_gif(frames, run / "animation.gif", **options))
    if mp4:
        written.append(make_mp4(frames, run / "animation.mp4", **options))
    return written


PROMPT_LABEL_CHARS = 48  # a longer prompt is cut with "…" to stay on the frame


def _prompts_in_force(path: Path, iteration: int, limit: int) -> str:
    """The text prompts a snapshot was made toward (its recipe's, at its iteration)."""
    try:
        config = RunConfig.from_dict(read_recipe(path)["config"])
    except (ExportError, ConfigError, KeyError, TypeError):  # a PNG without a usable recipe
        return "?"
    text = " | ".join(p.strip() for p in config.prompts_at(iteration).prompt.split("|"))
    return text if len(text) <= limit else text[: limit - 1] + "…"


# --- strips and sheets ----------------------------------------------------------------------


def comparison_strip(
    run_dir: str | os.PathLike,
    at: Sequence[int] | None = None,
    path: str | os.PathLike | None = None,
    columns: int | None = None,
    title: str | None = None,
    credentials: Signing | None = LOCAL,
) -> Path:
    """Chosen snapshots side by side (a grid when many), labelled by iteration, as one PNG
    signed with a content credential (``credentials=None``: unsigned)."""
    # Figure + FigureCanvasAgg directly: never touches the global backend (notebooks keep theirs).
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    run = Path(run_dir)
    snapshots = list_snapshots(run)
    if not snapshots:
        raise _no_snapshots(run)
    by_iteration = dict(snapshots)
    chosen = list(dict.fromkeys(at)) if at is not None else sorted(by_iteration)
    missing = [i for i in chosen if i not in by_iteration]
    if missing or not chosen:
        raise ExportError(
            f"No snapshot at iteration(s) {', '.join(map(str, missing)) or '(none asked)'} in "
            f"{run}. Snapshots exist at: {', '.join(map(str, sorted(by_iteration)))}. Choose "
            "from those, or run again with a schedule that keeps the ones you want."
        )
    if title is None:
        title = str(((_run_recipe(run, snapshots) or {}).get("config") or {}).get("prompt") or "")
    images = [to_pil(by_iteration[i]) for i in chosen]
    n = len(images)
    cols = columns or math.ceil(n / math.ceil(n / 6))  # at most 6 across, rows balanced
    rows = math.ceil(n / cols)
    w, h = images[0].size
    panel = max(2.0, w / 100)  # inches; at dpi 100 a panel shows the snapshot near 1:1
    fig = Figure(
        figsize=(cols * panel, rows * (panel * h / w + 0.4) + (0.5 if title else 0.1)),
        dpi=100,
        layout="constrained",
    )
    FigureCanvasAgg(fig)
    for ax, iteration, im in zip(fig.subplots(rows, cols, squeeze=False).flat, chosen, images):
        ax.imshow(im)
        ax.set_title(f"it {iteration}")
    for ax in fig.axes:
        ax.axis("off")
    if title:  # wrapped to the figure's width (~8 px a character), never cut
        wrap = max(20, int(cols * panel * 100 / 8))
        fig.suptitle(textwrap.fill(title, wrap), fontfamily=_matplotlib_fonts())
    out = Path(path) if path is not None else run / f"strip_{'_'.join(map(str, chosen))}.png"
    with atomic_path(out) as tmp, warnings.catch_warnings():
        # A glyph neither font has is drawn as a box, not worth a warning.
        warnings.filterwarnings("ignore", message="Glyph .* missing from font")
        fig.savefig(tmp, format="png", metadata={"Software": _software(), "Comment": MACHINE_NOTE})
        sign_file(tmp, None, credentials, "image/png", out.name)  # the last write
    return out


@lru_cache(maxsize=1)
def _matplotlib_fonts() -> list[str]:
    """Font families for matplotlib text: DejaVu Sans, falling back to Noto Emoji."""
    if not EMOJI_FONT.is_file():
        return ["DejaVu Sans"]
    from matplotlib import font_manager

    font_manager.fontManager.addfont(str(EMOJI_FONT))
    return ["DejaVu Sans", font_manager.FontProperties(fname=EMOJI_FONT).get_name()]


def _caption_lines(text: str, writer: _Writer, width: float) -> list[str]:
    """Greedy word wrap to ``width`` pixels; a word wider than a line is broken between
    characters. Nothing is cut: every character of ``text`` is on some line."""
    lines: list[str] = []
    for word in text.split():
        trial = f"{lines[-1]} {word}" if lines else word
        if lines and writer.length(trial) <= width:
            lines[-1] = trial
            continue
        while len(word) > 1 and writer.length(word) > width:
            cut = 1  # the longest head of the word that fits (at least one character)
            while cut < len(word) and writer.length(word[: cut + 1]) <= width:
                cut += 1
            lines.append(word[:cut])
            word = word[cut:]
        lines.append(word)
    return lines


def contact_sheet(
    images: Sequence[Any],
    labels: Sequence[str],
    path: str | os.PathLike,
    columns: int = 4,
    thumb: int = 256,
    title: str | None = None,
    credentials: Signing | None = LOCAL,
) -> Path:
    """A grid of thumbnails (``thumb`` px square cells) with the whole caption under each,
    wrapped (every cell as tall as the longest caption needs), and an optional title above
    the grid, wrapped too; signed with a content credential (``credentials=None``: not)."""
    if not images:
        raise ExportError("A contact sheet needs at least one image.")
    if len(labels) != len(images):
        raise ExportError(f"Got {len(labels)} labels for {len(images)} images; give one per image.")
    writer = _font(max(8, thumb // 16))
    line_h = writer.line_height + 2
    margin = max(2, thumb // 32)
    cols = min(columns, len(images))
    rows = math.ceil(len(images) / cols)
    captions = [_caption_lines(str(text), writer, thumb - 2 * margin) for text in labels]
    cell_h = thumb + max(1, *map(len, captions)) * line_h + 2 * margin
    heading = _caption_lines(title or "", writer, cols * thumb - 2 * margin)
    top = len(heading) * line_h + margin if heading else 0
    sheet = Image.new("RGB", (cols * thumb, top + rows * cell_h), "white")
    draw = ImageDraw.Draw(sheet)
    for n, line in enumerate(heading):
        writer.draw(draw, (margin, margin // 2 + n * line_h), line, fill="black")
    for k, (image, lines) in enumerate(zip(images, captions, strict=True)):
        x, y = (k % cols) * thumb, top + (k // cols) * cell_h
        im = ImageOps.contain(to_pil(image), (thumb - 2 * margin, thumb - 2 * margin))
        sheet.paste(im, (x + (thumb - im.width) // 2, y + (thumb - im.height) // 2))
        for n, line in enumerate(lines):
            writer.draw(draw, (x + margin, y + thumb + n * line_h), line, fill="black")
    return save_png(sheet, path, credentials=credentials)


def zip_snapshots(run_dir: str | os.PathLike) -> Path:
    """Every snapshot, the final picture and the run's record in ``RUN/snapshots.zip``
    (written atomically), to download in one go."""
    import zipfile

    run_dir = Path(run_dir)
    snapshots = list_snapshots(run_dir)
    if not snapshots:
        raise _no_snapshots(run_dir)
    path = run_dir / "snapshots.zip"
    extra = [run_dir / name for name in ("final.png", "run.json", "log.jsonl")]
    with atomic_path(path) as tmp, zipfile.ZipFile(tmp, "w") as archive:
        for _, snapshot in snapshots:  # PNGs are compressed already: store them as they are
            archive.write(snapshot, f"{run_dir.name}/snapshots/{snapshot.name}")
        for file in extra:
            if file.is_file():
                archive.write(file, f"{run_dir.name}/{file.name}", zipfile.ZIP_DEFLATED)
    return path
