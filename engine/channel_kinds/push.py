"""The web push kind (W3C Push API): a notification with a title, a body, an icon and a click URL.

A customer's push subscriptions (endpoint, p256dh and auth keys; several per
customer: one per browser or device) live in a source of their own,
``push_subscriptions``, mapped in engine.yaml like any entity. The pass reads the
subscriptions of a batch's customers in one query, drops those a push service
reported gone (the ledger keeps them), and addresses the message to the rest:
its ``to`` is their JSON list in the Push API's own form ``[{"endpoint",
"keys": {"p256dh", "auth"}}]``. One ledger message per customer and step goes to
each live subscription; it counts as sent when at least one push service
accepted it. A customer with no live subscription is skipped (no_contact).
The transport is ``webpush`` (RFC 8291 encryption, RFC 8292 VAPID:
engine.channels.webpush) or the file outbox. Declarations only.
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import json
from typing import Mapping

from engine.channel_kinds.declaration import FILE_OUTBOX, ChannelKind, ContactEntity, Transport

NAME = "push"

#: the source of the subscriptions and its columns (engine.yaml ``sources.push_subscriptions``)
SUBSCRIPTIONS = "push_subscriptions"
SUBSCRIPTION_COLUMNS = ("customer_id", "endpoint", "p256dh", "auth")


def subscriptions_value(rows: list[Mapping[str, object]]) -> str | None:
    """A customer's live subscriptions as the message's ``to``: their JSON list, by endpoint, without
    duplicates or rows lacking an endpoint; None when none is left."""
    unique = {str(row["endpoint"]): row for row in rows if row.get("endpoint")}
    if not unique:
        return None
    return json.dumps([{"endpoint": endpoint, "keys": {"p256dh": str(row.get("p256dh") or ""),
                                                       "auth": str(row.get("auth") or "")}}
                       for endpoint, row in sorted(unique.items())], separators=(",", ":"))


def endpoint_of(row: Mapping[str, object]) -> str:
    return str(row["endpoint"])


def subscriptions_key(address: str) -> str:
    """A set of subscriptions is looked up among the suppressions by its digest (short; a new subscription
    of the customer makes a new set). A permanent failure does not suppress it (``suppress_on_permanent_failure``):
    gone subscriptions are removed one by one instead."""
    return "sha256:" + hashlib.sha256(address.encode()).hexdigest()


def _base64url(value: str) -> bytes:
    return base64.urlsafe_b64decode(value.strip() + "=" * (-len(value.strip()) % 4))


def vapid_key_problem(value: str) -> str | None:
    """What is wrong with a VAPID private key, or None: a PEM private key, or base64url of the raw
    32-byte P-256 scalar (what ``vapid --gen`` and web-push libraries print) or of its DER form."""
    if value.lstrip().startswith("-----BEGIN"):
        return None if "PRIVATE KEY-----" in value else "a PEM block that is not a private key"
    try:
        raw = _base64url(value)
    except (binascii.Error, ValueError):
        return "neither a PEM private key nor base64url"
    if len(raw) == 32 or (len(raw) > 32 and raw[0] == 0x30):
        return None
    return f"base64url of {len(raw)} bytes; a VAPID private key is the 32-byte P-256 scalar (or its DER form)"


def vapid_subject_problem(value: str) -> str | None:
    """RFC 8292: the subject is a contact URI the push service can reach the sender at."""
    if value.startswith("mailto:") and "@" in value or value.startswith("https://"):
        return None
    return "not a mailto: or https: URI (RFC 8292: how the push service reaches the sender)"


WEBPUSH = Transport(
    "webpush", ("vapid_private_key", "vapid_subject"), "engine.channels.webpush",
    checks={"vapid_private_key": vapid_key_problem, "vapid_subject": vapid_subject_problem},
)

KIND = ChannelKind(
    name=NAME,
    label="web push",
    contact_field=SUBSCRIPTIONS,
    consent_column=f"{NAME}_consent",
    transports=(WEBPUSH, FILE_OUTBOX),
    required_parts=("title", "body"),
    optional_parts=("icon", "url"),
    html_parts=(),
    template_suffix=f".{NAME}.j2",
    quiet_hours_expected=True,
    suppression_key=subscriptions_key,
    contact_entity=ContactEntity(SUBSCRIPTIONS, SUBSCRIPTION_COLUMNS, subscriptions_value, endpoint_of),
    delivery_options=True,
    suppress_on_permanent_failure=False,
)
