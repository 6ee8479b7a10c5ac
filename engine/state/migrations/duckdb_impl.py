"""alembic's implementation for the ``duckdb`` dialect (duckdb_engine's documented recipe).

alembic looks its per-dialect class up by ``__dialect__``; duckdb_engine names
its dialect "duckdb", which alembic does not ship. DuckDB's DDL is
transactional (a rolled-back CREATE TABLE leaves nothing), hence the flag.
Must not: hold anything but this registration.
"""
from alembic.ddl.impl import DefaultImpl


class DuckDBImpl(DefaultImpl):
    __dialect__ = "duckdb"
    transactional_ddl = True
