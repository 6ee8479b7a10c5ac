"""Revision 0008: on DuckDB the ledger has no (status, next_attempt_at) index (issue 15: cheaper hand-over).

DuckDB updates a row whose indexed column changes as a delete and an insert of the whole row: every
outcome (claimed -> sent) rewrote the row with its stored content (kilobytes), twice what the UPDATE
said. And DuckDB reads no query through that composite index (its scans of status are sequential,
pruned by the row groups' statistics), so there it costs every write and serves no read. The other
databases keep it (``Dialect.ledger_status_index``): their retry and recovery queries use it.
"""
from alembic import op

from engine.dialects import dialect_of_backend

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    if not dialect_of_backend(op.get_bind().dialect.name).ledger_status_index:
        # IF EXISTS: a ledger whose index someone dropped by hand (or a test's hand-made older ledger) upgrades too
        op.drop_index("engine_ledger_status", table_name="engine_ledger", if_exists=True)


def downgrade() -> None:
    raise NotImplementedError("the engine never downgrades a ledger; restore a backup to go back")
