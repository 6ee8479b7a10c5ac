"""Tracking tokens: the sealed names of an email's open pixel, its tracked links and a letter's printed link.

A token says what was seen (``open``, ``click`` or ``scan``), which message
(its ledger key), when the token was made and, for a click, the URL the link
led to. It is sealed with AES-SIV (RFC 5297, ``cryptography``'s ``AESSIV``)
under a key derived by HKDF-SHA256 from the project's code secret:

- authenticated: nobody can make or alter a token without the secret (a
  forged or tampered one does not decrypt: 404), so a click redirects only to
  a URL the engine sealed into a link of that very message (no open redirect);
- encrypted: the message key holds the customer id, the URL may too (a
  checkout link), and neither may travel in clear in a URL that proxies,
  scanners and browser histories keep;
- deterministic (SIV): the same message rendered twice gives the same bytes,
  so previews and re-renders agree and the ledger stores what was sent;
- key-rotated: the current secret seals, every previous one still opens
  (``code_secret.code_secrets(config).verifying``);
- expiring: a token older than the configured lifetime
  (``policies.tracking.token_ttl``, default ``DEFAULT_TTL``) is refused (410),
  counted from the instant it was made, so a changed lifetime applies to tokens
  already sent.

Why sealing rather than an HMAC over an opaque id: the service must find the
message from the token alone, and the ledger keeps no index from an opaque id
to a message key; sealing the key itself needs no lookup table and no
migration. A token is ``"v1." + base64url(AES-SIV(key, plaintext))`` where the
plaintext is the type byte, the making instant (seconds, 4 bytes), the key's
length (2 bytes), the key and the URL.

Also owns the rules that tell machine opens and scanner clicks from people
(``machine_reason``). Pure functions; recording is the service's.
"""
from __future__ import annotations

import base64
import binascii
import re
import struct
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from functools import lru_cache
from typing import Mapping, Sequence

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESSIV
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from engine.refusals import Refused

#: what a token may name, with its type byte
TYPES = {"open": 1, "click": 2, "scan": 3}
#: a token's lifetime unless policies.tracking.token_ttl says otherwise: a year and a month, so a
#: letter kept on the fridge for a year still leads somewhere
DEFAULT_TTL = timedelta(days=400)
#: an open or click within this many seconds of the message's sending is a machine's (a scanner, a proxy)
DEFAULT_MACHINE_SECONDS = 10
#: the longest URL a link may have to be tracked (a longer one is left as it is)
MAX_URL_CHARS = 2000
#: the longest token the service reads (a longer one is malformed: 400)
MAX_TOKEN_CHARS = 3000
_PREFIX = "v1."
_TOKEN = re.compile(r"v1\.[A-Za-z0-9_-]{24,%d}" % MAX_TOKEN_CHARS)
_HEADER = struct.Struct(">BIH")  # type, made at (epoch seconds), length of the message key
_CONTEXT = [b"engine tracking token v1"]  # associated data: a token of another use never opens as one of these


class TokenRefused(Refused):
    """A token the service does not honour: ``status`` 400 (malformed), 404 (not sealed by this shop,
    or not of this type) or 410 (expired)."""


@dataclass(frozen=True)
class Token:
    """What an opened token says."""

    type: str
    message_key: str
    made_at: datetime
    url: str | None = None


@lru_cache(maxsize=16)
def _cipher(secret: str) -> AESSIV:
    key = HKDF(algorithm=hashes.SHA256(), length=64, salt=None, info=b"engine tracking tokens").derive(secret.encode())
    return AESSIV(key)


def seal(secret: str, type_: str, message_key: str, made_at: datetime, url: str | None = None) -> str:
    """The token of ``type_`` for message ``message_key`` (and, for a click, ``url``), made at ``made_at``."""
    key = message_key.encode()
    seconds = int(made_at.astimezone(timezone.utc).timestamp())
    plaintext = _HEADER.pack(TYPES[type_], seconds, len(key)) + key + (url or "").encode()
    sealed = _cipher(secret).encrypt(plaintext, _CONTEXT)
    return _PREFIX + base64.urlsafe_b64encode(sealed).rstrip(b"=").decode()


def link(base_url: str, token: str) -> str:
    """``base_url`` with the token as its ``t`` parameter."""
    return f"{base_url}{'&' if '?' in base_url else '?'}t={token}"


def open_token(token: str, secrets: str | Sequence[str], type_: str, now: datetime,
               ttl: timedelta = DEFAULT_TTL) -> Token:
    """What ``token`` says, when one of ``secrets`` sealed it as a ``type_`` token less than ``ttl`` before ``now``."""
    if len(token) > MAX_TOKEN_CHARS + len(_PREFIX) or not _TOKEN.fullmatch(token):
        raise TokenRefused(400, "this link is not valid: it names no message")
    raw = token[len(_PREFIX):]
    try:
        sealed = base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4))
    except (binascii.Error, ValueError):
        raise TokenRefused(400, "this link is not valid: it names no message") from None
    plaintext = None
    for secret in ([secrets] if isinstance(secrets, str) else secrets):
        try:
            plaintext = _cipher(secret).decrypt(sealed, _CONTEXT)
            break
        except InvalidTag:
            continue
    if plaintext is None or len(plaintext) < _HEADER.size:
        raise TokenRefused(404, "this link names no message of this shop")
    type_byte, seconds, key_length = _HEADER.unpack_from(plaintext)
    if type_byte != TYPES[type_]:
        raise TokenRefused(404, f"this link is no {type_} link of this shop")
    body = plaintext[_HEADER.size:]
    try:
        message_key, url = body[:key_length].decode(), body[key_length:].decode()
    except UnicodeDecodeError:
        raise TokenRefused(404, "this link names no message of this shop") from None
    made_at = datetime.fromtimestamp(seconds, timezone.utc)
    if now - made_at > ttl:
        raise TokenRefused(410, "this link has expired")
    return Token(type=type_, message_key=message_key, made_at=made_at, url=url or None)


# --- machines -------------------------------------------------------------------------------------

#: request headers with which browsers and mail clients announce a prefetch, not a person's action
PREFETCH_HEADERS = {"purpose": ("prefetch", "preview"), "sec-purpose": ("prefetch",), "x-purpose": ("preview", "prefetch"),
                    "x-moz": ("prefetch",)}
#: substrings (lower case) of the user agents of link scanners, security gateways, link previews and scripts
SCANNER_AGENTS = (
    "barracuda", "mimecast", "proofpoint", "safelinks", "bingpreview", "symantec", "trendmicro", "trend micro",
    "fireeye", "forcepoint", "sophos", "cisco", "ironport", "zscaler", "checkpoint", "paloalto", "messagelabs",
    "bot", "crawler", "spider", "preview", "facebookexternalhit", "slack", "whatsapp", "skypeuripreview",
    "python-requests", "python-urllib", "curl/", "wget/", "go-http-client", "java/", "okhttp", "httpclient",
    "headlesschrome",
)
#: Apple Mail Privacy Protection loads every image through Apple's proxy when the mail arrives, with a
#: bare WebKit user agent: no browser, no version, no "Mobile" (a person's Mail.app shows the same
#: engine with more tokens, or Safari's)
_APPLE_PROXY = re.compile(r"^Mozilla/5\.0 \((?:Macintosh|iPhone|iPad)[^)]*\) AppleWebKit/[\d.]+ \(KHTML, like Gecko\)$")


def machine_reason(type_: str, method: str, headers: Mapping[str, str], occurred_at: datetime,
                   sent_at: datetime | None, machine_seconds: int = DEFAULT_MACHINE_SECONDS) -> str | None:
    """Why an open, click or scan was a machine's rather than a person's, or None (a person's).

    In this order: a HEAD request (scanners check a link without following it); a prefetch header; no user
    agent or the bare ``Mozilla/5.0``; for an open, the Apple Mail Privacy Protection proxy's user agent; a
    known scanner's user agent (``SCANNER_AGENTS``); for an open or click, less than ``machine_seconds``
    after the message was sent (nobody reads that fast; gateways do). ``headers``: lower-case names."""
    if method == "HEAD":
        return "head_request"
    for name, values in PREFETCH_HEADERS.items():
        if headers.get(name, "").strip().lower() in values:
            return "prefetch"
    agent = headers.get("user-agent", "").strip()
    if agent in ("", "Mozilla/5.0"):
        return "no_user_agent"
    if type_ == "open" and _APPLE_PROXY.match(agent):
        return "apple_mail_proxy"
    lowered = agent.lower()
    if any(marker in lowered for marker in SCANNER_AGENTS):
        return "scanner_agent"
    if type_ != "scan" and sent_at is not None and timedelta(0) <= occurred_at - sent_at < timedelta(seconds=machine_seconds):
        return "too_soon_after_sending"
    return None
