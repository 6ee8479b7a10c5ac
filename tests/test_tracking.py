"""Open and click tracking (issue 17, points 1 and 5): a pass renders tracked emails, the running service
records opens, clicks and scans once, refuses bad requests with the right status and records nothing for them;
headless Chromium opens an email and follows its link."""
from __future__ import annotations

import email
import email.policy
import http.client
import http.server
import logging
import os
import shutil
import socket
import subprocess
import textwrap
import threading
import urllib.error
import urllib.request
from dataclasses import replace
from datetime import datetime, timedelta
from html.parser import HTMLParser
from pathlib import Path

import pytest
import sqlalchemy as sa
from click.testing import CliRunner

from conftest import REPO
from engine import tracking
from engine.cli.main import main
from engine.clock import FixedClock, parse_instant

SECRET = "tracking-service-secret-0123456789abcdefghijkl"
PASS_AT = "2025-01-06T12:05:00Z"
#: the service runs an hour after the pass: no open or click is "too soon after sending"
SERVICE_AT = parse_instant(PASS_AT) + timedelta(hours=1)
PERSON = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0 Safari/537.36"

ENGINE_YAML = """
warehouse:
  url: sqlite:///{warehouse}
defaults:
  timezone: UTC
  code_secret: {secret}
shop: {{name: Shop, url: "{target}/home"}}
sources:
  customers:
    table: customers
    columns: {{email: email, first_name: first_name, created_at: created_at,
               tracking_consent: "customer_id <> 2"}}
  orders:
    table: orders
    columns: {{status: status, total: total}}
channels:
  mail:
    kind: email
    transport: file
    path: var/outbox
    from: "Shop <hello@my-shop.de>"
policies:
  unsubscribe_url: http://127.0.0.1:{port}/unsubscribe
  tracking: {{enabled: true, token_ttl: 30d}}
"""

CAMPAIGN = """
name: {name}
trigger: {{order_placed: {{}}}}
{tracking}
steps:
  - id: thanks
    delay: 0m
    freshness: 1d
    channel: mail
    template: notify/thanks.email.j2
"""

TEMPLATE = """{% extends "layouts/email.j2" %}
{% block title %}Thanks{% endblock %}
{% block body %}<p><a href="TARGET/product?id=7">Our beans</a> <a href="mailto:hi@my-shop.de">Write</a></p>{% endblock %}
{% block cta_label %}Order again{% endblock %}
{% block cta_url %}TARGET/shop{% endblock %}
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Target:
    """A loopback web shop: answers every GET with a page and remembers the paths it was asked for."""

    def __init__(self):
        paths = self.paths = []

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                paths.append(self.path)
                body = b"<!doctype html><title>landed</title><p id=landed>landed</p>"
                self.send_response(200)
                self.send_header("Content-Type", "text/html")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


class Anchors(HTMLParser):
    def __init__(self):
        super().__init__()
        self.links, self.images = [], []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "a":
            self.links.append(attrs["href"])
        if tag == "img":
            self.images.append(attrs["src"])


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """A shop of two customers (the second without tracking consent), one order each, one pass sent: campaign
    thanks (tracked, UTM parameters) and campaign quiet (tracking: false). Yields (root, port, target, emails)."""
    from engine.state.warehouse import Database
    from engine.tools.demo import ShopData, load_shop

    tmp = tmp_path_factory.mktemp("tracking")
    root, port, target = tmp / "project", free_port(), Target()
    (root / "campaigns.d").mkdir(parents=True)
    (root / "templates" / "notify").mkdir(parents=True)
    shutil.copytree(REPO / "templates" / "layouts", root / "templates" / "layouts")
    (root / "engine.yaml").write_text(textwrap.dedent(ENGINE_YAML).format(
        warehouse=tmp / "shop.db", secret=SECRET, port=port, target=target.url))
    (root / "campaigns.d" / "thanks.yaml").write_text(textwrap.dedent(CAMPAIGN).format(
        name="thanks", tracking="tracking: {utm: {source: engine, campaign: thanks}}"))
    (root / "campaigns.d" / "quiet.yaml").write_text(textwrap.dedent(CAMPAIGN).format(name="quiet", tracking="tracking: false"))
    (root / "templates" / "notify" / "thanks.email.j2").write_text(TEMPLATE.replace("TARGET", target.url))
    data = ShopData()
    t0 = datetime(2025, 1, 6, 12, 0)
    data.rows["customers"] = [{"customer_id": i, "first_name": name, "email": f"{name.lower()}@my-shop.de",
                               "created_at": datetime(2024, 9, 1)} for i, name in ((1, "Anna"), (2, "Ben"))]
    data.rows["orders"] = [{"order_id": i, "customer_id": i, "created_at": t0, "status": "completed", "total": 5}
                           for i in (1, 2)]
    db = Database(f"sqlite:///{tmp / 'shop.db'}")
    load_shop(db, data)
    db.dispose()
    result = CliRunner().invoke(main, ["--project", str(root), "run", "--once", "--as-of", PASS_AT])
    assert result.exit_code == 0, result.output
    emails = {}
    for path in (root / "var" / "outbox").rglob("*.eml"):
        message = email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
        emails[path.stem] = message.get_body(("html",)).get_content()
    assert len(emails) == 4, sorted(emails)
    yield root, port, target, emails
    target.close()


def email_of(emails: dict, campaign: str, customer: int) -> str:
    (html,) = [html for name, html in emails.items() if name.startswith(f"{campaign}_thanks_{customer}_")]
    return html


def anchors(html: str) -> Anchors:
    parser = Anchors()
    parser.feed(html)
    return parser


def events(root: Path) -> list[tuple]:
    engine = sa.create_engine(f"sqlite:///{root.parent / 'shop.db'}")
    try:
        with engine.connect() as conn:
            return [tuple(r) for r in conn.execute(sa.text(
                "SELECT message_key, type, machine, url, detail FROM engine_events ORDER BY type, machine, url"))]
    finally:
        engine.dispose()


def request(port: int, target: str, method: str = "GET", agent: str = PERSON, body: bytes | None = None,
            headers: dict | None = None) -> tuple[int, dict, bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.request(method, target, body=body, headers={"User-Agent": agent, **(headers or {})})
        response = connection.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        connection.close()


def path_of(url: str) -> str:
    return url[url.index("/", len("http://")):]


def test_tracked_html_has_a_pixel_and_signed_links_but_not_without_consent_or_with_tracking_off(project):
    root, port, target, emails = project
    tracked = anchors(email_of(emails, "thanks", 1))
    base = f"http://127.0.0.1:{port}"
    assert [src.split("?")[0] for src in tracked.images] == [f"{base}/open"]
    clicks = [link for link in tracked.links if link.startswith(f"{base}/click?t=")]
    # the body's link, the call to action and the shop's website; mailto and the unsubscribe link stay
    assert len(clicks) == 3
    assert "mailto:hi@my-shop.de" in tracked.links
    assert any(link.startswith(f"{base}/unsubscribe?") for link in tracked.links)
    opened = [tracking.open_token(link.split("t=")[1], SECRET, "click", SERVICE_AT).url for link in clicks]
    assert opened == [f"{target.url}/product?id=7&utm_source=engine&utm_campaign=thanks",
                      f"{target.url}/shop?utm_source=engine&utm_campaign=thanks",
                      f"{target.url}/home?utm_source=engine&utm_campaign=thanks"]
    for untracked in (email_of(emails, "thanks", 2), email_of(emails, "quiet", 1)):  # no consent; tracking: false
        parsed = anchors(untracked)
        assert parsed.images == [] and not any("/click?" in link for link in parsed.links)
    # UTM parameters without tracking
    assert f"{target.url}/product?id=7&utm_source=engine&utm_campaign=thanks" in anchors(email_of(emails, "thanks", 2)).links
    assert f'href="{target.url}/product?id=7"' in email_of(emails, "quiet", 1)


def test_tracking_off_globally_means_no_pixel_and_no_redirect(project):
    from engine.run.render import is_tracked
    from engine.run.messages import DueMessage
    from engine.spec.project import load_project

    root = project[0]
    loaded = load_project(root)
    fields = {f: None for f in DueMessage.__dataclass_fields__}
    message = replace(DueMessage(**fields), campaign="thanks", step="thanks", customer={"tracking_consent": True})
    assert is_tracked(message, loaded, loaded.config)
    off = replace(loaded.config, tracking=replace(loaded.config.tracking, enabled=False))
    assert not is_tracked(message, loaded, off)
    assert not is_tracked(replace(message, customer={"tracking_consent": None}), loaded, loaded.config)


def test_the_service_records_opens_clicks_and_scans_once_and_refuses_bad_requests(project, caplog):
    from engine.service.loop import Service

    root, port, target, emails = project
    html = email_of(emails, "thanks", 1)
    pixel, = anchors(html).images
    click = next(link for link in anchors(html).links if "/click?" in link)
    key = tracking.open_token(pixel.split("t=")[1], SECRET, "open", SERVICE_AT).message_key
    service = Service(root, 3600, metrics_port=port, clock=FixedClock(SERVICE_AT))
    caplog.set_level(logging.DEBUG, logger="engine")
    service.start()
    try:
        for _ in range(2):  # a reload of the image records nothing new
            status, headers, body = request(port, path_of(pixel))
            assert (status, headers["Content-Type"], body[:6]) == (200, "image/gif", b"GIF89a")
        status, headers, _ = request(port, path_of(click))
        assert (status, headers["Location"]) == (302, f"{target.url}/product?id=7&utm_source=engine&utm_campaign=thanks")
        assert request(port, path_of(click))[0] == 302
        assert request(port, path_of(click), method="HEAD")[0] == 302  # a scanner checking the link: a machine
        apple = "Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko)"
        assert request(port, path_of(pixel), agent=apple)[0] == 200
        scan = tracking.link("/scan", tracking.seal(SECRET, "scan", key, parse_instant(PASS_AT)))
        status, headers, _ = request(port, scan)
        assert (status, headers["Location"]) == (302, f"{target.url}/home")
        assert service.tracking_state().writer.flush()
        recorded = events(root)
        url = f"{target.url}/product?id=7&utm_source=engine&utm_campaign=thanks"
        assert recorded == [(key, "click", 0, url, None), (key, "click", 1, url, "head_request"),
                            (key, "open", 0, None, None), (key, "open", 1, None, "apple_mail_proxy"),
                            (key, "scan", 0, None, None)]

        token = click.split("t=")[1]
        tampered = token[:10] + ("A" if token[10] != "A" else "B") + token[11:]
        made = parse_instant(PASS_AT)
        refused = {
            "/click?t=" + tampered: 404,                                                 # altered: no such token
            "/click?t=" + tracking.seal("another-shops-secret-0123456789abcdefghij", "click", key, made,
                                        "https://evil.example/"): 404,                   # forged with another key
            "/click?t=" + tracking.seal(SECRET, "click", "thanks:thanks:99:99", made, target.url): 404,  # unknown key
            "/open?t=" + tracking.seal(SECRET, "click", key, made, target.url): 404,    # a click token as a pixel
            "/open?t=" + tracking.seal(SECRET, "open", key, made - timedelta(days=31)): 410,  # older than 30d
            "/click?t=" + token + "&u=https://evil.example/": 400,                      # a URL the message did not have
            "/click?t=" + token + "&t=" + token: 400, "/click": 400, "/open?t=v1.%00": 400, "/scan?m=1&s=2": 400,
        }
        for target_path, expected in refused.items():
            assert request(port, target_path)[0] == expected, target_path
        assert request(port, path_of(pixel), method="POST", body=b"x")[0] == 405
        assert request(port, path_of(click), body=b"x" * 4096, method="GET",
                       headers={"Content-Length": "4096"})[0] == 413
        assert request(port, "/open?t=" + "A" * 20000)[0] == 431
        assert service.tracking_state().writer.flush()
        assert events(root) == recorded  # nothing recorded for any of them
    finally:
        service.close()
    logged = "\n".join(r.getMessage() + " " + str(r.__dict__) for r in caplog.records)
    assert "Refused a click request" in logged
    for secret_part in (token[3:40], tampered[3:40], key, "evil.example", "anna"):
        assert secret_part not in logged


def chromium() -> str:
    path = shutil.which("chromium") or "/usr/bin/chromium"
    if not os.path.exists(path):
        if os.environ.get("ENGINE_REQUIRE_CHROMIUM") == "1":
            pytest.fail("ENGINE_REQUIRE_CHROMIUM=1 but no chromium on PATH (apt-get install chromium)")
        pytest.skip("chromium is not installed")
    return path


def test_chromium_opening_the_email_records_one_open_and_following_its_link_one_click(project, tmp_path):
    """The email's HTML as sent, opened in headless Chromium (it loads the pixel), whose first tracked link
    a script clicks as a reader would: one open, one click, and the browser lands on the shop's page."""
    from engine.service.loop import Service

    root, _, target, emails = project
    html = email_of(emails, "thanks", 1)
    key = tracking.open_token(anchors(html).images[0].split("t=")[1], SECRET, "open", SERVICE_AT).message_key
    before = [e for e in events(root) if e[0] == key]
    # a fresh ledger state for this message: the service test may have recorded its events already
    engine = sa.create_engine(f"sqlite:///{root.parent / 'shop.db'}")
    with engine.begin() as conn:
        conn.execute(sa.text("DELETE FROM engine_events WHERE message_key = :k"), {"k": key})
    engine.dispose()
    port = int(anchors(html).images[0].split(":")[2].split("/")[0])
    page = tmp_path / "email.html"
    follow = "<script>addEventListener('load', () => setTimeout(() => document.querySelector('a[href*=\"/click?\"]').click(), 300))</script>"
    page.write_text(html + follow)  # the email exactly as sent, then what a reader does
    service = Service(root, 3600, metrics_port=port, clock=FixedClock(SERVICE_AT))
    service.start()
    try:
        result = subprocess.run([chromium(), "--headless", "--no-sandbox", "--disable-gpu", f"--user-agent={PERSON}",
                                 "--virtual-time-budget=5000", "--dump-dom", page.as_uri()],
                                capture_output=True, text=True, timeout=90)
        assert service.tracking_state().writer.flush()
    finally:
        service.close()
    recorded = [(e[1], e[2]) for e in events(root) if e[0] == key]
    assert sorted(recorded) == [("click", 0), ("open", 0)], (recorded, before, result.stderr[-2000:])
    assert "/product?id=7&utm_source=engine&utm_campaign=thanks" in target.paths  # landed on the target


def test_engine_serve_tracking_serves_health_and_tracking_only(project):
    """`engine serve-tracking`: a process of its own answering /healthz, /readyz, the tracking endpoints and the
    provider webhooks from the same project, without passes and without /unsubscribe."""
    import signal
    import sys
    import time

    root, _, _, emails = project
    port = free_port()
    pixel, = anchors(email_of(emails, "thanks", 1)).images
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    process = subprocess.Popen([sys.executable, "-c", "from engine.cli.main import main; main()", "serve-tracking",
                                "--port", str(port)], cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if request(port, "/readyz")[0] == 200:  # the project loaded (/healthz answers before)
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline and process.poll() is None, "serve-tracking did not start"
            time.sleep(0.2)
        assert request(port, path_of(pixel))[0] == 410  # the real clock: made in 2025, the lifetime is 30d
        key = tracking.open_token(pixel.split("t=")[1], SECRET, "open", SERVICE_AT).message_key
        fresh = tracking.link("/open", tracking.seal(SECRET, "open", key, datetime.now().astimezone()))
        assert request(port, fresh)[0] == 200
        assert request(port, "/healthz")[0] == 200
        assert request(port, "/unsubscribe?c=1&k=email&s=" + "0" * 32)[0] == 404
        # the provider webhooks are public endpoints too: served here (this project configures no provider)
        status, _, body = request(port, "/webhooks/sms", "POST", body=b"{}")
        assert status == 404 and b"not configured" in body, body
    finally:
        process.send_signal(signal.SIGTERM)
        output = process.communicate(timeout=60)[0].decode()
    assert process.returncode == 0, output
    assert "pass.finished" not in output and "Pass at" not in output  # no passes


def test_the_writer_gathers_the_events_that_arrive_while_it_lingers_and_flush_cuts_the_wait_short(tmp_path):
    """One record_events call (one insert, one commit) for the clicks that arrived while the writer waited for
    more, each recorded once; flush does not wait out the linger (here 30 s)."""
    import time

    from engine.model import ProjectConfig
    from engine.service import tracking as endpoints
    from engine.state.events import Event, event_id
    from engine.state.ledger import Ledger, Record
    from engine.state.warehouse import Database

    sent_at = parse_instant(PASS_AT)
    ledger = Ledger(Database(f"sqlite:///{tmp_path / 'ledger.db'}"))
    ledger.ensure_schema()
    record = Record(message_key="c:s:1:1", campaign="c", step="s", customer_id="1", trigger_key="1", channel="mail",
                    status="claimed", due_at=sent_at)
    ledger.write_new([record], sent_at)
    ledger.record_outcomes([replace(record, status="sent")], sent_at)
    calls = []

    class Counting:
        def message_refs(self, keys):
            return ledger.message_refs(keys)

        def record_events(self, events, now):
            calls.append(len(events))
            return ledger.record_events(events, now)

    writer = endpoints.Writer(Counting(), endpoints.Memory(), linger=30)
    clicks = [Event(event_id=event_id("click", "c:s:1:1", f"https://shop.example/{i}", "person"), message_key="c:s:1:1",
                    type="click", occurred_at=SERVICE_AT, provider="tracking", url=f"https://shop.example/{i}")
              for i in range(50)]
    for click in clicks + clicks[:10]:  # ten of them twice: recorded once
        writer.put(click, SERVICE_AT)
    started = time.monotonic()
    assert writer.flush(timeout=20)
    assert time.monotonic() - started < 15
    assert calls == [60]
    assert len(ledger.customer_events("1")) == 50
    assert writer.close()
    ledger.close()
