"""The queue's web page: add from a form (checked like the CLI), token, thumbnails; in a browser."""

from __future__ import annotations

import asyncio
import html
import importlib.util
import logging
import os
import random
import socket
import sqlite3
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from http.cookiejar import CookieJar
from pathlib import Path

import pytest
from conftest import skip_unless_required

from vqclip.cli import main
from vqclip.queue import JobQueue
from vqclip.queue.net import addresses, check_binding
from vqclip.queue.web import MAX_BODY_BYTES, form_config, make_app
from vqclip.queue.worker import work

CHROMIUM = os.environ.get("VQCLIP_CHROMIUM", "/usr/bin/chromium")


@pytest.fixture
def queue(tmp_path):
    return JobQueue(tmp_path / "runs" / "queue.sqlite")


@pytest.fixture
def defaults(tiny_config):
    return tiny_config.replace(iterations=2, cutn=2, size=[32, 32], snapshots="last")


def serve(queue, defaults, token=None, hosts=None) -> Iterator[str]:
    """The page on a free 127.0.0.1 port, in a thread with its own event loop; its base URL."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    loop = asyncio.new_event_loop()
    started = threading.Event()

    def run() -> None:
        asyncio.set_event_loop(loop)
        app = make_app(queue, defaults, token, hosts)
        server = app.listen(port, address="127.0.0.1", max_body_size=MAX_BODY_BYTES)
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


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None


def browser(follow: bool = True) -> urllib.request.OpenerDirector:
    """A client that keeps cookies, as a browser does (the XSRF and token cookies)."""
    cookies = urllib.request.HTTPCookieProcessor(CookieJar())
    return urllib.request.build_opener(cookies, *([] if follow else [_NoRedirect]))


def fetch(client, url: str, data: bytes | None = None, headers=None) -> tuple[int, str]:
    request = urllib.request.Request(url, data=data, headers=headers or {})
    try:
        with client.open(request, timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def xsrf(client) -> str:
    """The XSRF token the page set in the client's cookie (the value its forms carry)."""
    (cookie,) = [c for c in client.handlers if isinstance(c, urllib.request.HTTPCookieProcessor)]
    return next((c.value for c in cookie.cookiejar if c.name == "_xsrf"), "")


def post(url: str, client=None, **form: str) -> tuple[int, str]:
    """Open the page as a browser would (same query: the token), then submit its form."""
    client = client or browser()
    parts = urllib.parse.urlsplit(url)
    fetch(client, urllib.parse.urlunsplit((*parts[:2], "/", parts.query, "")))
    data = urllib.parse.urlencode({"_xsrf": xsrf(client), **form}).encode()
    return fetch(client, url, data)


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
        ({"prompt": "a cat", "iterations": "500000"}, "iterations must be at most 100,000"),
        ({"prompt": "a cat", "width": "-5"}, "size must be two positive whole numbers"),
        ({"prompt": "fog:1x"}, "looks like a weight"),
    ],
)
def test_bad_input_is_refused_with_the_cli_message_and_queues_nothing(page, queue, form, says):
    code, body = post(f"{page}/add", **form)
    assert code == 400 and says in html.unescape(body)
    assert queue.jobs() == []


def test_the_form_names_no_path(defaults):
    config = form_config(defaults, {"prompt": "a cat", "out": "/etc", "init_image": "/etc/passwd"})
    assert config.out == defaults.out and config.init_image is None


def test_a_job_whose_prompt_is_markup_is_listed_as_text(page, queue, defaults):
    attacks = ['<script>alert("x")</script>', '<img src=x onerror="alert(1)">', '"><b>bold</b>']
    for prompt in attacks:
        queue.add(defaults.replace(prompt=prompt))
    code, body = post(f"{page}/add", prompt='<svg onload="alert(2)">')
    assert code == 200 and len(queue.jobs()) == 4
    for shown in (body, fetch(browser(), f"{page}/jobs")[1]):
        for prompt in [*attacks, '<svg onload="alert(2)">']:
            assert prompt not in shown and html.escape(prompt) in shown
    assert "<script>alert" not in body and "<img src=x" not in body


def test_a_token_guards_every_request(queue, defaults):
    for base in serve(queue, defaults, token="s3cret"):
        for path in ("/", "/jobs", "/thumb/1", "/image/1", "/nothing"):
            assert fetch(browser(), base + path)[0] == 403
        assert post(f"{base}/add?token=wrong", prompt="a cat")[0] == 403
        code, body = post(f"{base}/add?token=s3cret", prompt="a cat")
        assert code == 200 and "Queued as job 1" in body
        assert "s3cret" not in body  # the token lives in a cookie, not in the page's links
    assert check_binding("127.0.0.1", None) is None
    assert check_binding("0.0.0.0", "mine") == "mine"
    assert len(check_binding("0.0.0.0", None)) >= 16


def test_the_token_from_the_address_becomes_a_cookie_and_leaves_the_address(queue, defaults):
    token = "a+b&c ü"
    for base in serve(queue, defaults, token=token):
        (link,) = addresses("127.0.0.1", int(base.rsplit(":", 1)[1]), token)
        assert link.endswith("/?token=a%2Bb%26c%20%C3%BC")  # what serve prints
        client = browser()
        with client.open(link, timeout=10) as response:  # follows the redirect
            assert response.status == 200 and response.url == base + "/"
        assert fetch(client, base + "/jobs")[0] == 200  # the cookie alone opens it now
        code, _ = post(base + "/add", client, prompt="a cat")  # and posts
        assert code == 200 and len(queue.jobs()) == 1
        assert (
            fetch(
                browser(), base + "/", headers={"X-Vqclip-Token": token.encode().decode("latin-1")}
            )[0]
            == 200
        )
        assert fetch(browser(), base + "/", headers={"X-Vqclip-Token": "nope"})[0] == 403


def test_a_form_from_another_site_is_refused(page, queue):
    # No XSRF token: what another page in the same browser can send.
    data = urllib.parse.urlencode({"prompt": "a cat", "iterations": "999"}).encode()
    assert fetch(browser(), f"{page}/add", data)[0] == 403
    client = browser()
    fetch(client, page + "/")
    token = xsrf(client)
    # Even with a stolen-looking token, a browser's cross-site markers are refused.
    for headers in ({"Origin": "http://attacker.example"}, {"Sec-Fetch-Site": "cross-site"}):
        body = urllib.parse.urlencode({"_xsrf": token, "prompt": "a cat"}).encode()
        assert fetch(client, f"{page}/add", body, headers)[0] == 403
    for action in ("cancel", "retry", "remove"):
        assert fetch(browser(), f"{page}/job/1/{action}", b"")[0] == 403
    assert queue.jobs() == []


def test_an_unknown_host_is_refused(page):
    """DNS rebinding: attacker.example resolved to 127.0.0.1 still says Host: attacker.example."""
    code, body = fetch(browser(), page + "/", headers={"Host": "attacker.example"})
    assert code == 403 and "unknown host" in body.lower()
    assert fetch(browser(), page + "/", headers={"Host": "localhost:1"})[0] == 200


def test_headers_forbid_framing_and_foreign_scripts(page):
    with urllib.request.urlopen(page + "/", timeout=10) as response:
        assert response.headers["X-Frame-Options"] == "DENY"
        policy = response.headers["Content-Security-Policy"]
        assert "frame-ancestors 'none'" in policy and "script-src 'nonce-" in policy
        body = response.read().decode()
    nonce = policy.split("script-src 'nonce-")[1].split("'")[0]
    assert f'<script nonce="{nonce}">' in body


def test_post_redirects_so_a_reload_adds_nothing_and_the_address_still_opens(page, queue):
    client = browser(follow=False)
    fetch(client, page + "/")
    data = urllib.parse.urlencode({"_xsrf": xsrf(client), "prompt": "a unicorn"}).encode()
    code, _ = fetch(client, page + "/add", data)
    assert code == 303
    for _ in range(2):  # reload the page after adding, then open /add itself
        assert fetch(client, page + "/?added=1")[0] == 200
        assert fetch(client, page + "/add")[0] == 303  # to the page, never 405
    assert len(queue.jobs()) == 1
    request = urllib.request.Request(page + "/", method="HEAD")
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status == 200 and response.read() == b""


def test_a_huge_body_is_refused_before_it_is_read(page, queue):
    host, port = page.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as conn:
        conn.sendall(
            b"POST /add HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"Content-Type: application/x-www-form-urlencoded\r\n"
            b"Content-Length: 100000000\r\n\r\n"
        )  # and no body: the answer comes without waiting for it
        answer = conn.recv(1000)
    assert answer.startswith(b"HTTP/1.1 400")
    assert queue.jobs() == []


def test_odd_requests_get_4xx_not_500(queue, defaults):
    for base in serve(queue, defaults, token="s3cret"):
        odd = [
            ("/thumb/1234567890123456789012345?token=s3cret", 404),  # 25 digits
            ("/image/99999999999999999?token=s3cret", 404),
            ("/?token=%C3%BC", 403),  # non-ASCII token
            ("/?token=%FF", 400),  # not UTF-8
            ("/job/1/retry?token=s3cret", 200),  # a GET of an action: the page
            ("/thumb/1/../../etc/passwd?token=s3cret", 404),
        ]
        for path, expected in odd:
            assert fetch(browser(), base + path)[0] == expected, path
        code = fetch(
            browser(), base + "/", headers={"X-Vqclip-Token": "ü".encode().decode("latin-1")}
        )[0]
        assert code == 403


def test_the_token_never_reaches_the_log(queue, defaults, caplog):
    token = "s3cret+tok&en"
    quoted = urllib.parse.quote(token, safe="")
    with caplog.at_level(logging.DEBUG):
        for base in serve(queue, defaults, token=token):
            for path in ("/", "/nothing", "/thumb/7", "/add"):
                fetch(browser(), f"{base}{path}?token={quoted}")
                fetch(browser(), f"{base}{path}?token={quoted}", b"prompt=x")
            host, port = base.removeprefix("http://").split(":")
            with socket.create_connection((host, int(port)), timeout=10) as conn:
                conn.sendall(
                    f"GET /?token={quoted} HTTP/1.1\r\nX-Vqclip-Token: {token}\r\nbad header\r\n\r\n".encode()
                )
                conn.recv(1000)
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "/nothing?token=***" in logged  # the requests were logged, the token was not
    assert token not in logged and quoted not in logged and "s3cret" not in logged


def test_addresses_for_every_interface_are_ones_a_phone_can_open():
    links = addresses("0.0.0.0", 8765, "a+b&c")
    assert links and all("0.0.0.0" not in link for link in links)
    assert all(link.endswith(":8765/?token=a%2Bb%26c") for link in links)
    assert addresses("127.0.0.1", 80, None) == ["http://127.0.0.1:80/"]


def test_cancel_retry_and_remove_from_the_page(page, queue, defaults):
    first, second = queue.add(defaults), queue.add(defaults)
    queue.update(second, status="failed", error="init image <gone>")
    client = browser()
    code, body = fetch(client, page + "/")
    assert 'data-status="failed"' in body and "init image &lt;gone&gt;" in body

    def act(job, action):
        data = urllib.parse.urlencode({"_xsrf": xsrf(client)}).encode()
        return fetch(client, f"{page}/job/{job}/{action}", data)

    code, body = act(first, "cancel")
    assert code == 200 and f"Job {first} cancelled" in body
    assert queue.get(first).status == "failed"
    assert act(second, "retry")[0] == 200 and queue.get(second).status == "queued"
    assert queue.get(second).error is None
    code, body = act(second, "retry")  # not failed now
    assert code == 409 and "retried" in body
    assert act(first, "remove")[0] == 200 and [j.id for j in queue.jobs()] == [second]
    assert act(12345, "cancel")[0] == 409


def test_pictures_come_only_from_the_queue_folder(page, queue, defaults, tmp_path):
    job = queue.add(defaults)
    work(queue, progress=False, say=lambda _: None)
    body = fetch(browser(), page + "/")[1]
    assert f'<a href="/image/{job}"><img' in body and f'src="/thumb/{job}"' in body
    for kind in ("thumb", "image"):
        with urllib.request.urlopen(f"{page}/{kind}/{job}", timeout=10) as response:
            assert response.read()[:8] == b"\x89PNG\r\n\x1a\n"
    outside = tmp_path / "elsewhere"
    (outside / "run").mkdir(parents=True)
    (outside / "run" / "final.png").write_bytes(
        Path(queue.get(job).run_dir, "final.png").read_bytes()
    )
    queue.update(job, run_dir=str(outside / "run"))  # a record pointing outside the folder
    for kind in ("thumb", "image"):
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(f"{page}/{kind}/{job}", timeout=10)
        assert refused.value.code == 404


def test_a_relative_run_folder_is_found_from_the_queue_folder(page, queue, defaults, monkeypatch):
    job = queue.add(defaults)
    work(queue, progress=False, say=lambda _: None)
    run = Path(queue.get(job).run_dir).resolve()
    with sqlite3.connect(queue.path) as db:  # the queue keeps it relative to its own folder
        (stored,) = db.execute("SELECT run_dir FROM jobs WHERE id = ?", (job,)).fetchone()
    assert not Path(stored).is_absolute() and (queue.path.parent / stored).resolve() == run
    monkeypatch.chdir(run.parents[2])  # serve from elsewhere
    with urllib.request.urlopen(f"{page}/thumb/{job}", timeout=10) as response:
        assert response.status == 200


def test_serve_refuses_a_bad_port_or_a_mistyped_queue(queue, defaults, tmp_path, capsys):
    queue.add(defaults)
    for argv, says in [
        (["--queue", str(tmp_path / "typo.sqlite")], "There is no queue at"),
        (["--queue", str(queue.path), "--port", "70000"], "from 1 to 65535"),
        (["--queue", str(queue.path), "--port", "0"], "from 1 to 65535"),
        (["--queue", str(queue.path), "--iterations", "0"], "iterations must be"),
    ]:
        assert main(["queue", "serve", *argv]) == 2
        err = capsys.readouterr().err
        assert says in err and "Traceback" not in err
    assert not (tmp_path / "typo.sqlite").exists()
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert main(["queue", "serve", "--queue", str(queue.path), "--port", str(port)]) == 2
        assert "choose another with --port" in capsys.readouterr().err


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


def _raw(base: str, request: bytes) -> int:
    """Send bytes as they are (any method, header or path) and read the status; 0 when the
    server closes the connection without an answer (Tornado does so on malformed requests)."""
    host, port = base.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as conn:
        conn.sendall(request)
        answer = b""
        while b"\r\n" not in answer:
            chunk = conn.recv(4096)
            if not chunk:
                break
            answer += chunk
    parts = answer.split(b" ", 2)
    return int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0


def test_fuzzed_requests_never_get_a_500_and_never_log_the_token(queue, defaults, caplog):
    """Random methods, paths, headers, cookies, tokens and bodies (loopback, bounded)."""
    rng = random.Random(19)
    token = "tok+en&ü"
    for prompt in ("a cat", "<b>x</b>"):
        queue.add(defaults.replace(prompt=prompt))
    queue.update(2, status="failed", error="boom")

    def junk() -> bytes:
        pool = [b"", b"1", b"0", b"-1", b"9" * 25, b"%00", b"%FF", b"%C3%BC", "ü💚".encode(),
                b"..", b"../..", b"a b", b"\x00", b"\xff\xfe", b"%2e%2e", b"{}", b"[]", b"'\""]  # fmt: skip
        return b"".join(rng.choice(pool) for _ in range(rng.randint(0, 3)))

    paths = [b"/", b"/add", b"/jobs", b"/thumb/", b"/image/", b"/job/1/", b"/job/2/retry",
             b"/job/1/cancel", b"/job/3/remove", b"/nothing/", b"//", b"/thumb/1/", b"*"]  # fmt: skip
    methods = [b"GET", b"HEAD", b"POST", b"PUT", b"DELETE", b"OPTIONS", b"PATCH", b"TRACE", b"FOO"]
    quoted = urllib.parse.quote(token, safe="").encode()
    statuses = []
    with caplog.at_level(logging.DEBUG):
        for base in serve(queue, defaults, token=token):
            client = browser()
            fetch(client, f"{base}/?token={quoted.decode()}")
            good_xsrf = xsrf(client).encode()
            started = time.monotonic()
            for _ in range(400):
                if time.monotonic() - started > 40:
                    break
                path = rng.choice(paths) + junk()
                query = rng.choice(
                    [b"", b"?token=" + quoted, b"?token=" + junk(), b"?added=" + junk()]
                )
                headers = [
                    b"Host: "
                    + rng.choice(
                        [b"127.0.0.1", b"localhost:9", b"attacker.example", b"[::1]", junk()]
                    )
                ]
                if rng.random() < 0.5:
                    headers.append(b"X-Vqclip-Token: " + rng.choice([token.encode(), junk()]))
                if rng.random() < 0.5:
                    headers.append(
                        b"Cookie: _xsrf="
                        + rng.choice([good_xsrf, junk()])
                        + b"; vqclip_token="
                        + junk()
                    )
                if rng.random() < 0.3:
                    headers.append(
                        rng.choice([b"Origin: ", b"Sec-Fetch-Site: ", b"Content-Type: "]) + junk()
                    )
                body = b""
                if rng.random() < 0.5:
                    fields = {b"_xsrf": rng.choice([good_xsrf, junk()]), b"prompt": junk(),
                              b"iterations": junk(), b"width": junk(), b"seed": junk()}  # fmt: skip
                    body = b"&".join(k + b"=" + v for k, v in fields.items() if rng.random() < 0.7)
                    headers.append(b"Content-Length: " + str(len(body)).encode())
                request = (rng.choice(methods) + b" " + path + query + b" HTTP/1.1\r\n"
                           + b"\r\n".join(headers) + b"\r\nConnection: close\r\n\r\n" + body)  # fmt: skip
                statuses.append(_raw(base, request))
            assert fetch(client, base + "/")[0] == 200  # still up, still answering
    assert len(statuses) >= 100 and all(s < 500 for s in statuses), sorted(set(statuses))
    assert {200, 403, 404, 405} <= set(statuses)  # the fuzz reached the handlers
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert token not in logged and quoted.decode() not in logged
