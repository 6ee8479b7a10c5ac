"""The randomized kill test (issue 20): passes SIGKILLed at random moments strand nothing.

A shop of 400 customers on a real SMTP sink and HTTP SMS provider on
loopback; one order per customer per round, an email and an SMS for each
(thousands of messages over the rounds). ``engine run --once`` runs as a real
process forked from a helper that imported the engine once
(tests/forkserver.py), and is killed with SIGKILL after a random delay; a
new round starts whenever a pass runs to the end. Then passes without kills
until quiet. Checked (tests/kill_harness.py):

- at_most_once: no message arrives twice (by key and by Message-ID at the
  SMTP sink, by key among the SMS provider's 200 answers);
- nothing is lost: every planned message ends sent, skipped or failed with a
  reason, or unknown - and unknown only if a kill left it in doubt;
- after each kill, the messages in doubt (content stored, no outcome) are at
  most the in-flight bound of each channel: connections x in_flight;
- the ledger agrees with the wire (sent arrived; what arrived is sent or
  unknown);
- at_least_once: every message arrives, one Message-ID per key, and the SMS
  provider, deduplicating by Idempotency-Key, delivers each SMS once.

Seeded: the seed is printed, and ENGINE_KILL_SEED=N repeats a run. At least
100 kills per run of this file (60 + 40); benchmarks/kills.py --soak runs many
more. Bounded: each test fails when its kills take longer than its budget.
"""
from __future__ import annotations

import os
import random

import pytest

from conftest import database_url
from forkserver import ForkServer
from kill_harness import KillTest
from servers import SmsProvider, SmtpSink

KILLS = {"at_most_once": 60, "at_least_once": 40}
CUSTOMERS = 400
BUDGET = 150  # seconds of killing per test, well above what it takes here


@pytest.mark.parametrize("delivery", ["at_most_once", "at_least_once"])
def test_random_kills_strand_nothing_and_send_nothing_twice(delivery, tmp_path):
    seed = int(os.environ.get("ENGINE_KILL_SEED") or random.SystemRandom().randrange(1, 10**6))
    print(f"\nENGINE_KILL_SEED={seed}")
    with SmtpSink() as smtp, SmsProvider() as sms, ForkServer() as server:
        smtp.pipelining = True
        test = KillTest(tmp_path, database_url("sqlite", tmp_path), delivery, CUSTOMERS, seed, smtp, sms)
        try:
            summary = test.run(server, KILLS[delivery], BUDGET)
            problems = test.problems()
        finally:
            test.close()
    print(summary.line())
    assert test.quiet(), f"still busy after the final passes (seed {seed})"
    assert not problems, f"seed {seed}:\n  " + "\n  ".join(problems[:40])
    assert summary.kills >= KILLS[delivery]
