"""Campaign -> SQL: sqlglot ASTs of due rows, segments and lookups, rendered per dialect.

Pure: builds and renders SQL, never executes it (no database drivers, no SQLAlchemy).
"""
