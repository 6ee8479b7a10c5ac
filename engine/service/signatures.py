"""Whether a provider's webhook is genuine: Amazon SNS, SendGrid and an HMAC-signed callback.

Owns the cryptography of ``webhooks.py`` and nothing else (no ledger, no routing, no parsing of what an
event means):

- Amazon SNS (SES notifications): an RSA signature (PKCS#1 v1.5; ``SignatureVersion`` 1 with SHA-1, 2 with
  SHA-256) over the canonical string of the message's fields - ``Name\\nvalue\\n`` for Message, MessageId,
  Subject (when present), Timestamp, TopicArn, Type of a Notification, and Message, MessageId, SubscribeURL,
  Timestamp, Token, TopicArn, Type of a (Un)SubscriptionConfirmation - verified with the public key of the
  X.509 certificate at ``SigningCertURL``. That URL is fetched only when it matches an allowed pattern
  (``https://sns.*.amazonaws.com/`` by default: TLS to AWS's own host vouches for the certificate; ``*`` is
  one DNS label; plain http only for a loopback host, for tests), only a ``.pem`` path, at most
  ``MAX_CERTIFICATE_BYTES``, and kept (``CertificateStore``): SNS signs with few certificates.
- SendGrid's signed event webhook: ECDSA P-256 with SHA-256 over the ``X-Twilio-Email-Event-Webhook-Timestamp``
  header's bytes followed by the body, signature (base64 DER) in ``X-Twilio-Email-Event-Webhook-Signature``,
  checked with the account's verification key (base64 DER or PEM).
- An HMAC-SHA256 of ``timestamp + "." + body`` with a shared secret (the HTTP SMS provider's delivery receipts).

Signatures, keys and certificates are checked with ``cryptography`` (RSA, ECDSA, X.509), never by hand; HMAC
with the standard library's ``hmac.compare_digest``. Every refusal is a ``Refused(status, reason)`` whose
reason names no person, address or message.
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
import threading
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Callable, Mapping, Sequence
from urllib.parse import urlsplit

import httpx
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

from engine import refusals
from engine.clock import to_utc

#: the signed fields of each SNS message type, in the order of the canonical string
SNS_FIELDS = {
    "Notification": ("Message", "MessageId", "Subject", "Timestamp", "TopicArn", "Type"),
    "SubscriptionConfirmation": ("Message", "MessageId", "SubscribeURL", "Timestamp", "Token", "TopicArn", "Type"),
    "UnsubscribeConfirmation": ("Message", "MessageId", "SubscribeURL", "Timestamp", "Token", "TopicArn", "Type"),
}
SNS_HASHES = {"1": hashes.SHA1, "2": hashes.SHA256}
#: where SNS's signing certificates may come from unless ``responses.ses.certificate_urls`` says otherwise
DEFAULT_CERTIFICATE_URLS = ("https://sns.*.amazonaws.com/",)
#: a signed timestamp further from now than this is refused unless ``responses.<provider>.tolerance`` says
DEFAULT_TOLERANCE = "5m"
#: a signing certificate larger than this is no SNS certificate
MAX_CERTIFICATE_BYTES = 16 * 1024
#: certificates kept; SNS rotates its signing certificate rarely
CERTIFICATE_CACHE = 32
#: seconds a certificate download (or a subscription confirmation) may take
FETCH_TIMEOUT = 5.0

_LABEL = re.compile(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\Z")
_LOOPBACK = ("127.0.0.1", "localhost", "::1")


class Refused(refusals.Refused):
    """Not a genuine (or not an acceptable) webhook: the HTTP status to answer and why, without personal data."""


# --- allowed URLs ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class UrlPattern:
    """``scheme://host[:port]/`` where a ``*`` label of the host stands for exactly one DNS label."""

    scheme: str
    labels: tuple[str, ...]
    port: int | None

    @classmethod
    def parse(cls, text: str) -> "UrlPattern":
        """Raises ValueError saying what is wrong with ``text``."""
        parts = urlsplit(text.strip())
        if parts.scheme not in ("https", "http"):
            raise ValueError(f"'{text}' is no https:// URL")
        host = (parts.hostname or "").rstrip(".")
        if not host or parts.username or parts.password or parts.query or parts.fragment or parts.path not in ("", "/"):
            raise ValueError(f"'{text}' must be only a scheme and a host, e.g. https://sns.*.amazonaws.com/")
        if parts.scheme == "http" and host not in _LOOPBACK:
            raise ValueError(f"'{text}': plain http is allowed only for a loopback host (tests); use https://")
        labels = tuple(host.lower().split("."))
        if host in _LOOPBACK:
            return cls(parts.scheme, labels, parts.port)
        if len(labels) < 2 or "*" in labels[-2:] or any(label != "*" and not _LABEL.match(label) for label in labels):
            raise ValueError(f"'{text}': a host pattern needs a fixed domain, e.g. https://sns.*.amazonaws.com/")
        return cls(parts.scheme, labels, parts.port)

    def matches(self, url: str) -> bool:
        """Scheme, host and port as the pattern says, no userinfo; any path and query."""
        try:
            parts = urlsplit(url)
            port = parts.port
        except ValueError:
            return False
        host = (parts.hostname or "").lower()
        labels = tuple(host.split("."))
        if parts.scheme != self.scheme or parts.username or parts.password or port != self.port:
            return False
        return len(labels) == len(self.labels) and all(
            want == got if want != "*" else bool(_LABEL.match(got)) for want, got in zip(self.labels, labels))


def allowed(url: str, patterns: Sequence[UrlPattern]) -> bool:
    return isinstance(url, str) and any(p.matches(url) for p in patterns)


# --- Amazon SNS --------------------------------------------------------------------------------------------------


def sns_canonical(message: Mapping[str, object]) -> bytes:
    """The bytes SNS signs: ``Name\\nvalue\\n`` for each signed field of the message's type, in order."""
    fields = SNS_FIELDS.get(message.get("Type"))  # type: ignore[arg-type]
    if fields is None:
        raise Refused(400, "not an SNS message type this endpoint takes")
    text = []
    for name in fields:
        value = message.get(name)
        if name == "Subject" and value is None:
            continue
        if not isinstance(value, str):
            raise Refused(400, f"the SNS message has no {name}")
        text.append(f"{name}\n{value}\n")
    return "".join(text).encode("utf-8")


def _fetch(url: str) -> bytes:
    """GET ``url`` without following redirects, at most MAX_CERTIFICATE_BYTES."""
    with httpx.stream("GET", url, timeout=FETCH_TIMEOUT, follow_redirects=False) as response:
        if response.status_code != 200:
            raise Refused(503, f"the signing certificate could not be fetched (HTTP {response.status_code})")
        body = b""
        for chunk in response.iter_bytes():
            body += chunk
            if len(body) > MAX_CERTIFICATE_BYTES:
                raise Refused(403, "the signing certificate is larger than any SNS certificate")
        return body


class CertificateStore:
    """SNS signing certificates by URL: fetched once from an allowed URL, kept (at most CERTIFICATE_CACHE)."""

    def __init__(self, fetch: Callable[[str], bytes] = _fetch):
        self._fetch = fetch
        self._certificates: dict[str, x509.Certificate] = {}
        self._lock = threading.Lock()

    def public_key(self, url: object, patterns: Sequence[UrlPattern], now: datetime) -> rsa.RSAPublicKey:
        if not isinstance(url, str) or not allowed(url, patterns) or not urlsplit(url).path.endswith(".pem") \
                or urlsplit(url).query:
            raise Refused(403, "the SigningCertURL is not an allowed SNS certificate URL")
        with self._lock:
            certificate = self._certificates.get(url)
        if certificate is None:
            try:
                certificate = x509.load_pem_x509_certificate(self._fetch(url))
            except httpx.HTTPError as exc:
                raise Refused(503, f"the signing certificate could not be fetched ({type(exc).__name__})") from None
            except ValueError:
                raise Refused(403, "the SigningCertURL holds no PEM certificate") from None
            with self._lock:
                if len(self._certificates) >= CERTIFICATE_CACHE:
                    self._certificates.pop(next(iter(self._certificates)))
                self._certificates[url] = certificate
        moment = to_utc(now)
        if not certificate.not_valid_before_utc <= moment <= certificate.not_valid_after_utc:
            raise Refused(403, "the signing certificate is not valid now")
        key = certificate.public_key()
        if not isinstance(key, rsa.RSAPublicKey):
            raise Refused(403, "the signing certificate holds no RSA key")
        return key


def verify_sns(message: Mapping[str, object], certificates: CertificateStore, patterns: Sequence[UrlPattern],
               now: datetime) -> None:
    """Raises Refused unless SNS signed ``message`` (the JSON object of the request body)."""
    if message.get("Signature") is None or message.get("SigningCertURL") is None:
        raise Refused(401, "the SNS message is not signed")
    algorithm = SNS_HASHES.get(str(message.get("SignatureVersion")))
    if algorithm is None:
        raise Refused(400, "unknown SNS SignatureVersion")
    canonical = sns_canonical(message)
    signature = _base64(message.get("Signature"))
    key = certificates.public_key(message.get("SigningCertURL"), patterns, now)
    try:
        key.verify(signature, canonical, padding.PKCS1v15(), algorithm())
    except InvalidSignature:
        raise Refused(403, "the SNS signature does not verify") from None


# --- SendGrid ----------------------------------------------------------------------------------------------------


def load_ecdsa_key(text: str) -> ec.EllipticCurvePublicKey:
    """SendGrid's verification key as its settings page shows it (base64 DER), or PEM; ValueError if neither."""
    text = text.strip()
    try:
        if text.startswith("-----BEGIN"):
            key = serialization.load_pem_public_key(text.encode("ascii"))
        else:
            key = serialization.load_der_public_key(base64.b64decode(text, validate=True))
    except (ValueError, binascii.Error, UnicodeError):
        raise ValueError("is not a public key (base64 DER or PEM)") from None
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, ec.SECP256R1):
        raise ValueError("is not an ECDSA P-256 public key")
    return key


def verify_ecdsa(key: ec.EllipticCurvePublicKey, signature: str | None, timestamp: str | None, body: bytes) -> None:
    if not signature or not timestamp:
        raise Refused(401, "the event webhook is not signed")
    try:
        key.verify(_base64(signature), timestamp.encode("utf-8") + body, ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        raise Refused(403, "the event webhook signature does not verify") from None


# --- HMAC ----------------------------------------------------------------------------------------------------------


def hmac_signature(secret: bytes, timestamp: str, body: bytes) -> str:
    """Hex HMAC-SHA256 of ``timestamp + "." + body`` (what the sender computes, too)."""
    return hmac.new(secret, timestamp.encode("utf-8") + b"." + body, hashlib.sha256).hexdigest()


def verify_hmac(secrets: Sequence[bytes], signature: str | None, timestamp: str | None, body: bytes) -> None:
    """Any of ``secrets`` (the current one and those being rotated out) may have signed."""
    if not signature or not timestamp:
        raise Refused(401, "the callback is not signed")
    given = signature.strip().lower().removeprefix("sha256=").encode("utf-8")
    if not any(hmac.compare_digest(hmac_signature(secret, timestamp, body).encode("ascii"), given)
               for secret in secrets):
        raise Refused(403, "the callback signature does not verify")


# --- time --------------------------------------------------------------------------------------------------------


def unix_time(text: str | None) -> datetime:
    """A header's Unix time in seconds."""
    try:
        return datetime.fromtimestamp(int(str(text).strip()), tz=timezone.utc)
    except (ValueError, OverflowError, OSError):
        raise Refused(400, "the timestamp is not a Unix time in seconds") from None


def check_fresh(sent: datetime, now: datetime, tolerance: timedelta) -> None:
    """A signed timestamp further than ``tolerance`` from now (either way): a replay, or a clock far off."""
    if abs(to_utc(now) - to_utc(sent)) > tolerance:
        raise Refused(403, "the timestamp is outside the tolerance (a replay, or a clock far off)")


def _base64(value: object) -> bytes:
    try:
        return base64.b64decode(str(value), validate=True)
    except (binascii.Error, ValueError):
        raise Refused(403, "the signature is not base64") from None
