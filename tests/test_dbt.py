"""Sources named as dbt models and sources: ``dbt: ref('customers')`` resolved from the dbt manifest.

tests/fixtures/dbt/manifest.json is a hand-written manifest in dbt's format
(v12): models keyed model.<project>.<name> (one of them versioned, one shadowed
by a package's model of the same name), a seed, a test node, sources keyed
source.<project>.<source>.<table>, a disabled model. The demo shop is moved
where that manifest says dbt built it (schemas analytics and raw, aliases), and
the engine, mapped by dbt names alone, must plan exactly what it plans on the
canonical tables. Every way to get it wrong is one issue at engine.yaml's line.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import duckdb
import pytest

from conftest import copy_project
from engine import Reconciler, check_project, load_project
from engine.clock import parse_instant
from engine.spec.dbt import DbtError, Manifest, parse_reference
from engine.tools.demo import build_demo

FIXTURE = Path(__file__).parent / "fixtures" / "dbt" / "manifest.json"
ANCHOR = "2025-01-10T00:00:00Z"
ENGINE = [sys.executable, "-c", "from engine.cli.main import main; main()"]
DBT_SOURCES = {
    "table: customers": "dbt: ref('customers')",
    "table: orders": "dbt: ref('shop', 'orders')",
    "table: order_items": "dbt: ref('order_items')",  # versioned: the latest, v2
    "table: checkouts": "dbt: source('shop', 'checkouts')",
    "table: checkout_items": "dbt: \"source('shop', 'checkout_items')\"",
}


@pytest.fixture(scope="module")
def warehouses(tmp_path_factory):
    """The demo shop twice: canonical tables, and where the manifest says dbt put them (catalog 'shop')."""
    directory = tmp_path_factory.mktemp("warehouses")
    build_demo(directory / "canonical.duckdb", 42, 2000, ANCHOR)
    shutil.copy(directory / "canonical.duckdb", directory / "shop.duckdb")
    with duckdb.connect(str(directory / "shop.duckdb")) as conn:
        conn.execute("CREATE SCHEMA analytics; CREATE SCHEMA raw")
        for table, moved in (("customers", "analytics.dim_customers"), ("orders", "analytics.fct_orders"),
                             ("order_items", "analytics.order_items_v2"), ("checkouts", "raw.raw_checkouts"),
                             ("checkout_items", "raw.raw_checkout_items")):
            conn.execute(f"CREATE TABLE {moved} AS SELECT * FROM main.{table}; DROP TABLE main.{table}")
        # decoys: the older version and the package's model of the same name hold nobody
        conn.execute("CREATE TABLE analytics.order_items_v1 AS SELECT * FROM analytics.order_items_v2 WHERE false")
        conn.execute("CREATE SCHEMA marketing; CREATE TABLE marketing.customers AS SELECT * FROM analytics.dim_customers WHERE false")
    return directory


def dbt_project(root: Path, manifest: str | None = "target/manifest.json", replacements=DBT_SOURCES) -> Path:
    copy_project(root)
    for path in (root / "campaigns.d").glob("*.yaml"):  # the campaigns these five entities serve
        if path.stem not in ("second-order", "abandoned-cart", "re-engage"):
            path.unlink()
    text = (root / "engine.yaml").read_text()
    text = text[:text.index("  events:")] + text[text.index("channels:"):]
    for old, new in replacements.items():
        assert old in text
        text = text.replace(old, new, 1)
    if manifest not in (None, "target/manifest.json"):
        text = text.replace("sources:", f"dbt:\n  manifest: {manifest}\n\nsources:", 1)
    if manifest is not None:
        (root / manifest).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(FIXTURE, root / manifest)
    (root / "engine.yaml").write_text(text)
    return root


def plan(root: Path) -> set[tuple]:
    reconciler = Reconciler(load_project(root))
    try:
        return {(m.campaign, m.step, m.customer_id, m.trigger_key, m.action, m.reason)
                for batch in reconciler.due(parse_instant(ANCHOR)) for m in batch}
    finally:
        reconciler.close()


def test_a_shop_mapped_by_dbt_names_plans_what_it_plans_on_the_tables(tmp_path, warehouses, monkeypatch):
    canonical = dbt_project(tmp_path / "canonical", manifest=None, replacements={})
    mapped = dbt_project(tmp_path / "dbt")
    project = load_project(mapped)
    assert {name: source.table for name, source in project.config.sources.items()} == {
        "customers": "shop.analytics.dim_customers", "orders": "shop.analytics.fct_orders",
        "order_items": "shop.analytics.order_items_v2", "checkouts": "shop.raw.raw_checkouts",
        "checkout_items": "shop.raw.raw_checkout_items"}

    monkeypatch.setenv("ENGINE_WAREHOUSE_URL", f"duckdb:///{warehouses / 'canonical.duckdb'}")
    expected = plan(canonical)
    monkeypatch.setenv("ENGINE_WAREHOUSE_URL", f"duckdb:///{warehouses / 'shop.duckdb'}")
    assert plan(mapped) == expected
    assert len(expected) > 100


def test_the_manifest_path_is_a_setting_relative_to_the_project(tmp_path):
    root = dbt_project(tmp_path / "engine", manifest="../analytics/target/manifest.json")
    project, issues = check_project(root)
    assert project is not None, [i.message for i in issues]
    assert project.config.sources["checkouts"].table == "shop.raw.raw_checkouts"


def line_of(root: Path, needle: str) -> int:
    return next(n for n, line in enumerate((root / "engine.yaml").read_text().splitlines(), 1) if needle in line)


def errors(root: Path) -> list:
    project, issues = check_project(root)
    assert project is None
    return [i for i in issues if i.severity == "error"]


def test_a_missing_manifest_is_one_error_saying_how_to_make_it(tmp_path):
    root = dbt_project(tmp_path, manifest=None)
    [issue] = errors(root)
    assert issue.file.endswith("engine.yaml") and issue.line == line_of(root, "ref('customers')")
    assert "no dbt manifest at" in issue.message and "target/manifest.json" in issue.message
    assert "dbt parse" in issue.fix

    result = subprocess.run(ENGINE + ["--project", str(root), "validate"], capture_output=True, text=True, timeout=60)
    assert result.returncode != 0 and "no dbt manifest" in result.stdout + result.stderr
    assert "Traceback" not in result.stderr


def test_a_configured_manifest_that_is_missing_points_at_the_setting(tmp_path):
    root = dbt_project(tmp_path / "engine", manifest="../nowhere/manifest.json")
    (tmp_path / "nowhere" / "manifest.json").unlink()
    [issue] = errors(root)
    assert issue.line == line_of(root, "manifest: ../nowhere")


@pytest.mark.parametrize("written, expected", [
    ("ref('customer')", "no model 'customer' in the dbt manifest (.+) \\(did you mean 'customers'\\?\\)"),
    ("source('shop', 'checkout')", "no source 'shop.checkout' .+did you mean 'shop.checkouts'"),
    ("source('shops', 'checkouts')", "no source 'shops.checkouts' .+did you mean 'shop.checkouts'"),
    ("ref('legacy_customers')", "'legacy_customers' is disabled in the dbt project"),
    ("ref('order_items', v=3)", "no version 3 of 'order_items'"),
    ("ref(checkouts)", "'ref\\(checkouts\\)' is not a dbt reference"),
    ("ref('not_null_customers_email')", "no model 'not_null_customers_email'"),  # a test is not ref-able
])
def test_an_unknown_or_malformed_reference_is_named_at_its_line(tmp_path, written, expected):
    root = dbt_project(tmp_path, replacements={**DBT_SOURCES, "table: checkouts": f"dbt: \"{written}\""})
    [issue] = errors(root)
    assert issue.line == line_of(root, written)
    assert re.search(expected, issue.message), issue.message
    assert issue.fix


def test_table_and_dbt_together_is_an_error(tmp_path):
    root = dbt_project(tmp_path, replacements={**DBT_SOURCES,
                                               "table: checkouts": "table: checkouts\n    dbt: source('shop', 'checkouts')"})
    [issue] = errors(root)
    assert "has both 'table' and 'dbt'" in issue.message


def test_references_resolve_as_dbt_resolves_them(tmp_path):
    manifest = Manifest(FIXTURE, "manifest.json")
    assert manifest.relation(parse_reference("ref('customers')"), "duckdb") == "shop.analytics.dim_customers"
    assert manifest.relation(parse_reference("ref('marketing_pkg', 'customers')"), "duckdb") == "shop.marketing.customers"
    assert manifest.relation(parse_reference('ref("order_items", version=1)'), "duckdb") == "shop.analytics.order_items_v1"
    assert manifest.relation(parse_reference("ref('country_codes')"), "postgres") == "shop.analytics.country_codes"
    assert manifest.relation(parse_reference("source('shop','orders')"), "duckdb") == "shop.raw.raw_orders"

    # a name that needs quoting is quoted in the warehouse's dialect; without the root project's name,
    # a model in two packages is ambiguous
    data = json.loads(FIXTURE.read_text())
    data["nodes"]["model.shop.orders"]["alias"] = "Orders 2024"
    del data["metadata"]["project_name"]
    (tmp_path / "manifest.json").write_text(json.dumps(data))
    other = Manifest(tmp_path / "manifest.json", "manifest.json")
    assert other.relation(parse_reference("ref('orders')"), "postgres") == 'shop.analytics."Orders 2024"'
    assert other.relation(parse_reference("ref('orders')"), "bigquery") == "shop.analytics.`Orders 2024`"
    with pytest.raises(DbtError, match="ambiguous: 'customers' is in the packages marketing_pkg, shop") as raised:
        other.relation(parse_reference("ref('customers')"), "duckdb")
    assert raised.value.fix == "name the package: ref('marketing_pkg', 'customers')"


def test_a_file_that_is_not_a_manifest_is_an_error(tmp_path):
    (tmp_path / "manifest.json").write_text('{"nodes": ')
    with pytest.raises(DbtError, match="cannot read the dbt manifest"):
        Manifest(tmp_path / "manifest.json", "manifest.json")
    (tmp_path / "manifest.json").write_text('{"version": 1}')
    with pytest.raises(DbtError, match="is not a dbt manifest"):
        Manifest(tmp_path / "manifest.json", "manifest.json")


def test_check_warehouse_reads_the_relations_dbt_built_and_names_one_it_did_not(tmp_path, warehouses):
    root = dbt_project(tmp_path / "project")
    shutil.copy(warehouses / "shop.duckdb", tmp_path / "shop.duckdb")
    env = {**os.environ, "ENGINE_WAREHOUSE_URL": f"duckdb:///{tmp_path / 'shop.duckdb'}"}
    checked = subprocess.run(ENGINE + ["--project", str(root), "validate", "--check-warehouse"], capture_output=True,
                             text=True, timeout=120, env=env)
    assert checked.returncode == 0, checked.stdout + checked.stderr

    with duckdb.connect(str(tmp_path / "shop.duckdb")) as conn:  # the model is in the manifest, not yet built
        conn.execute("DROP TABLE analytics.fct_orders")
    checked = subprocess.run(ENGINE + ["--project", str(root), "validate", "--check-warehouse"], capture_output=True,
                             text=True, timeout=120, env=env)
    output = checked.stdout + checked.stderr
    assert checked.returncode == 1 and "Traceback" not in output
    line = line_of(root, "ref('shop', 'orders')")
    assert re.search(rf"engine.yaml:{line}:\d+: .*table 'shop.analytics.fct_orders' \(dbt: ref\('shop', 'orders'\)\) "
                     r"of source 'orders' does not exist", output), output
    assert "dbt run" in output
