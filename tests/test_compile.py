"""Compiled SQL: pinned per campaign and dialect, and parsed back in its own dialect.

The snapshots make every change to generated SQL visible in review; the
parse-back check catches SQL a dialect cannot even read. Whether the SQL is
right is proven elsewhere, by running it (test_due_sets, test_end_to_end).
"""
from __future__ import annotations

from datetime import datetime, timezone

import pytest
import sqlglot

from conftest import REPO
from engine import due_query, load_project, render_sql
from engine.dialects import DIALECTS
from engine.sql.due import entries_insert

NOW = datetime(2025, 1, 10, tzinfo=timezone.utc)
PROJECT = load_project(REPO)
CAMPAIGNS = [c.name for c in PROJECT.campaigns]


@pytest.mark.parametrize("dialect", DIALECTS)
@pytest.mark.parametrize("name", CAMPAIGNS)
def test_due_query_snapshot(name, dialect, snapshot):
    query = due_query(PROJECT.campaign(name), PROJECT.config, NOW, exclude_ledger=True, dialect=dialect)
    sql = render_sql(query, dialect, pretty=True)
    assert sql == snapshot
    parsed = sqlglot.parse_one(sql, read=dialect)
    assert parsed.find(sqlglot.exp.Select) is not None


@pytest.mark.parametrize("name", CAMPAIGNS)
def test_literals_are_computed_in_python(name):
    """No date arithmetic in SQL: every cut-off is a literal, so all dialects agree."""
    query = due_query(PROJECT.campaign(name), PROJECT.config, NOW, exclude_ledger=True)
    sql = render_sql(query, "duckdb")
    for forbidden in ("INTERVAL", "DATE_ADD", "DATEADD", "NOW()", "CURRENT_TIMESTAMP"):
        assert forbidden not in sql.upper()


def test_ledger_anti_join_only_when_the_ledger_shares_the_warehouse():
    campaign = PROJECT.campaign("second-order")
    with_ledger = render_sql(due_query(campaign, PROJECT.config, NOW, exclude_ledger=True), "duckdb")
    without = render_sql(due_query(campaign, PROJECT.config, NOW, exclude_ledger=False), "duckdb")
    assert "engine_ledger" in with_ledger
    assert "engine_ledger" not in without


def test_segment_entries_insert_is_only_for_segment_triggers():
    assert entries_insert(PROJECT.campaign("second-order"), PROJECT.config, NOW) is None
    insert = entries_insert(PROJECT.campaign("re-engage"), PROJECT.config, NOW)
    assert render_sql(insert, "duckdb").startswith("INSERT INTO engine_entries")


def test_foreign_mapping_renames_tables_and_columns(tmp_path):
    """A shop whose customers live in shop.kunden with column mail needs mapping only."""
    from conftest import copy_project

    root = copy_project(tmp_path)
    text = (root / "engine.yaml").read_text()
    text = text.replace("""  customers:
    table: customers
    columns:
      customer_id: customer_id
      email: email""", """  customers:
    table: shop.kunden
    columns:
      customer_id: kunden_nr
      email: mail""")
    (root / "engine.yaml").write_text(text)
    project = load_project(root)
    sql = render_sql(due_query(project.campaign("second-order"), project.config, NOW, exclude_ledger=True), "postgres")
    assert "FROM shop.kunden" in sql
    assert "kunden_nr AS customer_id" in sql
    assert "mail AS email" in sql


@pytest.mark.parametrize("url, dialect", [
    ("trino://engine@trino.internal:8080/hive/shop", "trino"),
    ("hive://engine@spark-thrift.internal:10000/shop", "spark"),          # Spark Thrift Server via PyHive
    ("databricks://token:x@adb-1.azuredatabricks.net?http_path=/sql/1.0/warehouses/a", "spark"),
])
def test_spark_and_trino_dialects_follow_from_the_url(url, dialect):
    from engine.dialects import dialect_of_url

    assert dialect_of_url(url) == dialect
