"""SMTP command pipelining (RFC 2920): MAIL, RCPT and DATA in one write when the server
advertises PIPELINING, with exactly the outcomes of the plain path.

A real aiosmtpd server on loopback (tests/servers.py) that can advertise PIPELINING and
records every chunk it read from a client: one read holding MAIL, RCPT and DATA is the
proof that they went out together (two round trips per message instead of four). A whole
pass over four pipelined connections is a parameter of tests/test_smtp_connections.py.
"""
from __future__ import annotations

import pytest

from engine import Reconciler, load_project
from engine.channels.base import Delivered, Failed, OutgoingMessage
from engine.channels.smtp import SmtpChannel
from engine.model import ChannelConfig
from servers import SmtpSink
from test_delivery import at, campaign, configure, customers, orders, project  # noqa: F401 - fixture
from test_smtp_connections import commands, envelope, expected_keys



def message(i: int, to: str | None = None) -> OutgoingMessage:
    # lines starting with a dot must be dot-stuffed on the wire and arrive unchanged
    return OutgoingMessage(key=f"test:mail:{i}:{i}", kind="email", to=to or f"c{i}@example.com",
                           sender="Shop <shop@example.com>",
                           parts={"subject": f"Message {i}",
                                  "text": f"Hello {i},\n.a line with a leading dot\n.\n..two dots\nbye\n"})


def send_over_one_session(port: int, messages: list[OutgoingMessage], **settings) -> list:
    """Each message's outcome, sent in order by one channel session with one connection to ``port``."""
    session = SmtpChannel(ChannelConfig(name="email", kind="email", transport="smtp",
                                        settings={"host": "127.0.0.1", "port": port, "connections": 1, **settings}))
    session.open()
    try:
        return [session.send(m) for m in messages]
    finally:
        session.close()


@pytest.fixture
def sink():
    with SmtpSink() as server:
        server.pipelining = True
        yield server


def test_pipelined_messages_arrive_byte_for_byte(sink):
    outcomes = send_over_one_session(sink.port, [message(i) for i in (1, 2, 3)])
    assert outcomes == [Delivered(provider_id=message(i).message_id(), detail="250 accepted") for i in (1, 2, 3)]
    assert sink.contents == [message(i).to_bytes("\r\n") for i in (1, 2, 3)]  # dot-stuffing undone exactly
    assert [read for read in commands(sink) if b"MAIL" in read.upper()] == [envelope(f"c{i}@example.com") for i in (1, 2, 3)]
    assert len(set(sink.peers)) == 1


def test_a_refused_recipient_is_permanent_and_the_connection_carries_the_next_message(sink):
    sink.refuse["gone@example.com"] = "550 5.1.1 no such user"
    refused, delivered = send_over_one_session(sink.port, [message(1, to="gone@example.com"), message(2)])
    assert refused == Failed(detail="550 5.1.1 no such user", permanent=True)
    assert delivered == Delivered(provider_id=message(2).message_id(), detail="250 accepted")
    assert sink.keys() == ["test:mail:2:2"]
    # no content after the refused DATA; the transaction reset, then the next one on the same connection
    assert commands(sink)[1:] == [envelope("gone@example.com"), b"rset\r\n", envelope("c2@example.com"), b"quit\r\n"]
    assert sum(read.startswith(b"From: ") for read in sink.reads) == 1
    assert len(set(sink.peers)) == 1


@pytest.mark.parametrize("reply, permanent", [("451 4.3.0 try again later", False), ("550 5.7.1 sender rejected", True)])
def test_a_refused_mail_command_fails_by_its_own_reply(sink, reply, permanent):
    """MAIL refused: RCPT and DATA are answered 503 (no transaction), but the outcome is MAIL's."""
    sink.mail_replies = [reply]
    refused, delivered = send_over_one_session(sink.port, [message(1), message(2)])
    assert refused == Failed(detail=reply, permanent=permanent)
    assert isinstance(delivered, Delivered)
    assert sink.keys() == ["test:mail:2:2"]
    assert commands(sink)[1:] == [envelope("c1@example.com"), b"rset\r\n", envelope("c2@example.com"), b"quit\r\n"]
    assert len(set(sink.peers)) == 1


def test_a_refusal_at_the_end_of_data_is_transient_and_the_connection_carries_on(sink):
    sink.data_script["c1@example.com"] = ["451 4.3.0 queue full"]
    refused, delivered = send_over_one_session(sink.port, [message(1), message(2)])
    assert refused == Failed(detail="451 4.3.0 queue full", permanent=False)
    assert isinstance(delivered, Delivered)
    assert sink.keys() == ["test:mail:2:2"]
    assert len(set(sink.peers)) == 1


def test_421_at_rcpt_is_transient_and_the_connection_is_replaced(sink):
    sink.script["c1@example.com"] = ["421 4.7.0 closing"]
    closing, delivered = send_over_one_session(sink.port, [message(1), message(2)])
    assert closing == Failed(detail="421 4.7.0 closing", permanent=False)
    assert isinstance(delivered, Delivered)
    assert sink.keys() == ["test:mail:2:2"]
    assert sum(read.startswith(b"ehlo") for read in sink.reads) == 2  # a second connection for message 2


@pytest.mark.parametrize("advertised, setting", [(False, {}), (True, {"pipelining": False})])
def test_without_pipelining_each_command_waits_for_its_reply(advertised, setting):
    """A server that does not advertise PIPELINING (or the channel's ``pipelining: false``): the plain
    path, one command per read, with the same outcomes."""
    with SmtpSink() as sink:
        sink.pipelining = advertised
        sink.refuse["gone@example.com"] = "550 5.1.1 no such user"
        outcomes = send_over_one_session(sink.port, [message(1), message(2, to="gone@example.com"), message(3)], **setting)
        assert [type(o) for o in outcomes] == [Delivered, Failed, Delivered]
        assert outcomes[1] == Failed(detail="550 5.1.1 no such user", permanent=True)
        assert sink.keys() == ["test:mail:1:1", "test:mail:3:3"]
        assert sink.contents == [message(i).to_bytes("\r\n") for i in (1, 3)]
        assert commands(sink)[1:] == [
            b"mail FROM:<shop@example.com>\r\n", b"rcpt TO:<c1@example.com>\r\n", b"data\r\n",
            b"mail FROM:<shop@example.com>\r\n", b"rcpt TO:<gone@example.com>\r\n", b"rset\r\n",
            b"mail FROM:<shop@example.com>\r\n", b"rcpt TO:<c3@example.com>\r\n", b"data\r\n", b"quit\r\n"]


class _CarelessServer:
    """A raw SMTP server that advertises PIPELINING but answers DATA with 354 even after it refused
    the recipient (RFC 2920 says it must not): it records what it read and how many connections."""

    def __init__(self):
        import socket
        import threading

        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.received: list[bytes] = []
        self.connections = 0
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        import threading

        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._session, args=(conn,), daemon=True).start()

    def _session(self, conn) -> None:
        with conn:
            conn.sendall(b"220 careless\r\n")
            file = conn.makefile("rb")
            in_data = False
            for line in file:
                self.received.append(line)
                if in_data:
                    if line == b".\r\n":
                        in_data = False
                        conn.sendall(b"250 OK\r\n")
                    continue
                verb = line[:4].upper()
                if verb == b"EHLO":
                    conn.sendall(b"250-careless\r\n250 PIPELINING\r\n")
                elif verb == b"RCPT":
                    conn.sendall(b"550 5.1.1 no such user\r\n" if b"gone@" in line else b"250 OK\r\n")
                elif verb == b"DATA":
                    in_data = True
                    conn.sendall(b"354 go ahead\r\n")
                elif verb == b"QUIT":
                    conn.sendall(b"221 bye\r\n")
                    return
                else:
                    conn.sendall(b"250 OK\r\n")

    def close(self) -> None:
        self.listener.close()


def test_a_server_that_accepts_data_after_refusing_the_recipient_gets_no_content():
    """DATA answered 354 although RCPT was refused: the engine sends no content (which would be an
    empty or stray message), reports the RCPT refusal and leaves that connection for a new one."""
    server = _CarelessServer()
    try:
        refused, delivered = send_over_one_session(server.port, [message(1, to="gone@example.com"), message(2)])
    finally:
        server.close()
    assert refused == Failed(detail="550 5.1.1 no such user", permanent=True)
    assert delivered == Delivered(provider_id=message(2).message_id(), detail="250 accepted")
    assert server.connections == 2
    assert not any(b"gone@example.com" in line for line in server.received if not line.upper().startswith(b"RCPT"))
    assert server.received.count(b".\r\n") == 1  # one message's end of data: message 2's
    # nothing else on the confused connection either: a RSET there would be read as message content
    assert [line.upper() for line in server.received].count(b"RSET\r\n") == 0


def test_pipelining_false_in_engine_yaml_is_accepted_and_keeps_the_plain_path(project, sink):
    configure(project, sink.port)
    path = project / "engine.yaml"
    path.write_text(path.read_text().replace("    delivery: at_most_once\n", "    delivery: at_most_once\n    pipelining: false\n", 1))
    project.load({"notify": campaign()}, customers=customers(3), orders=orders(3))
    r = Reconciler(load_project(project))
    try:
        report = r.run_once(at(minutes=1))
    finally:
        r.close()
    assert report.counts[("notify", "mail", "sent")] == 3
    assert sorted(sink.keys()) == expected_keys(3)
    assert sum(read.upper().startswith(b"MAIL FROM") for read in sink.reads) == 3
    assert not any(b"RCPT" in read.upper() and b"MAIL" in read.upper() for read in sink.reads)


def _gone_second(sink):
    sink.refuse["gone@example.com"] = "550 5.1.1 no such user"


def _mail_refused_second(sink):
    sink.mail_replies = ["250 OK", "451 4.3.0 try again later"]


def _data_refused_first(sink):
    sink.data_script["c1@example.com"] = ["554 5.6.0 content rejected"]


def _data_421_first(sink):
    sink.data_script["c1@example.com"] = ["421 4.7.0 closing"]


def _rcpt_421_second(sink):
    sink.script["gone@example.com"] = ["421 4.7.0 closing"]


def _closing_after_two(over_limit):
    def configure_sink(sink):
        sink.max_per_connection, sink.over_limit = 2, over_limit
    return configure_sink


GROUP_CASES = {
    "all accepted": (lambda sink: None, [1, 2, 3, 4]),
    "recipient refused in the middle": (_gone_second, [1, "gone", 3, 4]),
    "MAIL refused in the middle": (_mail_refused_second, [1, 2, 3]),
    "content refused, the next envelope already sent": (_data_refused_first, [1, 2, 3]),
    "421 at the end of data, the next envelope already sent": (_data_421_first, [1, 2, 3]),
    "421 at a chained RCPT": (_rcpt_421_second, [1, "gone", 3]),
    "421 at a chained MAIL": (_closing_after_two("421"), [1, 2, 3, 4, 5]),
    "hang-up at a chained MAIL": (_closing_after_two("disconnect"), [1, 2, 3, 4, 5]),
    "a non-ASCII recipient in the middle": (lambda sink: None, [1, "ü", 3]),
}


def _group_messages(spec: list) -> list[OutgoingMessage]:
    recipients = {"gone": "gone@example.com", "ü": "jürgen@example.com"}
    return [message(i, to=recipients[part]) if part in recipients else message(i) for i, part in enumerate(spec, 1)]


@pytest.mark.parametrize("case", sorted(GROUP_CASES))
def test_a_group_sent_chained_has_the_outcomes_and_bytes_of_one_send_per_message(case):
    """``send_group`` (a message's content and the next one's MAIL, RCPT and DATA in one write) against
    ``send`` per message, each on a fresh server configured alike: the same outcome for every message,
    the same messages accepted with the same bytes, whatever the server refuses or closes where."""
    configure_sink, spec = GROUP_CASES[case]
    seen = {}
    for way in ("send", "send_group"):
        with SmtpSink() as sink:
            sink.pipelining = True
            configure_sink(sink)
            session = SmtpChannel(ChannelConfig(name="email", kind="email", transport="smtp",
                                                settings={"host": "127.0.0.1", "port": sink.port, "connections": 1}))
            session.open()
            try:
                messages = _group_messages(spec)
                outcomes = [session.send(m) for m in messages] if way == "send" else list(session.send_group(messages))
            finally:
                session.close()
            seen[way] = (outcomes, sink.keys(), sink.contents, sink.reads)
    assert seen["send_group"][:3] == seen["send"][:3]
    if case == "all accepted":  # chained: every envelope after the first came with the content before it
        assert sum(read.startswith(b"From: ") and b"\r\n.\r\nMAIL FROM" in read for read in seen["send_group"][3]) == 3


def test_a_group_stopped_early_leaves_no_reply_unread_on_a_pooled_connection(sink):
    """Abandoning ``send_group`` after the first outcome (the next envelope is on the wire, its replies
    unread): that connection is dropped, so the next message on the session is answered by its own replies."""
    session = SmtpChannel(ChannelConfig(name="email", kind="email", transport="smtp",
                                        settings={"host": "127.0.0.1", "port": sink.port, "connections": 1}))
    session.open()
    try:
        group = session.send_group([message(1), message(2)])
        assert isinstance(next(group), Delivered)
        group.close()
        assert session.send(message(3)) == Delivered(provider_id=message(3).message_id(), detail="250 accepted")
    finally:
        session.close()
    assert sink.keys() == ["test:mail:1:1", "test:mail:3:3"]
