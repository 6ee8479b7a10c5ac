"""A batch's lookup keys bound as one array parameter against the literal ``IN`` list they replace
(engine.run.sources), on one warehouse, alternately in the same run.

    python benchmarks/bound_keys.py [--url postgresql+psycopg://...] [--customers 20000] [--rounds 5]

Without ``--url`` it starts a throwaway PostgreSQL (tests/pg.py) and loads the demo shop of
``--customers`` into it. Per batch of 1,000 keys, as a pass asks them: the trigger records (orders and
their items by order id), the events of each type of the batch's customers, and every product list
kind. Printed: the median wall and client CPU (``time.process_time``: sqlglot's rendering is there) per
batch of each path, and their ratio.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url")
    parser.add_argument("--customers", type=int, default=20000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    sys.path[:0] = [str(ROOT), str(ROOT / "tests")]
    from sqlglot import exp

    from conftest import copy_project
    from engine.run import lists
    from engine.run.sources import SourceRows
    from engine.spec.config import load_config
    from engine.sql.product_lists import LIST_KINDS
    from engine.state.warehouse import Database
    from engine.tools.demo import create_tables, generate_shop, load_shop

    url = args.url
    if url is None:
        import pg

        url = pg.server().new_database()
    os.environ["ENGINE_WAREHOUSE_URL"] = url
    db = Database(url)
    if not db.fetch_all("SELECT 1 FROM information_schema.tables WHERE table_name = 'orders'"):
        create_tables(db)
        load_shop(db, generate_shop(seed=7, customers=args.customers))
    import tempfile

    config, _ = load_config(copy_project(Path(tempfile.mkdtemp()) / "project"))
    order_ids = sorted({str(r[0]) for r in db.fetch_all("SELECT order_id FROM orders")}, key=int)
    customers = sorted({str(r[0]) for r in db.fetch_all("SELECT customer_id FROM customers")}, key=int)
    types = sorted({str(r[0]) for r in db.fetch_all("SELECT type FROM events")})
    now = datetime(2025, 1, 10, tzinfo=timezone.utc)

    def batches(keys):
        step = max(1, len(keys) // 1000)
        return [keys[offset::step][:1000] for offset in range(min(step, 4))]

    def records(sources):
        for keys in batches(order_ids):
            sources.by_key("orders", "order_id", keys)
            sources.by_key("order_items", "order_id", keys)

    def events(sources):
        for keys in batches(customers):
            for kind in types:
                sources.rows_by_keys("events", "customer_id", keys, where=exp.column("type").eq(exp.Literal.string(kind)))

    def product_lists(sources):
        for keys in batches(customers):
            for name in LIST_KINDS:
                db.fetch_all(*lists.list_statement(name, keys, sources, now))

    stages = {"records": (records, len(batches(order_ids))), "events": (events, len(batches(customers))),
              "lists": (product_lists, len(batches(customers)))}
    timings: dict[tuple[str, str], list[tuple[float, float]]] = {}
    for _ in range(args.rounds):
        for path in ("literal", "bound"):
            sources = SourceRows(db, config, {})
            if path == "literal":
                sources.bound_keys = lambda *a: None
            for stage, (lookups, count) in stages.items():
                lookups(sources) if not timings else None  # the first round's statements and kinds are warm-up
                wall, cpu = time.perf_counter(), time.process_time()
                lookups(sources)
                timings.setdefault((stage, path), []).append(
                    ((time.perf_counter() - wall) / count, (time.process_time() - cpu) / count))
    load = open("/proc/loadavg").read().split()[:3]
    print(f"{db.dialect.name}, {args.customers} customers, batches of up to 1,000 keys, {args.rounds} rounds, "
          f"load {' '.join(load)}; median per batch, literal -> bound")
    for stage in stages:
        (lw, lc), (bw, bc) = ((statistics.median(w for w, _ in timings[(stage, p)]),
                               statistics.median(c for _, c in timings[(stage, p)])) for p in ("literal", "bound"))
        print(f"  {stage:8s} wall {lw * 1000:6.1f} -> {bw * 1000:6.1f} ms (x{bw / lw:.2f})   "
              f"client CPU {lc * 1000:6.1f} -> {bc * 1000:6.1f} ms (x{bc / lc:.2f})")
    db.dispose()


if __name__ == "__main__":
    main()
