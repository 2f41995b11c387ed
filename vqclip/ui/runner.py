"""The panel's run controller: one run at a time, in the foreground or in the background.

- **background**: the run goes on in a daemon thread and the cell or click that started it
  returns at once; the kernel is idle and handles clicks (Stop) itself. Right for JupyterLab,
  Notebook 7 and VS Code, which show widget updates from any thread.
- **foreground**: the run goes on inside the request that started it (the Run click's
  handler, or the cell that called ``run()``), on the kernel's main thread, so every widget
  update is sent while that request is busy and carries its parent header. Colab's frontend
  shows only such updates (googlecolab/colabtools#3373). Between steps, pending widget
  messages (a Stop click) are handled with jupyter-ui-poll, while cells waiting in the
  kernel's queue (Colab's Run all sends them all at once) stay there until the run ends;
  an interrupt (Colab's ■, or Kernel → Interrupt) stops the run like Stop, everything saved.

``auto`` is foreground on Colab and background elsewhere.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import threading
from collections.abc import Callable, Iterator
from typing import Any

from vqclip.colab import in_colab
from vqclip.observers import StopFlag

MODES = ("auto", "foreground", "background")


def resolve_mode(mode: str) -> str:
    if mode not in MODES:
        raise ValueError(f"mode {mode!r} is not one of {', '.join(MODES)}.")
    if mode == "auto":
        return "foreground" if in_colab() else "background"
    return mode


def _kernel() -> Any:
    """The IPython kernel this code runs in, or None (plain Python, a test)."""
    try:
        from IPython import get_ipython
    except ImportError:
        return None
    shell = get_ipython()
    return getattr(shell, "kernel", None)


def clicks_seen_mid_run() -> bool:
    """Whether a foreground run can handle clicks between its steps here: jupyter-ui-poll
    needs a kernel with ``do_one_iteration`` and a queue of waiting requests (ipykernel 6,
    as on Colab; not 7)."""
    kernel = _kernel()
    if kernel is None or not hasattr(kernel, "do_one_iteration"):
        return False
    if not hasattr(getattr(kernel, "msg_queue", None), "_queue"):
        return False
    return importlib.util.find_spec("jupyter_ui_poll") is not None  # a requirement, but
    # an environment set up by hand may lack it: then the interrupt is the way to stop


class _ClicksFirst:
    """Stands in for the kernel's queue of waiting requests during a foreground run: it
    hands out every waiting message except the requests to run a cell, which stay queued,
    in order, untouched, until the run has ended.

    Why: Colab's *Run all* sends every cell at once, so the next cells wait in this queue.
    jupyter-ui-poll would take such a request, hold it back and reset the output parent to
    the running request, and ipykernel 6 then publishes ``idle`` for the running request
    (dispatch_shell's closing status): Colab takes the run as finished and drops the rest of
    its widget updates (googlecolab/colabtools#3373). Left queued, a waiting cell is
    published (busy, its output, idle) only when it runs, after the run.

    The entries never leave the kernel's own deque (``queue._queue``), so an interrupt at any
    moment loses or repeats none: ``get_nowait`` deletes one entry in one step."""

    def __init__(self, queue: Any, session: Any, dispatch_shell: Any) -> None:
        self.queue, self.session, self.dispatch_shell = queue, session, dispatch_shell

    def put_nowait(self, item: Any) -> None:
        self.queue.put_nowait(item)

    def qsize(self) -> int:
        return sum(1 for entry in self.queue._queue if not self._is_cell(entry))

    def empty(self) -> bool:
        return self.qsize() == 0

    def get_nowait(self) -> Any:
        waiting = self.queue._queue  # a deque of (index, dispatch, args)
        for k, entry in enumerate(waiting):
            if not self._is_cell(entry):
                del waiting[k]
                return entry
        raise asyncio.QueueEmpty  # ipykernel 6's process_one catches it: nothing to do

    def _is_cell(self, entry: Any) -> bool:
        """Whether a queued entry is a shell ``execute_request``: only the header is read
        (deserialising the message here would spend its signature, and ipykernel would
        then refuse it as a duplicate)."""
        _, dispatch, args = entry
        if getattr(dispatch, "__func__", None) is not getattr(self.dispatch_shell, "__func__", 0):
            return False  # not a shell message (an event-loop tick, say): let it through
        _, frames = self.session.feed_identities(args[0], copy=False)
        header = self.session.unpack(bytes(frames[1].bytes))  # [signature, header, …]
        return header.get("msg_type") == "execute_request"


@contextlib.contextmanager
def _widget_events() -> Iterator[Callable[[], None]]:
    """A function that handles the widget messages waiting in the kernel (a no-op where that
    cannot be done). Waiting cells stay queued until the run has ended (see _ClicksFirst);
    on leaving, a run started by a click also takes back jupyter-ui-poll's hold on cells."""
    if not clicks_seen_mid_run():
        yield lambda: None
        return
    from jupyter_ui_poll import ui_events

    kernel = _kernel()
    parent = kernel.get_parent() if hasattr(kernel, "get_parent") else kernel._parent_header
    from_click = parent.get("header", {}).get("msg_type") == "comm_msg"
    queue = kernel.msg_queue
    kernel.msg_queue = _ClicksFirst(queue, kernel.session, kernel.dispatch_shell)
    try:
        with ui_events() as poll:
            yield lambda: poll(10)
    finally:
        kernel.msg_queue = queue  # the cells that waited run next, in their order
        if from_click:
            _release_cells()


def _release_cells() -> None:
    """jupyter-ui-poll swaps the kernel's execute_request handler for one that holds cells
    back until the cell that ran the loop ends. A click handler is no cell, so that moment
    never comes: restore the handler now, or the next cell would wait forever."""
    from jupyter_ui_poll import _poll

    wrapper = _poll.KernelWrapper._current
    if wrapper is not None:
        wrapper._post_run_cell()


class Runner:
    """Runs one job at a time; ``should_stop`` is what the job polls between its steps."""

    def __init__(self, mode: str = "auto") -> None:
        self.mode = resolve_mode(mode)
        self.stop_flag = StopFlag()
        self._thread: threading.Thread | None = None
        self._busy, self._told = False, False
        self._lock = threading.Lock()
        self._poll: Callable[[], None] = lambda: None
        self.on_stop_request: Callable[[], None] = lambda: None  # told once per Stop
        # Called once the runner is free again, so what it shows (a run's last line) is
        # never read while a new run would still be refused or result() would say "going".
        self.on_end: Callable[[], None] = lambda: None
        self._later: list[Callable[[], None]] = []  # what clicks handled mid-run want shown
        self._polling = False  # handling the clicks that came during a foreground run

    @property
    def running(self) -> bool:
        return self._busy

    def start(self, job: Callable[[], None]) -> bool:
        """Run ``job``: in a thread (returns at once), or here (returns when it has ended).
        False if a run is already going."""
        with self._lock:  # a double click must not start two runs
            if self._busy:
                return False
            self._busy, self._told = True, False
            self.stop_flag.clear()
        if self.mode == "background":
            self._thread = threading.Thread(target=self._run, args=(job,), daemon=True)
            self._thread.name = "vqclip-run"
            self._thread.start()
        else:
            self._run(job)
        return True

    def _run(self, job: Callable[[], None]) -> None:
        try:
            if self.mode == "foreground":
                with _widget_events() as poll:
                    self._poll = poll
                    job()
            else:
                job()
        finally:
            self._poll = lambda: None
            self._busy = False
            self.on_end()

    def stop(self) -> None:
        """Ask the run to stop after its current step (from a click, a cell or a thread)."""
        if self._busy:
            self.stop_flag.set()

    def later(self, show: Callable[[], None]) -> None:
        """Run ``show`` (a change of widgets a click asks for) now, or, for a click handled
        between the steps of a foreground run, right after the click, on the run's request:
        Colab shows only the updates of the request that is running."""
        if self._polling:
            self._later.append(show)
        else:
            show()

    def should_stop(self) -> bool:
        """Polled by the run after every step: handles waiting clicks, then says whether a
        Stop came. In the foreground a Stop click's handler only sets the flag (and other
        handlers defer what they show with ``later``), and the run (on the request that
        started it) shows the change."""
        self._polling = True
        try:
            self._poll()
        finally:
            self._polling = False
        while self._later:
            self._later.pop(0)()
        stop = self.stop_flag()
        if stop and not self._told:
            self._told = True
            self.on_stop_request()
        return stop

    def join(self, timeout: float | None = None) -> bool:
        """Wait for a background run; True when no run is going any more."""
        if self._thread is not None:
            self._thread.join(timeout)
        return not self._busy
