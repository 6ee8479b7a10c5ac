"""Signed per-message links printed on a message (a letter's QR code) and their verification.

A link names the message by its token - the first 32 hex digits of the
SHA-256 of its ledger key (``OutgoingMessage.idempotency_key``), which tells
nothing about the customer - and carries an HMAC of that token with the
project's code secret, the way unsubscribe links are signed (unsubscribe.py):
nobody can make a valid link for a message the engine did not print, and the
URL holds no personal data. New links are signed with the current secret; a
link verifies with it or any previous one (key rotation).

``check`` refuses a link that cannot be one the engine made (a missing or
repeated parameter, a token or signature that is not 32 hex digits: 400) and
one whose signature no key gives (404: no such message). Pure functions;
recording a scan is the response issue's (the token finds the message).
"""
from __future__ import annotations

import hashlib
import hmac
import re
from typing import Sequence
from urllib.parse import parse_qsl, urlparse

from engine.refusals import Refused
from engine.signing import sign

_HEX32 = re.compile(r"[0-9a-f]{32}")


class ScanRefused(Refused):
    """A printed link the engine does not honour: ``status`` 400 (malformed) or 404 (not signed by it)."""


def token(message_key: str) -> str:
    """The message's name in its printed link: no personal data, the same for every attempt."""
    return hashlib.sha256(message_key.encode()).hexdigest()[:32]


def signature(secret: str, message_token: str) -> str:
    return sign(secret, f"scan:{message_token}")[:32]


def link(base_url: str, secret: str, message_key: str) -> str:
    """The signed link of message ``message_key`` under ``base_url`` (policies.scan_url)."""
    message_token = token(message_key)
    query = f"m={message_token}&s={signature(secret, message_token)}"  # urlencode's output: both are hex
    return f"{base_url}{'&' if '?' in base_url else '?'}{query}"


def check(url_or_query: str, secrets: str | Sequence[str]) -> str:
    """The message token of a link signed with one of ``secrets``; ``ScanRefused`` otherwise."""
    query = urlparse(url_or_query).query if "://" in url_or_query or url_or_query.startswith("/") else url_or_query
    try:
        pairs = parse_qsl(query, keep_blank_values=True, max_num_fields=4)
    except ValueError:
        raise ScanRefused(400, "this link is not valid: too many parameters") from None
    values: dict[str, str] = {}
    for name, value in pairs:
        if name in values:
            raise ScanRefused(400, f"this link is not valid: '{name}' is given twice")
        values[name] = value
    message_token, given = values.get("m", ""), values.get("s", "")
    if not _HEX32.fullmatch(message_token) or not _HEX32.fullmatch(given):
        raise ScanRefused(400, "this link is not valid: it names no message")
    keys = [secrets] if isinstance(secrets, str) else list(secrets)
    # every key is tried, so the time taken does not tell which one (or none) matched
    matches = [hmac.compare_digest(signature(key, message_token), given) for key in keys]
    if not any(matches):
        raise ScanRefused(404, "this link names no message of this shop")
    return message_token
