#!/usr/bin/env python3
"""Plan-time benchmark: the engine's due queries on a large shop, next to a floor.

Builds a deterministic shop (default 100k customers / 1M orders) inside DuckDB
with plain SQL, copies the shipped project (engine.yaml, campaigns.d/,
templates/) into a scratch directory pointed at it, and measures in one run:

- the floor: ``SELECT customer_id, count(*), min(created_at), max(created_at)
  FROM orders GROUP BY 1``, all rows fetched through the same SQLAlchemy path
  the engine streams its plan through;
- the plan: ``Reconciler(project).due(now)`` for every shipped campaign as ``engine plan`` runs it
  (the skips the warehouse settles counted in SQL: ``settled_counts``), consumed fully (compile +
  query + streaming + per-row decisions), beside it in turns the same plan with every skip decided
  row by row as before (``engine plan --include-skipped``, explain);
- the plan and the plan a minute later again with every due query built and rendered at each
  pass, as before issue 15.3 (``sql.prepared.COMPILE_ONCE`` off): the gain of compiling once;
- the plan per campaign, split into compile (once per project version), SQL (execute + fetch the
  rendered due query) and the rest (Python per-row work);
- the plan a minute later on the ledger the plan above filled (its rows only, inside today's windows)
  and, on DuckDB, on that ledger grown in time order (``ledger_layout.grow``: ~13 months of history, as
  passes append it), the steady plan a shop pays after months;
- a full ``run_once(now)`` into the file outbox on an empty ledger, then a
  second pass at the same instant and a third one minute later (the
  incremental cost of a steady-state pass), and the ledger's size after them;
  then that minute-later pass again once the ledger holds ``--history`` extra
  rows of history;
- the first pass again with emails to a loopback SMTP sink in its own process
  (benchmarks/smtp_sink.py), start-up's objects frozen as ``engine run`` freezes them
  (``engine.heap.settle``), the time inside dispatch, the sink's ceiling (a
  bare smtplib client) and the engine's dispatch path alone as a ratio of it
  (benchmarks/dispatch.py); ``--no-smtp`` skips this;
- webhook posts per second to a loopback receiver (signing included) beside emails per second
  to the SMTP sink, dispatch alone on as many synthetic messages (benchmarks/webhook.py);
- a pass's ledger operations on 1,000 keys, empty ledger vs ``--history`` rows, and the write cost per
  recorded row as a ratio of the empty ledger's (``--ledger-growth N``: only that, on N rows, in SQLite,
  DuckDB and PostgreSQL);
- start-up: ``engine --help`` and ``engine validate`` as a ratio of ``python -c pass`` and their import
  time under ``python -X importtime`` (``--start``: only that);
- web push to a loopback push service in its own process (benchmarks/push.py):
  its ceiling (bare POSTs), encryption alone, and the engine's webpush dispatch
  (encryption and VAPID included) as a ratio of the ceiling, beside email's;
  ``--no-push`` skips this;
- a pass's ledger operations on 1,000 keys, empty ledger vs ``--history`` rows;
- the tracking endpoints' requests per second (/open replayed, /click recording a new event each)
  beside /healthz's, under a bounded loopback load (benchmarks/tracking.py; ``--tracking N``, 0 skips it);
- letters (PDF, DIN 5008 window, QR code) rendered per second, beside emails
  (their MIME bytes) built per second from the same parts in the same run
  (``--letters N``, 0 skips it);
- the plan of second-order and re-engage beside a hand-written SQL finding the same due sets
  (asserted), with and without the shared order rows, and with start-up frozen as ``engine plan``
  freezes it (benchmarks/hand_sql.py; target <= 1.5x), and the sequential scans of each source per pass (benchmarks/scans.py);
- a pass of the campaigns whose templates show product lists, next to the same pass with fixed
  lists instead (benchmarks/lists.py; target <= 1.3x);
- peak RSS of this process (the shop is built in a child process, so this is
  the engine's own footprint, plus DuckDB's buffers), and of a child process
  planning a shop where all ``--memory-customers`` customers are due.

``--replicas 1,2,4`` measures only a pass split over N ``engine run --once --shard i/N`` processes on PostgreSQL
(benchmarks/replicas.py); ``--duckdb-memory-limit 1GB`` only the plan with that DuckDB memory limit next to
the plan without one (spilling to disk).

``--sqlite`` loads the same rows into SQLite and repeats the measurements there;
``--postgres`` does the same in a throwaway PostgreSQL cluster (``--postgres-url``: an
existing database).
Plain script, not a test: ``python benchmarks/run.py --help``.
"""
from __future__ import annotations

import argparse
import concurrent.futures
import json
import multiprocessing
import os
import platform
import re
import resource
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
#: the checkouts the caller named on PYTHONPATH that hold an engine: theirs is the one measured (an A/B
#: tool's child runs another checkout's engine beside this script's run.py)
_NAMED = [entry for entry in os.environ.get("PYTHONPATH", "").split(os.pathsep) if (Path(entry) / "engine").is_dir()]
if not _NAMED and str(REPO) not in sys.path:  # runnable from a checkout without `pip install -e .`
    sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))  # dispatch.py, smtp_sink.py next to this file

import dispatch  # noqa: E402
import hand_sql as hand_bench  # noqa: E402 - two campaigns' plan beside a hand-written SQL (issue 15.2)
import lists as lists_bench  # noqa: E402 - a pass with product lists next to one without
import push  # noqa: E402 - web push dispatch against a loopback push service
import replicas as replicas_bench  # noqa: E402 - a pass split over N replicas on PostgreSQL
from dispatch import _timed  # noqa: E402 - one median timer for both scripts
from smtp_sink import SinkProcess  # noqa: E402
import webhook as webhook_bench  # noqa: E402
import tracking as tracking_bench  # noqa: E402 - /open, /click beside /healthz

FLOOR_SQL = "SELECT customer_id, count(*), min(created_at), max(created_at) FROM orders GROUP BY 1"
GENERATOR_VERSION = 3  # bump when the generated data changes (invalidates --keep reuse)

# Same catalogue, names and cities as engine/demo.py, so templates render the same way.
PRODUCTS = [
    (1, "Espresso beans 1 kg", 24.90), (2, "Pour-over kettle", 49.00), (3, "Ceramic dripper", 19.50),
    (4, "Paper filters (100)", 4.90), (5, "Hand grinder", 89.00), (6, "Milk frother", 34.00),
    (7, "Travel mug", 22.00), (8, "Decaf blend 500 g", 13.90), (9, "Cold brew jar", 29.00),
    (10, "Tasting set", 39.00),
]
FIRST_NAMES = ["Anna", "Ben", "Clara", "David", "Elif", "Farid", "Greta", "Hugo", "Ines", "Jonas", "Kim", "Lena", "Mia", "Noah"]
LAST_NAMES = ["Meyer", "Schmidt", "Rossi", "Nowak", "Yilmaz", "Dubois", "Jensen", "Garcia", "Kowalski", "Berg"]
CITIES = ["Berlin", "Hamburg", "Munich", "Cologne", "Vienna", "Zurich"]
CATEGORIES = {1: "coffee", 2: "equipment", 3: "equipment", 4: "accessories", 5: "equipment",
              6: "equipment", 7: "accessories", 8: "coffee", 9: "equipment", 10: "coffee"}
SEARCHES = ["decaf", "grinder", "gift", "cold brew", "espresso", "filter"]
TIMEZONES = ["Europe/Berlin", "Europe/Berlin", "Europe/Vienna", "Europe/London", "America/New_York", None]
PAYMENT_METHODS = ["card", "card", "paypal", "invoice"]

# Order-count tiers per customer (percent of customers): none, one, a few, many.
TIER_NONE, TIER_ONE, TIER_FEW = 20, 45, 20  # the remaining 15 % order often
HEAVY_MIN_ORDERS = 6
HEAVY_WEIGHT_CAP = 30.0  # weights u**-0.5, capped: the top buyers order ~20x as often as the median frequent one


# --- building the shop (runs in a child process) ------------------------------------------


def _sql_list(values: list[str | None]) -> str:
    return "[" + ", ".join("NULL" if v is None else "'" + v.replace("'", "''") + "'" for v in values) + "]"


def _pick(values: list[str | None], key: str, seed: int, salt: int) -> str:
    """A deterministic uniform choice from ``values`` per ``key`` (repeats weight a value)."""
    return f"{_sql_list(values)}[1 + CAST(hash({key}, {seed}, {salt}) % {len(values)} AS INTEGER)]"


def _duckdb_connect(path: str, read_only: bool = False, config: dict | None = None):
    import duckdb

    con = duckdb.connect(path, read_only=read_only, config=config or {})
    con.execute("SET enable_progress_bar = false")
    return con


def _items_sql(key: str, parents: str, seed: int, category: bool = False) -> str:
    """1-3 distinct products per parent row, 1-2 of each (order items also carry the category)."""
    return f"""
        SELECT p.{key}, pr.product_id, pr.name, q.quantity, pr.price,
               'https://shop.example.com/img/' || pr.product_id || '.jpg' AS image_url{', pr.category' if category else ''}
        FROM (SELECT {key}, unnest(range(1 + CAST(hash({key}, {seed}, 21) % 3 AS INTEGER))) AS j,
                     CAST(hash({key}, {seed}, 22) % 10 AS INTEGER) AS first_product
              FROM {parents}) AS p
        CROSS JOIN LATERAL (SELECT 1 + CAST(hash(p.{key}, p.j, {seed}, 23) % 2 AS INTEGER) AS quantity) AS q
        JOIN bench_products AS pr ON pr.product_id = (p.first_product + 3 * p.j) % 10 + 1
    """


def build_shop(path: str, customers: int, orders: int, anchor: str, seed: int) -> dict:
    """Create the canonical shop tables in a fresh DuckDB file and fill them with SQL.

    Deterministic: every random choice is ``hash(row id, seed, salt)``. Returns
    row counts, build seconds and this process's peak RSS.
    """
    from engine.tools.demo import create_tables
    from engine.state.warehouse import Database

    started = time.perf_counter()
    db = Database(f"duckdb:///{path}")
    create_tables(db)  # the engine's own DDL: same column types, keys and indexes as the demo
    db.dispose()

    end = _naive_anchor(anchor)
    A = f"TIMESTAMP '{end.isoformat(sep=' ')}'"
    s = seed
    con = _duckdb_connect(path)
    con.execute("CREATE TEMP TABLE bench_products(product_id INTEGER, name VARCHAR, price DECIMAL(12, 2), category VARCHAR)")
    con.executemany("INSERT INTO bench_products VALUES (?, ?, ?, ?)", [(*p, CATEGORIES[p[0]]) for p in PRODUCTS])

    # Customers and how many orders each places: 20 % none, 45 % one, 20 % two to
    # five, 15 % often (at least six, Pareto-like weights share the remaining orders).
    con.execute(f"""
        CREATE TEMP TABLE bench_customers AS
        SELECT i AS customer_id,
               CAST(hash(i, {s}, 1) % 100 AS INTEGER) AS tier_draw,
               (hash(i, {s}, 3) % 1000000 + 1) / 1000000.0 AS weight_draw
        FROM range(1, {customers} + 1) AS t(i)
    """)
    con.execute(f"""
        CREATE TEMP TABLE bench_tiers AS
        SELECT customer_id,
               tier_draw >= {TIER_NONE + TIER_ONE + TIER_FEW} AS heavy,
               CASE WHEN tier_draw < {TIER_NONE} THEN 0
                    WHEN tier_draw < {TIER_NONE + TIER_ONE} THEN 1
                    WHEN tier_draw < {TIER_NONE + TIER_ONE + TIER_FEW} THEN 2 + CAST(hash(customer_id, {s}, 2) % 4 AS INTEGER)
                    ELSE {HEAVY_MIN_ORDERS} END AS base,
               CASE WHEN tier_draw >= {TIER_NONE + TIER_ONE + TIER_FEW}
                    THEN CAST(1000 * least(pow(weight_draw, -0.5), {HEAVY_WEIGHT_CAP}) AS BIGINT) ELSE 0 END AS weight
        FROM bench_customers
    """)
    base_total, total_weight = con.execute("SELECT sum(base), sum(weight) FROM bench_tiers").fetchone()
    extra = orders - int(base_total or 0)
    if extra < 0 or not total_weight:
        con.close()
        raise SystemExit(f"--orders {orders:,} is too few for --customers {customers:,}: the skewed history "
                         f"needs at least {int(base_total or 0):,} orders; give about 3x the customers or more")
    # the frequent buyers share the remaining orders in proportion to their (integer) weights,
    # exactly: customer i gets floor(W_i * extra / W) - floor(W_(i-1) * extra / W) for cumulative W_i
    con.execute(f"""
        CREATE TEMP TABLE bench_counts AS
        SELECT customer_id, heavy,
               base + CAST(CAST(cum_weight AS HUGEINT) * {extra} // {int(total_weight)}
                           - CAST(cum_weight - weight AS HUGEINT) * {extra} // {int(total_weight)} AS BIGINT) AS n_orders
        FROM (SELECT *, sum(weight) OVER (ORDER BY customer_id) AS cum_weight FROM bench_tiers)
    """)

    # The attribute mix of engine/demo.py: 60 % give a birthday (1950-2005), time zones as in the
    # demo (one in six unset: the project default), 10 % companies, 3 % wholesalers, 40 % in an
    # affiliate programme, 10 % gold, 2 % unsubscribed at some point in the last 300 days.
    cid = "c.customer_id"
    con.execute(f"""
        INSERT INTO customers (customer_id, email, phone, first_name, last_name, created_at, city, birthday, timezone,
                               customer_type, is_wholesaler, affiliate_program, customer_group, unsubscribed_at)
        SELECT c.customer_id,
               CASE WHEN hash(c.customer_id, {s}, 11) % 100 < 3 THEN NULL
                    ELSE lower(first_name) || '.' || lower(last_name) || c.customer_id || '@example.com' END,
               CASE WHEN hash(c.customer_id, {s}, 12) % 100 < 40
                    THEN '+4915' || (10000000 + hash(c.customer_id, {s}, 13) % 90000000) END,
               first_name, last_name, registered, city,
               CASE WHEN hash({cid}, {s}, 17) % 100 < 60
                    THEN DATE '1950-01-01' + CAST(hash({cid}, {s}, 18) % (56 * 365) AS INTEGER) END,
               {_pick(TIMEZONES, cid, s, 19)},
               CASE WHEN hash({cid}, {s}, 20) % 100 < 10 THEN 'company' ELSE {_pick(["female", "male"], cid, s, 24)} END,
               hash({cid}, {s}, 25) % 100 < 3,
               {_pick([None, None, None, "vouchers", "cash"], cid, s, 26)},
               CASE WHEN hash({cid}, {s}, 27) % 100 < 10 THEN 'gold' ELSE 'standard' END,
               CASE WHEN hash({cid}, {s}, 28) % 100 < 2
                    THEN {A} - to_seconds(CAST(86400 + hash({cid}, {s}, 29) % (299 * 86400) AS BIGINT)) END
        FROM (
            SELECT b.customer_id,
                   {_sql_list(FIRST_NAMES)}[1 + CAST(hash(b.customer_id, {s}, 14) % {len(FIRST_NAMES)} AS INTEGER)] AS first_name,
                   {_sql_list(LAST_NAMES)}[1 + CAST(hash(b.customer_id, {s}, 15) % {len(LAST_NAMES)} AS INTEGER)] AS last_name,
                   {_sql_list(CITIES)}[1 + CAST(hash(b.customer_id, {s}, 16) % {len(CITIES)} AS INTEGER)] AS city,
                   -- frequent buyers have been around longer (100-400 days), others 1-400 days
                   {A} - to_seconds(CAST(CASE WHEN b.heavy THEN 100 * 86400 + hash(b.customer_id, {s}, 4) % (300 * 86400)
                                              ELSE 86400 + hash(b.customer_id, {s}, 4) % (399 * 86400) END AS BIGINT)) AS registered
            FROM bench_counts AS b
        ) AS c
        ORDER BY c.customer_id
    """)

    # Orders: each customer's orders fall uniformly between registration and the anchor;
    # order ids follow time, as in a real shop. Totals are the sum of the items.
    con.execute(f"""
        CREATE TEMP TABLE bench_orders AS
        SELECT row_number() OVER (ORDER BY created_at, customer_id, k) AS order_id, customer_id, created_at
        FROM (
            SELECT c.customer_id, g.k,
                   c.created_at + to_seconds(CAST(floor(date_diff('second', c.created_at, {A})
                                                        * ((hash(c.customer_id, g.k, {s}, 5) % 1000000) / 1000000.0)) AS BIGINT)) AS created_at
            FROM customers AS c
            JOIN (SELECT customer_id, unnest(range(n_orders)) AS k FROM bench_counts WHERE n_orders > 0) AS g
              ON g.customer_id = c.customer_id
        )
    """)
    con.execute(f"INSERT INTO order_items {_items_sql('order_id', 'bench_orders', s, category=True)} ORDER BY 1, 2")
    # delivery two to five days after the order (the last few days' orders deliver after the anchor)
    con.execute(f"""
        INSERT INTO orders (order_id, customer_id, created_at, status, total, payment_method, delivery_date)
        SELECT o.order_id, o.customer_id, o.created_at,
               CASE WHEN hash(o.order_id, {s}, 6) % 100 < 95 THEN 'completed' ELSE 'cancelled' END,
               t.total,
               {_pick(PAYMENT_METHODS, 'o.order_id', s, 8)},
               CAST(o.created_at + to_days(CAST(2 + hash(o.order_id, {s}, 9) % 4 AS INTEGER)) AS DATE)
        FROM bench_orders AS o
        JOIN (SELECT order_id, sum(price * quantity) AS total FROM order_items GROUP BY 1) AS t USING (order_id)
        ORDER BY o.order_id
    """)

    # Checkouts: ~5 % of customers started one in the last six hours (half of them
    # completed it, the rest abandoned it), plus one older checkout per ten orders
    # spread over the year (70 % completed), so the due window has stale ones too.
    con.execute(f"""
        CREATE TEMP TABLE bench_checkouts AS
        SELECT row_number() OVER (ORDER BY created_at, customer_id, src, k) AS checkout_id, *
        FROM (
            SELECT 'recent' AS src, customer_id, 0 AS k,
                   {A} - to_seconds(600 + CAST(hash(customer_id, {s}, 31) % (350 * 60) AS BIGINT)) AS created_at,
                   hash(customer_id, {s}, 32) % 100 < 50 AS completes,
                   120 + CAST(hash(customer_id, {s}, 33) % (28 * 60) AS BIGINT) AS seconds_to_complete
            FROM bench_customers WHERE hash(customer_id, {s}, 30) % 100 < 5
            UNION ALL
            SELECT 'history', 1 + CAST(hash(r, {s}, 34) % {customers} AS BIGINT), r,
                   {A} - to_seconds(6 * 3600 + CAST(hash(r, {s}, 35) % (400 * 86400 - 6 * 3600) AS BIGINT)),
                   hash(r, {s}, 36) % 100 < 70,
                   120 + CAST(hash(r, {s}, 37) % (28 * 60) AS BIGINT)
            FROM range({max(orders // 10, 1)}) AS t(r)
        )
    """)
    con.execute(f"INSERT INTO checkout_items {_items_sql('checkout_id', 'bench_checkouts', s)} ORDER BY 1, 2")
    con.execute(f"""
        INSERT INTO checkouts
        SELECT k.checkout_id, k.customer_id, k.created_at,
               CASE WHEN k.completes AND k.created_at + to_seconds(k.seconds_to_complete) <= {A}
                    THEN k.created_at + to_seconds(k.seconds_to_complete) END,
               t.total
        FROM bench_checkouts AS k
        JOIN (SELECT checkout_id, sum(price * quantity) AS total FROM checkout_items GROUP BY 1) AS t USING (checkout_id)
        ORDER BY k.checkout_id
    """)
    _build_events(con, A, s)
    # the catalogue, as engine/demo.py has it: what product lists in templates show
    con.execute("INSERT INTO products SELECT product_id, name, 'https://shop.example.com/p/' || product_id, "
                "'https://shop.example.com/img/' || product_id || '.jpg', price, category, TRUE FROM bench_products")
    counts = {name: con.execute(f"SELECT count(*) FROM {name}").fetchone()[0]
              for name in ("customers", "orders", "order_items", "checkouts", "checkout_items", "events")}
    con.execute("CHECKPOINT")
    con.close()
    return {"counts": counts, "seconds": time.perf_counter() - started, "rss_mb": _peak_rss_mb()}


def _build_events(con, A: str, s: int) -> None:
    """Events shaped like engine/demo.py's ``_events``: 0-4 logins over each customer's life;
    newsletter signups (8 % of customers, last 8 days); a day of 1-4 product views within
    90 minutes (12 %, one of the last 7 days); a search the day before the anchor (5 %).
    Event ids follow time."""
    cid = "customer_id"
    con.execute(f"""
        CREATE TEMP TABLE bench_events AS
        SELECT c.customer_id, 'login' AS type, g.k,
               c.created_at + to_seconds(CAST(floor(greatest(date_diff('second', c.created_at, {A}), 86400)
                                                    * ((hash(c.customer_id, g.k, {s}, 41) % 1000000) / 1000000.0)) AS BIGINT)) AS occurred_at,
               CAST(NULL AS INTEGER) AS product_id, CAST(NULL AS VARCHAR) AS search_query
        FROM customers AS c
        JOIN (SELECT customer_id, unnest(range(CAST(hash(customer_id, {s}, 40) % 5 AS INTEGER))) AS k FROM customers) AS g
          ON g.customer_id = c.customer_id
        UNION ALL
        SELECT {cid}, 'newsletter_signup', 0, {A} - to_seconds(CAST(hash({cid}, {s}, 43) % (8 * 86400) AS BIGINT)), NULL, NULL
        FROM customers WHERE hash({cid}, {s}, 42) % 100 < 8
        UNION ALL
        SELECT v.customer_id, 'product_viewed', v.j,
               v.day - to_seconds(CAST(60 * (hash(v.customer_id, v.j, {s}, 47) % 91) AS BIGINT)),
               CAST(1 + hash(v.customer_id, v.j, {s}, 48) % 10 AS INTEGER), NULL
        FROM (SELECT {cid}, unnest(range(1 + CAST(hash({cid}, {s}, 46) % 4 AS INTEGER))) AS j,
                     {A} - to_seconds(CAST((hash({cid}, {s}, 45) % 7) * 86400 + hash({cid}, {s}, 49) % (20 * 3600) AS BIGINT)) AS day
              FROM customers WHERE hash({cid}, {s}, 44) % 100 < 12) AS v
        UNION ALL
        SELECT {cid}, 'search', 0, {A} - to_seconds(CAST(86400 + hash({cid}, {s}, 51) % (20 * 3600) AS BIGINT)), NULL,
               {_pick(SEARCHES, cid, s, 52)}
        FROM customers WHERE hash({cid}, {s}, 50) % 100 < 5
    """)
    con.execute(f"""
        INSERT INTO events
        SELECT row_number() OVER (ORDER BY e.occurred_at, e.customer_id, e.type, e.k) AS event_id,
               e.customer_id, e.type, e.occurred_at, e.product_id, p.name,
               CASE WHEN e.product_id IS NOT NULL THEN 'https://shop.example.com/p/' || e.product_id END,
               CASE WHEN e.product_id IS NOT NULL THEN 'https://shop.example.com/img/' || e.product_id || '.jpg' END,
               p.price, e.search_query
        FROM bench_events AS e LEFT JOIN bench_products AS p ON p.product_id = e.product_id
        WHERE e.occurred_at < {A}
        ORDER BY event_id
    """)


SQLITE_COPY = {
    # table -> SELECT over the DuckDB table giving exactly what SQLAlchemy would have stored:
    # DateTime as 'YYYY-MM-DD HH:MM:SS.ffffff' text, Date as 'YYYY-MM-DD', Numeric as REAL, Boolean as 0/1.
    "customers": "SELECT customer_id, email, phone, first_name, last_name, {ts:created_at}, city, {d:birthday}, "
                 "timezone, customer_type, CAST(is_wholesaler AS INTEGER), affiliate_program, customer_group, "
                 "{ts:unsubscribed_at} FROM customers",
    "orders": "SELECT order_id, customer_id, {ts:created_at}, status, CAST(total AS DOUBLE), payment_method, "
              "{d:delivery_date} FROM orders",
    "order_items": "SELECT order_id, product_id, name, quantity, CAST(price AS DOUBLE), image_url, category FROM order_items",
    "checkouts": "SELECT checkout_id, customer_id, {ts:created_at}, {ts:completed_at}, CAST(total AS DOUBLE) FROM checkouts",
    "checkout_items": "SELECT checkout_id, product_id, name, quantity, CAST(price AS DOUBLE), image_url FROM checkout_items",
    "events": "SELECT event_id, customer_id, type, {ts:occurred_at}, product_id, product_name, url, image_url, "
              "CAST(price AS DOUBLE), search_query FROM events",
    "products": "SELECT product_id, name, url, image, CAST(price AS DOUBLE), category, CAST(in_stock AS INTEGER) FROM products",
}
SQLALCHEMY_SQLITE_DATETIME = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{6}$")


#: the columns SQLITE_COPY's SELECT gives, where the table has more (customers: every kind's address columns;
#: orders: shipping_country, which the generator leaves empty)
SQLITE_COLUMNS = {"customers": "customer_id, email, phone, first_name, last_name, created_at, city, birthday, timezone, "
                               "customer_type, is_wholesaler, affiliate_program, customer_group, unsubscribed_at",
                  "orders": "order_id, customer_id, created_at, status, total, payment_method, delivery_date"}


def _copy_columns(table: str) -> str:
    return f" ({SQLITE_COLUMNS[table]})" if table in SQLITE_COLUMNS else ""


def _copy_select(table: str) -> str:
    select = re.sub(r"\{ts:(\w+)\}", r"strftime(\1, '%Y-%m-%d %H:%M:%S.%f') AS \1", SQLITE_COPY[table])
    return re.sub(r"\{d:(\w+)\}", r"strftime(\1, '%Y-%m-%d') AS \1", select)


def _fresh_sqlite(sqlite_path: str) -> None:
    from engine.tools.demo import create_tables
    from engine.state.warehouse import Database

    for suffix in ("", "-wal", "-shm", "-journal"):
        Path(sqlite_path + suffix).unlink(missing_ok=True)
    db = Database(f"sqlite:///{sqlite_path}")
    create_tables(db)  # the engine's own DDL, as `engine demo` would create it
    db.dispose()


def copy_to_sqlite(duck_path: str, sqlite_path: str) -> dict:
    """The same rows in a fresh SQLite file: via DuckDB's sqlite extension when it is
    installed (it is never downloaded), else in batches through Python."""
    started = time.perf_counter()
    _fresh_sqlite(sqlite_path)
    method = "duckdb sqlite extension"
    if not _copy_with_extension(duck_path, sqlite_path):
        method = "python batches"
        _fresh_sqlite(sqlite_path)
        _copy_python(duck_path, sqlite_path)
    return {"method": method, "seconds": time.perf_counter() - started}


def _copy_with_extension(duck_path: str, sqlite_path: str) -> bool:
    """Copy with the sqlite extension; False if it is not installed or stored timestamps differently."""
    import duckdb

    con = _duckdb_connect(duck_path, read_only=True, config={"autoinstall_known_extensions": False})
    try:
        try:
            con.execute("LOAD sqlite")
        except duckdb.Error:
            return False
        quoted = sqlite_path.replace("'", "''")
        con.execute(f"ATTACH '{quoted}' AS lite (TYPE sqlite)")
        for table in SQLITE_COPY:
            con.execute(f"INSERT INTO lite.{table}{_copy_columns(table)} {_copy_select(table)}")
        con.execute("DETACH lite")
    except duckdb.Error:
        return False
    finally:
        con.close()
    probe = sqlite3.connect(sqlite_path)
    sample = probe.execute("SELECT created_at FROM orders LIMIT 1").fetchone()
    probe.close()
    return sample is None or bool(SQLALCHEMY_SQLITE_DATETIME.match(str(sample[0])))


def _copy_python(duck_path: str, sqlite_path: str) -> None:
    con = _duckdb_connect(duck_path, read_only=True)
    lite = sqlite3.connect(sqlite_path)
    lite.execute("PRAGMA synchronous=OFF")
    for table in SQLITE_COPY:
        cursor = con.execute(_copy_select(table))
        insert = f"INSERT INTO {table}{_copy_columns(table)} VALUES ({', '.join('?' * len(cursor.description))})"
        while rows := cursor.fetchmany(50_000):
            lite.executemany(insert, rows)
        lite.commit()
    lite.close()
    con.close()


def build_all(directory: str, customers: int, orders: int, anchor: str, seed: int, sqlite: bool) -> dict:
    """Child-process entry: build (or reuse) the DuckDB shop and, if asked, its SQLite copy."""
    directory = Path(directory)
    meta_path = directory / "shop.json"
    wanted = {"generator": GENERATOR_VERSION, "customers": customers, "orders": orders, "anchor": anchor, "seed": seed}
    duck, lite = directory / "shop.duckdb", directory / "shop.db"
    meta = json.loads(meta_path.read_text()) if meta_path.exists() else {}
    result: dict = {"reused": False}
    if meta.get("shop") == wanted and duck.exists():
        result.update(reused=True, counts=meta["counts"], seconds=0.0)
    else:
        for suffix in ("", ".wal"):
            Path(str(duck) + suffix).unlink(missing_ok=True)
        lite.unlink(missing_ok=True)
        built = build_shop(str(duck), customers, orders, anchor, seed)
        result.update(counts=built["counts"], seconds=built["seconds"])
        meta = {"shop": wanted, "counts": built["counts"]}
    if sqlite:
        if meta.get("sqlite") == wanted and lite.exists():
            result["sqlite"] = {"method": "reused", "seconds": 0.0}
        else:
            result["sqlite"] = copy_to_sqlite(str(duck), str(lite))
            meta["sqlite"] = wanted
    meta_path.write_text(json.dumps(meta, indent=2))
    result["rss_mb"] = _peak_rss_mb()
    return result


# --- PostgreSQL ---------------------------------------------------------------------------------

POSTGRES_BATCH = 50_000  # rows fetched from DuckDB per batch while copying: memory stays flat


def _copy_line_sql(table) -> str:
    """A SELECT giving one line of PostgreSQL's COPY text format per row, formatted by DuckDB
    (3-4x faster than fetching Python objects and letting psycopg format them): columns joined
    by tabs, NULL as \\N, backslash, tab, newline and carriage return escaped in strings.
    Timestamps are DuckDB's naive TIMESTAMP text, read by PostgreSQL's ``timestamp without
    time zone`` (SQLAlchemy's DateTime) unchanged; dates, decimals and booleans likewise."""
    import sqlalchemy as sa

    fields = []
    for column in table.columns:
        value = f'CAST("{column.name}" AS VARCHAR)'
        if isinstance(column.type, sa.String):
            for char, escaped in (("\\", "\\\\"), ("\t", "\\t"), ("\n", "\\n"), ("\r", "\\r")):
                value = f"replace({value}, chr({ord(char)}), '{escaped}')"
        fields.append(f"coalesce({value}, '\\N')")
    return f"SELECT {' || chr(9) || '.join(fields)} FROM {table.name}"


def start_postgres():
    """A throwaway cluster as the tests start it (tests/pg.py: initdb in a temp dir, loopback,
    fsync off); returns (server, SQLAlchemy URL of a fresh database) or (None, the reason it cannot)."""
    tests = str(REPO / "tests")
    if tests not in sys.path:
        sys.path.append(tests)  # appended, so nothing in tests/ shadows an installed module
    try:
        import psycopg  # noqa: F401 - the copy and the engine both need it
        from pg import PostgresServer  # tests/pg.py (it imports pytest and tests/servers.py: the test extras)
    except ImportError as exc:
        return None, f"{exc}; install the test extras: pip install -e '.[test]'"
    try:
        server = PostgresServer()
    except (FileNotFoundError, RuntimeError) as exc:
        return None, str(exc)
    try:
        return server, server.new_database()
    except Exception as exc:  # noqa: BLE001 - a server that cannot create a database is a skip too
        server.stop()
        return None, f"cannot create a database: {exc}"


def postgres_url(url: str) -> str:
    """The SQLAlchemy URL with the psycopg 3 driver (plain postgresql:// would ask for psycopg2)."""
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    if parsed.get_backend_name() != "postgresql":
        raise SystemExit(f"--postgres-url {url!r} is not a PostgreSQL URL; give postgresql://user@host:port/database")
    return parsed.set(drivername="postgresql+psycopg").render_as_string(hide_password=False)


def copy_to_postgres(duck_path: str, url: str) -> dict:
    """Child-process entry: the engine's shop tables, recreated in ``url``, filled with the DuckDB
    shop's rows by ``COPY ... FROM STDIN`` in batches, then ANALYZE. No indexes beyond the
    engine's DDL, so the floor and the plan read the same physical tables as on DuckDB."""
    import psycopg
    from psycopg import sql
    from sqlalchemy.engine import make_url

    from engine.tools.demo import TABLES, create_tables
    from engine.state.warehouse import Database

    started = time.perf_counter()
    db = Database(url)
    create_tables(db)  # drops and recreates the shop tables: the same DDL as DuckDB and SQLite got
    db.dispose()
    conninfo = make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
    duck = _duckdb_connect(duck_path, read_only=True)
    rows_copied = 0
    with psycopg.connect(conninfo) as pg:
        for name, table in TABLES.items():
            columns = [c.name for c in table.columns]
            source = duck.execute(_copy_line_sql(table))
            statement = sql.SQL("COPY {} ({}) FROM STDIN").format(
                sql.Identifier(name), sql.SQL(", ").join(map(sql.Identifier, columns)))
            with pg.cursor() as cursor, cursor.copy(statement) as copy:
                while batch := source.fetchmany(POSTGRES_BATCH):
                    copy.write("".join(line + "\n" for (line,) in batch))
                    rows_copied += len(batch)
        pg.commit()
        copied = time.perf_counter() - started
        pg.execute("ANALYZE")
        pg.commit()
        [(size,)] = pg.execute("SELECT pg_database_size(current_database())").fetchall()
        [(version,)] = pg.execute("SHOW server_version").fetchall()
    duck.close()
    return {"rows": rows_copied, "copy_seconds": copied, "seconds": time.perf_counter() - started,
            "bytes": size, "version": version, "rss_mb": _peak_rss_mb()}


# --- measuring ---------------------------------------------------------------------------------


def _naive_anchor(anchor: str) -> datetime:
    value = datetime.fromisoformat(anchor.replace("Z", "+00:00"))
    if value.tzinfo is not None:
        value = value.astimezone(timezone.utc).replace(tzinfo=None)
    return value


def kept_duckdb_shop(shop: Path, project: str = "project"):
    """A DuckDB shop kept by ``--keep`` (``shop``: its directory) opened by a measuring tool in its own process:
    the engine's warehouse URL set to its ``shop.duckdb``, ``project`` loaded; (the reconciler, the shop's
    anchor as an aware UTC instant)."""
    os.environ["ENGINE_WAREHOUSE_URL"] = f"duckdb:///{shop / 'shop.duckdb'}"
    import engine

    meta = json.loads((shop / "shop.json").read_text())
    anchor = _naive_anchor(meta["shop"]["anchor"]).replace(tzinfo=timezone.utc)
    return engine.Reconciler(engine.load_project(shop / project)), anchor


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def _consume_sql(warehouse, sql: str) -> int:
    return sum(len(rows) for rows in warehouse.stream(sql))


def _consume_plan(reconciler, now, campaigns=None, report=None, counted: bool = False) -> dict:
    """Rows of the plan at ``now``: all, send, skip (deferrals included) and deferrals alone.
    ``counted``: as ``engine plan`` runs it (without --include-skipped), the skips the warehouse
    settles counted in SQL (``settled``: how many), not among the rows; else every skip a message."""
    from engine.run.settle import SettledCounts

    settled = SettledCounts() if counted else None
    counts = {"rows": 0, "send": 0, "skip": 0, "defer": 0}
    for batch in reconciler.due(now, campaigns, report=report, settled_counts=settled):
        counts["rows"] += len(batch)
        for m in batch:
            counts["send" if m.action == "send" else "skip"] += 1
            counts["defer"] += m.action == "defer"
    counts["settled"] = sum(settled.by_channel.values()) if settled is not None else 0
    return counts


def _plan_rows(reconciler, now, repeat: int, floor: float, campaigns: int) -> list[dict]:
    """The plan as ``engine plan`` runs it (the settled skips counted in SQL: ``settle.counted_rows``)
    and, in turns with it (``repeat`` rounds, medians), every skip decided row by row as before."""
    times: dict[bool, list[float]] = {True: [], False: []}
    counts: dict[bool, dict] = {}
    for _ in range(repeat):
        for counted in (True, False):
            started = time.perf_counter()
            counts[counted] = _consume_plan(reconciler, now, counted=True) if counted else _consume_plan(reconciler, now)
            times[counted].append(time.perf_counter() - started)
    counted_s, row_s = statistics.median(times[True]), statistics.median(times[False])
    c, r = counts[True], counts[False]
    return [{"what": f"plan: all {campaigns} campaigns", "rows": c["rows"], "seconds": counted_s, "floor": floor,
             "headline": True,
             "note": f"{c['send']:,} send, {c['skip']:,} skip ({c['defer']:,} of them deferred) reach Python, "
                     f"{c['settled']:,} settled skips counted in SQL (engine plan); x{counted_s / row_s:.2f} of row by row"},
            {"what": "  same plan, every skip decided row by row (before)", "rows": r["rows"], "seconds": row_s,
             "floor": floor, "note": f"{r['send']:,} send, {r['skip']:,} skip: engine plan --include-skipped, explain; "
                                     "in turns with the row above"}]


def _alternated(reconciler, now, repeat: int, switch) -> tuple[float, float]:
    """Median seconds of the plan at ``now`` with ``switch(True)`` and with ``switch(False)``, the
    two measured in turn (at least 3 pairs), so that a load changing meanwhile weighs on both alike."""
    times: dict[bool, list[float]] = {True: [], False: []}
    try:
        for _ in range(max(repeat, 3)):
            for on in (True, False):
                switch(on)
                started = time.perf_counter()
                _consume_plan(reconciler, now)
                times[on].append(time.perf_counter() - started)
    finally:
        switch(True)
    return statistics.median(times[True]), statistics.median(times[False])


def _compiled_per_pass(reconciler, now, repeat: int, floor: float, what: str) -> list[dict]:
    """The plan at ``now`` with due queries compiled once per project version (the cache warm: the
    service's steady state) and with every query built and rendered at each pass, as before issue
    15.3 (sql.prepared.COMPILE_ONCE off), measured in turn; then the compile work alone."""
    from engine.sql import prepared

    once, per_pass = _alternated(reconciler, now, repeat, lambda on: setattr(prepared, "COMPILE_ONCE", on))
    rows = [{"what": f"{what}, compiled once (15.3)", "rows": None, "seconds": once, "floor": floor,
             "note": "median of turns with the row below"},
            {"what": f"{what}, compiled per pass (before 15.3)", "rows": None, "seconds": per_pass, "floor": floor,
             "note": f"compile once per project version: x{per_pass / once:.2f} faster ({per_pass - once:.3f} s less per pass)"}]
    config, campaigns = reconciler.config, reconciler.campaigns()

    def statements(on: bool) -> None:
        prepared.COMPILE_ONCE = on
        for campaign in campaigns:
            prepared.due_statement(campaign, config, now, exclude_ledger=True, shared_facts=True)
    try:
        statements(True)  # compiled for this shape of the statements (no zones) before the timing
        build, _ = _timed(lambda: statements(False), repeat)
        bind, _ = _timed(lambda: statements(True), repeat)
    finally:
        prepared.COMPILE_ONCE = True
    rows.append({"what": f"  the {len(campaigns)} due queries: built and rendered / bound", "rows": None, "seconds": bind,
                 "note": f"{build:.3f} s to build and render them (each pass before 15.3), {bind * 1000:.1f} ms to bind "
                         f"the compiled ones: x{build / bind:.0f}"})
    return rows


def _shared_rows_rows(reconciler, now, repeat: int, floor: float, backend: str) -> list[dict]:
    """Issue 15.2: the plan with and without the shared per-order rows, two campaigns beside a
    hand-written SQL, and the scans per pass (benchmarks/hand_sql.py, scans.py)."""
    rows = hand_bench.measure_shared_rows(reconciler, now, repeat, floor, _alternated)
    if backend in ("duckdb", "postgres"):  # the hand-written SQL's interval arithmetic
        rows += hand_bench.measure_hand_sql(reconciler, now, repeat, floor)
    if backend == "duckdb":  # scans counted in DuckDB's physical plans
        rows += hand_bench.measure_scans(reconciler, now)
    return rows


def _pass_plan(reconciler, project_dir: Path, now, repeat: int, settling: str, reset: bool = True,
               record: bool | None = None) -> tuple[float, dict]:
    """The plan as ``run_once`` runs it, skips recorded (median of ``repeat``; with ``reset``, on a
    ledger emptied before each, untimed; ``record``: the decisions recorded, by default only with
    ``reset`` - a plan a minute later must see the same ledger each time). ``settling``: "sql" - the skips the warehouse settles
    (stale, stopped) are recorded set-based and never reach Python (``engine.run.settle``), for
    every campaign that can; "row" - as before that stage, they come as messages and are recorded
    with the other skips (``record_decisions``); "decided" - as a pass decides per campaign
    (``settle.worth_settling``, in a fresh process: nothing remembered of earlier passes).
    ``counts``: the rows that reached Python (send, skip) and the ``settled`` skips that did not."""
    from unittest import mock

    from engine.run import settle
    from engine.run.messages import PassReport
    from engine.run.record import record_decisions

    times, counts = [], {}
    choose = {"sql": lambda *_args: True, "row": lambda *_args: False, "decided": settle.worth_settling}[settling]
    for _ in range(repeat):
        if reset:
            _reset_ledger(reconciler, project_dir)
        reconciler.settled_last.clear()
        reconciler.settled_remembered.clear()  # a new process: what the ledger remembers is read again
        report, settled = PassReport(now=now), PassReport(now=now)
        counts = {"rows": 0, "send": 0, "skip": 0}
        with mock.patch.object(settle, "worth_settling", choose):
            started = time.perf_counter()
            for batch in reconciler.due(now, report=settled):
                counts["rows"] += len(batch)
                for m in batch:
                    counts["send" if m.action == "send" else "skip"] += 1
                if reset if record is None else record:
                    record_decisions(batch, reconciler.ledger, now, report)
            times.append(time.perf_counter() - started)
        counts["settled"] = settled.total("skipped")
    if reset:
        _reset_ledger(reconciler, project_dir)
    return statistics.median(times), counts


def _pass_plan_rows(reconciler, project_dir: Path, now, repeat: int, floor: float, later: bool) -> list[dict]:
    """The plan as a pass runs it, row by row, settled in SQL and as the pass decides, in turns
    (``repeat`` rounds, medians): cold (an emptied ledger) or, ``later``, a minute after the plan the
    ledger holds (the row-by-row and decided rounds record nothing then, so every round sees the same)."""
    modes = ("row", "sql", "decided")
    seconds: dict[str, list[float]] = {mode: [] for mode in modes}
    counts: dict[str, dict] = {}
    for _ in range(repeat):
        for mode in modes:
            took, counts[mode] = _pass_plan(reconciler, project_dir, now, 1, mode, reset=not later)
            seconds[mode].append(took)
    median = {mode: statistics.median(values) for mode, values in seconds.items()}
    when = "one minute later, ledger filled" if later else "empty ledger"
    labels = {"row": "skips recorded row by row", "sql": "settled skips in SQL", "decided": "settled as the pass decides"}
    rows = []
    for mode in modes:
        c = counts[mode]
        note = f"{c['rows']:,} rows reach Python ({c['send']:,} send, {c['skip']:,} skip)"
        if mode != "row":
            note += (f", {c['settled']:,} stale/stopped skips recorded set-based; x{median[mode] / median['row']:.2f} "
                     f"of row by row")
        rows.append({"what": f"plan as a pass runs it ({when}), {labels[mode]}", "rows": c["rows"], "seconds": median[mode],
                     "floor": floor, "headline": mode == "decided" and not later, "note": note})
    return rows


def _incremental_rows(reconciler, project_dir: Path, later, repeat: int, floor: float) -> list[dict]:
    """The plan a minute later with a change column mapped (issue 15.5: the per-customer facts kept in
    engine tables, refreshed from the rows changed since the watermark) beside the same plan without,
    measured in turn on the same ledger; then the facts alone: refresh vs the full GROUP BY."""
    import engine
    from engine.errors import WarehouseError
    from engine.run import incremental

    db = reconciler.warehouse
    for table, at in (("orders", "created_at"), ("events", "occurred_at")):
        try:  # the shop has no change column: every row as if ingested at its creation
            db.execute(f"ALTER TABLE {table} ADD COLUMN updated_at {'TEXT' if db.backend == 'sqlite' else 'TIMESTAMP'}")
        except WarehouseError:
            pass  # there from an earlier run on a kept directory
        db.execute(f"UPDATE {table} SET updated_at = {at}")
    changes_dir = project_dir.parent / f"{project_dir.name}-changes"
    shutil.rmtree(changes_dir, ignore_errors=True)
    changes_dir.mkdir()
    for name in ("campaigns.d", "templates"):
        shutil.copytree(project_dir / name, changes_dir / name)
    text = (project_dir / "engine.yaml").read_text()
    mapped = text.replace("columns: {status: status, total: total,", "columns: {updated_at: updated_at, status: status, total: total,")
    mapped = mapped.replace("columns: {event_id: event_id,", "columns: {updated_at: updated_at, event_id: event_id,")
    if mapped.count("updated_at:") != 2:
        raise SystemExit("benchmark: could not map updated_at in the project's engine.yaml")
    (changes_dir / "engine.yaml").write_text(mapped)
    kept = engine.Reconciler(engine.load_project(changes_dir))
    try:
        build, _ = _timed(lambda: _consume_plan(kept, later), 1)  # builds the kept tables
        times: dict[bool, list[float]] = {True: [], False: []}
        counts = {}
        for _ in range(max(repeat, 3)):
            for on, which in ((True, kept), (False, reconciler)):
                started = time.perf_counter()
                counts[on] = _consume_plan(which, later)
                times[on].append(time.perf_counter() - started)
        with_column, without = statistics.median(times[True]), statistics.median(times[False])
        if counts[True] != counts[False]:
            raise SystemExit(f"benchmark: the incremental plan differs from the full one: {counts[True]} vs {counts[False]}")
        modes = ", ".join(cost.line() for cost in kept.facts_costs)
        refresh, _ = _timed(lambda: incremental.refresh(kept.warehouse, kept.ledger, kept.config, later, writes=True,
                                                        shares=True, campaigns=kept.project.campaigns), repeat)
        full_facts, _ = _timed(lambda: _create_facts(reconciler, later), repeat)
    finally:
        kept.close()
    return [
        {"what": "plan one minute later, change column mapped (15.5)", "rows": counts[True]["rows"], "seconds": with_column,
         "floor": floor, "headline": True,
         "note": f"x{with_column / without:.2f} of the same plan without one ({without:.3f} s, measured in turn); "
                 f"the first pass with it built the kept facts in {build:.3f} s"},
        {"what": "  per-customer facts: incremental refresh", "rows": None, "seconds": refresh, "floor": floor,
         "note": modes},
        {"what": "  per-customer facts: full GROUP BY (without)", "rows": None, "seconds": full_facts, "floor": floor,
         "note": "CREATE TEMPORARY TABLE of order and event facts, every pass"},
    ]


class _RowsRead:
    """Counts the due rows a plan reads from the warehouse (each reaches Python's ``decide_rows``)."""

    def __init__(self):
        self.count = 0

    def stage(self, *_args) -> None:
        pass

    def rows(self, count: int) -> None:
        self.count += count


def _hash_in_sql_rows(reconciler, project_dir: Path, now, repeat: int, floor: float) -> list[dict]:
    """The stable hash in the due queries (engine.sql.hashing: A/B buckets, a replica's shard) against
    Python per row as before (``hashing.IN_SQL`` off), measured in turns: the cold plan as a pass runs
    it (settled skips in SQL: A/B steps settle only with the hash in SQL), and the plan of replica
    0 of 2 (``--shard 0/2``: cut in the query's WHERE, or after the fetch in Python)."""
    from engine.sql import hashing

    seconds: dict[str, list[float]] = {}
    found: dict[str, dict] = {}
    progress = reconciler.progress
    try:
        for _ in range(max(repeat, 2)):
            for on in (True, False):
                hashing.IN_SQL = on
                took, counts = _pass_plan(reconciler, project_dir, now, 1, "sql")
                seconds.setdefault(f"settle {on}", []).append(took)
                found[f"settle {on}"] = counts
                reconciler.shard, reconciler.progress = (0, 2), _RowsRead()
                started = time.perf_counter()
                counts = _consume_plan(reconciler, now)
                seconds.setdefault(f"shard {on}", []).append(time.perf_counter() - started)
                found[f"shard {on}"] = {**counts, "read": reconciler.progress.count}
                reconciler.shard, reconciler.progress = None, progress
    finally:
        hashing.IN_SQL, reconciler.shard, reconciler.progress = True, None, progress
    median = {key: statistics.median(values) for key, values in seconds.items()}
    rows = []
    for on, label in ((True, "hash in SQL"), (False, "hash in Python (before)")):
        c = found[f"settle {on}"]
        rows.append({"what": f"plan as a pass runs it (empty ledger), settled in SQL, {label}", "rows": c["rows"],
                     "seconds": median[f"settle {on}"], "floor": floor,
                     "note": f"{c['rows']:,} rows reach Python ({c['skip']:,} skip), {c['settled']:,} settled in SQL"
                             + ("" if not on else f"; x{median['settle True'] / median['settle False']:.2f} of before")})
    for on, label in ((True, "shard in the due queries' WHERE"), (False, "shard cut in Python after the fetch (before)")):
        c = found[f"shard {on}"]
        rows.append({"what": f"plan of replica 0/2, {label}", "rows": c["read"], "seconds": median[f"shard {on}"],
                     "floor": floor,
                     "note": f"{c['read']:,} due rows read into Python, {c['rows']:,} messages"
                             + ("" if not on else f"; x{median['shard True'] / median['shard False']:.2f} of before")})
    return rows


def _holdout_rows(reconciler, now, repeat: int, floor: float) -> list[dict]:
    """What deciding a holdout in Python costs (issue 15.1: could the warehouse hash it, as it does A/B
    buckets?): the plan's messages that reach the holdout stage (send after channel choice), each
    campaign given ``holdout: 10`` (no shipped campaign has one), through ``policies.holdout``, beside
    the plan itself in the same run. The stage runs after channel choice on purpose, so SQL could
    only hand it the bucket as a column; the Python hash is the most it could save."""
    import dataclasses

    from engine.run import policies

    started = time.perf_counter()
    batches, kept = [], 0
    for batch in reconciler.due(now):
        sending = [m for m in batch if m.action == "send"]
        if kept < 200_000:  # bounded memory at any size
            batches.append(sending)
            kept += len(sending)
    plan_seconds = time.perf_counter() - started
    held = [dataclasses.replace(c, holdout=10) for c in reconciler.campaigns()]
    inputs = policies.first_attempt_inputs(reconciler.config, reconciler.ledger, now, held, held)
    took = []
    for _ in range(max(repeat, 3)):
        started = time.perf_counter()
        skipped = sum(m.action == "skip" for batch in batches for m in policies.holdout(batch, inputs))
        took.append(time.perf_counter() - started)
    seconds = statistics.median(took)
    per = seconds / kept * 1e6 if kept else 0.0
    return [{"what": "  holdout decided in Python (every campaign holdout: 10)", "rows": kept, "seconds": seconds,
             "floor": floor, "note": f"{per:.2f} us per message, {skipped:,} held out; "
                                     f"x{seconds / plan_seconds:.3f} of the plan ({plan_seconds:.2f} s) beside it"}]


def _create_facts(reconciler, now) -> None:
    import engine
    from engine.sql.compile import SHARED_FACTS, shared_facts_create

    with reconciler.warehouse.session() as session:
        for entity, table in SHARED_FACTS.items():
            session.execute(engine.render_sql(shared_facts_create(entity, reconciler.config, now), reconciler.config.dialect))
            session.execute(f"DROP TABLE {table}")


def _record_plan(reconciler, now) -> int:
    """Record the plan at ``now`` in the ledger as a pass would (segment entries first; sends as
    'sent', skips as 'skipped', deferrals not at all) without rendering or sending anything, then
    refresh the ledger's planner statistics as a pass that recorded that many does at its end
    (``Reconciler.run_once``, ``STATISTICS_AFTER``): the plan a minute later follows such a pass."""
    from engine.run.reconcile import STATISTICS_AFTER
    from engine.run.record import as_record

    reconciler.enter_segments(now)
    recorded = 0
    for batch in reconciler.due(now):
        records = [as_record(m, "sent" if m.action == "send" else "skipped", reason=m.reason, detail=m.detail)
                   for m in batch if m.action != "defer"]
        recorded += len(reconciler.ledger.write_new(records, now))
    if recorded >= STATISTICS_AFTER:
        reconciler.ledger.refresh_statistics()
    return recorded


def _remember_steady(reconciler, later) -> int:
    """The settle memory passes leave in the steady state, on the ledger ``_record_plan`` filled: the
    first pass remembers each campaign's settled skips (its whole history: most campaigns >= SETTLE_FROM),
    the pass after it settles once more and remembers what it found - the few instances that went stale
    or stopped in between - and from then on the passes decide those row by row (``settle.worth_settling``).
    Writes what a pass at ``later`` finds (counted in SQL for every campaign that can settle, nothing
    recorded) as the ledger's memory, and forgets what this process remembered of earlier plans (a plan
    records nothing). Without it, a plan a minute later counted the settled skips of every campaign this
    process or the ledger had no memory of (a campaign with no ledger row: re-activate) at every run:
    x1.32 of the steady plan at 1M (2.169 vs 1.639 s, load 6.7). Returns how many the pass found."""
    from unittest import mock

    from engine.run import settle

    counts = settle.SettledCounts()
    reconciler.settled_last.clear()
    reconciler.settled_remembered.clear()
    with mock.patch.object(settle, "worth_settling", lambda *_args: True):
        for _ in reconciler.due(later, settled_counts=counts):
            pass
    found = {c.name: 0 for c in reconciler.campaigns() if settle.settles(c, reconciler.config, None, None)}
    for (campaign, _step, _reason, _channel), count in counts.by_channel.items():
        found[campaign] += count
    reconciler.ledger.remember_settled(found, later)
    return sum(found.values())


#: run.py's grown ledger (``_grown_minute_rows``): the filled ledger's rows this many times, the older copies
#: moved back by the ledger's span each (~13 months of history at the default size), grown since this many days
GROWN_COPIES, GROWN_SINCE_DAYS = 4, 400


def _grown_minute_rows(reconciler, url: str, project_dir: Path, now, repeat: int, floor: float) -> list[dict]:
    """The plan a minute later on the ledger a shop grows pass after pass (issue 15's steady target): the
    filled ledger (``_record_plan``: one plan's rows, all inside today's windows, which flatters the steady
    plan) rewritten by ``ledger_layout.grow`` - ``GROWN_COPIES`` times its rows, the older copies moved back
    in time, appended in the order passes since ``GROWN_SINCE_DAYS`` days before ``now`` would have written
    them, each with its pass's ``created_at`` - then the same plan as the filled row's. DuckDB only: the
    generator is DuckDB SQL, and DuckDB is where a ledger's order decides what a plan reads (benchmarks/README
    "DuckDB a minute later on a ledger grown in time order"); elsewhere no row."""
    if reconciler.warehouse.backend != "duckdb":
        return []
    import ledger_layout

    later = now + timedelta(minutes=1)
    for database in {id(d): d for d in (reconciler.warehouse, reconciler.ledger.db)}.values():
        database.dispose()  # the rewrite's own connection: no pooled one holds the file meanwhile
    started = time.perf_counter()
    con = _duckdb_connect(url.removeprefix("duckdb:///"))
    try:
        grown = ledger_layout.grow(con, project_dir, now.replace(tzinfo=None), GROWN_SINCE_DAYS, GROWN_COPIES,
                                   older_copies=True)
    finally:
        con.close()
    rewrite = time.perf_counter() - started
    _remember_steady(reconciler, later)
    seconds, counts = _timed(lambda: _consume_plan(reconciler, later, counted=True), repeat)
    return [{"what": "plan one minute later, ledger grown in time order", "rows": counts["rows"], "seconds": seconds,
             "floor": floor, "headline": True,
             "note": f"{counts['send']:,} send, {counts['skip']:,} skip ({counts['defer']:,} of them deferred), "
                     f"{counts['settled']:,} counted in SQL; the ledger: the filled row's {grown // GROWN_COPIES:,} rows "
                     f"{GROWN_COPIES} times ({grown:,}), older copies back in time, appended as passes since "
                     f"{GROWN_SINCE_DAYS} days would (ledger_layout.grow, {rewrite:.0f} s)"}]


def _reset_ledger(reconciler, project_dir: Path) -> None:
    """Drop the ledger's tables and its schema version and empty the outbox: the next pass starts
    from nothing (ensure_schema creates the ledger anew; with the version table left, it would
    take the ledger for one already at head)."""
    from engine.state.ledger import metadata
    from engine.state.migrations import VERSION_TABLE

    for table in [VERSION_TABLE] + [t.name for t in reversed(metadata.sorted_tables)]:
        reconciler.warehouse.execute(f"DROP TABLE IF EXISTS {table}")
    reconciler.ledger.ensure_schema()
    shutil.rmtree(project_dir / "var" / "outbox", ignore_errors=True)


class _PrintedRows(list):
    """The result rows of one backend, each printed (with the load average) as it is measured, so a
    run stopped early, or one still going, has left its numbers on the screen; the table at the end
    shows them again."""

    def __init__(self, backend: str):
        super().__init__()
        self.backend = backend

    def append(self, row: dict) -> None:
        super().append(row)
        seconds = "" if row.get("seconds") is None else f" {row['seconds']:.3f} s"
        ratio = f" x{row['seconds'] / row['floor']:.1f} floor" if row.get("floor") and row.get("seconds") else ""
        rows = "" if row.get("rows") is None else f" {row['rows']:,} rows"
        load = " / ".join(f"{a:.2f}" for a in os.getloadavg())
        measured = f"{rows}{seconds}{ratio}" + (";" if row.get("note") and (rows or seconds) else "")
        print(f"  [{self.backend} {time.strftime('%H:%M:%S')} load {load}] {row['what'].strip()}:{measured}"
              + (f" {row['note']}" if row.get("note") else ""), flush=True)

    def extend(self, rows) -> None:
        for row in rows:
            self.append(row)

    def __iadd__(self, rows):
        self.extend(rows)
        return self


def measure(backend: str, url: str, project_dir: Path, now: datetime, repeat: int, run_repeat: int,
            smtp_dir: Path | None = None, sink=None, quick: bool = False, history: int = 0,
            customers: int = 0, capacity: bool = False) -> list[dict]:
    """All measurements on one warehouse; rows for the result table (``run_repeat`` 0: no run_once;
    ``smtp_dir``: a copy of the project whose email channel is ``sink``, the loopback SMTP sink;
    ``history``: rows of history added to the ledger before one more pass; ``capacity``: only the
    rows the capacity model checks - floor, plan, plan per campaign, plan a minute later - without
    the warm-up plan and the alternated variants)."""
    import engine
    import engine.dialects

    os.environ["ENGINE_WAREHOUSE_URL"] = url  # engine.yaml: url: ${ENGINE_WAREHOUSE_URL:-...}
    project = engine.load_project(project_dir)
    if project.config.dialect != backend:
        raise SystemExit(f"expected the {backend} dialect, the project says {project.config.dialect}")
    reconciler = engine.Reconciler(project)
    rows: list[dict] = _PrintedRows(backend)
    campaigns = reconciler.campaigns()
    try:
        _reset_ledger(reconciler, project_dir)  # a kept directory may hold an old ledger

        # warm-up: open the pool, load the database into the OS cache
        _consume_sql(reconciler.warehouse, FLOOR_SQL)
        floor, floor_rows = _timed(lambda: _consume_sql(reconciler.warehouse, FLOOR_SQL), repeat)
        rows.append({"what": "floor: orders GROUP BY customer_id", "rows": floor_rows, "seconds": floor})

        if not capacity:  # warm-up: both ways' statements compiled (--capacity: cold, as a new engine plan)
            _consume_plan(reconciler, now, counted=True)
            _consume_plan(reconciler, now)
        rows += _plan_rows(reconciler, now, 1 if capacity else repeat, floor, len(campaigns))
        if capacity:  # the same plan as a pass runs it: settled skips recorded set-based, the rest decided
            pass_s, counts = _pass_plan(reconciler, project_dir, now, 1, "decided")
            rows.append({"what": "plan as a pass runs it (empty ledger), settled as the pass decides",
                         "rows": counts["rows"], "seconds": pass_s, "floor": floor,
                         "note": f"{counts['rows']:,} rows reach Python ({counts['send']:,} send, {counts['skip']:,} skip), "
                                 f"{counts['settled']:,} stale/stopped skips recorded set-based; skips recorded"})
        if not capacity:
            rows += _compiled_per_pass(reconciler, now, repeat, floor, "  same plan")
            rows += _shared_rows_rows(reconciler, now, repeat, floor, backend)
            rows += _pass_plan_rows(reconciler, project_dir, now, repeat, floor, later=False)
            rows += _hash_in_sql_rows(reconciler, project_dir, now, repeat, floor)
            rows += _holdout_rows(reconciler, now, repeat, floor)

        if engine.dialects.dialect_named(project.config.dialect).temporary_tables:
            facts_s, _ = _timed(lambda: _create_facts(reconciler, now), repeat)
            rows.append({"what": "  per-customer facts, once per pass", "rows": None, "seconds": facts_s, "floor": floor,
                         "note": "CREATE TEMPORARY TABLE for order and event facts, shared by every campaign's query"})
        for campaign in campaigns:
            compile_s, sql = _timed(lambda: engine.render_sql(
                engine.due_query(campaign, project.config, now, exclude_ledger=project.config.ledger_shares_warehouse),
                project.config.dialect), repeat)
            sql_s, _ = _timed(lambda: _consume_sql(reconciler.warehouse, sql), repeat)
            plan_s, counts = _timed(lambda: _consume_plan(reconciler, now, [campaign]), repeat)
            rows.append({"what": f"  plan {campaign.name}", "rows": counts["rows"], "seconds": plan_s, "floor": floor,
                         "note": f"{counts['send']:,} send; compile {compile_s * 1000:.0f} ms (once per project version), "
                                 f"SQL+fetch {sql_s:.3f} s, rest (per-row Python) {max(plan_s - sql_s, 0):.3f} s"})
        # The steady state: the ledger holds what the first pass decided, and the plan a minute later
        # only finds what became due since. This is what a reconciler pays every interval.
        from engine.run.settle import SETTLE_FROM

        filled = _record_plan(reconciler, now)
        found_later = _remember_steady(reconciler, now + timedelta(minutes=1))
        later_plan, counts = _timed(lambda: _consume_plan(reconciler, now + timedelta(minutes=1), counted=True), repeat)
        rows.append({"what": "plan one minute later, ledger filled (the first plan's rows only)", "rows": counts["rows"], "seconds": later_plan,
                     "floor": floor, "headline": True,
                     "note": f"{counts['send']:,} send, {counts['skip']:,} skip ({counts['defer']:,} of them deferred), "
                             f"{counts['settled']:,} counted in SQL (engine plan); the ledger holds the plan above ({filled:,} rows, recorded without sending) "
                             f"and the settle memory of the steady state (a pass a minute later settles {found_later:,}: under "
                             f"{SETTLE_FROM:,}, so row by row after it)"})
        if capacity:  # the floor again: under a changing load, the plans' ratios lie between the two
            floor_end, _ = _timed(lambda: _consume_sql(reconciler.warehouse, FLOOR_SQL), repeat)
            rows.append({"what": "floor again, after the plans", "rows": None, "seconds": floor_end,
                         "note": f"x{floor_end / floor:.2f} of the first floor"})
        if not capacity:
            rows += _incremental_rows(reconciler, project_dir, now + timedelta(minutes=1), repeat, floor)
            rows += _compiled_per_pass(reconciler, now + timedelta(minutes=1), repeat, floor, "  same plan one minute later")
            rows += _pass_plan_rows(reconciler, project_dir, now + timedelta(minutes=1), repeat, floor, later=True)
            rows += _grown_minute_rows(reconciler, url, project_dir, now, repeat, floor)
        _reset_ledger(reconciler, project_dir)
        rss_plan = _peak_rss_mb()

        if run_repeat == 0:
            rows.append({"what": "peak RSS after plan", "rows": None, "seconds": None, "note": f"{rss_plan:.0f} MB"})
            return rows
        times: dict[str, list[float]] = {"run": [], "again": [], "later": []}
        reports: dict[str, object] = {}
        size_before = _database_bytes(reconciler, url)
        for _ in range(run_repeat):
            _reset_ledger(reconciler, project_dir)
            size_before = _database_bytes(reconciler, url)
            # the first pass on an empty ledger, the same instant again, then the next minute's pass
            for name, instant in (("run", now), ("again", now), ("later", now + timedelta(minutes=1))):
                started = time.perf_counter()
                reports[name] = reconciler.run_once(instant)
                times[name].append(time.perf_counter() - started)
        run, report = statistics.median(times["run"]), reports["run"]
        rows.append({"what": "run_once: empty ledger -> file outbox", "rows": _recorded(report), "seconds": run,
                     "note": _run_note(report, run)})
        again = _recorded(reports["again"])
        rows.append({"what": "run_once again, same instant", "rows": again, "seconds": statistics.median(times["again"]),
                     "note": "nothing left to do" if again == 0 else "expected nothing"})
        later = statistics.median(times["later"])
        rows.append({"what": "run_once one minute later (incremental)", "rows": _recorded(reports["later"]),
                     "seconds": later, "floor": floor, "note": _run_note(reports["later"], later)})
        rows.append({"what": "ledger after the three passes", "rows": None, "seconds": None,
                     "note": _ledger_size(reconciler, url, size_before)})
        rss_run = _peak_rss_mb()  # before the history below: filling 1M rows grows DuckDB's buffers, not the engine
        if history:
            # the same minute-later pass once the ledger also holds a long history: its due queries
            # anti-join the ledger by key, so this is what a big ledger costs a steady-state pass
            filled = dispatch.fill_history(reconciler.ledger.db, history, customers, now)
            started = time.perf_counter()
            report = reconciler.run_once(now + timedelta(minutes=2))
            seconds = time.perf_counter() - started
            rows.append({"what": f"run_once two minutes later, +{history:,} history rows", "rows": _recorded(report),
                         "seconds": seconds, "floor": floor,
                         "note": f"vs {later:.3f} s without them (x{seconds / later:.1f}); history added in {filled:.1f} s; "
                                 + _run_note(report, seconds)})
        rows += lists_bench.measure_lists(reconciler, project_dir, now, max(repeat, 3), _reset_ledger)
        rows.append({"what": "peak RSS after plan / after run", "rows": None, "seconds": None,
                     "note": f"{rss_plan:.0f} MB / {rss_run:.0f} MB"})
    finally:
        reconciler.close()
        for row in rows:
            row["backend"] = backend
    if smtp_dir is not None and run_repeat:
        rows += dispatch.measure_smtp(backend, url, smtp_dir, now, sink, _reset_ledger, _run_note, _recorded, quick)
    for row in rows:
        row.setdefault("backend", backend)
    return rows


def measure_shared_rows_only(url: str, project_dir: Path, now: datetime, repeat: int) -> list[dict]:
    """``--shared-rows``: the floor, then ``_shared_rows_rows`` on an empty ledger."""
    import engine

    os.environ["ENGINE_WAREHOUSE_URL"] = url
    reconciler = engine.Reconciler(engine.load_project(project_dir))
    try:
        _reset_ledger(reconciler, project_dir)
        _consume_sql(reconciler.warehouse, FLOOR_SQL)
        floor, floor_rows = _timed(lambda: _consume_sql(reconciler.warehouse, FLOOR_SQL), repeat)
        rows = [{"what": "floor: orders GROUP BY customer_id", "rows": floor_rows, "seconds": floor}]
        _consume_plan(reconciler, now)
        rows += _shared_rows_rows(reconciler, now, repeat, floor, "duckdb")
    finally:
        reconciler.close()
    for row in rows:
        row["backend"] = "duckdb"
    return rows


def _recorded(report) -> int:
    return report.total("sent") + report.total("skipped") + report.total("failed")


def _run_note(report, seconds: float) -> str:
    sent, skipped, failed, deferred = (report.total(o) for o in ("sent", "skipped", "failed", "defer"))
    emails = sum(n for (_, _, channel, outcome), n in report.by_channel.items() if channel == "email" and outcome == "sent")
    return (f"{sent:,} sent ({sent / seconds:,.0f}/s; {emails:,} emails, {emails / seconds:,.0f}/s), "
            f"{skipped:,} skipped, {failed:,} failed, {deferred:,} deferred"
            + (f", errors: {report.errors}" if report.errors else ""))


def _database_bytes(reconciler, url: str) -> int:
    """Bytes of the database file(s) after a checkpoint (the ledger shares the shop's file);
    on a server, the database's size as PostgreSQL reports it."""
    from engine.state.warehouse import file_of

    if reconciler.warehouse.backend == "postgresql":
        [(size,)] = reconciler.warehouse.execute("SELECT pg_database_size(current_database())")
        return size
    path = file_of(url)
    if path is None:
        return 0
    reconciler.warehouse.execute("CHECKPOINT" if reconciler.warehouse.backend == "duckdb" else "PRAGMA wal_checkpoint(TRUNCATE)")
    return sum(Path(str(path) + suffix).stat().st_size for suffix in ("", ".wal", "-wal")
               if Path(str(path) + suffix).exists())


def _ledger_size(reconciler, url: str, size_before: int) -> str:
    by_status = reconciler.ledger.db.execute(
        "SELECT status, count(*), sum(length(content)) FROM engine_ledger GROUP BY status ORDER BY status")
    [(entries,)] = reconciler.ledger.db.execute("SELECT count(*) FROM engine_entries")
    total = sum(n for _, n, _ in by_status)
    content = sum(c or 0 for _, _, c in by_status)
    growth = _database_bytes(reconciler, url) - size_before
    return (f"{total:,} rows ({', '.join(f'{n:,} {status}' for status, n, _ in by_status)}), "
            f"content {content / 1e6:.1f} MB, {entries:,} engine_entries rows; database file +{growth / 1e6:.1f} MB")


def measure_memory(directory: Path, project_dir: Path, customers: int, anchor: str, seed: int,
                   now: datetime) -> list[dict]:
    """Peak RSS of a child process streaming a plan in which every one of ``customers`` is due
    (a shop of its own, built in another child process)."""
    shop_dir = directory / f"memory-{customers}"
    shop_dir.mkdir(exist_ok=True)
    print(f"Building a shop of {customers:,} customers for the memory measurement ...", flush=True)
    spawn = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(1, mp_context=spawn) as pool:
        built = pool.submit(build_all, str(shop_dir), customers, 3 * customers, anchor, seed, False).result()
    target = dispatch.memory_project(project_dir, shop_dir / "project")
    print(f"Planning {customers:,} due messages in a child process ...", flush=True)
    with concurrent.futures.ProcessPoolExecutor(1, mp_context=spawn) as pool:
        result = pool.submit(dispatch.memory_child, str(target), f"duckdb:///{shop_dir / 'shop.duckdb'}",
                             now.isoformat()).result()
    return [{"what": "memory: plan with every customer due", "rows": result["due"], "seconds": result["seconds"],
             "backend": "duckdb",
             "note": f"peak RSS {result['peak_mb']:.0f} MB (after start-up {result['baseline_mb']:.0f} MB) for "
                     f"{result['due']:,} due messages of {built['counts']['customers']:,} customers"}]


def memory_limit_child(project_dir: str, url: str, now_iso: str, spill_dir: str) -> dict:
    """Child-process entry: the plan of the shipped campaigns consumed to the end, with the project's
    warehouse.duckdb settings; its seconds, rows, peak RSS (VmHWM) and the most bytes DuckDB kept in its
    temporary directory (``spill_dir``, polled every 20 ms) meanwhile."""
    import threading

    import engine

    os.environ["ENGINE_WAREHOUSE_URL"] = url
    reconciler = engine.Reconciler(engine.load_project(Path(project_dir)))
    peak, done = [0], threading.Event()

    def poll() -> None:
        while not done.wait(0.02):
            try:
                size = sum(f.stat().st_size for f in Path(spill_dir).rglob("*") if f.is_file())
            except OSError:  # a file removed while summing
                continue
            peak[0] = max(peak[0], size)
    watcher = threading.Thread(target=poll, daemon=True)
    watcher.start()
    started = time.perf_counter()
    try:
        counts = _consume_plan(reconciler, datetime.fromisoformat(now_iso))
    finally:
        seconds = time.perf_counter() - started
        done.set()
        watcher.join()
        reconciler.close()
    return {**counts, "seconds": seconds, "peak_mb": dispatch._high_water_mb(), "spill_mb": peak[0] / 1e6}


def measure_memory_limit(url: str, project_dir: Path, now: datetime, limit: str, repeat: int,
                         directory: Path) -> list[dict]:
    """The plan with ``warehouse.duckdb.memory_limit: limit`` next to the plan without one, each run in a fresh
    child process, alternately (median of ``repeat``, at least 1): seconds, peak RSS, peak spill to disk."""
    limited = directory / "project-memory-limit"
    shutil.rmtree(limited, ignore_errors=True)
    shutil.copytree(project_dir, limited)
    yaml = limited / "engine.yaml"
    yaml.write_text(yaml.read_text().replace("warehouse:\n", f"warehouse:\n  duckdb: {{memory_limit: '{limit}'}}\n", 1))
    spill_dir = str(directory / "shop.duckdb.tmp")  # DuckDB's default temp_directory for the file
    results: dict[str, list[dict]] = {"unlimited": [], limit: []}
    spawn = multiprocessing.get_context("spawn")
    for turn in range(max(repeat, 1)):
        for name, target in (("unlimited", project_dir), (limit, limited)):
            print(f"  plan, memory limit {name} (turn {turn + 1}) ...", flush=True)
            with concurrent.futures.ProcessPoolExecutor(1, mp_context=spawn) as pool:
                try:
                    results[name].append(pool.submit(memory_limit_child, str(target), url, now.isoformat(),
                                                     spill_dir).result())
                except Exception as exc:  # noqa: BLE001 - the engine's own error (e.g. out of memory) is the result
                    results[name].append({"error": str(exc).strip().splitlines()[0]})
            print(f"    {results[name][-1]}", flush=True)
    rows, base = [], None
    for name, runs in results.items():
        ok = [r for r in runs if "error" not in r]
        if not ok:
            rows.append({"backend": "duckdb", "what": f"plan, memory_limit {name}", "rows": None, "seconds": None,
                         "note": f"FAILED: {runs[0]['error']}"})
            continue
        seconds = statistics.median(r["seconds"] for r in ok)
        base = base or seconds
        rows.append({"backend": "duckdb", "what": f"plan, memory_limit {name}", "rows": ok[0]["rows"], "seconds": seconds,
                     "note": f"x{seconds / base:.2f} the unlimited plan; peak RSS {max(r['peak_mb'] for r in ok):.0f} MB, "
                             f"spilled at most {max(r['spill_mb'] for r in ok):.0f} MB; {ok[0]['send']:,} send, "
                             f"{ok[0]['skip']:,} skip; {len(ok)} of {len(runs)} runs"})
    return rows


START_COMMANDS = {"engine --help": ["--help"], "engine validate": ["validate"]}


def _import_seconds(stderr: str) -> float:
    """``python -X importtime``'s report: the sum of the cumulative times of the top-level imports."""
    total = 0
    for line in stderr.splitlines():
        if line.startswith("import time:") and "|" in line:
            _, cumulative, name = line.split("|", 2)
            if name.startswith(" ") and not name.startswith("  ") and cumulative.strip().isdigit():
                total += int(cumulative)
    return total / 1e6


def measure_start(project_dir: Path, repeat: int = 5) -> list[dict]:
    """Start-up of ``engine --help`` and ``engine validate`` on the shipped project, each a fresh interpreter
    (``python -X importtime -m engine.cli.main ...``): wall time as a ratio of ``python -c pass`` started the
    same way in the same run, and the import time (sum of the top-level cumulative times). Median of ``repeat``."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}

    def start(args: list[str]) -> tuple[float, float]:
        started = time.perf_counter()
        result = subprocess.run([sys.executable, "-X", "importtime", *args], cwd=project_dir, env=env,
                                capture_output=True, text=True, timeout=120)
        seconds = time.perf_counter() - started
        if result.returncode != 0:
            raise SystemExit(f"{' '.join(args)} failed in {project_dir}: {result.stdout}{result.stderr[-2000:]}")
        return seconds, _import_seconds(result.stderr)

    runs = {"python -c pass": ["-c", "pass"], **{name: ["-m", "engine.cli.main", *args]
                                                for name, args in START_COMMANDS.items()}}
    measured: dict[str, list[tuple[float, float]]] = {name: [] for name in runs}
    for _ in range(repeat + 1):  # interleaved, so a burst of load hits all of them; the first round warms up
        for name, args in runs.items():
            measured[name].append(start(args))
    medians = {name: (statistics.median(w for w, _ in m[1:]), statistics.median(i for _, i in m[1:]))
               for name, m in measured.items()}
    bare_wall, bare_import = medians["python -c pass"]
    rows = [{"what": "start: python -c pass", "rows": None, "seconds": bare_wall, "backend": "-",
             "note": f"a bare interpreter: imports {bare_import * 1000:.0f} ms (site)"}]
    for name in START_COMMANDS:
        wall, imports = medians[name]
        rows.append({"what": f"start: {name}", "rows": None, "seconds": wall, "backend": "-", "start_ratio": wall / bare_wall,
                     "note": f"{wall / bare_wall:.1f}x the bare start; import time {imports:.3f} s "
                             f"(sum of top-level cumulative, target < 0.5 s)"})
    return rows


def _use_smtp(engine_yaml: Path, port: int, connections: int | None = None) -> None:
    """Point the project's email channel at the sink; the other channels (SMS, web push) stay as they are
    (the file outbox), so the project keeps every channel its campaigns and quiet hours name."""
    text = engine_yaml.read_text()
    start = text.index("channels:")
    email = re.compile(r"^  email:\n(?:    .*\n)+", re.M)
    smtp = f"""  email:
    kind: email
    transport: smtp
    host: 127.0.0.1
    port: {port}
    from: "Bean & Brew <hello@beanandbrew.example>"{f"{chr(10)}    connections: {connections}" if connections else ""}
"""
    text = text[:start] + email.sub(lambda _: smtp, text[start:], count=1)
    engine_yaml.write_text(text)


def measure_letters(count: int) -> list[dict]:
    """Letters rendered to PDF per second (engine.channels.letter_pdf: layout, font subsetting, QR code), and
    emails built as MIME bytes per second from the same parts, in one run: the letter row's "x floor" is
    how many times an email's cost a letter takes."""
    from engine import scan_link
    from engine.channel_kinds.declaration import PRINTED_LINK
    from engine.channels.base import OutgoingMessage
    from engine.channels.letter_pdf import render

    body = ("<p>Dear Anna,</p><p>it has been a while since your last order at Bean &amp; Brew, and as one of our "
            "best customers you deserve more than an email: 15% off your next order with the code "
            "<b>LETTER15</b>.</p><p>Warm regards,<br>your Bean &amp; Brew team</p>")
    address = "Anna Meyer\nLindenallee 5\n10115 Berlin"

    def letter(i: int) -> OutgoingMessage:
        key = f"re-engage:letter:{i}:{i}"
        return OutgoingMessage(key=key, kind="letter", to=address, sender="Bean & Brew · Röstereistraße 7 · 10245 Berlin",
                               parts={"address": address, "subject": "We have kept your favourites warm", "body": body},
                               headers={PRINTED_LINK: scan_link.link("https://shop.example/scan", "s" * 32, key)})

    def email(i: int) -> OutgoingMessage:
        return OutgoingMessage(key=f"re-engage:miss-you:{i}:{i}", kind="email", to=f"anna{i}@example.com",
                               sender="Bean & Brew <hello@beanandbrew.example>",
                               parts={"subject": "We have kept your favourites warm", "text": body, "html": body})

    print(f"Measuring {count:,} letters (PDF) ...", flush=True)
    render(letter(0))  # imports WeasyPrint and loads the font: once per process, not per letter
    letters = [letter(i) for i in range(1, count + 1)]
    started = time.perf_counter()
    pages = sum(render(m).pages for m in letters)
    letter_s = time.perf_counter() - started
    emails = [email(i) for i in range(1, count + 1)]
    started = time.perf_counter()
    size = sum(len(m.to_bytes()) for m in emails)
    email_s = time.perf_counter() - started
    return [
        {"backend": "-", "what": "emails: MIME bytes built", "rows": count, "seconds": email_s,
         "note": f"{count / email_s:,.0f} emails/s, {size // count:,} bytes each"},
        {"backend": "-", "what": "letters: PDF rendered (window, QR)", "rows": count, "seconds": letter_s,
         "floor": email_s, "note": f"{count / letter_s:,.1f} letters/s, {pages / count:.1f} pages each; "
                                   f"x floor = an email's cost"},
    ]


def _format_table(rows: list[dict]) -> str:
    headers = ["backend", "measurement", "rows", "seconds", "x floor", "notes"]
    body = []
    for r in rows:
        body.append([
            r["backend"], r["what"],
            "" if r["rows"] is None else f"{r['rows']:,}",
            "" if r["seconds"] is None else f"{r['seconds']:.3f}",
            f"{r['seconds'] / r['floor']:.1f}" if r.get("floor") else "",
            r.get("note", ""),
        ])
    widths = [max(len(x) for x in column) for column in zip(headers, *body)]
    align = ["<", "<", ">", ">", ">", "<"]
    line = lambda values: "  ".join(f"{v:{a}{w}}" for v, a, w in zip(values, align, widths)).rstrip()  # noqa: E731
    return "\n".join([line(headers), line(["-" * w for w in widths])] + [line(r) for r in body])


def _prepare_postgres(url: str | None, directory: Path):
    """The database to measure on (a throwaway cluster unless ``url`` is given), filled with the
    DuckDB shop's rows in a child process; returns (server to stop or None, SQLAlchemy URL or None)."""
    server = None
    if url is None:
        server, url_or_reason = start_postgres()
        if server is None:
            print(f"  PostgreSQL: skipped, no server to measure on ({url_or_reason})", flush=True)
            return None, None
        url = url_or_reason
    else:
        url = postgres_url(url)
    print("  Copying the shop into PostgreSQL ...", flush=True)
    try:
        with concurrent.futures.ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
            copied = pool.submit(copy_to_postgres, str(directory / "shop.duckdb"), url).result()
    except BaseException as exc:  # also SIGTERM's SystemExit: the cluster must not outlive the run
        from engine.state.warehouse import masked

        if server is not None:
            server.stop()
        if not isinstance(exc, Exception):
            raise
        # e.g. a wrong --postgres-url: say which database and why, no traceback
        raise SystemExit(f"cannot copy the shop into PostgreSQL at {masked(url)}: {str(exc).strip().splitlines()[0]}; "
                         "check the URL and that the server is running") from None
    print(f"  PostgreSQL {copied['version']} copy: {copied['rows']:,} rows by COPY in {copied['copy_seconds']:.1f} s, "
          f"ANALYZE {copied['seconds'] - copied['copy_seconds']:.1f} s, database {copied['bytes'] / 1e6:.0f} MB, "
          f"copier peak RSS {copied['rss_mb']:.0f} MB", flush=True)
    return server, url


def ledger_growth(args) -> int:
    """``--ledger-growth N``: a pass's ledger operations on an empty ledger and on one pre-filled with N
    rows by one INSERT ... SELECT, per backend (PostgreSQL in a throwaway cluster); no shop."""
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    directory = Path(tempfile.mkdtemp(prefix="engine-ledger-", dir=args.keep))
    now = _naive_anchor(args.anchor).replace(tzinfo=timezone.utc)
    rows, load = [], os.getloadavg()
    try:
        for backend in [b.strip() for b in args.ledger_backends.split(",") if b.strip()]:
            server = None
            if backend == "postgresql":
                server, reason = start_postgres()
                if server is None:
                    print(f"PostgreSQL: skipped ({reason})", flush=True)
                    continue
            print(f"Measuring the {backend} ledger, empty and with {args.ledger_growth:,} rows ...", flush=True)
            try:
                rows += [{**r, "backend": backend} for r in dispatch.measure_ledger(
                    backend, directory, args.ledger_growth, args.customers, now, max(args.repeat, 5), postgres=server)]
            finally:
                if server is not None:
                    server.stop()
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    print()
    print(f"Ledger growth: {LEDGER_BATCH_NOTE}; median of {max(args.repeat, 5)} rounds after a warm-up; "
          f"{os.cpu_count()} CPUs, Python {platform.python_version()}; load average "
          + " / ".join(f"{a:.2f}" for a in load) + " at the start, " + " / ".join(f"{a:.2f}" for a in os.getloadavg())
          + " at the end")
    print(_format_table(rows))
    for r in rows:
        if "ledger_ratio" in r:
            print(f"Headline ({r['backend']}): ledger write cost per row at {args.ledger_growth:,} rows = "
                  f"{r['ledger_ratio']:.2f}x of an empty ledger (target <= 1.2x)")
    return 0


LEDGER_BATCH_NOTE = f"{dispatch.LEDGER_BATCH:,} keys per operation, {dispatch.HISTORY_CAMPAIGNS} retired campaigns of history"


def _replica_counts(value: str) -> list[int]:
    try:
        counts = [int(x) for x in value.split(",")]
    except ValueError:
        counts = []
    if not counts or min(counts) < 1:
        raise argparse.ArgumentTypeError(f"{value!r} is not a list of replica counts like 1,2,4")
    return counts


def _print_summary(args, counts: dict, rows: list[dict]) -> None:
    print()
    print(f"{counts['customers']:,} customers / {counts['orders']:,} orders at {args.anchor}; {os.cpu_count()} CPUs, "
          f"Python {platform.python_version()}; load average {' / '.join(f'{a:.2f}' for a in os.getloadavg())} at the end")
    print()
    print(_format_table(rows))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--customers", type=int, default=100_000, help="customers in the shop (default 100000)")
    parser.add_argument("--orders", type=int, default=1_000_000, help="orders in the shop (default 1000000)")
    parser.add_argument("--quick", action="store_true", help="10k customers / 100k orders (overrides the sizes)")
    parser.add_argument("--repeat", type=int, default=3, help="runs per measurement; the median is reported (default 3)")
    parser.add_argument("--run-repeat", type=int, default=1,
                        help="full run_once passes (each on an emptied ledger and outbox); the median is reported. "
                             "Default 1: at the default sizes one pass writes ~40k files and takes minutes")
    parser.add_argument("--no-run", action="store_true", help="measure the plan only, skip the run_once passes")
    parser.add_argument("--keep", metavar="DIR", type=Path,
                        help="build the project and shop in DIR and keep them; a later run with the same sizes reuses the shop")
    parser.add_argument("--sqlite", action="store_true", help="also load the shop into SQLite and measure there")
    parser.add_argument("--postgres", action="store_true",
                        help="also copy the shop into a throwaway PostgreSQL cluster (as the tests start one) and "
                             "measure there; skipped with a note when the server binaries are missing")
    parser.add_argument("--postgres-url", metavar="URL",
                        help="like --postgres, on an existing database instead (its shop tables and ledger are replaced)")
    parser.add_argument("--no-smtp", action="store_true",
                        help="skip the SMTP measurements (a pass to a loopback SMTP sink, its ceiling, dispatch alone)")
    parser.add_argument("--no-push", action="store_true",
                        help="skip the web push measurements (dispatch to a loopback push service, its ceiling)")
    parser.add_argument("--sink", choices=("fast", "aiosmtpd"), default="fast",
                        help="the loopback SMTP sink, in a child process: a minimal asyncio server (default) or aiosmtpd")
    parser.add_argument("--connections", type=int, default=None,
                        help="SMTP connections of the email channel (default: the engine's default)")
    parser.add_argument("--history", type=int, default=None, metavar="N",
                        help="rows of history in the ledger measurements (default 1000000, --quick 200000; 0 skips them)")
    parser.add_argument("--memory-customers", type=int, default=None, metavar="N",
                        help="peak RSS of a plan where all N customers are due, on a separate shop "
                             "(default 1000000, --quick 50000; 0 skips it)")
    parser.add_argument("--start", action="store_true",
                        help="only the start-up measurement (engine --help, engine validate vs python -c pass), no shop")
    parser.add_argument("--ledger-growth", type=int, default=None, metavar="N",
                        help="only the ledger measurement, on ledgers pre-filled with N rows (set-based), "
                             "no shop: write cost per row at N rows vs an empty ledger (issue 15 uses 10000000)")
    parser.add_argument("--ledger-backends", default="sqlite,duckdb,postgresql",
                        help="backends of --ledger-growth, comma-separated (default sqlite,duckdb,postgresql)")
    parser.add_argument("--letters", type=int, default=None, metavar="N",
                        help="letters rendered to PDF for letters/s, beside emails/s (default 200, --quick 50; 0 skips it)")
    parser.add_argument("--replicas", metavar="N,N,...", type=_replica_counts,
                        help="only one pass split over N replicas (engine run --once --shard i/N, real processes) "
                             "on PostgreSQL to the SMTP sink, for each N (e.g. 1,2,4): messages and PG transactions/s")
    parser.add_argument("--duckdb-memory-limit", metavar="SIZE",
                        help="only the plan on DuckDB with warehouse.duckdb.memory_limit SIZE (e.g. 1GB, spilling to "
                             "disk) next to the plan without a limit, alternately")
    parser.add_argument("--shared-rows", action="store_true",
                        help="only the floor, the plan with and without the shared per-order rows (issue 15.2), two "
                             "campaigns beside a hand-written SQL and the scans per pass, on DuckDB")
    parser.add_argument("--tracking", type=int, default=None, metavar="N",
                        help="requests per tracking measurement (/healthz, /open, /click; default 4000, --quick 2000; 0 skips it)")
    parser.add_argument("--capacity", action="store_true",
                        help="only the plan rows the capacity model checks (floor, plan, plan as a pass runs it, plan "
                             "per campaign, plan a minute later, the floor again), one round each without warm-up or alternated variants; implies --no-run "
                             "--no-smtp --no-push and skips history, letters, tracking and memory")
    parser.add_argument("--anchor", default="2025-01-10T00:00:00Z", help="end of the history and the plan instant")
    parser.add_argument("--seed", type=int, default=42, help="generator seed (default 42)")
    args = parser.parse_args(argv)
    if args.quick:
        args.customers, args.orders, args.repeat = 10_000, 100_000, 1
    if args.capacity:
        args.no_run = args.no_smtp = args.no_push = True
        args.history = args.letters = args.tracking = args.memory_customers = 0
    if args.history is None:
        args.history = 200_000 if args.quick else 1_000_000
    if args.letters is None:
        args.letters = 50 if args.quick else 200
    if args.tracking is None:
        args.tracking = 2000 if args.quick else 4000
    if args.memory_customers is None:
        args.memory_customers = 50_000 if args.quick else 1_000_000
    if args.repeat < 1 or args.run_repeat < 1:
        parser.error("--repeat and --run-repeat must be at least 1")

    if args.ledger_growth:
        return ledger_growth(args)

    import duckdb
    import sqlalchemy

    import engine

    # SIGTERM ends the run through the finally below, so the sink process does not outlive it
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    directory = args.keep.resolve() if args.keep else Path(tempfile.mkdtemp(prefix="engine-bench-"))
    directory.mkdir(parents=True, exist_ok=True)
    project_dir = directory / "project"
    if project_dir.exists():
        shutil.rmtree(project_dir)
    project_dir.mkdir()
    shutil.copy(REPO / "engine.yaml", project_dir / "engine.yaml")
    shutil.copytree(REPO / "campaigns.d", project_dir / "campaigns.d")
    shutil.copytree(REPO / "templates", project_dir / "templates")
    smtp_dir, sink = None, None
    pg_server, pg_url = None, None
    only_one = args.replicas or args.duckdb_memory_limit or args.shared_rows  # modes that measure only that, on the shop
    if not only_one and not args.capacity:
        print("Measuring start-up (median of 5) ...", flush=True)
    start_rows = [] if only_one or args.capacity else measure_start(project_dir)
    if args.start:
        print(f"load average {' / '.join(f'{a:.2f}' for a in os.getloadavg())}; {os.cpu_count()} CPUs, "
              f"Python {platform.python_version()}")
        print(_format_table(start_rows))
        if args.keep is None:
            shutil.rmtree(directory, ignore_errors=True)
        return 0

    try:
        if not args.no_smtp and not args.no_run:
            sink = SinkProcess(args.sink)
            smtp_dir = directory / "project-smtp"
            shutil.rmtree(smtp_dir, ignore_errors=True)
            shutil.copytree(project_dir, smtp_dir)
            _use_smtp(smtp_dir / "engine.yaml", sink.port, args.connections)
        print(f"Building a shop of {args.customers:,} customers / {args.orders:,} orders in {directory} ...", flush=True)
        # In a child process, so this process's peak RSS is the engine's, not the generator's.
        with concurrent.futures.ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
            built = pool.submit(build_all, str(directory), args.customers, args.orders, args.anchor, args.seed,
                                args.sqlite).result()
        counts = built["counts"]
        print("  " + ", ".join(f"{n:,} {name}" for name, n in counts.items())
              + (" (reused)" if built["reused"] else f" in {built['seconds']:.1f} s") + f", builder peak RSS {built['rss_mb']:.0f} MB")
        if args.sqlite:
            print(f"  SQLite copy: {built['sqlite']['method']}, {built['sqlite']['seconds']:.1f} s")
        if args.postgres or args.postgres_url or args.replicas:
            pg_server, pg_url = _prepare_postgres(args.postgres_url, directory)
        if args.replicas:
            if pg_url is None or sink is None:
                raise SystemExit("--replicas needs PostgreSQL (see above) and the SMTP sink (drop --no-smtp, --no-run)")
            print(f"Measuring a pass split over {', '.join(map(str, args.replicas))} replica(s) ...", flush=True)
            rows = replicas_bench.measure_replicas(pg_url, smtp_dir, sink, _naive_anchor(args.anchor),
                                                   args.replicas, directory / "logs")
            rows += replicas_bench.ledger_bytes(pg_url, directory)
            _print_summary(args, counts, rows)
            return 0
        if args.shared_rows:
            rows = measure_shared_rows_only(f"duckdb:///{directory / 'shop.duckdb'}", project_dir,
                                            _naive_anchor(args.anchor).replace(tzinfo=timezone.utc), args.repeat)
            _print_summary(args, counts, rows)
            return 0
        if args.duckdb_memory_limit:
            rows = measure_memory_limit(f"duckdb:///{directory / 'shop.duckdb'}", project_dir,
                                        _naive_anchor(args.anchor).replace(tzinfo=timezone.utc),
                                        args.duckdb_memory_limit, args.repeat, directory)
            _print_summary(args, counts, rows)
            return 0

        now = _naive_anchor(args.anchor).replace(tzinfo=timezone.utc)
        run_repeat = 0 if args.no_run else args.run_repeat
        rows = list(start_rows)
        print("Measuring duckdb ...", flush=True)
        common = dict(sink=sink, quick=args.quick, history=args.history, customers=counts["customers"],
                      capacity=args.capacity)
        rows += measure("duckdb", f"duckdb:///{directory / 'shop.duckdb'}", project_dir, now, args.repeat, run_repeat,
                        smtp_dir, **common)
        if sink is not None and args.sink == "fast":
            sample = [r for r in rows if r.get("sample")]
            if sample:
                rows.append({**dispatch.aiosmtpd_ceiling(1000, sample[0]["sample"], 1), "backend": "-"})
            print("Measuring webhook posts beside emails ...", flush=True)
            rows += [{**r, "backend": "-"} for r in webhook_bench.measure_webhooks(
                2000 if args.quick else 5000, max(args.repeat, 3), sink)]
        if not args.no_push and not args.no_run:
            print("Measuring web push dispatch ...", flush=True)
            rows += [{**r, "backend": "-"} for r in push.measure_push(1000 if args.quick else 5000, 4)]
        if args.history:
            for backend in ("duckdb", "sqlite") if args.sqlite else ("duckdb",):
                print(f"Measuring the {backend} ledger with {args.history:,} rows of history ...", flush=True)
                rows += [{**r, "backend": backend} for r in dispatch.measure_ledger(
                    backend, directory, args.history, counts["customers"], now, max(args.repeat, 3))]
        if args.sqlite:
            print("Measuring sqlite ...", flush=True)
            rows += measure("sqlite", f"sqlite:///{directory / 'shop.db'}", project_dir, now, args.repeat, run_repeat,
                            smtp_dir, **common)
        if pg_url:
            print("Measuring postgres ...", flush=True)
            rows += measure("postgres", pg_url, project_dir, now, args.repeat, run_repeat, smtp_dir, **common)
        if args.letters:
            rows += measure_letters(args.letters)
        if args.tracking:
            rows += tracking_bench.measure_tracking(args.tracking)
        if args.memory_customers:
            rows += measure_memory(directory, project_dir, args.memory_customers, args.anchor, args.seed, now)

        print()
        print(f"Plan at {args.anchor} on {counts['customers']:,} customers / {counts['orders']:,} orders "
              f"({counts['order_items']:,} order items, {counts['checkouts']:,} checkouts, {counts.get('events', 0):,} events); "
              f"median of {args.repeat}" + ("" if args.no_run else f" (run_once: {args.run_repeat})"))
        print(f"{os.cpu_count()} CPUs, Python {platform.python_version()}, DuckDB {duckdb.__version__}, "
              f"SQLite {sqlite3.sqlite_version}, SQLAlchemy {sqlalchemy.__version__}, engine {engine.__version__}; "
              f"load average {' / '.join(f'{a:.2f}' for a in os.getloadavg())} at the end")
        print()
        print(_format_table(rows))
        print()
        for r in rows:
            if r.get("headline"):
                print(f"Headline ({r['backend']}, {r['what'].strip()}): plan / floor = {r['seconds'] / r['floor']:.1f}x "
                      f"(plan {r['seconds']:.3f} s, floor {r['floor']:.3f} s)")
        if sink is not None:
            print(f"SMTP sink: {sink.received():,} messages received")
    finally:
        if sink is not None:
            sink.stop()
        if pg_server is not None:
            pg_server.stop()
        if args.keep is None:
            shutil.rmtree(directory, ignore_errors=True)
        else:
            print(f"Kept {directory}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
