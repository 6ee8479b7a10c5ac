"""The SQL that brings engine state to the warehouse for one pass, when the ledger lives in another database.

A due query joins engine state: the segment entries of ``at_risk`` campaigns
and the tags ``has_tag()`` reads. With the ledger in the warehouse's database
it joins the ledger's own tables. Otherwise the pass copies the rows its
queries need (the entries of its segment campaigns, the customers holding the
tags its filters name) into the warehouse session, as Census and Hightouch do
with their staging tables, but never into the shop's schema:

- ``temporary`` dialects get a session-scoped temporary table per relation,
  filled with multi-row ``INSERT ... VALUES`` in batches (a read-only
  connection may create temporary tables: SQLite ``mode=ro``, DuckDB
  ``read_only``, a PostgreSQL role with the database's TEMP privilege);
- other dialects (BigQuery, Spark, Trino, ...) get a ``SELECT`` over
  ``VALUES`` that each query carries as a CTE.

The ledger rows for the anti-join are not copied: a pass subtracts them in
batches against the ledger database (``Ledger.existing_keys``), so what it
reads depends on the due set, not on the ledger's size.

Pure: builds SQL, never runs it (engine.run.ledger_state runs it). Values are
rendered as literals by sqlglot for the warehouse's dialect; timestamps exactly
as ``compile.ts`` renders them, so the copies compare as the ledger's tables do.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Iterable, Sequence

from sqlglot import exp

from engine.dialects import dialect_named, drop_temporary_table
from engine.model import Campaign, ProjectConfig
from engine.sql.compile import REENTRY_HISTORY, lit, render_sql, ts
from engine.sql.filter_types import filter_attributes, segment_attributes
from engine.sql import responses
from engine.sql.filters import parse_filter, referenced_attributes, referenced_functions
from engine.sql.triggers.registry import kind_of
from engine.state.tables import ENTRIES_TABLE, EVENTS_TABLE, TAGS_TABLE

#: The pass's copy of each ledger table and its columns with their SQL types (of the events: the human
#: engagement rows only, ``responses.ENGAGEMENT_COLUMNS``).
PASS_TABLES = {ENTRIES_TABLE: "engine_pass_entries", TAGS_TABLE: "engine_pass_tags", EVENTS_TABLE: "engine_pass_events",
               REENTRY_HISTORY: "engine_pass_reentry"}
COLUMNS = {
    # the sent instances of the campaigns whose re-entry a pass settles in SQL (``Ledger.entered_instances``),
    # copied at their settle statement only (engine.run.plan.due_rows), not with the state of every query
    REENTRY_HISTORY: (("campaign", "VARCHAR(64)"), ("customer_id", "VARCHAR(128)"), ("trigger_key", "VARCHAR(128)"),
                      ("trigger_at", "TIMESTAMP")),
    ENTRIES_TABLE: (("campaign", "VARCHAR(64)"), ("customer_id", "VARCHAR(128)"), ("trigger_key", "VARCHAR(128)"),
                    ("entered_at", "TIMESTAMP")),
    TAGS_TABLE: (("customer_id", "VARCHAR(128)"), ("tag", "VARCHAR(64)")),
    EVENTS_TABLE: (("customer_id", "VARCHAR(128)"), ("channel", "VARCHAR(64)"), ("type", "VARCHAR(16)"),
                   ("message_key", "VARCHAR(400)"), ("occurred_at", "TIMESTAMP")),
}
#: Rows per INSERT statement into a temporary copy.
INSERT_BATCH = 1000


@dataclass(frozen=True)
class StateNeeds:
    """What a pass's queries read of engine state: the entries of these segment campaigns, the holders of these
    tags, and whether the customers' responses (``responses``: the human engagement events)."""

    segment_campaigns: tuple[str, ...] = ()
    tags: tuple[str, ...] = ()
    responses: bool = False

    def __bool__(self) -> bool:
        return bool(self.segment_campaigns or self.tags or self.responses)

    def tables(self) -> tuple[str, ...]:
        return (((ENTRIES_TABLE,) if self.segment_campaigns else ()) + ((TAGS_TABLE,) if self.tags else ())
                + ((EVENTS_TABLE,) if self.responses else ()))


def _tags_in(text: str, attributes: Sequence[str]) -> set[str]:
    tree = parse_filter(text, attributes)
    return {str(node.expressions[0].this) for node in tree.find_all(exp.Anonymous)
            if node.name.lower() == "has_tag" and node.expressions}


def _reads_responses(text: str, attributes: Sequence[str]) -> bool:
    tree = parse_filter(text, attributes)
    return bool(referenced_attributes(tree) & set(responses.ATTRIBUTES)
                or referenced_functions(tree) & set(responses.FUNCTIONS))


def state_needs(campaigns: Iterable[Campaign], config: ProjectConfig, filters: Iterable[str] = ()) -> StateNeeds:
    """The engine state ``campaigns`` (and extra segment ``filters``, for ``engine export``) read."""
    segments, tags, reads_responses = set(), set(), False
    attributes = filter_attributes(config)
    for campaign in campaigns:
        if kind_of(campaign.trigger).records_entries:
            segments.add(campaign.name)
        texts = [campaign.audience] + [s.audience for s in campaign.steps] + \
                [v.audience for s in campaign.steps for v in s.variants]
        for text in filter(None, texts):
            tags |= _tags_in(text, attributes)
            reads_responses = reads_responses or _reads_responses(text, attributes)
        segment = campaign.trigger.segment if kind_of(campaign.trigger).has_segment else None
        if segment in config.segments:  # a segment trigger's members: its segment's filter
            tags |= _tags_in(config.segments[segment], segment_attributes(config))
            reads_responses = reads_responses or _reads_responses(config.segments[segment], segment_attributes(config))
    for text in filters:
        tags |= _tags_in(text, segment_attributes(config))
        reads_responses = reads_responses or _reads_responses(text, segment_attributes(config))
    return StateNeeds(tuple(sorted(segments)), tuple(sorted(tags)), reads_responses)


def transport(dialect: str) -> str:
    """How ``dialect``'s session receives engine state: "temporary" (a temporary table per relation)
    where its sessions have temporary tables (the dialect's capabilities), else "values"."""
    return "temporary" if dialect_named(dialect).temporary_tables else "values"


def _literal(value: object, dialect: str) -> exp.Expression:
    if value is None:
        return exp.null()
    if isinstance(value, datetime):
        return ts(value, dialect)
    return lit(str(value))


def _typed_nulls(table: str) -> exp.Select:
    """A SELECT of no rows with the copy's columns (an empty VALUES list is not SQL)."""
    columns = [exp.alias_(exp.cast(exp.null(), exp.DataType.build(kind)), name) for name, kind in COLUMNS[table]]
    return exp.select(*columns).where(exp.false())


def values_relation(table: str, rows: Sequence[tuple], dialect: str) -> exp.Select:
    """``rows`` of ledger table ``table`` as a SELECT over VALUES (read as a CTE by compile)."""
    if not rows:
        return _typed_nulls(table)
    names = [name for name, _ in COLUMNS[table]]
    values = exp.values([tuple(_literal(v, dialect) for v in row) for row in rows], alias="v", columns=names)
    return exp.select(*[exp.column(name, "v") for name in names]).from_(values)


def create_copy(table: str, dialect: str) -> str:
    """CREATE TEMPORARY TABLE of the pass's copy of ledger table ``table``."""
    columns = ", ".join(f"{name} {kind}" for name, kind in COLUMNS[table])
    return f"CREATE TEMPORARY TABLE {PASS_TABLES[table]} ({columns})"


def drop_copy(table: str, dialect: str, created: bool = False) -> str | None:
    """DROP of the pass's copy: by the temporary schema where the dialect names it (never a permanent
    table of the same name); elsewhere only one this pass ``created`` (else None)."""
    return drop_temporary_table(dialect_named(dialect), PASS_TABLES[table], created)


def insert_copy(table: str, rows: Sequence[tuple], dialect: str) -> Iterable[str]:
    """INSERT statements filling the pass's copy with ``rows``, ``INSERT_BATCH`` rows each."""
    names = [name for name, _ in COLUMNS[table]]
    for start in range(0, len(rows), INSERT_BATCH):
        chunk = rows[start:start + INSERT_BATCH]
        values = exp.values([tuple(_literal(v, dialect) for v in row) for row in chunk])
        yield render_sql(exp.insert(values, PASS_TABLES[table], columns=names), dialect)


def copy_relation(table: str) -> exp.Table:
    """What a query reads for ledger table ``table`` once its temporary copy exists."""
    return exp.to_table(PASS_TABLES[table])
