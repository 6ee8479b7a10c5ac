"""The plan a minute later on a DuckDB shop, per statement, for two or more checkouts alternately, each in a
fresh process; with the process's CPU (DuckDB's threads included), which a loaded machine disturbs far
less than wall time. pg_minute.py's counterpart for DuckDB; with ``--sqlite``, for the shop's SQLite copy
(``shop.db``, run.py --sqlite; the ledger in it, as run.py's SQLite rows have it), whose statements also run in
the process.

    python benchmarks/duckdb_minute.py --shop DIR [--sqlite] [--fill] [--project project-changes] [--rounds 5]
        [--plans 4] [--statements] [--cold] [--flip CAPABILITY] CHECKOUT...

``DIR``: a shop kept by ``run.py --keep DIR`` (its ``shop.duckdb``, ``shop.json`` and ``project/``; for
``--project project-changes``, the copy with the change column mapped that run.py's minute-later rows
make, with ``updated_at`` added to the shop). ``--fill`` first records the plan at the shop's anchor in the
ledger and writes the settle memory of the steady state, as run.py's minute-later row does
(``_record_plan``, ``_remember_steady``). Then per round and checkout (``PYTHONPATH`` = the checkout) a
child runs ``Reconciler.due`` at the anchor + 1 minute ``--plans`` times as ``engine plan`` runs it (the
settled skips counted in SQL), the first in the process cold. Printed per child: the warm plans' median
wall and CPU seconds, the floor's (``run.FLOOR_SQL``) and the load average; at the end per checkout the
medians and, with ``--statements``, each statement's wall and CPU (medians over the warm plans of every
round; what is left of the plan's CPU is Python's: decisions, policies, SQLAlchemy). ``--flip CAPABILITY``: each
checkout also with that boolean ``Dialect`` capability of the shop's dialect flipped in the child, as
pg_minute.py's (``checkouts.flip``), with the flipped/declared ratios at the end.
"""
from __future__ import annotations

import argparse
import collections
import gc
import json
import os
import statistics
import sys
import time
from datetime import timedelta
from pathlib import Path

import checkouts

HERE = Path(__file__).resolve().parent


def _url(shop: Path, sqlite: bool) -> str:
    return f"sqlite:///{shop / 'shop.db'}" if sqlite else f"duckdb:///{shop / 'shop.duckdb'}"


def child(shop: Path, project: str, plans: int, fill: bool, cold: bool = False, sqlite: bool = False,
          flip: str | None = None) -> None:
    os.environ["ENGINE_WAREHOUSE_URL"] = _url(shop, sqlite)
    checkouts.flip(os.environ["ENGINE_WAREHOUSE_URL"], flip)
    import engine
    sys.path.insert(0, str(HERE))
    import run as bench

    from engine.state import warehouse

    meta = json.loads((shop / "shop.json").read_text())
    now = bench._naive_anchor(meta["shop"]["anchor"]).replace(tzinfo=bench.timezone.utc)
    later = now + timedelta(minutes=1)
    reconciler = engine.Reconciler(engine.load_project(shop / project))
    if cold:  # the cold plan: an empty ledger, planned at the anchor (run.py's headline plan)
        bench._reset_ledger(reconciler, shop / project)
        later = now
    if fill:
        bench._reset_ledger(reconciler, shop / project)
        filled = bench._record_plan(reconciler, now)
        print(json.dumps({"filled": filled, "settles": bench._remember_steady(reconciler, later),
                          "engine": checkouts.engine_checkout()}))
        return
    spent: dict = collections.defaultdict(lambda: [0.0, 0.0])
    original = (warehouse.Session.execute_together, warehouse.Session.stream, warehouse.Session.returning,
                warehouse.Session.execute_driver)
    current = checkouts.name_campaigns()  # the campaign whose statements run next

    def label(sql: str) -> str:
        words = sql.split()
        if "trigger_instances" not in sql:
            return " ".join(words[:5])[:70]
        return f"{current['campaign']}: due query"

    def timed(key: str, started: float, cpu: float) -> None:
        spent[key][0] += time.perf_counter() - started
        spent[key][1] += time.process_time() - cpu

    def execute_together(self, statements):
        started, cpu = time.perf_counter(), time.process_time()
        try:
            return original[0](self, statements)
        finally:
            timed(label(statements[-1]), started, cpu)

    def stream(self, sql, batch_size=1000, parameters=None, **options):
        started, cpu = time.perf_counter(), time.process_time()
        for rows in original[1](self, sql, batch_size, parameters, **options):
            timed(label(sql), started, cpu)
            yield rows
            started, cpu = time.perf_counter(), time.process_time()
        timed(label(sql), started, cpu)

    def returning(self, sql, parameters=None):
        started, cpu = time.perf_counter(), time.process_time()
        try:
            return original[2](self, sql, parameters)
        finally:
            timed(label(sql), started, cpu)

    def execute_driver(self, sql, parameters):
        started, cpu = time.perf_counter(), time.process_time()
        try:
            return original[3](self, sql, parameters)
        finally:
            timed(label(sql), started, cpu)

    warehouse.Session.execute_together, warehouse.Session.stream = execute_together, stream
    warehouse.Session.returning, warehouse.Session.execute_driver = returning, execute_driver
    result: dict = {"wall": [], "cpu": [], "rows": [], "statements": []}
    for _ in range(plans):
        spent.clear()
        started, cpu = time.perf_counter(), time.process_time()
        counts = bench._consume_plan(reconciler, later, counted=True)
        result["wall"].append(time.perf_counter() - started)
        result["cpu"].append(time.process_time() - cpu)
        result["rows"].append(counts["rows"])
        result["statements"].append({key: list(value) for key, value in spent.items()})
    (warehouse.Session.execute_together, warehouse.Session.stream, warehouse.Session.returning,
     warehouse.Session.execute_driver) = original
    gc.collect()  # the plans' garbage is theirs: a full collection falling in the floor's fetch doubled it (0.043 -> 0.089 s)
    floors, floor_cpu = [], []
    for _ in range(3):
        started, cpu = time.perf_counter(), time.process_time()
        bench._consume_sql(reconciler.warehouse, bench.FLOOR_SQL)
        floors.append(time.perf_counter() - started)
        floor_cpu.append(time.process_time() - cpu)
    result["floor"], result["floor_cpu"] = statistics.median(floors), statistics.median(floor_cpu)
    result["load"] = open("/proc/loadavg").read().split()[:3]
    result["engine"] = checkouts.engine_checkout()
    print(json.dumps(result))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkouts", nargs="*", type=Path)
    parser.add_argument("--shop", type=Path, required=True, help="a directory kept by run.py --keep")
    parser.add_argument("--project", default="project", help="the project directory in it (default project)")
    parser.add_argument("--fill", action="store_true", help="record the plan at the anchor first")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--plans", type=int, default=4, help="plans per process, the first cold (default 4)")
    parser.add_argument("--statements", action="store_true", help="print each statement's medians")
    parser.add_argument("--cold", action="store_true",
                        help="the cold plan instead: each child empties the ledger and plans at the anchor")
    parser.add_argument("--sqlite", action="store_true", help="the shop's SQLite copy (shop.db) instead of shop.duckdb")
    checkouts.add_flip_argument(parser)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.shop.resolve(), args.project, args.plans, args.fill, args.cold, args.sqlite, args.flip)
        return 0
    checkouts.check_flip(parser, _url(args.shop, args.sqlite), args.flip)

    def run_child(checkout: Path, fill: bool = False, flip: bool = False) -> dict:
        arguments = ["--shop", str(args.shop), "--project", args.project, "--plans", str(args.plans)] + (
            ["--cold"] if args.cold else []) + (["--sqlite"] if args.sqlite else []) + (
            ["--flip", args.flip] if flip else [])
        return checkouts.run_child(__file__, checkout, arguments + (["--fill"] if fill else []))

    if args.fill:
        print(f"ledger filled: {run_child(args.checkouts[0] if args.checkouts else HERE.parent, True)}", flush=True)
    collected: dict = collections.defaultdict(list)
    for round_ in range(args.rounds):
        for checkout, flip in ((c, f) for c in args.checkouts for f in checkouts.flip_order(round_, args.flip)):
            r, name = run_child(checkout, flip=flip), checkouts.variant(checkout, args.flip, flip)
            collected[name].append(r)
            wall, cpu = statistics.median(r["wall"][1:]), statistics.median(r["cpu"][1:])
            print(f"round {round_} {name}: plan wall {wall:.3f} s, CPU {cpu:.3f} s; floor wall {r['floor']:.3f} s, "
                  f"CPU {r['floor_cpu']:.3f} s; CPU x{cpu / r['floor_cpu']:.1f} the floor's; rows {r['rows'][-1]}; "
                  f"load {' '.join(r['load'])}", flush=True)
    for checkout, results in collected.items():
        def median(key: str) -> float:
            return statistics.median(x for r in results for x in (r[key][1:] if isinstance(r[key], list) else [r[key]]))
        print(f"{checkout}: medians: plan wall {median('wall'):.3f} s, CPU {median('cpu'):.3f} s; floor wall "
              f"{median('floor'):.3f} s, CPU {median('floor_cpu'):.3f} s")
        if args.statements:
            warm = [plan_ for r in results for plan_ in r["statements"][1:]]
            keys = sorted({k for s in warm for k in s}, key=lambda k: -statistics.median(s.get(k, [0, 0])[1] for s in warm))
            total = 0.0
            for key in keys:
                wall = statistics.median(s.get(key, [0, 0])[0] for s in warm)
                cpu = statistics.median(s.get(key, [0, 0])[1] for s in warm)
                total += cpu
                if cpu >= 0.002:
                    print(f"  {wall:7.3f} s wall {cpu:6.3f} s CPU  {key}")
            print(f"  {total:.3f} s CPU in statements; the rest of the plan's CPU is Python's")
    if args.flip:
        print("\n".join(checkouts.flip_ratios(collected, args.checkouts, args.flip, {"wall": "wall", "cpu": "CPU"})))
    return 0


if __name__ == "__main__":
    sys.exit(main())
