"""The delivery guarantees, for postal letters (issue 16, "Bad input"): the crash and replica tests of
tests/test_push.py, run with a letter channel.

kill -9 at each failpoint of a pass (engine/faults.py), then a recovery pass after the claim timeout:
every letter ends sent or unknown, none is printed twice (at_most_once, the default), and every letter the
ledger calls sent was printed - with the print_api transport posting to a print provider on loopback
(which checks every body is a PDF and records its message_key and Idempotency-Key), and with the
drop_folder transport (the manifests, which the print shop goes by, list no key twice). Four replicas
started at once on one ledger with the drop_folder transport, claiming in small batches so they really
compete: the manifests together list each message key exactly once, and the ledger has exactly n sent.
"""
from __future__ import annotations

import csv
import hashlib
import json
import os
import shutil
import subprocess
import sys
import threading
from collections import Counter
from datetime import datetime
from email.parser import BytesParser
from email.policy import HTTP
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from conftest import load_history, write
from engine import Reconciler, load_project
from engine.channels.base import OutgoingMessage

SECRET = "a-test-secret-of-enough-length-1234567890"
T0 = datetime(2025, 1, 6, 12, 0)

ENGINE_YAML = """
warehouse:
  url: sqlite:///{warehouse}
defaults:
  timezone: UTC
  code_secret: {secret}
sources:
  customers:
    table: customers
    columns: {{email: email, first_name: first_name, last_name: last_name, created_at: created_at,
               street: street, postal_code: postal_code, city: city, country: country,
               letter_consent: "customer_id > 0"}}
  orders:
    table: orders
    columns: {{status: status, total: total}}
channels:
  post:
    kind: letter
{transport}
    from: "Shop · Weg 1 · 10115 Berlin"
    in_flight: 3
policies:
  claim_timeout: 1m
  unsubscribe_url: http://127.0.0.1:9/unsubscribe
  scan_url: http://127.0.0.1:9/scan
"""

PRINT_API = """\
    transport: print_api
    url: {url}
    auth_header: X-Api-Key
    auth: ${{PRINT_API_KEY}}
    timeout: 10"""

DROP_FOLDER = """\
    transport: drop_folder
    path: var/print"""

CAMPAIGN = """
name: notify
trigger: {order_placed: {}}
steps:
  - id: thanks
    delay: 0m
    channel: post
    template: notify/thanks.letter.j2
"""

TEMPLATE = """{% block address %}{{ recipient }}{% endblock %}
{% block body %}<p>Thank you for your order, {{ customer.first_name }}.</p>{% endblock %}
"""


def letter_project(tmp_path: Path, transport: str, n: int) -> Path:
    """A project whose one campaign sends a letter per order over ``transport``; n customers with a
    complete postal address, each with one order at T0. The ledger is the warehouse (SQLite)."""
    root = tmp_path / "project"
    warehouse = tmp_path / "shop.db"
    write(root / "engine.yaml", ENGINE_YAML.format(warehouse=warehouse, secret=SECRET, transport=transport))
    write(root / "campaigns.d" / "notify.yaml", CAMPAIGN)
    write(root / "templates" / "notify" / "thanks.letter.j2", TEMPLATE)
    customers = [{"customer_id": i, "email": f"c{i}@example.com", "first_name": f"C{i}", "last_name": "Muster",
                  "created_at": datetime(2024, 9, 1), "street": f"Lindenallee {i}", "postal_code": "10115",
                  "city": "Berlin"} for i in range(1, n + 1)]
    orders = [{"order_id": i, "customer_id": i, "created_at": T0, "status": "completed", "total": 5}
              for i in range(1, n + 1)]
    load_history(f"sqlite:///{warehouse}", customers=customers, orders=orders)
    return root


def run_engine(project: Path, as_of: str, env: dict | None = None, wait: bool = True):
    command = [sys.executable, "-m", "engine.cli.main", "run", "--once", "--as-of", as_of]
    environment = {**os.environ, **(env or {})}
    if not wait:
        return subprocess.Popen(command, cwd=project, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env=environment)
    return subprocess.run(command, cwd=project, capture_output=True, text=True, timeout=180, env=environment)


def ledger_rows(warehouse: Path) -> dict[str, str]:
    """message_key -> status of every ledger row."""
    from engine.state.warehouse import Database

    db = Database(f"sqlite:///{warehouse}")
    try:
        return dict(db.fetch_all("SELECT message_key, status FROM engine_ledger"))
    finally:
        db.dispose()


class PrintProvider:
    """A print API on loopback: checks the auth header and that the multipart body's pdf is a PDF, records
    (message_key, Idempotency-Key) of every POST and answers 201; anything else is kept in ``rejected``."""

    def __init__(self, api_key: str):
        self.received: list[tuple[str, str]] = []
        self.rejected: list[str] = []
        self.lock = threading.Lock()
        provider = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                form = BytesParser(policy=HTTP).parsebytes(
                    f"Content-Type: {self.headers['Content-Type']}\r\n\r\n".encode() + body)
                fields = {part.get_param("name", header="content-disposition"): part for part in form.iter_parts()}
                problem = None
                if self.headers.get("X-Api-Key") != api_key:
                    problem = f"auth {self.headers.get('X-Api-Key')!r}"
                elif "pdf" not in fields or not fields["pdf"].get_content().startswith(b"%PDF-"):
                    problem = "no PDF"
                elif "message_key" not in fields or not self.headers.get("Idempotency-Key"):
                    problem = "no message_key or Idempotency-Key"
                with provider.lock:
                    if problem:
                        provider.rejected.append(problem)
                    else:
                        provider.received.append((fields["message_key"].get_content(),
                                                  self.headers["Idempotency-Key"]))
                    number = len(provider.received)
                answer = json.dumps({"id": f"print-{number}"}).encode()
                self.send_response(422 if problem else 201)
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/letters"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def __enter__(self) -> "PrintProvider":
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()


def crash_and_recover(project: Path, warehouse: Path, point: str) -> dict[str, str]:
    """A pass killed (SIGKILL) at ``point``, then a pass after the claim timeout; the ledger's statuses."""
    crashed = run_engine(project, "2025-01-06T12:01:00Z", {"ENGINE_FAILPOINT": point})
    assert crashed.returncode == -9, (point, crashed.stdout, crashed.stderr)
    recovered = run_engine(project, "2025-01-06T12:05:00Z")
    assert recovered.returncode == 0, (point, recovered.stdout, recovered.stderr)
    assert "Traceback" not in crashed.stderr + recovered.stderr, point
    return ledger_rows(warehouse)


def check_recovered(point: str, rows: dict[str, str], printed: Counter, n: int, in_flight: int) -> None:
    """Every letter sent or unknown (only a group in flight in doubt), none printed twice, every letter
    the ledger calls sent printed; before anything was handed over, every printed letter is sent."""
    statuses = Counter(rows.values())
    assert len(rows) == n and set(statuses) <= {"sent", "unknown"}, (point, statuses)
    assert statuses["unknown"] <= in_flight, (point, statuses)
    assert [key for key, times in printed.items() if times > 1] == [], (point, "a letter was printed twice", printed)
    assert {key for key, status in rows.items() if status == "sent"} <= set(printed), (
        point, "the ledger says sent, the print shop never got it", rows, printed)
    assert set(printed) <= set(rows), point
    if point.startswith(("claimed", "stored")):
        assert len(printed) == statuses["sent"], (point, statuses, printed)


def fresh_ledger(warehouse: Path) -> None:
    from engine.state.warehouse import Database

    db = Database(f"sqlite:///{warehouse}")
    db.execute("DELETE FROM engine_ledger")
    db.dispose()


def test_kill_9_at_any_point_never_posts_a_letter_twice_to_the_print_api(tmp_path, monkeypatch):
    """at_most_once (the default): crash at each failpoint, recover after the claim timeout; every letter
    ends sent or unknown (at most one group of in_flight in doubt), none is posted to the print provider
    twice, and every letter the ledger calls sent was posted, with the Idempotency-Key of its key."""
    n, in_flight = 10, 3
    monkeypatch.setenv("PRINT_API_KEY", "key-of-the-print-shop")
    with PrintProvider("key-of-the-print-shop") as provider:
        project = letter_project(tmp_path, PRINT_API.format(url=provider.url), n)
        for point in ["claimed:1", "stored:1", "sent:1", f"sent:{n // 2}", f"sent:{n}"]:
            if point != "claimed:1":  # the first crash is the first pass; later ones start from a fresh ledger
                fresh_ledger(tmp_path / "shop.db")
            provider.received.clear()
            rows = crash_and_recover(project, tmp_path / "shop.db", point)
            check_recovered(point, rows, Counter(key for key, _ in provider.received), n, in_flight)
            for key, idempotency in provider.received:
                assert idempotency == f'"{OutgoingMessage(key=key, kind="letter", to="", sender="").idempotency_key()}"'
            assert provider.rejected == [], provider.rejected


@pytest.mark.parametrize("delivery", ["at_most_once", "at_least_once"])
def test_kill_9_never_lists_a_letter_twice_in_the_drop_folders_manifests(tmp_path, delivery):
    """The same with the drop folder, where the print shop goes by the manifests: after recovery no key is
    in two manifests, every letter the ledger calls sent is in one, and each listed PDF is there with the
    manifest's sha256. A crash before a group's manifest leaves PDFs no manifest lists: unknown, or with
    at_least_once resent from the stored PDF - same file, listed once - so every letter ends sent."""
    n, in_flight = 10, 3
    project = letter_project(tmp_path, f"{DROP_FOLDER}\n    delivery: {delivery}", n)
    folder = project / "var" / "print"
    Reconciler(load_project(project)).close()  # the ledger's tables
    for point in [f"sent:{n // 2}", f"sent:{n}"]:  # (claimed and stored: the print API test)
        fresh_ledger(tmp_path / "shop.db")
        shutil.rmtree(folder, ignore_errors=True)
        rows = crash_and_recover(project, tmp_path / "shop.db", point)
        listed = manifest_rows(folder)
        check_recovered(point, rows, Counter(row["message_key"] for row in listed), n, in_flight)
        for row in listed:
            pdf = (folder / row["file"]).read_bytes()
            assert pdf.startswith(b"%PDF-") and hashlib.sha256(pdf).hexdigest() == row["sha256"], (point, row)
        assert not list(folder.glob(".*")), point  # no temporary file left behind
        if delivery == "at_least_once":
            assert set(rows.values()) == {"sent"} and sorted(row["message_key"] for row in listed) == sorted(rows)


#: one pass of a replica, planning and claiming in batches of argv[2] customers (the CLI's batch is 1000s),
#: so replicas started together compete for every batch; prints how many letters it sent
REPLICA = """
import sys
from engine import Reconciler, load_project
from engine.clock import parse_instant

reconciler = Reconciler(load_project(sys.argv[1]), batch_size=int(sys.argv[2]))
try:
    report = reconciler.run_once(parse_instant(sys.argv[3]))
finally:
    reconciler.close()
print(sum(n for (_, _, outcome), n in report.counts.items() if outcome == "sent"))
"""


def manifest_rows(folder: Path) -> list[dict[str, str]]:
    """The rows of every manifest in the drop folder."""
    return [row for manifest in sorted(folder.glob("manifest-*.csv"))
            for row in csv.DictReader(manifest.open(encoding="utf-8", newline=""))]


def test_replicas_started_at_once_never_print_the_same_letter_twice(tmp_path):
    """Four processes on one ledger at the same moment, letters to the drop folder, each planning and
    claiming 3 customers at a time so they compete for every batch: the manifests together list every
    key exactly once (a letter written twice would be listed twice: each write adds its manifest row),
    each with its PDF, and the ledger has exactly n sent."""
    n = 12
    project = letter_project(tmp_path, DROP_FOLDER, n)
    Reconciler(load_project(project)).close()  # the ledger's tables, before the race
    procs = [subprocess.Popen([sys.executable, "-c", REPLICA, str(project), "3", "2025-01-06T12:01:00Z"], cwd=project,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(4)]
    try:
        outputs = [proc.communicate(timeout=300) for proc in procs]
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert [proc.returncode for proc in procs] == [0] * 4, outputs

    assert sum(int(stdout) for stdout, _ in outputs) == n, outputs  # the passes' own reports add up to n

    folder = project / "var" / "print"
    expected = [f"notify:thanks:{i}:{i}" for i in range(1, n + 1)]
    listed = manifest_rows(folder)
    assert sorted(row["message_key"] for row in listed) == sorted(expected)  # each once, across all manifests
    assert sorted(p.name for p in folder.glob("*.pdf")) == sorted(k.replace(":", "_") + ".pdf" for k in expected)
    assert not list(folder.glob(".*"))  # no temporary file left behind
    for row in listed:
        pdf = (folder / row["file"]).read_bytes()
        assert pdf.startswith(b"%PDF-") and hashlib.sha256(pdf).hexdigest() == row["sha256"], row
    assert Counter(ledger_rows(tmp_path / "shop.db").values()) == {"sent": n}
