"""A 6-candidate sweep timed end to end: the candidates one after another, and batched.

It runs the real sweep path (``start_sweep`` -> ``run_sweep`` -> ``rank_sweep`` ->
``sheets``): one idea x three styles x two seeds at 128x128, and prints the wall time
including the model load, each candidate's time and the ranking's, once for each value
of ``--batch`` (1: one candidate after another; 6: all six optimised as one batch through
the decoder and CLIP), each with its own model load, and the speed-up over the first.
It also prints the dense GFLOP of one candidate's step (FlopCounterMode) and the GFLOP/s
each sweep achieved beside the device's matmul peak in the run's precision: the share of
the peak that one candidate at a time already reaches bounds what batching can gain.
``--models tiny`` (default) loads vqclip's tiny random-weight models from files
(``make-tiny-models``); ``--models real`` builds the real architectures (VQGAN imagenet
f16_16384, CLIP ViT-B/32) with random weights, as ``bench.py`` does (nothing is
downloaded; "load" is then building them).

    python benchmarks/bench_sweep.py                         # tiny models
    python benchmarks/bench_sweep.py --models real --iterations 3 --batch 1 6

This is a script that prints figures, not a test; nothing here asserts a speed.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import platform
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # bench.py beside this file: its model builder and matmul timer
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


def tiny_config(folder: Path, precision: str, device: str) -> Any:
    """A base config naming the tiny models, written to ``folder`` (not yet loaded)."""
    from vqclip.config import RunConfig
    from vqclip.models import make_tiny_models

    with contextlib.redirect_stdout(io.StringIO()):
        paths = make_tiny_models(folder / "models")
    return RunConfig(
        vqgan_config=str(paths["vqgan_config"]),
        vqgan_checkpoint=str(paths["vqgan_checkpoint"]),
        clip_model=str(paths["clip"]),
        device=device,
        precision=precision,
    )


def load(kind: str, folder: Path, precision: str, device: str) -> tuple[Any, Any, float]:
    """(models, base config, seconds spent loading them): the tiny models read from files
    as a run reads them, or the real architectures built with random weights."""
    from vqclip.observers import load_run_models

    if kind == "tiny":
        base = tiny_config(folder, precision, device)
        start = time.perf_counter()
        return load_run_models(base, progress=False), base, time.perf_counter() - start
    start = time.perf_counter()
    models, base = load_real(precision, device)
    return models, base, time.perf_counter() - start


def load_real(precision: str, device: str) -> tuple[Any, Any]:
    """(models, base config) for the real architectures with random weights."""
    from bench import build_models  # the same random-weight builder as bench.py

    from vqclip.config import RunConfig
    from vqclip.fast import optimize_models

    models = optimize_models(build_models(device), precision, inplace=True)
    return models, RunConfig(device=device, precision=precision)


def step_gflop(models: Any, base: Any, profile: bool = False) -> tuple[float, dict[str, float]]:
    """Dense GFLOP of one candidate's optimisation step: one optimiser step, then decode,
    cutouts, CLIP and the backward pass (FlopCounterMode, as bench.py counts them); with
    ``profile``, also the share of that step's CPU time spent in each kind of operator
    (torch.profiler over a second step; on a GPU this is the host's time, not the device's)."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as profiler
    from torch.utils.flop_counter import FlopCounterMode

    from vqclip.engine import run
    from vqclip.plan import prepare

    steps = run(prepare(base.replace(iterations=3), models))
    next(steps)  # set-up and iteration 0 outside the count
    with FlopCounterMode(display=False) as counter:
        next(steps)
    shares: dict[str, float] = {}
    if profile:
        with profiler(activities=[ProfilerActivity.CPU]) as trace:
            next(steps)
        kinds = {"aten::mm": "matmul", "aten::addmm": "matmul", "aten::bmm": "matmul"}
        for event in trace.key_averages():
            kind = "convolution" if "convolution" in event.key else kinds.get(event.key, "other")
            shares[kind] = shares.get(kind, 0.0) + event.self_cpu_time_total
        total = sum(shares.values()) or 1.0
        shares = {kind: time / total for kind, time in shares.items()}
    steps.close()
    return counter.get_total_flops() / 1e9, shares


def matmul_peak(precision: str, device: str) -> tuple[float, int]:
    """(GFLOP/s, n) of an n x n matmul in the precision: 2048 where the device computes it
    natively, 256 where it only emulates it (a 2048x2048 one would take minutes)."""
    from bench import matmul_gflops

    from vqclip.device import cpu_supports_bf16

    emulated = device == "cpu" and (
        precision == "fp16" or (precision == "bf16" and not cpu_supports_bf16())
    )
    if emulated:
        return matmul_gflops(precision, device, n=256, repeats=2), 256
    return matmul_gflops(precision, device), 2048


# --- the sweep ----------------------------------------------------------------------


def time_sweep(args: argparse.Namespace, precision: str, batch: int) -> dict[str, Any]:
    from vqclip.sweep import load_judge, rank_sweep, run_sweep, sheets, start_sweep

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        models, base, load_s = load(args.models, folder, precision, args.device)
        start = time.perf_counter() - load_s  # the wall clock starts with the model load
        base = base.replace(
            prompt=PROMPT,
            size=[args.size, args.size],
            iterations=args.iterations,
            cutn=args.cutn,
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

        jobs = run_sweep(sweep, models, batch=batch, progress=False, say=stamp)
        ran = time.perf_counter()
        judge, name = load_judge(None, models)
        rank_sweep(sweep, judge, name, snapshots=True)
        sheets(sweep)
        done = time.perf_counter()
        # Counted after the timing, so the sweep's wall time does not include it.
        gflop, shares = step_gflop(models, base.replace(out=str(folder / "count")), args.profile)
    return {
        "candidates": len(jobs),
        "done": sum(job.status == "done" for job in jobs),
        "load_s": load_s,
        "candidates_s": took,
        "sweep_s": ran - start - load_s,
        "rank_and_sheets_s": done - ran,
        "wall_s": done - start,
        "per_iteration_s": (ran - start - load_s) / (len(jobs) * args.iterations),
        "step_gflop": gflop,
        "step_shares": shares,
    }


# --- main -----------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", choices=("tiny", "real"), default="tiny")
    parser.add_argument("--size", type=int, default=128, help="width and height (default 128)")
    parser.add_argument("--iterations", type=int, default=10, help="per candidate (default 10)")
    parser.add_argument("--cutn", type=int, default=32, help="cutouts (default 32)")
    parser.add_argument(
        "--batch", type=int, nargs="+", default=[1, 6], help="candidates at once, each value timed"
    )
    parser.add_argument("--precision", choices=("auto", "fp32", "bf16", "fp16"), default="auto")
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    parser.add_argument(
        "--profile", action="store_true", help="also a step's CPU time per kind of operator"
    )
    args = parser.parse_args(argv)

    warnings.filterwarnings("ignore", message="pkg_resources is deprecated")
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    info = machine()
    from vqclip.engine import resolve_precision  # what the runs' "auto" means on this device

    precision = resolve_precision(args.precision, torch.device(args.device))
    print(f"machine: {describe_machine(info)}")
    print(f"models: {args.models}; precision {precision}; {args.size}x{args.size}")
    peaks = [matmul_peak(precision, args.device)[0]]

    walls = []
    for batch in args.batch:
        result = time_sweep(args, precision, batch)
        walls.append(result["wall_s"])
        per = ", ".join(f"{t:.2f}" for t in result["candidates_s"])
        print(
            f"sweep, batch {batch}: {result['candidates']} candidates ({result['done']} done), "
            f"{args.iterations} iterations each, cutn {args.cutn}"
        )
        print(f"  wall time including model load: {result['wall_s']:.1f} s"
              f" ({walls[0] / result['wall_s']:.2f}x the first)")  # fmt: skip
        print(f"  model load: {result['load_s']:.2f} s")
        print(f"  per candidate, from its start to its end (s): {per}")
        print(f"  per iteration and candidate: {result['per_iteration_s']:.3f} s")
        gflop = result["step_gflop"]
        print(f"  one candidate's step: {gflop:.1f} GFLOP, {gflop / peaks[0]:.2f} s at the "
              f"matmul peak; the sweep achieved {gflop / result['per_iteration_s']:.1f} GFLOP/s "
              "(set-up, the last evaluation and snapshots included)")  # fmt: skip
        if result["step_shares"]:
            parts = sorted(result["step_shares"].items(), key=lambda kv: -kv[1])
            print("  one step's time by operator (torch.profiler, self CPU time): "
                  + ", ".join(f"{kind} {share:.0%}" for kind, share in parts))  # fmt: skip
        print(f"  ranking (final + snapshots) and sheets: {result['rank_and_sheets_s']:.2f} s")
        print(f"  load average now: {machine()['load_average']}")
    peak, n = matmul_peak(precision, args.device)
    print(f"{precision} matmul peak of this device ({n}x{n}, best before and after): "
          f"{max(peaks + [peak]):.1f} GFLOP/s")  # fmt: skip
    print(f"load average at the end: {machine()['load_average']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
