"""A real ipykernel of this interpreter, driven over ZeroMQ with jupyter_client, for the
tests that must see exactly what a frontend sees (parent headers, busy/idle, comm messages)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import jupyter_client
import pytest
from jupyter_client.kernelspec import KernelSpec, KernelSpecManager

ROOT = Path(__file__).parents[1]
# The kernel stacks the real-kernel tests run on: the project's environment, and Google
# Colab's (ipykernel 6.17.1, IPython 7, ipywidgets 7: tests/colab-stack.txt) in .venv-colab.
STACKS = ("project", "colab")
REQUIRE_COLAB_STACK = "VQCLIP_REQUIRE_COLAB_STACK"  # CI: a stack that cannot be built fails
_colab_build: list[subprocess.CompletedProcess] = []


def stack_python(stack: str) -> str:
    """The interpreter whose kernel runs ``stack``. The Colab stack is built on first use by
    scripts/colab_stack.sh (nothing to do when it is up to date); where it cannot be built
    (no package index) its tests skip, or fail under $VQCLIP_REQUIRE_COLAB_STACK=1."""
    if stack == "project":
        return sys.executable
    if not _colab_build:
        env = {**os.environ, "VIRTUAL_ENV": sys.prefix}
        script = str(ROOT / "scripts" / "colab_stack.sh")
        _colab_build.append(
            subprocess.run(["bash", script], env=env, capture_output=True, text=True)
        )
    built = _colab_build[0]
    if built.returncode != 0:
        why = (
            f"scripts/colab_stack.sh could not build Colab's kernel stack:\n{built.stderr[-3000:]}"
        )
        if os.environ.get(REQUIRE_COLAB_STACK) == "1":
            pytest.fail(why)
        pytest.skip(why)
    return str(ROOT / ".venv-colab" / "bin" / "python")


class KernelSpecs(KernelSpecManager):
    """One kernelspec: a given interpreter (default: this very one; CI runs a fresh .venv)."""

    python = sys.executable

    def get_kernel_spec(self, kernel_name: str) -> Any:
        argv = [self.python, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
        return KernelSpec(argv=argv, display_name="vqclip", language="python", resource_dir="")


class Kernel:
    """One ipykernel of this interpreter, and the messages it publishes."""

    def __init__(
        self, env: dict[str, str], cwd: str | None = None, python: str = sys.executable
    ) -> None:
        specs = KernelSpecs()
        specs.python = python
        self.manager = jupyter_client.KernelManager(
            kernel_name="vqclip-foreground", kernel_spec_manager=specs
        )
        self.manager.start_kernel(env=env, cwd=cwd)
        self.client = self.manager.client()
        self.client.start_channels()
        self.client.wait_for_ready(timeout=60)

    def send(self, msg_type: str, content: dict[str, Any]) -> str:
        msg = self.client.session.msg(msg_type, content)
        self.client.shell_channel.send(msg)
        return msg["header"]["msg_id"]

    def click(self, model_id: str) -> str:
        """What the browser sends when a Button is clicked."""
        data = {"method": "custom", "content": {"event": "click"}}
        return self.send("comm_msg", {"comm_id": model_id, "data": data})

    def type(self, model_id: str, text: str) -> str:
        """What the browser sends when text is typed into a Text or Textarea widget."""
        data = {"method": "update", "state": {"value": text}, "buffer_paths": []}
        return self.send("comm_msg", {"comm_id": model_id, "data": data})

    def interrupt(self) -> str:
        """Colab's ■ (Kernel → Interrupt): SIGINT to the kernel."""
        self.manager.interrupt_kernel()
        return "interrupt"

    def execute(self, code: str) -> str:
        return self.client.execute(code)

    def messages(self, until_idle_of: str, timeout: float = 120, on: Any = None) -> list[dict]:
        """IOPub messages up to the idle status of request ``until_idle_of``; ``on(msg)`` sees
        each as it arrives (to react mid-run)."""
        seen, deadline = [], time.monotonic() + timeout
        while True:
            assert time.monotonic() < deadline, "the request never went idle"
            try:
                msg = self.client.get_iopub_msg(timeout=1)
            except Exception:  # queue.Empty
                continue
            seen.append(msg)
            if on is not None:
                on(msg)
            if (
                msg["msg_type"] == "status"
                and msg["content"]["execution_state"] == "idle"
                and msg["parent_header"].get("msg_id") == until_idle_of
            ):
                return seen

    def output(self, code: str, timeout: float = 60) -> str:
        """Run ``code`` as a cell; its stdout (fails on an error)."""
        msg_id = self.execute(code)
        text, error = "", None
        for msg in self.messages(msg_id, timeout):
            if msg["parent_header"].get("msg_id") != msg_id:
                continue
            if msg["msg_type"] == "stream":
                text += msg["content"]["text"]
            elif msg["msg_type"] == "error":
                error = "\n".join(msg["content"]["traceback"])
        assert error is None, error
        return text

    def close(self) -> None:
        self.client.stop_channels()
        self.manager.shutdown_kernel(now=True)


def updates(messages: list[dict]) -> list[dict]:
    """The comm messages that change a widget's state."""
    return [
        m
        for m in messages
        if m["msg_type"] == "comm_msg" and m["content"]["data"].get("method") == "update"
    ]


def statuses(messages: list[dict], request: str) -> list[tuple[int, str]]:
    """(position, busy/idle) of each status published for ``request``."""
    return [
        (k, m["content"]["execution_state"])
        for k, m in enumerate(messages)
        if m["msg_type"] == "status" and m["parent_header"].get("msg_id") == request
    ]


def assert_all_inside(messages: list[dict], request: str | None = None) -> None:
    """What Colab's frontend needs to show every widget update (googlecolab/colabtools#3373):
    each carries the parent header of a request and arrives between that request's one busy
    and its one idle. With ``request``, every update must carry that one."""
    changed = {id(m) for m in updates(messages)}
    assert changed, "no widget updates were sent"
    for k, m in enumerate(messages):
        if id(m) not in changed:
            continue
        parent = m["parent_header"].get("msg_id")
        if request is not None:
            assert parent == request, (parent, request, m["content"]["data"]["state"])
        states = statuses(messages, parent)
        assert [s for _, s in states] == ["busy", "idle"], (
            f"request {parent} published {states} (position, status): one busy, one idle "
            "expected; an early idle makes Colab drop the updates after it"
        )
        (busy, _), (idle, _) = states
        late = [
            j
            for j, u in enumerate(messages)
            if id(u) in changed and j > idle and u["parent_header"].get("msg_id") == parent
        ]
        assert busy < k < idle, f"{len(late)} updates arrived after their request's idle"
