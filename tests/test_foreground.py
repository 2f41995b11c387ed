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
from kernels import Kernel

SETUP = """
import json
from vqclip.config import RunConfig
from vqclip.ui import Panel

ui = Panel(
    RunConfig(prompt="a lighthouse:1 | fog:0.5", size=[64, 64], cutn=8, iterations=100_000,
              seed=3, snapshots="every:5", device="cpu", precision="fp32", out={out!r}),
    mode={mode!r},
)
ui.display_every.value = 1
ui.display()
ids = {{name: getattr(ui, name).model_id for name in (
    "run_button", "stop_button", "live_image", "progress", "progress_text", "status", "gallery")}}
print(json.dumps(ids))
"""


@pytest.fixture(scope="module")
def kernel(tiny_model_dir, tmp_path_factory) -> Any:
    env = {
        **os.environ,
        "VQCLIP_TINY_MODELS": str(tiny_model_dir["clip"].parent),
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
    }
    env.pop("VQCLIP_AUTORUN", None)
    k = Kernel(env)
    out = tmp_path_factory.mktemp("foreground") / "runs"
    k.ids = json.loads(
        k.output(SETUP.format(out=str(out), mode="foreground")).strip().splitlines()[-1]
    )
    k.out = out
    yield k
    k.close()


def updates(messages: list[dict]) -> list[dict]:
    """The comm messages that change a widget's state."""
    return [
        m
        for m in messages
        if m["msg_type"] == "comm_msg" and m["content"]["data"].get("method") == "update"
    ]


def assert_all_inside(messages: list[dict], request: str) -> None:
    """Every update carries ``request``'s parent header and lies inside its busy..idle."""
    states = [
        (k, m["content"]["execution_state"])
        for k, m in enumerate(messages)
        if m["msg_type"] == "status" and m["parent_header"].get("msg_id") == request
    ]
    busy = next(k for k, state in states if state == "busy")
    idle = next(k for k, state in states if state == "idle")
    changed = updates(messages)
    assert changed, "the run sent no widget updates"
    for k, m in enumerate(messages):
        if m in changed:
            assert m["parent_header"].get("msg_id") == request, m["content"]["data"]["state"]
            assert busy < k < idle


def progress_values(messages: list[dict], ids: dict[str, str]) -> list[int]:
    return [
        m["content"]["data"]["state"]["value"]
        for m in updates(messages)
        if m["content"]["comm_id"] == ids["progress"] and "value" in m["content"]["data"]["state"]
    ]


def test_a_run_clicked_in_the_foreground_updates_inside_its_request_and_stops_on_a_click(
    kernel,
):
    ids, stop_sent = kernel.ids, {}

    def press_stop_at_step_5(msg: dict) -> None:
        if stop_sent or msg["msg_type"] != "comm_msg":
            return
        state = msg["content"]["data"].get("state", {})
        if msg["content"]["comm_id"] == ids["progress"] and state.get("value", 0) >= 5:
            stop_sent["at"] = state["value"]
            stop_sent["id"] = kernel.click(ids["stop_button"])

    run = kernel.click(ids["run_button"])
    messages = kernel.messages(run, on=press_stop_at_step_5)

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
        tuple(m["buffers"][0].tobytes() for _ in [0])
        for m in updates(messages)
        if m["content"]["comm_id"] == ids["live_image"] and m.get("buffers")
    }
    assert len(images) >= 2  # the picture changed as it ran
    # The Stop click was handled mid-run, in its own request nested inside the run's.
    stop_states = [
        m["content"]["execution_state"]
        for m in messages
        if m["msg_type"] == "status" and m["parent_header"].get("msg_id") == stop_sent["id"]
    ]
    assert stop_states == ["busy", "idle"]
    result = json.loads(
        kernel.output(
            "r = ui.last_result; print(json.dumps([r.status, r.iteration, str(r.run_dir)]))"
        )
    )
    status, iteration, run_dir = result
    assert status == "stopped"
    assert stop_sent["at"] <= iteration <= stop_sent["at"] + 2  # within two steps
    assert max(progress_values(messages, ids)) == iteration
    assert json.loads((Path(run_dir) / "run.json").read_text())["status"] == "stopped"
    assert (Path(run_dir) / "state.pt").is_file()
    # After a run started by a click, cells run as usual (none is held back).
    assert kernel.output("print(6 * 7)").strip() == "42"


def test_an_interrupt_stops_a_foreground_run_with_everything_saved(kernel):
    ids = kernel.ids
    interrupted = {}

    def interrupt_at_step_3(msg: dict) -> None:
        state = msg["content"].get("data", {}).get("state", {})
        if (
            not interrupted
            and msg["msg_type"] == "comm_msg"
            and msg["content"]["comm_id"] == ids["progress"]
            and state.get("value", 0) >= 3
        ):
            interrupted["at"] = state["value"]
            kernel.manager.interrupt_kernel()

    run = kernel.click(ids["run_button"])
    messages = kernel.messages(run, on=interrupt_at_step_3)
    assert_all_inside(messages, run)
    assert not [m for m in messages if m["msg_type"] == "error"]  # no traceback shown
    status, iteration, run_dir = json.loads(
        kernel.output(
            "r = ui.last_result; print(json.dumps([r.status, r.iteration, str(r.run_dir)]))"
        )
    )
    assert status == "stopped" and interrupted["at"] <= iteration <= interrupted["at"] + 2
    assert json.loads((Path(run_dir) / "run.json").read_text())["iteration"] == iteration
    assert (Path(run_dir) / "state.pt").is_file()
    assert "stopped at iteration" in kernel.output("print(ui.status.value)")


def test_a_run_from_a_cell_updates_inside_that_cell(kernel):
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
    assert max(progress_values(messages, kernel.ids)) == 4


def test_model_download_progress_shows_in_the_panel(kernel, tmp_path_factory):
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
    run = kernel.click(kernel.ids["run_button"])
    messages = kernel.messages(run)
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
