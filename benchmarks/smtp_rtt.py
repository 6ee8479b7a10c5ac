"""Dispatch alone over a network round trip: two checkouts' ``send_all`` to the fast SMTP sink through a
loopback proxy that holds every chunk ``--delay-ms`` each way (a round trip of twice that), alternated in
fresh processes.

The loopback sink answers in microseconds, so the benchmark's other SMTP rows hide what a real relay's
round trip costs per message; this tool shows it. What it runs: ``synthetic_messages(--count)`` through
``SmtpChannel`` (4 connections, pipelining as the sink advertises) and ``send_all`` with a hand-over
that accepts every group (as the pass's, without the ledger), so each worker sends groups of
``in_flight`` messages. The proxy (``LatencyProxy``, its own process) keeps each direction's bytes in
order and delays each chunk from when it arrived. Prints emails/s per run with the load average and the
medians' ratio. Must not write anything but its output.

    python benchmarks/smtp_rtt.py BASE BRANCH --delay-ms 1 --count 1000 --rounds 3
"""
from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from checkouts import engine_checkout, run_child  # noqa: E402
from smtp_sink import ChildServer, SinkProcess  # noqa: E402


class LatencyProxy(ChildServer):
    """A TCP proxy on a free loopback port to ``port``, each chunk held ``delay`` seconds each way."""

    def __init__(self, port: int, delay: float):
        super().__init__(_serve, (port, delay), "the latency proxy")


def _serve(listen: int, ready, target: int, delay: float) -> None:
    async def pump(reader, writer):
        held: asyncio.Queue = asyncio.Queue()

        async def deliver():
            while True:
                due, chunk = await held.get()
                if chunk is None:
                    writer.close()
                    return
                if due > time.monotonic():
                    await asyncio.sleep(due - time.monotonic())
                writer.write(chunk)
                await writer.drain()

        delivering = asyncio.create_task(deliver())
        while True:
            chunk = await reader.read(65536)
            held.put_nowait((time.monotonic() + delay, chunk or None))
            if not chunk:
                break
        await delivering

    async def connection(reader, writer):
        upstream_reader, upstream_writer = await asyncio.open_connection("127.0.0.1", target)
        await asyncio.gather(pump(reader, upstream_writer), pump(upstream_reader, writer), return_exceptions=True)

    async def main():
        server = await asyncio.start_server(connection, "127.0.0.1", listen)
        ready.set()
        async with server:
            await server.serve_forever()

    asyncio.run(main())


def child(port: int, count: int) -> dict:
    import engine
    from engine.channels.smtp import SmtpChannel
    from engine.run.dispatch import send_all
    from dispatch import synthetic_messages

    messages = synthetic_messages(count)
    session = SmtpChannel(engine.model.ChannelConfig(
        name="email", kind="email", transport="smtp",
        settings={"host": "127.0.0.1", "port": port, "connections": 4, "timeout": 30}))
    session.open()
    try:
        started, cpu = time.perf_counter(), time.process_time()
        results = send_all([("email", m) for m in messages], {"email": session},
                           hand_over=lambda done, group: set(group))
        wall, cpu = time.perf_counter() - started, time.process_time() - cpu
    finally:
        session.close()
    sent = sum(1 for r in results if r is not None and r.outcome.status == "sent")
    return {"sent": sent, "wall": wall, "cpu": cpu, "engine": engine_checkout()}


def main() -> None:
    import json

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkouts", nargs="*", type=Path, help="BASE BRANCH (or one checkout)")
    parser.add_argument("--delay-ms", type=float, default=1.0, help="held each way (default 1: a 2 ms round trip)")
    parser.add_argument("--count", type=int, default=1000, help="emails per run (default 1000)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--child", nargs=2, type=int, metavar=("PORT", "COUNT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(*args.child)))
        return
    if not args.checkouts or args.delay_ms < 0 or args.count < 1 or args.rounds < 1:
        parser.error("name one or two checkouts; --delay-ms >= 0, --count and --rounds >= 1")
    rates: dict[Path, list[float]] = {checkout: [] for checkout in args.checkouts}
    with SinkProcess("fast") as sink, LatencyProxy(sink.port, args.delay_ms / 1000) as proxy:
        for round_ in range(args.rounds):
            order = args.checkouts if round_ % 2 == 0 else args.checkouts[::-1]
            for checkout in order:
                row = run_child(__file__, checkout, [str(proxy.port), str(args.count)])
                rates[checkout].append(row["sent"] / row["wall"])
                load = " ".join(Path("/proc/loadavg").read_text().split()[:3])
                print(f"round {round_} {checkout}: {row['sent']:,} sent, {rates[checkout][-1]:,.0f} emails/s, "
                      f"CPU {row['cpu']:.2f} s, load {load}", flush=True)
    medians = [statistics.median(rates[checkout]) for checkout in args.checkouts]
    summary = ", ".join(f"{checkout} {median:,.0f}/s" for checkout, median in zip(args.checkouts, medians))
    ratio = f", x{medians[1] / medians[0]:.2f}" if len(medians) == 2 else ""
    print(f"{args.delay_ms:g} ms each way: {summary}{ratio}")


if __name__ == "__main__":
    main()
