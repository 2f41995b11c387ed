"""Device classes: what auto resolves to, which modules run, checkpointing on every decoder,
the VQGAN's scale factor, and out-of-memory advice that names only what the device has.

Hardware probes are monkeypatched wherever a test means "a machine with X", so every test
passes on a CPU with native bf16 and on one without.
"""

from __future__ import annotations

import copy
import os
import warnings

import pytest
import torch

import vqclip.vqgan
from vqclip import device as hardware
from vqclip import memory, scoring
from vqclip import plan as plan_module
from vqclip.engine import run
from vqclip.plan import prepare
from vqclip.vqgan import VQGAN

T4, V100, P100, GTX1080, A100, H100 = (7, 5), (7, 0), (6, 0), (6, 1), (8, 0), (9, 0)


@pytest.fixture
def config(tiny_config):
    return tiny_config.replace(iterations=4, lr=0.3, tv_weight=0.1, cutn=3)


def a_machine(monkeypatch, *, cpu_bf16: bool = False, capability=None) -> None:
    """Pretend the CPU has (or lacks) native bf16 and the GPU has this compute capability."""
    monkeypatch.setattr(hardware, "cpu_supports_bf16", lambda: cpu_bf16)
    monkeypatch.setattr(hardware, "cuda_capability", lambda device: capability)


# --- what auto means, per device class ---------------------------------------------------


@pytest.mark.parametrize(
    ("device_type", "capability", "cpu_bf16", "expected"),
    [
        ("cpu", None, False, "fp32"),  # AVX2 only: bf16 and fp16 are emulated
        ("cpu", None, True, "bf16"),  # AVX-512 BF16 or AMX
        ("cuda", T4, False, "fp16"),  # Colab's free GPU: fp16 tensor cores, no bf16
        ("cuda", V100, False, "fp16"),
        ("cuda", P100, False, "fp16"),
        ("cuda", GTX1080, False, "fp32"),  # fp16 at a fraction of fp32's rate
        ("cuda", A100, False, "bf16"),
        ("cuda", H100, True, "bf16"),  # the CPU's bf16 says nothing about the GPU
        ("cuda", None, False, "fp32"),  # capability unreadable
        ("mps", None, True, "fp32"),  # not measured: the safe choice
    ],
)
def test_choose_precision_per_device_class(device_type, capability, cpu_bf16, expected):
    assert hardware.choose_precision(device_type, capability, cpu_bf16) == expected


def test_auto_follows_the_probes(monkeypatch):
    a_machine(monkeypatch, cpu_bf16=False, capability=T4)
    assert hardware.auto_precision("cpu") == "fp32"
    assert plan_module.resolve_precision("auto", torch.device("cpu")) == "fp32"
    assert hardware.auto_precision("cuda") == "fp16"
    assert plan_module.resolve_precision("auto", torch.device("cuda")) == "fp16"
    assert hardware.native_precisions("cuda") == ("fp32", "fp16")
    a_machine(monkeypatch, cpu_bf16=True, capability=A100)
    assert hardware.auto_precision("cpu") == "bf16"
    assert plan_module.resolve_precision("auto", torch.device("cpu")) == "bf16"
    assert hardware.auto_precision("cuda:0") == "bf16"


def test_an_emulated_precision_asked_for_on_a_gpu_is_warned_about(monkeypatch):
    a_machine(monkeypatch, capability=T4)
    with pytest.warns(UserWarning, match="computes bf16 only by emulation.*fp16 here"):
        assert plan_module.resolve_precision("bf16", torch.device("cuda")) == "bf16"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert plan_module.resolve_precision("fp16", torch.device("cuda")) == "fp16"


def test_low_precisions_run_the_lean_modules_and_fp32_per_device_class(monkeypatch):
    for device_type in ("cpu", "cuda"):
        assert hardware.fast_modules_for(device_type, "bf16")
        assert hardware.fast_modules_for(device_type, "fp16")
    assert not hardware.fast_modules_for("cuda", "fp32")  # not measured on a GPU yet
    monkeypatch.setattr(hardware, "FAST_FP32_ON_CPU", True)
    assert hardware.fast_modules_for("cpu", "fp32")
    monkeypatch.setattr(hardware, "FAST_FP32_ON_CPU", False)
    assert not hardware.fast_modules_for("cpu", "fp32")


@pytest.mark.parametrize("lean", [True, False])
def test_fp32_on_either_modules_computes_the_same_run(config, tiny_models, monkeypatch, lean):
    monkeypatch.setattr(hardware, "FAST_FP32_ON_CPU", lean)
    plan = prepare(config, tiny_models)
    assert plan.fast is lean and plan.precision == "fp32"
    losses = torch.stack([step.loss for step in run(plan)])
    monkeypatch.setattr(hardware, "FAST_FP32_ON_CPU", not lean)
    other = torch.stack([step.loss for step in run(prepare(config, tiny_models))])
    # The two paths crop with different (equivalent) kernels and round differently.
    assert torch.allclose(losses, other, rtol=1e-3)


def test_fp16_runs_the_lean_modules_in_fp16_through_the_cuda_code(config, tiny_models, monkeypatch):
    monkeypatch.setattr(plan_module, "FP16_ON_CPU_FOR_TESTS", True)
    plan = prepare(config.replace(precision="fp16", size=[32, 32]), tiny_models)
    assert plan.fast and plan.models.vqgan.decoder.dtype == torch.float16
    assert plan.resize_dtype == torch.float16
    steps = list(run(plan))
    assert all(torch.isfinite(step.loss) for step in steps)
    assert steps[-1].state()["scaler"]["scale"] > 0  # the loss scaler ran


# --- checkpointing on every decoder ---------------------------------------------------


def test_checkpointing_taming_decoder_gives_the_same_gradient(tiny_models, monkeypatch):
    vqgan = tiny_models.vqgan
    assert type(vqgan.decoder).__name__ == "CheckpointingDecoder"  # taming's, as loaded
    z = torch.randn(1, vqgan.embed_dim, 8, 8, generator=torch.Generator().manual_seed(0))
    grad = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    calls = []
    real = vqclip.vqgan.checkpoint
    monkeypatch.setattr(
        vqclip.vqgan, "checkpoint", lambda *a, **k: calls.append(1) or real(*a, **k)
    )
    results = []
    for on in (False, True):
        vqgan.checkpointing = on
        try:
            leaf = z.clone().requires_grad_()
            image = vqgan.decode(leaf)
            image.backward(grad)
        finally:
            vqgan.checkpointing = False
        results.append((image.detach(), leaf.grad))
    (plain, plain_grad), (ckpt, ckpt_grad) = results
    assert calls, "checkpointing on did not checkpoint"
    assert torch.equal(ckpt, plain) and torch.equal(ckpt_grad, plain_grad)


def test_checkpointing_on_is_honoured_for_the_plain_decoder_in_a_run(
    config, tiny_models, monkeypatch
):
    monkeypatch.setattr(hardware, "FAST_FP32_ON_CPU", False)  # fp32 on taming's modules
    calls = []
    real = vqclip.vqgan.checkpoint
    monkeypatch.setattr(
        vqclip.vqgan, "checkpoint", lambda *a, **k: calls.append(1) or real(*a, **k)
    )
    off = [s.loss for s in run(prepare(config.replace(checkpointing="off"), tiny_models))]
    assert not calls
    plan = prepare(config.replace(checkpointing="on"), tiny_models)
    assert not plan.fast and plan.checkpointing and plan.record()["checkpointing"] is True
    on = [s.loss for s in run(plan)]
    assert calls and torch.equal(torch.stack(on), torch.stack(off))


# --- the scale factor comes from the model -------------------------------------------------


def test_scale_factor_is_read_from_the_tiny_f4_model(tiny_models):
    vqgan = tiny_models.vqgan
    assert vqgan.factor == 4
    with torch.no_grad():
        latent = vqgan.encode(torch.zeros(1, 3, 64, 48))
        assert latent.shape == (1, vqgan.embed_dim, 16, 12)
        assert vqgan.decode(latent).shape == (1, 3, 64, 48)


def test_scale_factor_of_an_f8_gumbel_vqgan():
    ddconfig = {
        "double_z": False,
        "z_channels": 32,
        "resolution": 32,
        "in_channels": 3,
        "out_ch": 3,
        "ch": 32,  # taming's GroupNorm has 32 groups
        "ch_mult": [1, 1, 1, 1],  # three halvings: f = 8, like openimages_f8_8192
        "num_res_blocks": 1,
        "attn_resolutions": [],
        "dropout": 0.0,
    }
    with torch.random.fork_rng(devices=[]):
        vqgan = VQGAN(ddconfig, embed_dim=8, n_embed=16, gumbel=True).eval()
    assert vqgan.factor == 8
    with torch.no_grad():
        assert vqgan.encode(torch.zeros(1, 3, 32, 40)).shape[-2:] == (4, 5)


def test_memory_advice_sizes_are_multiples_of_the_models_factor(tiny_models, monkeypatch):
    a_machine(monkeypatch)
    args = {"size": [100, 100], "cutn": 64, "precision": "fp32", "device": "cpu"}
    need = memory.estimate_peak_memory(**args, models=tiny_models)
    with pytest.raises(memory.DoesNotFit) as error:
        memory.check_fits(**args, models=tiny_models, available=need.activations // 2)
    sizes = [part for part in str(error.value).split("; ") if part.startswith("--size")]
    for option in sizes:
        width, height = (int(v) for v in option.split()[1:3])
        assert width % 4 == 0 and height % 4 == 0


# --- out-of-memory advice names only what the device has -------------------------------


@pytest.mark.parametrize(
    ("device", "capability", "cpu_bf16", "precision", "named"),
    [
        ("cpu", None, False, "fp32", None),  # AVX2: no bf16, never fp16 on a CPU
        ("cpu", None, True, "fp32", "bf16"),
        ("cuda", T4, False, "fp32", "fp16"),  # no bf16 on a T4
        ("cuda", T4, False, "fp16", None),  # already the lowest it has
        ("cuda", A100, False, "fp32", "bf16"),
        ("cuda", GTX1080, False, "fp32", None),
    ],
)
def test_out_of_memory_advice_per_device(
    config, monkeypatch, device, capability, cpu_bf16, precision, named
):
    a_machine(monkeypatch, cpu_bf16=cpu_bf16, capability=capability)
    advice = memory.out_of_memory_advice(config.replace(size=[100, 60]), precision, 7, device, 4)
    assert "iteration 7" in advice and "lower --size (e.g. 48 28)" in advice
    for other in {"bf16", "fp16"} - {named}:
        assert f"--precision {other}" not in advice
    if named:
        assert f"--precision {named}" in advice
    else:
        assert "--precision" not in advice


@pytest.mark.parametrize(
    ("device", "capability", "cpu_bf16", "named"),
    [("cpu", None, False, None), ("cpu", None, True, "bf16"), ("cuda", T4, False, "fp16")],
)
def test_will_not_fit_options_name_only_native_precisions(
    tiny_models, monkeypatch, device, capability, cpu_bf16, named
):
    a_machine(monkeypatch, cpu_bf16=cpu_bf16, capability=capability)
    args = {"size": [256, 256], "cutn": 8, "device": device, "models": tiny_models}
    fp32 = memory.estimate_peak_memory(**args, precision="fp32")
    low = memory.estimate_peak_memory(**args, precision=named or "fp32")
    resident = fp32.runtime + memory._weights_bytes(tiny_models, "fp32", False)
    room = (fp32.total + low.total) // 2 - resident if named else fp32.activations // 2
    with pytest.raises(memory.DoesNotFit) as error:
        memory.check_fits(**args, precision="fp32", available=room)
    message = str(error.value)
    for other in {"bf16", "fp16"} - {named}:
        assert f"--precision {other}" not in message
    if named:
        assert f"--precision {named}" in message


def test_a_step_out_of_memory_at_the_leanest_settings_advises_for_this_device(
    config, tiny_models, monkeypatch
):
    a_machine(monkeypatch, cpu_bf16=False)

    def full(model, images):
        raise torch.OutOfMemoryError("out of memory")

    monkeypatch.setattr(scoring, "encode_images", full)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(memory.DoesNotFit) as error:
            list(run(prepare(config, tiny_models)))
    message = str(error.value)
    assert "lower --size" in message and "--precision" not in message


# --- the GPU: hidden from the suite, and the tests that need one (pytest -m cuda) ------


def test_the_suite_runs_without_a_gpu_unless_asked(request):
    """conftest hides any GPU, from this process and from every process it starts."""
    from conftest import gpu_visible

    if gpu_visible(request.config):
        pytest.skip("this session was asked to keep the GPU visible")
    assert os.environ["CUDA_VISIBLE_DEVICES"] == ""
    assert not torch.cuda.is_available()
    assert hardware.resolve_device("auto").type == "cpu"


@pytest.fixture(scope="module")
def gpu_models(tiny_model_dir):
    """The tiny models loaded on the GPU through the public path."""
    from vqclip.config import RunConfig
    from vqclip.models import load_models

    config = RunConfig(
        vqgan_config=str(tiny_model_dir["vqgan_config"]),
        vqgan_checkpoint=str(tiny_model_dir["vqgan_checkpoint"]),
        clip_model=str(tiny_model_dir["clip"]),
        device="cuda",
    )
    return load_models(config, progress=False)


@pytest.mark.cuda
def test_lean_modules_on_the_gpu_follow_tamings_and_clips(gpu_models):
    from vqclip import fast as lean

    generator = torch.Generator(device="cuda").manual_seed(0)
    z = torch.randn(2, 32, 16, 16, device="cuda", generator=generator)
    x = torch.rand(3, 3, 32, 32, device="cuda", generator=generator)
    visual_fp32 = copy.deepcopy(gpu_models.clip.visual).float()  # CLIP loads fp16 on CUDA
    with torch.no_grad():
        image, embeds = gpu_models.vqgan.decoder(z), visual_fp32(x)
        for dtype, tolerance in ((torch.float32, 1e-2), (torch.bfloat16, 0.05)):
            decoder = lean.FastDecoder(gpu_models.vqgan.decoder, dtype)
            visual = lean.FastVisionTransformer(gpu_models.clip.visual, dtype)
            # TF32 convolutions on the GPU round fp32 a little: close, not equal.
            assert rel(decoder(z), image) < tolerance, dtype
            assert rel(visual(x), embeds) < tolerance, dtype


@pytest.mark.cuda
def test_a_run_on_the_gpu_in_auto_precision_writes_its_snapshots(gpu_models, tiny_config):
    from vqclip.observers import generate

    config = tiny_config.replace(
        device="cuda", precision="auto", iterations=6, snapshots="0,3,last"
    )
    plan = prepare(config, gpu_models)
    assert plan.precision == hardware.auto_precision("cuda") and plan.device.type == "cuda"
    steps = list(run(plan))
    assert len(steps) == 7 and all(torch.isfinite(step.loss) for step in steps)
    result = generate(config, gpu_models, progress=False)
    assert [p.name for p in result.snapshots] == ["000000.png", "000003.png", "000006.png"]


@pytest.mark.cuda
def test_no_tensor_lands_on_the_cpu_in_a_gpu_run(gpu_models, tiny_config):
    """The CPU twin of this test makes "meta" the default device; on the GPU the default
    device stays the CPU, so a tensor made without device= meets the latent on another
    device and the run fails."""
    from vqclip.observers import generate

    config = tiny_config.replace(
        device="cuda", prompt="a unicorn | fog:-0.3", tv_weight=0.1, iterations=3, snapshots="last"
    )
    result = generate(config, gpu_models, progress=False)
    assert result.status == "done" and result.final.is_file()


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.float() - b.float()).norm() / b.float().norm()).item()
