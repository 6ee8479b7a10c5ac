"""A streamed read on the DB-API driver's own cursor, below SQLAlchemy's results (psycopg 3, duckdb_engine).

Owns: running one statement on the driver's cursor of a session's DB-API connection (psycopg: a named,
server-side cursor, as SQLAlchemy's ``stream_results``; DuckDB: the connection's pending result) and
fetching its rows in batches, as tuples that carry their column names (``Row``: what the engine reads
of SQLAlchemy's rows) or, for a reader that goes by position, as the driver's plain tuples in a batch
that carries them (``Rows``: no object made per row), one reader per driver (``READERS``, by SQLAlchemy's driver name: a dialect's
``driver_stream`` names one). The values are the driver's own, exactly as SQLAlchemy's cursor hands them
on for a textual statement (it adds no processing: tests/test_driver_rows.py); what this saves is
SQLAlchemy's result layer (benchmarks/README.md, issue 15.4). Not psycopg's binary format: it loads
text, date and numeric columns slower than text, and those are most of a due row (measured there).

Must not: begin, commit or roll back, catch errors, or know the engine's queries: ``warehouse.Session``
does that around it. Imports no driver: it is handed the DB-API connection.
"""
from __future__ import annotations

from functools import partial
from itertools import count
from typing import Any, Iterator, Mapping


class Row(tuple):
    """One row: a tuple of the driver's values with ``_fields`` (the column names, on a class made per
    statement), ``_mapping``, ``_asdict()`` and attribute access by column name, as SQLAlchemy's rows."""

    __slots__ = ()
    _fields: tuple[str, ...] = ()

    @property
    def _mapping(self) -> dict[str, Any]:
        return dict(zip(self._fields, self))

    def _asdict(self) -> dict[str, Any]:
        return dict(zip(self._fields, self))

    def __getattr__(self, name: str) -> Any:
        try:
            return self[self._fields.index(name)]
        except ValueError:
            raise AttributeError(name) from None


class Rows(list):
    """One batch of rows read by position: the driver's own tuples (or SQLAlchemy's rows), with the
    statement's column names once for the batch (``fields``) instead of a ``Row`` made for each row. A
    reader that keeps some of a batch's rows keeps them in a ``Rows`` of the same ``fields``."""

    __slots__ = ("fields",)

    def __init__(self, rows=(), fields: tuple[str, ...] = ()):
        super().__init__(rows)
        self.fields = fields


def _names(cursor: Any) -> tuple[str, ...]:
    return tuple(column[0] for column in cursor.description or ())  # DB-API: the name comes first


def _plain_tuples(cursor: Any):
    """psycopg's row factory of plain tuples (its ``tuple_row``), without importing psycopg."""
    return tuple


def _row_factory(cursor: Any):
    """The driver's row factory: a ``Row`` class with the statement's column names; each row is made
    by ``tuple.__new__`` (no Python frame per row)."""
    return partial(tuple.__new__, type("Row", (Row,), {"__slots__": (), "_fields": _names(cursor)}))


_cursor_names = count()


def _psycopg(connection: Any, sql: str, parameters: Mapping[str, Any], batch_size: int,
             positional: bool = False) -> Iterator[list[Row]]:
    """psycopg 3: ``sql`` (``%(name)s`` placeholders) with ``parameters`` on a named (server-side) cursor,
    as SQLAlchemy's ``stream_results`` reads it; the cursor is closed at the end, also when the reader stops."""
    cursor = connection.cursor(name=f"engine_rows_{next(_cursor_names)}",
                               row_factory=_plain_tuples if positional else _row_factory)
    try:
        cursor.execute(sql, parameters)  # DECLARE: the server plans it; the rows come at each FETCH
        names = None
        while True:
            rows = cursor.fetchmany(batch_size)
            if not rows:
                break
            if positional:
                names = names or _names(cursor)
                rows = Rows(rows, names)
            yield rows
    finally:
        cursor.close()


def _duckdb(connection: Any, sql: str, parameters: Mapping[str, Any], batch_size: int,
            positional: bool = False) -> Iterator[list[Row]]:
    """duckdb_engine: ``sql`` without parameters (``takes_parameters``) on the connection's cursor, its
    result fetched in batches as DuckDB converts them (a later statement on the connection discards it)."""
    cursor = connection.cursor()
    cursor.execute(sql)
    make, names = _row_factory(cursor), _names(cursor)
    while True:
        rows = cursor.fetchmany(batch_size)
        if not rows:
            break
        yield Rows(rows, names) if positional else list(map(make, rows))


#: the reader of each driver (SQLAlchemy's driver name), and whether it takes a statement's parameters
READERS = {"psycopg": (_psycopg, True), "duckdb_engine": (_duckdb, False)}


def takes(driver: str, parameters: Mapping[str, Any] | None) -> bool:
    """Whether ``driver``'s reader runs a statement with these ``parameters`` (else SQLAlchemy's cursor does)."""
    reader = READERS.get(driver)
    return reader is not None and (reader[1] or not parameters)


def stream(driver: str, connection: Any, sql: str, parameters: Mapping[str, Any],
           batch_size: int, positional: bool = False) -> Iterator[list[Row]]:
    """``sql`` as the driver takes it (SQLAlchemy's compiled text) with ``parameters``: its rows in batches
    (``positional``: each a ``Rows`` of the driver's plain tuples)."""
    return READERS[driver][0](connection, sql, parameters, batch_size, positional)
