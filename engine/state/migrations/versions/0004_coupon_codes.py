"""Revision 0004 (coupon codes): pools of the shop's own codes and every code handed to a message.

``engine_coupon_codes`` holds a pool's codes (imported from a CSV file, or copied
from the pool's warehouse table at every pass); ``engine_coupon_claims`` the code
each message got, claimed in the transaction that claims the message: the primary
key (pool, code) hands a code out at most once, the unique message key gives a
message at most one. Frozen like 0001: the columns are written out here.
"""
import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "engine_coupon_codes",
        sa.Column("pool", sa.String(64), primary_key=True),
        sa.Column("code", sa.String(128), primary_key=True),
        sa.Column("source", sa.Text),
        sa.Column("imported_at", sa.DateTime, nullable=False),
    )
    op.create_table(
        "engine_coupon_claims",
        sa.Column("pool", sa.String(64), primary_key=True),
        sa.Column("code", sa.String(128), primary_key=True),
        sa.Column("message_key", sa.String(400), nullable=False),
        sa.Column("customer_id", sa.String(128), nullable=False),
        sa.Column("campaign", sa.String(64), nullable=False),
        sa.Column("step", sa.String(64), nullable=False),
        sa.Column("claimed_at", sa.DateTime, nullable=False),
        sa.UniqueConstraint("message_key", name="engine_coupon_claims_message"),
    )


def downgrade() -> None:
    raise NotImplementedError("the engine never downgrades a ledger; restore a backup to go back")
