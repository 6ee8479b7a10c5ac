"""The settle stage's memory in the ledger: ``engine_settled``, one row per campaign (migration 0007).

Owns that table's reads and writes: ``settled_memory(campaigns)`` (campaign -> (instant, settled skips
found) of the last pass that planned it; empty for a ledger from before 0007 that a read-only command
does not upgrade) and ``remember_settled`` (the pass's counts, replacing the campaigns' rows in one
transaction). What the counts decide is engine.run.settle's; this module must not read the warehouse
or decide anything. ``SettledStore`` is a mixin of ``Ledger`` (it reuses its ``db``).
"""
from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime

import sqlalchemy as sa

from engine.clock import UTC
from engine.state.ledger_tables import settled_table
from engine.state.warehouse import Database


def _aware(value: datetime | str) -> datetime:
    if isinstance(value, str):  # SQLite hands DateTime back as text through some paths
        value = datetime.fromisoformat(value)
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class SettledStore:
    """Reads and writes ``engine_settled``."""

    db: Database

    def settled_memory(self, campaigns: list[str]) -> dict[str, tuple[datetime, int]]:
        """campaign -> (instant of its last pass, settled skips that pass found), for those of ``campaigns`` remembered."""
        if not campaigns:
            return {}
        s = settled_table.c
        try:
            with self.db.engine.connect() as conn:
                rows = conn.execute(sa.select(s.campaign, s.settled_at, s.found).where(s.campaign.in_(sorted(set(campaigns)))))
                return {name: (_aware(at), int(found)) for name, at, found in rows}
        except sa.exc.SQLAlchemyError:
            with self.db.engine.connect() as conn:
                if sa.inspect(conn).has_table(settled_table.name):
                    raise
            return {}  # a ledger a read-only command did not upgrade (before 0007)

    def remember_settled(self, found: Mapping[str, int], now: datetime) -> None:
        """What a pass at ``now`` found per campaign (settled skips), replacing what was remembered of them."""
        if not found:
            return
        at = now.astimezone(UTC).replace(tzinfo=None)
        rows = [{"campaign": name, "settled_at": at, "found": int(count)} for name, count in sorted(found.items())]
        for attempt in range(_ATTEMPTS):
            try:
                with self.db.engine.begin() as conn:
                    conn.execute(settled_table.delete().where(settled_table.c.campaign.in_(sorted(found))))
                    conn.execute(settled_table.insert(), rows)
                return
            except sa.exc.IntegrityError:
                # replicas ending a pass at once: another inserted a campaign's row after this delete read
                # none (rolled back, nothing written); again, the delete now sees theirs. Only a hint: when
                # they keep winning, theirs stands and a pass decides from it just as well
                if attempt == _ATTEMPTS - 1:
                    return


#: tries of ``remember_settled`` against replicas writing the same campaigns' rows at the same moment
_ATTEMPTS = 3
