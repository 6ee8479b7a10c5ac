"""Service logs: stdlib ``logging`` with a JSON-lines or a text formatter, personal data redacted.

Owns the log format of ``engine run --interval``. Every record is an *event*
(a dotted name such as ``pass.finished``) with a human message and flat
fields (campaign, step, customer_id, message_key, outcome, duration, ...);
``event()`` is the one way the service writes one. ``configure()`` installs a
single handler on the ``engine`` logger writing to stdout, one line per record,
flushed at once (12-factor: the platform collects stdout).

Personal data is redacted unless ``personal_data`` is on, in two ways. By
structure: a field the engine knows is personal (``PERSONAL_FIELDS``: the
recipient, phone, address and the customer's attributes, plus whatever
``declare_personal`` adds) is logged as ``<redacted>``. By pattern, in every
message and every other field: provider error texts quote the recipient (``550
<jörg.müller@exämple.de> unknown user``, ``invalid number 0151 23456789``), so
email addresses (IDN and non-ASCII too) become ``<email>`` and phone numbers,
international (``+49 ...``, ``0049...``) and national (``0151 ...``, ``(030)
...``, ``555-123-4567``), become ``<phone>`` - while message keys, ids, ISO
timestamps, dates, status codes and durations stay as they are. Secrets are
masked always (masking.mask), personal data or not.
"""
from __future__ import annotations

import json
import logging
import re
import sys
from datetime import datetime, timezone
from typing import IO, Any

from engine.channel_kinds import address_fields, contact_entities, contact_fields
from engine.masking import mask

LOGGER_NAME = "engine"
LEVELS = ("debug", "info", "warning", "error")
FORMATS = ("json", "text")

#: The fields an event may carry, in the order the JSON formatter writes them.
FIELD_ORDER = ("campaign", "step", "channel", "customer_id", "message_key", "outcome", "reason", "duration")

#: An email address, also with a non-ASCII (IDN) local part or domain (``\\w`` is Unicode) and
#: URL-encoded (``%40``).
_EMAIL = re.compile(r"[\w.!#$%&'*+/=?^`{|}~-]+(?:@|%40)[\w-]+(?:\.[\w-]+)+")
#: A phone number, international or national, as providers quote them: digit groups joined by one
#: separator (space, no-break space, . / -) or a parenthesised part such as ``(0)`` or ``(030)``.
#: Candidates end where a word or a longer number would go on (so ids, keys and timestamps are not
#: cut into numbers) and are kept only with a phone's count of digits and not a date's shape
#: (``_is_phone``).
_SEP = r"[ \u00a0./-]"
_PHONE = re.compile(
    r"(?:(?<![\w+.-])(?:\+|00(?=[1-9]))\d+(?:(?:" + _SEP + r"|[ \u00a0]?\(\d{1,4}\)[ \u00a0]?)\d+)*"  # +49 (0)151 2345-6789
    r"|(?<![\w.:/+-])(?:\(0\d{1,5}\)[ \u00a0]?\d+|0[1-9]\d*)(?:" + _SEP + r"\d+)*"  # 0151 23456789, (030) 1234567
    r"|(?<![\w.:/+-])\(\d{2,5}\)[ \u00a0]?\d+(?:" + _SEP + r"\d+)*"                # (555) 123-4567
    r"|(?<![\w.:/+-])\d{3}[ .-]\d{3}[ .-]\d{4})"                                 # 555-123-4567
    r"(?![\w-]|[./:]\d)"
)
#: dd.mm.yyyy, yyyy-mm-dd and similar: dates, never phone numbers
_DATE = re.compile(r"\d{1,4}([./-])\d{1,2}\1\d{1,4}")
#: Fields whose values are personal data whatever they hold: the recipient, each channel kind's
#: contact field and the customer's attributes (``declare_personal`` adds the project's mapped
#: customer columns).
PERSONAL_FIELDS = frozenset({"to", "recipient", *contact_fields(), *contact_entities(), *address_fields(), "address", "first_name",
                             "last_name", "name", "customer", "birthday", "street", "city", "zip", "postal_code"})
REDACTED = "<redacted>"
_personal_fields: set[str] = set(PERSONAL_FIELDS)

logger = logging.getLogger(LOGGER_NAME)


def _is_phone(number: str) -> bool:
    """At least 7 digits (at most 16 in one unbroken run: longer ones are ids), and not a date."""
    digits = sum(ch.isdigit() for ch in number)
    if digits < 7 or _DATE.fullmatch(number.strip("()")):
        return False
    return digits <= 16 or not number.isdigit()


_NO_DIGITS = str.maketrans("", "", "0123456789")


def redact(text: str) -> str:
    """``text`` with email addresses and phone numbers replaced by ``<email>`` / ``<phone>``."""
    if "@" in text or "%40" in text:
        text = _EMAIL.sub("<email>", text)
    if len(text) - len(text.translate(_NO_DIGITS)) < 7:  # no phone number without 7 digits (most fields)
        return text
    return _PHONE.sub(lambda m: "<phone>" if _is_phone(m.group(0)) else m.group(0), text)


#: The engine's own event fields: never personal, whatever a project names its customer columns.
ENGINE_FIELDS = frozenset(FIELD_ORDER) | {"detail", "status", "kind", "files", "campaigns", "file", "line", "column",
                                          "fix", "host", "port", "interval", "now", "sent", "skipped", "failed", "due",
                                          "errors"}


def declare_personal(names) -> None:
    """Also treat fields with these names (a project's customer attributes) as personal data."""
    _personal_fields.update(n for n in names if n not in ENGINE_FIELDS)


def _redact_field(name: str, value: Any) -> Any:
    if name in _personal_fields and value not in (None, ""):
        return REDACTED
    return _map_strings(value, redact)


class _MaskSecrets(logging.Filter):
    """Every record, always (even with personal data on): URL credentials and resolved secrets masked."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = mask(record.getMessage())
        record.args = None
        fields = getattr(record, "fields", None)
        if fields:
            record.fields = {k: _map_strings(v, mask) for k, v in fields.items()}
        return True


def _map_strings(value: Any, function) -> Any:
    if isinstance(value, str):
        return function(value)
    if isinstance(value, (list, tuple)):
        return [_map_strings(v, function) for v in value]
    if isinstance(value, dict):
        return {k: _map_strings(v, function) for k, v in value.items()}
    return value


class _RedactPersonalData(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = redact(record.getMessage())
        record.args = None
        fields = getattr(record, "fields", None)
        if fields:
            record.fields = {k: _redact_field(k, v) for k, v in fields.items()}
        return True


def _timestamp(record: logging.LogRecord) -> str:
    instant = datetime.fromtimestamp(record.created, timezone.utc)
    return instant.isoformat(timespec="milliseconds").replace("+00:00", "Z")


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, event, message, then the event's fields."""

    def format(self, record: logging.LogRecord) -> str:
        fields = dict(getattr(record, "fields", {}) or {})
        line: dict[str, Any] = {
            "ts": _timestamp(record),
            "level": record.levelname.lower(),
            "event": getattr(record, "event", record.name),
            "message": record.getMessage(),
        }
        for name in FIELD_ORDER:
            if name in fields:
                line[name] = fields.pop(name)
        line.update(fields)
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    """``ts LEVEL message [field=value ...]`` for people at a terminal."""

    def format(self, record: logging.LogRecord) -> str:
        fields = getattr(record, "fields", {}) or {}
        extra = " ".join(f"{k}={_text_value(v)}" for k, v in fields.items() if v is not None)
        text = f"{_timestamp(record)} {record.levelname:<7} {record.getMessage()}"
        return f"{text}  [{extra}]" if extra else text


def _text_value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3f}"
    text = ",".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)
    return json.dumps(text) if (" " in text or not text) else text


def configure(level: str = "info", fmt: str = "text", personal_data: bool = False,
              stream: IO[str] | None = None) -> logging.Logger:
    """Route the ``engine`` logger to ``stream`` (stdout) in ``fmt``; idempotent."""
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
    handler = logging.StreamHandler(stream or sys.stdout)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    handler.addFilter(_MaskSecrets())
    if not personal_data:
        handler.addFilter(_RedactPersonalData())
    logger.addHandler(handler)
    logger.setLevel(level.upper())
    logger.propagate = False
    return logger


def event(name: str, message: str, level: int = logging.INFO, **fields: Any) -> None:
    """Log event ``name`` with a human ``message`` and flat ``fields`` (None values are dropped)."""
    if logger.isEnabledFor(level):
        logger.log(level, message, extra={"event": name, "fields": {k: v for k, v in fields.items() if v is not None}})
