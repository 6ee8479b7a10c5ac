"""Database access through SQLAlchemy: connect, stream query results, execute.

Owns SQLAlchemy engines for both the warehouse (read) and the ledger (write).
Results are streamed in batches with server-side cursors where the driver
has them, so memory stays flat however many rows are due. Connection and
query failures become ``WarehouseError`` naming the database and what to
check, with every credential masked (masking.mask), the driver's words included.
"""
from __future__ import annotations

import contextlib
import importlib
import logging
import re
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

import sqlalchemy as sa
from sqlalchemy.engine import make_url

from engine.decide import hash32
from engine.dialects import Dialect, dialect_of_backend
from engine.errors import WarehouseError
from engine.masking import is_secret_name, mask, remember, remember_url

# Without a logging configuration (the commands), Python prints a library's ERROR records on stderr
# with their traceback (logging.lastResort): SQLAlchemy's pool failing to close a cursor or a connection
# to a server gone away mid-stream, Thrift's socket failing to connect. The WarehouseError that follows
# says it in one line; a configured logging (the service) still receives them.
for _library in ("sqlalchemy.pool", "thrift"):
    logging.getLogger(_library).addHandler(logging.NullHandler())


def masked(url: str) -> str:
    """``url`` for a message: password, secret parameters and resolved secrets masked (masking.mask)."""
    return mask(url)


def _remember_credentials(url: str) -> None:
    remember_url(url)
    try:
        parsed = make_url(url)
    except Exception:  # noqa: BLE001 - an unparsable URL: Database reports it, masked
        return
    remember(parsed.password if isinstance(parsed.password, str) else None)
    for name, value in parsed.query.items():
        if is_secret_name(name):
            for item in (value,) if isinstance(value, str) else value:
                remember(item)


def file_of(url: str) -> Path | None:
    """The database file of a DuckDB or SQLite URL, None for servers and memory."""
    parsed = make_url(url)
    database = parsed.database
    if database and database.startswith("file:") and parsed.query.get("uri") == "true":
        # an SQLite URI (``sqlite:///file:/path/shop.db?mode=ro&uri=true``): the file is the URI's path
        database = database[len("file:"):].split("?", 1)[0]
    if dialect_of_backend(parsed.get_backend_name()).local_file and database and database != ":memory:" \
            and parsed.query.get("mode") != "memory":
        return Path(database)
    return None


class Database:
    """One SQLAlchemy engine plus the few operations the engine needs."""

    def __init__(self, url: str, *, must_exist: bool = False, duckdb_settings: Mapping[str, str | int] | None = None):
        """``duckdb_settings`` (engine.yaml ``warehouse.duckdb``: memory_limit, threads) are SET on every
        connection to a DuckDB database and ignored for others."""
        self.url = url
        _remember_credentials(url)  # whatever a driver quotes later, its messages will not show them
        try:
            path = file_of(url)
        except (sa.exc.ArgumentError, ValueError) as exc:
            raise WarehouseError(mask(f"cannot use database URL {url}: {exc}; fix the URL")) from None
        if must_exist and path is not None and not path.exists():
            raise WarehouseError(mask(f"database file {path} does not exist; check warehouse.url in engine.yaml"))
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self.engine = sa.create_engine(url)
        except (sa.exc.ArgumentError, sa.exc.NoSuchModuleError, ImportError) as exc:
            raise WarehouseError(mask(f"cannot use database URL {url}: {exc}; install its driver or fix the URL")) from None
        self.backend = self.engine.dialect.name
        #: what this database can do (engine.dialects): the one place its differences are looked up
        self.dialect: Dialect = dialect_of_backend(self.backend)
        #: what a failure of this database raises: SQLAlchemy's errors and the driver's own (Dialect.driver_errors)
        self.errors: tuple[type[BaseException], ...] = (sa.exc.SQLAlchemyError, *_driver_errors(self.dialect))
        if self.dialect.connect_statements:
            sa.event.listen(self.engine, "connect", _run_on_connect(self.dialect.connect_statements))
        if self.dialect.hash32_function:
            sa.event.listen(self.engine, "connect", _register_hash32(self.dialect.hash32_function))
        if self.dialect.settings_section and duckdb_settings:
            sa.event.listen(self.engine, "connect", _duckdb_settings(duckdb_settings))

    def __repr__(self) -> str:
        return f"Database({masked(self.url)})"

    def check(self) -> None:
        """Connect once, turning failure into a clear error."""
        try:
            with self.engine.connect() as conn:
                conn.execute(sa.text("SELECT 1"))
        except self.errors as exc:
            raise self._error("cannot connect to", exc) from None

    def stream(self, sql: str, batch_size: int = 1000) -> Iterator[list[sa.Row]]:
        """Run ``sql`` and yield its rows in batches, never holding all of them."""
        with self.session() as session:
            yield from session.stream(sql, batch_size)

    @contextlib.contextmanager
    def session(self) -> Iterator["Session"]:
        """One connection kept for several statements that share its state, such as the
        temporary tables of a reconciler pass. Each statement commits when it is done."""
        try:
            with self.engine.connect() as conn:
                yield Session(self, conn)
        except self.errors as exc:
            raise self._error("query failed on", exc) from None

    def fetch_all(self, sql: str) -> list[sa.Row]:
        try:
            with self.engine.connect() as conn:
                return list(conn.execute(sa.text(sql)))
        except self.errors as exc:
            raise self._error("query failed on", exc) from None

    def execute(self, statement: Any, parameters: Any = None) -> list[sa.Row]:
        """Run one statement in its own transaction; return the rows it returns, if any."""
        try:
            with self.engine.begin() as conn:
                if isinstance(statement, str):
                    statement = sa.text(statement)
                result = conn.execute(statement, parameters) if parameters is not None else conn.execute(statement)
                return list(result) if result.returns_rows else []
        except self.errors as exc:
            raise self._error("statement failed on", exc) from None

    def dispose(self) -> None:
        self.engine.dispose()

    def _error(self, what: str, exc: BaseException) -> WarehouseError:
        detail = _driver_words(exc)
        if self.dialect.settings_section and "Out of Memory" in detail:
            detail += (f"; raise or remove warehouse.{self.dialect.settings_section}.memory_limit in engine.yaml, "
                       "or free memory on the host")
        return WarehouseError(mask(f"{what} {self.url}: {detail}"))


class Session:
    """Statements on one pinned connection (``Database.session``)."""

    def __init__(self, database: Database, conn: sa.Connection):
        self.database = database
        self.conn = conn

    def execute(self, sql: str) -> None:
        try:
            self.conn.execute(sa.text(sql))
            self.conn.commit()
        except self.database.errors as exc:
            self.conn.rollback()
            raise self.database._error("statement failed on", exc) from None

    def execute_together(self, statements: list[str]) -> None:
        """Run ``statements`` in one transaction on this connection: all of them or none."""
        try:
            for sql in statements:
                self.conn.execute(sa.text(sql))
            self.conn.commit()
        except self.database.errors as exc:
            self._rollback()
            raise self.database._error("statement failed on", exc) from None

    def returning(self, sql: str, parameters: Mapping[str, Any] | None = None) -> list[sa.Row]:
        """Run a write with ``RETURNING`` (no server-side cursor: PostgreSQL has them for queries only),
        commit it and give back the rows it returned. ``parameters``: as ``stream``'s."""
        try:
            rows = self.conn.execute(sa.text(sql), parameters).all() if parameters else self.conn.execute(sa.text(sql)).all()
            self.conn.commit()
            return rows
        except self.database.errors as exc:
            self._rollback()
            raise self.database._error("statement failed on", exc) from None

    def stream(self, sql: str, batch_size: int = 1000,
               parameters: Mapping[str, Any] | None = None) -> Iterator[list[sa.Row]]:
        """As ``Database.stream``, on this connection; ends its read transaction when done, so the
        next statement sees what other connections (the ledger) wrote in the meantime.
        ``parameters``: values of the ``:name`` bind parameters in ``sql``."""
        try:
            # options on the statement: Connection.execution_options would stick to the pinned connection
            statement = sa.text(sql).execution_options(stream_results=True, yield_per=batch_size)
            result = self.conn.execute(statement, parameters) if parameters else self.conn.execute(statement)
            try:
                while True:
                    rows = result.fetchmany(batch_size)
                    if not rows:
                        break
                    yield rows
            except GeneratorExit:  # the reader stopped early: close, but never raise from a closing generator
                try:
                    result.close()
                    self.conn.commit()
                except self.database.errors:  # the connection is gone: the next statement says so
                    self._rollback()
                raise
            except BaseException:
                result.close()
                raise
            result.close()
            self.conn.commit()
        except self.database.errors as exc:
            self._rollback()  # PostgreSQL refuses every later statement of a failed transaction
            raise self.database._error("query failed on", exc) from None

    def _rollback(self) -> None:
        try:
            self.conn.rollback()
        except self.database.errors:  # the connection itself is gone: the next statement says so
            pass


def _driver_errors(dialect: Dialect) -> list[type[BaseException]]:
    """The exception classes of ``Dialect.driver_errors`` whose driver is installed."""
    found = []
    for name in dialect.driver_errors:
        module, _, cls = name.rpartition(".")
        try:
            found.append(getattr(importlib.import_module(module), cls))
        except (ImportError, AttributeError):  # that driver is not the one in use
            continue
    return found


def _driver_words(exc: BaseException) -> str:
    """The first line of what the driver said. A HiveServer2 response (PyHive's errors carry the
    Thrift struct) says it in ``status.errorMessage``: that, not the struct's repr with its stack."""
    orig = getattr(exc, "orig", None) or exc
    response = orig.args[0] if getattr(orig, "args", None) else None
    message = getattr(getattr(response, "status", None), "errorMessage", None)
    text = message if isinstance(message, str) and message.strip() else str(orig)
    lines = text.strip().splitlines()
    return lines[0] if lines else type(orig).__name__


#: A size DuckDB's memory_limit takes (the pattern of schema/project.schema.json).
_MEMORY_SIZE = re.compile(r"^\s*\d+(\.\d+)?\s*([KkMmGgTt]i?[Bb]|[KkMmGgTt]|[Bb]|bytes)\s*$")


def _duckdb_settings(settings: Mapping[str, str | int]) -> Callable[[Any, Any], None]:
    """A connect hook that SETs engine.yaml's DuckDB limits.

    SET, not ``connect(config=...)``: DuckDB shares one database instance
    between the connections to a file (the warehouse and a ledger in the
    same file) and refuses a second connection with a different config.
    The values were checked against schema/project.schema.json; they are
    passed as literals, as ``SET`` takes no parameters.
    """
    statements = []
    for name, value in settings.items():
        if name == "threads" and isinstance(value, int) and not isinstance(value, bool) and value >= 1:
            statements.append(f"SET threads = {value}")
        elif name == "memory_limit" and isinstance(value, str) and _MEMORY_SIZE.match(value):
            statements.append(f"SET memory_limit = '{value.strip()}'")
        else:
            raise WarehouseError(f"warehouse.duckdb.{name}: {value!r} is not a DuckDB setting the engine takes; "
                                 "use memory_limit (e.g. '512MB') or threads (a whole number from 1)")

    def apply(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        for statement in statements:
            cursor.execute(statement)
        cursor.close()
    return apply


def _register_hash32(name: str) -> Callable[[Any, Any], None]:
    """A connect hook that registers ``decide.hash32`` as the SQL function ``name`` (Dialect.hash32_function:
    SQLite has no SHA-256), deterministic so SQLite may use it in indexes and fold repeated calls;
    NULL gives NULL."""
    def function(value: Any) -> int | None:
        return None if value is None else hash32(str(value))

    def register(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.create_function(name, 1, function, deterministic=True)
    return register


def _run_on_connect(statements: tuple[str, ...]) -> Callable[[Any, Any], None]:
    """A connect hook that runs the dialect's per-connection statements (Dialect.connect_statements:
    SQLite's WAL and busy timeout, PostgreSQL's cursor_tuple_fraction) and commits them, so that a
    later rollback cannot undo a SET. A read-only connection (SQLite ``?mode=ro``) cannot switch the
    journal mode and needs none (it only reads): a statement it refuses as read-only is skipped."""
    def run(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        for statement in statements:
            try:
                cursor.execute(statement)
            except Exception as exc:  # the driver's own error class; anything but read-only is raised
                if "readonly" not in str(exc).replace(" ", "").replace("-", "").lower():
                    raise
        cursor.close()
        dbapi_connection.commit()
    return run
