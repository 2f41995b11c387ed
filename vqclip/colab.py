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
CPU_DEFAULTS = {"size": [128, 128], "iterations": 100}  # minutes on a CPU, not hours
GPU_DEFAULTS = {"size": [256, 256], "iterations": 300}
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
            root = mount_drive()
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
            f"{CPU_DEFAULTS['size'][0]}x{CPU_DEFAULTS['size'][1]} pixels and "
            f"{CPU_DEFAULTS['iterations']} iterations (a run takes minutes). "
            "On Colab pick a GPU with Runtime > Change runtime type > T4 GPU."
        )
    return Setup(Path(out), cache, device, settings)


def mount_drive() -> Path:
    """Mount Google Drive (Colab asks the user once) and return vqclip's folder in it."""
    from google.colab import drive

    mount = os.environ.get(DRIVE_MOUNT_ENV, "/content/drive")
    drive.mount(mount)
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
    or a kill: its record still says "running"), or None. Runs stopped on purpose are left
    alone; the panel's Resume continues those."""
    from vqclip.state import RUN_FILE, read_run

    found = []
    for record in Path(out).glob(f"*/{RUN_FILE}"):
        try:
            status = read_run(record.parent).get("status")
        except Exception:  # a torn or foreign folder is not a run to continue
            continue
        if status == "running":
            found.append((record.stat().st_mtime, record.parent))
    return max(found)[1] if found else None


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
