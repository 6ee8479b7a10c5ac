"""The randomized kill test outside pytest, with as many kill points as you like.

``python benchmarks/kills.py`` runs what tests/test_kills.py runs (60 kills in
at_most_once, 40 in at_least_once); ``--soak`` runs 1,000 kills per delivery
mode (at the CI run's 1.2-1.8 s per kill here, about an hour for both), ``--kills N``
any number. Each mode prints its
seed (``--seed`` repeats a run), the kills, passes and rounds, the most
messages a kill left in doubt per channel against the in-flight bound, the
ledger's outcomes and what arrived at the loopback providers, then every
problem found (exit 1 if any). The shop, the passes and the checks are
tests/kill_harness.py; the processes come from tests/forkserver.py.
"""
from __future__ import annotations

import argparse
import random
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
for path in (REPO, REPO / "tests"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

SOAK_KILLS = 1000


def main() -> int:
    parser = argparse.ArgumentParser(description="engine run --once SIGKILLed at random moments, then recovered; "
                                     "checks that nothing is sent twice or lost (see tests/test_kills.py).")
    parser.add_argument("--soak", action="store_true", help=f"{SOAK_KILLS:,} kills per delivery mode")
    parser.add_argument("--kills", type=int, help="kills per delivery mode (default: the CI run's 60 and 40)")
    parser.add_argument("--customers", type=int, default=400, help="customers, one order each per round (default 400)")
    parser.add_argument("--seed", type=int, help="repeat a run (default: random, printed)")
    parser.add_argument("--delivery", choices=["at_most_once", "at_least_once", "both"], default="both")
    args = parser.parse_args()

    from conftest import database_url
    from forkserver import ForkServer
    from kill_harness import KillTest
    from servers import SmsProvider, SmtpSink
    from test_kills import KILLS

    failed = False
    for delivery in (["at_most_once", "at_least_once"] if args.delivery == "both" else [args.delivery]):
        kills = SOAK_KILLS if args.soak else args.kills or KILLS[delivery]
        seed = args.seed or random.SystemRandom().randrange(1, 10**6)
        print(f"{delivery}: {kills:,} kills, seed {seed}", flush=True)
        with tempfile.TemporaryDirectory(prefix="engine-kills-") as directory, \
                SmtpSink() as smtp, SmsProvider() as sms, ForkServer() as server:
            smtp.pipelining = True
            tmp = Path(directory)
            test = KillTest(tmp, database_url("sqlite", tmp), delivery, args.customers, seed, smtp, sms)
            try:
                summary = test.run(server, kills, budget=float("inf"))
                problems = test.problems()
                quiet = test.quiet()
            finally:
                test.close()
        print(summary.line())
        if not quiet:
            problems.append("still busy after the final passes")
        for problem in problems:
            print(f"  PROBLEM {problem}")
        failed = failed or bool(problems)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
