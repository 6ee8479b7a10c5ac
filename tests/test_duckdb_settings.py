"""engine.yaml ``warehouse.duckdb``: memory_limit, threads and temp_directory reach every DuckDB
connection the engine opens.

Real DuckDB files; DuckDB itself reports the settings back, and a memory-limited query spills
into the named folder. Values that are not a size, a whole number or a folder never reach SQL
(``SET`` takes no parameters).
"""
from __future__ import annotations

from datetime import datetime, timezone

import pytest
import sqlalchemy as sa

from conftest import copy_project, load_history
from engine import Reconciler, load_project
from engine.errors import WarehouseError
from engine.service.settings import effective_config
from engine.state.warehouse import Database


def _settings(db: Database) -> tuple:
    with db.engine.connect() as conn:
        return tuple(conn.execute(sa.text(
            "SELECT current_setting('memory_limit'), current_setting('threads')")).one())


def _with_duckdb_block(root, block: str) -> None:
    config = root / "engine.yaml"
    config.write_text(config.read_text().replace("warehouse:\n", f"warehouse:\n  duckdb: {block}\n", 1))


def test_engine_yaml_settings_reach_the_warehouse_and_a_ledger_in_the_same_file(tmp_path, monkeypatch):
    root = copy_project(tmp_path / "project")
    _with_duckdb_block(root, "{memory_limit: 300MB, threads: 1}")
    url = f"duckdb:///{tmp_path / 'shop.duckdb'}"
    registered = datetime(2025, 1, 9, 12, tzinfo=timezone.utc).replace(tzinfo=None)
    load_history(url, customers=[{"customer_id": 1, "email": "a@example.com", "created_at": registered}])
    monkeypatch.setenv("ENGINE_WAREHOUSE_URL", url)

    reconciler = Reconciler(load_project(root))
    try:
        # 300 MB = 300,000,000 bytes, which DuckDB shows in MiB: 300e6 / 2**20 = 286.1
        assert _settings(reconciler.warehouse) == ("286.1 MiB", 1)
        assert reconciler.ledger.db is reconciler.warehouse
        # a second engine on the same file shares DuckDB's instance: the limits hold for it too
        other = Database(url)
        assert _settings(other) == ("286.1 MiB", 1)
        other.dispose()
    finally:
        reconciler.close()
    shown = {s.key: s.value for s in effective_config(root, settings={}, environ={"ENGINE_WAREHOUSE_URL": url})}
    assert (shown["warehouse.duckdb.memory_limit"], shown["warehouse.duckdb.threads"]) == ("300MB", "1")


def test_without_the_block_duckdb_keeps_its_own_defaults(tmp_path):
    url = f"duckdb:///{tmp_path / 'plain.duckdb'}"
    db = Database(url)
    import duckdb

    default = duckdb.connect(":memory:").execute("SELECT current_setting('threads')").fetchone()[0]
    assert _settings(db)[1] == default
    db.dispose()


def test_duckdb_settings_are_ignored_for_other_databases(tmp_path):
    db = Database(f"sqlite:///{tmp_path / 'shop.db'}", duckdb_settings={"memory_limit": "1GB", "threads": 1})
    assert db.execute("SELECT 1") == [(1,)]
    db.dispose()


@pytest.mark.parametrize("settings", [
    {"memory_limit": "1GB'; DROP TABLE customers; --"},
    {"memory_limit": 512},
    {"threads": True},
    {"threads": 0},
    {"temp_directory": ""},
    {"temp_directory": 5},
    {"spill_directory": "/tmp"},
])
def test_values_that_are_not_a_size_or_a_thread_count_never_reach_sql(tmp_path, settings):
    with pytest.raises(WarehouseError, match=r"warehouse\.duckdb\."):
        Database(f"duckdb:///{tmp_path / 'shop.duckdb'}", duckdb_settings=settings)


def test_temp_directory_takes_the_spills_of_a_memory_limited_query(tmp_path, monkeypatch):
    """DuckDB spills to ``<file>.tmp`` by default; with temp_directory (relative to the project) it
    spills there: a sort of 3M rows under a 16 MB limit writes its blocks into the folder."""
    root = copy_project(tmp_path / "project")
    _with_duckdb_block(root, "{memory_limit: 16MB, threads: 1, temp_directory: var/spill}")
    url = f"duckdb:///{tmp_path / 'shop.duckdb'}"
    load_history(url, customers=[{"customer_id": 1, "email": "a@example.com"}])
    monkeypatch.setenv("ENGINE_WAREHOUSE_URL", url)
    spill = root / "var" / "spill"

    reconciler = Reconciler(load_project(root))
    try:
        with reconciler.warehouse.session() as session:
            assert session.conn.exec_driver_sql("SELECT current_setting('temp_directory')").scalar() == str(spill)
            batches = session.stream("SELECT range AS n, hash(range) AS h FROM range(3000000) ORDER BY h", 1000)
            assert len(next(batches)) == 1000  # sorted: every block written, the result still open
            spilled = {f.name: f.stat().st_size for f in spill.iterdir()}
            batches.close()
    finally:
        reconciler.close()
    assert sum(spilled.values()) > 16_000_000, spilled  # more than the limit went to the folder
    assert not (tmp_path / "shop.duckdb.tmp").exists()
    shown = {s.key: s.value for s in effective_config(root, settings={}, environ={"ENGINE_WAREHOUSE_URL": url})}
    assert shown["warehouse.duckdb.temp_directory"] == "var/spill"


def test_without_temp_directory_config_show_names_duckdbs_default(tmp_path):
    root = copy_project(tmp_path / "project")
    shown = {s.key: s.value for s in effective_config(root, settings={}, environ={})}
    assert shown["warehouse.duckdb.temp_directory"] == "(DuckDB's: the database file's name + .tmp)"
