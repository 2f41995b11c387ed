"""What keep-best costs per step: a run timed with and without its KeepBest.

Three figures, each printed with the machine it was measured on:

- ``keeper``: KeepBest's own work per Step (score, compare, keep the pixels: a few
  element-wise ops on the device), timed alone over Steps the real loop made, with no
  snapshot due (so nothing is written);
- ``loop``: seconds per step of ``vqclip.observers.generate`` (snapshots at the last
  iteration only) with keep-best and with KeepBest swapped for an observer that does
  nothing, interleaved ``--repeat`` times (medians), and their difference;
- ``write``: one best.png written (done only at snapshots and at the end, if it changed).

On CUDA it also checks that the keeper never makes a step wait for the device
(``torch.cuda.set_sync_debug_mode("error")`` around the calls that write nothing).

    python benchmarks/bench_best.py                          # tiny models, 64x64, CPU
    python benchmarks/bench_best.py --models real --size 128 --cutn 16 --iterations 6
    python benchmarks/bench_best.py --models real --device cuda --size 256 --cutn 32

A script that prints figures, not a test; nothing here asserts a speed.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # bench_sweep.py beside this file: machine and model loaders


def per_step(config: Any, models: Any, keep: bool) -> float:
    """Median seconds per step of ``generate`` (its snapshot and log writers included), with
    keep-best as it ships or with KeepBest replaced by an observer that does nothing."""
    import vqclip.observers as observers

    stamps: list[float] = []

    class Clock(observers.Observer):  # a viewer: called after the run's writers
        def __call__(self, step: Any) -> None:
            _sync(step.pixels)
            stamps.append(time.perf_counter())

    shipped = observers.KeepBest
    observers.KeepBest = shipped if keep else _Off
    try:
        observers.generate(config, models, observers=[Clock()], progress=False)
    finally:
        observers.KeepBest = shipped
    gaps = [b - a for a, b in zip(stamps[1:], stamps[2:])]  # step 0's set-up left out
    return statistics.median(gaps)


class _Off:
    """KeepBest's place in the run's writers, doing nothing."""

    def __init__(self, *args: Any) -> None:
        pass

    def __call__(self, step: Any) -> None:
        pass

    def close(self, status: str) -> None:
        pass


def _sync(tensor: Any) -> None:
    import torch

    if tensor.device.type == "cuda":
        torch.cuda.synchronize(tensor.device)


def keeper_cost(steps: list[Any], folder: Path, calls: int) -> float:
    """Median microseconds of one KeepBest call (nothing written), device time included."""
    from vqclip.best import KeepBest

    keeper = KeepBest(folder, [], {})
    for step in steps:  # warm: the factors cached, the first-step set-up done
        keeper(step)
    times = []
    for k in range(calls):
        step = steps[k % len(steps)]
        _sync(step.pixels)
        start = time.perf_counter()
        keeper(step)
        _sync(step.pixels)
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e6


def no_sync(steps: list[Any], folder: Path) -> str:
    """On CUDA: whether KeepBest's calls that write nothing run without waiting for the GPU."""
    import torch

    from vqclip.best import KeepBest

    if steps[0].pixels.device.type != "cuda":
        return "n/a (not CUDA)"
    keeper = KeepBest(folder, [], {})
    keeper(steps[0])  # the first call makes the factors (a host-to-device copy, once)
    torch.cuda.set_sync_debug_mode("error")
    try:
        for step in steps[1:]:
            keeper(step)
        return "yes: no call waited for the device"
    except RuntimeError as error:
        return f"NO: {error}"
    finally:
        torch.cuda.set_sync_debug_mode("default")


def write_cost(steps: list[Any], folder: Path) -> float:
    """Milliseconds to write best.png once (read back, PNG encode, atomic write)."""
    from vqclip.best import KeepBest

    keeper = KeepBest(folder, [], {"config": {}})
    keeper(steps[-1])
    start = time.perf_counter()
    keeper.write(steps[-1])
    return (time.perf_counter() - start) * 1e3


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", choices=("tiny", "real"), default="tiny")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", default="fp32")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--cutn", type=int, default=16)
    parser.add_argument("--iterations", type=int, default=20, help="timed steps per drain")
    parser.add_argument("--repeat", type=int, default=3, help="interleaved A/B drains")
    parser.add_argument("--calls", type=int, default=2000, help="timed KeepBest calls")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    args = parser.parse_args(argv)

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    from bench_sweep import describe_machine, load, machine

    from vqclip.engine import prepare, run

    info = machine()
    print(f"machine: {describe_machine(info)}")
    print(f"native bf16 flag: {next(iter(set(info['flags']) - {'avx2', 'avx512f'}), 'none')}")
    folder = Path(tempfile.mkdtemp(prefix="bench_best_"))
    models, base, _ = load(args.models, folder, args.precision, args.device)
    config = base.replace(
        prompt="a lighthouse:1 | fog:0.5 | text:-1",  # a pushing prompt too: the full score
        size=[args.size, args.size],
        cutn=args.cutn,
        iterations=args.iterations + 2,
        snapshots="last",
        seed=1,
        out=str(folder / "runs"),
    )
    print(
        f"{args.models} models on {args.device} in {args.precision}, {args.size}x{args.size}, "
        f"cutn {args.cutn}, 3 prompts; {args.iterations} timed steps x {args.repeat} per side"
    )
    steps = []
    for step in run(prepare(config.replace(iterations=8), models)):
        steps.append(step)
    print(f"keeper: {keeper_cost(steps, folder, args.calls):.1f} us per step (nothing written)")
    print(f"no device sync per step: {no_sync(steps, folder)}")
    print(f"write: {write_cost(steps, folder):.1f} ms per best.png (at snapshots, if changed)")
    bare, kept = [], []
    for k in range(args.repeat):  # A/B, then B/A: a neighbour's load drifts over both sides
        for keep in (False, True) if k % 2 == 0 else (True, False):
            seconds = per_step(config.replace(name=f"{k}-{keep}"), models, keep)
            (kept if keep else bare).append(seconds)
    a, b = statistics.median(bare), statistics.median(kept)
    spread = (max(bare) - min(bare)) * 1e3
    print(
        f"loop: {a * 1e3:.2f} ms per step bare, {b * 1e3:.2f} ms with keep-best: "
        f"{(b - a) * 1e3:+.2f} ms ({(b / a - 1) * 100:+.1f} %), against a spread of "
        f"{spread:.2f} ms between the runs without it; runs "
        f"bare {[round(x * 1e3, 2) for x in bare]}, kept {[round(x * 1e3, 2) for x in kept]}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
