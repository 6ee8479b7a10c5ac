"""Spark for real: the SQL compiled for dialect 'spark' runs on Spark SQL (local
mode) and returns exactly the rows DuckDB returns for its own SQL.

The shared fixture history (tests/history.py) is loaded into both: DuckDB
through SQLAlchemy, Spark as temporary views with the same column types
(timestamps as TIMESTAMP_NTZ, the engine's naive UTC). ``engine_ledger`` and
``engine_entries`` are real Spark tables (parquet, in a temporary warehouse
directory) with the columns of engine/ledger.py. Both engines then live through
the same instants: segment entries are inserted by each engine's own compiled
INSERT, the due rows (every column, customer attributes included) are compared,
and the same half of them is written to both ledgers, so later instants prove
the ledger anti-join too.

Marked ``spark``: ``pytest -m spark`` runs it alone; the normal suite and CI run
it. It skips with the reason when pyspark or Java is missing, unless
ENGINE_REQUIRE_SPARK=1 (set by .ci/run).
"""
from __future__ import annotations

import dataclasses
import os
import shutil
import time
from decimal import Decimal

import pytest
import sqlalchemy as sa

from conftest import copy_project
from engine import Reconciler, due_query, load_project, render_sql
from engine.sql.due import entries_insert
from engine.tools.demo import TABLES, load_shop
from engine.state.ledger import ledger_table, message_key
from engine.state.ledger import metadata as ledger_metadata
from engine.state.warehouse import Database
from history import INSTANTS, shared_history

pytestmark = pytest.mark.spark

#: Spark session start, load and query times in seconds, printed at the end (pytest -s).
TIMINGS: dict[str, float] = {}


def _unavailable(reason: str):
    if os.environ.get("ENGINE_REQUIRE_SPARK"):
        pytest.fail(f"Spark is required here but cannot run: {reason}")
    pytest.skip(f"Spark unavailable: {reason}")


def spark_type(column: sa.Column) -> str:
    """The Spark SQL type of a shop or ledger column (naive timestamps: TIMESTAMP_NTZ)."""
    kind = column.type
    if isinstance(kind, sa.DateTime):
        return "TIMESTAMP_NTZ"
    if isinstance(kind, sa.Date):
        return "DATE"
    if isinstance(kind, sa.Numeric) and not isinstance(kind, sa.Float):
        return f"DECIMAL({kind.precision or 38},{kind.scale or 0})"
    if isinstance(kind, sa.Float):
        return "DOUBLE"
    if isinstance(kind, sa.Integer):
        return "BIGINT"
    if isinstance(kind, sa.Boolean):
        return "BOOLEAN"
    return "STRING"


def spark_schema(table: sa.Table) -> str:
    return ", ".join(f"{c.name} {spark_type(c)}" for c in table.columns)


def spark_rows(table: sa.Table, rows: list[dict]) -> list[tuple]:
    decimals = {c.name for c in table.columns if spark_type(c).startswith("DECIMAL")}
    return [tuple(Decimal(str(row[c.name])) if c.name in decimals and row.get(c.name) is not None else row.get(c.name)
                  for c in table.columns) for row in rows]


@pytest.fixture(scope="module")
def spark(tmp_path_factory):
    if shutil.which("java") is None and not os.environ.get("JAVA_HOME"):
        _unavailable("no Java runtime (apt-get install openjdk-17-jre-headless)")
    try:
        from pyspark.sql import SparkSession
    except ImportError:
        _unavailable("pyspark is not installed (pip install -e '.[test]')")
    warehouse = tmp_path_factory.mktemp("spark-warehouse")
    local_ip = os.environ.get("SPARK_LOCAL_IP")
    os.environ["SPARK_LOCAL_IP"] = "127.0.0.1"  # loopback only, whatever the host name resolves to
    started = time.monotonic()
    try:
        session = (
            SparkSession.builder.master("local[2]").appName("engine-tests")
            .config("spark.driver.host", "127.0.0.1")
            .config("spark.driver.bindAddress", "127.0.0.1")
            .config("spark.ui.enabled", "false")
            .config("spark.ui.showConsoleProgress", "false")
            .config("spark.sql.shuffle.partitions", "2")
            .config("spark.default.parallelism", "2")
            .config("spark.sql.session.timeZone", "UTC")
            # the engine's instants are naive UTC: TIMESTAMP means TIMESTAMP_NTZ, as in DuckDB and PostgreSQL
            .config("spark.sql.timestampType", "TIMESTAMP_NTZ")
            .config("spark.sql.warehouse.dir", str(warehouse))
            .getOrCreate()
        )
    except Exception as exc:  # noqa: BLE001 - e.g. a Java too old for this pyspark
        _unavailable(f"the Spark session does not start: {str(exc).strip().splitlines()[0]}")
    session.sparkContext.setLogLevel("ERROR")
    TIMINGS["session start"] = time.monotonic() - started
    yield session
    session.stop()
    if local_ip is None:
        os.environ.pop("SPARK_LOCAL_IP", None)
    else:
        os.environ["SPARK_LOCAL_IP"] = local_ip


def load_into_spark(spark, history) -> None:
    for name, table in TABLES.items():
        frame = spark.createDataFrame(spark_rows(table, history.rows.get(name) or []), schema=spark_schema(table))
        frame.createOrReplaceTempView(name)
    for table in ledger_metadata.sorted_tables:  # engine_ledger, engine_entries, ...
        spark.sql(f"DROP TABLE IF EXISTS {table.name}")
        spark.sql(f"CREATE TABLE {table.name} ({spark_schema(table)}) USING parquet")


def spark_claim(spark, rows: list[dict]) -> None:
    if rows:
        frame = spark.createDataFrame([tuple(row.get(c.name) for c in ledger_table.columns) for row in rows],
                                      schema=spark_schema(ledger_table))
        frame.write.insertInto(ledger_table.name)


def duckdb_rows(db: Database, sql: str) -> tuple[list[str], list[tuple]]:
    with db.engine.connect() as conn:
        result = conn.execute(sa.text(sql))
        return list(result.keys()), [tuple(row) for row in result]


def _key(row: tuple) -> tuple:
    return tuple("" if v is None else str(v) for v in row)


def test_spark_due_rows_equal_duckdb_for_every_campaign_and_instant(spark, tmp_path, monkeypatch):
    history = shared_history()
    url = f"duckdb:///{tmp_path / 'shop.duckdb'}"
    db = Database(url)
    load_shop(db, history)
    db.dispose()
    started = time.monotonic()
    load_into_spark(spark, history)
    TIMINGS["load"] = time.monotonic() - started
    monkeypatch.setenv("ENGINE_WAREHOUSE_URL", url)
    duck = Reconciler(load_project(copy_project(tmp_path / "project")))
    config = duck.config
    on_spark = dataclasses.replace(config, dialect="spark")
    campaigns = duck.campaigns()
    compared = queries = 0
    TIMINGS.update({"due queries": 0.0, "entry inserts": 0.0})
    try:
        for label, now in INSTANTS.items():
            for campaign in campaigns:  # segment entries first, as run_once does
                for engine_config, execute in ((config, duck.warehouse.execute), (on_spark, spark.sql)):
                    insert = entries_insert(campaign, engine_config, now)
                    if insert is not None:
                        started = time.monotonic()
                        execute(render_sql(insert, engine_config.dialect))
                        if engine_config is on_spark:
                            TIMINGS["entry inserts"] += time.monotonic() - started
            claims = []
            for campaign in campaigns:
                duck_sql = render_sql(due_query(campaign, config, now, exclude_ledger=True), "duckdb")
                spark_sql = render_sql(due_query(campaign, on_spark, now, exclude_ledger=True), "spark")
                columns, duck_rows = duckdb_rows(duck.warehouse, duck_sql)
                started = time.monotonic()
                result = spark.sql(spark_sql)
                spark_result = result.collect()
                TIMINGS["due queries"] += time.monotonic() - started
                queries += 1
                assert result.columns == columns
                expected = sorted(duck_rows, key=_key)
                got = sorted((tuple(r) for r in spark_result), key=_key)
                assert got == expected, f"{campaign.name} at {label}: Spark differs from DuckDB\n" + "\n".join(
                    [f"  only DuckDB: {r}" for r in expected if r not in got][:10]
                    + [f"  only Spark:  {r}" for r in got if r not in expected][:10])
                compared += len(expected)
                for row in [r for r in expected if r[3] is not None][::2]:  # the same half goes to both ledgers
                    key = message_key(*(str(v) for v in row[:4]))
                    claims.append({"message_key": key, "campaign": row[0], "step": row[1], "customer_id": str(row[2]),
                                   "trigger_key": str(row[3]), "status": "claimed",
                                   "created_at": now.replace(tzinfo=None), "updated_at": now.replace(tzinfo=None)})
            if claims:
                duck.ledger.db.execute(ledger_table.insert(), claims)
                spark_claim(spark, claims)
    finally:
        duck.close()
    print(f"\nSpark: {queries} due queries, {compared} rows equal to DuckDB's; seconds: "
          + ", ".join(f"{k} {v:.1f}" for k, v in TIMINGS.items()))
    assert compared > 100


def test_spark_assigns_buckets_holdouts_and_shards_as_python_does(spark):
    """The stable hash of engine/sql/hashing.py in Spark SQL (SHA2, CONV) on the ids of tests/test_hashing.py."""
    from test_hashing import CAMPAIGN, assignment_query, customer_ids
    from engine.decide import hash32, in_holdout, stable_bucket
    from engine.run.plan import shard_of

    ids = customer_ids()
    spark.createDataFrame([(i,) for i in ids], "id STRING").createOrReplaceTempView("ids")
    rows = {row[0]: tuple(row[1:]) for row in spark.sql(assignment_query("spark")).collect()}
    assert rows == {i: (hash32(i), stable_bucket(CAMPAIGN, i), int(in_holdout(CAMPAIGN, i, 12.5)), shard_of(i, 7))
                    for i in ids}
