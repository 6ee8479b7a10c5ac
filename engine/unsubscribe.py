"""Signed one-click unsubscribe links (RFC 8058) and their verification.

The link carries the customer, the channel kind and an HMAC of both with the
project's secret, so nobody can unsubscribe someone else by guessing ids.
Pure functions; recording the unsubscribe is the ledger's job.
"""
from __future__ import annotations

import hashlib
import hmac
from urllib.parse import parse_qs, urlencode, urlparse


def signature(secret: str, customer_id: str, kind: str) -> str:
    return hmac.new(secret.encode(), f"unsubscribe:{customer_id}:{kind}".encode(), hashlib.sha256).hexdigest()[:32]


def link(base_url: str, secret: str, customer_id: str, kind: str) -> str:
    query = urlencode({"c": customer_id, "k": kind, "s": signature(secret, customer_id, kind)})
    return f"{base_url}{'&' if '?' in base_url else '?'}{query}"


def verify(url_or_query: str, secret: str) -> tuple[str, str] | None:
    """(customer_id, kind) when the link's signature is right, else None."""
    query = urlparse(url_or_query).query if "://" in url_or_query or url_or_query.startswith("/") else url_or_query
    values = {k: v[0] for k, v in parse_qs(query).items()}
    customer_id, kind, given = values.get("c"), values.get("k"), values.get("s", "")
    if not customer_id or kind not in ("email", "sms", "all"):
        return None
    if not hmac.compare_digest(signature(secret, customer_id, kind), given):
        return None
    return customer_id, kind


def headers(url: str) -> dict[str, str]:
    """The RFC 8058 one-click headers every marketing email carries."""
    return {"List-Unsubscribe": f"<{url}>", "List-Unsubscribe-Post": "List-Unsubscribe=One-Click"}
