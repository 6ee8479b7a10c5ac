"""The SMS kind: a text to the customer's phone number, over an HTTP provider API or the file outbox.

SMS templates have one ``text`` block and carry their opt-out text themselves;
a step sending SMS without quiet hours gets a warning. Declarations only.
"""
from __future__ import annotations

import random

from engine.channel_kinds.declaration import FILE_OUTBOX, ChannelKind, Transport

NAME = "sms"


def sample_address(rng: random.Random, first_name: str, last_name: str, customer_id: int) -> str | None:
    """40 % of the demo customers gave a (German mobile) number."""
    return f"+4915{rng.randint(10_000_000, 99_999_999)}" if rng.random() < 0.4 else None


KIND = ChannelKind(
    name=NAME,
    label="SMS",
    contact_field="phone",
    consent_column=f"{NAME}_consent",
    transports=(Transport("http", ("url",), "engine.channels.sms_http"), FILE_OUTBOX),
    required_parts=("text",),
    template_suffix=f".{NAME}.j2",
    quiet_hours_expected=True,
    sample_address=sample_address,
)
