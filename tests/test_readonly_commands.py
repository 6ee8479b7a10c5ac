"""Commands that only read write nothing anywhere; ``engine run`` writes only to the ledger; a ledger
that cannot be written or reached is one message naming its engine.yaml setting, and nothing is written.

Through the real command line (``python -c 'from engine.cli.main import main; main()'``) on real
databases: SQLite files opened read-only (``mode=ro``), a PostgreSQL server from tests/pg.py.
"""
from __future__ import annotations

import re
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
import sqlalchemy as sa

from conftest import copy_project
from engine.state.warehouse import Database
from engine.tools.demo import generate_shop, load_shop
from servers import free_port

AS_OF = "2025-01-10T00:00:00Z"


def engine(root: Path, *args: str, warehouse: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", "from engine.cli.main import main; main()", *args],
                          cwd=root, capture_output=True, text=True, timeout=300,
                          env={**__import__("os").environ, "ENGINE_WAREHOUSE_URL": warehouse})


def with_ledger(root: Path, url: str) -> int:
    """Put ``ledger: {url}`` into the project's engine.yaml; return the line of ``url:``."""
    text = (root / "engine.yaml").read_text().replace("demo:", f"ledger:\n  url: {url}\n\ndemo:", 1)
    (root / "engine.yaml").write_text(text)
    return text.splitlines().index(f"  url: {url}") + 1


def warehouse_line(root: Path) -> int:
    lines = (root / "engine.yaml").read_text().splitlines()
    return next(n for n, line in enumerate(lines, 1) if line.strip().startswith("url: ${ENGINE_WAREHOUSE_URL"))


@pytest.fixture(scope="module")
def shop_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("shop") / "shop.db"
    db = Database(f"sqlite:///{path}")
    load_shop(db, generate_shop(42, 300, AS_OF))
    db.dispose()
    return path


def tables(path: Path) -> set[str]:
    with sqlite3.connect(path) as conn:
        return {row[0] for row in conn.execute("SELECT name FROM sqlite_master")}


def read_only(path: Path) -> str:
    return f"sqlite:///file:{path}?mode=ro&uri=true"


@pytest.mark.parametrize("separate", [False, True], ids=["ledger in the warehouse", "ledger file not there yet"])
def test_read_only_commands_write_nothing_and_a_missing_ledger_reads_as_empty(tmp_path, shop_file, separate):
    root = copy_project(tmp_path / "project")
    ledger_file = tmp_path / "var" / "ledger.db"
    if separate:
        with_ledger(root, f"sqlite:///{ledger_file}")
    before = tables(shop_file)
    url = read_only(shop_file)
    plan = engine(root, "plan", "--as-of", AS_OF, "--format", "jsonl", warehouse=url)
    assert plan.returncode == 0, plan.stderr
    assert '"re-engage"' in plan.stdout and '"order-follow-up"' in plan.stdout
    for args in (["explain", "re-engage", "1", "--as-of", AS_OF], ["customer", "1"],
                 ["export", "re-engage", "--as-of", AS_OF, "--out", str(tmp_path / "plan.csv")],
                 ["export", "vip", "--history", "--out", str(tmp_path / "history.csv")],
                 ["export", "--where", "NOT has_tag('vip')", "--as-of", AS_OF, "--out", str(tmp_path / "segment.csv")],
                 ["stats", "re-engage"], ["report", "--out", str(tmp_path / "report")], ["validate"]):
        result = engine(root, *args, warehouse=url)
        assert result.returncode == 0, (args, result.stderr)
    assert tables(shop_file) == before  # no engine_* table, nothing else either
    assert not ledger_file.exists() and not ledger_file.parent.exists()


def test_run_writes_only_to_the_ledger(tmp_path, shop_file):
    root = copy_project(tmp_path / "project")
    ledger_file = tmp_path / "ledger.db"
    with_ledger(root, f"sqlite:///{ledger_file}")
    before = tables(shop_file)
    result = engine(root, "run", "--once", "--as-of", AS_OF, warehouse=read_only(shop_file))
    assert result.returncode == 0, result.stderr
    assert tables(shop_file) == before
    with sqlite3.connect(ledger_file) as conn:
        assert conn.execute("SELECT count(*) FROM engine_ledger WHERE status = 'sent'").fetchone()[0] > 0
        assert conn.execute("SELECT count(*) FROM engine_entries").fetchone()[0] > 0  # re-engage's segment


def test_a_read_only_ledger_stops_run_before_anything_is_written(tmp_path, shop_file):
    root = copy_project(tmp_path / "project")
    ledger_file = tmp_path / "ledger.db"
    with_ledger(root, f"sqlite:///{ledger_file}")
    assert engine(root, "plan", "--as-of", AS_OF, warehouse=read_only(shop_file)).returncode == 0
    created = engine(root, "ledger", "upgrade", warehouse=read_only(shop_file))  # an empty ledger at head
    assert created.returncode == 0, created.stderr
    text = (root / "engine.yaml").read_text().replace(f"sqlite:///{ledger_file}", read_only(ledger_file))
    (root / "engine.yaml").write_text(text)
    line = text.splitlines().index(f"  url: {read_only(ledger_file)}") + 1

    result = engine(root, "run", "--once", "--as-of", AS_OF, warehouse=read_only(shop_file))

    assert result.returncode == 1
    [message] = result.stderr.strip().splitlines()
    assert message.startswith(f"Error: engine.yaml:{line}: ledger.url: "), message
    assert "not writable" in message and "INSERT, UPDATE and DELETE" in message
    assert not (root / "var" / "outbox").exists()
    with sqlite3.connect(ledger_file) as conn:
        assert conn.execute("SELECT count(*) FROM engine_ledger").fetchone()[0] == 0
    # the commands that only read still work on it
    assert engine(root, "plan", "--as-of", AS_OF, warehouse=read_only(shop_file)).returncode == 0


@pytest.mark.parametrize("command", [["plan", "--as-of", AS_OF], ["run", "--once", "--as-of", AS_OF]])
def test_an_unreachable_ledger_is_one_message_naming_its_setting(tmp_path, shop_file, command):
    root = copy_project(tmp_path / "project")
    line = with_ledger(root, f"postgresql+psycopg://engine@127.0.0.1:{free_port()}/ledger")

    result = engine(root, *command, warehouse=read_only(shop_file))

    assert result.returncode == 1
    [message] = result.stderr.strip().splitlines()
    assert message.startswith(f"Error: engine.yaml:{line}: ledger.url: "), message
    assert "127.0.0.1" in message and "check ledger.url" in message
    assert not (root / "var" / "outbox").exists()


def test_a_warehouse_role_without_temp_is_told_to_grant_it(tmp_path):
    import pg

    url = pg.server().new_database()
    db = Database(url)
    load_shop(db, generate_shop(42, 300, AS_OF))
    db.dispose()
    admin = sa.create_engine(url, isolation_level="AUTOCOMMIT")
    database = sa.engine.make_url(url).database
    role = f"notemp_{database}"
    with admin.connect() as conn:
        conn.execute(sa.text(f"CREATE ROLE {role} LOGIN"))
        conn.execute(sa.text("GRANT SELECT ON ALL TABLES IN SCHEMA public TO " + role))
        conn.execute(sa.text(f"REVOKE TEMP ON DATABASE {database} FROM PUBLIC"))
    admin.dispose()
    root = copy_project(tmp_path / "project")
    with_ledger(root, f"sqlite:///{tmp_path / 'ledger.db'}")
    warehouse = sa.engine.make_url(url).set(username=role).render_as_string(hide_password=False)

    result = engine(root, "plan", "--campaign", "re-engage", "--as-of", AS_OF, warehouse=warehouse)

    assert result.returncode == 1
    [message] = result.stderr.strip().splitlines()
    assert re.match(rf"Error: engine.yaml:{warehouse_line(root)}: warehouse.url: ", message), message
    assert "GRANT TEMP ON DATABASE" in message
