"""Where the queue's page listens and what it answers to: the names and addresses of this
machine (a DNS-rebinding guard), the addresses to print (ones a phone can open), the
listening sockets, and the token kept out of Tornado's log."""

from __future__ import annotations

import logging
import re
import secrets
import socket
import urllib.parse

import tornado.netutil
import tornado.web

from vqclip.queue.store import QueueError

LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")
ANY_HOST = ("0.0.0.0", "::", "")


def page_hosts(host: str) -> frozenset[str]:
    """The names the page answers to: this machine's own (loopback, host name, addresses;
    all of them when bound to every address), never a name some other site points at it."""
    names = {"127.0.0.1", "localhost", "::1", host.lower()}
    if host not in LOCAL_HOSTS:
        hostname = socket.gethostname().lower()
        names |= {hostname, f"{hostname}.local", socket.getfqdn().lower()}
        names |= set(lan_addresses())
    return frozenset(n for n in names if n and n not in ANY_HOST)


def lan_addresses() -> list[str]:
    """This machine's addresses that another device on the network can reach (IPv4 first)."""
    found: list[str] = []
    try:  # the address of the route out: no packet is sent by a UDP connect
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.connect(("10.254.254.254", 9))
            found.append(probe.getsockname()[0])
    except OSError:
        pass
    try:
        infos = socket.getaddrinfo(socket.gethostname(), None, proto=socket.IPPROTO_TCP)
    except OSError:
        infos = []
    for family, *_, address in infos:
        if family in (socket.AF_INET, socket.AF_INET6):
            found.append(str(address[0]).split("%")[0])
    usable = [a for a in dict.fromkeys(found) if not a.startswith(("127.", "::1", "0."))]
    return sorted(usable, key=lambda a: ":" in a)


def addresses(host: str, port: int, token: str | None) -> list[str]:
    """The addresses to print: ones a phone can open (never 0.0.0.0), token url-encoded."""
    query = f"?token={urllib.parse.quote(token, safe='')}" if token else ""
    hosts = (lan_addresses() or ["127.0.0.1"]) if host in ANY_HOST else [host]
    return [f"http://{f'[{h}]' if ':' in h else h}:{port}/{query}" for h in hosts]


def check_binding(host: str, token: str | None) -> str | None:
    """The token to require: none on this machine only; on other addresses the given one or
    a new one (the caller prints it once)."""
    if host in LOCAL_HOSTS:
        return token
    return token or secrets.token_urlsafe(16)


def bind(host: str, port: int) -> list[socket.socket]:
    """The listening sockets, or a QueueError saying why the address cannot be used."""
    if not 1 <= port <= 65535:
        raise QueueError(f"--port must be a whole number from 1 to 65535, got {port}.")
    try:
        return tornado.netutil.bind_sockets(port, address=host or None)
    except OSError as error:
        raise QueueError(
            f"Cannot serve on {host}:{port} ({error.strerror or error}). "
            + (
                "Another program uses that port: choose another with --port."
                if getattr(error, "errno", None) == 98
                else "Check --host (an address of this machine, or 0.0.0.0 for every one) "
                "and --port (ports under 1024 need administrator rights)."
            )
        ) from None


# --- keeping the token out of the log -------------------------------------------------------

_TOKEN_IN_QUERY = re.compile(r"(?i)((?:^|[?&;])token=)[^&;]*")


def redact(uri: str) -> str:
    """The request's address with any ``token=`` value blanked, for the log."""
    return _TOKEN_IN_QUERY.sub(r"\1***", uri)


class TokenFilter(logging.Filter):
    """Blanks the tokens of every page served in this process from Tornado's log records
    (also those it writes before a handler runs, such as a malformed request's headers)."""

    secrets: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        hidden = message
        for token in self.secrets:
            for form in {token, urllib.parse.quote(token, safe=""), urllib.parse.quote_plus(token)}:
                hidden = hidden.replace(form, "***")
        if hidden != message:
            record.msg, record.args = hidden, ()
        return True


TOKEN_FILTER = TokenFilter()


def log_request(handler: tornado.web.RequestHandler) -> None:
    """Tornado's access log line, with the token blanked."""
    status, request = handler.get_status(), handler.request
    log = logging.getLogger("tornado.access")
    level = logging.INFO if status < 400 else logging.WARNING if status < 500 else logging.ERROR
    log.log(level, "%d %s %s (%s) %.2fms", status, request.method, redact(request.uri or ""),
            request.remote_ip, 1000.0 * request.request_time())  # fmt: skip


def hide_token(token: str | None) -> None:
    """Blank ``token`` from every record of Tornado's loggers from now on."""
    if not token:
        return
    TokenFilter.secrets.add(token)
    for name in ("tornado.access", "tornado.application", "tornado.general"):
        if TOKEN_FILTER not in logging.getLogger(name).filters:
            logging.getLogger(name).addFilter(TOKEN_FILTER)
