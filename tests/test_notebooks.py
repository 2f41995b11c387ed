"""The notebooks: committed clean, one set-up cell, and Run All without a click, locally and
on (a stand-in for) Colab, where runs and the model cache go to Drive and a run cut by a
disconnect is continued to the same bytes."""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
import time
from pathlib import Path

import nbformat
import pytest
from kernels import Kernel
from nbclient import NotebookClient
from PIL import Image

import vqclip
from vqclip.config import RunConfig
from vqclip.credentials import content_bytes
from vqclip.export import list_snapshots
from vqclip.observers import generate
from vqclip.state import read_run

NOTEBOOKS = sorted((Path(__file__).parents[1] / "notebooks").glob("*.ipynb"))
FAKE_COLAB = Path(__file__).parent / "fake_colab"
ITERATIONS = 6  # the notebooks' runs, cut short by VQCLIP_ITERATIONS


def read(name: str) -> nbformat.NotebookNode:
    return nbformat.read(next(p for p in NOTEBOOKS if p.name == name), as_version=4)


def code_cells(nb: nbformat.NotebookNode) -> list[str]:
    return [cell.source for cell in nb.cells if cell.cell_type == "code"]


def test_there_are_notebooks():
    assert {p.name for p in NOTEBOOKS} >= {"generate.ipynb", "animate.ipynb", "sweep.ipynb"}


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_is_committed_clean(path: Path):
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [], f"{path.name}: a cell has outputs; clear them"
            assert cell.execution_count is None, f"{path.name}: a cell has an execution count"
    assert "widgets" not in nb.metadata, f"{path.name}: saved widget state; clear it"


def test_every_notebook_starts_with_the_same_set_up_cell():
    setups = {code_cells(read(p.name))[0] for p in NOTEBOOKS}
    assert len(setups) == 1, "the set-up cells differ: keep one, copied into each notebook"
    (setup,) = setups
    # The repository is named in that one cell, and the install is pinned to this release.
    for path in NOTEBOOKS:
        later = "\n".join(code_cells(read(path.name))[1:])
        assert "github.com" not in later and "pip install" not in later, path.name
    assert f'REF = "v{vqclip.__version__}"' in setup
    assert 'f"vqclip @ git+{REPO}@{REF}"' in setup
    # No GPU tool on a CPU runtime must not end the cell.
    assert 'shutil.which("nvidia-smi")' in setup
    assert re.search(r"SAVE_TO_DRIVE = True\s+# @param", setup)


@pytest.fixture
def kernel_env(tmp_path: Path, tiny_model_dir, monkeypatch: pytest.MonkeyPatch) -> dict:
    """A kernelspec for this very interpreter (CI runs a fresh .venv), found first via
    JUPYTER_PATH, with the tiny models, short runs and one thread; no autorun."""
    spec = tmp_path / "jupyter" / "kernels" / "vqclip-test"
    spec.mkdir(parents=True)
    argv = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    kernel = {"argv": argv, "display_name": "vqclip test", "language": "python"}
    (spec / "kernel.json").write_text(json.dumps(kernel))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    monkeypatch.setenv("VQCLIP_TINY_MODELS", str(tiny_model_dir["clip"].parent))
    monkeypatch.setenv("VQCLIP_ITERATIONS", str(ITERATIONS))
    monkeypatch.delenv("VQCLIP_AUTORUN", raising=False)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("MKL_NUM_THREADS", "1")
    return {"kernel_name": "vqclip-test"}


@pytest.fixture
def colab(kernel_env, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Path]:
    """Kernels started now look like Colab's: google.colab is imported at start-up (the fake
    in tests/fake_colab), Drive "mounts" under tmp_path/drive, calls are logged."""
    ipython = tmp_path / "ipython"
    startup = ipython / "profile_default" / "startup"
    startup.mkdir(parents=True)
    (startup / "00-colab.py").write_text("import google.colab\n")
    log = tmp_path / "colab.jsonl"
    monkeypatch.setenv("IPYTHONDIR", str(ipython))
    monkeypatch.setenv(
        "PYTHONPATH", os.pathsep.join([str(FAKE_COLAB), os.environ.get("PYTHONPATH", "")])
    )
    monkeypatch.setenv("VQCLIP_DRIVE_MOUNT", str(tmp_path / "drive"))
    monkeypatch.setenv("FAKE_COLAB_LOG", str(log))
    folder = tmp_path / "drive" / "MyDrive" / "vqclip"
    return {"runs": folder / "runs", "models": folder / "models", "log": log}


def run_all(
    name: str,
    workdir: Path,
    kernel_env: dict,
    extra: str = "",
    edit: dict[str, str] | None = None,
    skip: str = "",
) -> nbformat.NotebookNode:
    """Run All of notebooks/NAME in ``workdir`` (a copy, so the committed file stays clean),
    with the form's text changed as ``edit`` says (old -> new, each found once), without
    the cell whose source holds ``skip``, plus an ``extra`` cell at the end (what a person
    would do next)."""
    path = workdir / name
    shutil.copy(next(p for p in NOTEBOOKS if p.name == name), path)
    nb = nbformat.read(path, as_version=4)
    for old, new in (edit or {}).items():
        (cell,) = [c for c in nb.cells if old in c.source]
        cell.source = cell.source.replace(old, new)
    if skip:
        nb.cells = [c for c in nb.cells if skip not in c.source]
    if extra:
        nb.cells.append(nbformat.v4.new_code_cell(extra))
    client = NotebookClient(
        nb, timeout=240, resources={"metadata": {"path": str(workdir)}}, **kernel_env
    )
    client.execute()
    return nb


def outputs(nb: nbformat.NotebookNode) -> list[dict]:
    return [out for cell in nb.cells if cell.cell_type == "code" for out in cell.outputs]


def printed(nb: nbformat.NotebookNode) -> str:
    return "".join(out.get("text", "") for out in outputs(nb) if out["output_type"] == "stream")


def assert_no_errors(nb: nbformat.NotebookNode) -> None:
    errors = [out for out in outputs(nb) if out["output_type"] == "error"]
    assert not errors, errors


def test_run_all_of_generate_locally_runs_in_the_background_and_never_raises_or_waits(
    tmp_path, kernel_env
):
    # The last cell is a person who waits for the background run before closing the kernel.
    wait = "r = ui.wait(120)\nprint('finished', r.status, r.iteration)"
    nb = run_all("generate.ipynb", tmp_path, kernel_env, extra=wait)

    assert_no_errors(nb)
    text = printed(nb)
    assert "CPU" in text and "defaults are lowered" in text  # no GPU here, and no crash
    assert "Runs go to runs (this machine's disk)" in text
    assert "nothing to resume" in text
    panel_cell = next(c for c in nb.cells if "panel(" in c.source)
    shown = [out for out in panel_cell.outputs if out["output_type"] == "display_data"]
    assert len(shown) == 1 and "application/vnd.jupyter.widget-view+json" in shown[0]["data"]
    assert "tiny random models: noise, not pictures" in json.dumps(nb.metadata["widgets"])
    # The run cell started a background run; the export cell did not wait for it: it said
    # so, or the run (six tiny steps) had already ended and it showed the GIF.
    gif_shown = any("image/gif" in out.get("data", {}) for out in outputs(nb))
    assert gif_shown or "A run is still going" in text
    assert f"finished done {ITERATIONS}" in text
    (run,) = (tmp_path / "runs").iterdir()
    assert read_run(run)["status"] == "done" and read_run(run)["iteration"] == ITERATIONS


def test_run_all_without_running_says_press_run_first(tmp_path, kernel_env):
    nb = read("generate.ipynb")
    for cell in nb.cells:  # untick RUN_NOW, as a person who only uses the panel's button
        cell.source = cell.source.replace("RUN_NOW = True", "RUN_NOW = False")
    nbformat.write(nb, tmp_path / "generate.ipynb")
    client = NotebookClient(
        nb, timeout=240, resources={"metadata": {"path": str(tmp_path)}}, **kernel_env
    )
    client.execute()
    assert_no_errors(nb)
    assert "No run yet: type a prompt in the panel, press Run" in printed(nb)
    assert not (tmp_path / "runs").exists()


def test_run_all_of_animate_without_runs_says_what_to_do(tmp_path, kernel_env):
    nb = run_all("animate.ipynb", tmp_path, kernel_env)
    assert_no_errors(nb)
    assert "No runs under runs yet: make one with generate.ipynb first." in printed(nb)


def test_animate_makes_gif_mp4_strip_and_links(tmp_path, kernel_env, tiny_models):
    import imageio.v3 as iio

    config = RunConfig(
        prompt="a heptagonal stop sign",
        size=[64, 64],
        cutn=4,
        iterations=5,
        seed=3,
        snapshots="0,2,4,last",
        out=str(tmp_path / "runs"),
    )
    run = generate(config, tiny_models, progress=False).run_dir

    ticked = {"DOWNLOAD = False": "DOWNLOAD = True"}  # downloads are opt-in
    nb = run_all("animate.ipynb", tmp_path, kernel_env, edit=ticked)

    assert_no_errors(nb)
    with Image.open(run / "animation.gif") as gif:
        assert gif.n_frames == 4
    frames = list(iio.imiter(run / "animation.mp4", plugin="FFMPEG"))
    assert len(frames) == 4 + round(1.5 * 8)  # hold the last frame 1.5 s at 8 fps
    assert (run / "strip_0_2_4_5.png").is_file()
    data = [out.get("data", {}) for out in outputs(nb)]
    assert any("image/gif" in d for d in data) and any("image/png" in d for d in data)
    assert any("<video" in d.get("text/html", "") for d in data)
    links = " ".join(d.get("text/html", "") for d in data)
    for name in ("animation.gif", "animation.mp4", "strip_0_2_4_5.png"):
        assert f'download="{name}"' in links  # outside Colab: a link that works here


def test_run_all_of_sweep_ranks_and_draws_the_sheets(tmp_path, kernel_env):
    nb = run_all("sweep.ipynb", tmp_path, kernel_env)

    assert_no_errors(nb)
    folder = tmp_path / "runs" / "oregon"
    record = json.loads((folder / "sweep.json").read_text())
    assert len(record["candidates"]) == 6  # 3 styles x 2 seeds
    ranking = json.loads((folder / "ranking.json").read_text())["ranking"]
    assert [row["score"] for row in ranking] == sorted(
        (row["score"] for row in ranking), reverse=True
    )
    assert (folder / "contact_sheet.png").is_file()
    assert sum("image/png" in out.get("data", {}) for out in outputs(nb)) >= 2


def test_on_colab_runs_and_models_go_to_drive_and_the_panel_runs_in_the_foreground(
    tmp_path, colab, kernel_env
):
    nb = run_all(
        "generate.ipynb",
        tmp_path,
        kernel_env,
        extra="import os\n"
        "print('mode', ui.mode)\n"
        "print('cache', os.environ['VQCLIP_CACHE'])\n"
        "print('run', ui.last_result.run_dir)",
    )

    assert_no_errors(nb)
    text = printed(nb)
    assert "mode foreground" in text
    assert f"cache {colab['models']}" in text
    assert f"Runs go to {colab['runs']} (Google Drive)" in text
    (run,) = colab["runs"].iterdir()
    assert f"run {run}" in text
    assert read_run(run)["status"] == "done" and read_run(run)["iteration"] == ITERATIONS
    calls = [json.loads(line)[0] for line in colab["log"].read_text().splitlines()]
    assert calls[:2] == ["output.enable_custom_widget_manager", "drive.mount"]
    # The run cell ran the loop in the foreground, so the export cell found it done.
    assert sum("image/gif" in out.get("data", {}) for out in outputs(nb)) == 1


def test_a_run_cut_by_a_disconnect_continues_to_the_same_bytes(
    tmp_path, colab, kernel_env, tiny_models
):
    cells = code_cells(read("generate.ipynb"))
    setup, form, panel, resume_cell = cells[0], cells[1], cells[2], cells[3]
    panel = f"{form}\n{panel}"
    long_run = (
        "ui.fields['iterations'].value = 40\n"
        "ui.fields['snapshots'].value = 'every:5,last'\n"
        "ui.fields['seed'].value = '5'\n"
        "ui.run()"
    )
    env = {**os.environ, "VQCLIP_ITERATIONS": "40"}
    first = Kernel(env, cwd=str(tmp_path))
    try:
        first.output(setup)
        first.output(panel)
        first.execute(long_run)  # runs in the foreground; the test pulls the plug mid-run
        deadline = time.monotonic() + 120
        while not list(colab["runs"].glob("*/snapshots/000010.png")):
            assert time.monotonic() < deadline, "the run never reached iteration 10"
            time.sleep(0.05)
    finally:
        first.manager.shutdown_kernel(now=True)  # a disconnect: the VM's process is gone
        first.client.stop_channels()
    (run,) = colab["runs"].iterdir()
    assert read_run(run)["status"] == "running"  # cut, not stopped

    second = Kernel(env, cwd=str(tmp_path))
    try:
        second.output(setup)
        second.output(panel)
        said = second.output(resume_cell, timeout=180)
        status = second.output("print(ui.last_result.status, ui.last_result.iteration)")
    finally:
        second.close()
    assert f"Continuing {run}" in said
    assert status.split() == ["done", "40"]

    whole = generate(
        RunConfig.from_dict(read_run(run)["config"]).replace(
            out=str(tmp_path / "whole"), name="whole"
        ),
        tiny_models,
        progress=False,
    )
    assert content_bytes(run / "final.png") == content_bytes(whole.final)
    assert [i for i, _ in list_snapshots(run)] == [*range(5, 41, 5)]


def test_on_colab_sweep_and_animate_use_drive_and_colab_downloads(
    tmp_path, colab, kernel_env, tiny_models
):
    nb = run_all("sweep.ipynb", tmp_path, kernel_env)
    assert_no_errors(nb)
    folder = colab["runs"] / "oregon"
    assert (folder / "ranking.json").is_file() and (folder / "contact_sheet.png").is_file()

    config = RunConfig(prompt="a lighthouse", size=[32, 32], cutn=2, iterations=3, seed=1,
                       snapshots="1,last", out=str(colab["runs"]))  # fmt: skip
    run = generate(config, tiny_models, progress=False).run_dir  # the newest run on Drive
    nb = run_all("animate.ipynb", tmp_path, kernel_env)
    assert_no_errors(nb)
    assert "Tick DOWNLOAD" in printed(nb)  # downloads are opt-in
    assert "files.download" not in colab["log"].read_text()
    nb = run_all(
        "animate.ipynb", tmp_path, kernel_env, edit={"DOWNLOAD = False": "DOWNLOAD = True"}
    )
    assert_no_errors(nb)
    downloads = [
        Path(line[1]).name
        for line in map(json.loads, colab["log"].read_text().splitlines())
        if line[0] == "files.download"
    ]
    assert downloads == ["animation.gif", "animation.mp4", "strip_1_3.png"]
    assert (run / "animation.gif").is_file()


def noisy_photo(path: Path, side: int = 1100) -> Path:
    """A photo-sized PNG of noise: incompressible, so over 3 MB (Colab's FileUpload loses it)."""
    import numpy as np

    pixels = np.random.default_rng(0).integers(0, 256, (side, side, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    assert path.stat().st_size > 3 * 2**20
    return path


@pytest.mark.parametrize("drive", ["decline", "timeout"])
def test_run_all_on_colab_paints_the_form_without_drive_and_with_an_uploaded_photo(
    tmp_path, colab, kernel_env, monkeypatch, drive
):
    """Drive declined or timed out: one line, runs on the VM's disk, Run all goes on and
    paints what the form says. INIT_IMAGE "upload": Colab's upload dialog brings a 3+ MB
    photo (declined case) or nothing (the dialog closed, timeout case), which is said."""
    picked = tmp_path / "picked"
    picked.mkdir()
    photo = noisy_photo(picked / "my photo.png") if drive == "decline" else None
    monkeypatch.setenv("FAKE_COLAB_DRIVE", drive)
    monkeypatch.setenv("FAKE_COLAB_UPLOAD", str(picked))
    form = {
        'PROMPT = "Oregon 💚"': 'PROMPT = "a heptagonal stop sign"',
        'STYLE = "painting"': 'STYLE = "watercolor"' if drive == "decline" else 'STYLE = "none"',
        'SEED = ""': 'SEED = "42"',
        'SNAPSHOTS = "pow2,every:50,last"': 'SNAPSHOTS = "2,last"',
        'INIT_IMAGE = ""': 'INIT_IMAGE = "upload"',
    }
    # The timeout case also skips the resume cell: the Run cell must not need it.
    skip = "newest_cut_run" if drive == "timeout" else ""
    nb = run_all("generate.ipynb", tmp_path, kernel_env, edit=form, skip=skip)

    assert_no_errors(nb)
    text = printed(nb)
    said = [line for line in text.splitlines() if "Google Drive is not mounted" in line]
    assert len(said) == 1 and "this VM's disk" in said[0], text
    assert "Runs go to runs (this machine's disk)" in text
    (run,) = (tmp_path / "runs").glob("*/run.json")
    config = read_run(run.parent)["config"]
    assert read_run(run.parent)["status"] == "done"
    expected = "a heptagonal stop sign" + (" watercolor" if drive == "decline" else "")
    assert (config["prompt"], config["seed"], config["snapshots"]) == (expected, 42, "2,last")
    if photo is None:
        assert "Nothing was uploaded (the dialog was closed)" in text
        assert config["init_image"] is None
    else:
        init = Path(config["init_image"])
        assert init.parent == tmp_path / "runs" / "inputs"
        assert init.read_bytes() == photo.read_bytes()
        assert "is the init image" in text


def test_a_cut_run_that_reached_its_total_is_marked_done_not_resumed(tmp_path, tiny_models, capsys):
    from vqclip.colab import newest_cut_run
    from vqclip.state import update_run

    config = RunConfig(prompt="a unicorn", size=[32, 32], cutn=2, iterations=3, seed=1,
                       snapshots="last", out=str(tmp_path))  # fmt: skip
    finished = generate(config, tiny_models, progress=False).run_dir
    update_run(finished, status="running")  # cut after its last step, before "done"
    cut = generate(config.replace(iterations=4), tiny_models, progress=False).run_dir
    update_run(cut, status="running", iteration=2)  # cut half-way
    assert newest_cut_run(tmp_path) == cut
    assert "was cut after its last step (3): marked done" in capsys.readouterr().out
    assert read_run(finished)["status"] == "done"
    assert newest_cut_run(tmp_path) == cut and capsys.readouterr().out == ""


def test_a_changed_sweep_under_the_same_name_goes_to_a_new_folder(tmp_path, capsys):
    from vqclip.ui.sweep_tab import named_sweep_folder

    base = RunConfig(prompt="x", size=[32, 32], iterations=2, snapshots="last", out=str(tmp_path))
    first = named_sweep_folder(base, ["Oregon 💚"], ["painting"], [1, 2], "oregon")
    assert first == tmp_path / "oregon"
    again = named_sweep_folder(base, ["Oregon 💚"], ["painting"], [1, 2], "oregon")
    assert again == first and "Continuing the sweep" in capsys.readouterr().out
    for change in (
        (["a unicorn"], ["painting"], [1, 2]),
        (["Oregon 💚"], ["watercolor"], [1, 2]),
        (["Oregon 💚"], ["painting"], [3]),
    ):
        other = named_sweep_folder(base, *change, "oregon")
        assert other != first and other.name.startswith("oregon-")
        assert "has another idea, styles, seeds or settings" in capsys.readouterr().out
        assert json.loads((other / "sweep.json").read_text())["prompts"] == change[0]
    longer = named_sweep_folder(
        base.replace(iterations=5), ["Oregon 💚"], ["painting"], [1, 2], "oregon"
    )
    assert longer not in (first,) and longer.name == "oregon-5"
    record = json.loads((first / "sweep.json").read_text())
    assert (record["prompts"], record["styles"], record["seeds"]) == (
        ["Oregon 💚"],
        ["painting"],
        [1, 2],
    )


def test_animate_finds_sweep_candidates_too(tmp_path, tiny_models):
    from vqclip.colab import find_runs
    from vqclip.sweep import run_sweep, start_sweep

    config = RunConfig(prompt="a unicorn", size=[32, 32], cutn=2, iterations=2, seed=1,
                       snapshots="last", out=str(tmp_path))  # fmt: skip
    single = generate(config, tiny_models, progress=False).run_dir
    time.sleep(0.05)
    folder = start_sweep(config.replace(seed=None), ["a hedgehog"], ["painting"], [1], "s")
    run_sweep(folder, tiny_models, progress=False)
    found = find_runs(tmp_path)
    assert len(found) == 2 and found[1] == single
    assert found[0].parent == folder / "runs"  # the candidate, made last, comes first


def test_the_set_up_cell_of_an_unpublished_copy_says_how_to_install_instead_of_pip(
    monkeypatch, capsys
):
    import importlib.util
    import subprocess

    # As in a copy made before scripts/release.sh wrote the public repository into it.
    setup = re.sub(
        r'REPO = "[^"]*"',
        'REPO = "https://github.com/OWNER/vqclip"',
        code_cells(read("generate.ipynb"))[0],
    )
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "vqclip" else real(name, *a)
    )
    ran = []
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: ran.append(a))
    monkeypatch.setattr(shutil, "which", lambda name: None)  # a CPU runtime
    with pytest.raises(SystemExit) as stop:
        exec(setup, {})
    message = str(stop.value)
    assert "unpublished" in message and "pip install -e" in message and "fork" in message
    assert "\n" not in message and ran == []  # one line, and pip never ran


def test_a_photo_by_url_reaches_the_settings_and_a_bad_one_is_said(tmp_path, capsys):
    """INIT_IMAGE as an https address (here a local server): the photo is kept by content
    under runs/inputs; a missing file or a page that is no picture is said in one line."""
    import functools
    import threading
    from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

    from vqclip.colab import Setup, form_settings

    served = tmp_path / "site"
    served.mkdir()
    photo = noisy_photo(served / "photo.png")
    (served / "page.html").write_text("<html>not a picture</html>")
    handler = functools.partial(SimpleHTTPRequestHandler, directory=str(served))
    handler.log_message = lambda *args: None
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    env = Setup(tmp_path / "runs", None, "CPU", {"out": str(tmp_path / "runs")})
    try:
        settings = form_settings(env, "a unicorn", init_image=f"{base}/photo.png")
        kept = Path(settings["init_image"])
        assert kept.parent == tmp_path / "runs" / "inputs"
        assert kept.read_bytes() == photo.read_bytes()
        assert "photo.png (3.5 MB) is the init image" in capsys.readouterr().out
        for page, words in (("missing.png", "Could not fetch"), ("page.html", "not a picture")):
            settings = form_settings(env, "a unicorn", init_image=f"{base}/{page}")
            assert "init_image" not in settings
            said = capsys.readouterr().out
            assert words in said and said.count("\n") == 1, said
    finally:
        server.shutdown()
    assert form_settings(env, "Oregon 💚", style="none")["prompt"] == "Oregon 💚"
    assert form_settings(env, "Oregon 💚", style="watercolor", seed="7", size="96x64") == {
        "out": str(tmp_path / "runs"), "prompt": "Oregon 💚 watercolor", "seed": 7,
        "size": [96, 64],
    }  # fmt: skip
    with pytest.raises(ValueError, match="SIZE must be 'auto'"):
        form_settings(env, "x", size="big")
    # the form's CLIP_MODEL takes typed input: an ensemble reaches the settings as typed
    ensemble = form_settings(env, "x", clip_model=" ViT-B/32:1,ViT-B/16:0.5 ")
    assert RunConfig(**ensemble).clip_model == "ViT-B/32:1,ViT-B/16:0.5"
    (form,) = [c for c in code_cells(read("generate.ipynb")) if "CLIP_MODEL =" in c]
    assert re.search(r'CLIP_MODEL = .*# @param \[.*"ViT-B/32".*\] \{allow-input: true\}', form)


MOTION_EDITS = {  # three short frames, the story's change at frame 2
    "FRAMES = 48": "FRAMES = 3",
    "STEPS_PER_FRAME = 10": "STEPS_PER_FRAME = 2",
    "FIRST_STEPS = 50": "FIRST_STEPS = 2",
    '"24: a forest in the fog"': '"2: a forest in the fog"',
}


def test_run_all_of_motion_locally_animates_in_the_background_and_shows_it(tmp_path, kernel_env):
    wait = "ui.runner.join(240)\nprint('ended:', ui.status.value)"
    nb = run_all("motion.ipynb", tmp_path, kernel_env, edit=MOTION_EDITS, extra=wait)

    assert_no_errors(nb)
    text = printed(nb)
    assert "3 frames of 2 steps at 12 fps" in text and "nothing to resume" in text
    assert "ended: " in text and "animation done, 3 frames" in text
    (anim,) = (tmp_path / "runs").iterdir()
    record = json.loads((anim / "animation.json").read_text())
    assert record["status"] == "done" and record["frame"] == 3
    assert record["config"]["timeline"] == ["2: a forest in the fog"]
    assert len(list((anim / "frames").glob("*.png"))) == 3
    assert (anim / "animation.gif").is_file() and (anim / "animation.mp4").is_file()
    # the display cell did not wait for the background animation: it said so, or showed it
    shown = any("image/gif" in out.get("data", {}) for out in outputs(nb))
    assert shown or "still going" in text


def test_an_animation_cut_by_a_disconnect_continues_to_the_same_frames_on_colab(
    tmp_path, colab, kernel_env, tiny_models
):
    from vqclip.motion import MotionConfig, animate

    cells = code_cells(read("motion.ipynb"))
    setup, form, panel = cells[0], cells[1], cells[2]
    edits = {**MOTION_EDITS, "FRAMES = 48": "FRAMES = 6"}
    for old, new in edits.items():
        form = form.replace(old, new)
    first = Kernel(dict(os.environ), cwd=str(tmp_path))
    try:
        first.output(setup)
        first.output(f"{form}\n{panel}")
        first.execute("ui.motion_box.animate()")  # foreground, as on Colab: pulled mid-way
        deadline = time.monotonic() + 120
        while not list(colab["runs"].glob("*/frames/000001.png")):
            assert time.monotonic() < deadline, "the animation never reached frame 1"
            time.sleep(0.05)
    finally:
        first.manager.shutdown_kernel(now=True)  # a disconnect: the VM's process is gone
        first.client.stop_channels()
    (anim,) = colab["runs"].iterdir()
    record = json.loads((anim / "animation.json").read_text())
    assert record["status"] == "running" and record["frame"] < 6  # cut, not stopped

    nb = run_all("motion.ipynb", tmp_path, kernel_env, edit=edits)
    assert_no_errors(nb)
    text = printed(nb)
    assert f"Continuing {anim}" in text and "Not started" not in text
    assert sum("image/gif" in out.get("data", {}) for out in outputs(nb)) == 1
    assert [p.name for p in colab["runs"].iterdir()] == [anim.name]  # nothing new began
    record = json.loads((anim / "animation.json").read_text())
    assert record["status"] == "done" and record["frame"] == 6

    whole = animate(
        RunConfig.from_dict(record["config"]),
        MotionConfig.from_dict(record["motion"]),
        tiny_models,
        out=tmp_path / "whole",
    )
    for frame in whole:
        assert content_bytes(anim / "frames" / frame.path.name) == content_bytes(frame.path)
