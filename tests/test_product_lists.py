"""Product lists in templates (issue 18): each list kind against an independent Python computation,
the declaration check of validation, and the run-time skip of a message whose list is empty.

``test_lists_match_a_python_computation`` loads Hypothesis-generated histories (a catalogue with
incomplete and out-of-stock products, orders before and after now, views and searches on the
look-back's boundaries, ties on instants and scores) into DuckDB, SQLite and PostgreSQL and
compares every list of every customer, in order, with ``expected_lists`` below: plain Python over
the same rows that shares no code with engine.sql.product_lists. Bounded: a fixed seed and a few
examples per backend.
"""
from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
from hypothesis import HealthCheck, Phase, example, given, seed, settings
from hypothesis import strategies as st

from conftest import BACKENDS, copy_project, database_url, load_history, write
from engine import Reconciler, load_project
from engine.model import Project
from engine.run.lists import list_statement
from engine.run.sources import SourceRows
from engine.spec.config import load_config
from engine.spec.project import check_project
from engine.sql.product_lists import LIST_KINDS
from engine.state.warehouse import Database

NOW = datetime(2025, 1, 10, 12, 0, 0)
LIMIT, LOOKBACK = 4, timedelta(days=30)
CUSTOMERS = [1, 2, 3, 4]
#: instants relative to NOW, on and around the boundaries (the look-back's start, now itself, after now)
OFFSETS = [timedelta(hours=1), timedelta(0), -timedelta(seconds=1), -timedelta(hours=5), -timedelta(days=2),
           -(LOOKBACK - timedelta(seconds=1)), -LOOKBACK, -(LOOKBACK + timedelta(days=1))]
NAMES = ["Abc mug", "bc kettle", "Grinder", "ab", "Cup"]
CATEGORIES = ["ab", "cup", "ab", "cup", None]
QUERIES = ["ab", "B", "cup", "", "zz", "Kettle", "grind"]


# ---- the independent computation ----------------------------------------------------------

def expected_lists(rows: dict, now: datetime) -> dict[str, dict[str, list[str]]]:
    """list name -> customer id (text) -> product ids (text), in order, at most LIMIT."""
    products = {str(p["product_id"]): p for p in rows["products"]}
    complete = {pid for pid, p in products.items()
                if p["name"] is not None and p["url"] is not None and p["image"] not in (None, "")
                and p["price"] is not None and p["in_stock"] is not False}
    counted = [o for o in rows["orders"] if o["created_at"] <= now]
    owner = {o["order_id"]: o["customer_id"] for o in counted}
    lines = {(i["order_id"], str(i["product_id"])) for i in rows["order_items"]
             if i["order_id"] in owner and i["product_id"] is not None}
    bought = {c: {pid for o, pid in lines if owner[o] == c} for c in CUSTOMERS}
    recent = [e for e in rows["events"] if now - LOOKBACK < e["occurred_at"] <= now]

    def top(scores: dict[str, tuple], customer: int, exclude: set[str] = frozenset()) -> list[str]:
        eligible = [pid for pid in scores if pid in complete and pid not in exclude]
        return sorted(eligible, key=lambda pid: (scores[pid], pid))[:LIMIT]

    result: dict[str, dict[str, list[str]]] = {name: {} for name in LIST_KINDS}
    for c in CUSTOMERS:
        viewed: dict[str, datetime] = {}
        for e in recent:
            if e["customer_id"] == c and e["type"] == "product_viewed" and e["product_id"] is not None:
                pid = str(e["product_id"])
                viewed[pid] = max(viewed.get(pid, e["occurred_at"]), e["occurred_at"])
        result["viewed_products"][str(c)] = top({pid: (-at.timestamp(),) for pid, at in viewed.items()}, c)

        together: dict[str, int] = {}  # per product q: sum over the customer's products p of orders with p and q
        for o, p in lines:
            if p in bought[c]:
                for o2, q in lines:
                    if o2 == o and q != p:
                        together[q] = together.get(q, 0) + 1
        result["bought_together"][str(c)] = top({q: (-n,) for q, n in together.items()}, c, bought[c])

        categorised = [(o, pid, products[pid]["category"]) for o, pid in lines
                       if pid in products and products[pid]["category"] is not None]
        mine: dict[str, int] = {}
        for o, _, category in categorised:
            if owner[o] == c:
                mine[category] = mine.get(category, 0) + 1
        sellers: dict[str, int] = {}
        if mine:
            favourite = min(mine, key=lambda category: (-mine[category], category))
            for _, pid, category in categorised:
                if category == favourite:
                    sellers[pid] = sellers.get(pid, 0) + 1
        result["category_top_sellers"][str(c)] = top({pid: (-n,) for pid, n in sellers.items()}, c, bought[c])

        searches: dict[str, datetime] = {}
        for e in recent:
            if e["customer_id"] == c and e["type"] == "search" and e["search_query"]:
                q = e["search_query"].lower()
                searches[q] = max(searches.get(q, e["occurred_at"]), e["occurred_at"])
        related: dict[str, datetime] = {}
        for pid in complete:
            for q, at in searches.items():
                if q in products[pid]["name"].lower() or q in (products[pid]["category"] or "").lower():
                    related[pid] = max(related.get(pid, at), at)
        result["search_related"][str(c)] = top({pid: (-at.timestamp(),) for pid, at in related.items()}, c, bought[c])
    return {name: {c: pids for c, pids in lists.items() if pids} for name, lists in result.items()}


# ---- generated histories -------------------------------------------------------------------

@st.composite
def histories(draw) -> dict:
    product_ids = list(range(1, 7))
    products = [{
        "product_id": pid, "name": draw(st.sampled_from(NAMES)), "url": f"https://shop.test/p/{pid}",
        "image": draw(st.sampled_from([f"https://shop.test/i/{pid}.jpg"] * 5 + [None, ""])),
        "price": draw(st.sampled_from([9.5, 12, None] if pid % 2 else [9.5, 12])),
        "category": draw(st.sampled_from(CATEGORIES)), "in_stock": draw(st.sampled_from([True, True, True, False, None])),
    } for pid in product_ids]
    known_or_not = st.sampled_from(product_ids + [7])  # 7: sold and viewed, but not in the catalogue
    orders, items = [], []
    for order_id in range(1, draw(st.integers(0, 10)) + 1):
        orders.append({"order_id": order_id, "customer_id": draw(st.sampled_from(CUSTOMERS)),
                       "created_at": NOW + draw(st.sampled_from(OFFSETS)) - timedelta(days=draw(st.integers(0, 90)) * (order_id % 2)),
                       "status": "completed", "total": 10})
        for pid in draw(st.lists(known_or_not, min_size=1, max_size=4)):
            items.append({"order_id": order_id, "product_id": pid, "name": "x", "quantity": 1, "price": 1})
    events = []
    for event_id in range(1, draw(st.integers(0, 16)) + 1):
        kind = draw(st.sampled_from(["product_viewed", "search", "login"]))
        events.append({"event_id": event_id, "customer_id": draw(st.sampled_from(CUSTOMERS)), "type": kind,
                       "occurred_at": NOW + draw(st.sampled_from(OFFSETS)),
                       "product_id": draw(known_or_not) if kind == "product_viewed" else None,
                       "search_query": draw(st.sampled_from(QUERIES)) if kind == "search" else None})
    return {"customers": [{"customer_id": c, "email": f"c{c}@shop.test"} for c in CUSTOMERS],
            "products": products, "orders": orders, "order_items": items, "events": events}


def rich_history() -> dict:
    """A hand-built history where every list has products (Hypothesis adds the odd ones)."""
    categories = {1: "ab", 2: "ab", 3: "cup", 4: "cup", 5: "ab", 6: "cup"}
    products = [{"product_id": pid, "name": NAMES[pid % len(NAMES)], "url": f"https://shop.test/p/{pid}",
                 "image": f"https://shop.test/i/{pid}.jpg", "price": 9.5, "category": category, "in_stock": True}
                for pid, category in categories.items()]
    baskets = {1: (1, [1, 3]), 2: (2, [1, 2, 5]), 3: (3, [3, 4]), 4: (2, [2, 5])}
    orders = [{"order_id": o, "customer_id": c, "created_at": NOW - timedelta(days=o), "status": "completed", "total": 1}
              for o, (c, _) in baskets.items()]
    items = [{"order_id": o, "product_id": pid} for o, (_, pids) in baskets.items() for pid in pids]
    events = [{"event_id": 1, "customer_id": 1, "type": "product_viewed", "occurred_at": NOW - timedelta(hours=2), "product_id": 2},
              {"event_id": 2, "customer_id": 1, "type": "product_viewed", "occurred_at": NOW - timedelta(hours=1), "product_id": 4},
              {"event_id": 3, "customer_id": 1, "type": "search", "occurred_at": NOW - timedelta(hours=1), "search_query": "Cup"}]
    return {"customers": [{"customer_id": c} for c in CUSTOMERS], "products": products, "orders": orders,
            "order_items": items, "events": events}


def test_the_rich_history_has_the_lists_a_reader_expects():
    """The Python computation itself, on the hand-built history, against lists worked out by hand."""
    lists = expected_lists(rich_history(), NOW)
    assert lists["viewed_products"]["1"] == ["4", "2"]
    assert lists["bought_together"]["1"] == ["2", "4", "5"]  # each shares one order with 1 or 3: ties by id
    assert lists["category_top_sellers"]["1"] == ["2", "5"]  # ab (1 line) ties cup (1 line): ab by name; 1 bought
    assert lists["search_related"]["1"] == ["4", "6"]  # category cup, without 3 (bought)


def engine_lists(sources: SourceRows, now: datetime) -> dict[str, dict[str, list[str]]]:
    config, keys = sources.config, [str(c) for c in CUSTOMERS]
    result = {}
    for name in LIST_KINDS:
        lists: dict[str, list[str]] = {}
        for row in sources.warehouse.fetch_all(*list_statement(name, keys, sources, now)):  # the run's statement
            lists.setdefault(row.customer_id, []).append(str(row.product_id))
            assert row.position == len(lists[row.customer_id])
        result[name] = lists
    return result


EXAMPLES = {"duckdb": 15, "sqlite": 15, "postgres": 10}


@pytest.mark.parametrize("backend", BACKENDS)
def test_lists_match_a_python_computation(backend, tmp_path, monkeypatch):
    if backend == "postgres":
        import pg

        pg.server()  # skips here (not inside Hypothesis) when PostgreSQL cannot start
    url = database_url(backend, tmp_path)
    monkeypatch.setenv("ENGINE_WAREHOUSE_URL", url)
    config, issues = load_config(copy_project(tmp_path / "project"))
    assert not [i for i in issues if i.severity == "error"]
    now = NOW.replace(tzinfo=timezone.utc)
    seen = {name: 0 for name in LIST_KINDS}

    @seed(20261206)
    @settings(max_examples=EXAMPLES[backend], deadline=None, database=None, print_blob=False,
              phases=[Phase.explicit, Phase.generate], suppress_health_check=[HealthCheck.too_slow])
    @given(histories())
    @example(rich_history())
    def check(rows):
        load_history(url, **rows)
        warehouse = Database(url)
        try:
            got = engine_lists(SourceRows(warehouse, config, {}), now)
        finally:
            warehouse.dispose()
        expected = expected_lists(rows, NOW)
        for name in LIST_KINDS:
            assert got[name] == expected[name], name
            seen[name] += bool(expected[name])

    check()
    assert all(seen.values()), f"some list was never non-empty: {seen}"  # the histories reach every list


# ---- validation and the run ----------------------------------------------------------------

def _errors(root) -> list[str]:
    _, issues = check_project(root)
    return [f"{i.file}:{i.line}: {i.message} | {i.fix}" for i in issues if i.severity == "error"]


def test_a_template_iterating_an_undeclared_list_is_refused_at_its_line(tmp_path):
    root = copy_project(tmp_path)
    path = root / "templates/search/results.email.j2"
    path.write_text(path.read_text().replace("{# uses: search_related #}\n", ""))
    errors = _errors(root)
    assert len(errors) == 2, errors  # the html loop and the text loop, each at its line
    for error, line in zip(errors, (6, 8)):
        assert f"results.email.j2:{line}: template 'search/results.email.j2' iterates the list 'search_related' without declaring it" in error
        assert error.endswith("declare it at the top of the template: {# uses: search_related #}")


def test_an_unknown_list_and_a_list_without_its_sources_are_refused(tmp_path):
    root = copy_project(tmp_path)
    path = root / "templates/browse/viewed.email.j2"
    path.write_text(path.read_text().replace("{# uses: viewed_products #}", "{# uses: viewed_products, bought_togther #}"))
    errors = _errors(root)
    # one parser reads every {# uses: #} declaration (templating/declarations.py) and names an unknown list
    assert any("viewed.email.j2:1:" in e and "'bought_togther', which the engine does not know (did you mean "
               "'bought_together'?)" in e for e in errors), errors
    text = (root / "engine.yaml").read_text()
    start = text.index("  products:")
    (root / "engine.yaml").write_text(text[:start] + text[text.index("  push_subscriptions:"):])
    path.write_text(path.read_text().replace(", bought_togther", ""))
    errors = _errors(root)
    assert any("viewed.email.j2:1:" in e and "'viewed_products', which needs sources the project does not map: products" in e
               and "map sources.products in " in e for e in errors), errors


def test_validation_renders_declared_lists_against_samples(tmp_path):
    """A declared list is there in validation (a sample), so a misspelt field of its items is found."""
    root = copy_project(tmp_path)
    path = root / "templates/follow-up/cross-sell.email.j2"
    path.write_text(path.read_text().replace("product.image }}", "product.imag }}", 1))
    errors = _errors(root)
    assert any("cross-sell.email.j2:7" in e and "imag" in e for e in errors), errors


@pytest.mark.parametrize("backend", ["duckdb"])
def test_a_message_whose_list_is_empty_is_skipped_with_a_reason(backend, tmp_path, monkeypatch):
    """Two searches yesterday: 'grinder' matches the hand grinder (sent, listing it), 'tea' matches
    nothing (skipped as no_products, never sent with an empty list)."""
    from engine.tools.demo import catalogue

    url = database_url(backend, tmp_path)
    monkeypatch.setenv("ENGINE_WAREHOUSE_URL", url)
    root = copy_project(tmp_path / "project")
    yesterday = NOW - timedelta(days=1)
    load_history(url, products=catalogue(),
                 customers=[{"customer_id": c, "email": f"c{c}@shop.test", "first_name": "C", "timezone": "UTC",
                             "created_at": NOW - timedelta(days=90)} for c in (1, 2)],
                 events=[{"event_id": 1, "customer_id": 1, "type": "search", "occurred_at": yesterday, "search_query": "grinder"},
                         {"event_id": 2, "customer_id": 2, "type": "search", "occurred_at": yesterday, "search_query": "tea"}])
    project: Project = load_project(root)
    reconciler = Reconciler(project)
    try:
        report = reconciler.run_once(datetime(2025, 1, 10, 9, 0, tzinfo=timezone.utc), [project.campaign("search-abandonment")])
    finally:
        reconciler.close()
    assert report.counts[("search-abandonment", "results", "sent")] == 1
    assert report.counts[("search-abandonment", "results", "skipped:no_products")] == 1
    sent = list((root / "var/outbox/email").glob("*.eml"))
    assert [p.name for p in sent] == ["search-abandonment_results_1_2025-01-09.eml"]
    body = sent[0].read_text()
    assert "Hand grinder (89.00 EUR): https://beanandbrew.example/p/5" in body


def test_check_warehouse_names_incomplete_products_and_unknown_categories(tmp_path, monkeypatch):
    from engine.tools.introspect import check_warehouse

    url = database_url("duckdb", tmp_path)
    monkeypatch.setenv("ENGINE_WAREHOUSE_URL", url)
    root = copy_project(tmp_path / "project")
    product = {"url": "https://shop.test/p", "image": "https://shop.test/i.jpg", "price": 5, "category": "coffee", "in_stock": True}
    load_history(url, products=[{**product, "product_id": 1, "name": "Beans"},
                                {**product, "product_id": 2, "name": "Mug", "image": None},
                                {**product, "product_id": 3, "name": "Cup", "image": ""},
                                {**product, "product_id": 4, "name": "Kettle", "price": None}],
                 order_items=[{"order_id": 1, "product_id": 1, "category": "coffee"},
                              {"order_id": 1, "product_id": 9, "category": "tea"}])
    warnings = [f"{i.file}:{i.line}: {i.message}" for i in check_warehouse(root) if i.severity == "warning"]
    assert any("2 product(s) have no image (e.g. 2, 3)" in w for w in warnings), warnings
    assert any("1 product(s) have a NULL price (e.g. 4)" in w for w in warnings), warnings
    assert any("order lines have categories no product has: 'tea'" in w for w in warnings), warnings
    line = next(n for n, text in enumerate((root / "engine.yaml").read_text().splitlines(), 1) if text.startswith("  products:"))
    assert all(w.split(":")[1] == str(line) for w in warnings if "product" in w), warnings
