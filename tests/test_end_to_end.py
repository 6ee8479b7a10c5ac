"""End to end: the demo shop, the shipped campaigns, a real SMTP server and a real
SMS provider on loopback. What arrives must be exactly the plan, and a second
pass must send nothing.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import timedelta

import pytest
import yaml

from conftest import as_real_shop, recorded_outcomes, copy_project, database_url
from engine import Reconciler, load_project
from engine.clock import parse_instant
from engine.tools.demo import build_demo
from engine.state.ledger import ledger_table
from servers import SmsProvider, SmtpSink, free_port

ANCHOR = "2025-01-10T00:00:00Z"
NOW = parse_instant(ANCHOR)


def configure_channels(root, smtp_port: int, sms_url: str) -> None:
    text = (root / "engine.yaml").read_text()
    start = text.index("channels:")
    text = text[:start] + f"""channels:
  email:
    kind: email
    transport: smtp
    host: 127.0.0.1
    port: {smtp_port}
    from: "Bean & Brew <hello@beanandbrew.example>"
  sms:
    kind: sms
    transport: http
    url: {sms_url}
    token: ${{SMS_TOKEN}}
    from: BeanBrew
  push:
    kind: push
    transport: file
    path: var/outbox
  letter:
    kind: letter
    transport: drop_folder
    path: var/outbox/letter
"""
    (root / "engine.yaml").write_text(text)


@pytest.fixture
def demo_project(tmp_path, backend, monkeypatch):
    root = copy_project(tmp_path / "project")
    url = database_url(backend, tmp_path)
    build_demo(url, seed=42, customers=2000, anchor=ANCHOR)
    monkeypatch.setenv("ENGINE_WAREHOUSE_URL", url)
    monkeypatch.setenv("SMS_TOKEN", "secret-token")
    return root


def planned_keys(reconciler: Reconciler, now) -> dict[str, str]:
    """message key -> channel of every message the plan says to send."""
    return {m.key: m.channel for batch in reconciler.due(now) for m in batch if m.action == "send"}


def ledger_statuses(reconciler: Reconciler) -> dict[str, int]:
    import sqlalchemy as sa

    with reconciler.ledger.db.engine.connect() as conn:
        rows = conn.execute(sa.select(ledger_table.c.status, sa.func.count()).group_by(ledger_table.c.status))
        return dict(rows.all())


def test_messages_arrive_exactly_as_planned_and_never_twice(demo_project):
    with SmtpSink() as smtp, SmsProvider() as sms:
        configure_channels(demo_project, smtp.port, sms.url)
        reconciler = Reconciler(load_project(demo_project))
        try:
            plan_now = planned_keys(reconciler, NOW)
            assert len(plan_now) > 100  # the demo has work at its anchor
            report = reconciler.run_once(NOW)
            assert sorted(smtp.keys()) == sorted(k for k, ch in plan_now.items() if ch == "email")
            assert report.total("sent") == len(plan_now) and not report.errors

            # a second pass at the same instant sends nothing at all
            again = reconciler.run_once(NOW)
            assert recorded_outcomes(again) == 0  # deferrals (quiet hours) are not outcomes
            assert len(smtp.messages) == len([k for k, ch in plan_now.items() if ch == "email"])

            # two weeks later the SMS step of the re-engage series is due
            later = NOW + timedelta(days=14)
            plan_later = planned_keys(reconciler, later)
            sms_planned = sorted(k for k, ch in plan_later.items() if ch == "sms")
            assert sms_planned
            reconciler.run_once(later)
            assert sorted(r["body"]["reference"] for r in sms.requests) == sms_planned
            assert {r["authorization"] for r in sms.requests} == {"Bearer secret-token"}
            assert ledger_statuses(reconciler).get("claimed", 0) == 0
        finally:
            reconciler.close()


def test_the_email_as_sent_carries_the_cart_items_and_a_stable_message_id(demo_project):
    with SmtpSink() as smtp, SmsProvider() as sms:
        configure_channels(demo_project, smtp.port, sms.url)
        reconciler = Reconciler(load_project(demo_project))
        try:
            reconciler.run_once(NOW, [reconciler.project.campaign("abandoned-cart")])
        finally:
            reconciler.close()
    assert smtp.messages
    for message in smtp.messages:
        assert message["Subject"] == "You left something in your cart"
        assert message["Message-ID"].endswith("@beanandbrew.example>")
        text = message.get_body(preferencelist=("plain",)).get_content()
        assert " x " in text and "EUR" in text  # at least one cart line
        html = message.get_body(preferencelist=("html",)).get_content()
        assert "<img src=" in html


def test_refused_recipients_are_recorded_as_failed_and_others_still_sent(demo_project):
    with SmtpSink() as smtp, SmsProvider() as sms:
        configure_channels(demo_project, smtp.port, sms.url)
        reconciler = Reconciler(load_project(demo_project))
        try:
            plan = [m for batch in reconciler.due(NOW, [reconciler.project.campaign("second-order")])
                    for m in batch if m.action == "send"]
            victim = plan[0].customer["email"]
            smtp.refuse[victim] = "550 5.1.1 mailbox unavailable"
            report = reconciler.run_once(NOW, [reconciler.project.campaign("second-order")])
            assert report.counts[("second-order", "nudge", "failed:permanent")] == 1
            assert report.counts[("second-order", "nudge", "sent")] == len(plan) - 1
            row = reconciler.ledger.get(plan[0].key)
            assert row["status"] == "failed" and "550" in row["detail"]
        finally:
            reconciler.close()


def test_unreachable_smtp_server_claims_nothing_and_says_so(demo_project):
    configure_channels(demo_project, free_port(), "http://127.0.0.1:9/unused")
    reconciler = Reconciler(load_project(demo_project))
    try:
        report = reconciler.run_once(NOW, [reconciler.project.campaign("second-order")])
        assert report.errors and "cannot connect to SMTP server 127.0.0.1" in report.errors[0]
        assert report.total("sent") == 0
        assert ledger_statuses(reconciler).get("claimed", 0) == 0
        # the messages are still due at the next pass
        assert planned_keys(reconciler, NOW)
    finally:
        reconciler.close()


def _engine(*args, cwd, env=None):
    return subprocess.run([sys.executable, "-c", "from engine.cli.main import main; main()", *args], cwd=cwd,
                          capture_output=True, text=True, env={**os.environ, **(env or {})}, timeout=120)


@pytest.mark.parametrize("backend", ["duckdb"])
def test_cli_plan_jsonl_contract_and_run(demo_project, backend):
    result = _engine("plan", "--as-of", ANCHOR, "--format", "jsonl", cwd=demo_project)
    assert result.returncode == 0, result.stderr
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert rows
    for row in rows:
        assert {"campaign", "step", "customer_id", "trigger_key", "channel", "kind", "due_at"} <= row.keys()
        assert row["due_at"].endswith("Z")
        assert row["kind"] == yaml.safe_load((demo_project / "engine.yaml").read_text())["channels"][row["channel"]]["kind"]
    run = _engine("run", "--once", "--as-of", ANCHOR, cwd=demo_project)
    assert run.returncode == 0, run.stderr
    assert "sent" in run.stdout
    again = _engine("plan", "--as-of", ANCHOR, "--format", "jsonl", cwd=demo_project)
    assert again.returncode == 0 and again.stdout == ""
    sent = list((demo_project / "var" / "outbox" / "email").glob("*.eml"))
    assert len(sent) == sum(1 for r in rows if r["channel"] == "email")


def test_cli_reports_a_missing_warehouse_without_a_traceback(tmp_path):
    root = as_real_shop(copy_project(tmp_path))
    result = _engine("plan", cwd=root, env={"ENGINE_WAREHOUSE_URL": f"duckdb:///{tmp_path}/missing.duckdb"})
    assert result.returncode == 1
    assert "does not exist" in result.stderr and "Traceback" not in result.stderr


def test_cli_names_an_unset_secret(tmp_path):
    root = copy_project(tmp_path)
    configure_channels(root, 25, "http://127.0.0.1:9/x")
    env = {k: v for k, v in os.environ.items() if k != "SMS_TOKEN"}
    result = subprocess.run([sys.executable, "-c", "from engine.cli.main import main; main()", "run", "--once",
                             "--as-of", "2025-01-24T00:00:00Z", "--campaign", "re-engage"],
                            cwd=root, capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 1
    assert "SMS_TOKEN" in result.stderr and "Traceback" not in result.stderr
    # nothing was claimed: the pass stopped before touching the ledger
    import duckdb

    with duckdb.connect(str(root / "var" / "demo-shop.duckdb"), read_only=True) as conn:
        assert conn.execute("SELECT count(*) FROM engine_ledger").fetchone()[0] == 0
