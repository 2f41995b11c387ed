"""The notebooks: committed without outputs, and each executed headless with the tiny models."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import imageio.v3 as iio
import nbformat
import pytest
from nbclient import NotebookClient
from PIL import Image

from vqclip.config import RunConfig
from vqclip.export import list_snapshots
from vqclip.observers import generate

NOTEBOOKS = sorted((Path(__file__).parents[1] / "notebooks").glob("*.ipynb"))
ITERATIONS = 6  # the notebooks' runs, cut short by VQCLIP_ITERATIONS


def test_there_are_notebooks():
    assert {p.name for p in NOTEBOOKS} >= {"generate.ipynb", "animate.ipynb"}


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_is_committed_clean(path: Path):
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [], f"{path.name}: a cell has outputs; clear them"
            assert cell.execution_count is None, f"{path.name}: a cell has an execution count"
    assert "widgets" not in nb.metadata, f"{path.name}: saved widget state; clear it"


@pytest.fixture
def kernel(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tiny_model_dir) -> str:
    """A kernelspec for this very interpreter (CI runs a fresh .venv), found first via
    JUPYTER_PATH; the kernel inherits the tiny-model, autorun and one-thread settings."""
    spec = tmp_path / "jupyter" / "kernels" / "vqclip-test"
    spec.mkdir(parents=True)
    argv = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    kernel = {"argv": argv, "display_name": "vqclip test", "language": "python"}
    (spec / "kernel.json").write_text(json.dumps(kernel))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    monkeypatch.setenv("VQCLIP_TINY_MODELS", str(tiny_model_dir["clip"].parent))
    monkeypatch.setenv("VQCLIP_ITERATIONS", str(ITERATIONS))
    monkeypatch.setenv("VQCLIP_AUTORUN", "1")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("MKL_NUM_THREADS", "1")
    return "vqclip-test"


def execute(name: str, workdir: Path, kernel: str) -> nbformat.NotebookNode:
    """Run notebooks/NAME in ``workdir`` (a copy, so the committed file stays clean)."""
    path = workdir / name
    shutil.copy(next(p for p in NOTEBOOKS if p.name == name), path)
    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(
        nb, timeout=180, kernel_name=kernel, resources={"metadata": {"path": str(workdir)}}
    )
    client.execute()
    return nb


def outputs(nb: nbformat.NotebookNode) -> list[dict]:
    return [out for cell in nb.cells if cell.cell_type == "code" for out in cell.outputs]


def test_generate_notebook_runs_the_panel_and_exports(tmp_path: Path, kernel: str):
    nb = execute("generate.ipynb", tmp_path, kernel)

    (run,) = (tmp_path / "runs").iterdir()
    record = json.loads((run / "run.json").read_text())
    assert record["status"] == "done" and record["iteration"] == ITERATIONS
    saved = [i for i, _ in list_snapshots(run)]
    assert saved == [1, 2, 4, ITERATIONS]  # the default schedule: pow2, every:50, last
    with Image.open(run / "animation.gif") as gif:
        assert gif.n_frames == len(saved)
    (strip,) = run.glob("strip_*.png")
    with Image.open(strip) as im:
        assert im.width > im.height > 0
    panel_cell = next(c for c in nb.cells if "panel(" in c.source)
    shown = [out for out in panel_cell.outputs if out["output_type"] == "display_data"]
    assert len(shown) == 1 and "application/vnd.jupyter.widget-view+json" in shown[0]["data"]
    state = json.dumps(nb.metadata["widgets"])  # nbclient keeps the widget state
    assert "tiny random models: noise, not pictures" in state
    kinds = [out.get("output_type") for out in outputs(nb)]
    assert "error" not in kinds
    assert sum("image/gif" in out.get("data", {}) for out in outputs(nb)) == 1


def test_animate_notebook_makes_gif_mp4_and_strip(tmp_path: Path, kernel: str, tiny_models):
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

    nb = execute("animate.ipynb", tmp_path, kernel)

    with Image.open(run / "animation.gif") as gif:
        assert gif.n_frames == 4
    frames = list(iio.imiter(run / "animation.mp4", plugin="FFMPEG"))
    assert len(frames) == 4 + round(1.5 * 8)  # hold the last frame 1.5 s at 8 fps
    assert (run / "strip_0_2_4_5.png").is_file()
    data = [out.get("data", {}) for out in outputs(nb)]
    assert any("image/gif" in d for d in data) and any("image/png" in d for d in data)
    assert any("<video" in d.get("text/html", "") for d in data)
    assert "error" not in [out.get("output_type") for out in outputs(nb)]
