"""Webhook posts per second beside emails per second, in the same run (imported by run.py; also
``python benchmarks/webhook.py``).

The receiver is a minimal asyncio HTTP/1.1 server in its own process (keep-alive, answers 204,
counts requests; it does not verify, so it measures the engine and not itself). Measured:

- **sign only**: ``document`` + Standard Webhooks signature per message, no I/O;
- **dispatch only**: ``WebhookChannel`` + ``send_all`` over the channel's default connections,
  against the same number of messages sent as email by ``SmtpChannel`` + ``send_all`` to the fast
  SMTP sink (pipelined), so the note gives webhooks/s as a ratio of emails/s measured in this run.
"""
from __future__ import annotations

import asyncio
import multiprocessing
import os
import socket
import statistics
import time
from pathlib import Path

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"  # 24 bytes: a benchmark's, never a real one


class _Receiver(asyncio.Protocol):
    def __init__(self, received):
        self.received = received
        self.buffer = b""

    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        replies = []
        while True:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                break
            length = 0
            for line in self.buffer[:end].split(b"\r\n"):
                if line[:15].lower() == b"content-length:":
                    length = int(line[15:])
            if len(self.buffer) < end + 4 + length:
                break
            self.buffer = self.buffer[end + 4 + length:]
            self.received.value += 1
            replies.append(b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n")
        if replies:
            self.transport.write(b"".join(replies))


def _serve(port: int, ready, received) -> None:
    async def main():
        loop = asyncio.get_running_loop()
        server = await loop.create_server(lambda: _Receiver(received), "127.0.0.1", port, backlog=128)
        ready.set()
        async with server:
            await server.serve_forever()

    asyncio.run(main())


class ReceiverProcess:
    def __init__(self):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        context = multiprocessing.get_context("spawn")
        self._ready, self._received = context.Event(), context.Value("q", 0, lock=False)
        self._process = context.Process(target=_serve, args=(self.port, self._ready, self._received), daemon=True)
        self._process.start()
        if not self._ready.wait(60):
            self.stop()
            raise SystemExit("the webhook receiver did not start")

    def received(self) -> int:
        return self._received.value

    def stop(self) -> None:
        self._process.terminate()
        self._process.join(10)


def synthetic_webhooks(count: int) -> list:
    """``count`` webhooks shaped like the demo's open-cart example (about 600 bytes of body)."""
    from engine.channels.base import OutgoingMessage

    return [OutgoingMessage(
        key=f"bench:crm:{i}:{i}", kind="webhook", to=str(i), sender="shop",
        parts={"event": "cart.abandoned", "title": f"Customer {i} left 3 item(s) in the cart",
               "text": "1 x Espresso beans (12.90 EUR)\n2 x Filter papers (3.50 EUR)\n1 x Mug (9.00 EUR)",
               "url": f"https://beanandbrew.example/checkout/{i}"},
        origin={"campaign": "bench", "step": "crm", "variant": "default", "customer_id": str(i),
                "trigger_key": str(i), "due_at": "2025-01-10T00:00:00Z"}) for i in range(1, count + 1)]


def _median_seconds(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def measure_webhooks(count: int, repeat: int = 3, smtp_sink=None) -> list[dict]:
    """Rows for run.py's table: signing alone, webhook dispatch and (with ``smtp_sink``, the fast
    SMTP sink) email dispatch of as many synthetic messages, in this run."""
    from dispatch import synthetic_messages

    from engine.channels.smtp import SmtpChannel
    from engine.channels.webhook_http import DEFAULT_CONNECTIONS, WebhookChannel
    from engine.model import ChannelConfig
    from engine.run.dispatch import send_all

    os.environ.setdefault("ENGINE_BENCH_WEBHOOK_SECRET", SECRET)
    webhooks = synthetic_webhooks(count)
    receiver = ReceiverProcess()
    rows = []
    try:
        config = ChannelConfig(name="crm", kind="webhook", transport="http_post",
                               settings={"url": f"http://127.0.0.1:{receiver.port}/hooks",
                                         "secret": "${ENGINE_BENCH_WEBHOOK_SECRET}"})
        channel = WebhookChannel(config)
        sign = _median_seconds(lambda: [channel.request(m) for m in webhooks], repeat)
        rows.append({"what": "webhook: document + signature only", "rows": count, "seconds": sign,
                     "note": f"{count / sign:,.0f}/s, {len(channel.request(webhooks[0])[0])}-byte body"})

        def post():
            session = WebhookChannel(config)
            session.open()
            try:
                return send_all([("crm", m) for m in webhooks], {"crm": session})
            finally:
                session.close()

        before = receiver.received()
        seconds = _median_seconds(post, repeat)
        received = (receiver.received() - before) // repeat
        rate = count / seconds
        email_rate = None
        if smtp_sink is not None:
            emails = synthetic_messages(count)

            def mail():
                session = SmtpChannel(ChannelConfig(name="email", kind="email", transport="smtp",
                                                    settings={"host": "127.0.0.1", "port": smtp_sink.port}))
                session.open()
                try:
                    return send_all([("email", m) for m in emails], {"email": session})
                finally:
                    session.close()

            mail_seconds = _median_seconds(mail, repeat)
            email_rate = count / mail_seconds
            rows.append({"what": "email: dispatch only, SmtpChannel default connections (pipelined)", "rows": count,
                         "seconds": mail_seconds, "note": f"{email_rate:,.0f} emails/s (the webhook line's reference)"})
        rows.append({"what": f"webhook: dispatch only, send_all, {DEFAULT_CONNECTIONS} connections", "rows": count,
                     "seconds": seconds,
                     "note": f"{rate:,.0f} posts/s" + (f" = {rate / email_rate:.2f} x emails/s" if email_rate else "")
                             + f"; receiver got {received:,} per run"})
    finally:
        receiver.stop()
    return rows


def main() -> None:
    import argparse
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from smtp_sink import SinkProcess

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=2000, help="messages per measurement (default 2000)")
    parser.add_argument("--repeat", type=int, default=3, help="runs per figure; the median is reported (default 3)")
    args = parser.parse_args()
    with SinkProcess("fast") as sink:
        rows = measure_webhooks(args.count, args.repeat, sink)
    print(f"{args.count:,} messages, median of {args.repeat}; load average " + " ".join(f"{x:.2f}" for x in os.getloadavg()))
    for r in rows:
        print(f"{r['what']:<62} {r['rows']:>7,} {r['seconds']:>8.3f}  {r['note']}")


if __name__ == "__main__":
    main()
