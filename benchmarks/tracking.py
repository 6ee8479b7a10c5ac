"""Tracking requests per second beside /healthz, in the same run (imported by run.py; also
``python benchmarks/tracking.py [REQUESTS]``).

The service's HTTP server (``engine.service.httpd.StatusServer``, waitress, 4 worker threads) serves
the tracking routes (``engine.service.tracking``) over a SQLite ledger holding one sent message. A
bounded loopback load - ``CLIENTS`` client processes, each with ``THREADS`` keep-alive connections,
``requests`` requests in all per measurement - asks in turn:

- **plain waitress**: ``waitress.create_server`` with the same number of threads and a WSGI app that
  answers ``ok`` and nothing else, in the same process, under the same load: the ceiling of the server
  underneath. Its rounds alternate with /healthz's (median of ``ROUNDS`` each), so a burst of load on the
  shared machine hits both; /healthz's "x floor" is its time over plain waitress's;
- **/healthz**: the floor, what the server answers with no work at all;
- **/open, replayed**: one pixel asked again and again: token opened, message looked up, the insert
  finds its event already recorded (a mail client reloading an image);
- **/click, new events**: one distinct link per request (each request's token seals another URL of
  the message): token opened, message looked up, the event handed to the writer (one insert per
  batch), the 302; the time includes waiting until every event is written. Measured with the
  service's writer (it lingers ``LINGER`` for more events once one woke it) and, beside it in turns
  (``CLICK_ROUNDS`` each, the median), with a writer that does not linger (``linger=0``: the writer
  before, woken by every click and writing whatever arrived meanwhile), each round with new URLs.

Each row's "x floor" is its time over /healthz's for the same number of requests; its note gives
its time over plain waitress's too, and the server process's CPU time and voluntary context
switches per request (getrusage: the client processes are not counted), which show what a row costs
whatever the load on the shared machine, where requests/s alone swing several-fold between runs.
"""
from __future__ import annotations

import http.client
import multiprocessing
import resource
import sys
import tempfile
import threading
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

CLIENTS = 2
THREADS = 4
ROUNDS = 5  # /healthz and plain waitress, alternately; the median of each
CLICK_ROUNDS = 3  # /click with and without the writer's linger, alternately; the median of each
SECRET = "benchmark-tracking-secret-0123456789abcdefgh"  # a benchmark's, never a real one
KEY = "bench:step:1:1"
PERSON = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0 Safari/537.36"


def _client(port: int, paths: list[str], start: multiprocessing.Event, out: multiprocessing.Queue) -> None:
    """Ask for ``paths`` over THREADS keep-alive connections; put (answers by status) on ``out``."""
    statuses: dict[int, int] = {}
    lock = threading.Lock()

    def worker(mine: list[str]) -> None:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        seen: dict[int, int] = {}
        for path in mine:
            connection.request("GET", path, headers={"User-Agent": PERSON})
            response = connection.getresponse()
            response.read()
            seen[response.status] = seen.get(response.status, 0) + 1
        connection.close()
        with lock:
            for status, count in seen.items():
                statuses[status] = statuses.get(status, 0) + count

    threads = [threading.Thread(target=worker, args=(paths[i::THREADS],)) for i in range(THREADS)]
    start.wait()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    out.put(statuses)


def _load(port: int, paths: list[str], after=None) -> tuple[float, dict[int, int], float, float]:
    """Seconds for all ``paths`` asked by CLIENTS processes at once (and then ``after()``, if given), the
    answers by status, and this process's CPU microseconds and voluntary context switches per path."""
    context = multiprocessing.get_context("spawn")
    start, out = context.Event(), context.Queue()
    processes = [context.Process(target=_client, args=(port, paths[i::CLIENTS], start, out)) for i in range(CLIENTS)]
    for process in processes:
        process.start()
    time.sleep(1.0)  # the clients are up and waiting
    used = resource.getrusage(resource.RUSAGE_SELF)
    started = time.perf_counter()
    start.set()
    answers: dict[int, int] = {}
    for _ in processes:
        for status, count in out.get(timeout=300).items():
            answers[status] = answers.get(status, 0) + count
    if after is not None:
        after()
    seconds = time.perf_counter() - started
    now = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (now.ru_utime + now.ru_stime - used.ru_utime - used.ru_stime) * 1e6 / len(paths)
    switches = (now.ru_nvcsw - used.ru_nvcsw) / len(paths)
    for process in processes:
        process.join(timeout=30)
    return seconds, answers, cpu, switches


def _plain_waitress(threads: int):
    """waitress itself with a trivial app (the same answer as /healthz), serving on a thread: (port, close)."""
    import waitress

    def app(environ: dict, start_response) -> list[bytes]:
        start_response("200 OK", [("Content-Type", "text/plain; charset=utf-8"), ("Content-Length", "3"),
                                  ("Cache-Control", "no-store")])
        return [b"ok\n"]

    server = waitress.create_server(app, host="127.0.0.1", port=0, threads=threads)
    threading.Thread(target=server.run, name="plain-waitress", daemon=True).start()

    def close() -> None:
        server.close()
        server.task_dispatcher.shutdown(timeout=5)

    return server.effective_port, close


def _alternately(loads, rounds: int) -> list[tuple[float, dict[int, int], float, float]]:
    """Each of the two ``loads`` (callables returning ``_load``'s answer)'s median over ``rounds``, the two
    taking turns (ABBA...)."""
    measured: list[list[tuple[float, dict[int, int], float, float]]] = [[], []]
    for turn in range(rounds):
        for which in ((0, 1) if turn % 2 == 0 else (1, 0)):
            measured[which].append(loads[which](turn))
    return [sorted(each, key=lambda m: m[0])[len(each) // 2] for each in measured]


def _flushed(state) -> None:
    assert state.writer.flush(timeout=120), "the writer did not finish within 120 s"


def _costs(cpu: float, switches: float) -> str:
    return f"{cpu:,.0f} us CPU, {switches:.1f} voluntary switches per request"


def measure_tracking(requests: int) -> list[dict]:
    from engine import tracking
    from engine.clock import FixedClock
    from engine.model import ProjectConfig
    from engine.service import tracking as endpoints
    from engine.service.httpd import WORKERS, StatusServer
    from engine.state.ledger import Ledger, Record
    from engine.state.warehouse import Database

    sent_at = datetime(2026, 1, 5, 9, 0, tzinfo=timezone.utc)
    now = sent_at + timedelta(days=1)
    directory = Path(tempfile.mkdtemp(prefix="engine-bench-tracking-"))
    ledger = Ledger(Database(f"sqlite:///{directory / 'ledger.db'}"))
    ledger.ensure_schema()
    record = Record(message_key=KEY, campaign="bench", step="step", customer_id="1", trigger_key="1", channel="mail",
                    status="claimed", due_at=sent_at)
    ledger.write_new([record], sent_at)
    ledger.record_outcomes([Record(**{**record.__dict__, "status": "sent"})], sent_at)
    config = ProjectConfig(root=str(directory), warehouse_url="sqlite://", ledger_url=None, sources={}, channels={})
    lingering = endpoints.Tracking(config, (SECRET,), ledger)
    memory = endpoints.Memory()
    eager = endpoints.Tracking(config, (SECRET,), ledger, memory=memory, writer=endpoints.Writer(ledger, memory, linger=0))
    serving = {"state": lingering}
    server = StatusServer("127.0.0.1", 0, readiness=lambda: (True, {}),
                          metrics=lambda environ, start_response: [b""],
                          routes=endpoints.routes(lambda: serving["state"], FixedClock(now)))
    server.start()
    plain_port, close_plain = _plain_waitress(WORKERS)
    print(f"Measuring tracking requests/s: {requests:,} requests per endpoint, {CLIENTS} client processes x "
          f"{THREADS} connections ...", flush=True)
    pixel = "/open?t=" + tracking.seal(SECRET, "open", KEY, sent_at)

    def clicks(state, label: str):
        def load(turn: int):
            serving["state"] = state
            paths = ["/click?t=" + tracking.seal(SECRET, "click", KEY, sent_at, f"https://shop.example/{label}{turn}/p/{i}")
                     for i in range(requests)]  # new URLs each round: new events
            return _load(server.port, paths, after=lambda: _flushed(state))  # the events written: their time counts
        return load

    def healthz(port: int):
        return lambda turn: _load(port, ["/healthz"] * requests)

    rows = []
    try:
        for port in (server.port, plain_port):  # warm-up: imports, connections, the first insert
            _load(port, ["/healthz"] * min(requests, 500))
        (floor, *floor_rest), (plain, plain_answers, *plain_costs) = _alternately(
            (healthz(server.port), healthz(plain_port)), ROUNDS)
        opens, *open_rest = _load(server.port, [pixel] * requests)
        (click_s, *click_rest), (eager_s, *eager_rest) = _alternately(
            (clicks(lingering, "a"), clicks(eager, "b")), CLICK_ROUNDS)
        recorded = len(ledger.customer_events("1"))
    finally:
        server.stop()
        close_plain()
        ledger.close()
    rows.append({"backend": "-", "what": "tracking: plain waitress, trivial app", "rows": requests, "seconds": plain,
                 "note": f"{requests / plain:,.0f} requests/s, median of {ROUNDS}; {_costs(*plain_costs)}"})
    assert plain_answers == {200: requests}, plain_answers
    linger_ms = endpoints.LINGER * 1000
    for what, seconds, (answers, cpu, switches), expected, rounds in (
            ("tracking: /healthz (floor; x plain waitress)", floor, floor_rest, 200, ROUNDS),
            ("tracking: /open replayed", opens, open_rest, 200, 1),
            (f"tracking: /click, one new event each (writer lingers {linger_ms:.0f} ms)", click_s, click_rest, 302,
             CLICK_ROUNDS),
            ("tracking: /click, one new event each, writer without linger (before)", eager_s, eager_rest, 302,
             CLICK_ROUNDS)):
        assert answers == {expected: requests}, (what, answers)
        rows.append({"backend": "sqlite", "what": what, "rows": requests, "seconds": seconds,
                     "floor": floor if "floor" not in what else plain,
                     "note": f"{requests / seconds:,.0f} requests/s" + (f", median of {rounds}" if rounds > 1 else "")
                             + ("" if "floor" in what else f", x plain waitress {seconds / plain:.2f}")
                             + f"; {_costs(cpu, switches)}"})
    expected_events = 2 * CLICK_ROUNDS * requests + 1  # every click once, the replayed open once
    assert recorded == expected_events, recorded
    rows[-1]["note"] += f"; {recorded:,} events recorded in all"
    return rows


if __name__ == "__main__":
    import os

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    for row in measure_tracking(int(sys.argv[1]) if len(sys.argv) > 1 else 4000):
        ratio = (f"  x {'plain waitress' if 'x plain' in row['what'] else 'floor'} {row['seconds'] / row['floor']:.2f}"
                 if "floor" in row else "")
        print(f"{row['what']:<40} {row['seconds']:8.2f} s  {row['note']}{ratio}")
    print(f"load average {' / '.join(f'{a:.2f}' for a in os.getloadavg())} at the end; {os.cpu_count()} CPUs")
