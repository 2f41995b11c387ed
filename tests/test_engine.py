"""The engine and generate(), on tiny models built from the real classes."""

import json
import warnings

import clip
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from vqclip.config import RunConfig
from vqclip.credentials import content_bytes
from vqclip.engine import run
from vqclip.export import read_recipe
from vqclip.observers import StopFlag, generate, read_log, resume
from vqclip.plan import prepare
from vqclip.state import load_state, read_run


@pytest.fixture
def config(tiny_config):
    return tiny_config


def losses(config, models):
    return [step.stats()["loss"] for step in run(prepare(config, models))]


def test_loss_falls_on_the_whole_image(config, tiny_models):
    trace = losses(
        config.replace(iterations=30, lr=0.5, full_cutout=True, augment=False), tiny_models
    )
    assert len(trace) == 31
    assert trace[-1] < 0.8 * trace[0]


def test_loss_falls_with_random_augmented_cutouts(config, tiny_models):
    # The tiny random CLIP barely reacts to crops, so the fall is small but real.
    trace = losses(config.replace(iterations=30, lr=0.5, cutn=8), tiny_models)
    assert sum(trace[-10:]) / 10 < sum(trace[:3]) / 3 - 0.01


def test_step_image_is_rgb_in_range_and_of_the_asked_size(config, tiny_models):
    step = next(run(prepare(config.replace(size=[64, 48]), tiny_models)))
    assert step.iteration == 0 and step.pixels.shape == (3, 48, 64)
    assert step.pixels.min() >= 0 and step.pixels.max() <= 1
    assert step.image().size == (64, 48) and step.image().mode == "RGB"


def test_snapshots_at_exactly_the_scheduled_iterations(config, tiny_models):
    result = generate(config, tiny_models, progress=False)
    names = sorted(p.name for p in (result.run_dir / "snapshots").iterdir())
    assert names == ["000000.png", "000003.png", "000005.png", "000010.png", "000012.png"]
    for name in names:
        with Image.open(result.run_dir / "snapshots" / name) as im:
            assert im.format == "PNG" and im.size == (64, 64) and im.mode == "RGB"
    assert read_recipe(result.run_dir / "snapshots" / "000005.png")["iteration"] == 5
    record = read_run(result.run_dir)
    assert record["status"] == "done" and record["iteration"] == 12
    assert record["config"]["seed"] == 7 and record["config"]["prompt"] == "a unicorn"
    assert len(record["models"]["vqgan"]["sha256"]["checkpoint"]) == 64
    log = read_log(result.run_dir)
    assert [row["iteration"] for row in log] == list(range(13))
    assert set(log[3]) == {"iteration", "loss", "lr", "prompts"}
    assert (
        log[3]["prompts"][0]["prompt"] == "a unicorn"
        and -1 <= log[3]["prompts"][0]["similarity"] <= 1
    )
    assert content_bytes(result.run_dir / "final.png") == content_bytes(
        result.run_dir / "snapshots" / "000012.png"
    )


def test_same_seed_same_bytes_other_seed_other_image(config, tiny_models, tmp_path):
    def final(**changes):
        result = generate(config.replace(name="same", **changes), tiny_models, progress=False)
        return content_bytes(result.final), result.run_dir

    (a, dir_a), (b, dir_b) = final(out=str(tmp_path / "a")), final(out=str(tmp_path / "b"))
    assert dir_a != dir_b and a == b
    c, dir_c = final(out=str(tmp_path / "c"), seed=8)
    assert Image.open(dir_a / "final.png").tobytes() != Image.open(dir_c / "final.png").tobytes()
    assert a != c


def test_random_seed_is_recorded(config, tiny_models):
    result = generate(
        config.replace(seed=None, iterations=2, snapshots="last"), tiny_models, progress=False
    )
    seed = read_run(result.run_dir)["config"]["seed"]
    assert isinstance(seed, int)
    again = generate(
        config.replace(seed=seed, iterations=2, snapshots="last"), tiny_models, progress=False
    )
    assert Image.open(again.final).tobytes() == Image.open(result.final).tobytes()


def test_full_cutout_loss_matches_an_independent_computation(config, tiny_models, tmp_path):
    """Decode, map to [0, 1], CLIP's own normalisation, spherical distance: written out by hand."""
    pixels = torch.linspace(0, 255, 64 * 64 * 3).reshape(64, 64, 3).byte().numpy()
    Image.fromarray(pixels).save(tmp_path / "init.png")
    cfg = config.replace(
        init_image=str(tmp_path / "init.png"),
        full_cutout=True,
        augment=False,
        iterations=1,
        snapshots="last",
        prompt="a heptagonal stop sign:0.7",
    )
    step = next(run(prepare(cfg, tiny_models)))

    vqgan, model = tiny_models.vqgan, tiny_models.clip
    with torch.no_grad():
        x = torch.from_numpy(pixels).permute(2, 0, 1)[None].float() / 255
        z = vqgan.encode(x * 2 - 1)
        codes = vqgan.codebook[
            torch.cdist(z.movedim(1, -1).reshape(-1, z.shape[1]), vqgan.codebook).argmin(1)
        ]
        image = (vqgan.decode(codes.reshape(1, z.shape[2], z.shape[3], -1).movedim(-1, 1)) + 1) / 2
        image = image.clamp(0, 1)
        small = F.interpolate(image, size=(32, 32), mode="area")  # the tiny CLIP sees 32 px
        mean = torch.tensor([0.48145466, 0.4578275, 0.40821073]).view(1, 3, 1, 1)
        std = torch.tensor([0.26862954, 0.26130258, 0.27577711]).view(1, 3, 1, 1)
        a = F.normalize(model.encode_image((small - mean) / std), dim=-1)
        b = F.normalize(model.encode_text(clip.tokenize(["a heptagonal stop sign"])), dim=-1)
        expected = 0.7 * 2 * torch.arcsin((a - b).norm(dim=-1) / 2) ** 2
    assert torch.allclose(step.pixels, image[0], atol=1e-5)
    assert step.loss.item() == pytest.approx(expected.item(), rel=1e-4)


def test_negative_weight_pushes_away(config, tiny_models):
    cfg = config.replace(prompt="a unicorn:-1", iterations=20, lr=0.5, full_cutout=True)
    sims = [step.similarities[0].item() for step in run(prepare(cfg, tiny_models))]
    assert sum(sims[-5:]) < sum(sims[:5])


def test_init_weight_pulls_toward_the_init_images_latent(config, tiny_models, tmp_path):
    Image.new("RGB", (64, 64), (200, 40, 40)).save(tmp_path / "red.png")

    def drift(init_weight):
        plan = prepare(
            config.replace(
                init_image=str(tmp_path / "red.png"), init_weight=init_weight, iterations=15, lr=0.3
            ),
            tiny_models,
        )
        steps = run(plan)
        first = next(steps).state()["z"]
        for step in steps:
            last = step.state()["z"]
        return (last - first).pow(2).mean().item()

    assert drift(50.0) < 0.5 * drift(0.0)


def test_size_not_a_multiple_of_the_factor_is_rounded_with_a_notice(config, tiny_models):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert prepare(config.replace(size=[66, 61]), tiny_models).config.size == [64, 60]
    assert "not a multiple" in str(caught[0].message) and "64x60" in str(caught[0].message)


def test_long_prompt_is_truncated_with_a_warning(config, tiny_models):
    long = "the sky was clear and a blackbird had come " * 10
    with pytest.warns(UserWarning, match="77-token"):
        next(run(prepare(config.replace(prompt=long), tiny_models)))


def test_stop_keeps_every_snapshot_and_the_state(config, tiny_models):
    seen, stop = [], StopFlag()

    class PressStop:  # like the panel's Stop button, pressed while iteration 4 shows
        def __call__(self, step):
            seen.append(step.iteration)
            if step.iteration == 4:
                stop.set()

        def close(self, status):
            pass

    result = generate(
        config, tiny_models, progress=False, observers=[PressStop()], should_stop=stop
    )
    assert result.status == "stopped" and result.iteration == 4 and seen == [0, 1, 2, 3, 4]
    names = sorted(p.name for p in (result.run_dir / "snapshots").iterdir())
    assert names == ["000000.png", "000003.png", "000004.png"]  # 4 is where Stop was pressed
    assert load_state(result.run_dir)["iteration"] == 4
    assert read_run(result.run_dir)["status"] == "stopped"


@pytest.mark.parametrize("stop_at", [3, 7])
def test_resume_gives_the_same_bytes_as_an_uninterrupted_run(config, tiny_models, stop_at):
    full = generate(config.replace(name="full"), tiny_models, progress=False)
    parts = generate(
        config.replace(name="parts"), tiny_models, progress=False, should_stop=_stop_after(stop_at)
    )
    assert parts.status == "stopped"
    resumed = resume(parts.run_dir, tiny_models, progress=False)
    assert resumed.status == "done"
    assert content_bytes(resumed.final) == content_bytes(full.final)
    assert [row["iteration"] for row in read_log(parts.run_dir)] == list(range(13))


def _stop_after(iteration):
    state = {"n": -1}

    def should_stop():
        state["n"] += 1
        return state["n"] >= iteration

    return should_stop


def test_run_json_is_valid_json_with_the_recipe(config, tiny_models):
    result = generate(config.replace(iterations=2, snapshots="last"), tiny_models, progress=False)
    record = json.loads((result.run_dir / "run.json").read_text())
    assert record["device"] == "cpu" and record["precision"] == "fp32"
    assert record["versions"]["torch"] == torch.__version__


def test_image_prompt_pulls_toward_the_picture(config, tiny_models, tmp_path):
    Image.new("RGB", (64, 64), (30, 200, 60)).save(tmp_path / "green.png")
    cfg = prepare(
        config.replace(prompt="", image_prompts=[f"{tmp_path / 'green.png'}:2"], iterations=20,
                       lr=0.5, full_cutout=True, augment=False), tiny_models,
    )  # fmt: skip
    steps = list(run(cfg))
    assert steps[0].labels == (f"image:{tmp_path / 'green.png'}",)
    assert steps[-1].similarities[0] > steps[0].similarities[0]
    assert steps[-1].loss < steps[0].loss


def test_noise_prompts_are_seeded_and_weighted(config, tiny_models):
    from vqclip.prompts import encode_targets

    cfg = config.replace(prompt="", noise_prompt_seeds=[1, 2, 1], noise_prompt_weights=[0.5])
    targets = encode_targets(cfg, tiny_models.clip, 32, torch.device("cpu"))
    assert [t.weight for t in targets] == [0.5, 1.0, 1.0]
    assert torch.equal(targets[0].embeds, targets[2].embeds)
    assert not torch.equal(targets[0].embeds, targets[1].embeds)
    assert torch.allclose(targets[1].embeds.norm(dim=-1), torch.ones(1))


def test_stop_halts_a_prompts_pull_below_its_distance(config, tiny_models):
    cfg = config.replace(iterations=15, lr=0.5, full_cutout=True, augment=False)
    free = losses(cfg.replace(prompt="a unicorn:1"), tiny_models)
    held = losses(cfg.replace(prompt=f"a unicorn:1:{free[0] + 1}"), tiny_models)
    assert free[-1] < free[0]
    assert held == [held[0]] * len(held)  # below stop from the start: no gradient, no change


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_no_tensor_lands_on_the_default_device(tiny_config, tiny_models, tmp_path, precision):
    """Users run on CUDA, where a tensor made on the default device (the CPU) instead of the
    latent's breaks the run. Here the default device is "meta", which holds no data, so any
    such tensor in a run, its prompts, snapshots or saved state fails this test on the CPU."""
    picture = tmp_path / "picture.png"
    Image.new("RGB", (64, 64), (200, 90, 30)).save(picture)
    config = tiny_config.replace(
        prompt="a unicorn | fog:-0.3",
        image_prompts=[f"{picture}:0.5"],
        init_image=str(picture),
        init_weight=0.2,
        noise_prompt_seeds=[3],
        tv_weight=0.1,
        precision=precision,
        iterations=4,
        snapshots="every:2,last",
    )
    generate(
        config.replace(iterations=1, snapshots="last"), tiny_models, progress=False
    )  # model caches made
    torch.set_default_device("meta")
    try:
        result = generate(config, tiny_models, progress=False)
    finally:
        torch.set_default_device(None)
    assert [p.name for p in result.snapshots] == ["000002.png", "000004.png"]
    assert load_state(result.run_dir)["iteration"] == 4


def test_a_run_checks_its_settings_once_on_the_way_to_the_loop(config, tiny_models, monkeypatch):
    """generate checks the settings before any model would load, and the plan takes its
    word for it (a timeline makes a check cost more: each line's prompts are checked)."""
    checked = []
    real = RunConfig.validate
    monkeypatch.setattr(RunConfig, "validate", lambda self: checked.append(self) or real(self))
    generate(config.replace(timeline=["3: a castle"]), tiny_models, progress=False)
    assert len(checked) == 1
