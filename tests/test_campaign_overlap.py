"""A pass plans the next campaign while the last batch of the one before is still sending - and its
decisions still see everything that batch recorded.

The last batch of a campaign sends on the send thread while the next campaign's settled skips are
recorded and its first rows are queried and decided (engine.run.reconcile); that batch is finished
and recorded before those rows meet the contacts and policies, and before the next campaign's
statements run at all when its steps set tags. A real aiosmtpd server on loopback (tests/servers.py)
holds or slows the first campaign's messages; the ledger and the report must be what a pass that
sent one campaign after the other records.
"""
from __future__ import annotations

import asyncio
import sys
import threading

from engine import Reconciler, load_project
from engine.progress import Progress
from engine.run.dispatch import SWITCH_INTERVAL
from servers import SmtpSink
from test_delivery import at, campaign, configure, customers, orders, project, statuses  # noqa: F401 - fixture

HELD = 10.0  # seconds the sink holds the first campaign's message at most (the test's bound)


class HeldSink(SmtpSink):
    """Holds every message of the campaign ``held_campaign`` at DATA until ``release`` is set, or for
    ``HELD`` seconds at most (then ``expired``)."""

    def __init__(self, held_campaign: str):
        super().__init__()
        self.held_campaign = held_campaign
        self.release = threading.Event()
        self.expired = False

    async def handle_DATA(self, server, session, envelope):
        if f"X-Engine-Message-Key: {self.held_campaign}:".encode() in envelope.original_content:
            for _ in range(int(HELD / 0.01)):
                if self.release.is_set():
                    break
                await asyncio.sleep(0.01)
            else:
                self.expired = True
        return await super().handle_DATA(server, session, envelope)


class RowsOf(Progress):
    """Sets ``seen`` when the rows of campaign ``name`` are read (``Progress.rows`` after its stage)."""

    def __init__(self, name: str, seen: threading.Event):
        self.name, self.seen, self.current = name, seen, None

    def stage(self, level: str, index: int, total: int, name: str = "") -> None:
        if level == "campaign":
            self.current = name

    def rows(self, count: int) -> None:
        if self.current == self.name and count:
            self.seen.set()


def test_the_next_campaign_is_queried_while_the_last_batch_of_the_one_before_is_sending(project):
    """The sink holds ``first``'s message until ``second``'s rows have been read: a pass that finished
    sending ``first`` before planning ``second`` waits out the hold (and the test fails)."""
    with HeldSink("first") as smtp:
        configure(project, smtp.port)
        project.load({"first": campaign("first", priority=10), "second": campaign("second")},
                     customers=customers(3), orders=orders(3))
        r = Reconciler(load_project(project), progress=RowsOf("second", smtp.release))
        try:
            report = r.run_once(at(minutes=1))
            assert not smtp.expired, "second's rows were read only after first's batch was sent"
            assert report.counts[("first", "mail", "sent")] == 3
            assert report.counts[("second", "mail", "sent")] == 3
            assert sorted(smtp.keys()) == sorted(f"{name}:mail:{i}:{i}" for name in ("first", "second")
                                                 for i in range(1, 4))
            assert set(statuses(r).values()) == {("sent", None, 1)}
        finally:
            r.close()


def test_a_bounce_in_the_last_batch_of_a_campaign_is_seen_by_the_next_campaigns_decisions(project):
    """A slow sink: ``first``'s batch is still sending while ``second`` is queried. Its hard bounce
    suppresses the address before ``second``'s rows meet the policies, as when sent one after the other."""
    with SmtpSink() as smtp:
        smtp.delay = 0.3
        configure(project, smtp.port)
        project.load({"first": campaign("first", priority=10), "second": campaign("second")},
                     customers=customers(3), orders=orders(3))
        smtp.refuse["c2@example.com"] = "550 5.1.1 no such user"
        r = Reconciler(load_project(project))
        try:
            report = r.run_once(at(minutes=1))
            assert report.counts[("first", "mail", "failed:permanent")] == 1
            assert report.counts[("second", "mail", "skipped:suppressed")] == 1
            assert report.counts[("second", "mail", "sent")] == 2
            assert statuses(r)["second:mail:2:2"] == ("skipped", "suppressed", 0)
        finally:
            r.close()


TAGGING = """
    name: tagging
    priority: 10
    trigger: {order_placed: {}}
    steps:
      - id: mail
        delay: 0m
        freshness: 7d
        channel: email
        template: second-order/nudge.email.j2
        actions:
          - set_tag: vip
"""

TAGGED = """
    name: tagged
    priority: 0
    trigger: {order_placed: {}}
    audience: has_tag('vip')
    steps:
      - {id: mail, delay: 0m, freshness: 7d, channel: email, template: second-order/nudge.email.j2}
"""


def test_the_tags_a_campaign_sets_are_seen_by_the_next_campaigns_query(project):
    """A slow sink: the batch of a step that sets a tag is finished (its tags applied) before the next
    campaign's statements run, so a campaign for the tagged customers reaches them in the same pass."""
    with SmtpSink() as smtp:
        smtp.delay = 0.3
        configure(project, smtp.port)
        project.load({"tagging": TAGGING, "tagged": TAGGED}, customers=customers(3), orders=orders(3))
        r = Reconciler(load_project(project))
        try:
            report = r.run_once(at(minutes=1))
            assert report.counts[("tagging", "mail", "sent")] == 3
            assert report.counts[("tagged", "mail", "sent")] == 3
        finally:
            r.close()


class IntervalSink(SmtpSink):
    """Records the interpreter's thread switch interval at each message (the sink runs in this process)."""

    def __init__(self):
        super().__init__()
        self.intervals: list[float] = []

    async def handle_DATA(self, server, session, envelope):
        self.intervals.append(sys.getswitchinterval())
        return await super().handle_DATA(server, session, envelope)


def test_while_a_pass_sends_the_interpreter_hands_the_gil_over_sooner_and_restores_it_after(project):
    """A send worker whose provider answered gets the GIL after ``SWITCH_INTERVAL``, not Python's 5 ms
    (engine.run.dispatch.sending_threads); the process's interval is what it was once the pass ends."""
    before = sys.getswitchinterval()
    assert before > SWITCH_INTERVAL  # the test can fail
    with IntervalSink() as smtp:
        configure(project, smtp.port)
        project.load({"first": campaign("first")}, customers=customers(3), orders=orders(3))
        r = Reconciler(load_project(project))
        try:
            report = r.run_once(at(minutes=1))
            assert report.counts[("first", "mail", "sent")] == 3
            assert smtp.intervals == [SWITCH_INTERVAL] * 3
            assert sys.getswitchinterval() == before
        finally:
            r.close()
