"""One resolved plan per run, recorded as it ran; fp16 with dynamic loss scaling."""

from __future__ import annotations

import json
import warnings

import pytest
import torch
from PIL import Image

from vqclip import plan as plan_module
from vqclip import scoring
from vqclip.cli import main
from vqclip.config import ConfigError
from vqclip.credentials import content_bytes
from vqclip.engine import run
from vqclip.export import read_recipe
from vqclip.observers import generate, replay, reproduce, resume
from vqclip.plan import prepare
from vqclip.state import load_state, read_run

REAL_ENCODE = scoring.encode_images


@pytest.fixture
def config(tiny_config):
    return tiny_config.replace(iterations=6, snapshots="0,3,last", lr=0.3)


def oom_above(batch: int, from_call: int, seen: list[int]):
    """encode_images that runs out of memory for more than ``batch`` cutouts from its
    ``from_call``-th call on (a device that filled up mid-run); records each batch size."""

    def tight(model, images):
        seen.append(images.shape[0])
        if len(seen) > from_call and images.shape[0] > batch:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return REAL_ENCODE(model, images)

    return tight


def test_prepare_resolves_every_choice_once(config, tiny_models):
    with pytest.warns(UserWarning, match="using 64x60"):
        plan = prepare(config.replace(seed=None, size=[66, 61]), tiny_models)
    assert plan.config.seed is not None and plan.config.size == [64, 60]
    assert plan.notices == [
        "Size 66x61 is not a multiple of the VQGAN's downsampling factor 4; using 64x60."
    ]
    assert (plan.precision, plan.clip_batch, plan.checkpointing) == ("fp32", 4, False)
    assert plan.record() == {
        "device": "cpu",
        "precision": "fp32",
        "clip_batch": 4,
        "checkpointing": False,
        "modules": "lean",  # fp32 on the CPU runs vqclip.fast's lean modules
        "changes": [],
    }


def test_the_plan_is_in_run_json_every_png_and_vqclip_info(config, tiny_models, capsys):
    result = generate(config.replace(clip_batch=2), tiny_models, progress=False)
    recorded = read_run(result.run_dir)["plan"]
    assert recorded == {
        "device": "cpu",
        "precision": "fp32",
        "clip_batch": 2,
        "checkpointing": False,
        "modules": "lean",
        "changes": [],
    }
    for png in [*result.snapshots, result.final]:
        assert read_recipe(png)["plan"] == recorded
    assert main(["info", "--json", str(result.final)]) == 0
    assert json.loads(capsys.readouterr().out)["plan"]["clip_batch"] == 2


def test_an_out_of_memory_retry_is_recorded_and_reproduced_byte_for_byte(
    config, tiny_models, monkeypatch, tmp_path
):
    seen: list[int] = []
    # One call per iteration while all 4 cutouts go at once: the device fills up at iteration 3.
    monkeypatch.setattr(scoring, "encode_images", oom_above(2, 3, seen))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        made = generate(config, tiny_models, progress=False)
    assert any("clip_batch 2" in str(w.message) for w in caught)
    change = {"iteration": 3, "clip_batch": 2, "checkpointing": False}
    assert read_run(made.run_dir)["plan"]["changes"] == [change]
    assert read_recipe(made.final)["plan"]["changes"] == [change]
    assert read_recipe(made.run_dir / "snapshots" / "000000.png")["plan"]["changes"] == []
    monkeypatch.undo()

    replayed: list[int] = []
    monkeypatch.setattr(scoring, "encode_images", oom_above(99, 0, replayed))  # only records
    again = reproduce(made.final, tmp_path / "again", tiny_models)
    assert content_bytes(again) == content_bytes(made.final)
    assert replayed == [4, 4, 4, 2, 2, 2, 2, 2, 2, 2, 2]  # its recorded switch at iteration 3


def test_resume_follows_the_recorded_plan(config, tiny_models, monkeypatch):
    def made(name: str, stop_after_calls: int | None = None):  # memory fills up at iteration 1
        seen: list[int] = []
        monkeypatch.setattr(scoring, "encode_images", oom_above(2, 1, seen))
        stop = None if stop_after_calls is None else (lambda: len(seen) > stop_after_calls)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return generate(
                config.replace(name=name), tiny_models, progress=False, should_stop=stop
            )

    full, parts = made("full"), made("parts", stop_after_calls=8)
    assert parts.status == "stopped" and parts.iteration < config.iterations
    monkeypatch.undo()  # the memory is free again: the recorded plan still rules
    resumed = resume(parts.run_dir, tiny_models, progress=False)
    assert read_run(resumed.run_dir)["plan"]["changes"][0]["iteration"] == 1
    assert content_bytes(resumed.final) == content_bytes(full.final)


def test_fp16_is_refused_on_the_cpu_before_anything_is_written(config, tiny_models, tmp_path):
    with pytest.raises(ConfigError, match="fp16 was asked for on the CPU") as caught:
        generate(config.replace(precision="fp16"), tiny_models, progress=False)
    assert "fp32" in str(caught.value) and "CUDA" in str(caught.value)
    assert not (tmp_path / "runs").exists()


def test_cli_refuses_fp16_on_the_cpu_with_exit_2(tiny_flags, tmp_path, capsys):
    flags = [f for f in tiny_flags]
    flags[flags.index("fp32")] = "fp16"
    code = main(["generate", "a cat", *flags, "--size", "32", "32", "--out", str(tmp_path / "o")])
    assert code == 2
    err = capsys.readouterr().err
    assert "fp16 was asked for on the CPU" in err and "Traceback" not in err
    assert not (tmp_path / "o").exists()


# --- fp16 with dynamic loss scaling, through the CUDA code path (a test hook on the CPU) -----


@pytest.fixture
def fp16(config, monkeypatch):
    monkeypatch.setattr(plan_module, "FP16_ON_CPU_FOR_TESTS", True)
    return config.replace(precision="fp16", size=[32, 32], cutn=2)


def test_fp16_learns_and_keeps_its_loss_scale_in_the_state(fp16, tiny_models):
    result = generate(fp16.replace(iterations=8), tiny_models, progress=False)
    assert read_run(result.run_dir)["plan"]["precision"] == "fp16"
    assert read_recipe(result.final)["precision"] == "fp16"
    scaler = load_state(result.run_dir)["scaler"]
    assert scaler["scale"] > 0 and "_growth_tracker" in scaler
    losses = [json.loads(line)["loss"] for line in (result.run_dir / "log.jsonl").open()]
    assert losses[-1] < losses[0]


def test_an_overflowing_fp16_step_is_skipped_and_the_scale_lowered(fp16, tiny_models, monkeypatch):
    real, calls = scoring.total_variation, []

    def overflow_once(image):  # the 3rd gradient (iteration 2) is infinite
        calls.append(1)
        return real(image) * (float("inf") if len(calls) == 3 else 1.0)

    monkeypatch.setattr(scoring, "total_variation", overflow_once)
    steps = run(prepare(fp16.replace(tv_weight=0.1, iterations=4), tiny_models))
    states = [step.state() for step in steps]
    # the state read at step k is before its update; k+1's is after it
    z = [s["z"] for s in states]
    scales = [s["scaler"]["scale"] for s in states]
    assert not torch.equal(z[1], z[2])  # iteration 1's update was taken
    assert torch.equal(z[2], z[3])  # iteration 2's infinite gradient: step skipped
    assert not torch.equal(z[3], z[4])  # and the run goes on
    assert scales[3] == scales[2] / 2 and scales[4] == scales[3]
    assert all(torch.isfinite(s).all() for s in z)


def test_fp16_resumes_to_the_same_bytes(fp16, tiny_models):
    full = generate(fp16.replace(name="full"), tiny_models, progress=False)
    polls: list[int] = []
    parts = generate(
        fp16.replace(name="parts"),
        tiny_models,
        progress=False,
        should_stop=lambda: polls.append(1) or len(polls) > 3,
    )
    assert parts.status == "stopped" and parts.iteration < fp16.iterations
    assert load_state(parts.run_dir)["scaler"] is not None
    resumed = resume(parts.run_dir, tiny_models, progress=False)
    assert content_bytes(resumed.final) == content_bytes(full.final)


def test_a_recipe_from_before_modules_were_recorded_replays_on_the_plain_modules(
    config, tiny_models, tmp_path
):
    """Runs made before the plan said which modules ran computed fp32 with taming's and
    CLIP's own; reproduce uses those for them, so their bytes come back."""
    import vqclip.device

    plain = config.replace(out=str(tmp_path / "plain"), iterations=3, snapshots="last")
    with pytest.MonkeyPatch.context() as m:  # the release before: fp32 ran plain on the CPU
        m.setattr(vqclip.device, "FAST_FP32_ON_CPU", False)
        old = generate(plain, tiny_models, progress=False)
    recipe = read_recipe(old.final)
    assert recipe["plan"].pop("modules") == "plain"
    lean = generate(plain.replace(out=str(tmp_path / "lean")), tiny_models, progress=False)
    assert read_recipe(lean.final)["plan"]["modules"] == "lean"
    assert content_bytes(lean.final) != content_bytes(old.final)  # other float rounding
    assert replay(recipe, tiny_models).image().tobytes() == Image.open(old.final).tobytes()
