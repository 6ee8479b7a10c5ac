"""Revision 0010: on SQLite the ledger has no index led by the customer (issue 15: flat writes at 10M rows).

``engine_ledger_customer (customer_id)`` took one entry per claim on a random leaf of an index as big as the
ledger: a 500-row claim's commit wrote some hundreds of scattered pages, and at 10M rows that was all of
SQLite's extra write cost (1.46-1.72x of an empty ledger; 1.07-1.10x with the index dropped:
benchmarks/README.md). Where ``Dialect.ledger_customer_index`` is False this revision drops it and adds
``engine_ledger_sends``: (campaign, step, updated_at) of the rows sent or in flight (neither failed nor
skipped) - what the frequency caps and recency windows count -, a partial index whose entries go in at the end
of their step's range (a claim, a hand-over and an outcome set ``updated_at`` to the pass's instant). The caps
seek it once per (campaign, step) to find the steps that sent within their window, then the identity index
(campaign, step, customer_id, trigger_key) at those steps for each customer; re-entry history and one
customer's messages seek the identity index per (campaign, step) the ledger holds
(``ledger_reader.ledger_steps``). The other databases keep the customer index (DuckDB 1.01x, PostgreSQL 1.09x
at 10M rows). Built on an existing ledger at upgrade: one pass over the ledger's rows for the partial index.
"""
from alembic import op

from engine.dialects import dialect_of_backend

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

#: the statuses of a message neither sent nor in flight: ``Ledger.recent_sends`` counts the others. Written
#: NOT IN, as its query is: the query's condition must contain the index's for SQLite to read the index, and
#: NOT IN is no condition the status index can serve (with IN, SQLite's planner read every sent row through it)
NOT_SENDING = ("failed", "skipped")


def upgrade() -> None:
    if dialect_of_backend(op.get_bind().dialect.name).ledger_customer_index:
        return
    # IF EXISTS / IF NOT EXISTS: a ledger whose indexes someone changed by hand upgrades too, and so does one
    # whose recorded version is older than its tables (tests/test_incremental.py sets 0005 back on a ledger at head)
    op.drop_index("engine_ledger_customer", table_name="engine_ledger", if_exists=True)
    statuses = ", ".join(f"'{status}'" for status in NOT_SENDING)
    op.execute(f"CREATE INDEX IF NOT EXISTS engine_ledger_sends ON engine_ledger (campaign, step, updated_at) WHERE status NOT IN ({statuses})")


def downgrade() -> None:
    raise NotImplementedError("the engine never downgrades a ledger; restore a backup to go back")
