"""Where an animation frame starts: the camera's affine warp of a picture or a latent, and
the input video's frame blended in (``start_latent``).

``affine_warp`` moves a picture [B, C, H, W] by one frame's camera: zoom about the centre
(> 1 comes closer), pan in pixels (the picture moves right and down), rotate in degrees
(clockwise on screen). Pure tensor maths, every tensor on the input's device.
"""

from __future__ import annotations

import math
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from PIL import Image

from vqclip.config import ConfigError
from vqclip.state import RunError

if TYPE_CHECKING:
    from vqclip.models import Models


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


def start_latent(
    how: dict[str, Any],
    folder: Path,
    models: Models,
    size: tuple[int, int],
    precision: str = "fp32",
) -> torch.Tensor | None:
    """The latent [1, C, h, w] a frame starts from (None: from its seed, as a plain run).
    ``folder`` holds the frame's PNG; previous frames are looked up beside it."""
    vqgan, device = models.vqgan, models.device
    width, height = size
    previous = how.get("previous")
    pixels = None  # [1, 3, H, W] in [0, 1]
    if previous is not None:
        source = folder / previous
        if not source.is_file():
            raise RunError(
                f"Frame {how['frame']} starts from {previous!r}, which is not beside it in "
                f"{folder}. Reproduce it inside its animation directory (the frames before it "
                "must be there)."
            )
        camera = how["camera"]
        move = (camera["zoom"], tuple(camera["pan"]), camera["rotate"])
        if how.get("warp") == "latent":
            z = torch.load(source, map_location=device, weights_only=True)  # [1, C, h, w]
            z = affine_warp(z, *move, scale=vqgan.factor)
            if "video" not in how:
                return z
            video = how["video"]  # blended in the latent: the previous codes carry over
            new = _pixels(video_at(video["path"], size)[video["index"]].copy(), size, device)
            z_new = encode(vqgan, new, precision)
            return (1 - how["blend"]) * z + how["blend"] * z_new
        else:
            pixels = affine_warp(_pixels(Image.open(source), size, device), *move)
    if "video" in how:
        video = how["video"]
        new = _pixels(video_at(video["path"], size)[video["index"]].copy(), size, device)
        blend = how.get("blend", 1.0) if pixels is not None else 1.0
        pixels = new if pixels is None else (1 - blend) * pixels + blend * new
    if pixels is None:
        return None
    return encode(vqgan, pixels, precision)


def encode(vqgan: Any, pixels: torch.Tensor, precision: str = "fp32") -> torch.Tensor:
    """[1, 3, H, W] in [0, 1] -> the latent [1, C, h, w] (fp32). On a GPU in fp16 or bf16 the
    encoder runs in that precision (an fp32 encode would be ~10 % of a T4 frame); on the CPU
    in fp32, as the engine encodes an init image."""
    low = pixels.device.type == "cuda" and precision in ("fp16", "bf16")
    dtype = torch.float16 if precision == "fp16" else torch.bfloat16
    with torch.no_grad(), torch.autocast("cuda", dtype=dtype, enabled=low):
        return vqgan.encode(pixels * 2 - 1).float()


def _pixels(image: Image.Image, size: tuple[int, int], device: torch.device) -> torch.Tensor:
    """A PIL image -> [1, 3, H, W] float in [0, 1] on ``device`` at ``size`` (W, H)."""
    import numpy as np

    with image:
        rgb = image.convert("RGB")
        if rgb.size != tuple(size):
            rgb = rgb.resize(tuple(size), Image.Resampling.LANCZOS)
        array = np.asarray(rgb, dtype=np.uint8).copy()
    return torch.from_numpy(array).to(device).permute(2, 0, 1)[None].float() / 255


def video_frames(path: str, count: int | None = None) -> list[Image.Image]:
    """The first ``count`` frames (all when None) of a video as PIL images; ConfigError when
    it cannot be read."""
    import imageio.v3 as iio

    frames: list[Image.Image] = []
    try:
        for array in iio.imiter(path):
            frames.append(
                Image.fromarray(array[..., :3] if array.ndim == 3 else array).convert("RGB")
            )
            if count is not None and len(frames) >= count:
                break
    except Exception as error:  # imageio raises many kinds for a file it cannot decode
        raise ConfigError(
            f"init_video {path!r} cannot be read as a video ({type(error).__name__}: "
            f"{' '.join(str(error).split())[:200]}). Give an MP4, WebM or GIF file.",
            "init_video",
        ) from None
    if not frames or count is not None and len(frames) < count:
        raise ConfigError(
            f"init_video {path!r} has {len(frames)} frame(s); frame {count} was needed. Use a "
            "longer video or fewer --frames.",
            "init_video",
        )
    return frames


@lru_cache(maxsize=1)
def video_at(path: str, size: tuple[int, int]) -> tuple[Image.Image, ...]:
    """The video's frames at ``size``, read once per animation (kept while it runs)."""
    frames = video_frames(path)
    return tuple(f.resize(tuple(size), Image.Resampling.LANCZOS) for f in frames)
