"""The project as files: engine.yaml, campaigns.d/ and templates/ -> a validated ``Project``.

Owns loading YAML with positions, JSON Schema checks and every semantic check (a trigger's own
checks through its kind in ``engine.sql.triggers``; the filter language is ``engine.sql``'s).
Must not touch a database or send anything; errors are ``Issue`` values with file:line:col and a fix.
"""
