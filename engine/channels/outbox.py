"""File outbox: one folder per channel kind; RFC 5322 messages (email) as .eml files, others
(SMS, web push) as JSON lines in its messages.jsonl (the envelope and the rendered parts). No server needed (demo, tests).

A message is handed over when it is in the file system: ``send`` writes each
.eml to a temporary file, fsyncs it and renames it into place (a reader never
sees half a message), and appends each other message as one line with a
single ``write`` to the unbuffered file, so a killed process loses nothing it
reported. ``sync`` - called before the ledger records a group as sent - fsyncs
the lines file and the folders, so the names and lines survive a power loss
too. Which form a kind takes is its declaration's ``rfc5322``.
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path

from engine import channel_kinds
from engine.errors import ChannelError
from engine.model import ChannelConfig
from engine.channels.base import Delivered, Failed, OutgoingMessage, Outcome
from engine.channels.files import fsync_directory, write_atomically


def open_session(config: ChannelConfig, root: Path) -> "FileOutbox":
    return FileOutbox(config, root)


def document(message: OutgoingMessage, config: ChannelConfig | None = None, root: Path | None = None) -> bytes:
    """What the outbox writes: an RFC 5322 kind's message as the .eml file's bytes (lines ending in
    LF, as files on this system do); any other kind's as one JSON line {"key", "to", "from", <its
    parts>} (without the line break)."""
    if channel_kinds.kind(message.kind).rfc5322:
        return message.to_bytes()
    return json.dumps({"key": message.key, "to": message.to, "from": message.sender, **message.parts}).encode("utf-8")


class FileOutbox:
    def __init__(self, config: ChannelConfig, root: Path):
        self.config = config
        self.directory = root / str(config.settings.get("path", "var/outbox"))
        self._lines: int | None = None  # file descriptor of <kind>/messages.jsonl, opened for appending
        self._lines_folder: Path | None = None  # the folder of that file
        self._written_files: set[Path] = set()  # folders with a new .eml name since the last sync
        self._new_lines_file = False  # messages.jsonl opened since the last sync (maybe created)

    def open(self) -> None:
        try:
            (self.directory / self.config.kind).mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ChannelError(f"channel '{self.config.name}': cannot create outbox {self.directory}: {exc}") from None

    def send(self, message: OutgoingMessage) -> Outcome:
        try:
            folder = self.directory / message.kind
            data = message.document if message.document is not None else document(message)
            if channel_kinds.kind(message.kind).rfc5322:
                name = re.sub(r"[^A-Za-z0-9_.-]+", "_", message.key) + ".eml"
                path = folder / name
                write_atomically(path, data)
                self._written_files.add(folder)
                return Delivered(provider_id=str(path), detail="written to outbox")
            if self._lines is None:
                self._lines = os.open(folder / "messages.jsonl", os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
                self._lines_folder = folder
                self._new_lines_file = True
            os.write(self._lines, data + b"\n")  # one write of the whole line: in the file, or not at all
            return Delivered(provider_id=message.key, detail="appended to outbox")
        except OSError as exc:
            return Failed(detail=f"outbox write failed: {exc}")

    def sync(self) -> None:
        """Make every message ``send`` reported durable: fsync the lines file and the outbox folders."""
        try:
            if self._lines is not None:
                os.fsync(self._lines)
            if self._new_lines_file and self._lines_folder is not None:
                fsync_directory(self._lines_folder)
                self._new_lines_file = False
            for folder in sorted(self._written_files):
                fsync_directory(folder)
            self._written_files.clear()
        except OSError as exc:
            raise ChannelError(f"channel '{self.config.name}': cannot sync outbox {self.directory}: {exc}") from None

    def close(self) -> None:
        if self._lines is not None:
            os.close(self._lines)
            self._lines = None
