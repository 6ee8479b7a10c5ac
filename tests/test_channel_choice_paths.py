"""The channel choice reads a plain address kind's field directly (``ChannelKind.plain_address``: email's
value is its address and its suppression key, as given) instead of calling the kind's four functions per
message, and hands the ledger the batch's customers and addresses as sets, which it sorts only where it
queries (its snapshot of unsubscribes and suppressions needs no order; none at all when it holds none).
At 1M orders that took ``choose_channels`` of the second-order + re-engage plan from ~38 to ~20 ms
(benchmarks/README.md, "the pair's split"). The decisions must be the general path's exactly.

Real ledger (SQLite file) with unsubscribes and suppressions, read from its snapshot and by its queries;
the shipped project with a step that offers email and else SMS (SMS is not plain: E.164 numbers).
"""
from __future__ import annotations

import dataclasses
from datetime import datetime, timedelta

import pytest

from conftest import copy_project, write
from engine import channel_kinds, load_project
from engine.channel_kinds import ChannelKind
from engine.clock import UTC
from engine.run import policies
from engine.run.messages import DueMessage
from engine.state import ledger as ledger_module
from engine.state.ledger import Ledger
from engine.state.warehouse import Database

CAMPAIGN = """
    name: choose
    trigger:
      order_placed:
        statuses: [completed]
    steps:
      - id: thanks
        delay: 1h
        freshness: 1d
        variants:
          - id: mail
            channel: email
            template: follow-up/thanks-private.email.j2
          - id: text
            channel: sms
            template: re-engage/last-call.sms.j2
"""

#: customer id -> its attributes as a due row carries them (consent columns as the shop maps them)
CUSTOMERS = {
    "1": {"email": "ann@example.com", "phone": "+4915112345678"},
    "2": {"email": "bob@example.com", "phone": "+4915112345679", "email_consent": False},
    "3": {"email": "cy@example.com", "phone": "+12125550101"},  # unsubscribed from email
    "4": {"email": "bounced@example.com", "phone": None},  # suppressed
    "5": {"email": None, "phone": "+61291234567"},
    "6": {"email": "", "phone": "+61291234568"},  # an empty address is none
    "7": {"email": None, "phone": None},
    "8": {"email": "eve@example.com", "phone": "+4915112345670", "email_consent": False, "sms_consent": False},
    "9": {"email": "fay@example.com", "phone": "not a number", "email_consent": False},
    "10": {"email": "gone@example.com", "phone": "+4915112345671"},  # unsubscribed from all
    "11": {"email": "ann@example.com", "phone": "+4915112345672"},  # another customer's address: same key
    "12": {"email": "hal@example.com", "phone": "+4915112345673"},  # suppressed on SMS
}


def _batch(now: datetime, only_email: bool = False) -> list[DueMessage]:
    trigger_at = now - timedelta(hours=2)
    candidates = ("mail",) if only_email else ("mail", "text")
    return [DueMessage("choose", "thanks", customer_id, f"o{customer_id}", trigger_at, trigger_at + timedelta(hours=1),
                       "email", {"customer_id": customer_id, **attributes}, "send", None, "mail",
                       candidates=candidates)
            for customer_id, attributes in CUSTOMERS.items()]


@pytest.fixture
def chooser(tmp_path):
    """(choose(batch, snapshot) -> each message's fields after the channel choice, the project)."""
    root = copy_project(tmp_path / "project")
    for campaign in (root / "campaigns.d").glob("*.yaml"):
        campaign.unlink()
    write(root / "campaigns.d" / "choose.yaml", CAMPAIGN)
    project = load_project(root)
    campaign = project.campaign("choose")
    ledger = Ledger(Database(f"sqlite:///{tmp_path / 'ledger.db'}"))
    ledger.ensure_schema()
    start = datetime(2025, 1, 1, tzinfo=UTC)
    now = datetime(2025, 3, 1, 12, tzinfo=UTC)
    ledger.unsubscribe("3", "email", "link", start)
    ledger.unsubscribe("10", "all", "link", start)
    ledger.suppress("email", "bounced@example.com", "bounce", "550", start)
    ledger.suppress("sms", "+4915112345673", "bounce", "gone", start)

    def choose(batch: list[DueMessage], snapshot: bool) -> list[tuple]:
        inputs = policies.first_attempt_inputs(project.config, ledger, now, [campaign], project.campaigns)
        if snapshot:
            ledger.snapshot_policies()
        else:  # read by the ledger's queries, as for tables over the snapshot's limit
            ledger._unsubscribed = ledger._suppressed = None
        decided = policies.choose_channels(project.config, ledger, batch, inputs.channel_of)
        return [tuple(getattr(m, f.name) for f in dataclasses.fields(m)) for m in decided]

    try:
        yield choose, now
    finally:
        ledger.close()


@pytest.mark.parametrize("snapshot", [True, False], ids=["snapshot", "queries"])
def test_the_plain_path_chooses_as_the_kinds_functions(chooser, monkeypatch, snapshot):
    choose, now = chooser
    assert channel_kinds.kind("email").plain_address and not channel_kinds.kind("sms").plain_address
    plain = choose(_batch(now), snapshot)
    with monkeypatch.context() as patch:  # the general path for every kind: the four functions per message
        patch.setattr(ChannelKind, "plain_address", property(lambda kind: False))
        general = choose(_batch(now), snapshot)
    assert plain == general
    channel, action, reason = (DueMessage.__slots__.index(name) for name in ("channel", "action", "reason"))
    outcomes = {m[DueMessage.__slots__.index("customer_id")]: (m[action], m[reason], m[channel]) for m in plain}
    assert outcomes == {
        "1": ("send", None, "email"), "2": ("send", None, "sms"), "3": ("send", None, "sms"),
        "4": ("skip", "suppressed", "email"), "5": ("send", None, "sms"), "6": ("send", None, "sms"),
        "7": ("skip", "no_contact", "email"), "8": ("skip", "no_consent", "email"),
        "9": ("skip", "no_consent", "email"), "10": ("skip", "no_consent", "email"),
        "11": ("send", None, "email"), "12": ("send", None, "email")}, outcomes


def test_a_plain_kind_is_read_without_its_functions(chooser, monkeypatch):
    """Email-only candidates: the field is read directly, no call of the kind's address functions."""
    choose, now = chooser
    calls = []
    real = ChannelKind.address
    monkeypatch.setattr(ChannelKind, "address", lambda kind, customer: calls.append(kind.name) or real(kind, customer))
    decided = choose(_batch(now, only_email=True), snapshot=True)
    assert calls == []
    assert len(decided) == len(CUSTOMERS)


def test_the_ledger_takes_sets_and_sorts_where_it_queries(tmp_path, monkeypatch):
    """Sets in, the same answers from the snapshot and from the queries (which go in sorted order, 500 a
    query); a snapshot with no unsubscribe or suppression answers at once."""
    ledger = Ledger(Database(f"sqlite:///{tmp_path / 'ledger.db'}"))
    ledger.ensure_schema()
    start = datetime(2025, 1, 1, tzinfo=UTC)
    try:
        ledger.snapshot_policies()
        assert ledger.unsubscribed({"1", "2"}) == set() and ledger.suppressed("email", {"a@example.com"}) == set()
        ids = {str(n) for n in range(1200)}
        for customer_id in ("7", "700", "1199"):
            ledger.unsubscribe(customer_id, "email", "link", start)
        ledger.suppress("email", "a@example.com", "bounce", "550", start)
        expected = {("7", "email"), ("700", "email"), ("1199", "email")}
        ledger.snapshot_policies()
        assert ledger.unsubscribed(ids) == expected
        assert ledger.suppressed("email", {"a@example.com", "b@example.com"}) == {"a@example.com"}
        assert ledger.suppressed("sms", {"a@example.com"}) == set()
        monkeypatch.setattr(ledger_module, "SNAPSHOT_LIMIT", -1)  # over the limit: the queries answer
        ledger.snapshot_policies()
        assert ledger._unsubscribed is None and ledger._suppressed is None
        assert ledger.unsubscribed(ids) == expected
        assert ledger.suppressed("email", {"a@example.com", "b@example.com"}) == {"a@example.com"}
    finally:
        ledger.close()
