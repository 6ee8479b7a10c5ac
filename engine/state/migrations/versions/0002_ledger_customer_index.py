"""Revision 0002: the per-customer index of the ledger is on ``customer_id`` alone (issue 15: flat writes).

It was ``(customer_id, updated_at)``: every hand-over and every outcome changes ``updated_at``, so each
moved the row's entry in that index - one random leaf of an index as big as the ledger, read and
written twice per message. With ``customer_id`` alone a row's entry is written once, at its claim.
Its readers (frequency caps, a customer's history) look up a list of customers and filter their few
rows by time. Built again on an existing ledger at upgrade: one sort of the ledger's customer ids.
"""
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.drop_index("engine_ledger_customer", table_name="engine_ledger")
    op.create_index("engine_ledger_customer", "engine_ledger", ["customer_id"])


def downgrade() -> None:
    raise NotImplementedError("the engine never downgrades a ledger; restore a backup to go back")
