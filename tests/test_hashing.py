"""The stable hash in SQL (engine.sql.hashing, each dialect's ``hash32_sql``) assigns exactly what Python does.

A/B buckets, holdout groups and replica shards are the first 4 bytes of SHA-256 of a text
(``decide.hash32``). A running campaign must not reshuffle when the due query computes them, so
for thousands of customer ids - ASCII, digits, German, Japanese, emoji, an empty one - the
warehouse's value, bucket and shard must be Python's in DuckDB, SQLite (a function the engine
registers on every connection it opens) and a real PostgreSQL; the dialects that cannot run here
must at least parse the SQL back. Spark's is computed on a real Spark session in tests/test_spark.py.
"""
from __future__ import annotations

import random

import pytest
import sqlalchemy as sa
import sqlglot
from sqlglot import exp

from conftest import database_url
from engine.decide import bucket_prefix, hash32, holdout_cut, holdout_prefix, in_holdout, stable_bucket
from engine.dialects import DIALECTS, dialect_named
from engine.run.plan import shard_of
from engine.sql.compile import render_sql
from engine.sql.hashing import hash_bucket, hashes_in_sql
from engine.state.warehouse import Database

CAMPAIGN = "welcome-series"


def customer_ids(count: int = 3000) -> list[str]:
    """Ids as shops write them: numbers, prefixed codes, e-mail-like, non-ASCII (2-, 3- and 4-byte UTF-8)."""
    rng = random.Random(15)
    alphabet = "abcXYZ0123456789-_.@äöüßéñ日本語カフェ☕🍩"
    ids = ["", "0", "42", "00042", "c-4711", "Müller", "日本", "☕🍩"]
    ids += [str(rng.randrange(10 ** rng.randrange(1, 12))) for _ in range(count // 3)]
    ids += ["".join(rng.choice(alphabet) for _ in range(rng.randrange(1, 24))) for _ in range(count - len(ids))]
    return list(dict.fromkeys(ids))


def assignment_query(dialect: str) -> str:
    """Per id of table ``ids``: the hash, the A/B bucket, the holdout hash, a shard of 7, as the due query writes them."""
    value = exp.cast(exp.column("id"), exp.DataType.build("VARCHAR"))
    holdout = hash_bucket(holdout_prefix(CAMPAIGN), value, 10000, dialect)
    return render_sql(exp.select(
        exp.column("id"),
        exp.alias_(hash_bucket("", value, 2 ** 32, dialect), "hashed"),
        exp.alias_(hash_bucket(bucket_prefix(CAMPAIGN), value, 100, dialect), "bucket"),
        exp.alias_(exp.Case(ifs=[exp.If(this=holdout < exp.Literal.number(holdout_cut(12.5)),
                                        true=exp.Literal.number(1))], default=exp.Literal.number(0)), "held_out"),
        exp.alias_(hash_bucket("", value, 7, dialect), "shard"),
    ).from_("ids"), dialect)


@pytest.mark.parametrize("backend", ["duckdb", "sqlite", "postgres"])
def test_the_warehouse_assigns_buckets_holdouts_and_shards_as_python_does(tmp_path, backend):
    ids = customer_ids()
    db = Database(database_url(backend, tmp_path))
    try:
        dialect = db.dialect.name
        assert hashes_in_sql(dialect)
        with db.engine.begin() as conn:
            conn.execute(sa.text("CREATE TABLE ids (id VARCHAR(100))"))
            conn.execute(sa.text("INSERT INTO ids (id) VALUES (:id)"), [{"id": i} for i in ids])
        rows = {row[0]: tuple(row[1:]) for row in db.fetch_all(assignment_query(dialect))}
    finally:
        db.dispose()
    expected = {i: (hash32(i), stable_bucket(CAMPAIGN, i), int(in_holdout(CAMPAIGN, i, 12.5)), shard_of(i, 7))
                for i in ids}
    assert len(rows) == len(ids) > 2500
    assert rows == expected
    assert max(h for h, *_ in expected.values()) >= 2 ** 31  # the unsigned half: no sign bit lost
    assert {b for _, b, _, _ in expected.values()} == set(range(100))


def test_sqlite_gets_the_hash_on_every_connection_the_engine_opens_and_may_index_it(tmp_path):
    """A registered function, deterministic: SQLite accepts it in an index expression (it refuses a
    function that is not), and a second pooled connection has it too."""
    name = dialect_named("sqlite").hash32_function
    db = Database(f"sqlite:///{tmp_path / 'shop.db'}")
    try:
        with db.engine.connect() as first, db.engine.connect() as second:
            first.execute(sa.text("CREATE TABLE ids (id TEXT)"))
            first.execute(sa.text(f"CREATE INDEX ids_hash ON ids ({name}(id))"))
            first.commit()
            assert second.execute(sa.text(f"SELECT {name}('Müller'), {name}(NULL)")).one() == (hash32("Müller"), None)
    finally:
        db.dispose()
    plain = sa.create_engine(f"sqlite:///{tmp_path / 'shop.db'}")  # not the engine's: no such function
    with plain.connect() as conn, pytest.raises(sa.exc.OperationalError, match="no such function"):
        conn.execute(sa.text(f"SELECT {name}('x')"))
    plain.dispose()


@pytest.mark.parametrize("dialect", [d for d in DIALECTS if d not in ("duckdb", "sqlite", "postgres")])
def test_the_other_dialects_hash_parses_back_and_renders_the_same(dialect):
    sql = assignment_query(dialect)
    tree = sqlglot.parse_one(sql, read=dialect)
    assert tree.sql(dialect=dialect) == sql
    assert "sha" in sql.lower()  # the dialect's own SHA-256, no engine function
    assert len(list(tree.find_all(exp.Mod))) == 4  # the hash, bucket, holdout and shard, each modulo
