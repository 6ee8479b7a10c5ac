"""The service's HTTP endpoints on the stdlib server: /healthz, /readyz, /metrics and /unsubscribe.

Owns the socket and the request handling only; what "ready" means and what
the metrics say come in as callables from ``service.py``. One daemon thread
serves requests (each in its own daemon thread), so a hung probe never holds
up shutdown. Binds to 127.0.0.1 unless told otherwise (the container sets
0.0.0.0).
"""
from __future__ import annotations

import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable

from .errors import ConfigError

Readiness = Callable[[], tuple[bool, dict]]


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False


class _Server6(_Server):
    address_family = socket.AF_INET6


class StatusServer:
    """Serves liveness, readiness and Prometheus metrics until ``stop``."""

    def __init__(self, host: str, port: int, *, readiness: Readiness,
                 metrics: Callable[[], bytes], metrics_content_type: str,
                 unsubscribe: Callable[[str, bool], tuple[int, str]] | None = None):
        class Handler(BaseHTTPRequestHandler):
            server_version = "engine"

            def do_POST(self):  # noqa: N802 - RFC 8058 one-click: POST <link> with List-Unsubscribe=One-Click
                path, _, query = self.path.partition("?")
                length = int(self.headers.get("Content-Length") or 0)
                if length:
                    self.rfile.read(min(length, 4096))
                if path == "/unsubscribe" and unsubscribe is not None:
                    status, text = unsubscribe(query, True)
                    self._reply(status, (text + "\n").encode(), "text/plain; charset=utf-8")
                else:
                    self._reply(404, b"not found\n", "text/plain; charset=utf-8")

            def do_GET(self):  # noqa: N802 - the stdlib's name
                path = self.path.split("?", 1)[0]
                if path == "/healthz":
                    self._reply(200, b"ok\n", "text/plain; charset=utf-8")
                elif path == "/readyz":
                    try:
                        ready, detail = readiness()
                    except Exception as exc:  # noqa: BLE001 - a probe answers, it never crashes the server
                        ready, detail = False, {"error": f"{type(exc).__name__}: {exc}"}
                    detail = {"ready": ready, **detail}
                    body = (json.dumps(detail, indent=2, default=str) + "\n").encode()
                    self._reply(200 if ready else 503, body, "application/json")
                elif path == "/metrics":
                    self._reply(200, metrics(), metrics_content_type)
                elif path == "/unsubscribe" and unsubscribe is not None:
                    # a GET only confirms: mail scanners follow links, so the change needs the POST
                    status, text = unsubscribe(self.path.partition("?")[2], False)
                    self._reply(status, text.encode(), "text/html; charset=utf-8" if status == 200 else "text/plain; charset=utf-8")
                else:
                    self._reply(404, b"not found; try /healthz, /readyz or /metrics\n", "text/plain; charset=utf-8")

            def do_HEAD(self):  # noqa: N802
                self._head_only = True
                self.do_GET()

            def _reply(self, status: int, body: bytes, content_type: str) -> None:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Cache-Control", "no-store")
                self.end_headers()
                if not getattr(self, "_head_only", False):
                    self.wfile.write(body)

            def log_message(self, *args):  # probes every few seconds: not worth a log line
                pass

        server_class = _Server6 if ":" in host else _Server
        try:
            self.server = server_class((host, port), Handler)
        except OSError as exc:
            raise ConfigError(
                f"cannot serve /healthz, /readyz and /metrics on {host}:{port}: {exc.strerror or exc}; "
                "choose another --metrics-port (ENGINE_METRICS_PORT) or --metrics-host (ENGINE_METRICS_HOST)"
            ) from None
        self._thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.2},
                                        name="engine-http", daemon=True)

    @property
    def host(self) -> str:
        return str(self.server.server_address[0])

    @property
    def port(self) -> int:
        return int(self.server.server_address[1])

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop accepting requests and close the socket; returns within about ``timeout``."""
        if self._thread.is_alive():
            self.server.shutdown()
            self._thread.join(timeout)
        self.server.server_close()
