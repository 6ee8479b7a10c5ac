"""A declarative, git-native campaign engine for shops.

Public API (the CLI is a thin layer over it):

- ``load_project(dir)`` / ``check_project(dir)``: YAML -> validated ``Project``
- ``due_query(campaign, config, now, exclude_ledger=...)``: the campaign's SQL (sqlglot AST)
- ``Reconciler(project)``: ``.due(now)`` streams the plan, ``.run_once(now)`` sends it

The names are imported on first use (PEP 562 ``__getattr__``), not when ``engine`` is: importing any
``engine.*`` module imports this package first, and ``engine --help`` must not pay for sqlglot,
SQLAlchemy and Jinja2 (tests/test_fast_start.py).
"""
from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING

#: public name -> the module that defines it
_PUBLIC = {
    "render_sql": "engine.sql.compile",
    "due_query": "engine.sql.due",
    "EngineError": "engine.errors",
    "Issue": "engine.errors",
    "ProjectInvalid": "engine.errors",
    "check_project": "engine.spec.project",
    "load_project": "engine.spec.project",
    "DueMessage": "engine.run.messages",
    "PassReport": "engine.run.messages",
    "Reconciler": "engine.run.reconcile",
}

if TYPE_CHECKING:  # for type checkers and editors; at run time __getattr__ imports on first use
    from engine.errors import EngineError, Issue, ProjectInvalid
    from engine.run.messages import DueMessage, PassReport
    from engine.run.reconcile import Reconciler
    from engine.spec.project import check_project, load_project
    from engine.sql.compile import render_sql
    from engine.sql.due import due_query

__all__ = sorted(_PUBLIC)
__version__ = "0.1.0"


def __getattr__(name: str):
    module = _PUBLIC.get(name)
    if module is None:
        raise AttributeError(f"module 'engine' has no attribute {name!r}")
    value = getattr(import_module(module), name)
    globals()[name] = value  # the next access is a plain attribute
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_PUBLIC))
