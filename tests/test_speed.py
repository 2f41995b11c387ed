"""The fast path and the memory options, on tiny models: same maths as the plain path."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F
from taming.modules.diffusionmodules.model import AttnBlock, ResnetBlock

from vqclip import cli, memory, scoring
from vqclip import device as hardware
from vqclip import fast as lean
from vqclip import plan as plan_module
from vqclip.config import RunConfig
from vqclip.cutouts import crop_and_resize, crop_and_resize_matmul, crop_boxes, whole_image_boxes
from vqclip.engine import run
from vqclip.models import load_models
from vqclip.plan import prepare


@pytest.fixture
def config(tiny_config):
    """The shared tiny run, with a negative prompt and TV so every loss term is used."""
    cfg = tiny_config.replace(prompt="a unicorn | fog:-0.3", iterations=8, lr=0.3, tv_weight=0.1)
    return cfg


@pytest.fixture
def fresh_models(tiny_model_dir):
    """Tiny models of this test's own (for in-place conversion)."""
    return load_models(
        RunConfig(
            vqgan_config=str(tiny_model_dir["vqgan_config"]),
            vqgan_checkpoint=str(tiny_model_dir["vqgan_checkpoint"]),
            clip_model=str(tiny_model_dir["clip"]),
            device="cpu",
        ),
        progress=False,
    )


def trace(config, models, **extra):
    """(losses [T], final latent) of a run with engine options."""
    steps = list(run(prepare(config.replace(**extra), models)))
    return torch.stack([s.loss for s in steps]), steps[-1].state()["z"]


def spread_norms(module: torch.nn.Module) -> torch.nn.Module:
    """Give GroupNorms non-trivial affine weights, so tests see them used."""
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, torch.nn.GroupNorm):
                m.weight.copy_(torch.rand(m.weight.shape, generator=generator) + 0.5)
                m.bias.copy_(torch.randn(m.bias.shape, generator=generator) * 0.3)
    return module.eval().requires_grad_(False)


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


# --- modules: same outputs and gradients as taming's and CLIP's ----------------------------


@pytest.mark.parametrize("explicit", [True, False])
def test_attention_block_equals_tamings_attn_block(explicit):
    torch.manual_seed(0)
    block = spread_norms(AttnBlock(64))
    fast = lean.FastAttnBlock(block, levers=lean.Levers(explicit_attention=explicit))
    x = torch.randn(2, 64, 8, 6, requires_grad=True)
    y = x.detach().clone().requires_grad_()
    expected, got = block(x), fast(y)
    assert torch.allclose(got, expected, atol=1e-5)
    grad = torch.randn_like(expected)
    expected.backward(grad)
    got.backward(grad)
    assert torch.allclose(y.grad, x.grad, atol=1e-5)


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("shape", [(64, 64), (32, 64)])
def test_resnet_block_equals_tamings_with_fused_norm_and_lean_convolutions(channels_last, shape):
    torch.manual_seed(0)
    block = spread_norms(
        ResnetBlock(in_channels=shape[0], out_channels=shape[1], dropout=0.0, temb_channels=0)
    )
    fast = lean.FastResnetBlock(block, levers=lean.Levers(channels_last=channels_last))
    x = torch.randn(2, shape[0], 10, 12) * 2 + 1
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    a, b = x.clone().requires_grad_(), x.clone().requires_grad_()
    expected, got = block(a, None), fast(b)
    assert torch.allclose(got, expected, atol=1e-5)
    grad = torch.randn_like(expected)
    expected.backward(grad)
    got.backward(grad)
    assert rel(b.grad, a.grad) < 1e-5


def test_fused_group_norm_in_bf16_is_close_to_fp32():
    torch.manual_seed(0)
    norm = spread_norms(torch.nn.GroupNorm(8, 32, eps=1e-6))
    x = (torch.randn(1, 32, 16, 16) * 3 + 2).contiguous(memory_format=torch.channels_last)
    a = x.clone().requires_grad_()
    b = x.bfloat16().requires_grad_()
    expected = F.silu(norm(a))
    got = lean.group_norm(norm, b, silu=True)
    assert got.dtype == torch.bfloat16 and rel(got, expected) < 1e-2
    grad = torch.randn_like(expected)
    expected.backward(grad)
    got.backward(grad.bfloat16())
    assert rel(b.grad, a.grad) < 2e-2


def test_fast_decoder_equals_tamings_decoder(tiny_models):
    decoder = tiny_models.vqgan.decoder
    z = torch.randn(1, 32, 16, 16, generator=torch.Generator().manual_seed(0))
    a, b, c = (z.clone().requires_grad_() for _ in range(3))
    expected = decoder(a)
    fast = lean.FastDecoder(decoder, torch.float32)
    got = fast(b)
    assert torch.allclose(got, expected, atol=1e-4)
    grad = torch.randn_like(expected)
    expected.backward(grad)
    got.backward(grad)
    assert rel(b.grad, a.grad) < 1e-5
    fast.checkpointing = True  # recomputing activations changes nothing
    fast(c).backward(grad)
    assert torch.allclose(c.grad, b.grad, atol=1e-6)
    low = lean.FastDecoder(decoder, torch.bfloat16)
    assert low(z).dtype == torch.float32 and rel(low(z), expected) < 0.05


def test_fast_vision_transformer_equals_clips(tiny_models):
    visual = tiny_models.clip.visual
    x = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    a, b = x.clone().requires_grad_(), x.clone().requires_grad_()
    expected = visual(a)
    for levers in (lean.Levers(), lean.Levers(explicit_attention=False, first_token_only=False)):
        got = lean.FastVisionTransformer(visual, torch.float32, levers=levers)(x)
        assert torch.allclose(got, expected, atol=1e-5)
    got = lean.FastVisionTransformer(visual, torch.float32)(b)
    grad = torch.randn_like(expected)
    expected.backward(grad)
    got.backward(grad)
    assert rel(b.grad, a.grad) < 1e-5
    low = lean.FastVisionTransformer(visual, torch.bfloat16)(x)
    assert low.dtype == torch.bfloat16 and rel(low, expected) < 0.05


@pytest.mark.parametrize(
    "shape", [(1, 256, 256, 224), (2, 48, 64, 16), (1, 40, 90, 32), (1, 20, 20, 32)]
)
def test_matrix_cutouts_equal_roi_align(shape):
    batch, height, width, size = shape
    generator = torch.Generator().manual_seed(0)
    image = torch.rand(batch, 3, height, width, generator=generator)
    boxes = torch.cat(
        [
            crop_boxes(batch, 8, height, width, size, 1.5, generator, image.device),
            whole_image_boxes(batch, height, width, image.device),
        ]
    )
    a, b = image.clone().requires_grad_(), image.clone().requires_grad_()
    expected, got = crop_and_resize(a, boxes, size), crop_and_resize_matmul(b, boxes, size)
    assert torch.allclose(got, expected, atol=1e-6)
    grad = torch.randn_like(expected)
    expected.backward(grad)
    got.backward(grad)
    assert torch.allclose(b.grad, a.grad, atol=1e-5)


# --- the engine's options ----------------------------------------------------------------


def test_micro_batched_clip_equals_unbatched(config, tiny_models):
    whole, z_whole = trace(config, tiny_models)
    for batch in (1, 3):
        parts, z_parts = trace(config, tiny_models, clip_batch=batch)
        assert torch.allclose(parts, whole, rtol=1e-5)
        assert torch.allclose(z_parts, z_whole, atol=1e-3)  # Adam magnifies rounding


@pytest.mark.parametrize("modules", ["lean", "plain"])
def test_fp32_path_is_deterministic_on_either_modules(config, tiny_models, monkeypatch, modules):
    monkeypatch.setattr(hardware, "FAST_FP32_ON_CPU", modules == "lean")
    a, za = trace(config, tiny_models)
    b, zb = trace(config, tiny_models)
    assert torch.equal(a, b) and torch.equal(za, zb)
    assert lean.optimize_models(tiny_models, "fp32", fast=False) is tiny_models
    assert lean.prepared_precision(lean.optimize_models(tiny_models, "fp32", fast=True)) == "fp32"


def test_bf16_path_follows_fp32_and_leaves_the_models_alone(config, tiny_models):
    reference, _ = trace(config, tiny_models)
    fast, _ = trace(config.replace(precision="bf16"), tiny_models)
    again, _ = trace(config.replace(precision="bf16"), tiny_models)
    assert torch.equal(fast, again)  # deterministic too
    # Tiny random models are touchier than real ones; the real guard is in benchmarks/.
    assert ((fast - reference).abs() / reference).max() < 0.05
    assert type(tiny_models.vqgan.decoder).__name__ == "CheckpointingDecoder"  # taming's, fp32
    assert tiny_models.vqgan.decoder.conv_in.weight.dtype == torch.float32
    assert lean.prepared_precision(tiny_models) is None
    # The prepared copy is cached, not rebuilt per run.
    assert lean.optimize_models(tiny_models, "bf16") is lean.optimize_models(tiny_models, "bf16")


def test_in_place_conversion_runs_the_same_and_refuses_fp32_after(
    config, fresh_models, tiny_models
):
    beside, _ = trace(config.replace(precision="bf16"), tiny_models)
    converted = lean.optimize_models(fresh_models, "bf16", inplace=True)
    assert converted is fresh_models and lean.prepared_precision(fresh_models) == "bf16"
    inplace, _ = trace(config.replace(precision="bf16"), fresh_models)
    assert torch.equal(inplace, beside)
    with pytest.raises(ValueError, match="converted to bf16 in place"):
        next(run(prepare(config, fresh_models)))


@pytest.mark.parametrize("precision", ["bf16", "fp32"])
def test_checkpointing_option_gives_the_same_run(config, tiny_models, precision):
    cfg = config.replace(precision=precision)
    plain, _ = trace(cfg, tiny_models, checkpointing="off")
    recomputed, _ = trace(cfg, tiny_models, checkpointing="on")
    assert torch.allclose(recomputed, plain, rtol=1e-6)


def test_out_of_memory_retries_with_smaller_clip_micro_batches(config, tiny_models, monkeypatch):
    expected, z_expected = trace(config, tiny_models, clip_batch=1)
    real = scoring.encode_images
    seen = []

    def tight(model, images):  # a device that holds one cutout at a time
        seen.append(images.shape[0])
        if images.shape[0] > 1:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real(model, images)

    monkeypatch.setattr(scoring, "encode_images", tight)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        got, z_got = trace(config, tiny_models)
    messages = [str(w.message) for w in caught if "Out of memory" in str(w.message)]
    assert len(messages) == 2  # 4 -> 2 -> 1, then it sticks to 1
    assert "clip_batch 2" in messages[0] and "clip_batch 1" in messages[1]
    assert seen[:3] == [4, 2, 1]
    assert torch.allclose(got, expected, rtol=1e-5) and torch.allclose(z_got, z_expected, atol=1e-5)


def test_out_of_memory_at_the_leanest_settings_says_what_to_change(
    config, tiny_models, monkeypatch
):
    def full(model, images):
        raise torch.OutOfMemoryError("CUDA out of memory.")

    monkeypatch.setattr(scoring, "encode_images", full)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(MemoryError, match="lower --size"):
            trace(config, tiny_models)


def test_other_errors_are_not_retried(config, tiny_models, monkeypatch):
    def broken(model, images):
        raise RuntimeError("shapes do not match")

    monkeypatch.setattr(scoring, "encode_images", broken)
    with pytest.raises(RuntimeError, match="shapes do not match"):
        trace(config, tiny_models)
    assert memory.is_out_of_memory(RuntimeError("CUDA out of memory. Tried to allocate"))
    assert not memory.is_out_of_memory(RuntimeError("shapes do not match"))


# --- memory estimates --------------------------------------------------------------------


def test_memory_estimate_grows_with_the_work_and_shrinks_with_the_options(tiny_models):
    def total(**change):
        args = {
            "size": [64, 64],
            "cutn": 8,
            "precision": "fp32",
            "device": "cpu",
            "models": tiny_models,
        }
        return memory.estimate_peak_memory(**{**args, **change})

    base = total()
    assert base.total > base.weights > 0 and base.activations > 0
    assert total(size=[128, 128]).decoder == 4 * base.decoder
    assert total(cutn=16).clip == 2 * base.clip
    assert total(clip_batch=2).clip == base.clip // 4
    assert total(precision="bf16").activations < base.activations
    assert total(precision="bf16", checkpointing=True).decoder < total(precision="bf16").decoder


def test_check_fits_raises_with_options_that_fit(tiny_models):
    args = {
        "size": [512, 512],
        "cutn": 64,
        "precision": "fp32",
        "device": "cpu",
        "models": tiny_models,
        "fast": False,  # taming's and CLIP's own modules, whichever fp32 runs on this CPU
    }
    need = memory.estimate_peak_memory(**args)
    vqgan_bytes = sum(t.numel() * t.element_size() for t in tiny_models.vqgan.parameters())
    assert need.weights >= vqgan_bytes  # the estimate counts the VQGAN it will hold
    assert memory.check_fits(**args, available=need.total * 2).total == need.total
    with pytest.raises(MemoryError) as error:
        memory.check_fits(**args, available=need.activations // 3)
    message = str(error.value)
    assert "512x512" in message and "GiB" in message and "would fit" in message
    assert "--clip-batch" in message or "--size" in message
    with pytest.raises(MemoryError, match="Even the smallest"):
        memory.check_fits(**args, available=1)


def test_plan_picks_micro_batches_when_memory_is_short(config, tiny_models, monkeypatch):
    roomy = plan_module.prepare(config, tiny_models)
    assert roomy.clip_batch == config.cutn and not roomy.checkpointing
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # bf16 on a CPU without it: emulated, with a notice
        fast = plan_module.prepare(config.replace(precision="bf16", cutn=40), tiny_models)
    assert fast.clip_batch == plan_module.CPU_CLIP_BATCH  # the CPU fast path's default
    whole = memory.estimate_peak_memory(config.size, config.cutn, "fp32", "cpu", tiny_models)
    single = memory.estimate_peak_memory(config.size, config.cutn, "fp32", "cpu", tiny_models, 1)
    # Already in memory when the run starts: torch and the models as loaded (fast copies, if
    # fp32 runs on them here, are made by the run and counted in its need).
    resident = whole.runtime + memory._weights_bytes(tiny_models, "fp32", False)
    room = (whole.total + single.total) // 2 - resident  # fits one cutout at a time, not all
    monkeypatch.setattr(memory, "available_memory", lambda device: room)
    tight = plan_module.prepare(config, tiny_models)
    assert 1 <= tight.clip_batch < config.cutn
    monkeypatch.setattr(memory, "available_memory", lambda device: 1)
    with pytest.raises(MemoryError, match="would fit|smallest"):
        plan_module.prepare(config, tiny_models)


def test_a_run_that_cannot_fit_is_refused_before_its_directory_exists(
    tiny_flags, tmp_path, monkeypatch, capsys
):
    monkeypatch.setattr(memory, "available_memory", lambda device: 1)  # a full machine
    out = tmp_path / "runs"
    code = cli.main(["generate", "a unicorn", *tiny_flags, "--size", "64", "64", "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("vqclip: error: A 64x64 run with 32 cutouts in fp32")
    assert "Even the smallest settings would not fit" in err and err.count("\n") == 1
    assert not out.exists()
