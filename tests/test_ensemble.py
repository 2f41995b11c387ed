"""CLIP ensembles: several CLIPs of different input sizes judge one picture (vqclip.ensemble).

Two tiny real-architecture CLIPs: make_tiny_models' clip.pt (32 px) and make_tiny_clip's
clip48.pt (48 px), so every check below can tell the two apart by the cutouts they see."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from PIL import Image

from vqclip import cli
from vqclip.config import ConfigError, RunConfig
from vqclip.credentials import content_bytes
from vqclip.engine import run
from vqclip.ensemble import ClipMember, clip_weights, parse_clip_spec
from vqclip.export import format_parameters, read_recipe
from vqclip.fast import FastVisionTransformer, optimize_models
from vqclip.hub import sha256_file
from vqclip.memory import estimate_peak_memory
from vqclip.models import Models, load_models
from vqclip.observers import RunError, generate, reproduce, resume
from vqclip.plan import prepare
from vqclip.prompts import clip_normalize, encode_each, encode_images, encode_targets
from vqclip.state import RUN_FILE, check_record, read_run
from vqclip.sweep import load_judge
from vqclip.testing import make_tiny_clip

KNOWN = "Known names: RN50, RN101, RN50x4, RN50x16, RN50x64, ViT-B/32, ViT-B/16, ViT-L/14"


@pytest.fixture(scope="module")
def clip48(tmp_path_factory):
    return make_tiny_clip(tmp_path_factory.mktemp("clip48"))


@pytest.fixture(scope="module")
def spec(tiny_model_dir, clip48):
    return f"{tiny_model_dir['clip']}:1,{clip48}:0.5"


@pytest.fixture(scope="module")
def ensemble(tiny_model_dir, spec):
    """The tiny VQGAN with both tiny CLIPs, loaded through the public path."""
    config = RunConfig(
        vqgan_config=str(tiny_model_dir["vqgan_config"]),
        vqgan_checkpoint=str(tiny_model_dir["vqgan_checkpoint"]),
        clip_model=spec,
        device="cpu",
    )
    return load_models(config, progress=False)


def alone(models: Models, k: int) -> Models:
    """The ensemble's VQGAN with only its k-th CLIP: a single-CLIP run's models."""
    return Models(models.vqgan, models.clips[k], models.vqgan_info, models.clip_infos[k],
                  models.device)  # fmt: skip


@pytest.fixture
def config(tiny_config, spec):
    return tiny_config.replace(
        clip_model=spec, iterations=6, cutn=4, precision="fp32", snapshots="0,last"
    )


# --- the setting ----------------------------------------------------------------------


HOW = "name:weight separated by commas with each weight a number above 0"


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("ViT-B/32:x", "gives ViT-B/32 the weight 'x', which is not a number"),
        ("ViT-B/32:0", "gives ViT-B/32 the weight 0; each weight must be a number above 0"),
        ("ViT-B/32:1,ViT-B/16:-2", "gives ViT-B/16 the weight -2; each weight must be"),
        ("ViT-B/32:1,ViT-B/16:nan", "gives ViT-B/16 the weight nan; each weight must be"),
        (",", "The CLIP setting ',' has an empty entry"),
        ("ViT-B/32,", "has an empty entry (two commas in a row, or one at an end)"),
        ("ViT-B/32:1,ViT-B/32:2", "names ViT-B/32 twice; each CLIP may judge once"),
        ("ViT-Z/99:1,ViT-B/32", "CLIP model 'ViT-Z/99' (in the CLIP ensemble"),
        ("ViT-B/32,ViT-Z/99", f"neither a known name nor an existing file. {KNOWN}"),
    ],
)
def test_a_bad_ensemble_is_refused_saying_what_and_how(spec, message):
    with pytest.raises(ConfigError) as error:
        RunConfig(prompt="a unicorn", clip_model=spec).validate()
    assert error.value.field == "clip_model"
    assert message in str(error.value) and "\n" not in str(error.value)
    if "neither a known name" not in str(error.value):
        assert HOW in str(error.value) and "ViT-B/32:1,ViT-B/16:0.5" in str(error.value)


def test_one_unknown_name_reads_as_it_always_did():
    with pytest.raises(ConfigError, match="^CLIP model 'ViT-Z/99' is neither a known name nor an"):
        RunConfig(prompt="a", clip_model="ViT-Z/99").validate()


def test_the_same_file_twice_is_refused_however_it_is_written(tiny_model_dir, monkeypatch):
    path = tiny_model_dir["clip"]
    monkeypatch.chdir(path.parent)
    with pytest.raises(ConfigError, match="twice"):
        parse_clip_spec(f"{path}:1,clip.pt:2")


def test_the_spec_parses_to_names_and_weights_that_share_the_loss(clip48):
    assert parse_clip_spec("ViT-B/32") == (ClipMember("ViT-B/32", 1.0),)
    assert parse_clip_spec(" ViT-B/32:1 , ViT-B/16:0.5") == (
        ClipMember("ViT-B/32", 1.0),
        ClipMember("ViT-B/16", 0.5),
    )
    assert parse_clip_spec(f"ViT-L/14@336px,{clip48}:3")[1] == ClipMember(str(clip48), 3.0)
    assert clip_weights("ViT-B/32:1,ViT-B/16:3") == (0.25, 0.75)  # normalised to sum 1
    assert clip_weights("ViT-B/32:0.2") == clip_weights("ViT-B/32") == (1.0,)


def test_the_command_line_refuses_a_bad_ensemble_with_exit_2(capsys, tmp_path):
    code = cli.main(["generate", "a unicorn", "--clip", "ViT-B/32:x", "--out", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2 and "gives ViT-B/32 the weight 'x'" in err and "Traceback" not in err
    assert list(tmp_path.iterdir()) == []


# --- loading and computing -----------------------------------------------------------


def test_every_clip_of_the_spec_is_loaded_in_order(ensemble, clip48):
    assert ensemble.clip_sizes == (32, 48) and len(ensemble.clips) == 2
    assert [i.name for i in ensemble.clip_infos] == ["clip.pt", "clip48.pt"]
    assert ensemble.clip_infos[1].sha256["weights"] == sha256_file(clip48)
    assert ensemble.clip is ensemble.clips[0] and ensemble.clip_size == 32


def test_each_clip_sees_the_cutouts_at_its_own_size(config, ensemble):
    plan = prepare(config.replace(iterations=1, clip_batch=3), ensemble)
    seen: dict[int, list[tuple[int, ...]]] = {0: [], 1: []}
    hooks = [
        clip.visual.register_forward_pre_hook(
            lambda module, args, k=k: seen[k].append(tuple(args[0].shape))
        )
        for k, clip in enumerate(plan.models.clips)  # as prepared: lean or as loaded
    ]
    try:
        list(run(plan))
    finally:
        for hook in hooks:
            hook.remove()
    # two iterations, each the 4 cutouts in micro-batches of 3 and 1, at each CLIP's size
    assert seen[0] == [(3, 3, 32, 32), (1, 3, 32, 32)] * 2
    assert seen[1] == [(3, 3, 48, 48), (1, 3, 48, 48)] * 2


def test_the_ensemble_loss_is_the_weighted_mean_of_each_clips(config, ensemble):
    """At iteration 0 each CLIP of the ensemble sees exactly the cutouts a run with it alone
    would (the same RNG draws, cut at its size): the ensemble's losses and similarities are
    the weighted mean of the two single runs', with weights 1 and 0.5 made 2/3 and 1/3."""
    both = next(run(prepare(config.replace(prompt="a unicorn | fog:0.5"), ensemble)))
    single = [
        next(run(prepare(config.replace(prompt="a unicorn | fog:0.5", clip_model=name), alone(ensemble, k))))
        for k, name in enumerate(m.name for m in parse_clip_spec(config.clip_model))
    ]  # fmt: skip
    for field in ("prompt_losses", "similarities"):
        mixed = 2 / 3 * getattr(single[0], field) + 1 / 3 * getattr(single[1], field)
        assert torch.allclose(getattr(both, field), mixed, atol=1e-6), field
    assert not torch.allclose(single[0].similarities, single[1].similarities, atol=1e-3)
    assert both.labels == ("a unicorn", "fog") and both.weights == (1.0, 0.5)


def test_an_ensemble_run_lowers_its_loss(config, ensemble):
    trace = [s.stats()["loss"] for s in run(prepare(config.replace(iterations=20, lr=0.5, full_cutout=True, augment=False), ensemble))]  # fmt: skip
    assert trace[-1] < 0.9 * trace[0]


def test_weights_change_the_picture(config, ensemble):
    def final(spec: str) -> torch.Tensor:
        return list(run(prepare(config.replace(clip_model=spec), ensemble)))[-1].pixels

    names = [m.name for m in parse_clip_spec(config.clip_model)]
    heavy_first = final(f"{names[0]}:4,{names[1]}:1")
    assert not torch.equal(heavy_first, final(f"{names[0]}:1,{names[1]}:4"))
    assert torch.equal(heavy_first, final(f"{names[0]}:8,{names[1]}:2"))  # only ratios count


def test_one_clip_at_any_weight_is_exactly_that_clip_alone(tiny_config, tiny_models):
    name = tiny_config.clip_model
    plain = list(run(prepare(tiny_config.replace(iterations=3), tiny_models)))
    weighted = list(run(prepare(tiny_config.replace(iterations=3, clip_model=f"{name}:0.3"), tiny_models)))  # fmt: skip
    assert torch.equal(plain[-1].pixels, weighted[-1].pixels)
    assert [s.stats()["loss"] for s in plain] == [s.stats()["loss"] for s in weighted]


def test_models_of_another_ensemble_are_refused_before_the_run(config, tiny_models):
    with pytest.raises(ConfigError, match="names 2 CLIP model.s., but the models given hold 1"):
        prepare(config, tiny_models)


def test_the_lean_modules_replace_every_clips_vision_tower(ensemble):
    # A single-CLIP copy prepared first, sharing the VQGAN, must not stand in for the ensemble.
    one = optimize_models(alone(ensemble, 0), "bf16", fast=True)
    lean = optimize_models(ensemble, "bf16", fast=True)
    assert len(one.clips) == 1 and len(lean.clips) == 2
    assert all(isinstance(c.visual, FastVisionTransformer) for c in lean.clips)
    assert [int(c.visual.input_resolution) for c in lean.clips] == [32, 48]
    assert not isinstance(ensemble.clips[1].visual, FastVisionTransformer)  # beside, not in place


def test_the_memory_estimate_counts_each_clip(ensemble):
    args = ([64, 64], 8, "fp32", "cpu")
    one = estimate_peak_memory(*args, alone(ensemble, 0), fast=False)
    both = estimate_peak_memory(*args, ensemble, fast=False)
    second = estimate_peak_memory(*args, alone(ensemble, 1), fast=False)
    clip48_bytes = sum(p.numel() * 4 for p in ensemble.clips[1].parameters())
    assert both.weights == one.weights + clip48_bytes  # the VQGAN counted once
    assert both.clip == max(one.clip, second.clip) > one.clip  # one CLIP's pass at a time
    assert both.other > one.other  # a second set of cutouts, at 48 px
    assert both.total > one.total


# --- records, reproduce and resume ---------------------------------------------------


def test_run_json_and_every_png_name_each_clip_with_its_sha256(
    config, ensemble, clip48, tiny_model_dir
):
    result = generate(config, ensemble, progress=False)
    want = [
        {"name": "clip.pt", "sha256": sha256_file(tiny_model_dir["clip"]), "input": 32},
        {"name": "clip48.pt", "sha256": sha256_file(clip48), "input": 48},
    ]
    record = read_run(result.run_dir)
    for models in (record["models"], read_recipe(result.final)["models"]):
        got = [{"name": c["name"], "sha256": c["sha256"]["weights"], "input": c["input"]}
               for c in models["clip"]]  # fmt: skip
        assert got == want
    assert read_recipe(result.final)["config"]["clip_model"] == config.clip_model
    # the PNG's parameters line names each CLIP's file with its weight, not a path's tail
    assert 'CLIP: "clip.pt:1,clip48.pt:0.5"' in format_parameters(read_recipe(result.final))
    check_record(record, "run.json")  # the record's own check reads the new shape


def test_reproducing_an_ensemble_picture_gives_the_same_bytes(config, ensemble, tmp_path):
    final = generate(config.replace(iterations=3), ensemble, progress=False).final
    again = reproduce(final, tmp_path / "again", models=ensemble)
    assert content_bytes(again) == content_bytes(final)


def test_resume_refuses_another_ensemble_and_continues_the_same_one(config, ensemble):
    whole = generate(config.replace(iterations=4, name="whole"), ensemble, progress=False)
    half = generate(config.replace(iterations=2, name="half"), ensemble, progress=False)
    with pytest.raises(
        RunError, match=r"made with 2 CLIP model\(s\) \(clip.pt, clip48.pt\), but 1"
    ):
        resume(half.run_dir, alone(ensemble, 0), iterations=4, progress=False)
    swapped = Models(ensemble.vqgan, ensemble.clips[1], ensemble.vqgan_info,
                     ensemble.clip_infos[1], ensemble.device, (ensemble.clip,),
                     (ensemble.clip_info,))  # fmt: skip
    with pytest.raises(RunError, match=r"ensemble's CLIP 1 \(clip48.pt\) weights file"):
        resume(half.run_dir, swapped, iterations=4, progress=False)
    assert read_run(half.run_dir)["iteration"] == 2  # refused before anything changed
    done = resume(half.run_dir, ensemble, iterations=4, progress=False)
    assert read_recipe(done.final)["iteration"] == read_recipe(whole.final)["iteration"] == 4
    # the same pixels: a resumed ensemble run is the uninterrupted one
    assert Image.open(done.final).tobytes() == Image.open(whole.final).tobytes()


def test_a_single_clip_run_records_one_clip_as_before(a_run):
    record = json.loads((a_run / RUN_FILE).read_text())
    assert isinstance(record["models"]["clip"], dict) and "input" not in record["models"]["clip"]


def test_the_record_check_refuses_a_damaged_ensemble_entry():
    base = {"config": {"prompt": "a"}, "models": {"clip": [{"sha256": {"weights": "ab"}}]}}
    assert check_record(base, "run.json") is base
    for bad in ([], [3], [{"sha256": 5}]):
        with pytest.raises(RunError, match="'models'"):
            check_record({**base, "models": {"clip": bad}}, "run.json")


def test_a_sweep_is_judged_by_the_ensembles_first_clip(ensemble):
    judge, name = load_judge(None, ensemble)
    assert judge is ensemble.clip and "first CLIP of the ensemble" in name


def test_each_clip_is_fed_its_own_normalisation(ensemble):
    """OpenAI's CLIPs share one mean and std; a model carrying its own gets its own."""
    own = copy.copy(ensemble.clips[1])  # shares the tower: the session's model stays as is
    own.image_mean, own.image_std = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
    pixels = torch.rand(2, 3, 48, 48, generator=torch.Generator().manual_seed(0))
    fed = []
    hook = own.visual.register_forward_pre_hook(lambda m, args: fed.append(args[0]))
    try:
        encode_images(own, pixels)
        encode_images(ensemble.clips[1], pixels)
    finally:
        hook.remove()
    assert torch.allclose(fed[0], (pixels - 0.5) / 0.25)
    assert torch.allclose(fed[1], clip_normalize(pixels))  # OpenAI's own statistics
    assert torch.allclose(fed[1][:, 0], (pixels[:, 0] - 0.48145466) / 0.26862954)


def test_each_clip_encodes_the_prompts_itself_and_keeps_them(config, ensemble, tmp_path):
    """Text, image and noise prompts, per CLIP: an image prompt's cutouts at each CLIP's own
    size, and each CLIP's own cache, so a timeline's later weights encode nothing again."""
    picture = tmp_path / "red.png"
    Image.new("RGB", (40, 40), (200, 30, 30)).save(picture)
    setup = config.replace(image_prompts=[str(picture)], noise_prompt_seeds=[5])
    caches: list[dict] = [{}, {}]
    each = encode_each(setup, ensemble.clips, ensemble.clip_sizes, torch.device("cpu"), caches)
    for k, (clip, size) in enumerate(zip(ensemble.clips, ensemble.clip_sizes)):
        assert [t.label for t in each[k]] == ["a unicorn", f"image:{picture}", "noise:5"]
        alone_ = encode_targets(setup, clip, size, torch.device("cpu"))
        assert all(torch.equal(a.embeds, b.embeds) for a, b in zip(each[k], alone_))
        assert set(caches[k]) == {("text", "a unicorn"), ("image", str(picture))}
    assert not torch.allclose(each[0][1].embeds, each[1][1].embeds)  # two judges, two views
    before = [dict(c) for c in caches]
    again = encode_each(setup.replace(prompt="a unicorn:3"), ensemble.clips, ensemble.clip_sizes,
                        torch.device("cpu"), caches)  # fmt: skip
    assert all(again[k][0].embeds is before[k]["text", "a unicorn"] for k in range(2))
    assert again[0][0].weight == 3.0


def test_a_steered_ensemble_run_with_an_image_prompt_reproduces(config, ensemble, tmp_path):
    picture = tmp_path / "red.png"
    Image.new("RGB", (40, 40), (200, 30, 30)).save(picture)
    steered = config.replace(
        iterations=4, image_prompts=[f"{picture}:0.5"], timeline=["2: a dog | fog:0.5"]
    )
    result = generate(steered, ensemble, progress=False)
    labels = [json.loads(line)["prompts"] for line in (result.run_dir / "log.jsonl").open()]
    assert [p["prompt"] for p in labels[-1]] == ["a dog", "fog", f"image:{picture}"]
    again = reproduce(result.final, tmp_path / "again", models=ensemble)
    assert content_bytes(again) == content_bytes(result.final)


# --- outside the loop: the panel's label and estimate, the queue ----------------------


def test_the_panel_labels_an_ensemble_by_file_names_and_counts_each_clip(config, clip48):
    from vqclip.ui import cache, estimate

    assert cache.model_label(config) == f"vqgan.yaml + clip.pt:1,{clip48.name}:0.5 (cpu)"
    assert cache.model_label(config.replace(clip_model="ViT-B/16")).endswith("ViT-B/16 (cpu)")
    one = estimate.work_of(config.replace(clip_model=config.clip_model.split(":")[0]))
    assert estimate.work_of(config) == 2 * one  # both CLIPs run every cutout


def test_a_queued_ensemble_finds_its_clip_files_from_any_directory(
    config, tiny_model_dir, clip48, tmp_path, monkeypatch
):
    from vqclip.queue.store import anchored

    monkeypatch.chdir(clip48.parent)  # the user names the files relative to here
    relative = config.replace(clip_model=f"{clip48.name}:2,{tiny_model_dir['clip']}:1")
    spec = anchored(relative).clip_model
    assert spec == f"{clip48}:2.0,{tiny_model_dir['clip']}:1.0"
    monkeypatch.chdir(tmp_path)  # a worker started elsewhere
    assert [m.weight for m in parse_clip_spec(spec)] == [2.0, 1.0]
