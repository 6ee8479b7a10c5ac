"""SMS over an HTTP provider API (httpx), one keep-alive client per pass.

Request: POST <url> with JSON {"to", "from", "text", "reference"} and a
bearer token from the environment; the ``reference`` is the ledger key. Every
attempt of one message carries the same ``Idempotency-Key`` header (a digest
of the ledger key, as a quoted string: the IETF httpapi draft "The
Idempotency-Key HTTP Header Field" makes it a Structured Fields string; an API
in Stripe's style takes the quotes as part of a key that is just as stable), so
a provider that honours it delivers a message resent after a crash
(``delivery: at_least_once``) only once. A 2xx answer is delivery (its body's
``id`` is kept), 429 and 5xx are transient failures, other 4xx permanent ones.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Mapping

import httpx

from engine.spec.config import resolve
from engine.errors import ChannelError
from engine.model import ChannelConfig
from engine.channels.base import OutgoingMessage, Outcome
from engine.channels.http_answer import outcome, unanswered


def open_session(config: ChannelConfig, root: Path) -> "HttpSmsChannel":
    return HttpSmsChannel(config)


def document(message: OutgoingMessage, config: ChannelConfig | None = None, root: Path | None = None) -> bytes:
    """The request body posted for ``message``: JSON {"to", "from", "text", "reference"}."""
    return json.dumps({"to": message.to, "from": message.sender, "text": message.text, "reference": message.key},
                      ensure_ascii=False).encode("utf-8")


#: seconds a request to the provider may take unless ``timeout`` says otherwise
DEFAULT_TIMEOUT = 10


def setting_defaults(settings: Mapping[str, object]) -> list[tuple[str, str, str]]:
    """(setting, value, note) of each setting a channel on this transport may leave out (engine config show)."""
    return [("token", "(none)", "default"), ("timeout", str(DEFAULT_TIMEOUT), "default (seconds)")]


class HttpSmsChannel:
    def __init__(self, config: ChannelConfig):
        settings = config.settings
        self.name = config.name
        self.url = resolve(str(settings["url"]))
        self.token = resolve(str(settings["token"])) if "token" in settings else None
        self.timeout = float(resolve(str(settings.get("timeout", DEFAULT_TIMEOUT))))
        self._client: httpx.Client | None = None

    def open(self) -> None:
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        self._client = httpx.Client(timeout=self.timeout, headers=headers)

    def send(self, message: OutgoingMessage) -> Outcome:
        if self._client is None:
            raise ChannelError(f"channel '{self.name}' is not open")
        body = message.document if message.document is not None else document(message)
        try:
            response = self._client.post(self.url, content=body,
                                         headers={"Content-Type": "application/json",
                                                  "Idempotency-Key": f'"{message.idempotency_key()}"'})
        except httpx.HTTPError as exc:
            return unanswered(exc)
        return outcome(response)

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None
