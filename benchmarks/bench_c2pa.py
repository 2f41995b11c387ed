"""What a content credential costs: signing one 256x256 snapshot against one step at 256x256.

It times ``export.save_png`` of a 256x256 snapshot with its recipe, signed with the local
identity and unsigned (``credentials=None``), and the C2PA signing alone (``sign_file`` on an
already written PNG): the medians of ``--repeats`` saves after a warm-up (the first signing
also makes the local identity in a throwaway cache folder). Then it times steps of a run at
256x256 on the CPU with the real architectures (VQGAN imagenet f16_16384, CLIP ViT-B/32,
random weights, nothing downloaded, as ``bench.py`` builds them) and the default 32 cutouts,
and prints the signing cost as a share of one step: the goal is under 2 %. Every snapshot is
signed once, so this share is the most a credential adds to a run that saves a snapshot
at every step; schedules save far fewer.

    python benchmarks/bench_c2pa.py                    # 2 timed steps after 1 warm-up
    python benchmarks/bench_c2pa.py --steps 0          # signing only

This is a script that prints figures, not a test; nothing here asserts a speed.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # bench.py beside this file: the real architectures


def machine() -> str:
    """CPU model, cores and the bf16 extensions (as `grep -o avx512_bf16|amx_bf16` finds)."""
    text = ""
    with contextlib.suppress(OSError):
        text = Path("/proc/cpuinfo").read_text()
    lines = text.splitlines()
    names = [line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")]
    flags = next((line.split(":", 1)[1].split() for line in lines if line.startswith("flags")), [])
    bf16 = sorted({"avx512_bf16", "amx_bf16"} & set(flags))
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return (
        f"{names[0] if names else platform.processor() or 'unknown CPU'}, {os.cpu_count()} "
        f"cores, bf16 extensions: {', '.join(bf16) or 'none'}; load average {load:.2f}"
    )


def snapshot(seed: int = 0):
    """A 256x256 picture with the detail of a snapshot (noise over a gradient), uint8 HWC."""
    import numpy as np

    rng = np.random.default_rng(seed)
    ramp = np.linspace(0, 200, 256)[None, :, None]
    return np.clip(ramp + rng.normal(0, 40, (256, 256, 3)), 0, 255).astype(np.uint8)


def time_saves(folder: Path, repeats: int) -> dict[str, float]:
    """Median seconds of a signed save, an unsigned save and the signing alone."""
    import shutil

    from vqclip.credentials import LOCAL, sign_file
    from vqclip.export import save_png

    image = snapshot()
    recipe = {
        "config": {"prompt": "a lighthouse in a storm", "size": [256, 256], "seed": 1},
        "iteration": 50,
        "models": {"vqgan": {"sha256": {"checkpoint": "0" * 64}}},
    }
    save_png(image, folder / "warm.png", recipe)  # makes the local identity: not timed
    times: dict[str, list[float]] = {"signed": [], "unsigned": [], "signing": []}
    for k in range(repeats):
        start = time.perf_counter()
        save_png(image, folder / f"s{k}.png", recipe)
        times["signed"].append(time.perf_counter() - start)
        start = time.perf_counter()
        save_png(image, folder / f"u{k}.png", recipe, credentials=None)
        times["unsigned"].append(time.perf_counter() - start)
        copy = shutil.copy(folder / f"u{k}.png", folder / f"c{k}.png")
        start = time.perf_counter()
        sign_file(copy, recipe, LOCAL, "image/png")
        times["signing"].append(time.perf_counter() - start)
    result = {name: statistics.median(values) for name, values in times.items()}
    result["bytes_signed"] = (folder / "s0.png").stat().st_size
    result["bytes_unsigned"] = (folder / "u0.png").stat().st_size
    return result


def time_steps(steps: int, cutn: int) -> float:
    """Median seconds of one step at 256x256 on the CPU, real architectures, fp32; the first
    step (set-up, first allocations) is left out."""
    from bench import build_models

    from vqclip.config import RunConfig
    from vqclip.engine import prepare, run

    models = build_models("cpu")
    config = RunConfig(
        prompt="a lighthouse in a storm",
        size=[256, 256],
        cutn=cutn,
        iterations=steps + 1,  # yields steps + 2 times: steps + 1 gaps, the first left out
        seed=0,
        device="cpu",
        precision="fp32",
        snapshots="last",
    )
    stamps = []
    for _ in run(prepare(config, models)):
        stamps.append(time.perf_counter())
    per_step = [b - a for a, b in zip(stamps[:-1], stamps[1:])]
    return statistics.median(per_step[1:] if len(per_step) > 1 else per_step)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=20, help="saves timed (median)")
    parser.add_argument("--steps", type=int, default=2, help="steps timed; 0: signing only")
    parser.add_argument("--cutn", type=int, default=32, help="cutouts per step")
    args = parser.parse_args(argv)
    print(f"machine: {machine()}")
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["VQCLIP_CACHE"] = str(Path(tmp) / "cache")  # a throwaway local identity
        import c2pa

        saves = time_saves(Path(tmp), args.repeats)
        print(f"c2pa-python {c2pa.__version__} (c2pa-rs {c2pa.sdk_version()})")
    extra = saves["bytes_signed"] - saves["bytes_unsigned"]
    print(
        f"256x256 snapshot, median of {args.repeats}: signed save {saves['signed'] * 1e3:.1f} ms, "
        f"unsigned save {saves['unsigned'] * 1e3:.1f} ms, signing alone "
        f"{saves['signing'] * 1e3:.1f} ms; the manifest adds {extra:,} bytes to "
        f"{saves['bytes_unsigned']:,}"
    )
    if args.steps > 0:
        import torch

        step = time_steps(args.steps, args.cutn)
        added = saves["signed"] - saves["unsigned"]  # signing, its copy and rename
        print(
            f"one step at 256x256, {args.cutn} cutouts, fp32, {torch.get_num_threads()} "
            f"threads, median of {args.steps}: {step:.2f} s; a signed snapshot costs "
            f"{added * 1e3:.1f} ms more than an unsigned one: {added / step * 100:.3f} % of a "
            "step (goal: < 2 %)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
