"""A frequency cap picks among one customer's instances of a campaign the same ones at every run, on every
engine, whatever order the warehouse returns the rows in: those the sorted listing shows first.

The shop: customers with two or three abandoned checkouts each, all due at once for a campaign on every
checkout, under a cap of one message a day, so the cap lets one of each customer's checkouts through. The
listing of every message (``Reconciler.due(ordered=True)``: by trigger instant, customer, trigger key,
step) lets the earliest through. The checkouts are stored newest first, with 130,000 completed ones
between a customer's checkouts (several DuckDB row groups, read on four threads): before the pass counted
each customer's rows (``due.counts_customer_rows``, ``plan.in_customer_order``) it let through whichever
checkout the warehouse returned first - here the newest of 2,000 customers out of 2,000, at every run.
Five passes (``run_once`` to the file outbox), each on a fresh ledger, must send exactly the listing's
choice, and so must the plan (the same rows as a pass reads them), and a pass on SQLite and on PostgreSQL.
"""
from __future__ import annotations

import os
import shutil
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from conftest import copy_project, database_url, load_history, write
from engine.model import FrequencyCap
from engine.run.reconcile import Reconciler
from engine.spec.project import load_project
from engine.sql.due import CUSTOMER_ROWS, due_query
from engine.state.ledger import ledger_table

NOW = datetime(2025, 3, 1, 12, tzinfo=timezone.utc)
CUSTOMERS = 2_000
#: completed checkouts stored between a customer's abandoned ones (in DuckDB: another row group)
COMPLETED = 130_000
RUNS = 5
EVERY_CART = """
    name: every-cart
    trigger: {checkout_abandoned: {}}
    steps:
      - id: reminder
        delay: 1h
        freshness: 1d
        channel: email
        template: second-order/nudge.email.j2
"""

Sends = set[tuple[str, str]]  # (customer, trigger key)


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    root = copy_project(tmp_path_factory.mktemp("capped") / "project")
    for path in (root / "campaigns.d").glob("*.yaml"):
        path.unlink()
    config = root / "engine.yaml"  # several DuckDB threads: unsorted rows come in the order the threads give them
    config.write_text(config.read_text().replace("warehouse:\n", "warehouse:\n  duckdb: {threads: 4}\n", 1)
                      + "\npolicies:\n  frequency_caps: [{max: 1, per: 1d}]\n")
    write(root / "campaigns.d" / "every-cart.yaml", EVERY_CART)
    return root


def _shop(url: str, completed: int) -> None:
    """Each customer's abandoned checkouts in the last day, the newest stored first (checkout k of every
    customer, then ``completed`` completed ones, then checkout k + 1); some customers' two at one instant;
    every fifth customer's stale one of three days ago."""
    at = NOW.replace(tzinfo=None)
    customers = [{"customer_id": i, "email": f"c{i}@example.com", "created_at": at - timedelta(days=99)}
                 for i in range(1, CUSTOMERS + 1)]
    checkouts = []
    for k in range(3):
        checkouts += [{"checkout_id": 100 * (3 - k) + 1_000 * i, "customer_id": i, "total": 5.0,
                       "created_at": at - timedelta(hours=2 + (k if i % 7 else 0) * 5, minutes=i % 60)}
                      for i in range(1, CUSTOMERS + 1) if k < 2 + i % 2]
        checkouts += [{"checkout_id": 10_000_000 + k * completed + j, "customer_id": 1 + j % CUSTOMERS, "total": 1.0,
                       "created_at": at - timedelta(days=30), "completed_at": at - timedelta(days=30)}
                      for j in range(completed)]
    # every fifth customer's checkout of three days ago: too old to send (stale), settled in SQL, never sent
    checkouts += [{"checkout_id": 50 + 1_000 * i, "customer_id": i, "total": 5.0, "created_at": at - timedelta(days=3)}
                  for i in range(5, CUSTOMERS + 1, 5)]
    load_history(url, customers=customers, checkouts=checkouts)


@pytest.fixture(scope="module")
def duckdb_shop(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("capped-shop") / "shop.duckdb"
    _shop(f"duckdb:///{path}", COMPLETED)
    return path


def _reconciler(root: Path, url: str, monkeypatch, writes: bool = True) -> Reconciler:
    monkeypatch.setenv("ENGINE_WAREHOUSE_URL", url)
    return Reconciler(load_project(root), writes=writes)


def _listed(root: Path, url: str, monkeypatch) -> Sends:
    """The sends of the sorted listing (what ``engine export`` and ``engine plan --format csv`` show)."""
    reconciler = _reconciler(root, url, monkeypatch, writes=False)
    try:
        return {(m.customer_id, m.trigger_key) for batch in reconciler.due(NOW, ordered=True) for m in batch
                if m.action == "send"}
    finally:
        reconciler.close()


def _pass(root: Path, url: str, monkeypatch) -> tuple[Sends, Sends]:
    """(the plan's sends, the sends a pass recorded) on the ledger at ``url`` (fresh). The plan as ``engine
    plan`` runs it, its settled skips counted in SQL (``settled="count"``: the counted rows are not among
    those a customer's count holds back), must send what the plan with every skip a row sends."""
    from engine.run.settle import SettledCounts

    reconciler = _reconciler(root, url, monkeypatch)
    try:
        planned = {(m.customer_id, m.trigger_key) for batch in reconciler.due(NOW) for m in batch if m.action == "send"}
        counts = SettledCounts()
        counted = {(m.customer_id, m.trigger_key) for batch in reconciler.due(NOW, settled_counts=counts)
                   for m in batch if m.action == "send"}
        assert counted == planned and sum(counts.by_channel.values()) > 0  # the counted statement ran
        reconciler.run_once(NOW)
        rows = reconciler.ledger.rows_where(ledger_table.c.status == "sent", limit=10 * CUSTOMERS)
    finally:
        reconciler.close()
    return planned, {(row["customer_id"], row["trigger_key"]) for row in rows}


def _earliest(listed: Sends) -> None:
    """The listing's choice: each customer's earliest checkout (of those at one instant, the first key),
    stored last."""
    assert len(listed) == CUSTOMERS
    assert dict(listed) == {str(i): str(min(100 * (3 - k) + 1_000 * i for k in range(2 + i % 2)))
                            for i in range(1, CUSTOMERS + 1)}


def test_passes_send_the_instances_the_sorted_listing_lets_through(project, duckdb_shop, tmp_path, monkeypatch):
    listed = _listed(project, f"duckdb:///{duckdb_shop}", monkeypatch)
    _earliest(listed)
    for run in range(RUNS):
        copy = tmp_path / f"run{run}.duckdb"  # the ledger shares the shop's file: a fresh one each run
        shutil.copy(duckdb_shop, copy)
        os.chmod(copy, 0o644)
        planned, sent = _pass(project, f"duckdb:///{copy}", monkeypatch)
        assert planned == listed, f"run {run}: the plan chose {len(planned - listed)} other instances"
        assert sent == listed, f"run {run}: the pass sent {len(sent - listed)} other instances"


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_other_engines_send_the_same_instances(project, backend, tmp_path, monkeypatch):
    url = database_url(backend, tmp_path)
    _shop(url, 0)
    listed = _listed(project, url, monkeypatch)
    _earliest(listed)
    planned, sent = _pass(project, url, monkeypatch)
    assert planned == listed
    assert sent == listed


def _counts(project_root: Path, monkeypatch, campaign_text: str, caps: tuple[FrequencyCap, ...]) -> bool:
    """Whether a pass's due query of the campaign ``campaign_text`` under ``caps`` counts its customers' rows."""
    write(project_root / "campaigns.d" / "probe.yaml", campaign_text)
    try:
        project = load_project(project_root)
    finally:
        (project_root / "campaigns.d" / "probe.yaml").unlink()
    config = replace(project.config, frequency_caps=caps)
    query = due_query(project.campaign("probe"), config, NOW, exclude_ledger=True, settled="exclude")
    listing = due_query(project.campaign("probe"), config, NOW, exclude_ledger=True, ordered=True)
    assert CUSTOMER_ROWS not in listing.named_selects  # sorted: nothing to count
    return CUSTOMER_ROWS in query.named_selects


def test_only_campaigns_where_the_order_can_change_what_is_sent_count_their_rows(tmp_path, monkeypatch):
    root = copy_project(tmp_path / "project")
    for path in (root / "campaigns.d").glob("*.yaml"):
        path.unlink()
    daily, sms_only = (FrequencyCap(max=1, per=timedelta(days=1)),), \
        (FrequencyCap(max=1, per=timedelta(days=1), channel="sms"),)
    step = "\n      - id: {id}\n        delay: {delay}\n        freshness: 1d\n        channel: email\n" \
           "        template: second-order/nudge.email.j2"
    every_cart = "name: probe\ntrigger: {checkout_abandoned: {}}\nsteps:" + step.format(id="a", delay="1h")
    assert _counts(root, monkeypatch, every_cart, daily)  # several instances at once under a cap
    assert not _counts(root, monkeypatch, every_cart, ())  # no cap: any order sends them all
    assert not _counts(root, monkeypatch, every_cart, sms_only)  # a cap of a channel it does not send on
    assert not _counts(root, monkeypatch, every_cart + "\nreentry: once", daily)  # sorted by instance anyway
    second = "name: probe\ntrigger: {order_placed: {nth: 2}}\nsteps:" + step.format(id="a", delay="1h")
    assert not _counts(root, monkeypatch, second, daily)  # one second order per customer
    registered = "name: probe\ntrigger: {registration: {}}\nsteps:"
    assert not _counts(root, monkeypatch, registered + step.format(id="a", delay="1d") + step.format(id="b", delay="3d"),
                       daily)  # one instance, and its steps are never fresh at once
    assert _counts(root, monkeypatch, registered + step.format(id="a", delay="1d") + step.format(id="b", delay="36h"),
                   daily)  # two steps of one instance fresh at once
