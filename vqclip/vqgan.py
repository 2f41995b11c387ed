"""The VQGAN, rebuilt from taming's modules alone, and its loader.

Encoder, Decoder, VectorQuantizer2 or GumbelQuantize, quant_conv and post_quant_conv carry
taming's attribute names, so the state-dict keys match the published checkpoints minus
``loss.*``; pytorch-lightning, ``taming.main`` and the LPIPS/discriminator ``lossconfig``
are never touched.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import taming.modules.diffusionmodules.model as taming_model
import torch
import yaml
from taming.modules.diffusionmodules.model import Decoder, Encoder, nonlinearity
from taming.modules.vqvae.quantize import GumbelQuantize, VectorQuantizer2
from torch import nn
from torch.utils.checkpoint import checkpoint

from vqclip import registry
from vqclip.config import DEFAULT_VQGAN
from vqclip.device import resolve_device
from vqclip.hub import (
    OFFLINE_HELP,
    DownloadFailed,
    ModelError,
    ModelInfo,
    cache_dir,
    download,
    read_checkpoint,
    recorded_sha,
    sha256_file,
    verify_cached,
)

__all__ = ["VQGAN", "CheckpointingDecoder", "load_vqgan"]


class CheckpointingDecoder(Decoder):
    """taming's Decoder (same sub-modules, same state-dict keys) that can checkpoint.

    With ``checkpointing`` on, each block's activations are recomputed in the backward pass
    instead of kept, as the fast decoder does; off, it is taming's own forward, unchanged.
    """

    checkpointing = False

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """Latent [B, z_channels, h, w] -> image [B, out_ch, h*f, w*f]."""
        if not (self.checkpointing and torch.is_grad_enabled() and z.requires_grad):
            return super().forward(z)
        self.last_z_shape = z.shape

        def run(module: nn.Module, *inputs: torch.Tensor | None) -> torch.Tensor:
            return checkpoint(module, *inputs, use_reentrant=False)

        temb = None  # no time embedding in a VQGAN; taming's ResnetBlock still takes one

        # The walk of taming's Decoder.forward (no time embedding), one checkpoint per block.
        h = self.conv_in(z)
        h = run(self.mid.block_1, h, temb)
        h = run(self.mid.attn_1, h)
        h = run(self.mid.block_2, h, temb)
        for i_level in reversed(range(self.num_resolutions)):
            level = self.up[i_level]
            for i_block in range(self.num_res_blocks + 1):
                h = run(level.block[i_block], h, temb)
                if len(level.attn) > 0:
                    h = run(level.attn[i_block], h)
            if i_level != 0:
                h = run(level.upsample, h)
        if self.give_pre_end:
            return h
        return self.conv_out(nonlinearity(self.norm_out(h)))


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
        self.decoder: nn.Module = CheckpointingDecoder(**ddconfig)
        if gumbel:
            self.quantize: nn.Module = GumbelQuantize(z_channels, embed_dim, n_embed=n_embed)
        else:
            self.quantize = VectorQuantizer2(n_embed, embed_dim, beta=0.25)
        self.quant_conv = nn.Conv2d(z_channels, embed_dim, 1)
        self.post_quant_conv = nn.Conv2d(embed_dim, z_channels, 1)
        self.embed_dim, self.n_embed, self.gumbel = int(embed_dim), int(n_embed), bool(gumbel)

    @property
    def factor(self) -> int:
        """Pixels per latent cell along each side: 16 for the f16 models, 8 for the Gumbel f8
        one, 4 for the tiny test model; read from the encoder, which halves per level."""
        return 2 ** (self.encoder.num_resolutions - 1)

    @property
    def checkpointing(self) -> bool:
        """Whether decode recomputes the decoder's activations in the backward pass (any
        decoder: taming's, or the lean one vqclip.fast swaps in)."""
        return bool(self.decoder.checkpointing)

    @checkpointing.setter
    def checkpointing(self, on: bool) -> None:
        self.decoder.checkpointing = bool(on)

    @property
    def codebook(self) -> torch.Tensor:
        """The code vectors, [n_embed, embed_dim]."""
        return self.quantize.embed.weight if self.gumbel else self.quantize.embedding.weight

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Image [B, 3, H, W] in [-1, 1] -> pre-quantisation latent [B, embed_dim, H/f, W/f]."""
        return self.quant_conv(self.encoder(x))

    def decode(self, z_q: torch.Tensor) -> torch.Tensor:
        """Latent [B, embed_dim, h, w] -> image [B, 3, h*f, w*f] in fp32, roughly in [-1, 1].

        The same call for every decoder: taming's as loaded, or the lean one of any dtype.
        """
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
        digests = {role: sha256_file(path) for role, path in files.items()}
        label = files["checkpoint"].name
    else:
        files, digests = _fetch_vqgan(name, progress=progress)
        label = name
    model = _build_vqgan(_read_vqgan_config(files["config"]), files["config"])
    state = read_checkpoint(files["checkpoint"])
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
    failed: list[tuple[str, DownloadFailed]] = []
    fresh: set[str] = set()
    for role, (path, urls) in plan.items():
        if path.exists():
            continue
        try:
            download(urls, path, what=f"VQGAN {name} {role}", progress=progress)
            fresh.add(role)
        except DownloadFailed as exc:
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
            f"with --vqgan-config FILE.yaml --vqgan-checkpoint FILE.ckpt; or, {OFFLINE_HELP}."
        )
    files = {role: path for role, (path, _) in plan.items()}
    digests = {
        role: recorded_sha(path) if role in fresh else verify_cached(path)
        for role, path in files.items()
    }
    return files, digests
