"""The process's long-lived objects, kept out of the garbage collector's full collections.

A pass allocates many short-lived objects (rows, records, messages, SQL trees), and every few hundred
of them the cyclic garbage collector runs; each full (oldest-generation) collection walks every object
the process holds - the imported modules (SQLAlchemy, DuckDB, sqlglot, Jinja2, click), the loaded
project, the reconciler - although, after start-up, those live as long as the process (the service:
until the project is reloaded). ``settle`` moves them into the permanent generation (``gc.freeze``), so
the pass's collections walk only what the passes made; ``release`` hands them back before a reload, so
the old project's reference cycles can be collected once it is dropped.

Owns only this. It must not disable the collector or change its thresholds (the passes' own garbage is
collected as before), and only the process's entry points (the CLI, the service) call it: a library
user's process is theirs.
"""
from __future__ import annotations

import gc


def settle(collect: bool) -> None:
    """Freeze what the process holds now. ``collect``: first collect the garbage start-up left (what is
    frozen is never collected), worth its one full collection in a process that lives on (the service),
    not in a command that exits after one pass."""
    if collect:
        gc.collect()
    gc.freeze()


def release() -> None:
    """Hand the frozen objects back to the collector (before a reload drops the old project)."""
    gc.unfreeze()
