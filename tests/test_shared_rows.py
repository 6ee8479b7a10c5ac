"""One scan of each source for all campaigns of a pass (issue 15.2), checked on the structure.

A pass on DuckDB is run with every statement explained on its connection (benchmarks/scans.py:
the ``SEQ_SCAN`` operators of each physical plan). The order campaigns and the ``per: day`` event
campaigns with a time window read the pass's shared rows (``compile.SHARED_ROWS``) and never the
orders or events table; each source is scanned for them once, by that table; and the decisions are those of the pass in
which every campaign scans the orders itself (``compile.SHARE_ROWS`` off), at every instant of the
cross-engine history. test_shared_facts.py compares the rows of each due query on every database.
"""
from __future__ import annotations

import dataclasses
import re
import sys

import pytest

from conftest import REPO, copy_project, database_url
from engine import Reconciler, dialects, load_project
from engine.run.record import as_record
from engine.sql import compile as compile_
from engine.sql import prepared
from engine.sql.due import shared_table_create
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


def _ledger_cte(on: bool, monkeypatch) -> None:
    """Dialect.campaign_ledger_cte of DuckDB on or off, and the compiled due queries forgotten."""
    monkeypatch.setitem(dialects.DIALECTS, "duckdb", dataclasses.replace(dialects.DIALECTS["duckdb"],
                                                                         campaign_ledger_cte=on))
    prepared.forget()


def _ledger_reads(reconciler, name: str, now) -> int:
    """The ledger scans of a campaign's due query with the campaign's CTE: one, or two where the ledger is cut
    by instant (DuckDB) and some steps have a bound and some none (re-engage's letter): those steps' rows are
    read whole in a scan of their own (``compile.campaign_ledger``)."""
    campaign = reconciler.project.campaign(name)
    drift = kind_of(campaign.trigger).instant_drift(campaign.trigger)
    bounds = [compile_.ledger_since(compile_.step_window(step, now, reconciler.config.stale_horizon).earliest, drift)
              for step in campaign.steps]
    cut = dialects.dialect_named(reconciler.config.dialect).ledger_instant_cut
    return 2 if cut and None in bounds and any(bound is not None for bound in bounds) else 1


def test_a_campaign_reads_its_ledger_rows_once_not_once_per_step(reconciler, monkeypatch):
    """After a plan the ledger holds, each campaign with several steps scans the ledger once
    (Dialect.campaign_ledger_cte: a CTE of its rows that every step's anti-join reads; twice where the
    ledger cut by instant splits that CTE, ``_ledger_reads``), not once per step, and the plan is the one
    every step's own anti-join gives."""
    now = INSTANTS["anchor"]
    reconciler.enter_segments(now)
    recorded = 0
    for batch in reconciler.due(now):
        records = [as_record(m, "sent" if m.action == "send" else "skipped", reason=m.reason, detail=m.detail)
                   for m in batch if m.action != "defer"]
        recorded += len(reconciler.ledger.write_new(records, now))
    assert recorded > 50
    later = INSTANTS["+7d"]

    def plan() -> list[tuple]:
        return sorted((m.key, m.action, m.reason, m.channel, m.variant, str(m.due_at))
                      for batch in reconciler.due(later) for m in batch)

    try:
        _ledger_cte(False, monkeypatch)
        _, seen_per_step = scans.pass_scans(reconciler, later)
        per_step = plan()
        _ledger_cte(True, monkeypatch)
        _, seen_once = scans.pass_scans(reconciler, later)
        once = plan()
    finally:
        prepared.forget()
    several = [c.name for c in reconciler.campaigns() if len(c.steps) > 1 and kind_of(c.trigger).keys_in_sql]
    assert len(several) >= 5, several
    before, after = _per_campaign(seen_per_step), _per_campaign(seen_once)
    assert all(before[name].get("engine_ledger") == len(reconciler.project.campaign(name).steps) for name in several), \
        {name: before[name] for name in several}
    assert all(after[name].get("engine_ledger") == _ledger_reads(reconciler, name, later) for name in several), \
        {name: after[name] for name in several}
    assert once == per_step
    assert len(once) > 20 and len(once) < recorded  # the ledger's rows left out, new rows found


def test_the_shared_order_rows_are_ranked_over_one_ordering():
    """Every window of the shared order rows (next order, rank, rank per status set) has the same
    partition and order, so the database sorts the window's orders once; a total over the partition
    beside a running count was a second window (DuckDB: +35 % of the statement at 1M orders)."""
    import sqlglot

    project = load_project(REPO)
    create = shared_table_create("order_rows", project.config, INSTANTS["anchor"], project.campaigns)
    assert create is not None
    sql = compile_.render_sql(create, "duckdb")
    windows = list(sqlglot.parse_one(sql, read="duckdb").find_all(sqlglot.exp.Window))
    assert len(windows) >= 3  # next order, rank, a rank among completed orders
    shapes = {(tuple(p.sql() for p in w.args.get("partition_by") or ()), (w.args.get("order") or sqlglot.exp.Order()).sql())
              for w in windows}
    assert len(shapes) == 1, shapes
