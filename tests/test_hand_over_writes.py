"""How many ledger writes a batch's hand-over takes (dispatch.send_all): one per group handed over (fewer
when workers share a group commit) and ONE for the outcomes of every worker's last group, not one per
worker; never more than connections x in_flight messages stored without an outcome at any write (the
in-doubt bound the kill tests check after real kills); every outcome recorded exactly once."""
from __future__ import annotations

import threading
import time

from engine.channels import Delivered, OutgoingMessage
from engine.run.dispatch import send_all

CONNECTIONS, IN_FLIGHT, COUNT = 4, 3, 61


class Connections:
    """A channel session sending over ``CONNECTIONS`` connections at once; each send takes a little
    longer on some connections than others, so the workers run out of messages at different times."""

    parallelism = CONNECTIONS

    def __init__(self):
        self.lock = threading.Lock()
        self.slot: dict[int, int] = {}
        self.accepted: list[str] = []

    def send(self, message):
        with self.lock:
            slot = self.slot.setdefault(threading.get_ident(), len(self.slot))
        time.sleep(0.002 * (1 + slot))
        with self.lock:
            self.accepted.append(message.key)
        return Delivered(provider_id=message.key)


def test_a_batch_records_its_workers_last_outcomes_in_one_write_within_the_in_doubt_bound():
    messages = [("email", OutgoingMessage(key=f"k{i}", kind="email", to=f"c{i}@example.com", sender="shop@example.com",
                                          parts={"text": "hi"})) for i in range(COUNT)]
    writes: list[tuple[tuple[str, ...], tuple[str, ...]]] = []
    stored: set[str] = set()
    recorded: list[str] = []
    lock = threading.Lock()

    def hand_over(done, group):
        with lock:
            outcomes = tuple(messages[i][1].key for i, _ in done)
            contents = tuple(messages[i][1].key for i in group)
            recorded.extend(outcomes)
            stored.update(contents)
            writes.append((outcomes, contents))
            in_doubt = stored - set(recorded)
            assert len(in_doubt) <= CONNECTIONS * IN_FLIGHT, (len(in_doubt), writes)
        return set(group)

    session = Connections()
    results = send_all(messages, {"email": session}, hand_over, {"email": IN_FLIGHT})
    assert [r.message.key for r in results] == [m.key for _, m in messages]
    assert sorted(recorded) == sorted(session.accepted) == sorted(m.key for _, m in messages)  # each exactly once
    assert len(session.slot) == CONNECTIONS  # every connection sent
    outcomes_only = [w for w in writes if not w[1]]
    assert len(outcomes_only) == 1 and writes[-1] is outcomes_only[0], writes  # one write for all the last groups
    assert len(writes) <= -(-COUNT // IN_FLIGHT) + 1


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
