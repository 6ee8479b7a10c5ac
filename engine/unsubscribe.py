"""Signed one-click unsubscribe links (RFC 8058) and their verification.

The link carries the customer, the channel kind and an HMAC of both with the
project's code secret, so nobody can unsubscribe someone else by guessing ids.
New links are signed with the current secret; a link verifies with it or
with any previous one (key rotation, see code_secret.py).

``check`` refuses, before any signature is computed, what cannot be a link the
engine made: a missing or repeated parameter, an unknown channel kind, a
customer id longer than ``MAX_CUSTOMER_ID`` characters or with characters
outside letters, digits and ``-_.:@+/#~`` (quotes, spaces, control characters:
400); then a signature that no key gives (403). Whether the customer exists is
the caller's question (the service asks the warehouse). Pure functions;
recording the unsubscribe is the ledger's job.
"""
from __future__ import annotations

import hmac
import re
from typing import Sequence
from urllib.parse import parse_qsl, quote_plus, urlparse

from engine.channel_kinds import unsubscribe_scopes
from engine.refusals import Refused
from engine.signing import sign

#: what a link (and ``engine unsubscribe --channel``) may name: each channel kind's scope, or all
KINDS = (*unsubscribe_scopes(), "all")
#: the longest customer id a link may carry
MAX_CUSTOMER_ID = 128
#: letters and digits of any script, and the separators ids are made with
_CUSTOMER_ID = re.compile(r"[^\W_]|[-_.:@+/#~]")
_SIGNATURE = re.compile(r"[0-9a-f]{32}")


class LinkRefused(Refused):
    """An unsubscribe link the engine does not honour: ``status`` 400 (malformed) or 403 (bad signature)."""


def signature(secret: str, customer_id: str, kind: str) -> str:
    return sign(secret, f"unsubscribe:{customer_id}:{kind}")[:32]


def link(base_url: str, secret: str, customer_id: str, kind: str) -> str:
    # what urlencode({"c": ..., "k": ..., "s": ...}) gives, without its per-call generality (half the time)
    query = f"c={quote_plus(str(customer_id))}&k={quote_plus(str(kind))}&s={signature(secret, customer_id, kind)}"
    return f"{base_url}{'&' if '?' in base_url else '?'}{query}"


def is_customer_id(text: str) -> bool:
    """Within the length and character bound of the customer ids a link may carry."""
    return 0 < len(text) <= MAX_CUSTOMER_ID and all(_CUSTOMER_ID.fullmatch(ch) for ch in text)


def check(url_or_query: str, secrets: str | Sequence[str]) -> tuple[str, str]:
    """(customer_id, kind) of a link signed with one of ``secrets``; ``LinkRefused`` otherwise."""
    query = urlparse(url_or_query).query if "://" in url_or_query or url_or_query.startswith("/") else url_or_query
    try:
        pairs = parse_qsl(query, keep_blank_values=True, max_num_fields=8)
    except ValueError:
        raise LinkRefused(400, "this unsubscribe link is not valid: too many parameters") from None
    values: dict[str, str] = {}
    for name, value in pairs:
        if name in values:
            raise LinkRefused(400, f"this unsubscribe link is not valid: '{name}' is given twice")
        values[name] = value
    customer_id, kind, given = values.get("c", ""), values.get("k", ""), values.get("s", "")
    if kind not in KINDS:
        raise LinkRefused(400, "this unsubscribe link is not valid: no channel kind")
    if not is_customer_id(customer_id):
        raise LinkRefused(400, "this unsubscribe link is not valid: it names no customer")
    if not _SIGNATURE.fullmatch(given):
        raise LinkRefused(400, "this unsubscribe link is not valid: no signature")
    keys = [secrets] if isinstance(secrets, str) else list(secrets)
    # every key is tried, so the time taken does not tell which one (or none) matched
    matches = [hmac.compare_digest(signature(key, customer_id, kind), given) for key in keys]
    if not any(matches):
        raise LinkRefused(403, "this unsubscribe link is not valid: its signature does not match")
    return customer_id, kind


def verify(url_or_query: str, secrets: str | Sequence[str]) -> tuple[str, str] | None:
    """(customer_id, kind) when the link is well-formed and signed with one of ``secrets``, else None."""
    try:
        return check(url_or_query, secrets)
    except LinkRefused:
        return None
