"""The ledger's tables as SQLAlchemy declares them (their names come from ``tables``).

Owned by the ledger: ``ledger`` (the pass's reads and writes) and ``ledger_reader`` (the tools' reads) build
their statements on these objects; the migrations bring a database to this shape. Declarations only: no
connection, no statement; no engine module outside engine/state/ uses them (tests/test_ledger_interface.py).
"""
from __future__ import annotations

import sqlalchemy as sa

from engine.state.tables import (
    COUPON_CLAIMS_TABLE, COUPON_CODES_TABLE, ENTRIES_TABLE, EVENTS_TABLE, GONE_CONTACTS_TABLE, LEDGER_TABLE, SUPPRESSIONS_TABLE, TAGS_TABLE, UNSUBSCRIBES_TABLE,
    SETTLED_TABLE, WATERMARKS_TABLE,
)

metadata = sa.MetaData()

ledger_table = sa.Table(
    LEDGER_TABLE,
    metadata,
    sa.Column("message_key", sa.String(400), primary_key=True),
    sa.Column("campaign", sa.String(64), nullable=False),
    sa.Column("step", sa.String(64), nullable=False),
    # customer_id and trigger_key: stored uncompressed where Dialect.uncompressed_ledger_columns says so (0009)
    sa.Column("customer_id", sa.String(128), nullable=False),
    sa.Column("trigger_key", sa.String(128), nullable=False),
    sa.Column("variant", sa.String(64)),
    sa.Column("channel", sa.String(64)),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("reason", sa.String(32)),
    sa.Column("detail", sa.Text),
    sa.Column("trigger_at", sa.DateTime),
    sa.Column("due_at", sa.DateTime),
    sa.Column("created_at", sa.DateTime, nullable=False),
    sa.Column("updated_at", sa.DateTime, nullable=False),
    sa.Column("content", sa.Text),
    sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
    sa.Column("next_attempt_at", sa.DateTime),
    sa.UniqueConstraint("campaign", "step", "customer_id", "trigger_key", name="engine_ledger_identity"),
    # customer_id alone (migration 0002): updated_at changes at every hand-over and outcome, and
    # would move the row's entry in this index each time
    sa.Index("engine_ledger_customer", "customer_id"),
    sa.Index("engine_ledger_status", "status", "next_attempt_at"),
)

entries_table = sa.Table(
    ENTRIES_TABLE,
    metadata,
    sa.Column("campaign", sa.String(64), primary_key=True),
    sa.Column("customer_id", sa.String(128), primary_key=True),
    sa.Column("trigger_key", sa.String(128), primary_key=True),
    sa.Column("entered_at", sa.DateTime, nullable=False),
)

tags_table = sa.Table(
    TAGS_TABLE,
    metadata,
    sa.Column("customer_id", sa.String(128), primary_key=True),
    sa.Column("tag", sa.String(64), primary_key=True),
    sa.Column("campaign", sa.String(64)),
    sa.Column("set_at", sa.DateTime, nullable=False),
)

suppressions_table = sa.Table(
    SUPPRESSIONS_TABLE,
    metadata,
    sa.Column("kind", sa.String(16), primary_key=True),  # email | sms
    sa.Column("address", sa.String(320), primary_key=True),
    sa.Column("reason", sa.String(32), nullable=False),
    sa.Column("detail", sa.Text),
    sa.Column("created_at", sa.DateTime, nullable=False),
)

unsubscribes_table = sa.Table(
    UNSUBSCRIBES_TABLE,
    metadata,
    sa.Column("customer_id", sa.String(128), primary_key=True),
    sa.Column("kind", sa.String(16), primary_key=True),  # email | sms | all
    sa.Column("source", sa.String(32)),
    sa.Column("created_at", sa.DateTime, nullable=False),
)

#: Contacts a provider reported gone (a push subscription answered 404/410): never sent to again. The
#: shop's data is read-only to the engine, so the removal is kept here and subtracted from what it maps.
gone_contacts_table = sa.Table(
    GONE_CONTACTS_TABLE,
    metadata,
    sa.Column("kind", sa.String(16), primary_key=True),
    sa.Column("digest", sa.String(64), primary_key=True),  # sha256 hex of the contact (endpoints are long)
    sa.Column("contact", sa.Text, nullable=False),
    sa.Column("customer_id", sa.String(128)),
    sa.Column("message_key", sa.String(400)),
    sa.Column("detail", sa.Text),
    sa.Column("gone_at", sa.DateTime, nullable=False),
)

#: The codes of the pools of the shop's own coupon codes (engine.yaml ``coupons:``): imported from a CSV file
#: (``engine codes import``) or copied from the pool's warehouse table at every pass. Migration 0004.
coupon_codes_table = sa.Table(
    COUPON_CODES_TABLE,
    metadata,
    sa.Column("pool", sa.String(64), primary_key=True),
    sa.Column("code", sa.String(128), primary_key=True),
    sa.Column("source", sa.Text),  # file:line of the import, or the warehouse table
    sa.Column("imported_at", sa.DateTime, nullable=False),
)

#: Every code handed to a message, claimed in the transaction that claims the message: a code of a pool
#: (pool, code) at most once, a message (message_key) at most one code. Generated codes are kept too,
#: with pool "" (they are unique by construction). Never deleted: a code whose message was not sent
#: stays with it ("burnt"). Migration 0004.
coupon_claims_table = sa.Table(
    COUPON_CLAIMS_TABLE,
    metadata,
    sa.Column("pool", sa.String(64), primary_key=True),
    sa.Column("code", sa.String(128), primary_key=True),
    sa.Column("message_key", sa.String(400), nullable=False),
    sa.Column("customer_id", sa.String(128), nullable=False),
    sa.Column("campaign", sa.String(64), nullable=False),
    sa.Column("step", sa.String(64), nullable=False),
    sa.Column("claimed_at", sa.DateTime, nullable=False),
    sa.UniqueConstraint("message_key", name="engine_coupon_claims_message"),
)

#: Customers' responses to messages (opens, clicks, scans, deliveries, bounces, complaints), one row per
#: event, recorded once: ``event_id`` is the dedupe key (a provider's event id, or a tracking event's own).
#: The message's customer, campaign, step, variant and channel are copied from its ledger row when the
#: event is recorded, so response attributes join without the ledger. Migration 0005.
events_table = sa.Table(
    EVENTS_TABLE,
    metadata,
    sa.Column("event_id", sa.String(200), primary_key=True),
    sa.Column("message_key", sa.String(400), nullable=False),
    sa.Column("customer_id", sa.String(128), nullable=False),
    sa.Column("campaign", sa.String(64), nullable=False),
    sa.Column("step", sa.String(64), nullable=False),
    sa.Column("variant", sa.String(64)),
    sa.Column("channel", sa.String(64)),
    sa.Column("type", sa.String(16), nullable=False),
    sa.Column("machine", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("provider", sa.String(32)),
    sa.Column("url", sa.Text),
    sa.Column("detail", sa.Text),
    sa.Column("occurred_at", sa.DateTime, nullable=False),
    sa.Column("recorded_at", sa.DateTime, nullable=False),
    sa.Index("engine_events_customer", "customer_id"),
    sa.Index("engine_events_campaign", "campaign", "step"),
    sa.Index("engine_events_message", "message_key"),
    sa.Index("engine_events_occurred", "occurred_at"),
)

#: The incremental pass's bookkeeping (engine.run.incremental), one row per source whose per-customer facts
#: the engine keeps in its own table: how far its change column was read (``watermark``, the warehouse's
#: value), the instant the kept facts are exact at (``facts_at``), when they were last rebuilt whole
#: (``built_at``), what they were built from (``fingerprint`` of the mapping) and what the last refresh read.
#: Migration 0006.
watermarks_table = sa.Table(
    WATERMARKS_TABLE,
    metadata,
    sa.Column("source", sa.String(32), primary_key=True),
    sa.Column("watermark", sa.DateTime),
    sa.Column("facts_at", sa.DateTime, nullable=False),
    sa.Column("built_at", sa.DateTime, nullable=False),
    sa.Column("fingerprint", sa.String(64), nullable=False),
    sa.Column("rows_read", sa.BigInteger, nullable=False),
    sa.Column("customers_touched", sa.BigInteger, nullable=False),
)

#: The settle stage's memory (engine.run.settle.worth_settling), one row per campaign: the instant of the
#: last pass that planned it (``settled_at``) and how many settled skips (stale, stopped, no_variant) that
#: pass found, in SQL or row by row (``found``), so that a new process decides as a running one would.
#: Migration 0007.
settled_table = sa.Table(
    SETTLED_TABLE,
    metadata,
    sa.Column("campaign", sa.String(64), primary_key=True),
    sa.Column("settled_at", sa.DateTime, nullable=False),
    sa.Column("found", sa.BigInteger, nullable=False),
)
