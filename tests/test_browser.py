"""The panel in a real browser: JupyterLab + Debian's Chromium driven by Playwright.

Runs notebooks/generate.ipynb with the tiny models, presses Run, watches the live image change,
presses Stop and checks the gallery against the files. VQCLIP_UPDATE_SCREENSHOT=1 also copies
the screenshot to assets/panel.png (the README's picture).
"""

from __future__ import annotations

import importlib.util
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import skip_unless_required

from vqclip.export import list_snapshots

pytestmark = pytest.mark.browser

ROOT = Path(__file__).parents[1]
CHROMIUM = os.environ.get("VQCLIP_CHROMIUM", "/usr/bin/chromium")
# A GIF in a cell's output area (classic's kernel logo is a data: GIF too).
GIF_OUTPUT = ", ".join(
    f'{area} img[src^="data:image/gif"]' for area in (".output_area", ".jp-OutputArea-output")
)
FLAGS = [  # DESIGN.md section 4; Playwright adds --headless itself
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]


# How to open generate.ipynb, run the cells above its export cell, and run the export cell,
# in each frontend. All are served by one JupyterLab server (Notebook 7 and nbclassic are
# server extensions beside it).
FRONTENDS = {
    "jupyterlab": {
        "module": "jupyterlab",
        "url": "/lab/workspaces/{dir}/tree/{dir}/generate.ipynb",  # a fresh workspace each
        "ready": "window.jupyterapp && window.jupyterapp.shell.currentWidget",
        "run_above": """async () => {
            const panel = window.jupyterapp.shell.currentWidget;
            await panel.context.ready;
            await panel.sessionContext.ready;
            panel.content.activeCellIndex = panel.content.widgets.length - 1;
            await window.jupyterapp.commands.execute("notebook:run-all-above");
        }""",
        "run_last": """async () => {
            const panel = window.jupyterapp.shell.currentWidget;
            panel.content.activeCellIndex = panel.content.widgets.length - 1;
            await window.jupyterapp.commands.execute("notebook:run-cell");
        }""",
    },
    "notebook": {  # Notebook 7
        "module": "notebook",
        "url": "/notebooks/{dir}/generate.ipynb",
        "ready": "window.jupyterapp && window.jupyterapp.shell.currentWidget"
        " && window.jupyterapp.shell.currentWidget.content",
    },
    "nbclassic": {  # the classic Notebook UI
        "module": "nbclassic",
        "url": "/nbclassic/notebooks/{dir}/generate.ipynb",
        # Connected, and the widgets extension has registered its comm target (it loads
        # asynchronously; widgets created before that are lost, in a test that runs too soon).
        "ready": "window.Jupyter && Jupyter.notebook && Jupyter.notebook.kernel"
        " && Jupyter.notebook.kernel.is_connected()"
        " && !!Jupyter.notebook.kernel.comm_manager.targets['jupyter.widget']",
        # The classic widget manager asks the kernel for its widgets once at start, then
        # re-renders every widget output; widgets made before that answer can vanish. A
        # person clicks later than a test: wait for a kernel reply sent after that request.
        "settle": """() => new Promise(resolve => Jupyter.notebook.kernel.comm_info(
            "jupyter.widget", () => setTimeout(resolve, 500)))""",
        "run_above": """() => {
            const n = Jupyter.notebook.ncells();
            Jupyter.notebook.execute_cells([...Array(n - 1).keys()]);
        }""",
        "run_last": "() => Jupyter.notebook.execute_cells([Jupyter.notebook.ncells() - 1])",
    },
}
FRONTENDS["notebook"].update({k: FRONTENDS["jupyterlab"][k] for k in ("run_above", "run_last")})


def _missing(module: str) -> list[str]:
    missing = (
        [] if Path(CHROMIUM).is_file() else [f"chromium ({CHROMIUM}: apt-get install chromium)"]
    )
    for name in ("playwright", "jupyterlab", module):
        if importlib.util.find_spec(name) is None and f"{name} " not in " ".join(missing):
            missing.append(f"{name} (pip install -r requirements-test.txt)")
    return missing


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir) -> Iterator[tuple[str, Path]]:
    """A JupyterLab server on 127.0.0.1 with a token: (base URL with token query, root dir).

    Its config, settings, workspaces and kernelspec live in a temp dir: nothing from the
    user's Jupyter setup leaks in, and the kernel is this very interpreter (CI runs a fresh
    .venv).
    """
    missing = _missing("jupyterlab")
    if missing:
        skip_unless_required("browser test needs " + ", ".join(missing))
    base = tmp_path_factory.mktemp("jupyter")
    work, home = base / "work", base / "home"
    work.mkdir()
    spec = home / "data" / "kernels" / "python3"
    spec.mkdir(parents=True)
    argv = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    spec.joinpath("kernel.json").write_text(
        json.dumps({"argv": argv, "display_name": "Python 3", "language": "python"})
    )
    labconfig = home / "config" / "labconfig"
    labconfig.mkdir(parents=True)
    quiet = {"@jupyterlab/apputils-extension:announcements": True}  # no news pop-up
    labconfig.joinpath("page_config.json").write_text(json.dumps({"disabledExtensions": quiet}))
    env = {
        **os.environ,
        "JUPYTER_PATH": str(home / "data"),
        "JUPYTER_CONFIG_DIR": str(home / "config"),
        "JUPYTERLAB_SETTINGS_DIR": str(home / "settings"),
        "JUPYTERLAB_WORKSPACES_DIR": str(home / "workspaces"),
        "JUPYTER_RUNTIME_DIR": str(home / "runtime"),
        "VQCLIP_TINY_MODELS": str(tiny_model_dir["clip"].parent),
        "VQCLIP_ITERATIONS": "1000",  # a minute or more here: it runs until Stop
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
    }
    env.pop("VQCLIP_AUTORUN", None)
    port, token = _free_port(), secrets.token_hex(16)
    log_path = base / "jupyterlab.log"
    log = open(log_path, "wb")  # noqa: SIM115 - closed below
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "jupyterlab",
            "--no-browser",
            "--allow-root",  # CI runs as root
            "--ip=127.0.0.1",
            f"--port={port}",
            f"--IdentityProvider.token={token}",
            f"--ServerApp.root_dir={work}",
            "--LabApp.expose_app_in_browser=True",
            "--JupyterNotebookApp.expose_app_in_browser=True",
            "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
            "--LabApp.extension_manager=readonly",  # no PyPI queries
        ],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(f"{url}/api/status?token={token}", timeout=2)
                break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    log.flush()
                    pytest.fail(f"JupyterLab did not start:\n{log_path.read_text()}")
                time.sleep(0.3)
        yield url, token, work
    finally:
        server.terminate()
        try:
            server.wait(15)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        log.close()


@pytest.mark.parametrize(
    "frontend,mode",
    [(name, "background") for name in FRONTENDS] + [("jupyterlab", "foreground")],
)
def test_panel_runs_and_stops_in_the_browser(server, frontend: str, mode: str, tmp_path: Path):
    """Run, watch the live image change, Stop: the gallery shows exactly the saved snapshots.

    In the foreground mode (Colab's default) the run goes on inside the Run click's request,
    and the Stop click is handled between steps."""
    missing = _missing(FRONTENDS[frontend]["module"])
    if missing:
        skip_unless_required(f"{frontend} browser test needs " + ", ".join(missing))
    from playwright.sync_api import sync_playwright

    url, token, root = server
    work = root / f"{frontend}-{mode}"
    work.mkdir()
    notebook = (ROOT / "notebooks" / "generate.ipynb").read_text(encoding="utf-8")
    chosen = notebook.replace("panel(**settings)", f'panel(mode=\\"{mode}\\", **settings)')
    chosen = chosen.replace("RUN_NOW = True", "RUN_NOW = False")  # the test clicks Run itself
    assert chosen.count("RUN_NOW = False") == 1 and "mode=" in chosen
    (work / "generate.ipynb").write_text(chosen, encoding="utf-8")
    ui = FRONTENDS[frontend]
    screenshot = os.environ.get("VQCLIP_UPDATE_SCREENSHOT") == "1" and frontend == "jupyterlab"
    with sync_playwright() as p:
        browser = p.chromium.launch_persistent_context(
            str(tmp_path / "profile"),  # a fresh profile
            executable_path=CHROMIUM,
            args=FLAGS,
            headless=True,
            viewport={"width": 1200, "height": 1800},
        )
        page = browser.pages[0] if browser.pages else browser.new_page()
        page.set_default_timeout(60_000)
        console: list[str] = []
        page.on("console", lambda msg: console.append(f"{msg.type}: {msg.text}"))
        try:
            page.goto(url + ui["url"].format(dir=work.name) + f"?token={token}")
            page.wait_for_function(ui["ready"])
            if "settle" in ui:
                page.evaluate(ui["settle"])
            page.evaluate(ui["run_above"])  # the setup and panel cells, as a user would
            page.locator(".vqclip-banner").wait_for()
            assert "tiny random models: noise, not pictures" in page.inner_text(".vqclip-banner")
            live = page.locator("img.vqclip-live")
            seen = [live.get_attribute("src")]

            page.click("button.vqclip-run")
            deadline = time.monotonic() + 60
            enough = 8 if screenshot else 3  # a longer run makes a better README picture
            while len(seen) < enough and time.monotonic() < deadline:
                src = live.get_attribute("src")
                if src != seen[-1]:
                    seen.append(src)
                time.sleep(0.05)
            assert len(seen) >= 3, "the live image did not change twice"
            assert page.locator("img.vqclip-live").count() == 1  # replaced in place
            if screenshot and mode == "foreground":  # mid-run, as on Colab
                page.evaluate("window.jupyterapp.commands.execute('application:toggle-left-area')")
                page.locator(".vqclip-panel").screenshot(
                    path=str(ROOT / "assets" / "panel_foreground.png")
                )

            # Steer it as it goes: new prompts typed into the box, Apply, and the box says
            # from which iteration they are in force.
            page.fill(".vqclip-steer textarea", "a castle:1 | fog:0.2")
            page.click("button.vqclip-steer-apply")
            page.wait_for_function(
                "document.querySelector('.vqclip-steer-status').innerText"
                ".includes('in force from iteration')"
            )

            clicked = time.monotonic()
            page.click("button.vqclip-stop")
            page.wait_for_function(
                "document.querySelector('.vqclip-status').innerText.includes('stopped at')"
            )
            stop_seconds = time.monotonic() - clicked
            (run,) = (work / "runs").iterdir()
            record = json.loads((run / "run.json").read_text())
            assert record["status"] == "stopped" and (run / "state.pt").is_file()
            (line,) = record["config"]["timeline"]
            assert line.endswith(": a castle:1 | fog:0.2")
            saved = [f"it {i}" for i, _ in list_snapshots(run)]
            assert len(saved) >= 2 and saved[-1] == f"it {record['iteration']}"
            page.wait_for_function(
                "document.querySelectorAll('.vqclip-gallery .vqclip-thumb-label').length"
                f" == {len(saved)}"
            )
            labels = page.locator(".vqclip-gallery .vqclip-thumb-label").all_inner_texts()
            assert labels == saved
            assert stop_seconds < 20

            if frontend == "jupyterlab" and mode == "background":
                page.evaluate("window.jupyterapp.commands.execute('application:toggle-left-area')")
                page.locator(".vqclip-panel").screenshot(path=str(tmp_path / "panel.png"))
                if screenshot:
                    shutil.copy(tmp_path / "panel.png", ROOT / "assets" / "panel.png")

            # The export cell picks up the stopped run: a GIF and a strip appear below it.
            page.evaluate(ui["run_last"])
            page.wait_for_selector(GIF_OUTPUT, state="attached")
            assert (run / "animation.gif").is_file() and list(run.glob("strip_*.png"))
        except BaseException:
            # What the page looked like and said: the first thing to read when this fails.
            page.screenshot(path=str(tmp_path / "failure.png"), full_page=True)
            print(f"screenshot: {tmp_path / 'failure.png'}", *console[-40:], sep="\n")
            raise
        finally:
            browser.close()


def test_the_motion_box_animates_in_the_browser(server, tmp_path: Path):
    """notebooks/motion.ipynb in JupyterLab with the panel in Colab's foreground mode: Animate,
    each finished frame replaces the live picture, and the GIF of the frames appears in the
    Motion box when it is done."""
    missing = _missing("jupyterlab")
    if missing:
        skip_unless_required("the motion browser test needs " + ", ".join(missing))
    from playwright.sync_api import sync_playwright

    url, token, root = server
    work = root / "motion"
    work.mkdir()
    notebook = (ROOT / "notebooks" / "motion.ipynb").read_text(encoding="utf-8")
    for old, new in {"FRAMES = 48": "FRAMES = 4", "STEPS_PER_FRAME = 10": "STEPS_PER_FRAME = 2",
                     "FIRST_STEPS = 50": "FIRST_STEPS = 2", '\\"24: a forest': '\\"2: a forest',
                     "ANIMATE_NOW = True": "ANIMATE_NOW = False",
                     "panel(**settings)": 'panel(mode=\\"foreground\\", **settings)'}.items():  # fmt: skip
        assert notebook.count(old) == 1, old
        notebook = notebook.replace(old, new)
    (work / "motion.ipynb").write_text(notebook, encoding="utf-8")
    ui = FRONTENDS["jupyterlab"]
    with sync_playwright() as p:
        browser = p.chromium.launch_persistent_context(
            str(tmp_path / "profile"), executable_path=CHROMIUM, args=FLAGS, headless=True,
            viewport={"width": 1200, "height": 1800},
        )  # fmt: skip
        page = browser.pages[0] if browser.pages else browser.new_page()
        page.set_default_timeout(60_000)
        try:
            address = ui["url"].format(dir=work.name).replace("generate.ipynb", "motion.ipynb")
            page.goto(url + address + f"?token={token}")
            page.wait_for_function(ui["ready"])
            if "settle" in ui:
                page.evaluate(ui["settle"])
            page.evaluate(ui["run_above"])  # set-up, form, panel, resume; Animate not yet
            page.locator(".vqclip-banner").wait_for()
            live = page.locator("img.vqclip-live")
            seen = [live.get_attribute("src")]
            page.click("button.vqclip-animate")
            status = page.locator(".vqclip-status")
            deadline = time.monotonic() + 120
            while "animation done" not in status.inner_text():  # the frames as they finish
                assert time.monotonic() < deadline, status.inner_text()
                src = live.get_attribute("src")
                if src != seen[-1]:
                    seen.append(src)
                time.sleep(0.02)
            seen.append(live.get_attribute("src"))
            assert len(set(seen[1:])) >= 3, "the live picture did not follow the frames"
            (anim,) = (work / "runs").iterdir()
            assert len(list((anim / "frames").glob("*.png"))) == 4
            kind = "src => fetch(src).then(r => r.blob()).then(b => b.type)"
            assert page.evaluate(kind, seen[-1]) == "image/png"
            preview = page.locator("img.vqclip-motion-preview")
            preview.wait_for()
            assert page.evaluate(kind, preview.get_attribute("src")) == "image/gif"
            assert page.evaluate("img => img.naturalWidth", preview.element_handle()) == 64
            assert "4/4" in page.inner_text(".vqclip-progress")
        except BaseException:
            page.screenshot(path=str(tmp_path / "failure.png"), full_page=True)
            print(f"screenshot: {tmp_path / 'failure.png'}")
            raise
        finally:
            browser.close()


# --- the queue's page on a phone ------------------------------------------------------------


def test_the_queue_page_on_a_phone(tmp_path: Path, tiny_config) -> None:
    """Every kind of job at a phone's viewport: the gallery opens the full picture, a failed
    job shows its error and retries, a job added elsewhere appears without a reload, and the
    page's own policy blocks none of its own style or script. VQCLIP_UPDATE_SCREENSHOT=1
    copies the screenshot to assets/queue.png (the README's picture)."""
    missing = [m for m in _missing("playwright") if "jupyterlab" not in m]
    if missing:
        skip_unless_required("browser test needs " + ", ".join(missing))
    import playwright.sync_api as playwright
    from test_queue_web import serve

    from vqclip.queue import JobQueue
    from vqclip.queue.store import worker_name
    from vqclip.queue.web import REFRESH_SECONDS
    from vqclip.queue.worker import work

    defaults = tiny_config.replace(iterations=2, cutn=2, size=[32, 32], snapshots="1,last")
    queue = JobQueue(tmp_path / "runs" / "queue.sqlite")
    for prompt in ("Oregon 💚 painting", "a heptagonal stop sign"):
        queue.add(defaults.replace(prompt=prompt, seed=len(prompt)))
    work(queue, progress=False, say=lambda _: None)  # two finished jobs for the gallery
    done_run = queue.get(1).run_dir
    running = queue.add(defaults.replace(prompt="a hedgehog with the texture of a mango"))
    queue.update(running, status="running", worker=worker_name(), run_dir=done_run)
    queue.beat(worker_name(), {running: 2})  # a live lease: running, not stale
    failed = queue.add(defaults.replace(prompt="<b>CCTV footage</b> of Yoda in a 7-eleven"))
    queue.update(failed, status="failed", error="The init image 'yoda.png' was not found.")
    queue.add(defaults.replace(prompt="Kermit in the matrix"))

    for base in serve(queue, defaults):
        with playwright.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
            try:
                phone = browser.new_page(
                    viewport={"width": 390, "height": 844}, device_scale_factor=2
                )
                console: list[str] = []
                phone.on("console", lambda message, seen=console: seen.append(message.text))
                phone.goto(base)
                assert phone.locator("#running li.job progress").get_attribute("value") == "2"
                assert "iteration 2 of 2" in phone.locator("#running").inner_text()
                error = phone.locator(f"#job-{failed} .error").inner_text()
                assert error == "The init image 'yoda.png' was not found."
                assert "<b>CCTV footage</b>" in phone.locator(f"#job-{failed}").inner_text()
                assert phone.locator("#waiting li.job").count() == 1
                gallery = phone.locator("#done ul.gallery img")
                assert gallery.count() == 2
                phone.wait_for_function(
                    "() => [...document.querySelectorAll('#done img')].every(i => i.naturalWidth > 0)",
                    timeout=10_000,
                )
                # the page's own emoji font, for a browser without one (this Chromium)
                loaded = phone.evaluate(
                    "async () => (await document.fonts.load('16px \"vqclip emoji\"', '💚')).length"
                )
                assert loaded == 1
                shot = tmp_path / "queue.png"
                phone.screenshot(path=str(shot), full_page=True)
                if os.environ.get("VQCLIP_UPDATE_SCREENSHOT") == "1":
                    shutil.copy(shot, ROOT / "assets" / "queue.png")

                with phone.expect_navigation():  # thumbnail -> the full picture
                    phone.click("#job-1 a")
                assert phone.url.endswith("/image/1")
                assert phone.evaluate("document.contentType") == "image/png"
                phone.go_back()

                phone.click(f"#job-{failed} button[value=retry]")  # a POST with its XSRF token
                phone.wait_for_selector(f"text=Job {failed} is queued again.")
                assert queue.get(failed).status == "queued"
                assert phone.url == base + f"/?retry={failed}"  # redirected: reload adds nothing

                later = queue.add(defaults.replace(prompt="Bluer than you"))  # from elsewhere
                phone.wait_for_selector(f"#job-{later}", timeout=(REFRESH_SECONDS + 10) * 1000)
                assert not [m for m in console if "Content Security" in m], console
            finally:
                browser.close()
