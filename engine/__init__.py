"""A declarative, git-native campaign engine for shops.

Public API (the CLI is a thin layer over it):

- ``load_project(dir)`` / ``check_project(dir)``: YAML -> validated ``Project``
- ``due_query(campaign, config, now, exclude_ledger=...)``: the campaign's SQL (sqlglot AST)
- ``Reconciler(project)``: ``.due(now)`` streams the plan, ``.run_once(now)`` sends it
"""
from engine.sql.compile import render_sql
from engine.sql.due import due_query
from engine.errors import EngineError, Issue, ProjectInvalid
from engine.spec.project import check_project, load_project
from engine.run.messages import DueMessage, PassReport
from engine.run.reconcile import Reconciler

__all__ = [
    "DueMessage", "EngineError", "Issue", "PassReport", "ProjectInvalid", "Reconciler",
    "check_project", "due_query", "load_project", "render_sql",
]
__version__ = "0.1.0"
