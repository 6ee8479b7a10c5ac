"""The project as files: engine.yaml, campaigns.d/ and templates/ -> a validated ``Project``.

Owns loading YAML with positions, JSON Schema checks, the filter language and every semantic check.
Must not touch a database or send anything; errors are ``Issue`` values with file:line:col and a fix.
"""
