"""One scan of each source for all campaigns of a pass (issue 15.2), checked on the structure.

A pass on DuckDB is run with every statement explained on its connection (benchmarks/scans.py:
the ``SEQ_SCAN`` operators of each physical plan). The order campaigns and the ``per: day`` event
campaigns with a time window read the pass's shared rows (``compile.SHARED_ROWS``) and never the
orders or events table; each source is scanned for them once, by that table; and the decisions are those of the pass in
which every campaign scans the orders itself (``compile.SHARE_ROWS`` off), at every instant of the
cross-engine history. test_shared_facts.py compares the rows of each due query on every database.
"""
from __future__ import annotations

import re
import sys

import pytest

from conftest import REPO, copy_project, database_url
from engine import Reconciler, load_project
from engine.sql import compile as compile_
from engine.sql.triggers.registry import kind_of
from engine.state.warehouse import Database
from engine.tools.demo import load_shop
from history import INSTANTS, shared_history

sys.path.insert(0, str(REPO / "benchmarks"))
import scans  # noqa: E402


@pytest.fixture
def reconciler(tmp_path, monkeypatch):
    url = database_url("duckdb", tmp_path)
    db = Database(url)
    load_shop(db, shared_history())
    db.dispose()
    monkeypatch.setenv("ENGINE_WAREHOUSE_URL", url)
    reconciler = Reconciler(load_project(copy_project(tmp_path / "project")))
    yield reconciler
    reconciler.close()


def _per_campaign(seen) -> dict[str, dict]:
    """Scans of each campaign's due statement, and of the statements that create shared tables."""
    result = {}
    for sql, counts in seen:
        named = re.findall(r"'([a-z0-9-]+)' AS campaign", sql)
        created = re.match(r"\s*CREATE TEMPORARY TABLE (\w+)", sql)
        if named or created:
            result[named[0] if named else created.group(1)] = dict(counts)
    return result


def _sharing(on: bool, monkeypatch) -> None:
    monkeypatch.setattr(compile_, "SHARE_ROWS", on)


#: each shared rows table, the source it is read from
SOURCE = {"order_rows": "orders", "event_days": "events"}


def test_campaigns_read_each_source_once_per_pass_for_their_instances(reconciler, monkeypatch):
    now = INSTANTS["anchor"]
    assert set(SOURCE) == set(compile_.SHARED_ROWS)
    _sharing(False, monkeypatch)
    before, seen_before = scans.pass_scans(reconciler, now)
    _sharing(True, monkeypatch)
    after, seen_after = scans.pass_scans(reconciler, now)
    per_before, per_after = _per_campaign(seen_before), _per_campaign(seen_after)

    saved = {}
    for name, source in SOURCE.items():
        table = compile_.SHARED_ROWS[name]
        readers = [c.name for c in reconciler.campaigns()
                   if kind_of(c.trigger).shared_rows == name and kind_of(c.trigger).reads_shared_rows(c)]
        assert len(readers) >= 3, f"the shipped project has campaigns reading {name}"
        # before: each of them scanned the source itself (the ranked order campaigns twice: window + history)
        assert all(per_before[c].get(source, 0) >= 1 for c in readers), {c: per_before[c] for c in readers}
        # after: none of them reads the source, each reads the shared table once, built by one scan
        assert all(per_after[c].get(source, 0) == 0 and per_after[c].get(table) == 1 for c in readers), \
            {c: per_after[c] for c in readers}
        assert per_after[table].get(source) == 1
        saved[source] = sum(per_before[c].get(source, 0) for c in readers) - 1
    assert saved["orders"] >= 6 and saved["events"] >= 2
    for source in ("orders", "events"):
        assert after[source] == before[source] - saved[source], source
    for table in ("customers", "checkouts"):  # read as often as before
        assert after[table] == before[table], table


def test_shared_rows_change_no_decision(reconciler, monkeypatch):
    def plan(now):
        return sorted((m.key, m.action, m.reason, m.channel, m.variant, str(m.due_at))
                      for batch in reconciler.due(now) for m in batch)

    decided = 0
    for label, now in INSTANTS.items():
        reconciler.enter_segments(now)
        _sharing(True, monkeypatch)
        shared = plan(now)
        _sharing(False, monkeypatch)
        assert shared == plan(now), f"at {label}"
        decided += len(shared)
    assert decided > 50
