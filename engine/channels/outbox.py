"""File outbox: emails as .eml files, SMS as JSON lines. No server needed (demo, tests).

A message is handed over when it is in the file system: ``send`` writes each
email to a temporary file, fsyncs it and renames it into place (a reader never
sees half a message), and appends each SMS as one line with a single
``write`` to the unbuffered file, so a killed process loses nothing it
reported. ``sync`` - called before the ledger records a group as sent - fsyncs
the SMS file and the directories, so the names and lines survive a power
loss too.
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path

from engine.errors import ChannelError
from engine.model import ChannelConfig
from engine.channels.base import Delivered, Failed, OutgoingMessage, Outcome


class FileOutbox:
    def __init__(self, config: ChannelConfig, root: Path):
        self.config = config
        self.directory = root / str(config.settings.get("path", "var/outbox"))
        self._sms: int | None = None  # file descriptor of sms/messages.jsonl, opened for appending
        self._written_email = False  # a new name in email/ since the last sync
        self._new_sms_file = False  # sms/messages.jsonl opened since the last sync (maybe created)

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
                partial = path.with_name(f".{name}.partial")
                with open(partial, "wb") as file:
                    file.write(message.to_bytes())
                    file.flush()
                    os.fsync(file.fileno())
                os.replace(partial, path)
                self._written_email = True
                return Delivered(provider_id=str(path), detail="written to outbox")
            if self._sms is None:
                self._sms = os.open(self.directory / "sms" / "messages.jsonl", os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
                self._new_sms_file = True
            line = json.dumps({"key": message.key, "to": message.to, "from": message.sender, "text": message.text}) + "\n"
            os.write(self._sms, line.encode("utf-8"))  # one write of the whole line: in the file, or not at all
            return Delivered(provider_id=message.key, detail="appended to outbox")
        except OSError as exc:
            return Failed(detail=f"outbox write failed: {exc}")

    def sync(self) -> None:
        """Make every message ``send`` reported durable: fsync the SMS file and the outbox directories."""
        try:
            if self._sms is not None:
                os.fsync(self._sms)
            if self._new_sms_file:
                _fsync_directory(self.directory / "sms")
                self._new_sms_file = False
            if self._written_email:
                _fsync_directory(self.directory / "email")
                self._written_email = False
        except OSError as exc:
            raise ChannelError(f"channel '{self.config.name}': cannot sync outbox {self.directory}: {exc}") from None

    def close(self) -> None:
        if self._sms is not None:
            os.close(self._sms)
            self._sms = None


def _fsync_directory(path: Path) -> None:
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
