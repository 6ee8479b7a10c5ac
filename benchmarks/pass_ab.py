"""The whole first pass to the loopback SMTP sink, two or more checkouts alternately, with its CPU per email.

    python benchmarks/pass_ab.py --rounds 3 /path/to/before /path/to/after

Each pass runs in a fresh process with the checkout's own engine (``PYTHONPATH``), on a copy of the
``--quick`` shop (10k customers / 100k orders, built once in ``--shop DIR`` by run.py's ``build_all``),
its project's email channel pointed at one fast sink shared by all passes (run.py ``_use_smtp``), the
ledger emptied first (run.py ``_reset_ledger``), what start-up left frozen (``engine.heap.settle``, as
``engine run`` does after opening the reconciler; ``PASS_AB_NO_FREEZE=1`` leaves it to the collector). Printed per pass: wall time, emails/s of the pass and
while dispatching (as ``dispatch.measure_smtp``), the CPU seconds of the whole process (every thread,
DuckDB's included) per email, and the CPU of the main thread's stages and of the hand-over writes
(``time.thread_time`` around each stage) with the load average. CPU per email is the figure to compare
on a shared machine: the wall time follows the load. The main thread's wait for the batch in flight is
also printed as wall time ("waited"): its CPU is nearly nil, so the CPU figures alone hide that the main
thread spends a quarter of the pass waiting for the send stage (benchmarks/README.md, emails25). After the
pass: the write-ahead log it left in the DuckDB file and the ``CHECKPOINT`` that moves it into the file, timed
outside the pass (the service's between passes since send27; at close before), and the process's peak RSS.
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

HERE = Path(__file__).resolve().parent

#: (module, class or None, function, label) of the stages timed in the child: the main thread's, then the
#: hand-over writes (on the send threads)
STAGES = (("engine.run.reconcile", None, "record_decisions", "decisions"), ("engine.run.reconcile", None, "claim", "claim"),
          ("engine.run.reconcile", None, "render", "render"), ("engine.run.render", "TriggerContexts", "load", "render:contexts"),
          ("engine.templating.render", "Renderer", "render", "render:jinja"),
          ("engine.run.reconcile", "_Sending", "finish", "wait for send"),
          ("engine.state.ledger", "Ledger", "hand_over", "hand-over writes"))


def child(repo: Path, port: int, work: Path, shop: Path) -> None:
    import importlib

    sys.path[:0] = [str(repo), str(repo / "benchmarks")]
    import run as bench

    project_dir = work / "project-smtp"
    shutil.rmtree(work, ignore_errors=True)
    for name in ("campaigns.d", "templates"):
        shutil.copytree(repo / name, project_dir / name)
    shutil.copy(repo / "engine.yaml", project_dir / "engine.yaml")
    bench._use_smtp(project_dir / "engine.yaml", port, None)
    shutil.copy(shop / "shop.duckdb", work / "shop.duckdb")
    os.environ["ENGINE_WAREHOUSE_URL"] = f"duckdb:///{work / 'shop.duckdb'}"
    import engine
    import engine.run.send as send_stage

    cpu: dict[str, float] = collections.defaultdict(float)
    waited = [0.0]  # wall seconds of the main thread in "wait for send"
    for module, owner, attribute, label in STAGES:
        target = importlib.import_module(module)
        target = getattr(target, owner) if owner else target
        original = getattr(target, attribute)

        def timed(*args, __original=original, __label=label, **kwargs):
            started, wall = time.thread_time(), time.perf_counter()
            try:
                return __original(*args, **kwargs)
            finally:
                cpu[__label] += time.thread_time() - started
                if __label == "wait for send":
                    waited[0] += time.perf_counter() - wall
        setattr(target, attribute, timed)
    dispatch = [0.0]
    send_all = send_stage.send_all

    def timed_send_all(*args, **kwargs):
        started = time.perf_counter()
        try:
            return send_all(*args, **kwargs)
        finally:
            dispatch[0] += time.perf_counter() - started
    send_stage.send_all = timed_send_all
    reconciler = engine.Reconciler(engine.load_project(project_dir))
    bench._reset_ledger(reconciler, project_dir)
    if not os.environ.get("PASS_AB_NO_FREEZE"):
        from engine import heap
        heap.settle(collect=False)  # as `engine run` does once start-up is done (cli.common.open_reconciler)
    cpu0, wall0, main0 = time.process_time(), time.perf_counter(), time.thread_time()
    report = reconciler.run_once(datetime(2025, 1, 10, tzinfo=timezone.utc))
    wall, process, main = time.perf_counter() - wall0, time.process_time() - cpu0, time.thread_time() - main0
    # what the pass left in the write-ahead log, and the checkpoint that moves it into the file after the pass
    # (the service's, between passes; at close otherwise): the same statement on either checkout
    wal_file = work / "shop.duckdb.wal"
    wal = wal_file.stat().st_size if wal_file.exists() else 0
    wall1, cpu1 = time.perf_counter(), time.process_time()
    reconciler.ledger.db.execute("CHECKPOINT")
    after = (time.perf_counter() - wall1, time.process_time() - cpu1)
    reconciler.close()
    print(json.dumps({"wall": wall, "cpu": process, "main": main, "dispatch": dispatch[0], "sent": report.total("sent"),
                      "skipped": report.total("skipped"), "errors": report.errors[:3], "stages": cpu, "waited": waited[0],
                      "load": os.getloadavg()[0], "wal": wal, "checkpoint": after,
                      "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkouts", nargs="+", type=Path, help="repository roots to alternate")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--shop", type=Path, default=Path("/tmp/engine-pass-ab"), help="where the --quick shop is built once")
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.checkouts[0], int(args.child[0]), Path(args.child[1]), Path(args.child[2]))
        return 0
    sys.path.insert(0, str(HERE))
    import run as bench
    from smtp_sink import SinkProcess

    bench.build_all(str(args.shop), 10_000, 100_000, "2025-01-10T00:00:00Z", 42, False)
    sink = SinkProcess("fast")
    try:
        for _ in range(args.rounds):
            for i, repo in enumerate(args.checkouts):
                before = sink.received()
                done = subprocess.run([sys.executable, __file__, str(repo.resolve()), "--child", str(sink.port),
                                       str(args.shop / f"pass-{i}"), str(args.shop)],
                                      capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(repo.resolve())})
                if done.returncode:
                    print(done.stderr[-3000:])
                    continue
                d = json.loads(done.stdout.strip().splitlines()[-1])
                emails = sink.received() - before
                per = lambda seconds: f"{seconds / max(emails, 1) * 1000:.3f}"  # noqa: E731 - ms per email
                print(f"{str(repo):24} wall {d['wall']:6.1f} s {emails / d['wall']:5.0f} emails/s "
                      f"({emails / max(d['dispatch'], 1e-9):5.0f}/s dispatching), {emails:,} emails; CPU ms/email: "
                      f"process {per(d['cpu'])}, main thread {per(d['main'])} ("
                      + ", ".join(f"{k} {per(v)}" for k, v in d["stages"].items() if k != "hand-over writes")
                      + f"), hand-over writes {per(d['stages'].get('hand-over writes', 0))}; main thread waited for"
                      f" the batch in flight {d.get('waited', 0):.2f} s of wall ({d.get('waited', 0) / d['wall']:.0%}); load {d['load']:.1f}"
                      + f"; WAL after the pass {d['wal'] / 2**20:.1f} MiB, its checkpoint {d['checkpoint'][0]:.3f} s"
                      f" (CPU {d['checkpoint'][1]:.3f}); peak RSS {d['rss_mb']:.0f} MB"
                      + (f"; errors {d['errors']}" if d["errors"] else ""), flush=True)
    finally:
        sink.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
