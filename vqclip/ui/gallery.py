"""The snapshot gallery with its frame scrubber and the run's best picture, and the
loss/similarity plot."""

from __future__ import annotations

import html
import io
import threading
from pathlib import Path
from typing import Any

import ipywidgets as W
from PIL import Image

from vqclip.best import read_best
from vqclip.credentials import summary
from vqclip.export import list_snapshots
from vqclip.state import BEST_FILE
from vqclip.ui.look import image_widget, png, wrap


class Gallery:
    """Thumbnails of a run's snapshots; a scrubber (and Play) shows any one of them large.

    The run's best picture (keep-best's best.png) has a thumbnail of its own above them,
    "★ best · it K", and the snapshot of that iteration, when there is one, is starred.
    """

    def __init__(self) -> None:
        self._frames: list[tuple[int, bytes]] = []  # (iteration, PNG bytes)
        self._thumbs: dict[int, tuple[bytes, bool, W.Widget]] = {}  # (data, starred, thumb)
        self._best: tuple[int, float, bytes] | None = None  # (iteration, score, PNG bytes)
        self.best = W.Box()  # the best picture's thumbnail, empty while there is none
        self.best.add_class("vqclip-best-box")
        self._lock = threading.RLock()  # a background run adds frames while a click scrubs
        self.thumbnails = W.Box(layout=W.Layout(flex_flow="row wrap"))
        self.thumbnails.add_class("vqclip-gallery")
        self.scrubber = W.IntSlider(0, min=0, max=0, readout=False, disabled=True)
        self.play = W.Play(0, min=0, max=0, interval=250, disabled=True)
        W.jslink((self.play, "value"), (self.scrubber, "value"))  # plays without the kernel
        self.label = W.HTML()
        self.frame = image_widget("vqclip-frame", width=256)
        self.scrubber.observe(self._show, "value")
        self.widget = W.VBox(
            [self.best, self.thumbnails, wrap([self.play, self.scrubber, self.label]), self.frame]
        )

    @property
    def iterations(self) -> list[int]:
        """The iterations shown, in order."""
        with self._lock:
            return [i for i, _ in self._frames]

    def add(self, iteration: int, image: Image.Image) -> None:
        with self._lock:
            frames = [f for f in self._frames if f[0] != iteration] + [(iteration, png(image))]
            self.set(sorted(frames))

    @property
    def best_iteration(self) -> int | None:
        """The iteration of the best picture shown, if any."""
        with self._lock:
            return self._best[0] if self._best else None

    def load(self, run_dir: Path) -> None:
        """The gallery from the run's snapshot files (a stopped run's last picture included)
        and its best.png."""
        run_dir = Path(run_dir)
        self.set([(i, path.read_bytes()) for i, path in list_snapshots(run_dir)])
        found = read_best(run_dir / BEST_FILE)
        self.mark_best(found and (*found, (run_dir / BEST_FILE).read_bytes()))

    def mark_best(self, best: tuple[int, float, bytes] | None) -> None:
        """Show (iteration, score, PNG bytes) as the run's best picture; None: no best."""
        with self._lock:
            if best == self._best:
                return
            self._best = best
            for item in self.best.children:
                _close(item)
            self.best.children = () if best is None else (_best_thumb(*best),)
            self._set(self._frames)  # the star moves with it

    def set(self, frames: list[tuple[int, bytes]]) -> None:
        with self._lock:
            if not frames:  # a new run: no best yet either
                self.mark_best(None)
            self._set(frames)

    def _set(self, frames: list[tuple[int, bytes]]) -> None:
        with self._lock:
            at_end = self.scrubber.value >= self.scrubber.max
            self._frames = frames
            star = self.best_iteration
            # Thumbnails already made are reused: a long run adds snapshots one by one.
            thumbs = {
                i: self._thumbs[i]
                for i, data in frames
                if self._thumbs.get(i, (b"", False))[:2] == (data, i == star)
            }
            thumbs.update(
                {
                    i: (data, i == star, _thumb(i, data, i == star))
                    for i, data in frames
                    if i not in thumbs
                }
            )
            gone = [
                w
                for i, (*_, w) in self._thumbs.items()
                if thumbs.get(i, (None, None, None))[2] is not w
            ]
            self._thumbs = thumbs
            self.thumbnails.children = tuple(thumbs[i][2] for i, _ in frames)
            for item in gone:  # a widget lives (and keeps a comm) until closed: no leak per run
                _close(item)
            top = max(0, len(frames) - 1)
            self.scrubber.max = self.play.max = top
            self.scrubber.disabled = self.play.disabled = len(frames) < 2
            if at_end or self.scrubber.value > top:
                self.scrubber.value = top  # follow the newest snapshot
            self._show()

    def _show(self, _: Any = None) -> None:
        with self._lock:
            if not self._frames:
                self.label.value, self.frame.value = "no snapshots yet", b""
                return
            k = min(self.scrubber.value, len(self._frames) - 1)
            iteration, data = self._frames[k]
        self.frame.value = data
        star = " · ★ best" if iteration == self.best_iteration else ""
        self.label.value = f"it {iteration} ({k + 1} of {len(self._frames)}){star}"
        if b"caBX" in data[:4096]:  # a signed file (live frames are not): its credential
            state = summary(f"{iteration:06d}.png", data)
            self.label.value += f" · {html.escape(state)}"


def _thumb(iteration: int, data: bytes, star: bool = False) -> W.Widget:
    """A snapshot's thumbnail, labelled with its iteration; starred when it is the best."""
    with Image.open(io.BytesIO(data)) as image:
        thumb = png(image.convert("RGB"), 96)
    label = W.HTML(f"it {iteration}")
    label.add_class("vqclip-thumb-label")
    item = W.VBox([W.Image(value=thumb, format="png", width=96), label])
    item.add_class("vqclip-thumb")
    if star:
        mark = W.HTML("★ best")
        mark.add_class("vqclip-best-label")
        item.children += (mark,)
        item.add_class("vqclip-best")
    return item


def _best_thumb(iteration: int, score: float, data: bytes) -> W.Widget:
    """The best picture's own thumbnail: "★ best · it K" and its score."""
    with Image.open(io.BytesIO(data)) as image:
        thumb = png(image.convert("RGB"), 96)
    label = W.HTML(f"★ best · it {iteration} · score {score:.3f}")
    label.add_class("vqclip-best-label")
    item = W.VBox([W.Image(value=thumb, format="png", width=96), label])
    item.add_class("vqclip-best-thumb")
    return item


def _close(item: W.Widget) -> None:
    """Close a thumbnail and every widget it holds: its children and each one's layout and
    style, which are widgets of their own (each with a comm, kept by the kernel until closed)."""
    for child in getattr(item, "children", ()):
        _close(child)
    for part in (getattr(item, "style", None), getattr(item, "layout", None)):
        if isinstance(part, W.Widget):
            part.close()
    item.close()


def _plain(text: str) -> str:
    """Drop emoji and CJK from plot labels: matplotlib's default font has no glyphs for them."""
    return "".join(c for c in text if ord(c) < 0x2600 or 0x27C0 <= ord(c) < 0x2E80).strip()


def plot_png(history: list[dict[str, Any]]) -> bytes:
    """Loss (left axis) and each prompt's similarity (right axis) against iteration, as PNG;
    dotted lines mark where a prompt timeline changed the prompts."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(4.2, 2.6), dpi=80, layout="constrained")
    FigureCanvasAgg(fig)  # never touches pyplot's global backend
    ax = fig.subplots()
    its = [row["iteration"] for row in history]
    ax.plot(its, [row["loss"] for row in history], color="black", label="loss")
    ax.set_xlabel("iteration")
    ax.set_ylabel("loss")
    # One curve per prompt by its name, not its position: a prompt timeline adds, drops and
    # reorders prompts, and a prompt that comes back goes on with its own curve.
    names = list(dict.fromkeys(p["prompt"] for row in history for p in row["prompts"]))
    if names:
        sim = ax.twinx()
        sim.set_ylabel("similarity")
        for k, name in enumerate(names[-6:]):  # the latest six: those in force now come last
            points = [
                (row["iteration"], p["similarity"])
                for row in history
                for p in row["prompts"]
                if p["prompt"] == name
            ]
            sim.plot(*zip(*points), "--", label=_plain(name)[:24] or f"#{k}")
        sim.legend(fontsize=7, loc="lower right")
    for row in history:  # where the prompts changed
        if row.get("timeline"):
            ax.axvline(row["iteration"], color="grey", linewidth=0.8, linestyle=":")
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()
