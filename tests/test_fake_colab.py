"""tests/fake_colab behaves as the real google.colab does for every call vqclip makes
(googlecolab/colabtools: drive.py, files.py), and vqclip meets each of its failures:
Drive declined or timed out, a taken mount point, a download with no request to answer,
and a download from the panel's button through the click's own request."""

from __future__ import annotations

import importlib
import json
import os
import sys
from pathlib import Path

import pytest
from kernels import Kernel

from vqclip import colab

FAKE_COLAB = Path(__file__).parent / "fake_colab"


@pytest.fixture
def fake_colab(tmp_path, monkeypatch):
    """This process imports the fake google.colab; its log of calls."""
    log = tmp_path / "colab.jsonl"
    monkeypatch.setenv("FAKE_COLAB_LOG", str(log))
    monkeypatch.setenv("VQCLIP_DRIVE_MOUNT", str(tmp_path / "drive"))
    monkeypatch.syspath_prepend(str(FAKE_COLAB))
    try:
        importlib.import_module("google.colab")
        yield log
    finally:
        for name in [n for n in sys.modules if n.startswith("google.colab")]:
            sys.modules.pop(name)


def test_mount_declined_or_timed_out_fails_as_colab_does(fake_colab, monkeypatch, tmp_path):
    from google.colab import _message, drive

    monkeypatch.setenv("FAKE_COLAB_DRIVE", "decline")
    with pytest.raises(_message.MessageError, match="credential propagation was unsuccessful"):
        drive.mount(str(tmp_path / "drive"))
    monkeypatch.setenv("FAKE_COLAB_DRIVE", "timeout")
    with pytest.raises(ValueError, match="^mount failed$"):
        drive.mount(str(tmp_path / "drive"))
    assert not (tmp_path / "drive").exists()


def test_mount_refuses_a_full_mount_point_and_reports_an_existing_mount(
    fake_colab, tmp_path, capsys
):
    from google.colab import drive

    full = tmp_path / "full"
    full.mkdir()
    (full / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="Mountpoint must not already contain files"):
        drive.mount(str(full))
    with pytest.raises(ValueError, match="Mountpoint must not contain a space"):
        drive.mount(str(tmp_path / "my drive"))
    drive.mount(str(tmp_path / "drive"))
    assert capsys.readouterr().out == f"Mounted at {tmp_path / 'drive'}\n"
    drive.mount(str(tmp_path / "drive"))  # a second Run all
    assert "Drive already mounted at" in capsys.readouterr().out
    assert (tmp_path / "drive" / "MyDrive").is_dir()


@pytest.mark.parametrize(
    "answer, words",
    [
        ("decline", "access was not granted: Error: credential propagation was unsuccessful"),
        ("timeout", "it timed out (mount failed)"),
    ],
)
def test_setup_without_drive_says_so_in_one_line_and_keeps_runs_on_the_vm(
    fake_colab, monkeypatch, capsys, answer, words
):
    monkeypatch.setenv("FAKE_COLAB_DRIVE", answer)
    monkeypatch.delenv("VQCLIP_CACHE", raising=False)
    env = colab.setup(save_to_drive=True)
    said = capsys.readouterr().out.splitlines()
    (line,) = [s for s in said if "Google Drive" in s and "not mounted" in s]
    assert words in line and "this VM's disk" in line and "run this cell again" in line
    assert env.out == Path("runs") and env.cache is None
    assert "VQCLIP_CACHE" not in os.environ
    assert any("Runs go to runs (this machine's disk)" in s for s in said)


def test_setup_on_a_taken_mount_point_falls_back_too(fake_colab, tmp_path, capsys):
    (tmp_path / "drive").mkdir()
    (tmp_path / "drive" / "old.txt").write_text("x")
    env = colab.setup(save_to_drive=True)
    assert "Mountpoint must not already contain files" in capsys.readouterr().out
    assert env.out == Path("runs")


def test_download_needs_a_kernel_as_colab_does(fake_colab, tmp_path):
    from google.colab import files

    with pytest.raises(FileNotFoundError, match="Cannot find file: "):
        files.download(str(tmp_path / "nothing.png"))
    (tmp_path / "a.png").write_bytes(b"x")
    with pytest.raises(AttributeError, match="'NoneType' object has no attribute 'kernel'"):
        files.download(str(tmp_path / "a.png"))  # no IPython kernel in this process


def colab_kernel_env(tmp_path: Path, tiny_model_dir) -> dict[str, str]:
    """A kernel's environment that looks like Colab's (as tests/test_notebooks.py's)."""
    startup = tmp_path / "ipython" / "profile_default" / "startup"
    startup.mkdir(parents=True)
    (startup / "00-colab.py").write_text("import google.colab\n")
    return {
        **os.environ,
        "IPYTHONDIR": str(tmp_path / "ipython"),
        "PYTHONPATH": os.pathsep.join([str(FAKE_COLAB), os.environ.get("PYTHONPATH", "")]),
        "FAKE_COLAB_LOG": str(tmp_path / "colab.jsonl"),
        "VQCLIP_TINY_MODELS": str(tiny_model_dir["clip"].parent),
        "VQCLIP_DRIVE_MOUNT": str(tmp_path / "drive"),
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
    }


def test_a_download_button_answers_through_the_click_and_a_thread_cannot(tmp_path, tiny_model_dir):
    """The panel's download button on Colab: the JavaScript that starts the browser's
    download goes out with the click's request, before its idle (else Colab drops it)."""
    kernel = Kernel(colab_kernel_env(tmp_path, tiny_model_dir), cwd=str(tmp_path))
    try:
        ids = kernel.output(
            "from vqclip.ui import panel\n"
            "ui = panel(prompt='a unicorn', iterations=3, snapshots='last', seed=1)\n"
            "assert ui.mode == 'foreground' and ui.run()\n"
            "import json; print(json.dumps({k: b.model_id for k, b in ui.download_buttons.items()}))",
            timeout=120,
        )
        buttons = json.loads(ids.strip().splitlines()[-1])
        seen = {}
        for kind in ("png", "zip"):
            click = kernel.click(buttons[kind])
            seen[kind] = (click, kernel.messages(click, timeout=60))
        off_thread = kernel.output(
            "import threading\n"
            "from vqclip import colab\n"
            "def later():\n"
            "    try:\n"
            "        colab.download(ui.last_result.final)\n"
            "    except Exception as error:\n"
            "        print(type(error).__name__, error)\n"
            "t = threading.Thread(target=later); t.start(); t.join()"
        )
    finally:
        kernel.close()
    for kind, (click, messages) in seen.items():
        scripts = [
            m
            for m in messages
            if m["msg_type"] == "display_data" and "application/javascript" in m["content"]["data"]
        ]
        assert len(scripts) == 1, kind  # one download, started inside the click's request
        assert scripts[0]["parent_header"]["msg_id"] == click
    log = [json.loads(line) for line in (tmp_path / "colab.jsonl").read_text().splitlines()]
    downloads = [entry for entry in log if entry[0] == "files.download"]
    assert [Path(d[1]).name for d in downloads] == ["final.png", "snapshots.zip"]
    assert [d[3] for d in downloads] == ["comm_msg", "comm_msg"]
    assert "LostOutput" in off_thread and "main thread" in off_thread
