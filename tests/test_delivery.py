"""Delivery guarantees and customer-protecting policies, proven under faults.

Real SMTP and HTTP servers on loopback that refuse, stall or answer errors
on a script; reconcilers as real processes killed with SIGKILL at chosen
failpoints, and several started at once. Every test is bounded in time.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from conftest import copy_project, database_url, load_history, write
from engine import Reconciler, load_project
from engine import unsubscribe
from engine.state.ledger import ledger_table
from engine.state.warehouse import Database
from servers import SmsProvider, SmtpSink

UTC = timezone.utc
T0 = datetime(2025, 1, 6, 12, 0)

NOTIFY = """
    name: notify
    priority: {priority}
    trigger: {{order_placed: {{}}}}
    stop: [unsubscribed]
    steps:
      - {{id: mail, delay: 0m, freshness: 7d, channel: {channel}, template: {template}}}
"""


def campaign(name="notify", priority=0, channel="email", template="second-order/nudge.email.j2"):
    return NOTIFY.format(priority=priority, channel=channel, template=template).replace("name: notify", f"name: {name}")


def configure(root, smtp_port: int, sms_url: str = "http://127.0.0.1:9/none", policies: str = "", email_delivery: str = "at_most_once",
              email_settings: str = "", sms_delivery: str = "at_most_once"):
    text = (root / "engine.yaml").read_text()
    text = text[:text.index("channels:")] + f"""channels:
  email:
    kind: email
    transport: smtp
    host: 127.0.0.1
    port: {smtp_port}
    delivery: {email_delivery}
    from: "Shop <shop@example.com>"{email_settings}
  sms:
    kind: sms
    transport: http
    url: {sms_url}
    timeout: 1
    delivery: {sms_delivery}
    from: Shop
  push:
    kind: push
    transport: file
    path: var/outbox
"""
    if policies:
        text = text.replace("sources:", "policies:\n" + policies + "\nsources:", 1)
    (root / "engine.yaml").write_text(text)


def customers(n, **extra):
    return [{"customer_id": i, "email": f"c{i}@example.com", "phone": f"+4917000000{i:02d}", "first_name": f"C{i}",
             "created_at": T0 - timedelta(days=100), **extra} for i in range(1, n + 1)]


def orders(n, start=1):
    return [{"order_id": start + i, "customer_id": i + 1, "created_at": T0, "status": "completed", "total": 5}
            for i in range(n)]


class ProjectDir(type(Path())):
    """The project directory, with the database URL and a loader attached."""


@pytest.fixture
def project(tmp_path, monkeypatch, request):
    """A project with only the given campaigns and a small shop; backend from the test's params or duckdb."""
    backend = getattr(request, "param", "sqlite")
    root = ProjectDir(copy_project(tmp_path / "project"))
    for path in (root / "campaigns.d").glob("*.yaml"):
        path.unlink()
    url = database_url(backend, tmp_path)
    monkeypatch.setenv("ENGINE_WAREHOUSE_URL", url)
    root.url = url

    def load(campaigns: dict[str, str], **rows):
        for name, text in campaigns.items():
            write(root / "campaigns.d" / f"{name}.yaml", text)
        load_history(url, **rows)

    root.load = load
    return root


def at(**delta):
    return (T0 + timedelta(**delta)).replace(tzinfo=UTC)


def statuses(reconciler) -> dict[str, tuple]:
    import sqlalchemy as sa

    c = ledger_table.c
    with reconciler.ledger.db.engine.connect() as conn:
        rows = conn.execute(sa.select(c.message_key, c.status, c.reason, c.attempts))
        return {key: (status, reason, attempts) for key, status, reason, attempts in rows}


# --- provider faults ----------------------------------------------------------------


def test_transient_smtp_failures_are_retried_with_backoff_until_sent(project):
    with SmtpSink() as smtp:
        configure(project, smtp.port, policies="  retry: {max_attempts: 4, backoff: 5m, max_backoff: 1h}")
        project.load({"notify": campaign()}, customers=customers(2), orders=orders(2))
        smtp.script["c1@example.com"] = ["451 4.3.0 try again later", "421 4.7.0 busy"]
        r = Reconciler(load_project(project))
        try:
            first = r.run_once(at(minutes=1))
            assert first.counts[("notify", "mail", "sent")] == 1
            assert first.counts[("notify", "mail", "failed:transient")] == 1
            assert statuses(r)["notify:mail:1:1"] == ("failed", "transient", 1)
            r.run_once(at(minutes=2))  # backoff 5m (x0.5..1 jitter) not over yet: nothing happens
            assert statuses(r)["notify:mail:1:1"] == ("failed", "transient", 1)
            r.run_once(at(minutes=7))  # 2nd attempt: 421
            assert statuses(r)["notify:mail:1:1"] == ("failed", "transient", 2)
            r.run_once(at(minutes=20))  # 3rd attempt: accepted
            assert statuses(r)["notify:mail:1:1"][:2] == ("sent", None)
            assert sorted(smtp.keys()) == ["notify:mail:1:1", "notify:mail:2:2"]  # each exactly once
            ids = {m["X-Engine-Message-Key"]: m["Message-ID"] for m in smtp.messages}
            assert len(set(ids.values())) == 2
        finally:
            r.close()


def test_retries_stop_when_exhausted(project):
    with SmtpSink() as smtp:
        configure(project, smtp.port, policies="  retry: {max_attempts: 2, backoff: 1m}")
        project.load({"notify": campaign()}, customers=customers(1), orders=orders(1))
        smtp.script["c1@example.com"] = ["451 later"] * 5
        r = Reconciler(load_project(project))
        try:
            r.run_once(at(minutes=1))
            r.run_once(at(minutes=5))
            assert statuses(r)["notify:mail:1:1"] == ("failed", "exhausted", 2)
            r.run_once(at(hours=5))
            assert statuses(r)["notify:mail:1:1"] == ("failed", "exhausted", 2)
            assert smtp.messages == []
        finally:
            r.close()


def test_a_hard_bounce_suppresses_the_address_for_every_campaign(project):
    with SmtpSink() as smtp:
        configure(project, smtp.port)
        project.load({"notify": campaign(), "other": campaign("other")}, customers=customers(2), orders=orders(2))
        smtp.refuse["c1@example.com"] = "550 5.1.1 no such user"
        r = Reconciler(load_project(project))
        try:
            report = r.run_once(at(minutes=1), [r.project.campaign("notify")])
            assert report.counts[("notify", "mail", "failed:permanent")] == 1
            later = r.run_once(at(minutes=2), [r.project.campaign("other")])
            assert later.counts[("other", "mail", "skipped:suppressed")] == 1
            assert later.counts[("other", "mail", "sent")] == 1
        finally:
            r.close()


def test_sms_provider_errors_and_timeouts_are_retried_and_4xx_is_final(project):
    with SmsProvider() as sms, SmtpSink() as smtp:
        configure(project, smtp.port, sms.url, policies="  retry: {max_attempts: 3, backoff: 1m}")
        project.load({"notify": campaign(channel="sms", template="re-engage/last-call.sms.j2")},
                     customers=customers(3), orders=orders(3))
        sms.script["+491700000001"] = [429, 500]
        sms.status_for["+491700000002"] = 400
        r = Reconciler(load_project(project))
        try:
            r.run_once(at(minutes=1))
            s = statuses(r)
            assert s["notify:mail:1:1"] == ("failed", "transient", 1)
            assert s["notify:mail:2:2"] == ("failed", "permanent", 1)
            assert s["notify:mail:3:3"][0] == "sent"
            r.run_once(at(minutes=3))
            r.run_once(at(minutes=10))
            assert statuses(r)["notify:mail:1:1"][:2] == ("sent", None)
            references = [q["body"]["reference"] for q in sms.requests]
            assert references.count("notify:mail:1:1") == 3 and references.count("notify:mail:2:2") == 1
        finally:
            r.close()


def test_an_sms_provider_accepting_with_an_odd_body_is_delivery_without_an_id(project):
    """A 2xx is delivery whatever its body says: JSON that is not an object, or no JSON at all, gives an
    empty provider id, never a traceback (the message was accepted: recording it failed would send it again)."""
    with SmsProvider() as sms, SmtpSink() as smtp:
        configure(project, smtp.port, sms.url)
        project.load({"notify": campaign(channel="sms", template="re-engage/last-call.sms.j2")},
                     customers=customers(3), orders=orders(3))
        sms.accepted_body["+491700000001"] = b'["queued"]'
        sms.accepted_body["+491700000002"] = b"OK"
        r = Reconciler(load_project(project))
        try:
            report = r.run_once(at(minutes=1))
            assert report.counts[("notify", "mail", "sent")] == 3
            assert {key: status[:2] for key, status in statuses(r).items()} == {
                f"notify:mail:{n}:{n}": ("sent", None) for n in (1, 2, 3)}
            assert sorted(sms.delivered()) == [f"notify:mail:{n}:{n}" for n in (1, 2, 3)]
        finally:
            r.close()


def test_a_dead_sms_provider_does_not_stop_email(project):
    with SmtpSink() as smtp, SmsProvider() as sms:
        sms.delay = 3  # longer than the 1 s client timeout
        configure(project, smtp.port, sms.url)
        project.load({"texts": campaign("texts", channel="sms", template="re-engage/last-call.sms.j2"),
                      "notify": campaign()}, customers=customers(3), orders=orders(3))
        r = Reconciler(load_project(project))
        try:
            started = time.monotonic()
            report = r.run_once(at(minutes=1))
            assert report.counts[("notify", "mail", "sent")] == 3
            assert report.counts[("texts", "mail", "failed:transient")] == 3
            assert time.monotonic() - started < 30
        finally:
            r.close()


# --- policies -------------------------------------------------------------------------


def test_frequency_caps_let_the_higher_priority_campaign_win(project):
    with SmtpSink() as smtp:
        configure(project, smtp.port, policies="  frequency_caps: [{max: 1, per: 1d}]")
        project.load({"low": campaign("low", priority=1), "high": campaign("high", priority=10)},
                     customers=customers(2), orders=orders(2))
        r = Reconciler(load_project(project))
        try:
            report = r.run_once(at(minutes=1))
            assert report.counts[("high", "mail", "sent")] == 2
            assert report.counts[("low", "mail", "skipped:frequency_cap")] == 2
        finally:
            r.close()


def map_email_consent(project, consented: str) -> None:
    """Map an email_consent column in engine.yaml and add it to the loaded shop, true where ``consented`` holds."""
    text = (project / "engine.yaml").read_text().replace(
        "      unsubscribed_at: unsubscribed_at", "      unsubscribed_at: unsubscribed_at\n      email_consent: email_consent")
    (project / "engine.yaml").write_text(text)
    db = Database(project.url)
    db.execute("ALTER TABLE customers ADD COLUMN email_consent BOOLEAN")
    db.execute(f"UPDATE customers SET email_consent = ({consented})")
    db.dispose()


def test_no_message_without_consent_or_after_an_unsubscribe(project):
    with SmtpSink() as smtp:
        configure(project, smtp.port)
        project.load({"notify": campaign()}, customers=customers(3), orders=orders(3))
        map_email_consent(project, "customer_id <> 2")
        r = Reconciler(load_project(project))
        try:
            secret = "demo-secret-change-me"
            url = unsubscribe.link("https://shop.example/u", secret, "3", "email")
            assert unsubscribe.verify(url, secret) == ("3", "email")
            assert unsubscribe.verify(url.replace("c=3", "c=1"), secret) is None  # a forged link does nothing
            r.ledger.unsubscribe("3", "email", "link", at())
            report = r.run_once(at(minutes=1))
            assert report.counts[("notify", "mail", "sent")] == 1
            assert report.counts[("notify", "mail", "skipped:no_consent")] == 2
            [sent] = smtp.messages
            assert sent["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
            link = sent["List-Unsubscribe"].strip("<>")
            assert unsubscribe.verify(link, secret) == ("1", "email")
        finally:
            r.close()


EMAIL_OR_SMS = """
    name: greet
    trigger: {order_placed: {}}
    steps:
      - id: hello
        delay: 0m
        freshness: 7d
        variants:
          - {id: email, audience: email IS NOT NULL, channel: email, template: second-order/nudge.email.j2}
          - {id: sms, audience: phone IS NOT NULL, channel: sms, template: re-engage/last-call.sms.j2}
"""


@pytest.mark.parametrize("project", ["sqlite", "postgres"], indirect=True)
def test_one_channel_per_customer_chosen_by_consent_and_contact_data(project):
    """R-M2: the first variant the customer can receive wins; a variant they cannot receive
    (no consent, unsubscribed, suppressed, no address) hands over to the next one."""
    with SmtpSink() as smtp, SmsProvider() as sms:
        configure(project, smtp.port, sms.url)
        rows = customers(7)
        rows[5]["phone"] = None  # 6: no consent for email and no phone
        rows[6]["email"] = rows[6]["phone"] = None  # 7: nothing to reach
        project.load({"greet": EMAIL_OR_SMS}, customers=rows, orders=orders(7))
        map_email_consent(project, "customer_id NOT IN (2, 6)")
        r = Reconciler(load_project(project))
        try:
            r.ledger.unsubscribe("3", "email", "link", at())
            r.ledger.suppress("email", "c4@example.com", "bounced", "550", at())
            r.ledger.unsubscribe("5", "all", "cli", at())
            plan = {m.customer_id: (m.action, m.reason, m.channel) for batch in r.due(at(minutes=1)) for m in batch}
            assert plan == {
                "1": ("send", None, "email"),
                "2": ("send", None, "sms"),       # no email consent
                "3": ("send", None, "sms"),       # unsubscribed from email only
                "4": ("send", None, "sms"),       # email address bounced before
                "5": ("skip", "no_consent", "email"),  # unsubscribed from everything
                "6": ("skip", "no_consent", "email"),  # the first variant's reason is the one reported
                "7": ("skip", "no_variant", None),
            }
            report = r.run_once(at(minutes=1))
            assert report.counts[("greet", "hello", "sent")] == 4
            assert sorted(smtp.keys()) == ["greet:hello:1:1"]
            assert sorted(q["body"]["reference"] for q in sms.requests) == ["greet:hello:2:2", "greet:hello:3:3", "greet:hello:4:4"]
            assert statuses(r)["greet:hello:6:6"] == ("skipped", "no_consent", 0)
        finally:
            r.close()


def test_not_contacted_within_skips_customers_other_campaigns_just_reached(project):
    """R-P2: "not contacted in the last 3 days" counts what other campaigns sent, not the campaign's own series."""
    series = """
    name: quiet-series
    not_contacted_within: 3d
    trigger: {order_placed: {}}
    steps:
      - {id: first, delay: 1d, freshness: 7d, channel: email, template: second-order/nudge.email.j2}
      - {id: second, delay: 2d, freshness: 7d, channel: email, template: second-order/nudge.email.j2}
"""
    with SmtpSink() as smtp:
        configure(project, smtp.port)
        notify_one = campaign().replace("priority: 0", "priority: 0\n    audience: first_name = 'C1'")
        project.load({"quiet-series": series, "notify": notify_one}, customers=customers(2), orders=orders(2))
        r = Reconciler(load_project(project))
        try:
            # notify reaches customer 1 only, at T0 + 1 min
            r.run_once(at(minutes=1), [r.project.campaign("notify")])
            assert sorted(smtp.keys()) == ["notify:mail:1:1"]
            day1 = r.run_once(at(days=1, minutes=1), [r.project.campaign("quiet-series")])
            assert day1.counts[("quiet-series", "first", "skipped:recently_contacted")] == 1
            assert day1.counts[("quiet-series", "first", "sent")] == 1
            assert statuses(r)["quiet-series:first:1:1"] == ("skipped", "recently_contacted", 0)
            # day 2: customer 2's own first step (1 day ago) does not block its second step; customer 1
            # is still within 3 days of notify's message
            day2 = r.run_once(at(days=2, minutes=1), [r.project.campaign("quiet-series")])
            assert day2.counts[("quiet-series", "second", "sent")] == 1
            assert day2.counts[("quiet-series", "second", "skipped:recently_contacted")] == 1
            assert sorted(smtp.keys()) == ["notify:mail:1:1", "quiet-series:first:2:2", "quiet-series:second:2:2"]
        finally:
            r.close()


def test_holdout_customers_get_nothing_and_stay_in_the_holdout(project):
    """A 30 % holdout: exactly the customers the stable hash puts there are skipped (holdout), every pass."""
    from engine.decide import in_holdout

    held = campaign("held").replace("priority: 0", "priority: 0\n    holdout: 30")
    with SmtpSink() as smtp:
        configure(project, smtp.port)
        project.load({"held": held}, customers=customers(200), orders=orders(200))
        expected = {str(i) for i in range(1, 201) if in_holdout("held", str(i), 30)}
        assert 40 <= len(expected) <= 80  # about 30 % of 200
        r = Reconciler(load_project(project))
        try:
            report = r.run_once(at(minutes=1))
            assert report.counts[("held", "mail", "skipped:holdout")] == len(expected)
            assert report.counts[("held", "mail", "sent")] == 200 - len(expected)
            delivered = {key.split(":")[2] for key in smtp.keys()}
            assert delivered == {str(i) for i in range(1, 201)} - expected
            assert {k.split(":")[2] for k, (status, reason, _) in statuses(r).items() if reason == "holdout"} == expected
            assert r.run_once(at(minutes=30)).total("") == 0  # recorded: nothing is decided again
        finally:
            r.close()


# --- crashes ------------------------------------------------------------------------------


def _run(root, as_of: str, env: dict | None = None, timeout: int = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", "from engine.cli.main import main; main()", "run", "--once", "--as-of", as_of],
                          cwd=root, capture_output=True, text=True, timeout=timeout, env={**os.environ, **(env or {})})


CRASH_POINTS = ["claimed:1", "stored:1", "sent:1", "sent:7", "sent:12"]


@pytest.mark.parametrize("delivery", ["at_most_once", "at_least_once"])
def test_kill_9_at_any_point_never_sends_twice_or_loses_a_message(project, delivery):
    """For each failpoint: crash there, then recover; count what the sink received."""
    n = 12
    printed = []
    with SmtpSink() as smtp:
        configure(project, smtp.port, policies="  claim_timeout: 1m", email_delivery=delivery)
        project.load({"notify": campaign()}, customers=customers(n), orders=orders(n))
        db = Database(project.url)
        for point in CRASH_POINTS:
            db.execute("DELETE FROM engine_ledger") if point != CRASH_POINTS[0] else None
            smtp.messages.clear()
            crashed = _run(project, "2025-01-06T12:01:00Z", {"ENGINE_FAILPOINT": point})
            assert crashed.returncode == -signal.SIGKILL, crashed.stderr
            recovered = _run(project, "2025-01-06T12:05:00Z")  # after the claim timeout
            assert recovered.returncode == 0, recovered.stderr
            keys = smtp.keys()
            ids = {m["Message-ID"] for m in smtp.messages}
            rows = dict(db.fetch_all("SELECT status, count(*) FROM engine_ledger GROUP BY status"))
            printed.append(f"{delivery:14} {point:10} delivered={len(keys):3} distinct={len(set(keys)):3} ledger={rows}")
            if delivery == "at_most_once":
                assert len(keys) == len(set(keys)), "a message was delivered twice"
                # every due message ends sent, or unknown (sent or not: it was in flight at the crash)
                assert rows.get("sent", 0) + rows.get("unknown", 0) == n
                assert rows.get("claimed", 0) == 0
                assert len(set(keys)) >= rows.get("sent", 0)
            else:
                assert set(keys) == {f"notify:mail:{i}:{i}" for i in range(1, n + 1)}  # at least once
                assert len(ids) == n  # duplicates share the Message-ID, so the provider can drop them
                assert rows == {"sent": n}
        db.dispose()
    print("\n" + "\n".join(printed))


def test_a_kill_leaves_in_doubt_only_the_messages_in_flight(project):
    """Content is stored group by group, just before each group goes to the provider: a kill in the
    middle of a 300-message batch leaves at most connections x in_flight messages in doubt
    (``unknown``); every other claim has no content, is released and sent by the next pass."""
    n, connections, in_flight = 300, 4, 5
    with SmtpSink() as smtp:
        configure(project, smtp.port, policies="  claim_timeout: 1m",
                  email_settings=f"\n    connections: {connections}\n    in_flight: {in_flight}")
        project.load({"notify": campaign()}, customers=customers(n), orders=orders(n))
        crashed = _run(project, "2025-01-06T12:01:00Z", {"ENGINE_FAILPOINT": "sent:100"})
        assert crashed.returncode == -signal.SIGKILL, crashed.stderr
        db = Database(project.url)
        try:
            in_doubt = db.fetch_all("SELECT message_key FROM engine_ledger WHERE status = 'claimed' AND content IS NOT NULL")
            assert 0 < len(in_doubt) <= connections * in_flight
            delivered_before = set(smtp.keys())
            assert len(delivered_before) >= 99
            recovered = _run(project, "2025-01-06T12:05:00Z")
            assert recovered.returncode == 0, recovered.stderr
            rows = dict(db.fetch_all("SELECT status, count(*) FROM engine_ledger GROUP BY status"))
            unknown = {key for (key,) in db.fetch_all("SELECT message_key FROM engine_ledger WHERE status = 'unknown'")}
        finally:
            db.dispose()
        keys = smtp.keys()
        print(f"\nkilled after 100 sends: {len(in_doubt)} in doubt (bound {connections * in_flight}), ledger {rows}")
        assert len(keys) == len(set(keys)), "a message was delivered twice"
        assert unknown == {key for (key,) in in_doubt}
        assert rows == {"sent": n - len(unknown), "unknown": len(unknown)}
        assert set(keys) >= {f"notify:mail:{i}:{i}" for i in range(1, n + 1)} - unknown  # the rest all went out


def test_sms_the_ledger_calls_sent_are_in_the_file_outbox_after_a_kill(project):
    """SMS lines were buffered and written at the end of the pass while the ledger marked them sent
    batch by batch: a kill at the 6th batch's claim left 15 SMS 'sent' that no file held, never
    resent. Now each line is in the file when the ledger records it (and fsync'd before)."""
    sms_campaigns = {f"texts{i}": campaign(f"texts{i}", priority=10 - i, channel="sms", template="re-engage/last-call.sms.j2")
                     for i in range(6)}
    project.load(sms_campaigns, customers=customers(3), orders=orders(3))
    outbox = project / "var" / "outbox" / "sms" / "messages.jsonl"
    crashed = _run(project, "2025-01-06T12:01:00Z", {"ENGINE_FAILPOINT": "claimed:6"})  # one batch per campaign
    assert crashed.returncode == -signal.SIGKILL, crashed.stderr
    db = Database(project.url)
    try:
        sent = {key for (key,) in db.fetch_all("SELECT message_key FROM engine_ledger WHERE status = 'sent'")}
        written = [json.loads(line)["key"] for line in outbox.read_text().splitlines()] if outbox.exists() else []
        assert len(sent) == 15 and sorted(written) == sorted(sent)
        recovered = _run(project, "2025-01-06T12:20:00Z")
        assert recovered.returncode == 0, recovered.stderr
        sent = {key for (key,) in db.fetch_all("SELECT message_key FROM engine_ledger WHERE status = 'sent'")}
    finally:
        db.dispose()
    written = [json.loads(line)["key"] for line in outbox.read_text().splitlines()]
    assert len(sent) == 18 and sorted(written) == sorted(sent)  # each exactly once


def test_dispatch_syncs_a_session_before_the_ledger_records_what_it_sent():
    """send_all's contract with a session whose acceptance is not yet durable (the file outbox):
    ``sync`` comes between a group's sends and the hand-over that records their outcomes."""
    from engine.channels import Delivered, OutgoingMessage
    from engine.run.dispatch import send_all

    events = []

    class Recording:  # a channel session that writes down what dispatch asks of it
        def send(self, message):
            events.append(("send", message.key))
            return Delivered(provider_id=message.key)

        def sync(self):
            events.append(("sync",))

    def hand_over(done, group):
        events.append(("record", tuple(messages[i][1].key for i, _ in done), "store", tuple(messages[i][1].key for i in group)))
        return set(group)

    messages = [("outbox", OutgoingMessage(key=f"k{i}", kind="sms", to="+491", sender="Shop", parts={"text": "hi"}))
                for i in range(7)]
    results = send_all(messages, {"outbox": Recording()}, hand_over, {"outbox": 3})
    assert [r.message.key for r in results] == [f"k{i}" for i in range(7)]
    assert events == [
        ("record", (), "store", ("k0", "k1", "k2")), ("send", "k0"), ("send", "k1"), ("send", "k2"),
        ("sync",), ("record", ("k0", "k1", "k2"), "store", ("k3", "k4", "k5")), ("send", "k3"), ("send", "k4"), ("send", "k5"),
        ("sync",), ("record", ("k3", "k4", "k5"), "store", ("k6",)), ("send", "k6"),
        ("sync",), ("record", ("k6",), "store", ()),
    ]


def test_sms_resent_after_a_kill_is_delivered_once_by_a_provider_that_honours_idempotency_keys(project):
    """at_least_once SMS: a kill after 5 of 12 sends leaves the 12 handed over in doubt; recovery
    sends them again with the same Idempotency-Key, and the provider delivers each exactly once."""
    n = 12
    with SmsProvider() as sms, SmtpSink() as smtp:
        configure(project, smtp.port, sms.url, policies="  claim_timeout: 1m", sms_delivery="at_least_once")
        project.load({"texts": campaign("texts", channel="sms", template="re-engage/last-call.sms.j2")},
                     customers=customers(n), orders=orders(n))
        crashed = _run(project, "2025-01-06T12:01:00Z", {"ENGINE_FAILPOINT": "sent:5"})
        assert crashed.returncode == -signal.SIGKILL, crashed.stderr
        recovered = _run(project, "2025-01-06T12:05:00Z")
        assert recovered.returncode == 0, recovered.stderr
        db = Database(project.url)
        rows = dict(db.fetch_all("SELECT status, count(*) FROM engine_ledger GROUP BY status"))
        db.dispose()
        on_the_wire = [r["body"]["reference"] for r in sms.requests]
        replays = [r["body"]["reference"] for r in sms.requests if r["replayed"]]
        assert len(replays) == 5 and len(on_the_wire) == n + 5  # the 5 sent before the kill went twice
        assert sorted(sms.delivered()) == sorted(f"texts:mail:{i}:{i}" for i in range(1, n + 1))  # each once
        keys = {}
        for r in sms.requests:
            keys.setdefault(r["body"]["reference"], set()).add(r["idempotency_key"])
        assert all(len(k) == 1 and None not in k for k in keys.values())  # one Idempotency-Key per message
        assert len({k for ks in keys.values() for k in ks}) == n
        assert rows == {"sent": n}


# --- replicas ------------------------------------------------------------------------------


def _start(root, as_of: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", "from engine.cli.main import main; main()", "run", "--once", "--as-of", as_of],
                            cwd=root, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=dict(os.environ))


@pytest.mark.parametrize("claims", ["fresh", "expiring"])
@pytest.mark.parametrize("project", ["sqlite", "postgres"], indirect=True)
def test_replicas_started_at_once_never_send_the_same_message_twice(project, claims):
    """Four reconcilers at once. ``expiring``: the claim timeout (1 minute) is shorter than a batch's
    send time (a slow SMTP sink), and the replicas run 2, 4 and 6 minutes later than the first one, so
    each takes the others' claims for a dead process's: it releases their unsent claims and claims
    them again while their owner is still sending. Storing the content is a compare-and-set, so
    exactly one process hands each message over: 0 duplicates, every message delivered."""
    n = 60 if claims == "fresh" else 400
    with SmtpSink() as smtp:
        smtp.delay = 0.01 if claims == "fresh" else 0.1
        policies = "  claim_timeout: 1m" if claims == "expiring" else ""
        configure(project, smtp.port, policies=policies, email_settings="\n    in_flight: 4")
        project.load({"notify": campaign()}, customers=customers(n), orders=orders(n))
        Reconciler(load_project(project)).close()  # create the ledger tables before the race
        if claims == "fresh":
            procs = [_start(project, "2025-01-06T12:01:00Z") for _ in range(4)]
        else:
            procs = [_start(project, "2025-01-06T12:01:00Z")]
            deadline = time.monotonic() + 120
            while not smtp.keys() and time.monotonic() < deadline and procs[0].poll() is None:
                time.sleep(0.05)  # the first one is sending its batch: now the others start
            procs += [_start(project, f"2025-01-06T12:0{minute}:00Z") for minute in (3, 5, 7)]
        outputs = [proc.communicate(timeout=300) for proc in procs]
        keys = smtp.keys()
        db = Database(project.url)
        rows = dict(db.fetch_all("SELECT status, count(*) FROM engine_ledger GROUP BY status"))
        db.dispose()
        print(f"\n4 replicas on {project.url.split(':')[0]}, {claims} claims: {len(keys)} delivered, "
              f"{len(set(keys))} distinct, of {n}; ledger {rows}")
        for proc, (out, err) in zip(procs, outputs):
            assert proc.returncode == 0, err
            print(out.strip())
        assert len(keys) == len(set(keys)) == n
        if claims == "expiring":
            assert any("released" in out for out, _ in outputs), "no replica took over another's claims"
            assert rows.get("claimed", 0) == 0 and rows.get("sent", 0) + rows.get("unknown", 0) == n


def test_a_second_process_on_one_duckdb_file_gets_a_clear_message(tmp_path, monkeypatch):
    import duckdb

    root = copy_project(tmp_path / "p")
    path = tmp_path / "shop.duckdb"
    monkeypatch.setenv("ENGINE_WAREHOUSE_URL", f"duckdb:///{path}")
    from engine.tools.demo import build_demo

    build_demo(path, 42, 50, "2025-01-10T00:00:00Z")
    holder = duckdb.connect(str(path))  # another process would hold the same lock; so does this connection's file lock
    try:
        result = subprocess.run([sys.executable, "-c", "import duckdb, sys; duckdb.connect(sys.argv[1]); print('opened')", str(path)],
                                capture_output=True, text=True, timeout=60)
        assert result.returncode != 0  # duckdb allows one writing process
        run = _run(root, "2025-01-10T00:00:00Z")
        assert run.returncode == 1
        assert "lock" in run.stderr.lower() and "Traceback" not in run.stderr
    finally:
        holder.close()
