"""What each statement of a DuckDB plan a minute later reads: rows scanned and kept per table, planning time.

    python benchmarks/statement_reads.py --shop DIR [--project project-changes] [--plans 2]

``DIR``: a shop kept by ``run.py --keep DIR`` with its ledger filled (``duckdb_minute.py --fill``, with the same
``--project``). In this process (the engine ``PYTHONPATH`` names), the plan a minute after the shop's anchor runs
``--plans`` times as ``engine plan`` runs it (the settled skips counted in SQL); DuckDB's JSON profiler is on for
every connection, and after each statement the plan runs (streamed, run together, with RETURNING, by the driver:
the incremental refresh's statements included) its profile is read. Printed for the last plan, per statement in
the order it ran: the process CPU around it (profiling included: a relative figure), DuckDB's planning time
(binder, optimiser, physical planner), the rows it returned, and per table scanned the rows its scans kept / the
rows they read and the scans' operator time; then the same summed per table over the plan, and the load average.
The rows scanned are what to read: the CPU figures carry the profiler's own cost. The engine is not changed.
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path

HERE = Path(__file__).resolve().parent
#: operators that read a table (not a CTE or a list of values)
TABLE_SCANS = ("SEQ_SCAN", "TABLE_SCAN")


def _walk(node: dict, scans: dict) -> None:
    info = node.get("extra_info", {})
    if node.get("name") in TABLE_SCANS and info.get("Table"):
        tally = scans[str(info["Table"]).split(".")[-1]]
        tally[0] += node.get("intermediate_rows", 0)
        tally[1] += node.get("rows_scanned", 0)
        tally[2] += node.get("timing", 0.0)
        tally[3] += 1
    for child in node.get("children", []):
        _walk(child, scans)


def _planning(profile: dict) -> float:
    optimiser = sum(value for value in profile.get("optimizer", {}).values() if isinstance(value, (int, float)))
    return profile.get("planner", {}).get("total_time", 0.0) + optimiser + \
        profile.get("physical_planner", {}).get("total_time", 0.0)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shop", type=Path, required=True, help="a directory kept by run.py --keep, ledger filled")
    parser.add_argument("--project", default="project", help="the project directory in it (default project)")
    parser.add_argument("--plans", type=int, default=2, help="plans run; the last is printed (default 2)")
    args = parser.parse_args()
    shop = args.shop.resolve()
    os.environ["ENGINE_WAREHOUSE_URL"] = f"duckdb:///{shop / 'shop.duckdb'}"
    sys.path.insert(0, str(HERE))
    import checkouts
    import run as bench
    import sqlalchemy as sa

    import engine
    from engine.state import warehouse

    meta = json.loads((shop / "shop.json").read_text())
    later = bench._naive_anchor(meta["shop"]["anchor"]).replace(tzinfo=bench.timezone.utc) + timedelta(minutes=1)
    reconciler = engine.Reconciler(engine.load_project(shop / args.project))
    profile = Path(tempfile.mkdtemp()) / "profile.json"

    @sa.event.listens_for(reconciler.warehouse.engine, "connect")
    def profiled(dbapi_connection, _record):
        dbapi_connection.execute("PRAGMA enable_profiling='json'")
        dbapi_connection.execute(f"PRAGMA profiling_output='{profile}'")

    reconciler.warehouse.engine.dispose()  # every connection from now on is profiled
    current = checkouts.name_campaigns()  # the campaign whose statements run next
    seen: list[dict] = []

    def record(sql: str, cpu: float, returned: int | None = None) -> None:
        label = f"{current['campaign']}: due query" if "trigger_instances" in sql else " ".join(sql.split()[:4])[:60]
        try:
            read = json.loads(profile.read_text())
            profile.unlink()
        except (FileNotFoundError, json.JSONDecodeError):  # a statement DuckDB wrote no profile for
            read = {}
        scans: dict = collections.defaultdict(lambda: [0, 0, 0.0, 0])
        for node in read.get("operator", []):
            _walk(node, scans)
        seen.append({"label": label, "cpu": cpu, "planning": _planning(read) if read else 0.0, "returned": returned,
                     "scans": dict(scans)})

    session = warehouse.Session
    originals = session.execute_together, session.stream, session.returning, session.execute_driver

    def execute_together(self, statements):
        with self._committed():
            for sql in statements:
                started = time.process_time()
                self.conn.execute(sa.text(sql))
                record(sql, time.process_time() - started)

    def stream(self, sql, batch_size=1000, parameters=None, **options):
        started, rows = time.process_time(), 0
        for batch in originals[1](self, sql, batch_size, parameters, **options):
            rows += len(batch)
            yield batch
        record(sql, time.process_time() - started, rows)

    def returning(self, sql, parameters=None):
        started = time.process_time()
        rows = originals[2](self, sql, parameters)
        record(sql, time.process_time() - started, len(rows))
        return rows

    def execute_driver(self, sql, parameters):
        started = time.process_time()
        originals[3](self, sql, parameters)
        record(sql, time.process_time() - started)

    session.execute_together, session.stream, session.returning, session.execute_driver = (
        execute_together, stream, returning, execute_driver)
    for _ in range(args.plans):
        seen.clear()
        started = time.process_time()
        counts = bench._consume_plan(reconciler, later, counted=True)
        spent = time.process_time() - started
    print(f"plan a minute later ({args.project}), profiled: {spent:.3f} s CPU, {counts['rows']} rows")
    totals: dict = collections.defaultdict(lambda: [0, 0, 0.0, 0])
    for statement in seen:
        returned = "" if statement["returned"] is None else f", {statement['returned']:,} rows out"
        print(f"{statement['cpu'] * 1000:6.1f} ms CPU {statement['planning'] * 1000:5.1f} ms planning  "
              f"{statement['label']}{returned}")
        for table, (kept, read, seconds, count) in sorted(statement["scans"].items(), key=lambda item: -item[1][1]):
            print(f"         {table}: {kept:,} of {read:,} rows read, {seconds * 1000:.1f} ms" + (f" in {count} scans" if count > 1 else ""))
            for index, value in enumerate((kept, read, seconds, count)):
                totals[table][index] += value
    print("per table, the whole plan: rows kept / rows read / scans' operator time / scans")
    for table, (kept, read, seconds, count) in sorted(totals.items(), key=lambda item: -item[1][1]):
        print(f"  {table:32s} {kept:>11,} {read:>12,} {seconds * 1000:8.1f} ms {count:4d}")
    print(f"load {' '.join(open('/proc/loadavg').read().split()[:3])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
