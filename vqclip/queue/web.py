"""A small web page to feed the queue from a phone: a form to add a prompt, the list of jobs
with thumbnails of finished ones. Served by Tornado.

It binds 127.0.0.1 unless told otherwise; on any other address every request must carry
the token (``?token=`` in the address, which the page keeps in its links and form). A
request names nothing on disk: settings are checked exactly as the command line checks
them, and a thumbnail is looked up by job number, inside the queue's folder only.
"""

from __future__ import annotations

import asyncio
import html
import secrets
from pathlib import Path
from typing import Any

import tornado.web

from vqclip.config import ConfigError, RunConfig
from vqclip.queue.store import Job, JobQueue
from vqclip.state import FINAL_FILE

LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")
# What the page lets a phone set: numbers and text only, never a path.
_FORM_NUMBERS = {"iterations": int, "width": int, "height": int, "seed": int}

_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>vqclip queue</title>
<style>
 body {{ font-family: system-ui, sans-serif; margin: 0 auto; max-width: 40rem; padding: 0.8rem; }}
 form {{ display: grid; gap: 0.5rem; }}
 textarea, input, button {{ font-size: 1rem; padding: 0.4rem; }}
 .row {{ display: flex; gap: 0.5rem; }} .row label {{ flex: 1; }}
 .row input {{ width: 100%; box-sizing: border-box; }}
 .error {{ color: #b00020; }} .ok {{ color: #1b5e20; }}
 ul {{ list-style: none; padding: 0; }}
 li {{ display: flex; gap: 0.6rem; align-items: center; border-bottom: 1px solid #ddd; padding: 0.4rem 0; }}
 li img {{ width: 64px; height: 64px; object-fit: cover; }}
 .status {{ font-size: 0.8rem; color: #555; }}
</style></head>
<body>
<h1>vqclip queue</h1>
{message}
<form method="post" action="/add{query}">
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
<h2>Jobs</h2>
<ul id="jobs">{jobs}</ul>
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
    return defaults.replace(**changes).validate()


class _Base(tornado.web.RequestHandler):
    def initialize(self, queue: JobQueue, defaults: RunConfig, token: str | None) -> None:
        self.queue, self.defaults, self.token = queue, defaults, token

    def prepare(self) -> None:
        if self.token and not secrets.compare_digest(self.get_argument("token", ""), self.token):
            raise tornado.web.HTTPError(403, reason="a valid token is required")

    def query(self) -> str:
        return f"?token={html.escape(self.token)}" if self.token else ""

    def page(self, message: str = "", form: dict[str, str] | None = None) -> None:
        form = form or {}
        defaults = self.defaults
        self.set_header("Content-Type", "text/html; charset=utf-8")
        self.write(
            _PAGE.format(
                message=message,
                query=self.query(),
                prompt=html.escape(form.get("prompt", "")),
                iterations=html.escape(form.get("iterations", str(defaults.iterations))),
                seed=html.escape(form.get("seed", "")),
                width=html.escape(form.get("width", str(defaults.size[0]))),
                height=html.escape(form.get("height", str(defaults.size[1]))),
                jobs="".join(self.job_item(job) for job in reversed(self.queue.jobs())),
            )
        )

    def job_item(self, job: Job) -> str:
        thumb = ""
        if job.status == "done" and _final(self.queue, job) is not None:
            thumb = f'<img alt="job {job.id}" src="/thumb/{job.id}{self.query()}">'
        return (
            f'<li class="job" data-id="{job.id}" data-status="{job.status}">{thumb}<div>'
            f"<div>#{job.id} {html.escape(job.config.prompt)}</div>"
            f'<div class="status">{job.status} · {job.config.iterations} iterations · '
            f"{job.config.size[0]}x{job.config.size[1]}</div></div></li>"
        )


class _Home(_Base):
    def get(self) -> None:
        self.page()


class _Add(_Base):
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
        self.page(f'<p class="ok">Queued as job {job_id}.</p>')


class _Thumb(_Base):
    def get(self, job_id: str) -> None:
        try:
            job = self.queue.get(int(job_id))
        except ValueError:
            raise tornado.web.HTTPError(404) from None
        final = _final(self.queue, job)
        if final is None:
            raise tornado.web.HTTPError(404)
        self.set_header("Content-Type", "image/png")
        self.write(final.read_bytes())


def _final(queue: JobQueue, job: Job) -> Path | None:
    """The job's final picture, if it exists inside the queue's folder (and nowhere else)."""
    if not job.run_dir:
        return None
    root = queue.path.parent.resolve()
    final = (Path(job.run_dir) / FINAL_FILE).resolve()
    return final if final.is_file() and final.is_relative_to(root) else None


def make_app(
    queue: JobQueue, defaults: RunConfig, token: str | None = None
) -> tornado.web.Application:
    """The page's Tornado application (start it with ``listen`` in an event loop)."""
    options = {"queue": queue, "defaults": defaults, "token": token}
    return tornado.web.Application(
        [(r"/", _Home, options), (r"/add", _Add, options), (r"/thumb/([0-9]+)", _Thumb, options)]
    )


def check_binding(host: str, token: str | None) -> str | None:
    """The token to require: none on this machine only; on other addresses the given one or
    a new one (the caller prints it once)."""
    if host in LOCAL_HOSTS:
        return token
    return token or secrets.token_urlsafe(16)


def serve(queue: JobQueue, defaults: RunConfig, host: str, port: int, token: str | None) -> None:
    """Serve the page until Ctrl-C."""

    async def main() -> None:
        make_app(queue, defaults, token).listen(port, address=host)
        await asyncio.Event().wait()

    asyncio.run(main())
