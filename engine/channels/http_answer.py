"""What a provider's HTTP answer means for one message, for the transports that post one message per
request (sms_http, letter_api): 2xx is delivery (the body's ``id`` kept when the body is a JSON object
that has one, whatever else it is), 429 and 5xx are transient failures (retried with the engine's
backoff), other 4xx permanent ones; a request that got no answer (connection refused, timeout) is
transient. Must not send, retry or record anything: the transport sends, the pass records.
"""
from __future__ import annotations

import httpx

from engine.masking import mask
from engine.channels.base import Delivered, Failed, Outcome


def unanswered(exc: httpx.HTTPError) -> Failed:
    """A transient failure naming the error; masked, since httpx may quote the URL and a token in it."""
    return Failed(detail=mask(f"{type(exc).__name__}: {exc}"))


def outcome(response: httpx.Response, note: str = "") -> Outcome:
    """The outcome of ``response``; ``note`` follows the status in a delivery's detail (" (3 pages)")."""
    status = response.status_code
    if response.is_success:
        return Delivered(provider_id=_provider_id(response), detail=f"{status}{note}")
    transient = status == 429 or status >= 500
    return Failed(detail=f"{status} {response.text[:200]}", permanent=not transient)


def _provider_id(response: httpx.Response) -> str:
    """The provider's id for the message, or "" when its accepting answer names none: the message was
    accepted either way, and a failure here would send it again."""
    try:
        body = response.json()
    except ValueError:  # not JSON (or not text): accepted all the same
        return ""
    value = body.get("id") if isinstance(body, dict) else None
    return "" if value is None else str(value)
