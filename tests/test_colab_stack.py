"""Colab as it really is: its own kernel stack (tests/colab-stack.txt, built into .venv-colab
by scripts/colab_stack.sh) and its *Run all*, which sends every cell to the kernel at once
(googlecolab/colabtools#1471), so the cells after the Run cell wait in the kernel's queue
while the run goes on. Colab shows a widget update only when it comes with the running
request, before that request's idle (googlecolab/colabtools#3373).

The same tests run on the project's own stack; tests/test_foreground.py runs the panel's
foreground tests on both too."""

from __future__ import annotations

import json
import os
import re
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import nbformat
import pytest
from kernels import ROOT, STACKS, Kernel, assert_all_inside, stack_python, statuses, updates

PINS = ROOT / "tests" / "colab-stack.txt"
FAKE_COLAB = ROOT / "tests" / "fake_colab"


def pins() -> dict[str, str]:
    found = re.findall(r"^([A-Za-z0-9_.-]+)==(\S+)", PINS.read_text(), re.M)
    return dict(found)


def in_stack(stack: str, code: str) -> Any:
    """Run ``code`` (which prints JSON) in the stack's interpreter; what it printed."""
    done = subprocess.run(
        [stack_python(stack), "-c", code], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_the_colab_stack_is_colabs_and_says_where_it_was_read():
    text = PINS.read_text()
    assert "googlecolab/backend-info" in text and "pip-freeze.txt" in text
    assert re.search(r"commit [0-9a-f]{40} of \d{4}-\d\d-\d\d", text)
    wanted = pins()
    for name, version in {
        "ipykernel": "6.17.1",
        "ipython": "7.34.0",
        "ipywidgets": "7.7.1",
        "jupyter_client": "7.4.9",
    }.items():
        assert wanted[name] == version, name
    code = (
        "import importlib.metadata as md, json, sys\n"
        f"names = {sorted(wanted)!r}\n"
        "print(json.dumps({n: [md.version(n), str(md.distribution(n).locate_file(''))]"
        " for n in names}))"
    )
    found = in_stack("colab", code)
    colab_site = str(ROOT / ".venv-colab")
    for name, version in wanted.items():
        assert found[name][0] == version, (name, found[name])
        assert found[name][1].startswith(colab_site), (name, found[name])
    # …and a kernel of that stack imports them (not the project's newer ones).
    versions = in_stack(
        "colab",
        "import json, IPython, ipykernel, ipywidgets, jupyter_client, vqclip\n"
        "print(json.dumps([IPython.__version__, ipykernel.__version__,"
        " ipywidgets.__version__, jupyter_client.__version__]))",
    )
    assert versions == ["7.34.0", "6.17.1", "7.7.1", "7.4.9"]


INTERNALS = r"""
import inspect, json, re
import ipykernel, jupyter_ui_poll
from importlib.metadata import version
from ipykernel.kernelbase import Kernel
from jupyter_ui_poll import _poll

source = lambda f: inspect.getsource(f)
print(json.dumps({
    "ui_poll": version("jupyter-ui-poll"),
    # vqclip.ui.runner._release_cells
    "wrapper": hasattr(_poll.KernelWrapper, "_current")
        and hasattr(_poll.KernelWrapper, "_post_run_cell"),
    "swaps handler": 'shell_handlers["execute_request"]' in source(_poll.KernelWrapper.__init__),
    "one per iteration": "do_one_iteration()" in source(_poll.KernelWrapper.do_one_iteration),
    # vqclip.ui.runner._ClicksFirst stands in for kernel.msg_queue
    "kernel polls": hasattr(Kernel, "do_one_iteration") and hasattr(Kernel, "dispatch_shell"),
    "takes one": "self.msg_queue.get_nowait()" in source(Kernel.process_one)
        and "QueueEmpty" in source(Kernel.process_one),
    "queues entries": "self.msg_queue.put_nowait(" in source(Kernel.schedule_dispatch)
        and "dispatch," in source(Kernel.schedule_dispatch),
    "deque": "Queue()" in source(Kernel.start),
}))
"""


@pytest.mark.parametrize("stack", STACKS)
def test_the_internals_the_foreground_mode_relies_on_are_there(stack):
    """vqclip.ui.runner reaches into jupyter-ui-poll (its KernelWrapper) and ipykernel 6 (its
    queue of waiting requests). When either changes, this fails before the behaviour does:
    check tests/test_foreground.py on the new versions, then widen requirements.txt."""
    found = in_stack(stack, INTERNALS)
    line = next(
        x for x in (ROOT / "requirements.txt").read_text().splitlines() if "jupyter-ui-poll" in x
    )
    assert line == "jupyter-ui-poll>=1.1,<1.2"
    major, minor = map(int, found.pop("ui_poll").split(".")[:2])
    assert (major, minor) == (1, 1)
    assert all(found.values()), found


def colab_kernel(stack: str, tmp_path: Path, tiny_model_dir: dict, iterations: int) -> Kernel:
    """A kernel of ``stack`` that looks like Colab's: google.colab (tests/fake_colab) imported
    at start, Drive "mounted" under tmp_path, the tiny models, ``iterations`` per run."""
    startup = tmp_path / "ipython" / "profile_default" / "startup"
    startup.mkdir(parents=True)
    (startup / "00-colab.py").write_text("import google.colab\n")
    env = {
        **os.environ,
        "IPYTHONDIR": str(tmp_path / "ipython"),
        "PYTHONPATH": os.pathsep.join([str(FAKE_COLAB), os.environ.get("PYTHONPATH", "")]),
        "VQCLIP_DRIVE_MOUNT": str(tmp_path / "drive"),
        "VQCLIP_TINY_MODELS": str(tiny_model_dir["clip"].parent),
        "VQCLIP_ITERATIONS": str(iterations),
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
    }
    env.pop("VQCLIP_AUTORUN", None)
    return Kernel(env, cwd=str(tmp_path), python=stack_python(stack))


def opened(messages: list[dict], model: str, description: str | None = None) -> str:
    """The id of the first widget of ``model`` (with ``description``) the kernel opened."""
    for m in messages:
        if m["msg_type"] != "comm_open":
            continue
        state = m["content"]["data"].get("state", {})
        if state.get("_model_name") == model and (
            description is None or state.get("description") == description
        ):
            return m["content"]["comm_id"]
    raise AssertionError(f"no {model} {description or ''} was opened")


def stop_at_progress(kernel: Kernel, at: int, end: str) -> Callable[[dict], None]:
    """A watcher of the kernel's messages that, once the panel's progress bar reaches ``at``,
    clicks Stop (``end`` "stop") or interrupts the kernel ("interrupt"); "done" lets it end."""
    seen: list[dict] = []
    ids: dict[str, str] = {}

    def on(msg: dict) -> None:
        seen.append(msg)
        if end == "done" or "sent" in ids or msg["msg_type"] != "comm_msg":
            return
        if "progress" not in ids:
            try:
                stop = opened(seen, "ButtonModel", "Stop")
                ids["progress"] = opened(seen, "IntProgressModel")
                ids["stop"] = stop
            except AssertionError:
                return
        state = msg["content"]["data"].get("state", {})
        if msg["content"]["comm_id"] == ids["progress"] and state.get("value", 0) >= at:
            ids["sent"] = kernel.click(ids["stop"]) if end == "stop" else kernel.interrupt()

    return on


@pytest.mark.parametrize("end", ["done", "stop", "interrupt"])
@pytest.mark.parametrize("stack", STACKS)
def test_run_all_of_generate_sends_every_cell_at_once_and_the_run_stays_inside(
    stack, end, tmp_path, tiny_model_dir
):
    """*Run all* as Colab does it: every code cell of notebooks/generate.ipynb is sent at once.
    The run (on Colab, in the foreground) keeps every widget update inside the request that
    runs it, the cells after it wait and then run, and Stop or ■ ends it with the rest of the
    notebook still running."""
    nb = nbformat.read(ROOT / "notebooks" / "generate.ipynb", as_version=4)
    cells = [c.source for c in nb.cells if c.cell_type == "code"]
    kernel = colab_kernel(stack, tmp_path, tiny_model_dir, 6 if end == "done" else 100_000)
    try:
        requests = [kernel.execute(code) for code in cells]  # all at once, as Colab does
        on = stop_at_progress(kernel, 3, end)  # Stop or ■ once the run has made 3 steps
        messages = kernel.messages(requests[-1], timeout=300, on=on)
    finally:
        kernel.close()

    errors = [m["content"]["traceback"] for m in messages if m["msg_type"] == "error"]
    assert not errors, "\n".join("\n".join(e) for e in errors)
    for request in requests:  # every cell ran (none aborted), once
        assert [s for _, s in statuses(messages, request)] == ["busy", "idle"]
        assert any(
            m["msg_type"] == "execute_input" and m["parent_header"]["msg_id"] == request
            for m in messages
        )
    assert_all_inside(messages)
    by_request = {r: 0 for r in requests}
    for m in updates(messages):
        by_request[m["parent_header"]["msg_id"]] += 1
    runner = max(by_request, key=by_request.get)  # the cell that ran the loop
    assert by_request[runner] >= 10
    # The cells after it waited: each began only after it had ended.
    (runner_idle, _) = statuses(messages, runner)[-1]
    for later in requests[requests.index(runner) + 1 :]:
        assert statuses(messages, later)[0][0] > runner_idle
    runs = [p.parent for p in tmp_path.rglob("run.json")]
    assert len(runs) == 1, runs
    record = json.loads((runs[0] / "run.json").read_text())
    if end == "done":
        assert (record["status"], record["iteration"]) == ("done", 6)
    else:
        assert record["status"] == "stopped" and 3 <= record["iteration"] < 50
        assert (runs[0] / "state.pt").is_file()


@pytest.mark.parametrize("end", ["done", "stop"])
@pytest.mark.parametrize("stack", STACKS)
def test_run_all_of_motion_animates_inside_its_request_and_stop_keeps_the_frames(
    stack, end, tmp_path, tiny_model_dir
):
    """notebooks/motion.ipynb under Colab's Run all: the animation (in the foreground) sends
    each finished frame to the live picture inside the request that runs it, the cells after
    it wait, and Stop after two frames ends it with those frames on Drive."""
    frames = 3 if end == "done" else 200
    nb = nbformat.read(ROOT / "notebooks" / "motion.ipynb", as_version=4)
    edits = {"FRAMES = 48": f"FRAMES = {frames}", "STEPS_PER_FRAME = 10": "STEPS_PER_FRAME = 2",
             "FIRST_STEPS = 50": "FIRST_STEPS = 2", '"24: a forest': '"2: a forest'}  # fmt: skip
    cells = [c.source for c in nb.cells if c.cell_type == "code"]
    for old, new in edits.items():
        cells = [c.replace(old, new) for c in cells]
    kernel = colab_kernel(stack, tmp_path, tiny_model_dir, 6)
    try:
        requests = [kernel.execute(code) for code in cells]  # all at once, as Colab does
        on = stop_at_progress(kernel, 2, end)  # Stop once two frames are shown
        messages = kernel.messages(requests[-1], timeout=300, on=on)
    finally:
        kernel.close()

    errors = [m["content"]["traceback"] for m in messages if m["msg_type"] == "error"]
    assert not errors, "\n".join("\n".join(e) for e in errors)
    for request in requests:  # every cell ran, once
        assert [s for _, s in statuses(messages, request)] == ["busy", "idle"]
    assert_all_inside(messages)
    runner = requests[-2]  # the Animate cell ran the loop
    live = opened(messages, "ImageModel")  # the panel's live picture is its first image
    shown = [m for m in updates(messages) if m["content"]["comm_id"] == live]
    shown = [m for m in shown if m["content"]["data"].get("buffer_paths")]  # a new picture
    assert len(shown) >= 2 and all(m["parent_header"]["msg_id"] == runner for m in shown)
    (runner_idle, _) = statuses(messages, runner)[-1]
    assert statuses(messages, requests[-1])[0][0] > runner_idle  # the last cell waited
    (record,) = [json.loads(p.read_text()) for p in tmp_path.rglob("animation.json")]
    finished = len(list(tmp_path.rglob("frames/*.png")))
    if end == "done":
        assert (record["status"], record["frame"], finished) == ("done", 3, 3)
    else:
        assert record["status"] == "stopped" and 2 <= record["frame"] == finished < 50


LEAK = """
import json
import ipywidgets as W
from vqclip.config import RunConfig
from vqclip.ui import Panel

def open_widgets():
    registry = getattr(W.Widget, "widgets", None)  # ipywidgets 7
    if registry is None:
        from ipywidgets.widgets.widget import _instances as registry  # 8
    return len(registry)

ui = Panel(RunConfig(prompt="a unicorn", size=[64, 64], cutn=4, iterations=3, seed=1,
                     snapshots="every:1", device="cpu", precision="fp32", out={out!r}),
           mode="foreground")
counts = []
for _ in range(20):
    ui.run()
    counts.append(open_widgets())
print("counts:", json.dumps([counts, ui.last_result.status, len(ui.gallery.children)]))
"""


@pytest.mark.parametrize("stack", STACKS)
def test_twenty_runs_leave_no_widgets_behind(stack, tmp_path, tiny_model_dir):
    """Each run's gallery thumbnails are widgets (each with a comm to the browser): a new run
    closes the ones it replaces, so the count stays flat however many runs a session makes."""
    env = {
        **os.environ,
        "VQCLIP_TINY_MODELS": str(tiny_model_dir["clip"].parent),
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
    }
    env.pop("VQCLIP_AUTORUN", None)
    kernel = Kernel(env, python=stack_python(stack))
    try:
        printed = kernel.output(LEAK.format(out=str(tmp_path / "runs")), timeout=300)
        line = next(x for x in printed.splitlines() if x.startswith("counts: "))
        counts, status, shown = json.loads(line.removeprefix("counts: "))
    finally:
        kernel.close()
    assert status == "done" and shown == 3  # snapshots 1..3 of the last run are shown
    assert counts[-1] == counts[0], counts
