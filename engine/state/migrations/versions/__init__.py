"""The ledger's revisions, one alembic script each (loaded by alembic, never imported by the engine)."""
