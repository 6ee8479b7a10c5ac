"""Revision 0001: the ledger as the release before versioned migrations created it (commit a504654).

Frozen: the columns, keys and indexes are written out here, not taken from
engine/ledger.py's ``metadata``, so a later change there never rewrites history.
tests/test_ledger_migrations.py proves this revision builds the same tables as
that release's ``create_all`` on DuckDB, SQLite and PostgreSQL.
"""
import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "engine_ledger",
        sa.Column("message_key", sa.String(400), primary_key=True),
        sa.Column("campaign", sa.String(64), nullable=False),
        sa.Column("step", sa.String(64), nullable=False),
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
    )
    op.create_index("engine_ledger_customer", "engine_ledger", ["customer_id", "updated_at"])
    op.create_index("engine_ledger_status", "engine_ledger", ["status", "next_attempt_at"])
    op.create_table(
        "engine_entries",
        sa.Column("campaign", sa.String(64), primary_key=True),
        sa.Column("customer_id", sa.String(128), primary_key=True),
        sa.Column("trigger_key", sa.String(128), primary_key=True),
        sa.Column("entered_at", sa.DateTime, nullable=False),
    )
    op.create_table(
        "engine_tags",
        sa.Column("customer_id", sa.String(128), primary_key=True),
        sa.Column("tag", sa.String(64), primary_key=True),
        sa.Column("campaign", sa.String(64)),
        sa.Column("set_at", sa.DateTime, nullable=False),
    )
    op.create_table(
        "engine_suppressions",
        sa.Column("kind", sa.String(16), primary_key=True),
        sa.Column("address", sa.String(320), primary_key=True),
        sa.Column("reason", sa.String(32), nullable=False),
        sa.Column("detail", sa.Text),
        sa.Column("created_at", sa.DateTime, nullable=False),
    )
    op.create_table(
        "engine_unsubscribes",
        sa.Column("customer_id", sa.String(128), primary_key=True),
        sa.Column("kind", sa.String(16), primary_key=True),
        sa.Column("source", sa.String(32)),
        sa.Column("created_at", sa.DateTime, nullable=False),
    )


def downgrade() -> None:
    raise NotImplementedError("the engine never downgrades a ledger; restore a backup to go back")
