"""Replicas share the work on one PostgreSQL ledger, and one of them dies mid-pass (issue 21.3).

Four ``engine run --once`` processes at once against one PostgreSQL database
(shop and ledger, a real server from tests/pg.py), the loopback SMTP sink and
SMS provider of the kill test (tests/kill_harness.py: its shop, campaigns and
checks). One replica is SIGKILLed once it has recorded some of its messages,
so it leaves claims behind. Its pass instant is one second later than the
others', which is how its ledger rows are told apart (a row's ``updated_at`` is
its pass instant). Two ways to split the work:

- ``shard``: ``--shard i/4``, each replica's due queries keep only its
  customers (the stable hash in SQL, engine/sql/hashing.py: plan.py ``shard_of``'s
  assignment). After the claim timeout, the
  three survivors' next pass settles the dead replica's stale claims
  (engine/run/recover.py: released when never rendered, ``unknown`` when
  rendered under at_most_once), but only the owner of a shard derives its
  messages: the dead replica's shard is delivered when it comes back (as a
  restarted pod of a StatefulSet does);
- ``claims``: no shard; every replica plans everything and the unique message
  key decides who sends (engine/state/ledger.py: a claim is an INSERT that
  only one process wins). A replica claims a whole batch (up to 1,000 rows
  of a campaign) at once, so here the victim starts first and wins some; the
  others start once it holds claims. The survivors alone deliver everything.

Either way (kill_harness.KillTest.problems): nothing arrives twice, every
planned message ends sent, skipped or failed with a reason, or unknown only if
the kill left it in doubt; nothing stays claimed.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from datetime import timedelta

import pytest
import sqlalchemy as sa

from conftest import database_url
from kill_harness import STEP, KillTest
from engine.state.ledger import ledger_table
from servers import SmsProvider, SmtpSink

REPLICAS = 4
VICTIM = 1
CUSTOMERS = 120
TIMEOUT = 120  # seconds any pass of this test may take, well above what it takes here


def _start(test: KillTest, as_of, shard: str | None, name: str) -> subprocess.Popen:
    args = [sys.executable, "-m", "engine.cli.main", "run", "--once", "--quiet", "--as-of", as_of.isoformat() + "Z"]
    if shard:
        args += ["--shard", shard]
    log = open(test.logs / f"{name}.log", "w")
    try:
        return subprocess.Popen(args, cwd=test.root, stdout=log, stderr=subprocess.STDOUT,
                                env={**os.environ, "PYTHONUNBUFFERED": "1"})
    finally:
        log.close()


def _wait(test: KillTest, processes: dict[str, subprocess.Popen]) -> None:
    for name, process in processes.items():
        code = process.wait(timeout=TIMEOUT)
        if code not in (0, 1):  # 1: some message failed (the addresses that refuse for good)
            log = (test.logs / f"{name}.log").read_text()
            raise AssertionError(f"replica {name} ended with {code}:\n{log[-3000:]}")


def _rows_at(test: KillTest, instant, *conditions) -> list:
    c = ledger_table.c
    with test.db.engine.connect() as conn:
        return conn.execute(sa.select(c.message_key, c.status, c.content.is_not(None)).where(
            c.updated_at == instant, *conditions)).all()


def _claimed(test: KillTest) -> int:
    c = ledger_table.c
    with test.db.engine.connect() as conn:
        return conn.execute(sa.select(sa.func.count()).where(c.status == "claimed")).scalar()


def _pass(test: KillTest, mode: str, replicas: list[int], label: str) -> None:
    test.now += STEP  # more than the claim timeout (1m): whatever a dead replica claimed is stale now
    test.passes += 1
    processes = {f"{label}-{i}": _start(test, test.now, f"{i}/{REPLICAS}" if mode == "shard" else None, f"{label}-{i}")
                 for i in replicas}
    _wait(test, processes)


@pytest.mark.parametrize("mode", ["shard", "claims"])
def test_replicas_split_the_work_and_a_killed_one_strands_nothing(mode, tmp_path):
    with SmtpSink() as smtp, SmsProvider() as sms:
        smtp.pipelining = True
        # a provider slow enough that the kill lands while the victim is sending: 0.02 s per message was not, once,
        # under load; 0.05 s with the kill after 10 outcomes was not, once, at load ~4 (the send stage's ledger
        # writes gather every connection's outcomes, so the 10th became visible with most of the ~30 written)
        smtp.delay = 0.1
        test = KillTest(tmp_path, database_url("postgres", tmp_path), "at_most_once", CUSTOMERS, 1, smtp, sms)
        try:
            test.add_round()
            test.now += STEP
            test.passes += 1
            victim_at = test.now + timedelta(seconds=1)
            shard = (lambda i: f"{i}/{REPLICAS}") if mode == "shard" else (lambda i: None)
            victim = _start(test, victim_at, shard(VICTIM), f"first-{VICTIM}")
            deadline = time.monotonic() + TIMEOUT
            if mode == "claims":  # the first claim takes a whole batch (up to 1,000): let the victim win some
                while not _rows_at(test, victim_at):
                    assert victim.poll() is None and time.monotonic() < deadline, "the victim claimed nothing"
                    time.sleep(0.01)
            processes = {f"first-{i}": _start(test, test.now, shard(i), f"first-{i}") for i in range(REPLICAS) if i != VICTIM}
            while len(_rows_at(test, victim_at, ledger_table.c.status != "claimed")) < 3:
                assert victim.poll() is None, f"the victim ended ({victim.returncode}) before it recorded 3 outcomes"
                assert time.monotonic() < deadline, "the victim recorded nothing in time"
                time.sleep(0.01)
            victim.send_signal(signal.SIGKILL)
            assert victim.wait(timeout=30) == -signal.SIGKILL
            _wait(test, processes)

            left = _rows_at(test, victim_at, ledger_table.c.status == "claimed")
            assert left, "the kill left no claim behind: it did not land mid-pass"
            test.in_doubt |= {key for key, _, rendered in left if rendered}
            planned = set(test.expected)
            c = ledger_table.c
            with test.db.engine.connect() as conn:
                recorded = {k for (k,) in conn.execute(sa.select(c.message_key))}
            if mode == "claims":  # the survivors claimed everything the victim had not
                assert recorded == planned, f"{len(planned - recorded)} messages unclaimed after the first pass"

            # the next pass of the survivors alone, after the claim timeout: the victim's claims are settled
            survivors = [i for i in range(REPLICAS) if i != VICTIM]
            _pass(test, mode, survivors, "survivors")
            assert _claimed(test) == 0, "stale claims of the dead replica were not taken over"
            if mode == "claims":  # (retries of the addresses that refuse once may still be pending)
                with test.db.engine.connect() as conn:
                    recorded = {k for (k,) in conn.execute(sa.select(c.message_key))}
                assert recorded >= planned, f"the survivors left {len(planned - recorded)} messages behind"
            else:  # the victim's shard comes back (a restarted pod), and its messages go out
                _pass(test, mode, list(range(REPLICAS)), "restarted")
            for attempt in range(5):  # retries of the addresses that refuse once
                if test.quiet():
                    break
                _pass(test, mode, list(range(REPLICAS)) if mode == "shard" else survivors, f"after-{attempt}")
            assert test.quiet(), "still busy after the final passes"
            problems = test.problems()
        finally:
            test.close()
    assert not problems, "\n  ".join(problems[:40])
    print(test.summary.line())


def test_replicas_entering_the_same_segment_at_once_both_succeed(tmp_path, monkeypatch):
    """Two replicas' passes record the at-risk segment's entries at the same moment (re-engage): the
    second one's INSERT waits on the first one's uncommitted rows, then keeps them (ON CONFLICT DO
    NOTHING) instead of failing the campaign with a duplicate key (found by benchmarks/run.py --replicas)."""
    import threading
    from datetime import datetime, timezone

    from conftest import copy_project
    from engine import Reconciler, load_project
    from engine.run.segments import enter_segment
    from engine.sql.compile import render_sql
    from engine.sql.due import entries_insert
    from engine.tools.demo import generate_shop, load_shop
    from engine.state.warehouse import Database

    url = database_url("postgres", tmp_path)
    db = Database(url)
    load_shop(db, generate_shop(customers=300))
    root = copy_project(tmp_path / "project")
    monkeypatch.setenv("ENGINE_WAREHOUSE_URL", url)
    reconciler = Reconciler(load_project(root))
    now = datetime(2025, 1, 10, tzinfo=timezone.utc)
    campaign, config = reconciler.project.campaign("re-engage"), reconciler.config
    reconciler.ledger.ensure_schema()
    errors: list[Exception] = []
    first = db.engine.connect()
    try:
        transaction = first.begin()  # the first replica's entries, not yet committed
        entered = first.execute(sa.text(render_sql(entries_insert(campaign, config, now), config.dialect))).rowcount
        assert entered > 0

        def second_replica():
            try:
                enter_segment(campaign, reconciler.warehouse, config, now)
            except Exception as exc:  # noqa: BLE001 - the assertion below shows it
                errors.append(exc)
        thread = threading.Thread(target=second_replica)
        thread.start()
        time.sleep(1.0)  # the second INSERT waits on the first one's rows
        transaction.commit()
        thread.join(timeout=60)
    finally:
        first.close()
    assert not errors, errors[0]
    with db.engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM engine_entries")).scalar() == entered
    reconciler.close()
    db.dispose()


def test_postgresql_going_away_mid_pass_is_a_clear_error_and_the_next_pass_continues(tmp_path):
    """The ledger's PostgreSQL server stops (immediate shutdown) while a pass sends: the pass ends
    with an ``Error:`` line naming the database and no traceback; once the server is back, the next
    passes settle what it left (claims older than the claim timeout) and nothing arrives twice.
    A server of its own (tests/pg.py's class), so the session's server is not touched."""
    import pg

    try:
        server = pg.PostgresServer()
    except (FileNotFoundError, RuntimeError) as exc:
        pg.server()  # skips, or fails under ENGINE_REQUIRE_POSTGRES, with the session's reason
        pytest.skip(str(exc))
    try:
        with SmtpSink() as smtp, SmsProvider() as sms:
            smtp.pipelining = True
            smtp.delay = 0.02
            test = KillTest(tmp_path, server.new_database(), "at_most_once", CUSTOMERS, 2, smtp, sms)
            try:
                test.add_round()
                test.now += STEP
                test.passes += 1
                process = _start(test, test.now, None, "interrupted")
                deadline = time.monotonic() + TIMEOUT
                while len(_rows_at(test, test.now, ledger_table.c.status != "claimed")) < 10:
                    assert process.poll() is None and time.monotonic() < deadline, "the pass recorded nothing in time"
                    time.sleep(0.01)
                test.db.dispose()
                server._run([server.pg_ctl, "-D", str(server.data), "-m", "immediate", "stop"])
                code = process.wait(timeout=TIMEOUT)
                log = (test.logs / "interrupted.log").read_text()
                assert code not in (0, -signal.SIGKILL), log[-2000:]
                assert "Error:" in log and "Traceback" not in log, log[-3000:]
                assert "127.0.0.1" in log or "postgresql" in log, log[-2000:]  # the database is named
                options = f"-p {server.port} -k {server.directory} -c listen_addresses=127.0.0.1 -c fsync=off"
                server._run([server.pg_ctl, "-D", str(server.data), "-o", options, "-l",
                             str(server.directory / "log"), "-w", "start"])
                left = _rows_at(test, test.now, ledger_table.c.status == "claimed")
                test.in_doubt |= {key for key, _, rendered in left if rendered}
                for attempt in range(6):
                    _pass(test, "claims", [0], f"after-{attempt}")
                    if test.quiet():
                        break
                assert test.quiet(), "still busy after the server came back"
                problems = test.problems()
            finally:
                test.close()
    finally:
        server.stop()
    assert not problems, "\n  ".join(problems[:40])
