"""Revision 0009 (issue 15: a cheaper hand-over): the rendered content in ``engine_ledger_content``.

A message's content (the hand-over, ~4.6 KB per email) was an UPDATE of its ledger row; on DuckDB and
SQLite an UPDATE that rewrites a wide row, 0.23-0.3 ms per email of a pass, against 0.05 for an INSERT
into a narrow table. Here the content is appended to its own table, one row per message handed over,
never updated: ``message_key`` (the ledger row's key), ``content`` and ``stored_at`` (when it was handed
over). The contents of the ledger rows are moved across (one ``INSERT ... SELECT``, ``stored_at`` their
row's last update) and emptied in ``engine_ledger``: its ``content`` column stays (always NULL, unused),
since DuckDB cannot drop a column of a table with constraints. Frozen like 0001: the columns are
written out here.
"""
import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "engine_ledger_content",
        sa.Column("message_key", sa.String(400), primary_key=True),
        sa.Column("content", sa.Text, nullable=False),
        sa.Column("stored_at", sa.DateTime, nullable=False),
    )
    op.execute("INSERT INTO engine_ledger_content (message_key, content, stored_at) "
               "SELECT message_key, content, updated_at FROM engine_ledger WHERE content IS NOT NULL")
    op.execute("UPDATE engine_ledger SET content = NULL WHERE content IS NOT NULL")


def downgrade() -> None:
    raise NotImplementedError("the engine never downgrades a ledger; restore a backup to go back")
