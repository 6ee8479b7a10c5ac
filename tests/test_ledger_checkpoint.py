"""A DuckDB ledger is checkpointed between passes, not inside them (``Dialect.checkpoint_hold``).

DuckDB checkpoints by itself inside whichever commit takes its write-ahead log past 16 MiB: in a first pass,
most often a send worker's hand-over, while the other workers wait on it (benchmarks/README.md, issue 15). A
ledger a pass writes holds that checkpoint off until the log reaches ``WAL_HOLD_LIMIT``, and the service
checkpoints the ledger after each pass. What is checked here, on real DuckDB files:

- a pass's writes (claims, then hand-overs of ~1 MiB each, committed one by one) go past 16 MiB of log without
  a checkpoint, and a process killed right after its last commit loses none of them: the next open replays the
  log (the kill, replica and delivery tests run whole passes over the same hold);
- past the hold's limit the database checkpoints by itself all the same: the log stays bounded;
- the service's pass ends with the ledger checkpointed: the next pass starts on an empty log.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from datetime import datetime
from pathlib import Path

import sqlalchemy as sa

from conftest import REPO
from engine.state import warehouse as warehouse_module
from engine.state.ledger import Ledger, Record, ledger_table
from engine.state.warehouse import Database
from test_service import live_project

NOW = datetime(2025, 1, 10, 12, 0)
MIB = 2 ** 20
#: DuckDB's own automatic checkpoint threshold (its default ``checkpoint_threshold``)
DUCKDB_THRESHOLD = 16 * MIB


def wal_size(database: Path) -> int:
    wal = Path(f"{database}.wal")
    return wal.stat().st_size if wal.exists() else 0


def claims(count: int) -> list[Record]:
    return [Record(message_key=f"c:s:{i}:t", campaign="c", step="s", customer_id=str(i), trigger_key="t",
                   channel="email", status="claimed", due_at=NOW, trigger_at=NOW) for i in range(count)]


def content(i: int) -> str:
    return json.dumps({"kind": "email", "to": f"c{i}@example.com", "text": f"{i:08d}" * (MIB // 8)})


#: a pass's writes in a process of its own, which is killed (SIGKILL) right after its last commit: the log sizes
#: after each hand-over's commit are printed first. The ledger is opened as a pass opens it (``open_ledger``).
KILLED_WRITER = textwrap.dedent("""
    import json, os, signal, sys
    from datetime import datetime
    from pathlib import Path
    sys.path.insert(0, sys.argv[3])
    from test_ledger_checkpoint import NOW, claims, content, wal_size
    from engine.run.ledger_state import open_ledger
    from engine.spec.config import load_config
    from engine.state.warehouse import Database

    root, count = Path(sys.argv[1]), int(sys.argv[2])
    config, issues = load_config(root)
    assert config is not None, issues
    database = root / "var" / "ledger.duckdb"
    ledger, _ = open_ledger(config, Database("sqlite://"), writes=True)  # the warehouse: not the ledger
    ledger.write_new(claims(count), NOW)
    sizes = []
    for i in range(count):
        assert ledger.hand_over([], [(f"c:s:{i}:t", content(i))], NOW) == {f"c:s:{i}:t"}
        sizes.append(wal_size(database))
    print(json.dumps(sizes), flush=True)
    os.kill(os.getpid(), signal.SIGKILL)
""")


def test_a_pass_writes_past_duckdbs_threshold_without_a_checkpoint_and_a_kill_loses_none_of_it(tmp_path):
    root = live_project(tmp_path / "project", customers=10)
    text = (root / "engine.yaml").read_text()  # a ledger of its own: the demo shop is not needed
    (root / "engine.yaml").write_text(text.replace("warehouse:\n", "ledger:\n  url: duckdb:///var/ledger.duckdb\n\nwarehouse:\n", 1))
    count = 24  # ~24 MiB of content, one hand-over (one commit) each
    done = subprocess.run([sys.executable, "-c", KILLED_WRITER, str(root), str(count), str(Path(__file__).parent)],
                          capture_output=True, text=True, cwd=REPO, timeout=300)
    assert done.returncode == -9, done.stderr[-2000:]
    sizes = json.loads(done.stdout.strip().splitlines()[-1])
    # every commit only grew the log: no checkpoint inside them, though it went well past DuckDB's 16 MiB
    assert sizes == sorted(sizes) and sizes[-1] > DUCKDB_THRESHOLD + 4 * MIB, sizes
    database = root / "var" / "ledger.duckdb"
    assert wal_size(database) == sizes[-1]  # the killed process left its whole log

    db = Database(f"duckdb:///{database}")  # opened again: the log replayed
    try:
        with db.engine.connect() as conn:
            stored = dict(conn.execute(sa.select(ledger_table.c.message_key, ledger_table.c.content)).all())
        assert stored == {f"c:s:{i}:t": content(i) for i in range(count)}
    finally:
        db.dispose()


def test_past_the_holds_limit_the_database_checkpoints_by_itself(tmp_path, monkeypatch):
    monkeypatch.setattr(warehouse_module, "WAL_HOLD_LIMIT", "3MiB")
    database = tmp_path / "ledger.duckdb"
    db = Database(f"duckdb:///{database}")
    try:
        ledger = Ledger(db)
        ledger.ensure_schema()
        db.hold_checkpoints()
        assert db.execute("SELECT current_setting('checkpoint_threshold')")[0][0] == "3.0 MiB"
        ledger.write_new(claims(12), NOW)
        sizes = []
        for i in range(12):
            ledger.hand_over([], [(f"c:s:{i}:t", content(i))], NOW)
            sizes.append(wal_size(database))
        # ~12 MiB written: the log never held much more than the limit (one commit past it, then checkpointed)
        assert max(sizes) < 5 * MIB and sizes != sorted(sizes), sizes
    finally:
        db.dispose()


def test_the_service_checkpoints_the_ledger_after_its_pass(tmp_path):
    from engine.service.loop import Service

    root = live_project(tmp_path / "project", customers=300)
    database = root / "var" / "demo-shop.duckdb"  # the demo's ledger shares the shop's database
    service = Service(root, interval=60, metrics_port=0)
    try:
        service.start()
        with service._lock:
            reconciler = service._reconciler
        before = wal_size(database)
        report = service.run_pass()
        assert report is not None and report.total("sent") > 50
        # the pass wrote its claims, contents and outcomes (hundreds of KB of log); none of it is left in the log
        assert wal_size(database) < 64 * 1024, (before, wal_size(database))
        assert reconciler.ledger.db.execute("SELECT current_setting('checkpoint_threshold')")[0][0] == "64.0 MiB"
    finally:
        service.close()
