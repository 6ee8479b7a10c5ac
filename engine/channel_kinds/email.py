"""The email kind: RFC 5322 messages with a subject, text and/or HTML, in the shop's locked layout.

Every email carries the one-click unsubscribe headers (RFC 8058) and goes out
over SMTP or into the file outbox as an .eml file. Declarations only.
"""
from __future__ import annotations

import random
import re
from email.utils import parseaddr
from functools import lru_cache
from typing import Mapping

from engine.channel_kinds.declaration import FILE_OUTBOX, ChannelKind, Transport

NAME = "email"


def list_headers(unsubscribe_url: str, *, campaign: str, sender: str) -> Mapping[str, str]:
    """The headers every marketing email carries: its list's identity (RFC 2919: the campaign under
    the sender's domain, so a mail client can group and filter a campaign's messages) and the
    one-click unsubscribe (RFC 2369, RFC 8058). Spam filters read mailing-list headers without a
    List-Id as an incomplete list (SpamAssassin's LIST_PARTIAL_SHORT_MSG)."""
    return {"List-Id": _list_id(campaign, sender), "List-Unsubscribe": f"<{unsubscribe_url}>",
            "List-Unsubscribe-Post": "List-Unsubscribe=One-Click"}


@lru_cache(maxsize=256)
def _list_id(campaign: str, sender: str) -> str:
    """The campaign's List-Id, the same for all its messages from ``sender`` (parsed once: a pass asks per message)."""
    domain = parseaddr(sender)[1].rpartition("@")[2] or "engine.invalid"
    label = re.sub(r"[^A-Za-z0-9-]+", "-", campaign).strip("-") or "campaign"
    return f"<{label}.{domain}>"


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
    headers=list_headers,
    contact_column_names=("e_mail", "email_address", "emailaddress", "mail", "mail_address"),
    sample_address=sample_address,
)
