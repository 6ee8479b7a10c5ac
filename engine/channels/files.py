"""Durable files for the transports that write to a folder (outbox, letter_drop).

Owns the one way a transport writes a file a reader may pick up at any moment:
to a hidden temporary name beside it, flushed and fsynced, then renamed into
place (a reader never sees half a file), and the fsync of a folder that makes
the renames themselves durable. Must not know what is in the files.
"""
from __future__ import annotations

import os
from pathlib import Path


def write_atomically(path: Path, data: bytes) -> None:
    """``data`` at ``path``, whole or not at all: written to ``.NAME.partial``, fsynced, renamed."""
    partial = path.with_name(f".{path.name}.partial")
    with open(partial, "wb") as file:
        file.write(data)
        file.flush()
        os.fsync(file.fileno())
    os.replace(partial, path)


def fsync_directory(path: Path) -> None:
    """Make the entries of folder ``path`` (files created or renamed in it) durable."""
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
