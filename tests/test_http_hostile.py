"""The service's HTTP surface under hostile clients: raw sockets against the real service on loopback.

One ``engine run --interval`` process (JSON logs, its stderr captured) serves
every test in the module; each test speaks raw HTTP/1.1 to it the way a
broken or malicious client would - bad Content-Lengths, oversized bodies and
headers, a request line that never ends, slow-loris clients, connections
aborted mid-request - and checks that each is answered or closed within a
bound, that /healthz keeps answering a new client meanwhile, that nothing
prints a traceback and that no log line carries a query string. Every wait
is bounded; the limits come from ``engine.service.httpd``.
"""
from __future__ import annotations

import json
import os
import re
import select
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from conftest import copy_project
from engine import unsubscribe
from engine.service.httpd import IDLE_TIMEOUT, MAX_BODY_BYTES, MAX_HEADER_BYTES, REQUEST_TIMEOUT, WORKERS, StatusServer
from engine.service.metrics import Metrics
from servers import free_port

ENGINE = [sys.executable, "-c", "from engine.cli.main import main; main()"]
START_BOUND = 90  # demo shop build and first pass, on a slow machine
STOP_BOUND = 15
#: an immediate answer (bad framing, over a limit) arrives within this many seconds
PROMPT = 3.0
#: a connection past the request deadline is closed within this many seconds of its first byte
DEADLINE_BOUND = REQUEST_TIMEOUT + 3.0
#: a connection with no request in progress is closed within this many seconds of its last activity
IDLE_BOUND = IDLE_TIMEOUT + 3.0
SECRET = "hostile-test-secret"
#: in every query string the tests send; no log line may contain it
MARKER = "qs-marker-7c1e"


class Service:
    """``engine run --interval`` in a subprocess: its stdout (JSON lines) and stderr, read as they come."""

    def __init__(self, root: Path, port: int):
        self.port = port
        self.stdout: list[str] = []
        self.stderr: list[str] = []
        self.lock = threading.Lock()
        self.process = subprocess.Popen(
            ENGINE + ["run", "--interval", "1h", "--metrics-port", str(port), "--log-format", "json"],
            cwd=root, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env={**os.environ, "ENGINE_CODE_SECRET": SECRET})
        for stream, sink in ((self.process.stdout, self.stdout), (self.process.stderr, self.stderr)):
            threading.Thread(target=self._read, args=(stream, sink), daemon=True).start()

    def _read(self, stream, sink: list[str]) -> None:
        for line in stream:
            with self.lock:
                sink.append(line.rstrip("\n"))

    def mark(self) -> tuple[int, int]:
        with self.lock:
            return len(self.stdout), len(self.stderr)

    def output_since(self, mark: tuple[int, int]) -> tuple[list[str], list[str]]:
        time.sleep(0.3)  # lines written just before are read by the reader threads
        with self.lock:
            return self.stdout[mark[0]:], self.stderr[mark[1]:]

    def wait_for_first_pass(self) -> None:
        deadline = time.monotonic() + START_BOUND
        while time.monotonic() < deadline and self.process.poll() is None:
            with self.lock:
                if any('"pass.finished"' in line for line in self.stdout):
                    return
            time.sleep(0.2)
        with self.lock:
            tail = "\n".join(self.stdout[-10:] + self.stderr[-10:])
        pytest.fail(f"the service did not finish a first pass (exit code {self.process.poll()}):\n{tail}")


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    root = copy_project(tmp_path_factory.mktemp("hostile") / "project")
    config = root / "engine.yaml"
    config.write_text(re.sub(r"customers: \d+", "customers: 20", config.read_text()))
    running = Service(root, free_port())
    try:
        running.wait_for_first_pass()
        yield running
    finally:
        if running.process.poll() is None:
            running.process.send_signal(signal.SIGTERM)
            try:
                running.process.wait(timeout=STOP_BOUND)
            except subprocess.TimeoutExpired:
                running.process.kill()
                running.process.wait(timeout=10)


@pytest.fixture
def clean_output(service):
    """After the test: no traceback on stderr, nothing on stderr at all, every log line JSON without the marker."""
    mark = service.mark()
    yield
    stdout, stderr = service.output_since(mark)
    assert not [line for line in stderr if "Traceback" in line], "\n".join(stderr)
    assert stderr == [], "\n".join(stderr)
    assert all(line.startswith("{") for line in stdout), stdout
    assert not [line for line in stdout if MARKER in line]
    assert not [json.loads(line) for line in stdout if json.loads(line)["level"] in ("error", "critical")]
    assert service.process.poll() is None


def connect(port: int, host: str = "127.0.0.1") -> socket.socket:
    sock = socket.create_connection((host, port), timeout=PROMPT)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def read_until_closed(sock: socket.socket, bound: float) -> tuple[bytes, float]:
    """Everything the server sends until it closes the connection; fails if it is still open after ``bound`` s."""
    started = time.monotonic()
    received = b""
    while True:
        left = bound - (time.monotonic() - started)
        if left <= 0:
            pytest.fail(f"the server neither answered nor closed within {bound:g}s; got {received[:80]!r}")
        sock.settimeout(left)
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:  # closed with unread request bytes: a reset instead of a FIN
            chunk = b""
        except socket.timeout:
            continue
        if not chunk:
            return received, time.monotonic() - started
        received += chunk


def status_of(response: bytes) -> int | None:
    found = re.match(rb"HTTP/1\.[01] (\d{3}) ", response)
    return int(found.group(1)) if found else None


def healthz(port: int, bound: float = PROMPT) -> tuple[int | None, bytes]:
    """GET /healthz from a new client; the status and body, within ``bound`` seconds or the test fails."""
    with connect(port) as sock:
        sock.sendall(f"GET /healthz?{MARKER} HTTP/1.1\r\nHost: engine\r\nConnection: close\r\n\r\n".encode())
        response, _ = read_until_closed(sock, bound)
    return status_of(response), response.partition(b"\r\n\r\n")[2]


def still_open(sock: socket.socket) -> bool:
    """True while the server has neither closed nor reset the connection (nothing to read, no EOF)."""
    readable, _, _ = select.select([sock], [], [], 0)
    if not readable:
        return True
    try:
        return sock.recv(1, socket.MSG_PEEK) != b""
    except OSError:
        return False


def abort(sock: socket.socket) -> None:
    """Close with a TCP reset, the way a crashed client or a load balancer's timeout leaves."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def request_head(method: str, path: str, *headers: str) -> bytes:
    return "\r\n".join([f"{method} {path} HTTP/1.1", "Host: engine", *headers, "", ""]).encode()


# --- framing and limits --------------------------------------------------------------------


@pytest.mark.parametrize("length, status", [("abc", 400), ("-1", 400), ("1000000000000", 413), ("1e3", 400),
                                            ("10, 20", 400)])
def test_a_bad_or_huge_content_length_is_answered_at_once(service, clean_output, length, status):
    with connect(service.port) as sock:
        sock.sendall(request_head("POST", f"/unsubscribe?{MARKER}", f"Content-Length: {length}"))
        response, _ = read_until_closed(sock, PROMPT)
    assert status_of(response) == status, response[:200]
    assert healthz(service.port) == (200, b"ok\n")


def test_a_body_over_the_limit_is_refused_before_it_is_read(service, clean_output):
    size = MAX_BODY_BYTES + 1
    with connect(service.port) as sock:
        sock.sendall(request_head("POST", f"/unsubscribe?{MARKER}", f"Content-Length: {size}"))
        try:
            sock.sendall(b"x" * size)
        except (BrokenPipeError, ConnectionResetError):
            pass  # refused and closed before the body was through: also a prompt answer
        response, _ = read_until_closed(sock, PROMPT)
    assert status_of(response) in (413, None), response[:200]  # None: the reset overtook the 413


def test_a_chunked_body_over_the_limit_is_refused(service, clean_output):
    with connect(service.port) as sock:
        sock.sendall(request_head("POST", f"/unsubscribe?{MARKER}", "Transfer-Encoding: chunked"))
        chunk = b"%x\r\n%s\r\n" % (4096, b"y" * 4096)
        try:
            for _ in range(MAX_BODY_BYTES // 4096 + 2):
                sock.sendall(chunk)
        except (BrokenPipeError, ConnectionResetError):
            pass
        response, _ = read_until_closed(sock, PROMPT)
    assert status_of(response) in (413, None), response[:200]


def test_a_body_within_the_limit_still_unsubscribes(service, clean_output):
    """The limits leave the one-click POST (RFC 8058) alone; the signed link is in no log line."""
    query = unsubscribe.link("", SECRET, "7", "email").lstrip("?") + f"&x={MARKER}"
    body = b"List-Unsubscribe=One-Click"
    with connect(service.port) as sock:
        sock.sendall(request_head("POST", f"/unsubscribe?{query}", f"Content-Length: {len(body)}",
                                  "Content-Type: application/x-www-form-urlencoded", "Connection: close") + body)
        response, _ = read_until_closed(sock, PROMPT)
    assert status_of(response) == 200 and response.endswith(b"You are unsubscribed.\n"), response


def test_a_header_section_over_the_limit_is_refused(service, clean_output):
    with connect(service.port) as sock:
        head = request_head("GET", f"/healthz?{MARKER}", *[f"X-Filler-{i}: {'z' * 1000}"
                                                            for i in range(MAX_HEADER_BYTES // 1000 + 2)])
        try:
            sock.sendall(head)
        except (BrokenPipeError, ConnectionResetError):
            pass
        response, _ = read_until_closed(sock, PROMPT)
    assert status_of(response) in (431, 400, None), response[:200]
    assert status_of(response) != 200


def test_a_request_line_that_never_ends_is_refused_or_closed(service, clean_output):
    """Bytes without a line end: refused once over the header limit; a line left hanging: closed at the deadline."""
    with connect(service.port) as endless, connect(service.port) as hanging:
        hanging.sendall(f"GET /healthz?{MARKER}".encode())
        endless.sendall(b"GET /" + b"a" * (MAX_HEADER_BYTES + 1))
        response, _ = read_until_closed(endless, PROMPT)
        assert status_of(response) in (431, 400, None), response[:200]
        assert healthz(service.port) == (200, b"ok\n")
        assert still_open(hanging)
        response, _ = read_until_closed(hanging, DEADLINE_BOUND)
    assert status_of(response) != 200


# --- slow and idle clients -----------------------------------------------------------------


def trickle(socks: list[socket.socket], bound: float, while_open=None) -> dict[int, float]:
    """Send one header byte a second on each open connection until the server closes them all.

    Returns seconds from the start to the close of each connection (by index);
    fails if any is still open after ``bound``. ``while_open`` runs once, a
    second in, while every connection is still open.
    """
    started = time.monotonic()
    closed: dict[int, float] = {}
    checked = while_open is None
    while len(closed) < len(socks):
        elapsed = time.monotonic() - started
        if elapsed > bound:
            pytest.fail(f"{len(socks) - len(closed)} slow client(s) still connected after {bound:g}s")
        for i, sock in enumerate(socks):
            if i in closed:
                continue
            if not still_open(sock):
                closed[i] = elapsed
                continue
            try:
                sock.send(b"x")
            except OSError:
                closed[i] = elapsed
        if not checked and elapsed >= 1.0:
            assert not closed, "a slow client was closed before its deadline"
            while_open()
            assert all(still_open(s) for s in socks), "the answer waited for a slow client to be closed"
            checked = True
        time.sleep(1.0)
    return closed


def test_a_slow_loris_client_is_closed_and_healthz_answers_meanwhile(service, clean_output):
    with connect(service.port) as slow:
        slow.sendall(request_head("GET", f"/healthz?{MARKER}").rstrip(b"\r\n") + b"\r\nX-Slow: ")
        answers = []
        closed = trickle([slow], DEADLINE_BOUND, while_open=lambda: answers.append(healthz(service.port)))
    assert answers == [(200, b"ok\n")]
    assert closed[0] >= 1.0


def test_fifty_slow_clients_hold_no_worker(service, clean_output):
    """Idle and trickling connections wait on the event loop, not in the worker pool of 4 threads."""
    slow = [connect(service.port) for _ in range(50)]
    try:
        for sock in slow:
            sock.sendall(request_head("GET", f"/readyz?{MARKER}").rstrip(b"\r\n") + b"\r\nX-Slow: ")

        def probes():
            for _ in range(8):  # twice the worker pool
                assert healthz(service.port) == (200, b"ok\n")

        trickle(slow, DEADLINE_BOUND, while_open=probes)
    finally:
        for sock in slow:
            sock.close()
    assert healthz(service.port) == (200, b"ok\n")


def test_idle_connections_are_closed(service, clean_output):
    """Connected and silent (a client that never sends), or kept alive after an answer: closed when idle too long."""
    with connect(service.port) as silent, connect(service.port) as kept:
        kept.sendall(request_head("GET", f"/healthz?{MARKER}"))  # HTTP/1.1: keep-alive after the answer
        assert healthz(service.port) == (200, b"ok\n")
        assert still_open(silent)
        read_until_closed(silent, IDLE_BOUND)
        response, _ = read_until_closed(kept, IDLE_BOUND)
    assert status_of(response) == 200


# --- aborted connections -------------------------------------------------------------------


def test_400_connections_aborted_mid_request_print_no_traceback(service, clean_output):
    """Reset mid-header, mid-body, and after a whole request before reading the answer."""
    partial = [
        request_head("GET", f"/metrics?{MARKER}")[:20],
        request_head("POST", f"/unsubscribe?{MARKER}", "Content-Length: 100") + b"List-Unsub",
        request_head("GET", f"/metrics?{MARKER}"),
        request_head("GET", f"/readyz?{MARKER}"),
    ]
    for batch in range(8):
        socks = [connect(service.port) for _ in range(50)]
        for i, sock in enumerate(socks):
            sock.sendall(partial[i % len(partial)])
        if batch % 2:
            time.sleep(0.05)  # some resets land while the answer is being written
        for sock in socks:
            abort(sock)
    assert healthz(service.port) == (200, b"ok\n")


# --- in process: the server object itself ----------------------------------------------------


def test_stop_closes_every_connection_promptly_and_threads_stay_bounded(capfd):
    threads_before = threading.active_count()
    server = StatusServer("127.0.0.1", 0, readiness=lambda: (True, {}), metrics=Metrics().wsgi_app())
    server.start()
    slow = [connect(server.port) for _ in range(50)]
    try:
        for sock in slow:
            sock.sendall(b"GET /healthz HTTP/1.1\r\nX-Slow: ")
        assert healthz(server.port) == (200, b"ok\n")
        # the event loop and the worker pool, whatever the number of connections
        assert threading.active_count() <= threads_before + 1 + WORKERS
        started = time.monotonic()
        server.stop()
        assert time.monotonic() - started < PROMPT
        for sock in slow:
            read_until_closed(sock, PROMPT)
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", server.port), timeout=2).close()
    finally:
        for sock in slow:
            sock.close()
    assert "Traceback" not in capfd.readouterr().err


def _ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
        return True
    except OSError:
        return False


@pytest.mark.skipif(not _ipv6_loopback(), reason="no IPv6 loopback on this machine")
def test_an_ipv6_host_is_served():
    server = StatusServer("::1", 0, readiness=lambda: (True, {}), metrics=Metrics().wsgi_app())
    server.start()
    try:
        assert server.host == "::1"
        with connect(server.port, "::1") as sock:
            sock.sendall(request_head("GET", "/healthz", "Connection: close"))
            response, _ = read_until_closed(sock, PROMPT)
        assert status_of(response) == 200 and response.endswith(b"\r\n\r\nok\n")
    finally:
        server.stop()
