"""One bad campaign harms no other (issue 20, point 8).

A campaign whose query the warehouse refuses (a type error validation cannot
know) or whose decisions fail (a delay that overflows the date arithmetic)
is reported by name with the reason - in the pass report, the exit code of
``engine run --once``, its stderr - while every other campaign is planned
and sent as usual, to a real SMTP server on loopback. The bad campaigns are
built in Python after validation (validation refuses them now), or use an
extra attribute whose type only the warehouse knows.
"""
from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from datetime import timedelta
from pathlib import Path

import pytest

from engine import Reconciler, load_project
from servers import SmtpSink
from test_delivery import at, campaign, configure, customers, orders, project, statuses  # noqa: F401 - fixture
from test_service import service_factory  # noqa: F401 - fixture

ENGINE = [sys.executable, "-c", "from engine.cli.main import main; main()"]
N = 12


def expected_keys(campaign_name: str, n: int = N) -> list[str]:
    return sorted(f"{campaign_name}:mail:{i}:{i}" for i in range(1, n + 1))


def with_bad_campaigns(loaded):
    """The validated project plus two campaigns only the run can find wrong, both of the highest priority:
    one the warehouse refuses (email > 5), one whose due time overflows (a delay of 3,000,000 days)."""
    good = loaded.campaign("first")
    step = good.steps[0]
    type_error = dataclasses.replace(good, name="type-error", priority=100, audience="email > 5")
    overflow = dataclasses.replace(good, name="overflow", priority=90,
                                   steps=(dataclasses.replace(step, delay=timedelta(days=3_000_000)),))
    return dataclasses.replace(loaded, campaigns=loaded.campaigns + (type_error, overflow))


@pytest.mark.parametrize("project", ["duckdb", "postgres"], indirect=True)
def test_a_failing_campaign_is_reported_and_every_other_campaign_is_sent(project):
    """On PostgreSQL the failed query aborts the transaction of the pass's connection: it must be rolled back."""
    with SmtpSink() as smtp:
        configure(project, smtp.port)
        project.load({"first": campaign("first", priority=1), "second": campaign("second")},
                     customers=customers(N), orders=orders(N))
        r = Reconciler(with_bad_campaigns(load_project(project)))
        try:
            report = r.run_once(at(minutes=1))

            delivered = smtp.keys()
            assert Counter(delivered) == Counter(expected_keys("first") + expected_keys("second"))  # all, once each
            assert report.counts[("first", "mail", "sent")] == N and report.counts[("second", "mail", "sent")] == N
            assert set(report.failed_campaigns) == {"type-error", "overflow"}
            assert "VARCHAR" in report.failed_campaigns["type-error"].upper() or \
                "operator does not exist" in report.failed_campaigns["type-error"]
            assert report.failed_campaigns["overflow"].startswith("OverflowError")
            assert not any(c in ("type-error", "overflow") for c, _, _ in report.counts)
            recorded = statuses(r)
            assert sorted(recorded) == sorted(delivered)  # nothing recorded for the failed campaigns
            assert set(recorded.values()) == {("sent", None, 1)}

            # the next pass: the good campaigns have nothing left, the bad ones fail again, alone
            again = r.run_once(at(minutes=2))
            assert again.total("sent") == 0 and set(again.failed_campaigns) == {"type-error", "overflow"}
            assert len(smtp.keys()) == 2 * N
        finally:
            r.close()


def test_plan_and_explain_still_raise_without_a_failures_dict(project):
    """``due`` without ``failures`` keeps ending at the first error (callers that report it themselves)."""
    project.load({"first": campaign("first")}, customers=customers(2), orders=orders(2))
    r = Reconciler(with_bad_campaigns(load_project(project)))
    try:
        with pytest.raises(OverflowError):
            list(r.due(at(minutes=1), [r.project.campaign("overflow")]))
    finally:
        r.close()


@pytest.mark.parametrize("project", ["duckdb"], indirect=True)
def test_run_once_exits_non_zero_naming_the_campaign_and_sends_the_rest(project):
    """``city > 5`` passes validation (city is an extra attribute of unknown type) and DuckDB refuses it."""
    with SmtpSink() as smtp:
        configure(project, smtp.port)
        bad = campaign("city-number", priority=100).replace("stop: [unsubscribed]", 'audience: "city > 5"\n    stop: [unsubscribed]')
        project.load({"first": campaign("first"), "city-number": bad},
                     customers=customers(N, city="Berlin"), orders=orders(N))
        validated = subprocess.run(ENGINE + ["--project", str(project), "validate"], capture_output=True, text=True,
                                   timeout=120)
        assert validated.returncode == 0, validated.stdout + validated.stderr
        planned = subprocess.run(ENGINE + ["--project", str(project), "plan", "--as-of", "2025-01-06T12:01:00Z",
                                           "--format", "jsonl", "--quiet"], capture_output=True, text=True, timeout=120)
        assert planned.returncode == 1, planned.stdout + planned.stderr
        assert "campaign city-number could not be planned" in planned.stderr and "Traceback" not in planned.stderr
        assert planned.stdout.count('"campaign": "first"') == N, planned.stdout  # the others are planned

        result = subprocess.run(ENGINE + ["--project", str(project), "run", "--once", "--as-of", "2025-01-06T12:01:00Z",
                                          "--quiet"], capture_output=True, text=True, timeout=120)

        assert result.returncode == 1, result.stdout + result.stderr
        assert "Traceback" not in result.stderr and "Internal error" not in result.stderr
        assert "campaign city-number failed" in result.stderr and "VARCHAR" in result.stderr
        assert sorted(smtp.keys()) == expected_keys("first")


# --- the service ------------------------------------------------------------------------------

CITY_NUMBER = """\
name: city-number
priority: 100
trigger:
  order_placed: {}
audience: "city > 5"
steps:
  - {id: mail, delay: 0m, freshness: 30d, channel: email, template: second-order/nudge.email.j2}
"""
HEALTH_TIMEOUT = 3  # seconds an endpoint may take to answer while the service refuses the bomb


def test_the_service_reports_a_failing_campaign_and_survives_an_alias_bomb(tmp_path, service_factory):
    """A running service: a campaign the warehouse refuses shows in /readyz, the metric and the log while the
    others send; then an alias bomb dropped into campaigns.d/ is refused at the next reload, /healthz and
    /readyz keep answering within a short timeout, and passes go on with the old campaigns."""
    from servers import free_port
    from test_service import ENGINE as SERVICE, START_BOUND, atomic_write, live_project, metric

    with SmtpSink() as smtp:
        root = live_project(tmp_path / "project", customers=200, smtp_port=smtp.port)
        (root / "campaigns.d" / "city-number.yaml").write_text(CITY_NUMBER)
        port = free_port()
        service = service_factory(SERVICE + ["run", "--interval", "1s", "--metrics-port", str(port), "--log-format", "json"],
                                  root, port=port)
        service.wait_for(lambda: service.passes() >= 1, "the first pass", timeout=START_BOUND)

        # the failing campaign is named everywhere; the others sent
        failed = service.events("campaign.failed")
        assert failed and failed[0]["campaign"] == "city-number" and "VARCHAR" in failed[0]["reason"]
        assert metric(service.metrics(), "engine_campaign_failures_total", campaign="city-number") >= 1
        status, body = service.get("/readyz")
        ready = json.loads(body)
        assert status == 200 and "city-number" in ready["failed_campaigns"], body
        assert smtp.keys() and not any(key.startswith("city-number:") for key in smtp.keys())
        assert metric(service.metrics(), "engine_messages_sent_total", campaign="second-order") > 0

        # the bomb: refused at the next reload, while health and readiness answer and passes go on
        bomb = (Path(__file__).parent / "corpus" / "hostile" / "alias-bomb.yaml").read_text()
        passes = service.passes()
        atomic_write(root / "campaigns.d" / "alias-bomb.yaml", bomb)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            started = time.monotonic()
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=HEALTH_TIMEOUT) as response:
                assert response.status == 200
            # /readyz must answer in time; under a loaded machine a 1 s interval can make the last pass
            # briefly 'stale' (503) while the bomb is refused - an answer, not a hang
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=HEALTH_TIMEOUT) as response:
                    assert response.status == 200
            except urllib.error.HTTPError as exc:
                assert exc.code == 503 and "stale" in json.loads(exc.read())["checks"]["last_pass"], exc.code
            assert time.monotonic() - started < 2 * HEALTH_TIMEOUT
            if service.events("config.rejected") and service.passes() >= passes + 3:
                break
            time.sleep(0.2)
        else:
            pytest.fail(f"no rejection and three passes within 60 s (passes {passes} -> {service.passes()})")
        invalid = service.events("config.invalid")
        assert any(e["file"].endswith("alias-bomb.yaml") and "expands to more than" in e["message"] for e in invalid)
        service.wait_for(lambda: service.get("/readyz")[0] == 200, "ready again after the refused reload", timeout=30)
        detail = json.loads(service.get("/readyz")[1])
        assert detail["config"]["valid"] is False and "second-order" in detail["campaigns"]
        assert "alias-bomb" not in detail["campaigns"]
        code, _ = service.stop()
        assert code == 0
