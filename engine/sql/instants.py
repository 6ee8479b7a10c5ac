"""The pass instant as a symbol, so that a query can be compiled once and bound at every pass.

A due query compares timestamps with instants derived from the pass's ``now``: ``now`` itself,
``now - delay``, a step's window bounds, ``now - 6mo``, the last local send time in a zone. Built
with ``PassInstant.now()`` in place of a datetime, each of them becomes a ``PassInstant``: the
recipe that computes it from any ``now``, exactly as the code that built the query computed it
(the same operations, in the same order - calendar months included). ``compile.ts`` renders one as
a bound parameter (``prepared.py``), whose value is the recipe applied to the pass's instant.

Safe by construction: a PassInstant supports only what has one answer for every ``now`` - adding
or subtracting a duration, ``derive`` (any function of the instant, applied at bind time), and the
order between two instants that differ by a fixed time. Anything else (its year, its time zone,
its text, the order of ``now - 6mo`` and ``now - 180d``) raises ``NotParameterisable``, so a query
whose shape depends on the instant (the month-days of a birthday window) cannot be cached with
one ``now`` baked in: it is built per pass, as before. Pure: no I/O, no sqlglot.
"""
from __future__ import annotations

import secrets
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import datetime, timedelta
from typing import Any, Callable, Iterator

from engine.clock import CalendarDuration


class NotParameterisable(TypeError):
    """The query needs the value of the pass instant itself, not a recipe for it."""


class PassInstant:
    """An instant computed from the pass's ``now`` (``recipe(now)``); ``shift``: the fixed time
    from ``now`` when it is one (``now``, ``now - 2h``), else None (calendar months, zones)."""

    __slots__ = ("recipe", "shift")

    def __init__(self, recipe: Callable[[datetime], datetime], shift: timedelta | None):
        self.recipe = recipe
        self.shift = shift

    @classmethod
    def now(cls) -> "PassInstant":
        return cls(lambda now: now, timedelta(0))

    def at(self, now: datetime) -> datetime:
        """The instant this stands for in a pass at ``now``."""
        return self.recipe(now)

    def __add__(self, other: object) -> "PassInstant":
        recipe = self.recipe
        if isinstance(other, timedelta):
            return PassInstant(lambda now: recipe(now) + other, None if self.shift is None else self.shift + other)
        if isinstance(other, CalendarDuration):
            return PassInstant(lambda now: recipe(now) + other, None)
        return NotImplemented

    def __sub__(self, other: object) -> "PassInstant | timedelta":
        if isinstance(other, PassInstant):  # the time between two instants: fixed, or unknown until the pass
            return self._fixed_gap(other)
        recipe = self.recipe
        if isinstance(other, timedelta):
            return PassInstant(lambda now: recipe(now) - other, None if self.shift is None else self.shift - other)
        if isinstance(other, CalendarDuration):
            return PassInstant(lambda now: recipe(now) - other, None)
        return NotImplemented

    __radd__ = __add__

    def __rsub__(self, other: object) -> timedelta:
        raise NotParameterisable("a time before the pass instant depends on the pass instant")

    def _fixed_gap(self, other: object) -> timedelta:
        if isinstance(other, PassInstant) and self.shift is not None and other.shift is not None:
            return self.shift - other.shift
        raise NotParameterisable("the order of these instants depends on the pass instant")

    def __lt__(self, other: object) -> bool:
        return self._fixed_gap(other) < timedelta(0)

    def __le__(self, other: object) -> bool:
        return self._fixed_gap(other) <= timedelta(0)

    def __gt__(self, other: object) -> bool:
        return self._fixed_gap(other) > timedelta(0)

    def __ge__(self, other: object) -> bool:
        return self._fixed_gap(other) >= timedelta(0)

    def __eq__(self, other: object) -> bool:
        return self._fixed_gap(other) == timedelta(0)

    def __hash__(self) -> int:
        if self.shift is None:
            raise NotParameterisable("an instant with calendar months or a time zone has no fixed value")
        return hash(self.shift)

    def __str__(self) -> str:
        raise NotParameterisable("the text of the pass instant is only known at bind time")

    def __format__(self, spec: str) -> str:
        raise NotParameterisable("the text of the pass instant is only known at bind time")

    def __repr__(self) -> str:  # for tracebacks only: never SQL
        return f"PassInstant(shift={self.shift!r})"

    def __bool__(self) -> bool:
        return True

    def __getattr__(self, name: str) -> Any:  # year, tzinfo, astimezone...: the value, not a recipe
        if name.startswith("__"):  # protocols (copy, pickle) probing: plain "no such attribute"
            raise AttributeError(name)
        raise NotParameterisable(f"the query reads {name} of the pass instant")


def derive(instant: Any, function: Callable[[Any], Any]) -> Any:
    """``function(instant)``: now for a datetime (or a value computed from one), at bind time for a
    PassInstant (whatever it computes - a zone's window, its last local send time - then has one
    answer per ``now``)."""
    if isinstance(instant, PassInstant):
        recipe = instant.recipe
        return PassInstant(lambda now: function(recipe(now)), None)
    return function(instant)


class Placeholders:
    """The PassInstants one query compiled with, in order, each named by a mark no shop SQL holds
    (a random prefix per query): ``compile.ts`` renders instant ``i`` as the text literal ``'<mark>i'``,
    which prepared.py replaces by a bind parameter or by the literal of the pass."""

    def __init__(self) -> None:
        self.prefix = f"engine_t{secrets.token_hex(6)}_"
        self.instants: list[PassInstant] = []

    def add(self, instant: PassInstant) -> str:
        self.instants.append(instant)
        return f"{self.prefix}{len(self.instants) - 1}"


_placeholders: ContextVar[Placeholders | None] = ContextVar("engine_placeholders", default=None)


@contextmanager
def collecting() -> Iterator[Placeholders]:
    """While the block builds a query, the PassInstants it renders are collected here."""
    placeholders = Placeholders()
    token = _placeholders.set(placeholders)
    try:
        yield placeholders
    finally:
        _placeholders.reset(token)


def placeholder(instant: PassInstant) -> str:
    """The mark standing for ``instant`` in the query being collected."""
    collector = _placeholders.get()
    if collector is None:
        raise NotParameterisable("a pass instant outside a query being compiled")
    return collector.add(instant)
