"""The import contracts of pyproject.toml ([tool.importlinter]) hold, and they can fail.

import-linter (as kopf runs it) checks the layers, the independent siblings,
that no sibling modules import each other in a cycle and that only the command
line imports click; its graph counts every import statement, top-level or
inside a function. It has no contract for private names, so the last tests do
that with the AST: no module of engine/ imports a name with a leading
underscore from another module (tests may).
"""
from __future__ import annotations

import ast
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

import engine

PACKAGE = Path(engine.__file__).resolve().parent
ROOT = PACKAGE.parent  # the checkout whose engine/ the tests import
CONFIG = Path(__file__).resolve().parents[1] / "pyproject.toml"


def lint(root: Path) -> subprocess.CompletedProcess:
    """import-linter's command line over the engine/ package found in ``root``, with this checkout's contracts."""
    return subprocess.run(
        [sys.executable, "-c", "from importlinter.cli import lint_imports_command; lint_imports_command()",
         str(CONFIG), "--no-cache", "--no-logo"],
        cwd=root, env={**os.environ, "PYTHONPATH": str(root)}, capture_output=True, text=True, timeout=120)


def copy_engine(tmp_path: Path) -> Path:
    """A copy of engine/ to inject a forbidden import into."""
    copy = tmp_path / "engine"
    shutil.copytree(PACKAGE, copy, ignore=shutil.ignore_patterns("__pycache__"))
    return copy


def status(output: str, contract: str) -> str:
    """KEPT or BROKEN: what import-linter's summary says of the contract whose name contains ``contract``."""
    summary = " ".join(output.split("Contracts:")[0].split())
    found = re.search(re.escape(contract) + r"(?:(?!KEPT|BROKEN).)* (KEPT|BROKEN)", summary)
    assert found, f"no contract named ...{contract}... in:\n{output}"
    return found.group(1)


def test_the_engine_keeps_every_import_contract():
    result = lint(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout
    contracts = tomllib.loads(CONFIG.read_text())["tool"]["importlinter"]["contracts"]
    assert f"{len(contracts)} kept" in result.stdout  # every contract of pyproject.toml ran


@pytest.mark.parametrize("module, statement, broken, reported", [
    # upward: the SQL compiler reaching for the command line (inside a function: still an import)
    ("sql/compile.py", "def _upward():\n    from engine.cli import main\n", "each package imports only the packages below it",
     "engine.sql.compile -> engine.cli.main"),
    # a foundation module importing a layer above it
    ("clock.py", "from engine.spec.config import resolve\n", "each package imports only the packages below it",
     "engine.clock -> engine.spec.config"),
    # siblings of an independent layer: one tool importing another
    ("tools/explain.py", "from engine.tools.export import export_plan\n", "none imports another",
     "engine.tools.explain -> engine.tools.export"),
    # a command module reaching into the command line again (the cycle this contract ended)
    ("cli/stats.py", "from engine.cli.main import main\n", "main registers the commands",
     "engine.cli.stats -> engine.cli.main"),
    ("cli/common.py", "from engine.cli.explain import explain\n", "main registers the commands",
     "engine.cli.common -> engine.cli.explain"),
    ("channels/base.py", "from engine.channels.smtp import SmtpChannel\n", "each transport is independent",
     "engine.channels.base -> engine.channels.smtp"),
    # the state layer reaching up into the pass
    ("state/ledger.py", "from engine.run.policies import PolicyState\n", "each package imports only the packages below it",
     "engine.state.ledger -> engine.run.policies"),
    # the command line's library below the command line
    ("service/reload.py", "import click\n", "only the command line", "engine.service.reload -> click"),
    # one trigger kind reaching into another (each kind is one independent module)
    ("sql/triggers/event.py", "from engine.sql.triggers.order_placed import OrderPlaced\n",
     "one independent module per trigger kind", "engine.sql.triggers.event -> engine.sql.triggers.order_placed"),
    # the query parts dispatching on trigger kinds (the due query does that, above the kinds)
    ("sql/compile.py", "def _kinds():\n    from engine.sql.triggers.registry import KINDS\n",
     "the due query over the trigger kinds", "engine.sql.compile -> engine.sql.triggers.registry"),
    # the pure core doing I/O
    ("sql/filters.py", "import sqlalchemy\n", "do no I/O", "engine.sql.filters -> sqlalchemy"),
])
def test_a_forbidden_import_breaks_a_contract(tmp_path, module, statement, broken, reported):
    """Each contract fails on a copy of engine/ with one forbidden import added, and names that import."""
    copy = copy_engine(tmp_path)
    target = copy / module
    target.write_text(target.read_text() + "\n" + statement)
    result = lint(tmp_path)
    assert result.returncode == 1, result.stdout + result.stderr
    assert status(result.stdout, broken) == "BROKEN", result.stdout
    assert reported in result.stdout, result.stdout


def test_a_new_module_must_be_placed_in_a_layer(tmp_path):
    """exhaustive: a module that no layer names breaks the contract until it is given its place."""
    copy = copy_engine(tmp_path)
    (copy / "webpush.py").write_text('"""A new channel kind."""\n')
    result = lint(tmp_path)
    assert result.returncode == 1 and "engine.webpush" in result.stdout, result.stdout


def test_a_cycle_between_modules_breaks_the_contracts(tmp_path):
    """A module importing, inside a function, one that imports it is a cycle (as compile -> validate -> config ->
    compile was before the filter attributes moved to engine.sql.filter_types)."""
    copy = copy_engine(tmp_path)
    config = copy / "spec" / "config.py"
    config.write_text(config.read_text() + "\ndef _late():\n    from .validate import campaign_files\n")
    result = lint(tmp_path)
    assert result.returncode == 1, result.stdout
    assert status(result.stdout, "no import cycles") == "BROKEN", result.stdout
    assert ".config -> .validate" in result.stdout or ".validate -> .config" in result.stdout, result.stdout


def private_imports(package: Path) -> list[str]:
    """``module: name`` for every private name (one leading underscore) a module of ``package`` takes from
    another of its modules: ``from .x import _y``, ``from . import _y`` of a module's attribute, ``x._y``
    after ``from . import x`` or ``import package.x as x``. Function-level imports count."""
    root = package.name
    modules = {}
    for path in package.rglob("*.py"):
        parts = list(path.relative_to(package.parent).with_suffix("").parts)
        is_package = parts[-1] == "__init__"
        modules[".".join(parts[:-1] if is_package else parts)] = (path, is_package)
    found = []
    for name, (path, is_package) in sorted(modules.items()):
        here = name if is_package else name.rpartition(".")[0]
        tree = ast.parse(path.read_text(), str(path))
        aliases: dict[str, str] = {}
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    prefix = here.split(".")[: len(here.split(".")) - node.level + 1]
                    base = ".".join(prefix + ([node.module] if node.module else []))
                if base != root and not base.startswith(root + "."):
                    continue
                for alias in node.names:
                    if f"{base}.{alias.name}" in modules:
                        aliases[alias.asname or alias.name] = f"{base}.{alias.name}"
                    elif _private(alias.name) and base != name:
                        found.append(f"{name}: {base}.{alias.name}")
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name in modules and alias.asname:
                        aliases[alias.asname] = alias.name
        for node in ast.walk(tree):
            if (isinstance(node, ast.Attribute) and _private(node.attr) and isinstance(node.value, ast.Name)
                    and aliases.get(node.value.id, name) != name):
                found.append(f"{name}: {aliases[node.value.id]}.{node.attr}")
    return found


def _private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def test_no_module_imports_a_private_name_of_another():
    assert private_imports(PACKAGE) == []


def test_the_private_name_check_finds_each_form(tmp_path):
    package = tmp_path / "engine"
    (package / "sub").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "sub" / "__init__.py").write_text("")
    (package / "a.py").write_text("_hidden = 1\nshown = 2\n")
    (package / "b.py").write_text("from .a import _hidden, shown\n")
    (package / "c.py").write_text("def f():\n    from . import a\n    return a._hidden + a.shown\n")
    (package / "sub" / "d.py").write_text("import engine.a as a\nfrom ..a import shown\nx = a._hidden\n")
    (package / "e.py").write_text("_own = 1\nprint(_own)\nimport json\njson._private = 1\n")
    assert private_imports(package) == ["engine.b: engine.a._hidden", "engine.c: engine.a._hidden",
                                        "engine.sub.d: engine.a._hidden"]


def test_every_package_of_the_engine_is_installed():
    """pyproject.toml lists the packages a wheel (and an editable install) carries: a new package of
    engine/ missing there would import from a checkout and fail once installed."""
    listed = set(tomllib.loads(CONFIG.read_text())["tool"]["setuptools"]["packages"])
    found = {".".join(path.parent.relative_to(ROOT).parts) for path in PACKAGE.rglob("__init__.py")}
    assert found - listed == set()
