"""Revision 0007 (the settle stage's memory): ``engine_settled``, per campaign the last pass's settled skips.

One row per campaign a pass planned (engine.run.settle.worth_settling): when, and how many stale,
stopped or no_variant skips it found, so that a new process decides whether settling in SQL pays as
a running one does. Frozen like 0001: the columns are written out here.
"""
import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "engine_settled",
        sa.Column("campaign", sa.String(64), primary_key=True),
        sa.Column("settled_at", sa.DateTime, nullable=False),
        sa.Column("found", sa.BigInteger, nullable=False),
    )


def downgrade() -> None:
    raise NotImplementedError("the engine never downgrades a ledger; restore a backup to go back")
