"""The ledger of a kept DuckDB shop rewritten as a ledger grown pass after pass would be laid out, to measure what
its layout and size cost the plan a minute later (issue 15, steady target, helper duck25).

    python benchmarks/ledger_layout.py --shop COPY [--order hash|campaign|grown] [--since DAYS] [--copies 1]
        [--older-copies] [--campaigns a,b,c] [--sqlite DB] [--postgres URL]

``COPY``: a COPY of a shop kept by ``run.py --keep`` with its ledger filled (``duckdb_minute.py --fill``); its
``shop.duckdb`` is changed in place. ``--fill`` writes the ledger as one first pass does, campaign after
campaign, so each campaign's rows sit together and DuckDB's zonemaps prune the others when a due query reads one
campaign's rows; a ledger that grew pass after pass has the campaigns interleaved. The tool rewrites the
ledger's rows (all columns, in one transaction; its constraints and indexes stay) in ``--order``: ``hash``
(``hash(message_key)``: interleaved, as such a ledger) or ``campaign`` (campaign, step: as ``--fill`` leaves
it) or ``grown`` (as a ledger written by a first pass ``--since`` days before the shop's anchor and then by a
pass every minute: the rows the first pass recorded - those whose step was due by then, ``trigger_at`` + the
step's delay of the shop's project - first, in campaign and step order as its settled writes leave them, then
every later row in the order the passes appended them, by that due time: each row group a span of time with
the campaigns interleaved; each row's ``created_at`` and ``updated_at`` the instant its pass wrote it), each row ``--copies`` times (copy k > 0 with ``#k`` appended to its message key and trigger key, so it
matches no instance: a ledger of more history with the same due set; with ``--older-copies`` copy k's
``trigger_at`` also moves back k times the ledger's span of trigger instants, as older history would be), then
prints the ledger's rows and row
groups and, per campaign of ``--campaigns``, the process CPU of reading its rows' keys (``sum(hash(customer_id,
trigger_key))``, median of 11). ``--postgres URL``: likewise into a PostgreSQL copy of the shop (COPY, then VACUUM ANALYZE).
``grow`` (``rewrite`` in ``grown`` order) is the one generator of a grown ledger: run.py's minute-later row on a
grown ledger calls it too. ``--uncompressed-keys``: the table is created again (its constraints and indexes
as they were) with ``customer_id`` and ``trigger_key`` stored ``USING COMPRESSION uncompressed``. Then compare
the plan a minute later on the original and the copy with ``duckdb_minute.py`` (benchmarks/README: "DuckDB a
minute later - the thread count, the ledger's anti-joins and the customers' scans").
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from datetime import datetime, timedelta
from pathlib import Path

import duckdb

ORDERS = {"hash": "hash(message_key)", "campaign": "campaign, step, message_key",
          # the first pass's rows in campaign order, then the later passes' by the time they were recorded
          "grown": "recorded_at >= first_pass, CASE WHEN recorded_at < first_pass THEN campaign END, "
                   "CASE WHEN recorded_at < first_pass THEN step END, recorded_at, message_key"}
SUFFIXED = ("message_key", "trigger_key")
#: the columns a pass writes with its own instant when it appends a row (a grown ledger's rows get their pass's)
RECORDED = ("created_at", "updated_at")


def read_cpu(connection, campaign: str, times: int = 11) -> float:
    """Process CPU seconds of reading one campaign's ledger keys, median of ``times``."""
    spent = []
    for _ in range(times):
        started = time.process_time()
        connection.execute("SELECT sum(hash(customer_id, trigger_key)) FROM engine_ledger WHERE campaign = ?",
                           [campaign]).fetchall()
        spent.append(time.process_time() - started)
    return statistics.median(spent)


def _first_pass(shop: Path, since_days: float):
    """The instant of the grown ledger's first pass: ``since_days`` before the shop's anchor (naive UTC)."""
    anchor = json.loads((shop / "shop.json").read_text())["shop"]["anchor"]
    return datetime.fromisoformat(anchor.replace("Z", "+00:00")).replace(tzinfo=None) - timedelta(days=since_days)


def _step_delays(project: Path, at: datetime) -> list[tuple[str, str, float]]:
    """(campaign, step, delay in seconds) of the shop's project (a calendar delay as of ``at``)."""
    import engine

    return [(campaign.name, step.id, ((at + step.delay) - at).total_seconds())
            for campaign in engine.load_project(project).campaigns for step in campaign.steps]


def rewrite(connection, order: str, copies: int = 1, older_copies: bool = False, uncompressed_keys: bool = False,
            first_pass: datetime | None = None, project: Path | None = None) -> list[str]:
    """Rewrite the ledger of the DuckDB ``connection`` in ``order`` (``ORDERS``), each row ``copies`` times (see
    the module's text), in one transaction, then checkpoint; returns the ledger's columns. ``grown``: as a ledger
    written by a first pass at ``first_pass`` (naive UTC) and then a pass every minute, by ``project``'s step
    delays; each row's ``created_at`` and ``updated_at`` become the instant its pass recorded it (the first pass's
    for the rows it recorded, never after the row's own ``created_at``), as that pass would have written them.
    The one generator of a grown ledger: this tool's ``--order grown`` and run.py's minute-later row on a grown
    ledger (``grow``) both call it."""
    columns = [name for name, *_ in connection.execute("DESCRIBE engine_ledger").fetchall()]
    span = connection.execute("SELECT epoch(max(trigger_at)) - epoch(min(trigger_at)) + 86400 "
                              "FROM engine_ledger").fetchone()[0] or 86400

    def selected(name: str) -> str:
        if name in SUFFIXED:
            return f"{name} || CASE WHEN k = 0 THEN '' ELSE '#' || k END AS {name}"
        if name == "trigger_at" and older_copies:
            return f"trigger_at - to_seconds(CAST(k * {span} AS BIGINT)) AS trigger_at"
        return name

    def written(name: str) -> str:
        if order == "grown" and name in RECORDED:  # the pass that appended the row wrote it then
            return f"least({name}, greatest(recorded_at, first_pass)) AS {name}"
        return name

    connection.execute("BEGIN")
    connection.execute(f"CREATE TEMPORARY TABLE ledger_rows AS SELECT {', '.join(map(selected, columns))} "
                       f"FROM engine_ledger, range({copies}) AS copies(k)")
    source = "ledger_rows"
    if order == "grown":
        connection.execute("CREATE TEMPORARY TABLE step_delays (campaign VARCHAR, step VARCHAR, delay_s DOUBLE)")
        connection.executemany("INSERT INTO step_delays VALUES (?, ?, ?)", _step_delays(project, first_pass))
        source = (f"(SELECT r.*, r.trigger_at + to_seconds(CAST(coalesce(d.delay_s, 0) AS BIGINT)) AS recorded_at, "
                  f"TIMESTAMP '{first_pass:%Y-%m-%d %H:%M:%S}' AS first_pass FROM ledger_rows r "
                  f"LEFT JOIN step_delays d ON d.campaign = r.campaign AND d.step = r.step)")
    if uncompressed_keys:  # DuckDB takes a column's compression in CREATE TABLE only, not in ALTER
        table = connection.execute("SELECT sql FROM duckdb_tables() WHERE table_name = 'engine_ledger'").fetchone()[0]
        indexes = [sql for sql, in connection.execute(
            "SELECT sql FROM duckdb_indexes() WHERE table_name = 'engine_ledger'").fetchall()]
        for key in ("customer_id", "trigger_key"):
            table = table.replace(f"{key} VARCHAR NOT NULL",
                                  f"{key} VARCHAR NOT NULL USING COMPRESSION uncompressed", 1)
        connection.execute("DROP TABLE engine_ledger")
        connection.execute(table)
        for index in indexes:
            connection.execute(index)
    else:
        connection.execute("DELETE FROM engine_ledger")
    connection.execute(f"INSERT INTO engine_ledger SELECT {', '.join(map(written, columns))} FROM {source} "
                       f"ORDER BY {ORDERS[order]}")
    connection.execute("DROP TABLE ledger_rows")
    connection.execute("COMMIT")
    connection.execute("CHECKPOINT")
    return columns


def grow(connection, project: Path, anchor: datetime, since_days: float, copies: int = 1,
         older_copies: bool = False) -> int:
    """The ledger of ``connection`` rewritten as grown since ``since_days`` before ``anchor`` (naive UTC) with
    ``copies`` of each row (``rewrite``); returns its rows."""
    rewrite(connection, "grown", copies=copies, older_copies=older_copies,
            first_pass=anchor - timedelta(days=since_days), project=project)
    return connection.execute("SELECT count(*) FROM engine_ledger").fetchone()[0]


def _to_sqlite(connection, columns: list[str], target: Path) -> int:
    """The DuckDB ledger's rows in its storage order into ``target``'s ``engine_ledger`` (emptied first), the
    instants as SQLAlchemy writes them to SQLite (``YYYY-MM-DD HH:MM:SS.ffffff``)."""
    import sqlite3

    def stored(value):
        return value.strftime("%Y-%m-%d %H:%M:%S.%f") if isinstance(value, datetime) else value

    database = sqlite3.connect(str(target))
    database.execute("DELETE FROM engine_ledger")
    insert = f"INSERT INTO engine_ledger ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})"
    cursor = connection.execute(f"SELECT {', '.join(columns)} FROM engine_ledger ORDER BY rowid")
    copied = 0
    while rows := cursor.fetchmany(50_000):
        database.executemany(insert, [tuple(map(stored, row)) for row in rows])
        copied += len(rows)
    database.commit()
    database.close()
    return copied


def _to_postgres(connection, columns: list[str], url: str) -> int:
    """The DuckDB ledger's rows in its storage order into the ``engine_ledger`` of the PostgreSQL database at
    ``url`` (emptied first; a SQLAlchemy or libpq URL), by COPY, then ANALYZE."""
    import psycopg

    copied = 0
    with psycopg.connect(url.replace("postgresql+psycopg://", "postgresql://")) as database:
        database.execute("DELETE FROM engine_ledger")
        cursor = connection.execute(f"SELECT {', '.join(columns)} FROM engine_ledger ORDER BY rowid")
        with database.cursor().copy(f"COPY engine_ledger ({', '.join(columns)}) FROM STDIN") as copy:
            while rows := cursor.fetchmany(50_000):
                for row in rows:
                    copy.write_row(row)
                copied += len(rows)
    with psycopg.connect(url.replace("postgresql+psycopg://", "postgresql://"), autocommit=True) as database:
        database.execute("VACUUM ANALYZE engine_ledger")
    return copied


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shop", type=Path, required=True, help="a COPY of a kept shop (changed in place)")
    parser.add_argument("--order", choices=sorted(ORDERS), default="hash")
    parser.add_argument("--copies", type=int, default=1, help="each ledger row this many times (default 1)")
    parser.add_argument("--since", type=float, default=30.0,
                        help="--order grown: the first pass this many days before the shop's anchor (default 30)")
    parser.add_argument("--older-copies", action="store_true",
                        help="copy k's trigger_at moved back k times the ledger's span of trigger instants")
    parser.add_argument("--sqlite", type=Path,
                        help="then copy the rewritten ledger's rows, in its order, into this SQLite shop's ledger "
                             "(a COPY of the same shop's shop.db, its ledger emptied first)")
    parser.add_argument("--postgres", metavar="URL",
                        help="then copy the rewritten ledger's rows, in its order, into the ledger of the PostgreSQL "
                             "database at URL (a copy of the same shop, its ledger filled by pg_minute.py --fill)")
    parser.add_argument("--uncompressed-keys", action="store_true",
                        help="create the ledger again with customer_id and trigger_key USING COMPRESSION uncompressed")
    parser.add_argument("--campaigns", default="second-order,vip,abandoned-cart",
                        help="campaigns whose key read is timed (comma-separated)")
    args = parser.parse_args()
    database = args.shop / "shop.duckdb"
    if not database.is_file():
        parser.error(f"{database} does not exist: give a copy of a shop kept by run.py --keep")
    if args.copies < 1:
        parser.error("--copies must be 1 or more")
    try:
        connection = duckdb.connect(str(database))
    except duckdb.Error as exc:
        parser.error(f"cannot open {database}: {exc}")
    try:
        rows = connection.execute("SELECT count(*) FROM engine_ledger").fetchone()[0]
    except duckdb.CatalogException:
        parser.error(f"{database} has no engine ledger: fill it first (duckdb_minute.py --shop DIR --fill)")
    if not rows:
        parser.error(f"the ledger in {database} is empty: fill it first (duckdb_minute.py --shop DIR --fill)")
    columns = rewrite(connection, args.order, copies=args.copies, older_copies=args.older_copies,
                      uncompressed_keys=args.uncompressed_keys,
                      first_pass=_first_pass(args.shop, args.since) if args.order == "grown" else None,
                      project=args.shop / "project")
    total = connection.execute("SELECT count(*) FROM engine_ledger").fetchone()[0]
    groups = connection.execute(
        "SELECT count(DISTINCT row_group_id) FROM pragma_storage_info('engine_ledger')").fetchone()[0]
    stored = dict(connection.execute("SELECT column_name, min(compression) FROM pragma_storage_info('engine_ledger') "
                                     "WHERE column_name IN ('customer_id', 'trigger_key') AND segment_type = 'VARCHAR' "
                                     "GROUP BY column_name").fetchall())
    print(f"ledger: {rows} -> {total} rows in {groups} row groups, order {args.order}, keys stored {stored}")
    for group, low, high, campaigns in connection.execute(
            "SELECT row_group_id, min(trigger_at), max(trigger_at), count(DISTINCT campaign) FROM "
            "(SELECT *, (rowid - min(rowid) OVER ()) // 122880 AS row_group_id FROM engine_ledger) GROUP BY ALL ORDER BY 1").fetchall():
        print(f"  row group {group}: trigger_at {low} .. {high}, {campaigns} campaigns")
    for campaign in filter(None, args.campaigns.split(",")):
        print(f"  {campaign}: its keys read in {read_cpu(connection, campaign) * 1000:.2f} ms CPU")
    if args.sqlite is not None:
        print(f"  {_to_sqlite(connection, columns, args.sqlite)} rows copied to {args.sqlite}")
    if args.postgres is not None:
        print(f"  {_to_postgres(connection, columns, args.postgres)} rows copied to {args.postgres}")
    print(f"load {' '.join(open('/proc/loadavg').read().split()[:3])}")
    connection.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
