"""The vqclip command: end to end in a subprocess, bad input, offline errors, the sub-commands."""

import json
import subprocess
import sys

import pytest
from PIL import Image

from vqclip import cli
from vqclip.config import RunConfig
from vqclip.credentials import content_bytes
from vqclip.export import read_recipe
from vqclip.models import load_models
from vqclip.registry import VQGANSource


def vqclip(*args, cwd=None, env=None):
    return subprocess.run(
        [sys.executable, "-m", "vqclip", *map(str, args)],
        capture_output=True, text=True, cwd=cwd, env=env, timeout=300,
    )  # fmt: skip


def test_generate_end_to_end_in_a_subprocess(tiny_flags, tmp_path):
    done = vqclip(
        "generate", "a watercolor painting of a lighthouse:1 | fog:0.4", *tiny_flags,
        "--size", "64", "64", "--iterations", "20", "--snapshots", "1,5,every:10,last",
        "--seed", "7", "--cutn", "4", "--out", tmp_path / "runs",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    (run_dir,) = (tmp_path / "runs").iterdir()
    assert f"run directory: {run_dir}" in done.stdout
    assert "status: done at iteration 20" in done.stdout
    names = sorted(p.name for p in (run_dir / "snapshots").iterdir())
    assert names == ["000001.png", "000005.png", "000010.png", "000020.png"]
    assert Image.open(run_dir / "final.png").size == (64, 64)
    record = json.loads((run_dir / "run.json").read_text())
    assert record["status"] == "done" and record["config"]["seed"] == 7
    assert "loss=" in done.stderr and "a watercolor pai=" in done.stderr  # the progress bar


BAD_INPUT = [
    (["--size", "0", "64"], "size must be two positive"),
    (["--size", "-64", "64"], "size must be two positive"),
    (["--iterations", "0"], "iterations must be"),
    (["--vqgan", "nonsense_model"], "Unknown VQGAN model 'nonsense_model'"),
    (["--init-image", "missing.png"], "init_image file 'missing.png' does not exist"),
    (["--snapshots", "10,every:x"], "every:x"),
    (["--clip-batch", "-2"], "clip_batch must be 0 (automatic) or a positive"),
    (["--checkpointing", "sometimes"], "invalid choice: 'sometimes'"),
]


@pytest.mark.parametrize("flags, message", BAD_INPUT)
def test_bad_input_exits_2_with_one_paragraph_and_writes_nothing(flags, message, tmp_path, capsys):
    out = tmp_path / "runs"
    code = cli.main(["generate", "a unicorn", "--out", str(out), *flags])
    err = capsys.readouterr().err
    assert code == 2
    assert message in err and err.startswith("vqclip: error: ") and err.count("\n") == 1
    assert not out.exists()


def test_malformed_prompt_weight_in_a_subprocess(tmp_path):
    done = vqclip("generate", "fog:0.4x", "--out", tmp_path / "runs")
    assert done.returncode == 2
    assert "looks like a weight" in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "runs").exists()


def test_offline_default_models_say_what_is_missing(monkeypatch, tmp_path, capsys, model_cache):
    dead = VQGANSource(("http://127.0.0.1:9/model.yaml",), ("http://127.0.0.1:9/last.ckpt",))
    monkeypatch.setitem(cli_registry(), "vqgan_imagenet_f16_16384", dead)
    code = cli.main(["generate", "a unicorn", "--out", str(tmp_path / "runs")])
    err = capsys.readouterr().err
    assert code == 2
    assert "vqgan_imagenet_f16_16384" in err and "http://127.0.0.1:9/model.yaml" in err
    assert str(model_cache / "vqgan" / "vqgan_imagenet_f16_16384.ckpt") in err  # where to put it
    assert "--vqgan-config" in err and "make-tiny-models" in err and "Traceback" not in err
    assert not (tmp_path / "runs").exists()


def cli_registry():
    from vqclip import registry

    return registry.VQGAN_MODELS


@pytest.fixture(scope="module")
def finished_run(tiny_model_dir, tmp_path_factory):
    flags = [
        "--vqgan-config", tiny_model_dir["vqgan_config"], "--vqgan-checkpoint",
        tiny_model_dir["vqgan_checkpoint"], "--clip", tiny_model_dir["clip"], "--device", "cpu",
        "--precision", "fp32",
    ]  # fmt: skip
    out = tmp_path_factory.mktemp("runs")
    code = cli.main(
        ["generate", "Oregon 💚 painting", *map(str, flags), "--size", "64", "48", "--iterations",
         "8", "--snapshots", "2,4,last", "--seed", "3", "--cutn", "2", "--out", str(out), "--quiet"]
    )  # fmt: skip
    assert code == 0
    (run_dir,) = out.iterdir()
    return run_dir


def test_export_writes_gif_and_mp4_inside_the_run(finished_run, capsys):
    assert cli.main(["export", str(finished_run), "--gif", "--mp4", "--fps", "12"]) == 0
    with Image.open(finished_run / "animation.gif") as gif:
        assert gif.n_frames == 3
    import imageio.v3 as iio

    frames = list(iio.imiter(finished_run / "animation.mp4"))
    assert len(frames) == 3 + 12  # three snapshots, then the last held for one second at 12 fps


def test_strip_writes_a_png_of_the_chosen_iterations(finished_run, capsys):
    assert cli.main(["strip", str(finished_run), "--at", "2,8"]) == 0
    path = capsys.readouterr().out.strip()
    assert path.endswith("strip_2_8.png") and Image.open(path).format == "PNG"
    assert cli.main(["strip", str(finished_run), "--at", "2,3"]) == 2
    assert "3" in capsys.readouterr().err


def test_info_prints_the_recipe_and_refuses_foreign_pngs(finished_run, tmp_path, capsys):
    assert cli.main(["info", str(finished_run / "snapshots" / "000004.png")]) == 0
    text = capsys.readouterr().out
    assert text.splitlines()[0] == "Oregon 💚 painting"
    assert "Seed: 3" in text and "Steps: 4" in text
    Image.new("RGB", (8, 8)).save(tmp_path / "foreign.png")
    assert cli.main(["info", str(tmp_path / "foreign.png")]) == 2
    assert "vqclip" in capsys.readouterr().err


def test_reproduce_makes_identical_bytes(finished_run, tmp_path, capsys):
    original = finished_run / "snapshots" / "000004.png"
    assert cli.main(["reproduce", str(original), "--out", str(tmp_path / "again")]) == 0
    assert "identical to the original: yes" in capsys.readouterr().out
    assert content_bytes(tmp_path / "again" / "000004.png") == content_bytes(original)
    assert read_recipe(tmp_path / "again" / "000004.png")["iteration"] == 4


def test_make_tiny_models_writes_loadable_files(tmp_path, capsys):
    assert cli.main(["make-tiny-models", str(tmp_path / "tiny")]) == 0
    tiny = tmp_path / "tiny"
    assert "noise, not pictures" in capsys.readouterr().out
    models = load_models(
        RunConfig(
            vqgan_config=str(tiny / "vqgan.yaml"),
            vqgan_checkpoint=str(tiny / "vqgan.ckpt"),
            clip_model=str(tiny / "clip.pt"),
            device="cpu",
        ),
        progress=False,
    )
    # The files load through the public loaders into the real architectures.
    assert type(models.vqgan).__name__ == "VQGAN" and models.clip.visual.input_resolution > 0
