"""The prompt timeline: changes recorded, replayed to the same pixels, steered mid-run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from PIL import Image

from vqclip import prompts as prompts_module
from vqclip.cli import main
from vqclip.config import ConfigError, RunConfig, parse_change
from vqclip.engine import run
from vqclip.export import read_recipe
from vqclip.observers import Observer, generate, read_log, reproduce, resume
from vqclip.plan import prepare
from vqclip.state import load_state, read_run
from vqclip.timeline import Steering, passage, read_timeline, split_story, story


def picture(path: Path) -> tuple[bytes, dict]:
    """A PNG's pixels and recipe: what a replay must give again (the file's other bytes,
    such as a signature, may differ)."""
    with Image.open(path) as im:
        return im.tobytes(), read_recipe(path)


def labels_by_iteration(run_dir: Path) -> dict[int, list[str]]:
    return {row["iteration"]: [p["prompt"] for p in row["prompts"]] for row in read_log(run_dir)}


# --- the timeline setting ---------------------------------------------------------------


def test_prompts_in_force_follow_the_lines_in_order_of_iteration():
    config = RunConfig(
        prompt="a seed",
        iterations=50,
        timeline=["30: a tree:1 | fog:0.5", "10: a sprout", "20 noise: 7:0.5 | 9", "40 noise:"],
    )
    assert config.prompts_at(9).prompt == "a seed"
    assert config.prompts_at(10).prompt == "a sprout"
    assert config.prompts_at(25).prompt == "a sprout"
    assert config.prompts_at(25).noise_prompt_seeds == [7, 9]
    assert config.prompts_at(25).noise_prompt_weights == [0.5, 1.0]
    assert config.prompts_at(30).prompt == "a tree:1 | fog:0.5"
    assert config.prompts_at(40).noise_prompt_seeds == []
    assert config.prompts_at(40).timeline == []
    assert parse_change("  12 images : a.png | b.png:0.5 ").settings() == {
        "image_prompts": ["a.png", "b.png:0.5"]
    }
    assert parse_change("12 IMAGES: a.png").line() == "12 images: a.png"


@pytest.mark.parametrize(
    "lines,message",
    [
        (["a tree"], "The timeline line 'a tree' is not a change of prompts. Write 'ITERATION:"),
        (["0: a tree"], "The timeline line '0: a tree' is at iteration 0."),
        (["5 colour: red"], "names 'colour', which is not images or noise"),
        (["5 noise: seven"], "has the noise prompt 'seven'; write each as SEED or SEED:WEIGHT"),
        (["5: fog:0"], "After the timeline line '5: fog:0': Nothing to aim for: every prompt"),
        (["5: fog:nan"], "After the timeline line '5: fog:nan': The prompt 'fog:nan' has weight"),
        (["5 images: missing.png"], "Image prompt file 'missing.png' does not exist"),
    ],
)
def test_a_bad_timeline_line_is_refused_naming_it(lines, message):
    with pytest.raises(ConfigError) as error:
        RunConfig(prompt="a seed", iterations=20, timeline=lines).validate()
    assert message in str(error.value)
    assert error.value.field == "timeline"


def test_story_passage_and_timeline_files_make_lines(tmp_path):
    assert split_story("a seed:1 ^ a sprout ^^ a tree | fog:0.5 ") == [
        "a seed:1",
        "a sprout",
        "a tree | fog:0.5",
    ]
    assert story(["a seed", "a sprout", "a tree"], 100) == (
        "a seed",
        ["100: a sprout", "200: a tree"],
    )
    text = "The sea was calm.  A ship came\ninto view! Was it 12:30? Yes | no\n\nThe end"
    assert passage(text) == [
        "The sea was calm.",
        "A ship came into view!",
        "Was it 12 -30?",
        "Yes , no",
        "The end",
    ]
    # closing quotes and brackets stay with their sentence
    assert passage('She said "Go." Then they left (at dawn.) “Why?” Nobody knew.') == [
        'She said "Go."',
        "Then they left (at dawn.)",
        "“Why?”",
        "Nobody knew.",
    ]
    (tmp_path / "story.yaml").write_text(
        "0: a seed\n100: a sprout\n200: {prompt: a tree, noise: '7:0.5'}\n", encoding="utf-8"
    )
    assert read_timeline(tmp_path / "story.yaml") == (
        {"prompt": "a seed"},
        ["100: a sprout", "200: a tree", "200 noise: 7:0.5"],
    )
    (tmp_path / "story.txt").write_text("# a story\n0: a seed\n100: a sprout\n", encoding="utf-8")
    assert read_timeline(tmp_path / "story.txt") == ({"prompt": "a seed"}, ["100: a sprout"])
    (tmp_path / "bad.yaml").write_text("[a, b]\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="must map iterations"):
        read_timeline(tmp_path / "bad.yaml")


# --- runs that follow a timeline --------------------------------------------------------


def test_a_change_takes_effect_at_its_iteration_and_never_rewinds(tiny_config, tiny_models):
    """Up to the change the run is the unchanged run (its pictures and losses); the step's
    loss at the change is the new prompt's; after it the pictures part ways."""
    plain = prepare(tiny_config, tiny_models)
    changed = prepare(tiny_config.replace(timeline=["5: a castle:1 | fog:0.5"]), tiny_models)
    a, b = list(run(plain)), list(run(changed))
    for k in range(6):  # step 5's picture comes from steps 0..4, made with the old prompt
        assert a[k].pixels.equal(b[k].pixels)
    for k in range(5):
        assert a[k].labels == b[k].labels == ("a unicorn",)
        assert a[k].loss.equal(b[k].loss)
    assert b[5].labels == ("a castle", "fog") and b[5].changes == ("5: a castle:1 | fog:0.5",)
    assert b[4].changes == () and b[6].changes == ()
    assert not a[7].pixels.equal(b[7].pixels)
    assert b[5].stats()["timeline"] == ["5: a castle:1 | fog:0.5"]
    assert "timeline" not in b[4].stats()


def test_weight_changes_encode_nothing_again(tiny_config, tiny_models, monkeypatch):
    encoded: list[str] = []
    real = prompts_module.encode_text
    monkeypatch.setattr(
        prompts_module,
        "encode_text",
        lambda model, text, device: encoded.append(text) or real(model, text, device),
    )
    lines = ["3: a unicorn:0.5 | fog:1", "6: a unicorn:2 | fog:-0.5", "9: a unicorn"]
    list(run(prepare(tiny_config.replace(timeline=lines), tiny_models)))
    assert encoded == ["a unicorn", "fog"]


def test_a_run_with_a_timeline_records_it_and_reproduces(tiny_config, tiny_models, tmp_path):
    lines = ["4: a castle:1 | fog:0.5", "8 noise: 3:0.5"]
    result = generate(tiny_config.replace(timeline=lines), tiny_models, progress=False)
    record = read_run(result.run_dir)
    assert record["config"]["timeline"] == lines
    labels = labels_by_iteration(result.run_dir)
    assert labels[3] == ["a unicorn"] and labels[4] == ["a castle", "fog"]
    assert labels[8] == ["a castle", "fog", "noise:3"]
    log = {row["iteration"]: row for row in read_log(result.run_dir)}
    assert log[4]["timeline"] == [lines[0]] and log[8]["timeline"] == [lines[1]]
    again = reproduce(result.final, tmp_path / "again", tiny_models)
    assert picture(again) == picture(result.final)


# --- steering a running run ---------------------------------------------------------------


class SteerAt(Observer):
    """Asks for prompt changes from another thread when the run reaches given iterations,
    as the panel's Apply does, and waits until the request is queued."""

    def __init__(self, steering: Steering, changes: dict[int, dict]) -> None:
        self.steering, self.changes = steering, changes
        self.answers: list[str] = []

    def __call__(self, step) -> None:
        if step.iteration in self.changes:
            asked = self.changes[step.iteration]
            clicker = threading.Thread(
                target=lambda: self.answers.append(self.steering.steer(**asked))
            )
            clicker.start()
            clicker.join()


def test_three_steers_are_recorded_and_the_final_png_reproduces(tiny_config, tiny_models, tmp_path):
    steering = Steering()
    steer = SteerAt(
        steering,
        {
            2: {"prompt": "a castle:1 | fog:0.5"},
            5: {"prompt": "a castle:0.2 | fog:1"},
            8: {"noise": "4"},
        },
    )
    config = tiny_config.replace(snapshots="every:1")
    result = generate(config, tiny_models, progress=False, observers=[steer], steering=steering)
    timeline = ["3: a castle:1 | fog:0.5", "6: a castle:0.2 | fog:1", "9 noise: 4"]
    assert steer.answers == timeline  # each applies at the step after the one seen
    assert read_run(result.run_dir)["config"]["timeline"] == timeline
    snaps = result.run_dir / "snapshots"
    assert read_recipe(snaps / "000002.png")["config"]["timeline"] == []
    assert read_recipe(snaps / "000003.png")["config"]["timeline"] == timeline[:1]
    assert read_recipe(snaps / "000012.png")["config"]["timeline"] == timeline
    assert labels_by_iteration(result.run_dir)[9] == ["a castle", "fog", "noise:4"]
    for name in ("000004.png", "000007.png", "final.png"):
        source = snaps / name if name != "final.png" else result.final
        again = reproduce(source, tmp_path / name, tiny_models)
        assert picture(again) == picture(source)
    with pytest.raises(ConfigError, match="The run has ended"):
        steering.steer("a tree")


def test_a_bad_steer_is_refused_and_the_run_goes_on(tiny_config, tiny_models):
    steering = Steering()
    errors: list[str] = []

    def refused(step) -> None:
        if step.iteration == 4:
            try:
                steering.steer(images=["no-such-picture.png"])
            except ConfigError as error:
                errors.append(str(error))

    with pytest.raises(ConfigError, match="weights must be finite"):
        steering.steer("fog:nan")  # before the run: only the syntax can be checked
    with pytest.raises(ConfigError, match="write each as SEED or SEED:WEIGHT"):
        steering.steer(noise="seven")
    result = generate(
        tiny_config, tiny_models, progress=False, observers=[refused], steering=steering
    )
    assert result.status == "done" and read_run(result.run_dir)["config"]["timeline"] == []
    assert len(errors) == 1 and "no-such-picture.png' does not exist" in errors[0]


def test_stopped_between_two_changes_it_resumes_to_the_same_pixels(tiny_config, tiny_models):
    config = tiny_config.replace(timeline=["3: a castle", "9: a castle | fog:0.5"])
    full = generate(config, tiny_models, progress=False)
    stopped = generate(config.replace(name="cut"), tiny_models, progress=False, should_stop=_at(6))
    assert stopped.status == "stopped" and stopped.iteration == 6
    resumed = resume(stopped.run_dir, tiny_models, progress=False)
    assert resumed.status == "done"
    assert picture(resumed.final)[0] == picture(full.final)[0]
    assert labels_by_iteration(resumed.run_dir)[10] == ["a castle", "fog"]


def test_resume_with_a_new_prompt_records_a_change_not_a_new_run(
    tiny_config, tiny_models, tmp_path
):
    stopped = generate(tiny_config, tiny_models, progress=False, should_stop=_at(5))
    resumed = resume(stopped.run_dir, tiny_models, prompt="a castle", progress=False)
    assert resumed.run_dir == stopped.run_dir and resumed.status == "done"
    assert read_run(resumed.run_dir)["config"]["timeline"] == ["5: a castle"]
    labels = labels_by_iteration(resumed.run_dir)
    assert labels[4] == ["a unicorn"] and labels[6] == ["a castle"]
    again = reproduce(resumed.final, tmp_path / "again", tiny_models)
    assert picture(again) == picture(resumed.final)


def _at(iteration: int):
    seen = iter(range(10**6))
    return lambda: next(seen) >= iteration


# --- the command line -------------------------------------------------------------------


def test_story_mode_and_resume_prompt_on_the_command_line(tiny_flags, tmp_path, capsys):
    out = tmp_path / "runs"
    code = main(
        ["generate", "--story", "a seed ^ a sprout ^ a tree", "--story-every", "4",
         "--iterations", "10", "--size", "64", "64", "--cutn", "4", "--seed", "3",
         "--out", str(out), "--name", "story", "--quiet", *tiny_flags]
    )  # fmt: skip
    assert code == 0
    record = json.loads((out / "story" / "run.json").read_text())
    assert record["config"]["prompt"] == "a seed"
    assert record["config"]["timeline"] == ["4: a sprout", "8: a tree"]
    assert labels_by_iteration(out / "story")[9] == ["a tree"]

    code = main(["resume", str(out / "story"), "--iterations", "14", "--prompt", "a forest"])
    assert code == 0
    timeline = json.loads((out / "story" / "run.json").read_text())["config"]["timeline"]
    assert timeline == ["4: a sprout", "8: a tree", "10: a forest"]

    code = main(["generate", "--story", "a ^ b ^ c", "--story-every", "8", "--iterations", "10",
                 "--out", str(out), *tiny_flags])  # fmt: skip
    assert code == 2
    assert "need 17 iterations to reach the last one; the run has 10" in capsys.readouterr().err
    code = main(
        ["generate", "--story", "a ^ b", "--passage", "x.txt", "--out", str(out), *tiny_flags]
    )
    assert code == 2
    assert "use one of --story, --passage and --timeline-file" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == ["story"]  # nothing written for it


def test_an_export_can_label_each_frame_with_the_prompts_in_force(
    tiny_config, tiny_models, monkeypatch
):
    from vqclip import export

    config = tiny_config.replace(
        timeline=["4: a castle:1 | fog:0.5", "8: " + "a very long prompt " * 5], snapshots="3,5,10"
    )
    result = generate(config, tiny_models, progress=False)
    burnt: list[str] = []
    real = export.label_image
    monkeypatch.setattr(
        export, "label_image", lambda im, text: burnt.append(text) or real(im, text)
    )
    (gif,) = export.export_run(result.run_dir, prompts=True)
    long = ("a very long prompt " * 5).strip()
    cut = long[: export.PROMPT_LABEL_CHARS - 1] + "…"
    assert burnt == ["it 3 · a unicorn", "it 5 · a castle:1 | fog:0.5", f"it 10 · {cut}"]
    assert len(burnt[-1].split(" · ")[1]) == export.PROMPT_LABEL_CHARS
    burnt.clear()
    assert main(["export", str(result.run_dir), "--no-label", "--label-prompts"]) == 0
    assert burnt[0] == "a unicorn"


def test_a_change_beyond_the_run_is_kept_with_a_notice_and_reached_by_a_resume(
    tiny_config, tiny_models
):
    config = tiny_config.replace(iterations=6, timeline=["9: a castle"])
    with pytest.warns(UserWarning, match="9: a castle lie beyond the run's 6 iterations"):
        result = generate(config, tiny_models, progress=False)
    assert "a castle" not in str(read_log(result.run_dir))
    resumed = resume(result.run_dir, tiny_models, iterations=12, progress=False)
    assert labels_by_iteration(resumed.run_dir)[9] == ["a castle"]


def _story_run(tiny_flags, out: Path, *story: str) -> subprocess.Popen:
    args = [
        sys.executable, "-m", "vqclip", "generate", *story, *tiny_flags, "--size", "64", "64",
        "--iterations", "30", "--snapshots", "every:4,last", "--seed", "5", "--cutn", "4",
        "--out", str(out), "--quiet", "--name", "run",
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)


@pytest.mark.parametrize("kind", ["story file", "passage"])
def test_a_story_killed_between_two_changes_resumes_and_reproduces_to_the_same_pixels(
    kind, tiny_flags, tiny_models, tmp_path
):
    """The two ways of telling a story from a file: the run killed (SIGKILL) between its
    changes resumes to the very pixels of the run never killed, and its final PNG remakes
    them from its recipe alone."""
    if kind == "story file":
        (tmp_path / "story.yaml").write_text("0: a seed\n8: a sprout\n20: {prompt: a tree}\n")
        story = ["--timeline-file", str(tmp_path / "story.yaml")]
    else:
        (tmp_path / "tale.txt").write_text("A seed fell. It became a sprout!\n\nThen a tree.")
        story = ["--passage", str(tmp_path / "tale.txt"), "--story-every", "10"]
    whole = _story_run(tiny_flags, tmp_path / "whole", *story)
    assert whole.wait(timeout=300) == 0, whole.stderr.read().decode()
    timeline = read_run(tmp_path / "whole" / "run")["config"]["timeline"]
    assert len(timeline) == 2

    cut = tmp_path / "cut" / "run"
    process = _story_run(tiny_flags, tmp_path / "cut", *story)
    deadline = time.monotonic() + 300
    while not (cut / "state.pt").exists() or load_state(cut)["iteration"] < 12:
        assert process.poll() is None, process.stderr.read().decode()
        assert time.monotonic() < deadline, "the run never reached iteration 12"
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)  # between the changes at 8 (or 10) and 20
    process.wait()
    assert 12 <= load_state(cut)["iteration"] < 20
    resumed = resume(cut, tiny_models, progress=False)
    assert resumed.status == "done"
    assert picture(resumed.final)[0] == picture(tmp_path / "whole" / "run" / "final.png")[0]
    again = reproduce(resumed.final, tmp_path / "again", tiny_models)
    assert picture(again) == picture(resumed.final)


def test_a_sweep_styles_the_prompts_of_each_change_too(tiny_config):
    from vqclip.sweep import expand

    base = tiny_config.replace(timeline=["4: a sprout:1 | fog:-1", "8 noise: 3"])
    (plain, painted) = expand(base, ["a seed"], ["", "painting"], [1])
    assert plain.config.timeline == base.timeline
    assert painted.config.prompt == "a seed painting"
    assert painted.config.timeline == ["4: a sprout painting | fog:-1", "8 noise: 3"]


def test_the_best_picture_of_a_steered_run_reproduces(tiny_config, tiny_models, tmp_path):
    """best.png carries the timeline as it stood: its replay takes the same changes."""
    config = tiny_config.replace(timeline=["2: a castle:1 | fog:0.5", "5: a castle"])
    result = generate(config, tiny_models, progress=False)
    best = result.run_dir / "best.png"
    recipe = read_recipe(best)
    assert recipe["best"]["iteration"] == recipe["iteration"] >= 2  # after a change
    assert recipe["config"]["timeline"] == config.timeline
    again = reproduce(best, tmp_path / "again", tiny_models)
    assert picture(again)[0] == picture(best)[0]


def test_a_steer_asked_before_the_run_that_the_run_cannot_use_is_dropped_with_a_notice(
    tiny_config, tiny_models
):
    """Before the run starts only the syntax can be checked; at its first step the change
    is checked against the run's settings and, unusable, dropped with a notice: the run
    never fails for it."""
    steering = Steering()
    assert steering.steer(images="no-such-picture.png") == "1 images: no-such-picture.png"
    with pytest.warns(UserWarning, match="1 images: no-such-picture.png was not applied"):
        result = generate(tiny_config, tiny_models, progress=False, steering=steering)
    assert result.status == "done" and read_run(result.run_dir)["config"]["timeline"] == []
