"""The foreground run mode in a real kernel, as Colab needs it.

Colab's frontend shows a widget update only when it comes with the request that is running
(googlecolab/colabtools#3373). So here, in a real ipykernel driven over ZeroMQ by
jupyter_client, every comm message that updates the panel during a run must carry the parent
header of the request that started it (a Run click, or a cell) and arrive between that
request's busy and idle; a Stop click sent mid-run must stop it within two steps, and so
must an interrupt; and cells must run normally after a run started by a click.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
from kernels import STACKS, Kernel, assert_all_inside, stack_python, statuses, updates

SETUP = """
import json, signal
from vqclip.config import RunConfig
from vqclip.ui import Panel

ui = Panel(
    RunConfig(prompt="a lighthouse:1 | fog:0.5", size=[64, 64], cutn=8, iterations=100_000,
              seed=3, snapshots="every:5", device="cpu", precision="fp32", out={out!r}),
    mode="foreground",
)
ui.display_every.value = 1
ui.display()

# Where the run was, by its own count, when a Stop click or an interrupt reached the kernel:
# "stops within two steps" is measured here, not from when the client saw the progress.
seen = {{}}
ui.stop_button.on_click(lambda _: seen.setdefault("stop", ui.progress.value))
def on_interrupt(signum, frame):
    seen.setdefault("interrupt", ui.progress.value)
    raise KeyboardInterrupt
real_should_stop = ui.runner.should_stop
def should_stop():  # runs on the kernel's main thread, between the run's steps
    signal.signal(signal.SIGINT, on_interrupt)
    return real_should_stop()
ui.runner.should_stop = should_stop

ids = {{name: getattr(ui, name).model_id for name in (
    "run_button", "stop_button", "live_image", "progress", "progress_text", "status", "gallery")}}
print(json.dumps(ids))
"""
RESULT = "r = ui.last_result; print(json.dumps([r.status, r.iteration, str(r.run_dir), seen]))"


@pytest.fixture(scope="module", params=STACKS)
def kernel(request, tiny_model_dir) -> Any:
    """One kernel per stack (the project's, and Colab's: tests/colab-stack.txt)."""
    env = {
        **os.environ,
        "VQCLIP_TINY_MODELS": str(tiny_model_dir["clip"].parent),
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
    }
    env.pop("VQCLIP_AUTORUN", None)
    k = Kernel(env, python=stack_python(request.param))
    yield k
    k.close()


@pytest.fixture
def ids(kernel, tmp_path) -> dict[str, str]:
    """A new panel ``ui`` in the kernel for each test, so the tests pass in any order."""
    setup = SETUP.format(out=str(tmp_path / "runs"))
    return json.loads(kernel.output(setup).strip().splitlines()[-1])


def progress_values(messages: list[dict], ids: dict[str, str]) -> list[int]:
    return [
        m["content"]["data"]["state"]["value"]
        for m in updates(messages)
        if m["content"]["comm_id"] == ids["progress"] and "value" in m["content"]["data"]["state"]
    ]


def at_step(ids: dict[str, str], step: int, action: Any) -> Any:
    """An ``on`` for Kernel.messages: ``action()`` once, when the progress reaches ``step``."""
    done = []

    def on(msg: dict) -> None:
        state = msg["content"].get("data", {}).get("state", {})
        if (
            not done
            and msg["msg_type"] == "comm_msg"
            and msg["content"]["comm_id"] == ids["progress"]
            and state.get("value", 0) >= step
        ):
            done.append(action())

    return on


def result(kernel: Kernel) -> tuple[str, int, Path, dict[str, int]]:
    """How the panel's last run ended, and where it was when Stop or ■ reached the kernel."""
    status, iteration, run_dir, seen = json.loads(kernel.output(RESULT))
    return status, iteration, Path(run_dir), seen


def test_a_run_clicked_in_the_foreground_updates_inside_its_request_and_stops_on_a_click(
    kernel, ids
):
    stop = {}
    run = kernel.click(ids["run_button"])
    press = at_step(ids, 5, lambda: stop.setdefault("id", kernel.click(ids["stop_button"])))
    messages = kernel.messages(run, on=press)

    assert_all_inside(messages, run)
    changed = {m["content"]["comm_id"] for m in updates(messages)}
    for part in ("live_image", "progress", "progress_text", "status", "gallery"):
        assert ids[part] in changed, f"{part} was never updated"
    buttons = [
        m["content"]["data"]["state"]["disabled"]
        for m in updates(messages)
        if m["content"]["comm_id"] == ids["run_button"]
    ]
    assert buttons == [True, False]  # disabled while running, enabled after
    images = {
        m["buffers"][0].tobytes()
        for m in updates(messages)
        if m["content"]["comm_id"] == ids["live_image"] and m.get("buffers")
    }
    assert len(images) >= 2  # the picture changed as it ran
    # The Stop click was handled mid-run, in its own request nested inside the run's.
    stop_states = [
        m["content"]["execution_state"]
        for m in messages
        if m["msg_type"] == "status" and m["parent_header"].get("msg_id") == stop["id"]
    ]
    assert stop_states == ["busy", "idle"]
    status, iteration, run_dir, seen = result(kernel)
    assert status == "stopped"
    assert seen["stop"] <= iteration <= seen["stop"] + 2  # within two steps of the click
    assert max(progress_values(messages, ids)) == iteration
    assert json.loads((run_dir / "run.json").read_text())["status"] == "stopped"
    assert (run_dir / "state.pt").is_file()
    # After a run started by a click, cells run as usual (none is held back).
    assert kernel.output("print(6 * 7)").strip() == "42"


def test_steering_mid_run_in_the_foreground_applies_inside_the_run(kernel, ids):
    """Type new prompts into the Steer box and press Apply while a clicked run goes: the
    change is taken between two steps, recorded in run.json, and the box's answer, like
    every other update, comes inside the run's request."""
    steer = json.loads(
        kernel.output(
            "print(json.dumps({n: getattr(ui.steer_box, n).model_id"
            " for n in ('text', 'apply_button', 'status')}))"
        )
    )
    done: dict[str, Any] = {}

    def on(msg: dict) -> None:
        state = msg["content"].get("data", {}).get("state", {})
        if msg["msg_type"] != "comm_msg" or msg["content"]["comm_id"] != ids["progress"]:
            return
        if state.get("value", 0) >= 3 and "steer" not in done:
            done["steer"] = state["value"]
            kernel.type(steer["text"], "a castle:1 | fog:0.2")
            kernel.click(steer["apply_button"])
        if state.get("value", 0) >= done.get("steer", 10**9) + 4 and "stop" not in done:
            done["stop"] = kernel.click(ids["stop_button"])

    run = kernel.click(ids["run_button"])
    messages = kernel.messages(run, on=on)
    assert_all_inside(messages, run)
    status, iteration, run_dir, _ = result(kernel)
    assert status == "stopped"
    (line,) = json.loads((run_dir / "run.json").read_text())["config"]["timeline"]
    at = int(line.split(":")[0])
    assert line == f"{at}: a castle:1 | fog:0.2" and done["steer"] < at <= iteration
    answers = [
        m["content"]["data"]["state"]["value"]
        for m in updates(messages)
        if m["content"]["comm_id"] == steer["status"] and "value" in m["content"]["data"]["state"]
    ]
    assert any("applies at the next step" in a for a in answers)
    assert any(f"in force from iteration {at}" in a for a in answers)


def test_an_interrupt_stops_a_foreground_run_with_everything_saved(kernel, ids):
    run = kernel.click(ids["run_button"])
    messages = kernel.messages(run, on=at_step(ids, 3, kernel.manager.interrupt_kernel))
    assert_all_inside(messages, run)
    assert not [m for m in messages if m["msg_type"] == "error"]  # no traceback shown
    status, iteration, run_dir, seen = result(kernel)
    assert status == "stopped" and seen["interrupt"] <= iteration <= seen["interrupt"] + 2
    assert json.loads((run_dir / "run.json").read_text())["iteration"] == iteration
    assert (run_dir / "state.pt").is_file()
    assert "stopped at iteration" in kernel.output("print(ui.status.value)")


def test_a_run_from_a_cell_updates_inside_that_cell(kernel, ids):
    cell = kernel.execute(
        "ui.fields['iterations'].value = 4\n"
        "ui.fields['snapshots'].value = 'last'\n"
        "ui.run()\n"
        "print(ui.last_result.status, ui.last_result.iteration)"
    )
    messages = kernel.messages(cell)
    assert_all_inside(messages, cell)
    printed = "".join(
        m["content"]["text"]
        for m in messages
        if m["msg_type"] == "stream" and m["parent_header"].get("msg_id") == cell
    )
    assert printed.strip() == "done 4"
    assert max(progress_values(messages, ids)) == 4


@pytest.mark.parametrize("end", ["stop", "interrupt"])
@pytest.mark.parametrize("start", ["click", "cell"])
def test_a_cell_run_mid_run_waits_for_the_run_and_every_update_stays_inside(
    kernel, ids, start, end
):
    """Colab's Run all sends every cell at once, and a user may run a cell while a run goes
    on: that cell waits in the kernel's queue. The run's updates must all still come inside
    its request (on ipykernel 6, jupyter-ui-poll's hold of a waiting cell published the
    running request's idle early: Colab then drops the rest of the run's updates), and the
    waiting cell runs after the run, once, with its output."""
    run = kernel.click(ids["run_button"]) if start == "click" else kernel.execute("ui.run()")
    waiting = {}
    queue_cell = at_step(
        ids,
        2,
        lambda: waiting.setdefault(
            "id", kernel.execute("print('the waiting cell ran; running:', ui.running)")
        ),
    )
    stop = at_step(
        ids,
        4,
        lambda: (
            kernel.click(ids["stop_button"]) if end == "stop" else kernel.manager.interrupt_kernel()
        ),
    )

    def on(msg: dict) -> None:
        queue_cell(msg)
        stop(msg)

    messages = kernel.messages(run, on=on)
    messages += kernel.messages(waiting["id"], on=on)  # (on the old code, the run went idle early)

    assert_all_inside(messages)
    run_updates = [m for m in updates(messages) if m["parent_header"].get("msg_id") == run]
    assert len(run_updates) >= 10  # the run's updates, all inside its request (above)
    assert [s for _, s in statuses(messages, run)] == ["busy", "idle"]
    (run_idle, _) = statuses(messages, run)[-1]
    (cell_busy, _) = statuses(messages, waiting["id"])[0]
    assert run_idle < cell_busy  # the waiting cell began only after the run had ended
    printed = [
        m["content"]["text"]
        for m in messages
        if m["msg_type"] == "stream" and m["parent_header"].get("msg_id") == waiting["id"]
    ]
    assert "".join(printed).strip() == "the waiting cell ran; running: False"
    assert not [m for m in messages if m["msg_type"] == "error"]
    status, iteration, run_dir, seen = result(kernel)
    assert status == "stopped" and seen[end] <= iteration <= seen[end] + 2
    assert json.loads((run_dir / "run.json").read_text())["iteration"] == iteration


def test_model_download_progress_shows_in_the_panel(kernel, ids, tmp_path_factory):
    """The first run downloads the models: the bars appear in the panel's model output (an
    Output widget), sent with the Run click's request like every other update."""
    weights = tmp_path_factory.mktemp("remote") / "weights.bin"
    weights.write_bytes(bytes(range(256)) * 4096)  # 1 MiB "model file"
    kernel.output(
        "import vqclip.ui.cache as cache, vqclip.models as models\n"
        "real = cache.load_models\n"
        "def downloading(config, progress):\n"
        f"    models.download([{weights.as_uri()!r}], {str(weights) + '.cached'!r},\n"
        "                    what='test weights', progress=progress)\n"
        "    return real(config, progress=progress)\n"
        "cache.load_models = downloading\n"
        "cache._models.clear()\n"
        "ui.fields['iterations'].value = 2\n"
        "ui.fields['snapshots'].value = 'last'\n"
        "print(ui.model_output.model_id)"
    )
    output_id = kernel.output("print(ui.model_output.model_id)").strip()
    run = kernel.click(ids["run_button"])
    try:
        messages = kernel.messages(run)
    finally:  # the next test (in any order) loads models as usual
        kernel.output("cache.load_models = real")
    assert_all_inside(messages, run)
    # The Output widget takes the request's outputs while the models load…
    capturing = [
        m["content"]["data"]["state"]["msg_id"]
        for m in updates(messages)
        if m["content"]["comm_id"] == output_id and "msg_id" in m["content"]["data"]["state"]
    ]
    assert run in capturing
    # …and a progress bar widget is displayed into it, from that request.
    bars = [
        m
        for m in messages
        if m["msg_type"] == "display_data"
        and "application/vnd.jupyter.widget-view+json" in m["content"]["data"]
    ]
    assert bars and all(m["parent_header"]["msg_id"] == run for m in bars)
    assert "done at iteration 2" in kernel.output("print(ui.status.value)")
