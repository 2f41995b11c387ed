"""A small web page to feed the queue from a phone: a form to add a prompt, the running jobs
with their progress, the failed ones with their error, the finished ones as a gallery
(thumbnail -> full picture), and buttons to cancel, retry and remove. Served by Tornado.

No other site can drive it. It binds 127.0.0.1 unless told otherwise; on any other address
every request must carry the token (``?token=`` in the printed address, which the page then
keeps in an HttpOnly cookie, or the ``X-Vqclip-Token`` header). Every state-changing request
is a POST that carries Tornado's XSRF token, and answers with a redirect (reloading never
adds a job twice). It answers only to its own names and addresses (a DNS-rebinding guard),
forbids framing, refuses a body over MAX_BODY_BYTES before reading it, and never writes the
token to its log. A request names nothing on disk: settings are checked exactly as the
command line checks them, and pictures are looked up by job number, inside the queue's
folder only.
"""

from __future__ import annotations

import asyncio
import hashlib
import html
import io
import logging
import secrets
import socket
import urllib.parse
from pathlib import Path
from typing import Any

import tornado.httpserver
import tornado.web
from PIL import Image, ImageOps

from vqclip.config import ConfigError, RunConfig
from vqclip.export import EMOJI_FONT, list_snapshots
from vqclip.queue.net import bind, hide_token, log_request, page_hosts, redact
from vqclip.queue.store import MAX_QUEUED_ITERATIONS, Job, JobQueue, QueueError
from vqclip.state import FINAL_FILE

MAX_BODY_BYTES = 256 * 1024  # a 10,000-character prompt of emoji is ~120 KB url-encoded
TOKEN_COOKIE = "vqclip_token"
TOKEN_HEADER = "X-Vqclip-Token"
REFRESH_SECONDS = 5
THUMB_PX = 320
# What the page lets a phone set: numbers and text only, never a path.
_FORM_NUMBERS = {"iterations": int, "width": int, "height": int, "seed": int}
_ACTIONS = ("cancel", "retry", "remove")
_JOB_ID = r"([0-9]{1,18})"  # fits SQLite's 64-bit integer; longer numbers are no job

_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<link rel="icon" href="data:,">
<title>vqclip queue</title>
<style nonce="{nonce}">
 @font-face {{ font-family: "vqclip emoji"; unicode-range: U+200D, U+2600-27BF, U+2B00-2BFF, U+FE0F, U+1F000-1FAFF;
   src: local("Apple Color Emoji"), local("Segoe UI Emoji"), local("Noto Color Emoji"),
   local("NotoColorEmoji"), url(/emoji.ttf); }}
 body {{ font-family: "vqclip emoji", system-ui, sans-serif;
   margin: 0 auto; max-width: 40rem; padding: 0.8rem; }}
 textarea {{ font-family: inherit; }}
 form.add {{ display: grid; gap: 0.5rem; }}
 textarea, input, button {{ font-size: 1rem; padding: 0.4rem; }}
 .row {{ display: flex; gap: 0.5rem; }} .row label {{ flex: 1; }}
 .row input {{ width: 100%; box-sizing: border-box; }}
 .error {{ color: #b00020; white-space: pre-wrap; overflow-wrap: anywhere; }}
 .ok {{ color: #1b5e20; }}
 h2 {{ font-size: 1.1rem; margin: 1rem 0 0.3rem; }}
 ul {{ list-style: none; padding: 0; margin: 0; }}
 li.job {{ border-bottom: 1px solid #ddd; padding: 0.5rem 0; overflow-wrap: anywhere; }}
 .status {{ font-size: 0.8rem; color: #555; }}
 progress {{ width: 100%; height: 0.8rem; }}
 .buttons {{ display: flex; gap: 0.4rem; margin-top: 0.3rem; }}
 .buttons form {{ margin: 0; }} .buttons button {{ font-size: 0.85rem; padding: 0.3rem 0.7rem; }}
 ul.gallery {{ display: grid; grid-template-columns: repeat(auto-fill, minmax(9rem, 1fr)); gap: 0.6rem; }}
 ul.gallery li.job {{ border: 0; padding: 0; }}
 ul.gallery img {{ width: 100%; aspect-ratio: 1; object-fit: cover; border-radius: 0.3rem; display: block; }}
 .prompt {{ font-size: 0.9rem; }}
</style></head>
<body>
<h1>vqclip queue</h1>
{message}
<form class="add" method="post" action="/add">{xsrf}
 <label for="prompt">Prompt</label>
 <textarea id="prompt" name="prompt" rows="3" placeholder="Oregon 💚 painting">{prompt}</textarea>
 <div class="row">
  <label>Iterations <input name="iterations" inputmode="numeric" value="{iterations}"></label>
  <label>Seed <input name="seed" inputmode="numeric" placeholder="random" value="{seed}"></label>
 </div>
 <div class="row">
  <label>Width <input name="width" inputmode="numeric" value="{width}"></label>
  <label>Height <input name="height" inputmode="numeric" value="{height}"></label>
 </div>
 <button type="submit" id="add">Add to the queue</button>
</form>
<div id="jobs">{jobs}</div>
<script nonce="{nonce}">
// Refresh the job list (never the form, which may hold half-typed text).
let shown = null;
async function refresh() {{
  if (document.hidden) return;
  try {{
    const answer = await fetch("/jobs", {{credentials: "same-origin", cache: "no-store"}});
    if (!answer.ok) return;
    const text = await answer.text();
    if (text !== shown) {{ document.getElementById("jobs").innerHTML = text; shown = text; }}
  }} catch (e) {{}}
}}
setInterval(refresh, {refresh_ms});
</script>
</body></html>
"""


def form_config(defaults: RunConfig, form: dict[str, str]) -> RunConfig:
    """The RunConfig a form asks for, checked as the command line checks it (ConfigError)."""
    values: dict[str, Any] = {}
    for name, cast in _FORM_NUMBERS.items():
        text = form.get(name, "").strip()
        if not text:
            continue
        try:
            values[name] = cast(text)
        except ValueError:
            raise ConfigError(f"{name} must be a whole number, got {text!r}.") from None
    size = [values.pop("width", defaults.size[0]), values.pop("height", defaults.size[1])]
    changes = {"prompt": form.get("prompt", ""), "size": size, "name": None, **values}
    if "seed" not in values:
        changes["seed"] = None
    config = defaults.replace(**changes).validate()
    if config.iterations > MAX_QUEUED_ITERATIONS:
        raise ConfigError(
            f"iterations must be at most {MAX_QUEUED_ITERATIONS:,} for a job added on the page, got "
            f"{config.iterations:,}. Ask for fewer (300 to 1,000 is usual); a run can be "
            "continued further later with `vqclip resume RUN_DIR --iterations N`."
        )
    return config


# --- the handlers ---------------------------------------------------------------------------


class _Base(tornado.web.RequestHandler):
    def initialize(
        self, queue: JobQueue, defaults: RunConfig, token: str | None, hosts: frozenset[str]
    ) -> None:
        self.queue, self.defaults, self.token, self.hosts = queue, defaults, token, hosts
        self.guarded = False

    def set_default_headers(self) -> None:
        # A fresh nonce per response: only the page's own style and script run.
        self.nonce = secrets.token_urlsafe(12)
        self.set_header(
            "Content-Security-Policy",
            f"default-src 'none'; img-src 'self' data:; style-src 'nonce-{self.nonce}'; "
            f"script-src 'nonce-{self.nonce}'; font-src 'self'; connect-src 'self'; "
            "form-action 'self'; "
            "frame-ancestors 'none'; base-uri 'none'",
        )
        self.set_header("X-Frame-Options", "DENY")
        self.set_header("X-Content-Type-Options", "nosniff")
        self.set_header("Referrer-Policy", "same-origin")  # so a form's Origin is sent
        self.set_header("Cache-Control", "no-store")

    # Tornado checks the XSRF token before prepare(); the host and the token come first.
    def check_xsrf_cookie(self) -> None:
        self.guard()
        super().check_xsrf_cookie()

    def prepare(self) -> None:
        self.guard()

    def guard(self) -> None:
        if self.guarded:
            return
        self.guarded = True
        host = self.request.host_name.strip("[]").rstrip(".")
        if host not in self.hosts:
            raise tornado.web.HTTPError(
                403,
                reason="unknown host",
                log_message=f"refused Host {host[:100]!r} (DNS-rebinding guard)",
            )
        if self.request.method not in ("GET", "HEAD"):
            # A browser says where a request comes from; another site's form is refused
            # here as well as by its missing XSRF token.
            if self.request.headers.get("Sec-Fetch-Site", "same-origin") not in (
                "same-origin",
                "none",
            ):
                raise tornado.web.HTTPError(403, reason="cross-site request")
            origin = self.request.headers.get("Origin", "null")  # "null": not known
            if (
                origin != "null"
                and urllib.parse.urlsplit(origin).netloc.lower() != self.request.host
            ):
                raise tornado.web.HTTPError(403, reason="cross-site request")
        if not self.token:
            return
        header = self.request.headers.get(TOKEN_HEADER)  # Tornado read its bytes as latin-1
        given = [
            header and header.encode("latin-1", "replace").decode("utf-8", "replace"),
            self.get_query_argument("token", None),
        ]
        cookie = self.get_cookie(TOKEN_COOKIE)
        if not any(g and _same(g, self.token) for g in given) and not (
            cookie and _same(cookie, _cookie_value(self.token))
        ):
            raise tornado.web.HTTPError(403, reason="a valid token is required")
        if given[1] and self.request.method == "GET":
            # Keep the token in a cookie and take it out of the address bar (and history).
            self.set_cookie(TOKEN_COOKIE, _cookie_value(self.token), httponly=True, samesite="Lax")
            query = [
                (k, v)
                for k, v in urllib.parse.parse_qsl(self.request.query, keep_blank_values=True)
                if k != "token"
            ]
            self.redirect(
                self.request.path + ("?" + urllib.parse.urlencode(query) if query else "")
            )

    def _request_summary(self) -> str:
        return f"{self.request.method} {redact(self.request.uri or '')} ({self.request.remote_ip})"

    def log_exception(self, typ: Any, value: Any, tb: Any) -> None:
        if isinstance(value, tornado.web.HTTPError):
            super().log_exception(typ, value, tb)  # logs _request_summary(), redacted
        else:  # Tornado's own line would print the whole request, address included
            logging.getLogger("tornado.application").error(
                "Uncaught exception %s", self._request_summary(), exc_info=(typ, value, tb)
            )

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        error = kwargs.get("exc_info", (None, None))[1]
        why = {
            403: "This request is refused: it needs the page's token (open the address "
            "`vqclip queue serve` printed), it came from another site, or its form is stale "
            "(reload the page and try again).",
            404: "There is nothing here.",
            405: "This address does not answer that kind of request.",
        }.get(status_code, "The request could not be answered.")
        if isinstance(error, tornado.web.HTTPError) and error.reason:
            why = f"{error.reason[:1].upper()}{error.reason[1:]}. {why}"
        self.set_header("Content-Type", "text/html; charset=utf-8")
        self.finish(
            f'<!doctype html><meta charset="utf-8"><title>{status_code}</title>'
            f'<p>{status_code}: {html.escape(why)}</p><p><a href="/">Back to the queue</a></p>'
        )

    def head(self, *args: str) -> None:
        self.get(*args)

    # --- rendering

    def page(self, message: str = "", form: dict[str, str] | None = None) -> None:
        form = form or {}
        defaults = self.defaults
        self.set_header("Content-Type", "text/html; charset=utf-8")
        self.write(
            _PAGE.format(
                nonce=self.nonce,
                message=message,
                xsrf=self.xsrf_form_html(),
                prompt=html.escape(form.get("prompt", "")),
                iterations=html.escape(form.get("iterations", str(defaults.iterations))),
                seed=html.escape(form.get("seed", "")),
                width=html.escape(form.get("width", str(defaults.size[0]))),
                height=html.escape(form.get("height", str(defaults.size[1]))),
                jobs=self.job_list(),
                refresh_ms=REFRESH_SECONDS * 1000,
            )
        )

    def job_list(self) -> str:
        """The jobs in four groups: running, waiting, failed, finished (a gallery)."""
        try:
            jobs = list(reversed(self.queue.jobs()))
        except QueueError as error:  # a job damaged by hand: say so instead of failing
            return f'<p class="error">{html.escape(str(error))}</p>'
        groups = [
            ("Running", "running", ("running",), ""),
            ("Waiting", "waiting", ("queued", "stopped"), ""),
            ("Failed", "failed", ("failed",), ""),
            ("Finished", "done", ("done",), "gallery"),
        ]
        parts = []
        for title, key, statuses, kind in groups:
            items = [self.job_item(job) for job in jobs if job.status in statuses]
            if items:
                parts.append(
                    f'<section id="{key}"><h2>{title} ({len(items)})</h2>'
                    f'<ul class="{kind or "jobs"}">{"".join(items)}</ul></section>'
                )
        return "".join(parts) or "<p>No jobs yet: add a prompt above.</p>"

    def job_item(self, job: Job) -> str:
        config = job.config
        what = (
            f'<div class="prompt">#{job.id} {html.escape(config.prompt)}</div>'
            f'<div class="status">{html.escape(job.status)} · {config.iterations} iterations · '
            f"{config.size[0]}x{config.size[1]} · seed "
            f"{'random' if config.seed is None else config.seed}</div>"
        )
        extra, buttons = "", ["remove"]
        if job.status == "done" and _final(self.queue, job) is not None:
            what = (
                f'<a href="/image/{job.id}"><img alt="job {job.id}" loading="lazy" '
                f'src="/thumb/{job.id}"></a>{what}'
            )
        elif job.stale(self.queue.lease):
            extra = '<div class="error">stale: its worker stopped; Retry hands it out again</div>'
            buttons = ["retry", "remove"]
        elif job.status == "running":
            done = _progress(self.queue, job)
            extra = (
                f'<progress max="{config.iterations}" value="{done}"></progress>'
                f'<div class="status">iteration {done} of {config.iterations}'
                f"{' · ' + html.escape(job.worker) if job.worker else ''}</div>"
                if done is not None
                else "<progress></progress>"
            )
            buttons = []
        elif job.status in ("queued", "stopped"):
            buttons = ["cancel", "remove"]
        elif job.status == "failed":
            extra = f'<div class="error">{html.escape(job.error or "failed")}</div>'
            buttons = ["retry", "remove"]
        forms = "".join(
            f'<form method="post" action="/job/{job.id}/{action}">{self.xsrf_form_html()}'
            f'<button type="submit" name="do" value="{action}">{action.title()}</button></form>'
            for action in buttons
        )
        return (
            f'<li class="job" id="job-{job.id}" data-id="{job.id}" '
            f'data-status="{html.escape(job.status)}">{what}{extra}'
            f"{f'<div class=buttons>{forms}</div>' if forms else ''}</li>"
        )


def _cookie_value(token: str) -> str:
    """What the cookie holds: a digest of the token (any text), which only the token gives."""
    return hashlib.sha256(f"vqclip page {token}".encode()).hexdigest()


def _same(given: str, token: str) -> bool:
    """Constant-time comparison that takes any text (compare_digest refuses non-ASCII str)."""
    return secrets.compare_digest(given.encode("utf-8", "surrogatepass"), token.encode("utf-8"))


class _Home(_Base):
    _SAID = {"added": "Queued as job {}.", "cancel": "Job {} cancelled.",
             "retry": "Job {} is queued again.", "remove": "Job {} removed."}  # fmt: skip

    def get(self) -> None:
        message = ""
        for key, text in self._SAID.items():
            value = self.get_query_argument(key, "")
            if value.isdigit() and len(value) < 19:
                message = f'<p class="ok">{text.format(int(value))}</p>'
        self.page(message)


class _Jobs(_Base):
    def get(self) -> None:
        self.set_header("Content-Type", "text/html; charset=utf-8")
        self.write(self.job_list())


class _Add(_Base):
    def get(self) -> None:  # a reload or a bookmark of the form's address: the page
        self.redirect("/", status=303)

    def post(self) -> None:
        # Raw values: Tornado's get_body_argument turns control characters into spaces, so
        # "a\x00cat" would be queued as "a cat"; the settings check refuses it as the CLI does.
        raw = self.request.body_arguments
        form = {
            name: self.decode_argument(raw[name][-1], name) if raw.get(name) else ""
            for name in ("prompt", *_FORM_NUMBERS)
        }
        try:
            job_id = self.queue.add(form_config(self.defaults, form))
        except ConfigError as error:
            self.set_status(400)
            self.page(f'<p class="error">{html.escape(str(error))}</p>', form)
            return
        # POST -> redirect -> GET: reloading the result never adds the job again.
        self.redirect(f"/?added={job_id}#job-{job_id}", status=303)


class _Action(_Base):
    def get(self, job_id: str, action: str) -> None:
        self.redirect("/", status=303)

    def post(self, job_id: str, action: str) -> None:
        number = int(job_id)
        try:
            if action == "cancel":
                self.queue.cancel(number)
            elif action == "retry":
                self.queue.retry(number)
            else:
                self.queue.remove(number)
        except QueueError as error:
            self.set_status(409)
            self.page(f'<p class="error">{html.escape(str(error))}</p>')
            return
        self.redirect(f"/?{action}={number}", status=303)


class _Picture(_Base):
    """/image/N: the finished picture; /thumb/N: a small copy for the gallery."""

    def initialize(self, small: bool = False, **options: Any) -> None:
        super().initialize(**options)
        self.small = small

    def get(self, job_id: str) -> None:
        try:
            job = self.queue.get(int(job_id))
        except QueueError:
            raise tornado.web.HTTPError(404) from None
        final = _final(self.queue, job)
        if final is None:
            raise tornado.web.HTTPError(404)
        try:
            data = _thumbnail(final) if self.small else final.read_bytes()
        except (OSError, ValueError):  # removed or replaced meanwhile
            raise tornado.web.HTTPError(404) from None
        self.set_header("Content-Type", "image/png")
        self.set_header("Cache-Control", "private, max-age=60")
        # Opened on its own, a picture is shown by the browser's image viewer (its own styles)
        self.set_header("Content-Security-Policy", "default-src 'none'; img-src 'self'; "
                        "style-src 'unsafe-inline'; frame-ancestors 'none'")  # fmt: skip
        self.write(data)


class _EmojiFont(_Base):
    """The emoji font the sheets use, for a browser that has none (the page falls back to
    it last, after the system's colour emoji)."""

    def get(self) -> None:
        if not EMOJI_FONT.is_file():
            raise tornado.web.HTTPError(404)
        self.set_header("Content-Type", "font/ttf")
        self.set_header("Cache-Control", "public, max-age=86400")
        self.write(EMOJI_FONT.read_bytes())


class _NotFound(_Base):
    def prepare(self) -> None:
        self.guard()
        raise tornado.web.HTTPError(404)


def _thumbnail(path: Path) -> bytes:
    with Image.open(path) as image:
        small = ImageOps.contain(image.convert("RGB"), (THUMB_PX, THUMB_PX))
    buffer = io.BytesIO()
    small.save(buffer, format="PNG")
    return buffer.getvalue()


def _final(queue: JobQueue, job: Job) -> Path | None:
    """The job's final picture, if it exists inside the queue's folder (and nowhere else).
    A relative run folder is read from the queue's folder, not the working directory."""
    run = _run_dir(queue, job)
    final = run / FINAL_FILE if run else None
    return final if final and final.is_file() else None


def _run_dir(queue: JobQueue, job: Job) -> Path | None:
    """The job's run folder as the queue resolves it (from the queue's folder, whatever the
    working directory), served only while it lies inside that folder."""
    if not job.run_dir:
        return None
    found = queue.run_dir(job).resolve()
    inside = found.is_relative_to(queue.path.parent.resolve())
    return found if inside and found.is_dir() else None


def _progress(queue: JobQueue, job: Job) -> int | None:
    """How many iterations a running job has done, where the queue or its run says so."""
    if job.iteration is not None:  # the worker's last heartbeat
        return job.iteration
    run = _run_dir(queue, job)
    snapshots = list_snapshots(run) if run else []
    return snapshots[-1][0] if snapshots else None


# --- the application --------------------------------------------------------------------------


def make_app(
    queue: JobQueue,
    defaults: RunConfig,
    token: str | None = None,
    hosts: frozenset[str] | None = None,
) -> tornado.web.Application:
    """The page's Tornado application (serve it with ``listen(port, address,
    max_body_size=MAX_BODY_BYTES)``, as serve() does). ``hosts``: the names it answers to
    (default: this machine's loopback names)."""
    hide_token(token)
    options = {"queue": queue, "defaults": defaults, "token": token,
               "hosts": hosts if hosts is not None else page_hosts("127.0.0.1")}  # fmt: skip
    return tornado.web.Application(
        [
            (r"/", _Home, options),
            (r"/jobs", _Jobs, options),
            (r"/add", _Add, options),
            (rf"/job/{_JOB_ID}/({'|'.join(_ACTIONS)})", _Action, options),
            (rf"/thumb/{_JOB_ID}", _Picture, {**options, "small": True}),
            (rf"/image/{_JOB_ID}", _Picture, options),
            (r"/emoji.ttf", _EmojiFont, options),
        ],
        default_handler_class=_NotFound,
        default_handler_args=options,
        xsrf_cookies=True,
        xsrf_cookie_kwargs={"httponly": True, "samesite": "Strict"},
        log_function=log_request,
    )


def serve(
    queue: JobQueue,
    defaults: RunConfig,
    host: str,
    port: int,
    token: str | None,
    sockets: list[socket.socket] | None = None,
) -> None:
    """Serve the page until Ctrl-C."""
    sockets = sockets if sockets is not None else bind(host, port)

    async def main() -> None:
        app = make_app(queue, defaults, token, page_hosts(host))
        server = tornado.httpserver.HTTPServer(
            app, max_body_size=MAX_BODY_BYTES, max_buffer_size=MAX_BODY_BYTES
        )
        server.add_sockets(sockets)
        await asyncio.Event().wait()

    asyncio.run(main())
