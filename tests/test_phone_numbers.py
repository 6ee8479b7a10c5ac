"""Phone numbers: validated and sent in E.164 form, an invalid one skipped as invalid_contact and never posted.

A real pass against the loopback SMS provider (tests/servers.py) that records
every request it receives; the channel's ``default_region: DE`` reads numbers
written without a country code.
"""
from __future__ import annotations

import csv
import io

from click.testing import CliRunner

from engine import Reconciler, load_project
from engine.channel_kinds import sms
from engine.cli.main import main
from engine.spec.project import check_project
from servers import SmsProvider, SmtpSink
from test_delivery import at, campaign, configure, customers, orders, project, statuses  # noqa: F401 - the fixture

NUMBERS = {1: "abc-not-a-number", 2: "+49 151 2345 6789", 3: "0151 23456789", 4: "+49 151 2345"}


def sms_project(project, port: int, url: str, region: str | None = "DE"):
    configure(project, port, url)
    if region is not None:
        path = project / "engine.yaml"
        path.write_text(path.read_text().replace("    from: Shop\n", f"    from: Shop\n    default_region: {region}\n", 1))
    rows = customers(4)
    for row in rows:
        row["phone"] = NUMBERS[row["customer_id"]]
    project.load({"texts": campaign("texts", channel="sms", template="re-engage/last-call.sms.j2")},
                 customers=rows, orders=orders(4))


def test_valid_numbers_are_posted_in_e164_and_invalid_ones_never(project):
    with SmtpSink() as smtp, SmsProvider() as provider:
        sms_project(project, smtp.port, provider.url)
        r = Reconciler(load_project(project))
        try:
            planned = {m.customer_id: (m.action, m.reason) for batch in r.due(at(minutes=1)) for m in batch}
            assert planned == {"1": ("skip", "invalid_contact"), "2": ("send", None), "3": ("send", None),
                               "4": ("skip", "invalid_contact")}
            report = r.run_once(at(minutes=1))
            assert report.counts[("texts", "mail", "skipped:invalid_contact")] == 2
            assert report.counts[("texts", "mail", "sent")] == 2
            assert sorted(q["body"]["to"] for q in provider.requests) == ["+4915123456789", "+4915123456789"]
            assert not any("abc" in q["body"]["to"] for q in provider.requests)
            ledger = statuses(r)
            assert ledger["texts:mail:1:1"][:2] == ledger["texts:mail:4:4"][:2] == ("skipped", "invalid_contact")
            assert r.run_once(at(minutes=2)).counts == {}  # recorded: not decided again
        finally:
            r.close()
        assert len(provider.requests) == 2
        runner = CliRunner()
        shown = runner.invoke(main, ["--project", str(project), "stats", "texts", "--format", "csv"])
        assert shown.exit_code == 0, shown.output
        rows = {row["step"]: row for row in csv.DictReader(io.StringIO(shown.output))}
        assert rows["mail"]["skipped_by_reason"] == "invalid_contact=2"
        plan = runner.invoke(main, ["--project", str(project), "plan", "--as-of", "2025-01-06T12:01:00Z",
                                    "--include-skipped", "--format", "csv"])
        assert plan.exit_code == 0, plan.output


def test_without_a_default_region_only_international_numbers_are_valid(project):
    with SmtpSink() as smtp, SmsProvider() as provider:
        sms_project(project, smtp.port, provider.url, region=None)
        r = Reconciler(load_project(project))
        try:
            planned = {m.customer_id: m.reason for batch in r.due(at(minutes=1)) for m in batch}
        finally:
            r.close()
    assert planned == {"1": "invalid_contact", "2": None, "3": "invalid_contact", "4": "invalid_contact"}


def test_the_plan_lists_the_invalid_number_as_a_skip(project):
    with SmtpSink() as smtp, SmsProvider() as provider:
        sms_project(project, smtp.port, provider.url)
        result = CliRunner().invoke(main, ["--project", str(project), "plan", "--as-of", "2025-01-06T12:01:00Z",
                                           "--include-skipped", "--format", "csv"])
    assert result.exit_code == 0, result.output
    rows = {row["customer_id"]: row for row in csv.DictReader(io.StringIO(result.output))}
    assert rows["1"]["reason"] == "invalid_contact" and rows["4"]["reason"] == "invalid_contact"
    assert rows["2"]["reason"] == "" and rows["3"]["reason"] == ""


def test_an_unknown_default_region_is_a_validation_error(project):
    configure(project, 25, "http://127.0.0.1:9/none")
    path = project / "engine.yaml"
    path.write_text(path.read_text().replace("    from: Shop\n", "    from: Shop\n    default_region: XX\n", 1))
    _, issues = check_project(project)
    errors = [i for i in issues if i.severity == "error"]
    assert len(errors) == 1 and "default_region" in errors[0].message and "DE" in errors[0].fix
    assert errors[0].line is not None


def test_e164_reads_the_region():
    assert sms.e164("0151 23456789", {"default_region": "de"}) == "+4915123456789"
    assert sms.e164("0151 23456789", {}) is None
    assert sms.e164("+1 202-555-0123", {"default_region": "DE"}) == "+12025550123"
    assert sms.e164("abc-not-a-number", {"default_region": "DE"}) is None
