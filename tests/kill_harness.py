"""The randomized kill test: a shop on loopback providers, passes killed at random moments, the checks.

Used by tests/test_kills.py (bounded, in every CI run) and benchmarks/kills.py
(``--soak``: many more kill points). A ``KillTest`` owns one project and shop:

- two campaigns on every order, an email (SMTP sink on loopback, 4
  connections, pipelining) and an SMS (HTTP provider on loopback, which
  honours ``Idempotency-Key``); a few addresses refuse for good (550, 400) and
  a few once (451, 500), so failures, suppressions and retries are exercised;
- rounds: each adds one order per customer, so thousands of messages are due;
- passes: ``engine run --once`` forked by ``forkserver.ForkServer`` (a real
  process), each at a later ``--as-of`` (two minutes, more than the claim
  timeout, so every pass recovers the claims the killed one left), most of
  them SIGKILLed after a random delay drawn from a seeded generator;
- after each kill, the messages the killed process left in doubt (content
  stored, no outcome, stamped with its pass instant) are counted per channel
  against the in-flight bound (connections x ``in_flight``);
- at the end, passes without kills until nothing is left to do, then
  ``problems()`` compares the ledger with what arrived at the providers.
"""
from __future__ import annotations

import random
import shutil
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

import sqlalchemy as sa

from conftest import REPO, load_history, write
from engine.tools.demo import TABLES
from engine.state.ledger import Ledger, ledger_table
from engine.state.warehouse import Database
from forkserver import ForkServer

T0 = datetime(2025, 1, 6, 12, 0)
#: between two passes: longer than the claim timeout (1m), so a pass recovers what the one before left
STEP = timedelta(minutes=2)
CONNECTIONS = 4
IN_FLIGHT = {"email": 8, "sms": 8}
PARALLELISM = {"email": CONNECTIONS, "sms": 1}

ENGINE_YAML = """
warehouse:
  url: {url}
demo: true  # the loopback sinks' example domains and default unsubscribe URL (spec.unsafe_defaults)
defaults:
  timezone: UTC
  code_secret: kill-test-secret-for-the-loopback-sinks-only
policies:
  claim_timeout: 1m
  retry: {{max_attempts: 5, backoff: 1m, max_backoff: 2m}}
sources:
  customers:
    table: customers
    columns: {{customer_id: customer_id, email: email, phone: phone, first_name: first_name, created_at: created_at}}
  orders:
    table: orders
    columns: {{status: status, total: total}}
  order_items:
    table: order_items
    columns: {{product_id: product_id, name: name, quantity: quantity, price: price, image_url: image_url}}
channels:
  email:
    kind: email
    transport: smtp
    host: 127.0.0.1
    port: {smtp_port}
    connections: {connections}
    in_flight: {email_in_flight}
    delivery: {delivery}
    timeout: 10
    from: "Shop <shop@example.com>"
  sms:
    kind: sms
    transport: http
    url: {sms_url}
    in_flight: {sms_in_flight}
    delivery: {delivery}
    timeout: 10
    from: Shop
"""

CAMPAIGNS = {
    "mails": """
        name: mails
        priority: 2
        trigger: {order_placed: {}}
        steps:
          - {id: thanks, delay: 0m, freshness: 30d, channel: email, template: second-order/nudge.email.j2}
    """,
    "texts": """
        name: texts
        priority: 1
        trigger: {order_placed: {}}
        steps:
          - {id: thanks, delay: 0m, freshness: 30d, channel: sms, template: re-engage/last-call.sms.j2}
    """,
}


def email_of(customer: int) -> str:
    return f"c{customer}@example.com"


def phone_of(customer: int) -> str:
    return f"+49170{customer:07d}"


@dataclass
class Kill:
    at: datetime
    delay: float
    in_doubt: Counter  # channel -> messages left with content and no outcome by this kill


@dataclass
class Summary:
    seed: int
    delivery: str
    kills: int = 0
    passes: int = 0
    rounds: int = 0
    expected: int = 0
    seconds: float = 0.0
    in_doubt_max: Counter = field(default_factory=Counter)
    in_doubt_total: int = 0
    kills_while_sending: int = 0  # kills that left something in doubt
    unknown_arrived: int = 0  # of the unknown ones (at_most_once), how many had reached the provider
    statuses: Counter = field(default_factory=Counter)
    wire: Counter = field(default_factory=Counter)

    def line(self) -> str:
        return (f"kill test, {self.delivery}, seed {self.seed}: {self.kills} kills in {self.passes} passes, "
                f"{self.rounds} rounds, {self.expected} messages planned, {self.seconds:.0f} s; in doubt per kill at most "
                f"{dict(self.in_doubt_max)} (bound {({c: PARALLELISM[c] * IN_FLIGHT[c] for c in PARALLELISM})}), "
                f"{self.in_doubt_total} over all kills ({self.kills_while_sending} kills while sending; "
                f"{self.unknown_arrived} of the unknown had arrived); ledger {dict(sorted(self.statuses.items()))}; wire {dict(self.wire)}")


class KillTest:
    def __init__(self, directory: Path, url: str, delivery: str, customers: int, seed: int, smtp, sms):
        self.root = directory / "project"
        self.logs = directory / "logs"
        self.url, self.delivery, self.customers, self.seed = url, delivery, customers, seed
        self.smtp, self.sms = smtp, sms
        self.rng = random.Random(seed)
        self.now = T0
        self.round = 0
        self.expected: dict[str, str] = {}  # message key -> channel
        self.kills: list[Kill] = []
        self.in_doubt: set[str] = set()  # every key some kill left in doubt
        self.violations: list[str] = []
        self.passes = 0
        self.horizon = 2.0  # seconds: kills are drawn up to this far into a pass
        self.decided = 0  # ledger rows with an outcome after the last kill
        self.summary = Summary(seed, delivery)
        self._build()
        self.db = Database(url)
        Ledger(self.db).ensure_schema()  # a pass killed at start-up may not have created the tables

    # --- the shop ------------------------------------------------------------------------------

    def _build(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)
        (self.root / "campaigns.d").mkdir(parents=True)
        self.logs.mkdir(parents=True, exist_ok=True)
        shutil.copytree(REPO / "templates", self.root / "templates")
        write(self.root / "engine.yaml", ENGINE_YAML.format(
            url=self.url, smtp_port=self.smtp.port, sms_url=self.sms.url, connections=CONNECTIONS,
            email_in_flight=IN_FLIGHT["email"], sms_in_flight=IN_FLIGHT["sms"], delivery=self.delivery))
        for name, text in CAMPAIGNS.items():
            write(self.root / "campaigns.d" / f"{name}.yaml", text)
        load_history(self.url, customers=[
            {"customer_id": c, "email": email_of(c), "phone": phone_of(c), "first_name": f"C{c}",
             "created_at": T0 - timedelta(days=100)} for c in range(1, self.customers + 1)])
        for c in range(1, self.customers + 1):  # a few refuse for good, a few once per round (see add_round)
            if c % 97 == 0:
                self.smtp.refuse[email_of(c)] = "550 5.1.1 no such user"
            if c % 89 == 0:
                self.sms.status_for[phone_of(c)] = 400

    def add_round(self) -> None:
        """One new order per customer, placed a minute before the next pass."""
        self.round += 1
        placed = self.now + STEP - timedelta(minutes=1)
        first = self.round * 1_000_000
        rows = [{"order_id": first + c, "customer_id": c, "created_at": placed, "status": "completed", "total": 10}
                for c in range(1, self.customers + 1)]
        with self.db.engine.begin() as conn:
            conn.execute(TABLES["orders"].insert(), rows)
        for c in range(1, self.customers + 1):
            self.expected[f"mails:thanks:{c}:{first + c}"] = "email"
            self.expected[f"texts:thanks:{c}:{first + c}"] = "sms"
            if c % 53 == 0:
                self.smtp.script[email_of(c)] = ["451 4.3.0 try again later"]
            if c % 59 == 0:
                self.sms.script[phone_of(c)] = [500]

    # --- passes ----------------------------------------------------------------------------------

    def one_pass(self, server: ForkServer, kill_after: float | None) -> dict:
        self.now += STEP
        self.passes += 1
        as_of = self.now.isoformat() + "Z"
        result = server.run(["run", "--once", "--quiet", "--as-of", as_of], self.root,
                            self.logs / f"pass-{self.passes:05d}.log", kill_after=kill_after)
        if result["killed"]:
            self._after_kill(kill_after)
        elif result["returncode"] not in (0, 1):  # 1: some message failed (the refusing addresses)
            log = (self.logs / f"pass-{self.passes:05d}.log").read_text()
            raise AssertionError(f"pass {self.passes} at {as_of} ended with {result['returncode']}:\n{log[-3000:]}")
        else:
            self.horizon = max(0.5, 1.1 * result["seconds"])
        return result

    def _after_kill(self, delay: float) -> None:
        c = ledger_table.c
        with self.db.engine.connect() as conn:
            rows = conn.execute(sa.select(c.message_key, c.channel).where(
                c.status == "claimed", c.content.is_not(None), c.updated_at == self.now)).all()
            decided = conn.execute(sa.select(sa.func.count()).where(c.status != "claimed")).scalar()
        in_doubt = Counter(channel for _, channel in rows)
        self.kills.append(Kill(self.now, delay, in_doubt))
        self.in_doubt |= {key for key, _ in rows}
        for channel, n in in_doubt.items():
            bound = PARALLELISM[channel] * IN_FLIGHT[channel]
            if n > bound:
                self.violations.append(f"the kill at {self.now:%H:%M} after {delay:.3f} s left {n} {channel} messages "
                                       f"in doubt, more than the in-flight bound {bound}")
            self.summary.in_doubt_max[channel] = max(self.summary.in_doubt_max[channel], n)
        self.summary.in_doubt_total += len(rows)
        self.summary.kills_while_sending += bool(rows)
        if decided == self.decided and not rows:
            self.horizon *= 1.3  # killed before it sent anything: reach further into the next pass
        self.decided = decided

    def kill_delay(self) -> float:
        """A random moment in a pass, uniform up to the horizon: the duration of the last pass that ran to
        the end, stretched while kills land before anything is sent (start-up, plan, render)."""
        return self.rng.uniform(0.0, self.horizon)

    def run(self, server: ForkServer, kills: int, budget: float) -> Summary:
        """Kill passes until ``kills`` kills (a new round after each pass that ran to the end), then
        passes without kills until quiet. Fails when the budget (seconds) runs out first."""
        started = time.monotonic()
        self.add_round()
        while len(self.kills) < kills:
            if time.monotonic() - started > budget:
                raise AssertionError(f"only {len(self.kills)} of {kills} kills within {budget:.0f} s (seed {self.seed})")
            result = self.one_pass(server, self.kill_delay())
            if not result["killed"]:
                self.add_round()
        for _ in range(20):
            self.one_pass(server, None)
            if self.quiet():
                break
        self.summary.seconds = time.monotonic() - started
        return self.summary

    def quiet(self) -> bool:
        """Nothing claimed, no retry pending, every planned message in the ledger."""
        c = ledger_table.c
        with self.db.engine.connect() as conn:
            busy = conn.execute(sa.select(sa.func.count()).where(
                sa.or_(c.status == "claimed", sa.and_(c.status == "failed", c.next_attempt_at.is_not(None))))).scalar()
            keys = {row[0] for row in conn.execute(sa.select(c.message_key))}
        return busy == 0 and set(self.expected) <= keys

    # --- the checks ------------------------------------------------------------------------------

    def problems(self) -> list[str]:
        """Everything wrong with the ledger against the providers; empty when all holds."""
        problems = list(self.violations)
        c = ledger_table.c
        with self.db.engine.connect() as conn:
            rows = {key: (status, reason, next_at) for key, status, reason, next_at in conn.execute(
                sa.select(c.message_key, c.status, c.reason, c.next_attempt_at))}
        s = self.summary
        s.kills, s.passes, s.rounds, s.expected = len(self.kills), self.passes, self.round, len(self.expected)
        s.statuses = Counter(status if status in ("sent", "unknown") else f"{status}:{reason}" for status, reason, _ in rows.values())
        with self.smtp.lock:
            emails = [(m["X-Engine-Message-Key"], m["Message-ID"]) for m in self.smtp.messages]
        sms_answered = [r["body"]["reference"] for r in self.sms.requests if r["status"] == 200]
        sms_delivered = self.sms.delivered()
        s.wire = Counter({"emails": len(emails), "email keys": len({k for k, _ in emails}),
                          "sms answered 200": len(sms_answered), "sms delivered": len(sms_delivered)})
        # every planned message has an outcome: sent, skipped or failed with a reason, or unknown
        for key in self.expected:
            status, reason, next_at = rows.get(key, (None, None, None))
            if status is None:
                problems.append(f"{key}: planned, not in the ledger (lost)")
            elif status == "claimed":
                problems.append(f"{key}: still claimed")
            elif status in ("skipped", "failed") and (not reason or next_at is not None):
                problems.append(f"{key}: {status} without a final reason ({reason}, next attempt {next_at})")
        unknown = {key for key, (status, _, _) in rows.items() if status == "unknown"}
        sent = {key for key, (status, _, _) in rows.items() if status == "sent"}
        on_the_wire = {k for k, _ in emails} | set(sms_answered)
        s.unknown_arrived = len(unknown & on_the_wire)
        for key in sorted(sent - on_the_wire)[:20]:
            problems.append(f"{key}: the ledger says sent, nothing arrived")
        for key in sorted(on_the_wire - sent - unknown)[:20]:
            problems.append(f"{key}: arrived, but the ledger says {rows.get(key, ('nothing',))[0]}")
        ids_per_key: dict[str, set] = {}
        for key, message_id in emails:
            ids_per_key.setdefault(key, set()).add(message_id)
        problems += [f"{key}: {len(ids)} Message-IDs" for key, ids in ids_per_key.items() if len(ids) != 1][:20]
        if self.delivery == "at_most_once":
            problems += [f"{key}: {n} emails" for key, n in Counter(k for k, _ in emails).items() if n > 1][:20]
            problems += [f"{m}: {n} emails with this Message-ID" for m, n in Counter(m for _, m in emails).items() if n > 1][:20]
            problems += [f"{key}: {n} SMS answered 200" for key, n in Counter(sms_answered).items() if n > 1][:20]
            problems += [f"{key}: unknown, but no kill left it in doubt" for key in sorted(unknown - self.in_doubt)][:20]
        else:
            problems += [f"{key}: unknown in at_least_once" for key in sorted(unknown)][:20]
            problems += [f"{key}: {n} SMS delivered" for key, n in Counter(sms_delivered).items() if n > 1][:20]
            problems += [f"{key}: planned, never delivered" for key, channel in self.expected.items()
                         if rows.get(key, ("",))[0] not in ("skipped", "failed") and key not in on_the_wire][:20]
        return problems

    def close(self) -> None:
        self.db.dispose()
