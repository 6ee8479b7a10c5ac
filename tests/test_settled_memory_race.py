"""Replicas ending a pass at the same moment both remember their settled counts (engine_settled): the
one whose insert meets the other's fresh row tries again instead of failing the pass (it did, with a
UniqueViolation, in test_replicas under load)."""
from __future__ import annotations

import threading
from datetime import datetime, timezone

import sqlalchemy as sa

from conftest import database_url
from engine.state.ledger import Ledger
from engine.state.ledger_tables import settled_table
from engine.state.warehouse import Database

NOW = datetime(2025, 1, 6, 12, 2, tzinfo=timezone.utc)


def test_a_replica_remembering_the_same_campaigns_at_once_waits_and_writes_its_own(tmp_path):
    db = Database(database_url("postgres", tmp_path))
    ledger = Ledger(db)
    ledger.ensure_schema()
    errors: list[BaseException] = []
    other = db.engine.connect()
    try:
        rival = other.begin()  # another replica: its rows inserted, not committed yet
        other.execute(settled_table.insert(), [{"campaign": name, "settled_at": NOW.replace(tzinfo=None), "found": 7}
                                               for name in ("mails", "texts")])

        def remember():
            try:
                ledger.remember_settled({"mails": 0, "texts": 3}, NOW)
            except BaseException as exc:  # noqa: BLE001 - the assertion below names it
                errors.append(exc)

        writer = threading.Thread(target=remember)
        writer.start()
        writer.join(timeout=2)
        assert writer.is_alive(), "the insert should wait for the other replica's uncommitted rows"
        rival.commit()  # now this insert meets their rows: a unique violation, then a second try
        writer.join(timeout=30)
        assert not writer.is_alive() and errors == []
    finally:
        other.close()
    assert ledger.settled_memory(["mails", "texts"]) == {"mails": (NOW, 0), "texts": (NOW, 3)}
    db.dispose()
