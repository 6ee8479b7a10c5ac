"""Revision 0009: the ledger's key columns stored uncompressed where the dialect says so (issue 15: a minute later).

A ledger grown pass after pass holds the campaigns' rows interleaved, so on DuckDB every due query's ledger
anti-join decodes the ``customer_id`` and ``trigger_key`` of the whole ledger (dictionary/FSST strings,
DuckDB's default): a minute later at 1M orders, x1.20 slower with 249k rows interleaved than grouped by
campaign, x1.78 more with ~1M interleaved rows. Stored plain (``Dialect.uncompressed_ledger_columns``) they cost
a few MB more per million rows and are read without decoding: x0.87 and x0.75 (benchmarks/README.md). The copy
needs memory (a 1M-row ledger: more than a 256 MB DuckDB memory_limit). DuckDB takes a column's
compression only in CREATE TABLE, so on such a dialect the table is built again: the same columns, types,
defaults and keys (frozen here as 0001 wrote them), every row copied, the old table dropped with its indexes,
the new one renamed and the indexes the ledger has at 0008 built again - all in the upgrade's one transaction
(migrations.ensure), so a failure or a crash midway leaves the old ledger as it was. Other dialects: nothing.
A new ledger goes through this revision too (every ledger is created by the migrations).
"""
import sqlalchemy as sa
from alembic import op

from engine.dialects import dialect_of_backend

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

LEDGER = "engine_ledger"
REBUILT = "engine_ledger_0009"


def _ledger(name: str) -> sa.Table:
    """engine_ledger's columns and keys as revision 0001 created them (0002-0008 changed only its indexes)."""
    return sa.Table(
        name,
        sa.MetaData(),
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


def upgrade() -> None:
    bind = op.get_bind()
    dialect = dialect_of_backend(bind.dialect.name)
    if not dialect.uncompressed_ledger_columns:
        return
    table = _ledger(REBUILT)
    compiler = bind.dialect.ddl_compiler(bind.dialect, None)
    plain = dialect.uncompressed_ledger_columns
    columns = [compiler.get_column_specification(column)
               + (f" {dialect.uncompressed_column_clause}" if column.name in plain else "") for column in table.columns]
    op.execute(f"CREATE TABLE {REBUILT} ({', '.join([*columns, compiler.create_table_constraints(table)])})")
    names = ", ".join(column.name for column in table.columns)
    op.execute(f"INSERT INTO {REBUILT} ({names}) SELECT {names} FROM {LEDGER}")
    op.drop_table(LEDGER)  # its indexes with it
    op.rename_table(REBUILT, LEDGER)
    op.create_index("engine_ledger_customer", LEDGER, ["customer_id"])  # 0002
    if dialect.ledger_status_index:  # 0008 dropped it where the dialect does not keep it
        op.create_index("engine_ledger_status", LEDGER, ["status", "next_attempt_at"])


def downgrade() -> None:
    raise NotImplementedError("the engine never downgrades a ledger; restore a backup to go back")
