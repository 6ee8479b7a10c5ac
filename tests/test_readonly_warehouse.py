"""A read-only warehouse with the ledger elsewhere plans exactly what the shared-database setup plans.

The demo shop (``engine demo``'s seed, 2,000 customers) is loaded into DuckDB, SQLite and
PostgreSQL. On each, the shared-database setup (a writable warehouse holding its ledger) lives
through five instants in order, as a reconciler would: segment entries recorded (``run_once``'s
first step), the due set computed, then half of it written to the ledger with the tags its sends
set, so later instants prove the ledger anti-join, the segment series and ``has_tag()`` on a ledger
carried forward. Then the same history on

  (a) the SQLite warehouse opened read-only (``mode=ro`` URI) with the ledger in PostgreSQL,
  (b) the PostgreSQL warehouse through a role with only SELECT, with the ledger in SQLite,
  (c) the DuckDB warehouse opened read-only with the ledger in another DuckDB file,

must give the same due sets for every shipped campaign (re-engage's at_risk and the has_tag()
campaigns included) at every instant. The warehouse cannot be written through these
connections, so passing proves the engine writes nothing there; the engine state the due
queries join reaches the warehouse as temporary tables of the pass (engine.sql.shipping).
"""
from __future__ import annotations

import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
import sqlalchemy as sa

from conftest import REPO, copy_project
from engine import Reconciler, load_project
from engine.clock import format_instant
from engine.state.ledger import Record
from engine.state.warehouse import Database
from engine.tools.demo import generate_shop, load_shop

CAMPAIGNS = [c.name for c in load_project(REPO).campaigns if c.enabled]
ANCHOR = datetime(2025, 1, 10, tzinfo=timezone.utc)  # the demo's instant
INSTANTS = {label: ANCHOR + delta for label, delta in {
    "-30d": timedelta(days=-30), "anchor": timedelta(0), "+1h": timedelta(hours=1),
    "+7d": timedelta(days=7), "+14d": timedelta(days=14)}.items()}
#: campaigns whose queries join engine state: entries (at_risk) and tags (has_tag)
STATEFUL = ("re-engage", "inactivity", "order-follow-up")

Plan = dict[tuple[str, str], set[tuple]]  # (instant label, campaign) -> due set
#: setup -> seconds for its five instants, for the report
TIMINGS: dict[str, float] = {}


def fill_half(reconciler: Reconciler, messages: list, now: datetime) -> None:
    """Record every skip and every other send (by key), as a pass that stopped half-way would,
    with the tags those sends set (the vip campaign's set_tag)."""
    sends = sorted((m for m in messages if m.action == "send"), key=lambda m: m.key)
    chosen = [m for m in messages if m.action == "skip"] + sends[::2]
    reconciler.ledger.write_new([
        Record(message_key=m.key, campaign=m.campaign, step=m.step, customer_id=m.customer_id,
               trigger_key=m.trigger_key, channel=m.channel, status="sent" if m.action == "send" else "skipped",
               due_at=m.due_at, trigger_at=m.trigger_at, reason=m.reason)
        for m in chosen
    ], now)
    changes = [(m.customer_id, action.kind, action.tag, m.campaign) for m in sends[::2]
               for action in reconciler.project.campaign(m.campaign).step(m.step).actions]
    reconciler.ledger.apply_tags(changes, now)


#: Customers tagged vip before the first instant (every 7th id), so that has_tag('vip') decides from the
#: start: inactivity leaves them out, order-follow-up's thank-you picks its vip variant for them.
SEEDED_VIPS = [str(n) for n in range(7, 2001, 7)]


def live_through_instants(reconciler: Reconciler) -> Plan:
    plan: Plan = {(label, name): set() for label in INSTANTS for name in CAMPAIGNS}
    reconciler.ledger.apply_tags([(c, "set_tag", "vip", "seed") for c in SEEDED_VIPS], INSTANTS["-30d"])
    for label, now in INSTANTS.items():
        reconciler.enter_segments(now)
        messages = [m for batch in reconciler.due(now) for m in batch]
        for m in messages:
            plan[(label, m.campaign)].add((m.campaign, m.step, m.customer_id, m.trigger_key, format_instant(m.due_at),
                                           m.action, m.reason, m.variant, m.channel))
        fill_half(reconciler, messages, now)
    return plan


def _project(directory: Path, ledger_url: str | None) -> Path:
    root = copy_project(directory / "project")
    if ledger_url is not None:
        text = (root / "engine.yaml").read_text().replace("demo:", f"ledger:\n  url: {ledger_url}\n\ndemo:", 1)
        (root / "engine.yaml").write_text(text)
    return root


def _plan(name: str, directory: Path, warehouse_url: str, ledger_url: str | None) -> Plan:
    project = _project(directory, ledger_url)
    with pytest.MonkeyPatch.context() as env:
        env.setenv("ENGINE_WAREHOUSE_URL", warehouse_url)
        started = time.monotonic()
        reconciler = Reconciler(load_project(project))
        try:
            return live_through_instants(reconciler)
        finally:
            reconciler.close()
            TIMINGS[name] = time.monotonic() - started


def _load(url: str) -> None:
    db = Database(url)
    load_shop(db, generate_shop(42, 2000, "2025-01-10T00:00:00Z"))
    db.dispose()


def select_only_role(url: str) -> str:
    """A login role that may only SELECT the shop's tables (TEMP stays as PostgreSQL grants it to PUBLIC)."""
    engine = sa.create_engine(url, isolation_level="AUTOCOMMIT")
    database = sa.engine.make_url(url).database
    role = f"reader_{database}"
    with engine.connect() as conn:
        conn.execute(sa.text(f"CREATE ROLE {role} LOGIN"))
        conn.execute(sa.text(f"REVOKE CREATE ON SCHEMA public FROM PUBLIC"))  # the default before PostgreSQL 15
        conn.execute(sa.text(f"GRANT SELECT ON ALL TABLES IN SCHEMA public TO {role}"))
    engine.dispose()
    return sa.engine.make_url(url).set(username=role).render_as_string(hide_password=False)


@pytest.fixture(scope="module")
def plans(tmp_path_factory) -> dict[str, Plan]:
    import pg

    server = pg.server()
    base = tmp_path_factory.mktemp("readonly")
    shops = {"duckdb": f"duckdb:///{base / 'shop.duckdb'}", "sqlite": f"sqlite:///{base / 'shop.db'}",
             "postgres": server.new_database()}
    shared = {"duckdb": f"duckdb:///{base / 'shared.duckdb'}", "sqlite": f"sqlite:///{base / 'shared.db'}",
              "postgres": server.new_database()}
    for url in [*shops.values(), *shared.values()]:
        _load(url)
    result = {}
    for backend, url in shared.items():  # the reference: each warehouse writable, holding its ledger
        result[f"shared {backend}"] = _plan(f"shared {backend}", base / f"shared-{backend}", url, None)
    result["(a) sqlite ro + postgres ledger"] = _plan(
        "(a) sqlite ro + postgres ledger", base / "a", f"sqlite:///file:{base / 'shop.db'}?mode=ro&uri=true",
        server.new_database())
    result["(b) postgres select-only + sqlite ledger"] = _plan(
        "(b) postgres select-only + sqlite ledger", base / "b", select_only_role(shops["postgres"]),
        f"sqlite:///{base / 'b-ledger.db'}")
    result["(c) duckdb ro + duckdb ledger"] = _plan(
        "(c) duckdb ro + duckdb ledger", base / "c", f"duckdb:///{base / 'shop.duckdb'}?access_mode=read_only",
        f"duckdb:///{base / 'c-ledger.duckdb'}")
    return result


def _difference(a: set, b: set) -> str:
    lines = [f"  only in the reference: {row}" for row in sorted(a - b, key=str)[:10]]
    lines += [f"  only in this setup:    {row}" for row in sorted(b - a, key=str)[:10]]
    return "\n".join(lines)


@pytest.mark.parametrize("setup", ["(a) sqlite ro + postgres ledger", "(b) postgres select-only + sqlite ledger",
                                   "(c) duckdb ro + duckdb ledger"])
def test_a_read_only_warehouse_plans_what_the_shared_database_plans(plans, setup):
    reference = plans[f"shared {setup.split()[1]}"]
    for label in INSTANTS:
        for campaign in CAMPAIGNS:
            expected, got = reference[(label, campaign)], plans[setup][(label, campaign)]
            assert got == expected, f"{campaign} at {label}: {setup}\n{_difference(expected, got)}"


def test_the_shared_setups_agree_and_every_stateful_campaign_has_work(plans, capsys):
    shared = [plans[f"shared {b}"] for b in ("duckdb", "sqlite", "postgres")]
    assert shared[0] == shared[1] == shared[2]
    for name in STATEFUL:
        assert name in CAMPAIGNS
        assert any(shared[0][(label, name)] for label in INSTANTS), f"nothing due for {name}"
    # has_tag('vip') decides: order-follow-up's vip variant is chosen, inactivity leaves seeded VIPs out
    vips = set(SEEDED_VIPS)
    assert any(row[7] == "vip" for label in INSTANTS for row in shared[0][(label, "order-follow-up")])
    assert any(shared[0][(label, "inactivity")] for label in INSTANTS)
    assert not any(row[2] in vips for label in INSTANTS for row in shared[0][(label, "inactivity")])
    with capsys.disabled():
        sizes = {label: sum(len(shared[0][(label, c)]) for c in CAMPAIGNS) for label in INSTANTS}
        print(f"\ndue set sizes per instant (all setups): {sizes}")
        print("seconds per setup (5 instants): " + ", ".join(f"{k}: {v:.1f}" for k, v in TIMINGS.items()))


def test_values_lists_plan_what_temporary_tables_plan(tmp_path, monkeypatch):
    """Where sessions have no temporary tables (BigQuery, Spark, Trino) the state travels as a VALUES
    CTE in each query; forced here on DuckDB, it must plan what the temporary tables plan."""
    from engine.sql import shipping

    url = f"duckdb:///{tmp_path / 'shop.duckdb'}"
    db = Database(url)
    load_shop(db, generate_shop(7, 600, "2025-01-10T00:00:00Z"))
    db.dispose()
    plans = {}
    for transport in ("temporary", "values"):
        monkeypatch.setattr(shipping, "transport", lambda dialect, chosen=transport: chosen)
        plans[transport] = _plan(f"duckdb {transport}", tmp_path / transport, f"{url}?access_mode=read_only",
                                 f"sqlite:///{tmp_path / f'{transport}-ledger.db'}")
    assert plans["values"] == plans["temporary"]
    for name in ("re-engage", "inactivity"):
        assert any(plans["values"][(label, name)] for label in INSTANTS), f"nothing due for {name}"
    assert any(row[7] == "vip" for label in INSTANTS for row in plans["values"][(label, "order-follow-up")])
