"""The service's HTTP server beside plain waitress, each in a process of its own, in turns
(``python benchmarks/httpd_ab.py [REQUESTS] [CLIENTSxCONNECTIONS] [ROUNDS]``, e.g. ``4000 2x4 8``).

A diagnosis, not a headline (the headline ratio is tracking.py's, in run.py): it tells a defect of
``engine.service.httpd.StatusServer`` from the machine. Both servers answer /healthz with 4 threads;
the load is tracking.py's (client processes with keep-alive connections, http.client). Per round and
server it prints requests/s, the latency percentiles and, read from /proc for the server's process
only, CPU time and voluntary context switches per request: a server that does more per request shows
it there whatever the load on the shared machine, where requests/s alone swing several-fold from one
round to the next.
"""
from __future__ import annotations

import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import tracking  # noqa: E402 - the same client load

SERVERS = ("StatusServer", "plain waitress")


def _serve(kind: str) -> None:
    """In the child: serve /healthz with ``kind``, print the port, serve until stdin closes."""
    if kind == "StatusServer":
        from engine.service.httpd import StatusServer

        server = StatusServer("127.0.0.1", 0, readiness=lambda: (True, {}), metrics=lambda environ, start: [b""])
        server.start()
        port, stop = server.port, server.stop
    else:
        from engine.service.httpd import WORKERS, _route_waitress_logs

        _route_waitress_logs()  # the same logging: no "Task queue depth" line per request on stderr
        port, stop = tracking._plain_waitress(WORKERS)
    print(port, flush=True)
    sys.stdin.read()
    stop()


def _process_counters(pid: int) -> tuple[float, int]:
    """CPU seconds (user + system) and voluntary context switches of every thread of ``pid`` so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    cpu = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    switches = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            for line in (task / "status").read_text().splitlines():
                if line.startswith("voluntary_ctxt_switches:"):
                    switches += int(line.split()[1])
        except FileNotFoundError:  # a thread that ended meanwhile
            pass
    return cpu, switches


def _timed_client(port: int, count: int, connections: int, start, out) -> None:
    """tracking's client, timing each request: puts the latencies on ``out``."""
    import http.client

    latencies: list[float] = []
    lock = threading.Lock()

    def worker(n: int) -> None:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        mine = []
        for _ in range(n):
            began = time.perf_counter()
            connection.request("GET", "/healthz", headers={"User-Agent": tracking.PERSON})
            response = connection.getresponse()
            response.read()
            assert response.status == 200, response.status
            mine.append(time.perf_counter() - began)
        connection.close()
        with lock:
            latencies.extend(mine)

    threads = [threading.Thread(target=worker, args=(count // connections,)) for _ in range(connections)]
    start.wait()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    out.put(latencies)


def _round(pid: int, port: int, requests: int, clients: int, connections: int) -> dict:
    import multiprocessing

    context = multiprocessing.get_context("spawn")
    start, out = context.Event(), context.Queue()
    processes = [context.Process(target=_timed_client, args=(port, requests // clients, connections, start, out))
                 for _ in range(clients)]
    for process in processes:
        process.start()
    time.sleep(1.0)
    cpu, switches = _process_counters(pid)
    began = time.perf_counter()
    start.set()
    latencies = sorted(x for _ in processes for x in out.get(timeout=300))
    seconds = time.perf_counter() - began
    cpu_after, switches_after = _process_counters(pid)
    for process in processes:
        process.join(timeout=30)
    done = len(latencies)
    return {"rps": done / seconds, "p50": latencies[done // 2] * 1e3, "p99": latencies[int(done * 0.99)] * 1e3,
            "cpu_us": (cpu_after - cpu) / done * 1e6, "switches": (switches_after - switches) / done,
            "load": os.getloadavg()[0]}


def main(requests: int, shape: str, rounds: int) -> None:
    clients, connections = (int(n) for n in shape.split("x"))
    environment = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    children = {kind: subprocess.Popen([sys.executable, __file__, "--serve", kind], stdin=subprocess.PIPE,
                                       stdout=subprocess.PIPE, text=True, env=environment) for kind in SERVERS}
    try:
        ports = {kind: int(child.stdout.readline()) for kind, child in children.items()}
        for kind in SERVERS:  # warm-up
            _round(children[kind].pid, ports[kind], 400, clients, connections)
        results: dict[str, list[dict]] = {kind: [] for kind in SERVERS}
        for turn in range(rounds):
            for kind in SERVERS if turn % 2 == 0 else SERVERS[::-1]:
                r = _round(children[kind].pid, ports[kind], requests, clients, connections)
                results[kind].append(r)
                print(f"{kind:<15} {shape}: {r['rps']:7,.0f} requests/s  p50 {r['p50']:6.2f} ms  p99 {r['p99']:6.2f} ms"
                      f"  CPU {r['cpu_us']:4.0f} us/request  {r['switches']:5.1f} voluntary switches/request"
                      f"  load {r['load']:.2f}", flush=True)
        for kind, measured in results.items():
            print(f"{kind:<15} median {statistics.median(r['rps'] for r in measured):7,.0f} requests/s, "
                  f"CPU {statistics.median(r['cpu_us'] for r in measured):4.0f} us/request, "
                  f"{statistics.median(r['switches'] for r in measured):4.1f} voluntary switches/request")
        print(f"load average {' / '.join(f'{a:.2f}' for a in os.getloadavg())} at the end; {os.cpu_count()} CPUs")
    finally:
        for child in children.values():
            child.stdin.close()
            child.wait(timeout=30)


if __name__ == "__main__":
    if sys.argv[1:2] == ["--serve"]:
        _serve(sys.argv[2])
    else:
        main(int(sys.argv[1]) if len(sys.argv) > 1 else 4000, sys.argv[2] if len(sys.argv) > 2 else "2x4",
             int(sys.argv[3]) if len(sys.argv) > 3 else 8)
