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
  batch), the 302; the time includes waiting until every event is written.

Each row's "x floor" is its time over /healthz's for the same number of requests.
"""
from __future__ import annotations

import http.client
import multiprocessing
import sys
import tempfile
import threading
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

CLIENTS = 2
THREADS = 4
ROUNDS = 5  # /healthz and plain waitress, alternately; the median of each
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


def _load(port: int, paths: list[str]) -> tuple[float, dict[int, int]]:
    """Seconds for all ``paths`` asked by CLIENTS processes at once, and the answers by status."""
    context = multiprocessing.get_context("spawn")
    start, out = context.Event(), context.Queue()
    processes = [context.Process(target=_client, args=(port, paths[i::CLIENTS], start, out)) for i in range(CLIENTS)]
    for process in processes:
        process.start()
    time.sleep(1.0)  # the clients are up and waiting
    started = time.perf_counter()
    start.set()
    answers: dict[int, int] = {}
    for _ in processes:
        for status, count in out.get(timeout=300).items():
            answers[status] = answers.get(status, 0) + count
    seconds = time.perf_counter() - started
    for process in processes:
        process.join(timeout=30)
    return seconds, answers


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


def _alternately(ports: tuple[int, int], paths: list[str]) -> list[tuple[float, dict[int, int]]]:
    """Each port's median (seconds, answers) over ROUNDS loads, the ports taking turns (ABBA...)."""
    rounds: list[list[tuple[float, dict[int, int]]]] = [[], []]
    for turn in range(ROUNDS):
        for which in ((0, 1) if turn % 2 == 0 else (1, 0)):
            rounds[which].append(_load(ports[which], paths))
    return [sorted(measured, key=lambda m: m[0])[len(measured) // 2] for measured in rounds]


def _flushed(state) -> float:
    started = time.perf_counter()
    assert state.writer.flush(timeout=120)
    return time.perf_counter() - started


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
    state = endpoints.Tracking(config, (SECRET,), ledger)
    server = StatusServer("127.0.0.1", 0, readiness=lambda: (True, {}),
                          metrics=lambda environ, start_response: [b""],
                          routes=endpoints.routes(lambda: state, FixedClock(now)))
    server.start()
    plain_port, close_plain = _plain_waitress(WORKERS)
    print(f"Measuring tracking requests/s: {requests:,} requests per endpoint, {CLIENTS} client processes x "
          f"{THREADS} connections ...", flush=True)
    pixel = "/open?t=" + tracking.seal(SECRET, "open", KEY, sent_at)
    clicks = ["/click?t=" + tracking.seal(SECRET, "click", KEY, sent_at, f"https://shop.example/p/{i}")
              for i in range(requests)]
    rows = []
    try:
        for port in (server.port, plain_port):  # warm-up: imports, connections, the first insert
            _load(port, ["/healthz"] * min(requests, 500))
        (floor, healthz), (plain, plain_answers) = _alternately((server.port, plain_port), ["/healthz"] * requests)
        opens, open_answers = _load(server.port, [pixel] * requests)
        click_s, click_answers = _load(server.port, clicks)
        click_s += _flushed(state)  # the clicks' events are written: their time counts
        recorded = len(ledger.customer_events("1"))
    finally:
        server.stop()
        close_plain()
        ledger.close()
    rows.append({"backend": "-", "what": "tracking: plain waitress, trivial app", "rows": requests, "seconds": plain,
                 "note": f"{requests / plain:,.0f} requests/s, median of {ROUNDS}"})
    assert plain_answers == {200: requests}, plain_answers
    for what, seconds, answers, expected in (("tracking: /healthz (floor; x plain waitress)", floor, healthz, 200),
                                             ("tracking: /open replayed", opens, open_answers, 200),
                                             ("tracking: /click, one new event each", click_s, click_answers, 302)):
        assert answers == {expected: requests}, (what, answers)
        rows.append({"backend": "sqlite", "what": what, "rows": requests, "seconds": seconds,
                     "floor": floor if "floor" not in what else plain,
                     "note": f"{requests / seconds:,.0f} requests/s" + (f", median of {ROUNDS}" if "floor" in what else "")})
    assert recorded == requests + 1, recorded  # every click once, the replayed open once
    rows[-1]["note"] += f"; {recorded:,} events recorded"
    return rows


if __name__ == "__main__":
    import os

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    for row in measure_tracking(int(sys.argv[1]) if len(sys.argv) > 1 else 4000):
        ratio = (f"  x {'plain waitress' if 'x plain' in row['what'] else 'floor'} {row['seconds'] / row['floor']:.2f}"
                 if "floor" in row else "")
        print(f"{row['what']:<40} {row['seconds']:8.2f} s  {row['note']}{ratio}")
    print(f"load average {' / '.join(f'{a:.2f}' for a in os.getloadavg())} at the end; {os.cpu_count()} CPUs")
