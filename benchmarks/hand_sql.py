"""The plan of two campaigns beside a hand-written SQL that finds the same due sets (issue 15 target:
the plan <= 1.5x the hand-written SQL, measured in the same run).

The campaigns are the shipped ``second-order`` (seven days after a customer's first order, unless
they ordered again; two days fresh) and ``re-engage`` (entering the at-risk segment: among customers
who ordered within six calendar months, the 60 % whose last order is the oldest; its first step is
due on entry, which on an empty ledger is now; an email, so to customers with an address). What a person would write for "who gets these today":
one GROUP BY of the orders for each, the at-risk share ranked over it, the last order's id looked up.
Written for DuckDB and PostgreSQL (interval arithmetic); the due sets are asserted equal to the
engine's (its messages that are not skipped) before anything is timed.
"""
from __future__ import annotations

import gc
import statistics
import time
from datetime import datetime, timedelta

CAMPAIGNS = ("second-order", "re-engage")


def hand_sql(now: datetime) -> str:
    """(campaign, step, customer_id, trigger_key) of both campaigns' due messages at ``now`` (empty ledger)."""
    at = f"TIMESTAMP '{now.replace(tzinfo=None).isoformat(sep=' ')}'"
    due_from, due_to = f"{at} - INTERVAL '9 days'", f"{at} - INTERVAL '7 days'"
    return f"""
WITH per_customer AS (
    SELECT customer_id, COUNT(*) AS orders, MIN(created_at) AS first_at, MAX(created_at) AS last_at,
           MIN(order_id) AS first_order
    FROM orders WHERE created_at <= {at} GROUP BY customer_id
), active AS (
    SELECT customer_id, last_at,
           ROW_NUMBER() OVER (ORDER BY last_at, customer_id) AS position, COUNT(*) OVER () AS population
    FROM per_customer WHERE last_at > {at} - INTERVAL '6 months'
), at_risk AS (
    SELECT customer_id, last_at FROM active WHERE position * 100 <= population * 60
)
SELECT 'second-order' AS campaign, 'nudge' AS step, CAST(p.customer_id AS VARCHAR) AS customer_id,
       CAST(p.first_order AS VARCHAR) AS trigger_key
FROM per_customer p JOIN customers c ON c.customer_id = p.customer_id
WHERE p.orders = 1 AND p.first_at > {due_from} AND p.first_at <= {due_to} AND c.email IS NOT NULL
UNION ALL
SELECT 're-engage', 'miss-you', CAST(r.customer_id AS VARCHAR), CAST(MAX(o.order_id) AS VARCHAR)
FROM at_risk r JOIN orders o ON o.customer_id = r.customer_id AND o.created_at = r.last_at
WHERE EXISTS (SELECT 1 FROM customers c WHERE c.customer_id = r.customer_id AND c.email IS NOT NULL)
GROUP BY r.customer_id
"""


def _hand_rows(warehouse, now: datetime) -> set[tuple]:
    return {tuple(str(v) for v in row) for rows in warehouse.stream(hand_sql(now)) for row in rows}


def _engine_rows(reconciler, now: datetime, campaigns) -> set[tuple]:
    return {(m.campaign, m.step, m.customer_id, m.trigger_key)
            for batch in reconciler.due(now, campaigns) for m in batch if m.action != "skip"}


def measure_hand_sql(reconciler, now: datetime, repeat: int, floor: float) -> list[dict]:
    """The plan of the two campaigns with the shared order rows (issue 15.2) and without (every
    campaign scanning the orders itself, before 15.2), and the hand-written SQL, in turns; and the plan
    with the shared rows again with what the process holds frozen (``engine.heap.settle``) as ``engine
    plan`` and ``engine run`` freeze it once start-up is done (``cli.common.open_reconciler``): a
    library caller's process is measured by the first rows, the CLI's by the last (its collector's
    full collections walk only what the plan made). The frozen turn hands the objects back after it (unless
    the caller had frozen them)."""
    from engine import heap
    from engine.sql import compile as compile_

    campaigns = [reconciler.project.campaign(name) for name in CAMPAIGNS]
    hand = _hand_rows(reconciler.warehouse, now)
    for on in (True, False):
        compile_.SHARE_ROWS = on
        try:
            engine = _engine_rows(reconciler, now, campaigns)
        finally:
            compile_.SHARE_ROWS = True
        if engine != hand:
            raise SystemExit(f"the hand-written SQL finds other due messages than the engine (shared rows {on}): "
                             f"{len(hand - engine)} only by hand, {len(engine - hand)} only by the engine, "
                             f"e.g. {sorted(hand ^ engine)[:3]}")
    times: dict[str, list[float]] = {"hand": [], "shared": [], "own": [], "frozen": []}
    thawed = gc.get_freeze_count() == 0  # a caller that froze its process already keeps it frozen throughout
    #: CPU seconds of the process (DuckDB's threads included): what the load of other processes disturbs least
    cpu: dict[str, list[float]] = {name: [] for name in times}
    try:
        for _ in range(max(repeat, 3)):
            for name in times:
                compile_.SHARE_ROWS = name != "own"
                if name == "frozen" and thawed:
                    heap.settle(collect=False)
                started, started_cpu = time.perf_counter(), time.process_time()
                if name == "hand":
                    _hand_rows(reconciler.warehouse, now)
                else:
                    _engine_rows(reconciler, now, campaigns)
                times[name].append(time.perf_counter() - started)
                cpu[name].append(time.process_time() - started_cpu)
                if name == "frozen" and thawed:
                    heap.release()
    finally:
        compile_.SHARE_ROWS = True
    hand_s, shared_s, own_s = (statistics.median(times[name]) for name in ("hand", "shared", "own"))
    hand_cpu, shared_cpu, own_cpu, frozen_cpu = (statistics.median(cpu[name]) for name in ("hand", "shared", "own", "frozen"))
    frozen_s = statistics.median(times["frozen"])
    per = ", ".join(f"{name} {sum(1 for row in hand if row[0] == name):,}" for name in CAMPAIGNS)
    return [
        {"what": "hand-written SQL: second-order + re-engage", "rows": len(hand), "seconds": hand_s, "floor": floor,
         "note": f"the engine's due sets exactly ({per}); median of turns with the rows below; "
                 f"CPU {hand_cpu:.3f} s"},
        {"what": "  plan of the same two campaigns (shared order rows, 15.2)", "rows": len(hand), "seconds": shared_s,
         "floor": floor, "note": f"x{shared_s / hand_s:.2f} of the hand-written SQL (target <= 1.5x); "
                                 f"CPU x{shared_cpu / hand_cpu:.2f}"},
        {"what": "  plan of the same two, each campaign scanning orders (before 15.2)", "rows": len(hand),
         "seconds": own_s, "floor": floor, "note": f"x{own_s / hand_s:.2f} of the hand-written SQL; "
                                                   f"CPU x{own_cpu / hand_cpu:.2f}"},
        {"what": "  plan of the same two (shared rows), start-up frozen as engine plan", "rows": len(hand),
         "seconds": frozen_s, "floor": floor, "note": f"x{frozen_s / hand_s:.2f} of the hand-written SQL "
                                                      f"(target <= 1.5x); CPU x{frozen_cpu / hand_cpu:.2f}"},
    ]


def measure_shared_rows(reconciler, now: datetime, repeat: int, floor: float, alternated) -> list[dict]:
    """The plan of every campaign with the shared per-order rows (15.2) and with every campaign
    scanning its trigger source itself, in turns (``alternated``: run.py's)."""
    from engine.sql import compile as compile_

    shared, own = alternated(reconciler, now, repeat, lambda on: setattr(compile_, "SHARE_ROWS", on))
    return [{"what": "  same plan, shared per-order rows (15.2)", "rows": None, "seconds": shared, "floor": floor,
             "note": "median of turns with the row below"},
            {"what": "  same plan, each campaign scanning its source (before 15.2)", "rows": None, "seconds": own,
             "floor": floor, "note": f"shared rows: x{own / shared:.2f} faster ({own - shared:.3f} s less per pass)"}]


def measure_scans(reconciler, now: datetime) -> list[dict]:
    """Sequential scans of each source per pass (DuckDB's plans), with and without the shared order rows."""
    import scans
    from engine.sql import compile as compile_

    counted = {}
    try:
        for on in (False, True):
            compile_.SHARE_ROWS = on
            counted[on], _ = scans.pass_scans(reconciler, now)
    finally:
        compile_.SHARE_ROWS = True
    tables = ("orders", "events", "checkouts", "customers")
    return [{"what": "sequential scans per pass (all campaigns, DuckDB plans)", "rows": None, "seconds": None,
             "note": "; ".join(f"{t} {counted[True][t]} (before 15.2: {counted[False][t]})" for t in tables)}]
