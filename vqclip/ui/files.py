"""The panel's file controls: uploads in (init image, image prompts), export and download
out (GIF/MP4 of the shown run, its final PNG, a zip of its snapshots), and the chooser of
the runs on disk with Resume."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import ipywidgets as W

from vqclip import colab
from vqclip.config import RunConfig
from vqclip.credentials import signing_for
from vqclip.export import ExportError, export_run, list_snapshots, zip_snapshots
from vqclip.state import FINAL_FILE, RUN_FILE, read_run
from vqclip.ui.form import Form
from vqclip.ui.look import TIP, wrap


class Uploads:
    """Upload buttons: the files are kept under OUT/inputs and their paths go into the init
    image and image prompt fields, so the recipe names a file that stays."""

    def __init__(self, form: Form, say: Callable[..., None]) -> None:
        self.form, self.say = form, say
        self.upload_init = W.FileUpload(accept="image/*", multiple=False, description="init image")
        # Colab drops a FileUpload's files of about 1 MB and more without a word
        # (jupyter-widgets/ipywidgets#3452): say where photos go instead.
        self.upload_note = W.HTML(
            "<small>On Colab these buttons lose files of 1 MB and more: give a photo as a "
            "Drive path or URL in <i>init image</i>, or with the notebook's "
            '<code>INIT_IMAGE = "upload"</code>.</small>'
            if colab.in_colab()
            else ""
        )
        self.upload_prompt = W.FileUpload(
            accept="image/*", multiple=True, description="image prompt"
        )
        for button in (self.upload_init, self.upload_prompt):
            button.add_class("vqclip-upload")
        self.upload_init.observe(lambda change: self.take(change, "init_image"), "value")
        self.upload_prompt.observe(lambda change: self.take(change, "image_prompts"), "value")
        self.widget = wrap(
            [W.HTML("upload:&nbsp;"), self.upload_init, self.upload_prompt, self.upload_note]
        )

    def take(self, change: dict, field: str) -> None:
        """Keep the files of an upload button's change and put their paths in ``field``."""
        files = _uploaded(change["new"])
        empty = [name for name, data in files if not data]
        if not files or empty:  # an upload that lost its bytes on the way is said, not ignored
            self.say(
                f"the upload arrived empty{' (' + ', '.join(empty) + ')' if empty else ''}: "
                "Colab drops files of about 1 MB and more sent by these buttons; give the "
                "photo as a Drive path or URL in 'init image', or use the notebook's "
                'INIT_IMAGE = "upload"',
                "error",
            )
            return
        out = self.form.fields["out"].input.value or "runs"
        paths = [str(colab.save_upload(out, name, data)) for name, data in files]
        target = self.form.fields[field]
        if field == "init_image":
            target.set(paths[-1])
        else:
            target.set([*target.value(), *paths])
        self.say(f"uploaded {', '.join(Path(p).name for p in paths)} into {Path(out) / 'inputs'}")


class ExportBox:
    """Export (GIF or MP4 of the shown run's snapshots, previewed) and download buttons."""

    def __init__(self, shown: Callable[[], Path | None], say: Callable[..., None]) -> None:
        self.shown, self.say = shown, say  # the run the panel shows, and its status line
        self.export_format = W.Dropdown(options=["GIF", "MP4"], layout=W.Layout(width="80px"))
        self.export_fps = W.BoundedFloatText(
            10, min=0.1, max=60, description="fps", layout=W.Layout(width="110px")
        )
        self.export_hold = W.BoundedFloatText(
            1.0, min=0, max=60, description="hold last (s)", layout=W.Layout(width="160px")
        )
        self.export_fps.style.description_width = "initial"
        self.export_hold.style.description_width = "initial"
        self.export_label = W.Checkbox(True, description="label iterations", indent=False)
        self.export_button = W.Button(
            description="Export", icon="film", disabled=True, layout=W.Layout(width="100px")
        )
        self.export_button.add_class("vqclip-export")
        self.export_button.on_click(lambda _: self.export())
        self.download_buttons = {
            kind: W.Button(description=label, icon="download", disabled=True)
            for kind, label in (
                ("png", "final PNG"),
                ("animation", "GIF / MP4"),
                ("zip", "all snapshots (zip)"),
            )
        }
        for kind, button in self.download_buttons.items():
            button.add_class(f"vqclip-download-{kind}")
            button.on_click(lambda _, kind=kind: self.download(kind))
        self.export_link = W.HTML()
        self.export_link.add_class("vqclip-links")
        self.export_preview = W.Box()
        controls = [self.export_format, self.export_fps, self.export_hold, self.export_label]
        self.widget = W.VBox(
            [
                wrap([*controls, self.export_button]),
                wrap([W.HTML("download:&nbsp;"), *self.download_buttons.values()]),
                self.export_link,
                self.export_preview,
            ]
        )

    def export(self) -> list[Path]:
        """Animate the shown run's snapshots as the export controls say; preview it."""
        run_dir = self.shown()
        if run_dir is None:
            self.say("nothing to export yet: run, or choose a run", "error")
            return []
        mp4 = self.export_format.value == "MP4"
        self.say("exporting…")
        try:
            # signed as the run's own settings say (--no-credentials: unsigned)
            signing = signing_for(RunConfig.from_dict(read_run(run_dir)["config"]))
            paths = export_run(
                run_dir,
                credentials=signing,
                gif=not mp4,
                mp4=mp4,
                fps=self.export_fps.value,
                hold_last=self.export_hold.value,
                label=self.export_label.value,
            )
        except (ExportError, OSError, ValueError) as error:  # a broken run.json, a bad key
            self.say(f"export failed: {error}", "error")
            return []
        path = paths[0]
        data = path.read_bytes()
        if mp4:
            preview = W.Video(value=data, format="mp4", width=256, autoplay=True, loop=True)
        else:
            preview = W.Image(value=data, format="gif", width=256)
        preview.add_class("vqclip-export-preview")
        self.export_preview.children = (preview,)
        self.say(f"exported {path}")
        return paths

    def download(self, kind: str) -> Path | None:
        """Hand the shown run's final PNG ("png"), its animation ("animation", made as the
        export controls say) or a zip of its snapshots ("zip") to the user: Colab's download
        there, a link under the buttons elsewhere. The file's path, or None."""
        run_dir = self.shown()
        if run_dir is None:
            self.say("nothing to download yet: run, or choose a run", "error")
            return None
        try:
            if kind == "png":
                frames = list_snapshots(run_dir)
                final = run_dir / FINAL_FILE
                if not final.is_file() and not frames:
                    self.say("nothing to download yet: the run has no picture saved", "error")
                    return None
                path = final if final.is_file() else frames[-1][1]
            elif kind == "animation":
                paths = self.export()
                if not paths:
                    return None
                path = paths[0]
            else:
                path = zip_snapshots(run_dir)
        except (ExportError, OSError) as error:
            self.say(f"download failed: {error}", "error")
            return None
        try:
            link = colab.download(path)
        except Exception as error:  # Colab's download failed: the file is still there
            self.say(
                f"download failed ({type(error).__name__}: {error}); the file: {path}", "error"
            )
            return None
        if link is not None:
            self.export_link.value = f"download: {link}"
        self.say(f"download: {path.name}")
        return path


def _uploaded(value: Any) -> list[tuple[str, bytes]]:
    """(name, bytes) of each file in a FileUpload value (ipywidgets 8 tuple, or 7 dict)."""
    if isinstance(value, dict):  # ipywidgets 7: {name: {"metadata": …, "content": bytes}}
        return [(name, bytes(item["content"])) for name, item in value.items()]
    return [(item["name"], bytes(item["content"])) for item in value]


class RunChooser:
    """The runs under the output folder (newest first), a refresh button and Resume (to a
    new total). Choosing a run shows it (``show``) unless a run is going (``busy``)."""

    def __init__(
        self,
        out: Callable[[], str],
        show: Callable[[Path], None],
        resume: Callable[[], Any],
        busy: Callable[[], bool],
    ) -> None:
        self.out, self.show, self.busy = out, show, busy
        self._quiet = False  # True while the code (not the user) changes the chooser
        self.run_chooser = W.Dropdown(description="run", layout=W.Layout(width="430px"))
        self.run_chooser.style.description_width = "40px"
        self.run_chooser.observe(self._on_choose, "value")
        self.refresh_button = W.Button(icon="refresh", layout=W.Layout(width="40px"))
        setattr(self.refresh_button, TIP, "List the run directories again.")
        self.refresh_button.on_click(lambda _: self.refresh())
        self.resume_to = W.IntText(0, description="to iteration", layout=W.Layout(width="170px"))
        self.resume_to.style.description_width = "initial"
        setattr(self.resume_to, TIP, "0 keeps the run's planned total.")
        self.resume_button = W.Button(
            description="Resume", icon="forward", layout=W.Layout(width="100px")
        )
        self.resume_button.add_class("vqclip-resume")
        self.resume_button.on_click(lambda _: resume())
        self.widget = wrap(
            [self.run_chooser, self.refresh_button, self.resume_to, self.resume_button]
        )

    def refresh(self, select: Path | None = None) -> None:
        """List the runs again, choosing ``select`` (without showing it: it is shown)."""
        runs = run_dirs(self.out() or "runs")
        self._quiet = True
        try:
            self.run_chooser.options = [(_run_label(p), p) for p in runs]
            self.run_chooser.value = select if select in runs else None
        finally:
            self._quiet = False

    def _on_choose(self, change: dict) -> None:
        if self._quiet or change["new"] is None or self.busy():
            return
        self.show(change["new"])


def run_dirs(out: str | os.PathLike) -> list[Path]:
    """Run directories under ``out``, newest first."""
    found = [p.parent for p in Path(out).glob(f"*/{RUN_FILE}")]
    return sorted(found, key=lambda p: (p / RUN_FILE).stat().st_mtime, reverse=True)


def _run_label(run_dir: Path) -> str:
    try:
        record = read_run(run_dir)
        return f"{run_dir.name}  ({record.get('status')}, it {record.get('iteration')})"
    except Exception:
        return run_dir.name
