"""Web push dispatch against a loopback push service, for benchmarks/run.py (beside email's dispatch rows).

The push service is a minimal HTTP/1.1 keep-alive server in a child process
that answers 201 to every POST (it does not decrypt: tests/test_push.py proves
what arrives decrypts; here it is the far end of the wire). Measured in one run:

- the ceiling: a bare httpx client POSTing one pre-encrypted body per request
  over the same number of connections (no encryption, no VAPID);
- encryption alone: pywebpush's RFC 8291 aes128gcm encryption of a payload
  for one subscription (a fresh ECDH key pair per message, as RFC 8291 asks);
- the engine's path: ``WebPushChannel`` + ``send_all`` (document, encryption,
  the cached VAPID JWT, the POST) as messages per second and as a ratio of the ceiling.
"""
from __future__ import annotations

import base64
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

SERVER = r"""
import socket, sys, threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
count = 0
lock = threading.Lock()
class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def log_message(self, *args): pass
    def do_POST(self):
        global count
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        with lock:
            count += 1
        self.send_response(201)
        self.send_header("Location", "/m")
        self.send_header("Content-Length", "0")
        self.end_headers()
    def do_GET(self):
        body = str(count).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
server.daemon_threads = True
print(server.server_address[1], flush=True)
server.serve_forever()
"""


class PushSinkProcess:
    """The loopback push service in a child process; ``received()`` asks it how many POSTs it answered."""

    def __init__(self):
        self.process = subprocess.Popen([sys.executable, "-c", SERVER], stdout=subprocess.PIPE, text=True)
        self.port = int(self.process.stdout.readline())
        self.origin = f"http://127.0.0.1:{self.port}"

    def received(self) -> int:
        import httpx

        return int(httpx.get(f"{self.origin}/count").text)

    def cpu_seconds(self) -> float | None:
        try:
            fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
            return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        except (OSError, IndexError, ValueError):
            return None

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=10)


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def subscriptions(origin: str, count: int) -> list[str]:
    """``count`` subscriptions at the sink, each with its own P-256 key and auth secret, as the message's to."""
    import json

    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    found = []
    for i in range(count):
        point = ec.generate_private_key(ec.SECP256R1()).public_key().public_bytes(
            serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)
        found.append(json.dumps([{"endpoint": f"{origin}/push/{i}", "keys": {"p256dh": _b64(point),
                                                                            "auth": _b64(os.urandom(16))}}]))
    return found


def measure_push(count: int, connections: int, repeat: int = 1) -> list[dict]:
    """Rows for benchmarks/run.py's table: ceiling, encryption alone, the engine's dispatch."""
    import httpx
    from cryptography.hazmat.primitives.asymmetric import ec
    from pywebpush import WebPusher

    from engine.channels.base import OutgoingMessage
    from engine.channels.webpush import WebPushChannel, document
    from engine.model import ChannelConfig
    from engine.run.dispatch import send_all

    sink = PushSinkProcess()
    try:
        addresses = subscriptions(sink.origin, count)
        messages = [OutgoingMessage(
            key=f"bench:push:{i}:{i}", kind="push", to=to, sender="Shop",
            parts={"title": f"Still thinking about it, Customer {i}?",
                   "body": "Hand grinder and 2 more you looked at are still here.",
                   "icon": "https://shop.example.com/img/5.jpg", "url": "https://shop.example.com/p/5"},
            headers={"TTL": "43200", "Urgency": "normal", "Topic": "browse-abandonment"})
            for i, to in enumerate(addresses)]
        import json
        subscription = json.loads(addresses[0])[0]
        payload = document(messages[0])
        body = WebPusher(subscription).encode(payload, "aes128gcm")["body"]
        rows = []

        def ceiling() -> float:
            with httpx.Client(limits=httpx.Limits(max_keepalive_connections=connections)) as client:
                def worker(share: range):
                    for i in share:
                        client.post(f"{sink.origin}/push/{i}", content=body,
                                    headers={"TTL": "43200", "Content-Encoding": "aes128gcm"})
                shares = [range(w, count, connections) for w in range(connections)]
                started = time.perf_counter()
                threads = [threading.Thread(target=worker, args=(s,)) for s in shares]
                for t in threads:
                    t.start()
                for t in threads:
                    t.join()
                return time.perf_counter() - started

        ceiling_seconds = statistics.median(ceiling() for _ in range(repeat))
        limit = count / ceiling_seconds
        rows.append({"what": f"push ceiling: bare httpx POST, {connections} connections", "rows": count,
                     "seconds": ceiling_seconds, "note": f"{limit:,.0f} POST/s, {len(body)}-byte encrypted body"})

        started = time.perf_counter()
        for _ in range(min(count, 1000)):
            WebPusher(subscription).encode(payload, "aes128gcm")
        encrypt = (time.perf_counter() - started) / min(count, 1000)
        rows.append({"what": "push encryption alone (RFC 8291 aes128gcm, pywebpush)", "rows": min(count, 1000),
                     "seconds": encrypt * min(count, 1000), "note": f"{encrypt * 1e6:,.0f} us/message, one CPU"})

        private = ec.generate_private_key(ec.SECP256R1()).private_numbers().private_value.to_bytes(32, "big")
        os.environ["BENCH_VAPID_PRIVATE_KEY"] = _b64(private)
        config = ChannelConfig(name="push", kind="push", transport="webpush", settings={
            "vapid_private_key": "${BENCH_VAPID_PRIVATE_KEY}", "vapid_subject": "mailto:ops@shop.example",
            "connections": connections})

        def dispatch():
            session = WebPushChannel(config)
            session.open()
            try:
                return send_all([("push", m) for m in messages], {"push": session})
            finally:
                session.close()

        runs = []
        for _ in range(repeat):
            before, cpu_before = sink.received(), time.process_time()
            started = time.perf_counter()
            results = dispatch()
            runs.append((time.perf_counter() - started, time.process_time() - cpu_before, sink.received() - before,
                         sum(1 for r in results if r is not None and r.outcome.status == "sent")))
        seconds, cpu, got, sent = sorted(runs)[len(runs) // 2]
        rows.append({"what": f"push dispatch: send_all over webpush, {connections} connections", "rows": sent,
                     "seconds": seconds,
                     "note": f"{sent / seconds:,.0f} push/s (encryption + VAPID included) = {sent / seconds / limit:.2f} x "
                             f"ceiling; engine CPU {cpu / max(sent, 1) * 1e6:,.0f} us/msg; service got {got:,}"})
        return rows
    finally:
        sink.stop()


if __name__ == "__main__":  # python benchmarks/push.py [count] [connections]
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    for row in measure_push(int(sys.argv[1]) if len(sys.argv) > 1 else 2000,
                            int(sys.argv[2]) if len(sys.argv) > 2 else 4):
        print(f"{row['what']:<62} {row['rows']:>6,} {row['seconds']:8.3f} s  {row['note']}")
