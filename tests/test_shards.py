"""A replica's shard (``--shard i/n``) is kept by the due queries themselves (issue 21).

Each replica used to run every due query in full and throw away the other replicas' customers in
Python (``plan.shard_of``). Now the query's WHERE keeps only the customers whose stable hash
(``decide.hash32``, computed by the warehouse: engine.sql.hashing) falls in its shard: the same
customers as before, so the replicas' plans still add up to the whole plan with nothing twice,
and only a replica's own rows reach Python. With the shard in SQL a replica's pass also records
its settled skips set-based (before, a shard kept the row-by-row path).
"""
from __future__ import annotations

import pytest

from conftest import copy_project, database_url
from engine import Reconciler, load_project
from engine.clock import parse_instant
from engine.run import plan, settle
from engine.run.messages import PassReport
from engine.state.tables import LEDGER_TABLE
from engine.tools.demo import build_demo

NOW = parse_instant("2025-01-10T00:00:00Z")
REPLICAS = 2


def _plan(root, shard, monkeypatch) -> tuple[set, list[str]]:
    """(message keys with their action and reason, the customer id of every row that reached Python)."""
    reached: list[str] = []
    decide = plan.decide_rows

    def watched(campaign, rows, now, config, layout):
        reached.extend(str(row[layout.customer_id]) for row in rows)
        return decide(campaign, rows, now, config, layout)

    reconciler = Reconciler(load_project(root), shard=shard)
    try:
        with monkeypatch.context() as patch:
            patch.setattr(plan, "decide_rows", watched)
            keys = {(m.key, m.customer_id, m.action, m.reason) for batch in reconciler.due(NOW) for m in batch}
    finally:
        reconciler.close()
    return keys, reached


@pytest.mark.parametrize("backend", ["duckdb", "sqlite"])
def test_the_replicas_plans_add_up_to_the_whole_plan_and_only_their_rows_reach_python(tmp_path, monkeypatch, backend):
    url = database_url(backend, tmp_path)
    build_demo(url, seed=42, customers=600, anchor="2025-01-10T00:00:00Z")
    monkeypatch.setenv("ENGINE_WAREHOUSE_URL", url)
    root = copy_project(tmp_path / "project")
    assert plan.shard_in_sql(load_project(root).config)
    whole, whole_rows = _plan(root, None, monkeypatch)
    parts = []
    for index in range(REPLICAS):
        keys, reached = _plan(root, (index, REPLICAS), monkeypatch)
        assert {plan.shard_of(customer, REPLICAS) for customer in reached} == {index}  # cut in SQL
        assert {plan.shard_of(customer, REPLICAS) for _, customer, _, _ in keys} == {index}
        assert keys == {k for k in whole if plan.shard_of(k[1], REPLICAS) == index}  # the customers of before
        parts.append((keys, reached))
    assert len(whole) > 100 and sum(len(keys) for keys, _ in parts) == len(whole)
    assert sum(len(reached) for _, reached in parts) == len(whole_rows)


def test_a_replica_records_its_settled_skips_in_sql(tmp_path, monkeypatch):
    """Only its customers' skips, exactly those a pass of the whole shop records for them."""
    url = database_url("duckdb", tmp_path)
    build_demo(url, seed=42, customers=600, anchor="2025-01-10T00:00:00Z")
    monkeypatch.setenv("ENGINE_WAREHOUSE_URL", url)
    root = copy_project(tmp_path / "project")
    settled = {}
    for shard in (None, (1, REPLICAS)):
        reconciler = Reconciler(load_project(root), shard=shard)
        try:
            reconciler.ledger.db.execute(f"DELETE FROM {LEDGER_TABLE}")
            report = PassReport(now=NOW)
            with monkeypatch.context() as patch:
                patch.setattr(settle, "SETTLE_FROM", 0)
                for _ in reconciler.due(NOW, report=report):
                    pass
            settled[shard] = {(r[0], r[1]) for r in reconciler.ledger.db.fetch_all(
                f"SELECT message_key, customer_id FROM {LEDGER_TABLE} WHERE status = 'skipped'")}
        finally:
            reconciler.close()
    mine = {k for k in settled[None] if plan.shard_of(k[1], REPLICAS) == 1}
    assert len(mine) > 20 and settled[(1, REPLICAS)] == mine
