"""File outbox: emails as .eml files, SMS as JSON lines. No server needed (demo, tests)."""
from __future__ import annotations

import json
import re
from pathlib import Path

from ..errors import ChannelError
from ..model import ChannelConfig
from .base import Delivered, Failed, OutgoingMessage, Outcome


class FileOutbox:
    def __init__(self, config: ChannelConfig, root: Path):
        self.config = config
        self.directory = root / str(config.settings.get("path", "var/outbox"))
        self._sms = None

    def open(self) -> None:
        try:
            (self.directory / self.config.kind).mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ChannelError(f"channel '{self.config.name}': cannot create outbox {self.directory}: {exc}") from None

    def send(self, message: OutgoingMessage) -> Outcome:
        try:
            if message.kind == "email":
                name = re.sub(r"[^A-Za-z0-9_.-]+", "_", message.key) + ".eml"
                path = self.directory / "email" / name
                path.write_bytes(message.to_bytes())
                return Delivered(provider_id=str(path), detail="written to outbox")
            if self._sms is None:
                self._sms = open(self.directory / "sms" / "messages.jsonl", "a", encoding="utf-8")
            self._sms.write(json.dumps({"key": message.key, "to": message.to, "from": message.sender, "text": message.text}) + "\n")
            return Delivered(provider_id=message.key, detail="appended to outbox")
        except OSError as exc:
            return Failed(detail=f"outbox write failed: {exc}")

    def close(self) -> None:
        if self._sms is not None:
            self._sms.close()
            self._sms = None
