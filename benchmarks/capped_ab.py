"""The plan under a frequency cap, two or more checkouts alternately, each in a fresh process: what it
costs that a customer's several due rows are decided in the sorted listing's order (policies.py).

    python benchmarks/capped_ab.py plan --shop DIR --rounds 5 BEFORE AFTER
    python benchmarks/capped_ab.py memory --rounds 3 BEFORE AFTER

``plan``: ``DIR`` is a shop kept by ``run.py --keep DIR`` (its ``shop.duckdb``, ``shop.json`` and
``project/``), copied once into a scratch directory, its project given ``policies.frequency_caps``
(``--caps``, default one message a day). In the child (``PYTHONPATH`` = the checkout) the plan at the
shop's anchor runs ``--plans`` times as ``engine plan`` runs it (the settled skips counted in SQL): the
first is reported as cold, the median of the others as warm, with the process's CPU seconds (every
thread, DuckDB's included), the rows and sends (equal for every checkout: a cap's count per customer
does not depend on the order) and how far the peak RSS (VmHWM) rose. ``memory``: as tests/test_memory.py,
the rise of the peak RSS over a plan of a shop of 25,000 and one of 100,000 customers, DuckDB on one
thread, but each customer with two orders due at once for a campaign on every order under the cap:
the difference is what 150,000 more due rows, every one of a customer with two, add. Printed per round
with the load average, then the medians. DuckDB only.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent

PLAN_CHILD = textwrap.dedent("""
    import json, sys, time
    from datetime import datetime
    from pathlib import Path
    import engine
    from engine.run.settle import SettledCounts

    def high_water_mb():
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024

    reconciler = engine.Reconciler(engine.load_project(Path(sys.argv[1])), writes=False)
    now, runs, start = datetime.fromisoformat(sys.argv[2]), [], high_water_mb()
    for _ in range(int(sys.argv[3])):
        wall, cpu, rows, sends = time.perf_counter(), time.process_time(), 0, 0
        for batch in reconciler.due(now, settled_counts=SettledCounts()):
            rows += len(batch)
            sends += sum(m.action == "send" for m in batch)
        runs.append((time.perf_counter() - wall, time.process_time() - cpu, rows, sends))
    print(json.dumps({"runs": runs, "growth_mb": high_water_mb() - start}))
""")

MEMORY_CHILD = textwrap.dedent("""
    import json, sys
    from datetime import datetime
    from pathlib import Path
    import engine

    def high_water_mb():
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024

    reconciler = engine.Reconciler(engine.load_project(Path(sys.argv[1])))
    start = high_water_mb()
    due = sum(len(batch) for batch in reconciler.due(datetime.fromisoformat(sys.argv[2])))
    reconciler.close()
    print(json.dumps({"due": due, "growth_mb": high_water_mb() - start}))
""")

EVERY_ORDER = """name: every-order
trigger: {order_placed: {}}
steps:
  - id: thanks
    delay: 0m
    freshness: 1d
    channel: email
    template: registration/first-order.email.j2
"""
SMALL, LARGE = 25_000, 100_000
MEMORY_NOW = "2025-01-10T00:00:00+00:00"


def _child(code: str, checkout: str, url: str, *args: str) -> dict:
    env = dict(os.environ, PYTHONPATH=checkout, ENGINE_WAREHOUSE_URL=url)
    done = subprocess.run([sys.executable, "-c", code, *args], env=env, capture_output=True, text=True, check=False)
    if done.returncode:
        raise SystemExit(f"{checkout}: {done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _load() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def _capped(project: Path, caps: str) -> None:
    config = project / "engine.yaml"
    config.write_text(config.read_text() + f"\npolicies:\n  frequency_caps: {caps}\n")


def plan(args, work: Path) -> None:
    shutil.copy(args.shop / "shop.duckdb", work / "shop.duckdb")
    shutil.copytree(args.shop / "project", work / "project")
    _capped(work / "project", args.caps)
    anchor = json.loads((args.shop / "shop.json").read_text())["shop"]["anchor"].replace("Z", "+00:00")
    url = f"duckdb:///{work / 'shop.duckdb'}"
    found: dict[str, dict[str, list[float]]] = {}
    for round_ in range(args.rounds):
        for checkout in args.checkouts:
            result = _child(PLAN_CHILD, checkout, url, str(work / "project"), anchor, str(args.plans))
            cold, warm = result["runs"][0], result["runs"][1:] or result["runs"]
            numbers = {"cold": cold[0], "warm": statistics.median(r[0] for r in warm),
                       "cpu": statistics.median(r[1] for r in warm), "growth": result["growth_mb"]}
            for name, value in numbers.items():
                found.setdefault(checkout, {}).setdefault(name, []).append(value)
            print(f"round {round_} {checkout}: cold {numbers['cold']:.3f} s, warm {numbers['warm']:.3f} s, CPU "
                  f"{numbers['cpu']:.3f} s, {cold[2]:,} rows, {cold[3]:,} sends, peak RSS +{numbers['growth']:.0f} MB "
                  f"[load {_load()}]", flush=True)
    for checkout, numbers in found.items():
        print(f"median {checkout}: " + ", ".join(f"{name} {statistics.median(values):.3f}"
                                                 for name, values in numbers.items()))


def memory(args, work: Path) -> None:
    sys.path.insert(0, str(REPO))
    from engine.state.warehouse import Database
    from engine.tools.demo import create_tables

    project = work / "project"
    project.mkdir()
    shutil.copy(REPO / "engine.yaml", project / "engine.yaml")
    shutil.copytree(REPO / "templates", project / "templates")
    (project / "campaigns.d").mkdir()
    (project / "campaigns.d" / "every-order.yaml").write_text(EVERY_ORDER)
    config = project / "engine.yaml"
    config.write_text(config.read_text().replace("warehouse:\n", "warehouse:\n  duckdb: {threads: 1}\n", 1))
    _capped(project, args.caps)
    urls = {}
    for customers in (SMALL, LARGE):  # two orders each in the two hours before MEMORY_NOW, half an hour apart
        urls[customers] = url = f"duckdb:///{work / f'shop{customers}.duckdb'}"
        db = Database(url)
        create_tables(db)
        db.execute(f"""INSERT INTO customers (customer_id, email, first_name, last_name, created_at, city, timezone)
            SELECT i, 'customer' || i || '@example.com', 'Ann', 'Lee', TIMESTAMP '2024-01-09 23:00:00', 'Berlin',
                   'Europe/Berlin' FROM range(1, {customers} + 1) AS r(i)""")
        db.execute(f"""INSERT INTO orders (order_id, customer_id, created_at, status, total)
            SELECT k * {customers} + i, i, TIMESTAMP '2025-01-09 22:00:00' + to_seconds((i * 7 + k * 1800) % 3600),
                   'completed', 10 FROM range(1, {customers} + 1) AS r(i), range(0, 2) AS s(k)""")
        db.dispose()
    found: dict[str, list[float]] = {}
    for round_ in range(args.rounds):
        for checkout in args.checkouts:
            small, large = (_child(MEMORY_CHILD, checkout, urls[n], str(project), MEMORY_NOW) for n in (SMALL, LARGE))
            extra = large["growth_mb"] - small["growth_mb"]
            found.setdefault(checkout, []).append(extra)
            print(f"round {round_} {checkout}: {small['due']:,} due +{small['growth_mb']:.0f} MB, {large['due']:,} due "
                  f"+{large['growth_mb']:.0f} MB: {extra:.0f} MB for {large['due'] - small['due']:,} more [load {_load()}]",
                  flush=True)
    for checkout, values in found.items():
        print(f"median {checkout}: {statistics.median(values):.0f} MB ({', '.join(f'{v:.0f}' for v in values)})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("mode", choices=("plan", "memory"))
    parser.add_argument("checkouts", nargs="+", help="checkouts of the engine (each one's PYTHONPATH)")
    parser.add_argument("--shop", type=Path, help="plan: a shop kept by run.py --keep")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--plans", type=int, default=3, help="plan: plans per process (the first is the cold one)")
    parser.add_argument("--caps", default="[{max: 1, per: 1d}]", help="policies.frequency_caps of the project")
    args = parser.parse_args()
    if args.mode == "plan" and args.shop is None:
        parser.error("plan needs --shop")
    with tempfile.TemporaryDirectory(prefix="engine-capped-") as scratch:
        (plan if args.mode == "plan" else memory)(args, Path(scratch))


if __name__ == "__main__":
    main()
