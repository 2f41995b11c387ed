"""A 6-candidate sweep timed end to end, and what batching candidates could gain here.

Part 1 runs the real sweep path (``start_sweep`` -> ``run_sweep`` -> ``rank_sweep`` ->
``sheets``): one idea x three styles x two seeds at 128x128, the candidates one after
another with the models loaded once, and prints the wall time including the model load,
each candidate's time and the ranking's. ``--models tiny`` (default) loads vqclip's tiny
random-weight models from files (``make-tiny-models``); ``--models real`` builds the real
architectures (VQGAN imagenet f16_16384, CLIP ViT-B/32) with random weights, as
``bench.py`` does (nothing is downloaded; "load" is then building them).

Part 2 is a standalone experiment, outside the engine: one optimisation step's work
(quantise, decode, cutouts, CLIP, loss, backward) for two candidates, timed as two steps
of batch 1 against one step of batch 2 (a batch dimension through the decoder and CLIP),
interleaved, median (and best) of ``--repeats``. It says how much a batched sweep could gain on this
machine before anyone builds it.

    python benchmarks/bench_sweep.py                         # tiny models
    python benchmarks/bench_sweep.py --models real --iterations 5
    python benchmarks/bench_sweep.py --models real --no-sweep --cutn 8 32

This is a script that prints figures, not a test; nothing here asserts a speed.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import platform
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
PROMPT = "a lighthouse in a storm"
STYLES = ["painting", "pencil drawing", "watercolor"]
SEEDS = [1, 2]


# --- the machine -----------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    """CPU model, cores, the vector extensions that matter, and whether bf16 is native."""
    import torch

    text = ""
    with contextlib.suppress(OSError):
        text = Path("/proc/cpuinfo").read_text()
    lines = text.splitlines()
    names = [line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")]
    flags = next((line.split(":", 1)[1].split() for line in lines if line.startswith("flags")), [])
    wanted = {"avx2", "avx512f", "avx512_bf16", "amx_bf16"}
    found = sorted(set(flags) & wanted)
    load = os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3
    return {
        "cpu": names[0] if names else platform.processor() or "unknown",
        "cores": os.cpu_count(),
        "flags": found,
        "bf16_native": bool({"avx512_bf16", "amx_bf16"} & set(found)),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "load_average": [round(v, 2) for v in load],
    }


def describe_machine(info: dict[str, Any]) -> str:
    native = "native bf16" if info["bf16_native"] else "no native bf16 (fp32 is the fast path)"
    return (
        f"{info['cpu']}, {info['cores']} cores ({', '.join(info['flags']) or 'no AVX2'}; "
        f"{native}); torch {info['torch']}, {info['threads']} threads; "
        f"load average {info['load_average'][0]}"
    )


# --- models ---------------------------------------------------------------------------------


def tiny_config(folder: Path, precision: str) -> Any:
    """A base config naming the tiny models, written to ``folder`` (not yet loaded)."""
    from vqclip.config import RunConfig
    from vqclip.models import make_tiny_models

    with contextlib.redirect_stdout(io.StringIO()):
        paths = make_tiny_models(folder / "models")
    return RunConfig(
        vqgan_config=str(paths["vqgan_config"]),
        vqgan_checkpoint=str(paths["vqgan_checkpoint"]),
        clip_model=str(paths["clip"]),
        device="cpu",
        precision=precision,
    )


def load(kind: str, folder: Path, precision: str) -> tuple[Any, Any, float]:
    """(models, base config, seconds spent loading them): the tiny models read from files
    as a run reads them, or the real architectures built with random weights."""
    from vqclip.observers import load_run_models

    if kind == "tiny":
        base = tiny_config(folder, precision)
        start = time.perf_counter()
        return load_run_models(base, progress=False), base, time.perf_counter() - start
    start = time.perf_counter()
    models, base = load_real(precision)
    return models, base, time.perf_counter() - start


def load_real(precision: str) -> tuple[Any, Any]:
    """(models, base config) for the real architectures with random weights."""
    from vqclip.config import RunConfig

    sys.path.insert(0, str(HERE))
    from bench import build_models  # the same random-weight builder as bench.py

    from vqclip import speed

    models = speed.optimize_models(build_models("cpu"), precision, inplace=True)
    return models, RunConfig(device="cpu", precision=precision)


def resolved_precision(requested: str, info: dict[str, Any]) -> str:
    """auto -> bf16 where the CPU has it natively, else fp32 (what vqclip's auto does)."""
    if requested != "auto":
        return requested
    return "bf16" if info["bf16_native"] else "fp32"


# --- part 1: the sweep ----------------------------------------------------------------------


def time_sweep(args: argparse.Namespace, precision: str) -> dict[str, Any]:
    from vqclip.sweep import load_judge, rank_sweep, run_sweep, sheets, start_sweep

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        models, base, load_s = load(args.models, folder, precision)
        start = time.perf_counter() - load_s  # the wall clock starts with the model load
        base = base.replace(
            prompt=PROMPT,
            size=[args.size, args.size],
            iterations=args.iterations,
            cutn=args.sweep_cutn,
            snapshots="last",
            out=str(folder / "out"),
        )
        sweep = start_sweep(base, [PROMPT], STYLES, SEEDS, name="bench")
        began: dict[str, float] = {}
        took: list[float] = []

        def stamp(message: str) -> None:
            job = message.split(":", 1)[0]
            if job not in began:
                began[job] = time.perf_counter()
            else:
                took.append(time.perf_counter() - began[job])

        jobs = run_sweep(sweep, models, progress=False, say=stamp)
        ran = time.perf_counter()
        judge, name = load_judge(None, models)
        rank_sweep(sweep, judge, name, snapshots=True)
        sheets(sweep)
        done = time.perf_counter()
    return {
        "candidates": len(jobs),
        "done": sum(job.status == "done" for job in jobs),
        "load_s": load_s,
        "candidates_s": took,
        "sweep_s": ran - start - load_s,
        "rank_and_sheets_s": done - ran,
        "wall_s": done - start,
        "per_iteration_s": (ran - start - load_s) / (len(jobs) * args.iterations),
    }


# --- part 2: batching, measured outside the engine -------------------------------------------


def time_batching(models: Any, size: int, cutn: int, repeats: int) -> dict[str, float]:
    """Seconds for two candidates' step work: two steps at batch 1 against one at batch 2."""
    import torch
    import torch.nn.functional as F

    from vqclip.cutouts import make_cutouts
    from vqclip.ops import vector_quantize
    from vqclip.prompts import encode_images

    vqgan, clip_model = models.vqgan, models.clip
    side = size // vqgan.factor
    generator = torch.Generator().manual_seed(0)
    target = F.normalize(torch.randn(1, clip_model.visual.output_dim, generator=generator), dim=-1)
    latents = torch.randn(2, vqgan.embed_dim, side, side, generator=generator)

    def step(z: torch.Tensor) -> None:  # z [B, C, h, w]
        z = z.clone().requires_grad_()
        image = vqgan.decode(vector_quantize(z, vqgan.codebook)).add(1).div(2).clamp(0, 1)
        cutouts = make_cutouts(
            image.float(),
            cutn=cutn,
            cut_size=models.clip_size,
            cut_pow=1.0,
            generator=generator,
        )  # [B * cutn, 3, S, S]
        embeddings = F.normalize(encode_images(clip_model, cutouts), dim=-1)
        (1 - embeddings @ target.T).mean().backward()

    def separately() -> None:
        step(latents[:1])
        step(latents[1:])

    def together() -> None:
        step(latents)

    times: dict[str, list[float]] = {"batch 1 x 2": [], "batch 2": []}
    separately(), together()  # warm-up
    for _ in range(repeats):
        for label, work in (("batch 1 x 2", separately), ("batch 2", together)):
            begin = time.perf_counter()
            work()
            times[label].append(time.perf_counter() - begin)
    one, two = statistics.median(times["batch 1 x 2"]), statistics.median(times["batch 2"])
    best_one, best_two = min(times["batch 1 x 2"]), min(times["batch 2"])
    return {
        "size": size,
        "cutn": cutn,
        "batch1x2_s": one,
        "batch2_s": two,
        "speedup": one / two,
        "best_speedup": best_one / best_two,  # the least disturbed runs, on a shared machine
    }


# --- main -----------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", choices=("tiny", "real"), default="tiny")
    parser.add_argument("--size", type=int, default=128, help="width and height (default 128)")
    parser.add_argument("--iterations", type=int, default=10, help="per candidate (default 10)")
    parser.add_argument("--sweep-cutn", type=int, default=32, help="cutouts in the sweep")
    parser.add_argument(
        "--cutn", type=int, nargs="+", default=[32], help="cutouts in the batching experiment"
    )
    parser.add_argument("--repeats", type=int, default=5, help="batching repeats (median)")
    parser.add_argument("--precision", choices=("auto", "fp32", "bf16"), default="auto")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    parser.add_argument("--no-sweep", action="store_true", help="only the batching experiment")
    parser.add_argument("--no-batching", action="store_true", help="only the sweep")
    args = parser.parse_args(argv)

    warnings.filterwarnings("ignore", message="pkg_resources is deprecated")
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    info = machine()
    precision = resolved_precision(args.precision, info)
    print(f"machine: {describe_machine(info)}")
    print(f"models: {args.models}; precision {precision}; {args.size}x{args.size}")

    if not args.no_sweep:
        result = time_sweep(args, precision)
        per = ", ".join(f"{t:.2f}" for t in result["candidates_s"])
        print(
            f"sweep: {result['candidates']} candidates ({result['done']} done), "
            f"{args.iterations} iterations each, cutn {args.sweep_cutn}, one after another"
        )
        print(f"  wall time including model load: {result['wall_s']:.1f} s")
        print(f"  model load: {result['load_s']:.2f} s")
        print(f"  per candidate (s): {per}")
        print(f"  mean per candidate: {statistics.mean(result['candidates_s']):.2f} s")
        print(f"  per iteration: {result['per_iteration_s']:.3f} s")
        print(f"  ranking (final + snapshots) and sheets: {result['rank_and_sheets_s']:.2f} s")

    if not args.no_batching:
        with tempfile.TemporaryDirectory() as tmp:
            models, _, _ = load(args.models, Path(tmp), precision)
            for cutn in args.cutn:
                figures = time_batching(models, args.size, cutn, args.repeats)
                print(
                    f"batching, {args.size}x{args.size}, cutn {cutn}: two candidates' step as "
                    f"batch 1 x 2 {figures['batch1x2_s']:.3f} s, as batch 2 "
                    f"{figures['batch2_s']:.3f} s (medians): {figures['speedup']:.2f}x; "
                    f"best of each: {figures['best_speedup']:.2f}x"
                )
    print(f"load average at the end: {machine()['load_average']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
