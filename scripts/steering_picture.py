"""Make assets/steering.png: the similarity plot of a run steered three times.

Run from the repository root: `python scripts/steering_picture.py`. It uses the tiny
random-weight models (made in a temporary folder), so the curves show how the plot reads,
not how real models score; with real models the same commands give real pictures.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from vqclip.config import RunConfig
from vqclip.models import make_tiny_models
from vqclip.observers import generate, read_log
from vqclip.ui.gallery import plot_png


def main() -> int:
    with tempfile.TemporaryDirectory() as folder:
        files = make_tiny_models(folder)
        config = RunConfig(
            prompt="a lighthouse:1 | fog:0.5",
            timeline=["40: a lighthouse:1 | fog:1", "80: a castle:1 | fog:0.2", "120: a castle"],
            size=[64, 64],
            cutn=8,
            iterations=160,
            seed=3,
            snapshots="last",
            vqgan_config=str(files["vqgan_config"]),
            vqgan_checkpoint=str(files["vqgan_checkpoint"]),
            clip_model=str(files["clip"]),
            device="cpu",
            precision="fp32",
            out=folder,
        )
        result = generate(config, progress=False)
        out = Path("assets/steering.png")
        out.write_bytes(plot_png(read_log(result.run_dir)))
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
