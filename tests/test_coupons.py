"""Coupon pools: each of the shop's codes goes to at most one message, across replicas and killed
processes; an empty pool skips (no_code) and never sends a message without its code; the code is
shown by engine customer, export --history and show-message, and exported for the shop; a pool
running low is a plan warning and a metric; bad pools and files are refused with file:line and the fix.

Real DuckDB / SQLite files and PostgreSQL ledgers, the file outbox or a loopback SMTP sink, and
reconcilers as real processes (started at once, or SIGKILLed at a failpoint). Bounded in time.
"""
from __future__ import annotations

import csv
import email
import io
import json
import os
import re
import signal
import subprocess
import sys
import urllib.request
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from click.testing import CliRunner

from conftest import copy_project, database_url, load_history, write
from engine import Reconciler, load_project
from engine.cli.main import main
from engine.clock import FixedClock
from engine.service.loop import Service
from engine.state.warehouse import Database
from servers import SmtpSink

UTC = timezone.utc
T0 = datetime(2025, 1, 6, 12, 0)
AS_OF = "2025-01-06T12:01:00Z"
CODE = re.compile(rb"SPRING-\d{4}")

CAMPAIGN = """
    name: notify
    trigger: {order_placed: {}}
    steps:
      - {id: mail, delay: 0m, freshness: 7d, channel: email, template: notify/mail.email.j2, discount_code: {pool: spring}}
"""
TEMPLATE = ('{% extends "layouts/email.j2" %}{% block title %}A present{% endblock %}'
            '{% block intro %}Your code: {{ discount_code }}{% endblock %}')


def customers(n):
    return [{"customer_id": i, "email": f"c{i}@example.com", "first_name": f"C{i}",
             "created_at": T0 - timedelta(days=100)} for i in range(1, n + 1)]


def orders(n):
    return [{"order_id": i, "customer_id": i, "created_at": T0, "status": "completed", "total": 5} for i in range(1, n + 1)]


def codes_csv(path: Path, codes: list[str], header: str = "Code,Value") -> Path:
    path.write_text(header + "\n" + "".join(f"{code},10%\n" for code in codes), encoding="utf-8")
    return path


def pool_codes(n: int, start: int = 1) -> list[str]:
    return [f"SPRING-{i:04d}" for i in range(start, start + n)]


def make_project(tmp_path, monkeypatch, backend: str, n: int, pools: str = "  spring: {low_at: 2}\n",
                 smtp_port: int | None = None, policies: str = "", smtp_settings: str = "    in_flight: 4\n") -> Path:
    root = Root(copy_project(tmp_path / "project"))
    for path in (root / "campaigns.d").glob("*.yaml"):
        path.unlink()
    write(root / "campaigns.d" / "notify.yaml", CAMPAIGN)
    write(root / "templates" / "notify" / "mail.email.j2", TEMPLATE)
    text = (root / "engine.yaml").read_text()
    text = text.replace("sources:", f"coupons:\n{pools}\n{policies}sources:", 1)
    if smtp_port is not None:
        text = text.replace("  email:\n    kind: email\n    transport: file\n    path: var/outbox\n",
                            f"  email:\n    kind: email\n    transport: smtp\n    host: 127.0.0.1\n    port: {smtp_port}\n"
                            + smtp_settings, 1)
    (root / "engine.yaml").write_text(text)
    url = database_url(backend, tmp_path)
    monkeypatch.setenv("ENGINE_WAREHOUSE_URL", url)
    root.url = url  # type: ignore[attr-defined]
    load_history(url, customers=customers(n), orders=orders(n))
    return root


class Root(type(Path())):
    """The project directory, with its database URL."""


def invoke(root, *args):
    return CliRunner().invoke(main, ["--project", str(root), *args])


def outbox_codes(root: Path) -> dict[str, bytes]:
    """message key -> the code in the email the outbox holds for it."""
    found = {}
    for path in (root / "var" / "outbox" / "email").glob("*.eml"):
        message = email.message_from_bytes(path.read_bytes())
        codes = set(CODE.findall(path.read_bytes()))
        assert len(codes) == 1, path
        found[message["X-Engine-Message-Key"]] = codes.pop().decode()
    return found


@pytest.fixture
def project(tmp_path, monkeypatch, backend):
    return make_project(tmp_path, monkeypatch, backend, n=5)


def test_each_code_goes_to_one_message_and_an_empty_pool_skips_with_no_code(project, tmp_path):
    imported = invoke(project, "codes", "import", "spring", str(codes_csv(tmp_path / "codes.csv", pool_codes(3))))
    assert imported.exit_code == 0, imported.output
    assert "3 code(s) imported into pool spring" in imported.output
    again = invoke(project, "codes", "import", "spring", str(codes_csv(tmp_path / "codes.csv", pool_codes(3))))
    assert "0 code(s) imported" in again.output and "3 it had already" in again.output  # an import runs again safely

    run = invoke(project, "run", "--once", "--as-of", AS_OF)
    assert run.exit_code == 0, run.output
    sent = outbox_codes(project)
    # 5 customers, 3 codes: three messages, each with its own code; two skipped, none sent without a code
    assert sorted(sent.values()) == pool_codes(3)
    r = Reconciler(load_project(project))
    try:
        rows = {key: (row["status"], row["reason"]) for key in (f"notify:mail:{i}:{i}" for i in range(1, 6))
                for row in [r.ledger.get(key)]}
        assert sorted(rows.values()) == [("sent", None)] * 3 + [("skipped", "no_code")] * 2
        assert {key for key, (status, _) in rows.items() if status == "sent"} == set(sent)
        assert r.ledger.codes_of(sorted(rows)) == {key: ("spring", code) for key, code in sent.items()}
    finally:
        r.close()
    # a second pass sends nothing more (no_code is final, like every skip)
    assert invoke(project, "run", "--once", "--as-of", "2025-01-06T12:05:00Z").exit_code == 0
    assert outbox_codes(project) == sent

    # shown by engine customer, export --history and show-message; exported for the shop
    key, code = sorted(sent.items())[0]
    customer_id = key.split(":")[2]
    shown = invoke(project, "customer", customer_id, "--format", "json")
    assert shown.exit_code == 0, shown.output
    assert [(m["discount_code"], m["coupon_pool"]) for m in json.loads(shown.output)["ledger"]] == [(code, "spring")]
    assert f"code: {code} (pool spring)" in invoke(project, "customer", customer_id).output
    history = list(csv.DictReader(io.StringIO(invoke(project, "export", "notify", "--history").output)))
    assert {row["message_key"]: row["discount_code"] for row in history if row["discount_code"]} == sent
    assert {row["reason"] for row in history if not row["discount_code"]} == {"no_code"}
    message = invoke(project, "show-message", key)
    assert f"# coupon code: {code} (pool spring)" in message.stderr and code in message.stdout
    exported = list(csv.DictReader(io.StringIO(invoke(project, "codes", "export", "spring", "--status", "claimed").output)))
    assert {row["code"]: (row["customer_id"], row["status"]) for row in exported} == {
        c: (k.split(":")[2], "sent") for k, c in sent.items()}
    assert invoke(project, "codes", "export", "spring", "--status", "available").output.strip() == \
        "code,status,reason,customer_id,campaign,step,message_key,claimed_at,source"


def test_a_low_pool_is_a_plan_warning_and_a_metric(project, tmp_path):
    invoke(project, "codes", "import", "spring", str(codes_csv(tmp_path / "codes.csv", pool_codes(4))))
    plan = invoke(project, "plan", "--as-of", AS_OF)
    assert plan.exit_code == 0, plan.output
    # 5 due, 4 codes: the plan says one would be skipped
    assert "coupon pool spring has 4 unused code(s) left and this plan sends 5 message(s) with its codes: " \
           "1 would be skipped (no_code); import more with engine codes import spring FILE.csv" in plan.stderr
    invoke(project, "codes", "import", "spring", str(codes_csv(tmp_path / "more.csv", pool_codes(3, start=5))))
    assert "Warning" not in invoke(project, "plan", "--as-of", AS_OF).stderr  # 7 codes, 5 needed, low_at 2: fine
    assert invoke(project, "run", "--once", "--as-of", AS_OF).exit_code == 0
    later = invoke(project, "plan", "--as-of", AS_OF)
    assert "coupon pool spring is running low: 2 unused code(s) left of 7 (low_at: 2)" in later.stderr
    assert "2 unused code(s) left" not in invoke(project, "codes", "status").output  # the table, not the warning
    assert re.search(r"spring\s+imported\s+7\s+5\s+2\s+2  LOW", invoke(project, "codes", "status").output)
    # the metric the service sets after each pass, on /metrics
    service = Service(project, interval=60, metrics_port=0, clock=FixedClock(datetime(2025, 1, 6, 12, 2, tzinfo=UTC)))
    try:
        service.start()
        assert service.run_pass() is not None
        with urllib.request.urlopen(f"http://127.0.0.1:{service.server.port}/metrics", timeout=10) as response:
            exposition = response.read().decode()
    finally:
        service.close()
    assert 'engine_coupon_codes_left{pool="spring"} 2.0' in exposition
    assert 'engine_coupon_pool_low{pool="spring"} 1.0' in exposition


def test_a_pool_read_from_a_warehouse_table(tmp_path, monkeypatch, backend):
    root = make_project(tmp_path, monkeypatch, backend, n=4, pools="  spring: {table: shop_codes, column: coupon}\n")
    sql(root.url, "CREATE TABLE shop_codes (coupon VARCHAR(32))",
        "INSERT INTO shop_codes VALUES ('SPRING-0001'), ('SPRING-0002'), ('SPRING-0003')")
    run = invoke(root, "run", "--once", "--as-of", AS_OF)
    assert run.exit_code == 0, run.output
    assert sorted(outbox_codes(root).values()) == pool_codes(3)  # 4 due, 3 codes
    # the shop adds a code, and a fifth customer orders: the new code goes out, no old one again
    load_history(root.url, customers=customers(5), orders=orders(5))
    sql(root.url, "INSERT INTO shop_codes VALUES ('SPRING-0004')")
    assert invoke(root, "run", "--once", "--as-of", "2025-01-06T12:03:00Z").exit_code == 0
    assert sorted(outbox_codes(root).values()) == pool_codes(4)
    # the table's codes are the shop's: engine codes import refuses the pool
    refused = invoke(root, "codes", "import", "spring", str(codes_csv(tmp_path / "c.csv", ["X-1"])))
    assert refused.exit_code == 1 and "reads its codes from the warehouse table shop_codes" in refused.output


def sql(url: str, *statements: str) -> None:
    db = Database(url)
    try:
        for statement in statements:
            db.execute(statement)
    finally:
        db.dispose()


# --- bad input ---------------------------------------------------------------------------------


def test_a_missing_or_duplicated_pool_table_fails_its_campaign_with_the_fix(tmp_path, monkeypatch):
    root = make_project(tmp_path, monkeypatch, "sqlite", n=2, pools="  spring: {table: shop_codes}\n")
    run = invoke(root, "run", "--once", "--as-of", AS_OF)
    assert run.exit_code == 1 and "Traceback" not in run.output
    assert "coupon pool spring: cannot read column code of table shop_codes" in run.output
    assert "create the table with the shop's codes, or fix table/column of coupons.spring in engine.yaml" in run.output
    assert "cannot read column code of table shop_codes" in invoke(root, "plan", "--as-of", AS_OF).stderr
    checked = invoke(root, "validate", "--check-warehouse")
    assert checked.exit_code == 1 and re.search(r"engine.yaml:\d+:\d+: error: coupon pool spring: cannot read", checked.output)
    sql(root.url, "CREATE TABLE shop_codes (code VARCHAR(32))", "INSERT INTO shop_codes VALUES ('A-1'), ('A-2'), ('A-1')")
    run = invoke(root, "run", "--once", "--as-of", AS_OF)
    assert run.exit_code == 1
    assert "table shop_codes has 1 code(s) more than once (e.g. A-1)" in run.output
    assert "remove the duplicates from the table" in run.output
    assert "has 1 code(s) more than once" in invoke(root, "validate", "--check-warehouse").output
    assert not (root / "var" / "outbox" / "email").exists() or not list((root / "var" / "outbox" / "email").iterdir())


@pytest.mark.parametrize("content, problem", [
    ("code\nA-1\n\nA-2\n,\n", "codes.csv:5: error: empty code (column code)\n    fix: fill in the code, or delete the line"),
    ("code\nA-1\nA-2\nA-1\n", "codes.csv:4: error: code A-1 is also on line 2: a code is handed out once\n"
                              "    fix: delete one of the two lines"),
    ("coupon;value\nA-1;5\n", "codes.csv:1: error: the header line has no column code (columns: coupon;value)\n"
                              "    fix: name the column that holds the codes with --column"),
])
def test_a_bad_codes_file_is_refused_whole_naming_the_line_and_the_fix(tmp_path, monkeypatch, content, problem):
    root = make_project(tmp_path, monkeypatch, "sqlite", n=1)
    path = tmp_path / "codes.csv"
    path.write_text(content, encoding="utf-8")
    result = invoke(root, "codes", "import", "spring", str(path))
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "nothing imported" in result.output and problem in result.output
    assert invoke(root, "codes", "export", "spring").output.count("\n") == 1  # the header only
    assert "no coupon pool named autumn" in invoke(root, "codes", "import", "autumn", str(path)).output


def test_a_step_naming_an_unknown_pool_is_refused_at_its_line(tmp_path, monkeypatch):
    root = make_project(tmp_path, monkeypatch, "sqlite", n=1)
    write(root / "campaigns.d" / "notify.yaml", CAMPAIGN.replace("{pool: spring}", "{pool: autumn, prefix: X-}"))
    result = invoke(root, "validate")
    assert result.exit_code == 1
    assert "notify.yaml:4:" in result.output and "coupon pool 'autumn' is not in engine.yaml (pools: spring)" in result.output
    assert "prefix is for generated codes" in result.output


# --- replicas and kills -------------------------------------------------------------------------


def _start(root, as_of: str, env: dict | None = None, *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", "from engine.cli.main import main; main()", "run", "--once", "--as-of", as_of,
                             *args],
                            cwd=root, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, **(env or {})})


def _sink_codes(smtp: SmtpSink) -> list[tuple[str, str]]:
    """(message key, code) of every message the sink received, duplicates kept."""
    found = []
    for message, raw in zip(smtp.messages, smtp.contents):
        codes = set(CODE.findall(raw))
        assert len(codes) == 1, "a message without its code, or with two"
        found.append((message["X-Engine-Message-Key"], codes.pop().decode()))
    return found


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_four_replicas_at_once_hand_out_each_code_once(tmp_path, monkeypatch, backend):
    """Four reconcilers started at once over one ledger, each planning a shard of the customers, so all
    four claim codes of the one pool at the same moment (DuckDB allows one writing process per file: a
    second one exits with a clear message, test_delivery.py): 160 due messages, 120 codes."""
    with SmtpSink() as smtp:
        root = make_project(tmp_path, monkeypatch, backend, n=160, smtp_port=smtp.port,
                            pools="  spring: {low_at: 0}\n")
        assert invoke(root, "codes", "import", "spring", str(codes_csv(tmp_path / "c.csv", pool_codes(120)))).exit_code == 0
        Reconciler(load_project(root)).close()  # the ledger's tables exist before the race
        procs = [_start(root, AS_OF, None, "--shard", f"{i}/4") for i in range(4)]
        outputs = [proc.communicate(timeout=300) for proc in procs]
        for proc, (out, err) in zip(procs, outputs):
            assert proc.returncode == 0, err
        delivered = _sink_codes(smtp)
        keys, codes = [k for k, _ in delivered], [c for _, c in delivered]
        print(f"\n4 replicas on {backend}: {len(delivered)} delivered, {len(set(codes))} distinct codes; "
              + " | ".join(out.strip().replace("\n", "; ") for out, _ in outputs))
        assert len(keys) == len(set(keys)) == 120 and sorted(codes) == pool_codes(120)
        # the shards hold 29 to 53 messages (by a stable hash): at least three replicas took codes of the pool
        assert sum(" sent" in out for out, _ in outputs) >= 3, "the replicas did not share the pool"
        db = Database(root.url)
        ledger = dict(db.fetch_all("SELECT status, count(*) FROM engine_ledger GROUP BY status"))
        claims = db.fetch_all("SELECT message_key, code FROM engine_coupon_claims WHERE pool = 'spring'")
        db.dispose()
        assert ledger == {"sent": 120, "skipped": 40}
        assert sorted(claims) == sorted(delivered)


@pytest.mark.parametrize("backend", ["duckdb", "sqlite", "postgres"])
def test_a_killed_process_never_hands_a_code_out_twice(tmp_path, monkeypatch, backend):
    """SIGKILL after the claim (codes claimed, nothing rendered), then after the 3rd send. The claims
    released by the recovery get their own codes back when claimed again; the messages in flight at
    the kill (unknown) keep theirs, burnt; every other message gets a code of its own."""
    n = 12
    with SmtpSink() as smtp:
        root = make_project(tmp_path, monkeypatch, backend, n=n, smtp_port=smtp.port,
                            pools="  spring: {low_at: 0}\n", policies="policies:\n  claim_timeout: 1m\n\n",
                            smtp_settings="    connections: 1\n    in_flight: 2\n")
        assert invoke(root, "codes", "import", "spring", str(codes_csv(tmp_path / "c.csv", pool_codes(n)))).exit_code == 0
        killed = _start(root, AS_OF, {"ENGINE_FAILPOINT": "claimed:1"})
        killed.communicate(timeout=120)
        assert killed.returncode == -signal.SIGKILL
        db = Database(root.url)
        claimed_first = dict(db.fetch_all("SELECT message_key, code FROM engine_coupon_claims"))
        db.dispose()
        assert len(claimed_first) == n and not smtp.messages  # claimed with their codes, nothing sent
        killed = _start(root, "2025-01-06T12:03:00Z", {"ENGINE_FAILPOINT": "sent:3"})  # after the claim timeout
        killed.communicate(timeout=120)
        assert killed.returncode == -signal.SIGKILL
        recovered = _start(root, "2025-01-06T12:06:00Z")
        out, err = recovered.communicate(timeout=120)
        assert recovered.returncode == 0, err
        delivered = _sink_codes(smtp)
        db = Database(root.url)
        ledger = dict(db.fetch_all("SELECT message_key, status FROM engine_ledger"))
        claims = dict(db.fetch_all("SELECT message_key, code FROM engine_coupon_claims"))
        db.dispose()
    print(f"\nkilled on {backend}: {len(delivered)} delivered; ledger {sorted(ledger.values())}")
    assert claims == claimed_first  # released claims got their own code back, no message a second one
    assert len({k for k, _ in delivered}) == len(delivered)  # at most once
    assert all(claims[key] == code for key, code in delivered)  # each message with the code claimed for it
    assert len(set(claims.values())) == n
    sent = {k for k, s in ledger.items() if s == "sent"}
    assert sent <= {k for k, _ in delivered} and len(sent) + list(ledger.values()).count("unknown") == n
    assert 1 <= list(ledger.values()).count("unknown") <= 2 and len(sent) >= n - 2  # only the group in flight
    # the export shows the burnt codes (their message unknown) with the message's status
    exported = list(csv.DictReader(io.StringIO(invoke(root, "codes", "export", "spring").output)))
    assert {row["code"]: row["status"] for row in exported} == {claims[k]: ledger[k] for k in ledger}
