"""What a pass that keeps its open instances between passes could read, per campaign step: the bound of
issue 15's "incremental pass" for the plan a minute later (measured, nothing changed in the engine).

    python benchmarks/open_instances.py --shop DIR [--project project] [--minutes 1] [--cost]
    python benchmarks/open_instances.py --shop DIR [--project project] --plan-ab ROUNDS
    python benchmarks/open_instances.py --shop DIR --project project-changes --maintenance

``DIR``: a shop kept by ``run.py --keep DIR`` whose ledger holds the plan recorded at the anchor
(``duckdb_minute.py --fill``). For the pass at the anchor + ``--minutes`` (``later``), after the one at
the anchor (``earlier``), per campaign and step, counted by the warehouse over the step's window as the
due query builds it (its trigger instances, the kind's conditions, the step's time window), with the
campaign's and the step's audience taken out (an audience that may change later keeps an instance open):

- ``window``: the (customer, trigger key) instances in the step's window at ``later``: what the pass
  re-examines today, every minute;
- ``new``: those not in the window at ``earlier`` (EXCEPT of the two windows): what became due since;
- ``open``: those not in the ledger (the due query's anti-join): deferred, outside an audience, not yet
  recorded for any other reason - what such a pass would have to keep and read again;
- ``due``: the due query's rows with the audiences (what reaches the plan today, settled skips included).

Windows are the pass's: steps with a local send time cut per time zone value (``customer_zones``).

A pass that keeps the open instances reads ``new`` + ``open`` + the rows a change column names, instead of
``window``: the last column is that fraction. Also printed: the orders (and events) a change column would
name at ``later`` (``updated_at`` after the previous pass's instant minus the refresh's safety lag).

``--cost`` then times (process CPU, median of 7, in one session holding the pass's shared tables built at
``later``) what such a pass could save of the due queries: each campaign's due query as the pass runs it
(the ledger anti-join, the pass's zones) at ``later``, and the same statement with every window empty
(the instant 10 years on: the query's fixed cost - customers, facts, ledger, planning - which no kept
set removes; the birthday's and at-risk's instances do not depend on a window, the delivery's scan the
source whole); and for the ``order_placed`` campaigns (they read the shared order rows) the statement
over only their open and new instances: the shared order rows cut to that campaign's open + new keys,
as a pass keeping them would read them (the cut itself, a semi-join, timed apart); and DuckDB's own
planning of each statement (binding, optimiser, physical plan: its JSON profile; the least wall time of
7 runs, the nearest to the work on a loaded machine), which every statement pays whatever it reads. Last, the order_placed campaigns' statements with every window empty
with and without the ledger anti-join: what a pass that knows its open instances are not in the ledger
could leave out. (``EXPLAIN``'s CPU is no measure of it: rendering the plan's text costs more than planning.)

``--plan-ab ROUNDS``: the whole plan a minute later (``Reconciler.due`` as ``engine plan`` runs it, 4 plans
per fresh process, the first cold; process CPU, medians) as today and with the shared order rows cut, right
after the pass builds them, to the order_placed campaigns' open + new instances (a table of their keys
made before the clock starts; the DELETE counted: "cut"), and with those cut rows made once before the
clock and copied in where the pass builds its order rows ("kept": as if a pass kept the open instances'
rows up to date for free - the upper bound of what keeping them saves). Alternated processes; the plans'
row counts must be equal (the open + new instances hold every due row).

``--maintenance`` (a project with a change column on orders): what keeping those rows would add per pass,
each statement timed alone (process CPU, median of 7) on the shop: the customers whose orders changed
since the previous pass's instant minus the safety lag (one scan of the change column; kept facts' refresh
runs the same), deleting their kept rows and those fallen out of the windows, inserting their rows ranked
anew (the pass's order rows statement with the customers filtered before the window), the trim after the
pass (the kept rows whose instances are not in the ledger: an anti-join with the order campaigns' ledger
rows), and copying the kept rows into the pass (what "kept" pays).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from datetime import timedelta
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shop", type=Path, required=True)
    parser.add_argument("--project", default="project")
    parser.add_argument("--minutes", type=int, default=1)
    parser.add_argument("--cost", action="store_true", help="time the due queries over open + new instances")
    parser.add_argument("--plan-ab", type=int, default=0, metavar="ROUNDS",
                        help="the whole plan a minute later as today vs over open + new order instances")
    parser.add_argument("--maintenance", action="store_true",
                        help="time the statements keeping the order campaigns' open rows would add per pass")
    parser.add_argument("--child", choices=("today", "cut", "kept"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    shop = args.shop.resolve()
    if args.plan_ab:
        return plan_ab(args, shop)
    os.environ["ENGINE_WAREHOUSE_URL"] = f"duckdb:///{shop / 'shop.duckdb'}"
    import engine
    sys.path.insert(0, str(HERE))
    import run as bench
    from engine.run.incremental import SAFETY_LAG
    from engine.run.plan import customer_zones
    from engine.sql.compile import render_sql
    from engine.sql.due import due_query

    meta = json.loads((shop / "shop.json").read_text())
    earlier = bench._naive_anchor(meta["shop"]["anchor"]).replace(tzinfo=bench.timezone.utc)
    later = earlier + timedelta(minutes=args.minutes)
    reconciler = engine.Reconciler(engine.load_project(shop / args.project))
    config = reconciler.config
    dialect = config.dialect

    def scalar(sql: str):
        with reconciler.warehouse.session() as session:
            return [tuple(r) for rows in session.stream(sql) for r in rows]

    with reconciler.warehouse.session() as session:  # the pass's per-zone windows of local send times
        zones = customer_zones(session, config, reconciler.campaigns())

    def keys(campaign, now, exclude_ledger):
        query = due_query(campaign, config, now, exclude_ledger=exclude_ledger, dialect=dialect, zones=zones)
        return f"SELECT step, CAST(customer_id AS VARCHAR) AS c, CAST(trigger_key AS VARCHAR) AS k FROM ({render_sql(query, dialect)}) q"

    if args.child:
        return child(args, reconciler, later, keys)
    totals = {"window": 0, "new": 0, "open": 0, "due": 0}
    print(f"pass at {later:%Y-%m-%d %H:%M} after one at {earlier:%H:%M}; ledger rows: "
          f"{scalar('SELECT COUNT(*) FROM engine_ledger')[0][0]:,}; load {open('/proc/loadavg').read().split()[:3]}")
    print(f"{'campaign / step':44} {'kind':18} {'window':>9} {'new':>6} {'open':>8} {'due':>7} {'(new+open)/window':>18}")
    started = time.perf_counter()
    for campaign in reconciler.campaigns():
        bare = dataclasses.replace(campaign, audience=None,
                                   steps=tuple(dataclasses.replace(s, audience=None) for s in campaign.steps))
        window_now, window_before = keys(bare, later, False), keys(bare, earlier, False)
        counted = {}
        for name, sql in (
            ("window", f"SELECT step, COUNT(*) FROM ({window_now}) w GROUP BY step"),
            ("new", f"SELECT step, COUNT(*) FROM (({window_now}) EXCEPT ({window_before})) n GROUP BY step"),
            ("open", f"SELECT step, COUNT(*) FROM ({keys(bare, later, True)}) o GROUP BY step"),
            ("due", f"SELECT step, COUNT(*) FROM ({keys(campaign, later, True)}) d GROUP BY step"),
        ):
            counted[name] = dict(scalar(sql))
        for step in campaign.steps:
            row = {name: counted[name].get(step.id, 0) for name in totals}
            for name in totals:
                totals[name] += row[name]
            share = (row["new"] + row["open"]) / row["window"] if row["window"] else 0.0
            print(f"{campaign.name + ' / ' + step.id:44} {campaign.trigger.kind:18} {row['window']:9,} {row['new']:6,} "
                  f"{row['open']:8,} {row['due']:7,} {share:18.3f}", flush=True)
    share = (totals["new"] + totals["open"]) / totals["window"]
    print(f"{'all steps':44} {'':18} {totals['window']:9,} {totals['new']:6,} {totals['open']:8,} {totals['due']:7,} "
          f"{share:18.3f}")
    for entity in ("orders", "events"):
        columns = config.sources[entity].columns if entity in config.sources else {}
        change = columns.get("updated_at")
        if change is None:
            print(f"{entity}: no change column mapped in {args.project}")
            continue
        since = earlier - SAFETY_LAG
        table = config.sources[entity].table
        (count,), = scalar(f"SELECT COUNT(*) FROM {table} WHERE {change} > TIMESTAMP '{since:%Y-%m-%d %H:%M:%S}' "
                           f"AND {change} <= TIMESTAMP '{later:%Y-%m-%d %H:%M:%S}'")
        print(f"{entity}: {count:,} row(s) with {change} after the previous pass's instant minus the "
              f"{int(SAFETY_LAG.total_seconds() // 60)} min lag")
    print(f"measured in {time.perf_counter() - started:.1f} s; load {open('/proc/loadavg').read().split()[:3]}")
    if args.cost:
        cost(reconciler, later, zones, keys)
    if args.maintenance:
        maintenance(reconciler, earlier, later, keys)
    return 0


def cost(reconciler, later, zones, keys) -> None:
    """``--cost`` (see the module's docstring)."""
    import statistics

    from engine.run.plan import create_shared_table
    from engine.sql.compile import SHARED_FACTS, SHARED_ROWS
    from engine.sql.prepared import due_statement

    config, campaigns = reconciler.config, reconciler.campaigns()
    far = later + timedelta(days=3650)

    def timed(session, sql: str) -> tuple[float, int]:
        cpu, rows = [], 0
        for _ in range(7):
            started = time.process_time()
            rows = sum(len(batch) for batch in session.stream(sql))
            cpu.append(time.process_time() - started)
        return statistics.median(cpu), rows

    profile = Path(os.environ.get("TMPDIR", "/tmp")) / f"open_instances_{os.getpid()}.json"

    def planning(session, sql: str) -> float:
        """DuckDB's own time binding, optimising and planning ``sql`` (its JSON profile): the least of 7
        runs, wall time (on a loaded machine the least is the nearest to the work), seconds."""
        session.execute("PRAGMA enable_profiling='json'")
        session.execute(f"PRAGMA profiling_output='{profile}'")
        found = []
        try:
            for _ in range(7):
                for _batch in session.stream(sql):
                    pass
                spent = json.loads(profile.read_text())
                found.append(sum(spent[part]["total_time"] for part in ("planner", "optimizer", "physical_planner")))
        finally:
            session.execute("PRAGMA disable_profiling")
            profile.unlink(missing_ok=True)
        return min(found)

    def text(campaign, now, exclude_ledger: bool = True) -> str:
        return due_statement(campaign, config, now, exclude_ledger=exclude_ledger, shared_facts=True, zones=zones,
                             bind=False).text

    with reconciler.warehouse.session() as session:
        created: list[str] = []
        for name in [*SHARED_FACTS, *SHARED_ROWS]:
            create_shared_table(session, config, later, campaigns, name, created)
        print(f"\ndue queries a minute later, process CPU (load {open('/proc/loadavg').read().split()[:3]}):")
        print(f"{'campaign':24} {'kind':18} {'as today':>17} {'empty windows':>17} {'open + new only':>17}"
              f"   planning (least wall)")
        totals, planned = [0.0, 0.0, 0.0], 0.0
        rows_table = SHARED_ROWS["order_rows"]
        for campaign in campaigns:
            today, empty = timed(session, text(campaign, later)), timed(session, text(campaign, far))
            plans = planning(session, text(campaign, later))
            planned += plans
            cut = "-"
            if campaign.trigger.kind == "order_placed":
                bare = dataclasses.replace(campaign, audience=None,
                                           steps=tuple(dataclasses.replace(s, audience=None) for s in campaign.steps))
                kept = (f"SELECT DISTINCT c, k FROM (({keys(bare, later, True)}) UNION ALL "
                        f"(({keys(bare, later, False)}) EXCEPT ({keys(bare, later - timedelta(minutes=1), False)}))) o")
                session.execute(f"CREATE TEMPORARY TABLE engine_kept_keys AS {kept}")
                session.execute(f"ALTER TABLE {rows_table} RENAME TO engine_whole_rows")
                started = time.process_time()
                session.execute(f"CREATE TEMPORARY TABLE {rows_table} AS SELECT r.* FROM engine_whole_rows r SEMI JOIN "
                                f"engine_kept_keys k ON k.c = CAST(r.customer_id AS VARCHAR) AND k.k = CAST(r.order_id AS VARCHAR)")
                cutting = time.process_time() - started
                opened = timed(session, text(campaign, later))
                totals[2] += opened[0] + cutting
                cut = f"{opened[0]:.4f} s {opened[1]:5,}r (+cut {cutting:.4f})"
                session.execute(f"DROP TABLE {rows_table}")
                session.execute(f"ALTER TABLE engine_whole_rows RENAME TO {rows_table}")
                session.execute("DROP TABLE engine_kept_keys")
            else:
                totals[2] += today[0]
            totals[0] += today[0]
            totals[1] += empty[0]
            print(f"{campaign.name:24} {campaign.trigger.kind:18} {today[0]:.4f} s {today[1]:6,}r "
                  f"{empty[0]:.4f} s {empty[1]:6,}r {cut:34} {plans:.4f} s", flush=True)
        print(f"{'all':43} {totals[0]:.4f} s {'':8}{totals[1]:.4f} s {'':8}{totals[2]:.4f} s {'':23}{planned:.4f} s; "
              f"load {open('/proc/loadavg').read().split()[:3]}")
        ordered = [c for c in campaigns if c.trigger.kind == "order_placed"]
        joined = sum(timed(session, text(c, far))[0] for c in ordered)
        bare = sum(timed(session, text(c, far, exclude_ledger=False))[0] for c in ordered)
        print(f"order_placed campaigns, every window empty: {joined:.4f} s with the ledger anti-join, {bare:.4f} s "
              f"without (what a pass that knows its open instances are not in the ledger could leave out)")
        for name in reversed(created):
            session.execute(f"DROP TABLE IF EXISTS {SHARED_FACTS.get(name) or SHARED_ROWS.get(name)}")



def order_keys(reconciler, later, keys) -> str:
    """A SELECT of the distinct (c, k) keys of the order_placed campaigns' open + new instances at ``later``."""
    parts = []
    for campaign in reconciler.campaigns():
        if campaign.trigger.kind != "order_placed":
            continue
        bare = dataclasses.replace(campaign, audience=None,
                                   steps=tuple(dataclasses.replace(s, audience=None) for s in campaign.steps))
        parts.append(f"({keys(bare, later, True)}) UNION ALL (({keys(bare, later, False)}) "
                     f"EXCEPT ({keys(bare, later - timedelta(minutes=1), False)}))")
    return "SELECT DISTINCT c, k FROM (" + " UNION ALL ".join(parts) + ") o"


def maintenance(reconciler, earlier, later, keys) -> None:
    """``--maintenance`` (see the module's docstring)."""
    import statistics

    from engine.run.incremental import SAFETY_LAG
    from engine.run.plan import create_shared_table, drop_facts
    from engine.sql.compile import SHARED_ROWS, instant_text
    from engine.sql.prepared import facts_statement

    config, campaigns = reconciler.config, reconciler.campaigns()
    change = config.sources["orders"].columns.get("updated_at")
    if change is None:
        print("--maintenance needs a change column on orders (--project project-changes)")
        return
    rows_table = SHARED_ROWS["order_rows"]
    names = ", ".join(f"'{c.name}'" for c in campaigns if c.trigger.kind == "order_placed")
    since = instant_text(earlier - SAFETY_LAG, config.dialect)
    create = facts_statement("order_rows", config, later, campaigns).text
    select = create[create.index(" AS ") + len(" AS "):]
    where = select.rindex("WHERE") + len("WHERE")
    ranked = f"{select[:where]} n.customer_id IN (SELECT customer_id FROM engine_touched) AND {select[where:]}"
    with reconciler.warehouse.session() as session:
        made: list[str] = []
        create_shared_table(session, config, later, campaigns, "order_rows", made)
        session.execute(f"CREATE TEMPORARY TABLE engine_kept_keys AS {order_keys(reconciler, later, keys)}")
        session.execute(f"CREATE TEMPORARY TABLE engine_kept_whole AS SELECT r.* FROM {rows_table} r SEMI JOIN "
                        "engine_kept_keys k ON k.c = CAST(r.customer_id AS VARCHAR) AND k.k = CAST(r.order_id AS VARCHAR)")

        def timed(sql: str, before: str | None = None) -> float:
            spent = []
            for _ in range(7):
                if before:
                    session.execute(before)
                started = time.process_time()
                if sql.startswith("SELECT"):
                    for _batch in session.stream(sql):
                        pass
                else:
                    session.execute(sql)
                spent.append(time.process_time() - started)
            return statistics.median(spent)

        fresh = "CREATE OR REPLACE TEMPORARY TABLE engine_kept_rows AS SELECT * FROM engine_kept_whole"
        steps = [
            ("customers whose orders changed (kept facts' refresh runs the same scan)",
             f"CREATE OR REPLACE TEMPORARY TABLE engine_touched AS SELECT customer_id FROM {config.sources['orders'].table} "
             f"WHERE {change} > CAST('{since}' AS TIMESTAMP) GROUP BY customer_id", None),
            ("delete their kept rows and those fallen out of the windows",
             "DELETE FROM engine_kept_rows WHERE customer_id IN (SELECT customer_id FROM engine_touched) "
             "OR created_at < (SELECT MIN(created_at) FROM engine_kept_whole)", fresh),
            ("insert their rows ranked anew (customers filtered before the window)",
             f"INSERT INTO engine_kept_rows {ranked}", fresh),
            ("the trim after the pass: kept rows not in the ledger (anti-join)",
             f"SELECT COUNT(*) FROM engine_kept_whole r WHERE NOT EXISTS (SELECT 1 FROM engine_ledger l WHERE "
             f"l.campaign IN ({names}) AND l.customer_id = CAST(r.customer_id AS VARCHAR) "
             f"AND l.trigger_key = CAST(r.order_id AS VARCHAR))", None),
            ("copy the kept rows into the pass", "CREATE OR REPLACE TEMPORARY TABLE engine_kept_copy AS "
                                                  "SELECT * FROM engine_kept_whole", None),
        ]
        print(f"\nper-pass statements of kept order rows (process CPU, median of 7; load "
              f"{open('/proc/loadavg').read().split()[:3]}):")
        total = 0.0
        for what, sql, before in steps:
            spent = timed(sql, before)
            total += spent
            print(f"  {spent:.4f} s  {what}", flush=True)
        (touched,), = [tuple(r) for batch in session.stream("SELECT COUNT(*) FROM engine_touched") for r in batch]
        print(f"  {total:.4f} s in all; {touched:,} customer(s) touched; load {open('/proc/loadavg').read().split()[:3]}")
        for table in ("engine_touched", "engine_kept_rows", "engine_kept_copy", "engine_kept_whole", "engine_kept_keys"):
            session.execute(f"DROP TABLE IF EXISTS {table}")
        for name in reversed(made):
            drop_facts(session, config, name, created=True)


def child(args, reconciler, later, keys) -> int:
    """One ``--plan-ab`` process: 4 plans a minute later, as today, cut or kept (the module's docstring)."""
    import statistics

    sys.path.insert(0, str(HERE))
    import run as bench

    import engine.run.plan as plan

    if args.child in ("cut", "kept"):
        with reconciler.warehouse.session() as session:
            session.execute("DROP TABLE IF EXISTS engine_kept_keys")
            session.execute(f"CREATE TABLE engine_kept_keys AS {order_keys(reconciler, later, keys)}")
        create = plan.create_shared_table
        cutting = ("DELETE FROM engine_order_rows WHERE NOT EXISTS (SELECT 1 FROM engine_kept_keys k "
                   "WHERE k.c = CAST(engine_order_rows.customer_id AS VARCHAR) "
                   "AND k.k = CAST(engine_order_rows.order_id AS VARCHAR))")
        if args.child == "kept":  # the cut rows made once, before the clock: copied in at each pass
            with reconciler.warehouse.session() as session:
                made: list[str] = []
                create(session, reconciler.config, later, reconciler.campaigns(), "order_rows", made)
                session.execute(cutting)
                session.execute("DROP TABLE IF EXISTS engine_kept_rows")
                session.execute("CREATE TABLE engine_kept_rows AS SELECT * FROM engine_order_rows")
                for name in reversed(made):
                    plan.drop_facts(session, reconciler.config, name, created=True)

        def cut(session, config, now, campaigns, name, created, kept=None):
            if args.child == "kept" and name == "order_rows" and name not in created:
                session.execute("CREATE TEMPORARY TABLE engine_order_rows AS SELECT * FROM engine_kept_rows")
                created.append(name)
                return
            fresh = name not in created
            create(session, config, now, campaigns, name, created, kept)
            if fresh and name == "order_rows":
                session.execute(cutting)

        plan.create_shared_table = cut
    walls, cpus, rows = [], [], []
    for _ in range(4):
        started, cpu = time.perf_counter(), time.process_time()
        counts = bench._consume_plan(reconciler, later, counted=True)
        walls.append(time.perf_counter() - started)
        cpus.append(time.process_time() - cpu)
        rows.append((counts["rows"], counts["settled"]))
    import gc
    gc.collect()
    floor = []
    for _ in range(3):
        cpu = time.process_time()
        bench._consume_sql(reconciler.warehouse, bench.FLOOR_SQL)
        floor.append(time.process_time() - cpu)
    if args.child != "today":
        reconciler.warehouse.execute("DROP TABLE engine_kept_keys")
        reconciler.warehouse.execute("DROP TABLE IF EXISTS engine_kept_rows")
    print(json.dumps({"wall": statistics.median(walls[1:]), "cpu": statistics.median(cpus[1:]), "rows": rows,
                      "floor_cpu": statistics.median(floor), "load": open("/proc/loadavg").read().split()[:3]}))
    return 0


def plan_ab(args, shop: Path) -> int:
    """``--plan-ab``: alternated fresh processes, today and cut."""
    import statistics
    import subprocess

    collected: dict[str, list[dict]] = {"today": [], "cut": [], "kept": []}
    for round_ in range(args.plan_ab):
        for mode in ("today", "cut", "kept") if round_ % 2 == 0 else ("kept", "cut", "today"):
            out = subprocess.run([sys.executable, __file__, "--shop", str(shop), "--project", args.project,
                                  "--minutes", str(args.minutes), "--child", mode], capture_output=True, text=True)
            if out.returncode:
                raise SystemExit(out.stderr[-3000:])
            result = json.loads(out.stdout.strip().splitlines()[-1])
            collected[mode].append(result)
            print(f"round {round_} {mode:5}: plan wall {result['wall']:.3f} s, CPU {result['cpu']:.3f} s "
                  f"(x{result['cpu'] / result['floor_cpu']:.1f} the floor's CPU {result['floor_cpu']:.3f} s); "
                  f"rows {result['rows'][-1]}; load {' '.join(result['load'])}", flush=True)
    for mode, results in collected.items():
        print(f"{mode}: medians plan wall {statistics.median(r['wall'] for r in results):.3f} s, CPU "
              f"{statistics.median(r['cpu'] for r in results):.3f} s, floor CPU "
              f"{statistics.median(r['floor_cpu'] for r in results):.3f} s")
    if {tuple(map(tuple, r["rows"])) for rs in collected.values() for r in rs}.__len__() != 1:
        print("ROW COUNTS DIFFER between the modes")
    cut, kept, today = (statistics.median(r["cpu"] for r in collected[m]) for m in ("cut", "kept", "today"))
    print(f"CPU: cut / today x{cut / today:.3f}, kept / today x{kept / today:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
