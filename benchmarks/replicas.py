"""Replicas sharing a pass (issue 21.3): N ``engine run --once --shard i/N`` processes on one PostgreSQL database.

Used by ``run.py --replicas 1,2,4``. For each N, on an emptied ledger: N real
processes (``python -m engine.cli.main``) start at once, each with its shard,
against the bench shop copied into PostgreSQL (warehouse and ledger in the
same database), emails to the loopback SMTP sink in its own process (SMS and
push to the file outbox). Reported per N: wall time from the first start to
the last exit (interpreter start and imports included: what a replica pays),
emails at the sink per second, messages recorded in the ledger per second,
PostgreSQL transactions per second (``pg_stat_database.xact_commit +
xact_rollback`` of the database: the ledger's and the due queries' alike), the
replicas' CPU seconds (``RUSAGE_CHILDREN``) and as cores busy, the sink's and
the whole machine's (``/proc/stat``) busy share, the last telling where it
becomes CPU-bound. Each shard is checked after the run: every ledger key
once (the unique key guarantees it), and the sink received exactly the sent emails.
Must not run without PostgreSQL (the caller skips); never touches the shop tables.
"""
from __future__ import annotations

import os
import resource
import shutil
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def _machine_busy() -> tuple[int, int]:
    """(busy, total) jiffies of all CPUs since boot (/proc/stat's first line)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return sum(fields) - idle, sum(fields)


def _server_cpu(url: str) -> float | None:
    """CPU seconds of a local PostgreSQL server so far: its postmaster's own and its ended backends'
    (``/proc``: utime + stime + cutime + cstime; a backend's time reaches cutime when it exits),
    None when the server is not on this machine."""
    from engine.state.warehouse import Database

    db = Database(url)
    try:
        with db.engine.connect() as conn:  # the backend must live while its parent is looked up
            backend = conn.exec_driver_sql("SELECT pg_backend_pid()").scalar()
            ppid = int(Path(f"/proc/{backend}/stat").read_text().rpartition(")")[2].split()[1])
        fields = Path(f"/proc/{ppid}/stat").read_text().rpartition(")")[2].split()
    except (OSError, IndexError, ValueError):
        return None
    finally:
        db.dispose()
    return sum(int(x) for x in fields[11:15]) / os.sysconf("SC_CLK_TCK")


def _reset_ledger(url: str) -> None:
    from engine.state.ledger import Ledger, metadata
    from engine.state.migrations import VERSION_TABLE
    from engine.state.warehouse import Database

    db = Database(url)
    for table in [VERSION_TABLE] + [t.name for t in reversed(metadata.sorted_tables)]:
        db.execute(f"DROP TABLE IF EXISTS {table}")
    Ledger(db).ensure_schema()
    db.dispose()


def _stats(url: str) -> dict:
    import sqlalchemy as sa

    from engine.state.ledger import ledger_table
    from engine.state.warehouse import Database

    db = Database(url)
    with db.engine.connect() as conn:
        transactions = conn.execute(sa.text(
            "SELECT xact_commit + xact_rollback FROM pg_stat_database WHERE datname = current_database()")).scalar()
        c = ledger_table.c
        statuses = dict(conn.execute(sa.select(c.status, sa.func.count()).group_by(c.status)).all())
        keys, distinct = conn.execute(sa.select(sa.func.count(), sa.func.count(sa.distinct(c.message_key)))).one()
        email_sent = conn.execute(sa.select(sa.func.count()).where(c.status == "sent", c.channel == "email")).scalar()
    db.dispose()
    return {"transactions": transactions, "statuses": statuses, "keys": keys, "distinct": distinct,
            "email_sent": email_sent}


def measure_replicas(url: str, project_dir: Path, sink, now: datetime, counts: list[int], logs: Path) -> list[dict]:
    """One pass split over N replicas, for each N in ``counts``, on an emptied ledger each time."""
    rows = []
    env = {**os.environ, "ENGINE_WAREHOUSE_URL": url, "PYTHONPATH": os.pathsep.join(
        [str(REPO)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p])}
    logs.mkdir(parents=True, exist_ok=True)
    as_of = now.strftime("%Y-%m-%dT%H:%M:%SZ")
    cpus = os.cpu_count() or 1
    base_wall = None
    for n in counts:
        _reset_ledger(url)
        shutil.rmtree(project_dir / "var" / "outbox", ignore_errors=True)
        time.sleep(1.0)  # PostgreSQL reports a session's transactions when it ends: let the reset's arrive
        before = _stats(url)
        received = sink.received()
        sink_cpu = sink.cpu_seconds()
        children = resource.getrusage(resource.RUSAGE_CHILDREN)
        busy0, total0 = _machine_busy()
        server0 = _server_cpu(url)
        load = os.getloadavg()[0]
        started = time.perf_counter()
        processes = []
        for i in range(n):
            args = [sys.executable, "-m", "engine.cli.main", "run", "--once", "--quiet", "--as-of", as_of]
            if n > 1:
                args += ["--shard", f"{i}/{n}"]
            with open(logs / f"replicas-{n}-{i}.log", "w") as log:
                processes.append(subprocess.Popen(args, cwd=project_dir, env=env, stdout=log, stderr=subprocess.STDOUT))
        codes = [p.wait() for p in processes]
        wall = time.perf_counter() - started
        busy1, total1 = _machine_busy()
        after_children = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = (after_children.ru_utime - children.ru_utime) + (after_children.ru_stime - children.ru_stime)
        sink_cpu_after = sink.cpu_seconds()
        time.sleep(1.0)
        after = _stats(url)
        server1 = _server_cpu(url)
        server_note = f"; PostgreSQL CPU {server1 - server0:.1f} s" if server0 is not None and server1 is not None else ""
        emails = sink.received() - received
        recorded = sum(n_ for status, n_ in after["statuses"].items() if status != "claimed")
        transactions = after["transactions"] - before["transactions"]
        base_wall = base_wall or wall
        problems = []
        if any(code not in (0, 1) for code in codes):
            problems.append(f"exit codes {codes} (see {logs}/replicas-{n}-*.log)")
        errors = [line for i in range(n) for line in (logs / f"replicas-{n}-{i}.log").read_text().splitlines()
                  if line.startswith("Error:")]
        if errors:
            problems.append(f"{len(errors)} error(s), e.g. {errors[0][:200]}")
        if after["keys"] != after["distinct"]:
            problems.append(f"{after['keys'] - after['distinct']} duplicate ledger keys")
        if emails != after["email_sent"]:
            problems.append(f"sink received {emails:,} emails, ledger says {after['email_sent']:,} sent")
        if after["statuses"].get("claimed"):
            problems.append(f"{after['statuses']['claimed']} left claimed")
        machine = (busy1 - busy0) / max(total1 - total0, 1)
        sink_note = f", sink {sink_cpu_after - sink_cpu:.1f} s" if sink_cpu is not None and sink_cpu_after is not None else ""
        rows.append({
            "backend": "postgres", "what": f"replicas: {n} x run --once --shard i/{n}", "rows": recorded, "seconds": wall,
            "note": (f"{emails / wall:.0f} emails/s, {recorded / wall:.0f} recorded/s, {transactions / wall:.0f} PG transactions/s "
                     f"({transactions:,}); x{base_wall / wall:.2f} the first row's speed; replicas' CPU {cpu:.1f} s = "
                     f"{cpu / wall:.2f} of {cpus} cores{sink_note}{server_note}; machine busy {100 * machine:.0f} %, load {load:.1f} at start"
                     + ("; PROBLEM: " + "; ".join(problems) if problems else "")),
        })
        print(f"  {n} replica(s): {wall:.1f} s, {rows[-1]['note']}", flush=True)
    return rows


def ledger_bytes(url: str, directory: Path) -> list[dict]:
    """Bytes per ledger row after the last pass: PostgreSQL (table, TOAST and indexes:
    ``pg_total_relation_size``) and the same rows copied into a fresh SQLite ledger (file size),
    with the stored content's share (rendered messages kept for show-message)."""
    import sqlalchemy as sa

    from engine.state.ledger import Ledger, ledger_table
    from engine.state.warehouse import Database

    db = Database(url)
    with db.engine.connect() as conn:
        rows = conn.execute(sa.select(ledger_table)).mappings().all()
        total = conn.execute(sa.text("SELECT pg_total_relation_size('engine_ledger')")).scalar()
        content = conn.execute(sa.text("SELECT coalesce(sum(pg_column_size(content)), 0) FROM engine_ledger")).scalar()
    db.dispose()
    if not rows:
        return []
    path = directory / "ledger-size.db"
    path.unlink(missing_ok=True)
    lite = Database(f"sqlite:///{path}")
    Ledger(lite).ensure_schema()
    empty = path.stat().st_size
    with lite.engine.begin() as conn:
        conn.execute(ledger_table.insert(), [dict(r) for r in rows])
    with lite.engine.connect() as conn:
        conn.execute(sa.text("PRAGMA wal_checkpoint(TRUNCATE)"))
        conn.execute(sa.text("VACUUM"))
    lite.dispose()
    lite_bytes = path.stat().st_size - empty
    with_content = sum(1 for r in rows if r["content"] is not None)
    n = len(rows)
    return [{"backend": "postgres", "what": "ledger bytes per row", "rows": n, "seconds": None,
             "note": f"{total / n:.0f} B/row with indexes ({total / 1e6:.1f} MB); stored content {content / n:.0f} B/row "
                     f"on average ({with_content:,} of {n:,} rows have content)"},
            {"backend": "sqlite", "what": "ledger bytes per row (same rows)", "rows": n, "seconds": None,
             "note": f"{lite_bytes / n:.0f} B/row with indexes ({lite_bytes / 1e6:.1f} MB)"}]
