"""Dispatch and ledger measurements for benchmarks/run.py (imported by it), and the SMTP
dispatch measurement alone: ``python benchmarks/dispatch.py --help``.

- ``measure_smtp``: a full pass with emails to the loopback SMTP sink, the
  time spent inside dispatch, the sink's ceiling (a bare smtplib client
  sending pre-built messages) and the engine's dispatch path alone
  (``SmtpChannel`` + ``send_all`` on already rendered messages) at 1 and N
  connections, with and without PIPELINING, as a ratio of the plain and the
  pipelined ceiling in the same run (``measure_dispatch``; run alone by this
  module's command line, on synthetic messages of the same size);
- ``measure_handover``: the same dispatch with the ledger writes of a pass on a
  real SQLite or DuckDB ledger: the whole batch stored, sent and recorded
  (before) against the group hand-over at several ``in_flight`` values;
- ``measure_ledger``: a pass's ledger operations on a batch of 1,000 keys,
  on an empty ledger and on one holding N rows of history;
- ``add_history``: N history rows in a project's own ledger, so the next pass
  shows what a big ledger costs the whole pass (its due queries anti-join it);
- ``measure_memory``: peak RSS of a child process streaming a plan in which
  every one of N customers is due.
"""
from __future__ import annotations

import os
import shutil
import statistics
import tempfile
import time
from datetime import datetime, timedelta
from pathlib import Path

LEDGER_BATCH = 1000
HISTORY_CAMPAIGNS = 20  # history rows spread over this many (retired) campaign names
#: The ledger operations that write a recorded row: its claim, its content (the hand-over), its outcome.
WRITES = ("claim (insert)", "store content", "record outcomes")


def _timed(fn, repeat: int) -> tuple[float, object]:
    """Median seconds of ``repeat`` calls of ``fn`` and the last call's result."""
    times, result = [], None
    for _ in range(repeat):
        started = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times), result


# --- SMTP ------------------------------------------------------------------------------------


def measure_smtp(backend: str, url: str, project_dir: Path, now: datetime, sink, reset_ledger, run_note,
                 recorded, quick: bool) -> list[dict]:
    """The first pass with emails to ``sink``; then the sink's ceiling and the bare dispatch path."""
    import engine
    import engine.run.send as send_stage
    from engine import heap
    from engine.channels.smtp import SmtpChannel
    from engine.run.dispatch import deserialize

    os.environ["ENGINE_WAREHOUSE_URL"] = url
    project = engine.load_project(project_dir)
    reconciler = engine.Reconciler(project)
    heap.settle(collect=False)  # as `engine run` does once start-up is done (cli.common.open_reconciler)
    channel = project.config.channels["email"]
    connections = SmtpChannel(channel).connections
    dispatch_seconds = [0.0]
    original = send_stage.send_all

    def timed_send_all(*args, **kwargs):  # how much of the pass is dispatch (with the hand-over's ledger writes)
        started = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            dispatch_seconds[0] += time.perf_counter() - started

    rows = []
    try:
        reset_ledger(reconciler, project_dir)
        received_before = sink.received()
        send_stage.send_all = timed_send_all
        started = time.perf_counter()
        report = reconciler.run_once(now)
        seconds = time.perf_counter() - started
        send_stage.send_all = original
        emails = sink.received() - received_before
        rows.append({"what": f"run_once: empty ledger -> SMTP sink ({connections} connections)", "rows": recorded(report),
                     "seconds": seconds, "note": f"{emails:,} emails at the sink ({emails / seconds:,.0f}/s of the pass); "
                                                 + run_note(report, seconds)})
        rows.append({"what": "  of which dispatch (send_all, hand-over writes included)", "rows": emails, "seconds": dispatch_seconds[0],
                     "note": f"{emails / max(dispatch_seconds[0], 1e-9):,.0f} emails/s while dispatching"})
        stored = reconciler.ledger.db.execute(
            "SELECT message_key, content FROM engine_ledger WHERE channel = 'email' AND status = 'sent' "
            f"ORDER BY message_key LIMIT {2000 if quick else 5000}")
    finally:
        send_stage.send_all = original
        reconciler.close()
        heap.release()
    if not stored:
        return rows
    messages = [deserialize(key, content) for key, content in stored]
    return rows + measure_dispatch(sink, messages, channel.settings, connections)


def measure_dispatch(sink, messages: list, settings: dict, connections: int, repeat: int = 1) -> list[dict]:
    """The sink's ceilings and the engine's dispatch path alone on already rendered ``messages``,
    over 1 and ``connections`` connections, in the same run.

    Ceilings: a bare smtplib client sending one pre-built message (``sendmail``, four round
    trips) and the same client pipelining MAIL, RCPT and DATA (two round trips). Dispatch:
    ``SmtpChannel`` + ``send_all`` with pipelining (the default against a server that
    advertises it, as the fast sink does) and with ``pipelining: false``, each as a ratio of the
    ceiling with the same number of round trips. Each figure is the median of ``repeat`` runs."""
    import engine
    from engine.channels.smtp import SmtpChannel
    from engine.run.dispatch import send_all
    from smtp_sink import ceiling

    sample = messages[0].to_bytes("\r\n")
    count = len(messages)
    rows = []
    for width in sorted({1, connections}):
        plural = "s" * (width > 1)
        limits = {}
        for pipelined in (False, True):
            cpu = []
            limits[pipelined] = statistics.median(
                _with_cpu(cpu, sink, ceiling, sink.port, sample, count, width, pipelined=pipelined) for _ in range(repeat))
            client = "pipelined client" if pipelined else "bare smtplib"
            rows.append({"what": f"sink ceiling: {client}, {width} connection{plural}", "rows": count,
                         "seconds": count / limits[pipelined],
                         "note": f"{limits[pipelined]:,.0f} msg/s, {len(sample):,}-byte message; "
                                 + _cpu_note(cpu, count, "client"), "sample": sample})
        for pipelining in (False, True):
            def dispatch():
                session = SmtpChannel(engine.model.ChannelConfig(
                    name="email", kind="email", transport="smtp",
                    settings={**settings, "connections": width, "pipelining": pipelining}))
                session.open()
                try:
                    return send_all([("email", m) for m in messages], {"email": session})
                finally:
                    session.close()

            before, cpu = sink.received(), []
            seconds, results = _timed(lambda: _with_cpu(cpu, sink, dispatch), repeat)
            delivered = sum(1 for r in results if r.outcome.status == "sent")
            limit = limits[pipelining]
            rows.append({"what": f"dispatch only: send_all, {width} connection{plural}, "
                                 + ("pipelined" if pipelining else "no pipelining"),
                         "rows": delivered, "seconds": seconds,
                         "note": f"{delivered / seconds:,.0f} emails/s = {delivered / seconds / limit:.2f} x "
                                 f"{'pipelined' if pipelining else 'bare smtplib'} ceiling; "
                                 + _cpu_note(cpu, delivered, "engine") + "; "
                                 f"sink got {sink.received() - before:,}" + (f" in {repeat} runs" if repeat > 1 else "")})
    return rows


#: in_flight values measured by ``measure_handover`` (messages per connection between two ledger writes)
HANDOVER_IN_FLIGHT = (1, 4, 16, 64)


def measure_handover(sink, messages: list, settings: dict, connections: int, backend: str, directory: Path,
                     repeat: int = 1) -> list[dict]:
    """What the ledger hand-over costs dispatch: ``send_all`` over ``connections`` pipelined connections
    with the pass's ledger writes on a real ``backend`` ledger (sqlite, duckdb) in ``directory``.

    "whole batch" is the sequence before the group hand-over: store every message's content, send
    them all, record every outcome (two ledger writes per batch, the whole batch in doubt during
    the send). Then the group hand-over as a pass does it, for each ``HANDOVER_IN_FLIGHT``: one
    ledger write per group of in_flight messages per connection. Claims are written first (not
    timed); each figure is the median of ``repeat`` runs on a fresh ledger."""
    import engine
    from engine.channels.smtp import SmtpChannel
    from engine.run.dispatch import send_all, serialize
    from engine.state.ledger import Ledger, Record
    from engine.state.warehouse import Database

    now = datetime(2025, 1, 10)
    contents = [serialize(m) for m in messages]
    records = [Record(message_key=m.key, campaign="bench", step="mail", customer_id=m.key.split(":")[2],
                      trigger_key=m.key.split(":")[3], channel="email", status="claimed") for m in messages]
    rows, baseline = [], None
    for in_flight in (None, *HANDOVER_IN_FLIGHT):
        def dispatch():
            path = directory / f"handover.{'duckdb' if backend == 'duckdb' else 'db'}"
            for suffix in ("", ".wal", "-wal", "-shm"):
                Path(str(path) + suffix).unlink(missing_ok=True)
            db = Database(f"{backend}:///{path}")
            ledger = Ledger(db)
            ledger.ensure_schema()
            ledger.write_new(records, now)
            session = SmtpChannel(engine.model.ChannelConfig(name="email", kind="email", transport="smtp",
                                                             settings={**settings, "connections": connections}))
            session.open()
            writes = [0]
            try:
                started = time.perf_counter()
                pairs = [("email", m) for m in messages]
                if in_flight is None:
                    ledger.store_content(list(zip([m.key for m in messages], contents)), now)
                    results = send_all(pairs, {"email": session})
                    ledger.record_outcomes([Record(**{**r.__dict__, "status": "sent"}) for r in records], now)
                    writes[0] = 2
                else:
                    def hand_over(done, group):
                        writes[0] += 1
                        outcomes = [Record(**{**records[i].__dict__, "status": "sent"}) for i, _ in done]
                        stored = ledger.hand_over(outcomes, [(messages[i].key, contents[i]) for i in group], now)
                        return {i for i in group if messages[i].key in stored}
                    results = send_all(pairs, {"email": session}, hand_over, {"email": in_flight})
                return time.perf_counter() - started, results, writes[0]
            finally:
                session.close()
                db.dispose()

        runs = [dispatch() for _ in range(repeat)]
        seconds = statistics.median(r[0] for r in runs)
        delivered = sum(1 for r in runs[-1][1] if r is not None and r.outcome.status == "sent")
        baseline = baseline or seconds
        what = "whole batch (before)" if in_flight is None else f"hand-over, in_flight {in_flight}"
        doubt = len(messages) if in_flight is None else connections * in_flight
        rows.append({"what": f"dispatch + {backend} ledger: {what}", "rows": delivered, "seconds": seconds,
                     "note": f"{delivered / seconds:,.0f} emails/s = {baseline / seconds:.2f} x whole batch; "
                             f"{runs[-1][2]:,} ledger writes; in doubt at a crash: up to {doubt:,}"})
    return rows


def _with_cpu(cpu: list, sink, fn, *args, **kwargs):
    """``fn``'s result; appends to ``cpu`` the CPU seconds this process (all its threads) and the
    sink process spent meanwhile (the sink's None where /proc is not available)."""
    started, sink_started = time.process_time(), sink.cpu_seconds()
    try:
        return fn(*args, **kwargs)
    finally:
        sink_now = sink.cpu_seconds()
        cpu.append((time.process_time() - started, None if sink_now is None else sink_now - sink_started))


def _cpu_note(cpu: list, count: int, who: str) -> str:
    """Median CPU per message of this process (``who``) and of the sink, from ``_with_cpu``."""
    note = f"{who} CPU {statistics.median(c for c, _ in cpu) / count * 1e6:.0f} us/msg"
    if all(s is not None for _, s in cpu):
        note += f", sink {statistics.median(s for _, s in cpu) / count * 1e6:.0f}"
    return note


def aiosmtpd_ceiling(count: int, sample: bytes, connections: int) -> dict:
    """The test suite's aiosmtpd sink, for comparison with the fast sink."""
    from smtp_sink import SinkProcess, ceiling

    with SinkProcess("aiosmtpd") as sink:
        limit = ceiling(sink.port, sample, count, connections)
    return {"what": f"aiosmtpd ceiling: bare smtplib, {connections} connections", "rows": count,
            "seconds": count / limit, "note": f"{limit:,.0f} msg/s"}


# --- the ledger ------------------------------------------------------------------------------


def fill_history(db, rows: int, customers: int, anchor: datetime) -> float:
    """Insert ``rows`` sent messages of retired campaigns, 60 to 420 days old, in SQL; seconds taken.
    Rows carry no stored content (a real ledger's would make the file bigger, not the key lookups slower).

    One INSERT ... SELECT from a generated series, in key order. Set up for speed, since 10M rows is what
    ``run.py --ledger-growth`` measures: SQLite gets a cache that holds the whole file during the insert (no
    page spilled twice); PostgreSQL drops the ledger's indexes and constraints and builds them again
    afterwards (one sort each instead of 10M random inserts), then ANALYZE. Same tables, same rows."""
    import sqlalchemy

    started = time.perf_counter()
    A = f"TIMESTAMP '{anchor.replace(tzinfo=None).isoformat(sep=' ')}'"
    if db.backend == "duckdb":
        source = f"range({rows}) AS t(i)"
        ts = f"{A} - to_seconds(CAST(60 * 86400 + (i * 7919) % (360 * 86400) AS BIGINT))"
        text = "CAST({} AS VARCHAR)"
    elif db.backend == "postgresql":
        source = f"generate_series(CAST(0 AS BIGINT), {rows - 1}) AS t(i)"
        ts = f"{A} - make_interval(secs => 60 * 86400 + (i * 7919) % (360 * 86400))"
        text = "CAST({} AS TEXT)"
    else:  # SQLite: a recursive counter
        source = f"(WITH RECURSIVE n(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM n WHERE i < {rows - 1}) SELECT i FROM n)"
        ts = f"strftime('%Y-%m-%d %H:%M:%f000', '{anchor.replace(tzinfo=None).isoformat(sep=' ')}', '-' || (60 * 86400 + (i * 7919) % (360 * 86400)) || ' seconds')"
        text = "CAST({} AS TEXT)"
    campaign = f"'history-' || {text.format(f'i % {HISTORY_CAMPAIGNS}')}"
    customer = text.format(f"i % {customers} + 1")
    insert = f"""
        INSERT INTO engine_ledger (message_key, campaign, step, customer_id, trigger_key, variant, channel, status,
                                   reason, detail, trigger_at, due_at, created_at, updated_at, content, attempts)
        SELECT campaign || ':mail:' || customer_id || ':' || trigger_key, campaign, 'mail', customer_id, trigger_key,
               NULL, 'email', 'sent', NULL, '250 accepted', ts, ts, ts, ts, NULL, 1
        FROM (SELECT {campaign} AS campaign, {customer} AS customer_id, {text.format('i')} AS trigger_key, {ts} AS ts
              FROM {source}) AS h
        ORDER BY 1
    """
    with db.engine.begin() as conn:
        if db.backend == "sqlite":
            for pragma in ("cache_size = -8000000", "temp_store = MEMORY", "cache_spill = OFF"):
                conn.exec_driver_sql(f"PRAGMA {pragma}")
            conn.execute(sqlalchemy.text(insert))
        elif db.backend == "postgresql":
            indexes = [row[0] for row in conn.exec_driver_sql(
                "SELECT indexdef FROM pg_indexes WHERE tablename = 'engine_ledger' AND indexname NOT IN "
                "(SELECT conname FROM pg_constraint WHERE conrelid = 'engine_ledger'::regclass)")]
            constraints = conn.exec_driver_sql(
                "SELECT conname, pg_get_constraintdef(oid) FROM pg_constraint "
                "WHERE conrelid = 'engine_ledger'::regclass AND contype IN ('p', 'u') ORDER BY contype").fetchall()
            names = conn.exec_driver_sql("SELECT indexname FROM pg_indexes WHERE tablename = 'engine_ledger'").fetchall()
            for name, _ in constraints:
                conn.exec_driver_sql(f"ALTER TABLE engine_ledger DROP CONSTRAINT {name}")
            for (name,) in names:
                if name not in {n for n, _ in constraints}:
                    conn.exec_driver_sql(f"DROP INDEX {name}")
            conn.exec_driver_sql("SET LOCAL maintenance_work_mem = '1GB'")
            conn.execute(sqlalchemy.text(insert))
            for name, definition in constraints:
                conn.exec_driver_sql(f"ALTER TABLE engine_ledger ADD CONSTRAINT {name} {definition}")
            for definition in indexes:
                conn.exec_driver_sql(definition)
        else:
            conn.execute(sqlalchemy.text(insert))
    if db.backend == "sqlite":
        db.dispose()  # the fill's connection (and its cache) goes; the engine's next connection has the defaults
    elif db.backend == "postgresql":
        db.execute("ANALYZE engine_ledger")
    return time.perf_counter() - started


def _ledger_ops(ledger, now: datetime, customers: int, round_: int) -> dict[str, float]:
    """Seconds for one batch of a pass's ledger operations (1,000 keys each)."""
    from engine.state.ledger import Record

    n = LEDGER_BATCH
    keys = [f"bench:mail:{(round_ * n + i) % customers + 1}:r{round_}-{i}" for i in range(n)]
    # the key lookup a pass does for a ledger in another database: half of the keys exist (history)
    probe = keys[: n // 2] + [f"history-{i % HISTORY_CAMPAIGNS}:mail:{i % customers + 1}:{i}" for i in range(round_ * n, round_ * n + n // 2)]
    records = [Record(message_key=k, campaign="bench", step="mail", customer_id=k.split(":")[2], trigger_key=k.split(":")[3],
                      channel="email", status="claimed", due_at=now, trigger_at=now) for k in keys]
    customer_ids = sorted({r.customer_id for r in records})
    out = {}
    started = time.perf_counter()
    ledger.existing_keys(probe)
    out["existing_keys"] = time.perf_counter() - started
    started = time.perf_counter()
    claimed = ledger.write_new(records, now)
    out["claim (insert)"] = time.perf_counter() - started
    assert len(claimed) == n, len(claimed)
    started = time.perf_counter()
    ledger.store_content([(k, "x" * 1400) for k in keys], now)
    out["store content"] = time.perf_counter() - started
    started = time.perf_counter()
    ledger.record_outcomes([Record(**{**r.__dict__, "status": "sent", "detail": "250 accepted"}) for r in records], now)
    out["record outcomes"] = time.perf_counter() - started
    started = time.perf_counter()
    ledger.recent_sends(customer_ids, now - timedelta(days=7))
    out["recent sends (caps)"] = time.perf_counter() - started
    return out


def measure_ledger(backend: str, directory: Path, history: int, customers: int, anchor: datetime,
                   repeat: int, postgres=None) -> list[dict]:
    """A pass's ledger operations on 1,000 keys: empty ledger vs ``history`` rows of history.

    ``backend`` is duckdb or sqlite (a file in ``directory``) or postgresql (a fresh database of
    ``postgres``, a tests/pg.py server, per size). The last row is the headline of issue 15: the
    write cost per recorded row (claim, content, outcome) on the full ledger against the empty one."""
    from engine.state.ledger import Ledger
    from engine.state.warehouse import Database

    ledgers, paths, fill_seconds = {}, [], 0.0
    for size in (0, history):
        path = directory / f"ledger-{size}.{'duckdb' if backend == 'duckdb' else 'db'}"
        paths += [Path(str(path) + suffix) for suffix in ("", ".wal", "-wal", "-shm")]
        for stale in paths[-4:]:
            stale.unlink(missing_ok=True)
        db = Database(postgres.new_database() if backend == "postgresql" else f"{backend}:///{path}")
        ledgers[size] = Ledger(db)
        ledgers[size].ensure_schema()
        if size:
            fill_seconds = fill_history(db, size, customers, anchor)
            ledgers[size].refresh_statistics()  # as a pass does after a large write (PostgreSQL's ANALYZE)
    # the rounds alternate between the empty and the full ledger, so a burst of load on a shared
    # machine hits both; the first round of each warms up
    rounds: dict[int, list[dict[str, float]]] = {0: [], history: []}
    for round_ in range(repeat + 1):
        for size, ledger in ledgers.items():
            ops = _ledger_ops(ledger, anchor, customers, round_)
            ops["write per row"] = sum(ops[op] for op in WRITES) / LEDGER_BATCH
            rounds[size].append(ops)
    results = {size: {op: statistics.median(r[op] for r in measured[1:]) for op in measured[0]}
               for size, measured in rounds.items()}
    for ledger in ledgers.values():
        ledger.db.dispose()
    for path in paths:
        path.unlink(missing_ok=True)
    rows = [{"what": f"ledger: {history:,} rows of history", "rows": history, "seconds": fill_seconds,
             "note": "filled with one INSERT ... SELECT (not a measurement of the engine)"}]
    for op in results[0]:
        empty, full = results[0][op], results[history][op]
        if op == "write per row":
            rows.append({"what": "  ledger write cost per row", "rows": LEDGER_BATCH, "seconds": full * LEDGER_BATCH,
                         "note": f"claim + content + outcome: empty ledger {empty * 1e6:.1f} us/row, with {history:,} "
                                 f"rows {full * 1e6:.1f} us/row ({full / max(empty, 1e-12):.2f}x)", "ledger_ratio": full / max(empty, 1e-12)})
            continue
        rows.append({"what": f"  ledger {op}, {LEDGER_BATCH:,} keys", "rows": LEDGER_BATCH, "seconds": full,
                     "note": f"empty ledger {empty * 1000:.1f} ms, with {history:,} rows {full * 1000:.1f} ms "
                             f"({full / max(empty, 1e-9):.2f}x)"})
    return rows


# --- memory at many due messages -------------------------------------------------------------

EVERYONE = """\
name: everyone
description: Benchmark only - every customer is due at once.
trigger:
  registration: {}
steps:
  - id: hello
    delay: 0m
    channel: email
    template: registration/first-order.email.j2
"""


def _high_water_mb() -> float:
    """This process's own peak RSS. Not ru_maxrss: on Linux a spawned child inherits its parent's
    high-water mark through fork and exec; VmHWM belongs to the current address space only."""
    import resource

    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def memory_child(directory: str, url: str, now_iso: str) -> dict:
    """Child-process entry: stream the plan of a project where every customer is due; peak RSS."""
    import engine

    os.environ["ENGINE_WAREHOUSE_URL"] = url
    reconciler = engine.Reconciler(engine.load_project(Path(directory)))
    baseline = _high_water_mb()
    started = time.perf_counter()
    due = 0
    for batch in reconciler.due(datetime.fromisoformat(now_iso)):
        due += len(batch)
    seconds = time.perf_counter() - started
    reconciler.close()
    return {"due": due, "seconds": seconds, "baseline_mb": baseline,
            "peak_mb": _high_water_mb()}


def memory_project(project_dir: Path, target: Path) -> Path:
    """A copy of the project with the one campaign ``everyone`` (registration, no delay)."""
    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(project_dir, target)
    shutil.rmtree(target / "campaigns.d")
    (target / "campaigns.d").mkdir()
    (target / "campaigns.d" / "everyone.yaml").write_text(EVERYONE)
    return target


# --- SMTP dispatch alone ---------------------------------------------------------------------


def synthetic_messages(count: int) -> list:
    """``count`` distinct emails shaped like the shipped templates' (plain and HTML parts,
    List-Unsubscribe headers), about 2.1 KB each on the wire."""
    from engine.channels.base import OutgoingMessage

    text = "Hello {name},\n\nthank you for your first order. " + "Here is what we picked for you next. " * 12 + "\n"
    html = "<html><body><p>Hello {name},</p><p>" + "Thank you for your first order, here is what we picked. " * 13 + "</p></body></html>\n"
    return [OutgoingMessage(
        key=f"bench:mail:{i}:{i}", kind="email", to=f"customer{i}@example.com", sender="Shop <shop@example.com>",
        parts={"subject": "Thank you for your first order", "text": text.format(name=f"Customer {i}"),
               "html": html.format(name=f"Customer {i}")},
        headers={"List-Unsubscribe": f"<https://shop.example.com/unsubscribe?c={i}&sig=0123456789abcdef>",
                 "List-Unsubscribe-Post": "List-Unsubscribe=One-Click"}) for i in range(1, count + 1)]


def main() -> None:
    import argparse
    import platform
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from smtp_sink import SinkProcess

    parser = argparse.ArgumentParser(description="The SMTP dispatch measurement alone: the fast loopback sink's "
                                     "ceilings (plain and pipelined bare client) and the engine's SmtpChannel + "
                                     "send_all with and without pipelining, over 1 and N connections, on "
                                     "synthetic messages (no shop, no ledger).")
    parser.add_argument("--count", type=int, default=5000, help="messages per measurement (default 5000)")
    parser.add_argument("--connections", type=int, default=4, help="N (default 4, the engine's default)")
    parser.add_argument("--repeat", type=int, default=3, help="runs per figure; the median is reported (default 3)")
    parser.add_argument("--ledger", default="sqlite,duckdb",
                        help="ledgers for the hand-over measurement, comma-separated, or 'none' (default sqlite,duckdb)")
    args = parser.parse_args()
    messages = synthetic_messages(args.count)
    with SinkProcess("fast") as sink:
        settings = {"host": "127.0.0.1", "port": sink.port}
        rows = measure_dispatch(sink, messages, settings, args.connections, args.repeat)
        with tempfile.TemporaryDirectory(prefix="engine-handover-") as directory:
            for backend in [b for b in args.ledger.split(",") if b and b != "none"]:
                rows += measure_handover(sink, messages, settings, args.connections, backend, Path(directory),
                                         args.repeat)
    print(f"{args.count:,} messages, median of {args.repeat}; {os.cpu_count()} CPUs, Python {platform.python_version()}, load average "
          + " ".join(f"{x:.2f}" for x in os.getloadavg()))
    for r in rows:
        print(f"{r['what']:<55} {r['rows']:>7,} {r['seconds']:>8.3f}  {r['note']}")


if __name__ == "__main__":
    main()
