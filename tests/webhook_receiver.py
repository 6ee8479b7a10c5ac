"""A Standard Webhooks receiver on loopback, and a proxy that tampers with requests on their way to it.

The receiver verifies every request twice - with the ``standardwebhooks`` verifier (which also
checks the timestamp is within five minutes) and with an HMAC computed here by hand from the
specification - and answers 401 when either fails. It deduplicates by ``webhook-id`` as the
specification tells receivers to: a request whose id it already processed is answered 200 and
not processed again. ``script`` gives a customer's next answers ((status, Retry-After) pairs),
so tests see what the engine does with 429, 500 and 400. ``requests`` keeps every request that
arrived (raw body, headers, verdict, answer), so tests assert on what crossed the wire.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
from standardwebhooks import Webhook, WebhookVerificationError


def hand_signature(secret: str, webhook_id: str, timestamp: str, body: bytes) -> str:
    """The specification's v1 signature, computed without the library: base64(HMAC-SHA256(key, id.ts.body))."""
    key = base64.b64decode(secret.removeprefix("whsec_"))
    return "v1," + base64.b64encode(hmac.new(key, f"{webhook_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()).decode()


class WebhookReceiver:
    def __init__(self, secret: str, port: int = 0):
        self.secret = secret
        self.verifier = Webhook(secret)
        self.requests: list[dict] = []
        #: webhook-id -> the parsed body it was processed with (once)
        self.processed: dict[str, dict] = {}
        #: customer id -> (status, Retry-After or None) answers for its next requests
        self.script: dict[str, list[tuple[int, str | None]]] = {}
        #: seconds to wait before answering (longer than the engine's timeout: a hanging receiver)
        self.delay = 0.0
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self):
                raw = self.rfile.read(int(self.headers["Content-Length"]))
                headers = {name.lower(): value for name, value in self.headers.items()}
                status, retry_after, verdict = receiver._answer(raw, headers)
                if receiver.delay:
                    import time

                    time.sleep(receiver.delay)
                payload = json.dumps({"verdict": verdict}).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                if retry_after is not None:
                    self.send_header("Retry-After", retry_after)
                self.end_headers()
                try:
                    self.wfile.write(payload)
                except (BrokenPipeError, ConnectionResetError):  # the client gave up waiting (a timeout test)
                    self.close_connection = True

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}/hooks/shop"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def _answer(self, raw: bytes, headers: dict[str, str]) -> tuple[int, str | None, str]:
        try:
            body = self.verifier.verify(raw, headers)
            library = True
        except WebhookVerificationError:
            body, library = None, False
        by_hand = hmac.compare_digest(
            hand_signature(self.secret, headers.get("webhook-id", ""), headers.get("webhook-timestamp", ""), raw),
            headers.get("webhook-signature", ""))
        record = {"raw": raw, "headers": headers, "library": library, "by_hand": by_hand, "duplicate": False,
                  "retry_after": None}
        with self.lock:
            self.requests.append(record)
            if not (library and by_hand):
                record.update(status=401, verdict="bad signature")
            elif headers["webhook-id"] in self.processed:
                record.update(status=200, verdict="duplicate", duplicate=True)
            else:
                scripted = self.script.get(body["data"]["customer_id"])
                status, retry_after = scripted.pop(0) if scripted else (200, None)
                record.update(status=status, verdict="processed" if status == 200 else "refused", retry_after=retry_after)
                if status == 200:
                    self.processed[headers["webhook-id"]] = body
        return record["status"], record["retry_after"], record["verdict"]

    def customers(self) -> list[str]:
        """The customer ids of the processed webhooks (each id once), sorted."""
        with self.lock:
            return sorted(body["data"]["customer_id"] for body in self.processed.values())

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()


class TamperingProxy:
    """Forwards webhooks to ``target``, changing those of ``body_for`` customers (one byte of the
    body: a tampered field) and ``timestamp_for`` customers (webhook-timestamp one second later)."""

    def __init__(self, target: str):
        self.target = target
        self.body_for: set[str] = set()
        self.timestamp_for: set[str] = set()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self):
                raw = self.rfile.read(int(self.headers["Content-Length"]))
                headers = {name: value for name, value in self.headers.items()
                           if name.lower() not in ("host", "content-length", "connection")}
                customer = json.loads(raw)["data"]["customer_id"]
                if customer in proxy.body_for:
                    raw = raw.replace(b'"customer_id":"', b'"customer_id":" ', 1)  # still valid JSON
                if customer in proxy.timestamp_for:
                    headers = {k: str(int(v) + 1) if k.lower() == "webhook-timestamp" else v for k, v in headers.items()}
                answer = httpx.post(proxy.target, content=raw, headers=headers, timeout=5)
                self.send_response(answer.status_code)
                self.send_header("Content-Length", str(len(answer.content)))
                self.end_headers()
                self.wfile.write(answer.content)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks/shop"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()
