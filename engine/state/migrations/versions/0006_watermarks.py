"""Revision 0006 (incremental pass): ``engine_watermarks``, how far each source's change column was read.

One row per source whose per-customer facts the engine keeps in its own table (engine.run.incremental).
Frozen like 0001: the columns are written out here.
"""
import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "engine_watermarks",
        sa.Column("source", sa.String(32), primary_key=True),
        sa.Column("watermark", sa.DateTime),
        sa.Column("facts_at", sa.DateTime, nullable=False),
        sa.Column("built_at", sa.DateTime, nullable=False),
        sa.Column("fingerprint", sa.String(64), nullable=False),
        sa.Column("rows_read", sa.BigInteger, nullable=False),
        sa.Column("customers_touched", sa.BigInteger, nullable=False),
    )


def downgrade() -> None:
    raise NotImplementedError("the engine never downgrades a ledger; restore a backup to go back")
