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
