"""JSON Schema validation of loaded YAML documents, every error collected.

Owns jsonschema. Each error becomes an ``Issue`` at the line and column of
the offending value (of its key, for a keyed value; for an unexpected key:
the key itself), with the schema's own description as the fix, so the schema
that drives editor autocompletion also writes the error messages.
"""
from __future__ import annotations

import difflib
import json
import re
from functools import lru_cache
from pathlib import Path

import jsonschema

from engine.errors import Issue
from engine.spec.load import Document

_PACKAGE = Path(__file__).resolve().parent.parent  # engine/
_SOURCE_SCHEMAS = _PACKAGE.parent / "schema"
_INSTALLED_SCHEMAS = _PACKAGE / "schema"  # a wheel carries schema/ as engine/schema/
SCHEMA_DIR = _SOURCE_SCHEMAS if (_SOURCE_SCHEMAS / "campaign.schema.json").is_file() else _INSTALLED_SCHEMAS


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
        issues += _to_issues(doc, error, validator.schema)
    issues.sort(key=lambda i: (i.line or 0, i.column or 0))
    return issues


#: JSON Schema types in the words of a YAML author.
_TYPE_WORDS = {
    "object": "a mapping (key: value)",
    "array": "a list (- item)",
    "string": "a string",
    "integer": "a whole number",
    "number": "a number",
    "boolean": "true or false",
    "null": "nothing",
}


def _to_issues(doc: Document, error: jsonschema.ValidationError, root: dict) -> list[Issue]:
    path = tuple(error.absolute_path)
    schema = error.schema if isinstance(error.schema, dict) else {}
    fix = schema.get("description", "")
    message = error.message
    instance = error.instance
    if error.validator == "additionalProperties" and isinstance(instance, dict):
        allowed = sorted(schema.get("properties", {}))
        extra = [k for k in instance if k not in allowed]
        if extra:
            return [doc.issue(path + (key,), f"unknown key '{key}'" + _did_you_mean(str(key), allowed),
                              fix="allowed keys here: " + ", ".join(allowed) if allowed else "remove it")
                    for key in extra]
    elif error.validator == "required" and isinstance(instance, dict):
        missing = [k for k in error.validator_value if k not in instance and repr(k) in error.message]
        if missing:
            key = missing[0]
            message = f"missing required key '{key}'"
            about = _description(schema.get("properties", {}).get(key, {}), root)
            fix = f"add {key}: here" + (f" ({about})" if about else "")
    elif error.validator == "type":
        message, fix = _type_problem(doc, path, error, fix)
    elif error.validator == "pattern":
        message = f"{instance!r} has the wrong format: " + pattern_words(error.validator_value, instance, schema)
    elif error.validator in ("minProperties", "maxProperties") and "properties" in schema:
        kinds = ", ".join(sorted(schema["properties"]))
        if error.validator == "maxProperties" and isinstance(instance, dict) and len(instance) > 1:
            keys = list(instance)
            path = path + (keys[1],)
            message = f"only one of {kinds} is allowed here, found {len(keys)}: " + ", ".join(map(str, keys))
        else:
            message = "exactly one of " + kinds + " is required"
    return [doc.issue(path, message, fix=fix or f"see schema/{root.get('$id', '').rsplit('/', 1)[-1]} for what is allowed here")]


def pattern_words(pattern: str, value, schema: dict | None = None) -> str:
    """The format a schema ``pattern`` asks for, in words, with a valid example (made from ``value`` where
    it can be: 'Bad Name!' -> 'bad-name'); a pattern not described here is quoted as it is."""
    text = value if isinstance(value, str) else str(value)
    for test, words, example in _PATTERN_WORDS:
        if test(pattern):
            return f"{words}, e.g. {example(text)!r}"
    examples = (schema or {}).get("examples") or []
    return f"it must match the regular expression {pattern}" + (f", e.g. {examples[0]!r}" if examples else "")


def _slug(text: str) -> str:
    slug = re.sub(r"[^a-z0-9_-]+", "-", text.lower()).strip("-_")[:64].rstrip("-_")
    return slug or "second-order"


def _identifier(text: str) -> str:
    """'coupon code' -> 'coupon_code', '1st' -> '_1st': a name SQL takes unquoted."""
    name = re.sub(r"[^A-Za-z0-9_]+", "_", text).strip("_")
    return "_" + name if name[:1].isdigit() else name


_UNITS = {"second": "s", "sec": "s", "minute": "m", "min": "m", "hour": "h", "day": "d", "week": "w"}


def _duration_example(text: str, signed: bool = False) -> str:
    """'7 days' -> '7d', '1 day 12 hours' -> '1d12h'; anything else -> a plain example."""
    parts = re.findall(r"(\d+)\s*([a-z]+)", text.lower())
    converted = "".join(f"{n}{_UNITS[u.rstrip('s')]}" for n, u in parts if u.rstrip("s") in _UNITS)
    if parts and len(converted) and all(u.rstrip("s") in _UNITS for _, u in parts):
        return ("-" if signed and text.strip().startswith("-") else "") + converted
    return "-3d" if signed and text.strip().startswith("-") else "7d"


_DURATION_WORDS = ("a whole number and a unit - s (seconds), m (minutes), h (hours), d (days) or w (weeks) - "
                   "several combined as in 1d12h")

#: (does this describe the pattern?, the format in words, a valid example from the bad value)
_PATTERN_WORDS = (
    (lambda p: p == "^[a-z0-9][a-z0-9_-]*$",
     "lowercase letters a-z, digits 0-9, '-' and '_', starting with a letter or digit", _slug),
    (lambda p: p.startswith("^\\s*-?") and "[wdhms]" in p,
     _DURATION_WORDS + ", with a leading '-' for before the date", lambda t: _duration_example(t, signed=True)),
    (lambda p: "[wdhms]" in p, _DURATION_WORDS, _duration_example),
    (lambda p: p == "^([01]\\d|2[0-3]):[0-5]\\d$", "a 24-hour clock time HH:MM", lambda t: "09:00"),
    (lambda p: p == "^[A-Z0-9-]*$", "capital letters A-Z, digits 0-9 and '-'",
     lambda t: re.sub(r"[^A-Z0-9-]+", "-", t.upper()).strip("-")[:16] or "BDAY-"),
    (lambda p: "[KkMmGgTt]" in p, "a number and a unit: KB, MB, GB or TB (or KiB, MiB, ...)", lambda t: "512MB"),
    (lambda p: p.startswith("^\\s*(ref|source)"), "a dbt reference: ref('model') or source('source', 'table')",
     lambda t: f'ref("{_slug(t).replace("-", "_")}")'),
    (lambda p: p == "^[A-Za-z0-9_-]{1,32}$", "1 to 32 letters A-Z or a-z, digits 0-9, '-' and '_'",
     lambda t: (re.sub(r"[^A-Za-z0-9_-]+", "-", t).strip("-")[:32] or "topic")),
    (lambda p: p == "^[A-Za-z_][A-Za-z0-9_]*$", "a column name: letters, digits and '_', not starting with a digit",
     lambda t: _identifier(t) or "code"),
    (lambda p: p.startswith("^[A-Za-z_][A-Za-z0-9_]*(\\."), "a table name, or schema.table: letters, digits and '_'",
     lambda t: ".".join(filter(None, map(_identifier, t.split(".")[:3]))) or "coupon_codes"),
    (lambda p: p == "^[A-Za-z]{2}$", "a two-letter ISO 3166 country code", lambda t: "DE"),
    (lambda p: p == "^[A-Z]{3}$", "a three-letter ISO 4217 currency code in capitals",
     lambda t: (re.sub(r"[^A-Z]+", "", t.upper()) + "EUR")[:3] if len(re.sub(r"[^A-Z]+", "", t.upper())) >= 3 else "EUR"),
)


def _type_problem(doc: Document, path: tuple, error: jsonschema.ValidationError, fix: str) -> tuple[str, str]:
    """'expected a string, found 010, which YAML reads as a number' and how to fix it."""
    types = [error.validator_value] if isinstance(error.validator_value, str) else list(error.validator_value)
    expected = " or ".join(_TYPE_WORDS.get(t, t) for t in types)
    value = error.instance
    scalar = doc.scalars.get(path)
    raw = doc.text[scalar.start:scalar.end].strip() if scalar else ""
    if value is None:
        found = "nothing"
    elif isinstance(value, dict):
        found = "a mapping"
    elif isinstance(value, list):
        found = "a list"
    elif isinstance(value, bool):
        found = f"{raw or value}, which YAML reads as true/false"
    elif isinstance(value, (int, float)):
        found = f"{raw or value}, which YAML reads as a number"
    else:
        found = f"the string {value!r}"
    if "string" in types and isinstance(value, (bool, int, float)) and raw:
        fix = f'quote the value to keep it a string: "{raw}"'
    return f"expected {expected}, found {found}", fix or f"write {expected} here"


def _description(schema: dict, root: dict) -> str:
    """A property's description, following a local ``$ref`` if it has none itself."""
    if "description" not in schema and schema.get("$ref", "").startswith("#/"):
        for part in schema["$ref"][2:].split("/"):
            root = root.get(part, {})
        schema = root
    if "description" not in schema and schema.get("required"):
        return "it needs " + ", ".join(f"{key}:" for key in schema["required"])
    return schema.get("description", "")


def _did_you_mean(name: str, known: list[str]) -> str:
    close = difflib.get_close_matches(name, known, n=2, cutoff=0.6)
    return f" (did you mean {' or '.join(repr(c) for c in close)}?)" if close else ""
