"""The message a channel sends and the outcome it reports."""
from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass, field
from email import policy as email_policy
from email.message import EmailMessage
from email.utils import parseaddr
from typing import Mapping, Protocol


_POLICY = email_policy.default.clone(max_line_length=998)
_MAX_LINE = 998  # RFC 5322: at most 998 characters per line, in headers and 7bit/8bit bodies


@dataclass(frozen=True)
class OutgoingMessage:
    key: str
    kind: str  # a channel kind (engine.channel_kinds)
    to: str
    sender: str
    #: the rendered template parts, by the names the kind declares (subject, text, html; title, body, ...)
    parts: Mapping[str, str] = field(default_factory=dict)
    headers: Mapping[str, str] = field(default_factory=dict)
    #: where the message comes from, as the engine recorded it (campaign, step, variant, customer_id,
    #: trigger_key, due_at): for a transport whose document names them (a webhook's body)
    origin: Mapping[str, str] = field(default_factory=dict)
    #: the exact bytes handed to the provider (the transport module's ``document``), made once when the
    #: message is rendered, kept with its ledger row and sent as they are by every attempt; None until then
    document: bytes | None = None

    @property
    def subject(self) -> str | None:
        return self.parts.get("subject")

    @property
    def text(self) -> str | None:
        return self.parts.get("text")

    @property
    def html(self) -> str | None:
        return self.parts.get("html")

    def message_id(self) -> str:
        """A stable Message-ID derived from the ledger key (providers can deduplicate)."""
        return f"<{self.idempotency_key()}@{_sender_domain(self.sender)}>"

    def idempotency_key(self) -> str:
        """The message's identity for a provider that deduplicates requests (an ``Idempotency-Key``
        header): derived from the ledger key, so every attempt of one message carries the same one;
        32 hex digits, so it fits any header whatever characters the key holds."""
        return hashlib.sha256(self.key.encode()).hexdigest()[:32]

    def to_bytes(self, linesep: str = "\n") -> bytes:
        """The message as RFC 5322 bytes, lines ending in ``linesep`` (CRLF for SMTP).

        Written directly, byte for byte what ``to_email().as_bytes()`` gives
        (same headers, structure and 7bit/8bit bodies) except for the MIME
        boundary, which is derived from the key - fifty times faster than the
        email package's header objects. A message that needs more than that (a
        non-ASCII or overlong header: RFC 2047 words, folding; a body line over
        998 bytes: quoted-printable) goes through ``to_email()``.
        """
        digest = self.idempotency_key()  # the key's hash, once: the Message-ID's and the boundary's
        boundary = f"==engine-{digest}"
        headers = [("From", self.sender), ("To", self.to), ("Subject", self.subject or ""),
                   ("Message-ID", f"<{digest}@{_sender_domain(self.sender)}>"), ("X-Engine-Message-Key", self.key),
                   *self.headers.items()]
        text = _body(self.text or "", linesep)
        html = _body(self.html, linesep) if self.html else None
        plain = True
        for name, value in headers:
            if not _plain_header(name, value):
                plain = False
                break
        if (not plain or text is None
                or (self.html and (html is None or boundary.encode() in text[1] or boundary.encode() in html[1]))):
            email = self.to_email()
            return email.as_bytes(policy=email.policy.clone(linesep=linesep))
        head = "".join(f"{name}: {value}{linesep}" if value else f"{name}:{linesep}" for name, value in headers)
        if html is None:
            return (f'{head}Content-Type: text/plain; charset="utf-8"{linesep}Content-Transfer-Encoding: {text[0]}{linesep}'
                    f"MIME-Version: 1.0{linesep}{linesep}").encode("ascii") + text[1]
        nl = linesep.encode("ascii")
        return b"".join([
            f'{head}MIME-Version: 1.0{linesep}Content-Type: multipart/alternative; boundary="{boundary}"{linesep}{linesep}'
            f'--{boundary}{linesep}Content-Type: text/plain; charset="utf-8"{linesep}'
            f"Content-Transfer-Encoding: {text[0]}{linesep}{linesep}".encode("ascii"),
            text[1],
            f'{linesep}--{boundary}{linesep}Content-Type: text/html; charset="utf-8"{linesep}'
            f"Content-Transfer-Encoding: {html[0]}{linesep}MIME-Version: 1.0{linesep}{linesep}".encode("ascii"),
            html[1],
            nl + b"--" + boundary.encode("ascii") + b"--" + nl,
        ])

    def boundary(self) -> str:
        """The MIME boundary, derived from the key: the same message gives the same bytes."""
        return f"==engine-{hashlib.sha256(self.key.encode()).hexdigest()[:32]}"

    def to_email(self) -> EmailMessage:
        """The message built by the standard library's email package: the reference ``to_bytes``
        writes the same bytes as (tests/test_email_bytes.py); non-ASCII addresses get the SMTPUTF8
        form (RFC 6532: UTF-8 headers) that smtplib's send_message would send."""
        # no folding into encoded words: List-Unsubscribe must stay a plain <URL> (RFC 8058)
        policy = _POLICY if (self.sender + self.to).isascii() else _POLICY.clone(utf8=True)
        email = EmailMessage(policy=policy)
        email["From"] = self.sender
        email["To"] = self.to
        email["Subject"] = self.subject or ""
        email["Message-ID"] = self.message_id()
        email["X-Engine-Message-Key"] = self.key
        for name, value in self.headers.items():
            email[name] = value
        email.set_content(self.text or "")
        if self.html:
            email.add_alternative(self.html, subtype="html")
            boundary = self.boundary()
            while boundary in (self.text or "") or boundary in self.html:  # a body that holds it would end its part
                boundary += "="
            email.set_boundary(boundary)
        return email


@functools.lru_cache(maxsize=256)
def _sender_domain(sender: str) -> str:
    """The domain of a From address; cached because a pass has few senders and parsing one
    costs more than the rest of a Message-ID (it is needed twice per email)."""
    return parseaddr(sender)[1].rpartition("@")[2] or "engine.invalid"


def _plain_header(name: str, value: str) -> bool:
    return value.isascii() and "\r" not in value and "\n" not in value and len(name) + 2 + len(value) <= _MAX_LINE


def _body(text: str, linesep: str) -> tuple[str, bytes] | None:
    """(transfer encoding, body ending in a line break) as the email package writes a short-lined
    text part: 7bit if ASCII, else 8bit UTF-8; None when a line is longer than 998 bytes."""
    data = text.encode("utf-8")
    nl = linesep.encode("ascii")
    encoding = "7bit" if text.isascii() else "8bit"
    if b"\r" not in data:  # lines end in \n only: the same bytes as splitting them, without the list
        if len(data) > _MAX_LINE and max(map(len, data.split(b"\n"))) > _MAX_LINE:
            return None
        return encoding, (data.replace(b"\n", nl) if nl != b"\n" else data) + (b"" if data.endswith(b"\n") else nl)
    lines = data.splitlines()  # \n, \r\n and \r, as the email package splits them
    if any(len(line) > _MAX_LINE for line in lines):
        return None
    return encoding, nl.join(lines) + nl


class DocumentProblem(Exception):
    """Why a message cannot be made into its transport's document (e.g. a letter the printer cannot take:
    a character its font lacks, too many pages). Final for that message: recorded failed with the reason
    at render time, nothing is handed to the provider."""


@dataclass(frozen=True)
class Delivered:
    provider_id: str
    detail: str = ""
    status: str = "sent"
    #: contacts the provider reported gone on the way (a push subscription's 404/410): never sent to again
    gone: tuple[str, ...] = ()


@dataclass(frozen=True)
class Failed:
    detail: str
    permanent: bool = False
    status: str = "failed"
    #: seconds the provider asked to wait before the next attempt (an HTTP Retry-After); the next
    #: attempt is then no earlier than that, whatever the backoff says
    retry_after: float | None = None
    #: contacts the provider reported gone (a push subscription's 404/410): never sent to again
    gone: tuple[str, ...] = ()


Outcome = Delivered | Failed


class ChannelSession(Protocol):
    """An open connection to a provider, reused for a whole pass.

    ``send`` returns ``Delivered`` only once the provider has the message (an SMTP 250, an HTTP
    2xx, the outbox's file written). A session whose acceptance is not yet durable at that point
    also has ``sync()``, which makes everything sent so far durable; dispatch calls it before the
    ledger records those messages as sent (the file outbox fsyncs there). A session may also have
    ``send_group(messages)``, an iterator of their outcomes in order, the same as ``send`` gives one by
    one (SMTP chains them on one connection); dispatch then hands it each group.
    """

    def open(self) -> None: ...

    def send(self, message: OutgoingMessage) -> Outcome: ...

    def close(self) -> None: ...
