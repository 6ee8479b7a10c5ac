"""Would DuckDB prepared statements, kept across passes, cut what the plan a minute later pays per statement?
Measured in one process on a kept DuckDB shop; the engine is not changed by it (issue 15, helper plan15).

    python benchmarks/duckdb_prepared.py --shop DIR [--project project] [--rounds 9]

``DIR``: a shop kept by ``run.py --keep DIR`` with its ledger filled as ``duckdb_minute.py --fill`` leaves it.
The tool records the statements one plan a minute later streams (``engine plan``'s counted plan, as
``duckdb_minute.py`` runs it) twice: as the pass sends them (the instants written in as literals,
``Dialect.binds_instants`` off) and with the instants as bind parameters (the same compiled text, the switch on
for this process only). On the pass's own connection, after the pass's shared tables are created:

1. ``probe``: does this DuckDB keep the plan of a prepared statement? A statement that is costly to plan
   (300 OR'd conditions), over no table and over a table, run as text and as ``EXECUTE`` of its ``PREPARE``.
2. Per streamed statement: DuckDB's parse (``duckdb.extract_statements``, CPU, median of 15); its planning
   (the JSON profile's planner + optimizer + physical planner, the least of 5 runs: planning runs on one
   thread); the statement's process CPU as text and as ``EXECUTE name(instants)`` of a ``PREPARE`` made
   once (medians of 7); whether ``EXECUTE`` bound and optimised it again (its profile's binding and
   optimiser time); and that both give the same rows and read the same row groups (zonemap pruning
   on the instants' values).
3. ``--rounds`` rounds, the modes in alternated order: all statements as text / as ``EXECUTE``, the
   shared tables dropped and created again first (as every pass does), and ``EXECUTE`` with the shared
   tables kept (no catalog change between rounds); process CPU per round, medians, with the load average.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path

HERE = Path(__file__).resolve().parent


def cpu_median(call, times: int) -> float:
    spent = []
    for _ in range(times):
        started = time.process_time()
        call()
        spent.append(time.process_time() - started)
    return statistics.median(spent)


def load() -> str:
    return " ".join(open("/proc/loadavg").read().split()[:3])


def record(bench, reconciler, later) -> list[tuple[str, str, dict | None]]:
    """The statements one counted plan at ``later`` runs: (kind, text, parameters), in order."""
    from engine.state import warehouse

    seen: list[tuple[str, str, dict | None]] = []
    original = warehouse.Session.execute_together, warehouse.Session.stream

    def execute_together(self, statements):
        seen.extend(("execute", sql, None) for sql in statements)
        return original[0](self, statements)

    def stream(self, sql, batch_size=1000, parameters=None, **options):
        seen.append(("stream", sql, dict(parameters) if parameters else None))
        yield from original[1](self, sql, batch_size, parameters, **options)

    warehouse.Session.execute_together, warehouse.Session.stream = execute_together, stream
    try:
        bench._consume_plan(reconciler, later, counted=True)
    finally:
        warehouse.Session.execute_together, warehouse.Session.stream = original
    return seen


def probe() -> None:
    """Part 1 on a throwaway in-memory database."""
    import duckdb

    con = duckdb.connect()
    con.execute("CREATE TABLE one AS SELECT 1 AS a")
    condition = " OR ".join(f"((a + {i}) * 3 = {i * 7} AND CAST(a AS VARCHAR) LIKE '{i}%')" for i in range(300))
    for name, source in (("no table", "(SELECT 1 AS a) AS one"), ("a table", "one")):
        sql = f"SELECT count(*) FROM {source} WHERE {condition}"
        con.execute(f"PREPARE probe AS {sql}")
        text = cpu_median(lambda: con.execute(sql).fetchall(), 15)
        executed = cpu_median(lambda: con.execute("EXECUTE probe").fetchall(), 15)
        con.execute("DEALLOCATE probe")
        print(f"probe, {name}: as text {text * 1000:.1f} ms CPU, EXECUTE of its PREPARE {executed * 1000:.1f} ms "
              f"(x{executed / text:.2f}); load {load()}", flush=True)
    con.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shop", type=Path, required=True, help="a directory kept by run.py --keep, ledger filled")
    parser.add_argument("--project", default="project")
    parser.add_argument("--rounds", type=int, default=9)
    args = parser.parse_args()
    shop = args.shop.resolve()
    import duckdb
    import sqlalchemy as sa

    sys.path.insert(0, str(HERE))
    import run as bench

    reconciler, now = bench.kept_duckdb_shop(shop, args.project)
    import engine
    from engine import dialects

    later = now + timedelta(minutes=1)
    print(f"engine {engine.__file__}, DuckDB {duckdb.__version__}; load {load()}", flush=True)
    literal = record(bench, reconciler, later)
    name = reconciler.config.dialect
    row = dialects.DIALECTS[name]
    dialects.DIALECTS[name] = dataclasses.replace(row, binds_instants=True)
    try:
        bound = record(bench, reconciler, later)
    finally:
        dialects.DIALECTS[name] = row
    texts = [sql for kind, sql, _ in literal if kind == "stream"]
    parameterised = [(sql, parameters) for kind, sql, parameters in bound if kind == "stream"]
    creates = [sql for kind, sql, _ in literal if kind == "execute" and sql.startswith("CREATE TEMPORARY TABLE")]
    drops = [sql for kind, sql, _ in literal if kind == "execute" and sql.startswith("DROP TABLE")]
    assert len(texts) == len(parameterised), "the two recordings streamed different statements"

    with reconciler.warehouse.session() as session:
        raw = session.conn.connection.dbapi_connection  # duckdb_engine's wrapper of the DuckDB connection
        compiler = session.conn.dialect

        def create_tables() -> None:
            for drop in dict.fromkeys(drops):
                raw.execute(drop)
            for create in creates:
                raw.execute(create)

        def as_execute(index: int) -> str:
            sql, parameters = parameterised[index]
            if not parameters:
                return ""
            compiled = sa.text(sql).compile(dialect=compiler)
            values = compiled.construct_params(parameters)
            ordered = [values[key] for key in compiled.positiontup] if compiled.positional else list(values.values())
            return "(" + ", ".join("'" + str(value).replace("'", "''") + "'" for value in ordered) + ")"

        executes = []
        create_tables()
        for index, (sql, parameters) in enumerate(parameterised):
            compiled = sa.text(sql).compile(dialect=compiler) if parameters else sql
            raw.execute(f"PREPARE engine_plan15_{index} AS {compiled}")
            executes.append(f"EXECUTE engine_plan15_{index}{as_execute(index)}")

        probe()
        profile = Path(tempfile.gettempdir()) / f"duckdb_prepared_{os.getpid()}.json"

        def profiled(sql: str, times: int = 5) -> tuple[dict, list]:
            """The least planning of ``times`` runs, and the rows and the query's counters of the last."""
            raw.execute("PRAGMA enable_profiling='json'")
            raw.execute(f"PRAGMA profiling_output='{profile}'")
            best: dict = {}
            try:
                for _ in range(times):
                    rows = raw.execute(sql).fetchall()
                    spent = json.loads(profile.read_text())
                    parts = {"binding": spent["planner"]["binding_time"], "planner": spent["planner"]["total_time"],
                             "optimizer": spent["optimizer"]["total_time"],
                             "physical": spent["physical_planner"]["total_time"],
                             "row groups": spent["query"]["total_row_groups_scanned"]}
                    best = {key: min(value, best.get(key, value)) for key, value in parts.items()}
            finally:
                raw.execute("PRAGMA disable_profiling")
                profile.unlink(missing_ok=True)
            return best, rows

        print(f"\nper statement (ms; parse, planning = planner + optimizer + physical planner, least of 5; CPU medians of 7; "
              f"load {load()}):")
        print(f"{'#':>2} {'chars':>6} {'parse':>6} {'planning':>8} {'as text':>8} {'EXECUTE':>8} {'EXECUTE planning':>17} "
              f"{'rows':>6} same rows, row groups")
        totals = [0.0] * 5
        for index, sql in enumerate(texts):
            parse = cpu_median(lambda: duckdb.extract_statements(sql), 15)
            planned, rows = profiled(sql)
            replanned, executed_rows = profiled(executes[index])
            text_cpu = cpu_median(lambda: raw.execute(sql).fetchall(), 7)
            execute_cpu = cpu_median(lambda: raw.execute(executes[index]).fetchall(), 7)
            planning = planned["planner"] + planned["optimizer"] + planned["physical"]
            again = replanned["planner"] + replanned["optimizer"] + replanned["physical"]
            same = sorted(map(repr, rows)) == sorted(map(repr, executed_rows))
            for position, value in enumerate((parse, planning, text_cpu, execute_cpu, again)):
                totals[position] += value
            print(f"{index:2} {len(sql):6} {parse * 1000:6.2f} {planning * 1000:8.2f} {text_cpu * 1000:8.2f} "
                  f"{execute_cpu * 1000:8.2f} {again * 1000:8.2f} (bind {replanned['binding'] * 1000:.2f}) {len(rows):6} "
                  f"{same}, {planned['row groups']} / {replanned['row groups']}", flush=True)
        print(f"all {sum(map(len, texts)):6} {totals[0] * 1000:6.2f} {totals[1] * 1000:8.2f} {totals[2] * 1000:8.2f} "
              f"{totals[3] * 1000:8.2f} {totals[4] * 1000:8.2f}; load {load()}", flush=True)

        modes = {"as text": (True, lambda index: raw.execute(texts[index]).fetchall()),
                 "EXECUTE": (True, lambda index: raw.execute(executes[index]).fetchall()),
                 "EXECUTE, tables kept": (False, lambda index: raw.execute(executes[index]).fetchall())}
        spent: dict[str, list[float]] = {mode: [] for mode in modes}
        print(f"\n{args.rounds} rounds, all {len(texts)} statements per mode (process CPU, s):")
        for round_ in range(args.rounds):
            order = list(modes) if round_ % 2 == 0 else list(reversed(modes))
            for mode in order:
                recreate, run_one = modes[mode]
                if recreate:
                    create_tables()
                started = time.process_time()
                for index in range(len(texts)):
                    run_one(index)
                spent[mode].append(time.process_time() - started)
            print(f"round {round_}: " + ", ".join(f"{mode} {spent[mode][-1]:.3f}" for mode in modes) + f"; load {load()}",
                  flush=True)
        base = statistics.median(spent["as text"])
        for mode, values in spent.items():
            lower = sum(b < a for a, b in zip(spent["as text"], values))
            print(f"median {mode}: {statistics.median(values):.4f} s (x{statistics.median(values) / base:.3f}; "
                  f"lower than as text in {lower}/{args.rounds})")
        for index in range(len(executes)):
            raw.execute(f"DEALLOCATE engine_plan15_{index}")
        for drop in dict.fromkeys(drops):
            raw.execute(drop)
    return 0


if __name__ == "__main__":
    sys.exit(main())
