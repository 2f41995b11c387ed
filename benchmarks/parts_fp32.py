"""fp32 on the CPU, part by part: taming's decoder and CLIP's vision tower against vqclip's
lean modules on the same random weights (forward + backward, interleaved rounds, best of 3).

    PYTHONPATH=. python benchmarks/parts_fp32.py

The full-run benchmark (bench.py) times whole iterations; this separates the two parts
whose fp32 speed decides whether fp32 runs on the lean modules (vqclip.device.FAST_FP32_ON_CPU).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench import build_models  # noqa: E402

from vqclip import fast as lean  # noqa: E402


def main() -> None:
    torch.manual_seed(0)
    models = build_models("cpu")
    decoder, visual = models.vqgan.decoder, models.clip.visual
    f = models.vqgan.factor
    z0 = torch.randn(1, models.vqgan.embed_dim, 256 // f, 256 // f)  # a 256x256 image's latent
    x0 = torch.rand(8, 3, 224, 224)  # 8 cutouts

    def decode(module):
        def fn():
            z = z0.clone().requires_grad_()
            module(models.vqgan.post_quant_conv(z)).float().square().mean().backward()

        return fn

    def embed(module):
        def fn():
            x = x0.clone().requires_grad_()
            module(x).float().square().sum().backward()

        return fn

    contiguous = lean.Levers(channels_last=False)
    rows = [
        ("decoder, taming's modules", decode(decoder)),
        ("decoder, lean (channels-last)", decode(lean.FastDecoder(decoder, torch.float32))),
        (
            "decoder, lean (contiguous)",
            decode(lean.FastDecoder(decoder, torch.float32, levers=contiguous)),
        ),
        ("CLIP x8 cutouts, CLIP's modules", embed(visual)),
        ("CLIP x8 cutouts, lean", embed(lean.FastVisionTransformer(visual, torch.float32))),
    ]
    times: dict[str, list[float]] = {name: [] for name, _ in rows}
    for _, fn in rows:
        fn()  # warm-up
    for _ in range(3):
        for name, fn in rows:
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    print("| part (fp32, 256x256) | best s | all rounds s |")
    print("|---|---:|---|")
    for name, values in times.items():
        print(f"| {name} | {min(values):.2f} | {', '.join(f'{v:.2f}' for v in values)} |")


if __name__ == "__main__":
    main()
