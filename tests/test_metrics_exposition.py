"""/metrics as a Prometheus server scrapes it: prometheus-client's own exposition behind the service's server.

A real StatusServer on loopback serves a real ``Metrics`` after one recorded
pass. The Prometheus text format by default, OpenMetrics when the Accept header
asks for it (as Prometheus does), gzip on request, /healthz and /readyz beside
it; both formats are read back with prometheus-client's parsers, and the text
format is checked by ``promtool check metrics`` (Debian package 'prometheus').
promtool is skipped where it is not installed, unless ENGINE_REQUIRE_PROMTOOL=1
(CI), where that fails.
"""
from __future__ import annotations

import gzip
import os
import shutil
import subprocess
import urllib.request
from datetime import datetime, timezone

import pytest
from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_openmetrics
from prometheus_client.parser import text_string_to_metric_families as parse_text

from engine.run.messages import PassReport
from engine.service.httpd import StatusServer
from engine.service.metrics import Metrics

#: every metric family the service has exposed so far (and engine_info); dashboards and alerts read these names
FAMILIES = {
    "engine_passes", "engine_pass_duration_seconds", "engine_last_pass_timestamp_seconds", "engine_messages_due",
    "engine_messages_sent", "engine_messages_skipped", "engine_messages_failed", "engine_messages_deferred",
    "engine_pass_errors", "engine_ledger_claimed_messages", "engine_ledger_oldest_claim_age_seconds",
    "engine_seconds_since_last_pass", "engine_config_valid", "engine_config_reloads", "engine_config_reload_failures",
    "engine_campaigns_active", "engine_campaign_failures", "process_cpu_seconds",
}
OPENMETRICS = "application/openmetrics-text; version=1.0.0; charset=utf-8"


@pytest.fixture(scope="module")
def server():
    metrics = Metrics(seconds_since_last_pass=lambda: 12.5)
    report = PassReport(now=datetime(2026, 12, 6, tzinfo=timezone.utc))
    report.add("welcome", "hello", "sent", 3, channel="mail")
    report.add("welcome", "hello", "skipped:stale", 2, channel="mail")
    report.add("welcome", "hello", "failed:transient", 1, channel="mail")
    report.add("winback", "nudge", "deferred:channel_unavailable", 4, channel=None)
    report.failed_campaigns["broken"] = "binder error"
    metrics.record_pass(report, duration=0.7, ended_at=1_796_515_200.0)
    served = StatusServer("127.0.0.1", 0, readiness=lambda: (True, {"campaigns": 2}), metrics=metrics.wsgi_app())
    served.start()
    yield served
    served.stop()


def scrape(server, path="/metrics", **headers):
    request = urllib.request.Request(f"http://127.0.0.1:{server.port}{path}", headers=headers)
    with urllib.request.urlopen(request, timeout=10) as response:
        return response.status, response.headers, response.read()


def samples(families) -> dict[tuple, float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value for family in families for s in family.samples}


def test_the_text_format_by_default_with_every_metric_name(server):
    status, headers, body = scrape(server)
    assert status == 200
    assert headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
    assert headers["Cache-Control"] == "no-store" and int(headers["Content-Length"]) == len(body)
    families = list(parse_text(body.decode()))
    assert FAMILIES <= {f.name for f in families}, FAMILIES - {f.name for f in families}
    values = samples(families)
    assert values[("engine_messages_sent_total", (("campaign", "welcome"), ("channel", "mail"), ("step", "hello")))] == 3
    assert values[("engine_messages_skipped_total", (("campaign", "welcome"), ("channel", "mail"), ("reason", "stale"),
                                                     ("step", "hello")))] == 2
    assert values[("engine_messages_deferred_total", (("campaign", "winback"), ("channel", "none"),
                                                      ("reason", "channel_unavailable"), ("step", "nudge")))] == 4
    assert values[("engine_campaign_failures_total", (("campaign", "broken"),))] == 1
    assert values[("engine_seconds_since_last_pass", ())] == 12.5
    assert values[("engine_info", (("version", __import__("engine").__version__),))] == 1


def test_openmetrics_when_the_scraper_asks_for_it(server):
    # the Accept header Prometheus 2.x sends
    accept = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75," \
             "text/plain;version=0.0.4;q=0.5,*/*;q=0.1"
    status, headers, body = scrape(server, Accept=accept)
    assert status == 200 and headers["Content-Type"].startswith(OPENMETRICS)
    text = body.decode()
    assert text.endswith("# EOF\n")
    families = list(parse_openmetrics(text))  # the strict parser: raises on anything not OpenMetrics
    assert FAMILIES <= {f.name for f in families}
    values = samples(families)
    assert values[("engine_passes_total", (("result", "incomplete"),))] == 1
    assert values[("engine_info", (("version", __import__("engine").__version__),))] == 1


def test_gzip_on_request_and_the_probes_beside_it(server):
    status, headers, body = scrape(server, **{"Accept-Encoding": "gzip"})
    assert status == 200 and headers["Content-Encoding"] == "gzip"
    assert "engine_messages_due_total" in gzip.decompress(body).decode()
    assert scrape(server, "/healthz")[2] == b"ok\n"
    status, headers, body = scrape(server, "/readyz")
    assert status == 200 and headers["Content-Type"] == "application/json" and b'"campaigns": 2' in body


def _promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        if os.environ.get("ENGINE_REQUIRE_PROMTOOL") == "1":
            pytest.fail("ENGINE_REQUIRE_PROMTOOL=1 but no promtool on PATH (apt-get install prometheus)")
        pytest.skip("promtool not installed (Debian package 'prometheus')")
    return path


def test_promtool_accepts_the_scraped_exposition(server):
    promtool = _promtool()
    _, _, body = scrape(server)
    checked = subprocess.run([promtool, "check", "metrics"], input=body, capture_output=True, timeout=30)
    assert checked.returncode == 0, (checked.stdout + checked.stderr).decode()
    # and promtool does reject what is wrong: a counter without _total, a name with a dash
    broken = b"# HELP bad-name x\n# TYPE bad-name counter\nbad-name 1\n"
    assert subprocess.run([promtool, "check", "metrics"], input=broken, capture_output=True, timeout=30).returncode != 0
