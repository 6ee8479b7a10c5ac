"""PostgreSQL results read through psycopg's binary server-side cursor (issue 15.4, state.warehouse).

The same rows, of the same Python types, as SQLAlchemy's text cursor gives - instants, numerics,
dates, NULLs, a ``%`` in a literal, bound parameters - in rows the plan stage reads the same way
(``_fields``, by position); a failed query is a WarehouseError and the session goes on; a reader
that stops early still ends the read transaction.
"""
from __future__ import annotations

import pg
import pytest

from engine.errors import WarehouseError
from engine.state import warehouse
from engine.state.warehouse import Database

QUERY = ("SELECT i, CAST(i AS VARCHAR) AS customer_id, s, ts, n, d, CAST(:at AS TIMESTAMP) AS bound, '50%' AS pct "
         "FROM t WHERE ts >= CAST(:at AS TIMESTAMP) ORDER BY i")
AT = {"at": "2025-01-02 00:00:00"}


@pytest.fixture
def database():
    db = Database(pg.server().new_database())
    db.execute("CREATE TABLE t AS SELECT i, 'x' || i AS s, TIMESTAMP '2025-01-01' + i * INTERVAL '1 hour' AS ts, "
               "i * 1.5 AS n, CASE WHEN i % 2 = 0 THEN NULL ELSE DATE '2020-02-29' END AS d "
               "FROM generate_series(1, 2500) i")
    yield db
    db.dispose()


def _read(session, monkeypatch, driver: bool) -> list[list]:
    monkeypatch.setattr(warehouse, "DRIVER_FETCH", driver)
    return list(session.stream(QUERY, 1000, AT))


def test_binary_rows_are_sqlalchemys_rows(database, monkeypatch):
    assert database.dialect.binary_results
    with database.session() as session:
        binary, text = _read(session, monkeypatch, True), _read(session, monkeypatch, False)
    assert [len(b) for b in binary] == [len(b) for b in text] == [1000, 1000, 477]
    assert [tuple(r) for b in binary for r in b] == [tuple(r) for b in text for r in b]
    assert [type(v) for v in binary[0][1]] == [type(v) for v in text[0][1]]
    assert binary[0][0]._fields == text[0][0]._fields and binary[0][0]._mapping["pct"] == "50%"
    assert type(binary[0][0]) is not type(text[0][0]), "the binary path was not taken"


def test_a_failure_is_a_warehouse_error_and_an_early_stop_ends_the_transaction(database):
    with database.session() as session:
        with pytest.raises(WarehouseError, match="nope"):
            list(session.stream("SELECT * FROM nope"))
        stream = session.stream(QUERY, 10, AT)
        assert len(next(stream)) == 10
        stream.close()  # the plan stops reading a campaign that failed
        driver = session.conn.connection.driver_connection
        assert driver.info.transaction_status == 0  # idle: no read transaction left open
        session.execute("CREATE TEMPORARY TABLE kept AS SELECT 1 AS one")
        assert [tuple(r) for b in session.stream("SELECT one FROM kept") for r in b] == [(1,)]
