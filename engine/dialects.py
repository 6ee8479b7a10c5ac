"""The databases the engine supports: one row per SQL dialect, every way they differ in one table.

Owns: which URL schemes (and SQLAlchemy backend names) choose which sqlglot dialect, and each
dialect's capabilities: how instants are stored (SQLite: text), temporary tables and where a
session keeps them, how literal rows are written (VALUES or UNNEST), CTE materialisation, and
for a database the engine connects to (warehouse or ledger): per-connection statements, when a ledger checkpoints,
conflict handling for claims, array parameters (and a batch's lookup keys as one), the migration lock, planner statistics, how
the driver describes column types and how a statement is stopped at warehouse.statement_timeout. Every other module asks this table (``dialect_named``,
``dialect_of_url``, ``dialect_of_backend``) instead of comparing a dialect's name; a test checks
that no other module does.

Must not: import the engine, a database driver, SQLAlchemy or sqlglot. It is data: the SQL
builders (sql.compile, tools.stats) and the database layer (state) act on it.

Adding a dialect: one row in ``DIALECTS``, its name in schema/project.schema.json's
``warehouse.dialect`` enum, and its snapshots (tests/test_compile.py runs every row).
There is no time zone function here: the engine computes local times in Python (decide.py), and
its SQL compares UTC instants only, so no dialect's time zone SQL is needed.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

#: the element types of a batch's bound lookup keys (``Dialect.key_array_conditions``)
KeyElement = Literal["BIGINT", "VARCHAR", "CAST"]


@dataclass(frozen=True)
class Dialect:
    """What the engine needs to know about one SQL dialect; the defaults are "capability absent"."""

    #: sqlglot's name of the dialect: ``render_sql(query, name)``, ``sqlglot.parse_one(sql, read=name)``
    name: str
    #: URL schemes (the part before ``+driver``) that choose this dialect; SQLAlchemy's backend
    #: name of a connection (``engine.dialect.name``) is one of them
    url_schemes: tuple[str, ...] = ()
    #: instants have no timestamp type and are kept as text in this STRFTIME format (``%f``:
    #: seconds with milliseconds); the compiler normalises every instant column and literal to it
    instant_text_format: str | None = None
    #: columns have declared types the engine can check (SQLite's are affinities: timestamps are text)
    typed_columns: bool = True
    #: ``CREATE TEMPORARY TABLE ... AS`` lives as long as the session: a pass computes its
    #: per-customer facts once (sql.compile.SHARED_FACTS); elsewhere each query computes them itself
    temporary_tables: bool = False
    #: the schema that names a session's temporary tables, so that a DROP can never drop a
    #: permanent table of the same name; None: they cannot be named (nothing is dropped)
    temporary_schema: str | None = None
    #: how sqlglot writes literal rows in FROM: ``values`` (VALUES (...), (...) with a column
    #: list) or ``unnest`` (BigQuery: UNNEST([STRUCT(...)]), which takes no column list)
    inline_rows: Literal["values", "unnest"] = "values"
    #: source CTEs are written NOT MATERIALIZED (DuckDB holds a CTE read twice whole in memory;
    #: SQLite keeps one without its table's indexes, so a join on it scans it whole per outer row)
    stream_source_ctes: bool = False
    #: the sources (entity names) whose CTE is left to the database's choice all the same
    materialised_sources: tuple[str, ...] = ()
    #: a due query's trigger instances and customers' source are written NOT MATERIALIZED (unless the
    #: trigger kind computes its instances once: ``TriggerKind.instances_once``), so that each step's
    #: window is planned on the tables' own statistics: a CTE read twice is otherwise evaluated once
    #: into a store without statistics, each step's window on it guessed at a fixed fraction
    inline_instances: bool = False
    #: how a plan counts a campaign's settled skips in the statement that returns its other rows
    #: (``due_query(settled="count")``): ``summary`` (the due rows held once in a CTE read twice: the
    #: unsettled rows, and one row per step, reason and channel with its count; the database must
    #: evaluate such a CTE once, out of core) or ``rows`` (every settled row returned with its reason,
    #: no CTE, counted in Python as it streams)
    settled_counts: Literal["summary", "rows"] = "rows"
    #: a date anchored at the customer's local midnight (``TriggerKind.local_date``) has its settled skips
    #: decided in SQL too, its local midnight and due time per zone and day from the pass's zone table
    #: (``due.settled_in_sql``); else its rows are decided in Python
    settles_local_dates: bool = False
    #: the database is a local file (URL path): created with its folder, removed by the demo
    local_file: bool = False
    #: statements run (and committed) on every new connection the engine opens
    connect_statements: tuple[str, ...] = ()
    #: engine.yaml ``warehouse.<section>`` whose limits are SET on every connection (and named
    #: when the database runs out of memory)
    settings_section: str | None = None
    #: that section's settings and what the database does when engine.yaml leaves them out, as
    #: "name: default" (engine config show)
    setting_defaults: tuple[str, ...] = ()
    #: the SQLAlchemy dialect whose ``insert()`` has ``on_conflict_do_nothing``; None: each row
    #: is inserted alone and a duplicate-key error means the row is already there
    on_conflict_insert: Literal["postgresql", "sqlite"] | None = None
    #: set-based claims and updates with one array parameter per column: ``positional``
    #: (DuckDB: Python lists bound to ``$n`` as LISTs), ``named`` (PostgreSQL arrays, unnest
    #: zips them); None: one prepared statement for all rows
    array_parameters: Literal["positional", "named"] | None = None
    #: a batch's lookup keys bound as one array parameter (engine.run.sources), as (element, condition)
    #: for the keys' element types BIGINT (an integer column), VARCHAR (a text column) and CAST (the column
    #: cast to text); ``{column}`` the column, ``{parameter}`` the placeholder (``$n`` where array
    #: parameters are positional, ``:keysn`` where named); empty: the keys are written in as literals
    key_array_conditions: tuple[tuple[KeyElement, str], ...] = ()
    #: the statement that takes the lock a ledger upgrade runs under (``{key}``: the engine's
    #: lock number); None: a plain transaction
    migration_lock: str | None = None
    #: the statement that serialises refreshes of the kept facts (engine.run.incremental) among replicas,
    #: first in their transaction (``{key}``: the lock number); None: the database serialises writers itself
    refresh_lock: str | None = None
    #: the ledger's tables are ANALYZEd after a pass (PostgreSQL plans with stale statistics)
    analyze_ledger: bool = False
    #: a pass's temporary tables are ANALYZEd once created (``analyze_temporary_table``): the
    #: planner has no statistics of a table until then, and autovacuum never looks at temporary ones
    analyze_temporary_tables: bool = False
    #: the statement that sets the statistics target of that ANALYZE, for its transaction only
    #: (``{target}``: ``TEMPORARY_STATISTICS_TARGET``); None: the database's default target
    analyze_target_statement: str | None = None
    #: statements first in the transaction that creates a pass's per-customer fact table (a GROUP BY
    #: of a whole source: ``sql.compile.SHARED_FACTS``), for that statement only
    whole_aggregate_statements: tuple[str, ...] = ()
    #: the ledger keeps its (status, next_attempt_at) index (engine_ledger_status). DuckDB reads
    #: no query through a composite index, and updates a row whose indexed column changes as a
    #: delete and insert of the whole row, its stored content included: every outcome did (migration 0008)
    ledger_status_index: bool = True
    #: the ledger keeps its per-customer index engine_ledger_customer (customer_id), and the readers by
    #: customer (frequency caps, re-entry history, one customer's messages) read through it. False (migration
    #: 0010): no index led by the customer - each claim put an entry on a random leaf of one as big as the
    #: ledger, all of SQLite's extra write cost at 10M rows - and the readers seek the identity index at each
    #: (campaign, step) the ledger holds; the caps only at the steps that sent within their window, found
    #: through engine_ledger_sends (campaign, step, updated_at of the rows sent or in flight)
    ledger_customer_index: bool = True
    #: a hand-over (the outcomes of the group before and this group's content) is one MERGE with a WHEN
    #: MATCHED clause each - one join of the ledger, one statement - that reports the rows it changed (DuckDB);
    #: else two set-based UPDATEs (``Ledger.hand_over``)
    merged_hand_over: bool = False
    #: the statement that keeps the database from checkpointing by itself until its write-ahead log holds
    #: ``{limit}`` (``WAL_HOLD_LIMIT``): run on every connection of a ledger a pass writes (``Database.hold_checkpoints``),
    #: so that a first pass's automatic checkpoint - taken inside whichever commit crosses the database's own
    #: threshold, most often a hand-over's, while the send workers wait on it - is taken instead by
    #: ``checkpoint_statement`` once the pass has ended (the service, between passes: ``Ledger.checkpoint``). The log
    #: is fsynced at every commit either way: what a commit wrote survives a kill as before, only replayed from a
    #: longer log when the database is opened again. None: the database's own checkpoints are left as they are
    checkpoint_hold: str | None = None
    #: the statement that checkpoints the database (its write-ahead log moved into the file), run by ``Ledger.checkpoint``
    checkpoint_statement: str | None = None
    #: the ledger's columns (engine_ledger's) stored without compression, and the clause that says so after a
    #: column's type in CREATE TABLE (migration 0009 rebuilds the table with it: the database takes a column's
    #: compression only there). A ledger grown pass after pass holds every campaign's rows interleaved, so each
    #: due query's ledger anti-join decodes the key columns of the whole ledger (DuckDB's dictionary/FSST
    #: strings); stored plain they are read without decoding, for a few more MB per million rows
    uncompressed_ledger_columns: tuple[str, ...] = ()
    uncompressed_column_clause: str | None = None
    #: the driver describes result columns by type OID (PostgreSQL), looked up in ``pg_type``
    type_codes_are_oids: bool = False
    #: one writing process per database file: a lock error means another process holds it
    one_writer_per_file: bool = False
    #: exceptions the driver raises outside DB-API's (so SQLAlchemy passes them on unwrapped), as
    #: "module.Class": a server gone away is then the same clear WarehouseError as any other
    driver_errors: tuple[str, ...] = ()
    #: a pass binds the instants of a due query compiled once as parameters (sql.prepared); else
    #: they are written into its text as literals (DuckDB: faster so; drivers the engine only renders for)
    binds_instants: bool = False
    #: the first 4 bytes of SHA-256 of the UTF-8 text ``hashed_text``, big-endian, as a non-negative
    #: integer (``decide.hash32``: A/B buckets, holdout groups, replica shards), as an SQL expression
    #: in this dialect that sql.compile parses and fills in; None: Python computes them per row
    hash32_sql: str | None = None
    #: the name of a deterministic function of that value the engine registers on every connection
    #: it opens (state.warehouse: SQLite has no SHA-256); None: the database has ``hash32_sql``'s own
    hash32_function: str | None = None
    #: the identifier-shaped keywords of the dialect's sqlglot tokenizer that sqlglot's base tokenizer
    #: lacks (tests/test_fast_start.py keeps them complete): a source column mapped to a plain name
    #: that is none of these is checked without loading the dialect's parser (spec.config); None: parse
    tokenizer_keywords: frozenset[str] | None = None
    #: how engine.yaml ``warehouse.statement_timeout`` ends a statement that runs too long: ``server``
    #: (the database's own limit, set for the statement's transaction by ``timeout_statement``),
    #: ``interrupt`` (the DB-API connection's ``interrupt()``, called from a timer thread); None: not
    #: supported, and a project that sets it is refused when the engine connects
    statement_timeout: Literal["server", "interrupt"] | None = None
    #: the statement that sets the server's limit for the current transaction (``{milliseconds}``)
    timeout_statement: str | None = None
    #: the SQLSTATE of a statement the server cancelled (its time limit ran out)
    timeout_sqlstate: str | None = None
    #: the SQLAlchemy driver name (``engine.dialect.driver``) whose own cursor a streamed read uses
    #: directly (state.driver_rows: the driver's rows without SQLAlchemy's result layer, the same
    #: values); None, or another driver of the dialect: SQLAlchemy's cursor
    driver_stream: str | None = None
    #: the collation that orders text by code point, as Python compares ``str``, written on the text keys
    #: of a sorted due query (``due.due_query``: a listing, the earliest instance a re-entry rule lets in):
    #: the database's default may order by language (a PostgreSQL database created with an ICU or
    #: en_US locale puts "a-2" before "A1"), and the plan's table picks its first rows in Python by the
    #: same keys (tools.output.listing_order); None: the default already orders by code point
    code_point_collation: str | None = None
    #: a due query whose steps leave out the ledger's rows reads the campaign's ledger rows once, into a
    #: materialised CTE each step's anti-join reads (sql.compile.campaign_ledger), instead of scanning the
    #: ledger's table once per step (DuckDB: no index serves the anti-join; PostgreSQL and SQLite look each
    #: candidate up in the ledger's identity index, which a CTE would not have)
    campaign_ledger_cte: bool = False
    #: a due query's anti-join reads only the ledger rows whose ``trigger_at`` can lie in the step's window,
    #: for trigger kinds whose instant cannot move out of it (``TriggerKind.instant_drift``,
    #: ``compile.ledger_since``), and only the rows written since the earliest instance could be, for a kind
    #: that bounds it (``TriggerKind.ledger_created_since``: a delivery date's order placed): the anti-join's
    #: hash table is built from the window's rows, and a ledger grown in time order has its older row groups
    #: skipped by their zone maps
    ledger_instant_cut: bool = False
    #: an aggregate of ``picked`` in the row with the greatest ``latest`` - ties on ``latest`` broken by the
    #: greatest ``picked``, a NULL ``picked`` below any other of its instant and the answer only when every row
    #: of that instant has one; rows whose ``latest`` is NULL left out - as SQL in this dialect that sql.compile
    #: parses and fills in (``last_by``): the order facts then carry each customer's last order id
    #: (``last_order_id``, the at_risk trigger's key) from their one scan of the orders. None: the key is found
    #: by joining the members' last orders (a second scan of the orders)
    last_by_sql: str | None = None
    #: ``last_by_sql`` for the incremental pass's kept order facts only (sql.kept_facts), where the aggregate is
    #: computed when the table is built and for the customers a refresh recomputes, not over every order at
    #: every pass: the kept facts then carry ``last_order_id`` and the at_risk members' join of the orders goes.
    #: None: ``last_by_sql`` (kept facts without it where that is None too)
    kept_last_by_sql: str | None = None
    #: a source read whole by a scan (the order and event facts and the shared order rows and event days a pass
    #: creates, an order date trigger's instances, the incremental pass's scan of the change column) is read
    #: through a subquery ``LIMIT -1`` (no limit) that the planner cannot flatten into its reader: SQLite then evaluates it once per row as a co-routine, and each
    #: converted column (an instant's STRFTIME) once; flattened, every reference to the column computed it
    #: again (delivery's trigger instances: 6 STRFTIMEs per order) and a GROUP BY read the table through the
    #: customer id's index, a row lookup per order
    unflattened_scans: bool = False
    #: a pass's due queries read the customers from one temporary table built once per pass
    #: (``sql.compile.SHARED_CUSTOMERS``), and the pass's customers and per-customer fact tables are
    #: indexed on the customer id once created (``index_temporary_table``); elsewhere each due query
    #: reads the customers' source itself
    shared_customers: bool = False
    #: where instants are text (``instant_text_format``): an instant as a number that orders as its text form
    #: does and that the text form's STRFTIME turns back into exactly that text, as SQL in this dialect that
    #: sql.compile parses and fills in (``instant_value``: the shop's value, ``instant_text``: its text form).
    #: A per-customer fact table (``sql.compile.facts_select``) then filters and aggregates these numbers per
    #: row and formats its results once per customer, and the whole scans of the orders (an order date
    #: trigger's instances, the shared order rows) filter and order on them and format only the rows they
    #: keep; None: they format every row's instant
    instant_number_sql: str | None = None


#: The write-ahead log a ledger may grow to before its database checkpoints by itself (``Dialect.checkpoint_hold``):
#: a pass that writes more (~5 KB of log per email sent, most of it the content) still checkpoints inside its commits,
#: once per this much, so the log stays bounded; below it (a first pass of up to ~13,000 emails) a pass writes without
#: one and the service checkpoints after it. Not larger: DuckDB's checkpoint grows faster than the log it moves (a
#: first pass at 1M orders, 71,733 emails, load ~10: 256 MiB x0.72 of the base's emails/s, 64 MiB x1.33)
WAL_HOLD_LIMIT = "64MiB"

#: Every supported dialect, in the order commands list them (``engine compile --dialect``).
DIALECTS: dict[str, Dialect] = {d.name: d for d in (
    Dialect("duckdb", tokenizer_keywords=frozenset((
                "ATTACH BITSTRING CONNECT DETACH DISCONNECT FORCE INSTALL LOGICAL MACRO ONLY PIVOT_WIDER "
                "POSITIONAL RESET SIGNED SUMMARIZE TIMESTAMP_MS TIMESTAMP_NS TIMESTAMP_S TIMESTAMP_US "
                "UBIGINT UINTEGER USMALLINT UTINYINT").split()),
            url_schemes=("duckdb",), temporary_tables=True, temporary_schema="temp.main",
            stream_source_ctes=True, local_file=True, settings_section="duckdb",
            setting_defaults=("memory_limit: (DuckDB's: 80% of RAM)", "threads: (DuckDB's: one per CPU core)",
                              "temp_directory: (DuckDB's: the database file's name + .tmp)"),
            on_conflict_insert="postgresql",
            # binds_instants off: the compiled query gets its instants written in as literals, which DuckDB
            # ran 5 % faster than bound parameters (benchmarks/README.md, issue 15.3)
            array_parameters="positional", one_writer_per_file=True, ledger_status_index=False,
            # the hand-over's two UPDATEs as one MERGE: a first pass's hand-over CPU x0.83-0.91 (benchmarks/README.md, issue 15)
            merged_hand_over=True,
            # the automatic checkpoint (DuckDB's at 16 MiB of WAL: twice in a --quick first pass, 144-680 ms each inside a
            # commit, the send workers waiting) held to WAL_HOLD_LIMIT and taken between passes: that pass's emails/s
            # x1.08-1.36, CPU per email x0.84-0.97, at load 6-12 (benchmarks/README.md, issue 15)
            checkpoint_hold="SET checkpoint_threshold = '{limit}'", checkpoint_statement="CHECKPOINT",
            # an interleaved ledger's keys read plain: a minute later at 1M orders x0.89 (249k ledger rows) and
            # x0.71 (~1M rows) of the compressed keys' CPU (benchmarks/README.md, issue 15)
            uncompressed_ledger_columns=("customer_id", "trigger_key"),
            uncompressed_column_clause="USING COMPRESSION uncompressed",
            # settled_counts "summary": the cold counted plan at 1M orders (172,522 settled skips) CPU x0.86 of the
            # settled rows streamed narrowed to be counted in Python (its Python x0.77, the statements' CPU x0.98):
            # DuckDB holds a CTE read twice in its buffer manager (+20 MB peak RSS at 254k due rows, measured in
            # session 21 when it was as fast as the rows; benchmarks/README.md, issue 15, cold27)
            settled_counts="summary",
            # delivery's 51,530 stale/stopped skips at 1M orders counted in SQL: the cold plan's CPU x0.82, the first
            # pass's plan x0.73 (SQLite at 100k: x1.02 and x1.09, not set; PostgreSQL below)
            settles_local_dates=True,
            key_array_conditions=(("BIGINT", "{column} IN (SELECT unnest(CAST({parameter} AS BIGINT[])))"),
                                  ("VARCHAR", "{column} IN (SELECT unnest(CAST({parameter} AS VARCHAR[])))"),
                                  ("CAST", "CAST({column} AS VARCHAR) IN (SELECT unnest(CAST({parameter} AS VARCHAR[])))")),
            # SHA256() is the hex digest: its first 8 digits, read as a hexadecimal integer
            hash32_sql="CAST('0x' || SUBSTRING(SHA256(hashed_text), 1, 8) AS BIGINT)",
            # DuckDBPyConnection.interrupt(): DuckDB has no statement time limit of its own
            statement_timeout="interrupt",
            # the connection's own result, fetched without SQLAlchemy's result layer (benchmarks/README.md, issue 15.4)
            driver_stream="duckdb_engine",
            # one scan of the ledger per campaign: a minute later at 1M orders, order-follow-up's due query (3 steps)
            # 0.069 -> 0.052 s CPU, welcome-series' 0.029 -> 0.019 (benchmarks/README.md, issue 15)
            campaign_ledger_cte=True,
            # a tuple per order (ARG_MAX_NULL: a NULL id at the last instant is the answer, as the join's MAX of
            # none): in the pass's GROUP BY x1.14 of a minute-later plan at 1M (not declared as last_by_sql); in
            # the kept facts paid only at their build and for the touched customers, re-engage's members' join of
            # 743k orders gone: a minute later with the change column at 1M x0.96 (benchmarks/README.md, issue 15)
            kept_last_by_sql="ARG_MAX_NULL(picked, CASE WHEN NOT latest IS NULL THEN (latest, NOT picked IS NULL, picked) END)",
            # the ledger rows older than the windows left out of the anti-joins: a minute later at 1M orders with a
            # ~1M-row ledger grown in time order x0.80 of the plan's CPU, on the benchmark's ledger x0.96 (noise);
            # SQLite probes its identity index instead, where the bound cost x1.03 (benchmarks/README.md, issue 15)
            ledger_instant_cut=True),
    Dialect("sqlite", tokenizer_keywords=frozenset((
                "ATTACH DETACH MATCH REINDEX").split()),
            url_schemes=("sqlite",), instant_text_format="%Y-%m-%d %H:%M:%f", typed_columns=False,
            temporary_tables=True, temporary_schema="temp", local_file=True,
            # a source CTE read twice (the at_risk trigger's orders: its facts and its members' last
            # orders) was materialised without an index: the members' join scanned 1M orders per
            # member, and a pass's segment entries did not finish at 1M orders (benchmarks/README.md).
            # The customers stay materialised: SQLite, without statistics on the shop's tables, joins
            # them well through the automatic index it builds on the copy; inlined, it scanned the
            # pass's order facts once per customer (inactivity, re-engage a minute later at 1M orders). A pass's
            # due queries read the pass's indexed customers table instead (shared_customers, below): this holds
            # for the queries that do not (one customer's, explain's, a segment's entries)
            stream_source_ctes=True, materialised_sources=("customers",),
            # settled_counts "rows": a CTE read twice makes SQLite materialise it with the trigger instances
            # and source CTEs it reads, without their indexes (+20-40 ms per small campaign's statement)
            # WAL lets the reconciler stream the due set while it writes ledger rows. A 64 MB page cache
            # (default 2 MB) holds the upper levels of the ledger's indexes: without it every claim read
            # each level of each index from the file again, and a write cost 1.5x as much at 2M rows
            # (benchmarks/run.py --ledger-growth). It is a limit, filled only as pages are read.
            connect_statements=("PRAGMA journal_mode=WAL", "PRAGMA busy_timeout=10000", "PRAGMA cache_size=-65536"),
            on_conflict_insert="sqlite",
            # pysqlite begins transactions lazily (and not before DDL); BEGIN IMMEDIATE takes the
            # write lock now - a second process waits (busy_timeout) until the first commits
            migration_lock="BEGIN IMMEDIATE", binds_instants=True,
            # no engine_ledger_customer (migration 0010): its random leaf per claim was SQLite's whole extra
            # write cost at 10M ledger rows (benchmarks/README.md, issue 15)
            ledger_customer_index=False,
            # no SHA-256 in SQLite: the engine registers decide.hash32 on each connection it opens
            hash32_sql="ENGINE_HASH32(hashed_text)", hash32_function="ENGINE_HASH32",
            # sqlite3.Connection.interrupt() (sqlite3_interrupt), made to be called from another thread
            statement_timeout="interrupt",
            # a minute later at 1M orders: order facts 2.7 -> 1.9 s, order rows 2.4 -> 1.3 s, delivery's due query
            # 2.0 -> 1.3 s (benchmarks/README.md, issue 15)
            unflattened_scans=True,
            # 1M orders: the plan a minute later 7.17 -> 5.57 s CPU, cold 8.22 -> 6.89 s; without the fact
            # tables' indexes inactivity took 8 s, without the id-as-text index re-engage did not finish
            # (benchmarks/README.md, issue 15)
            shared_customers=True,
            # the facts compare and aggregate an order's or event's instant as its julian day (no text formatted per
            # row), formatted once per customer: at 1M orders the order facts 1.68 -> 1.25 s CPU, the plan a minute
            # later 5.58 -> 5.09 s, cold 7.51 -> 6.75 s. JULIANDAY rounds a value's sub-millisecond digits as
            # STRFTIME's %f does not (59.9996 s: the next second, %f's 59.999), so a value with a 4th decimal of
            # 4-9 is numbered from its text form: on 100,000 random instants of every form SQLite reads each
            # number's text equals the value's and they order as the texts (benchmarks/README.md, issue 15).
            # Delivery's order dates and the shared order rows' window compared as numbers too (only the kept
            # rows formatted): at 1M orders delivery 1.25 -> 0.62 s, the order rows 1.08 -> 0.85 s CPU
            instant_number_sql="CASE WHEN instant_value GLOB '*.[0-9][0-9][0-9][4-9]*' THEN JULIANDAY(instant_text) "
                               "ELSE JULIANDAY(instant_value) END"),
    Dialect("postgres", tokenizer_keywords=frozenset((
                "BIGSERIAL CSTRING DECLARE DO EXEC HSTORE INOUT MONEY NAME OID ONLY POINT REFRESH REGCLASS "
                "REGCOLLATION REGCONFIG REGDICTIONARY REGNAMESPACE REGOPER REGOPERATOR REGPROC REGPROCEDURE "
                "REGROLE REGTYPE REINDEX RESET SERIAL SMALLSERIAL TYPE VARIADIC XML").split()),
            url_schemes=("postgresql", "postgres"), temporary_tables=True, temporary_schema="pg_temp",
            # stream() reads through server-side cursors, which PostgreSQL plans for the first 10 % of
            # rows (cursor_tuple_fraction 0.1): fast-start nested loops that took over 15 minutes for
            # one due query on a 1M-order shop, against 2.4 s with the plan for all rows. The engine
            # always reads every row, so it asks for that plan. Committed: a rollback would undo a SET.
            # JIT off: a due query costs far above jit_above_cost (it reads the whole shop), so the
            # server compiled 100+ expressions per query with LLVM at each pass: 1.6-4 s of a query of
            # 1-5 s on the 1M-order benchmark shop, run once and compiled again at the next pass
            # (benchmarks/README.md). Per connection, like the cursor setting: the server's default is untouched.
            connect_statements=("SET cursor_tuple_fraction = 1.0", "SET jit = off"),
            on_conflict_insert="postgresql", array_parameters="named", code_point_collation="C",
            # the trigger instances and customers inlined in each step: the steps' windows were estimated
            # at 0.5 % of a materialised CTE (delivery: 506 rows where 48,178 came), the customers written to a
            # temporary file per query; a minute later at 1M orders the due queries' server CPU
            # 1.7 -> 1.0 s, inactivity's 0.57 -> 0.14 s (benchmarks/README.md)
            inline_instances=True,
            # a CTE read twice is evaluated once into a tuplestore that spills to disk past work_mem: the
            # counted plan's due query runs once, and its settled rows stay on the server (benchmarks/README.md)
            settled_counts="summary",
            # delivery's 51,530 stale/stopped skips at 1M orders counted (and recorded) in SQL, the zone table joined
            # per day: server + client CPU of the cold counted plan x0.86, of the first pass's plan x0.61 (--quick
            # shop: x0.94, x0.70); the server's own CPU unchanged (x0.97-1.04), the client's x0.27-0.89
            settles_local_dates=True,
            # psycopg sends a list of str untyped: the server reads it as the column's own array type, so
            # citext, char(n) and enum columns compare as they do with a literal IN list (text[] would not)
            # integers: a semi-join, not '= ANY(bigint[])', which an integer column cannot hash (int4 = int8):
            # evaluated as a filter it searched the 1,000 keys linearly per row, 2-3x slower than the literal list
            key_array_conditions=(("BIGINT", "{column} IN (SELECT unnest(CAST({parameter} AS BIGINT[])))"),
                                  ("VARCHAR", "{column} = ANY({parameter})"),
                                  ("CAST", "CAST({column} AS TEXT) = ANY(CAST({parameter} AS TEXT[]))")),
            migration_lock="SELECT pg_advisory_xact_lock({key})", analyze_ledger=True, type_codes_are_oids=True,
            # the pass's fact tables unanalysed: joins of them guessed at 30M rows (then JIT, sorts on
            # disk), or at 1 row, and nested loops over the customers ran 25 s a minute later at 1M orders
            analyze_temporary_tables=True,
            # the default target samples 30,000 rows and builds 100-bucket histograms of every column:
            # 0.05-0.16 s per fact table at 1M orders; the due queries' plans were the same with 10
            analyze_target_statement="SET LOCAL default_statistics_target = {target}",
            # a GROUP BY of all events was planned as a GroupAggregate over an index scan of the
            # customer id (every row fetched from the heap in the index's order: 239k buffer reads,
            # 0.4-0.6 s) where a sequential scan and a hash aggregate take 0.1-0.3 s at 1M orders
            whole_aggregate_statements=("SET LOCAL enable_indexscan = off",),
            # two replicas replacing the same customers' kept facts at once would each insert them
            refresh_lock="SELECT pg_advisory_xact_lock({key})",
            binds_instants=True,
            # sha256() takes bytes (the text's UTF-8); 'x' || 8 hex digits is a bit string of 32 bits,
            # whose cast to bigint is unsigned
            hash32_sql="CAST(CAST('x' || SUBSTRING(ENCODE(SHA256(CONVERT_TO(hashed_text, 'UTF8')), 'hex') FROM 1 FOR 8)"
                       " AS BIT(32)) AS BIGINT)",
            # the server's own limit, for the statement's transaction only (a ledger in the same database
            # writes without it); each FETCH of a streamed query is a statement of its own
            statement_timeout="server", timeout_statement="SET LOCAL statement_timeout = {milliseconds}",
            timeout_sqlstate="57014",
            # psycopg 3's named cursor, text format: its binary format loaded the due rows no faster (text,
            # date and numeric columns slower, timestamps faster; benchmarks/README.md, issue 15.4)
            driver_stream="psycopg",
            last_by_sql="(ARRAY_AGG(picked ORDER BY latest DESC, picked DESC NULLS LAST) FILTER (WHERE latest IS NOT NULL))[1]"),
    Dialect("snowflake", tokenizer_keywords=frozenset((
                "BYTEINT GET INTEGRATION LS MATCH_CONDITION MATCH_RECOGNIZE MINUS PACKAGE POLICY POOL PUT "
                "REMOVE RM ROLE RULE SAMPLE SQL_DOUBLE SQL_VARCHAR STAGE STREAMLIT TAG TIMESTAMP_TZ TOP "
                "UNDROP VOLUME WAREHOUSE").split()),
            url_schemes=("snowflake",), temporary_tables=True,
            hash32_sql="TO_NUMBER(SUBSTRING(SHA2(hashed_text, 256), 1, 8), 'XXXXXXXX')"),
    Dialect("bigquery", tokenizer_keywords=frozenset((
                "BYTEINT BYTES CURRENT_DATETIME DECLARE ELSEIF EXCEPTION EXPORT FLOAT64 LOOP MODEL RECORD "
                "REPEAT WHILE").split()),
            url_schemes=("bigquery",), inline_rows="unnest",
            hash32_sql="CAST(CONCAT('0x', SUBSTR(TO_HEX(SHA256(hashed_text)), 1, 8)) AS INT64)"),
    Dialect("spark", tokenizer_keywords=frozenset((
                "DECLARE MINUS REFRESH SERDEPROPERTIES").split()),
            url_schemes=("hive",          # PyHive against the Spark Thrift Server
                                  "databricks"),   # databricks-sqlalchemy; Databricks SQL runs Spark SQL
            # a cluster's default session time zone may be any: the engine's instants are UTC
            # (tests/test_spark_engine.py runs a server whose default is Pacific/Auckland)
            connect_statements=("SET TIME ZONE 'UTC'",),
            # PyHive lets Thrift's transport errors through (a refused connection, a server gone mid-query)
            driver_errors=("thrift.transport.TTransport.TTransportException",),
            hash32_sql="CAST(CONV(SUBSTRING(SHA2(hashed_text, 256), 1, 8), 16, 10) AS BIGINT)",
            # MAX_BY leaves out the rows whose ordering is NULL
            last_by_sql="MAX_BY(picked, CASE WHEN latest IS NOT NULL THEN STRUCT(latest, picked IS NOT NULL, picked) END)"),
    Dialect("trino", tokenizer_keywords=frozenset((
                "DECLARE HYPERLOGLOG IPADDRESS IPPREFIX MATCH_RECOGNIZE REFRESH START TDIGEST").split()),
            url_schemes=("trino",),
            hash32_sql="FROM_BASE(SUBSTR(TO_HEX(SHA256(TO_UTF8(hashed_text))), 1, 8), 16)"),
)}

_BY_SCHEME = {scheme: d for d in DIALECTS.values() for scheme in d.url_schemes}


def dialect_named(name: str) -> Dialect:
    """The row of sqlglot dialect ``name``; a name not in the table has every capability absent."""
    found = DIALECTS.get(name)
    return found if found is not None else Dialect(name)


def dialect_of_url(url: str) -> str | None:
    """The sqlglot dialect a SQLAlchemy URL chooses, None when its scheme is not supported."""
    scheme = url.split(":", 1)[0].split("+", 1)[0].lower()
    found = _BY_SCHEME.get(scheme)
    return found.name if found is not None else None


def dialect_of_backend(backend: str) -> Dialect:
    """The row of a connection's SQLAlchemy backend name (``postgresql`` -> postgres); another
    backend renders as sqlglot's dialect of the same name, with every capability absent."""
    found = _BY_SCHEME.get(backend)
    return found if found is not None else Dialect(backend)


#: The statistics target of a pass's temporary tables (``analyze_target_statement``): their plans
#: need row counts, distinct keys and rough value ranges, not fine histograms
TEMPORARY_STATISTICS_TARGET = 10


def analyze_temporary_table(dialect: Dialect, table: str) -> list[str]:
    """The statements (one transaction) that ANALYZE a session's temporary ``table`` just created, where
    the dialect's planner needs it (``analyze_temporary_tables``), at ``TEMPORARY_STATISTICS_TARGET``
    where the dialect can set it; none elsewhere. By the temporary schema: never a permanent table."""
    return _analyze(dialect, f"{dialect.temporary_schema}.{table}" if dialect.temporary_schema else table)


def analyze_kept_table(dialect: Dialect, table: str) -> list[str]:
    """``analyze_temporary_table`` for a permanent table the engine keeps in the warehouse's database and
    has just built (the incremental pass's kept order rows): the same planner, the same need."""
    return _analyze(dialect, table)


def _analyze(dialect: Dialect, qualified: str) -> list[str]:
    if not dialect.analyze_temporary_tables:
        return []
    analyze = f"ANALYZE {qualified}"
    if dialect.analyze_target_statement is None:
        return [analyze]
    return [dialect.analyze_target_statement.format(target=TEMPORARY_STATISTICS_TARGET), analyze]


def index_temporary_table(dialect: Dialect, table: str, unique: bool) -> list[str]:
    """The statement indexing a session's temporary ``table`` just created on its customer id where the
    dialect reads the customers from a pass table (``shared_customers``); none elsewhere. In the temporary
    schema: never an index on the shop's tables."""
    if not dialect.shared_customers:
        return []
    kind = "UNIQUE INDEX" if unique else "INDEX"
    indexes = [f"CREATE {kind} {dialect.temporary_schema}.ix_{table} ON {table} (customer_id)"]
    if not unique:  # the customers: also by the id as text, as the ledger's and entries' rows join them
        indexes.append(f"CREATE INDEX {dialect.temporary_schema}.ix_{table}_text ON {table} "
                       "(CAST(customer_id AS TEXT))")
    return indexes


def drop_temporary_table(dialect: Dialect, table: str, created: bool = False) -> str | None:
    """DROP TABLE IF EXISTS of a session's temporary ``table``, by its temporary schema. Where the
    dialect cannot name that schema an unqualified DROP could hit a permanent table of the same name,
    so it is only given for a table this session ``created``; None otherwise."""
    schema = dialect.temporary_schema
    if schema:
        return f"DROP TABLE IF EXISTS {schema}.{table}"
    return f"DROP TABLE {table}" if created else None
