"""Web push: RFC 8030 requests to each subscription's push service, the payload encrypted per RFC 8291
(aes128gcm) and signed for per RFC 8292 (VAPID), through pywebpush (http_ece, py_vapid, cryptography).

A message's ``to`` is the customer's live subscriptions as the Push API gives
them (``[{"endpoint", "keys": {"p256dh", "auth"}}]``, engine.channel_kinds.push);
the payload (``document``: the rendered title, body, icon and click URL as one
JSON object) is encrypted for each subscription and POSTed to its endpoint
over one keep-alive httpx client per pass (``connections`` requests in
parallel). The message is delivered when at least one push service accepted
it (2xx). A 404 or 410 means the subscription is gone: it is reported in the
outcome (``gone``) and the ledger never sends to it again. 429 and 5xx (or no
answer) are transient: retried with the engine's backoff, no sooner than the
largest Retry-After. Anything else (400, 413, a subscription whose keys are
not a P-256 point and a 16-byte secret) is final for that subscription. The
step's delivery options arrive as the message's TTL, Urgency and Topic
headers. The VAPID private key comes from the environment (``${VAPID_PRIVATE_KEY}``);
one signed JWT per push service origin is reused until an hour before it expires.
"""
from __future__ import annotations

import base64
import binascii
import json
import threading
import time
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime
from pathlib import Path
from urllib.parse import urlsplit

import httpx
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from py_vapid import Vapid02
from pywebpush import WebPusher

from engine import channel_kinds
from engine.errors import ChannelError, ConfigError
from engine.masking import mask
from engine.model import ChannelConfig
from engine.spec.config import resolve
from engine.channels.base import Delivered, Failed, OutgoingMessage, Outcome

#: RFC 8291 section 4: a push message body is at most 4096 bytes; aes128gcm adds an 86-byte header, a
#: 16-byte tag and a padding delimiter, which leaves this much for the payload.
MAX_PAYLOAD = 4096 - 86 - 16 - 1
#: RFC 8292: a JWT may be valid for at most 24 hours; signed for 12, renewed with an hour to spare.
JWT_LIFETIME, JWT_RENEW = 12 * 3600, 3600
DEFAULT_TTL = 86400


def document(message: OutgoingMessage, config: ChannelConfig | None = None, root: Path | None = None) -> bytes:
    """The exact payload handed to the push service before encryption: the rendered parts (title, body,
    and the icon and click URL when given) as one compact JSON object, keys sorted."""
    parts = {name: value for name, value in message.parts.items() if value}
    return json.dumps(parts, ensure_ascii=False, separators=(",", ":"), sort_keys=True).encode("utf-8")


def open_session(config: ChannelConfig, root: Path) -> "WebPushChannel":
    return WebPushChannel(config)


def load_vapid_key(value: str, setting: str, check) -> Vapid02:
    """The VAPID signer of a private key (PEM, or base64url of the raw 32-byte scalar or of DER); a
    ChannelError naming ``setting`` when it is none (``check``: the transport's check of its form), never
    the key itself."""
    problem = check(value)
    if problem is None:
        try:
            text = value.strip()
            if text.startswith("-----BEGIN"):
                key = serialization.load_pem_private_key(text.encode(), password=None)
                vapid = Vapid02(key)
            else:
                vapid = Vapid02.from_string(text)
            if isinstance(vapid.private_key, ec.EllipticCurvePrivateKey) and \
                    isinstance(vapid.private_key.curve, ec.SECP256R1):
                return vapid
            problem = "not a P-256 (prime256v1) key, which VAPID signs with (ES256)"
        except (ValueError, TypeError, binascii.Error, IndexError):
            problem = "not a readable P-256 private key"
    raise ChannelError(f"{setting} is unusable: {problem}; generate a key pair with `vapid --gen` (py_vapid) "
                       f"and export the private key as VAPID_PRIVATE_KEY")


def subscription_problem(subscription: dict) -> str | None:
    """What makes a subscription unusable (checked before encrypting for it), or None."""
    endpoint = str(subscription.get("endpoint") or "")
    if urlsplit(endpoint).scheme not in ("https", "http") or not urlsplit(endpoint).netloc:
        return "its endpoint is not an http(s) URL"
    keys = subscription.get("keys") or {}
    try:
        p256dh = _base64url(str(keys.get("p256dh") or ""))
        auth = _base64url(str(keys.get("auth") or ""))
    except (binascii.Error, ValueError):
        return "malformed keys: p256dh and auth must be base64url"
    if len(auth) != 16:
        return f"malformed auth secret: {len(auth)} bytes, RFC 8291 needs 16"
    try:
        ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), p256dh)
    except ValueError:
        return "malformed p256dh key: not an uncompressed P-256 point (65 bytes)"
    return None


def retry_after(value: str | None) -> float | None:
    """Retry-After in seconds: delta-seconds or an HTTP date (RFC 9110); None when absent or unreadable."""
    if not value:
        return None
    if value.strip().isdigit():
        return float(value.strip())
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return max(0.0, (when - datetime.now(timezone.utc)).total_seconds())


def _base64url(value: str) -> bytes:
    value = value.strip()
    return base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))


def _origin(endpoint: str) -> str:
    parts = urlsplit(endpoint)
    return f"{parts.scheme}://{parts.netloc}"


class WebPushChannel:
    def __init__(self, config: ChannelConfig):
        settings = config.settings
        self.name = config.name
        where = f"channels.{config.name}"
        try:
            key = resolve(str(settings["vapid_private_key"]))
            self.subject = resolve(str(settings["vapid_subject"]))
        except ConfigError as exc:
            raise ConfigError(f"{where}: {exc}") from None
        checks = channel_kinds.transport(config.transport).checks
        self.vapid = load_vapid_key(key, f"{where}.vapid_private_key", checks["vapid_private_key"])
        problem = checks["vapid_subject"](self.subject)
        if problem is not None:
            raise ChannelError(f"{where}.vapid_subject is unusable: {problem}")
        self.ttl = int(resolve(str(settings.get("ttl", DEFAULT_TTL))))
        self.timeout = float(resolve(str(settings.get("timeout", 10))))
        self.parallelism = int(settings.get("connections", 4))
        self._client: httpx.Client | None = None
        self._tokens: dict[str, tuple[str, float]] = {}  # push service origin -> (Authorization, expires)
        self._lock = threading.Lock()

    def open(self) -> None:
        self._client = httpx.Client(timeout=self.timeout, limits=httpx.Limits(max_keepalive_connections=self.parallelism))

    def authorization(self, origin: str) -> str:
        """The VAPID Authorization header for a push service (the JWT's audience is its origin)."""
        now = time.time()
        with self._lock:
            cached = self._tokens.get(origin)
            if cached is not None and cached[1] - JWT_RENEW > now:
                return cached[0]
            expires = int(now) + JWT_LIFETIME
            header = self.vapid.sign({"aud": origin, "sub": self.subject, "exp": expires})["Authorization"]
            self._tokens[origin] = (header, expires)
            return header

    def send(self, message: OutgoingMessage) -> Outcome:
        if self._client is None:
            raise ChannelError(f"channel '{self.name}' is not open")
        payload = message.document if message.document is not None else document(message)
        if len(payload) > MAX_PAYLOAD:
            return Failed(detail=f"payload of {len(payload)} bytes: web push carries at most {MAX_PAYLOAD} "
                                 f"(RFC 8291); shorten the template's title, body or URL", permanent=True)
        try:
            subscriptions = json.loads(message.to)
            assert isinstance(subscriptions, list) and all(isinstance(s, dict) for s in subscriptions)
        except (ValueError, AssertionError):
            return Failed(detail="the message's address is not a list of push subscriptions", permanent=True)
        headers = {"TTL": str(self.ttl), "Content-Type": "application/octet-stream"}
        headers.update({name: value for name, value in message.headers.items() if name in ("TTL", "Urgency", "Topic")})
        accepted, gone, transient, final, waits = [], [], [], [], []
        for subscription in subscriptions:
            endpoint = str(subscription.get("endpoint") or "")
            problem = subscription_problem(subscription)
            if problem is not None:
                final.append(f"{_origin(endpoint)}: {problem}")
                continue
            body = WebPusher(subscription).encode(payload, "aes128gcm")["body"]
            try:
                response = self._client.post(endpoint, content=body, headers={
                    **headers, "Content-Encoding": "aes128gcm", "Authorization": self.authorization(_origin(endpoint))})
            except httpx.HTTPError as exc:
                transient.append(f"{_origin(endpoint)}: " + mask(f"{type(exc).__name__}: {exc}"))
                continue
            status = response.status_code
            if response.is_success:
                accepted.append(response.headers.get("Location", ""))
            elif status in (404, 410):
                gone.append(endpoint)
            elif status == 429 or status >= 500:
                transient.append(f"{_origin(endpoint)}: {status}")
                wait = retry_after(response.headers.get("Retry-After"))
                if wait is not None:
                    waits.append(wait)
            else:
                final.append(f"{_origin(endpoint)}: {status} {response.text[:200]}")
        summary = "; ".join([f"{len(gone)} subscription(s) gone (404/410)"] * bool(gone) + transient + final)
        if accepted:
            detail = f"accepted by {len(accepted)} of {len(subscriptions)} subscription(s)" + \
                     (f"; {summary}" if summary else "")
            return Delivered(provider_id=next(filter(None, accepted), ""), detail=detail, gone=tuple(gone))
        if transient:
            return Failed(detail=summary, retry_after=max(waits) if waits else None, gone=tuple(gone))
        return Failed(detail=summary or "no subscription", permanent=True, gone=tuple(gone))

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None
