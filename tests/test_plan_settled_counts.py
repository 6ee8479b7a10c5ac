"""A plan that shows only how many skips there are counts the skips the warehouse settles in SQL.

``engine plan`` without ``--include-skipped`` (table, jsonl, csv) lists the messages that go out
and counts the skips. The stale, stopped, no_variant and reentry skips a pass settles in SQL
(engine.run.settle) are counted there too, per step, reason and channel, by the statement that
returns the campaign's other rows (``due_query(settled="count")``, ``settle.counted_rows``; from a
ledger in another database their keys, those it holds left out: ``settle.count_settled``), and
never reach ``plan.decide_rows``. Proven here against the row-by-row plan on the
demo shop at several instants, all campaigns, on DuckDB, SQLite and PostgreSQL, the ledger shared
or in another database: the same counts per campaign, step and reason, the same printed table and
the same listed messages. With ``--include-skipped`` the skips are listed, row by row as before.
"""
from __future__ import annotations

import io
import json
from datetime import datetime, timedelta, timezone

import pytest
from click.testing import CliRunner

from conftest import copy_project, database_url
from engine import Reconciler, load_project
from engine.cli.main import main
from engine.run import plan, settle
from engine.sql import due
from engine.sql.due import settled_in_sql
from engine.tools.demo import build_demo
from engine.tools.output import write_plan
from engine.state.ledger import ledger_table
from engine.state.warehouse import Session
from test_settled_skips import COMPARED, NOW, _pass, _reentry_project, _signed_up_again

#: instants of the demo shop's history: before the anchor, the anchor, and after the pass at the anchor
BEFORE = [NOW - timedelta(days=30), NOW]
AFTER = [NOW + timedelta(hours=1), NOW + timedelta(days=7)]


def _separate_ledger(root, path) -> None:
    text = (root / "engine.yaml").read_text()
    (root / "engine.yaml").write_text(text.replace("demo:", f"ledger:\n  url: sqlite:///{path}\n\ndemo:", 1))


def _plan(reconciler: Reconciler, monkeypatch, now, counted: bool, fmt: str = "table") -> tuple:
    """The plan at ``now`` as ``engine plan`` writes it (the table without its sample, or jsonl lines
    sorted: the warehouse returns rows in no set order): (output, counts, settled skips that reached Python)."""
    reached: list = []
    decide = plan.decide_rows

    def watched(campaign, rows, now, config, layout):
        messages = decide(campaign, rows, now, config, layout)
        reached.extend(m.key for m in messages if m.reason in settle.SETTLED_REASONS
                       and settled_in_sql(campaign, campaign.step(m.step), zone_due=True, dialect=config.dialect))
        return messages

    settled = settle.SettledCounts() if counted else None
    out = io.StringIO()
    with monkeypatch.context() as patch:
        patch.setattr(plan, "decide_rows", watched)
        counts = write_plan(reconciler.due(now, settled_counts=settled), fmt, out, include_skipped=False, limit=0,
                            header="Plan", kinds={name: c.kind for name, c in reconciler.config.channels.items()},
                            settled=settled)
    text = out.getvalue() if fmt == "table" else "\n".join(sorted(out.getvalue().splitlines()))
    return text, counts, reached, settled


def _same_plans(reconciler: Reconciler, monkeypatch, now, label: str) -> tuple:
    """The plan at ``now`` counted in SQL and row by row: identical; returns the SQL counts and the
    settled skips the row-by-row plan decided in Python."""
    for fmt in ("table", "jsonl"):
        text, counts, reached, settled = _plan(reconciler, monkeypatch, now, True, fmt)
        expected_text, expected_counts, reached_before, _ = _plan(reconciler, monkeypatch, now, False, fmt)
        assert reached == [], (label, fmt)  # the SQL path was taken: no settled skip became a message
        assert counts == expected_counts, (label, fmt)
        assert text == expected_text, (label, fmt)
        config, campaign = reconciler.config, reconciler.project.campaign
        in_sql = sum(n for (name, step, outcome), n in expected_counts.items()
                     if outcome in {f"skip:{reason}" for reason in settle.SETTLED_REASONS}
                     and settled_in_sql(campaign(name), campaign(name).step(step), zone_due=True, dialect=config.dialect))
        assert sum(settled.by_channel.values()) == in_sql, (label, fmt)  # every one of them counted in SQL
    return settled, reached_before


@pytest.mark.parametrize("backend,separate_ledger", [("duckdb", False), ("sqlite", False), ("postgres", False),
                                                     ("duckdb", True), ("postgres", True)])
def test_the_plan_counts_its_settled_skips_in_sql_exactly_as_row_by_row(tmp_path, monkeypatch, backend, separate_ledger):
    """Before any pass (the ledger empty: every campaign is counted in SQL) and after one at the
    anchor (the ledger remembers each campaign's count: with ``SETTLE_FROM`` 0, counted in SQL too,
    the ledger's rows left out of the counts), at four instants, every shipped campaign."""
    root = copy_project(tmp_path / "project")
    if separate_ledger:
        _separate_ledger(root, tmp_path / "ledger.db")
    url = database_url(backend, tmp_path)
    build_demo(url, seed=42, customers=2000, anchor="2025-01-10T00:00:00Z")
    monkeypatch.setenv("ENGINE_WAREHOUSE_URL", url)
    monkeypatch.setattr(settle, "SETTLE_FROM", 0)  # every campaign the ledger remembers is counted in SQL
    reconciler = Reconciler(load_project(root))
    reasons: set = set()
    try:
        for now in BEFORE:
            settled, reached_before = _same_plans(reconciler, monkeypatch, now, str(now))
            reasons |= {reason for (_, _, reason, _) in settled.by_channel}
            assert len(reached_before) > 100 or now != NOW  # the demo's history at its anchor: the test can fail
        _pass(reconciler, monkeypatch, True, NOW)  # the ledger holds the anchor's pass, and remembers its counts
        for now in AFTER:
            settled, _ = _same_plans(reconciler, monkeypatch, now, str(now))
            assert settled.by_channel and sum(settled.by_channel.values()) < 5000
    finally:
        reconciler.close()
    assert {"stale", "stopped"} <= reasons


def test_a_miscounted_reason_fails_the_comparison(tmp_path, monkeypatch):
    """The comparison above sees a reason counted as another (the aggregate's reason column read
    wrongly): the counts and the printed table differ from the row-by-row plan's."""
    url = database_url("duckdb", tmp_path)
    build_demo(url, seed=42, customers=1000, anchor="2025-01-10T00:00:00Z")
    monkeypatch.setenv("ENGINE_WAREHOUSE_URL", url)
    reconciler = Reconciler(load_project(copy_project(tmp_path / "project")))
    add = settle.SettledCounts.add

    def misread(self, campaign, step, reason, channel, count):
        add(self, campaign, step, "stopped" if reason == "stale" else reason, channel, count)

    try:
        text, counts, reached, _ = _plan(reconciler, monkeypatch, NOW, False)
        with monkeypatch.context() as patch:
            patch.setattr(settle.SettledCounts, "add", misread)
            wrong_text, wrong_counts, _, _ = _plan(reconciler, monkeypatch, NOW, True)
    finally:
        reconciler.close()
    assert sum(outcome == "skip:stale" for (_, _, outcome) in counts) > 0 and reached
    assert wrong_counts != counts and wrong_text != text
    assert sum(wrong_counts.values()) == sum(counts.values())  # as many skips, under the wrong reason


@pytest.mark.parametrize("backend,separate_ledger", [("duckdb", False), ("postgres", False), ("sqlite", True)])
def test_reentry_skips_are_counted_in_sql_as_the_policy_stage_finds_them(tmp_path, monkeypatch, backend,
                                                                       separate_ledger):
    """welcome-series (re-entry ``once``) sent its first emails at the anchor; the customers it
    reached sign up again. A plan an hour later counts their ``reentry`` skips in SQL (the ledger's
    table, or its copy in the warehouse session) as the row-by-row plan's policy stage finds them."""
    url = database_url(backend, tmp_path)
    build_demo(url, seed=42, customers=1000, anchor="2025-01-10T00:00:00Z")
    monkeypatch.setenv("ENGINE_WAREHOUSE_URL", url)
    monkeypatch.setattr(settle, "SETTLE_FROM", 0)
    reconciler = Reconciler(load_project(_reentry_project(tmp_path, "project", "once", separate_ledger)))
    try:
        first, _, _ = _pass(reconciler, monkeypatch, True)
        customer, campaign, status = (COMPARED.index(ledger_table.c.customer_id),
                                      COMPARED.index(ledger_table.c.campaign), COMPARED.index(ledger_table.c.status))
        welcomed = sorted({r[customer] for r in first if r[campaign] == "welcome-series" and r[status] == "sent"})
        assert len(welcomed) > 20
        _signed_up_again(url, welcomed, NOW + timedelta(minutes=30))
        settled, _ = _same_plans(reconciler, monkeypatch, NOW + timedelta(hours=1), "+1h")
    finally:
        reconciler.close()
    reentry = sum(n for (name, _, reason, _), n in settled.by_channel.items()
                  if name == "welcome-series" and reason == "reentry")
    assert reentry >= len(welcomed) // 2


def test_engine_plan_counts_in_sql_unless_it_lists_the_skips(tmp_path, monkeypatch):
    """The command: without ``--include-skipped`` its table and csv are the row-by-row plan's (the
    settle stage switched off: ``settle.settles`` False), the settled skips never reaching
    ``decide_rows``; with it, every skip is listed, decided row by row."""
    root = copy_project(tmp_path / "project")
    url = database_url("duckdb", tmp_path)
    build_demo(url, seed=42, customers=1000, anchor="2025-01-10T00:00:00Z")
    monkeypatch.setenv("ENGINE_WAREHOUSE_URL", url)
    decided: list = []
    decide = plan.decide_rows

    def watched(campaign, rows, now, config, layout):
        messages = decide(campaign, rows, now, config, layout)
        decided.extend(m for m in messages if m.reason in settle.SETTLED_REASONS
                       and settled_in_sql(campaign, campaign.step(m.step), zone_due=True, dialect=config.dialect))
        return messages

    monkeypatch.setattr(plan, "decide_rows", watched)

    def engine_plan(*args: str, in_sql: bool = True) -> str:
        decided.clear()
        with monkeypatch.context() as patch:
            if not in_sql:
                patch.setattr(settle, "settles", lambda *_args, **_kwargs: False)
            result = CliRunner().invoke(main, ["--project", str(root), "plan", "--as-of", "2025-01-10T00:00:00Z",
                                               "--quiet", *args])
        assert result.exit_code == 0, result.output
        return result.output

    table = engine_plan("--limit", "0")
    assert decided == []
    assert table == engine_plan("--limit", "0", in_sql=False) and len(decided) > 100
    assert "skip:stale" in table and "skip:stopped" in table
    csv_lines = sorted(engine_plan("--format", "csv").splitlines())
    assert decided == []
    assert csv_lines == sorted(engine_plan("--format", "csv", in_sql=False).splitlines())
    listed = engine_plan("--format", "jsonl", "--include-skipped")
    assert len(decided) > 100  # listed: decided row by row
    listed_keys = {json.loads(line)["message_key"] for line in listed.splitlines()}
    assert {m.key for m in decided} <= listed_keys


@pytest.mark.parametrize("backend", ["duckdb", "sqlite", "postgres"])
def test_the_counts_come_from_the_statement_that_returns_the_rows(tmp_path, monkeypatch, backend):
    """Where the ledger shares the warehouse, a campaign's settled skips are counted by the statement
    that returns its other rows (``due_query(settled="count")``: the due query evaluated once, its
    settled rows as one summary row per step, reason and channel): one statement per campaign, as
    the row-by-row plan runs, and the same counts, table and listing."""
    url = database_url(backend, tmp_path)
    build_demo(url, seed=42, customers=1000, anchor="2025-01-10T00:00:00Z")
    monkeypatch.setenv("ENGINE_WAREHOUSE_URL", url)
    reconciler = Reconciler(load_project(copy_project(tmp_path / "project")))
    names = [c.name for c in reconciler.campaigns()]
    ran: list[str] = []

    def recorded(method):
        def run(self, sql, *args, **kwargs):
            ran.append(sql)
            return method(self, sql, *args, **kwargs)
        return run

    try:
        for fmt in ("table", "jsonl"):
            ran.clear()
            with monkeypatch.context() as patch:
                for name in ("stream", "returning"):  # a statement's rows streamed, or all at once
                    patch.setattr(Session, name, recorded(getattr(Session, name)))
                text, counts, reached, settled = _plan(reconciler, monkeypatch, NOW, True, fmt)
            statements = {name: sum(f"'{name}' AS campaign" in sql for sql in ran) for name in names}
            assert statements == {name: 1 for name in names}, fmt  # each campaign's due query ran once
            assert reached == [] and sum(settled.by_channel.values()) > 100, fmt  # counted in SQL
            expected_text, expected_counts, _, _ = _plan(reconciler, monkeypatch, NOW, False, fmt)
            assert counts == expected_counts and text == expected_text, fmt
    finally:
        reconciler.close()


def test_the_zone_table_filled_from_list_parameters_holds_the_rows_of_its_inserts(tmp_path):
    """DuckDB fills the pass's table of local due times (what a counted or settling plan joins first)
    from one LIST parameter per column (``due.zone_due_arrays``: a VALUES list of a few hundred rows
    costs it ~50 ms to bind, every such plan); the rows are those the literal INSERTs write, around a
    change of UTC offset, with microseconds, for odd zones and the NULL zone."""
    import sqlalchemy as sa

    from engine.sql.due import ZONE_DUE_TABLE, zone_due_arrays, zone_due_create, zone_due_inserts, zone_due_rows
    from engine.state.warehouse import Database

    project = load_project(copy_project(tmp_path / "project"))
    config = project.config
    now = datetime(2025, 3, 30, 0, 30, 0, 123456, tzinfo=timezone.utc)  # Europe's clocks go forward at 01:00 UTC
    rows = zone_due_rows(project.campaigns, config, now,
                         [None, "Europe/Berlin", "America/New_York", "Australia/Lord_Howe", "not/a zone"])
    assert len(rows) > 100
    assert zone_due_arrays(rows, "sqlite") is None and zone_due_arrays(rows, "postgres") is None  # VALUES there
    db = Database(f"duckdb:///{tmp_path / 'zones.duckdb'}")
    tables = []
    with db.session() as session:
        for name, fill in (("values", lambda: [session.execute(s) for s in zone_due_inserts(rows, "duckdb")]),
                           ("arrays", lambda: session.execute_driver(*zone_due_arrays(rows, "duckdb")))):
            session.execute(f"DROP TABLE IF EXISTS {ZONE_DUE_TABLE}")
            session.execute(zone_due_create("duckdb"))
            fill()
            tables.append(sorted(session.conn.execute(sa.text(f"SELECT * FROM {ZONE_DUE_TABLE}")).fetchall()))
    db.dispose()
    assert len(tables[0]) == len(rows) and tables[1] == tables[0]


@pytest.mark.parametrize("backend", ["duckdb"])
def test_duckdb_counts_the_settled_rows_in_sql_one_row_per_step_reason_and_channel(tmp_path, monkeypatch, backend):
    """DuckDB counts a plan's settled skips in its statement (``Dialect.settled_counts`` "summary"): what
    reaches ``settle.counted_rows`` with a reason is one row per step, reason and channel carrying its
    count (``COUNT_COLUMN``), every other column NULL - no settled row itself crosses to Python. The
    counts, table and listing are still those of the row-by-row plan."""
    url = database_url(backend, tmp_path)
    build_demo(url, seed=42, customers=1000, anchor="2025-01-10T00:00:00Z")
    monkeypatch.setenv("ENGINE_WAREHOUSE_URL", url)
    reconciler = Reconciler(load_project(copy_project(tmp_path / "project")))
    counted = settle.counted_rows
    seen: list = []

    def watched(campaign, row_batches, counts):
        def batches():
            for rows in row_batches:  # the driver's plain tuples, their column names once per batch
                reason = rows.fields.index(due.COUNT_REASON)
                seen.extend((campaign.name, dict(zip(rows.fields, row))) for row in rows if row[reason] is not None)
                yield rows
        return counted(campaign, batches(), counts)

    kept = {"step", due.COUNT_REASON, due.COUNT_CHANNEL, due.COUNT_COLUMN}
    try:
        for fmt in ("table", "jsonl"):
            seen.clear()
            with monkeypatch.context() as patch:
                patch.setattr(settle, "counted_rows", watched)
                text, counts, reached, settled = _plan(reconciler, monkeypatch, NOW, True, fmt)
            groups = [(name, row["step"], row[due.COUNT_REASON], row[due.COUNT_CHANNEL]) for name, row in seen]
            assert len(groups) == len(set(groups)) == len(settled.by_channel), fmt  # one row per group
            assert sum(row[due.COUNT_COLUMN] for _, row in seen) == sum(settled.by_channel.values()) > 100, fmt
            assert len(seen) < sum(settled.by_channel.values()) / 10, fmt  # not the settled rows themselves
            assert {name: value for _, row in seen for name, value in row.items()
                    if name not in kept and value is not None} == {}, fmt
            expected_text, expected_counts, _, _ = _plan(reconciler, monkeypatch, NOW, False, fmt)
            assert reached == [] and counts == expected_counts and text == expected_text, fmt
    finally:
        reconciler.close()
