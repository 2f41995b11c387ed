"""A real ipykernel of this interpreter, driven over ZeroMQ with jupyter_client, for the
tests that must see exactly what a frontend sees (parent headers, busy/idle, comm messages)."""

from __future__ import annotations

import sys
import time
from typing import Any

import jupyter_client
from jupyter_client.kernelspec import KernelSpec, KernelSpecManager


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
