"""How many ledger statements a pass's batch takes on DuckDB: its new rows (claims and skips) in one INSERT
over LIST parameters, the batch's skips in the statement of its claims."""
from __future__ import annotations


def test_a_batch_of_claims_is_one_insert_where_the_dialect_binds_lists(tmp_path):
    """DuckDB takes a whole batch's new ledger rows (claims, skips) as one INSERT over one LIST per column
    (each statement costs it a fixed ~10 ms); other backends keep multi-row INSERTs of 500 bound rows."""
    from datetime import datetime

    import sqlalchemy as sa

    from conftest import database_url
    from engine.state.ledger import Ledger, Record
    from engine.state.warehouse import Database

    now = datetime(2025, 1, 10, 12)
    records = [Record(message_key=f"c:s:{i}:t", campaign="c", step="s", customer_id=str(i), trigger_key="t",
                      channel="email", status="claimed" if i % 3 else "skipped", reason=None if i % 3 else "stale",
                      due_at=now, trigger_at=now) for i in range(1_300)]
    for backend, statements in (("duckdb", 1), ("sqlite", None)):
        db = Database(database_url(backend, tmp_path, f"ledger-{backend}"))
        ledger = Ledger(db)
        ledger.ensure_schema()
        inserts: list[str] = []
        sa.event.listen(db.engine, "before_cursor_execute",
                        lambda conn, cursor, statement, *args: inserts.append(statement)
                        if statement.lstrip().upper().startswith("INSERT INTO ENGINE_LEDGER") else None)
        assert ledger.write_new(records[:1_000], now) == {r.message_key for r in records[:1_000]}
        if statements is not None:
            assert len(inserts) == statements, len(inserts)
        # written once: a second write of the same rows (another process's) inserts only the new ones
        assert ledger.write_new(records, now) == {r.message_key for r in records[1_000:]}
        with db.engine.connect() as conn:
            assert conn.execute(sa.text("SELECT count(*) FROM engine_ledger")).scalar() == 1_300
        db.dispose()


def test_a_pass_writes_each_batch_s_skips_in_the_statement_of_its_claims(tmp_path, monkeypatch):
    """A pass on DuckDB inserts a batch's skips and claims with one INSERT (the record stage's skips handed to
    the claim stage): statements carry both; the pass report counts exactly the skips the ledger holds."""
    import re
    from collections import Counter

    import sqlalchemy as sa

    from conftest import copy_project
    from engine import Reconciler, load_project
    from engine.clock import parse_instant
    from engine.tools.demo import build_demo
    from servers import SmsProvider, SmtpSink
    from test_end_to_end import configure_channels

    shop = tmp_path / "shop.duckdb"
    build_demo(str(shop), seed=42, customers=400, anchor="2025-01-10T00:00:00Z")
    root = copy_project(tmp_path / "project")
    monkeypatch.setenv("ENGINE_WAREHOUSE_URL", f"duckdb:///{shop}")
    monkeypatch.setenv("SMS_TOKEN", "secret-token")
    inserts: list[Counter] = []

    def seen(conn, cursor, statement, parameters, context, executemany):
        found = re.match(r"\s*INSERT INTO engine_ledger \(([^)]*)\) SELECT unnest", statement)
        if found:
            columns = [c.strip() for c in found.group(1).split(",")]
            inserts.append(Counter(parameters[columns.index("status")]))

    with SmtpSink() as smtp, SmsProvider() as sms:
        configure_channels(root, smtp.port, sms.url)
        reconciler = Reconciler(load_project(root), batch_size=100)
        sa.event.listen(reconciler.ledger.db.engine, "before_cursor_execute", seen)
        try:
            report = reconciler.run_once(parse_instant("2025-01-10T00:00:00Z"))
            with reconciler.ledger.db.engine.connect() as conn:
                held = Counter({(c, s, f"skipped:{r}"): n for c, s, r, n in conn.execute(sa.text(
                    "SELECT campaign, step, reason, count(*) FROM engine_ledger WHERE status = 'skipped' GROUP BY ALL"))})
        finally:
            reconciler.close()
    mixed = [c for c in inserts if c["claimed"] and c["skipped"]]
    assert mixed and report.total("sent") > 100, inserts
    counted = Counter({(c, s, outcome): n for (c, s, outcome), n in report.counts.items() if outcome.startswith("skipped:")})
    assert counted == held
