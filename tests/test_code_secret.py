"""The code secret: no forged unsubscribes outside the demo, hostile ids refused, key rotation.

Outside a demo project a missing, default or weak secret stops ``engine
validate`` (exit 1, at engine.yaml's setting, with the fix), ``engine run
--once`` and ``engine run --interval`` before anything is claimed. The
service's /unsubscribe is driven over real HTTP on loopback against a real
DuckDB shop: malformed links are 400, links no key signed are 403, ids that
are no customer of the shop are 404, and nothing is stored for any of them.
"""
from __future__ import annotations

import email
import email.policy
import os
import re
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import sqlalchemy as sa
from click.testing import CliRunner

from conftest import as_real_shop, copy_project
from engine import unsubscribe
from engine.cli.main import main
from engine.clock import FixedClock, parse_instant
from engine.spec.code_secret import DEMO_SECRET, MIN_LENGTH, weakness
from engine.spec.config import database_url, load_config
from engine.service.loop import Service
from servers import free_port

ENGINE = [sys.executable, "-c", "from engine.cli.main import main; main()"]
ANCHOR = "2025-01-10T00:00:00Z"
NEW = "0f3c9a7e51d2b8463a9d0c7e5f1b2a84"
OLD = "9b1e4d7a2c6f0835e7a9b3d1c5f80246"
UNKNOWN = "5a8f2c0e9d7b1436c2e8a0f9d3b75e1c"
#: the shipped engine.yaml's fallback is the demo's secret
SHIPPED_FALLBACK = DEMO_SECRET


def small_demo(root: Path, customers: int = 60) -> Path:
    copy_project(root)
    path = root / "engine.yaml"
    path.write_text(re.sub(r"customers: \d+", f"customers: {customers}", path.read_text()))
    return root


def without_demo(root: Path) -> Path:
    """The project as a real shop: no demo: section (its warehouse is the file the demo built)."""
    return as_real_shop(root)


def build_shop(root: Path) -> None:
    """Build the demo shop (while engine.yaml still has its demo: section)."""
    result = subprocess.run(ENGINE + ["demo"], cwd=root, capture_output=True, text=True, timeout=180,
                            env={k: v for k, v in os.environ.items() if k != "ENGINE_CODE_SECRET"})
    assert result.returncode == 0, result.stderr


def validate(root: Path, secret: str | None, previous: str | None = None):
    env = {"ENGINE_CODE_SECRET": secret, "ENGINE_CODE_SECRETS_PREVIOUS": previous}
    return CliRunner().invoke(main, ["--project", str(root), "validate"], env=env)


@pytest.mark.parametrize("secret, problem", [
    (None, "ENGINE_CODE_SECRET is not set, so the code secret is the default written in engine.yaml"),
    ("", "ENGINE_CODE_SECRET is not set"),
    ("change-me", "is a known default"),
    ("demo-secret-change-me", "is a known default"),
    ("short-but-random-8e1f", f"has 21 characters; at least {MIN_LENGTH} are needed"),
    ("a" * 40, "uses only 1 different characters"),
])
def test_validate_refuses_a_missing_or_known_secret_outside_the_demo(tmp_path, secret, problem):
    root = without_demo(copy_project(tmp_path))
    line = next(n for n, text in enumerate((root / "engine.yaml").read_text().splitlines(), 1) if "code_secret:" in text)

    result = validate(root, secret)

    assert result.exit_code == 1, result.output
    assert f"engine.yaml:{line}:3: error: " in result.output and problem in result.output
    assert "(at defaults.code_secret)" in result.output
    assert "fix: set ENGINE_CODE_SECRET to a random string of at least 32 characters" in result.output
    assert "Traceback" not in result.output


def test_validate_names_the_variable_a_project_reads_and_accepts_a_good_secret(tmp_path):
    root = without_demo(copy_project(tmp_path))
    path = root / "engine.yaml"
    path.write_text(path.read_text().replace("code_secret: ${ENGINE_CODE_SECRET:-demo-secret-change-me}",
                                             "code_secret: ${SHOP_CODE_SECRET}"))
    missing = CliRunner().invoke(main, ["--project", str(root), "validate"], env={"SHOP_CODE_SECRET": None})
    assert missing.exit_code == 1
    assert "the code secret reads SHOP_CODE_SECRET, which is not set" in missing.output
    assert "fix: set SHOP_CODE_SECRET to a random string" in missing.output
    good = CliRunner().invoke(main, ["--project", str(root), "validate"], env={"SHOP_CODE_SECRET": NEW})
    assert good.exit_code == 0, good.output
    # validating campaign files alone (the pre-commit hook) does not need the secret
    files = CliRunner().invoke(main, ["--project", str(root), "validate", str(root / "campaigns.d" / "birthday.yaml")],
                               env={"SHOP_CODE_SECRET": None})
    assert files.exit_code == 0, files.output


def test_a_known_previous_secret_is_refused_too(tmp_path):
    root = without_demo(copy_project(tmp_path))
    result = validate(root, NEW, previous=f"{OLD},change-me")
    assert result.exit_code == 1
    assert "previous code secret 2 (of ENGINE_CODE_SECRETS_PREVIOUS) is a known default" in result.output
    assert "fix: remove it from ENGINE_CODE_SECRETS_PREVIOUS" in result.output
    assert validate(root, NEW, previous=f" {OLD} , ").exit_code == 0


def test_the_demo_validates_without_a_secret_and_so_does_demo_true(tmp_path):
    root = copy_project(tmp_path / "shipped")
    assert validate(root, None).exit_code == 0
    other = without_demo(copy_project(tmp_path / "marked"))
    path = other / "engine.yaml"
    path.write_text(path.read_text().replace("defaults:", "demo: true\n\ndefaults:", 1))
    assert validate(other, None).exit_code == 0
    assert validate(other, "change-me").exit_code == 0


def test_weakness_rules():
    assert weakness(NEW) is None and weakness("x" * 31 + "y") is not None
    assert weakness("CHANGE-ME-please-0123456789abcdefghij") == "is a known default that anyone can read"
    assert weakness("") == "is empty"


def run_engine(root: Path, *args: str, secret: str | None = None, timeout: float = 180) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("ENGINE_CODE_SECRET", "ENGINE_CODE_SECRETS_PREVIOUS")}
    if secret is not None:
        env["ENGINE_CODE_SECRET"] = secret
    return subprocess.run(ENGINE + list(args), cwd=root, capture_output=True, text=True, timeout=timeout, env=env)


def ledger_rows(root: Path) -> int:
    config, _ = load_config(root)
    engine = sa.create_engine(database_url(config))
    try:
        with engine.connect() as conn:
            if not sa.inspect(conn).has_table("engine_ledger"):
                return 0
            return conn.execute(sa.text("SELECT count(*) FROM engine_ledger")).scalar()
    finally:
        engine.dispose()


def test_run_and_the_service_refuse_to_start_without_a_usable_secret(tmp_path):
    root = small_demo(tmp_path)
    build_shop(root)
    without_demo(root)

    once = run_engine(root, "run", "--once", "--as-of", ANCHOR, secret="change-me")
    assert once.returncode == 1, once.stdout + once.stderr
    assert "error: " in once.stderr and "is a known default" in once.stderr and "fix: set ENGINE_CODE_SECRET" in once.stderr
    assert "Traceback" not in once.stderr
    service = run_engine(root, "run", "--interval", "1s", "--metrics-port", "0", "--log-format", "json", timeout=60)
    assert service.returncode == 1, service.stdout + service.stderr
    assert '"event": "config.invalid"' in service.stdout and "ENGINE_CODE_SECRET is not set" in service.stdout
    assert "pass.finished" not in service.stdout
    assert ledger_rows(root) == 0 and not (root / "var" / "outbox").exists()

    good = run_engine(root, "run", "--once", "--as-of", ANCHOR, secret=NEW)
    assert good.returncode == 0, good.stdout + good.stderr
    assert "Warning" not in good.stderr and ledger_rows(root) > 0


def test_the_demo_runs_with_its_built_in_secret_and_says_so(tmp_path, monkeypatch):
    """On a terminal run --once says so (the service logs it: see the reload test); piped, stderr stays as it was."""
    from test_progress import _run

    monkeypatch.delenv("ENGINE_CODE_SECRET", raising=False)
    root = small_demo(tmp_path)
    code, _, err = _run(["run", "--once", "--as-of", ANCHOR], root, tty=True)
    assert code == 0, err
    assert "Warning: demo project: unsubscribe links and discount codes are signed with a secret anyone can know" in err
    sent = sorted((root / "var" / "outbox" / "email").glob("*.eml"))
    assert sent
    link = email.message_from_bytes(sent[0].read_bytes(), policy=email.policy.default)["List-Unsubscribe"].strip("<>")
    assert unsubscribe.check(link, DEMO_SECRET)[1] == "email"


# --- the link itself ---------------------------------------------------------------------------------------------

HOSTILE_IDS = ["1' OR '1'='1", "7" * 5000, "7\x00", "7\r\nSet-Cookie: x=1", "7\u202e", "7 OR 1=1", "7;DROP", "7%27", ""]


@pytest.mark.parametrize("customer_id", HOSTILE_IDS, ids=lambda v: repr(v[:20]))
def test_a_signed_link_with_an_id_that_is_no_customer_id_is_malformed(customer_id):
    link = unsubscribe.link("https://shop.example/u", NEW, customer_id, "email")
    with pytest.raises(unsubscribe.LinkRefused) as refused:
        unsubscribe.check(link, NEW)
    assert refused.value.status == 400


def test_old_keys_verify_unknown_keys_do_not():
    old = unsubscribe.link("https://shop.example/u", OLD, "7", "sms")
    assert unsubscribe.check(old, [NEW, OLD]) == ("7", "sms")
    with pytest.raises(unsubscribe.LinkRefused) as refused:
        unsubscribe.check(unsubscribe.link("https://shop.example/u", UNKNOWN, "7", "sms"), [NEW, OLD])
    assert refused.value.status == 403
    for malformed in ("c=7&k=email", "c=7&k=post&s=" + "0" * 32, "c=7&c=8&k=email&s=" + "0" * 32, "&".join(["x=1"] * 50)):
        with pytest.raises(unsubscribe.LinkRefused) as refused:
            unsubscribe.check(malformed, NEW)
        assert refused.value.status == 400
    assert unsubscribe.is_customer_id("kunde-4711@shop.example") and unsubscribe.is_customer_id("Jörg_42")


# --- the service's /unsubscribe ----------------------------------------------------------------------------------


@pytest.fixture
def service(tmp_path, monkeypatch):
    """The service of a small demo project, started in-process, signing with NEW and verifying OLD too."""
    monkeypatch.setenv("ENGINE_CODE_SECRET", NEW)
    monkeypatch.setenv("ENGINE_CODE_SECRETS_PREVIOUS", OLD)
    root = small_demo(tmp_path / "project")
    svc = Service(root, 60.0, metrics_port=free_port(), clock=FixedClock(parse_instant(ANCHOR)))
    svc.start()
    yield svc
    svc.close()


def post(svc: Service, query: str) -> tuple[int, str]:
    request = urllib.request.Request(f"http://127.0.0.1:{svc.server.port}/unsubscribe?{query}",
                                     data=b"List-Unsubscribe=One-Click", method="POST")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def stored_unsubscribes(svc: Service) -> list[tuple]:
    with svc._reconciler.ledger.db.engine.connect() as conn:
        return [tuple(r) for r in conn.execute(sa.text("SELECT customer_id, kind, source FROM engine_unsubscribes"))]


def test_the_service_refuses_forged_and_hostile_links_and_stores_nothing_for_them(service):
    query = lambda secret, customer, kind="email": unsubscribe.link("", secret, customer, kind).lstrip("?")  # noqa: E731

    assert post(service, query(UNKNOWN, "7"))[0] == 403
    assert post(service, query(DEMO_SECRET, "7"))[0] == 403  # the demo's secret is not a key once a real one is set
    for customer_id in HOSTILE_IDS:
        assert post(service, query(NEW, customer_id))[0] == 400, repr(customer_id[:20])
    for unknown in ("999999", "../7", "7.0", "x" * 128):  # well-formed and signed, but no customer of this shop
        assert post(service, query(NEW, unknown))[0] == 404, unknown
    assert post(service, query(NEW, "7'--"))[0] == 400
    assert stored_unsubscribes(service) == []

    assert post(service, query(OLD, "7"))[0] == 200  # signed before the rotation: still honoured
    assert post(service, query(NEW, "8", "sms"))[0] == 200
    assert sorted(stored_unsubscribes(service)) == [("7", "email", "link"), ("8", "sms", "link")]


def test_new_links_are_signed_with_the_new_key(service):
    report = service.run_pass()
    assert report is not None and report.total("sent") > 0
    sent = sorted((service.root / "var" / "outbox" / "email").glob("*.eml"))
    assert sent
    for path in sent[:20]:
        link = email.message_from_bytes(path.read_bytes(), policy=email.policy.default)["List-Unsubscribe"].strip("<>")
        assert unsubscribe.check(link, NEW)
        with pytest.raises(unsubscribe.LinkRefused):
            unsubscribe.check(link, [OLD, DEMO_SECRET])


def test_the_service_warns_in_the_demo_and_refuses_a_reload_that_leaves_it_without_a_secret(tmp_path, monkeypatch):
    import io
    import json

    from engine import logs

    monkeypatch.delenv("ENGINE_CODE_SECRET", raising=False)
    stream = io.StringIO()
    logs.configure("info", "json", stream=stream)
    root = small_demo(tmp_path / "project")
    svc = Service(root, 60.0, metrics_port=free_port(), clock=FixedClock(parse_instant(ANCHOR)))
    try:
        svc.start()
        events = [json.loads(line) for line in stream.getvalue().splitlines()]
        [warning] = [e for e in events if e["event"] == "secret.demo"]
        assert warning["level"] == "warning" and "anyone can forge its unsubscribe links" in warning["message"]
        without_demo(root)
        assert svc.reload_if_changed() is False
        ok, detail = svc.readiness()
        assert not detail["config"]["valid"]
        assert any("ENGINE_CODE_SECRET is not set" in error for error in detail["config"]["errors"])
        assert svc._reconciler.config.is_demo  # the last valid project keeps running
    finally:
        svc.close()
        logs.configure()


# --- discount codes across a rotation -----------------------------------------------------------------------------

CODED = """
    name: coded
    trigger: {order_placed: {}}
    steps:
      - id: mail
        delay: 0m
        freshness: 7d
        channel: email
        template: second-order/nudge.email.j2
        discount_code: {prefix: X-, length: 8}
"""


def test_a_rotation_never_changes_the_code_of_a_stored_message(tmp_path, monkeypatch):
    """A message rendered (and stored) before the rotation is retried after it with its old code;
    a message rendered after it gets a code of the new secret."""
    from conftest import load_history, write
    from test_delivery import at, configure, customers, orders, statuses

    from engine import Reconciler, load_project
    from engine.decide import discount_code
    from servers import SmtpSink

    root = copy_project(tmp_path / "project")
    for path in (root / "campaigns.d").glob("*.yaml"):
        path.unlink()
    url = f"sqlite:///{tmp_path / 'shop.db'}"
    monkeypatch.setenv("ENGINE_WAREHOUSE_URL", url)
    write(root / "campaigns.d" / "coded.yaml", CODED)
    load_history(url, customers=customers(2), orders=orders(1))
    with SmtpSink() as smtp:
        configure(root, smtp.port)
        smtp.script["c1@example.com"] = ["451 4.3.0 try again later"]
        monkeypatch.setenv("ENGINE_CODE_SECRET", OLD)
        r = Reconciler(load_project(root))
        try:
            r.run_once(at(minutes=1))
            assert statuses(r)["coded:mail:1:1"] == ("failed", "transient", 1)
        finally:
            r.close()
        monkeypatch.setenv("ENGINE_CODE_SECRET", NEW)  # rotated; the old one is not even kept for links
        second = {"order_id": 2, "customer_id": 2, "created_at": at(minutes=5).replace(tzinfo=None),
                  "status": "completed", "total": 5}
        load_history(url, customers=customers(2), orders=orders(1) + [second])
        r = Reconciler(load_project(root))
        try:
            r.run_once(at(minutes=30))
            assert statuses(r)["coded:mail:1:1"][0] == "sent" and statuses(r)["coded:mail:2:2"][0] == "sent"
        finally:
            r.close()
        bodies = {m["X-Engine-Message-Key"]: m.get_body(("plain",)).get_content() for m in smtp.messages}
    assert discount_code(OLD, "coded:mail:1:1", "X-", 8) in bodies["coded:mail:1:1"]
    assert discount_code(NEW, "coded:mail:1:1", "X-", 8) not in bodies["coded:mail:1:1"]
    assert discount_code(NEW, "coded:mail:2:2", "X-", 8) in bodies["coded:mail:2:2"]
