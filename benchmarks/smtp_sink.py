"""Loopback SMTP sinks for the benchmark, each in its own process (not sharing the engine's GIL).

``fast``: a minimal asyncio SMTP server (an ``asyncio.Protocol``, no
per-command objects) that answers EHLO/HELO, MAIL, RCPT, DATA, RSET, NOOP and
QUIT, accepts every message and counts it. It advertises PIPELINING
(RFC 2920): it answers every complete command line of a read in order, in one
write, so a client may send MAIL, RCPT and DATA together. It exists because aiosmtpd, a full
server written for correctness, costs more CPU per message than the engine
does, so it would measure itself rather than the engine.

``aiosmtpd``: the server the tests use, counting in ``handle_DATA``; the
benchmark reports its ceiling too, for comparison.

Not a test fixture and not a mail server: it keeps nothing but a count.
"""
from __future__ import annotations

import asyncio
import multiprocessing
import socket
import threading
from pathlib import Path


class _FastSmtp(asyncio.Protocol):
    """One SMTP connection: command lines, then the DATA body up to ``CRLF.CRLF``."""

    def __init__(self, received):
        self.received = received
        self.buffer = b""
        self.in_data = False

    def connection_made(self, transport):
        self.transport = transport
        transport.write(b"220 127.0.0.1 benchmark sink\r\n")

    def data_received(self, data: bytes) -> None:
        buffer = self.buffer + data
        replies = []
        while True:
            if self.in_data:
                end = buffer.find(b"\r\n.\r\n")
                if end < 0:
                    break
                buffer = buffer[end + 5:]
                self.in_data = False
                self.received.value += 1  # a single-threaded loop: no lock needed on the writer side
                replies.append(b"250 OK queued\r\n")
                continue
            end = buffer.find(b"\r\n")
            if end < 0:
                break
            line, buffer = buffer[:end], buffer[end + 2:]
            verb = line[:4].upper()
            if verb == b"EHLO":
                replies.append(b"250-127.0.0.1\r\n250-PIPELINING\r\n250-8BITMIME\r\n250-SMTPUTF8\r\n250 SIZE 33554432\r\n")
            elif verb == b"DATA":
                self.in_data = True
                # a body that is empty after DATA starts with ".\r\n", not "\r\n.\r\n"
                buffer = b"\r\n" + buffer
                replies.append(b"354 End data with <CR><LF>.<CR><LF>\r\n")
            elif verb == b"QUIT":
                replies.append(b"221 Bye\r\n")
                self.transport.write(b"".join(replies))
                self.transport.close()
                return
            else:  # HELO, MAIL, RCPT, RSET, NOOP
                replies.append(b"250 OK\r\n")
        self.buffer = buffer
        if replies:
            self.transport.write(b"".join(replies))


def _serve_fast(port: int, ready, received) -> None:
    async def main():
        loop = asyncio.get_running_loop()
        server = await loop.create_server(lambda: _FastSmtp(received), "127.0.0.1", port, backlog=128)
        ready.set()
        async with server:
            await server.serve_forever()

    asyncio.run(main())


def _serve_aiosmtpd(port: int, ready, received) -> None:
    from aiosmtpd.controller import Controller

    class Handler:
        async def handle_DATA(self, server, session, envelope):
            received.value += 1  # handlers run on the controller's one event loop thread
            return "250 Message accepted"

    controller = Controller(Handler(), hostname="127.0.0.1", port=port)
    controller.start()
    ready.set()
    threading.Event().wait()  # until terminated


class ChildServer:
    """A server on a free loopback port in a spawned child process, ``target(port, ready, *args)``, which sets
    ``ready`` once it listens; ``what`` names it when it does not start (the SMTP sinks, smtp_rtt's proxy)."""

    def __init__(self, target, args: tuple, what: str):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        context = multiprocessing.get_context("spawn")
        ready = context.Event()
        self._process = context.Process(target=target, args=(self.port, ready, *args), daemon=True)
        self._process.start()
        if not ready.wait(60):
            self.stop()
            raise SystemExit(f"{what} did not start")

    def stop(self) -> None:
        self._process.terminate()
        self._process.join(10)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()


class SinkProcess(ChildServer):
    """A sink (``fast`` or ``aiosmtpd``) on a free loopback port, in a child process."""

    def __init__(self, kind: str = "fast"):
        self.kind = kind
        self._received = multiprocessing.get_context("spawn").Value("q", 0, lock=False)
        super().__init__(_serve_fast if kind == "fast" else _serve_aiosmtpd, (self._received,),
                         f"the {kind} SMTP sink" + (" (is aiosmtpd installed? pip install -e '.[test]')"
                                                    if kind == "aiosmtpd" else ""))

    def received(self) -> int:
        return self._received.value

    def cpu_seconds(self) -> float | None:
        """CPU seconds the sink process has used so far (user + system; Linux /proc), else None."""
        import os

        try:
            fields = Path(f"/proc/{self._process.pid}/stat").read_text().rpartition(")")[2].split()
        except OSError:
            return None
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def ceiling(port: int, message: bytes, count: int, connections: int, pipelined: bool = False) -> float:
    """Messages per second a bare smtplib client reaches against the sink on ``port``:
    ``count`` copies of one pre-built message over ``connections`` reused connections.

    Plain: ``sendmail``, four round trips per message. ``pipelined``: MAIL, RCPT and DATA in
    one write and their three replies, then the content (RFC 2920), two round trips."""
    import re
    import smtplib
    import time

    envelope = b"MAIL FROM:<shop@example.com>\r\nRCPT TO:<customer@example.com>\r\nDATA\r\n"

    def blast(n: int) -> None:
        client = smtplib.SMTP("127.0.0.1", port)
        client.ehlo()
        if not pipelined:
            for _ in range(n):
                client.sendmail("shop@example.com", ["customer@example.com"], message)
        else:
            assert client.has_extn("pipelining"), "the sink does not advertise PIPELINING"
            for _ in range(n):
                client.send(envelope)
                replies = [client.getreply()[0] for _ in range(3)]
                assert replies == [250, 250, 354], replies
                content = re.sub(rb"(?m)^\.", b"..", message)  # as sendmail does, per message
                client.send(content + (b"" if content.endswith(b"\r\n") else b"\r\n") + b".\r\n")
                code = client.getreply()[0]
                assert code == 250, code
        client.quit()

    shares = [count // connections + (1 if i < count % connections else 0) for i in range(connections)]
    started = time.perf_counter()
    threads = [threading.Thread(target=blast, args=(n,)) for n in shares]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return count / (time.perf_counter() - started)
