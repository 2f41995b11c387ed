"""Model files and loaders: cache dir, verified downloads, load_vqgan / load_clip.

The VQGAN is rebuilt from taming's modules alone (Encoder, Decoder, VectorQuantizer2 or
GumbelQuantize, quant_conv, post_quant_conv), so its state-dict keys match the published
checkpoints minus ``loss.*``; pytorch-lightning, ``taming.main`` and the LPIPS/discriminator
``lossconfig`` are never touched. Checkpoints are read with torch's weights-only unpickler:
a short allow-list of Lightning bookkeeping classes becomes inert stand-ins and any other
pickled global is refused, so a checkpoint cannot run code.

Registry files are downloaded on first use into :func:`cache_dir`, trying each URL in turn,
written atomically, and their sha256 and size recorded in a JSON sidecar
(``<file>.json``) that every later load checks. CLIP's official URLs carry their sha256.
Nothing here downloads, touches CUDA or changes global state at import.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import io
import json
import os
import pickle
import re
import sys
import threading
import time
import types
import urllib.error
import urllib.request
import warnings
import zipfile
from collections import OrderedDict
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import taming.modules.diffusionmodules.model as taming_model
import torch
import yaml
from taming.modules.diffusionmodules.model import Decoder, Encoder
from taming.modules.vqvae.quantize import GumbelQuantize, VectorQuantizer2
from torch import nn

from vqclip import __version__, registry
from vqclip.config import DEFAULT_CLIP, DEFAULT_VQGAN, RunConfig
from vqclip.state import atomic_path, atomic_write

__all__ = [
    "VQGAN",
    "ModelError",
    "ModelInfo",
    "Models",
    "cache_dir",
    "download",
    "load_clip",
    "load_models",
    "load_vqgan",
    "make_tiny_models",
    "resolve_device",
]

_CHUNK = 1 << 20  # download and hashing block size (1 MiB)
_TIMEOUT = 30.0  # seconds without data before a URL counts as failed (VQCLIP_DOWNLOAD_TIMEOUT)
_OFFLINE_HELP = (
    "for offline testing only, run `vqclip make-tiny-models DIR` and pass the files it writes "
    "(--vqgan-config DIR/vqgan.yaml --vqgan-checkpoint DIR/vqgan.ckpt --clip DIR/clip.pt); "
    "they make noise, not pictures"
)


class ModelError(RuntimeError):
    """A model could not be found, fetched, verified or loaded; the message says how to fix it."""


# --- devices and cache -----------------------------------------------------------------


def resolve_device(name: str | torch.device = "auto") -> torch.device:
    """'auto' -> cuda when a GPU is visible, else cpu; 'cuda' without a GPU -> ModelError."""
    text = str(name).strip().lower()
    if text == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(text)
    except (RuntimeError, ValueError):
        raise ModelError(
            f"Unknown device {str(name)!r}. Use auto, cpu, cuda or cuda:N (N is the GPU number)."
        ) from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            why = (
                "this PyTorch is a CPU-only build"
                if torch.version.cuda is None
                else "no CUDA GPU or driver is visible"
            )
            raise ModelError(
                f"Device {str(name)!r} was asked for, but PyTorch cannot use a GPU here ({why}). "
                "Use --device cpu (slow) or --device auto; on Colab choose Runtime > Change "
                "runtime type > GPU; on your own machine install a CUDA build of torch."
            )
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise ModelError(
                f"Device {str(name)!r} does not exist: this machine has {count} GPU(s), "
                f"numbered 0 to {count - 1}. Use --device cuda or cuda:0."
            )
    return device


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


class _DownloadFailed(ModelError):
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


def _sha256_file(path: Path) -> str:
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
    raise _DownloadFailed(what, dest, failures)


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


def _recorded_sha(path: Path) -> str:
    """The sha256 recorded beside a file that was just downloaded (and hashed on the way)."""
    return str(json.loads(_record_path(path).read_text(encoding="utf-8"))["sha256"])


def _verify_cached(path: Path, expected: str | None = None) -> str:
    """Check a cached file against ``expected`` or its sidecar record; return its sha256.

    A file without a record (placed by hand) gets one now, trusted on first use.
    """
    actual = _sha256_file(path)
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


def _read_checkpoint(path: Path) -> dict[str, torch.Tensor]:
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


# --- VQGAN -----------------------------------------------------------------------------


def _quiet(*args: Any, **kwargs: Any) -> None:
    """A print that says nothing."""


class VQGAN(nn.Module):
    """A taming VQGAN autoencoder without its training losses: encoder, quantizer, decoder.

    Attribute names match taming's ``VQModel`` so real checkpoints load key for key.
    """

    def __init__(
        self, ddconfig: Mapping[str, Any], embed_dim: int, n_embed: int, gumbel: bool = False
    ) -> None:
        super().__init__()
        ddconfig = dict(ddconfig)
        z_channels = int(ddconfig["z_channels"])
        # taming's Decoder prints the latent shape when built; keep loading quiet, in that
        # module only: redirecting sys.stdout would also swallow what other threads print
        # meanwhile (the cells a person runs while the panel loads models in the background).
        taming_model.print = _quiet
        self.encoder = Encoder(**ddconfig)
        self.decoder = Decoder(**ddconfig)
        if gumbel:
            self.quantize: nn.Module = GumbelQuantize(z_channels, embed_dim, n_embed=n_embed)
        else:
            self.quantize = VectorQuantizer2(n_embed, embed_dim, beta=0.25)
        self.quant_conv = nn.Conv2d(z_channels, embed_dim, 1)
        self.post_quant_conv = nn.Conv2d(embed_dim, z_channels, 1)
        self.factor = 2 ** (len(ddconfig["ch_mult"]) - 1)
        self.embed_dim, self.n_embed, self.gumbel = int(embed_dim), int(n_embed), bool(gumbel)

    @property
    def codebook(self) -> torch.Tensor:
        """The code vectors, [n_embed, embed_dim]."""
        return self.quantize.embed.weight if self.gumbel else self.quantize.embedding.weight

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Image [B, 3, H, W] in [-1, 1] -> pre-quantisation latent [B, embed_dim, H/f, W/f]."""
        return self.quant_conv(self.encoder(x))

    def decode(self, z_q: torch.Tensor) -> torch.Tensor:
        """Latent [B, embed_dim, h, w] -> image [B, 3, h*f, w*f], roughly in [-1, 1]."""
        return self.decoder(self.post_quant_conv(z_q))


_TARGETS = {"VQModel": False, "GumbelVQ": True}  # last part of model.target -> gumbel
_DD_INTS = ("ch", "out_ch", "num_res_blocks", "in_channels", "resolution", "z_channels")


def _read_vqgan_config(path: Path) -> dict[str, Any]:
    """Parse a taming VQGAN yaml into VQGAN(**kwargs) arguments, with clear errors."""
    fix = "Pass the yaml that was published with the checkpoint."
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise ModelError(f"The VQGAN config {path} is not readable YAML ({exc}). {fix}") from None
    model = data.get("model") if isinstance(data, dict) else None
    target = model.get("target") if isinstance(model, dict) else None
    params = model.get("params") if isinstance(model, dict) else None
    kind = str(target).rsplit(".", 1)[-1]
    if not isinstance(target, str) or kind not in _TARGETS or not isinstance(params, dict):
        raise ModelError(
            f"{path} is not a taming VQGAN config: expected 'model: {{target: "
            "taming.models.vqgan.VQModel (or GumbelVQ), params: {embed_dim, n_embed, "
            f"ddconfig, ...}}}}', found model.target {target!r}. {fix}"
        )

    def need(ok: bool, what: str) -> None:
        if not ok:
            raise ModelError(f"The VQGAN config {path} has {what}. {fix}")

    dd = params.get("ddconfig")
    need(isinstance(dd, dict), "no model.params.ddconfig mapping")
    for key in ("embed_dim", "n_embed"):
        value = params.get(key)
        need(isinstance(value, int) and value > 0, f"no positive whole model.params.{key}")
    for key in _DD_INTS:
        value = dd.get(key)
        need(isinstance(value, int) and value > 0, f"no positive whole ddconfig.{key}")
    for key in ("ch_mult", "attn_resolutions"):
        value = dd.get(key)
        need(
            isinstance(value, list) and all(isinstance(v, int) for v in value),
            f"no ddconfig.{key} list of whole numbers",
        )
    need(len(dd["ch_mult"]) > 0, "an empty ddconfig.ch_mult")
    need(not dd.get("double_z", False), "ddconfig.double_z true (a KL autoencoder, not a VQGAN)")
    need(params.get("remap") is None, "model.params.remap set (remapped codebooks are unsupported)")
    return {
        "ddconfig": dd,
        "embed_dim": params["embed_dim"],
        "n_embed": params["n_embed"],
        "gumbel": _TARGETS[kind],
    }


def _build_vqgan(kwargs: Mapping[str, Any], config_path: Path) -> VQGAN:
    # Building consumes random numbers for throw-away initial weights; do not move the
    # caller's global RNG (a seeded run must not depend on when models were loaded).
    try:
        with torch.random.fork_rng(devices=[]):
            return VQGAN(**kwargs)
    except Exception as exc:
        raise ModelError(
            f"The VQGAN config {config_path} describes a network that cannot be built "
            f"({type(exc).__name__}: {exc}). Pass the yaml published with the checkpoint."
        ) from None


def _check_pair(
    model: nn.Module, state: Mapping[str, torch.Tensor], config_path: Path, ckpt_path: Path
) -> None:
    """Raise a ModelError listing mismatches when a checkpoint does not fit its config."""
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    found = {k: tuple(v.shape) for k, v in state.items()}
    wrong = [
        f"{k}: config {list(s)} vs checkpoint {list(found[k])}"
        for k, s in expected.items()
        if k in found and found[k] != s
    ]
    missing = [f"{k} missing from checkpoint" for k in expected if k not in found]
    extra = [f"{k} not in config" for k in found if k not in expected]
    problems = wrong + missing + extra
    if problems:
        raise ModelError(
            f"The VQGAN config {config_path.name} and checkpoint {ckpt_path.name} do not belong "
            f"together ({len(wrong)} weight shapes differ, {len(missing)} weights missing, "
            f"{len(extra)} unexpected); first differences: {'; '.join(problems[:5])}. Use the "
            f"yaml published with this checkpoint (files: {config_path} and {ckpt_path}); for "
            "a registry model, delete both cached files to fetch a matching pair."
        )


def load_vqgan(
    name: str = DEFAULT_VQGAN,
    *,
    config_path: str | os.PathLike | None = None,
    checkpoint_path: str | os.PathLike | None = None,
    device: str | torch.device = "cpu",
    progress: bool = True,
) -> tuple[VQGAN, ModelInfo]:
    """Load a VQGAN from the registry (downloading on first use) or from local files.

    Give ``config_path`` and ``checkpoint_path`` together to use local files (``name`` is
    then ignored). Returns the model in eval mode, frozen, on ``device``, and its identity.
    """
    device = resolve_device(device)
    if config_path is not None or checkpoint_path is not None:
        if config_path is None or checkpoint_path is None:
            raise ModelError(
                "A local VQGAN needs both files: the yaml config (--vqgan-config) and the "
                ".ckpt checkpoint (--vqgan-checkpoint). Give both, or neither to use "
                f"--vqgan NAME from the registry ({', '.join(registry.VQGAN_MODELS)})."
            )
        files = {"config": Path(config_path).expanduser(), "checkpoint": Path(checkpoint_path)}
        files["checkpoint"] = files["checkpoint"].expanduser()
        for role, path in files.items():
            if not path.is_file():
                raise ModelError(
                    f"The VQGAN {role} file {path} does not exist. Check the path (relative "
                    f"paths start from {Path.cwd()})."
                )
        files = {role: path.resolve() for role, path in files.items()}
        digests = {role: _sha256_file(path) for role, path in files.items()}
        label = files["checkpoint"].name
    else:
        files, digests = _fetch_vqgan(name, progress=progress)
        label = name
    model = _build_vqgan(_read_vqgan_config(files["config"]), files["config"])
    state = _read_checkpoint(files["checkpoint"])
    _check_pair(model, state, files["config"], files["checkpoint"])
    model.load_state_dict(state)
    model = model.to(device).eval().requires_grad_(False)
    info = ModelInfo(label, {r: str(p) for r, p in files.items()}, digests)
    return model, info


def _fetch_vqgan(name: str, *, progress: bool) -> tuple[dict[str, Path], dict[str, str]]:
    """Cached, verified config and checkpoint of a registry VQGAN (downloaded if absent)."""
    source = registry.VQGAN_MODELS.get(name)
    if source is None:
        raise ModelError(
            f"Unknown VQGAN model {name!r}. Known models: {', '.join(registry.VQGAN_MODELS)}; "
            "or give local files with --vqgan-config and --vqgan-checkpoint."
        )
    folder = cache_dir() / "vqgan"
    plan = {
        "config": (folder / f"{name}.yaml", source.config_urls),
        "checkpoint": (folder / f"{name}.ckpt", source.checkpoint_urls),
    }
    failed: list[tuple[str, _DownloadFailed]] = []
    fresh: set[str] = set()
    for role, (path, urls) in plan.items():
        if path.exists():
            continue
        try:
            download(urls, path, what=f"VQGAN {name} {role}", progress=progress)
            fresh.add(role)
        except _DownloadFailed as exc:
            failed.append((role, exc))
    if failed:
        parts = [
            f"For its {role} file tried "
            + "; ".join(f"{url} ({reason})" for url, reason in exc.failures)
            + f" — it belongs at {exc.dest}"
            for role, exc in failed
        ]
        raise ModelError(
            f"Could not get the VQGAN model {name!r}: no download address worked (offline, or "
            f"the hosts are down). {'. '.join(parts)}. To fix it: download the "
            "file(s) elsewhere (browser, another machine) from an address above and put them "
            "at exactly those paths (the cache folder is $VQCLIP_CACHE, default "
            "~/.cache/vqclip; their sha256 is recorded on first use); or use your own files "
            f"with --vqgan-config FILE.yaml --vqgan-checkpoint FILE.ckpt; or, {_OFFLINE_HELP}."
        )
    files = {role: path for role, (path, _) in plan.items()}
    digests = {
        role: _recorded_sha(path) if role in fresh else _verify_cached(path)
        for role, path in files.items()
    }
    return files, digests


# --- CLIP ------------------------------------------------------------------------------


def _import_clip() -> types.ModuleType:
    with warnings.catch_warnings():
        # clip-anytorch imports pkg_resources, which warns about its own deprecation.
        warnings.filterwarnings("ignore", message="pkg_resources is deprecated")
        import clip

    return clip


def _sha_in_url(url: str) -> str | None:
    """The sha256 that OpenAI's CLIP URLs carry as their folder name, if any."""
    folder = url.rsplit("/", 2)[-2] if url.count("/") >= 2 else ""
    return folder.lower() if re.fullmatch(r"[0-9a-fA-F]{64}", folder) else None


def load_clip(
    name_or_path: str = DEFAULT_CLIP,
    *,
    device: str | torch.device = "cpu",
    progress: bool = True,
) -> tuple[nn.Module, ModelInfo]:
    """Load CLIP by name (downloaded into the cache and verified) or from a local file.

    Returns the model in eval mode, frozen, on ``device``: fp32 on CPU, the released fp16
    weights on CUDA.
    """
    device = resolve_device(device)
    url = registry.CLIP_MODELS.get(name_or_path)
    if url is not None:
        expected = _sha_in_url(url)
        path = cache_dir() / "clip" / url.rsplit("/", 1)[-1]
        if path.exists():
            digest = _verify_cached(path, expected)
        else:
            try:
                what = f"CLIP {name_or_path} weights"
                download([url], path, what=what, progress=progress, sha256=expected)
            except _DownloadFailed as exc:
                tried = "; ".join(f"{u} ({reason})" for u, reason in exc.failures)
                raise ModelError(
                    f"Could not get the CLIP model {name_or_path!r}: no download address "
                    f"worked (offline, or the host is down). Tried {tried}. The file belongs "
                    f"at {path}. To fix it: download it elsewhere from that address and put "
                    "it at exactly that path (if you already have it, e.g. in ~/.cache/clip, "
                    "copy it there; its sha256 must match the folder name in the URL); or "
                    f"pass a local file with --clip FILE.pt; or, {_OFFLINE_HELP}."
                ) from None
            digest = _recorded_sha(path)  # just checked against the URL while downloading
        label = name_or_path
    else:
        path = Path(name_or_path).expanduser()
        if not path.is_file():
            raise ModelError(
                f"CLIP model {name_or_path!r} is neither a known name nor an existing file. "
                f"Known names: {', '.join(registry.CLIP_MODELS)}."
            )
        path = path.resolve()
        digest = _sha256_file(path)
        label = path.name
    model = _clip_from_file(path, device)
    return model, ModelInfo(label, {"weights": str(path)}, {"weights": digest})


def _clip_from_file(path: Path, device: torch.device) -> nn.Module:
    clip = _import_clip()
    try:
        with warnings.catch_warnings(), torch.random.fork_rng(devices=[]):
            # Official files are TorchScript archives; torch 2.9+ flags TorchScript as
            # deprecated, which says nothing useful here (only the weights are read).
            warnings.filterwarnings("ignore", message=r".*torch\.jit", category=FutureWarning)
            model, _ = clip.load(str(path), device=str(device), jit=False)
    except Exception as exc:
        raise ModelError(
            f"Could not load CLIP weights from {path} ({type(exc).__name__}: {exc}). It may "
            "be incomplete or not a CLIP model file; download it again or check the path."
        ) from None
    if device.type != "cuda":
        model = model.float()  # released weights are fp16, which CPUs must not compute in
    return model.eval().requires_grad_(False)


# --- both at once ----------------------------------------------------------------------


@dataclass
class Models:
    """The two networks of a run, their identities, and the device they live on."""

    vqgan: VQGAN
    clip: nn.Module
    vqgan_info: ModelInfo
    clip_info: ModelInfo
    device: torch.device

    @property
    def clip_size(self) -> int:
        """CLIP's input resolution in pixels (224 for ViT-B/32)."""
        return int(self.clip.visual.input_resolution)


def load_models(config: RunConfig, progress: bool = True) -> Models:
    """Load the VQGAN and CLIP named by a RunConfig onto its device."""
    device = resolve_device(config.device)
    if config.vqgan_config is not None or config.vqgan_checkpoint is not None:
        vqgan, vqgan_info = load_vqgan(
            config_path=config.vqgan_config,
            checkpoint_path=config.vqgan_checkpoint,
            device=device,
            progress=progress,
        )
    else:
        vqgan, vqgan_info = load_vqgan(config.vqgan, device=device, progress=progress)
    clip_model, clip_info = load_clip(config.clip_model, device=device, progress=progress)
    return Models(vqgan, clip_model, vqgan_info, clip_info, device)


# --- tiny models for tests and offline trials ------------------------------------------

_TINY_SEED = 0
_TINY_DDCONFIG: dict[str, Any] = {
    "double_z": False,
    "z_channels": 32,
    "resolution": 64,
    "in_channels": 3,
    "out_ch": 3,
    "ch": 32,
    "ch_mult": [1, 2, 2],
    "num_res_blocks": 1,
    "attn_resolutions": [16],
    "dropout": 0.0,
}
_TINY_CLIP: dict[str, Any] = {
    "embed_dim": 64,
    "image_resolution": 32,
    "vision_layers": 2,
    "vision_width": 64,
    "vision_patch_size": 16,
    "context_length": 77,
    "vocab_size": 49408,
    "transformer_width": 64,
    "transformer_heads": 1,  # build_model infers width // 64; anything else changes on reload
    "transformer_layers": 2,
}


def _tiny_vqgan_yaml() -> dict[str, Any]:
    """A taming-style config for the tiny VQGAN (f = 4), lossconfig included but never built."""
    return {
        "model": {
            "base_learning_rate": 4.5e-06,
            "target": "taming.models.vqgan.VQModel",
            "params": {
                "embed_dim": 32,
                "n_embed": 256,
                "ddconfig": copy.deepcopy(_TINY_DDCONFIG),
                "lossconfig": {
                    "target": "taming.modules.losses.vqperceptual.VQLPIPSWithDiscriminator",
                    "params": {
                        "disc_conditional": False,
                        "disc_in_channels": 3,
                        "disc_start": 250001,
                        "disc_weight": 0.8,
                        "codebook_weight": 1.0,
                    },
                },
            },
        }
    }


def _tiny_vqgan() -> VQGAN:
    """The tiny VQGAN that make_tiny_models saves: seeded, with a wide codebook."""
    params = _tiny_vqgan_yaml()["model"]["params"]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(_TINY_SEED)
        model = VQGAN(params["ddconfig"], params["embed_dim"], params["n_embed"])
    generator = torch.Generator(device="cpu").manual_seed(_TINY_SEED)
    with torch.no_grad():
        # taming initialises codes within ±1/n_embed, so all codes decode alike; spread them
        # so that choosing different codes changes the picture (and losses move in tests).
        model.codebook.uniform_(-1.0, 1.0, generator=generator)
    return model.eval().requires_grad_(False)


def _tiny_clip() -> nn.Module:
    """The tiny CLIP that make_tiny_models saves, fp32 with every weight fp16-representable."""
    clip = _import_clip()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(_TINY_SEED)
        model = clip.model.CLIP(**_TINY_CLIP)
    with torch.no_grad():
        for tensor in model.parameters():
            tensor.copy_(tensor.half().float())  # what loading from the fp16 file gives back
    return model.eval().requires_grad_(False)


@contextlib.contextmanager
def _lightning_class_for_pickling() -> Iterator[type]:
    """Yield a class that pickles as pytorch_lightning...ModelCheckpoint, Lightning or not.

    The class is registered in sys.modules only while this context is open (pickle looks
    classes up by module name to write them); everything is restored afterwards.
    """
    names = (
        "pytorch_lightning",
        "pytorch_lightning.callbacks",
        "pytorch_lightning.callbacks.model_checkpoint",
    )
    saved = {name: sys.modules.get(name) for name in names}
    leaf = types.ModuleType(names[-1])
    cls = type("ModelCheckpoint", (), {"__module__": names[-1], "__qualname__": "ModelCheckpoint"})
    leaf.ModelCheckpoint = cls  # type: ignore[attr-defined]
    try:
        for name in names[:-1]:
            sys.modules.setdefault(name, types.ModuleType(name))
        sys.modules[names[-1]] = leaf
        yield cls
    finally:
        for name, module in saved.items():
            if module is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = module


def _lightning_checkpoint_bytes(state_dict: Mapping[str, torch.Tensor]) -> bytes:
    """A checkpoint laid out like a real taming/Lightning ``last.ckpt``, as bytes."""
    state = OrderedDict(state_dict)
    # Real checkpoints carry the loss network too; the loader must drop these.
    state["loss.logvar"] = torch.zeros((), device="cpu")
    state["loss.discriminator.main.0.weight"] = torch.zeros(8, 3, 4, 4, device="cpu")
    with _lightning_class_for_pickling() as model_checkpoint:
        checkpoint = {
            "epoch": 3,
            "global_step": 1234,
            "pytorch-lightning_version": "1.0.8",
            "callbacks": {
                model_checkpoint: {
                    "monitor": "val/rec_loss",
                    "best_model_score": torch.tensor(0.25, device="cpu"),
                    "best_model_path": "logs/checkpoints/last.ckpt",
                    "current_score": None,
                    "dirpath": "logs/checkpoints",
                }
            },
            "optimizer_states": [
                {
                    "state": {},
                    "param_groups": [
                        {
                            "lr": 4.5e-06,
                            "betas": (0.5, 0.9),
                            "eps": 1e-08,
                            "weight_decay": 0,
                            "amsgrad": False,
                            "params": list(range(len(state_dict))),
                        }
                    ],
                }
            ],
            "lr_schedulers": [],
            "state_dict": state,
        }
        buffer = io.BytesIO()  # a buffer, not a path: the archive name must not vary
        torch.save(checkpoint, buffer)
    return buffer.getvalue()


_TINY_CLIP_ARCHIVE: list[bytes] = []  # built once per process; see _tiny_clip_archive


def _tiny_clip_archive() -> bytes:
    """The tiny CLIP as a TorchScript archive in fp16, the format of OpenAI's released files.

    The archive's debug records hold the Python stack of the trace, so the trace runs in a
    fresh thread (the same stack whoever calls); TorchScript also numbers the class names it
    generates per process, so the archive is built once per process and reused.
    """
    if not _TINY_CLIP_ARCHIVE:
        model = _tiny_clip()
        result: list[bytes | BaseException] = []

        def trace() -> None:
            image = torch.zeros(1, 3, 32, 32, device="cpu")  # [B, 3, S, S]
            tokens = torch.zeros(1, 77, dtype=torch.long, device="cpu")  # [B, context]
            tokens[0, :2] = torch.tensor([49406, 49407], device="cpu")  # start and end of text
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")  # tracer and TorchScript deprecation notes
                    traced = torch.jit.trace(model, (image, tokens), check_trace=False)
                    traced = traced.half()  # released CLIP weights are fp16
                    buffer = io.BytesIO()  # not a path: the archive name must not vary
                    torch.jit.save(traced, buffer)
                result.append(buffer.getvalue())
            except BaseException as exc:
                result.append(exc)

        worker = threading.Thread(target=trace, name="vqclip-tiny-clip")
        worker.start()
        worker.join()
        if isinstance(result[0], BaseException):
            raise result[0]
        _TINY_CLIP_ARCHIVE.append(result[0])
    return _TINY_CLIP_ARCHIVE[0]


def make_tiny_models(directory: str | os.PathLike) -> dict[str, Path]:
    """Write tiny random-weight models in the real on-disk formats, for tests and offline trials.

    - ``vqgan.yaml``: a taming config (VQModel, embed_dim 32, n_embed 256, ch 32,
      ch_mult [1, 2, 2] so f = 4) with a lossconfig that is never built;
    - ``vqgan.ckpt``: a Lightning-style checkpoint (epoch, global_step, optimizer_states,
      ``callbacks`` keyed by the ModelCheckpoint class, ``state_dict`` with ``loss.*``);
    - ``clip.pt``: a tiny ViT CLIP (32 px input, width 64) as a TorchScript archive with fp16
      weights, like OpenAI's files, for ``clip.load(path, jit=False)``.

    Same seed, same bytes. The weights are noise: the pictures they make are noise too.
    """
    folder = Path(directory)
    folder.mkdir(parents=True, exist_ok=True)
    paths = {
        "vqgan_config": folder / "vqgan.yaml",
        "vqgan_checkpoint": folder / "vqgan.ckpt",
        "clip": folder / "clip.pt",
    }
    text = "# Tiny random VQGAN written by vqclip.make_tiny_models: noise, not pictures.\n"
    atomic_write(paths["vqgan_config"], text + yaml.safe_dump(_tiny_vqgan_yaml(), sort_keys=False))
    atomic_write(paths["vqgan_checkpoint"], _lightning_checkpoint_bytes(_tiny_vqgan().state_dict()))
    atomic_write(paths["clip"], _tiny_clip_archive())
    return {role: path.resolve() for role, path in paths.items()}
