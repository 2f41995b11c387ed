"""Google Colab: knowing when we are on it, keeping runs and models on Google Drive, and
handing files to the user. No import of google.colab at module level.

Colab differs from local Jupyter in ways vqclip must follow (DESIGN.md section 8): widget
updates from a background thread are not shown there (the panel runs in the foreground),
the VM's disk is lost on disconnect (runs and the model cache go to Drive), and files reach
the user through ``google.colab.files.download`` rather than a link.
"""

from __future__ import annotations

import base64
import hashlib
import html
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DRIVE_MOUNT_ENV = "VQCLIP_DRIVE_MOUNT"  # where Drive is mounted (tests point it elsewhere)
DRIVE_FOLDER = "MyDrive/vqclip"  # vqclip's folder inside Drive: runs/ and models/
# A CPU runtime (2 slow cores): fewer pixels, steps and cutouts. Measured on 2 AVX2 cores,
# 128x128 with 32 cutouts in fp32 takes ~17 s a step; 16 cutouts about halve that.
CPU_DEFAULTS = {"size": [128, 128], "iterations": 100, "cutn": 16}
GPU_DEFAULTS = {"size": [256, 256], "iterations": 300}
CPU_SECONDS_PER_STEP = 17.0  # the measurement above (128x128, cutn 32, fp32, 2 AVX2 cores)
MODELS_SIZE = "1.3 GB"  # the default VQGAN (~0.9 GB) and CLIP ViT-B/32 (~0.35 GB) on Drive
PICTURE_LIMIT = 50 * 2**20  # a larger download is not a photo
LINK_LIMIT = 64 * 2**20  # larger files are not inlined into a data: link


def in_colab() -> bool:
    """Whether this kernel runs on Google Colab (its ``google.colab`` package is imported)."""
    return "google.colab" in sys.modules


@dataclass
class Setup:
    """Where a notebook's runs go, and the settings that suit this machine."""

    out: Path
    cache: Path | None  # the model cache when it was moved (to Drive), else None
    device: str  # "GPU <name>" or "CPU"
    settings: dict[str, Any] = field(default_factory=dict)  # for panel(**settings)


def setup(save_to_drive: bool = True, out: str = "runs") -> Setup:
    """The notebooks' set-up after the install: on Colab, widgets drawn by the custom widget
    manager and (with ``save_to_drive``) runs and the model cache on Google Drive, so a
    disconnect or a new VM loses nothing and downloads nothing twice. Says what it did."""
    cache = None
    if in_colab():
        from google.colab import output

        output.enable_custom_widget_manager()  # Colab draws the panel's widgets (version 8) through it
        if save_to_drive:
            try:
                root = mount_drive()
            except DriveUnavailable as why:  # declined, timed out: Run all goes on, on the VM
                print(why)
            else:
                out, cache = str(root / "runs"), root / "models"
                os.environ["VQCLIP_CACHE"] = str(cache)  # read when models load, not at import
    device = _device_line()
    settings = {"out": str(out), **(GPU_DEFAULTS if device.startswith("GPU") else CPU_DEFAULTS)}
    where = "Google Drive" if cache else "this machine's disk"
    print(f"{device}. Runs go to {out} ({where}).")
    if cache:
        print(f"Models are cached in {cache}: the next session does not download them again.")
    if not device.startswith("GPU"):
        print(
            "No GPU: this is a CPU runtime, so the defaults are lowered to "
            f"{CPU_DEFAULTS['size'][0]}x{CPU_DEFAULTS['size'][1]} pixels, "
            f"{CPU_DEFAULTS['iterations']} iterations and {CPU_DEFAULTS['cutn']} cutouts "
            "(on Colab's 2 CPU cores several seconds a step: the panel shows the time left). "
            "On Colab pick a GPU with Runtime > Change runtime type > T4 GPU."
        )
    return Setup(Path(out), cache, device, settings)


class DriveUnavailable(Exception):
    """Google Drive could not be mounted; the message is one line saying why and what now."""


def mount_drive() -> Path:
    """Mount Google Drive (Colab asks the user once) and return vqclip's folder in it.
    DriveUnavailable when the user declines, it times out, or the mount point is taken."""
    from google.colab import drive

    mount = os.environ.get(DRIVE_MOUNT_ENV, "/content/drive")
    try:
        drive.mount(mount)
    except Exception as error:  # MessageError (declined), ValueError (timeout, mount point)
        if type(error).__name__ == "MessageError":
            reason = f"access was not granted: {error}"
        elif str(error).startswith("mount failed"):
            reason = f"it timed out ({error})"
        else:
            reason = f"{type(error).__name__}: {error}"
        raise DriveUnavailable(
            f"Google Drive is not mounted ({reason}), so runs and models stay on this VM's "
            "disk and are lost when it disconnects; run this cell again to retry."
        ) from None
    root = Path(mount) / DRIVE_FOLDER
    root.mkdir(parents=True, exist_ok=True)
    return root


def _device_line() -> str:
    import torch

    if torch.cuda.is_available():
        return f"GPU {torch.cuda.get_device_name(0)}"
    return "CPU"


def newest_cut_run(out: str | os.PathLike) -> Path | None:
    """The most recently written run under ``out`` that was cut off (a disconnect, a crash
    or a kill: its record still says "running") before its last step, or None. Runs stopped
    on purpose are left alone; the panel's Resume continues those. A cut run that had
    already made its last step is marked done (and said so), not resumed again and again."""
    from vqclip.state import RUN_FILE, read_run, update_run

    found = []
    for record in Path(out).glob(f"*/{RUN_FILE}"):
        try:
            run = read_run(record.parent)
            at, total = int(run.get("iteration") or 0), int(run["config"]["iterations"])
        except Exception:  # a torn or foreign folder is not a run to continue
            continue
        if run.get("status") != "running":
            continue
        if at >= total:
            update_run(record.parent, status="done")
            print(f"{record.parent.name} was cut after its last step ({at}): marked done.")
            continue
        found.append((record.stat().st_mtime, record.parent))
    return max(found)[1] if found else None


def find_runs(out: str | os.PathLike) -> list[Path]:
    """Every run under ``out``, newest first: single runs and the candidates of sweeps."""
    from vqclip.state import RUN_FILE

    found = [*Path(out).glob(f"*/{RUN_FILE}"), *Path(out).glob(f"*/runs/*/{RUN_FILE}")]
    return [p.parent for p in sorted(found, key=lambda p: p.stat().st_mtime, reverse=True)]


def form_settings(
    setup: Setup,
    prompt: str,
    style: str = "none",
    size: str = "auto",
    iterations: int = 0,
    seed: str = "",
    snapshots: str = "",
    vqgan: str = "",
    clip_model: str = "",
    init_image: str = "",
) -> dict[str, Any]:
    """A notebook form's fields as panel settings, over this machine's defaults: "auto",
    0 and "" keep the default. ``style`` ("none": no style) is added to the prompt as a
    sweep adds it; ``init_image`` is a path (on Drive, say), an http(s) URL, or "upload"
    (Colab's own upload dialog, for photos of any size). ConfigError names a bad field."""
    from vqclip.config import ConfigError
    from vqclip.sweep import styled

    settings = dict(setup.settings)
    style = style.strip()
    settings["prompt"] = styled(prompt.strip(), "" if style.lower() == "none" else style)
    if size.strip().lower() not in ("", "auto"):
        parts = size.lower().replace("×", "x").split("x")
        try:
            settings["size"] = [int(p) for p in (parts * 2 if len(parts) == 1 else parts)]
        except ValueError:
            raise ConfigError(
                f"SIZE must be 'auto', one number or WIDTHxHEIGHT (e.g. 256x256), not {size!r}.",
                "size",
            ) from None
    if iterations:
        settings["iterations"] = int(iterations)
    if seed.strip():
        try:
            settings["seed"] = int(seed)
        except ValueError:
            raise ConfigError(
                f"SEED must be a whole number, or empty for a random one, not {seed!r}.", "seed"
            ) from None
    for name, value in (("snapshots", snapshots), ("vqgan", vqgan), ("clip_model", clip_model)):
        if value.strip():
            settings[name] = value.strip()
    picture = init_image.strip()
    if picture.lower() == "upload":
        picture = upload_picture(setup.out) or ""
    elif picture.lower().startswith(("http://", "https://")):
        picture = fetch_picture(picture, setup.out) or ""
    if picture:
        settings["init_image"] = picture
    return settings


def upload_picture(out: str | os.PathLike) -> str | None:
    """Colab's own upload dialog (``google.colab.files.upload``), in the running cell: any
    size, unlike a FileUpload widget, whose files Colab drops at about 1 MB. The file
    kept under ``out/inputs``, or None (and a line saying why)."""
    if not in_colab():
        print('INIT_IMAGE = "upload" opens Colab\'s upload dialog; here give a path or a URL.')
        return None
    import tempfile

    from google.colab import files

    with tempfile.TemporaryDirectory() as folder:
        picked = files.upload(target_dir=folder)
    if not picked:
        print("Nothing was uploaded (the dialog was closed): the run has no init image.")
        return None
    name, data = next(iter(picked.items()))
    if len(picked) > 1:
        print(
            f"{len(picked)} files were uploaded: the first, {Path(name).name}, is the init image."
        )
    return _keep_picture(out, Path(name).name, data)


def fetch_picture(url: str, out: str | os.PathLike) -> str | None:
    """A picture from an http(s) URL, kept under ``out/inputs``; None (and why) if it fails."""
    from urllib.parse import unquote, urlparse
    from urllib.request import urlopen

    try:
        with urlopen(url, timeout=60) as response:  # noqa: S310 (http and https only)
            data = response.read(PICTURE_LIMIT + 1)
    except OSError as error:
        print(f"Could not fetch {url} ({error}): the run has no init image.")
        return None
    if len(data) > PICTURE_LIMIT:
        print(f"{url} is larger than {PICTURE_LIMIT // 2**20} MB: not a photo; no init image.")
        return None
    name = Path(unquote(urlparse(url).path)).name or "picture"
    return _keep_picture(out, name, data)


def _keep_picture(out: str | os.PathLike, name: str, data: bytes) -> str | None:
    """The picture saved by content under out/inputs, or None (said why) if it is none."""
    import io

    from PIL import Image, UnidentifiedImageError

    if not data:
        print(f"{name} arrived empty (0 bytes): the run has no init image.")
        return None
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.verify()
    except (UnidentifiedImageError, OSError, SyntaxError) as error:
        print(f"{name} is not a picture Pillow can read ({error}): the run has no init image.")
        return None
    path = save_upload(out, name, data).resolve()  # the recipe names it from anywhere
    print(f"{name} ({len(data) / 2**20:.1f} MB) is the init image: {path}")
    return str(path)


def save_upload(out: str | os.PathLike, name: str, data: bytes) -> Path:
    """An uploaded file kept under ``out/inputs`` by its content (never overwritten), so
    every recipe that names it can be reproduced later."""
    from vqclip.config import slug
    from vqclip.state import atomic_write

    suffix = Path(name).suffix.lower()
    suffix = suffix if suffix in (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif") else ".png"
    digest = hashlib.sha256(data).hexdigest()[:12]
    path = Path(out) / "inputs" / f"{digest}-{slug(Path(name).stem, 40)}{suffix}"
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, data)
    return path


def download(path: str | os.PathLike) -> str | None:
    """Hand a file to the user: Colab's download (the browser saves it), else the HTML of a
    link that works wherever the notebook runs (its folder, or the file inlined)."""
    path = Path(path)
    if in_colab():
        from google.colab import files

        files.download(str(path))
        return None
    return link_html(path)


def link_html(path: Path) -> str:
    """A link to ``path``: relative when the file is under the notebook's folder (Jupyter
    serves it), else the file itself as a data: URL (up to LINK_LIMIT bytes)."""
    name = html.escape(path.name)
    try:
        relative = path.resolve().relative_to(Path.cwd().resolve())
        return f'<a href="{html.escape(relative.as_posix())}" download="{name}" target="_blank">{name}</a>'
    except ValueError:
        pass
    size = path.stat().st_size
    if size > LINK_LIMIT:
        return f"{name}: {size / 2**20:.0f} MB, too large for a link; it is at {html.escape(str(path))}"
    kind = {
        ".png": "image/png",
        ".gif": "image/gif",
        ".mp4": "video/mp4",
        ".zip": "application/zip",
    }
    mime = kind.get(path.suffix.lower(), "application/octet-stream")
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<a href="data:{mime};base64,{data}" download="{name}">{name}</a>'
