"""``engine --help`` and ``engine validate`` start without the modules they do not use (issue 15, point 7).

Structural, not timed: each command runs in a fresh interpreter under ``python -X importtime`` and the test
reads which modules it imported. ``--help`` needs click and the engine's foundation only; ``validate``
also needs what reads and checks a project (YAML, JSON Schema, Jinja2, sqlglot), and never a database
layer, migrations, HTTP or the service's server libraries. What it costs in seconds is printed by
``benchmarks/run.py --start`` as a ratio of a bare interpreter's start in the same run.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import copy_project

#: never imported to print help or to validate a project: databases, migrations, HTTP, the service
NOT_FOR_VALIDATE = ["sqlalchemy", "duckdb", "duckdb_engine", "psycopg", "alembic", "httpx", "waitress",
                    "prometheus_client", "engine.state.warehouse", "engine.state.ledger", "engine.state.migrations",
                    "engine.run", "engine.channels", "engine.service.loop"]
#: parsing only what is not a plain column name: the shipped project's warehouse dialect is never loaded
NOT_FOR_VALIDATE += ["sqlglot.dialects.duckdb", "sqlglot.generators.duckdb", "sqlglot.parsers.duckdb",
                     "phonenumbers"]  # the shipped SMS channel has no default_region to check
#: what reading and checking a project needs (so imported by validate, not by --help)
FOR_VALIDATE = ["yaml", "jsonschema", "jinja2", "sqlglot", "engine.spec.project", "engine.templating.render"]


def imported(*args: str, cwd: Path) -> set[str]:
    """The modules ``python -X importtime -m engine.cli.main ARGS`` imported (exit 0 required)."""
    result = subprocess.run([sys.executable, "-X", "importtime", "-m", "engine.cli.main", *args], cwd=cwd,
                            capture_output=True, text=True, timeout=120, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    assert result.returncode == 0, result.stdout + result.stderr
    modules = {line.rsplit("|", 1)[1].strip() for line in result.stderr.splitlines() if line.startswith("import time:")}
    assert {"click", "engine.cli.common"} <= modules, result.stderr[-2000:]  # the report was read
    return modules


def loaded(modules: set[str], package: str) -> list[str]:
    return sorted(m for m in modules if m == package or m.startswith(package + "."))


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    return copy_project(tmp_path_factory.mktemp("fast-start") / "project")


def test_help_imports_no_library_it_does_not_use(project: Path):
    modules = imported("--help", cwd=project)
    for package in NOT_FOR_VALIDATE + FOR_VALIDATE:
        assert not loaded(modules, package), f"engine --help imported {loaded(modules, package)}"


def test_validate_imports_what_checking_a_project_needs_and_no_database(project: Path):
    modules = imported("validate", cwd=project)
    for package in NOT_FOR_VALIDATE:
        assert not loaded(modules, package), f"engine validate imported {loaded(modules, package)}"
    for package in FOR_VALIDATE:
        assert loaded(modules, package), f"engine validate did not import {package}: did it validate anything?"


def test_a_column_name_validated_without_the_parser_parses_as_that_column_in_every_dialect():
    """``config._plain_column`` skips the parser only for words every supported dialect reads as a
    column: its list of dialect keywords is complete for the installed sqlglot, and the words it
    accepts (the shipped mapping's, and close calls) parse as that column."""
    import re

    import sqlglot
    from sqlglot.dialects.dialect import Dialect
    from sqlglot.tokens import Tokenizer

    from engine.dialects import DIALECTS
    from engine.spec.config import _plain_column

    identifier = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
    assert all(dialect.tokenizer_keywords is not None for dialect in DIALECTS.values())
    words = ["email", "first_name", "customer_id", "created_at", "kunden_nr", "_x1", "Status", "name", "type",
             "select", "order", "date", "timestamp", "sample", "attach", "a-b", "1st", "x y", ""]
    for name in DIALECTS:
        keywords = {k for k in Dialect.get_or_raise(name).tokenizer_class.KEYWORDS if identifier.fullmatch(k)}
        assert keywords - set(Tokenizer.KEYWORDS) <= DIALECTS[name].tokenizer_keywords, (name, keywords - set(Tokenizer.KEYWORDS))
        accepted = [w for w in words if _plain_column(w, name)]
        assert accepted and len(accepted) < len(words) - 5  # the test can fail
        for word in accepted:
            tree = sqlglot.parse_one(word, read=name)
            assert isinstance(tree, sqlglot.exp.Column) and tree.name == word, (name, word, repr(tree))
    assert not _plain_column("email", "a dialect the table does not know")
