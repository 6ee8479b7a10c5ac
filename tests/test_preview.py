"""``engine preview``: what one customer would receive for one step, by the pass's own plan and render stage,
with nothing claimed, recorded or sent; and the pull-request script that previews changed templates."""
from __future__ import annotations

import email
import email.policy
import hashlib
import json
import os
import re
import shutil
import sqlite3
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

import pytest
from click.testing import CliRunner

from conftest import REPO, copy_project
from engine.cli.main import main

T0 = "2025-01-10T00:00:00Z"  # the pass that fills the ledger (entries, sent messages)
T1 = "2025-01-12T12:00:00Z"  # the previews: noon in Berlin, no quiet hours
LEDGER_TABLES = ("engine_ledger", "engine_entries", "engine_coupon_claims", "engine_coupon_codes", "engine_tags",
                 "engine_unsubscribes", "engine_suppressions", "engine_gone_contacts")


def cli(root: Path, *args: str):
    return CliRunner().invoke(main, ["--project", str(root), *args])


@pytest.fixture(scope="module")
def shop(tmp_path_factory):
    """The demo project (200 customers) with its ledger in a SQLite file of its own, after one pass at T0."""
    root = copy_project(tmp_path_factory.mktemp("preview") / "project")
    config = root / "engine.yaml"
    config.write_text(re.sub(r"customers: \d+", "customers: 200", config.read_text()))
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("ENGINE_LEDGER_URL", f"sqlite:///{root / 'var' / 'ledger.sqlite'}")
        patch.delenv("ENGINE_WAREHOUSE_URL", raising=False)
        result = cli(root, "run", "--once", "--as-of", T0)
        assert result.exit_code == 0, result.output
        yield root


def plan_rows(root: Path, at: str, *campaigns: str) -> list[dict]:
    options = [o for c in campaigns for o in ("--campaign", c)]
    result = cli(root, "plan", "--format", "jsonl", "--as-of", at, *options)
    assert result.exit_code == 0, result.output
    return [json.loads(line) for line in result.stdout.splitlines()]


def customer_row(root: Path, customer_id: str) -> dict:
    import duckdb

    with duckdb.connect(str(root / "var" / "demo-shop.duckdb"), read_only=True) as db:
        cursor = db.execute("SELECT * FROM customers WHERE customer_id = ?", [int(customer_id)])
        names = [d[0] for d in cursor.description]
        return dict(zip(names, cursor.fetchone()))


def state(root: Path) -> dict:
    """What a write would change: the ledger tables' row counts, both files' bytes and modification times."""
    ledger = root / "var" / "ledger.sqlite"
    with sqlite3.connect(f"file:{ledger}?mode=ro", uri=True) as db:
        counts = {t: db.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in LEDGER_TABLES}
    files = {p.name: (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
             for p in (ledger, root / "var" / "demo-shop.duckdb")}
    return {"counts": counts, "files": files, "outbox": sorted(str(p) for p in (root / "var" / "outbox").rglob("*"))}


def test_email_preview_is_the_message_the_pass_sends(shop, tmp_path):
    row = next(r for r in plan_rows(shop, T1) if r["kind"] == "email" and r["action"] == "send")
    out = tmp_path / "out"
    result = cli(shop, "preview", row["campaign"], row["step"], row["customer_id"], "--as-of", T1, "--out", str(out))
    assert result.exit_code == 0, result.output
    assert result.stderr == ""  # due at T1: nothing to say
    assert sorted(Path(p).name for p in result.stdout.split()) == ["message.eml", "message.html", "message.txt"]
    parsed = email.message_from_bytes((out / "message.eml").read_bytes(), policy=email.policy.default)
    assert parsed["To"] == customer_row(shop, row["customer_id"])["email"]
    assert parsed["X-Engine-Message-Key"] == row["message_key"]
    # the parts as rendered; the MIME body ends each in a line break
    assert parsed.get_body(("plain",)).get_content().rstrip("\n") == (out / "message.txt").read_text().rstrip("\n")
    assert parsed.get_body(("html",)).get_content().rstrip("\n") == (out / "message.html").read_text().rstrip("\n")
    # the summary: kind, the address masked, subject, text part
    summary = cli(shop, "preview", row["campaign"], row["step"], row["customer_id"], "--as-of", T1)
    assert summary.exit_code == 0, summary.output
    assert "kind: email" in summary.stdout and "to: <email>" in summary.stdout
    assert f"subject: {parsed['Subject']}" in summary.stdout
    assert (out / "message.txt").read_text().strip() in summary.stdout
    assert customer_row(shop, row["customer_id"])["email"] not in summary.stdout
    # the pass at the same instant, on a copy, writes the same bytes to its outbox
    copy = tmp_path / "copy"
    shutil.copytree(shop, copy)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("ENGINE_LEDGER_URL", f"sqlite:///{copy / 'var' / 'ledger.sqlite'}")
        ran = cli(copy, "run", "--once", "--as-of", T1, "--campaign", row["campaign"])
    assert ran.exit_code == 0, ran.output
    sent = copy / "var" / "outbox" / "email" / (re.sub(r"[^A-Za-z0-9_.-]+", "_", row["message_key"]) + ".eml")
    assert sent.read_bytes() == (out / "message.eml").read_bytes()


def test_letter_preview_is_a_pdf_with_the_address(shop, tmp_path):
    # re-engage's letter step, 21 days after the at-risk entries the pass at T0 recorded: not due yet at T1
    row = next(r for r in plan_rows(shop, "2025-02-01T00:00:00Z", "re-engage") if r["step"] == "letter")
    result = cli(shop, "preview", "re-engage", "letter", row["customer_id"], "--as-of", T1, "--out", str(tmp_path))
    assert result.exit_code == 0, result.output
    assert result.stderr.strip() == f"not due at {T1}: due at {row['due_at']}; rendered as if due"
    assert [Path(p).name for p in result.stdout.split()] == ["message.pdf"]
    text = subprocess.run(["pdftotext", str(tmp_path / "message.pdf"), "-"], capture_output=True, text=True,
                          check=True).stdout
    customer = customer_row(shop, row["customer_id"])
    for line in (f"{customer['first_name']} {customer['last_name']}", customer["street"],
                 f"{customer['postal_code']} {customer['city']}"):
        assert line in text


def test_json_kind_preview_is_the_transport_document(shop, tmp_path):
    import duckdb

    with duckdb.connect(str(shop / "var" / "demo-shop.duckdb"), read_only=True) as db:
        [customer_id, phone, name] = db.execute(
            "SELECT customer_id, phone, first_name FROM customers WHERE phone IS NOT NULL AND birthday IS NOT NULL "
            "ORDER BY customer_id LIMIT 1").fetchone()
    result = cli(shop, "preview", "birthday", "greeting", str(customer_id), "--as-of", T1, "--variant", "sms",
                 "--out", str(tmp_path))
    assert result.exit_code == 0, result.output
    document = json.loads((tmp_path / "message.json").read_text())
    assert document["key"].startswith(f"birthday:greeting:{customer_id}:")
    assert document["to"] == phone.replace(" ", "") and name in document["text"]
    assert "PREVIEW-CODE" in document["text"] or "PREVIEW-CODE" in (tmp_path / "message.json").read_text()


def test_a_coupon_step_shows_the_placeholder_and_claims_nothing(shop):
    import duckdb

    with duckdb.connect(str(shop / "var" / "demo-shop.duckdb"), read_only=True) as db:
        [customer_id] = db.execute("SELECT min(customer_id) FROM customers WHERE email IS NOT NULL "
                                   "AND birthday IS NOT NULL").fetchone()
    before = state(shop)["counts"]
    result = cli(shop, "preview", "birthday", "greeting", str(customer_id), "--variant", "email", "--as-of", T1)
    assert result.exit_code == 0, result.output
    assert "Your personal code: PREVIEW-CODE" in result.stdout
    assert "rendered as if due" in result.stderr
    assert state(shop)["counts"] == before  # no coupon claim, no ledger row


def test_preview_writes_nothing(shop, tmp_path):
    before = state(shop)
    with sqlite3.connect(f"file:{shop / 'var' / 'ledger.sqlite'}?mode=ro", uri=True) as db:  # the pass at T0 sent it
        campaign, step, customer_id = db.execute("SELECT campaign, step, customer_id FROM engine_ledger "
                                                 "WHERE status = 'sent' ORDER BY message_key LIMIT 1").fetchone()
    sent = {"campaign": campaign, "step": step, "customer_id": customer_id}
    letter = next(r for r in plan_rows(shop, "2025-02-01T00:00:00Z", "re-engage") if r["step"] == "letter")
    due = next(r for r in plan_rows(shop, T1) if r["kind"] == "email")
    runs = ([sent["campaign"], sent["step"], sent["customer_id"], "--as-of", T1],
            ["re-engage", "letter", letter["customer_id"], "--as-of", T1, "--out", str(tmp_path / "l")],
            [due["campaign"], due["step"], due["customer_id"], "--as-of", T1, "--out", str(tmp_path / "e")])
    # both databases opened read-only: any write would fail the command
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("ENGINE_LEDGER_URL", f"sqlite:///file:{shop / 'var' / 'ledger.sqlite'}?mode=ro&uri=true")
        patch.setenv("ENGINE_WAREHOUSE_URL", f"duckdb:///{shop / 'var' / 'demo-shop.duckdb'}?access_mode=read_only")
        results = [cli(shop, "preview", *args) for args in runs]
        refused = cli(shop, "run", "--once", "--as-of", T1)  # the same settings refuse a pass: the proof can fail
    assert [r.exit_code for r in results] == [0, 0, 0], [r.output for r in results]
    assert results[0].stderr.strip().endswith("already in the ledger (sent); rendered as if due")
    assert refused.exit_code == 1 and "not writable" in refused.stderr
    assert state(shop) == before


@pytest.fixture(scope="module")
def reconciler(shop):
    from engine import Reconciler, load_project

    reconciler = Reconciler(load_project(shop), writes=False)
    yield reconciler
    reconciler.close()


@pytest.mark.parametrize("args, message", [
    (["no-such", "x", "1"], "no campaign named 'no-such' in campaigns.d/"),
    (["re-engage", "no-such", "1"], "campaign re-engage has no step 'no-such' (its steps: miss-you"),
    (["re-engage", "letter", "424242"], "no customer with id '424242'"),
    (["birthday", "greeting", "1", "fax"], "has no variant 'fax'"),
])
def test_bad_input_is_one_message(reconciler, args, message):
    from engine.errors import EngineError
    from engine.tools.preview import preview

    with pytest.raises(EngineError, match=re.escape(message)):
        preview(reconciler, *args[:3], datetime(2025, 1, 12, 12, tzinfo=timezone.utc), *args[3:])


def test_bad_input_on_the_command_line(shop):
    result = cli(shop, "preview", "re-engage", "no-such", "1", "--as-of", T1)
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert result.stderr.strip().splitlines() == [
        "Error: campaign re-engage has no step 'no-such' (its steps: miss-you, new-arrivals, last-call, letter)"]


def test_a_customer_without_an_address_for_the_kind(reconciler):
    from engine.tools.preview import PreviewError, preview

    [(customer_id,)] = reconciler.warehouse.fetch_all(
        "SELECT min(customer_id) FROM customers WHERE phone IS NULL AND birthday IS NOT NULL")
    with pytest.raises(PreviewError, match=f"customer {customer_id} has no phone for the sms channel sms of step greeting"):
        preview(reconciler, "birthday", "greeting", str(customer_id), datetime(2025, 1, 12, 12, tzinfo=timezone.utc), "sms")


def test_pull_request_script_previews_each_changed_template(shop, tmp_path):
    repo = tmp_path / "repo"
    shutil.copytree(shop, repo, ignore=shutil.ignore_patterns("outbox"))
    git = ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@example.com"]
    subprocess.run([*git, "init", "-q", "-b", "main"], check=True)
    subprocess.run([*git, "add", "engine.yaml", "campaigns.d", "templates"], check=True)
    subprocess.run([*git, "commit", "-qm", "base"], check=True)
    subprocess.run([*git, "checkout", "-qb", "change"], check=True)
    template = repo / "templates" / "second-order" / "nudge.email.j2"
    template.write_text(template.read_text().replace("Thank you for your first order", "Still thinking it over?"))
    (repo / "templates" / "unused.email.j2").write_text("{% extends 'layouts/email.j2' %}\n")
    subprocess.run([*git, "add", "templates"], check=True)
    subprocess.run([*git, "commit", "-qm", "change"], check=True)
    env = {**os.environ, "PYTHONPATH": str(REPO), "CHROMIUM": "/usr/bin/chromium",
           "ENGINE_LEDGER_URL": f"sqlite:///{repo / 'var' / 'ledger.sqlite'}"}
    out = tmp_path / "previews"
    result = subprocess.run([sys.executable, str(REPO / "deploy" / "ci" / "preview_templates.py"), "main", str(out),
                             "--as-of", T1], cwd=repo, env=env, capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stderr
    [folder] = (out / "second-order" / "nudge.email.j2").iterdir()
    assert folder.name == "second-order.nudge.default"
    assert "Still thinking it over?" in (folder / "message.eml").read_text()
    assert (folder / "message.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    notes = (out / "README.txt").read_text()
    assert "unused.email.j2: no step uses it directly" in notes
    assert "second-order/nudge.email.j2: second-order/nudge variant default, customer " in notes
