"""Database access through SQLAlchemy: connect, stream query results, execute.

Owns SQLAlchemy engines for both the warehouse (read) and the ledger (write).
Results are streamed in batches with server-side cursors where the driver
has them, so memory stays flat however many rows are due; where the dialect
names its driver (``Dialect.driver_stream``: psycopg 3, duckdb_engine) a
``Session.stream`` runs on the driver's own cursor (state.driver_rows), the
same values without SQLAlchemy's result layer. Connection and
query failures become ``WarehouseError`` naming the database and what to
check, with every credential masked (masking.mask), the driver's words included,
and the reason (timeout, unreachable, query) that the service counts.

engine.yaml ``warehouse.statement_timeout`` limits each statement of the
warehouse's reads (``Session``, ``stream``, ``fetch_all``) the way the
dialect can (``Dialect.statement_timeout``): PostgreSQL's own
``statement_timeout`` for the statement's transaction, DuckDB's and SQLite's
``interrupt()`` from a timer thread. ``Database.execute`` (the ledger's
writes, when the ledger shares the warehouse's database) is never limited.
"""
from __future__ import annotations

import contextlib
import importlib
import logging
import re
import threading
from collections import Counter
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

import sqlalchemy as sa
from sqlalchemy.engine import make_url

from engine.decide import hash32
from engine.dialects import WAL_HOLD_LIMIT, Dialect, dialect_of_backend
from engine.errors import WarehouseError
from engine.masking import is_secret_name, mask, remember, remember_url
from engine.state import driver_rows

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


def as_dicts(rows: list) -> list[dict]:
    """Each row (SQLAlchemy's, or ``driver_rows.Row``: a tuple with ``_fields``) as a dict by column name:
    what ``dict(row._mapping)`` gives, with the names taken once for all rows (a render batch reads ~3
    rows per message: the mapping per row cost more than the query)."""
    if not rows:
        return []
    fields = rows[0]._fields
    return [dict(zip(fields, row)) for row in rows]


class Database:
    """One SQLAlchemy engine plus the few operations the engine needs."""

    def __init__(self, url: str, *, must_exist: bool = False, duckdb_settings: Mapping[str, str | int] | None = None,
                 statement_timeout: float | None = None):
        """``duckdb_settings`` (engine.yaml ``warehouse.duckdb``: memory_limit, threads, temp_directory) are
        SET on every connection to a DuckDB database and ignored for others. ``statement_timeout``
        (seconds, engine.yaml ``warehouse.statement_timeout``): the longest one read may run."""
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
            _make_temp_directory(duckdb_settings.get("temp_directory"), self.dialect.settings_section)
        if statement_timeout and self.dialect.statement_timeout is None:
            raise WarehouseError(mask(f"warehouse.statement_timeout: the engine cannot limit a statement's time on "
                                      f"{self.backend} ({url}); remove the setting from engine.yaml and use the "
                                      "database's own limit"))
        self.statement_timeout = statement_timeout or None
        self._holding_checkpoints = False  # hold_checkpoints has set its hook
        #: failed statements by reason (WarehouseError.reason) since the last ``take_failures``
        self.failures: Counter[str] = Counter()
        #: streamed reads run on the driver's own cursor (``Dialect.driver_stream``), not SQLAlchemy's
        self.driver_stream = bool(self.dialect.driver_stream) and self.engine.dialect.driver == self.dialect.driver_stream \
            and self.engine.dialect.driver in driver_rows.READERS
        #: statements run on the driver's own cursor since the database was opened (failed ones too)
        self.driver_streamed = 0

    def __repr__(self) -> str:
        return f"Database({masked(self.url)})"

    def check(self) -> None:
        """Connect once, turning failure into a clear error."""
        try:
            with self.engine.connect() as conn:
                conn.execute(sa.text("SELECT 1"))
        except self.errors as exc:
            raise self._error("cannot connect to", exc, reason="unreachable") from None

    def stream(self, sql: str, batch_size: int = 1000) -> Iterator[list[sa.Row]]:
        """Run ``sql`` and yield its rows in batches, never holding all of them."""
        with self.session() as session:
            yield from session.stream(sql, batch_size)

    @contextlib.contextmanager
    def session(self) -> Iterator["Session"]:
        """One connection kept for several statements that share its state, such as the
        temporary tables of a reconciler pass. Each statement commits when it is done."""
        try:
            connection = self.engine.connect()
        except self.errors as exc:
            raise self._error("cannot connect to", exc, reason="unreachable") from None
        try:
            with connection as conn:
                yield Session(self, conn)
        except self.errors as exc:
            raise self._error("query failed on", exc) from None

    def fetch_all(self, sql: str, driver_parameters: tuple | dict | None = None) -> list[sa.Row]:
        """The rows of query ``sql``; with ``driver_parameters`` a tuple the text goes to the driver as it
        is (``exec_driver_sql``: its own placeholders, such as DuckDB's ``$1``) with those values, a dict
        the values of its ``:name`` bind parameters."""
        try:
            connection = self.engine.connect()
        except self.errors as exc:
            raise self._error("cannot connect to", exc, reason="unreachable") from None
        deadline = None
        try:
            with connection as conn:
                deadline = StatementDeadline(self, conn)
                with deadline.statement():
                    # fetchall: the driver's fetchall, not a fetchone per row (list(result))
                    if isinstance(driver_parameters, dict):
                        return conn.execute(sa.text(sql), driver_parameters).fetchall()
                    if driver_parameters is not None:
                        return conn.exec_driver_sql(sql, driver_parameters).fetchall()
                    return conn.execute(sa.text(sql)).fetchall()
        except self.errors as exc:
            raise self._error("query failed on", exc, deadline) from None

    @contextlib.contextmanager
    def connect(self) -> Iterator[sa.Connection]:
        """A plain SQLAlchemy connection (introspection's probes) whose every statement is limited by
        ``statement_timeout`` as in a ``Session``: the dialect's limit set before each statement, the
        driver's ``interrupt()`` armed around it (a failed statement's timer is cancelled by the next)."""
        deadline = None
        with self.engine.connect() as conn:
            if self.statement_timeout:
                deadline = StatementDeadline(self, conn)
                sa.event.listen(conn, "before_cursor_execute", deadline.before_cursor_execute)
                sa.event.listen(conn, "after_cursor_execute", lambda *_: deadline.disarm())
            try:
                yield conn
            finally:
                if deadline is not None:
                    deadline.disarm()

    def take_failures(self) -> Counter[str]:
        """The failed statements by reason since the last call, and start counting again."""
        taken, self.failures = self.failures, Counter()
        return taken

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

    def hold_checkpoints(self) -> None:
        """Keep this database from checkpointing by itself until its write-ahead log holds ``WAL_HOLD_LIMIT``
        (``Dialect.checkpoint_hold``; a ledger a pass writes: ``open_ledger``), so that a checkpoint is taken
        when the engine asks (``Ledger.checkpoint``) rather than inside a pass's commits. Set on every connection
        opened from now on, and now on one (the setting is the database's: connections already open share it).
        Nothing where the dialect declares no hold; once per Database."""
        hold = self.dialect.checkpoint_hold
        if hold is None or self._holding_checkpoints:
            return
        statement = hold.format(limit=WAL_HOLD_LIMIT)
        sa.event.listen(self.engine, "connect", _run_on_connect((statement,)))
        self._holding_checkpoints = True
        self.execute(statement)

    def dispose(self) -> None:
        self.engine.dispose()

    def _error(self, what: str, exc: BaseException, deadline: "StatementDeadline | None" = None,
               reason: str | None = None) -> WarehouseError:
        detail = _driver_words(exc)
        if reason is None:
            reason = self._reason(exc, deadline)
        if reason == "timeout":
            detail = (f"stopped after warehouse.statement_timeout ({self.statement_timeout:g} s): {detail}; raise "
                      "warehouse.statement_timeout in engine.yaml or make the query cheaper (engine explain shows it)")
        elif self.dialect.settings_section and ("Out of Memory" in detail or "could not allocate block" in detail):
            detail += (f"; raise or remove warehouse.{self.dialect.settings_section}.memory_limit in engine.yaml, "
                       "or free memory on the host")
        self.failures[reason] += 1
        return WarehouseError(mask(f"{what} {self.url}: {detail}"), reason=reason)

    def _reason(self, exc: BaseException, deadline: "StatementDeadline | None") -> str:
        """timeout (our limit ended it), unreachable (the connection failed or was lost) or query."""
        if deadline is not None and deadline.ended(exc):
            return "timeout"
        # SQLAlchemy marks the errors its dialect recognises as a lost connection; the driver's own
        # errors (Dialect.driver_errors) are its transport's
        if getattr(exc, "connection_invalidated", False) or not isinstance(exc, sa.exc.SQLAlchemyError):
            return "unreachable"
        return "query"


class StatementDeadline:
    """engine.yaml ``warehouse.statement_timeout`` on one connection, as its dialect can enforce it.

    ``with deadline.statement():`` around a statement's execution (on PostgreSQL it first sets the
    server's ``statement_timeout`` for the transaction), ``with deadline.call():`` around each later
    fetch of its rows: with ``interrupt``, a timer thread calls the driver's ``interrupt()`` (DuckDB,
    SQLite: both made for a call from another thread) if the call is still running when the time is
    up. Time spent outside the driver (the pass deciding and sending between fetches) is not counted.
    A lock keeps a late timer from interrupting the next statement.
    """

    def __init__(self, database: Database, conn: sa.Connection):
        self.dialect, self.conn, self.seconds = database.dialect, conn, database.statement_timeout
        self.fired = False
        self._lock = threading.Lock()
        self._running = False
        self._timer: threading.Timer | None = None

    @contextlib.contextmanager
    def statement(self) -> Iterator[None]:
        limit = self._server_limit()
        if limit is not None:
            self.conn.execute(sa.text(limit))
        with self.call():
            yield

    @contextlib.contextmanager
    def call(self) -> Iterator[None]:
        self.arm()
        try:
            yield
        finally:
            self.disarm()

    def before_cursor_execute(self, _conn, cursor, *_args) -> None:
        """SQLAlchemy's event before each statement of a ``Database.connect`` connection."""
        limit = self._server_limit()
        if limit is not None:
            cursor.execute(limit)
        self.arm()

    def _server_limit(self) -> str | None:
        """The statement that sets the server's own limit for the transaction (``server`` dialects), if any."""
        if not self.seconds or self.dialect.statement_timeout != "server":
            return None
        return self.dialect.timeout_statement.format(milliseconds=max(1, round(self.seconds * 1000)))

    def arm(self) -> None:
        """Start the clock of one call into the driver (``interrupt`` dialects; else nothing)."""
        self.disarm()
        self.fired = False
        if not self.seconds or self.dialect.statement_timeout != "interrupt":
            return
        driver = self.conn.connection.dbapi_connection

        def interrupt() -> None:
            with self._lock:
                if self._running:
                    self.fired = True
                    driver.interrupt()

        self._timer = threading.Timer(self.seconds, interrupt)
        self._timer.daemon = True
        with self._lock:
            self._running = True
        self._timer.start()

    def disarm(self) -> None:
        """The call returned (or failed): a timer that has not fired never will."""
        with self._lock:
            self._running = False
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def ended(self, exc: BaseException) -> bool:
        """``exc`` is the limit ending the statement: our interrupt, or the server's cancellation."""
        if self.fired:
            return True
        orig = getattr(exc, "orig", None)
        code = getattr(orig, "sqlstate", None) or getattr(orig, "pgcode", None)
        return bool(self.seconds) and code is not None and code == self.dialect.timeout_sqlstate


class Session:
    """Statements on one pinned connection (``Database.session``)."""

    def __init__(self, database: Database, conn: sa.Connection):
        self.database = database
        self.conn = conn
        self.deadline = StatementDeadline(database, conn)

    def execute(self, sql: str) -> None:
        self.execute_together([sql])

    @contextlib.contextmanager
    def _committed(self) -> Iterator[None]:
        """Commit what the block ran on this connection; on a database error roll back and raise it
        as the clear WarehouseError (``Database._error``)."""
        try:
            yield
            self.conn.commit()
        except self.database.errors as exc:
            self._rollback()
            raise self.database._error("statement failed on", exc, self.deadline) from None

    def execute_together(self, statements: list[str]) -> None:
        """Run ``statements`` in one transaction on this connection: all of them or none."""
        with self._committed():
            for sql in statements:
                with self.deadline.statement():
                    self.conn.execute(sa.text(sql))

    def execute_driver(self, sql: str, parameters: tuple) -> None:
        """Run ``sql`` as the driver takes it (its own placeholders, such as DuckDB's ``$1``) with
        ``parameters``, and commit."""
        with self._committed(), self.deadline.statement():
            self.conn.exec_driver_sql(sql, parameters)

    def returning(self, sql: str, parameters: Mapping[str, Any] | None = None) -> list[sa.Row]:
        """Run a write with ``RETURNING`` (no server-side cursor: PostgreSQL has them for queries only),
        commit it and give back the rows it returned. ``parameters``: as ``stream``'s."""
        with self._committed():
            with self.deadline.statement():
                rows = self.conn.execute(sa.text(sql), parameters).all() if parameters else self.conn.execute(sa.text(sql)).all()
        return rows

    def stream(self, sql: str, batch_size: int = 1000, parameters: Mapping[str, Any] | None = None,
               positional: bool = False) -> Iterator[list[sa.Row]]:
        """As ``Database.stream``, on this connection; ends its read transaction when done, so the
        next statement sees what other connections (the ledger) wrote in the meantime.
        ``parameters``: values of the ``:name`` bind parameters in ``sql``. ``positional``: for a reader
        that reads the rows by position only - each batch a ``driver_rows.Rows`` (the column names once,
        the driver's plain tuples on its own cursor), not a row object per row."""
        if self.database.driver_stream and driver_rows.takes(self.conn.dialect.driver, parameters):
            yield from self._driver_stream(sql, batch_size, parameters, positional)
            return
        try:
            # options on the statement: Connection.execution_options would stick to the pinned connection
            statement = sa.text(sql).execution_options(stream_results=True, yield_per=batch_size)
            with self.deadline.statement():
                result = self.conn.execute(statement, parameters) if parameters else self.conn.execute(statement)
            fields = tuple(result.keys()) if positional else None
            try:
                while True:
                    with self.deadline.call():
                        rows = result.fetchmany(batch_size)
                    if not rows:
                        break
                    yield driver_rows.Rows(rows, fields) if positional else rows
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
            raise self.database._error("query failed on", exc, self.deadline) from None

    def _driver_stream(self, sql: str, batch_size: int, parameters: Mapping[str, Any] | None,
                       positional: bool = False) -> Iterator[list]:
        """``stream`` on the driver's own server-side cursor (``Database.driver_stream``): the statement
        as SQLAlchemy would send it (its ``:name`` parameters in the driver's style), in the pinned
        connection's transaction, committed at the end; a driver error becomes SQLAlchemy's, as ``stream``'s."""
        dialect = self.conn.dialect
        driver_error = dialect.loaded_dbapi.Error
        compiled = sa.text(sql).compile(dialect=dialect)
        text, values = str(compiled), compiled.construct_params(parameters or {})
        connection = self.conn.connection.dbapi_connection
        rows = None
        try:
            if not self.conn.in_transaction():
                self.conn.begin()  # the driver's statements join it: commit() below ends them
            self.database.driver_streamed += 1
            with self.deadline.statement():
                rows = driver_rows.stream(dialect.driver, connection, text, values, batch_size, positional)
                batch = next(rows, None)  # DECLARE and the first FETCH: the statement runs
            try:
                while batch is not None:
                    yield batch
                    with self.deadline.call():
                        batch = next(rows, None)
            except GeneratorExit:  # the reader stopped early: close, but never raise from a closing generator
                try:
                    rows.close()
                    self.conn.commit()
                except (*self.database.errors, driver_error):  # the connection is gone: the next statement says so
                    self._rollback()
                raise
            self.conn.commit()
        except driver_error as exc:
            lost = dialect.is_disconnect(exc, connection, None)
            if rows is not None:
                try:
                    rows.close()  # its cursor: nothing to close on the server after an error
                except driver_error:
                    pass
            if lost:
                self.conn.invalidate()  # the pool must not hand the dead connection out again
            else:
                self._rollback()  # PostgreSQL refuses every later statement of a failed transaction
            # SQLAlchemy's error, as its own cursor would have raised it: the reason (timeout, unreachable) and the driver's words
            wrapped = sa.exc.DBAPIError.instance(text, values, exc, driver_error, dialect=dialect, connection_invalidated=lost)
            raise self.database._error("query failed on", wrapped, self.deadline) from None
        except self.database.errors as exc:
            self._rollback()
            raise self.database._error("query failed on", exc, self.deadline) from None

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
        elif name == "temp_directory" and isinstance(value, str) and value.strip() and "\0" not in value:
            # a path (spec.config made it absolute); a quote in it is doubled, as in any SQL string literal
            statements.append("SET temp_directory = '{}'".format(value.replace("'", "''")))
        else:
            raise WarehouseError(f"warehouse.duckdb.{name}: {value!r} is not a DuckDB setting the engine takes; "
                                 "use memory_limit (e.g. '512MB'), threads (a whole number from 1) or "
                                 "temp_directory (a folder)")

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


def _make_temp_directory(folder: object, section: str) -> None:
    """Create warehouse.duckdb.temp_directory with its parents, as the database file's folder is
    (DuckDB creates the last level only, and only when it first spills)."""
    if not isinstance(folder, str) or not folder.strip():
        return
    try:
        Path(folder).mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise WarehouseError(f"warehouse.{section}.temp_directory: cannot create {folder}: {exc.strerror}; "
                             "name a folder the engine can write") from None


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
