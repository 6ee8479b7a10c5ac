"""Errors and issues: what went wrong, where, and how to fix it.

An ``Issue`` is a value (file, line, column, message, fix) collected by the
loader and validator so that every problem in a project is reported at once.
``EngineError`` is raised when work cannot continue; the CLI turns it into a
one-line ``Error: ...`` and exit code 1. Nothing here does I/O.
"""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Issue:
    """One problem in one file, with a position and a suggested fix."""

    file: str
    message: str
    line: int | None = None
    column: int | None = None
    path: str = ""
    fix: str = ""
    severity: str = "error"  # "error" or "warning"

    def location(self) -> str:
        parts = [self.file]
        if self.line is not None:
            parts.append(str(self.line))
            if self.column is not None:
                parts.append(str(self.column))
        return ":".join(parts)

    def format(self) -> str:
        where = f" (at {self.path})" if self.path else ""
        text = f"{self.location()}: {self.severity}: {self.message}{where}"
        if self.fix:
            text += f"\n    fix: {self.fix}"
        return text

    def as_dict(self) -> dict:
        return {
            "file": self.file,
            "line": self.line,
            "column": self.column,
            "path": self.path,
            "severity": self.severity,
            "message": self.message,
            "fix": self.fix,
        }


class EngineError(Exception):
    """Base class of every error the engine reports to a user."""


@dataclass
class ProjectInvalid(EngineError):
    """The project (engine.yaml, campaigns, templates) has errors."""

    issues: list[Issue] = field(default_factory=list)

    def __str__(self) -> str:
        errors = [i for i in self.issues if i.severity == "error"]
        lines = [f"{len(errors)} error(s) in the project:"]
        lines += [i.format() for i in errors]
        return "\n".join(lines)


class ConfigError(EngineError):
    """A setting is missing or wrong at run time (e.g. an unset env variable)."""


class FilterError(EngineError):
    """A filter expression fails to parse or uses something not allowed.

    ``offset`` is the 0-based position of the offending text in the filter,
    when known, so the validator can point at it in the YAML file.
    """

    def __init__(self, message: str, fix: str = "", offset: int | None = None):
        super().__init__(message)
        self.message = message
        self.fix = fix
        self.offset = offset


class WarehouseError(EngineError):
    """The warehouse or ledger database could not be reached or queried.

    ``reason`` says which (the service counts it, ``engine_warehouse_errors{reason}``): ``timeout``
    (a statement ran longer than engine.yaml's warehouse.statement_timeout), ``unreachable`` (no
    connection, or it was lost) or ``query`` (the database refused or failed the statement).
    """

    REASONS = ("timeout", "unreachable", "query")

    def __init__(self, message: str, reason: str = "query"):
        super().__init__(message)
        self.reason = reason


class TemplateError(EngineError):
    """A message template failed to load or render."""


class ChannelError(EngineError):
    """A channel could not be opened (e.g. SMTP server unreachable)."""
