"""Make assets/motion.gif: a zooming, turning animation with two keyframed prompts.

Run from the repository root: `python scripts/motion_picture.py`. It uses the tiny
random-weight models (made in a temporary folder), so the frames are noise from random
weights, marked as such on the GIF: it shows how an animation moves and is labelled, not what
real models paint; with real models the README's commands make real ones.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from PIL import Image, ImageDraw

from vqclip.config import RunConfig
from vqclip.export import label_image, make_gif
from vqclip.models import load_models, make_tiny_models
from vqclip.motion import MotionConfig, animate


def main() -> int:
    with tempfile.TemporaryDirectory() as folder:
        files = make_tiny_models(folder)
        config = RunConfig(
            prompt="a lighthouse in a storm",
            timeline=["8: a forest at dawn"],
            size=[64, 64],
            cutn=8,
            seed=3,
            vqgan_config=str(files["vqgan_config"]),
            vqgan_checkpoint=str(files["vqgan_checkpoint"]),
            clip_model=str(files["clip"]),
            device="cpu",
            precision="fp32",
            out=folder,
            credentials=False,
        )
        motion = MotionConfig(
            frames=16, steps_per_frame=3, zoom="0:1.0, 8:1.06", rotate=2, warp="latent", fps=8
        )
        models = load_models(config, progress=False)
        frames = []
        for frame in animate(config, motion, models):
            big = frame.image.resize((128, 128), Image.Resampling.NEAREST)
            labelled = label_image(big, f"{frame.index}: {frame.prompts}")
            draw = ImageDraw.Draw(labelled)  # the mark: these frames are not a picture
            draw.rectangle((0, 0, 128, 12), fill=(0, 0, 0))
            draw.text((3, 1), "NOISE: random weights", fill=(255, 255, 255))
            frames.append(labelled)
        out = make_gif(frames, Path("assets/motion.gif"), fps=8, hold_last=0.5, credentials=None)
    print(out, out.stat().st_size, "bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
