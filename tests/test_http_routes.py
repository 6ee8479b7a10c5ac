"""Routes of the service's HTTP server (engine/service/httpd.py): the endpoints tracking and webhooks add.

A real server on loopback and a real HTTP client (urllib): a route gets the whole request (method,
query, lower-case headers, body, client address), answers with its status, body and headers; a
method it does not list is 405 with Allow, a body over its limit 413 before it is read, a handler
that raises 500 without the query in the log, and a route's path wins over a built-in endpoint.
"""
from __future__ import annotations

import http.client
import json
import socket

import pytest

from engine.service.httpd import MAX_ROUTE_BODY_BYTES, Answer, Request, Route, StatusServer
from engine.service.metrics import Metrics


def _echo(request: Request) -> Answer:
    seen = {"method": request.method, "path": request.path, "query": request.query, "body": request.body.decode(),
            "signature": request.headers.get("x-signature"), "type": request.headers.get("content-type"),
            "client": request.remote_addr}
    return Answer(202, json.dumps(seen).encode(), "application/json", headers=(("X-Seen", "yes"),))


def _fail(request: Request) -> Answer:
    raise RuntimeError("secret-token-in-the-query should not reach the log")


@pytest.fixture
def server():
    routes = {"/hook": Route(_echo, methods=("POST",), max_body=64 * 1024),
              "/open": Route(lambda r: Answer(200, b"GIF89a", "image/gif")),
              "/scan": Route(lambda r: Answer(302, b"", headers=(("Location", "https://shop.test/landing"),))),
              "/broken": Route(_fail),
              "/readyz": Route(lambda r: Answer(200, b"the route's\n"))}
    server = StatusServer("127.0.0.1", 0, readiness=lambda: (True, {}), metrics=Metrics().wsgi_app(), routes=routes)
    server.start()
    yield server
    server.stop()


def _request(server, method: str, path: str, body: bytes | None = None, headers: dict | None = None):
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        conn.close()


def test_a_route_gets_the_whole_request_and_answers_with_its_headers(server):
    status, headers, body = _request(server, "POST", "/hook?a=1", b'{"event": "bounce"}',
                                     {"X-Signature": "abc", "Content-Type": "application/json"})
    assert status == 202 and headers["X-Seen"] == "yes" and headers["Content-Type"] == "application/json"
    assert json.loads(body) == {"method": "POST", "path": "/hook", "query": "a=1", "body": '{"event": "bounce"}',
                                "signature": "abc", "type": "application/json", "client": "127.0.0.1"}
    assert _request(server, "GET", "/open")[::2] == (200, b"GIF89a")


def test_a_method_the_route_does_not_list_is_405_with_allow(server):
    status, headers, _ = _request(server, "GET", "/hook")
    assert status == 405 and headers["Allow"] == "POST"


def test_a_body_over_the_routes_limit_is_413(server):
    assert _request(server, "POST", "/hook", b"x" * (64 * 1024 + 1))[0] == 413
    assert _request(server, "POST", "/hook", b"x" * (64 * 1024))[0] == 202


def test_a_failing_route_is_500_and_the_log_has_no_query(server, capsys):
    status, _, body = _request(server, "GET", "/broken?t=secret-token-in-the-query")
    assert status == 500 and b"internal error" in body
    assert "secret-token-in-the-query" not in capsys.readouterr().err


def test_a_routes_path_wins_over_the_built_in_endpoint(server):
    assert _request(server, "GET", "/readyz")[::2] == (200, b"the route's\n")  # not the readiness JSON
    status, headers, _ = _request(server, "GET", "/scan?m=1")  # a route's own headers: a redirect
    assert status == 302 and headers["Location"] == "https://shop.test/landing"
    assert _request(server, "GET", "/healthz")[::2] == (200, b"ok\n")


def test_a_route_may_not_ask_for_more_than_the_largest_body_limit():
    with pytest.raises(ValueError, match="at most"):
        Route(_echo, max_body=MAX_ROUTE_BODY_BYTES + 1)


def test_accepted_connections_send_without_nagle_delay(server):
    """waitress writes an answer's header and its body in two sends: with Nagle's algorithm on, the body
    would wait for the client's (delayed, up to 40 ms) ACK of the header on a keep-alive connection."""
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    try:
        for _ in range(2):  # the same keep-alive connection answers both
            conn.request("GET", "/open")
            assert conn.getresponse().read() == b"GIF89a"
        (channel,) = server.server.active_channels.values()
        assert channel.socket.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
    finally:
        conn.close()
