"""The email kind: RFC 5322 messages with a subject, text and/or HTML, in the shop's locked layout.

Every email carries the one-click unsubscribe headers (RFC 8058) and goes out
over SMTP or into the file outbox as an .eml file. Declarations only.
"""
from __future__ import annotations

import random
from typing import Mapping

from engine.channel_kinds.declaration import FILE_OUTBOX, ChannelKind, Transport

NAME = "email"


def unsubscribe_headers(unsubscribe_url: str) -> Mapping[str, str]:
    """The RFC 8058 one-click headers every marketing email carries."""
    return {"List-Unsubscribe": f"<{unsubscribe_url}>", "List-Unsubscribe-Post": "List-Unsubscribe=One-Click"}


def sample_address(rng: random.Random, first_name: str, last_name: str, customer_id: int) -> str | None:
    """Most demo customers have an address (3 % have none)."""
    return None if rng.random() < 0.03 else f"{first_name.lower()}.{last_name.lower()}{customer_id}@example.com"


KIND = ChannelKind(
    name=NAME,
    label=NAME,
    contact_field=NAME,
    consent_column=f"{NAME}_consent",
    transports=(Transport("smtp", ("host",), "engine.channels.smtp"), FILE_OUTBOX),
    required_parts=("subject",),
    body_parts=("text", "html"),
    template_suffix=f".{NAME}.j2",
    locked_layout=True,
    rfc5322=True,
    headers=unsubscribe_headers,
    contact_column_names=("e_mail", "email_address", "emailaddress", "mail", "mail_address"),
    sample_address=sample_address,
)
