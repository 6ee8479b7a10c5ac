"""Real servers on loopback for end-to-end tests: an SMTP sink and an SMS provider.

Both record what they receive and can be told to refuse, so tests assert on
what actually crossed the wire, not on calls to a mock.
"""
from __future__ import annotations

import email
import email.policy
import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class SmtpSink:
    """aiosmtpd on 127.0.0.1; ``messages`` holds parsed emails; ``refuse`` maps address -> reply."""

    def __init__(self):
        self.messages: list[email.message.Message] = []
        #: the same messages as the bytes that arrived (dot-stuffing undone)
        self.contents: list[bytes] = []
        self.refuse: dict[str, str] = {}
        #: address -> replies to give to its next RCPTs, in order ("250 OK" accepts)
        self.script: dict[str, list[str]] = {}
        #: seconds to wait before accepting each message (a slow provider)
        self.delay = 0.0
        #: messages one connection may carry; the next MAIL on it is refused with 421 and, with
        #: ``over_limit = "disconnect"``, the connection is closed without an answer instead
        self.max_per_connection: int | None = None
        self.over_limit = "421"
        #: the client address and port of the connection each accepted message came on
        self.peers: list[tuple] = []
        #: (connection, reply, messages accepted before it) of each scripted RCPT refusal
        self.refusals: list[tuple[tuple, str, int]] = []
        #: advertise PIPELINING (RFC 2920) in the EHLO reply; aiosmtpd reads commands line by line
        #: and answers them in order, so it serves pipelined commands as they come
        self.pipelining = False
        #: replies to give to the next MAIL commands, in order ("250 OK" accepts)
        self.mail_replies: list[str] = []
        #: address -> replies to give at the end of its next DATA, in order ("250 ..." accepts)
        self.data_script: dict[str, list[str]] = {}
        #: every chunk of bytes the server read from a client, in order: one read holding
        #: MAIL, RCPT and DATA proves they were pipelined
        self.reads: list[bytes] = []
        self.lock = threading.Lock()
        self.port = free_port()
        self.controller = _RecordingController(self, hostname="127.0.0.1", port=self.port)

    async def handle_EHLO(self, server, session, envelope, hostname, responses):
        session.host_name = hostname  # this hook replaces aiosmtpd's own bookkeeping of EHLO
        if self.pipelining:
            responses.insert(-1, "250-PIPELINING")
        return responses

    async def handle_MAIL(self, server, session, envelope, address, mail_options):
        with self.lock:
            carried = sum(1 for peer in self.peers if peer == session.peer)
        if self.max_per_connection is not None and carried >= self.max_per_connection:
            if self.over_limit == "disconnect":
                server.transport.close()
            return "421 4.7.0 too many messages on this connection, closing"
        if self.mail_replies:
            reply = self.mail_replies.pop(0)
            if not reply.startswith("250"):
                return reply
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 OK"

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        if self.script.get(address):
            reply = self.script[address].pop(0)
            if not reply.startswith("250"):
                with self.lock:
                    self.refusals.append((session.peer, reply, len(self.peers)))
                return reply
        if address in self.refuse:
            return self.refuse[address]
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        if self.delay:
            import asyncio

            await asyncio.sleep(self.delay)
        scripted = [self.data_script[a].pop(0) for a in envelope.rcpt_tos if self.data_script.get(a)]
        refused = [reply for reply in scripted if not reply.startswith("250")]
        if refused:
            return refused[0]
        with self.lock:
            self.messages.append(email.message_from_bytes(envelope.content, policy=email.policy.default))
            self.contents.append(envelope.original_content)
            self.peers.append(session.peer)
        return "250 Message accepted"

    def keys(self) -> list[str]:
        with self.lock:
            return [m["X-Engine-Message-Key"] for m in self.messages]

    def __enter__(self):
        self.controller.start()
        return self

    def __exit__(self, *exc):
        self.controller.stop()


class _RecordingSmtp(SMTP):
    """aiosmtpd's protocol, also recording each chunk read from the client (see ``SmtpSink.reads``)."""

    def __init__(self, sink: SmtpSink, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._sink = sink

    def data_received(self, data: bytes) -> None:
        with self._sink.lock:
            self._sink.reads.append(bytes(data))
        super().data_received(data)


class _RecordingController(Controller):
    def factory(self):
        return _RecordingSmtp(self.handler, self.handler, **self.SMTP_kwargs)


class SmsProvider:
    """A JSON HTTP endpoint like an SMS provider's; records requests, answers 200 with an id.

    It honours the ``Idempotency-Key`` header as Stripe's API and the IETF httpapi draft describe:
    a request whose key was already answered with a 200 gets that answer again (with
    ``Idempotent-Replayed: true``) and delivers nothing new. Refused attempts are not remembered,
    so a retry after a 429 or 500 is processed. ``requests`` still lists every request that arrived
    (a replay has ``replayed`` set), so a test can count what crossed the wire as well as what
    the provider delivered (``delivered``).
    """

    def __init__(self):
        self.requests: list[dict] = []
        self.status_for: dict[str, int] = {}  # phone number -> HTTP status to answer
        self.script: dict[str, list[int]] = {}  # phone number -> statuses for its next requests
        self.delay = 0.0  # seconds before answering (longer than the client timeout = a timeout)
        #: phone number -> the body of an error answer, formatted with the request's to and reference
        #: (providers quote the recipient back: "invalid number {to}")
        self.reply_for: dict[str, str] = {}
        #: phone number -> the raw body of its 200 answer instead of {"id": ...} (a provider's odd answer)
        self.accepted_body: dict[str, bytes] = {}
        self.honour_idempotency = True
        self.answered: dict[str, bytes] = {}  # idempotency key -> the body of its 200 answer
        self.lock = threading.Lock()
        sink = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                length = int(self.headers["Content-Length"])
                raw = self.rfile.read(length)
                if len(raw) < length:  # the client died mid-request (a kill test): nothing was sent
                    self.close_connection = True
                    return
                body = json.loads(raw)
                key = (self.headers.get("Idempotency-Key") or "").strip().strip('"') or None
                with sink.lock:
                    replayed = sink.honour_idempotency and key in sink.answered
                    if replayed:
                        status, payload = 200, sink.answered[key]
                    else:
                        scripted = sink.script.get(body.get("to"))
                        status = scripted.pop(0) if scripted else sink.status_for.get(body.get("to"), 200)
                    # the status answered, so tests can tell deliveries (200) from refused attempts
                    sink.requests.append({"body": body, "raw": raw, "authorization": self.headers.get("Authorization"),
                                          "status": status, "idempotency_key": key, "replayed": replayed})
                    if not replayed:
                        payload = json.dumps({"id": f"sms-{len(sink.requests)}"} if status == 200 else {"error": "refused"}).encode()
                        if status != 200 and body.get("to") in sink.reply_for:
                            payload = sink.reply_for[body["to"]].format(to=body["to"], reference=body.get("reference")).encode()
                        if status == 200 and body.get("to") in sink.accepted_body:
                            payload = sink.accepted_body[body["to"]]
                        if status == 200 and key is not None:
                            sink.answered[key] = payload
                if sink.delay:
                    import time

                    time.sleep(sink.delay)
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                if replayed:
                    self.send_header("Idempotent-Replayed", "true")
                self.end_headers()
                try:
                    self.wfile.write(payload)
                except (BrokenPipeError, ConnectionResetError):  # the client gave up waiting (a timeout test)
                    self.close_connection = True

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1/messages"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def delivered(self) -> list[str]:
        """The references of the messages the provider delivered: answered 200, not a replay."""
        with self.lock:
            return [r["body"]["reference"] for r in self.requests if r["status"] == 200 and not r["replayed"]]

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()
