"""Web push end to end: the shipped browse abandonment sends its push variant over the webpush transport to a
push service on loopback (tests/push_service.py) that verifies each VAPID JWT and decrypts each payload with
the subscriber's private key - real RFC 8291/8292, not a mock. Subscriptions come from the shop's data
(several per customer); a 410 removes one for good; 429 waits for Retry-After; bad keys are clear failures.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
import sqlalchemy as sa

from conftest import copy_project, database_url, load_history, write
from engine import Reconciler, load_project
from engine.channels import webpush
from engine.run.dispatch import deserialize
from engine.spec.project import check_project
from engine.state.ledger_tables import gone_contacts_table, suppressions_table
from push_service import PushService, Subscriber, vapid_keys

UTC = timezone.utc
T0 = datetime(2025, 1, 6, 12, 0)  # a Monday noon UTC: 13:00 in Berlin, outside the quiet hours
DAY1 = (T0 + timedelta(days=1, minutes=10)).replace(tzinfo=UTC)
DAY3 = (T0 + timedelta(days=3, minutes=10)).replace(tzinfo=UTC)

WEBPUSH = """\
  push:
    kind: push
    transport: webpush
    vapid_private_key: ${VAPID_PRIVATE_KEY}
    vapid_subject: mailto:ops@shop.example
    from: Shop
"""


def customer(i: int, **extra) -> dict:
    return {"customer_id": i, "email": f"c{i}@example.com", "first_name": f"C{i}",
            "created_at": T0 - timedelta(days=400), "timezone": None, **extra}


def viewed(i: int, customer_id: int) -> dict:
    return {"event_id": i, "customer_id": customer_id, "type": "product_viewed", "occurred_at": T0,
            "product_name": "Kettle", "url": "https://shop.example/p/kettle", "image_url": "https://shop.example/k.jpg"}


@pytest.fixture
def vapid(monkeypatch) -> str:
    private, public = vapid_keys()
    monkeypatch.setenv("VAPID_PRIVATE_KEY", private)
    return public


@pytest.fixture
def project(tmp_path, monkeypatch) -> Path:
    """The shipped project with browse abandonment only, its push channel on the webpush transport."""
    root = copy_project(tmp_path / "project")
    for path in (root / "campaigns.d").glob("*.yaml"):
        if path.stem != "browse-abandonment":
            path.unlink()
    text = (root / "engine.yaml").read_text()
    start = text.index("  push:\n    kind: push")
    (root / "engine.yaml").write_text(text[:start] + WEBPUSH)
    monkeypatch.setenv("ENGINE_WAREHOUSE_URL", database_url("sqlite", tmp_path))
    return root


def reconciler(root: Path, **rows) -> Reconciler:
    load_history(os.environ["ENGINE_WAREHOUSE_URL"], **rows)
    return Reconciler(load_project(root))


def gone(r: Reconciler) -> list[tuple]:
    with r.ledger.db.engine.connect() as conn:
        return [tuple(row) for row in conn.execute(sa.select(gone_contacts_table.c.kind, gone_contacts_table.c.contact,
                                                              gone_contacts_table.c.customer_id))]


def test_push_is_encrypted_for_every_subscription_signed_with_vapid_and_a_gone_one_never_used_again(project, vapid):
    with PushService(vapid_public_key=vapid) as service:
        laptop, phone, old = service.subscribe("laptop"), service.subscribe("phone"), service.subscribe("old")
        service.script[old.endpoint] = [(410, {})]
        r = reconciler(project, customers=[customer(1), customer(2), customer(3)],
                       events=[viewed(1, 1), viewed(2, 2), viewed(3, 3)],
                       push_subscriptions=[laptop.row(1), phone.row(1), old.row(2)])
        try:
            report = r.run_once(DAY1)
            assert not report.errors and not service.rejected, (report.errors, service.rejected)
            # customer 1: one message, encrypted for each of the two browsers, each decrypted by the service
            assert sorted(m.endpoint for m in service.received) == sorted([laptop.endpoint, phone.endpoint])
            first = service.received[0]
            assert first.payload == {"title": "Still thinking about it, C1?",
                                     "body": "Kettle you looked at is still here.",
                                     "icon": "https://shop.example/k.jpg", "url": "https://shop.example/p/kettle"}
            assert service.received[0].ciphertext != service.received[1].ciphertext  # a fresh key per request
            # the step's delivery options as RFC 8030 headers
            assert (first.headers["TTL"], first.headers["Urgency"], first.headers["Topic"]) == (
                "43200", "normal", "browse-abandonment")
            key1 = "browse-abandonment:day-1:1:2025-01-06"
            row = r.ledger.get(key1)
            assert (row["status"], row["channel"]) == ("sent", "push")
            assert "accepted by 2 of 2 subscription(s)" in row["detail"]
            # what the service decrypted is byte for byte the stored message's document
            assert json.dumps(first.payload, separators=(",", ":"), sort_keys=True).encode() == \
                webpush.document(deserialize(key1, row["content"]))
            # customer 2: the only subscription is gone (410): a final failure, and the removal recorded
            row2 = r.ledger.get("browse-abandonment:day-1:2:2025-01-06")
            assert (row2["status"], row2["reason"], row2["channel"]) == ("failed", "permanent", "push")
            assert gone(r) == [("push", old.endpoint, "2")]
            # customer 3 has no subscription: the step's next variant, email
            assert r.ledger.get("browse-abandonment:day-1:3:2025-01-06")["channel"] == "email"

            requests = service.requests
            r.run_once(DAY3)
            # day 3: customer 1 by push again; customer 2's gone subscription is never asked again: email instead
            assert service.requests == requests + 2 and not service.rejected
            assert r.ledger.get("browse-abandonment:day-3:2:2025-01-06")["channel"] == "email"
            assert r.ledger.get("browse-abandonment:day-3:1:2025-01-06")["channel"] == "push"
        finally:
            r.close()


def test_429_waits_for_retry_after_then_the_retry_is_decrypted(project, vapid):
    with PushService(vapid_public_key=vapid) as service:
        browser = service.subscribe("busy")
        service.script[browser.endpoint] = [(429, {"Retry-After": "7200"})]
        r = reconciler(project, customers=[customer(1)], events=[viewed(1, 1)], push_subscriptions=[browser.row(1)])
        try:
            r.run_once(DAY1)
            key = "browse-abandonment:day-1:1:2025-01-06"
            row = r.ledger.get(key)
            assert (row["status"], row["reason"]) == ("failed", "transient")
            # the backoff would say about a minute; the push service said two hours
            retry_at = row["next_attempt_at"].replace(tzinfo=UTC)
            assert DAY1 + timedelta(hours=2) <= retry_at < DAY1 + timedelta(hours=2, minutes=1)
            r.run_once(DAY1 + timedelta(hours=1))
            assert r.ledger.get(key)["status"] == "failed" and not service.received
            r.run_once(retry_at)
            assert r.ledger.get(key)["status"] == "sent"
            assert [m.endpoint for m in service.received] == [browser.endpoint]
            assert service.received[0].payload["title"] == "Still thinking about it, C1?"
        finally:
            r.close()


def test_malformed_subscription_keys_fail_with_a_clear_reason_and_spare_the_good_ones(project, vapid):
    with PushService(vapid_public_key=vapid) as service:
        good = service.subscribe("good")
        broken = Subscriber(f"{service.origin}/push/broken")
        r = reconciler(project, customers=[customer(1), customer(2)], events=[viewed(1, 1), viewed(2, 2)],
                       push_subscriptions=[
                           good.row(1), {**broken.row(1), "p256dh": "bm90LWEta2V5"},  # customer 1: one good, one bad
                           {**broken.row(2), "auth": "c2hvcnQ"}])  # customer 2: only a bad one
        try:
            report = r.run_once(DAY1)
            assert not report.errors
            one = r.ledger.get("browse-abandonment:day-1:1:2025-01-06")
            assert one["status"] == "sent" and "malformed p256dh key" in one["detail"]
            two = r.ledger.get("browse-abandonment:day-1:2:2025-01-06")
            assert (two["status"], two["reason"]) == ("failed", "permanent")
            assert "malformed auth secret: 5 bytes, RFC 8291 needs 16" in two["detail"]
            assert [m.endpoint for m in service.received] == [good.endpoint] and gone(r) == []
            # a permanent failure of push says nothing about an address: nothing is suppressed
            with r.ledger.db.engine.connect() as conn:
                assert conn.execute(sa.select(sa.func.count()).select_from(suppressions_table)).scalar() == 0
        finally:
            r.close()


def test_a_missing_or_malformed_vapid_key_is_named_at_validation_and_at_the_run(project, monkeypatch):
    monkeypatch.setenv("VAPID_PRIVATE_KEY", "c2hvcnQ")  # base64url of 5 bytes
    _, issues = check_project(project)
    errors = [i for i in issues if i.severity == "error"]
    assert len(errors) == 1 and "channels.push.vapid_private_key is unusable" in errors[0].message, issues
    line = next(n for n, text in enumerate((project / "engine.yaml").read_text().splitlines(), 1)
                if "vapid_private_key:" in text)
    assert errors[0].file.endswith("engine.yaml") and errors[0].line == line

    monkeypatch.delenv("VAPID_PRIVATE_KEY")
    project_, issues = check_project(project)
    assert project_ is not None and any("VAPID_PRIVATE_KEY is not set" in i.message and i.severity == "warning"
                                        for i in issues)
    load_history(os.environ["ENGINE_WAREHOUSE_URL"], customers=[customer(1)])
    result = subprocess.run([sys.executable, "-m", "engine.cli.main", "run", "--once", "--as-of", DAY1.isoformat()],
                            cwd=project, capture_output=True, text=True, timeout=120)
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert "VAPID_PRIVATE_KEY is not set" in result.stderr and "channels.push" in result.stderr, result.stderr

    # a key of the right form that is no P-256 scalar (above the curve's order): refused when the session opens
    monkeypatch.setenv("VAPID_PRIVATE_KEY", "_" * 43)
    result = subprocess.run([sys.executable, "-m", "engine.cli.main", "run", "--once", "--as-of", DAY1.isoformat()],
                            cwd=project, capture_output=True, text=True, timeout=120)
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert "channels.push.vapid_private_key is unusable: not a readable P-256 private key" in result.stderr, result.stderr


def test_a_push_template_without_a_title_is_reported_with_file_line_and_fix(project, vapid):
    template = project / "templates" / "browse" / "viewed.push.j2"
    template.write_text("{% block body %}Hello{% endblock %}\n")
    _, issues = check_project(project)
    errors = [i for i in issues if i.severity == "error"]
    assert errors and all("browse-abandonment.yaml" in i.file for i in errors)
    assert "has no 'title' block, which push messages need" in errors[0].message, errors


def test_an_unsubscribe_from_push_falls_back_to_email(project, vapid):
    with PushService(vapid_public_key=vapid) as service:
        browser = service.subscribe("b")
        r = reconciler(project, customers=[customer(1)], events=[viewed(1, 1)], push_subscriptions=[browser.row(1)])
        try:
            result = subprocess.run([sys.executable, "-m", "engine.cli.main", "unsubscribe", "1", "--channel", "push"],
                                    cwd=project, capture_output=True, text=True, timeout=120)
            assert result.returncode == 0, result.stderr
            planned = [(m.channel, m.action) for batch in r.due(DAY1) for m in batch]
            assert planned == [("email", "send")]
        finally:
            r.close()


def test_the_payload_limit_of_web_push_is_a_clear_permanent_failure():
    message = webpush.OutgoingMessage(key="k", kind="push", to="[]", sender="s", parts={"title": "t", "body": "x" * 5000})
    channel = webpush.WebPushChannel.__new__(webpush.WebPushChannel)
    channel._client, channel.name = object(), "push"
    outcome = channel.send(message)
    assert outcome.permanent and "at most 3993" in outcome.detail


def test_an_unreachable_push_service_is_a_transient_failure_retried_later(project, vapid):
    from servers import free_port

    nobody = Subscriber(f"http://127.0.0.1:{free_port()}/push/x")  # nothing listens there
    r = reconciler(project, customers=[customer(1)], events=[viewed(1, 1)], push_subscriptions=[nobody.row(1)])
    try:
        report = r.run_once(DAY1)
        assert not report.errors
        row = r.ledger.get("browse-abandonment:day-1:1:2025-01-06")
        assert (row["status"], row["reason"]) == ("failed", "transient") and "ConnectError" in row["detail"]
        assert row["next_attempt_at"] is not None and gone(r) == []
    finally:
        r.close()


def test_delivery_options_are_checked_and_ignored_with_a_warning_where_no_channel_takes_them(project, vapid):
    campaign = project / "campaigns.d" / "browse-abandonment.yaml"
    text = campaign.read_text()
    campaign.write_text(text.replace("urgency: normal", "urgency: urgent", 1))
    _, issues = check_project(project)
    errors = [i for i in issues if i.severity == "error"]
    assert errors and "urgent" in errors[0].message and errors[0].file.endswith("browse-abandonment.yaml"), issues
    assert errors[0].line == next(n for n, t in enumerate(text.splitlines(), 1) if "urgency: normal" in t)

    write(campaign, """\
        name: browse-abandonment
        trigger:
          event: {type: product_viewed, per: day}
        stop: [came_back]
        steps:
          - id: day-1
            delay: 1d
            freshness: 12h
            channel: email
            template: browse/viewed.email.j2
            delivery: {ttl: 12h}
        """)
    project_, issues = check_project(project)
    assert project_ is not None
    assert any("gives delivery options, but none of its channels takes them" in i.message and i.severity == "warning"
               for i in issues), issues


# --- crashes and replicas: the delivery guarantees hold for push ----------------------------------------------

NOTIFY = """\
    name: notify
    trigger: {order_placed: {}}
    stop: [unsubscribed]
    steps:
      - {id: ping, delay: 0m, freshness: 7d, channel: push, template: notify/ping.push.j2}
"""


def notify_project(project: Path, service: PushService, n: int) -> list[Subscriber]:
    """Only the notify campaign (a push per order), a claim timeout of one minute, n customers each with
    one browser at ``service``."""
    for path in (project / "campaigns.d").glob("*.yaml"):
        path.unlink()
    write(project / "campaigns.d" / "notify.yaml", NOTIFY)
    write(project / "templates" / "notify" / "ping.push.j2",
          "{% block title %}Order of {{ customer.customer_id }}{% endblock %}{% block body %}Thanks!{% endblock %}\n")
    text = (project / "engine.yaml").read_text()
    (project / "engine.yaml").write_text(text.replace("sources:", "policies:\n  claim_timeout: 1m\nsources:", 1))
    browsers = [service.subscribe(f"c{i}") for i in range(1, n + 1)]
    load_history(os.environ["ENGINE_WAREHOUSE_URL"], customers=[customer(i) for i in range(1, n + 1)],
                 orders=[{"order_id": i, "customer_id": i, "created_at": T0, "status": "completed", "total": 5}
                         for i in range(1, n + 1)],
                 push_subscriptions=[b.row(i) for i, b in enumerate(browsers, 1)])
    return browsers


def run_engine(project: Path, as_of: str, env: dict | None = None, wait: bool = True):
    command = [sys.executable, "-m", "engine.cli.main", "run", "--once", "--as-of", as_of]
    if not wait:
        return subprocess.Popen(command, cwd=project, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return subprocess.run(command, cwd=project, capture_output=True, text=True, timeout=120,
                          env={**os.environ, **(env or {})})


def ledger_counts(url: str) -> dict[str, int]:
    from engine.state.warehouse import Database

    db = Database(url)
    try:
        return dict(db.fetch_all("SELECT status, count(*) FROM engine_ledger GROUP BY status"))
    finally:
        db.dispose()


def test_kill_9_at_any_point_never_pushes_twice_or_loses_a_message(project, vapid):
    """at_most_once (the default): crash at each failpoint, recover after the claim timeout; every
    message ends sent or unknown, and no browser gets one twice (each decrypted by the service)."""
    from engine.state.warehouse import Database

    n = 12
    with PushService(vapid_public_key=vapid) as service:
        notify_project(project, service, n)
        url = os.environ["ENGINE_WAREHOUSE_URL"]
        for point in ["claimed:1", "stored:1", "sent:1", "sent:7", "sent:12"]:
            db = Database(url)
            db.execute("DELETE FROM engine_ledger") if point != "claimed:1" else None
            db.dispose()
            service.received.clear()
            crashed = run_engine(project, "2025-01-06T12:01:00Z", {"ENGINE_FAILPOINT": point})
            assert crashed.returncode == -9, crashed.stderr
            recovered = run_engine(project, "2025-01-06T12:05:00Z")
            assert recovered.returncode == 0, recovered.stderr
            endpoints = [m.endpoint for m in service.received]
            rows = ledger_counts(url)
            assert len(endpoints) == len(set(endpoints)), (point, "a push was delivered twice")
            assert rows.get("sent", 0) + rows.get("unknown", 0) == n and rows.get("claimed", 0) == 0, (point, rows)
            assert len(set(endpoints)) >= rows.get("sent", 0) and not service.rejected


def test_replicas_started_at_once_never_push_the_same_message_twice(project, vapid):
    n = 40
    with PushService(vapid_public_key=vapid) as service:
        browsers = notify_project(project, service, n)
        Reconciler(load_project(project)).close()  # the ledger's tables, before the race
        procs = [run_engine(project, "2025-01-06T12:01:00Z", wait=False) for _ in range(4)]
        outputs = [proc.communicate(timeout=300) for proc in procs]
        assert [proc.returncode for proc in procs] == [0] * 4, outputs
        endpoints = [m.endpoint for m in service.received]
        assert sorted(endpoints) == sorted(b.endpoint for b in browsers)  # each exactly once
        assert ledger_counts(os.environ["ENGINE_WAREHOUSE_URL"]) == {"sent": n}
