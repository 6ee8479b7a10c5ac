"""Campaign -> SQL: sqlglot ASTs of due rows, segments and lookups, rendered per dialect.

Owns the filter language (filters, filter_types), the parts of every query (compile), the
trigger kinds (triggers/: one module per kind, and the registry) and the due query
assembled from them (due). Nothing outside triggers/ tells trigger kinds apart.

Pure: builds and renders SQL, never executes it (no database drivers, no SQLAlchemy).
"""
