"""The ledger is behind its interfaces: no module outside engine/state/ names a ledger table or runs SQL on
the ledger's database engine (the tools read through ``LedgerReader``, the pass and the service write
through ``LedgerWriter``); ``Ledger`` implements both as declared; a reader runs SELECTs only.

The AST checks come with their own counter-examples, so they are seen to fail.
"""
from __future__ import annotations

import ast
import inspect
import re
from datetime import datetime
from pathlib import Path

import pytest
from sqlglot import exp

import engine
from engine.state import tables
from engine.state.ledger import Ledger, Record
from engine.state.ledger_reader import LedgerReader, messages_relation
from engine.state.ledger_writer import LedgerWriter
from engine.state.warehouse import Database

PACKAGE = Path(engine.__file__).resolve().parent
TABLE_NAMES = sorted(value for name, value in vars(tables).items() if name.endswith("_TABLE"))
TABLE_NAME = re.compile(r"\b(" + "|".join(map(re.escape, TABLE_NAMES)) + r")\b")
#: names that are a ledger table, as a constant or an SQLAlchemy Table
TABLE_OBJECTS = {name for name in vars(tables) if name.endswith("_TABLE")} | {
    "ledger_table", "entries_table", "tags_table", "suppressions_table", "unsubscribes_table", "metadata"}
#: modules outside engine/state/ allowed to import the table names, and why
JOINS_ENGINE_STATE = {
    "sql/compile.py": "the due queries join segment entries, tags and the ledger in SQL (issue 14 point 4)",
    "sql/triggers/at_risk.py": "the at-risk segment's trigger reads and writes its entries in SQL",
    "sql/triggers/segment_entry.py": "the named segment's trigger reads and writes its entries in SQL",
    "sql/shipping.py": "copies the entries and tags a pass's queries join into the warehouse session (point 4)",
    "run/ledger_state.py": "chooses which of those copies a pass needs, read through the ledger's reader",
}


def _docstrings(tree: ast.AST) -> set[int]:
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                found.add(id(first.value))
    return found


def _dotted(node: ast.AST) -> str:
    return ast.unparse(node)


def violations(source: str, module: str = "tools/x.py") -> list[str]:
    """What in ``source`` (a module of engine/ outside engine/state/) reaches past the ledger's interfaces."""
    tree = ast.parse(source)
    docstrings = _docstrings(tree)
    parents = {id(child): node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
            if TABLE_NAME.search(node.value):
                found.append(f"line {node.lineno}: names a ledger table: {node.value!r}")
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("engine.state"):
            names = {alias.name for alias in node.names}
            if node.module == "engine.state.ledger_tables" or (names & TABLE_OBJECTS and module not in JOINS_ENGINE_STATE):
                found.append(f"line {node.lineno}: imports the ledger's tables: {ast.unparse(node)}")
        elif isinstance(node, ast.Attribute) and node.attr == "db" and "ledger" in _dotted(node.value).lower():
            parent = parents.get(id(node))
            if not (isinstance(parent, ast.Attribute) and parent.attr == "dispose"):  # closing it runs no SQL
                found.append(f"line {node.lineno}: reaches the ledger's database: {_dotted(node)}")
    return found


def engine_modules_outside_state():
    for path in sorted(PACKAGE.rglob("*.py")):
        relative = path.relative_to(PACKAGE).as_posix()
        if not relative.startswith("state/"):
            yield relative, path


def test_no_module_outside_the_state_package_names_a_ledger_table_or_reaches_its_database():
    modules = dict(engine_modules_outside_state())
    assert {"tools/stats.py", "tools/explain.py", "service/loop.py", "cli/main.py"} <= set(modules)
    found = {relative: problems for relative, path in modules.items()
             if (problems := violations(path.read_text(encoding="utf-8"), relative))}
    assert found == {}


@pytest.mark.parametrize("source", [
    "def f(reconciler):\n    with reconciler.ledger.db.engine.connect() as conn:\n        pass\n",
    "def f(self):\n    return self.ledger.db.fetch_all('SELECT 1')\n",
    "def f(reconciler):\n    return StatsReader(reconciler.config, reconciler.warehouse, reconciler.ledger.db)\n",
    "QUERY = 'SELECT count(*) FROM engine_ledger'\n",
    "TABLE = \"engine_unsubscribes\"\n",
    "from engine.state.ledger import ledger_table\n",
    "from engine.state.tables import LEDGER_TABLE\n",
    "from engine.state.ledger_tables import tags_table\n",
])
def test_the_check_finds_each_way_around_the_interface(source):
    assert len(violations(source)) == 1, source


@pytest.mark.parametrize("source", [
    '"""Docstrings may say engine_ledger."""\n',
    "GAUGE = 'engine_ledger_claimed_messages'\n",  # a metric's name, not a table
    "def close(self):\n    self.ledger.db.dispose()\n",
    "from engine.state.ledger import Ledger, Record, message_key\n",
    "def f(reconciler):\n    return reconciler.ledger.customer_messages('1', ('status',))\n",
])
def test_the_check_lets_the_interface_through(source):
    assert violations(source) == []


def test_the_compiler_may_import_the_names_it_joins_but_nothing_else_may():
    statement = "from engine.state.tables import ENTRIES_TABLE\n"
    assert violations(statement, "sql/compile.py") == []
    assert violations(statement, "sql/lookup.py") != []


def test_ledger_implements_the_writer_interface_as_declared():
    declared = {name for name, value in vars(LedgerWriter).items() if inspect.isfunction(value) and not name.startswith("_")}
    assert {"write_new", "record_outcomes", "hand_over", "reclaim", "unsubscribe", "suppress", "apply_tags"} <= declared
    for name in declared:
        implemented = getattr(Ledger, name)
        assert implemented is not getattr(LedgerWriter, name), f"Ledger does not implement {name}"
        assert inspect.signature(implemented) == inspect.signature(getattr(LedgerWriter, name)), name
    assert issubclass(Ledger, LedgerReader)


def test_a_reader_reads_and_runs_nothing_but_selects(tmp_path):
    ledger = Ledger(Database(f"sqlite:///{tmp_path / 'ledger.db'}"))
    ledger.ensure_schema()
    now = datetime(2026, 3, 1, 10, 0)
    ledger.write_new([Record("c:s:1:k", "c", "s", "1", "k", "email", "claimed"),
                      Record("c:s:2:k", "c", "s", "2", "k", "email", "skipped", reason="no_consent")], now)
    ledger.unsubscribe("1", "sms", "cli", now)
    reader = LedgerReader(ledger.db)
    assert reader.claimed_backlog() == (1, now)
    assert reader.unsubscribes_of("1") == ["sms"] and reader.unsubscribes_of("2") == []
    assert reader.customer_messages("2", ("message_key", "status", "reason")) == [
        {"message_key": "c:s:2:k", "status": "skipped", "reason": "no_consent"}]
    assert [tuple(row) for rows in reader.history("c", ("message_key", "status"), "sqlite", 1) for row in rows] == [
        ("c:s:1:k", "claimed"), ("c:s:2:k", "skipped")]
    count = exp.select(exp.Count(this=exp.Star())).from_(messages_relation("l"))
    assert [tuple(row) for row in reader.select(count, reader.dialect)] == [(2,)]
    for statement in (exp.delete(messages_relation("l")), "DELETE FROM engine_ledger",
                      exp.insert(exp.select("*").from_(messages_relation("l")), "engine_ledger")):
        with pytest.raises(TypeError, match="SELECT queries only"):
            reader.select(statement, reader.dialect)
    assert [tuple(row) for row in reader.select(count, reader.dialect)] == [(2,)]
    ledger.db.dispose()
