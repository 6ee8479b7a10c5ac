"""Response filter attributes: last_opened_at, last_clicked_at, last_engaged_at, emails_opened(N),
emails_clicked(N) and last_engaged_at('<kind>'), over the ledger's events, in the due queries.

One hand-built history of responses (recorded through ``Ledger.record_events``, as the tracking
endpoints and webhooks record them) and a probe campaign with one step per condition: the due set
must be the one worked out by hand, on DuckDB, SQLite and PostgreSQL with the ledger in the
warehouse's database, and with the ledger in a SQLite file of its own (the events shipped to the
warehouse as a temporary table, or as VALUES for dialects without temporary tables).
"""
from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import pytest
from click.testing import CliRunner

from conftest import copy_project, database_url, load_history, write
from engine import Reconciler, load_project
from engine.cli.main import main
from engine.errors import FilterError
from engine.sql import responses
from engine.sql.responses import CLICK, OPEN
from engine.sql.compile import render_sql
from engine.sql.due import due_query
from engine.sql.filter_types import attribute_kinds, check_types, filter_attributes
from engine.sql.filters import parse_filter
from engine.sql.shipping import state_needs, values_relation
from engine.state.events import ENGAGEMENT, EVENT_TYPES, Event, event_id
from engine.state.ledger import Record
from engine.state.tables import EVENTS_TABLE
from engine.state.warehouse import Database

UTC = timezone.utc
NOW = datetime(2025, 3, 1, 12, 0)  # naive UTC
DAY = timedelta(days=1)

#: step -> its audience: one condition each
PROBES = {
    "opened-recently": "last_opened_at > days_ago(30)",
    "clicked-long-ago": "last_clicked_at < days_ago(90)",
    "engaged": "last_engaged_at >= days_ago(90)",
    "opened-twice": "emails_opened(90) >= 2",
    "no-email-clicks": "emails_clicked(90) = 0",
    "clicked-one-email": "emails_clicked(90) = 1",
    "sms": "last_engaged_at('sms') IS NOT NULL",
    "scanned-letter": "last_engaged_at('letter') > days_ago(10)",
}
#: (customer, channel, [(type, days before NOW, machine, url)]) one past message each
RESPONSES = [
    (1, "email", [("open", 10, False, None)]),
    (1, "email", [("open", 50, False, None)]),
    (2, "email", [("open", 10, True, None)]),              # a machine open: not engagement
    (2, "email", [("click", 100, False, "https://beanandbrew.example/a")]),
    (3, "sms", [("click", 5, False, "https://beanandbrew.example/s")]),
    (4, "letter", [("scan", 3, False, None)]),
    (5, "email", [("open", -1, False, None)]),               # after NOW: not yet happened
    (6, "email", [("click", 20, False, "https://beanandbrew.example/a"), ("click", 19, False, "https://beanandbrew.example/b")]),
    (7, "email", [("bounce", 2, False, None)]),              # not a response of engagement
]
#: worked out by hand from RESPONSES
EXPECTED = {
    "opened-recently": {1},
    "clicked-long-ago": {2},
    "engaged": {1, 3, 4, 6},
    "opened-twice": {1},
    "no-email-clicks": {1, 2, 3, 4, 5, 7, 8},
    "clicked-one-email": {6},
    "sms": {3},
    "scanned-letter": {4},
}
CUSTOMERS = range(1, 9)


def probe_campaign(root) -> None:
    for path in (root / "campaigns.d").glob("*.yaml"):
        path.unlink()
    steps = "".join(f"  - id: {step}\n    delay: 0m\n    channel: email\n    template: welcome/introduce.email.j2\n"
                    f"    audience: \"{audience}\"\n" for step, audience in PROBES.items())
    write(root / "campaigns.d" / "probe.yaml", "name: probe\ntrigger:\n  registration: {}\nsteps:\n" + steps)


def record_history(ledger) -> None:
    """The past messages and their responses, recorded through the ledger's interface."""
    records, events = [], []
    for index, (customer, channel, happened) in enumerate(RESPONSES):
        key = f"past:s:{customer}:{index}"
        records.append(Record(message_key=key, campaign="past", step="s", customer_id=str(customer),
                              trigger_key=str(index), channel=channel, status="sent", due_at=NOW - 200 * DAY))
        for kind, days, machine, url in happened:
            events.append(Event(event_id=event_id(kind, key, url or "", "machine" if machine else "human"),
                                message_key=key, type=kind, occurred_at=NOW - days * DAY, machine=machine,
                                provider="tracking", url=url))
    ledger.write_new(records, NOW - 200 * DAY)
    recorded = ledger.record_events(events, NOW)
    assert len(recorded) == len(events)
    assert ledger.record_events(events, NOW) == []  # a replay records nothing


def shop_project(tmp_path, monkeypatch, backend: str, separate_ledger: bool = False):
    root = copy_project(tmp_path / "project")
    probe_campaign(root)
    if separate_ledger:
        text = (root / "engine.yaml").read_text()
        (root / "engine.yaml").write_text(text.replace("demo:", f"ledger:\n  url: sqlite:///{tmp_path / 'ledger.db'}\n\ndemo:", 1))
    url = database_url(backend, tmp_path)
    monkeypatch.setenv("ENGINE_WAREHOUSE_URL", url)
    load_history(url, customers=[{"customer_id": c, "email": f"c{c}@example.com", "first_name": f"C{c}",
                                  "created_at": NOW - timedelta(hours=1)} for c in CUSTOMERS])
    reconciler = Reconciler(load_project(root))
    record_history(reconciler.ledger)
    return reconciler


def due_by_step(reconciler: Reconciler) -> dict[str, set[int]]:
    found: dict[str, set[int]] = {step: set() for step in PROBES}
    for batch in reconciler.due(NOW.replace(tzinfo=UTC)):
        for message in batch:
            found[message.step].add(int(message.customer_id))
    return found


@pytest.mark.parametrize("backend", ["duckdb", "sqlite", "postgres"])
def test_response_attributes_give_the_hand_worked_due_sets(tmp_path, monkeypatch, backend):
    reconciler = shop_project(tmp_path, monkeypatch, backend)
    try:
        assert due_by_step(reconciler) == EXPECTED
    finally:
        reconciler.close()


@pytest.mark.parametrize("backend", ["duckdb", "postgres"])
def test_with_the_ledger_elsewhere_the_events_are_shipped_and_the_due_sets_are_the_same(tmp_path, monkeypatch, backend):
    reconciler = shop_project(tmp_path, monkeypatch, backend, separate_ledger=True)
    try:
        assert not reconciler.config.ledger_shares_warehouse
        assert due_by_step(reconciler) == EXPECTED
    finally:
        reconciler.close()


def test_shipped_as_values_the_events_give_the_same_due_sets(tmp_path, monkeypatch):
    """The VALUES transport (BigQuery, Spark, ...) run on DuckDB: the ledger's engagement rows as a CTE."""
    reconciler = shop_project(tmp_path, monkeypatch, "duckdb", separate_ledger=True)
    try:
        config = reconciler.config
        [campaign] = reconciler.project.campaigns
        assert state_needs([campaign], config).responses
        rows = reconciler.ledger.engagement_rows()
        assert len(rows) == 8  # the human opens, clicks and scans; not the machine open nor the bounce
        state = {EVENTS_TABLE: values_relation(EVENTS_TABLE, rows, config.dialect)}
        sql = render_sql(due_query(campaign, config, NOW.replace(tzinfo=UTC), exclude_ledger=False, state=state),
                         config.dialect)
        assert EVENTS_TABLE + " " not in sql and "VALUES" in sql
        found: dict[str, set[int]] = {step: set() for step in PROBES}
        for row in reconciler.warehouse.fetch_all(sql):
            values = row._mapping
            if values["stopped_by"] is None:
                found[values["step"]].add(int(values["customer_id"]))
        assert found == EXPECTED
    finally:
        reconciler.close()


def test_the_due_query_joins_one_aggregate_of_the_events_not_a_lookup_per_customer(tmp_path):
    root = copy_project(tmp_path)
    probe_campaign(root)
    project = load_project(root)
    sql = render_sql(due_query(project.campaigns[0], project.config, NOW.replace(tzinfo=UTC), exclude_ledger=False),
                     "duckdb")
    assert sql.count(f"FROM {EVENTS_TABLE}") == 1
    assert sql.count("GROUP BY r.customer_id") == 1
    assert "LEFT JOIN response_facts AS fr" in sql


def test_the_vocabulary_is_the_ledgers():
    assert responses.ENGAGEMENT == ENGAGEMENT
    assert set(responses.ENGAGEMENT) <= set(EVENT_TYPES)


def test_unknown_attributes_name_the_response_attributes(tmp_path):
    config = load_project(copy_project(tmp_path)).config
    with pytest.raises(FilterError) as caught:
        parse_filter("opened_last_email_at < days_ago(90)", filter_attributes(config))
    assert "unknown attribute 'opened_last_email_at'" in str(caught.value)
    for name in ("last_opened_at", "last_clicked_at", "last_engaged_at"):
        assert name in caught.value.fix
    with pytest.raises(FilterError) as caught:
        parse_filter("last_opend_at < days_ago(90)", filter_attributes(config))
    assert "did you mean 'last_opened_at'" in str(caught.value)
    with pytest.raises(FilterError) as caught:
        parse_filter("last_engaged_at(sms) IS NULL", filter_attributes(config))
    assert "one string literal" in str(caught.value) and "last_engaged_at('sms'), in quotes" in caught.value.fix


@pytest.mark.parametrize("text, problem, fix", [
    ("emails_opened(90d) > 0", "plain number", "emails_opened(90)"),
    ("last_engaged_at('fax') IS NULL", "no channel kind 'fax'", "last_engaged_at('email')"),
    ("last_engaged_at(90) IS NULL", "one string literal", "one of "),
    ("emails_clicked('90') > 1", "one number literal", None),
    ("emails_opened(99999) > 0", "beyond the largest argument", None),
])
def test_bad_response_functions_are_refused_with_the_fix(tmp_path, text, problem, fix):
    config = load_project(copy_project(tmp_path)).config
    with pytest.raises(FilterError) as caught:
        parse_filter(text, filter_attributes(config))
    assert problem in str(caught.value)
    if fix:
        assert fix in caught.value.fix


def test_response_attributes_are_typed(tmp_path):
    config = load_project(copy_project(tmp_path)).config
    kinds = attribute_kinds(config)
    for text in ("last_opened_at > 3", "emails_opened(90) > '2025-01-01'", "last_engaged_at('sms') LIKE 'x%'"):
        with pytest.raises(FilterError):
            check_types(parse_filter(text, filter_attributes(config)), kinds, text)
    check_types(parse_filter("emails_clicked(30) >= 1 AND last_clicked_at < days_ago(7)", filter_attributes(config)),
                kinds, "")


def test_validate_names_the_file_of_a_bad_response_filter(tmp_path):
    root = copy_project(tmp_path)
    path = root / "campaigns.d" / "re-activate.yaml"
    path.write_text(path.read_text().replace("audience: phone IS NOT NULL", "audience: last_engaged_at(sms) IS NULL"))
    result = CliRunner().invoke(main, ["--project", str(root), "validate"])
    assert result.exit_code != 0
    assert "re-activate.yaml" in result.output and "'sms'" in result.output


# --- engine customer: each message with its responses ----------------------------------------------------


def test_the_customer_timeline_shows_each_message_with_its_responses(tmp_path, monkeypatch):
    root = copy_project(tmp_path / "project")
    for path in (root / "campaigns.d").glob("*.yaml"):
        if path.stem != "abandoned-cart":
            path.unlink()
    url = database_url("duckdb", tmp_path)
    monkeypatch.setenv("ENGINE_WAREHOUSE_URL", url)
    load_history(url, customers=[{"customer_id": 1, "email": "anna@example.com", "first_name": "Anna",
                                  "created_at": NOW - 300 * DAY}],
                 checkouts=[{"checkout_id": 500, "customer_id": 1, "created_at": NOW - timedelta(hours=2), "total": 30}])
    reconciler = Reconciler(load_project(root))
    try:
        reconciler.run_once(NOW.replace(tzinfo=UTC))
        [key] = [row["message_key"] for row in reconciler.ledger.customer_messages("1", ("message_key",))]
        link = "https://beanandbrew.example/cart?token=s3cr3t-value&utm_source=engine"
        reconciler.ledger.record_events([
            Event(event_id(OPEN, key, "machine"), key, "open", NOW + timedelta(minutes=1), machine=True, provider="tracking"),
            Event(event_id(OPEN, key, "human"), key, "open", NOW + timedelta(hours=2), provider="tracking"),
            Event(event_id(CLICK, key, link), key, "click", NOW + timedelta(hours=3), provider="tracking", url=link),
            Event("ses:abc-1", key, "complaint", NOW + timedelta(days=1), provider="ses", detail="abuse"),
        ], NOW + timedelta(days=1))
        result = CliRunner().invoke(main, ["--project", str(root), "customer", "1", "--format", "json"],
                                    env={"ENGINE_WAREHOUSE_URL": url})
        assert result.exit_code == 0, result.output
        [message] = json.loads(result.output)["ledger"]
        assert message["opened_at"] == str(NOW + timedelta(hours=2))  # the human open, not the machine's
        assert message["clicked_at"] == str(NOW + timedelta(hours=3))
        assert message["complained_at"] == str(NOW + timedelta(days=1)) and message["bounced_at"] is None
        assert [r["type"] for r in message["responses"]] == ["open", "open", "click", "complaint"]
        assert message["responses"][0]["machine"] is True
        text = CliRunner().invoke(main, ["--project", str(root), "customer", "1"],
                                  env={"ENGINE_WAREHOUSE_URL": url}).output
        assert "s3cr3t-value" not in result.output + text  # a secret link parameter is masked
        assert "token=***" in text and "utm_source=engine" in text
        assert f"opened at {NOW + timedelta(minutes=1)} (machine: not engagement)" in text
        assert f"opened at {NOW + timedelta(hours=2)}" in text
        assert f"complained at {NOW + timedelta(days=1)}  (abuse)" in text
    finally:
        reconciler.close()


# --- retention --------------------------------------------------------------------------------------------


class Monotonic:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_the_service_deletes_events_older_than_the_retention_once_an_hour(tmp_path, caplog):
    from engine.clock import FixedClock
    from engine.service.loop import RETENTION_EVERY, Service

    root = copy_project(tmp_path / "project")
    for path in (root / "campaigns.d").glob("*.yaml"):
        path.unlink()
    text = (root / "engine.yaml").read_text()
    text = text.replace("customers: 2000", "customers: 10").replace(
        "defaults:", "policies:\n  responses:\n    retention: 30d\n\ndefaults:", 1)
    (root / "engine.yaml").write_text(text)
    now = datetime(2025, 1, 10, tzinfo=UTC)
    monotonic = Monotonic()
    service = Service(root, interval=60, metrics_port=0, monotonic=monotonic, clock=FixedClock(now))
    try:
        service.start()
        ledger = service._reconciler.ledger
        ledger.write_new([Record(message_key="past:s:1:1", campaign="past", step="s", customer_id="1",
                                 trigger_key="1", channel="email", status="sent")], NOW - 90 * DAY)
        naive = now.replace(tzinfo=None)
        ledger.record_events([Event(event_id(OPEN, "past:s:1:1", "old"), "past:s:1:1", "open", naive - 31 * DAY),
                              Event(event_id(CLICK, "past:s:1:1", "new"), "past:s:1:1", "click", naive - 29 * DAY)], naive)
        with caplog.at_level("INFO"):
            assert service.run_pass() is not None  # the first pass applies the retention
        assert [e["type"] for e in ledger.customer_events("1")] == ["click"]
        assert any("Deleted 1 response events" in r.getMessage() for r in caplog.records)
        assert "engine_response_events_deleted_total 1.0" in service.metrics.exposition().decode()
        ledger.record_events([Event(event_id(OPEN, "past:s:1:1", "older"), "past:s:1:1", "open", naive - 40 * DAY)], naive)
        monotonic.now += RETENTION_EVERY - 1
        service.run_pass()  # within the hour: not again
        assert len(ledger.customer_events("1")) == 2
        monotonic.now += 1
        service.run_pass()
        assert [e["type"] for e in ledger.customer_events("1")] == ["click"]
        assert "engine_response_events_deleted_total 2.0" in service.metrics.exposition().decode()
    finally:
        service.close()


def test_config_show_lists_the_retention_and_a_too_short_one_is_refused(tmp_path):
    root = copy_project(tmp_path)
    result = CliRunner().invoke(main, ["--project", str(root), "config", "show", "--format", "json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["policies.responses.retention"] == {
        "value": "400d", "origin": "default", "secret": False}
    path = root / "engine.yaml"
    path.write_text(path.read_text().replace("defaults:", "policies:\n  responses:\n    retention: 2h\n\ndefaults:", 1))
    result = CliRunner().invoke(main, ["--project", str(root), "validate"])
    assert result.exit_code != 0
    assert "policies.responses.retention" in result.output or "engine.yaml:" in result.output
    assert "at least 1d" in result.output


@pytest.mark.parametrize("separate_ledger", [False, True])
def test_re_activate_enters_the_lapsed_readers_and_sends_them_the_email(tmp_path, monkeypatch, separate_ledger):
    """The shipped campaign end to end: its segment reads the responses when it records entries, too."""
    root = copy_project(tmp_path / "project")
    for path in (root / "campaigns.d").glob("*.yaml"):
        if path.stem != "re-activate":
            path.unlink()
    if separate_ledger:
        text = (root / "engine.yaml").read_text()
        (root / "engine.yaml").write_text(text.replace("demo:", f"ledger:\n  url: sqlite:///{tmp_path / 'ledger.db'}\n\ndemo:", 1))
    url = database_url("duckdb", tmp_path)
    monkeypatch.setenv("ENGINE_WAREHOUSE_URL", url)
    load_history(url, customers=[{"customer_id": c, "email": f"c{c}@example.com", "first_name": f"C{c}",
                                  "created_at": NOW - 400 * DAY} for c in (1, 2, 3)])
    reconciler = Reconciler(load_project(root))
    try:
        ledger = reconciler.ledger
        ledger.write_new([Record(message_key=f"past:s:{c}:1", campaign="past", step="s", customer_id=str(c),
                                 trigger_key="1", channel="email", status="sent") for c in (1, 2, 3)], NOW - 200 * DAY)
        ledger.record_events([
            Event(event_id(OPEN, "past:s:1:1"), "past:s:1:1", "open", NOW - 100 * DAY),     # lapsed
            Event(event_id(OPEN, "past:s:2:1"), "past:s:2:1", "open", NOW - 100 * DAY),
            Event(event_id(CLICK, "past:s:2:1"), "past:s:2:1", "click", NOW - 10 * DAY),    # came back
            Event(event_id(OPEN, "past:s:3:1", "m"), "past:s:3:1", "open", NOW - 100 * DAY),
            Event(event_id(OPEN, "past:s:3:1", "mm"), "past:s:3:1", "open", NOW - 5 * DAY, machine=True),  # lapsed
        ], NOW)
        report = reconciler.run_once(NOW.replace(tzinfo=UTC))
        assert not report.errors and not report.failed_campaigns
        sent = {(r["customer_id"], r["step"], r["status"]) for r in ledger.rows_where() if r["campaign"] == "re-activate"}
        assert sent == {("1", "still-reading", "sent"), ("3", "still-reading", "sent")}
    finally:
        reconciler.close()
