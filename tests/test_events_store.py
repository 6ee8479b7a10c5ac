"""The events store (engine/state/events.py): each response recorded once, on the three ledger backends.

Real ledgers: a SQLite file, a DuckDB file and a PostgreSQL database (tests/pg.py). An event is
recorded only for a message the ledger holds, copies that message's customer and campaign, and a
replay - the same event id again, in the same call, a later call or from another thread at once -
records nothing new. Retention deletes by the time the event occurred.
"""
from __future__ import annotations

import threading
from datetime import datetime, timedelta

import pytest

from engine.state.events import Event, event_id, provider_event_id
from engine.state.ledger import Ledger
from engine.state.ledger_writer import Record
from engine.state.warehouse import Database

NOW = datetime(2026, 12, 6, 12, 0, 0)


def _ledger(kind: str, tmp_path) -> Ledger:
    if kind == "postgresql":
        import pg
        url = pg.server().new_database()
    else:
        url = f"{kind}:///{tmp_path / f'ledger.{kind}'}"
    ledger = Ledger(Database(url))
    ledger.ensure_schema()
    return ledger


def _sent(ledger: Ledger, customer: str, key_suffix: str = "o1") -> str:
    record = Record(message_key=f"nudge:first:{customer}:{key_suffix}", campaign="nudge", step="first",
                    customer_id=customer, trigger_key=key_suffix, channel="email", status="claimed",
                    variant="b", due_at=NOW, trigger_at=NOW)
    assert ledger.write_new([record], NOW) == {record.message_key}
    return record.message_key


@pytest.fixture(params=["sqlite", "duckdb", "postgresql"])
def ledger(request, tmp_path):
    ledger = _ledger(request.param, tmp_path)
    yield ledger
    ledger.close()


def test_an_event_is_recorded_once_with_its_message(ledger):
    key = _sent(ledger, "c1")
    open_event = Event(event_id("open", key, "human"), key, "open", NOW + timedelta(minutes=5))
    [recorded] = ledger.record_events([open_event, open_event], NOW)  # the same event twice in one call: once
    assert (recorded.customer_id, recorded.message.campaign, recorded.message.variant) == ("c1", "nudge", "b")
    assert ledger.record_events([open_event], NOW) == []  # a replay records nothing new
    bounce = Event(provider_event_id("ses", "0100-abc"), key, "bounce", NOW, provider="ses", detail="Permanent")
    assert [r.event for r in ledger.record_events([bounce], NOW)] == [bounce]
    rows = ledger.customer_events("c1")
    assert [(r["type"], r["campaign"], r["step"], r["machine"]) for r in rows] == [
        ("bounce", "nudge", "first", False), ("open", "nudge", "first", False)]


def test_an_event_for_a_message_the_ledger_does_not_hold_is_not_recorded(ledger):
    key = _sent(ledger, "c1")
    ghost = Event(event_id("click", "nudge:first:c9:o1", "https://shop.test/"), "nudge:first:c9:o1", "click", NOW)
    real = Event(event_id("click", key, "https://shop.test/"), key, "click", NOW, machine=True,
                 url="https://shop.test/")
    assert [r.event for r in ledger.record_events([ghost, real], NOW)] == [real]
    assert ledger.customer_events("c9") == []
    assert [(r["type"], r["machine"], r["url"]) for r in ledger.customer_events("c1")] == [
        ("click", True, "https://shop.test/")]
    assert set(ledger.message_refs([key, "nudge:first:c9:o1"])) == {key}


def test_concurrent_replays_record_one_event(ledger):
    key = _sent(ledger, "c1")
    delivered = Event(provider_event_id("sendgrid", "evt-1"), key, "delivered", NOW, provider="sendgrid")
    results: list[int] = []
    errors: list[BaseException] = []

    def deliver():
        try:
            results.append(len(ledger.record_events([delivered], NOW)))
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=deliver) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert not errors, errors
    assert sum(results) == 1 and len(ledger.customer_events("c1")) == 1


def test_retention_deletes_events_that_occurred_before_the_cutoff(ledger):
    key = _sent(ledger, "c1")
    old = Event(event_id("open", key, "old"), key, "open", NOW - timedelta(days=500))
    new = Event(event_id("open", key, "new"), key, "open", NOW - timedelta(days=5))
    ledger.record_events([old, new], NOW)
    assert ledger.delete_events_before(NOW - timedelta(days=400)) == 1
    assert [r["occurred_at"] for r in ledger.customer_events("c1")] == [NOW - timedelta(days=5)]


def test_an_unknown_event_type_is_refused_before_anything_is_written():
    with pytest.raises(ValueError, match="unknown event type 'opened'"):
        Event("x", "k", "opened", NOW)
