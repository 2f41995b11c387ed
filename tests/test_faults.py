"""Faults during a run lose nothing: a full disk stops it clearly, a failing display does not."""

from __future__ import annotations

import errno
from pathlib import Path

import pytest

from vqclip import observers
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
    assert resumed.final.read_bytes() == whole.final.read_bytes()


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
