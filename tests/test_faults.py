"""Faults during a run lose nothing: a full disk stops it clearly, a failing display does not."""

from __future__ import annotations

import errno
import json
import os
import random
import signal
import time
from pathlib import Path

import pytest
from PIL import Image

from vqclip import observers
from vqclip.credentials import content_bytes
from vqclip.export import read_recipe
from vqclip.observers import Observer, generate, read_log, resume
from vqclip.state import RunError, load_state, read_run


@pytest.fixture
def config(tiny_config):
    return tiny_config.replace(iterations=8, snapshots="every:1", size=[32, 32], cutn=2)


def test_a_full_disk_stops_the_run_with_a_clear_message_and_it_resumes(
    config, tiny_models, monkeypatch
):
    whole = generate(config.replace(name="whole"), tiny_models, progress=False)
    real = observers.save_png

    def full_from_5(image, path, *args, **kwargs):
        if path.name >= "000005.png" or path.name == "final.png":
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(image, path, *args, **kwargs)

    monkeypatch.setattr(observers, "save_png", full_from_5)
    with pytest.raises(RunError) as caught:
        generate(config.replace(name="cut"), tiny_models, progress=False)
    message = str(caught.value)
    assert "No space left on device" in message and "at iteration 5" in message
    assert "vqclip resume" in message
    run_dir = Path(config.out) / "cut"
    assert read_run(run_dir)["status"] == "failed"
    assert load_state(run_dir)["iteration"] == 4  # the last good snapshot's state
    assert sorted(p.name for p in (run_dir / "snapshots").iterdir())[-1] == "000004.png"

    monkeypatch.undo()  # space again
    resumed = resume(run_dir, tiny_models, progress=False)
    assert resumed.status == "done"
    assert content_bytes(resumed.final) == content_bytes(whole.final)


def test_a_failing_display_does_not_stop_the_run(config, tiny_models):
    class Broken(Observer):
        def __call__(self, step):
            if step.iteration == 3:
                raise ValueError("the display went away")

    with pytest.warns(UserWarning, match="Broken failed at iteration 3.*goes on without it"):
        result = generate(config, tiny_models, progress=False, observers=[Broken()])
    assert result.status == "done" and result.iteration == config.iterations
    assert [row["iteration"] for row in read_log(result.run_dir)] == list(range(9))
    assert len(result.snapshots) == 8  # every:1 keeps 1..8


def _every_file_readable(run_dir: Path) -> None:
    json.loads((run_dir / "run.json").read_text())
    read_log(run_dir)
    if (run_dir / "state.pt").exists():
        load_state(run_dir)
    for png in (run_dir / "snapshots").glob("[0-9]*.png"):  # not a kill's torn .tmp files
        with Image.open(png) as im:
            im.load()
        read_recipe(png)


class _Slow(Observer):
    """A slow display: every step takes at least 40 ms, so a kill timed after a snapshot
    lands before the run can finish."""

    def __call__(self, step):
        time.sleep(0.04)


def test_sigkill_at_20_random_moments_leaves_every_file_readable_and_resumable(
    config, tiny_models, tmp_path
):
    run = config.replace(iterations=12, snapshots="every:1")
    whole = generate(run.replace(name="whole"), tiny_models, progress=False)
    chance = random.Random(20)
    for trial in range(20):
        out = tmp_path / f"trial{trial}"
        at = chance.randrange(1, 10)  # kill after this snapshot, at least 2 steps from the end
        pid = os.fork()  # a child with the models already loaded: a kill costs milliseconds
        if pid == 0:
            try:
                generate(
                    run.replace(out=str(out), name="run"),
                    tiny_models,
                    progress=False,
                    observers=[_Slow()],
                )
            finally:
                os._exit(0)
        deadline = time.monotonic() + 60
        while not (out / "run" / "snapshots" / f"{at:06d}.png").exists():
            assert time.monotonic() < deadline, f"trial {trial}: snapshot {at} never came"
            time.sleep(0.002)
        time.sleep(chance.uniform(0.0, 0.06))  # anywhere in the next step or so
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        run_dir = out / "run"
        _every_file_readable(run_dir)
        assert read_run(run_dir)["status"] == "running", f"trial {trial} finished first"
        resumed = resume(run_dir, tiny_models, progress=False)
        assert content_bytes(resumed.final) == content_bytes(whole.final)
        assert not list(run_dir.rglob("*.tmp"))  # resume swept up the torn writes
