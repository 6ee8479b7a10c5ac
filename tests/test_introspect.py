"""``engine validate --check-warehouse``: the mapping checked against a real database.

Each test loads a small demo shop into DuckDB, SQLite and PostgreSQL (the
``backend`` fixture), writes an engine.yaml whose mapping is broken in known
ways, and expects exactly those problems, each at its line and column in
engine.yaml. SQLite has no real column types, so there only names are checked.
"""
from __future__ import annotations

import pytest
import yaml
from click.testing import CliRunner

from conftest import copy_project, database_url
from engine.cli.main import main
from engine.tools.demo import create_tables, generate_shop, load_shop
from engine.tools.introspect import check_warehouse, type_kind
from engine.state.warehouse import Database


def _shop(url: str) -> None:
    db = Database(url)
    load_shop(db, generate_shop(seed=3, customers=40))
    db.dispose()


def _project(tmp_path, url, monkeypatch, change=None):
    """A copy of the shipped project on ``url``; ``change(sources)`` edits its mapping."""
    root = copy_project(tmp_path / "project")
    data = yaml.safe_load((root / "engine.yaml").read_text())
    if change is not None:
        change(data["sources"])
    (root / "engine.yaml").write_text(yaml.safe_dump(data, sort_keys=False, default_flow_style=False, width=200))
    monkeypatch.setenv("ENGINE_WAREHOUSE_URL", url)
    return root


def _at(root, line_text: str, word: str) -> tuple[int, int]:
    """(line, column) of ``word`` on the only line of engine.yaml that contains ``line_text``."""
    lines = (root / "engine.yaml").read_text().splitlines()
    [number] = [i for i, line in enumerate(lines, 1) if line_text in line]
    return number, lines[number - 1].index(word) + 1


def _break(sources: dict) -> None:
    sources["customers"]["columns"]["email"] = "e_mail"                     # a column that is not there
    sources["orders"]["table"] = "ordres"                                   # a table that is not there
    sources["order_items"]["columns"]["quantity"] = "name"                  # text where a number is needed
    sources["checkouts"] = {"query": "SELECT * FROM checkouts WHERE total > 0",  # a query source ...
                            "columns": {"completed_at": "COALESCE(completd_at, created_at)", "total": "total"}}
    sources["checkout_items"] = {"query": "SELECT * FROM checkout_itemz", "columns": {"name": "name"}}  # a query that fails
    sources["events"]["columns"]["occurred_at"] = "type"                    # text where an instant is needed


def test_a_broken_mapping_is_reported_at_each_entry(tmp_path, backend, monkeypatch):
    url = database_url(backend, tmp_path)
    _shop(url)
    root = _project(tmp_path, url, monkeypatch, _break)

    issues = check_warehouse(root)

    found = {(i.line, i.column): i for i in issues}
    expected = {
        _at(root, "email: e_mail", "e_mail"): ["column 'e_mail' of customers.email does not exist", "did you mean 'email'?"],
        _at(root, "table: ordres", "table"): ["table 'ordres' of source 'orders' does not exist", "did you mean 'orders'?"],
        _at(root, "COALESCE(completd_at", "completd_at"): [
            "column 'completd_at' of checkouts.completed_at does not exist in the result of the query of sources.checkouts",
            "did you mean 'completed_at'?"],
        _at(root, "checkout_itemz", "query"): ["the query of source 'checkout_items' fails on the warehouse", "checkout_itemz"],
    }
    if backend != "sqlite":  # SQLite declares no real types: names only
        expected[_at(root, "quantity: name", "quantity")] = ["order_items.quantity is column 'name' of type",
                                                             "needs a number", "CAST(name AS INTEGER)"]
        expected[_at(root, "occurred_at: type", "occurred_at")] = ["events.occurred_at is column 'type' of type",
                                                                   "needs a timestamp or date"]
    assert set(found) == set(expected), "\n".join(i.format() for i in issues)
    for position, parts in expected.items():
        issue = found[position]
        assert issue.file.endswith("engine.yaml") and issue.severity == "error" and issue.fix
        for part in parts:
            assert part in issue.message + issue.fix, issue.format()


def test_the_shipped_mapping_matches_the_demo_shop(tmp_path, backend, monkeypatch):
    url = database_url(backend, tmp_path)
    _shop(url)
    assert check_warehouse(_project(tmp_path, url, monkeypatch)) == []


@pytest.mark.parametrize("backend", ["duckdb", "postgres"])  # SQLite has no schemas (only ATTACHed files)
def test_schema_qualified_tables_and_a_missing_schema(tmp_path, backend, monkeypatch):
    url = database_url(backend, tmp_path, name="warehouse")  # a DuckDB file named shop would be catalog 'shop'
    db = Database(url)
    db.execute("CREATE SCHEMA shop")
    create_tables(db, schema="shop")
    db.dispose()

    def qualify(sources: dict) -> None:
        for entity, spec in sources.items():
            spec.pop("table", None)
            spec["table"] = f"shop.{entity}"
        sources["orders"]["table"] = "shopp.orders"
        sources["order_items"]["table"] = "shop.order_item"
        sources["events"].pop("table")
        sources["events"]["query"] = "SELECT * FROM shop.events WHERE type <> 'internal'"

    root = _project(tmp_path, url, monkeypatch, qualify)
    issues = check_warehouse(root)
    assert {(i.line, i.column) for i in issues} == {_at(root, "shopp.orders", "table"), _at(root, "shop.order_item", "table")}
    messages = " | ".join(i.message for i in issues)
    assert "schema 'shopp' of table 'shopp.orders' does not exist" in messages and "did you mean 'shop'?" in messages
    assert "table 'shop.order_item' of source 'order_items' does not exist" in messages
    assert "did you mean 'order_items'?" in messages


def test_validate_check_warehouse_exits_1_with_the_issues(tmp_path, monkeypatch):
    url = database_url("duckdb", tmp_path)
    _shop(url)
    root = _project(tmp_path, url, monkeypatch, lambda s: s["orders"].update(table="ordres"))
    line, column = _at(root, "table: ordres", "table")

    result = CliRunner().invoke(main, ["--project", str(root), "validate", "--check-warehouse"])

    assert result.exit_code == 1
    assert f"engine.yaml:{line}:{column}: error: table 'ordres' of source 'orders' does not exist" in result.output
    plain = CliRunner().invoke(main, ["--project", str(root), "validate"])  # without the flag: no connection
    assert plain.exit_code == 0, plain.output


def test_validate_check_warehouse_passes_on_a_matching_warehouse(tmp_path, monkeypatch):
    url = database_url("sqlite", tmp_path)
    _shop(url)
    root = _project(tmp_path, url, monkeypatch)
    result = CliRunner().invoke(main, ["--project", str(root), "validate", "--check-warehouse", "--format", "json"])
    assert result.exit_code == 0, result.output


@pytest.mark.parametrize("url", [
    "postgresql+psycopg://engine:s3cret@127.0.0.1:1/shop",   # nothing listens on port 1
    "duckdb:///{tmp}/missing.duckdb",
])
def test_an_unreachable_warehouse_is_one_clear_line_and_exit_1(tmp_path, monkeypatch, url):
    root = _project(tmp_path, url.format(tmp=tmp_path), monkeypatch)
    result = CliRunner().invoke(main, ["--project", str(root), "validate", "--check-warehouse"])
    assert result.exit_code == 1
    [line] = result.stderr.strip().splitlines()
    assert line.startswith("Error: ") and ("cannot connect to" in line or "does not exist" in line), line
    assert "s3cret" not in result.output + result.stderr and "Traceback" not in result.output + result.stderr


def test_type_kinds_of_common_warehouse_type_names():
    for name in ("TIMESTAMP", "timestamp without time zone", "timestamptz", "TIMESTAMP_NTZ", "DATE", "DATETIME"):
        assert type_kind(name) == "instant", name
    for name in ("VARCHAR(255)", "text", "character varying", "STRING", "bpchar"):
        assert type_kind(name) == "text", name
    for name in ("INTEGER", "int4", "NUMERIC(12, 2)", "double precision", "NUMBER(38,0)", "HUGEINT", "float8"):
        assert type_kind(name) == "number", name
    for name in (None, "", "JSON", "INTERVAL", "TIME", "BLOB"):
        assert type_kind(name) is None, name


@pytest.mark.parametrize("backend", ["duckdb", "postgres"])  # SQLite declares no real types
def test_filters_are_type_checked_against_the_warehouse_column_types(tmp_path, backend, monkeypatch):
    """``city > 5`` is fine to the model (city is an extra attribute of unknown type) and wrong to the
    warehouse, where city is text: reported at its place in the campaign file (issue 20, point 8)."""
    url = database_url(backend, tmp_path)
    _shop(url)
    root = _project(tmp_path, url, monkeypatch)
    campaign = root / "campaigns.d" / "second-order.yaml"
    text = campaign.read_text()
    assert "audience: email IS NOT NULL\n" in text
    campaign.write_text(text.replace("audience: email IS NOT NULL\n", "audience: email IS NOT NULL AND city > 5\n"))
    line = next(i for i, row in enumerate(campaign.read_text().splitlines(), 1) if row.startswith("audience:"))
    plain = CliRunner().invoke(main, ["--project", str(root), "validate"])
    assert plain.exit_code == 0, plain.output  # without the warehouse, city's type is unknown

    issues = check_warehouse(root)

    assert [(i.file.rsplit("/", 1)[-1], i.line, i.column) for i in issues] == [("second-order.yaml", line, 33)], \
        "\n".join(i.format() for i in issues)
    assert "'city' is text and '5' is a number" in issues[0].message and issues[0].fix
    result = CliRunner().invoke(main, ["--project", str(root), "validate", "--check-warehouse"])
    assert result.exit_code == 1 and f"second-order.yaml:{line}:33: error: 'city' is text" in result.output


def test_check_warehouse_checks_the_trigger_property_columns(tmp_path, monkeypatch):
    """orders.shipping_country (trigger.shipping_country) is an optional mapping entry like any other:
    mapped to a column the warehouse lacks, --check-warehouse reports it at its entry; mapped right, it passes."""
    url = database_url("duckdb", tmp_path)
    _shop(url)
    root = _project(tmp_path, url, monkeypatch, lambda s: s["orders"]["columns"].update(shipping_country="ship_country"))
    line, column = _at(root, "shipping_country: ship_country", "ship_country")
    result = CliRunner().invoke(main, ["--project", str(root), "validate", "--check-warehouse"])
    assert result.exit_code == 1
    assert f"engine.yaml:{line}:{column}: error:" in result.output and "ship_country" in result.output, result.output
    root = _project(tmp_path / "right", url, monkeypatch,
                    lambda s: s["orders"]["columns"].update(shipping_country="shipping_country"))
    result = CliRunner().invoke(main, ["--project", str(root), "validate", "--check-warehouse"])
    assert result.exit_code == 0, result.output
