"""Speed and memory of vqclip's engine on the real architectures, with random weights.

Builds the VQGAN imagenet f16_16384 and CLIP ViT-B/32 architectures (random weights, no
download), wraps them in vqclip's ``Models`` and runs the real engine (``vqclip.engine.run``)
for a few iterations after a warm-up. Each configuration runs in a fresh subprocess, so its
peak memory (RSS on the CPU, max allocated on CUDA) is its own. Prints, per configuration:
median seconds per iteration, peak memory, dense GFLOP per iteration (FlopCounterMode over
one forward + backward) and achieved GFLOP/s, next to this machine's fp32 and bf16 matmul
GFLOP/s measured in the same run; and how far the fast path's losses are from fp32's over
the first iterations of the same seed.

    python benchmarks/bench.py                       # fp32 vs the default fast path
    python benchmarks/bench.py --all --markdown benchmarks/RESULTS.md --json results.json
    python benchmarks/bench.py --size 512 --cutn 64 --precision bf16 --clip-batch 8
    python benchmarks/bench.py --precision fp32 --clip ViT-B/32 ViT-B/32:1,ViT-B/16:0.5

Sections: main (fp32, fast path and each speed/memory option), --scaling (sizes and cutn),
--snapshots (cost of saving every iteration with vqclip.observers.generate), --levers (each
part of the fast path switched on in turn, timed on the decoder, CLIP and cutouts alone).
This is a script that prints figures, not a test; nothing here asserts a speed.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
GIB = 2**30
PROMPT = "a lighthouse in a storm, oil painting | fog:0.4"

VQGAN_DDCONFIG = {
    "double_z": False,
    "z_channels": 256,
    "resolution": 256,
    "in_channels": 3,
    "out_ch": 3,
    "ch": 128,
    "ch_mult": [1, 1, 2, 2, 4],
    "num_res_blocks": 2,
    "attn_resolutions": [16],
    "dropout": 0.0,
}
CLIP_VIT_B32 = {
    "embed_dim": 512,
    "image_resolution": 224,
    "vision_layers": 12,
    "vision_width": 768,
    "vision_patch_size": 32,
    "context_length": 77,
    "vocab_size": 49408,
    "transformer_width": 512,
    "transformer_heads": 8,
    "transformer_layers": 12,
}


# --- models ------------------------------------------------------------------------------


CLIP_ARCHITECTURES = {
    "ViT-B/32": CLIP_VIT_B32,
    "ViT-B/16": {**CLIP_VIT_B32, "vision_patch_size": 16},  # 197 tokens a cutout, not 50
}


def build_models(device: str = "cpu", seed: int = 0, clip_spec: str = "ViT-B/32"):
    """vqclip Models holding the real architectures with seeded random weights, fp32 on device;
    ``clip_spec`` names one CLIP architecture or an ensemble (``ViT-B/32:1,ViT-B/16:0.5``)."""
    import torch

    from vqclip.ensemble import parse_clip_spec
    from vqclip.models import VQGAN, ModelInfo, Models

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="pkg_resources is deprecated")
        import clip

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        with contextlib.redirect_stdout(io.StringIO()):
            vqgan = VQGAN(VQGAN_DDCONFIG, embed_dim=256, n_embed=16384)
        with (
            torch.no_grad()
        ):  # taming starts codes within +-1/n_embed; spread them like trained ones
            vqgan.codebook.normal_(0.0, 1.0)
        clips = [clip.model.CLIP(**CLIP_ARCHITECTURES[m.name]) for m in parse_clip_spec(clip_spec)]
    vqgan = vqgan.to(device).eval().requires_grad_(False)
    clips = [c.float().to(device).eval().requires_grad_(False) for c in clips]
    info = ModelInfo("random weights")
    more = tuple(clips[1:]), tuple(ModelInfo("random weights") for _ in clips[1:])
    return Models(vqgan, clips[0], info, info, torch.device(device), *more)


# --- machine -----------------------------------------------------------------------------


def matmul_gflops(dtype_name: str, device: str = "cpu", n: int = 2048, repeats: int = 7) -> float:
    """Best GFLOP/s of an n x n matmul in a dtype (fp32 or bf16) on the device."""
    import torch

    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[dtype_name]
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    best = float("inf")
    for i in range(repeats + 2):
        _sync(device)
        start = time.perf_counter()
        a @ b
        _sync(device)
        if i >= 2:
            best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best / 1e9


def _sync(device: str) -> None:
    import torch

    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def machine(device: str) -> dict[str, Any]:
    import torch

    info: dict[str, Any] = {
        "torch": torch.__version__,
        "python": platform.python_version(),
        "threads": torch.get_num_threads(),
        "cpus": os.cpu_count(),
    }
    with contextlib.suppress(OSError):
        text = Path("/proc/cpuinfo").read_text()
        names = [
            line.split(":", 1)[1].strip() for line in text.splitlines() if "model name" in line
        ]
        flags = next(
            (
                line.split(":", 1)[1].split()
                for line in text.splitlines()
                if line.startswith("flags")
            ),
            [],
        )
        info["cpu"] = names[0] if names else platform.processor()
        info["cpu_flags"] = sorted(
            set(flags) & {"avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile"}
        )
    if device.startswith("cuda"):
        info["gpu"] = torch.cuda.get_device_name(0)
        info["capability"] = list(torch.cuda.get_device_capability(0))
    from vqclip import device as hardware

    info["auto_precision"] = auto = hardware.auto_precision(device)
    info["native_precisions"] = list(hardware.native_precisions(device))
    info["auto_modules"] = "lean" if hardware.fast_modules_for(device, auto) else "plain"
    return info


def _rss_now() -> int:
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def _rss_peak() -> int:
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


# --- one configuration (runs in its own process) -----------------------------------------


def run_config(spec: dict[str, Any]) -> dict[str, Any]:
    """Time the real engine on one configuration; return figures as plain data."""
    import torch

    if spec.get("threads"):
        torch.set_num_threads(int(spec["threads"]))
    from torch.utils.flop_counter import FlopCounterMode

    from vqclip import device as hardware
    from vqclip.config import RunConfig
    from vqclip.engine import run
    from vqclip.fast import optimize_models
    from vqclip.plan import prepare, resolve_precision

    device = spec["device"]
    if spec.get("modules") is not None:  # force the path this row measures (lean or plain)
        hardware.FAST_FP32_ON_CPU = spec["modules"] == "lean"
    clip_spec = spec.get("clip") or "ViT-B/32"
    models = build_models(device, clip_spec=clip_spec)
    precision = resolve_precision(spec["precision"], models.device)
    lean = hardware.fast_modules_for(models.device.type, precision)
    if lean and spec.get("inplace", True):
        # What a run that loads its own models does: convert once, free the fp32 weights.
        models = optimize_models(models, precision, inplace=True)
    rss_models = _rss_now()
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    warmup, iterations = int(spec["warmup"]), int(spec["iterations"])
    total = warmup + iterations
    extra = {k: spec[k] for k in ("clip_batch", "checkpointing") if spec.get(k) is not None}
    config = RunConfig(
        prompt=PROMPT,
        size=list(spec["size"]),
        cutn=int(spec["cutn"]),
        iterations=total,
        seed=int(spec.get("seed", 0)),
        device=device,
        precision=spec["precision"],
        snapshots=spec.get("snapshots") or "last",
        out=spec.get("out", "runs"),
        clip_model=clip_spec,
        **extra,
    )
    plan = prepare(config, models)
    estimate = plan.estimate.total  # what vqclip checks before a run

    stamps: list[float] = []
    losses: list[float] = []

    def stamp(step) -> None:
        _sync(device)
        stamps.append(time.perf_counter())
        losses.append(float(step.loss))

    start = time.perf_counter()
    if spec.get("snapshots"):
        from vqclip.observers import Observer, generate

        class Stamp(Observer):
            def __call__(self, step) -> None:
                stamp(step)

        generate(config, models, progress=False, observers=[Stamp()])
    else:
        for step in run(plan):
            stamp(step)
    # stamps[k] - stamps[k-1]: optimiser step k-1 plus decode, cutouts, CLIP, backward of k.
    per_it = [b - a for a, b in zip(stamps[:-1], stamps[1:])]
    measured = per_it[warmup:] if len(per_it) > warmup else per_it
    peak = torch.cuda.max_memory_allocated() if device.startswith("cuda") else _rss_peak()
    result: dict[str, Any] = {
        "spec": spec,
        "precision": precision,
        "modules": "lean" if plan.fast else "plain",
        "seconds_per_it": statistics.median(measured),
        "seconds_all": per_it,
        "first_step_seconds": stamps[0] - start,
        "peak_bytes": peak,
        "estimated_peak_bytes": estimate,
        "rss_after_models": rss_models,
        "losses": losses,
        "threads": torch.get_num_threads(),
    }
    if spec.get("count_flops"):
        steps = run(prepare(config.replace(iterations=2), models))
        next(steps)  # set-up and iteration 0 outside the count
        with FlopCounterMode(display=False) as counter:
            next(steps)  # one optimiser step, then one forward + backward
        steps.close()
        result["flops"] = counter.get_total_flops()
    return result


# --- lever study (runs in its own process) -------------------------------------------------


def run_levers(spec: dict[str, Any]) -> dict[str, Any]:
    """Time the decoder, CLIP and the cutouts alone with each part of the fast path on in turn."""
    import torch
    import torch.nn.functional as F

    if spec.get("threads"):
        torch.set_num_threads(int(spec["threads"]))
    from vqclip import fast as lean
    from vqclip.cutouts import crop_and_resize, crop_and_resize_matmul, crop_boxes
    from vqclip.prompts import encode_images
    from vqclip.scoring import synthesize

    device, repeats = spec["device"], int(spec.get("repeats", 5))
    width, height = spec["size"]
    models = build_models(device)
    vqgan, clip_model = models.vqgan, models.clip
    generator = torch.Generator(device=device).manual_seed(0)
    f = vqgan.factor  # pixels per latent cell, from the model
    z0 = torch.randn(
        1, vqgan.embed_dim, height // f, width // f, device=device, generator=generator
    )
    images0 = torch.rand(spec["cutn"], 3, 224, 224, device=device, generator=generator)
    bf16 = torch.bfloat16

    weights: set[int] = set()

    def saved_bytes(fn) -> int:
        """Bytes of activations autograd keeps for the backward pass of fn (weights excluded)."""
        seen: dict[int, int] = {}

        def pack(t):
            with contextlib.suppress(Exception):
                storage = t.untyped_storage()
                if storage.data_ptr() not in weights:
                    seen[storage.data_ptr()] = storage.nbytes()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            fn(backward=False)
        return sum(seen.values())

    def timed(rows) -> list[dict[str, Any]]:
        """Time variants in interleaved rounds (so a burst of other load hits them all alike)."""
        times: list[list[float]] = [[] for _ in rows]
        for _, fn in rows:
            fn()  # warm-up
        for _ in range(repeats):
            for i, (_, fn) in enumerate(rows):
                _sync(device)
                start = time.perf_counter()
                fn()
                _sync(device)
                times[i].append(time.perf_counter() - start)
        return [
            {
                "name": name,
                "median": statistics.median(t),
                "min": min(t),
                "saved_bytes": saved_bytes(fn),
            }
            for (name, fn), t in zip(rows, times)
        ]

    def decoder_case(decoder, autocast=False):
        class Shim(torch.nn.Module):  # synthesize() reads .decode and .codebook
            def __init__(self):
                super().__init__()
                self.decoder = decoder

            codebook = vqgan.codebook

            def decode(self, z_q):
                return self.decoder(vqgan.post_quant_conv(z_q))

        shim = Shim()

        def fn(backward=True):
            z = z0.clone().requires_grad_()
            ctx = (
                torch.autocast(device.split(":")[0], dtype=bf16)
                if autocast
                else contextlib.nullcontext()
            )
            with ctx:
                pixels = synthesize(shim, z)
            if backward:
                pixels.float().square().mean().backward()

        return fn

    def clip_case(visual, autocast=False):
        class Shim(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.visual = visual

            def encode_image(self, x):
                return self.visual(x)

        shim = Shim()

        def fn(backward=True):
            images = images0.clone().requires_grad_()
            ctx = (
                torch.autocast(device.split(":")[0], dtype=bf16)
                if autocast
                else contextlib.nullcontext()
            )
            with ctx:
                embeds = encode_images(shim, images)
            if backward:
                embeds.square().sum().backward()

        return fn

    L = lean.Levers
    off = L(
        channels_last=False,
        fused_norm=False,
        lean_conv=False,
        explicit_attention=False,
        first_token_only=False,
    )
    dec = vqgan.decoder
    decoder_rows = [
        ("fp32, taming's modules", decoder_case(dec)),
        (
            "fp32 weights, own modules (= lean fp32 path)",
            decoder_case(lean.FastDecoder(dec, torch.float32)),
        ),
        ("bf16 autocast, taming's modules", decoder_case(dec, autocast=True)),
        (
            "bf16 weights, own modules, SDPA, all levers off",
            decoder_case(lean.FastDecoder(dec, levers=off)),
        ),
        (
            "+ channels-last",
            decoder_case(
                lean.FastDecoder(
                    dec,
                    levers=L(
                        channels_last=True,
                        fused_norm=False,
                        lean_conv=False,
                        explicit_attention=False,
                    ),
                )
            ),
        ),
        (
            "+ fused GroupNorm+SiLU (channels-last backward)",
            decoder_case(
                lean.FastDecoder(
                    dec, levers=L(channels_last=True, lean_conv=False, explicit_attention=False)
                )
            ),
        ),
        (
            "+ convolutions keep only their weight",
            decoder_case(
                lean.FastDecoder(dec, levers=L(channels_last=True, explicit_attention=False))
            ),
        ),
        (
            "+ explicit attention instead of SDPA (= fast path)",
            decoder_case(lean.FastDecoder(dec, levers=L(channels_last=True))),
        ),
        ("fast path + checkpointing", decoder_case(lean.FastDecoder(dec, checkpointing=True))),
    ]
    vis = clip_model.visual
    clip_rows = [
        ("fp32, CLIP's modules", clip_case(vis)),
        (
            "fp32 weights, own modules (= lean fp32 path)",
            clip_case(lean.FastVisionTransformer(vis, torch.float32)),
        ),
        ("bf16 autocast, CLIP's modules", clip_case(vis, autocast=True)),
        (
            "bf16 weights, own batch-first blocks, SDPA",
            clip_case(
                lean.FastVisionTransformer(
                    vis, levers=L(explicit_attention=False, first_token_only=False)
                )
            ),
        ),
        (
            "+ explicit attention instead of SDPA",
            clip_case(lean.FastVisionTransformer(vis, levers=L(first_token_only=False))),
        ),
        (
            "+ last block computes the class token only (= fast path)",
            clip_case(lean.FastVisionTransformer(vis)),
        ),
    ]
    image = torch.rand(1, 3, height, width, device=device, generator=generator)
    boxes = crop_boxes(1, spec["cutn"], height, width, 224, 1.0, generator, torch.device(device))
    grad = torch.randn(spec["cutn"], 3, 224, 224, device=device, generator=generator)

    def cut_case(kind):
        def fn(backward=True):
            leaf = image.clone().requires_grad_()
            if kind == "roi_align":
                out = crop_and_resize(leaf, boxes, 224)
            else:
                out = crop_and_resize_matmul(
                    leaf, boxes, 224, bf16 if kind == "matmul bf16" else None
                )
            if backward:
                out.backward(grad)

        return fn

    cut_rows = [(k, cut_case(k)) for k in ("roi_align", "matmul fp32", "matmul bf16")]
    for _, fn in decoder_rows + clip_rows:  # every weight any variant holds
        for cell in fn.__closure__ or ():
            module = cell.cell_contents
            if isinstance(module, torch.nn.Module):
                weights.update(t.untyped_storage().data_ptr() for t in module.state_dict().values())
    weights.update(t.untyped_storage().data_ptr() for t in vqgan.state_dict().values())
    weights.update(t.untyped_storage().data_ptr() for t in clip_model.state_dict().values())
    out: dict[str, Any] = {"spec": spec}
    for section, rows in (("decoder", decoder_rows), ("clip", clip_rows), ("cutouts", cut_rows)):
        out[section] = timed(rows)
        for figures in out[section]:
            print(f"  {section}: {figures['name']}: {figures['min']:.3f} s", file=sys.stderr)
    # F is used by the cases through synthesize's imports; keep linters quiet about it.
    _ = F
    return out


# --- orchestration -----------------------------------------------------------------------


def in_subprocess(kind: str, spec: dict[str, Any]) -> dict[str, Any]:
    """Run one configuration in a fresh Python, so memory peaks do not mix."""
    command = [sys.executable, str(Path(__file__).resolve()), "--worker", kind, json.dumps(spec)]
    env = {**os.environ, **spec.get("env", {})}
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    for line in reversed(done.stdout.splitlines()):
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT ") :])
    tail = (done.stderr or done.stdout).strip().splitlines()[-15:]
    return {"spec": spec, "error": "\n".join(tail)}


def describe(spec: dict[str, Any]) -> str:
    """A short label for a configuration."""
    parts = [spec["precision"] if spec["precision"] != "auto" else "auto"]
    if spec.get("clip") not in (None, "ViT-B/32"):
        parts.append(f"CLIP {spec['clip']}")
    if spec.get("modules"):
        parts.append(f"{spec['modules']} modules")
    if spec.get("clip_batch"):
        parts.append(f"clip_batch {spec['clip_batch']}")
    if spec.get("checkpointing") not in (None, "auto"):
        parts.append(f"checkpointing {spec['checkpointing']}")
    if spec.get("inplace") is False:
        parts.append("models kept in fp32 beside")
    if spec.get("snapshots"):
        parts.append(f"snapshots {spec['snapshots']}")
    if spec.get("env", {}).get("VQCLIP_MALLOC_TUNING") == "0":
        parts.append("allocator not tuned")
    return ", ".join(parts)


def relative_difference(a: list[float], b: list[float], n: int) -> float:
    pairs = list(zip(a[:n], b[:n]))
    return max(abs(x - y) / abs(y) for x, y in pairs) if pairs else float("nan")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size", type=int, nargs="+", default=[256], help="W [H] (default 256)")
    parser.add_argument("--cutn", type=int, default=32)
    parser.add_argument("--iterations", type=int, default=20, help="timed iterations (default 20)")
    parser.add_argument(
        "--warmup", type=int, default=2, help="untimed iterations first (default 2)"
    )
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument(
        "--precision",
        nargs="+",
        default=None,
        help="precisions to time (default: fp32 and the device's auto; fp16 only on CUDA)",
    )
    parser.add_argument(
        "--clip-batch", type=int, nargs="*", default=[], help="also time these CLIP micro-batches"
    )
    parser.add_argument(
        "--checkpointing", action="store_true", help="also time decoder checkpointing"
    )
    parser.add_argument(
        "--copy-models",
        action="store_true",
        help="also time a run on models not converted in place",
    )
    parser.add_argument(
        "--untuned",
        action="store_true",
        help="also time with the C allocator left alone (VQCLIP_MALLOC_TUNING=0)",
    )
    parser.add_argument(
        "--threads", type=int, default=None, help="torch threads (default: torch's choice)"
    )
    parser.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="run the main configurations this many times, interleaved",
    )
    parser.add_argument(
        "--clip",
        nargs="+",
        default=["ViT-B/32"],
        help="CLIP architectures as --clip takes them, e.g. ViT-B/32 ViT-B/32:1,ViT-B/16:0.5 "
        "(a CLIP ensemble); the main configurations run once for each (default ViT-B/32)",
    )
    parser.add_argument("--no-main", action="store_true", help="skip the main comparison")
    parser.add_argument(
        "--scaling", action="store_true", help="sizes 128-512 at cutn 32, cutn 8-64 at 256"
    )
    parser.add_argument("--scaling-iterations", type=int, default=4)
    parser.add_argument("--scaling-fp32", action="store_true", help="scale fp32 too")
    parser.add_argument(
        "--snapshots", action="store_true", help="cost of a snapshot every iteration"
    )
    parser.add_argument(
        "--levers", action="store_true", help="time each part of the fast path alone"
    )
    parser.add_argument("--all", action="store_true", help="every section and option")
    parser.add_argument("--json", type=Path, help="write all results here")
    parser.add_argument("--markdown", type=Path, help="write a Markdown report here")
    parser.add_argument(
        "--from-json", type=Path, help="only print (and --markdown) the report of an earlier --json"
    )
    parser.add_argument("--worker", nargs=2, metavar=("KIND", "SPEC"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.from_json:
        text = markdown(json.loads(args.from_json.read_text()))
        print(text)
        if args.markdown:
            args.markdown.write_text(text)
        return 0
    if args.worker:
        kind, spec = args.worker[0], json.loads(args.worker[1])
        result = run_levers(spec) if kind == "levers" else run_config(spec)
        print("RESULT " + json.dumps(result), flush=True)
        return 0

    if args.all:
        args.scaling = args.snapshots = args.levers = args.checkpointing = args.copy_models = True
        args.scaling_fp32 = True
        args.untuned = True
        args.clip_batch = args.clip_batch or [8, args.cutn]
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    size = args.size * 2 if len(args.size) == 1 else args.size[:2]
    info = machine(args.device)
    auto = info["auto_precision"]
    log(f"this device gets: auto = {auto} with {info['auto_modules']} modules")
    if args.precision:
        first = [{"precision": p} for p in args.precision]
    else:
        # The plain fp32 loop is the baseline; on the CPU fp32 also runs on the lean modules
        # (the two paths auto can choose between there), and auto's own row if it differs.
        first = [{"precision": "fp32", "modules": "plain"}]
        if args.device == "cpu":
            first.append({"precision": "fp32", "modules": "lean"})
        if auto != "fp32" or args.device != "cpu":
            first.append({"precision": "auto"})
    precisions = [spec["precision"] for spec in first]
    fast = "auto" if not args.precision else precisions[-1]
    base = {
        "device": args.device,
        "size": size,
        "cutn": args.cutn,
        "warmup": args.warmup,
        "iterations": args.iterations,
        "threads": args.threads,
        "seed": 0,
    }
    report: dict[str, Any] = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "machine": info,
    }
    peaks_before = measure_peaks(args.device, info)
    log("matmul peaks: " + ", ".join(f"{k} {v:.0f} GFLOP/s" for k, v in peaks_before.items()))

    main_specs = [
        {**base, **spec, "count_flops": True, **({"clip": c} if c != "ViT-B/32" else {})}
        for c in args.clip
        for spec in first
    ]
    for batch in args.clip_batch:
        main_specs.append({**base, "precision": fast, "clip_batch": batch})
    if args.checkpointing:
        main_specs.append({**base, "precision": fast, "checkpointing": "on"})
    if args.copy_models and fast != "fp32":
        main_specs.append({**base, "precision": fast, "inplace": False})
    if args.untuned:
        for spec in first:
            main_specs.append({**base, **spec, "env": {"VQCLIP_MALLOC_TUNING": "0"}})
    if args.no_main:
        main_specs = []
    runs: dict[int, list[dict[str, Any]]] = {i: [] for i in range(len(main_specs))}
    for round_ in range(args.repeat):
        for i, spec in enumerate(main_specs):
            if round_ > 0:
                spec = {**spec, "count_flops": False}
            log(f"main: {describe(spec)} (round {round_ + 1}/{args.repeat}) ...")
            runs[i].append(in_subprocess("run", spec))
            log("  " + short(runs[i][-1]))
    report["main"] = [merge(results) for results in runs.values()]

    if args.scaling:
        report["scaling"] = []
        scaled = {
            **base,
            "precision": fast,
            "iterations": args.scaling_iterations,
            "size": [256, 256],
            "cutn": 32,
        }
        cases = [{**scaled, "size": [s, s]} for s in (128, 256, 384, 512)]
        cases += [{**scaled, "size": [256, 256], "cutn": n} for n in (8, 16, 64)]
        if args.scaling_fp32:
            plain = {**scaled, "precision": "fp32", "modules": "plain"}
            cases += [{**plain, "size": [s, s]} for s in (128, 256, 384, 512)]
            cases += [{**plain, "cutn": n} for n in (8, 16, 64)]
        for spec in cases:
            log(
                f"scaling: {describe(spec)} {spec['size'][0]}x{spec['size'][1]}, cutn {spec['cutn']} ..."
            )
            report["scaling"].append(in_subprocess("run", spec))
            log("  " + short(report["scaling"][-1]))

    if args.snapshots:
        with tempfile.TemporaryDirectory() as tmp:
            report["snapshots"] = []
            for schedule in ("every:1", "1000000"):
                spec = {**base, "precision": fast, "snapshots": schedule, "out": tmp}
                log(f"snapshots: {schedule} ...")
                report["snapshots"].append(in_subprocess("run", spec))
                log("  " + short(report["snapshots"][-1]))

    if args.levers:
        log("levers ...")
        report["levers"] = in_subprocess("levers", {**base, "repeats": 5})

    peaks_after = measure_peaks(args.device, info)
    report["matmul_gflops"] = {k: max(peaks_before[k], peaks_after[k]) for k in peaks_before}
    report["matmul_gflops_before_after"] = {"before": peaks_before, "after": peaks_after}
    summarise(report)
    text = markdown(report)
    print(text)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    if args.markdown:
        args.markdown.write_text(text)
    return 0


def measure_peaks(device: str, info: dict[str, Any]) -> dict[str, float]:
    """Matmul GFLOP/s per precision the device computes natively (an emulated one is timed on
    a small matrix only: on an AVX2 CPU a 2048x2048 bf16 matmul takes tens of seconds)."""
    peaks = {}
    for name in ("fp32", "bf16", "fp16"):
        if name in info["native_precisions"]:
            peaks[name] = matmul_gflops(name, device)
        elif name == "bf16" and device == "cpu":
            peaks[name] = matmul_gflops(name, device, n=256, repeats=2)
    return peaks


def merge(results: list[dict[str, Any]]) -> dict[str, Any]:
    """Repeated runs of one configuration: the median of their medians, the highest peak."""
    good = [r for r in results if "error" not in r]
    if not good:
        return results[0]
    first = dict(good[0])
    first["seconds_per_it_runs"] = [r["seconds_per_it"] for r in good]
    first["seconds_per_it"] = statistics.median(first["seconds_per_it_runs"])
    first["peak_bytes"] = max(r["peak_bytes"] for r in good)
    return first


def summarise(report: dict[str, Any]) -> None:
    """Add speed-ups, GFLOP/s, efficiency and loss differences against fp32."""
    peaks = report["matmul_gflops"]
    main = report["main"]
    reference = next(
        (
            r
            for r in main
            if r.get("precision") == "fp32" and r.get("modules") == "plain" and "error" not in r
        ),
        None,
    )
    flops = {(r["precision"], r.get("modules")): r["flops"] for r in main if "flops" in r
             and not r["spec"].get("clip")}  # fmt: skip
    for r in main + report.get("scaling", []) + report.get("snapshots", []):
        if "error" in r:
            continue
        if (
            reference is not None
            and r["spec"]["size"] == reference["spec"]["size"]
            and r["spec"]["cutn"] == reference["spec"]["cutn"]
        ):
            r["speedup_vs_fp32"] = reference["seconds_per_it"] / r["seconds_per_it"]
            # another CLIP (an ensemble) computes another loss: only its speed compares
            alike = r["spec"].get("clip") == reference["spec"].get("clip")
            if r is not reference and not r["spec"].get("snapshots") and alike:
                n = min(len(r["losses"]), len(reference["losses"]), 21)
                r["loss_max_rel_diff_vs_fp32"] = relative_difference(
                    r["losses"], reference["losses"], n
                )
                r["loss_iterations_compared"] = n
        same = (
            bool(main)
            and r["spec"]["size"] == main[0]["spec"]["size"]
            and r["spec"]["cutn"] == main[0]["spec"]["cutn"]
        )
        count = r.get("flops") or (flops.get((r["precision"], r.get("modules"))) if same else None)
        if count:
            r["gflop_per_it"] = count / 1e9
            r["gflops"] = count / 1e9 / r["seconds_per_it"]
            if r["precision"] in peaks:
                r["fraction_of_peak"] = r["gflops"] / peaks[r["precision"]]
    snaps = report.get("snapshots")
    if snaps and all("error" not in s for s in snaps):
        report["snapshot_overhead"] = snaps[0]["seconds_per_it"] / snaps[1]["seconds_per_it"] - 1


def short(r: dict[str, Any]) -> str:
    if "error" in r:
        return "FAILED: " + r["error"].splitlines()[-1]
    return f"{r['seconds_per_it']:.3f} s/it, peak {r['peak_bytes'] / GIB:.2f} GiB"


def log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def _f(value: Any, fmt: str, missing: str = "–") -> str:
    return format(value, fmt) if isinstance(value, (int, float)) else missing


def _is_auto(r: dict[str, Any], info: dict[str, Any]) -> bool:
    """Whether a row computed what ``auto`` gives this device (precision and modules)."""
    return r.get("precision") == info.get("auto_precision") and r.get("modules") == info.get(
        "auto_modules"
    )


def summary(report: dict[str, Any]) -> list[str]:
    """Which path this device got and how it compares with the plain fp32 loop."""
    info = report["machine"]
    main = [r for r in report.get("main", []) if "error" not in r and not r["spec"].get("env")]
    auto = next((r for r in main if _is_auto(r, info) and "count_flops" in r["spec"]), None)
    if auto is None or "speedup_vs_fp32" not in auto:
        return []
    gib = auto["peak_bytes"] / GIB
    diff = auto.get("loss_max_rel_diff_vs_fp32")
    of_peak = auto.get("fraction_of_peak")
    return [
        "",
        f"This device's `auto` path: {auto['precision']} on the {auto['modules']} modules, "
        f"{auto['speedup_vs_fp32']:.2f}x the plain fp32 loop's speed"
        + (f", {100 * of_peak:.0f} % of its {auto['precision']} matmul peak" if of_peak else "")
        + f", peak memory {gib:.2f} GiB"
        + (f", loss within {100 * diff:.2f} % of plain fp32's." if diff is not None else "."),
    ]


# Published peak rates of an NVIDIA T4 (dense): fp16 on tensor cores, and fp32.
T4_PEAKS = {"fp16": 65e12, "fp32": 8.1e12}


def t4_estimate(report: dict[str, Any]) -> list[str]:
    """A paper estimate for a T4: this run's FLOPs per iteration over the T4's peak rates."""
    main = [r for r in report.get("main", []) if "error" not in r and r.get("flops")]
    lean = next((r for r in main if r.get("modules") == "lean"), None)
    plain = next((r for r in main if r.get("modules") == "plain"), None)
    if lean is None and plain is None:
        return []
    spec = (lean or plain)["spec"]
    lines = [
        "",
        "## Paper estimate for a T4 (an estimate, not a measurement)",
        "",
        "FLOPs per iteration counted here, divided by the T4's published peaks "
        "(~65 TFLOP/s fp16 on tensor cores, ~8.1 TFLOP/s fp32). A step never runs at peak: "
        "the 100 % column is a lower bound on the time, and real convolution and attention "
        "steps reach a fraction of it (the 40 % column is an assumption, not a measurement). "
        "Replace it with `python benchmarks/bench.py --device cuda` on a T4.",
        "",
        f"| T4 path ({spec['size'][0]}x{spec['size'][1]}, cutn {spec['cutn']}) | GFLOP/it | "
        "s/it at 100 % of peak | s/it at 40 % of peak |",
        "|---|---:|---:|---:|",
    ]
    for label, row, peak in (
        ("fp16, lean modules (`auto` on a T4)", lean, T4_PEAKS["fp16"]),
        ("fp32, plain modules (`--precision fp32`)", plain, T4_PEAKS["fp32"]),
    ):
        if row is not None:
            flops = row["flops"]
            lines.append(
                f"| {label} | {flops / 1e9:.0f} | {flops / peak:.3f} | {flops / peak / 0.4:.3f} |"
            )
    return lines


def markdown(report: dict[str, Any]) -> str:
    info, peaks = report["machine"], report["matmul_gflops"]
    cpu = info.get("gpu") or info.get("cpu", "?")
    lines = [
        f"# vqclip benchmark: {machine_name(info)}",
        "",
        f"Machine: {info['cpus']} CPU cores, {cpu} ({', '.join(info.get('cpu_flags', []))}); "
        f"torch {info['torch']}, {info['threads']} threads. Matmul peaks measured in the same run: "
        + ", ".join(f"{k} {v:.0f} GFLOP/s" for k, v in peaks.items())
        + " (2048x2048, best of 7; a precision the device only emulates on 256x256).",
        "",
        f"`auto` on this device: {info.get('auto_precision')} on the "
        f"{info.get('auto_modules', 'lean')} modules.",
        "",
        "Commands:" if "commands" in report else f"Command: `{report['command']}`",
        *(
            f"- `{command.split('   (')[0]}`"
            + (f" ({command.split('   (', 1)[1]}" if "   (" in command else "")
            for command in report.get("commands", [])
        ),
        "",
        "Models: VQGAN imagenet f16_16384 and CLIP ViT-B/32 architectures with random weights; "
        "the real engine (`vqclip.engine.run`). Each row is a fresh process: s/it is the median "
        "over the timed iterations after the warm-up; peak is the process's peak RSS (models "
        "included). GFLOP/it is FlopCounterMode over one forward + backward.",
        "",
    ]
    main = report["main"]
    if main:
        spec0 = main[0]["spec"]
        lines += [
            f"## {spec0['size'][0]}x{spec0['size'][1]}, cutn {spec0['cutn']}",
            "",
            "| configuration | s/it | speed-up vs plain fp32 | peak memory GiB | GFLOP/it | GFLOP/s | of its matmul peak | max loss diff vs fp32 |",
            "|---|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for r in main:
            if "error" in r:
                lines.append(
                    f"| {describe(r['spec'])} | failed: {r['error'].splitlines()[-1]} |||||||"
                )
                continue
            label = describe(r["spec"]).replace("auto", f"auto ({r['precision']})")
            if r["spec"]["precision"] != "auto" and _is_auto(r, info):
                label += " (= auto here)"
            diff = r.get("loss_max_rel_diff_vs_fp32")
            lines.append(
                f"| {label} | {r['seconds_per_it']:.2f} | {_f(r.get('speedup_vs_fp32'), '.2f')}× | "
                f"{r['peak_bytes'] / GIB:.2f} | {_f(r.get('gflop_per_it'), '.0f')} | {_f(r.get('gflops'), '.0f')} | "
                f"{_f(100 * r['fraction_of_peak'] if 'fraction_of_peak' in r else None, '.0f')}% | "
                f"{_f(100 * diff if diff is not None else None, '.2f')}% |"
            )
        lines.append("")
        lines.append(
            "Loss diff: the largest relative difference between the configuration's loss and fp32's "
            f"at each of iterations 0–{main[0].get('loss_iterations_compared', 21) - 1} of the same seed."
        )
    lines += summary(report)
    lines += t4_estimate(report)
    if report.get("scaling"):
        lines += [
            "",
            f"## Scaling ({report['scaling'][0]['spec']['iterations']} timed iterations each)",
            "",
            "| size | cutn | precision | s/it | peak memory GiB | vqclip's estimate GiB |",
            "|---|---:|---|---:|---:|---:|",
        ]
        rows = sorted(
            report["scaling"],
            key=lambda r: (
                r["spec"]["precision"] == "fp32",
                r["spec"]["cutn"] != 32,
                r["spec"]["size"][0],
                r["spec"]["cutn"],
            ),
        )
        for r in rows:
            s = r["spec"]
            head = f"| {s['size'][0]}x{s['size'][1]} | {s['cutn']} | {r.get('precision', s['precision'])} |"
            if "error" in r:
                lines.append(f"{head} failed | | |")
            else:
                guess = r.get("estimated_peak_bytes")
                lines.append(
                    f"{head} {r['seconds_per_it']:.2f} | {r['peak_bytes'] / GIB:.2f} | "
                    f"{_f(guess / GIB if guess else None, '.2f')} |"
                )
    if report.get("snapshots"):
        snaps = report["snapshots"]
        lines += ["", "## Snapshot cost (vqclip.observers.generate, fast path)", ""]
        for r in snaps:
            if "error" not in r:
                lines.append(
                    f"- snapshots `{r['spec']['snapshots']}`: {r['seconds_per_it']:.3f} s/it"
                )
        if "snapshot_overhead" in report:
            lines.append(
                f"- saving a snapshot every iteration costs {100 * report['snapshot_overhead']:+.1f} % per iteration"
            )
    levers = report.get("levers")
    if levers and "error" not in levers:
        lines += [
            "",
            "## Levers, one part at a time (forward + backward, best of 5)",
            "",
            "Each part alone at the main size, with one more part of the fast path switched on per "
            "row; the variants run in 5 interleaved rounds and the best time is shown, as the "
            "least disturbed by other load. Kept for backward: the activations autograd saves "
            "(weights excluded).",
            "",
            "| part | variant | seconds | kept for backward MiB |",
            "|---|---|---:|---:|",
        ]
        for section in ("decoder", "clip", "cutouts"):
            for row in levers[section]:
                lines.append(
                    f"| {section} | {row['name']} | {row['min']:.3f} | {row['saved_bytes'] / 2**20:.0f} |"
                )
    lines += [
        "",
        "## Notes",
        "",
        "- Random weights: the loss hardly moves, so the loss comparison shows that the fast path "
        "computes the same function, not how pictures differ; the tests compare each fast module "
        "with taming's and CLIP's own on the same weights.",
        "- s/it depends on the machine's other load (this one is shared); the GFLOP/s and "
        "of-peak columns are relative to matmul peaks measured in the same run.",
        "- The engine lets the C allocator keep large freed blocks (`VQCLIP_MALLOC_TUNING=0` "
        "turns that off): faster, above all for fp32, but at 512x512 it holds up to ~1 GiB more.",
        "- vqclip's memory estimate (what it checks before a run) models the allocator left "
        "alone, so it sits below the tuned peaks at large bf16 sizes (512x512 bf16 with "
        "`VQCLIP_MALLOC_TUNING=0` measured 2.76 GiB against the estimate's 2.79); the engine "
        "tunes the allocator only when free memory exceeds twice the estimated activations.",
    ]
    return "\n".join(lines) + "\n"


def machine_name(info: dict[str, Any]) -> str:
    """E.g. '2 CPU cores, AMD EPYC, AVX-512 BF16' or the GPU's name."""
    if info.get("gpu"):
        return str(info["gpu"])
    flags = set(info.get("cpu_flags", []))
    extra = ", AMX" if flags & {"amx_bf16", "amx_tile"} else ""
    extra += ", AVX-512 BF16" if "avx512_bf16" in flags else ""
    if not extra and "avx512f" not in flags and "avx2" in flags:
        extra = ", AVX2 only (no AVX-512, no native bf16)"
    return f"{info['cpus']} CPU cores, {info.get('cpu', 'CPU')}{extra}"


if __name__ == "__main__":
    sys.exit(main())
