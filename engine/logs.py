"""Service logs: stdlib ``logging`` with a JSON-lines or a text formatter, personal data redacted.

Owns the log format of ``engine run --interval``. Every record is an *event*
(a dotted name such as ``pass.finished``) with a human message and flat
fields (campaign, step, customer_id, message_key, outcome, duration, ...);
``event()`` is the one way the service writes one. ``configure()`` installs a
single handler on the ``engine`` logger writing to stdout, one line per record,
flushed at once (12-factor: the platform collects stdout).

Email addresses and phone numbers are replaced by ``<email>`` / ``<phone>``
in messages and fields - they reach logs through provider error texts such as
``550 <anna@example.com> unknown user`` - unless ``personal_data`` is on.
"""
from __future__ import annotations

import json
import logging
import re
import sys
from datetime import datetime, timezone
from typing import IO, Any

from .masking import mask

LOGGER_NAME = "engine"
LEVELS = ("debug", "info", "warning", "error")
FORMATS = ("json", "text")

#: The fields an event may carry, in the order the JSON formatter writes them.
FIELD_ORDER = ("campaign", "step", "channel", "customer_id", "message_key", "outcome", "reason", "duration")

_EMAIL = re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)+")
#: International numbers (+49 151 ...), the form channels need; a bare digit run is
#: too often an id or a timestamp to be redacted blindly.
_PHONE = re.compile(r"\+\d[\d ()./-]{6,}\d")

logger = logging.getLogger(LOGGER_NAME)


def redact(text: str) -> str:
    """``text`` with email addresses and phone numbers replaced."""
    return _PHONE.sub("<phone>", _EMAIL.sub("<email>", text))


def _redact_value(value: Any) -> Any:
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, (list, tuple)):
        return [_redact_value(v) for v in value]
    if isinstance(value, dict):
        return {k: _redact_value(v) for k, v in value.items()}
    return value


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
            record.fields = {k: _redact_value(v) for k, v in fields.items()}
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
