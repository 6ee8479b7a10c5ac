"""What the tools may read from the ledger: ``LedgerReader``, the ledger's read interface.

explain, customer, export, backtest, stats, show-message and the service's backlog and readiness read the
ledger through this class and nothing else: they get a reader, never a database engine, and never name a
ledger table (tests/test_ledger_interface.py checks both). ``Ledger`` (ledger.py, the pass's reads and
writes) is a ``LedgerReader`` too, so ``reconciler.ledger`` is the reader the tools are given.

Two kinds of reads:

- named reads (one message, one customer's messages, a campaign's history, the claimed backlog, ...):
  statements built here on the tables of ``ledger_tables``;
- statistics (``engine stats``) compose their aggregations in sqlglot over the relations this module hands
  out (``messages_relation``, ``unsubscribes_relation``) and run them with ``select`` / ``stream``, which
  take a sqlglot query and nothing else (no SQL text, no statement that writes). Handing out the relation
  instead of its rows is what lets stats join the ledger with the shop's orders in ONE query when both
  live in one database.

Must not write, and must not decide anything: the reads return rows as the database gives them.
"""
from __future__ import annotations

from datetime import datetime
from typing import Iterator, Sequence

import sqlalchemy as sa
from sqlglot import exp

from engine.state.ledger_tables import entries_table, events_table, ledger_table, tags_table, unsubscribes_table
from engine.state.tables import EVENTS_TABLE, LEDGER_TABLE, UNSUBSCRIBES_TABLE
from engine.state.warehouse import Database

def messages_relation(alias: str) -> exp.Table:
    """The ledger's message rows (one per message key) as a sqlglot table named ``alias``."""
    return exp.to_table(LEDGER_TABLE).as_(alias)


def unsubscribes_relation(alias: str) -> exp.Table:
    """The ledger's unsubscribes (customer_id, kind, source, created_at) as a sqlglot table named ``alias``."""
    return exp.to_table(UNSUBSCRIBES_TABLE).as_(alias)


def events_relation(alias: str) -> exp.Table:
    """The ledger's response events (engine_events: event_id, message_key, customer_id, campaign, step,
    variant, channel, type, machine, provider, url, detail, occurred_at, recorded_at) as a sqlglot table."""
    return exp.to_table(EVENTS_TABLE).as_(alias)


#: the statuses of a message neither sent nor in flight, as engine_ledger_sends' condition names them (0010)
NOT_SENDING = ("failed", "skipped")


def ledger_steps(conn: sa.Connection, campaign: str | None = None, sent_since: datetime | None = None) -> list[tuple[str, str]]:
    """Every (campaign, step) the ledger holds (of ``campaign`` only, if given; with ``sent_since``, only those
    with a row sent or in flight updated since then), in order, in one statement: a recursive walk that seeks
    the identity index (campaign, step, ...) once per campaign and once per pair, however many rows each holds,
    and engine_ledger_sends once per pair for ``sent_since`` - what lets a ledger without a per-customer index
    (``Dialect.ledger_customer_index``) find a customer's rows by seeking the identity index at (campaign,
    step, customer_id) for each pair. The statuses are literals: SQLite reads a partial index only for a
    condition that contains the index's own."""
    first = ("SELECT :campaign" if campaign is not None else f"SELECT MIN(campaign) FROM {LEDGER_TABLE}")
    walk = "" if campaign is not None else (
        f" UNION ALL SELECT (SELECT MIN(l.campaign) FROM {LEDGER_TABLE} AS l WHERE l.campaign > c.campaign) "
        f"FROM campaigns AS c WHERE c.campaign IS NOT NULL")
    statuses = ", ".join(f"'{status}'" for status in NOT_SENDING)
    sent = "" if sent_since is None else (
        f" AND EXISTS (SELECT 1 FROM {LEDGER_TABLE} AS l WHERE l.campaign = pairs.campaign AND l.step = pairs.step "
        f"AND l.status NOT IN ({statuses}) AND l.updated_at >= :since)")
    sql = (f"WITH RECURSIVE campaigns (campaign) AS ({first}{walk}), "
           f"pairs (campaign, step) AS (SELECT c.campaign, (SELECT MIN(l.step) FROM {LEDGER_TABLE} AS l "
           f"WHERE l.campaign = c.campaign) FROM campaigns AS c WHERE c.campaign IS NOT NULL "
           f"UNION ALL SELECT p.campaign, (SELECT MIN(l.step) FROM {LEDGER_TABLE} AS l "
           f"WHERE l.campaign = p.campaign AND l.step > p.step) FROM pairs AS p WHERE p.step IS NOT NULL) "
           f"SELECT campaign, step FROM pairs WHERE step IS NOT NULL{sent} ORDER BY campaign, step")
    text = sa.text(sql)
    if campaign is not None:
        text = text.bindparams(sa.bindparam("campaign", campaign, type_=ledger_table.c.campaign.type))
    if sent_since is not None:
        text = text.bindparams(sa.bindparam("since", sent_since, type_=ledger_table.c.updated_at.type))
    return [(row[0], row[1]) for row in conn.execute(text)]


def at_steps(pairs: list[tuple[str, str]]) -> sa.ColumnElement:
    """The ledger rows of ``pairs`` (campaign, step): per campaign, its steps - one seek of the identity index
    per pair with the customer given beside it (SQLite reads each OR term through the index), never the pairs
    of one campaign's steps with another's."""
    c = ledger_table.c
    steps: dict[str, list[str]] = {}
    for campaign, step in pairs:
        steps.setdefault(campaign, []).append(step)
    return sa.or_(*[sa.and_(c.campaign == campaign, c.step.in_(names)) for campaign, names in steps.items()])


class LedgerReader:
    """Read-only access to the ledger in ``db`` (the warehouse's database or its own)."""

    def __init__(self, db: Database):
        self.db = db

    # --- the database ---------------------------------------------------------------

    @property
    def dialect(self) -> str:
        """The sqlglot dialect of the ledger's database, for queries given to ``select`` / ``stream``."""
        return self.db.dialect.name

    def close(self) -> None:
        """Close the ledger database's connections (a pass's end, a command's)."""
        self.db.dispose()

    def check(self) -> None:
        """Connect once; an unreachable ledger raises ``WarehouseError`` naming it."""
        self.db.check()

    def in_database(self, db: Database) -> bool:
        """Whether the ledger lives in ``db`` (the warehouse's database), not a database of its own."""
        return self.db is db

    # --- named reads ------------------------------------------------------------------

    def get(self, key: str) -> dict | None:
        """Every column of the message ``key`` (content included), or None."""
        with self.db.engine.connect() as conn:
            row = conn.execute(sa.select(ledger_table).where(ledger_table.c.message_key == key)).mappings().first()
            return dict(row) if row else None

    def customer_messages(self, customer_id: str, fields: Sequence[str], campaign: str | None = None) -> list[dict]:
        """``fields`` of the customer's messages (of one ``campaign`` if given), oldest first."""
        c = ledger_table.c
        conditions = [c.customer_id == customer_id] + ([c.campaign == campaign] if campaign is not None else [])
        query = sa.select(*[c[name] for name in fields]).where(*conditions).order_by(c.created_at, c.message_key)
        with self.db.engine.connect() as conn:
            if not self.db.dialect.ledger_customer_index:  # the identity index, at each (campaign, step) held
                pairs = ledger_steps(conn, campaign)
                if not pairs:
                    return []
                # every campaign with every step: a pair the ledger does not hold is a seek that finds nothing
                # (20 customers at 10M rows, 33 campaigns: 2-3 ms each, against 8 ms per campaign's OR term)
                query = query.where(c.campaign.in_(sorted({name for name, _ in pairs})),
                                    c.step.in_(sorted({step for _, step in pairs})))
            return [dict(row) for row in conn.execute(query).mappings()]

    def customer_events(self, customer_id: str) -> list[dict]:
        """The customer's response events (every column), oldest first."""
        c = events_table.c
        query = sa.select(events_table).where(c.customer_id == customer_id).order_by(c.occurred_at, c.event_id)
        with self.db.engine.connect() as conn:
            return [dict(row) for row in conn.execute(query).mappings()]

    def segment_entries(self, campaigns: list[str]) -> list[tuple]:
        """(campaign, customer_id, trigger_key, entered_at) of every segment entry of ``campaigns``
        (for a warehouse in another database: the pass copies them there)."""
        e = entries_table.c
        with self.db.engine.connect() as conn:
            return [tuple(row) for row in conn.execute(
                sa.select(e.campaign, e.customer_id, e.trigger_key, e.entered_at).where(e.campaign.in_(campaigns)))]

    def tag_holders(self, tags: list[str]) -> list[tuple[str, str]]:
        """(customer_id, tag) of every customer holding one of ``tags``."""
        t = tags_table.c
        with self.db.engine.connect() as conn:
            return [tuple(row) for row in conn.execute(sa.select(t.customer_id, t.tag).where(t.tag.in_(tags)))]

    def tags(self, customer_id: str) -> list[str]:
        with self.db.engine.connect() as conn:
            rows = conn.execute(sa.select(tags_table.c.tag).where(tags_table.c.customer_id == customer_id).order_by(tags_table.c.tag))
            return [row[0] for row in rows]

    def unsubscribes_of(self, customer_id: str) -> list[str]:
        """The kinds the customer unsubscribed from ('all' = every channel), sorted."""
        u = unsubscribes_table.c
        with self.db.engine.connect() as conn:
            return sorted(row[0] for row in conn.execute(sa.select(u.kind).where(u.customer_id == customer_id)))

    def counts(self) -> list[tuple[str, str, str, str | None, int]]:
        """(campaign, step, status, reason, count) over the whole ledger."""
        c = ledger_table.c
        query = (
            sa.select(c.campaign, c.step, c.status, c.reason, sa.func.count())
            .group_by(c.campaign, c.step, c.status, c.reason)
            .order_by(c.campaign, c.step, c.status, c.reason)
        )
        with self.db.engine.connect() as conn:
            return [tuple(row) for row in conn.execute(query)]

    def claimed_backlog(self) -> tuple[int, datetime | None]:
        """(rows claimed without an outcome, the oldest one's claim time): what a dead pass left behind."""
        c = ledger_table.c
        query = sa.select(sa.func.count(), sa.func.min(c.created_at)).where(c.status == "claimed")
        try:
            with self.db.engine.connect() as conn:
                count, oldest = conn.execute(query).one()
        except sa.exc.SQLAlchemyError as exc:
            raise self.db._error("query failed on", exc) from None
        return count or 0, oldest

    def history(self, campaign: str, fields: Sequence[str], dialect: str, batch_size: int) -> Iterator[list[sa.Row]]:
        """``fields`` of every message of ``campaign`` (oldest first), streamed in batches, values as the
        driver returns them (rendered in ``dialect``, the ledger database's)."""
        query = (exp.select(*[exp.column(exp.to_identifier(f), table=exp.to_identifier("l")) for f in fields])
                 .from_(messages_relation("l"))
                 .where(exp.column(exp.to_identifier("campaign"), table=exp.to_identifier("l")).eq(exp.Literal.string(campaign)))
                 .order_by(*[exp.column(exp.to_identifier(f), table=exp.to_identifier("l")) for f in ("created_at", "message_key")]))
        return self.stream(query, dialect, batch_size)

    def sent_messages(self, campaign: str, batch_size: int) -> Iterator[list[sa.Row]]:
        """(step, customer_id, created_at) of the campaign's sent messages by key, streamed in batches."""
        c = ledger_table.c
        query = (sa.select(c.step, c.customer_id, c.created_at).where(c.status == "sent", c.campaign == campaign)
                 .order_by(c.message_key))
        with self.db.engine.connect() as conn:
            result = conn.execution_options(stream_results=True, yield_per=batch_size).execute(query)
            while rows := result.fetchmany(batch_size):
                yield rows

    # --- statistics: sqlglot queries over the relations above -------------------------

    def select(self, query: exp.Query, dialect: str) -> list[sa.Row]:
        """The rows of ``query`` (a sqlglot SELECT over this module's relations), rendered in ``dialect``."""
        return self.db.fetch_all(_read_only(query).sql(dialect=dialect))

    def stream(self, query: exp.Query, dialect: str, batch_size: int) -> Iterator[list[sa.Row]]:
        """As ``select``, in batches of ``batch_size`` rows, never holding all of them."""
        return self.db.stream(_read_only(query).sql(dialect=dialect), batch_size)


def _read_only(query: exp.Query) -> exp.Query:
    """``query`` if it is a SELECT (or a set operation of them); a reader runs nothing else."""
    if not isinstance(query, exp.Query) or any(isinstance(node, (exp.Insert, exp.Update, exp.Delete, exp.Create,
                                                                 exp.Drop, exp.Merge)) for node in query.walk()):
        raise TypeError(f"a ledger reader runs sqlglot SELECT queries only, not {type(query).__name__}")
    return query
