"""JSON Schema validation of loaded YAML documents, every error collected.

Owns jsonschema. Each error becomes an ``Issue`` at the line and column of
the offending value (for an unexpected key: the key itself), with the
schema's own description as the fix, so the schema that drives editor
autocompletion also writes the error messages.
"""
from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

import jsonschema

from .errors import Issue
from .load import Document

SCHEMA_DIR = Path(__file__).resolve().parent.parent / "schema"


@lru_cache(maxsize=None)
def _validator(name: str) -> jsonschema.protocols.Validator:
    schema = json.loads((SCHEMA_DIR / name).read_text(encoding="utf-8"))
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema)


def schema_issues(doc: Document, schema_name: str) -> list[Issue]:
    """All schema violations of ``doc`` against ``schema/<schema_name>``, in document order."""
    if doc.data is None:
        return [doc.issue((), "the file is empty", fix="see schema/" + schema_name + " for the expected keys")]
    validator = _validator(schema_name)
    issues = []
    for error in validator.iter_errors(doc.data):
        issues.append(_to_issue(doc, error))
    issues.sort(key=lambda i: (i.line or 0, i.column or 0))
    return issues


def _to_issue(doc: Document, error: jsonschema.ValidationError) -> Issue:
    path = tuple(error.absolute_path)
    schema = error.schema if isinstance(error.schema, dict) else {}
    fix = schema.get("description", "")
    message = error.message
    if error.validator == "additionalProperties" and isinstance(error.instance, dict):
        allowed = sorted(schema.get("properties", {}))
        extra = [k for k in error.instance if k not in allowed]
        if extra:
            path = path + (extra[0],)
            message = f"unknown key '{extra[0]}'"
            fix = "allowed keys here: " + ", ".join(allowed) if allowed else fix
    elif error.validator == "required":
        fix = fix or "add the missing key"
    elif error.validator == "pattern":
        message = f"{error.instance!r} has the wrong format"
    elif error.validator in ("minProperties", "maxProperties") and "properties" in schema:
        message = "exactly one of " + ", ".join(sorted(schema["properties"])) + " is required"
    return doc.issue(path, message, fix=fix)
