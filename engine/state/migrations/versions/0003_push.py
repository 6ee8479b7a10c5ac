"""Revision 0002 (web push): contacts a provider reported gone, so they are never sent to again.

A push service answers 404 or 410 for a subscription that no longer exists;
the shop's data is read-only to the engine, so the ledger keeps the removal
(``engine_gone_contacts``, by kind and the sha256 of the contact) and the pass
subtracts it from the subscriptions it maps. Frozen like 0001: the columns
are written out here.
"""
import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "engine_gone_contacts",
        sa.Column("kind", sa.String(16), primary_key=True),
        sa.Column("digest", sa.String(64), primary_key=True),
        sa.Column("contact", sa.Text, nullable=False),
        sa.Column("customer_id", sa.String(128)),
        sa.Column("message_key", sa.String(400)),
        sa.Column("detail", sa.Text),
        sa.Column("gone_at", sa.DateTime, nullable=False),
    )


def downgrade() -> None:
    raise NotImplementedError("the engine never downgrades a ledger; restore a backup to go back")
