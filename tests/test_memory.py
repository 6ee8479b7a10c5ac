"""Memory stays flat however many messages are due (issue 7: under 500 MB at 1M due).

A child process plans a shop in which every customer is due and reports how
far its peak RSS (VmHWM) rose while it streamed the plan. Done for N and 4N
customers: what the extra 3N rows add is the per-row cost. Streamed, that is
mostly the due query's narrow hash table (customer id, trigger key and time):
13 to 19 MB for 150k rows in three runs on a 2-core VM at load 5 to 7. Measured
with each regression put back: the due query buffering every candidate row
with all its columns before the first one streams out (a correlated ``NOT
EXISTS`` over the ledger and a materialised source CTE) 63 and 75 MB; a pass
remembering every send although no cap reads it 48 MB, twice. A difference of
peaks, not a peak, so start-up and DuckDB's constant buffers do not count,
and a slower machine changes the time but not the bytes. DuckDB runs on one
thread here (``warehouse.duckdb.threads``): with two, the rows in flight
between its threads and Python made the streamed figure vary up to 25 MB.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from conftest import copy_project, write

NOW = "2025-01-10T00:00:00+00:00"
SMALL, LARGE = 50_000, 200_000
#: MB the 150k extra due rows may add to the peak: streamed 13-19 MB, either regression 48-75 MB.
GROWTH_BOUND_MB = 32

CHILD = textwrap.dedent("""
    import json, sys
    from datetime import datetime
    from pathlib import Path
    import engine

    def high_water_mb():
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024

    reconciler = engine.Reconciler(engine.load_project(Path(sys.argv[1])))
    baseline = high_water_mb()
    due = sum(len(batch) for batch in reconciler.due(datetime.fromisoformat(sys.argv[2])))
    reconciler.close()
    print(json.dumps({"due": due, "growth_mb": high_water_mb() - baseline}))
""")


def _shop(path: Path, customers: int) -> str:
    """A DuckDB shop of ``customers`` who all registered in the hour before NOW, built in SQL."""
    from engine.tools.demo import create_tables
    from engine.state.warehouse import Database

    url = f"duckdb:///{path}"
    db = Database(url)
    create_tables(db)
    db.execute(f"""
        INSERT INTO customers (customer_id, email, first_name, last_name, created_at, city, timezone, customer_group)
        SELECT i, 'customer' || i || '@example.com', 'Ann', 'Lee', TIMESTAMP '2025-01-09 23:00:00' + to_seconds(i % 3600),
               'Berlin', 'Europe/Berlin', 'standard'
        FROM range(1, {customers} + 1) AS r(i)""")
    db.dispose()
    return url


def _plan_growth(project: Path, url: str) -> dict:
    env = dict(os.environ, ENGINE_WAREHOUSE_URL=url)
    done = subprocess.run([sys.executable, "-c", CHILD, str(project), NOW], env=env, capture_output=True,
                          text=True, timeout=240, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="VmHWM is read from /proc")
def test_peak_memory_does_not_grow_with_due_rows(tmp_path):
    project = copy_project(tmp_path / "project")
    config = project / "engine.yaml"  # one DuckDB thread: fewer rows in flight, so less noise in the peaks
    config.write_text(config.read_text().replace("warehouse:\n", "warehouse:\n  duckdb: {threads: 1}\n", 1))
    for campaign in (project / "campaigns.d").glob("*.yaml"):
        campaign.unlink()
    write(project / "campaigns.d" / "everyone.yaml", """
        name: everyone
        trigger:
          registration: {}
        steps:
          - id: hello
            delay: 0m
            channel: email
            template: registration/first-order.email.j2
    """)
    small = _plan_growth(project, _shop(tmp_path / "small.duckdb", SMALL))
    large = _plan_growth(project, _shop(tmp_path / "large.duckdb", LARGE))
    assert (small["due"], large["due"]) == (SMALL, LARGE)
    extra = large["growth_mb"] - small["growth_mb"]
    assert extra < GROWTH_BOUND_MB, (
        f"planning {LARGE - SMALL:,} more due messages raised the peak by {extra:.0f} MB more "
        f"({small['growth_mb']:.0f} MB at {SMALL:,}, {large['growth_mb']:.0f} MB at {LARGE:,}): "
        "something buffers the whole due set instead of streaming it")
