"""Letters to a print provider's HTTP API: a generic "POST the PDF and the address" adapter (httpx).

Request: POST <url> as multipart/form-data with the fields ``message_key``,
``address`` (the window's lines, newline-separated), ``pages`` and the file
``pdf`` (application/pdf, the exact bytes of letter_pdf.document). The
authentication header is configurable: ``auth_header`` names it (default
``Authorization``) and ``auth`` is its value, from the environment
(``${PRINT_API_AUTH}``). Every attempt of one message carries the same
``Idempotency-Key`` header (a digest of the ledger key, quoted as in
sms_http), so a provider that honours it prints a letter resent after a crash
only once. A 2xx answer is delivery (its body's ``id`` is kept), 429 and 5xx
are transient failures (retried with the engine's backoff), other 4xx
permanent; a letter that cannot be printed (letter_pdf.LetterProblem) is a
permanent failure with the reason, and is never posted.
"""
from __future__ import annotations

from pathlib import Path

import httpx

from engine.errors import ChannelError
from engine.model import ChannelConfig
from engine.spec.config import resolve
from engine.channels.base import Failed, OutgoingMessage, Outcome
from engine.channels.http_answer import outcome, unanswered
from engine.channels.letter_pdf import LetterProblem, channel_document, pdf_and_pages, session_layout


def open_session(config: ChannelConfig, root: Path) -> "PrintApi":
    return PrintApi(config, root)


#: the exact PDF bytes this transport hands over (letter_pdf lays it out for both letter transports)
document = channel_document


class PrintApi:
    def __init__(self, config: ChannelConfig, root: Path):
        settings = config.settings
        self.name = config.name
        self.url = resolve(str(settings["url"]))
        self.auth_header = resolve(str(settings.get("auth_header", "Authorization")))
        self.auth = resolve(str(settings["auth"])) if "auth" in settings else None
        self.timeout = float(resolve(str(settings.get("timeout", 30))))
        self.layout = session_layout(config, root)
        self._client: httpx.Client | None = None

    def open(self) -> None:
        try:
            self.layout.check()
        except LetterProblem as exc:
            raise ChannelError(f"channel '{self.name}': {exc}") from None
        headers = {self.auth_header: self.auth} if self.auth else {}
        self._client = httpx.Client(timeout=self.timeout, headers=headers, follow_redirects=False)

    def send(self, message: OutgoingMessage) -> Outcome:
        if self._client is None:
            raise ChannelError(f"channel '{self.name}' is not open")
        try:
            pdf, pages = pdf_and_pages(message, self.layout)
        except LetterProblem as exc:
            return Failed(detail=str(exc), permanent=True)
        fields = {"message_key": message.key, "address": message.to, "pages": str(pages)}
        files = {"pdf": (f"{message.idempotency_key()}.pdf", pdf, "application/pdf")}
        try:
            response = self._client.post(self.url, data=fields, files=files,
                                         headers={"Idempotency-Key": f'"{message.idempotency_key()}"'})
        except httpx.HTTPError as exc:
            return unanswered(exc)
        return outcome(response, f" ({pages} pages)")

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None
