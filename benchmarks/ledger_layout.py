"""The ledger of a kept DuckDB shop rewritten as a ledger grown pass after pass would be laid out, to measure what
its layout and size cost the plan a minute later (issue 15, steady target, helper duck25).

    python benchmarks/ledger_layout.py --shop COPY [--order hash|campaign] [--copies 1] [--campaigns a,b,c]

``COPY``: a COPY of a shop kept by ``run.py --keep`` with its ledger filled (``duckdb_minute.py --fill``); its
``shop.duckdb`` is changed in place. ``--fill`` writes the ledger as one first pass does, campaign after
campaign, so each campaign's rows sit together and DuckDB's zonemaps prune the others when a due query reads one
campaign's rows; a ledger that grew pass after pass has the campaigns interleaved. The tool rewrites the
ledger's rows (all columns, in one transaction; its constraints and indexes stay) in ``--order``: ``hash``
(``hash(message_key)``: interleaved, as such a ledger) or ``campaign`` (campaign, step: as ``--fill`` leaves
it), each row ``--copies`` times (copy k > 0 with ``#k`` appended to its message key and trigger key, so it
matches no instance: a ledger of more history with the same due set), then prints the ledger's rows and row
groups and, per campaign of ``--campaigns``, the process CPU of reading its rows' keys (``sum(hash(customer_id,
trigger_key))``, median of 11). ``--uncompressed-keys``: the table is created again (its constraints and indexes
as they were) with ``customer_id`` and ``trigger_key`` stored ``USING COMPRESSION uncompressed``. Then compare
the plan a minute later on the original and the copy with ``duckdb_minute.py`` (benchmarks/README: "DuckDB a
minute later - the thread count, the ledger's anti-joins and the customers' scans").
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import duckdb

ORDERS = {"hash": "hash(message_key)", "campaign": "campaign, step, message_key"}
SUFFIXED = ("message_key", "trigger_key")


def read_cpu(connection, campaign: str, times: int = 11) -> float:
    """Process CPU seconds of reading one campaign's ledger keys, median of ``times``."""
    spent = []
    for _ in range(times):
        started = time.process_time()
        connection.execute("SELECT sum(hash(customer_id, trigger_key)) FROM engine_ledger WHERE campaign = ?",
                           [campaign]).fetchall()
        spent.append(time.process_time() - started)
    return statistics.median(spent)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shop", type=Path, required=True, help="a COPY of a kept shop (changed in place)")
    parser.add_argument("--order", choices=sorted(ORDERS), default="hash")
    parser.add_argument("--copies", type=int, default=1, help="each ledger row this many times (default 1)")
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
    columns = [name for name, *_ in connection.execute("DESCRIBE engine_ledger").fetchall()]
    selected = ", ".join(f"{name} || CASE WHEN k = 0 THEN '' ELSE '#' || k END AS {name}" if name in SUFFIXED
                         else name for name in columns)
    connection.execute("BEGIN")
    connection.execute(f"CREATE TEMPORARY TABLE ledger_rows AS SELECT {selected} "
                       f"FROM engine_ledger, range({args.copies}) AS copies(k)")
    if args.uncompressed_keys:  # DuckDB takes a column's compression in CREATE TABLE only, not in ALTER
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
    connection.execute(f"INSERT INTO engine_ledger SELECT * FROM ledger_rows ORDER BY {ORDERS[args.order]}")
    connection.execute("DROP TABLE ledger_rows")
    connection.execute("COMMIT")
    connection.execute("CHECKPOINT")
    total = connection.execute("SELECT count(*) FROM engine_ledger").fetchone()[0]
    groups = connection.execute(
        "SELECT count(DISTINCT row_group_id) FROM pragma_storage_info('engine_ledger')").fetchone()[0]
    stored = dict(connection.execute("SELECT column_name, min(compression) FROM pragma_storage_info('engine_ledger') "
                                     "WHERE column_name IN ('customer_id', 'trigger_key') AND segment_type = 'VARCHAR' "
                                     "GROUP BY column_name").fetchall())
    print(f"ledger: {rows} -> {total} rows in {groups} row groups, order {args.order}, keys stored {stored}")
    for campaign in filter(None, args.campaigns.split(",")):
        print(f"  {campaign}: its keys read in {read_cpu(connection, campaign) * 1000:.2f} ms CPU")
    print(f"load {' '.join(open('/proc/loadavg').read().split()[:3])}")
    connection.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
