"""The message a channel sends and the outcome it reports."""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from email import policy as email_policy
from email.message import EmailMessage
from email.utils import parseaddr
from typing import Mapping, Protocol


_POLICY = email_policy.default.clone(max_line_length=998)


@dataclass(frozen=True)
class OutgoingMessage:
    key: str
    kind: str  # "email" | "sms"
    to: str
    sender: str
    subject: str | None
    text: str | None
    html: str | None
    headers: Mapping[str, str] = field(default_factory=dict)

    def message_id(self) -> str:
        """A stable Message-ID derived from the ledger key (providers can deduplicate)."""
        domain = parseaddr(self.sender)[1].rpartition("@")[2] or "engine.invalid"
        digest = hashlib.sha256(self.key.encode()).hexdigest()[:32]
        return f"<{digest}@{domain}>"

    def to_email(self) -> EmailMessage:
        # no folding into encoded words: List-Unsubscribe must stay a plain <URL> (RFC 8058)
        email = EmailMessage(policy=_POLICY)
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
        return email


@dataclass(frozen=True)
class Delivered:
    provider_id: str
    detail: str = ""
    status: str = "sent"


@dataclass(frozen=True)
class Failed:
    detail: str
    permanent: bool = False
    status: str = "failed"


Outcome = Delivered | Failed


class ChannelSession(Protocol):
    """An open connection to a provider, reused for a whole pass."""

    def open(self) -> None: ...

    def send(self, message: OutgoingMessage) -> Outcome: ...

    def close(self) -> None: ...
