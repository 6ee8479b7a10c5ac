"""Progress of long-running commands, for a person watching a terminal.

The core (reconciler, backtest) reports what it is doing through a
``Progress`` it is given - which stage of how many (campaign 2/13, instant
40/720) and how many warehouse rows it has seen - and never prints. The
default ``Progress`` ignores all of it, so library use and piped output stay
clean. ``progress_for`` picks the terminal display only when stderr is a
terminal and ``--quiet`` was not given: ``engine plan --format csv > x.csv``
gets exactly the CSV, and nothing extra lands on a piped stderr.
"""
from __future__ import annotations

import sys
import time
from typing import IO, Callable, Iterable, Iterator, TypeVar

T = TypeVar("T")


class Progress:
    """Silent: the interface, and what the core uses when nobody watches."""

    def stage(self, level: str, index: int, total: int, name: str = "") -> None:
        """Now at ``index`` of ``total`` of ``level`` (e.g. "campaign", 2, 13, "second-order")."""

    def rows(self, count: int) -> None:
        """``count`` more rows were read from the warehouse."""

    def clear(self) -> None:
        """The command is about to write output: take the status line off the screen for now."""

    def finish(self) -> None:
        """The command is done (a display closes its line)."""


class TerminalProgress(Progress):
    """One self-overwriting status line on a terminal, redrawn at most every ``interval`` seconds.

    ``label: instant 40/720 2025-01-02T15:00Z · campaign 1/1 second-order · 12,345 rows · 3.2s``.
    Levels appear in the order first seen; a level restarting (campaign 1/1 for
    the next instant) replaces its own entry. ``finish`` writes the final state
    and a newline, so the command's own output starts on a clean line.
    """

    def __init__(self, label: str, stream: IO[str], interval: float = 0.1,
                 clock: Callable[[], float] = time.monotonic):
        self.label = label
        self.stream = stream
        self.interval = interval
        self.clock = clock
        self.started = clock()
        self.levels: dict[str, str] = {}
        self.seen = 0
        self.drawn_at: float | None = None
        self.finished = False

    def stage(self, level: str, index: int, total: int, name: str = "") -> None:
        self.levels[level] = f"{level} {index}/{total}" + (f" {name}" if name else "")
        self._draw()

    def rows(self, count: int) -> None:
        self.seen += count
        self._draw()

    def finish(self) -> None:
        if self.finished:
            return
        self.finished = True
        self._draw(force=True)
        self.stream.write("\n")
        self.stream.flush()

    def clear(self) -> None:
        if self.drawn_at is not None and not self.finished:
            self.stream.write("\r\x1b[K")
            self.stream.flush()

    def line(self) -> str:
        parts = list(self.levels.values()) + [f"{self.seen:,} rows", f"{self.clock() - self.started:.1f}s"]
        return f"{self.label}: " + " · ".join(parts)

    def _draw(self, force: bool = False) -> None:
        now = self.clock()
        if not force and self.drawn_at is not None and now - self.drawn_at < self.interval:
            return
        self.drawn_at = now
        self.stream.write("\r\x1b[K" + self.line())  # back to the line's start, clear it, redraw
        self.stream.flush()


def around_output(batches: Iterable[T], progress: Progress) -> Iterator[T]:
    """Pass ``batches`` through, clearing the status line before each is written out and
    closing it when they end, so streamed output and the status line never share a line."""
    for batch in batches:
        progress.clear()
        yield batch
    progress.finish()


def progress_for(label: str, quiet: bool = False, stream: IO[str] | None = None) -> Progress:
    """The terminal display when ``stream`` (default stderr) is a terminal and not ``quiet``; else silence."""
    stream = stream if stream is not None else sys.stderr
    isatty = getattr(stream, "isatty", None)
    if quiet or isatty is None or not isatty():
        return Progress()
    return TerminalProgress(label, stream)


__all__ = ["Progress", "TerminalProgress", "around_output", "progress_for"]
