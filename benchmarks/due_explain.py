"""Each campaign's due statements in a plan, split into planning (EXPLAIN: bind, optimise, plan) and
running (execute + fetch), for two or more checkouts alternately, each in a fresh process.

    python benchmarks/due_explain.py --shop DIR --rounds 3 [--mode counted|include] CHECKOUT CHECKOUT...

``DIR`` is a shop kept by ``run.py --keep DIR`` (its ``shop.duckdb`` and ``project/``). Each checkout
gets its own copy of the shop (the ledger emptied once, as run.py's ``_reset_ledger``). In the child
(``PYTHONPATH`` = the checkout), the plan at the shop's anchor runs ``--plans`` times (the first a
warm-up, not counted) as ``engine plan`` runs it (``counted``: the settled skips counted in SQL) or
with every skip as a row (``include``: ``hand_sql.py``'s plan); every statement the plan streams or
runs with RETURNING is first EXPLAINed on the same connection with the same parameters, then run.
Printed per checkout and campaign: the medians over the counted plans of the EXPLAIN time and of
the statement's own time (both summed over the campaign's statements; wall ms and the process's CPU
ms, DuckDB's threads included), with the load average. DuckDB only.
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def child(shop_dir: Path, db: Path, mode: str, plans: int, campaigns: list[str]) -> None:
    sys.path.insert(0, str(HERE))
    import run as bench

    os.environ["ENGINE_WAREHOUSE_URL"] = f"duckdb:///{db}"
    import sqlalchemy as sa

    import engine
    import engine.run.plan as plan
    from engine.run.settle import SettledCounts
    from engine.state import warehouse

    current = {"campaign": None}
    original_statement = plan.due_statement

    def due_statement(campaign, *args, **kwargs):
        current["campaign"] = campaign.name
        return original_statement(campaign, *args, **kwargs)

    plan.due_statement = due_statement
    timings: dict = collections.defaultdict(lambda: [0.0, 0.0, 0.0, 0.0])  # explain wall, cpu; run wall, cpu

    def explain(session, sql, parameters):
        started, cpu = time.perf_counter(), time.process_time()
        session.conn.execute(sa.text("EXPLAIN " + sql), parameters or {}).all()
        entry = timings[current["campaign"]]
        entry[0] += time.perf_counter() - started
        entry[1] += time.process_time() - cpu

    stream, returning = warehouse.Session.stream, warehouse.Session.returning

    def timed_stream(self, sql, batch_size=1000, parameters=None, **options):
        explain(self, sql, parameters)
        entry = timings[current["campaign"]]
        started, cpu = time.perf_counter(), time.process_time()
        for rows in stream(self, sql, batch_size, parameters, **options):
            entry[2] += time.perf_counter() - started
            entry[3] += time.process_time() - cpu
            yield rows
            started, cpu = time.perf_counter(), time.process_time()
        entry[2] += time.perf_counter() - started
        entry[3] += time.process_time() - cpu

    def timed_returning(self, sql, parameters=None):
        explain(self, sql, parameters)
        entry = timings[current["campaign"]]
        started, cpu = time.perf_counter(), time.process_time()
        rows = returning(self, sql, parameters)
        entry[2] += time.perf_counter() - started
        entry[3] += time.process_time() - cpu
        return rows

    project = engine.load_project(shop_dir / "project")
    reconciler = engine.Reconciler(project)
    meta = json.loads((shop_dir / "shop.json").read_text())
    now = bench._naive_anchor(meta["shop"]["anchor"]).replace(tzinfo=bench.timezone.utc)
    chosen = [reconciler.project.campaign(name) for name in campaigns] if campaigns else None
    results: dict = collections.defaultdict(lambda: collections.defaultdict(list))
    messages = []
    for index in range(plans):
        timings.clear()
        warehouse.Session.stream, warehouse.Session.returning = timed_stream, timed_returning
        started, cpu = time.perf_counter(), time.process_time()
        rows = sum(len(batch) for batch in reconciler.due(
            now, chosen, settled_counts=SettledCounts() if mode == "counted" else None))
        wall, cpu = time.perf_counter() - started, time.process_time() - cpu
        warehouse.Session.stream, warehouse.Session.returning = stream, returning
        messages.append(rows)
        if index == 0:
            continue
        for name, (ew, ec, rw, rc) in timings.items():
            for key, value in (("explain", ew), ("explain_cpu", ec), ("run", rw), ("run_cpu", rc)):
                results[name][key].append(value)
        results["(plan)"]["run"].append(wall)
        results["(plan)"]["run_cpu"].append(cpu)
    print(json.dumps({"rows": messages, "load": open("/proc/loadavg").read().split()[:3],
                      "campaigns": {name: {key: statistics.median(values) for key, values in by.items()}
                                    for name, by in results.items()}}))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkouts", nargs="+", type=Path)
    parser.add_argument("--shop", type=Path, required=True)
    parser.add_argument("--work", type=Path, default=Path("var/due_explain"))
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--plans", type=int, default=4, help="plans per process, the first a warm-up (default 4)")
    parser.add_argument("--mode", choices=("counted", "include"), default="counted")
    parser.add_argument("--campaign", action="append", default=[], help="only these campaigns (repeatable)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.shop, args.work = args.shop.resolve(), args.work.resolve()
    if args.child:
        child(args.shop, Path(args.child), args.mode, args.plans, args.campaign)
        return 0
    databases = []
    for index, checkout in enumerate(args.checkouts):
        db = args.work / f"{index}" / "shop.duckdb"
        if not db.exists():
            db.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(args.shop / "shop.duckdb", db)
            _reset(checkout, args.shop, db)
        databases.append(db)
    collected: dict = collections.defaultdict(list)
    for round_ in range(args.rounds):
        for checkout, db in zip(args.checkouts, databases):
            env = {**os.environ, "PYTHONPATH": str(checkout.resolve())}
            command = [sys.executable, str(HERE / "due_explain.py"), "--shop", str(args.shop), "--mode", args.mode,
                       "--plans", str(args.plans), "--child", str(db), "."]
            for name in args.campaign:
                command += ["--campaign", name]
            out = subprocess.run(command, env=env, capture_output=True, text=True)
            if out.returncode:
                print(out.stderr[-3000:])
                return 1
            result = json.loads(out.stdout.strip().splitlines()[-1])
            collected[checkout].append(result)
            plan = result["campaigns"]["(plan)"]
            print(f"round {round_} {checkout}: plan {plan['run'] * 1000:.0f} ms wall, {plan['run_cpu'] * 1000:.0f} ms "
                  f"CPU, rows {result['rows']}, load {' '.join(result['load'])}", flush=True)
    names = sorted({name for results in collected.values() for r in results for name in r["campaigns"]})
    print(f"\nmedians over rounds (ms; mode {args.mode}): explain wall / CPU | run wall / CPU")
    for name in names:
        line = f"{name:28s}"
        for checkout in args.checkouts:
            values = [r["campaigns"].get(name) for r in collected[checkout]]
            values = [v for v in values if v]
            if not values:
                line += " | -"
                continue
            med = {key: statistics.median(v.get(key, 0.0) for v in values) * 1000
                   for key in ("explain", "explain_cpu", "run", "run_cpu")}
            line += f" | {med['explain']:6.1f} / {med['explain_cpu']:6.1f}  {med['run']:7.1f} / {med['run_cpu']:7.1f}"
        print(line)
    return 0


def _reset(checkout: Path, shop: Path, db: Path) -> None:
    code = ("import sys, os; sys.path.insert(0, %r); import run as bench, engine; from pathlib import Path; "
            "os.environ['ENGINE_WAREHOUSE_URL'] = %r; "
            "r = engine.Reconciler(engine.load_project(Path(%r))); bench._reset_ledger(r, Path(%r))"
            % (str(HERE), f"duckdb:///{db}", str(shop / "project"), str(db.parent)))
    subprocess.run([sys.executable, "-c", code], check=True, env={**os.environ, "PYTHONPATH": str(checkout.resolve())})


if __name__ == "__main__":
    sys.exit(main())
