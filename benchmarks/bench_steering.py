"""What a prompt timeline costs per step: nothing measurable when unused.

On the real architectures (VQGAN imagenet f16_16384, CLIP ViT-B/32, random weights, no
download), prints:
- the seconds per step of a run without steering, with a Steering nobody uses, and with a
  timeline whose only change lies beyond the measured steps (interleaved, median of rounds);
- the time of the per-step timeline check alone (``follow`` with nothing to do), timed over
  many calls, as a fraction of a step;
- the time of one change: the same prompts with new weights (nothing encoded again) and a
  new text (one CLIP text encoding).

    python benchmarks/bench_steering.py                 # 128x128, cutn 16, on the CPU
    python benchmarks/bench_steering.py --size 256 --cutn 32 --device cuda

A script that prints figures, not a test; nothing here asserts a speed.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench import PROMPT, build_models, machine, machine_name  # noqa: E402  (beside bench.py)


def main() -> int:
    import torch

    from vqclip.config import RunConfig
    from vqclip.engine import _Candidate, run
    from vqclip.plan import prepare
    from vqclip.timeline import Steering

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--cutn", type=int, default=16)
    parser.add_argument("--steps", type=int, default=6, help="steps timed per run")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", default="fp32")
    args = parser.parse_args()

    models = build_models(args.device)
    base = RunConfig(
        prompt=PROMPT,
        size=[args.size, args.size],
        cutn=args.cutn,
        iterations=args.steps + 100,
        seed=1,
        device=args.device,
        precision=args.precision,
    )
    far = base.replace(timeline=[f"{args.steps + 50}: a castle"])

    def per_step(config: RunConfig, steering: Steering | None) -> float:
        times = []
        steps = run(prepare(config, models), None, steering)
        next(steps)  # step 0: the prompts are encoded here, in every variant alike
        for _ in range(args.steps):
            start = time.perf_counter()
            step = next(steps)
            step.loss.item()  # wait for the device
            times.append(time.perf_counter() - start)
        steps.close()
        return statistics.median(times)

    variants = {
        "no steering": (base, None),
        "Steering unused": (base, "steer"),
        "timeline, far change": (far, None),
    }
    seconds: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(args.rounds):  # interleaved, so a busy moment hits all variants
        for name, (config, steer) in variants.items():
            seconds[name].append(per_step(config, Steering() if steer else None))

    plan = prepare(far, models)
    candidate = _Candidate(plan, None, Steering())
    candidate.follow(0)
    calls = 20_000
    start = time.perf_counter()
    for k in range(1, calls + 1):
        candidate.follow(k % (args.steps + 40) + 1)
    follow = (time.perf_counter() - start) / calls

    def change_cost(text: str) -> float:
        candidate.config = candidate.plan.config = base.replace(timeline=[f"7: {text}"])
        candidate.change_at = {7}
        start = time.perf_counter()
        candidate.follow(7)
        return time.perf_counter() - start

    change_cost(PROMPT)  # warm: these texts are encoded now
    reweight = change_cost(PROMPT.replace("fog:0.4", "fog:0.9"))
    new_text = change_cost("a castle on a hill, watercolour")

    step = statistics.median(seconds["no steering"])
    print(f"machine: {machine_name(machine(args.device))}, {torch.get_num_threads()} threads")
    print(f"size {args.size}x{args.size}, cutn {args.cutn}, {args.precision}, {args.device}")
    for name, values in seconds.items():
        print(f"  {name:22s} {statistics.median(values):8.4f} s/step  (rounds: "
              + ", ".join(f"{v:.4f}" for v in values) + ")")  # fmt: skip
    print(
        f"  timeline check per step {follow * 1e6:8.1f} µs  = {100 * follow / step:.5f} % of a step"
    )
    print(f"  a change of weights     {reweight * 1e3:8.2f} ms (nothing encoded again)")
    print(f"  a change of text        {new_text * 1e3:8.2f} ms (one CLIP text encoding)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
