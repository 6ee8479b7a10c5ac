"""Letters into a print shop's drop folder: one PDF per letter plus a manifest CSV per batch.

``send`` renders the letter (letter_pdf) and writes ``<message key>.pdf`` to a
hidden temporary file, fsyncs it and renames it into place, so the print shop
never sees half a PDF. ``sync`` - called before the ledger records a group as
sent - writes the group's manifest as a NEW file per batch,
``manifest-<UTC time>-<digest of its keys>.csv`` (columns message_key, file,
pages, sha256, address), the same way (temporary file, fsync, rename), then
fsyncs the folder: a manifest appears whole or not at all, and every PDF it
lists is already in place. A new file per batch rather than one appended file,
because an append is not atomic (a crash could leave half a row the print shop
reads) and rewriting one growing file would race with the print shop moving
it away. The print shop goes by the manifests; a PDF no manifest lists was
never reported sent (a crash between the two), and is written again - same
name, same bytes - if the message is resent.

A letter that cannot be printed (letter_pdf.LetterProblem: a character the
font lacks, over the page limit, ...) is a permanent failure with the reason;
a missing font fails ``open`` (nothing of the channel is claimed).
"""
from __future__ import annotations

import csv
import hashlib
import io
import re
import time
from pathlib import Path

from engine.errors import ChannelError
from engine.model import ChannelConfig
from engine.spec.config import resolve
from engine.channels.base import Delivered, Failed, OutgoingMessage, Outcome
from engine.channels.files import fsync_directory, write_atomically
from engine.channels.letter_pdf import LetterProblem, channel_document, pdf_and_pages, session_layout

#: the columns of a manifest
MANIFEST_COLUMNS = ("message_key", "file", "pages", "sha256", "address")


def open_session(config: ChannelConfig, root: Path) -> "DropFolder":
    return DropFolder(config, root)


#: the exact PDF bytes this transport hands over (letter_pdf lays it out for both letter transports)
document = channel_document


class DropFolder:
    def __init__(self, config: ChannelConfig, root: Path):
        self.name = config.name
        self.directory = root / resolve(str(config.settings["path"]))
        self.layout = session_layout(config, root)
        self._rows: list[tuple[str, str, int, str, str]] = []  # the manifest rows since the last sync

    def open(self) -> None:
        try:
            self.layout.check()
        except LetterProblem as exc:
            raise ChannelError(f"channel '{self.name}': {exc}") from None
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ChannelError(f"channel '{self.name}': cannot create the drop folder {self.directory}: {exc}") from None

    def send(self, message: OutgoingMessage) -> Outcome:
        try:
            pdf, pages = pdf_and_pages(message, self.layout)
        except LetterProblem as exc:
            return Failed(detail=str(exc), permanent=True)
        name = re.sub(r"[^A-Za-z0-9_.-]+", "_", message.key) + ".pdf"
        try:
            write_atomically(self.directory / name, pdf)
        except OSError as exc:
            return Failed(detail=f"drop folder write failed: {exc}")
        self._rows.append((message.key, name, pages, hashlib.sha256(pdf).hexdigest(), message.to))
        return Delivered(provider_id=name, detail=f"written to the drop folder ({pages} pages)")

    def sync(self) -> None:
        """Write the manifest of the letters sent since the last sync, and make it and them durable."""
        if not self._rows:
            return
        rows, self._rows = self._rows, []
        text = io.StringIO()
        writer = csv.writer(text, lineterminator="\r\n")  # RFC 4180
        writer.writerow(MANIFEST_COLUMNS)
        writer.writerows(rows)
        digest = hashlib.sha256("\n".join(row[0] for row in rows).encode()).hexdigest()[:12]
        name = f"manifest-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}-{digest}.csv"
        try:
            write_atomically(self.directory / name, text.getvalue().encode("utf-8"))
            fsync_directory(self.directory)
        except OSError as exc:
            self._rows = rows + self._rows
            raise ChannelError(f"channel '{self.name}': cannot write the manifest in {self.directory}: {exc}") from None

    def close(self) -> None:
        try:
            self.sync()
        except ChannelError:
            pass  # the ledger never recorded those letters as sent: they stay in doubt, as after a crash
