"""The plan a minute later on a PostgreSQL shop, per statement, for two or more checkouts alternately,
each in a fresh process; with the server's CPU, which a loaded machine disturbs far less than wall time.

    python benchmarks/pg_minute.py --url URL --project DIR [--fill | --cold | --pass] [--flip CAPABILITY]
        [--rounds 5] [--plans 3] [--statements] CHECKOUT...

``URL``: a database holding a shop copied by ``run.py --postgres --keep DIR`` (or ``--postgres-url``),
on this machine; ``DIR``: that run's ``project/``. ``--fill`` first records the plan at the shop's anchor
in the ledger and writes the settle memory of the steady state as ``run.py``'s minute-later row does
(``_record_plan``, ``_remember_steady``). Then per round and checkout
(``PYTHONPATH`` = the checkout) a child runs ``Reconciler.due`` at the anchor + 1 minute ``--plans``
times as ``engine plan`` runs it (the settled skips counted in SQL), the first in the process cold.
Printed per child: each plan's wall seconds, the CPU seconds of the server's processes (the
postmaster's children, live and exited: ``/proc``, so the server must run here), the client's CPU
and the floor (``run.FLOOR_SQL``) with the load average; at the end per checkout the medians over
the warm plans and, with ``--statements``, each statement's wall and server CPU (the last warm plan).

``--cold``: each child empties the ledger and plans at the anchor instead (run.py's headline plan, the
settled skips counted). ``--pass``: each plan is the first pass's own plan at the anchor (run.py's "plan as
a pass runs it (empty ledger), settled as the pass decides": skips recorded, the ledger emptied before each,
untimed). ``--flip CAPABILITY``: each checkout runs twice per round, as its dialect table declares it and
with that boolean ``Dialect`` capability of the shop's dialect flipped in the child (an A/B of a
declaration on one checkout; the order of the two alternates per round), with the flipped/declared ratios
of the medians at the end.
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import statistics
import sys
import time
from datetime import timedelta
from pathlib import Path

import checkouts

HERE = Path(__file__).resolve().parent
TICK = os.sysconf("SC_CLK_TCK")


def _stat(pid: int) -> list[str]:
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()  # [0] state, [1] ppid, [11:15] utime stime cutime cstime


def server_cpu(postmaster: int) -> float:
    """CPU seconds of the server: the postmaster's own and its exited children's (cutime, cstime), plus
    its live children's (backends, parallel workers, background processes)."""
    total = sum(int(x) for x in _stat(postmaster)[11:15])
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                fields = _stat(int(name))
            except (OSError, IndexError):
                continue
            if int(fields[1]) == postmaster:
                total += int(fields[11]) + int(fields[12])
    return total / TICK


def child(url: str, project: Path, plans: int, fill: bool, mode: str = "minute", flip: str | None = None) -> None:
    os.environ["ENGINE_WAREHOUSE_URL"] = url
    import engine
    sys.path.insert(0, str(HERE))
    import run as bench

    from engine.state import warehouse

    checkouts.flip(url, flip)
    reconciler = engine.Reconciler(engine.load_project(project))
    meta = json.loads((project.parent / "shop.json").read_text())
    now = bench._naive_anchor(meta["shop"]["anchor"]).replace(tzinfo=bench.timezone.utc)
    later = now + timedelta(minutes=1)
    if mode in ("cold", "pass"):
        bench._reset_ledger(reconciler, project)
        later = now
    if fill:
        bench._reset_ledger(reconciler, project)
        filled = bench._record_plan(reconciler, now)  # then the steady state's settle memory, as duckdb_minute's
        print(json.dumps({"filled": filled, "settles": bench._remember_steady(reconciler, now + timedelta(minutes=1)),
                          "engine": checkouts.engine_checkout()}))
        return
    [(backend,)] = reconciler.warehouse.execute("SELECT pg_backend_pid()")
    postmaster = int(_stat(backend)[1])
    spent: dict = collections.defaultdict(lambda: [0.0, 0.0])
    original = (warehouse.Session.execute_together, warehouse.Session.stream, warehouse.Session.returning)

    current = checkouts.name_campaigns()  # the campaign whose statements run next

    def label(sql: str) -> str:
        words = sql.split()
        if words[:3] == ["CREATE", "TEMPORARY", "TABLE"] or words[0] in ("ANALYZE", "DROP", "INSERT"):
            return " ".join(words[:5])[:70]
        return f"{current['campaign']}: {' '.join(words)[:40]}"

    def timed(key: str, started: float, cpu: float) -> None:
        spent[key][0] += time.perf_counter() - started
        spent[key][1] += server_cpu(postmaster) - cpu

    def execute_together(self, statements):
        started, cpu = time.perf_counter(), server_cpu(postmaster)
        try:
            return original[0](self, statements)
        finally:
            timed(label(statements[-1]), started, cpu)

    def stream(self, sql, batch_size=1000, parameters=None, **options):
        started, cpu = time.perf_counter(), server_cpu(postmaster)
        for rows in original[1](self, sql, batch_size, parameters, **options):
            timed(label(sql), started, cpu)
            yield rows
            started, cpu = time.perf_counter(), server_cpu(postmaster)
        timed(label(sql), started, cpu)

    def returning(self, sql, parameters=None):
        started, cpu = time.perf_counter(), server_cpu(postmaster)
        try:
            return original[2](self, sql, parameters)
        finally:
            timed(label(sql), started, cpu)

    warehouse.Session.execute_together, warehouse.Session.stream, warehouse.Session.returning = \
        execute_together, stream, returning
    result: dict = {"wall": [], "server": [], "client": [], "rows": [], "settled": [], "flipped": bool(flip)}
    for _ in range(plans):
        if mode == "pass":  # untimed, as run.py's _pass_plan: an empty ledger, nothing remembered
            bench._reset_ledger(reconciler, project)
            reconciler.settled_last.clear()
            reconciler.settled_remembered.clear()
        spent.clear()
        started, cpu, client = time.perf_counter(), server_cpu(postmaster), time.process_time()
        counts = bench._pass_plan(reconciler, project, later, 1, "decided", reset=False, record=True)[1] \
            if mode == "pass" else bench._consume_plan(reconciler, later, counted=True)
        result["wall"].append(time.perf_counter() - started)
        result["server"].append(server_cpu(postmaster) - cpu)
        result["client"].append(time.process_time() - client)
        result["rows"].append(counts["rows"])
        result["settled"].append(counts["settled"])
    warehouse.Session.execute_together, warehouse.Session.stream, warehouse.Session.returning = original
    if mode == "pass":
        bench._reset_ledger(reconciler, project)
    floors = []
    for _ in range(3):
        started = time.perf_counter()
        bench._consume_sql(reconciler.warehouse, bench.FLOOR_SQL)
        floors.append(time.perf_counter() - started)
    result["floor"] = statistics.median(floors)
    result["statements"] = {key: value for key, value in spent.items()}
    result["load"] = open("/proc/loadavg").read().split()[:3]
    result["engine"] = checkouts.engine_checkout()
    print(json.dumps(result))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkouts", nargs="*", type=Path)
    parser.add_argument("--url", required=True, help="SQLAlchemy URL (postgresql+psycopg://...)")
    parser.add_argument("--project", type=Path, required=True)
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--fill", action="store_true", help="record the plan at the anchor first")
    mode.add_argument("--cold", action="store_true",
                      help="the cold plan instead: each child empties the ledger and plans at the anchor")
    mode.add_argument("--pass", dest="first_pass", action="store_true",
                      help="the first pass's own plan instead: skips recorded, the ledger emptied before each plan")
    checkouts.add_flip_argument(parser)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--plans", type=int, default=3, help="plans per process, the first cold (default 3)")
    parser.add_argument("--statements", action="store_true", help="print each statement's medians")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    chosen = "cold" if args.cold else "pass" if args.first_pass else "minute"
    if args.child:
        child(args.url, args.project.resolve(), args.plans, args.fill, chosen, args.flip)
        return 0
    checkouts.check_flip(parser, args.url, args.flip)

    def run_child(checkout: Path, fill: bool = False, flip: bool = False) -> dict:
        arguments = ["--url", args.url, "--project", str(args.project), "--plans", str(args.plans)] + (
            ["--cold"] if args.cold else ["--pass"] if args.first_pass else []) + (
            ["--flip", args.flip] if flip else [])
        return checkouts.run_child(__file__, checkout, arguments + (["--fill"] if fill else []))

    if args.fill:
        print(f"ledger filled: {run_child(args.checkouts[0] if args.checkouts else HERE.parent, True)}", flush=True)
    collected: dict = collections.defaultdict(list)
    for round_ in range(args.rounds):
        for checkout in args.checkouts:
            for flip in checkouts.flip_order(round_, args.flip):
                r = run_child(checkout, flip=flip)
                r["total"] = [server + client for server, client in zip(r["server"], r["client"])]
                variant = checkouts.variant(checkout, args.flip, flip)
                collected[variant].append(r)
                seconds = {key: " ".join(f"{x:.2f}" for x in r[key]) for key in ("wall", "server", "client")}
                print(f"round {round_} {variant}: wall {seconds['wall']} s, server CPU {seconds['server']} s, "
                      f"client CPU {seconds['client']} s, floor {r['floor']:.3f} s, rows {r['rows']}, "
                      f"settled {r['settled']}, load {' '.join(r['load'])}", flush=True)
    for checkout, results in collected.items():
        warm = lambda key: statistics.median(x for r in results for x in r[key][1:] or r[key])  # noqa: E731
        print(f"{checkout}: medians of the warm plans: wall {warm('wall'):.3f} s, server CPU {warm('server'):.3f} s, "
              f"client CPU {warm('client'):.3f} s, server + client {warm('total'):.3f} s; "
              f"floor {statistics.median(r['floor'] for r in results):.3f} s")
        if args.statements:
            keys = sorted({k for r in results for k in r["statements"]},
                          key=lambda k: -statistics.median(r["statements"].get(k, [0, 0])[1] for r in results))
            for key in keys:
                wall = statistics.median(r["statements"].get(key, [0, 0])[0] for r in results)
                cpu = statistics.median(r["statements"].get(key, [0, 0])[1] for r in results)
                if wall >= 0.005:
                    print(f"  {wall:7.3f} s wall {cpu:6.2f} s server CPU  {key}")
    if args.flip:
        print("\n".join(checkouts.flip_ratios(collected, args.checkouts, args.flip, {
            "wall": "wall", "server": "server CPU", "client": "client CPU", "total": "server + client CPU"})))
    return 0


if __name__ == "__main__":
    sys.exit(main())
