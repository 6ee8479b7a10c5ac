"""The due statements of one cold plan, each fetched several ways in turns: what point 4 of issue 15 weighs.

    python benchmarks/fetch_ab.py --url postgresql+psycopg://... --project DIR [--rounds 5]
    python benchmarks/fetch_ab.py --url duckdb:///.../shop.duckdb --project DIR

``DIR`` is a project whose warehouse is ``--url`` (``run.py --quick --keep DIR`` builds one, DuckDB;
``--postgres-url`` copies its shop into PostgreSQL). The plan runs as ``engine plan`` does (``Reconciler.due``
at the shop's anchor, settled skips counted in SQL); each statement it streams is first run and fetched
``--rounds`` times in each way, in alternating order, on the pass's own session (its temporary fact tables
exist), then streamed to the plan as usual. Ways: ``sqlalchemy`` (SQLAlchemy's cursor and result rows, as
before issue 15.4), ``driver`` (the driver's own cursor: engine.state.driver_rows, what the engine does now),
and, on PostgreSQL, ``binary`` (psycopg's named cursor in its binary format, the rows as tuples), on DuckDB
``fetchall`` (the driver's cursor, every row at once). Printed: per statement of 100 rows or more and summed,
the medians of wall and CPU seconds (the process's, every thread) with the load average. The execution of the
statement is inside every way's time: the difference between ways is the fetch's.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", required=True)
    parser.add_argument("--project", required=True, type=Path)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--anchor", default="2025-01-10T00:00:00+00:00")
    args = parser.parse_args()
    os.environ["ENGINE_WAREHOUSE_URL"] = args.url

    import sqlalchemy as sa

    import engine
    from engine.run.settle import SettledCounts
    from engine.state import warehouse

    reconciler = engine.Reconciler(engine.load_project(args.project))
    database = reconciler.warehouse
    postgres = database.engine.dialect.driver == "psycopg"  # its named cursor's binary format as a third way
    stream = warehouse.Session.stream
    measured: list[tuple[int, str, dict[str, tuple[float, float]]]] = []

    def consume(rows) -> int:
        return sum(len(batch) for batch in rows)

    def way(session, sql, parameters, driver: bool) -> int:
        database.driver_stream = driver
        try:
            return consume(stream(session, sql, 1000, parameters))
        finally:
            database.driver_stream = True

    def raw(session, sql, parameters) -> int:
        compiled = sa.text(sql).compile(dialect=session.conn.dialect)
        connection = session.conn.connection.dbapi_connection
        if not session.conn.in_transaction():
            session.conn.begin()
        try:
            if postgres:
                cursor = connection.cursor(name="fetch_ab", binary=True)
                cursor.execute(str(compiled), compiled.construct_params(parameters or {}))
                count = consume(iter(lambda: cursor.fetchmany(1000), []))
                cursor.close()
                return count
            cursor = connection.cursor()
            cursor.execute(str(compiled))
            return len(cursor.fetchall())
        finally:
            session.conn.commit()

    def timed(session, sql, batch_size=1000, parameters=None, **options):
        ways = {"sqlalchemy": lambda: way(session, sql, parameters, False),
                "driver": lambda: way(session, sql, parameters, True),
                ("binary" if postgres else "fetchall"): lambda: raw(session, sql, parameters)}
        if parameters and not postgres:  # DuckDB's reader takes no parameters
            yield from stream(session, sql, batch_size, parameters, **options)
            return
        times: dict[str, list[tuple[float, float]]] = {name: [] for name in ways}
        rows = 0
        for round_ in range(args.rounds):
            for name in (list(ways) if round_ % 2 == 0 else list(ways)[::-1]):
                wall, cpu = time.perf_counter(), time.process_time()
                rows = ways[name]()
                times[name].append((time.perf_counter() - wall, time.process_time() - cpu))
        measured.append((rows, " ".join(sql.split())[:70],
                         {name: (statistics.median(t[0] for t in v), statistics.median(t[1] for t in v))
                          for name, v in times.items()}))
        yield from stream(session, sql, batch_size, parameters, **options)

    warehouse.Session.stream = timed
    now = datetime.fromisoformat(args.anchor).astimezone(timezone.utc)
    planned = sum(len(batch) for batch in reconciler.due(now, settled_counts=SettledCounts()))
    reconciler.close()
    names = list(measured[0][2]) if measured else []
    totals = {name: [0.0, 0.0] for name in names}
    print(f"{database.backend}: a plan of {planned:,} messages, {len(measured)} statements, medians of {args.rounds} "
          f"rounds (wall / CPU seconds), load {' '.join(open('/proc/loadavg').read().split()[:3])}")
    for rows, sql, medians in measured:
        for name, (wall, cpu) in medians.items():
            totals[name][0] += wall
            totals[name][1] += cpu
        if rows >= 100:
            print(f"  {rows:7,} rows  " + "  ".join(f"{n} {w:.3f}/{c:.3f}" for n, (w, c) in medians.items()) + f"  {sql}")
    base = totals.get("sqlalchemy")
    if base:
        print("  all statements  " + "  ".join(
            f"{n} {w:.3f}/{c:.3f} (x{w / base[0]:.2f}/x{c / base[1]:.2f})" for n, (w, c) in totals.items()))


if __name__ == "__main__":
    main()
