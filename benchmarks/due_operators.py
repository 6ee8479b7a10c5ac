"""Where each due statement of a DuckDB plan spends its CPU, per operator, and what two ways of reading the
customers once would change.

    python benchmarks/due_operators.py --shop DIR [--cold] [--repeat 7] [--thresholds 50,0,200,1000]

``DIR``: a shop kept by ``run.py --keep DIR`` with its ledger filled (``duckdb_minute.py --fill``); the plan
runs as ``engine plan`` runs it (the settled skips counted in SQL) a minute after the shop's anchor, or with
``--cold`` at the anchor on an emptied ledger (the copy's ledger is emptied: use a copy). In one process, on
the pass's own connection (its temporary tables), each campaign's due statement is, before the pass streams it:

- run once under DuckDB's JSON profiler: its operators' CPU summed by kind (the customers' scans, the ledger's
  anti-joins, ...: ``KINDS``), over all statements;
- run ``--repeat`` times in turn as it is, with the customers' source read from a temporary copy of the
  customers' mapped columns made once per pass (its CREATE timed too), and at each
  ``dynamic_or_filter_threshold`` of ``--thresholds`` (DuckDB pushes a join's build-side ids into the
  probe side's scan as an IN list up to that many values, else as a min/max range): process CPU medians,
  and whether the rows are the same.

Measures only the engine this process imports (``PYTHONPATH``); the engine is not changed.
"""
from __future__ import annotations

import argparse
import collections
import json
import statistics
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path

HERE = Path(__file__).resolve().parent
COPY = "engine_customers_copy"


def kind_of(node: dict) -> str:
    """The kind an operator's CPU is counted under."""
    info, name = node.get("extra_info", {}), node["name"]
    table = str(info.get("Table", "")).split(".")[-1]
    if name in ("SEQ_SCAN", "TABLE_SCAN"):
        return f"scan {table}"
    if name == "HASH_JOIN":
        conditions = info.get("Conditions", "")
        conditions = " ".join(conditions) if isinstance(conditions, list) else str(conditions)
        ledger = "CAST(customer_id AS VARCHAR) = customer_id" in conditions and "trigger_key" in conditions
        return f"hash join {info.get('Join Type', '').lower()}" + (" (ledger anti-join)" if ledger else "")
    return name.lower()


def tally(node: dict, into: collections.Counter) -> None:
    into[kind_of(node)] += node["timing"]
    for child in node.get("children", []):
        tally(child, into)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shop", type=Path, required=True)
    parser.add_argument("--cold", action="store_true", help="the cold plan: the ledger emptied, at the anchor")
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--thresholds", default="50,0,200,1000")
    args = parser.parse_args()
    shop = args.shop.resolve()
    sys.path.insert(0, str(HERE))
    import run as bench

    import engine.run.plan as plan
    from engine.state import warehouse

    reconciler, now = bench.kept_duckdb_shop(shop)
    if args.cold:
        bench._reset_ledger(reconciler, shop / "project")
    at = now if args.cold else now + timedelta(minutes=1)
    columns = ", ".join(reconciler.config.sources["customers"].columns.values())  # the shop's mapped columns
    thresholds = [int(value) for value in args.thresholds.split(",")]
    current = {"campaign": "-"}
    due_statement = plan.due_statement

    def named(campaign, *arguments, **options):
        current["campaign"] = campaign.name
        return due_statement(campaign, *arguments, **options)

    operators: collections.Counter = collections.Counter()
    times: dict = {}
    copy_made: list[float] = []
    original = warehouse.Session.stream

    def cpu(conn, sql: str) -> float:
        started = time.process_time()
        conn.exec_driver_sql(sql).all()
        return time.process_time() - started

    def stream(self, sql, batch_size=1000, parameters=None, **options):
        if "trigger_instances" in sql and parameters is None and current["campaign"] not in times:
            conn = self.conn
            if not copy_made:
                for _ in range(args.repeat):
                    conn.exec_driver_sql(f"DROP TABLE IF EXISTS temp.main.{COPY}")
                    copy_made.append(cpu(conn, f"CREATE TEMPORARY TABLE {COPY} AS SELECT {columns} FROM customers"))
            with tempfile.TemporaryDirectory() as folder:
                profile = Path(folder) / "profile.json"
                conn.exec_driver_sql("PRAGMA enable_profiling='json'")
                conn.exec_driver_sql(f"PRAGMA profiling_output='{profile}'")
                conn.exec_driver_sql(sql).all()
                conn.exec_driver_sql("PRAGMA disable_profiling")
                for node in json.loads(profile.read_text())["operator"]:
                    tally(node, operators)
            copied = sql.replace(" FROM customers)", f" FROM {COPY})")
            rows = sorted(map(repr, conn.exec_driver_sql(sql).all()))
            same = rows == sorted(map(repr, conn.exec_driver_sql(copied).all()))
            spent: dict = collections.defaultdict(list)
            for _ in range(args.repeat):
                for threshold in thresholds:
                    conn.exec_driver_sql(f"SET dynamic_or_filter_threshold = {threshold}")
                    spent[threshold].append(cpu(conn, sql))
                conn.exec_driver_sql("RESET dynamic_or_filter_threshold")
                spent["copy"].append(cpu(conn, copied))
            times[current["campaign"]] = {key: statistics.median(values) for key, values in spent.items()}
            times[current["campaign"]]["same"] = same if copied != sql else None  # None: no table customers read
        yield from original(self, sql, batch_size, parameters, **options)

    plan.due_statement, warehouse.Session.stream = named, stream
    bench._consume_plan(reconciler, at, counted=True)
    plan.due_statement, warehouse.Session.stream = due_statement, original
    total = sum(operators.values())
    print(f"operators' CPU of the {len(times)} due statements: {total * 1000:.1f} ms; by kind:")
    for kind, seconds in operators.most_common(12):
        print(f"  {seconds * 1000:7.1f} ms {seconds / total:6.1%}  {kind}")
    keys = thresholds + ["copy"]
    print("process CPU medians (ms): as written at dynamic_or_filter_threshold " +
          ", ".join(map(str, thresholds)) + "; customers from the copy")
    for name, row in sorted(times.items()):
        print(f"  {name:24s} " + " ".join(f"{row[key] * 1000:7.1f}" for key in keys) + {True: "", False: "  ROWS DIFFER", None: "  (the customers' source is not the table)"}[row["same"]])
    print("  total                    " + " ".join(f"{sum(r[key] for r in times.values()) * 1000:7.1f}" for key in keys)
          + f"  (+ the copy's CREATE {statistics.median(copy_made) * 1000:.1f} ms once per pass)")
    print(f"load {' '.join(open('/proc/loadavg').read().split()[:3])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
