"""The incremental pass's watermarks in the ledger: ``engine_watermarks``, one row per kept source.

Owns that table's reads and writes: ``watermark(source)`` (the row, or None: never kept, or a
ledger from before migration 0006 that a read-only command does not upgrade), ``watermarks(sources)``
(those rows in one read) and ``save_watermark(s)`` (upserts in one transaction, written after the kept
facts they describe, so a crash between the two only makes the next pass read the same rows again). What a watermark means, and when the kept facts are used, is
engine.run.incremental's; this module must not read the warehouse or decide anything.
``WatermarkStore`` is a mixin of ``Ledger`` (it reuses its ``db``).
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa

from engine.clock import UTC
from engine.state.ledger_tables import watermarks_table
from engine.state.warehouse import Database


@dataclass(frozen=True)
class Watermark:
    """How far one source's change column was read, and what the kept facts hold (naive UTC instants)."""

    source: str
    watermark: datetime | None  # the newest change value read (capped at facts_at); None: the source was empty
    facts_at: datetime  # the kept facts are exact as of this instant
    built_at: datetime  # when they were last computed whole
    fingerprint: str  # what they were computed from (the source's mapping)
    rows_read: int  # rows the last refresh read
    customers_touched: int  # customers the last refresh recomputed


def _aware(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    if isinstance(value, str):  # SQLite hands DateTime back as text through some paths
        value = datetime.fromisoformat(value)
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _naive(value: datetime | None) -> datetime | None:
    return None if value is None else value.astimezone(UTC).replace(tzinfo=None)


class WatermarkStore:
    """Reads and writes ``engine_watermarks``."""

    db: Database

    def watermark(self, source: str) -> Watermark | None:
        return self.watermarks([source]).get(source)

    def watermarks(self, sources: Iterable[str]) -> dict[str, Watermark]:
        """The rows of ``sources`` in one read (a pass reads every kept source's at once); a source
        never kept, or a ledger without the table, has none."""
        w = watermarks_table.c
        try:
            with self.db.engine.connect() as conn:
                rows = conn.execute(sa.select(watermarks_table).where(w.source.in_(list(sources)))).mappings().all()
        except sa.exc.SQLAlchemyError:
            with self.db.engine.connect() as conn:
                if sa.inspect(conn).has_table(watermarks_table.name):
                    raise
            return {}  # a ledger a read-only command did not upgrade (before 0006), or none yet
        return {row["source"]: Watermark(row["source"], _aware(row["watermark"]), _aware(row["facts_at"]),
                                         _aware(row["built_at"]), row["fingerprint"], int(row["rows_read"]),
                                         int(row["customers_touched"])) for row in rows}

    def save_watermark(self, mark: Watermark) -> None:
        self.save_watermarks([mark])

    def save_watermarks(self, marks: Sequence[Watermark]) -> None:
        """Upsert ``marks`` in one transaction (a pass writes every kept source's at once)."""
        w = watermarks_table.c
        with self.db.engine.begin() as conn:  # an upsert every dialect runs: update, else insert
            for mark in marks:
                values = {"source": mark.source, "watermark": _naive(mark.watermark), "facts_at": _naive(mark.facts_at),
                          "built_at": _naive(mark.built_at), "fingerprint": mark.fingerprint,
                          "rows_read": mark.rows_read, "customers_touched": mark.customers_touched}
                updated = conn.execute(watermarks_table.update().where(w.source == mark.source).values(**values))
                if updated.rowcount == 0:
                    conn.execute(watermarks_table.insert().values(**values))
