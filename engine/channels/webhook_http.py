"""Webhooks: one signed HTTP POST per message (urllib3), as the Standard Webhooks specification says.

The body (``document``) is compact JSON in the specification's recommended shape::

    {"type": <the event block>, "timestamp": <due at, RFC 3339>,
     "data": {"message_key", "customer_id", "campaign", "step", "variant", "trigger_key",
              "fields": {<every other rendered block, by name: title, text, url, ...>}}}

built from the engine's record of the message, so a template fills in strings and never the
structure. Each request carries ``webhook-id``, ``webhook-timestamp`` (the attempt's time, Unix
seconds) and ``webhook-signature`` (``v1,`` + base64 HMAC-SHA256 of ``id.timestamp.body`` with the
channel's ``whsec_`` secret), signed by the ``standardwebhooks`` package (the specification's
reference implementation), plus the channel's own ``headers``. The webhook-id is ``msg_`` and 32 hex
digits of the SHA-256 of the message key (``OutgoingMessage.idempotency_key``): the specification
wants an id without ``.`` and not user controlled, and a key holds the shop's trigger keys
verbatim; it is the same on every attempt of a message, so a receiver deduplicates by it.

2xx is delivery; 429 and 5xx are transient (their ``Retry-After``, seconds or an HTTP date, is
passed on: the next attempt is no earlier); a redirect or any other 4xx is final. A connection
error or timeout is transient. Must not decide or record anything: that is the pass's.

urllib3 rather than httpx (which the SMS transport uses): it writes a small request in one
``send`` where httpcore writes headers and body apart, and its pool of keep-alive connections
costs less per request; benchmarks/webhook.py measured 2-4x more posts per second on loopback.
"""
from __future__ import annotations

import base64
import binascii
import json
import re
import time
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Callable, Mapping

import urllib3
from standardwebhooks import Webhook

from engine.channels.base import Delivered, Failed, OutgoingMessage, Outcome
from engine.errors import ChannelError, ConfigError
from engine.masking import mask
from engine.model import ChannelConfig
from engine.spec.config import resolve

#: The specification recommends a request timeout between 15 and 30 seconds.
DEFAULT_TIMEOUT = 15.0
#: Requests in flight at once per channel (the receiver's connections).
DEFAULT_CONNECTIONS = 4
#: A Retry-After longer than this is taken as this (a receiver cannot park a message for months).
MAX_RETRY_AFTER = 24 * 3600.0
#: Bytes of a receiver's answer kept for the ledger's detail (a receiver cannot fill the ledger).
ANSWER_KEPT = 200
#: The specification's symmetric secret: ``whsec_`` + base64 of 24 to 64 random bytes.
SECRET_PREFIX = "whsec_"
SECRET_BYTES = (24, 64)
#: Headers the transport sets itself: a channel's ``headers`` may not replace them.
OWN_HEADERS = frozenset({"webhook-id", "webhook-timestamp", "webhook-signature", "content-type", "content-length",
                         "host"})
_TOKEN = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")  # an HTTP header name (RFC 9110 token)


def open_session(config: ChannelConfig, root: Path) -> "WebhookChannel":
    return WebhookChannel(config)


def webhook_id(message: OutgoingMessage) -> str:
    """The message's ``webhook-id``: the same on every attempt, only ``[a-z0-9_]``."""
    return f"msg_{message.idempotency_key()}"


def document(message: OutgoingMessage, config: ChannelConfig | None = None, root: Path | None = None) -> bytes:
    """The request body of ``message``, byte for byte what is signed and sent (compact UTF-8 JSON)."""
    origin = message.origin
    fields = {name: value for name, value in message.parts.items() if name != "event"}
    body = {
        "type": message.parts.get("event", ""),
        "timestamp": origin.get("due_at"),
        "data": {"message_key": message.key, "customer_id": message.to, "campaign": origin.get("campaign"),
                 "step": origin.get("step"), "variant": origin.get("variant"), "trigger_key": origin.get("trigger_key"),
                 "fields": fields},
    }
    return json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def signing_key(secret: str, setting: str) -> Webhook:
    """The ``standardwebhooks`` signer of a ``whsec_`` secret; a ConfigError naming ``setting`` otherwise."""
    fix = ("give it a Standard Webhooks secret from the environment: whsec_ followed by the base64 of 24 to 64 "
           "random bytes (python -c \"import base64, os; print('whsec_' + base64.b64encode(os.urandom(32)).decode())\")")
    if not secret.startswith(SECRET_PREFIX):
        raise ConfigError(f"{setting} is not a Standard Webhooks secret (it must start with {SECRET_PREFIX}): {fix}")
    try:
        raw = base64.b64decode(secret[len(SECRET_PREFIX):], validate=True)
    except (binascii.Error, ValueError):
        raise ConfigError(f"{setting} is not a Standard Webhooks secret (not base64 after {SECRET_PREFIX}): {fix}") from None
    if not SECRET_BYTES[0] <= len(raw) <= SECRET_BYTES[1]:
        raise ConfigError(f"{setting} is not a Standard Webhooks secret ({len(raw)} bytes, needs "
                          f"{SECRET_BYTES[0]} to {SECRET_BYTES[1]}): {fix}")
    return Webhook(raw)


def retry_after(value: str | None, now: float) -> float | None:
    """Seconds to wait from an HTTP ``Retry-After`` (delay-seconds or an HTTP-date), at most a day."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        seconds = float(value)
    else:
        try:
            seconds = parsedate_to_datetime(value).timestamp() - now
        except (TypeError, ValueError, IndexError, OverflowError):
            return None
    return min(max(seconds, 0.0), MAX_RETRY_AFTER)


class WebhookChannel:
    """One pool of keep-alive connections per pass; ``clock`` (Unix seconds) stamps each attempt."""

    def __init__(self, config: ChannelConfig, clock: Callable[[], float] = time.time):
        settings = config.settings
        self.name = config.name
        where = f"channels.{config.name}"
        self.url = resolve(str(settings["url"]))
        if not self.url.startswith(("https://", "http://")):
            raise ConfigError(f"{where}.url is not an http(s) URL: give the receiver's endpoint, e.g. https://crm.example.com/hooks/shop")
        self.signer = signing_key(resolve(str(settings["secret"])), f"{where}.secret")
        self.headers = self._extra_headers(settings.get("headers") or {}, where)
        self.timeout = float(resolve(str(settings.get("timeout", DEFAULT_TIMEOUT))))
        self.parallelism = max(1, int(resolve(str(settings.get("connections", DEFAULT_CONNECTIONS)))))
        self.clock = clock
        self._pool: urllib3.PoolManager | None = None

    @staticmethod
    def _extra_headers(given: object, where: str) -> dict[str, str]:
        if not isinstance(given, Mapping):
            raise ConfigError(f"{where}.headers must be a mapping of header names to values")
        headers = {}
        for name, value in given.items():
            name, value = str(name), resolve(str(value))
            if not _TOKEN.match(name) or name.lower() in OWN_HEADERS:
                raise ConfigError(f"{where}.headers: '{name}' cannot be sent as an extra header "
                                  f"(a header name, not one of {', '.join(sorted(OWN_HEADERS))})")
            if "\r" in value or "\n" in value or not value.isascii():
                raise ConfigError(f"{where}.headers.{name}: the value must be one line of ASCII")
            headers[name] = value
        return headers

    def open(self) -> None:
        # one pool of keep-alive connections, as many as the workers dispatch runs for this channel;
        # no retries and no redirects inside the client: the pass decides what is tried again
        self._pool = urllib3.PoolManager(num_pools=1, maxsize=self.parallelism, block=True, retries=False,
                                         timeout=urllib3.Timeout(connect=self.timeout, read=self.timeout))

    def request(self, message: OutgoingMessage) -> tuple[bytes, dict[str, str]]:
        """The body and the signed Standard Webhooks headers of one attempt of ``message``."""
        body = message.document if message.document is not None else document(message)
        identifier = webhook_id(message)
        stamp = int(self.clock())
        signature = self.signer.sign(identifier, datetime.fromtimestamp(stamp, tz=timezone.utc), body)
        return body, {"content-type": "application/json", "webhook-id": identifier,
                      "webhook-timestamp": str(stamp), "webhook-signature": signature}

    def send(self, message: OutgoingMessage) -> Outcome:
        if self._pool is None:
            raise ChannelError(f"channel '{self.name}' is not open")
        body, signed = self.request(message)
        try:
            response = self._pool.request("POST", self.url, body=body, headers={**self.headers, **signed},
                                          redirect=False, preload_content=False)
            answer = response.read(ANSWER_KEPT)  # what a detail shows; the rest is read and dropped
            response.drain_conn()
            response.release_conn()
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            return Failed(detail=mask(f"{type(exc).__name__}: {exc}"))  # the URL may carry a token
        status = response.status
        if 200 <= status < 300:
            return Delivered(provider_id=signed["webhook-id"], detail=str(status))
        detail = f"{status} {answer.decode('utf-8', 'replace')}".strip()
        if status == 429 or status >= 500:
            return Failed(detail=detail, retry_after=retry_after(response.headers.get("retry-after"), self.clock()))
        if 300 <= status < 400:
            detail += f" (redirect to {mask(response.headers.get('location', '?'))}: set the channel's url to the final endpoint)"
        return Failed(detail=detail, permanent=True)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.clear()
            self._pool = None
