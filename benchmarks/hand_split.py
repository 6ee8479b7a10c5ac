"""Where the plan of second-order + re-engage goes, beside the hand-written SQL for the same due sets
(benchmarks/hand_sql.py, issue 15's target <= 1.5x): CPU per part, one or more checkouts alternately.

    python benchmarks/hand_split.py --shop DIR [--rounds 7] [--turns 3] CHECKOUT [CHECKOUT ...]

``DIR`` is a shop kept by ``run.py --keep DIR`` (its project/ and shop.duckdb; the ledger is emptied
first, as run.py's --shared-rows does). Each checkout runs in a fresh process with its own engine
(``PYTHONPATH``), ``--turns`` times in turn with the others; per process, ``--rounds`` rounds of the
hand-written SQL then the engine's plan of the two campaigns (``Reconciler.due``, every message consumed,
as hand_sql measures it). Printed per process, medians of its rounds: CPU seconds of the whole process
(DuckDB's threads included: the steadier figure on a shared machine) of the hand-written SQL and of the
plan, and inside the plan: SQL (statements on the pass's session, execute and stream, the driver's fetch
of the rows included; each shared table's CREATE and DROP and each campaign's due query on a line of its
own), ``plan.decide_rows``, ``attach_contacts``, each policy stage, and the garbage
collector's passes by generation (they run inside the other parts: not added up), with the load average.
``--frozen``: each process freezes what start-up left (``engine.heap.settle``) before it measures, as
``engine plan`` and ``engine run`` do.
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def statement_label(sql: object) -> str:
    """What a statement of the plan is counted under: a shared table's CREATE or DROP by its name, a due
    query by its campaign, anything else as SQL."""
    text = " ; ".join(sql) if isinstance(sql, list) else str(sql)
    table = re.match(r"\s*(CREATE\s+(?:TEMPORARY\s+)?TABLE|DROP\s+TABLE(?:\s+IF\s+EXISTS)?)\s+(\S+)", text, re.I)
    if table:
        return f"SQL {table.group(1).split()[0].upper()} {table.group(2).split('.')[-1]}"
    campaign = re.search(r"SELECT '([^']+)' AS campaign", text)
    return f"SQL due query {campaign.group(1)}" if campaign else "SQL other"


def child(shop: Path, rounds: int, frozen: bool = False) -> dict:
    import dataclasses
    import gc
    from datetime import datetime, timezone

    sys.path.insert(0, str(HERE))
    os.environ["ENGINE_WAREHOUSE_URL"] = f"duckdb:///{shop / 'shop.duckdb'}"
    import engine
    import hand_sql
    import run as bench
    from engine.run import plan, policies, reconcile
    from engine.state import warehouse

    spent: collections.Counter = collections.Counter()

    def timed(function, label: str, generator: bool = False):
        def labelled(args) -> str:  # a session's statement (its first argument after self) by what it is
            return statement_label(args[1]) if label == "SQL" and len(args) > 1 else label

        def call(*args, **kwargs):
            started = time.process_time()
            try:
                return function(*args, **kwargs)
            finally:
                spent[labelled(args)] += time.process_time() - started

        def stream(*args, **kwargs):  # the time inside the generator, each batch's fetch
            rows, name = function(*args, **kwargs), labelled(args)
            while True:
                started = time.process_time()
                batch = next(rows, None)
                spent[name] += time.process_time() - started
                if batch is None:
                    return
                yield batch
        return stream if generator else call

    warehouse.Session.stream = timed(warehouse.Session.stream, "SQL", generator=True)
    for name in ("execute_together", "execute_driver", "returning"):  # execute runs through execute_together
        setattr(warehouse.Session, name, timed(getattr(warehouse.Session, name), "SQL"))
    plan.decide_rows = timed(plan.decide_rows, "decide_rows")
    reconcile.attach_contacts = timed(reconcile.attach_contacts, "attach_contacts")
    policies.STAGES = tuple(dataclasses.replace(stage, apply=timed(stage.apply, f"policy {stage.name}"))
                            for stage in policies.STAGES)
    collecting: dict[str, float] = {}

    def collector(phase: str, info: dict) -> None:
        if phase == "start":
            collecting["at"] = time.process_time()
        else:
            spent[f"collector gen{info['generation']} (inside the above)"] += time.process_time() - collecting["at"]

    project_dir = shop / "project"
    reconciler = engine.Reconciler(engine.load_project(project_dir))
    bench._reset_ledger(reconciler, project_dir)
    if frozen:
        from engine import heap
        heap.settle(collect=False)  # as engine plan does once start-up is done (cli.common.open_reconciler)
    now = datetime.fromisoformat(json.loads((shop / "shop.json").read_text())["shop"]["anchor"].replace("Z", "+00:00"))
    now = now.astimezone(timezone.utc)
    campaigns = [reconciler.project.campaign(name) for name in hand_sql.CAMPAIGNS]
    hand = hand_sql._hand_rows(reconciler.warehouse, now)
    if hand_sql._engine_rows(reconciler, now, campaigns) != hand:
        raise SystemExit("the hand-written SQL finds other due messages than the engine")
    gc.callbacks.append(collector)
    parts: dict[str, list[float]] = collections.defaultdict(list)
    try:
        for _ in range(rounds):
            started = time.process_time()
            hand_sql._hand_rows(reconciler.warehouse, now)
            parts["hand-written SQL"].append(time.process_time() - started)
            spent.clear()
            started = time.process_time()
            hand_sql._engine_rows(reconciler, now, campaigns)
            parts["plan"].append(time.process_time() - started)
            for label, seconds in spent.items():
                parts[f"  {label}"].append(seconds)
    finally:
        gc.callbacks.remove(collector)
        reconciler.close()
    return {"rows": len(hand), "parts": {label: statistics.median(values + [0.0] * (rounds - len(values)))
                                         for label, values in parts.items()}}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shop", type=Path, required=True, help="a shop kept by run.py --keep DIR")
    parser.add_argument("--rounds", type=int, default=7, help="rounds per process (medians)")
    parser.add_argument("--turns", type=int, default=3, help="fresh processes per checkout, in turn")
    parser.add_argument("--frozen", action="store_true", help="freeze start-up's objects first, as engine plan")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("checkouts", nargs="*", type=Path)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.shop.resolve(), args.rounds, args.frozen)))
        return 0
    for turn in range(args.turns):
        for checkout in args.checkouts:
            load = " ".join(open("/proc/loadavg").read().split()[:3])
            done = subprocess.run([sys.executable, __file__, "--child", "--shop", str(args.shop), "--rounds", str(args.rounds),
                                   *(["--frozen"] if args.frozen else [])],
                                  env={**os.environ, "PYTHONPATH": str(checkout.resolve())}, capture_output=True, text=True)
            if done.returncode != 0:
                print(done.stderr, file=sys.stderr)
                return 1
            result = json.loads(done.stdout.strip().splitlines()[-1])
            parts = result["parts"]
            ratio = parts["plan"] / parts["hand-written SQL"]
            print(f"turn {turn + 1} {checkout} (load {load}): {result['rows']:,} due messages, plan x{ratio:.2f} "
                  f"of the hand-written SQL (CPU)")
            for label, seconds in parts.items():
                print(f"    {label:60s} {seconds * 1000:8.1f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
