"""The engine adapts to the shop's schema (R-O5) and to a ledger in another database.

The same demo history is stored once in the canonical layout and once under
foreign names (schema ``shop``, table ``kunden``, column ``mail``, German
status codes mapped by an expression, orders through a SELECT); the plans must
be identical.
"""
from __future__ import annotations

from datetime import timedelta

import duckdb

from conftest import recorded_outcomes, copy_project
from engine import Reconciler, load_project
from engine.clock import parse_instant
from engine.tools.demo import build_demo

ANCHOR = "2025-01-10T00:00:00Z"
NOW = parse_instant(ANCHOR)

FOREIGN_SOURCES = """
sources:
  customers:
    table: shop.kunden
    columns:
      customer_id: kunden_nr
      email: mail
      phone: telefon
      first_name: vorname
      last_name: nachname
      created_at: angelegt_am
      city: ort
  orders:
    query: SELECT bestell_nr, kunden_nr, bestellt_am, status_code, summe FROM shop.bestellungen WHERE NOT storniert
    columns:
      order_id: bestell_nr
      customer_id: kunden_nr
      created_at: bestellt_am
      status: "CASE status_code WHEN 'F' THEN 'completed' ELSE 'open' END"
      total: summe
  order_items:
    table: shop.positionen
    columns: {order_id: bestell_nr, name: artikel, quantity: menge, price: preis, image_url: bild}
  checkouts:
    table: shop.warenkoerbe
    columns: {checkout_id: korb_nr, customer_id: kunden_nr, created_at: begonnen_am, completed_at: abgeschlossen_am, total: summe}
  checkout_items:
    table: shop.korb_positionen
    columns: {checkout_id: korb_nr, name: artikel, quantity: menge, price: preis, image_url: bild}
"""


def _foreignise(path) -> None:
    """Rewrite the canonical demo tables into a German-named schema, dropping the originals."""
    with duckdb.connect(str(path)) as conn:
        conn.execute("CREATE SCHEMA shop")
        conn.execute("""CREATE TABLE shop.kunden AS SELECT customer_id AS kunden_nr, email AS mail, phone AS telefon,
                        first_name AS vorname, last_name AS nachname, created_at AS angelegt_am, city AS ort FROM customers""")
        conn.execute("""CREATE TABLE shop.bestellungen AS SELECT order_id AS bestell_nr, customer_id AS kunden_nr,
                        created_at AS bestellt_am, CASE status WHEN 'completed' THEN 'F' ELSE 'O' END AS status_code,
                        total AS summe, false AS storniert FROM orders""")
        # a cancelled-and-hidden order the mapping's WHERE must drop
        conn.execute("INSERT INTO shop.bestellungen VALUES (999999, 1, TIMESTAMP '2025-01-05 10:00:00', 'F', 1, true)")
        conn.execute("""CREATE TABLE shop.positionen AS SELECT order_id AS bestell_nr, name AS artikel, quantity AS menge,
                        price AS preis, image_url AS bild FROM order_items""")
        conn.execute("""CREATE TABLE shop.warenkoerbe AS SELECT checkout_id AS korb_nr, customer_id AS kunden_nr,
                        created_at AS begonnen_am, completed_at AS abgeschlossen_am, total AS summe FROM checkouts""")
        conn.execute("""CREATE TABLE shop.korb_positionen AS SELECT checkout_id AS korb_nr, name AS artikel,
                        quantity AS menge, price AS preis, image_url AS bild FROM checkout_items""")
        for table in ("customers", "orders", "order_items", "checkouts", "checkout_items"):
            conn.execute(f"DROP TABLE {table}")


def _only_original_campaigns(root) -> None:
    """Keep the campaigns this foreign shop's mapping can serve (no events, no birthdays)."""
    for path in (root / "campaigns.d").glob("*.yaml"):
        if path.stem not in ("second-order", "abandoned-cart", "re-engage"):
            path.unlink()


def _plan(root, now) -> set[tuple]:
    reconciler = Reconciler(load_project(root))
    try:
        return {(m.campaign, m.step, m.customer_id, m.trigger_key, m.action, m.reason)
                for batch in reconciler.due(now) for m in batch}
    finally:
        reconciler.close()


def _with_sources(root, sources: str) -> None:
    text = (root / "engine.yaml").read_text()
    start, end = text.index("sources:"), text.index("channels:")
    (root / "engine.yaml").write_text(text[:start] + sources.lstrip("\n") + "\n" + text[end:])


def test_a_foreign_schema_is_usable_by_mapping_alone(tmp_path, monkeypatch):
    canonical = copy_project(tmp_path / "canonical")
    foreign = copy_project(tmp_path / "foreign")
    build_demo(tmp_path / "canonical.duckdb", 42, 2000, ANCHOR)
    build_demo(tmp_path / "foreign.duckdb", 42, 2000, ANCHOR)
    _foreignise(tmp_path / "foreign.duckdb")
    _with_sources(foreign, FOREIGN_SOURCES)
    _only_original_campaigns(canonical)
    _only_original_campaigns(foreign)

    monkeypatch.setenv("ENGINE_WAREHOUSE_URL", f"duckdb:///{tmp_path / 'canonical.duckdb'}")
    expected = _plan(canonical, NOW)
    monkeypatch.setenv("ENGINE_WAREHOUSE_URL", f"duckdb:///{tmp_path / 'foreign.duckdb'}")
    assert _plan(foreign, NOW) == expected
    assert len(expected) > 100


def test_a_source_without_checkouts_makes_cart_campaigns_invalid(tmp_path):
    root = copy_project(tmp_path)
    text = (root / "engine.yaml").read_text()
    start, end = text.index("  checkouts:"), text.index("  events:")
    (root / "engine.yaml").write_text(text[:start] + text[end:])
    from engine import check_project

    project, issues = check_project(root)
    assert project is None
    [issue] = [i for i in issues if i.severity == "error" and i.file.endswith("abandoned-cart.yaml")]
    assert issue.line == 6
    assert "needs the 'checkouts' entity" in issue.message
    assert all(i.file.endswith("abandoned-cart.yaml") for i in issues if i.severity == "error")


def test_a_ledger_in_another_database_gives_the_same_plan_and_never_sends_twice(tmp_path, monkeypatch):
    root = copy_project(tmp_path / "project")
    for name in ("re-engage", "order-follow-up", "inactivity"):  # segments and tags need the shared ledger
        (root / "campaigns.d" / f"{name}.yaml").unlink()
    text = (root / "engine.yaml").read_text().replace(
        "demo:", f"ledger:\n  url: sqlite:///{tmp_path / 'ledger.db'}\n\ndemo:", 1)
    (root / "engine.yaml").write_text(text)
    build_demo(tmp_path / "shop.duckdb", 42, 2000, ANCHOR)
    monkeypatch.setenv("ENGINE_WAREHOUSE_URL", f"duckdb:///{tmp_path / 'shop.duckdb'}")

    reconciler = Reconciler(load_project(root))
    try:
        assert not reconciler.config.ledger_shares_warehouse
        planned = {m.key for batch in reconciler.due(NOW) for m in batch if m.action == "send"}
        assert planned
        report = reconciler.run_once(NOW)
        assert report.total("sent") == len(planned)
        assert recorded_outcomes(reconciler.run_once(NOW)) == 0
        later = NOW + timedelta(hours=1)
        assert all(m.key not in planned for batch in reconciler.due(later) for m in batch)
    finally:
        reconciler.close()
    assert (tmp_path / "ledger.db").exists()


def test_segment_triggers_with_a_separate_ledger_are_valid(tmp_path):
    """Issue 14 point 4 lifted the refusal: the engine state at_risk and has_tag() join is brought to the
    warehouse per pass, so the campaigns that use them validate with the ledger in another database."""
    root = copy_project(tmp_path)
    text = (root / "engine.yaml").read_text().replace("demo:", "ledger:\n  url: sqlite:///ledger.db\n\ndemo:", 1)
    (root / "engine.yaml").write_text(text)
    from engine import check_project

    project, issues = check_project(root)
    assert [i for i in issues if i.severity == "error"] == []
    assert {"re-engage", "order-follow-up", "inactivity"} <= {c.name for c in project.campaigns}
