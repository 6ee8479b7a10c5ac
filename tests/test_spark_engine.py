"""The engine's own commands on Spark, reached as a deployment reaches a cluster: the Spark Thrift
JDBC/ODBC server (local mode, tests/spark_thrift.py) through the warehouse layer with a ``hive://``
URL (PyHive's SQLAlchemy dialect), the ledger on PostgreSQL (tests/pg.py).

The demo shop (seed 42, 2,000 customers) is built in DuckDB and copied to Spark as Parquet tables.
Two projects run side by side, each with its own PostgreSQL ledger and loopback SMTP sink: the
reference on the DuckDB file, the other on Spark. Both seed the same vip tags, then run
``engine run --once`` at five instants in order (segment entries of re-engage and inactivity, the
has_tag() campaigns and the ledger anti-join all reach Spark as VALUES lists, the warehouse being
read-only): after each pass both ledgers must hold the same outcomes and both sinks the same
emails, each once. Then ``engine plan`` (every due message, skips included), ``engine explain``
and ``engine validate --check-warehouse`` must print on Spark what they print on DuckDB.

Marked ``spark``; skips without Java, pyspark or PyHive unless ENGINE_REQUIRE_SPARK=1 (.ci/run).
The server's default time zone is Pacific/Auckland: the engine's connections set UTC themselves.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa

from conftest import copy_project
from engine import Reconciler, load_project
from engine.clock import format_instant, parse_instant
from engine.state.ledger_tables import ledger_table
from engine.state.warehouse import Database
from engine.tools.demo import TABLES, build_demo
from servers import SmtpSink
from spark_thrift import ThriftServer, copy_shop

pytestmark = [pytest.mark.spark, pytest.mark.long]

ANCHOR = parse_instant("2025-01-10T00:00:00Z")
INSTANTS = [ANCHOR + delta for delta in (timedelta(days=-30), timedelta(0), timedelta(hours=1),
                                         timedelta(days=7), timedelta(days=14))]
#: seconds per command and side, printed at the end (pytest -s)
TIMINGS: dict[str, float] = {}
#: customers tagged vip before the first pass (has_tag('vip') decides inactivity and order-follow-up)
SEEDED_VIPS = [str(n) for n in range(7, 2001, 7)]
#: one command's bound: a pass on Spark took 60-100 s on a loaded 2-core machine
COMMAND_TIMEOUT = 600


def _project(root: Path, ledger_url: str, smtp_port: int) -> Path:
    copy_project(root)
    text = (root / "engine.yaml").read_text()
    text = text.replace("demo:", f"ledger:\n  url: {ledger_url}\n\ndemo:", 1)
    text = text[:text.index("channels:")] + f"""channels:
  email:
    kind: email
    transport: smtp
    host: 127.0.0.1
    port: {smtp_port}
    from: "Bean & Brew <hello@beanandbrew.example>"
  sms:
    kind: sms
    transport: file
    path: var/outbox
  push:
    kind: push
    transport: file
    path: var/outbox
  letter:
    kind: letter
    transport: drop_folder
    path: var/outbox/letter
"""
    (root / "engine.yaml").write_text(text)
    return root


class Side:
    """One project: its warehouse URL, PostgreSQL ledger and SMTP sink."""

    def __init__(self, name: str, root: Path, warehouse_url: str, ledger_url: str, sink: SmtpSink):
        self.name, self.warehouse_url, self.ledger_url, self.sink = name, warehouse_url, ledger_url, sink
        self.root = _project(root, ledger_url, sink.port)

    def start(self, *args: str) -> subprocess.Popen:
        return subprocess.Popen([sys.executable, "-c", "from engine.cli.main import main; main()", *args],
                                cwd=self.root, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env=dict(os.environ, ENGINE_WAREHOUSE_URL=self.warehouse_url))

    def engine(self, *args: str, expect: int = 0) -> str:
        started = time.monotonic()
        process = self.start(*args)
        try:
            out, err = process.communicate(timeout=COMMAND_TIMEOUT)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
        TIMINGS[f"{self.name} {args[0]}"] = TIMINGS.get(f"{self.name} {args[0]}", 0.0) + time.monotonic() - started
        assert process.returncode == expect, f"engine {' '.join(args)} on {self.name}:\n{out}\n{err}"
        return out

    def ledger(self) -> set[tuple]:
        engine = sa.create_engine(self.ledger_url)
        c = ledger_table.c
        with engine.connect() as conn:
            rows = conn.execute(sa.select(c.message_key, c.campaign, c.step, c.customer_id, c.trigger_key, c.variant,
                                          c.channel, c.status, c.reason, c.due_at)).all()
        engine.dispose()
        return {tuple(row) for row in rows}

    def emails(self) -> list[tuple]:
        return sorted((m["X-Engine-Message-Key"], m["To"], m["Subject"]) for m in self.sink.messages)

    def outbox(self, kind: str) -> list[str]:
        path = self.root / "var" / "outbox" / kind / "messages.jsonl"
        return sorted(path.read_text().splitlines()) if path.exists() else []


@pytest.fixture(scope="module")
def sides(tmp_path_factory):
    import pg

    base = tmp_path_factory.mktemp("spark-engine")
    shop = f"duckdb:///{base / 'shop.duckdb'}"
    build_demo(shop, seed=42, customers=2000, anchor=format_instant(ANCHOR))
    with ThriftServer() as server, SmtpSink() as duck_sink, SmtpSink() as spark_sink:
        TIMINGS["server start"] = server.started_in
        started = time.monotonic()
        copy_shop(shop, TABLES, server, "shop")
        TIMINGS["shop copy"] = time.monotonic() - started
        postgres = pg.server()
        result = {"duckdb": Side("duckdb", base / "duckdb", f"{shop}?access_mode=read_only", postgres.new_database(),
                                 duck_sink),
                  "spark": Side("spark", base / "spark", server.url("shop"), postgres.new_database(), spark_sink)}
        result["spark"].server = server
        for side in result.values():
            os.environ["ENGINE_WAREHOUSE_URL"] = side.warehouse_url
            try:
                reconciler = Reconciler(load_project(side.root))
                reconciler.ledger.apply_tags([(c, "set_tag", "vip", "seed") for c in SEEDED_VIPS], INSTANTS[0])
                reconciler.close()
            finally:
                os.environ.pop("ENGINE_WAREHOUSE_URL", None)
        yield result
    print("\nSpark end to end, seconds: " + ", ".join(f"{k} {v:.1f}" for k, v in TIMINGS.items()))


def test_the_engine_sets_utc_on_its_spark_connections(sides):
    db = Database(sides["spark"].warehouse_url)
    try:
        assert db.fetch_all("SELECT current_timezone()")[0][0] == "UTC"  # the server's default is Pacific/Auckland
    finally:
        db.dispose()


def test_validate_checks_the_spark_warehouse(sides):
    for side in sides.values():
        out = side.engine("validate", "--check-warehouse")
        assert "error" not in out.lower(), out


def test_five_passes_on_spark_record_and_send_what_duckdb_does(sides):
    duck, spark = sides["duckdb"], sides["spark"]
    for now in INSTANTS:
        reports = {side.name: side.engine("run", "--once", "--quiet", "--as-of", format_instant(now))
                   for side in (duck, spark)}
        at = format_instant(now)
        assert reports["spark"] == reports["duckdb"], f"pass reports differ at {at}"
        expected, got = duck.ledger(), spark.ledger()
        assert got == expected, f"ledgers differ after the pass at {at}:\n" + "\n".join(
            [f"  only DuckDB's: {r}" for r in sorted(expected - got, key=str)[:10]]
            + [f"  only Spark's:  {r}" for r in sorted(got - expected, key=str)[:10]])
        assert spark.emails() == duck.emails(), f"emails differ after the pass at {at}"
        for kind in ("sms", "push"):
            assert spark.outbox(kind) == duck.outbox(kind), f"{kind} differs after the pass at {at}"
    keys = [key for key, _, _ in spark.emails()]
    assert len(keys) == len(set(keys)) > 300  # each email arrived once
    ledger = spark.ledger()
    sent = {row[1] for row in ledger if row[7] == "sent"}
    for campaign in ("re-engage", "inactivity", "order-follow-up"):  # the campaigns that join engine state
        assert campaign in sent, f"nothing sent for {campaign}"
    assert any(row[1] == "order-follow-up" and row[5] == "vip" for row in ledger)  # has_tag('vip') chose it


def test_plan_and_explain_on_spark_print_what_duckdb_prints(sides):
    duck, spark = sides["duckdb"], sides["spark"]
    at = format_instant(INSTANTS[-1] + timedelta(hours=2))
    plans = {side.name: side.engine("plan", "--as-of", at, "--format", "jsonl", "--include-skipped", "--quiet")
             for side in (duck, spark)}
    # the same lines (each warehouse returns a campaign's rows in an order of its own)
    expected, got = sorted(plans["duckdb"].splitlines()), sorted(plans["spark"].splitlines())
    assert got == expected, "\n".join([f"  only DuckDB's: {line}" for line in expected if line not in got][:5]
                                      + [f"  only Spark's:  {line}" for line in got if line not in expected][:5])
    rows = [json.loads(line) for line in plans["duckdb"].splitlines() if line.startswith("{")]
    assert len(rows) > 20
    chosen = next((row for row in rows if row.get("action") == "send"), rows[0])
    args = ("explain", chosen["campaign"], str(chosen["customer_id"]), "--as-of", at)
    explained = {side.name: side.engine(*args) for side in (duck, spark)}
    assert explained["spark"] == explained["duckdb"]
    assert "=> due" in explained["spark"], explained["spark"]  # a planned row: "due: send ..." or "due: skip ..."


def test_a_spark_server_gone_mid_pass_is_a_clear_error_and_the_next_pass_sends_the_rest_once(sides):
    """Runs last: it kills the server (SIGKILL) after the pass's fifth due query reached it, then
    starts it again on the same port and metastore."""
    duck, spark = sides["duckdb"], sides["spark"]
    server: ThriftServer = spark.server
    at = "2025-01-31T09:00:00Z"  # three weeks on: the re-engage series' later steps are due
    duck.engine("run", "--once", "--quiet", "--as-of", at)
    queries_before = server.log.read_text(errors="replace").count("Submitting query 'WITH")
    process = spark.start("run", "--once", "--quiet", "--as-of", at)
    try:
        deadline = time.monotonic() + COMMAND_TIMEOUT
        while server.log.read_text(errors="replace").count("Submitting query 'WITH") < queries_before + 5:
            assert process.poll() is None and time.monotonic() < deadline, "the pass ended before its fifth query"
            time.sleep(0.5)
        server.kill()
        out, err = process.communicate(timeout=COMMAND_TIMEOUT)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 1, out + err
    assert "Traceback" not in err and "TExecuteStatementResp" not in err + out, err
    assert server.url("shop") in err, err  # the error names the warehouse
    keys = [key for key, _, _ in spark.emails()]
    assert len(keys) == len(set(keys))
    assert spark.ledger() < duck.ledger()  # part of the pass was recorded, nothing else

    server.start()  # the same port, metastore and tables
    spark.engine("run", "--once", "--quiet", "--as-of", at)
    assert spark.ledger() == duck.ledger()
    assert spark.emails() == duck.emails()  # each email once, the same as DuckDB's
