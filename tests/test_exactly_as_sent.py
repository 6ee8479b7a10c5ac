"""Exactly as sent (R-M5): the ledger keeps the bytes each transport handed to its provider, every
attempt hands over those same bytes, and ``engine show-message`` gives them back byte for byte.

Real components: the demo shop on SQLite, the shipped campaigns, an SMTP server and an SMS provider on
loopback recording the bytes that arrived. Also: the fast writer of an email's bytes is the standard
library's email package, byte for byte, for every shape of message (hypothesis).
"""
from __future__ import annotations

import email
import email.policy
import json
import os
import subprocess
import sys
from datetime import timedelta
from email.utils import parsedate_to_datetime

from hypothesis import given, settings, strategies as st

from conftest import copy_project
from engine import Reconciler, load_project
from engine.channels import OutgoingMessage
from engine.clock import parse_instant
from engine.run.dispatch import deserialize
from engine.state.ledger import ledger_table
from engine.tools.demo import build_demo
from servers import SmsProvider, SmtpSink
from test_end_to_end import configure_channels

ANCHOR = "2025-01-10T00:00:00Z"
NOW = parse_instant(ANCHOR)


def _demo(tmp_path, monkeypatch):
    root = copy_project(tmp_path / "project")
    url = f"sqlite:///{tmp_path / 'shop.db'}"
    build_demo(url, seed=42, customers=400, anchor=ANCHOR)
    monkeypatch.setenv("ENGINE_WAREHOUSE_URL", url)
    monkeypatch.setenv("SMS_TOKEN", "secret-token")
    return root, url


def _ledger_rows(reconciler: Reconciler) -> list[dict]:
    import sqlalchemy as sa

    with reconciler.ledger.db.engine.connect() as conn:
        return [dict(row._mapping) for row in conn.execute(sa.select(ledger_table))]


def _show(root, key, *args, env):
    return subprocess.run([sys.executable, "-m", "engine.cli.main", "show-message", key, *args], cwd=root,
                          capture_output=True, timeout=120, env=env)


def test_what_the_providers_received_is_what_the_ledger_keeps_and_show_message_prints(tmp_path, monkeypatch):
    root, url = _demo(tmp_path, monkeypatch)
    with SmtpSink() as smtp, SmsProvider() as sms:
        configure_channels(root, smtp.port, sms.url)
        reconciler = Reconciler(load_project(root))
        try:
            reconciler.run_once(NOW)
            reconciler.run_once(NOW + timedelta(days=14))  # the re-engage series' SMS step
            stored = {row["message_key"]: deserialize(row["message_key"], row["content"])
                      for row in _ledger_rows(reconciler) if row["content"]}
        finally:
            reconciler.close()
    assert smtp.contents and sms.requests
    received = {email.message_from_bytes(raw)["X-Engine-Message-Key"]: raw for raw in smtp.contents}
    received.update({r["body"]["reference"]: r["raw"] for r in sms.requests})
    assert set(received) == set(stored)
    for key, raw in received.items():
        assert stored[key].document == raw, key  # byte for byte what crossed the wire

    # every email carries the headers a mail client expects; Date is the instant of its pass
    for raw in smtp.contents:
        message = email.message_from_bytes(raw, policy=email.policy.default)
        for header in ("Date", "Message-ID", "MIME-Version", "From", "To", "Subject"):
            assert message[header], header
        assert parsedate_to_datetime(message["Date"]) in (NOW, NOW + timedelta(days=14))

    # show-message prints exactly those bytes, the same at every call; --out writes them to a file
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    mail_key = sorted(k for k in received if stored[k].kind == "email")[0]
    sms_key = sorted(k for k in received if stored[k].kind == "sms")[0]
    for key in (mail_key, sms_key):
        first, second = _show(root, key, env=env), _show(root, key, env=env)
        assert first.returncode == 0, first.stderr
        assert first.stdout == second.stdout == received[key]
        assert key.encode() in first.stderr  # the ledger history goes to standard error
    out = tmp_path / "message.eml"
    assert _show(root, mail_key, "--out", str(out), env=env).returncode == 0
    assert out.read_bytes() == received[mail_key]


def test_a_retried_message_hands_over_the_same_bytes(tmp_path, monkeypatch):
    root, url = _demo(tmp_path, monkeypatch)
    with SmtpSink() as smtp, SmsProvider() as sms:
        configure_channels(root, smtp.port, sms.url)
        reconciler = Reconciler(load_project(root))
        try:
            plan = [m for batch in reconciler.due(NOW) for m in batch if m.action == "send" and m.channel == "email"]
            target = plan[0].customer["email"]
            smtp.script[target] = ["451 4.3.0 try again later"]
            reconciler.run_once(NOW)
            [row] = [r for r in _ledger_rows(reconciler) if r["message_key"] == plan[0].key]
            assert (row["status"], row["reason"]) == ("failed", "transient")
            kept = deserialize(row["message_key"], row["content"]).document
            reconciler.run_once(NOW + timedelta(hours=2))  # past the backoff, inside the freshness
            [row] = [r for r in _ledger_rows(reconciler) if r["message_key"] == plan[0].key]
            assert row["status"] == "sent"
        finally:
            reconciler.close()
    [arrived] = [raw for raw in smtp.contents if email.message_from_bytes(raw)["X-Engine-Message-Key"] == plan[0].key]
    assert arrived == kept


_text = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00\r"), max_size=300)
_lines = st.lists(st.one_of(_text, st.text("ab .", min_size=990, max_size=1010)), max_size=5).map("\n".join)


@settings(max_examples=200, deadline=None)
@given(subject=_text, text=_lines, html=st.one_of(st.none(), _lines), to=st.sampled_from(["a@example.com", "Zoë <z@example.com>"]))
def test_the_fast_writer_is_the_standard_librarys_email_package_byte_for_byte(subject, text, html, to):
    subject = " ".join(subject.split())  # as the renderer makes every subject: one line
    parts = {"subject": subject, "text": text, **({"html": html} if html else {})}
    message = OutgoingMessage(key="c:s:1:1", kind="email", to=to, sender="Shop <shop@example.com>", parts=parts,
                              headers={"Date": "Fri, 10 Jan 2025 00:00:00 +0000",
                                       "List-Unsubscribe": "<https://shop.example.com/u?c=1&sig=abc>"})
    for linesep in ("\n", "\r\n"):
        reference = message.to_email()
        assert message.to_bytes(linesep) == reference.as_bytes(policy=reference.policy.clone(linesep=linesep))


def test_a_body_that_holds_the_mime_boundary_keeps_both_parts_whole():
    probe = OutgoingMessage(key="c:s:1:1", kind="email", to="a@example.com", sender="shop@example.com",
                            parts={"subject": "s", "text": "t", "html": "<p>h</p>"})
    boundary = probe.boundary()
    text, html = f"before\n--{boundary}\nafter", f"<p>--{boundary}--</p>"
    message = OutgoingMessage(key="c:s:1:1", kind="email", to="a@example.com", sender="shop@example.com",
                              parts={"subject": "s", "text": text, "html": html})
    parsed = email.message_from_bytes(message.to_bytes("\r\n"), policy=email.policy.default)
    plain, rich = parsed.iter_parts()
    assert parsed.get_boundary() != boundary
    assert (plain.get_content().replace("\r\n", "\n").rstrip("\n"), rich.get_content().rstrip("\r\n")) == (text, html)
