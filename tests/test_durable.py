"""Runs that never lose work: atomic files, crashes, SIGKILL, Ctrl-C, resume, branch, reproduce."""

import itertools
import json
import os
import random
import signal
import subprocess
import sys
import time

import pytest
import torch
from PIL import Image

from vqclip import engine
from vqclip.credentials import content_bytes
from vqclip.export import read_recipe
from vqclip.observers import branch, generate, read_log, reproduce, resume
from vqclip.state import atomic_path, atomic_write, load_state, read_run

# --- atomic writes ------------------------------------------------------------------------


def test_atomic_write_replaces_the_whole_file(tmp_path):
    path = tmp_path / "a.json"
    atomic_write(path, "old")
    atomic_write(path, "new")
    assert path.read_text() == "new" and os.listdir(tmp_path) == ["a.json"]
    assert oct(path.stat().st_mode & 0o777) == "0o644"


def test_a_failure_mid_write_leaves_the_old_file_and_no_temp(tmp_path):
    path = tmp_path / "a.txt"
    atomic_write(path, "old")
    with pytest.raises(RuntimeError), atomic_path(path) as tmp:
        tmp.write_text("half a fi")
        raise RuntimeError("disk full")
    assert path.read_text() == "old" and os.listdir(tmp_path) == ["a.txt"]


def test_a_failing_rename_leaves_the_old_file_and_no_temp(tmp_path, monkeypatch):
    path = tmp_path / "a.txt"
    atomic_write(path, "old")

    def broken_replace(src, dst):
        raise OSError("rename failed")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError, match="rename failed"):
        atomic_write(path, "new")
    assert path.read_text() == "old" and os.listdir(tmp_path) == ["a.txt"]


# --- crashes and resume -------------------------------------------------------------------


def crash_at(iteration: int):
    """A should_stop poll that raises at that iteration's step: a crash inside the run loop
    (a failing display would only be dropped)."""
    calls = iter(range(iteration))

    def poll() -> bool:
        if next(calls, None) is None:
            raise RuntimeError("out of luck")
        return False

    return poll


def test_a_crash_is_recorded_and_the_run_resumes_to_the_same_image(
    tiny_config, tiny_models, tmp_path
):
    full = generate(tiny_config.replace(out=str(tmp_path / "full")), tiny_models, progress=False)
    with pytest.raises(RuntimeError, match="out of luck"):
        generate(tiny_config, tiny_models, progress=False, should_stop=crash_at(6))
    (crashed,) = (tmp_path / "runs").iterdir()
    record = read_run(crashed)
    assert record["status"] == "failed" and "RuntimeError: out of luck" in record["error"]
    assert load_state(crashed)["iteration"] == 6
    done = resume(crashed, tiny_models, progress=False)
    assert done.status == "done" and read_run(crashed)["error"] is None
    assert content_bytes(done.final) == content_bytes(full.final)


def test_resume_to_more_iterations_equals_a_longer_run(tiny_config, tiny_models, tmp_path):
    longer = generate(
        tiny_config.replace(iterations=16, out=str(tmp_path / "long")), tiny_models, progress=False
    )
    short = generate(tiny_config, tiny_models, progress=False)
    extended = resume(short.run_dir, tiny_models, iterations=16, progress=False)
    assert Image.open(extended.final).tobytes() == Image.open(longer.final).tobytes()
    assert [row["iteration"] for row in read_log(short.run_dir)] == list(range(17))


# --- killed processes ---------------------------------------------------------------------


def _start(tiny_flags, out, *extra):
    args = [
        sys.executable, "-m", "vqclip", "generate", "a unicorn", *tiny_flags,
        "--size", "64", "64", "--iterations", "40", "--snapshots", "every:4,last",
        "--seed", "11", "--cutn", "4", "--out", str(out), "--quiet", "--name", "run", *extra,
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)


def _wait_for(path, process, timeout=120):
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert process.poll() is None, process.stderr.read().decode()
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.02)


def _wait_for_state(run_dir, at, process, timeout=120):
    deadline = time.monotonic() + timeout
    while not (run_dir / "state.pt").exists() or load_state(run_dir)["iteration"] < at:
        assert process.poll() is None, process.stderr.read().decode()
        assert time.monotonic() < deadline, f"state.pt never reached iteration {at}"
        time.sleep(0.02)


def _assert_every_file_readable(run_dir):
    json.loads((run_dir / "run.json").read_text())
    read_log(run_dir)
    if (run_dir / "state.pt").exists():
        load_state(run_dir)
    for png in (run_dir / "snapshots").iterdir():
        assert not png.name.startswith("."), f"temp file left: {png.name}"
        with Image.open(png) as im:
            im.load()
        read_recipe(png)
    for latent in (run_dir / "latents").glob("*.pt"):
        torch.load(latent, weights_only=True)


@pytest.fixture(scope="module")
def uninterrupted(tiny_flags, tmp_path_factory):
    out = tmp_path_factory.mktemp("whole")
    process = _start(tiny_flags, out)
    assert process.wait(timeout=300) == 0, process.stderr.read().decode()
    return content_bytes(out / "run" / "final.png")


def test_sigkill_at_random_moments_loses_nothing(tiny_flags, tiny_models, tmp_path, uninterrupted):
    chance = random.Random(2026)
    for attempt in range(3):
        out = tmp_path / f"kill{attempt}"
        process = _start(tiny_flags, out)
        # Kill just after a random snapshot short of the end, so the run cannot finish first.
        at = chance.choice(range(4, 32, 4))
        _wait_for(out / "run" / "snapshots" / f"{at:06d}.png", process)
        _wait_for_state(out / "run", at, process)  # the PNG is written before state.pt
        time.sleep(chance.uniform(0.0, 0.05))
        process.send_signal(signal.SIGKILL)
        process.wait()
        run_dir = out / "run"
        _assert_every_file_readable(run_dir)
        assert read_run(run_dir)["status"] == "running"  # it never got to say otherwise
        assert load_state(run_dir)["iteration"] >= at
        result = resume(run_dir, tiny_models, progress=False)
        assert result.status == "done"
        assert content_bytes(run_dir / "final.png") == uninterrupted


def test_ctrl_c_stops_cleanly_and_resume_finishes_the_same_image(
    tiny_flags, tmp_path, uninterrupted
):
    process = _start(tiny_flags, tmp_path)
    _wait_for(tmp_path / "run" / "snapshots" / "000008.png", process)
    process.send_signal(signal.SIGINT)
    assert process.wait(timeout=60) == 130
    assert "vqclip resume" in process.stderr.read().decode()
    record = read_run(tmp_path / "run")
    assert record["status"] == "stopped"
    stopped_at = load_state(tmp_path / "run")["iteration"]
    assert stopped_at >= 8
    done = subprocess.run(
        [sys.executable, "-m", "vqclip", "resume", str(tmp_path / "run"), "--quiet"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert content_bytes(tmp_path / "run" / "final.png") == uninterrupted


def test_ctrl_c_during_an_optimiser_update_is_held_until_the_update_is_done(
    tiny_config, tiny_models, tmp_path, monkeypatch
):
    """A Ctrl-C that lands after Adam moved z but before the step is complete waits for the
    step, so the state saved on the way out agrees with itself; without that hold a run
    stopped before its first snapshot had no state.pt to resume from."""
    config = tiny_config.replace(snapshots="last")
    full = generate(config.replace(out=str(tmp_path / "full")), tiny_models, progress=False)
    calls = itertools.count()

    class InterruptedAdam(torch.optim.Adam):
        def step(self, closure=None):
            loss = super().step(closure)
            if next(calls) == 3:  # optimiser step 3: z moved, not yet clamped or recorded
                signal.raise_signal(signal.SIGINT)  # what Ctrl-C or a kernel interrupt sends
            return loss

    with monkeypatch.context() as patch, pytest.raises(KeyboardInterrupt):
        patch.setitem(engine.OPTIMIZERS, "adam", InterruptedAdam)
        generate(config, tiny_models, progress=False)
    (run_dir,) = (tmp_path / "runs").iterdir()
    assert read_run(run_dir)["status"] == "stopped"
    assert load_state(run_dir)["iteration"] == 4
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # put back
    done = resume(run_dir, tiny_models, progress=False)
    assert content_bytes(done.final) == content_bytes(full.final)


# --- branch and reproduce -----------------------------------------------------------------


def test_branch_starts_from_the_snapshot_latent_and_names_its_parent(tiny_config, tiny_models):
    parent = generate(tiny_config, tiny_models, progress=False)
    child = branch(
        parent.run_dir, 5, tiny_models, prompt="a hedgehog with the texture of a mango",
        iterations=6, snapshots="0,last", progress=False,
    )  # fmt: skip
    record = read_run(child.run_dir)
    assert record["parent"]["run"] == str(parent.run_dir.resolve())
    assert record["parent"]["iteration"] == 5
    assert record["config"]["prompt"] == "a hedgehog with the texture of a mango"
    start = Image.open(child.run_dir / "snapshots" / "000000.png")
    assert start.tobytes() == Image.open(parent.run_dir / "snapshots" / "000005.png").tobytes()
    assert read_recipe(child.final)["parent"]["iteration"] == 5


def test_branch_from_a_missing_snapshot_names_the_ones_there(tiny_config, tiny_models):
    from vqclip.state import RunError

    parent = generate(tiny_config, tiny_models, progress=False)
    with pytest.raises(RunError, match="0, 3, 5, 10, 12"):
        branch(parent.run_dir, 4, tiny_models, prompt="x", progress=False)


def test_reproduce_a_branched_image_from_its_metadata_alone(tiny_config, tiny_models, tmp_path):
    parent = generate(tiny_config, tiny_models, progress=False)
    child = branch(parent.run_dir, 3, tiny_models, prompt="Kermit in the matrix", iterations=4,
                   progress=False)  # fmt: skip
    again = reproduce(child.final, tmp_path / "again", tiny_models)
    assert content_bytes(again) == content_bytes(child.final)


def test_reproduce_refuses_other_model_files(tiny_config, tiny_models, tmp_path):
    from vqclip.state import RunError

    run = generate(tiny_config.replace(iterations=2, snapshots="last"), tiny_models, progress=False)
    recipe_png = run.final
    other = tmp_path / "edited.png"
    img = Image.open(recipe_png)
    from vqclip.export import save_png

    recipe = read_recipe(recipe_png)
    recipe["models"]["vqgan"]["sha256"]["checkpoint"] = "0" * 64
    save_png(img, other, recipe)
    with pytest.raises(RunError, match="very same model files"):
        reproduce(other, tmp_path / "out", tiny_models)


# --- the default fast path ----------------------------------------------------------------


def test_the_fast_path_resumes_and_reproduces_to_the_same_bytes(
    tiny_config, tiny_models, tiny_model_dir, tmp_path
):
    """bf16 is the default on this CPU (and on GPUs): its runs must be as durable as fp32's,
    including when the CLI loads the models itself and converts them in place."""
    fast = tiny_config.replace(precision="bf16")
    full = generate(fast.replace(out=str(tmp_path / "full")), tiny_models, progress=False)
    with pytest.raises(RuntimeError, match="out of luck"):
        generate(fast, tiny_models, progress=False, should_stop=crash_at(7))
    (crashed,) = (tmp_path / "runs").iterdir()
    assert load_state(crashed)["iteration"] == 7  # saved as the exception left the loop
    assert content_bytes(resume(crashed, tiny_models, progress=False).final) == (
        content_bytes(full.final)
    )
    assert read_recipe(full.final)["precision"] == "bf16"
    out = tmp_path / "again"
    again = subprocess.run(
        [sys.executable, "-m", "vqclip", "reproduce", str(full.final), "--out", str(out)],
        capture_output=True, text=True, timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())},
    )  # fmt: skip
    assert again.returncode == 0, again.stderr
    (made,) = out.rglob("final.png")
    assert content_bytes(made) == content_bytes(full.final)


def test_reproducing_where_auto_means_another_precision_says_so(
    tiny_config, tiny_models, tmp_path, monkeypatch
):
    from vqclip import device as hardware

    monkeypatch.setattr(hardware, "cpu_supports_bf16", lambda: True)
    made = generate(
        tiny_config.replace(precision="auto", iterations=2, snapshots="last"),
        tiny_models,
        progress=False,
    )
    assert read_recipe(made.final)["precision"] == "bf16"
    monkeypatch.setattr(hardware, "cpu_supports_bf16", lambda: False)  # a CPU without bf16
    with pytest.warns(
        UserWarning, match="computed on cpu in bf16, but here it runs on cpu in fp32"
    ):
        again = reproduce(made.final, tmp_path / "again", tiny_models)
    assert Image.open(again).size == Image.open(made.final).size
