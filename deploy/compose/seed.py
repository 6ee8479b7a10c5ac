"""docker-compose.yml's seed step: the demo shop in the warehouse, once.

Builds the deterministic demo shop into ENGINE_WAREHOUSE_URL with its history
ending now, so the shipped campaigns have customers due at the first pass.
A warehouse that already has a customers table is left alone (exit 0), so
`docker compose up` can run it every time.
"""
from __future__ import annotations

import os
import sys

import sqlalchemy as sa

from engine.clock import SystemClock, format_instant
from engine.tools.demo import build_demo


def main() -> int:
    url = os.environ.get("ENGINE_WAREHOUSE_URL")
    if not url:
        print("seed: ENGINE_WAREHOUSE_URL is not set", file=sys.stderr)
        return 1
    customers = int(os.environ.get("SEED_CUSTOMERS", "2000"))
    engine = sa.create_engine(url)
    try:
        if sa.inspect(engine).has_table("customers"):
            print("seed: the warehouse already has a shop; nothing to do")
            return 0
    except sa.exc.OperationalError as exc:
        print(f"seed: cannot reach the warehouse: {str(exc.orig).strip().splitlines()[0]}", file=sys.stderr)
        return 1
    finally:
        engine.dispose()
    anchor = format_instant(SystemClock().now())
    counts = build_demo(url, seed=42, customers=customers, anchor=anchor)
    print(f"seed: demo shop with history up to {anchor}: " + ", ".join(f"{n} {name}" for name, n in counts.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
