"""What lists due messages lists them in the same order at every run, whatever order the warehouse returns.

A campaign without a re-entry rule gets its due rows in the warehouse's order: on DuckDB with several
threads that changes from run to run (the pass's shared order rows are filled in parallel, and a
due query that probes them returns them in that order). A pass does not care and must not pay a sort
of the whole due set; what lists the rows does: ``engine export CAMPAIGN`` and ``engine plan --format
csv|jsonl`` have the warehouse sort them (``Reconciler.due(ordered=True)``), the plan's table keeps its
first ``--limit`` by the same order as they stream by (``output.listing_order``).

The shop: 5,000 customers with two orders each, a campaign on every order under a frequency cap of
one message per three days, DuckDB on four threads. Unsorted, five runs of the export gave five
different files (and the table's first rows changed); the test runs each output five times.
"""
from __future__ import annotations

import csv
import io
from datetime import datetime, timedelta, timezone

import pytest
from click.testing import CliRunner

from conftest import copy_project, load_history, write
from engine.cli.main import main
from engine.run.reconcile import Reconciler
from engine.spec.project import load_project
from engine.tools.export import export_plan
from engine.tools.output import write_plan

NOW = datetime(2025, 3, 1, 12)
CUSTOMERS = 5_000
RUNS = 5
EVERY_ORDER = """
    name: every-order
    trigger: {order_placed: {}}
    audience: email IS NOT NULL
    steps:
      - id: thanks
        delay: 1h
        freshness: 3d
        channel: email
        template: second-order/nudge.email.j2
"""


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("listing")
    root = copy_project(tmp / "project")
    for path in (root / "campaigns.d").glob("*.yaml"):
        if path.stem != "second-order":
            path.unlink()
    config = root / "engine.yaml"  # several DuckDB threads: the order of unsorted rows changes between runs
    config.write_text(config.read_text().replace("warehouse:\n", "warehouse:\n  duckdb: {threads: 4}\n", 1)
                      + "\npolicies:\n  frequency_caps: [{max: 1, per: 3d}]\n")
    write(root / "campaigns.d" / "every-order.yaml", EVERY_ORDER)
    url = f"duckdb:///{tmp / 'shop.duckdb'}"
    customers = [{"customer_id": i, "email": f"c{i}@example.com", "created_at": NOW - timedelta(days=99)}
                 for i in range(1, CUSTOMERS + 1)]
    # two orders each, one and two days ago: both due for every-order, the first for second-order's window
    orders = [{"order_id": 10 * i + k, "customer_id": i, "created_at": NOW - timedelta(days=k + 1, minutes=i % 600),
               "status": "completed", "total": 10.0} for i in range(1, CUSTOMERS + 1) for k in (0, 1)]
    load_history(url, customers=customers, orders=orders)
    return root, url


def _reconciler(project, monkeypatch) -> Reconciler:
    root, url = project
    monkeypatch.setenv("ENGINE_WAREHOUSE_URL", url)
    return Reconciler(load_project(root), writes=False)


def _runs(make) -> list[str]:
    """``make()``'s output at each of RUNS runs (each with its own connection and temporary tables)."""
    return [make() for _ in range(RUNS)]


def test_an_export_lists_the_same_rows_in_the_same_order_at_every_run(project, monkeypatch):
    def export() -> str:
        reconciler = _reconciler(project, monkeypatch)
        out = io.StringIO()
        try:
            assert export_plan(reconciler, "every-order", NOW.replace(tzinfo=timezone.utc), "csv", out) == CUSTOMERS
        finally:
            reconciler.close()
        return out.getvalue()

    outputs = _runs(export)
    assert len(set(outputs)) == 1
    rows = list(csv.DictReader(io.StringIO(outputs[0])))
    keys = [(row["trigger_at"], row["customer_id"], row["trigger_key"]) for row in rows]
    assert keys == sorted(keys)  # by trigger instant, customer, trigger key


def test_the_plan_lists_the_same_messages_at_every_run(project, monkeypatch):
    root, url = project
    monkeypatch.setenv("ENGINE_WAREHOUSE_URL", url)
    for args in (["--format", "csv", "--include-skipped"], ["--format", "jsonl"], ["--include-skipped"], []):
        def plan() -> str:
            result = CliRunner().invoke(main, ["--project", str(root), "plan", "--as-of", "2025-03-01T12:00:00Z",
                                               "--quiet", *args])
            assert result.exit_code == 0, result.output
            return result.stdout

        outputs = _runs(plan)
        assert len(set(outputs)) == 1, args
        assert outputs[0].count("\n") > 20


def test_the_table_shows_the_first_messages_of_the_sorted_listing(project, monkeypatch):
    """The table's first --limit messages are those the csv lists first (campaigns in priority order)."""
    reconciler = _reconciler(project, monkeypatch)
    kinds = {name: channel.kind for name, channel in reconciler.config.channels.items()}
    now = NOW.replace(tzinfo=timezone.utc)
    try:
        listed, table = io.StringIO(), io.StringIO()
        write_plan(reconciler.due(now, ordered=True), "csv", listed, include_skipped=True, limit=0, header="",
                   kinds=kinds)
        write_plan(reconciler.due(now), "table", table, include_skipped=True, limit=7, header="", kinds=kinds)
    finally:
        reconciler.close()
    first = [(row["campaign"], row["customer_id"], row["trigger_key"])
             for row in list(csv.DictReader(io.StringIO(listed.getvalue())))[:7]]
    shown = [line.split() for line in table.getvalue().splitlines()[-7:]]  # campaign step customer contact trigger ...
    assert [(cells[0], cells[2], cells[4]) for cells in shown] == first


LANGUAGE_ORDERED_IDS = ["B", "_c", "a1", "A1", "b", "a-2"]  # by code point: A1 B _c a-2 a1 b; en-US: _c a-2 a1 A1 b B


def test_a_database_that_orders_text_by_language_lists_as_the_table_shows(tmp_path, monkeypatch):
    """A PostgreSQL database whose default collation orders text by language (ICU en-US: "a-2" before "A1",
    punctuation and case weighed last) still lists text ids in code point order: the csv sorts its keys
    with the dialect's ``code_point_collation``, as the table's ``listing_order`` compares them in Python."""
    import sqlalchemy as sa

    import pg
    server = pg.server()
    name = "icu_" + tmp_path.name.lower().replace("-", "_")[-20:]
    admin = sa.create_engine(f"{server.server_url}/postgres", isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f"CREATE DATABASE {name} TEMPLATE template0 LOCALE_PROVIDER icu ICU_LOCALE 'en-US'"))
    admin.dispose()
    url = f"{server.server_url}/{name}"
    root = copy_project(tmp_path / "project")
    for path in (root / "campaigns.d").glob("*.yaml"):
        path.unlink()
    write(root / "campaigns.d" / "every-order.yaml", EVERY_ORDER)
    at = NOW - timedelta(hours=5)  # every message ties on its trigger instant: the ids decide the order
    load_history(url, customers=[{"customer_id": i, "email": f"c{i}@example.com", "created_at": NOW - timedelta(days=9)}
                                 for i in range(1, 7)],
                 orders=[{"order_id": i, "customer_id": i, "created_at": at, "status": "completed", "total": 1.0}
                         for i in range(1, 7)])
    shop = sa.create_engine(url)
    with shop.begin() as conn:  # text customer ids, as a shop keyed by handles or external ids has them
        for table in ("customers", "orders"):
            conn.execute(sa.text(f"ALTER TABLE {table} ALTER COLUMN customer_id TYPE text"))
            for i, text_id in enumerate(LANGUAGE_ORDERED_IDS, start=1):
                conn.execute(sa.text(f"UPDATE {table} SET customer_id = :new WHERE customer_id = :old"),
                             {"new": text_id, "old": str(i)})
        assert [r[0] for r in conn.execute(sa.text("SELECT customer_id FROM customers ORDER BY customer_id"))] \
            == ["_c", "a-2", "a1", "A1", "b", "B"]  # the database's own order is the language's
    shop.dispose()
    monkeypatch.setenv("ENGINE_WAREHOUSE_URL", url)

    def plan(*args: str) -> str:
        result = CliRunner().invoke(main, ["--project", str(root), "plan", "--as-of", "2025-03-01T12:00:00Z",
                                           "--quiet", *args])
        assert result.exit_code == 0, result.output
        return result.stdout

    listed = [row["customer_id"] for row in csv.DictReader(io.StringIO(plan("--format", "csv")))]
    shown = [line.split()[2] for line in plan().splitlines()[-6:]]  # campaign step customer contact ...
    assert listed == shown == sorted(LANGUAGE_ORDERED_IDS) == ["A1", "B", "_c", "a-2", "a1", "b"]
