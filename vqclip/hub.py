"""Model files: the cache folder, verified downloads, and checkpoints read without running code.

Registry files are downloaded on first use into :func:`cache_dir`, trying each URL in turn,
written atomically, and their sha256 and size recorded in a JSON sidecar
(``<file>.json``) that every later load checks. CLIP's official URLs carry their sha256.

Checkpoints are read with torch's weights-only unpickler: a short allow-list of Lightning
bookkeeping classes becomes inert stand-ins and any other pickled global is refused, so a
checkpoint cannot run code. Nothing here downloads, touches CUDA or changes global state
at import.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import pickle
import re
import time
import urllib.error
import urllib.request
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from vqclip import __version__
from vqclip.state import atomic_path, atomic_write

__all__ = ["ModelError", "ModelInfo", "cache_dir", "download", "read_checkpoint"]

_CHUNK = 1 << 20  # download and hashing block size (1 MiB)
_TIMEOUT = 30.0  # seconds without data before a URL counts as failed (VQCLIP_DOWNLOAD_TIMEOUT)
OFFLINE_HELP = (
    "for offline testing only, run `vqclip make-tiny-models DIR` and pass the files it writes "
    "(--vqgan-config DIR/vqgan.yaml --vqgan-checkpoint DIR/vqgan.ckpt --clip DIR/clip.pt); "
    "they make noise, not pictures"
)


class ModelError(RuntimeError):
    """A model could not be found, fetched, verified or loaded; the message says how to fix it."""


# --- cache ----------------------------------------------------------------------------


def cache_dir() -> Path:
    """The model cache: $VQCLIP_CACHE, else ~/.cache/vqclip; created when first asked for."""
    root = os.environ.get("VQCLIP_CACHE")
    path = Path(root).expanduser() if root else Path.home() / ".cache" / "vqclip"
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ModelError(
            f"Cannot create the model cache folder {path} ({exc}). Set the environment "
            "variable VQCLIP_CACHE to a folder you can write to."
        ) from None
    return path.resolve()


@dataclass(frozen=True)
class ModelInfo:
    """Identity of a loaded model: its name, the files it came from and their sha256."""

    name: str
    files: dict[str, str] = field(default_factory=dict)  # role -> absolute path
    sha256: dict[str, str] = field(default_factory=dict)  # role -> hex digest

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "files": dict(self.files), "sha256": dict(self.sha256)}


# --- downloads and hash records --------------------------------------------------------


class DownloadFailed(ModelError):
    """Every URL of one file failed; ``failures`` holds (url, reason) pairs."""

    def __init__(self, what: str, dest: Path, failures: list[tuple[str, str]]) -> None:
        self.what, self.dest, self.failures = what, dest, failures
        tried = "; ".join(f"{url} ({reason})" for url, reason in failures) or "no URLs known"
        super().__init__(
            f"Could not download the {what}: every address failed. Tried: {tried}. "
            f"The file belongs at {dest}; download it by hand from one of those addresses "
            "and put it there."
        )


def _record_path(path: Path) -> Path:
    """The JSON sidecar holding a cached file's sha256 and size."""
    return path.with_name(path.name + ".json")


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(_CHUNK):
            digest.update(block)
    return digest.hexdigest()


def _write_record(path: Path, sha256: str, size: int, source: str) -> None:
    record = {
        "file": path.name,
        "sha256": sha256,
        "size": size,
        "source": source,
        "recorded": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    atomic_write(_record_path(path), json.dumps(record, indent=2) + "\n")


def _reason(exc: BaseException) -> str:
    """A short human reason for a failed URL (no traceback)."""
    if isinstance(exc, urllib.error.HTTPError):  # a redirect loop's reason spans lines
        return " ".join(f"HTTP {exc.code} {exc.reason}".split())
    if isinstance(exc, urllib.error.URLError):
        return str(exc.reason)
    if isinstance(exc, TimeoutError):
        return f"no data for {_download_timeout():g} s (timed out)"
    return str(exc) or type(exc).__name__


def _download_timeout() -> float:
    """Seconds a download may wait for data: $VQCLIP_DOWNLOAD_TIMEOUT, else 30."""
    try:
        return float(os.environ.get("VQCLIP_DOWNLOAD_TIMEOUT") or _TIMEOUT)
    except ValueError:
        return _TIMEOUT


def _looks_like_html(head: bytes) -> bool:
    start = head.lstrip()[:15].lower()
    return start.startswith((b"<!doctype html", b"<html"))


def download(
    urls: Sequence[str],
    dest: str | os.PathLike,
    *,
    what: str,
    progress: bool = True,
    sha256: str | None = None,
) -> Path:
    """Fetch ``dest`` from the first URL that works and record its sha256 and size beside it.

    URLs are tried in turn (http, https and file all work). The file appears at ``dest`` only
    when complete: a failed, cut-off or interrupted (Ctrl-C) download leaves nothing there.
    With ``sha256`` the content must have that digest. Raises ModelError naming every URL
    and why it failed.
    """
    dest = Path(dest)
    failures: list[tuple[str, str]] = []
    for url in urls:
        try:
            _fetch(url, dest, what=what, progress=progress, sha256=sha256)
        except Exception as exc:  # KeyboardInterrupt is not caught: Ctrl-C stops at once
            failures.append((url, _reason(exc)))
            continue
        return dest
    raise DownloadFailed(what, dest, failures)


def _fetch(url: str, dest: Path, *, what: str, progress: bool, sha256: str | None) -> None:
    from tqdm.auto import tqdm

    request = urllib.request.Request(url, headers={"User-Agent": f"vqclip/{__version__}"})
    timeout = _download_timeout()
    with urllib.request.urlopen(request, timeout=timeout) as response, atomic_path(dest) as tmp:
        length = response.headers.get("Content-Length")
        total = int(length) if length and length.isdigit() else None
        digest, size = hashlib.sha256(), 0
        with (
            open(tmp, "wb") as out,
            tqdm(
                total=total,
                unit="B",
                unit_scale=True,
                unit_divisor=1024,
                desc=f"Downloading {what}",
                disable=not progress,
            ) as bar,
        ):
            # read1 returns whatever has arrived, so a server that trickles a few bytes at a
            # time (never silent long enough for the socket timeout) is caught here: each
            # `timeout` seconds must bring at least _CHUNK bytes (1 MiB per 30 s by default).
            window, window_bytes = time.monotonic(), 0
            while block := response.read1(_CHUNK):
                if size == 0 and _looks_like_html(block):
                    raise ValueError("the server sent a web page instead of the file")
                out.write(block)
                digest.update(block)
                size += len(block)
                bar.update(len(block))
                window_bytes += len(block)
                if time.monotonic() - window >= timeout:
                    if window_bytes < _CHUNK:
                        raise ValueError(
                            f"too slow: {window_bytes} bytes in {timeout:g} s, less than 1 MiB "
                            "(set VQCLIP_DOWNLOAD_TIMEOUT to wait longer)"
                        )
                    window, window_bytes = time.monotonic(), 0
        if total is not None and size != total:
            raise ValueError(f"the connection closed after {size} of {total} bytes")
        if size == 0:
            raise ValueError("the server sent an empty file")
        actual = digest.hexdigest()
        if sha256 is not None and actual != sha256:
            raise ValueError(f"the file's sha256 is {actual}, not the expected {sha256}")
        # The record goes first so that the file never sits in the cache without one.
        _write_record(dest, actual, size, url)


def recorded_sha(path: Path) -> str:
    """The sha256 recorded beside a file that was just downloaded (and hashed on the way)."""
    return str(json.loads(_record_path(path).read_text(encoding="utf-8"))["sha256"])


def verify_cached(path: Path, expected: str | None = None) -> str:
    """Check a cached file against ``expected`` or its sidecar record; return its sha256.

    A file without a record (placed by hand) gets one now, trusted on first use.
    """
    actual = sha256_file(path)
    size = path.stat().st_size
    record_file = _record_path(path)
    record: dict[str, Any] = {}
    if record_file.exists():
        try:
            record = json.loads(record_file.read_text(encoding="utf-8"))
            str(record["sha256"])
        except (ValueError, KeyError, TypeError):
            raise ModelError(
                f"The hash record {record_file} is unreadable. Delete it and {path} "
                "and run again to download the file afresh."
            ) from None
    wanted = expected or record.get("sha256")
    if wanted is None:
        _write_record(path, actual, size, "placed in the cache by hand")
        return actual
    if actual != wanted:
        known = f" ({record['size']} bytes)" if "size" in record and not expected else ""
        raise ModelError(
            f"The cached file {path} is not the file that was downloaded: expected sha256 "
            f"{wanted}{known}, found {actual} ({size} bytes). It was changed or damaged "
            f"(e.g. a cut-off copy). Delete it (and {record_file.name} beside it) and run "
            "again to download it afresh."
        )
    if not record:
        _write_record(path, actual, size, "placed in the cache by hand")
    return actual


# --- safe checkpoint reading -----------------------------------------------------------


class _LightningStandIn:
    """Inert stand-in for a pytorch-lightning class pickled in a checkpoint (never used)."""


# Lightning bookkeeping classes that real taming checkpoints pickle beside the weights
# (old Lightning keys the ``callbacks`` dict by the callback class itself). Nothing else.
_ALLOWED_GLOBALS = (
    "pytorch_lightning.callbacks.model_checkpoint.ModelCheckpoint",
    "pytorch_lightning.callbacks.early_stopping.EarlyStopping",
)
_STAND_INS = [(_LightningStandIn, name) for name in _ALLOWED_GLOBALS]


def read_checkpoint(path: Path) -> dict[str, torch.Tensor]:
    """The ``state_dict`` of a checkpoint, read without running pickled code, minus ``loss.*``."""
    if not hasattr(torch.serialization, "safe_globals"):
        raise ModelError(
            f"Reading the checkpoint {path} safely needs torch 2.5 or newer (this is torch "
            f"{torch.__version__}). Upgrade torch, e.g. pip install -U torch torchvision."
        )
    # mmap keeps the optimiser states (as large as the weights) out of memory; zip files only.
    mmap = zipfile.is_zipfile(path)
    try:
        with torch.serialization.safe_globals(_STAND_INS):
            data = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as exc:
        names = _refused_globals(path, str(exc))
        shown = ", ".join(names) if names else "an object that is not plain data"
        raise ModelError(
            f"Refusing to load the checkpoint {path}: it contains a pickled reference to "
            f"{shown}, which could run code when loaded. vqclip reads checkpoints without "
            "running code and allows only tensors, plain containers and a few Lightning "
            f"bookkeeping classes ({', '.join(_ALLOWED_GLOBALS)}). If you trust the file, "
            "convert it once to a plain state dict: torch.save({'state_dict': "
            f"torch.load('{path}', weights_only=False)['state_dict']}}, 'clean.ckpt') "
            "and pass clean.ckpt."
        ) from None
    except Exception as exc:
        raise ModelError(
            f"Could not read the checkpoint {path} ({type(exc).__name__}: {exc}). It may be "
            "incomplete or not a PyTorch checkpoint; download it again, or check the path."
        ) from None
    if isinstance(data, Mapping) and isinstance(data.get("state_dict"), Mapping):
        state = data["state_dict"]
    elif isinstance(data, Mapping) and data and all(torch.is_tensor(v) for v in data.values()):
        state = data  # already a bare state dict (e.g. a converted checkpoint)
    else:
        raise ModelError(
            f"The checkpoint {path} holds no 'state_dict' of weights; it is not a taming VQGAN "
            "checkpoint. Use the .ckpt published with the model's yaml."
        )
    bad = [k for k, v in state.items() if not torch.is_tensor(v)]
    if bad:
        raise ModelError(
            f"The checkpoint {path} has non-tensor entries in its state_dict (e.g. {bad[0]!r}); "
            "it is not a taming VQGAN checkpoint."
        )
    return {k: v for k, v in state.items() if not k.startswith("loss.")}


def _refused_globals(path: Path, message: str) -> list[str]:
    """Names of the globals a checkpoint pickles that are not allowed (static scan, no code)."""
    names: list[str] = []
    with contextlib.suppress(Exception), torch.serialization.safe_globals(_STAND_INS):
        names = list(torch.serialization.get_unsafe_globals_in_checkpoint(path))
    return names or re.findall(r"GLOBAL ([\w.]+)", message)[:1]
