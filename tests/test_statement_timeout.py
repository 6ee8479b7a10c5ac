"""A warehouse that times out (issue 21, bad input): engine.yaml ``warehouse.statement_timeout``.

A campaign whose query runs past the limit is stopped there - PostgreSQL by its own
``statement_timeout``, DuckDB and SQLite by the driver's ``interrupt()`` - and fails alone with an
``Error:`` line naming it and the setting; ``engine run --once`` exits 1, the other campaigns send,
nothing of the stopped campaign is recorded, and the next pass (the query fast again) sends the rest
exactly once to a real SMTP server on loopback. The slow query is real: the checkouts source mapped
as a query that sleeps (``pg_sleep``) or multiplies two large ranges (DuckDB, SQLite). The failure is
counted by reason (``engine_warehouse_errors_total{reason}``): a timeout is not an unreachable server.
"""
from __future__ import annotations

import subprocess
import sys
import time
from collections import Counter
from datetime import timedelta

import pytest

from conftest import write
from engine.errors import WarehouseError
from engine.service.metrics import Metrics
from engine.state.warehouse import Database
from servers import SmtpSink, free_port
from test_delivery import T0, campaign, configure, customers, orders, project  # noqa: F401 - fixture

ENGINE = [sys.executable, "-c", "from engine.cli.main import main; main()"]
N = 4
CART = """\
name: cart
trigger: {checkout_abandoned: {}}
steps:
  - {id: mail, delay: 1h, freshness: 1d, channel: email, template: second-order/nudge.email.j2}
"""
#: a checkouts source that takes far longer than the limit (minutes, if nothing stopped it)
SLOW_CHECKOUTS = {
    "postgres": "SELECT * FROM checkouts WHERE EXISTS (SELECT 1 FROM pg_sleep(600))",
    "duckdb": "SELECT * FROM checkouts WHERE (SELECT sum(a.range * b.range) FROM range(400000) a, range(400000) b) > 0",
}
AS_OF = (T0 + timedelta(hours=1, minutes=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
LIMIT_S = 1  # warehouse.statement_timeout: 1s
BOUND_S = 60  # a pass must end well within this however loaded the machine (the slow query takes minutes)


def checkouts(n):
    """An abandoned checkout per customer, a minute after their order (so the order does not stop it)."""
    return [{"checkout_id": 100 + i, "customer_id": i, "created_at": T0 + timedelta(minutes=1), "completed_at": None,
             "total": 9} for i in range(1, n + 1)]


def map_checkouts(root, query: str | None) -> None:
    """The checkouts source as ``query`` (None: the table again)."""
    text = (root / "engine.yaml").read_text()
    start = text.index("  checkouts:\n")
    end = text.index("\n  checkout_items:", start)
    source = f'    query: "{query}"\n' if query else "    table: checkouts\n"
    text = text[:start] + "  checkouts:\n" + source + "    columns: {completed_at: completed_at, total: total}" + text[end:]
    (root / "engine.yaml").write_text(text)


#: a segment campaign: before each pass plans, its entries are one INSERT ... SELECT over the orders
AT_RISK = """\
name: drifting
trigger: {at_risk: {window: 6mo, percent: 60}}
steps:
  - {id: mail, delay: 0m, freshness: 2d, channel: email, template: second-order/nudge.email.j2}
"""
SLOW_ORDERS = {backend: query.replace("checkouts", "orders", 1) for backend, query in SLOW_CHECKOUTS.items()}


def map_orders(root, query: str) -> None:
    """The orders source as ``query``."""
    text = (root / "engine.yaml").read_text()
    start = text.index("  orders:\n")
    end = text.index("\n    columns:", start)
    (root / "engine.yaml").write_text(text[:start] + f'  orders:\n    query: "{query}"' + text[end:])


def with_timeout(root, value: str) -> None:
    text = (root / "engine.yaml").read_text()
    (root / "engine.yaml").write_text(text.replace("warehouse:\n", f"warehouse:\n  statement_timeout: {value}\n", 1))


def run_once(root) -> tuple[subprocess.CompletedProcess, float]:
    started = time.monotonic()
    result = subprocess.run(ENGINE + ["--project", str(root), "run", "--once", "--as-of", AS_OF, "--quiet"],
                            capture_output=True, text=True, timeout=3 * BOUND_S)
    return result, time.monotonic() - started


def assert_stopped_alone(result: subprocess.CompletedProcess, seconds: float, campaign: str) -> None:
    """The pass ended within the bound, exit 1, one ``Error:`` line naming ``campaign`` and the limit."""
    assert result.returncode == 1, result.stdout + result.stderr
    assert seconds < BOUND_S, f"the pass took {seconds:.0f} s: the limit did not stop the statement"
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, result.stderr
    assert f"campaign {campaign} failed" in errors[0] and "warehouse.statement_timeout (1 s)" in errors[0], errors[0]
    assert "Traceback" not in result.stderr


def keys(name: str) -> list[str]:
    instance = (lambda i: 100 + i) if name == "cart" else (lambda i: i)
    return [f"{name}:mail:{i}:{instance(i)}" for i in range(1, N + 1)]


@pytest.mark.parametrize("project", ["postgres", "duckdb"], indirect=True)
def test_a_query_past_the_limit_fails_its_campaign_alone_and_the_next_pass_sends_the_rest_once(project):
    backend = "postgres" if project.url.startswith("postgresql") else "duckdb"
    with SmtpSink() as smtp:
        configure(project, smtp.port)
        project.load({"first": campaign("first"), "cart": CART},
                     customers=customers(N), orders=orders(N), checkouts=checkouts(N))
        with_timeout(project, f"{LIMIT_S}s")
        map_checkouts(project, SLOW_CHECKOUTS[backend])

        assert_stopped_alone(*run_once(project), "cart")
        assert sorted(smtp.keys()) == sorted(keys("first"))  # the other campaign sent, the stopped one nothing

        map_checkouts(project, None)  # the warehouse is fast again
        result, _ = run_once(project)
        assert result.returncode == 0, result.stdout + result.stderr
        assert Counter(smtp.keys()) == Counter(keys("first") + keys("cart"))  # the rest, and each message once


@pytest.mark.parametrize("project", ["postgres", "duckdb"], indirect=True)
def test_a_segments_entries_past_the_limit_fail_their_campaign_alone(project):
    """The segment entries a pass records before it plans (an INSERT ... SELECT over the orders) run
    under the limit too: at 1M orders on SQLite that statement once ran for minutes unbounded."""
    backend = "postgres" if project.url.startswith("postgresql") else "duckdb"
    with SmtpSink() as smtp:
        configure(project, smtp.port)
        project.load({"drifting": AT_RISK}, customers=customers(N), orders=orders(N))
        with_timeout(project, f"{LIMIT_S}s")
        map_orders(project, SLOW_ORDERS[backend])
        assert_stopped_alone(*run_once(project), "drifting")
        assert smtp.keys() == []


def test_sqlite_is_interrupted_and_its_connection_stays_usable(tmp_path):
    db = Database(f"sqlite:///{tmp_path / 'shop.db'}", statement_timeout=0.5)
    slow = ("WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 1000000000) "
            "SELECT count(*) FROM n")
    started = time.monotonic()
    with db.session() as session:
        with pytest.raises(WarehouseError, match=r"statement_timeout \(0\.5 s\)") as raised:
            list(session.stream(slow))
        assert raised.value.reason == "timeout"
        assert [tuple(r) for batch in session.stream("SELECT 41 + 1") for r in batch] == [(42,)]
    assert time.monotonic() - started < BOUND_S
    assert db.take_failures() == {"timeout": 1} and db.take_failures() == {}
    db.dispose()


def test_a_late_timer_never_interrupts_the_next_statement(tmp_path):
    """Many fast statements under a limit just above their time: none is interrupted afterwards."""
    db = Database(f"duckdb:///{tmp_path / 'shop.duckdb'}", statement_timeout=0.05)
    with db.session() as session:
        for i in range(200):
            assert [tuple(r) for batch in session.stream(f"SELECT {i}") for r in batch] == [(i,)]
            time.sleep(0.001)
    assert db.take_failures() == {}
    db.dispose()


def test_an_unreachable_server_is_counted_apart_from_a_timeout(tmp_path):
    db = Database(f"postgresql+psycopg://engine@127.0.0.1:{free_port()}/shop", statement_timeout=1)
    with pytest.raises(WarehouseError, match="cannot connect to") as raised:
        db.fetch_all("SELECT 1")
    assert raised.value.reason == "unreachable" and "statement_timeout" not in str(raised.value)
    metrics = Metrics()
    metrics.record_warehouse_errors(db.take_failures())
    metrics.record_warehouse_errors({"timeout": 2})
    text = metrics.exposition().decode()
    assert 'engine_warehouse_errors_total{reason="unreachable"} 1.0' in text
    assert 'engine_warehouse_errors_total{reason="timeout"} 2.0' in text
    assert 'engine_warehouse_errors_total{reason="query"} 0.0' in text


def test_a_warehouse_the_engine_cannot_limit_refuses_the_setting(tmp_path):
    with pytest.raises(WarehouseError, match=r"warehouse\.statement_timeout: the engine cannot limit .* on hive"):
        Database("hive://engine@127.0.0.1:1/shop", statement_timeout=5)


def test_the_setting_is_checked_and_shown(tmp_path):
    from click.testing import CliRunner

    from conftest import copy_project
    from engine.cli.main import main

    root = copy_project(tmp_path / "project")
    with_timeout(root, "2m")
    shown = CliRunner().invoke(main, ["--project", str(root), "config", "show"])
    assert shown.exit_code == 0, shown.output
    assert any(line.split()[:2] == ["warehouse.statement_timeout", "2m"] for line in shown.output.splitlines()), shown.output
    write(root / "engine.yaml", (root / "engine.yaml").read_text().replace("statement_timeout: 2m", "statement_timeout: soon"))
    refused = CliRunner().invoke(main, ["--project", str(root), "validate"])
    assert refused.exit_code == 1 and "statement_timeout" in refused.output, refused.output


@pytest.mark.parametrize("project", ["duckdb"], indirect=True)
def test_the_service_counts_a_timeout_by_reason_on_metrics(project):
    import urllib.request

    from engine.clock import FixedClock, parse_instant
    from engine.service.loop import Service

    with SmtpSink() as smtp:
        configure(project, smtp.port)
        project.load({"first": campaign("first"), "cart": CART},
                     customers=customers(N), orders=orders(N), checkouts=checkouts(N))
        with_timeout(project, f"{LIMIT_S}s")
        map_checkouts(project, SLOW_CHECKOUTS["duckdb"])
        service = Service(project, interval=60, metrics_port=0, clock=FixedClock(parse_instant(AS_OF)))
        try:
            service.start()
            started = time.monotonic()
            report = service.run_pass()
            assert time.monotonic() - started < BOUND_S
            with urllib.request.urlopen(f"http://127.0.0.1:{service.server.port}/metrics", timeout=10) as response:
                exposition = response.read().decode()
        finally:
            service.close()
    assert set(report.failed_campaigns) == {"cart"}
    assert 'engine_warehouse_errors_total{reason="timeout"} 1.0' in exposition
    assert 'engine_warehouse_errors_total{reason="unreachable"} 0.0' in exposition
    assert 'engine_campaign_failures_total{campaign="cart"} 1.0' in exposition
    assert 'engine_passes_total{result="incomplete"} 1.0' in exposition
