"""A message a policy stage stops is a copy made by ``DueMessage.decided`` (one positional call), not
``dataclasses.replace``: the ~4,500 quiet-hour deferrals a minute at 1M orders each cost one. The
decisions must be the very messages ``replace`` made: every field, for every outcome of the stages.

Real ledger (SQLite file) with an unsubscribe and a suppression; the shipped project with a step that
offers email (the step's quiet hours 22:00-07:00) and else SMS (the project's SMS quiet hours
21:00-08:00); customers in Berlin, New York, Sydney, an unknown zone and none, at the minutes around
both quiet hours' start and end on the days their clocks change.
"""
from __future__ import annotations

import dataclasses
from datetime import date, datetime, time, timedelta
from zoneinfo import ZoneInfo

from conftest import copy_project, write
from engine import load_project
from engine.clock import UTC
from engine.run import policies
from engine.run.messages import DueMessage
from engine.state.ledger import Ledger
from engine.state.warehouse import Database

CAMPAIGN = """
    name: nightly
    trigger:
      order_placed:
        statuses: [completed]
    steps:
      - id: thanks
        delay: 1h
        freshness: 1d
        quiet_hours: {start: "22:00", end: "07:00"}
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
    "1": {"email": "ann@example.com", "phone": "+4915112345678", "timezone": "Europe/Berlin"},
    "2": {"email": "bob@example.com", "phone": "+4915112345679", "timezone": "Europe/Berlin", "email_consent": False},
    "3": {"email": "cy@example.com", "phone": "+12125550101", "timezone": "America/New_York"},  # email unsubscribed
    "4": {"email": "bounced@example.com", "phone": None, "timezone": "America/New_York"},  # suppressed
    "5": {"email": None, "phone": "+61291234567", "timezone": "Australia/Sydney"},
    "6": {"email": "dee@example.com", "phone": None, "timezone": "Mars/Olympus"},  # the default zone
    "7": {"email": None, "phone": None, "timezone": None},  # no contact
    "8": {"email": "eve@example.com", "phone": "+4915112345670", "timezone": None, "email_consent": False,
          "sms_consent": False},
    "9": {"email": "fay@example.com", "phone": "not a number", "timezone": "Europe/Berlin", "email_consent": False},
    "10": {"email": "ann@example.com", "phone": "+4915112345671", "timezone": "Europe/Berlin", "sms_consent": False},
}

#: (zone, the days its clocks change in 2025)
CHANGES = [("Europe/Berlin", (date(2025, 3, 30), date(2025, 10, 26))),
           ("America/New_York", (date(2025, 3, 9), date(2025, 11, 2))),
           ("Australia/Sydney", (date(2025, 4, 6), date(2025, 10, 5)))]


def _instants() -> list[datetime]:
    """The minute before, at and after each quiet hours' start and end (email's and SMS's), local, on the
    days the clocks change and the days either side, in each zone; and the changes themselves."""
    found = set()
    for zone_name, days in CHANGES:
        zone = ZoneInfo(zone_name)
        for day in days:
            for offset in (-1, 0, 1):
                for edge in (time(21), time(22), time(7), time(8)):
                    local = datetime.combine(day + timedelta(days=offset), edge, tzinfo=zone).astimezone(UTC)
                    found.update(local + timedelta(minutes=m) for m in (-1, 0, 1))
            midnight = datetime.combine(day, time(0), tzinfo=zone).astimezone(UTC)
            for hour in range(0, 6):  # around the change itself (02:00-03:00 local)
                found.add(midnight + timedelta(hours=hour, minutes=30))
    return sorted(found)


def _batch(now: datetime) -> list[DueMessage]:
    """Each customer's message as ``decide_rows`` leaves it: send on the first candidate, both candidates."""
    trigger_at = now - timedelta(hours=2)
    return [DueMessage("nightly", "thanks", customer_id, f"o{customer_id}", trigger_at, trigger_at + timedelta(hours=1),
                       "email", {"customer_id": customer_id, **attributes}, "send", None, "mail",
                       candidates=("mail", "text"))
            for customer_id, attributes in CUSTOMERS.items()]


def _fields(m: DueMessage) -> tuple:
    return tuple(getattr(m, f.name) for f in dataclasses.fields(m))


def test_a_decided_copy_is_what_replace_makes():
    """Every field set to a value of its own: ``decided`` copies each of them (a field it forgot, or one
    added to ``DueMessage`` and not to ``decided``, would come out as its default)."""
    values = {f.name: f"value of {f.name}" for f in dataclasses.fields(DueMessage)}
    message = DueMessage(**values)
    copy = message.decided("defer", "quiet_hours")
    assert _fields(copy) == _fields(dataclasses.replace(message, action="defer", reason="quiet_hours"))
    assert copy is not message and message.action == "value of action"  # the stages' input stays as it was


def test_the_stages_decide_with_decided_as_with_replace(tmp_path, monkeypatch):
    root = copy_project(tmp_path / "project")
    for campaign in (root / "campaigns.d").glob("*.yaml"):
        campaign.unlink()
    write(root / "campaigns.d" / "nightly.yaml", CAMPAIGN)
    project = load_project(root)
    campaign = project.campaign("nightly")
    ledger = Ledger(Database(f"sqlite:///{tmp_path / 'ledger.db'}"))
    ledger.ensure_schema()
    start = datetime(2025, 1, 1, tzinfo=UTC)
    try:
        ledger.unsubscribe("3", "email", "link", start)
        ledger.suppress("email", "bounced@example.com", "bounce", "550", start)

        def decide(now: datetime) -> list[tuple]:
            inputs = policies.first_attempt_inputs(project.config, ledger, now, [campaign], project.campaigns)
            return [_fields(m) for m in policies.apply_stages(_batch(now), inputs)]

        instants = _instants()
        fast = [decide(now) for now in instants]
        with monkeypatch.context() as patch:  # the full path: every stopped message made by dataclasses.replace
            patch.setattr(DueMessage, "decided", lambda m, action, reason: dataclasses.replace(
                m, action=action, reason=reason))
            full = [decide(now) for now in instants]
    finally:
        ledger.close()
    assert fast == full
    action, reason, channel = (DueMessage.__slots__.index(name) for name in ("action", "reason", "channel"))
    outcomes = {(m[action], m[reason], m[channel]) for decided in fast for m in decided}
    # every outcome of the stages met: both channels deferred and sent, each skip of channel choice
    assert outcomes == {("defer", "quiet_hours", "email"), ("defer", "quiet_hours", "sms"), ("send", None, "email"),
                        ("send", None, "sms"), ("skip", "no_consent", "email"), ("skip", "suppressed", "email"),
                        ("skip", "no_contact", "email")}, outcomes
