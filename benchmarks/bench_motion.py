"""Motion: frames per hour, the warp's cost, and pixel against latent warps (vqclip.motion).

Speed (``--speed``): the real architectures (VQGAN imagenet f16_16384, CLIP ViT-B/32) with
random weights, as bench.py builds them, make a few camera-motion frames through
``vqclip.motion.animate`` with each warp; prints seconds per frame, frames per hour, and
what the frame's start (warp, plus re-encode for the pixel warp) costs as a share of a frame.

Comparison (``--compare``): the tiny test models make a zoom-and-pan animation and restyle a
synthetic video with each warp, and print per warp: the mean frame-to-frame change (8-bit
levels), sharpness (variance of the Laplacian), the pan actually seen between frames (phase
correlation) against the pan asked for, and CLIP similarity at the last step; for the
restyle, the frame-to-frame change with ``--blend`` 1 (each frame styled alone), 0.5 and 0.3.
Random weights make noise, not pictures: these figures say how the warps carry a picture
from frame to frame, not which looks better to a person.

    PYTHONPATH=. python benchmarks/bench_motion.py --speed --size 256 --steps 10 --frames 3
    PYTHONPATH=. python benchmarks/bench_motion.py --compare
This is a script that prints figures, not a test; nothing here asserts a speed.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))


def speed(size: int, steps: int, frames: int, cutn: int, precision: str, warps: list[str]) -> None:
    import torch
    from bench import build_models, machine

    import vqclip.motion as motion_module
    from vqclip.config import RunConfig
    from vqclip.motion import MotionConfig, animate

    info = machine("cpu")
    print(f"machine: {info.get('cpu', '?')}, {info['cpus']} CPUs, torch {info['torch']}, "
          f"{torch.get_num_threads()} threads; load average {os.getloadavg()[0]:.1f}")  # fmt: skip
    models = build_models("cpu")
    config = RunConfig(prompt="a lighthouse in a storm, oil painting", size=[size, size],
                       cutn=cutn, seed=1, device="cpu", precision=precision, credentials=False)  # fmt: skip
    starts: list[float] = []
    original = motion_module.start_latent

    def timed(*args: Any, **kwargs: Any) -> Any:
        begin = time.perf_counter()
        z = original(*args, **kwargs)
        starts.append(time.perf_counter() - begin)
        return z

    from torch.utils.flop_counter import FlopCounterMode

    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        models.vqgan.encode(torch.zeros(1, 3, size, size))
    print(f"re-encode (VQGAN encoder forward) at {size}x{size}: "
          f"{counter.get_total_flops() / 1e9:.0f} GFLOP")  # fmt: skip
    motion_module.start_latent = timed
    with tempfile.TemporaryDirectory() as out:
        for warp in warps:
            starts.clear()
            spec = MotionConfig(frames=frames + 1, steps_per_frame=steps, zoom=1.02, pan_x=2,
                                rotate=0.5, warp=warp)  # fmt: skip
            times = []
            begin = time.perf_counter()
            for frame in animate(config, spec, models, out=out):
                now = time.perf_counter()
                if frame.index > 0:  # frame 0 starts from the seed: no warp to time
                    times.append(now - begin)
                begin = now
            per_frame = sorted(times)[len(times) // 2]
            warp_s = sorted(starts[1:])[len(starts[1:]) // 2]
            print(f"{warp} warp, {size}x{size}, {steps} steps/frame, cutn {cutn}, "
                  f"{precision}: {per_frame:.1f} s/frame = {3600 / per_frame:.1f} frames/hour; "
                  f"start of a frame (warp{' + re-encode' if warp == 'pixel' else ''}) "
                  f"{warp_s:.3f} s = {100 * warp_s / per_frame:.2f} % of a frame")  # fmt: skip


def _phase_shift(a: Any, b: Any) -> tuple[float, float]:
    """(dx, dy) in pixels that moves picture a onto b (phase correlation, grey)."""
    import numpy as np

    fa, fb = np.fft.fft2(a.mean(-1)), np.fft.fft2(b.mean(-1))
    r = fb * np.conj(fa)
    corr = np.fft.ifft2(r / (np.abs(r) + 1e-9)).real
    y, x = np.unravel_index(np.argmax(corr), corr.shape)
    h, w = corr.shape
    return float(x if x <= w // 2 else x - w), float(y if y <= h // 2 else y - h)


def _sharpness(a: Any) -> float:
    import numpy as np

    g = a.mean(-1)
    lap = 4 * g[1:-1, 1:-1] - g[:-2, 1:-1] - g[2:, 1:-1] - g[1:-1, :-2] - g[1:-1, 2:]
    return float(np.var(lap))


def compare(frames: int, steps: int) -> None:
    import numpy as np
    import torch
    from PIL import Image

    from vqclip.config import RunConfig
    from vqclip.export import make_mp4
    from vqclip.models import load_models
    from vqclip.motion import MotionConfig, animate, frames_difference
    from vqclip.testing import make_tiny_models

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        files = make_tiny_models(tmp)
        config = RunConfig(prompt="a unicorn", size=[64, 64], cutn=4, seed=7, lr=0.01,
                           vqgan_config=str(files["vqgan_config"]),
                           vqgan_checkpoint=str(files["vqgan_checkpoint"]),
                           clip_model=str(files["clip"]), device="cpu", precision="fp32",
                           out=str(Path(tmp) / "out"), credentials=False)  # fmt: skip
        models = load_models(config, progress=False)
        print(f"tiny models (random weights, noise): {frames} frames x {steps} steps at 64x64")
        for pan, warp in [(p, w) for p in (4, 1) for w in ("pixel", "latent")]:
            if warp == "pixel":
                print(f"camera: pan {pan} px right per frame ({pan / 4:g} tiny latent cell)")
            spec = MotionConfig(frames=frames, steps_per_frame=steps, pan_x=pan, warp=warp)
            made = list(animate(config, spec, models))
            arrays = [np.asarray(f.image, dtype=np.float64) for f in made]
            shifts = [_phase_shift(a, b)[0] for a, b in zip(arrays, arrays[1:])]
            sims = [np.mean([p["similarity"] for p in f.stats["prompts"]]) for f in made]
            print(f"  {warp}: frame-to-frame change {frames_difference([f.path for f in made]):.1f}"
                  f" levels, sharpness {np.mean([_sharpness(a) for a in arrays]):.0f}, pan seen "
                  f"{np.mean(shifts):+.2f} px/frame (asked +{pan}; median {np.median(shifts):+.0f}), "
                  f"CLIP similarity {np.mean(sims):.4f}")  # fmt: skip
        print("camera: zoom 1.02 and rotate 1 degree per frame")
        for warp in ("pixel", "latent"):
            spec = MotionConfig(frames=frames, steps_per_frame=steps, zoom=1.02, rotate=1,
                                warp=warp)  # fmt: skip
            made = list(animate(config, spec, models))
            arrays = [np.asarray(f.image, dtype=np.float64) for f in made]
            print(
                f"  {warp}: frame-to-frame change {frames_difference([f.path for f in made]):.1f}"
                f" levels, sharpness {np.mean([_sharpness(a) for a in arrays]):.0f}"
            )
        yy, xx = np.mgrid[0:64, 0:64]
        video = [np.stack([128 + 100 * np.sin((xx + 3 * i) / 6), 128 + 100 * np.cos((yy - 2 * i) / 7),
                           np.full((64, 64), 90.0 + 5 * i)], -1).astype(np.uint8)
                 for i in range(frames)]  # fmt: skip
        path = make_mp4(video, Path(tmp) / "in.mp4", fps=8, hold_last=0, credentials=None)
        source = frames_difference([Image.fromarray(v) for v in video])
        print(f"restyle a {frames}-frame synthetic video (its own frame-to-frame change "
              f"{source:.1f} levels):")  # fmt: skip
        for warp in ("pixel", "latent"):
            figures = []
            for blend in (1.0, 0.5, 0.3):
                spec = MotionConfig(frames=frames, steps_per_frame=steps, init_video=str(path),
                                    blend=blend, warp=warp)  # fmt: skip
                made = list(animate(config, spec, models))
                figures.append(f"blend {blend:g}: {frames_difference([f.path for f in made]):.1f}")
            print(f"  {warp}: " + ", ".join(figures) + " levels")


def done_when() -> None:
    """The issue's done-when at full size, on the tiny models: a 48-frame zoom with two
    keyframed prompts SIGKILLed after frame 30 and resumed against an uninterrupted one; a
    24-frame restyle against its frames styled alone."""
    import signal
    import subprocess

    import imageio.v3 as iio
    import numpy as np
    from PIL import Image

    from vqclip.credentials import content_bytes
    from vqclip.export import make_mp4
    from vqclip.motion import frames_difference
    from vqclip.testing import make_tiny_models

    with tempfile.TemporaryDirectory() as tmp:
        files = make_tiny_models(tmp)
        flags = ["--vqgan-config", str(files["vqgan_config"]), "--vqgan-checkpoint",
                 str(files["vqgan_checkpoint"]), "--clip", str(files["clip"]), "--device", "cpu",
                 "--precision", "fp32", "--size", "64", "64", "--cutn", "4", "--seed", "5",
                 "--no-credentials", "--quiet", "--name", "anim"]  # fmt: skip
        zoom = ["--frames", "48", "--steps-per-frame", "3", "--zoom", "0:1.0, 24:1.04, 47:1.0",
                "--easing", "smooth", "--pan", "1,0", "--rotate", "0.5",
                "--timeline", "24: a forest at dawn"]  # fmt: skip

        def motion(prompt: str, *extra: str) -> list[str]:
            return [sys.executable, "-m", "vqclip", "motion", prompt, *flags, *extra]

        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        whole, cut = Path(tmp) / "whole", Path(tmp) / "cut"
        prompt = "a lighthouse in a storm"
        subprocess.run(motion(prompt, *zoom, "--out", str(whole)), check=True, env=env)
        process = subprocess.Popen(motion(prompt, *zoom, "--out", str(cut)), env=env)
        while not (cut / "anim" / "frames" / "000030.png").exists():
            time.sleep(0.01)
        process.send_signal(signal.SIGKILL)
        process.wait()
        done = len(list((cut / "anim" / "frames").glob("0*.png")))
        resume = [sys.executable, "-m", "vqclip", "resume", str(cut / "anim"), "--quiet"]
        subprocess.run(resume, check=True, env=env)
        names = sorted(p.name for p in (whole / "anim" / "frames").glob("0*.png"))
        same = sum(content_bytes(whole / "anim" / "frames" / n) == content_bytes(
            cut / "anim" / "frames" / n) for n in names)  # fmt: skip
        videos = [iio.imread(d / "anim" / "animation.mp4", plugin="FFMPEG") for d in (whole, cut)]
        print(f"48-frame zoom killed with {done} frames finished, resumed: {same} of "
              f"{len(names)} frames byte-identical; MP4 frames equal: "
              f"{np.array_equal(*videos)}")  # fmt: skip
        yy, xx = np.mgrid[0:64, 0:64]
        video = [np.stack([128 + 100 * np.sin((xx + 3 * i) / 6), 128 + 100 * np.cos((yy - 2 * i) / 7),
                           np.full((64, 64), 90.0 + 5 * i)], -1).astype(np.uint8)
                 for i in range(24)]  # fmt: skip
        clip = make_mp4(video, Path(tmp) / "in.mp4", fps=8, hold_last=0, credentials=None)
        source = frames_difference([Image.fromarray(v) for v in video])
        for warp in ("latent", "pixel"):
            figures = []
            for blend in ("1", "0.5", "0.3"):
                out = Path(tmp) / f"{warp}{blend}"
                subprocess.run(motion("a watercolor painting", "--lr", "0.01", "--init-video",
                                      str(clip), "--blend", blend, "--warp", warp, "--frames",
                                      "24", "--steps-per-frame", "3", "--out", str(out)),
                               check=True, env=env, stdout=subprocess.DEVNULL)  # fmt: skip
                made = sorted((out / "anim" / "frames").glob("0*.png"))
                figures.append(f"blend {blend}: {frames_difference(made):.1f}")
            print(f"24-frame restyle ({warp}; the input changes {source:.1f}): "
                  + ", ".join(figures) + " levels frame to frame")  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--speed", action="store_true", help="frames/hour, real architectures")
    parser.add_argument("--compare", action="store_true", help="pixel vs latent, tiny models")
    parser.add_argument("--done-when", action="store_true", help="the issue's checks, full size")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=10, help="steps per frame")
    parser.add_argument("--frames", type=int, default=3, help="timed frames (after frame 0)")
    parser.add_argument("--cutn", type=int, default=32)
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--warps", default="pixel,latent", help="which warps --speed times")
    args = parser.parse_args(argv)
    if args.speed:
        speed(args.size, args.steps, args.frames, args.cutn, args.precision, args.warps.split(","))
    if args.compare or not (args.speed or args.done_when):
        compare(12, 3)
    if args.done_when:
        done_when()
    return 0


if __name__ == "__main__":
    sys.exit(main())
