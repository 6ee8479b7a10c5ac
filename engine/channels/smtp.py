"""Email over SMTP (stdlib smtplib): a small pool of connections reused for a whole pass.

Credentials come from the environment through ``${VAR}`` in engine.yaml.
A 4xx answer is a transient failure, a 5xx a permanent one (bounce); the
reconciler records both with the server's words.

``connections`` (default 4) is how many connections the channel keeps open
in parallel: each SMTP transaction waits for the server four times (MAIL,
RCPT, DATA, end of data; twice with PIPELINING, below), so one connection
spends most of its time waiting and a few in parallel multiply throughput.
``send`` is safe to call from that many threads at once; each call borrows
one idle connection (or opens one), so every message is one transaction on
one connection with its own outcome.

When the server advertises PIPELINING (RFC 2920) and ``pipelining`` is not
turned off, MAIL, RCPT and DATA go out in one write and their three replies
are read in order, then the content: two round trips per message instead of
four. Every reply is checked; the first one that failed decides the outcome,
exactly as it would have without pipelining (the replies after it are only
the server refusing the rest of the sequence), and the transaction is reset
so the connection carries the next message. A group of messages
(``send_group``, what dispatch hands a connection's worker) goes further: a
message's content and the next message's MAIL, RCPT and DATA share one write
(RFC 2920 lets the content open a group), one round trip per message, with
the outcomes and bytes of ``send`` per message.

A connection that the server closed or answered 421 with ("closing") is
dropped and the next message opens a new one. When that happens at a
message's MAIL command on a reused connection, the server has accepted
nothing of it yet, so it is sent once more on a fresh connection; at any
later stage the message is a transient failure, retried by the ledger.
"""
from __future__ import annotations

import collections
import dataclasses
import functools
import json
import re
import smtplib
import ssl
import threading
from pathlib import Path
from typing import Iterator, Mapping, Sequence

from engine.spec.config import resolve
from engine.errors import ChannelError
from engine.model import ChannelConfig
from engine.channels.base import Delivered, Failed, OutgoingMessage, Outcome

DEFAULT_CONNECTIONS = 4


class _Closed(Exception):
    """The server closed the connection (or said it will: 421) before accepting anything of the message."""

    def __init__(self, detail: str):
        super().__init__(detail)
        self.detail = detail


def open_session(config: ChannelConfig, root: Path) -> "SmtpChannel":
    return SmtpChannel(config)


def document(message: OutgoingMessage, config: ChannelConfig | None = None, root: Path | None = None) -> bytes:
    """What SMTP hands over: the RFC 5322 message, lines ending in CRLF (the DATA content before
    dot-stuffing). With ``sendgrid_events`` it carries SendGrid's X-SMTPAPI header naming the ledger key
    as the unique argument ``engine_message_key``, which SendGrid copies into every event of the message
    (the service's /webhooks/sendgrid finds the message by it)."""
    if config is not None and config.settings.get("sendgrid_events") is True:
        tag = json.dumps({"unique_args": {"engine_message_key": message.key}}, separators=(",", ":"))
        message = dataclasses.replace(message, headers={**message.headers, "X-SMTPAPI": tag})
    return message.to_bytes("\r\n")


#: seconds a connection attempt or a reply may take unless ``timeout`` says otherwise
DEFAULT_TIMEOUT = 30


def default_port(security: str) -> int:
    """The submission port of a ``security`` setting: 465 implicit TLS, 587 STARTTLS, else 25."""
    return {"ssl": 465, "starttls": 587}.get(security, 25)


def setting_defaults(settings: Mapping[str, object]) -> list[tuple[str, str, str]]:
    """(setting, value, note) of each setting a channel on this transport may leave out (engine config show)."""
    security = str(settings.get("security", "none"))
    return [("security", "none", "default"), ("port", str(default_port(security)), f"default for security {security}"),
            ("username", "(none)", "default"), ("password", "(none)", "default"),
            ("timeout", str(DEFAULT_TIMEOUT), "default (seconds)"), ("connections", str(DEFAULT_CONNECTIONS), "default"),
            ("pipelining", "true", "default"), ("sendgrid_events", "false", "default")]


class SmtpChannel:
    def __init__(self, config: ChannelConfig):
        settings = config.settings
        self.name = config.name
        self.host = resolve(str(settings["host"]))
        self.security = str(settings.get("security", "none"))
        self.port = int(resolve(str(settings.get("port", default_port(self.security)))))
        self.username = resolve(str(settings["username"])) if "username" in settings else None
        self.password = resolve(str(settings["password"])) if "password" in settings else None
        self.timeout = float(resolve(str(settings.get("timeout", DEFAULT_TIMEOUT))))
        # "max_connections" is the setting's older name
        self.connections = max(1, int(resolve(str(settings.get("connections", settings.get("max_connections", DEFAULT_CONNECTIONS))))))
        # off only for a server that advertises PIPELINING and then mishandles it
        self.pipelining = bool(settings.get("pipelining", True))
        self._idle: list[smtplib.SMTP] = []
        self._all: set[smtplib.SMTP] = set()
        self._busy = 0  # connections lent out or being opened
        self._available = threading.Condition()

    @property
    def parallelism(self) -> int:
        """How many ``send`` calls dispatch may run at once on this session."""
        return self.connections

    def _connect(self) -> smtplib.SMTP:
        smtp = None
        try:
            if self.security == "ssl":
                smtp = smtplib.SMTP_SSL(self.host, self.port, timeout=self.timeout, context=ssl.create_default_context())
            else:
                smtp = smtplib.SMTP(self.host, self.port, timeout=self.timeout)
                if self.security == "starttls":
                    smtp.starttls(context=ssl.create_default_context())
            if self.username:
                smtp.login(self.username, self.password or "")
            smtp.ehlo_or_helo_if_needed()
        except (OSError, smtplib.SMTPException) as exc:
            if smtp is not None:
                smtp.close()
            raise ChannelError(
                f"channel '{self.name}': cannot connect to SMTP server {self.host}:{self.port}: {exc}; "
                "check host, port and security in engine.yaml and that the server is running"
            ) from None
        with self._available:
            self._all.add(smtp)
        return smtp

    def open(self) -> None:
        """Open the first connection (the others open on demand): a server that is down fails here,
        before anything is claimed."""
        smtp = self._connect()
        with self._available:
            self._idle.append(smtp)

    def _borrow(self) -> smtplib.SMTP | None:
        """An idle connection, or None when the caller may open a new one; waits while all are busy."""
        with self._available:
            while not self._idle and self._busy >= self.connections:
                self._available.wait()
            self._busy += 1
            return self._idle.pop() if self._idle else None

    def _give_back(self, smtp: smtplib.SMTP | None) -> None:
        with self._available:
            self._busy -= 1
            if smtp is not None:
                self._idle.append(smtp)
            self._available.notify()

    def _drop(self, smtp: smtplib.SMTP) -> None:
        with self._available:
            self._all.discard(smtp)
        try:
            smtp.close()
        except OSError:
            pass

    def send(self, message: OutgoingMessage) -> Outcome:
        smtp = self._borrow()
        try:
            reused = smtp is not None
            if smtp is None:
                smtp = self._connect()
            try:
                outcome = self._transaction(smtp, message)
            except _Closed as closed:
                self._drop(smtp)
                smtp = None
                if not reused:
                    return Failed(detail=closed.detail)
                outcome, smtp = self._once_more(message)
                return outcome
            smtp = self._kept(smtp, outcome)
            return outcome
        except ChannelError as exc:
            smtp = None
            return Failed(detail=f"connection error: {exc}")
        finally:
            self._give_back(smtp)

    def _once_more(self, message: OutgoingMessage) -> tuple[Outcome, smtplib.SMTP | None]:
        """A message the server closed a reused connection at (at MAIL: nothing of it was accepted), sent
        once more on a new connection: its outcome, and that connection unless it must be dropped."""
        try:
            smtp = self._connect()
        except ChannelError as exc:
            return Failed(detail=f"connection error: {exc}"), None
        try:
            outcome = self._transaction(smtp, message)
        except _Closed as again:
            self._drop(smtp)
            return Failed(detail=again.detail), None
        return outcome, self._kept(smtp, outcome)

    def _kept(self, smtp: smtplib.SMTP, outcome: Outcome) -> smtplib.SMTP | None:
        """``smtp`` after a message's ``outcome``, or None (dropped) when the server is closing it, it broke
        mid-message, or its state is unknown."""
        if smtp.sock is None or (isinstance(outcome, Failed) and outcome.detail.startswith(("421", "connection error"))):
            self._drop(smtp)
            return None
        return smtp

    def send_group(self, messages: Sequence[OutgoingMessage]) -> Iterator[Outcome]:
        """The outcome of each of ``messages``, in order, as ``send`` gives them one by one - the same
        transactions, bytes on the wire and outcomes -, with one wait for the server per message instead
        of two where the connection pipelines: a message's content and the next message's MAIL, RCPT
        and DATA go out in one write (RFC 2920 lets the content open a group of commands), and the
        content's reply is read before the next envelope's. A message's outcome is given once its
        content's reply is read; when that reply is 421 or the connection breaks, the next message was
        not accepted (its content never went out) and is sent as ``send`` would send it, on another
        connection. Messages that cannot be chained (a non-ASCII address, ``pipelining`` off, a server
        without PIPELINING) go through ``send``. Stopping the iteration early drops a connection that
        still has a reply to read."""
        pending = collections.deque(messages)
        while pending:
            envelope = _chained_envelope(pending[0]) if self.pipelining else None
            if envelope is not None:
                chained = yield from self._chain(pending, envelope)
                if chained:
                    continue
            yield self.send(pending.popleft())

    def _chain(self, pending: collections.deque, envelope: bytes | None) -> Iterator[Outcome]:
        """Send ``pending``'s messages from its first (``envelope``: its ``_chained_envelope``), chained on one
        connection, taking each off as its outcome is given; stops at a message it cannot chain or when the
        connection is dropped. Each message's envelope is made once. Returns
        False when the connection does not pipeline (nothing sent: the caller sends the first through
        ``send``)."""
        smtp = self._borrow()
        clean = True  # no reply is outstanding on smtp: it may go back to the pool
        try:
            reused = smtp is not None
            if smtp is None:
                try:
                    smtp = self._connect()
                except ChannelError as exc:
                    pending.popleft()
                    yield Failed(detail=f"connection error: {exc}")
                    return True
            if not smtp.has_extn("pipelining"):
                return False
            written = False  # pending[0]'s MAIL, RCPT and DATA went out with the content before it
            while pending:
                message = pending[0]
                if not written:  # else its envelope went out with the content before it
                    envelope = envelope if envelope is not None else _chained_envelope(message)
                    if envelope is None:
                        return True
                clean = False
                try:
                    failed = self._open_data(smtp, None if written else envelope)
                except _Closed as closed:
                    self._drop(smtp)
                    smtp, clean = None, True
                    pending.popleft()
                    if not reused:
                        yield Failed(detail=closed.detail)
                    else:  # nothing of it was accepted: once more on a new connection, as ``send``
                        outcome, smtp = self._once_more(message)
                        yield outcome
                    return True
                written, reused, envelope = False, True, None
                if failed is not None:  # refused: the transaction was reset or the connection closed
                    clean = True
                    pending.popleft()
                    smtp = self._kept(smtp, failed)
                    yield failed
                    if smtp is None:
                        return True
                    continue
                following = _chained_envelope(pending[1]) if len(pending) > 1 else None
                data = message.document if message.document is not None else document(message)
                outcome = self._content(smtp, message, data, then=following or b"")
                pending.popleft()
                smtp = self._kept(smtp, outcome)
                if smtp is None:  # the next envelope, if it went out, was not answered: sent elsewhere
                    clean = True
                    yield outcome
                    return True
                written = following is not None
                clean = not written
                yield outcome
            return True
        finally:
            if smtp is not None and not clean:  # a reply still to read: the connection cannot carry another message
                self._drop(smtp)
                smtp = None
            self._give_back(smtp)

    def _transaction(self, smtp: smtplib.SMTP, message: OutgoingMessage) -> Outcome:
        """One message on one connection: MAIL, RCPT, DATA. Raises ``_Closed`` when the server
        closes or refuses the connection at MAIL, before it accepted any of the message."""
        # ASCII addresses (the usual case): the bytes send_message would send, built without the
        # email package's header objects; otherwise send_message, which negotiates SMTPUTF8
        if not (message.sender + message.to).isascii():
            return self._send_message(smtp, message)
        data = message.document if message.document is not None else document(message)
        if self.pipelining and smtp.has_extn("pipelining"):
            envelope = _envelope(message)
            if envelope is not None:
                return self._pipelined(smtp, message, envelope, data)
        try:
            code, reply = smtp.mail(message.sender)
        except (OSError, smtplib.SMTPServerDisconnected) as exc:
            raise _Closed(f"connection error: {exc}") from None
        if code == 421:
            raise _Closed(_detail(code, reply))
        try:
            if code != 250:
                _reset_quietly(smtp)
                return Failed(detail=_detail(code, reply), permanent=code >= 500)
            code, reply = smtp.rcpt(message.to)
            if code not in (250, 251):
                if code != 421:
                    _reset_quietly(smtp)
                return Failed(detail=_detail(code, reply), permanent=code >= 500)
            code, reply = smtp.data(data)
        except smtplib.SMTPDataError as exc:  # DATA itself refused
            if exc.smtp_code != 421:
                _reset_quietly(smtp)
            return Failed(detail=_detail(exc.smtp_code, exc.smtp_error), permanent=exc.smtp_code >= 500)
        except (OSError, smtplib.SMTPException) as exc:
            return Failed(detail=f"connection error: {exc}")
        if code != 250:
            return Failed(detail=_detail(code, reply), permanent=code >= 500)
        return Delivered(provider_id=message.message_id(), detail="250 accepted")

    def _pipelined(self, smtp: smtplib.SMTP, message: OutgoingMessage, envelope: bytes, data: bytes) -> Outcome:
        """The same transaction in two round trips (RFC 2920): MAIL, RCPT and DATA in one write,
        their replies read in order, then the content. Same outcomes and ``_Closed`` as ``_transaction``."""
        failed = self._open_data(smtp, envelope)
        if failed is not None:
            return failed
        return self._content(smtp, message, data)

    def _open_data(self, smtp: smtplib.SMTP, envelope: bytes | None) -> Failed | None:
        """MAIL, RCPT and DATA in one write (``envelope``; None: written already, after the previous
        message's content) and their three replies: None when the server waits for the content, else
        the message's outcome, the transaction reset or the connection closed as the replies require.
        ``_Closed`` when the connection breaks or the server answers 421 at MAIL."""
        try:
            if envelope is not None:
                smtp.send(envelope)
            replies = [smtp.getreply()]
        except (OSError, smtplib.SMTPException) as exc:
            raise _Closed(f"connection error: {exc}") from None
        if replies[0][0] == 421:
            raise _Closed(_detail(*replies[0]))
        try:
            while len(replies) < 3 and replies[-1][0] != 421:  # after a 421 the server answers nothing more
                replies.append(smtp.getreply())
        except (OSError, smtplib.SMTPException) as exc:  # getreply closed the connection
            failed = _first_failure(replies)
            if failed is None:
                return Failed(detail=f"connection error: {exc}")
            return Failed(detail=_detail(*failed), permanent=failed[0] >= 500)
        failed = _first_failure(replies)
        if failed is not None:
            if replies[-1][0] in (421, 354):
                # closing, or (a server that ignored its own refusal) waiting for content that must not
                # be sent: either way the connection is in no state to carry the next message
                smtp.close()
            else:
                _reset_quietly(smtp)
            return Failed(detail=_detail(*failed), permanent=failed[0] >= 500)
        return None

    def _content(self, smtp: smtplib.SMTP, message: OutgoingMessage, data: bytes, then: bytes = b"") -> Outcome:
        """The content after the server's 354 and its reply: the message's outcome. ``then`` (the next
        message's MAIL, RCPT and DATA) goes out in the same write."""
        content = data
        if content.startswith(b".") or b"\n." in content:
            content = re.sub(rb"(?m)^\.", b"..", content)  # dot-stuffing, as smtplib's data() does
        if not content.endswith(b"\r\n"):
            content += b"\r\n"
        try:
            smtp.send(content + b".\r\n" + then)
            code, reply = smtp.getreply()
        except (OSError, smtplib.SMTPException) as exc:
            return Failed(detail=f"connection error: {exc}")
        if code != 250:
            return Failed(detail=_detail(code, reply), permanent=code >= 500)
        return Delivered(provider_id=message.message_id(), detail="250 accepted")

    def _send_message(self, smtp: smtplib.SMTP, message: OutgoingMessage) -> Outcome:
        """Non-ASCII addresses: the document (UTF-8 headers) with SMTPUTF8, as smtplib's send_message
        would negotiate it."""
        data = message.document if message.document is not None else document(message)
        try:
            smtp.ehlo_or_helo_if_needed()
            if not smtp.has_extn("smtputf8"):
                return Failed(detail="the server does not support SMTPUTF8, which a non-ASCII address needs",
                              permanent=True)
            refused = smtp.sendmail(message.sender, [message.to], data, mail_options=["SMTPUTF8", "BODY=8BITMIME"])
        except smtplib.SMTPRecipientsRefused as exc:
            code, text = next(iter(exc.recipients.values()))
            return Failed(detail=_detail(code, text), permanent=code >= 500)
        except smtplib.SMTPResponseException as exc:
            return Failed(detail=_detail(exc.smtp_code, exc.smtp_error), permanent=exc.smtp_code >= 500)
        except (OSError, smtplib.SMTPException) as exc:
            return Failed(detail=f"connection error: {exc}")
        if refused:
            return Failed(detail=str(refused), permanent=True)
        return Delivered(provider_id=message.message_id(), detail="250 accepted")

    def close(self) -> None:
        with self._available:
            connections, self._all, self._idle = list(self._all), set(), []
        for smtp in connections:
            try:
                smtp.quit()
            except (OSError, smtplib.SMTPException):
                smtp.close()


def _detail(code: int, reply: bytes | str) -> str:
    text = reply.decode(errors="replace") if isinstance(reply, bytes) else str(reply)
    return f"{code} {text}"


def _envelope(message: OutgoingMessage) -> bytes | None:
    """MAIL, RCPT and DATA as one write; None when an address holds a line break (the plain
    path refuses it exactly as before)."""
    commands = f"MAIL FROM:{_quoted(message.sender)}\r\nRCPT TO:{_quoted(message.to)}\r\nDATA\r\n"
    if commands.count("\r") != 3 or commands.count("\n") != 3:
        return None
    return commands.encode("ascii")


def _chained_envelope(message: OutgoingMessage) -> bytes | None:
    """``_envelope`` of a message ``send_group`` may chain (ASCII addresses: others go through sendmail)."""
    return _envelope(message) if (message.sender + message.to).isascii() else None


_BARE_ADDRESS = re.compile(r"[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]+@[A-Za-z0-9.-]+")


@functools.lru_cache(maxsize=256)
def _parsed_and_quoted(address: str) -> str:
    return smtplib.quoteaddr(address)


def _quoted(address: str) -> str:
    """``<address>`` as smtplib's ``quoteaddr`` writes it for MAIL and RCPT; a bare address (the usual
    recipient) without parsing, a sender (few per pass, often "Name <address>") parsed once."""
    if _BARE_ADDRESS.fullmatch(address):
        return f"<{address}>"
    return _parsed_and_quoted(address)


def _first_failure(replies: list[tuple[int, bytes]]) -> tuple[int, bytes] | None:
    """The first of the MAIL, RCPT and DATA replies that is not the expected one."""
    for (code, reply), expected in zip(replies, ((250,), (250, 251), (354,))):
        if code not in expected:
            return code, reply
    return None


def _reset_quietly(smtp: smtplib.SMTP) -> None:
    try:
        smtp.rset()
    except (OSError, smtplib.SMTPException):
        pass
