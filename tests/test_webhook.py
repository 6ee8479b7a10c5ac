"""The webhook kind end to end: signed POSTs to a real receiver on loopback that verifies them.

The receiver (webhook_receiver.py) checks every signature with the standardwebhooks verifier and
with an HMAC computed by hand, deduplicates by webhook-id, and answers what a test scripts; a
proxy tampers with bodies and timestamps on the way. Passes run in process (``Reconciler``) or as
``engine`` processes killed at a failpoint. Every test is bounded in time.
"""
from __future__ import annotations

import base64
import hashlib
import json
import os
import signal
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
import sqlalchemy as sa

from conftest import copy_project, database_url, load_history, write
from engine import Reconciler, load_project
from engine.channels.webhook_http import document, retry_after
from engine.run.dispatch import deserialize
from engine.state.ledger import ledger_table
from servers import free_port
from webhook_receiver import TamperingProxy, WebhookReceiver, hand_signature

UTC = timezone.utc
T0 = datetime(2025, 1, 6, 12, 0)
SECRET = "whsec_" + base64.b64encode(bytes(range(32))).decode()

TEMPLATE = """\
{% block event %}order.thanks{% endblock %}
{% block title %}Thanks, {{ customer.first_name }}{% endblock %}
{% block text %}
Customer {{ customer.first_name }} placed an order.
{% endblock %}
{% block url %}https://shop.example.com/account{% endblock %}
"""

CAMPAIGN = """
name: notify
trigger: {order_placed: {}}
steps:
  - {id: crm, delay: 0m, freshness: 7d, channel: crm, template: crm/notify.webhook.j2}
"""


def configure(root, url: str, settings: str = "", policies: str = "  retry: {max_attempts: 4, backoff: 1m}",
              consent: str = ""):
    text = (root / "engine.yaml").read_text()
    crm = f"""  crm:
    kind: webhook
    transport: http_post
    url: {url}
    secret: ${{WEBHOOK_SECRET}}
    headers: {{Authorization: "Bearer ${{CRM_TOKEN}}", X-Shop: bean-and-brew}}
    timeout: 2
{settings}"""
    text = text.replace("\nchannels:\n", "\nchannels:\n" + crm.rstrip("\n") + "\n", 1)
    if "\npolicies:\n" in text:  # the demo's own policies (its unsubscribe URL): add these to them
        text = text.replace("\npolicies:\n", "\npolicies:\n" + policies + "\n", 1)
    else:
        text = text.replace("sources:", "policies:\n" + policies + "\nsources:", 1)
    if consent:
        text = text.replace("      customer_id: customer_id\n", f"      customer_id: customer_id\n      webhook_consent: \"{consent}\"\n")
    (root / "engine.yaml").write_text(text)


class ProjectDir(type(Path())):
    """The project directory, with its database URL attached."""


@pytest.fixture
def project(tmp_path, monkeypatch):
    root = ProjectDir(copy_project(tmp_path / "project"))
    for path in (root / "campaigns.d").glob("*.yaml"):
        path.unlink()
    url = database_url("sqlite", tmp_path)
    monkeypatch.setenv("ENGINE_WAREHOUSE_URL", url)
    monkeypatch.setenv("WEBHOOK_SECRET", SECRET)
    monkeypatch.setenv("CRM_TOKEN", "crm-token-123")
    write(root / "campaigns.d" / "notify.yaml", CAMPAIGN)
    write(root / "templates" / "crm" / "notify.webhook.j2", TEMPLATE)
    root.url = url
    return root


def shop(root, n: int) -> None:
    load_history(root.url,
                 customers=[{"customer_id": i, "email": f"c{i}@example.com", "first_name": f"C{i}",
                             "created_at": T0 - timedelta(days=100)} for i in range(1, n + 1)],
                 orders=[{"order_id": i, "customer_id": i, "created_at": T0, "status": "completed", "total": 5}
                         for i in range(1, n + 1)])


def at(**delta):
    return (T0 + timedelta(**delta)).replace(tzinfo=UTC)


def ledger(reconciler) -> dict[str, dict]:
    c = ledger_table.c
    with reconciler.ledger.db.engine.connect() as conn:
        return {row.message_key: row._asdict() for row in conn.execute(sa.select(ledger_table))}


def engine_cli(root, *args, env=None, timeout=120):
    return subprocess.run([sys.executable, "-c", "from engine.cli.main import main; main()", *args], cwd=root,
                          capture_output=True, text=True, timeout=timeout, env={**os.environ, **(env or {})})


# --- signing, body, headers -----------------------------------------------------------


def test_every_webhook_is_signed_as_the_specification_says_and_carries_the_message(project):
    with WebhookReceiver(SECRET) as receiver:
        configure(project, receiver.url)
        shop(project, 3)
        r = Reconciler(load_project(project))
        try:
            report = r.run_once(at(minutes=1))
            rows = ledger(r)
        finally:
            r.close()
    assert report.errors == []
    assert receiver.customers() == ["1", "2", "3"]
    assert len(receiver.requests) == 3
    for request in receiver.requests:
        headers, raw = request["headers"], request["raw"]
        assert request["library"] and request["by_hand"] and request["status"] == 200
        # the test's own HMAC over id.timestamp.body, beside the receiver's two checks
        assert headers["webhook-signature"] == hand_signature(SECRET, headers["webhook-id"], headers["webhook-timestamp"], raw)
        assert abs(int(headers["webhook-timestamp"]) - datetime.now(UTC).timestamp()) < 60  # the attempt's time
        assert headers["authorization"] == "Bearer crm-token-123" and headers["x-shop"] == "bean-and-brew"
        assert headers["content-type"] == "application/json"
        body = json.loads(raw)
        key = body["data"]["message_key"]
        assert headers["webhook-id"] == "msg_" + hashlib.sha256(key.encode()).hexdigest()[:32]
        customer = body["data"]["customer_id"]
        assert body == {"type": "order.thanks", "timestamp": "2025-01-06T12:00:00Z",
                        "data": {"message_key": f"notify:crm:{customer}:{customer}", "customer_id": customer,
                                 "campaign": "notify", "step": "crm", "variant": "default", "trigger_key": customer,
                                 "fields": {"title": f"Thanks, C{customer}",
                                            "text": f"Customer C{customer} placed an order.",
                                            "url": "https://shop.example.com/account"}}}
        # what the ledger stored rebuilds the very bytes that were signed and sent
        assert rows[key]["status"] == "sent" and rows[key]["detail"].startswith(headers["webhook-id"])
        assert document(deserialize(key, rows[key]["content"])) == raw


# --- answers: 429 with Retry-After, 500, 400 -------------------------------------------


def test_429_waits_for_retry_after_500_is_retried_and_400_is_final(project):
    with WebhookReceiver(SECRET) as receiver:
        configure(project, receiver.url)
        shop(project, 4)
        receiver.script = {"1": [(429, "600")], "2": [(500, None), (503, None)], "3": [(400, None)]}
        r = Reconciler(load_project(project))
        try:
            r.run_once(at(minutes=1))
            rows = ledger(r)
            assert {k: (v["status"], v["reason"], v["attempts"]) for k, v in rows.items()} == {
                "notify:crm:1:1": ("failed", "transient", 1), "notify:crm:2:2": ("failed", "transient", 1),
                "notify:crm:3:3": ("failed", "permanent", 1), "notify:crm:4:4": ("sent", None, 1)}
            # the backoff alone says within a minute; the receiver asked for ten
            assert rows["notify:crm:1:1"]["next_attempt_at"] >= at(minutes=11).replace(tzinfo=None)
            assert rows["notify:crm:2:2"]["next_attempt_at"] < at(minutes=3).replace(tzinfo=None)
            r.run_once(at(minutes=3))  # 2 is retried (503 again); 1 still waits
            r.run_once(at(minutes=8))  # 2 is sent
            assert ledger(r)["notify:crm:1:1"]["attempts"] == 1
            r.run_once(at(minutes=12))  # 1 is sent now
            rows = ledger(r)
            with r.ledger.db.engine.connect() as conn:
                suppressed = conn.execute(sa.text("SELECT count(*) FROM engine_suppressions")).scalar()
        finally:
            r.close()
    assert {k: v["status"] for k, v in rows.items()} == {"notify:crm:1:1": "sent", "notify:crm:2:2": "sent",
                                                         "notify:crm:3:3": "failed", "notify:crm:4:4": "sent"}
    assert rows["notify:crm:2:2"]["attempts"] == 3 and rows["notify:crm:3:3"]["attempts"] == 1
    assert suppressed == 0  # a receiver's 400 says nothing about the customer
    assert receiver.customers() == ["1", "2", "4"]
    ids = {}
    for request in receiver.requests:
        ids.setdefault(json.loads(request["raw"])["data"]["customer_id"], set()).add(request["headers"]["webhook-id"])
    assert [len(ids[c]) for c in "1234"] == [1, 1, 1, 1]  # the same webhook-id on every attempt


def test_retry_after_reads_seconds_and_http_dates_and_is_bounded():
    now = datetime(2025, 1, 6, 12, 0, tzinfo=UTC).timestamp()
    assert retry_after("120", now) == 120
    assert retry_after("Mon, 06 Jan 2025 12:05:00 GMT", now) == 300
    assert retry_after("Mon, 06 Jan 2025 11:00:00 GMT", now) == 0
    assert retry_after("99999999", now) == 24 * 3600
    assert retry_after("soon", now) is None and retry_after(None, now) is None


# --- tampering, an unreachable receiver -------------------------------------------------


def test_a_tampered_body_or_timestamp_is_rejected_and_recorded_failed(project):
    with WebhookReceiver(SECRET) as receiver, TamperingProxy(receiver.url) as proxy:
        configure(project, proxy.url)
        shop(project, 3)
        proxy.body_for, proxy.timestamp_for = {"1"}, {"2"}
        r = Reconciler(load_project(project))
        try:
            r.run_once(at(minutes=1))
            rows = ledger(r)
        finally:
            r.close()
    verdicts = {json.loads(q["raw"])["data"]["customer_id"].strip(): (q["library"], q["by_hand"], q["status"])
                for q in receiver.requests}
    assert verdicts == {"1": (False, False, 401), "2": (False, False, 401), "3": (True, True, 200)}
    assert receiver.customers() == ["3"]
    assert (rows["notify:crm:1:1"]["status"], rows["notify:crm:1:1"]["reason"]) == ("failed", "permanent")
    assert (rows["notify:crm:2:2"]["status"], rows["notify:crm:2:2"]["reason"]) == ("failed", "permanent")
    assert rows["notify:crm:1:1"]["detail"].startswith("401")
    assert rows["notify:crm:3:3"]["status"] == "sent"


def test_an_unreachable_receiver_is_recorded_failed_and_everything_arrives_later(project):
    port = free_port()
    configure(project, f"http://127.0.0.1:{port}/hooks/shop")
    shop(project, 3)
    r = Reconciler(load_project(project))
    try:
        r.run_once(at(minutes=1))
        rows = ledger(r)
        assert {v["status"] for v in rows.values()} == {"failed"} and len(rows) == 3
        assert all(v["reason"] == "transient" and "Connection refused" in v["detail"] for v in rows.values())
        with WebhookReceiver(SECRET, port=port) as receiver:
            r.run_once(at(minutes=5))
            rows = ledger(r)
    finally:
        r.close()
    assert {v["status"] for v in rows.values()} == {"sent"}
    assert receiver.customers() == ["1", "2", "3"] and len(receiver.requests) == 3



MAIL = """
name: mail
priority: 10
trigger: {order_placed: {}}
steps:
  - {id: thanks, delay: 0m, freshness: 7d, channel: email, template: second-order/nudge.email.j2}
"""


def test_a_hanging_receiver_does_not_hold_up_email(project):
    """Each channel has its own workers: every email (file outbox) goes out while every webhook times
    out; the webhooks are failed transient, and arrive at the next pass."""
    with WebhookReceiver(SECRET) as receiver:
        configure(project, receiver.url)
        write(project / "campaigns.d" / "mail.yaml", MAIL)
        shop(project, 3)
        receiver.delay = 3  # longer than the channel's 2 s timeout
        r = Reconciler(load_project(project))
        try:
            report = r.run_once(at(minutes=1))
            assert report.counts[("mail", "thanks", "sent")] == 3
            assert report.counts[("notify", "crm", "failed:transient")] == 3
            assert "timed out" in ledger(r)["notify:crm:1:1"]["detail"]
            receiver.delay = 0
            r.run_once(at(minutes=5))
            rows = ledger(r)
        finally:
            r.close()
    assert receiver.customers() == ["1", "2", "3"]
    assert {k: v["status"] for k, v in rows.items()} == {f"{c}:{i}:{i}": "sent" for c in ("mail:thanks", "notify:crm")
                                                         for i in (1, 2, 3)}


def test_frequency_caps_count_webhooks_with_every_other_kind(project):
    """One message a day across kinds: the higher-priority email wins, the webhook is skipped for the cap."""
    configure(project, "http://127.0.0.1:9/unused", policies="  frequency_caps: [{max: 1, per: 1d}]")
    write(project / "campaigns.d" / "mail.yaml", MAIL)
    shop(project, 2)
    r = Reconciler(load_project(project))
    try:
        report = r.run_once(at(minutes=1))
    finally:
        r.close()
    assert report.counts[("mail", "thanks", "sent")] == 2
    assert report.counts[("notify", "crm", "skipped:frequency_cap")] == 2

# --- a crash: resent with the same webhook-id, processed once --------------------------


def test_webhooks_resent_after_a_kill_are_processed_once_by_webhook_id(project):
    n = 8
    with WebhookReceiver(SECRET) as receiver:
        configure(project, receiver.url, settings="    delivery: at_least_once\n    connections: 1\n",
                  policies="  claim_timeout: 1m")
        shop(project, n)
        crashed = engine_cli(project, "run", "--once", "--as-of", "2025-01-06T12:01:00Z", env={"ENGINE_FAILPOINT": "sent:3"})
        assert crashed.returncode == -signal.SIGKILL, crashed.stderr
        recovered = engine_cli(project, "run", "--once", "--as-of", "2025-01-06T12:05:00Z")
        assert recovered.returncode == 0, recovered.stderr
    duplicates = [q["headers"]["webhook-id"] for q in receiver.requests if q["duplicate"]]
    assert len(duplicates) == 3  # the three the receiver had before the kill came again, same ids
    assert receiver.customers() == sorted(str(i) for i in range(1, n + 1))  # each processed once
    assert all(q["library"] and q["by_hand"] for q in receiver.requests)
    db = sa.create_engine(project.url)
    with db.connect() as conn:
        assert dict(conn.execute(sa.text("SELECT status, count(*) FROM engine_ledger GROUP BY status")).all()) == {"sent": n}
    db.dispose()


# --- policies, validation and bad input ---------------------------------------------------


def test_consent_unsubscribe_and_plan_apply_to_webhooks(project):
    """webhook_consent (mapped) and `engine unsubscribe --channel webhook` skip a customer; an
    unsubscribe from email does not; every customer has a contact (the id); plan shows the channel."""
    configure(project, "http://127.0.0.1:9/unused", consent="customer_id <> 2")
    shop(project, 4)
    assert engine_cli(project, "unsubscribe", "3", "--channel", "webhook").returncode == 0
    assert engine_cli(project, "unsubscribe", "4", "--channel", "email").returncode == 0
    result = engine_cli(project, "plan", "--as-of", "2025-01-06T12:05:00Z", "--include-skipped", "--format", "jsonl")
    assert result.returncode == 0, result.stdout + result.stderr
    planned = {row["customer_id"]: (row["channel"], row["action"], row["reason"])
               for row in map(json.loads, result.stdout.splitlines())}
    assert planned == {"1": ("crm", "send", None), "2": ("crm", "skip", "no_consent"),
                       "3": ("crm", "skip", "no_consent"), "4": ("crm", "send", None)}


def test_a_webhook_template_without_an_event_block_fails_validation_with_the_fix(project):
    configure(project, "http://127.0.0.1:9/unused")
    write(project / "templates" / "crm" / "notify.webhook.j2", "{% block text %}Hi {{ customer.first_name }}{% endblock %}\n")
    result = engine_cli(project, "validate")
    assert result.returncode == 1, result.stdout
    assert "has no 'event' block, which webhook messages need" in result.stdout
    assert "campaigns.d/notify.yaml:" in result.stdout and "add {% block event %}...{% endblock %}" in result.stdout
    assert "Traceback" not in result.stdout + result.stderr


@pytest.mark.parametrize("secret, says", [
    ("not-a-secret", "must start with whsec_"),
    ("whsec_!!!notbase64", "not base64 after whsec_"),
    ("whsec_" + base64.b64encode(b"short").decode(), "5 bytes, needs 24 to 64"),
    (None, "environment variable WEBHOOK_SECRET is not set"),
])
def test_a_missing_or_malformed_secret_is_a_clear_message_before_anything_is_claimed(project, monkeypatch, secret, says):
    configure(project, "http://127.0.0.1:9/unused")
    shop(project, 2)
    if secret is None:
        monkeypatch.delenv("WEBHOOK_SECRET")
    else:
        monkeypatch.setenv("WEBHOOK_SECRET", secret)
    result = engine_cli(project, "run", "--once", "--as-of", "2025-01-06T12:05:00Z")
    assert result.returncode != 0 and "Traceback" not in result.stdout + result.stderr
    output = result.stdout + result.stderr
    assert says in output, output
    if secret is not None:
        assert "channels.crm.secret" in output and secret not in output  # the fix, never the value
    db = sa.create_engine(project.url)
    with db.connect() as conn:
        claimed = conn.execute(sa.text("SELECT count(*) FROM engine_ledger")).scalar() if sa.inspect(conn).has_table("engine_ledger") else 0
    db.dispose()
    assert claimed == 0  # nothing claimed, so nothing lost: the next pass with a good secret sends it all


def test_extra_headers_cannot_replace_the_signature_headers(project):
    configure(project, "http://127.0.0.1:9/unused")
    text = (project / "engine.yaml").read_text().replace("X-Shop: bean-and-brew", "webhook-signature: forged")
    (project / "engine.yaml").write_text(text)
    shop(project, 1)
    result = engine_cli(project, "run", "--once", "--as-of", "2025-01-06T12:05:00Z")
    assert result.returncode != 0 and "Traceback" not in result.stdout + result.stderr
    assert "channels.crm.headers: 'webhook-signature' cannot be sent as an extra header" in result.stdout + result.stderr


# --- the demo's commented example -----------------------------------------------------------


def test_the_demos_commented_webhook_example_delivers_the_open_carts_into_the_outbox(tmp_path, monkeypatch):
    """Uncommented as engine.yaml and campaigns.d/abandoned-cart.yaml say, the demo hands every open
    cart it reminds by email to the CRM too, as JSON lines in the file outbox."""
    import re

    root = copy_project(tmp_path / "demo")
    monkeypatch.delenv("ENGINE_WAREHOUSE_URL", raising=False)
    for name, start in (("engine.yaml", "  # crm:"), ("campaigns.d/abandoned-cart.yaml", "  # - id: crm")):
        text = (root / name).read_text()
        assert start in text, name
        head, tail = text[:text.index(start)], text[text.index(start):]
        (root / name).write_text(head + re.sub(r"(?m)^  # ", "  ", tail))
    (root / "engine.yaml").write_text((root / "engine.yaml").read_text().replace("customers: 2000", "customers: 600"))
    for args in (("demo", "--reset"), ("validate",), ("run", "--once", "--as-of", "2025-01-10T00:00:00Z")):
        result = engine_cli(root, *args, timeout=300)
        assert result.returncode == 0, result.stdout + result.stderr
    lines = [json.loads(line) for line in (root / "var/outbox/webhook/messages.jsonl").read_text().splitlines()]
    reminded = sorted(re.sub(r"^abandoned-cart_reminder_", "", p.stem).split("_")[0]
                      for p in (root / "var/outbox/email").glob("abandoned-cart_reminder_*.eml"))
    assert lines and sorted(line["to"] for line in lines) == reminded
    for line in lines:
        assert line["event"] == "cart.abandoned" and line["key"].startswith(f"abandoned-cart:crm:{line['to']}:")
        assert " x " in line["text"] and line["url"].startswith("https://beanandbrew.example/checkout/")


def test_replicas_started_at_once_post_each_webhook_once(project):
    """Three reconcilers at once on one SQLite ledger: every webhook crosses the wire exactly once
    (no duplicate webhook-id even for the receiver to drop), every message recorded sent."""
    n = 40
    with WebhookReceiver(SECRET) as receiver:
        configure(project, receiver.url, settings="    in_flight: 4\n")
        shop(project, n)
        Reconciler(load_project(project)).close()  # create the ledger tables before the race
        procs = [subprocess.Popen([sys.executable, "-c", "from engine.cli.main import main; main()", "run", "--once",
                                   "--as-of", "2025-01-06T12:01:00Z"], cwd=project, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True, env=dict(os.environ)) for _ in range(3)]
        outputs = [proc.communicate(timeout=300) for proc in procs]
    for proc, (_, err) in zip(procs, outputs):
        assert proc.returncode == 0, err
    ids = [q["headers"]["webhook-id"] for q in receiver.requests]
    assert len(ids) == len(set(ids)) == n and not any(q["duplicate"] for q in receiver.requests)
    assert receiver.customers() == sorted(str(i) for i in range(1, n + 1))
    db = sa.create_engine(project.url)
    with db.connect() as conn:
        assert dict(conn.execute(sa.text("SELECT status, count(*) FROM engine_ledger GROUP BY status")).all()) == {"sent": n}
    db.dispose()


@pytest.mark.parametrize("settings, says", [
    ({"url": "ftp://crm.example.com/hooks"}, "channels.crm.url is not an http(s) URL"),
    ({"headers": {"X-Note": "two\nlines"}}, "channels.crm.headers.X-Note: the value must be one line of ASCII"),
    ({"headers": {"Bad Name": "x"}}, "'Bad Name' cannot be sent as an extra header"),
    ({"headers": {"Content-Type": "text/plain"}}, "'Content-Type' cannot be sent as an extra header"),
])
def test_a_bad_url_or_header_is_a_config_error_naming_the_setting(monkeypatch, settings, says):
    from engine.channels.webhook_http import WebhookChannel
    from engine.errors import ConfigError
    from engine.model import ChannelConfig

    monkeypatch.setenv("WEBHOOK_SECRET", SECRET)
    config = ChannelConfig(name="crm", kind="webhook", transport="http_post",
                           settings={"url": "https://crm.example.com/hooks", "secret": "${WEBHOOK_SECRET}", **settings})
    with pytest.raises(ConfigError) as raised:
        WebhookChannel(config)
    assert says in str(raised.value)
