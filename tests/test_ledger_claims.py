"""The ledger's claim insert and key lookup on every backend: only new keys are claimed,
an existing key is never claimed again, and a lookup finds exactly the keys present."""
from __future__ import annotations

from datetime import datetime

from conftest import database_url
from engine.state.ledger import Ledger, Record
from engine.state.warehouse import Database

NOW = datetime(2025, 1, 10, 12, 0)


def record(customer: int, trigger: str = "t", status: str = "claimed") -> Record:
    return Record(message_key=f"c:s:{customer}:{trigger}", campaign="c", step="s", customer_id=str(customer),
                  trigger_key=trigger, channel="email", status=status, due_at=NOW, trigger_at=NOW)


def test_claims_insert_only_new_keys_and_lookups_find_exactly_the_present_ones(backend, tmp_path):
    db = Database(database_url(backend, tmp_path, "ledger"))
    ledger = Ledger(db)
    ledger.ensure_schema()
    try:
        first = ledger.write_new([record(i) for i in range(1, 1201)], NOW)  # more than one insert chunk
        assert first == {f"c:s:{i}:t" for i in range(1, 1201)}
        # half old, half new, and one new key listed twice: only the new ones are claimed, once
        again = ledger.write_new([record(i) for i in range(1101, 1301)] + [record(1300)], NOW)
        assert again == {f"c:s:{i}:t" for i in range(1201, 1301)}
        assert ledger.get("c:s:1150:t")["status"] == "claimed"
        probe = [f"c:s:{i}:t" for i in range(1250, 1351)] + ["c:s:1:other", "c:s:7:t"]
        assert ledger.existing_keys(probe) == {f"c:s:{i}:t" for i in range(1250, 1301)} | {"c:s:7:t"}
        assert ledger.existing_keys([]) == set()
        [(count,)] = db.execute("SELECT count(*) FROM engine_ledger")
        assert count == 1300
    finally:
        db.dispose()
