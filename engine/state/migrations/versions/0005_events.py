"""Revision 0005 (responses): ``engine_events``, customers' responses to messages, recorded once.

One row per event (delivered, open, click, scan, bounce, soft bounce, complaint,
undelivered): ``event_id`` is the dedupe key, so a replayed provider webhook or
a pixel loaded twice records nothing new; the message's customer, campaign,
step, variant and channel are copied from its ledger row. Frozen like 0001: the
columns are written out here.
"""
import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "engine_events",
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
    )
    op.create_index("engine_events_customer", "engine_events", ["customer_id"])
    op.create_index("engine_events_campaign", "engine_events", ["campaign", "step"])
    op.create_index("engine_events_message", "engine_events", ["message_key"])
    op.create_index("engine_events_occurred", "engine_events", ["occurred_at"])


def downgrade() -> None:
    raise NotImplementedError("the engine never downgrades a ledger; restore a backup to go back")
