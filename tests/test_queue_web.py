"""The queue's web page: add from a form (checked like the CLI), token, thumbnails; in a browser."""

from __future__ import annotations

import asyncio
import importlib.util
import os
import socket
import threading
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import skip_unless_required

from vqclip.queue import JobQueue
from vqclip.queue.web import check_binding, form_config, make_app
from vqclip.queue.worker import work

CHROMIUM = os.environ.get("VQCLIP_CHROMIUM", "/usr/bin/chromium")


@pytest.fixture
def queue(tmp_path):
    return JobQueue(tmp_path / "runs" / "queue.sqlite")


@pytest.fixture
def defaults(tiny_config):
    return tiny_config.replace(iterations=2, cutn=2, size=[32, 32], snapshots="last")


def serve(queue, defaults, token=None) -> Iterator[str]:
    """The page on a free 127.0.0.1 port, in a thread with its own event loop; its base URL."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    loop = asyncio.new_event_loop()
    started = threading.Event()

    def run() -> None:
        asyncio.set_event_loop(loop)
        server = make_app(queue, defaults, token).listen(port, address="127.0.0.1")
        loop.call_soon(started.set)
        loop.run_forever()
        server.stop()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    assert started.wait(10)
    yield f"http://127.0.0.1:{port}"
    loop.call_soon_threadsafe(loop.stop)
    thread.join(10)


@pytest.fixture
def page(queue, defaults):
    yield from serve(queue, defaults)


def post(url: str, **form: str) -> tuple[int, str]:
    data = urllib.parse.urlencode(form).encode()
    try:
        with urllib.request.urlopen(url, data=data, timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def test_a_prompt_added_from_the_page_is_queued(page, queue):
    code, body = post(f"{page}/add", prompt="Oregon 💚 painting", iterations="3", seed="")
    assert code == 200 and "Queued as job 1" in body
    (job,) = queue.jobs()
    assert job.config.prompt == "Oregon 💚 painting" and job.config.iterations == 3
    assert job.config.seed is None and job.config.size == [32, 32]
    assert "Oregon 💚 painting" in body and 'data-status="queued"' in body


@pytest.mark.parametrize(
    ("form", "says"),
    [
        ({"prompt": ""}, "Nothing to aim for"),
        ({"prompt": "a cat", "iterations": "0"}, "iterations must be a whole number of at least 1"),
        ({"prompt": "a cat", "iterations": "many"}, "iterations must be a whole number"),
        ({"prompt": "a cat", "width": "-5"}, "size must be two positive whole numbers"),
        ({"prompt": "fog:1x"}, "looks like a weight"),
    ],
)
def test_bad_input_is_refused_with_the_cli_message_and_queues_nothing(page, queue, form, says):
    code, body = post(f"{page}/add", **form)
    assert code == 400 and says in body
    assert queue.jobs() == []


def test_the_form_names_no_path(defaults):
    config = form_config(defaults, {"prompt": "a cat", "out": "/etc", "init_image": "/etc/passwd"})
    assert config.out == defaults.out and config.init_image is None


def test_a_token_guards_every_request(queue, defaults):
    for base in serve(queue, defaults, token="s3cret"):
        for path in ("/", "/thumb/1"):
            with pytest.raises(urllib.error.HTTPError) as refused:
                urllib.request.urlopen(base + path, timeout=10)
            assert refused.value.code == 403
        assert post(f"{base}/add?token=wrong", prompt="a cat")[0] == 403
        code, body = post(f"{base}/add?token=s3cret", prompt="a cat")
        assert code == 200 and 'action="/add?token=s3cret"' in body
    assert check_binding("127.0.0.1", None) is None
    assert check_binding("0.0.0.0", "mine") == "mine"
    assert len(check_binding("0.0.0.0", None)) >= 16


def test_thumbnails_come_only_from_the_queue_folder(page, queue, defaults, tmp_path):
    job = queue.add(defaults)
    work(queue, progress=False, say=lambda _: None)
    with urllib.request.urlopen(f"{page}/thumb/{job}", timeout=10) as response:
        assert response.read()[:8] == b"\x89PNG\r\n\x1a\n"
    outside = tmp_path / "elsewhere"
    (outside / "run").mkdir(parents=True)
    (outside / "run" / "final.png").write_bytes(
        Path(queue.get(job).run_dir, "final.png").read_bytes()
    )
    queue.update(job, run_dir=str(outside / "run"))  # a record pointing outside the folder
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(f"{page}/thumb/{job}", timeout=10)
    assert refused.value.code == 404


@pytest.mark.browser
def test_add_from_the_page_in_a_browser_then_see_it_done(page, queue):
    if not Path(CHROMIUM).exists():
        skip_unless_required(f"no chromium at {CHROMIUM} (apt-get install chromium)")
    if importlib.util.find_spec("playwright") is None:
        skip_unless_required("no playwright (pip install -r requirements-test.txt)")
    import playwright.sync_api as playwright

    flags = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic"]  # fmt: skip
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=flags)
        try:
            phone = browser.new_page(viewport={"width": 390, "height": 844})
            phone.goto(page)
            phone.fill("#prompt", "a heptagonal stop sign")
            phone.fill("input[name=iterations]", "2")
            phone.click("#add")
            phone.wait_for_selector("text=Queued as job 1")
            assert phone.get_attribute("li.job", "data-status") == "queued"

            work(queue, once=True, progress=False, say=lambda _: None)

            phone.goto(page)
            item = phone.locator('li.job[data-status="done"]')
            assert item.count() == 1 and "a heptagonal stop sign" in item.inner_text()
            thumb = item.locator("img")
            thumb.wait_for()
            phone.wait_for_function(
                "() => document.querySelector('li.job img').naturalWidth > 0", timeout=10_000
            )
            if os.environ.get("VQCLIP_UPDATE_SCREENSHOT") == "1":
                phone.screenshot(path=str(Path(__file__).parents[1] / "assets" / "queue.png"))
        finally:
            browser.close()
