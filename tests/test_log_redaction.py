"""Personal data in logs: provider texts quoting addresses and numbers, through the real log path.

A pass of the service (in-process, logs configured as in production) sends SMS
to a real HTTP provider on loopback that refuses each one with an error text
from a corpus quoting IDN/Unicode email addresses and phone numbers in
international and national formats. None of them may reach the log lines,
while the things an operator needs (message keys, ISO timestamps, dates,
order ids, HTTP status codes, durations) stay verbatim. Then the same corpus
with ``personal_data`` on shows them, so the test can fail.
"""
from __future__ import annotations

import io
import json
import logging

import pytest

from engine import logs
from engine.clock import FixedClock
from engine.service.loop import Service
from servers import SmsProvider, SmtpSink, free_port
from test_delivery import at, campaign, configure, customers, orders, project  # noqa: F401 - project is a fixture

#: what providers answered, quoting the recipient ({to}: the number the engine sent to)
CORPUS = [
    "invalid recipient {to} (jörg.müller@exämple.de) for {reference} at 2025-01-10T09:30:00Z",
    "number 0151 23456789 unreachable; order 100234, took 1.250s, HTTP 422",
    "blocked 00491511234567 / ref {reference} / 2025-01-10 09:30:00",
    "landline (030) 1234567 cannot receive SMS; retry after 250 ms",
    "+49 (0)151 2345-6789 and +1 (555) 123-4567 opted out (code 21610)",
    "иван@пример.рф, anna%40example.com and 555-123-4567 refused on 10.01.2025",
    "tel:+4915112345678 / 0171.2345678 / 020 7946 0958 / +33 1 23 45 67 89: no route",
]
PERSONAL = ["jörg.müller@exämple.de", "0151 23456789", "00491511234567", "(030) 1234567", "+49 (0)151 2345-6789",
            "+1 (555) 123-4567", "иван@пример.рф", "anna%40example.com", "555-123-4567", "+4915112345678",
            "0171.2345678", "020 7946 0958", "+33 1 23 45 67 89"]
#: must NOT be redacted
KEPT = ["2025-01-10T09:30:00Z", "order 100234", "took 1.250s", "HTTP 422", "2025-01-10 09:30:00", "250 ms",
        "(code 21610)", "on 10.01.2025", "400 "]


def phones(n: int) -> list[str]:
    return [customer["phone"] for customer in customers(n)]


def failed_lines(project, personal_data: bool) -> list[dict]:
    with SmtpSink() as smtp, SmsProvider() as sms:
        configure(project, smtp.port, sms.url)
        project.load({"texts": campaign("texts", channel="sms", template="re-engage/last-call.sms.j2")},
                     customers=customers(len(CORPUS)), orders=orders(len(CORPUS)))
        for phone, text in zip(phones(len(CORPUS)), CORPUS):
            sms.status_for[phone] = 400
            sms.reply_for[phone] = text
        out = io.StringIO()
        logs.configure("info", "json", personal_data=personal_data, stream=out)
        service = Service(project, 60.0, metrics_port=free_port(), clock=FixedClock(at(minutes=1)))
        try:
            service.start()
            report = service.run_pass()
        finally:
            service.close()
            logs.configure("info", "text")
        assert report is not None and report.counts[("texts", "mail", "failed:permanent")] == len(CORPUS)
        assert len(sms.requests) == len(CORPUS)
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    return lines


def test_provider_texts_reach_the_log_without_personal_data(project):
    lines = failed_lines(project, personal_data=False)
    failed = [line for line in lines if line["event"] == "message.failed"]
    assert len(failed) == len(CORPUS)
    text = "\n".join(json.dumps(line, ensure_ascii=False) for line in lines)
    for personal in PERSONAL + phones(len(CORPUS)):
        assert personal not in text, personal
    details = "\n".join(line["detail"] for line in failed)
    for kept in KEPT:
        assert kept in details, kept
    for line in failed:  # the message key is a field and, where the provider quoted it, still in the text
        assert line["message_key"].startswith("texts:mail:") and line["level"] == "warning"
    quoted = [line for line in failed if "for texts:mail:" in line["detail"] or "ref texts:mail:" in line["detail"]]
    assert len(quoted) == 2 and all(line["message_key"] in line["detail"] for line in quoted)
    assert details.count("<phone>") == 11 and details.count("<email>") == 3  # each number and address once


def test_asked_for_personal_data_the_log_shows_it(project):
    lines = failed_lines(project, personal_data=True)
    details = "\n".join(line["detail"] for line in lines if line["event"] == "message.failed")
    for personal in PERSONAL:
        assert personal in details, personal


def test_fields_the_engine_knows_are_personal_are_never_logged_unless_asked():
    out = io.StringIO()
    logs.configure("info", "json", stream=out)
    try:
        logs.declare_personal(["customer_type", "customer_id", "status"])  # the engine's own fields stay its own
        logs.event("message.failed", "refused", logging.WARNING, to="Jörg Müller <j@x.de>", phone="0151 23456789",
                   first_name="Jörg", customer_type="company", customer_id="42", campaign="birthday", reason="permanent",
                   status=400)
    finally:
        logs.configure("info", "text")
    line = json.loads(out.getvalue())
    assert {line[k] for k in ("to", "phone", "first_name", "customer_type")} == {logs.REDACTED}
    assert (line["customer_id"], line["campaign"], line["reason"], line["status"]) == ("42", "birthday", "permanent", 400)


@pytest.mark.parametrize("text", PERSONAL)
def test_each_corpus_entry_is_redacted_in_free_text(text):
    assert text not in logs.redact(f"provider said: {text}.")


@pytest.mark.parametrize("text", ["second-order:nudge:42:1001", "abandoned-cart:reminder:1234:98765432",
                                  "welcome-series:introduce:00123456:7", "2025-01-10T09:30:00.123+01:00",
                                  "2025-01-10 09:30:00", "01.02.2025", "2025/01/10", "order 10023456", "ORD-0012345",
                                  "HTTP 422", "550 5.1.1", "took 0.041s", "250 ms", "127.0.0.1:8080", "1736500000",
                                  "uuid 01234567-89ab-cdef-0123-456789abcdef", "sms-12345678", "20250110093000"])
def test_keys_timestamps_ids_codes_and_durations_are_not_redacted(text):
    assert logs.redact(f"x {text} y") == f"x {text} y"
