"""The service's HTTP endpoints on waitress: /healthz, /readyz, /metrics, /unsubscribe and routes.

Owns the socket, the HTTP server's limits and the routing of requests; what
"ready" means, what the metrics say and what an unsubscribe link does come in
as callables from ``loop.py``; the tracking endpoints (/open, /click, /scan) and
the provider webhooks are routes. /metrics is prometheus-client's own WSGI
exposition (``Metrics.wsgi_app``): it picks the Prometheus text format or
OpenMetrics from the scraper's Accept header and gzips on request; this module
only routes to it and adds the same limits and headers as every other answer. Binds to 127.0.0.1 unless told otherwise
(the container sets 0.0.0.0); a host with a ``:`` is an IPv6 address.

waitress reads requests on one event loop and hands only complete ones to a
fixed pool of ``WORKERS`` threads, so idle or slow connections never hold a
worker. The limits, all enforced by waitress except the request deadline:

- a request line plus headers of ``MAX_HEADER_BYTES`` or more: 431;
- a body (Content-Length or chunked) of ``MAX_BODY_BYTES`` or more: 413,
  answered before the body is read; a Content-Length that is not a number: 400;
- a request not received whole within ``REQUEST_TIMEOUT`` seconds of its
  first byte (a slow-loris client, a line that never ends): connection closed;
- a connection with no request in progress for ``IDLE_TIMEOUT`` seconds: closed;
- at most ``MAX_CONNECTIONS`` open connections; more wait in the listen backlog.

Other endpoints (tracking, provider webhooks) come in as ``routes``: a path's
``Route`` names the methods it answers (others: 405 with ``Allow``) and the
largest body it takes (larger: 413, before the body is read: each path has its
own limit, at most ``MAX_ROUTE_BODY_BYTES``; other paths keep ``MAX_BODY_BYTES``), and its
handler gets a ``Request`` (method, path, query, lower-case headers, body,
client address) and returns an ``Answer``. A route's path takes precedence
over a built-in endpoint of the same path.

Client misbehaviour is never logged with a traceback, and nothing here logs a
request's query string (unsubscribe links carry signed ids).
"""
from __future__ import annotations

import copy
import json
import logging
import socket
import threading
import time
from dataclasses import dataclass
from http import HTTPStatus
from typing import Callable, Iterable, Mapping

from waitress import wasyncore
from waitress.adjustments import Adjustments
from waitress.channel import HTTPChannel
from waitress.parser import HTTPRequestParser
from waitress.server import TcpWSGIServer

from engine.errors import ConfigError
from engine.logs import event

Readiness = Callable[[], tuple[bool, dict]]
WSGIApp = Callable[[dict, Callable], Iterable[bytes]]

#: Bytes of request line plus headers from which a request is refused with 431.
MAX_HEADER_BYTES = 16 * 1024
#: Bytes of request body from which a request is refused with 413 (a one-click unsubscribe POST sends 26).
MAX_BODY_BYTES = 16 * 1024
#: Seconds within which a request must arrive whole, from its first byte.
REQUEST_TIMEOUT = 5.0
#: Seconds after which a connection with no request in progress is closed.
IDLE_TIMEOUT = 5.0
#: Threads that answer requests.
WORKERS = 4
#: Open connections at most; further clients wait in the listen backlog until one closes.
MAX_CONNECTIONS = 200
#: Seconds between two sweeps for connections past a timeout.
SWEEP_INTERVAL = 0.5

#: The largest body limit a route may ask for.
MAX_ROUTE_BODY_BYTES = 1024 * 1024

TEXT = "text/plain; charset=utf-8"


@dataclass(frozen=True)
class Request:
    """A complete request, as a route's handler gets it."""

    method: str
    path: str
    query: str
    headers: Mapping[str, str]  # lower-case names
    body: bytes
    remote_addr: str


@dataclass(frozen=True)
class Answer:
    """A route's answer: status, body, its content type and any further headers (e.g. Location)."""

    status: int
    body: bytes = b""
    content_type: str = TEXT
    headers: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class Route:
    """An endpoint served besides the built-in ones: its handler, the methods it answers and its body limit."""

    handle: Callable[[Request], Answer]
    methods: tuple[str, ...] = ("GET", "HEAD")
    max_body: int = MAX_BODY_BYTES

    def __post_init__(self) -> None:
        if self.max_body > MAX_ROUTE_BODY_BYTES:
            raise ValueError(f"a route's body limit is at most {MAX_ROUTE_BODY_BYTES} bytes, not {self.max_body}")


def _request(environ: dict, method: str, path: str) -> Request:
    headers = {key[5:].replace("_", "-").lower(): value for key, value in environ.items() if key.startswith("HTTP_")}
    for key in ("CONTENT_TYPE", "CONTENT_LENGTH"):
        if environ.get(key):
            headers[key.replace("_", "-").lower()] = environ[key]
    length = int(environ.get("CONTENT_LENGTH") or 0)  # waitress checked it is a number within the limit
    body = environ["wsgi.input"].read(length) if length > 0 else b""
    return Request(method, path, environ.get("QUERY_STRING", ""), headers, body, environ.get("REMOTE_ADDR", ""))


class _Channel(HTTPChannel):
    """A waitress connection that remembers when the request it is receiving began."""

    request_started: float | None = None

    def received(self, data: bytes) -> bool:
        accepted = super().received(data)
        if self.request is None:  # nothing half-received: every request so far is complete
            self.request_started = None
        elif self.request_started is None:
            self.request_started = time.monotonic()
        return accepted


class _Parser(HTTPRequestParser):
    """waitress's request parser, with the body limit of the request's path: a route's own, else
    ``MAX_BODY_BYTES`` (so a large route limit does not raise the built-in endpoints'). waitress reads the
    limit from ``adj`` only after the header, so swapping it there refuses a larger body before it is read."""

    limits: Mapping[str, Adjustments] = {}

    def parse_header(self, header_plus: bytes) -> None:
        super().parse_header(header_plus)
        self.adj = self.limits.get(self.path, self.adj)


class _Server(TcpWSGIServer):
    """waitress's TCP server plus a deadline for receiving each request whole."""

    channel_class = _Channel

    def maintenance(self, now: float) -> None:
        super().maintenance(now)  # IDLE_TIMEOUT: waitress's channel_timeout
        cutoff = time.monotonic() - REQUEST_TIMEOUT
        for channel in list(self.active_channels.values()):
            started = getattr(channel, "request_started", None)
            if started is not None and started < cutoff and not channel.requests:
                channel.will_close = True  # closed by the event loop at its next turn


class _WaitressLog(logging.Handler):
    """waitress's own warnings as ``http.server`` events in the service log: message only, never a traceback."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            event("http.server", record.getMessage(), record.levelno)
        except Exception:  # noqa: BLE001 - a log line must never break the server
            pass


def _route_waitress_logs() -> None:
    waitress_log = logging.getLogger("waitress")
    if not any(isinstance(h, _WaitressLog) for h in waitress_log.handlers):
        waitress_log.addHandler(_WaitressLog())
    waitress_log.setLevel(logging.WARNING)
    waitress_log.propagate = False
    # "Task queue depth is N": one line per request while all workers are busy, i.e. as many as a client likes
    logging.getLogger("waitress.queue").setLevel(logging.ERROR)


def _app(readiness: Readiness, metrics: WSGIApp,
         unsubscribe: Callable[[str, bool], tuple[int, str]] | None,
         routes: Mapping[str, Route] | None = None):
    """The WSGI application: the built-in endpoints, the routes and the plain-text answers for anything else."""
    routes = dict(routes or {})

    def route_answer(route: Route, environ: dict, method: str, path: str) -> Answer:
        if method not in route.methods:
            return Answer(405, f"method not allowed; use {', '.join(route.methods)}\n".encode(),
                          headers=(("Allow", ", ".join(route.methods)),))
        try:
            length = int(environ.get("CONTENT_LENGTH") or 0)
        except ValueError:
            return Answer(400, b"Content-Length is not a number\n")
        if length > route.max_body:
            return Answer(413, f"the body is larger than {route.max_body} bytes\n".encode())
        return route.handle(_request(environ, method, path))


    def answer(method: str, path: str, query: str) -> tuple[int, bytes, str]:
        if method == "POST":  # RFC 8058 one-click: POST <link> with List-Unsubscribe=One-Click
            if path == "/unsubscribe" and unsubscribe is not None:
                status, text = unsubscribe(query, True)
                return status, (text + "\n").encode(), TEXT
            return 404, b"not found\n", TEXT
        if method not in ("GET", "HEAD"):
            return 501, b"unsupported method; use GET, HEAD or POST\n", TEXT
        if path == "/healthz":
            return 200, b"ok\n", TEXT
        if path == "/readyz":
            try:
                ready, detail = readiness()
            except Exception as exc:  # noqa: BLE001 - a probe answers, it never crashes the server
                ready, detail = False, {"error": f"{type(exc).__name__}: {exc}"}
            body = (json.dumps({"ready": ready, **detail}, indent=2, default=str) + "\n").encode()
            return (200 if ready else 503), body, "application/json"
        if path == "/unsubscribe" and unsubscribe is not None:
            # a GET only confirms: mail scanners follow links, so the change needs the POST
            status, text = unsubscribe(query, False)
            return status, text.encode(), "text/html; charset=utf-8" if status == 200 else TEXT
        return 404, b"not found; try /healthz, /readyz or /metrics\n", TEXT

    def scrape(environ: dict) -> tuple[str, list[tuple[str, str]], bytes]:
        """prometheus-client's answer for a GET; a HEAD is answered as a GET, as on every other endpoint here."""
        answered: list = []
        body = b"".join(metrics({**environ, "REQUEST_METHOD": "GET"},
                                lambda status, headers, exc_info=None: answered.extend((status, headers))))
        status, headers = answered
        return status, [(k, v) for k, v in headers if k.lower() != "content-length"], body

    def application(environ: dict, start_response) -> Iterable[bytes]:
        method, path = environ["REQUEST_METHOD"], environ.get("PATH_INFO", "")
        try:
            if path == "/metrics" and method in ("GET", "HEAD"):
                status_line, headers, body = scrape(environ)
                start_response(status_line, headers + [("Content-Length", str(len(body))), ("Cache-Control", "no-store")])
                return [body]
            if path in routes:
                answered = route_answer(routes[path], environ, method, path)
                start_response(f"{answered.status} {HTTPStatus(answered.status).phrase}",
                               [("Content-Type", answered.content_type), ("Content-Length", str(len(answered.body))),
                                ("Cache-Control", "no-store"), *answered.headers])
                return [answered.body]
            status, body, content_type = answer(method, path, environ.get("QUERY_STRING", ""))
        except Exception as exc:  # noqa: BLE001 - one failed answer, logged on one line without the query
            first_line = (str(exc).strip().splitlines() or [""])[0]
            event("http.error", f"{method} {path} failed: {type(exc).__name__}: {first_line}", logging.ERROR,
                  path=path)
            status, body, content_type = 500, b"internal error; see the service log\n", TEXT
        start_response(f"{status} {HTTPStatus(status).phrase}",
                       [("Content-Type", content_type), ("Content-Length", str(len(body))),
                        ("Cache-Control", "no-store")])
        return [body]

    return application


class StatusServer:
    """Serves liveness, readiness, Prometheus metrics and unsubscribe links until ``stop``."""

    def __init__(self, host: str, port: int, *, readiness: Readiness,
                 metrics: WSGIApp,
                 unsubscribe: Callable[[str, bool], tuple[int, str]] | None = None,
                 routes: Mapping[str, Route] | None = None):
        try:
            sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                sock.bind((host, port))
            except BaseException:
                sock.close()
                raise
        except OSError as exc:
            raise ConfigError(
                f"cannot serve /healthz, /readyz and /metrics on {host}:{port}: {exc.strerror or exc}; "
                "choose another --metrics-port (ENGINE_METRICS_PORT) or --metrics-host (ENGINE_METRICS_HOST)"
            ) from None
        _route_waitress_logs()
        adjustments = Adjustments(
            sockets=[sock], threads=WORKERS, connection_limit=MAX_CONNECTIONS,
            max_request_header_size=MAX_HEADER_BYTES,
            max_request_body_size=MAX_BODY_BYTES,
            channel_timeout=IDLE_TIMEOUT, cleanup_interval=SWEEP_INTERVAL, asyncore_use_poll=True,
            log_socket_errors=False, expose_tracebacks=False, ident="engine")
        limits = {path: copy.copy(adjustments) for path in routes or {}}
        for path, limit in limits.items():
            limit.max_request_body_size = routes[path].max_body + 1
        parser = type("_PathParser", (_Parser,), {"limits": limits})
        self._map: dict = {}
        self.server = _Server(_app(readiness, metrics, unsubscribe, routes), map=self._map,
                              _sock=sock, adj=adjustments, bind_socket=False,
                              sockinfo=(sock.family, sock.type, sock.proto, sock.getsockname()))
        self.server.channel_class = type("_PathChannel", (_Channel,), {"parser_class": parser})
        self._address = sock.getsockname()
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="engine-http", daemon=True)

    @property
    def host(self) -> str:
        return str(self._address[0])

    @property
    def port(self) -> int:
        return int(self._address[1])

    def start(self) -> None:
        self._thread.start()

    def _serve(self) -> None:
        """The event loop: accept, read, time out and write connections until ``stop``."""
        try:
            while not self._stopping.is_set():
                wasyncore.loop(timeout=1.0, map=self._map, use_poll=True, count=1)
        finally:
            # stop accepting now; connections in progress are closed by stop() once the workers are done
            wasyncore.dispatcher.close(self.server)

    def stop(self, timeout: float = 5.0) -> None:
        """Stop accepting, let answers in progress finish, close every connection; returns within about ``timeout``."""
        deadline = time.monotonic() + timeout
        self._stopping.set()
        if self._thread.is_alive():
            self.server.pull_trigger()  # wake the loop from its poll
            self._thread.join(max(0.0, deadline - time.monotonic()))
        elif self.server.socket is not None:  # never started
            wasyncore.dispatcher.close(self.server)
        dispatcher = self.server.task_dispatcher
        dispatcher.shutdown(cancel_pending=True, timeout=max(0.0, deadline - time.monotonic()))
        if dispatcher.threads or self._thread.is_alive():
            # a worker still inside a callable may pull the trigger: keep its pipe, close the connections
            for channel in list(self._map.values()):
                if channel is not self.server.trigger:
                    channel.close()
        else:
            wasyncore.close_all(self._map, ignore_all=True)
