"""Customers' responses in the ledger: ``engine_events``, each event recorded once.

Owns the events table's writes and the lookups a recorder needs: ``record_events``
(one set-based insert; the primary key ``event_id`` makes a replay - a webhook
the provider sends again, a pixel loaded twice, two replicas answering the same
event - record nothing new), ``message_refs`` (which messages the ledger holds,
so an event for a message it never sent is refused) and ``delete_events_before``
(retention). An event is stored with its message's customer, campaign, step,
variant and channel, copied from the ledger row, so response attributes and
statistics join without the ledger.

What an event *means* is declared here once: ``EVENT_TYPES``, which of them are
engagement (``ENGAGEMENT``; a machine open or a link scanner's click is recorded
with ``machine`` set and is not engagement by default) and which suppress the
address (``SUPPRESSING``). Must not verify tokens or signatures (the service's
routes do), decide what to suppress (the caller calls ``Ledger.suppress``), or
read engine.yaml. ``EventStore`` is a mixin of ``Ledger`` (it reuses its ``db``).
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime
from typing import Iterable

import sqlalchemy as sa

from engine.state.bulk import conflict_insert, unnest_insert
from engine.state.ledger_tables import events_table, ledger_table
from engine.state.warehouse import Database

#: Every kind of response the engine records.
EVENT_TYPES = ("delivered", "open", "click", "scan", "bounce", "soft_bounce", "complaint", "undelivered")
#: The responses that show a person engaged (counted only when not ``machine``, by default).
ENGAGEMENT = ("open", "click", "scan")
#: The responses after which the address is suppressed for every campaign (hard bounce, complaint).
SUPPRESSING = ("bounce", "complaint")
#: The longest event id kept (a provider's id is cut to it).
MAX_EVENT_ID = 200
#: Keys looked up, and rows inserted, per statement.
CHUNK = 500
#: Inserts tried again after a concurrent transaction committed one of the same event ids (DuckDB).
CONFLICT_RETRIES = 3


@dataclass(frozen=True)
class Event:
    """One response to one message, as a tracking endpoint or a provider reports it."""

    event_id: str  # the dedupe key: ``event_id(...)`` for tracking events, "<provider>:<their id>" otherwise
    message_key: str
    type: str  # one of EVENT_TYPES
    occurred_at: datetime  # naive UTC
    machine: bool = False  # a machine open / link-scanner click: recorded, not engagement by default
    provider: str | None = None
    url: str | None = None  # a click's target: always a URL that was in the message
    detail: str | None = None  # short, no personal data (a bounce's subtype, a provider's status)

    def __post_init__(self) -> None:
        if self.type not in EVENT_TYPES:
            raise ValueError(f"unknown event type {self.type!r}; one of {', '.join(EVENT_TYPES)}")


@dataclass(frozen=True)
class MessageRef:
    """What the ledger holds of a message an event answers."""

    message_key: str
    customer_id: str
    campaign: str
    step: str
    variant: str | None
    channel: str | None
    status: str
    updated_at: datetime  # for a sent message: when it was handed to the provider (its last update)


@dataclass(frozen=True)
class RecordedEvent:
    """An event this call recorded, with the message it answers."""

    event: Event
    message: MessageRef

    @property
    def customer_id(self) -> str:
        return self.message.customer_id


def event_id(type_: str, *parts: str) -> str:
    """A stable dedupe id for an event the engine observes itself (an open, a click of one link, a scan):
    ``type:`` and the SHA-256 of the parts, so the id holds no personal data."""
    digest = hashlib.sha256("\x1f".join(parts).encode()).hexdigest()
    return f"{type_}:{digest}"


def provider_event_id(provider: str, their_id: str) -> str:
    """The dedupe id of a provider's event: ``provider:their id``, cut to ``MAX_EVENT_ID`` characters."""
    return f"{provider}:{their_id}"[:MAX_EVENT_ID]


def _naive(value: datetime) -> datetime:
    return value.replace(tzinfo=None) if value.tzinfo else value


class EventStore:
    """The ledger's events table (a mixin of ``Ledger``)."""

    db: Database

    def message_refs(self, keys: Iterable[str]) -> dict[str, MessageRef]:
        """The ledger rows of ``keys`` that exist (one query per ``CHUNK`` keys)."""
        wanted = sorted(set(keys))
        c = ledger_table.c
        found: dict[str, MessageRef] = {}
        with self.db.engine.connect() as conn:
            for start in range(0, len(wanted), CHUNK):
                rows = conn.execute(sa.select(c.message_key, c.customer_id, c.campaign, c.step, c.variant, c.channel,
                                              c.status, c.updated_at)
                                    .where(c.message_key.in_(wanted[start:start + CHUNK])))
                for row in rows:
                    found[row[0]] = MessageRef(*row)
        return found

    def record_events(self, events: Iterable[Event], now: datetime) -> list[RecordedEvent]:
        """Record ``events`` whose message the ledger holds; return those this call recorded.

        One insert per ``CHUNK`` events that does nothing for an ``event_id`` already recorded, so a
        replay (or the same event from two replicas at once) is recorded once and returned once.
        """
        unique = list({e.event_id: e for e in events}.values())
        if not unique:
            return []
        refs = self.message_refs(e.message_key for e in unique)
        known = [e for e in unique if e.message_key in refs]
        recorded: list[RecordedEvent] = []
        for start in range(0, len(known), CHUNK):
            chunk = known[start:start + CHUNK]
            rows = [self._event_row(e, refs[e.message_key], now) for e in chunk]
            inserted = self._insert_new_events(rows)
            recorded += [RecordedEvent(e, refs[e.message_key]) for e in chunk if e.event_id in inserted]
        return recorded

    @staticmethod
    def _event_row(e: Event, ref: MessageRef, now: datetime) -> dict:
        return {"event_id": e.event_id[:MAX_EVENT_ID], "message_key": e.message_key, "customer_id": ref.customer_id,
                "campaign": ref.campaign, "step": ref.step, "variant": ref.variant, "channel": ref.channel,
                "type": e.type, "machine": bool(e.machine), "provider": e.provider, "url": e.url,
                "detail": e.detail, "occurred_at": _naive(e.occurred_at), "recorded_at": _naive(now)}

    def _insert_new_events(self, rows: list[dict]) -> set[str]:
        dialect = self.db.dialect
        for attempt in range(CONFLICT_RETRIES + 1):
            try:
                with self.db.engine.begin() as conn:
                    if dialect.array_parameters == "positional":  # DuckDB: one LIST parameter per column
                        return unnest_insert(conn, events_table, rows, conflict="event_id")
                    if dialect.on_conflict_insert is not None:
                        statement = (conflict_insert(self.db.dialect)(events_table).on_conflict_do_nothing()
                                     .returning(events_table.c.event_id))
                        return {row[0] for row in conn.execute(statement, rows)}
            except sa.exc.SQLAlchemyError as exc:
                # DuckDB's optimistic transactions: another connection committed the same event id after this
                # transaction began, and DuckDB refuses the insert instead of doing nothing. Again, the
                # committed row is seen and skipped.
                if attempt < CONFLICT_RETRIES and "duplicate key" in str(exc).lower():
                    continue
                raise self.db._error("statement failed on", exc) from None
        inserted = set()  # pragma: no cover - other backends: one row at a time, the key decides
        for row in rows:
            try:
                self.db.execute(events_table.insert().values(row))
                inserted.add(row["event_id"])
            except Exception:  # noqa: BLE001 - a duplicate id: recorded before
                continue
        return inserted

    def engagement_rows(self) -> list[tuple]:
        """(customer_id, channel, type, message_key, occurred_at) of every human engagement event
        (``ENGAGEMENT``, not ``machine``): what response filters read, copied to a warehouse in another
        database for a pass (engine.sql.shipping)."""
        c = events_table.c
        with self.db.engine.connect() as conn:
            return [tuple(row) for row in conn.execute(
                sa.select(c.customer_id, c.channel, c.type, c.message_key, c.occurred_at)
                .where(c.machine.is_(False), c.type.in_(ENGAGEMENT)))]

    def delete_events_before(self, cutoff: datetime) -> int:
        """Retention: delete the events that occurred before ``cutoff``; the number deleted."""
        with self.db.engine.begin() as conn:
            return conn.execute(events_table.delete().where(events_table.c.occurred_at < _naive(cutoff))).rowcount
