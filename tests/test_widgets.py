"""The notebook panel without a browser: set widget values, press buttons, check the files."""

from __future__ import annotations

import io
import json
import sys
import threading
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
from PIL import Image

import vqclip
from vqclip import ui
from vqclip.config import RunConfig, settings
from vqclip.export import list_snapshots
from vqclip.state import STATE_FILE, read_run
from vqclip.ui import TINY_BANNER, Panel, cache


@pytest.fixture
def make_panel(tiny_model_dir, tiny_models, tmp_path):
    """Panel(config with the tiny models) -> a panel writing runs under tmp_path/runs."""

    def make(mode: str = "background", **overrides) -> Panel:
        config = RunConfig(
            prompt="a lighthouse:1 | fog:0.5",
            size=[64, 64],
            cutn=8,
            iterations=12,
            seed=7,
            snapshots="0,5,10,last",
            vqgan_config=str(tiny_model_dir["vqgan_config"]),
            vqgan_checkpoint=str(tiny_model_dir["vqgan_checkpoint"]),
            clip_model=str(tiny_model_dir["clip"]),
            device="cpu",
            precision="fp32",  # pinned: "auto" would differ between machines
        ).replace(**overrides)
        panel = Panel(config, models=tiny_models, out=tmp_path / "runs", mode=mode)
        made.append(panel)
        return panel

    made: list[Panel] = []
    yield make
    for panel in made:  # a failed test must not leave a run writing into the next one
        panel.stop()
        panel.runner.join(60)


def labels(panel: Panel) -> list[str]:
    return [item.children[1].value for item in panel.gallery.children]


def test_every_setting_has_one_widget_and_round_trips(make_panel, tmp_path):
    picture = tmp_path / "init.png"
    Image.new("RGB", (8, 8), "red").save(picture)
    changes = {
        "prompt": "Time: 12:30 | Oregon 💚:2 | text:-1",
        "image_prompts": [f"{picture}:0.5", str(picture)],
        "noise_prompt_seeds": [1, 2],
        "noise_prompt_weights": [0.5],
        "init_image": str(picture),
        "init_weight": 0.25,
        "size": [48, 32],
        "seed": 123,
        "lr": 0.05,
        "optimizer": "sgd",
        "cut_pow": 0.5,
        "augment": False,
        "tv_weight": 0.1,
        "latent_init": "noise",
        "precision": "fp32",
        "snapshots": "pow2,every:7",
        "name": "mine",
    }
    panel = make_panel(**changes)
    assert set(panel.fields) == {f.name for f in settings()}
    config = panel.config()
    assert {name: getattr(config, name) for name in changes} == changes
    assert config.out == str(tmp_path / "runs") and config.device == "cpu"
    assert panel.problem.value == ""
    # Setting widget values is the same as typing: the form reads them back.
    panel.fields["size"].value = [80, 96]
    panel.fields["image_prompts"].value = str(picture)
    panel.fields["noise_prompt_seeds"].value = "5"
    panel.fields["noise_prompt_weights"].value = ""
    panel.fields["name"].value = ""
    config = panel.config()
    assert config.size == [80, 96] and config.image_prompts == [str(picture)]
    assert config.noise_prompt_seeds == [5] and config.noise_prompt_weights == []
    assert config.name is None


@pytest.mark.parametrize(
    "mode, precision", [("background", "fp32"), ("foreground", "fp32"), ("background", "bf16")]
)
def test_run_fills_live_image_progress_plot_gallery_and_scrubber(make_panel, mode, precision):
    # bf16 is emulated (hundreds of times slower) where the CPU has no native bf16: keep it tiny.
    small = {"size": [32, 32], "cutn": 2} if precision == "bf16" else {}
    panel = make_panel(mode, precision=precision, **small)
    panel.fields["prompt"].value = "a lighthouse:1 | fog:0.5"
    panel.fields["iterations"].value = 12
    panel.display_every.value = 2
    updates: list[bytes] = []
    panel.live_image.observe(lambda change: updates.append(bytes(change["new"])), "value")

    panel.run_button.click()
    result = panel.wait(60)

    assert result is not None and result.status == "done" and result.iteration == 12
    assert panel.last_result == result
    saved = [i for i, _ in list_snapshots(result.run_dir)]
    assert saved == [0, 5, 10, 12]
    assert panel.gallery_iterations == saved
    assert labels(panel) == ["it 0", "it 5", "it 10", "it 12"]
    assert panel.scrubber.max == 3 and panel.scrubber.value == 3
    assert panel.scrub_label.value.startswith("it 12")
    # The live image was replaced in place at display intervals (iterations 0, 2, ..., 12),
    # not at every step. (The widget notifies only a changed value, so an unchanged picture
    # counts for nothing here.)
    assert 2 <= len(set(updates)) <= len(updates) <= 12 // 2 + 1
    assert updates[-1] == bytes(panel.live_image.value)
    assert panel.progress.value == 12 and panel.progress.max == 12
    text = panel.progress_text.value
    assert "it 12/12" in text and "a lighthouse" in text and "fog" in text and "it/s" in text
    assert bytes(panel.plot.value).startswith(b"\x89PNG")
    assert "done at iteration 12" in panel.status.value
    assert not panel.run_button.disabled and panel.stop_button.disabled
    # Scrubbing shows the chosen snapshot's file.
    panel.scrubber.value = 1
    assert panel.frame_image.value == list_snapshots(result.run_dir)[1][1].read_bytes()
    assert panel.run_chooser.value == result.run_dir


@pytest.mark.parametrize("mode", ["background", "foreground"])
def test_stop_mid_run_keeps_every_snapshot_and_resume_continues(make_panel, mode):
    panel = make_panel(mode, iterations=100_000, snapshots="every:3")
    panel.display_every.value = 1
    shown = threading.Semaphore(0)
    panel.live_image.observe(lambda _: shown.release(), "value")

    def press_stop() -> None:  # another thread, like a click handled by the kernel
        for _ in range(4):
            assert shown.acquire(timeout=30)
        panel.stop_button.click()

    clicker = threading.Thread(target=press_stop)
    clicker.start()
    assert panel.run()  # in the foreground it returns when the run has stopped
    if mode == "background":
        assert not panel.stop_button.disabled and panel.run_button.disabled
    result = panel.wait(60)
    clicker.join()

    assert result.status == "stopped" and 3 <= result.iteration < 1000
    record = read_run(result.run_dir)
    assert record["status"] == "stopped" and record["iteration"] == result.iteration
    assert (result.run_dir / STATE_FILE).is_file()
    saved = [i for i, _ in list_snapshots(result.run_dir)]
    assert saved[-1] == result.iteration  # the picture it stopped at is kept too
    assert set(saved) >= set(range(3, result.iteration, 3))
    assert panel.gallery_iterations == saved
    assert "stopped" in panel.status.value and panel.progress.bar_style == "warning"

    panel.resume_to.value = result.iteration + 4
    assert panel.run_chooser.value == result.run_dir  # Resume takes the chosen run
    panel.resume_button.click()
    resumed = panel.wait(60)
    assert resumed.run_dir == result.run_dir
    assert resumed.status == "done" and resumed.iteration == result.iteration + 4
    assert panel.gallery_iterations == [i for i, _ in list_snapshots(result.run_dir)]
    assert panel.gallery_iterations[-1] > saved[-1]  # (s, s + 4] holds a multiple of 3
    panel.resume_to.value = 0  # its planned total is reached: nothing to continue
    assert not panel.resume() and "set 'to iteration' higher" in panel.status.value


def test_double_run_is_refused_while_one_goes(make_panel):
    panel = make_panel(iterations=100_000)
    began = threading.Event()
    panel.progress.observe(lambda _: began.set(), "value")
    assert panel.run()
    assert not panel.run()
    assert "already going" in panel.status.value
    assert began.wait(30)  # a Stop before the first step would end it before it began
    panel.stop()
    assert panel.wait(60).status == "stopped"
    assert len(list((Path(panel.fields["out"].value)).iterdir())) == 1


def test_schedule_and_other_fields_are_checked_as_you_type(make_panel):
    panel = make_panel()
    panel.fields["snapshots"].value = "10,every:0"
    assert "every:N needs N of at least 1" in panel.field_errors["snapshots"].value
    assert "every:N" in panel.problem.value
    assert not panel.run() and "cannot run" in panel.status.value
    panel.fields["snapshots"].value = "10,last"
    assert panel.field_errors["snapshots"].value == "" and panel.problem.value == ""

    panel.fields["cutn"].value = 0
    assert "cutn (cutouts per step) must be at least 1" in panel.field_errors["cutn"].value
    panel.fields["cutn"].value = 8
    panel.fields["prompt"].value = "fog:0.5x"
    assert "looks like a weight" in panel.field_errors["prompt"].value
    panel.fields["prompt"].value = ""
    assert "Nothing to aim for" in panel.field_errors["prompt"].value
    panel.fields["prompt"].value = "fog"
    panel.fields["seed"].value = "twelve"
    assert "not a whole number" in panel.field_errors["seed"].value
    panel.fields["seed"].value = "12"
    assert panel.problem.value == "" and panel.config().seed == 12


def test_a_random_seed_is_recorded_and_shown(make_panel):
    panel = make_panel(iterations=2, snapshots="last")
    panel.fields["seed"].value = "random"
    assert panel.config().seed is None
    panel.run()
    result = panel.wait(60)
    seed = read_run(result.run_dir)["config"]["seed"]
    assert isinstance(seed, int) and seed == result.config.seed == panel.seed_used
    assert f"seed {seed}" in panel.status.value
    assert panel.fields["seed"].value == "random"  # the next run draws a new one


def test_export_from_the_panel_writes_gif_and_mp4(make_panel, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)  # the link is relative to the working directory
    panel = make_panel()
    assert panel.export_button.disabled  # nothing to export yet
    panel.run()
    run_dir = panel.wait(60).run_dir
    assert not panel.export_button.disabled
    panel.export_fps.value, panel.export_hold.value = 5, 0.5

    (gif,) = panel.export()
    with Image.open(gif) as im:
        assert im.n_frames == 4
        im.seek(3)
        assert im.info["duration"] == 200 + 500
    assert gif == run_dir / "animation.gif"
    (preview,) = panel.export_preview.children
    assert preview.format == "gif" and preview.value == gif.read_bytes()

    panel.export_format.value = "MP4"
    panel.export_label.value = False
    (mp4,) = panel.export()
    assert len(list(iio.imiter(mp4, plugin="FFMPEG"))) == 4 + round(0.5 * 5)
    assert panel.export_preview.children[0].format == "mp4"


def test_choosing_an_old_run_shows_it(make_panel):
    panel = make_panel(iterations=5, snapshots="0,5")
    panel.run()
    first = panel.wait(60).run_dir
    panel.fields["iterations"].value = 3
    panel.fields["snapshots"].value = "last"
    panel.run()
    second = panel.wait(60).run_dir
    assert panel.gallery_iterations == [3]
    assert [v for _, v in panel.run_chooser.options] == [second, first]
    panel.run_chooser.value = first
    assert panel.run_dir == first and panel.gallery_iterations == [0, 5]
    assert panel.live_image.value == (first / "final.png").read_bytes()


def test_models_load_once_per_kernel(tiny_model_dir, tiny_models, monkeypatch):
    config = RunConfig(
        vqgan_config=str(tiny_model_dir["vqgan_config"]),
        vqgan_checkpoint=str(tiny_model_dir["vqgan_checkpoint"]),
        clip_model=str(tiny_model_dir["clip"]),
        device="cpu",
    )
    said: list[str] = []
    monkeypatch.setattr(cache, "_models", {})  # a kernel that has loaded nothing yet
    first = cache.cached_models(config.replace(vqgan="coco"), said.append)
    assert len(said) == 1 and said[0].startswith("loading models")
    assert cache.cached_models(config, said.append) is first  # local files: name is moot
    assert len(said) == 1  # the second run loaded nothing


def test_tiny_models_env_autorun_and_iterations(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv(ui.TINY_ENV, str(tmp_path / "tiny"))
    monkeypatch.setenv(ui.ITERATIONS_ENV, "3")
    monkeypatch.setenv(ui.AUTORUN_ENV, "1")
    panel = ui.panel(prompt="Oregon 💚 painting", iterations=300, cutn=4)
    result = panel.wait(120)
    assert TINY_BANNER in panel.banner.value and panel.banner in panel.widget.children
    assert panel.fields["vqgan_config"].value == str((tmp_path / "tiny" / "vqgan.yaml").resolve())
    assert result.status == "done" and result.iteration == 3
    assert result.config.size == ui.TINY_SIZE
    assert result.run_dir.parent == Path("runs")
    assert json.loads((result.run_dir / "run.json").read_text())["config"]["iterations"] == 3


def test_wait_before_any_run_says_press_run(make_panel):
    with pytest.raises(RuntimeError, match="press Run"):
        make_panel().wait(1)


def test_only_the_ui_package_imports_ipywidgets():
    package = Path(vqclip.__file__).parent
    for path in package.rglob("*.py"):
        if "ui" not in path.relative_to(package).parts[:1] and path.name != "widgets.py":
            text = path.read_text(encoding="utf-8")
            assert "ipywidgets" not in text and "IPython" not in text, path.name


def test_result_before_any_run_says_press_run_and_never_blocks(make_panel, capsys):
    panel = make_panel()
    assert panel.result() is None
    assert "press Run" in capsys.readouterr().out


def test_model_choice_says_when_it_loads(make_panel):
    panel = make_panel()
    assert "loaded" in panel.model_status.value  # the models given to the panel
    panel.fields["vqgan_config"].value = ""
    panel.fields["vqgan_checkpoint"].value = ""
    panel.fields["clip_model"].value = "ViT-B/16"
    status = panel.model_status.value
    assert "vqgan_imagenet_f16_16384 + ViT-B/16" in status and "load when you press Run" in status


@pytest.fixture
def fake_colab(tmp_path, monkeypatch):
    """This process looks like Colab (the stand-in in tests/fake_colab) until the test ends;
    returns the log of what was asked of Colab."""
    import importlib

    log = tmp_path / "colab.jsonl"
    monkeypatch.setenv("FAKE_COLAB_LOG", str(log))
    monkeypatch.syspath_prepend(str(Path(__file__).parent / "fake_colab"))
    try:
        importlib.import_module("google.colab")
        yield log
    finally:
        for name in [n for n in sys.modules if n.startswith("google.colab")]:
            sys.modules.pop(name)


def upload(button, data: bytes, name: str) -> None:
    """What the browser's upload does to a FileUpload's value (ipywidgets 8 or 7, Colab's)."""
    from datetime import datetime, timezone

    import ipywidgets

    if int(ipywidgets.__version__.split(".")[0]) >= 8:
        when = datetime.now(timezone.utc)
        value = ({"name": name, "type": "image/png", "size": len(data),
                  "content": memoryview(data), "last_modified": when},)  # fmt: skip
    else:  # {name: {"metadata": …, "content": bytes}}, read-only for Python code
        value = {name: {"metadata": {"name": name, "size": len(data)}, "content": data}}
    button.set_trait("value", value)


def test_upload_run_download_round_trip_on_colab(make_panel, fake_colab, tmp_path):
    from zipfile import ZipFile

    from vqclip.export import read_recipe, zip_snapshots
    from vqclip.ui.runner import resolve_mode

    assert resolve_mode("auto") == "foreground"  # the default on Colab
    picture, buffer = Image.new("RGB", (40, 30), "teal"), __import__("io").BytesIO()
    picture.save(buffer, format="PNG")
    data = buffer.getvalue()
    panel = make_panel("auto", iterations=4, snapshots="2,last")
    upload(panel.upload_init, data, "my init.png")
    upload(panel.upload_prompt, data, "../../etc/passwd.png")  # only a name, no path
    init = Path(panel.fields["init_image"].value)
    assert init.parent == tmp_path / "runs" / "inputs" and init.read_bytes() == data
    (prompt_path,) = panel.config().image_prompts
    assert Path(prompt_path).parent == init.parent and Path(prompt_path).read_bytes() == data

    assert panel.run()  # in the foreground: back when the run has ended
    result = panel.result()
    assert result is not None and result.status == "done" and panel.mode == "foreground"
    assert read_recipe(result.final)["config"]["init_image"] == str(init)

    # Colab's download answers a request of a kernel (tests/test_fake_colab.py clicks the
    # buttons in one); in this plain process it cannot, and the panel says so.
    assert panel.download("png") is None
    assert "download failed (AttributeError" in panel.status.value
    assert str(result.final) in panel.status.value  # where the file is
    assert not fake_colab.exists()  # nothing was asked of Colab
    archive = zip_snapshots(result.run_dir)
    with ZipFile(archive) as zipped:
        names = zipped.namelist()
    run = result.run_dir.name
    assert {
        f"{run}/snapshots/000002.png",
        f"{run}/snapshots/000004.png",
        f"{run}/final.png",
    } <= set(names)


def test_downloads_outside_colab_are_links(make_panel, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the notebook's folder: the runs are under it
    panel = make_panel(iterations=3, snapshots="last")
    assert all(button.disabled for button in panel.download_buttons.values())
    panel.run()
    run = panel.wait(60).run_dir
    assert not any(button.disabled for button in panel.download_buttons.values())
    panel.download_buttons["zip"].click()
    assert (
        'href="runs/' in panel.export_link.value
        and 'download="snapshots.zip"' in panel.export_link.value
    )
    assert (run / "snapshots.zip").is_file()


def test_the_panel_shows_the_time_left_from_the_measured_steps(make_panel, monkeypatch):
    """With a clock that advances 10 s a step, the text says so, before and during a run."""
    from vqclip.ui import estimate

    monkeypatch.setattr(estimate, "_last", {})  # no earlier run in this kernel
    now = [0.0]

    def clock() -> float:
        now[0] += 10.0  # one call per step
        return now[0]

    panel = make_panel(iterations=12, snapshots="last")
    panel.clock = clock
    panel.display_every.value = 1
    seen: list[str] = []
    panel.progress_text.observe(lambda change: seen.append(change["new"]), "value")
    panel.run()
    panel.wait(60)
    assert seen[0] == "time left: measured after the first steps"
    shown = {int(t.split()[1].split("/")[0]): t for t in seen if t.startswith("it ")}
    assert "measured after the first steps" in shown[1]  # one step: warm-up, no pace yet
    assert "≈ 1.5 min left (10 s/step)" in shown[3]  # 9 steps left at 10 s
    assert "≈ 0 s left" in shown[12]
    # The next run, twice the pixels: a first estimate from this run's pace, said as such.
    panel.fields["size"].value = [64, 128]
    panel.fields["iterations"].value = 6
    seen.clear()
    panel.run()
    panel.wait(60)
    assert seen[0] == "≈ 2.0 min left (at the last run's pace)"  # 6 x 20 s


def test_the_panel_sweeps_its_prompt_in_styles_and_seeds_and_shows_the_ranked_sheet(make_panel):
    panel = make_panel(iterations=2, snapshots="last", size=[32, 32], cutn=2)
    panel.sweep_box.styles.value = "painting, pencil drawing"
    panel.sweep_box.seeds.value = "1, 2"
    panel.sweep_box.button.click()
    panel.runner.join(120)

    folder = panel.sweep_box.folder
    assert "4 of 4 candidates ranked" in panel.status.value, panel.status.value
    ranking = json.loads((folder / "ranking.json").read_text())["ranking"]
    assert len(ranking) == 4 and {row["seed"] for row in ranking} == {1, 2}
    assert {row["style"] for row in ranking} == {"painting", "pencil drawing"}
    assert panel.sweep_box.sheet.value == (folder / "contact_sheet.png").read_bytes()
    assert panel.progress.value == panel.progress.max == 4
    assert not panel.run_button.disabled and panel.stop_button.disabled

    panel.sweep_box.seeds.value = "one"
    assert not panel.sweep_box.sweep() and "whole numbers" in panel.status.value


@pytest.mark.parametrize("mode", ["background", "foreground"])
def test_the_ending_line_shows_only_once_the_result_can_be_read(make_panel, mode):
    """A notebook's export cell run the moment the status says "stopped at" gets the run:
    it is no longer "still going", and Run is free again (a browser test once lost this
    race on a loaded CI machine)."""
    panel = make_panel(mode, iterations=100_000, snapshots="every:3")
    panel.display_every.value = 1
    seen_at_ending: list[tuple] = []

    def on_status(change: dict) -> None:
        if "stopped at" in change["new"]:
            seen_at_ending.append((panel.running, panel.run_button.disabled, panel.result()))

    panel.status.observe(on_status, "value")
    shown = threading.Semaphore(0)
    panel.live_image.observe(lambda _: shown.release(), "value")

    def press_stop() -> None:
        for _ in range(3):
            assert shown.acquire(timeout=30)
        panel.stop_button.click()

    clicker = threading.Thread(target=press_stop)
    clicker.start()
    assert panel.run()
    result = panel.wait(60)
    clicker.join()
    panel.runner.join(10)
    assert result.status == "stopped"
    ((running, run_disabled, seen),) = seen_at_ending
    assert not running and not run_disabled
    assert seen is result


@pytest.mark.parametrize("mode", ["background", "foreground"])
def test_steering_from_the_panel_is_recorded_and_plotted_by_name(
    make_panel, mode, tmp_path, tiny_models
):
    """Apply mid-run (a click handled while the run goes, as the kernel does): a bad prompt
    is refused in the box and the run goes on; each good one applies at the next step, lands
    in run.json's timeline and the log; the plot keeps each prompt's curve by its name; and
    the final PNG of the run steered three times remakes its pixels from its recipe alone."""
    from vqclip.export import read_recipe
    from vqclip.observers import read_log, reproduce

    panel = make_panel(mode, iterations=30, snapshots="every:10")
    panel.display_every.value = 4
    clicks = {
        3: "fog:nan",
        5: "a castle:1 | a lighthouse:0.5",
        13: "a castle:0.3 | a lighthouse:1",
        21: "a castle | a storm:-0.5",
    }
    answers: list[str] = []
    done = threading.Event()

    def click_apply(change: dict) -> None:  # on the loop's thread, between two steps
        for at, text in list(clicks.items()):
            if panel.progress.value >= at:
                del clicks[at]
                panel.steer_box.text.value = text
                panel.steer_box.apply_button.click()
                answers.append(panel.steer_box.status.value)
        if not clicks:
            done.set()

    assert panel.steer_box.apply_button.disabled  # nothing to steer before a run
    panel.progress.observe(click_apply, "value")
    assert panel.run()
    result = panel.wait(120)
    assert done.is_set() and result.status == "done"
    assert "not applied" in answers[0] and "weights must be finite" in answers[0]
    assert all("applies at the next step" in answer for answer in answers[1:])
    timeline = read_run(result.run_dir)["config"]["timeline"]
    # shown steps are 0, 4, 8…: the clicks come at steps 4 (refused), 8, 16 and 24, and
    # each good one applies at the step after
    assert timeline == [
        "9: a castle:1 | a lighthouse:0.5",
        "17: a castle:0.3 | a lighthouse:1",
        "25: a castle | a storm:-0.5",
    ]
    log = {row["iteration"]: row for row in read_log(result.run_dir)}
    assert log[9]["timeline"] == timeline[:1] and log[25]["timeline"] == timeline[2:]
    assert [p["prompt"] for p in log[8]["prompts"]] == ["a lighthouse", "fog"]
    assert [p["prompt"] for p in log[9]["prompts"]] == ["a castle", "a lighthouse"]
    assert [p["prompt"] for p in log[25]["prompts"]] == ["a castle", "a storm"]
    assert "in force from iteration 25" in panel.steer_box.status.value
    assert sum(bool(row.get("timeline")) for row in panel.history) == 3  # each one shown
    assert panel.steer_box.apply_button.disabled  # the run has ended
    assert read_recipe(result.final)["config"]["timeline"] == timeline
    again = reproduce(result.final, tmp_path / "again", tiny_models)
    with Image.open(again) as a, Image.open(result.final) as b:
        assert a.tobytes() == b.tobytes()


# --- the motion box -------------------------------------------------------------------


def motion_settings(panel: Panel, frames: int, **values) -> None:
    box = panel.motion_box
    box.frames.value, box.steps.value, box.fps.value = frames, 2, 6
    box.zoom.value = values.get("zoom", "0:1.0, 3:1.1")
    box.rotate.value = values.get("rotate", "2")


@pytest.mark.parametrize("mode", ["background", "foreground"])
def test_the_motion_box_animates_live_then_shows_the_gif(make_panel, mode):
    panel = make_panel(mode, size=[32, 32], cutn=2)
    motion_settings(panel, 4)
    shown: list[bytes] = []
    panel.live_image.observe(lambda change: shown.append(change["new"]), "value")
    panel.motion_box.button.click()
    panel.runner.join(120)

    anim = panel.motion_box.anim_dir
    assert "animation done, 4 frames" in panel.status.value, panel.status.value
    frames = sorted((anim / "frames").glob("*.png"))
    assert len(frames) == 4 and len(shown) == 4  # each frame shown as it finished
    for data, path in zip(shown, frames):  # the live image is the frame on disk
        assert np.array_equal(np.asarray(Image.open(io.BytesIO(data)).convert("RGB")),
                              np.asarray(Image.open(path).convert("RGB")))  # fmt: skip
    gif = iio.imread(io.BytesIO(panel.motion_box.preview.value), index=None)
    assert gif.shape[:3] == (4, 32, 32) and panel.motion_box.preview.format == "gif"
    assert (anim / "animation.mp4").is_file()
    assert panel.progress.value == panel.progress.max == 4
    assert not panel.run_button.disabled and panel.stop_button.disabled


@pytest.mark.parametrize("mode", ["background", "foreground"])
def test_stop_then_resume_in_the_motion_box_equals_an_animation_never_stopped(
    make_panel, mode, tiny_models, tmp_path
):
    from vqclip.credentials import content_bytes
    from vqclip.motion import animate

    panel = make_panel(mode, size=[32, 32], cutn=2)
    motion_settings(panel, 5)
    shown = threading.Semaphore(0)
    panel.live_image.observe(lambda _: shown.release(), "value")

    def press_stop() -> None:  # another thread, like a click handled by the kernel
        assert shown.acquire(timeout=60) and shown.acquire(timeout=60)
        panel.stop_button.click()

    clicker = threading.Thread(target=press_stop)
    clicker.start()
    assert panel.motion_box.animate()
    panel.runner.join(120)
    clicker.join()
    anim = panel.motion_box.anim_dir
    made = len(list((anim / "frames").glob("*.png")))
    assert "animation stopped after frame" in panel.status.value, panel.status.value
    assert 2 <= made < 5 and panel.progress.bar_style == "warning"

    assert panel.motion_box.resume()
    panel.runner.join(120)
    assert "animation done, 5 frames" in panel.status.value, panel.status.value
    assert not panel.motion_box.resume() and "nothing to resume" in panel.status.value

    alone = animate(panel.config(), panel.motion_box.motion(), tiny_models, out=tmp_path / "alone")
    for frame in alone:
        mine = anim / "frames" / frame.path.name
        assert content_bytes(mine) == content_bytes(frame.path), frame.index


def test_bad_motion_settings_are_said_and_nothing_is_written(make_panel, tmp_path):
    panel = make_panel()
    panel.motion_box.zoom.value = "0:1.0, 3:fast"
    assert not panel.motion_box.animate()
    assert "cannot animate" in panel.status.value and "zoom" in panel.status.value
    panel.motion_box.zoom.value = "1.02"
    panel.motion_box.video.value = str(tmp_path / "missing.mp4")
    assert not panel.motion_box.animate() and "does not exist" in panel.status.value
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())
    assert not panel.motion_box.resume() and "press Animate first" in panel.status.value
    assert not panel.running and not panel.run_button.disabled


@pytest.mark.parametrize("mode", ["background", "foreground"])
def test_steering_an_animation_from_the_panel_changes_the_next_frames_and_replays(
    make_panel, mode, tiny_models, tmp_path
):
    """Apply while an animation goes: the frames after it follow the new prompts, the box
    says from which frame, and the recorded timeline makes the same frames again."""
    from vqclip.config import RunConfig
    from vqclip.credentials import content_bytes
    from vqclip.motion import MotionConfig, animate, read_animation

    panel = make_panel(mode, size=[32, 32], cutn=2)
    motion_settings(panel, 4)
    box = panel.steer_box

    def steer_once(change: dict) -> None:  # on the loop's thread, after the first frame
        if panel.progress.value == 1 and box.text.value != "a castle:1 | fog:0.3":
            box.text.value = "a castle:1 | fog:0.3"
            box.apply_button.click()

    panel.progress.observe(steer_once, "value")
    assert panel.motion_box.animate()
    panel.runner.join(120)
    assert "animation done, 4 frames" in panel.status.value, panel.status.value
    anim = panel.motion_box.anim_dir
    record = read_animation(anim)
    assert record["config"]["timeline"], box.status.value
    (line,) = record["config"]["timeline"]
    at = int(line.split(":")[0])
    assert line == f"{at}: a castle:1 | fog:0.3" and 1 <= at <= 2
    assert f"in force from frame {at}: a castle:1 | fog:0.3" in box.status.value
    assert box.apply_button.disabled  # nothing to steer once it has ended

    again = animate(RunConfig.from_dict(record["config"]),
                    MotionConfig.from_dict(record["motion"]), tiny_models, out=tmp_path / "again")  # fmt: skip
    for frame in again:
        assert content_bytes(anim / "frames" / frame.path.name) == content_bytes(frame.path)
        assert frame.prompts == ("a lighthouse:1 | fog:0.5" if frame.index < at else line[3:])


def test_the_motion_box_lists_animations_and_resumes_the_chosen_one(make_panel):
    """Two stopped animations: choosing the older shows how far it got, and Resume continues
    that one, not the newest."""
    from vqclip.motion import read_animation

    panel = make_panel(size=[32, 32], cutn=2)
    box = panel.motion_box
    motion_settings(panel, 3)
    made = []
    panel.runner.should_stop = lambda: panel.progress.value >= 2  # Stop once 2 frames are in
    for _ in range(2):
        assert box.animate()
        panel.runner.join(120)
        made.append(box.anim_dir)
    del panel.runner.should_stop  # the runner's own again
    older, newer = made
    assert [value for _, value in box.chooser.options] == [newer, older]
    assert "(stopped, 2/3)" in box.chooser.options[1][0]

    box.chooser.value = older  # a person picks it
    assert "stopped, 2 of 3 frames" in panel.status.value
    assert box.preview.value == (older / "animation.gif").read_bytes()  # of the two frames
    assert box.resume()
    panel.runner.join(120)
    assert "animation done, 3 frames" in panel.status.value
    assert read_animation(older)["status"] == "done"
    assert read_animation(newer)["status"] == "stopped"
    assert "(done, 3/3)" in dict((v, k) for k, v in box.chooser.options)[older]
