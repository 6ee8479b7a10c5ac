"""A web push service on loopback that does what a real one must: checks the VAPID JWT and decrypts.

Each ``Subscriber`` is a browser's side of a subscription: a P-256 key pair
and a 16-byte auth secret (made with cryptography), whose public half is what
the shop stores (endpoint, p256dh, auth). For every POST the service verifies
the ``Authorization: vapid t=<JWT>, k=<key>`` header (RFC 8292: the ES256
signature over the JWT with the key ``k``, the audience being this service's
origin, an expiry within 24 hours, a mailto:/https: subject) and decrypts the
body with the subscriber's private key (RFC 8291 aes128gcm, http_ece.decrypt).
Only then does it record the plaintext payload and answer 201; a request
failing either check is answered 400/401/403 and recorded as rejected. ``script``
gives an endpoint scripted answers first (410 gone, 429 with Retry-After, 503).
"""
from __future__ import annotations

import base64
import json
import os
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import http_ece
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from servers import free_port


def b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def unb64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@dataclass
class Subscriber:
    """A browser's push subscription: its private key and auth secret never leave the test."""

    endpoint: str
    private_key: ec.EllipticCurvePrivateKey = field(default_factory=lambda: ec.generate_private_key(ec.SECP256R1()))
    auth: bytes = field(default_factory=lambda: os.urandom(16))

    @property
    def p256dh(self) -> str:
        return b64url(self.private_key.public_key().public_bytes(serialization.Encoding.X962,
                                                                 serialization.PublicFormat.UncompressedPoint))

    def row(self, customer_id: int) -> dict:
        """The shop's row of this subscription (what the browser's PushSubscription.toJSON() gives)."""
        return {"customer_id": customer_id, "endpoint": self.endpoint, "p256dh": self.p256dh, "auth": b64url(self.auth)}


def vapid_keys() -> tuple[str, str]:
    """(private key as base64url of the raw 32-byte scalar, public key as base64url of the point)."""
    key = ec.generate_private_key(ec.SECP256R1())
    raw = key.private_numbers().private_value.to_bytes(32, "big")
    public = key.public_key().public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)
    return b64url(raw), b64url(public)


def verify_vapid(header: str, audience: str, public_key: str | None) -> dict:
    """The JWT's claims when ``header`` is a valid RFC 8292 authorization for ``audience``; raises otherwise."""
    scheme, _, params = header.partition(" ")
    if scheme.lower() != "vapid":
        raise ValueError(f"scheme {scheme!r}, not vapid")
    values = dict(part.strip().split("=", 1) for part in params.split(","))
    token, key = values["t"], values["k"]
    if public_key is not None and key != public_key:
        raise ValueError("k is not the application server's key")
    signing_input, _, signature = token.rpartition(".")
    head = json.loads(unb64url(signing_input.split(".")[0]))
    if head.get("alg") != "ES256":
        raise ValueError(f"alg {head.get('alg')}")
    raw = unb64url(signature)
    if len(raw) != 64:
        raise ValueError("an ES256 signature is 64 bytes (r || s)")
    der = encode_dss_signature(int.from_bytes(raw[:32], "big"), int.from_bytes(raw[32:], "big"))
    verifier = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), unb64url(key))
    verifier.verify(der, signing_input.encode(), ec.ECDSA(hashes.SHA256()))  # InvalidSignature if forged
    claims = json.loads(unb64url(signing_input.split(".")[1]))
    if claims.get("aud") != audience:
        raise ValueError(f"aud {claims.get('aud')!r} is not {audience!r}")
    if not time.time() < claims["exp"] <= time.time() + 24 * 3600:
        raise ValueError("exp is not within the next 24 hours")
    if not str(claims.get("sub", "")).startswith(("mailto:", "https:")):
        raise ValueError("sub is not a mailto: or https: URI")
    return claims


@dataclass
class Received:
    endpoint: str
    payload: dict
    headers: dict
    ciphertext: bytes


class PushService:
    """ThreadingHTTPServer on 127.0.0.1 at ``origin``; endpoints are ``origin/push/<name>``."""

    def __init__(self, vapid_public_key: str | None = None):
        self.port = free_port()
        self.origin = f"http://127.0.0.1:{self.port}"
        self.vapid_public_key = vapid_public_key
        self.subscribers: dict[str, Subscriber] = {}
        self.received: list[Received] = []
        self.rejected: list[tuple[str, str]] = []  # (endpoint, why)
        #: endpoint -> answers to give first, in order: (status, headers)
        self.script: dict[str, list[tuple[int, dict]]] = {}
        self.requests = 0
        self.lock = threading.Lock()
        service = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def answer(self, status: int, headers: dict | None = None) -> None:
                self.send_response(status)
                for name, value in (headers or {}).items():
                    self.send_header(name, value)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def do_POST(self):
                length = int(self.headers.get("Content-Length", 0))
                body = self.rfile.read(length)
                if len(body) < length:  # the client died mid-request (a kill test): nothing arrived, as a real
                    self.close_connection = True  # push service would see it: no answer, nothing recorded
                    return
                endpoint = service.origin + self.path
                with service.lock:
                    service.requests += 1
                    scripted = service.script.get(endpoint)
                    answer = scripted.pop(0) if scripted else None
                if answer is not None:
                    return self.answer(*answer)
                subscriber = service.subscribers.get(endpoint)
                if subscriber is None:
                    return self.answer(404)
                try:
                    verify_vapid(self.headers.get("Authorization", ""), service.origin, service.vapid_public_key)
                except (ValueError, KeyError, InvalidSignature) as exc:
                    service.rejected.append((endpoint, f"vapid: {exc!r}"))
                    return self.answer(401)
                if self.headers.get("Content-Encoding") != "aes128gcm" or "TTL" not in self.headers:
                    service.rejected.append((endpoint, "headers"))
                    return self.answer(400)
                try:
                    plain = http_ece.decrypt(body, private_key=subscriber.private_key, auth_secret=subscriber.auth,
                                             version="aes128gcm")
                except Exception as exc:  # noqa: BLE001 - any decryption failure is the client's fault
                    service.rejected.append((endpoint, f"decrypt: {exc!r}"))
                    return self.answer(400)
                with service.lock:
                    service.received.append(Received(endpoint, json.loads(plain), dict(self.headers.items()), body))
                self.answer(201, {"Location": f"{service.origin}/message/{len(service.received)}"})

        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def subscribe(self, name: str) -> Subscriber:
        subscriber = Subscriber(f"{self.origin}/push/{name}")
        self.subscribers[subscriber.endpoint] = subscriber
        return subscriber

    def __enter__(self) -> "PushService":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()
