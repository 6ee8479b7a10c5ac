"""engine stats and the report: responses (engine_events) per campaign, step, variant and kind, next to
conversions; A/B variants compared by conversion and by click rate.

The ledger rows and the events are written through the ledger (``write_new``, ``record_events``) into real
DuckDB / SQLite / PostgreSQL databases, the orders into the shop's table; every figure is checked against a
plain count of what the test recorded.
"""
from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import pytest
from click.testing import CliRunner

from conftest import copy_project, database_url, load_history, write
from engine import Reconciler, load_project
from engine.cli.main import main
from engine.state.events import Event, event_id
from engine.state.ledger import Record, message_key
from engine.tools.report import render_report
from engine.tools.stats import StatsReader
from engine.tools.stats_output import write_stats
from engine.tools.uplift import compare

UTC = timezone.utc
T0 = datetime(2025, 3, 3, 9, 0)  # naive UTC, as stored

CAMPAIGN = """
name: ab
trigger:
  registration: {}
conversion_window: 7d
steps:
  - id: hello
    delay: 1d
    variants:
      - id: a
        percent: 50
        channel: email
        template: registration/first-order.email.j2
      - id: b
        percent: 50
        channel: email
        template: registration/first-order.email.j2
  - id: later
    delay: 2d
    channel: sms
    template: re-engage/last-call.sms.j2
"""

A = range(1, 51)      # variant a of step hello
B = range(51, 101)    # variant b
SMS = range(1, 11)    # step later, by sms, a day after hello
HELLO_AT, LATER_AT = T0 + timedelta(days=1), T0 + timedelta(days=2)


def key(step: str, cid: int) -> str:
    return message_key("ab", step, str(cid), str(cid))


def hello(cid: int) -> str:
    return key("hello", cid)


#: (message key, type, machine, url) of every event the test records
EVENTS = (
    [(hello(c), "delivered", False, None) for c in [*A, *B] if c not in (49, 50)]
    + [(hello(c), "open", False, None) for c in range(1, 21)]
    + [(hello(c), "open", True, None) for c in range(21, 26)]          # machine opens only
    + [(hello(c), "click", False, "https://shop.example/a") for c in range(1, 11)]
    + [(hello(1), "click", False, "https://shop.example/b")]           # a second link: one more click, same message
    + [(hello(c), "click", True, "https://shop.example/a") for c in range(11, 14)]  # link scanner
    + [(hello(50), "bounce", False, None), (hello(49), "complaint", False, None), (hello(48), "soft_bounce", False, None)]
    + [(hello(c), "open", False, None) for c in range(51, 91)]
    + [(hello(c), "click", False, "https://shop.example/a") for c in range(51, 81)]
    + [(key("later", c), "delivered", False, None) for c in range(1, 9)]
    + [(key("later", c), "click", False, "https://shop.example/s") for c in (1, 2)]
    + [(key("later", 9), "undelivered", False, None)]
)
#: customers with an order within the window after their last message (a: 11-16 got no sms; b: 51-65)
BUYERS = [*range(11, 17), *range(51, 66)]


def customer(i: int) -> dict:
    return {"customer_id": i, "email": f"c{i}@example.com", "phone": f"+4915100{i:05d}", "first_name": f"C{i}",
            "created_at": T0, "timezone": None}


def build(tmp_path, monkeypatch, backend: str, separate_ledger: bool = False) -> Reconciler:
    root = copy_project(tmp_path / "project")
    for path in (root / "campaigns.d").glob("*.yaml"):
        path.unlink()
    write(root / "campaigns.d" / "ab.yaml", CAMPAIGN)
    url = database_url(backend, tmp_path)
    monkeypatch.setenv("ENGINE_WAREHOUSE_URL", url)
    if separate_ledger:
        monkeypatch.setenv("ENGINE_LEDGER_URL", f"sqlite:///{tmp_path / 'ledger.db'}")
    orders = [{"order_id": 1000 + c, "customer_id": c, "created_at": T0 + timedelta(days=3), "status": "completed",
               "total": 20} for c in BUYERS]
    load_history(url, customers=[customer(i) for i in range(1, 101)], orders=orders)
    reconciler = Reconciler(load_project(root))
    ledger = reconciler.ledger
    ledger.write_new([Record(hello(c), "ab", "hello", str(c), str(c), "email", "sent", due_at=HELLO_AT, trigger_at=T0,
                             variant="a" if c in A else "b") for c in [*A, *B]], HELLO_AT)
    ledger.write_new([Record(key("later", c), "ab", "later", str(c), str(c), "sms", "sent", due_at=LATER_AT,
                             trigger_at=T0, variant="default") for c in SMS], LATER_AT)
    events = [Event(event_id(t, k, "machine" if m else "", url or ""), k, t, HELLO_AT + timedelta(hours=1), machine=m,
                    provider="tracking", url=url) for k, t, m, url in EVENTS]
    assert len(ledger.record_events(events, T0 + timedelta(days=3))) == len(EVENTS)
    assert ledger.record_events(events, T0 + timedelta(days=4)) == []  # a replay counts nothing twice
    ledger.unsubscribe("47", "email", "link", HELLO_AT + timedelta(hours=2))   # after hello (variant a)
    ledger.unsubscribe("3", "sms", "link", LATER_AT + timedelta(hours=2))      # after later (sms)
    return reconciler


def unique(keys: set[str], event_type: str, machine: bool = False) -> int:
    return len({k for k, t, m, _ in EVENTS if t == event_type and k in keys and (machine or not m)})


def read(reconciler, **kwargs):
    reader = StatsReader(reconciler.config, reconciler.warehouse, reconciler.ledger, **kwargs)
    return reader.campaign(reconciler.project.campaign("ab"))


@pytest.mark.parametrize("backend", ["duckdb", "sqlite", "postgres"])
def test_responses_per_step_variant_and_kind(tmp_path, monkeypatch, backend):
    reconciler = build(tmp_path, monkeypatch, backend)
    try:
        stats = read(reconciler)
    finally:
        reconciler.close()
    a, b = {hello(c) for c in A}, {hello(c) for c in B}
    sms = {key("later", c) for c in SMS}
    variants = {(v.step, v.variant): v for v in stats.variants}
    assert list(variants) == [("hello", "a"), ("hello", "b"), ("later", "default")]
    for keys, figures in ((a, variants["hello", "a"]), (b, variants["hello", "b"]), (sms, variants["later", "default"]),
                          (a | b, stats.steps[0]), (sms, stats.steps[1]), (a | b | sms, stats.total)):
        e = figures.engagement
        assert figures.sent == len(keys)
        assert (e.delivered, e.opened, e.clicked, e.bounced, e.soft_bounced, e.complained, e.undelivered) == (
            unique(keys, "delivered"), unique(keys, "open"), unique(keys, "click"), unique(keys, "bounce"),
            unique(keys, "soft_bounce"), unique(keys, "complaint"), unique(keys, "undelivered"))
        assert e.clicks == len([k for k, t, m, _ in EVENTS if t == "click" and k in keys and not m])
        assert figures.click_rate == unique(keys, "click") / len(keys)
    # the scenario's own numbers: machine opens and scanner clicks are left out
    assert (variants["hello", "a"].engagement.opened, variants["hello", "a"].engagement.clicked,
            variants["hello", "a"].engagement.clicks) == (20, 10, 11)
    kinds = {k.kind: k for k in stats.kinds}
    assert (kinds["email"].sent, kinds["email"].engagement.clicked, kinds["sms"].engagement.clicked) == (100, 40, 2)
    assert (kinds["email"].engagement.bounced, kinds["email"].engagement.complained) == (1, 1)
    # unsubscribes: after the last message of the campaign before them, per step, variant and kind
    assert (variants["hello", "a"].unsubscribed, variants["hello", "b"].unsubscribed,
            variants["later", "default"].unsubscribed) == (1, 0, 1)
    assert (kinds["email"].unsubscribed, kinds["sms"].unsubscribed, stats.total.unsubscribed) == (1, 1, 2)
    # conversions per variant and kind, next to the step's
    assert (variants["hello", "a"].reached.customers, variants["hello", "a"].reached.converted) == (50, 6)
    assert (variants["hello", "b"].reached.converted, variants["hello", "b"].reached.revenue) == (15, 300.0)
    assert (kinds["email"].reached.converted, stats.steps[0].reached.converted) == (21, 21)
    # the A/B comparison: b against a, by conversion and by click rate, with the uplift's z-test
    [ab] = stats.ab_tests
    assert (ab.step, ab.control, ab.variant) == ("hello", "a", "b")
    assert ab.conversion == compare(15, 50, 6, 50)
    assert ab.clicks == compare(30, 50, 10, 50) and ab.clicks.p_value < 0.05
    assert ab.as_dict()["clicks"]["verdict"].startswith("significant at 5 %")


def test_machine_events_on_request_and_a_ledger_of_its_own(tmp_path, monkeypatch):
    reconciler = build(tmp_path, monkeypatch, "sqlite", separate_ledger=True)
    assert not reconciler.ledger_shares_warehouse
    try:
        default, machine = read(reconciler, batch_size=7), read(reconciler, include_machine=True)
    finally:
        reconciler.close()
    a = {hello(c) for c in A}
    va = {(v.step, v.variant): v for v in default.variants}["hello", "a"]
    ma = {(v.step, v.variant): v for v in machine.variants}["hello", "a"]
    assert (va.engagement.opened, ma.engagement.opened) == (unique(a, "open"), unique(a, "open", machine=True)) == (20, 25)
    assert (va.engagement.clicked, ma.engagement.clicked) == (10, 13)
    # the VALUES path (messages shipped to the warehouse in batches) attributes the same conversions
    assert (va.reached.converted, {(v.step, v.variant): v for v in default.variants}["hello", "b"].reached.converted) == (6, 15)
    assert machine.include_machine and not default.include_machine


def test_text_json_report_and_the_command(tmp_path, monkeypatch):
    reconciler = build(tmp_path, monkeypatch, "duckdb")
    root = reconciler.project.config.root
    try:
        stats = read(reconciler)
    finally:
        reconciler.close()
    import io

    out = io.StringIO()
    write_stats([stats], "text", out, "All messages")
    text = out.getvalue()
    assert "by variant: hello/a: sent 50, converted 6 of 50 = 12.0%, click rate 20.0% (delivered 48, opened 20, " \
           "clicked 10 = 20.0%, bounced 1, complained 1, unsubscribed 1)" in text
    assert ("A/B hello: b vs a: conversion 30.0% vs 12.0%, " in text and "click rate 60.0% vs 20.0%, significant at 5 %"
            in text)
    assert "email sent 100 (delivered 98, opened 60, clicked 40 = 40.0%, bounced 1, complained 1, unsubscribed 1)" in text
    html = render_report([stats], "All messages", "now")
    assert 'data-responses="variant hello/b"><td>variant hello/b</td><td data-r="sent">50</td>' in html
    assert 'data-ab="hello:b"' in html
    result = CliRunner().invoke(main, ["--project", str(root), "stats", "--format", "json", "--include-machine", "--quiet"])
    assert result.exit_code == 0, result.output
    [data] = json.loads(result.output)["campaigns"]
    variant_a = data["variants"][0]
    assert (variant_a["variant"], variant_a["engagement"]["opened"], variant_a["engagement"]["click_rate"]) == ("a", 25, 13 / 50)
    assert data["ab_tests"][0]["clicks"]["control_rate"] == 13 / 50 and data["machine_events_included"] is True
    csv_out = CliRunner().invoke(main, ["--project", str(root), "stats", "--format", "csv", "--quiet"])
    assert csv_out.exit_code == 0 and "click_rate" in csv_out.output.splitlines()[0]
