"""``engine explain``: the reason it gives for each customer agrees with ``engine plan``.

One history holds a customer for every reason we know the answer to (sent,
audience excluded, stopped by ordered_again, too early, stale, long expired,
already in the ledger, unsubscribed, quiet hours); the plan is computed with
the reconciler and explain must say the same thing, with the specific reason
for the customers the plan leaves out. On every backend.
"""
from __future__ import annotations

import json
from datetime import date, datetime, timedelta, timezone

import pytest
from click.testing import CliRunner

from conftest import copy_project, database_url, load_history, write
from engine import Reconciler, load_project
from engine.cli.main import main
from engine.tools.explain import explain, format_text
from engine.state.ledger import Record, message_key

UTC = timezone.utc
T0 = datetime(2025, 1, 6, 12, 0)  # naive UTC, as stored
NOW = (T0 + timedelta(days=8)).replace(tzinfo=UTC)  # 12:00 UTC: 13:00 in Berlin, 21:00 in Tokyo

SMS_CAMPAIGN = """
name: sms-nudge
trigger:
  order_placed: {nth: 1}
audience: phone IS NOT NULL
steps:
  - id: nudge
    delay: 7d
    freshness: 2d
    channel: sms
    template: re-engage/last-call.sms.j2
"""


def customer(i, **extra):
    row = {"customer_id": i, "email": f"c{i}@example.com", "phone": None, "first_name": f"C{i}",
           "created_at": T0 - timedelta(days=400), "timezone": None}
    row.update(extra)
    return row


def order(i, customer_id, when):
    return {"order_id": i, "customer_id": customer_id, "created_at": when, "status": "completed", "total": 10}


#: customer -> (the verdict for second-order/nudge at NOW, its reason)
EXPECTED = {
    "1": ("send", None),
    "2": ("excluded", "campaign_audience"),  # no email: audience email IS NOT NULL
    "3": ("skip", "stopped"),                # ordered again the next day
    "4": ("not_yet", "too_early"),           # first order 3 days after T0: due at T0 + 10d
    "5": ("skip", "stale"),                  # due T0 + 5d, freshness 2d: stale, recorded as skipped
    "6": ("expired", "stale"),               # due 30 days ago: beyond the stale horizon
    "7": ("recorded", "sent"),               # the ledger already holds it
    "8": ("skip", "no_consent"),             # unsubscribed from all channels
}

STEP_AUDIENCE_CAMPAIGN = """
name: repeaters
trigger:
  order_placed: {nth: 1}
steps:
  - id: hello
    delay: 7d
    freshness: 2d
    audience: order_count >= 2
    variants:
      - id: paris
        audience: city = 'Paris'
        channel: email
        template: second-order/nudge.email.j2
"""


@pytest.fixture
def shop(tmp_path, backend, monkeypatch):
    root = copy_project(tmp_path / "project")
    for path in (root / "campaigns.d").glob("*.yaml"):
        if path.stem not in ("second-order", "birthday"):
            path.unlink()
    write(root / "campaigns.d" / "sms-nudge.yaml", SMS_CAMPAIGN)
    write(root / "campaigns.d" / "repeaters.yaml", STEP_AUDIENCE_CAMPAIGN)
    url = database_url(backend, tmp_path)
    monkeypatch.setenv("ENGINE_WAREHOUSE_URL", url)
    customers = [customer(1), customer(2, email=None), customer(3), customer(4), customer(5), customer(6),
                 customer(7), customer(8), customer(9, email=None, phone="+4915100000009", timezone="Asia/Tokyo"),
                 customer(11, birthday=date(1990, 1, 14)), customer(12, birthday=date(1990, 1, 20))]
    orders = [order(101, 1, T0), order(102, 2, T0), order(103, 3, T0), order(1031, 3, T0 + timedelta(days=1)),
              order(104, 4, T0 + timedelta(days=3)), order(105, 5, T0 - timedelta(days=2)),
              order(106, 6, T0 - timedelta(days=30)), order(107, 7, T0), order(108, 8, T0), order(109, 9, T0)]
    load_history(url, customers=customers, orders=orders)
    reconciler = Reconciler(load_project(root))
    key = message_key("second-order", "nudge", "7", "107")
    reconciler.ledger.write_new([Record(key, "second-order", "nudge", "7", "107", "email", "sent",
                                        trigger_at=T0, due_at=T0 + timedelta(days=7))], T0 + timedelta(days=7))
    reconciler.ledger.unsubscribe("8", "all", "test", T0)
    reconciler.root = root
    yield reconciler
    reconciler.close()


def plan(reconciler, campaign: str) -> dict[str, tuple[str, str | None]]:
    selected = [reconciler.project.campaign(campaign)]
    return {m.customer_id: (m.action, m.reason) for batch in reconciler.due(NOW, selected) for m in batch}


def verdict(reconciler, campaign: str, customer_id: str):
    [step] = explain(reconciler, campaign, customer_id, NOW).steps
    [instance] = step.instances
    return instance


def test_explain_agrees_with_the_plan_and_names_the_reason(shop):
    planned = plan(shop, "second-order")
    # the plan itself, computed independently of explain: who it holds and what it does
    assert planned == {"1": ("send", None), "3": ("skip", "stopped"), "5": ("skip", "stale"), "8": ("skip", "no_consent")}
    for customer_id, expected in EXPECTED.items():
        got = verdict(shop, "second-order", customer_id).verdict
        assert (got.status, got.reason) == expected, customer_id
        if customer_id in planned:
            assert (got.status, got.reason) == planned[customer_id]


def test_explain_shows_instances_times_filters_stops_and_ledger(shop):
    sent = verdict(shop, "second-order", "1")
    assert (sent.trigger_key, sent.due_at, sent.stale_after) == (
        "101", (T0 + timedelta(days=7)).replace(tzinfo=UTC), (T0 + timedelta(days=9)).replace(tzinfo=UTC))
    assert sent.filters == [{"scope": "campaign", "variant": None, "filter": "email IS NOT NULL", "matched": True}]
    assert (sent.stopped_by, sent.ledger, sent.channel) == ([], None, "email")
    assert verdict(shop, "second-order", "2").filters[0]["matched"] is False
    assert verdict(shop, "second-order", "3").stopped_by == ["ordered_again"]
    assert verdict(shop, "second-order", "4").due_at == (T0 + timedelta(days=10)).replace(tzinfo=UTC)
    recorded = verdict(shop, "second-order", "7").ledger
    assert (recorded["status"], recorded["reason"], recorded["updated_at"]) == ("sent", None, "2025-01-13T12:00:00Z")
    text = format_text(explain(shop, "second-order", "2", NOW))
    assert "campaign audience: email IS NOT NULL -> NOT matched" in text
    assert "excluded by the campaign audience: email IS NOT NULL" in text
    assert "=> due: send by email" in format_text(explain(shop, "second-order", "1", NOW))


def test_quiet_hours_defer_in_the_customers_time_zone(shop):
    assert plan(shop, "sms-nudge") == {"9": ("defer", "quiet_hours")}  # 21:00 in Tokyo
    got = verdict(shop, "sms-nudge", "9")
    assert (got.verdict.status, got.verdict.reason, got.channel) == ("defer", "quiet_hours", "sms")
    # customer 1 has no phone: the campaign audience (phone IS NOT NULL) excludes them
    assert verdict(shop, "sms-nudge", "1").verdict.reason == "campaign_audience"


def test_a_customer_without_a_trigger_instance(shop):
    # a customer who never ordered has no instance at all
    shop.warehouse.execute("INSERT INTO customers (customer_id, email) VALUES (10, 'c10@example.com')")
    [step] = explain(shop, "second-order", "10", NOW).steps
    assert [(i.trigger_key, i.verdict.status) for i in step.instances] == [(None, "no_instance")]


def test_cli_json_and_bad_input(shop):
    runner = CliRunner()
    base = ["--project", str(shop.root), "explain"]
    result = runner.invoke(main, base + ["second-order", "5", "--as-of", "2025-01-14T12:00:00Z", "--format", "json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["steps"][0]["instances"][0]["verdict"]["status"] == "skip"
    assert data["steps"][0]["instances"][0]["verdict"]["reason"] == "stale"
    unknown = runner.invoke(main, base + ["no-such-campaign", "1"])
    assert unknown.exit_code == 1 and "no campaign named 'no-such-campaign'" in unknown.output
    assert "Traceback" not in unknown.output
    nobody = runner.invoke(main, base + ["second-order", "424242"])
    assert nobody.exit_code == 1 and "no customer with id '424242'" in nobody.output


def test_yearly_trigger_names_the_year_and_the_local_send_time(shop):
    # birthday greeting at 09:00 Berlin (08:00 UTC) on the day; NOW is Jan 14, 13:00 in Berlin
    assert plan(shop, "birthday") == {"11": ("send", None)}
    today = verdict(shop, "birthday", "11")
    assert (today.trigger_key, today.due_at, today.verdict.status) == ("2025", datetime(2025, 1, 14, 8, tzinfo=UTC), "send")
    later = verdict(shop, "birthday", "12")
    assert (later.trigger_key, later.due_at, later.verdict.status) == ("2025", datetime(2025, 1, 20, 8, tzinfo=UTC), "not_yet")


def test_frequency_caps_count_what_higher_priority_campaigns_send_first(shop):
    """With a cap of one message a day, the higher-priority campaign's message wins; explain
    plans that campaign first for the customer, exactly as a pass does."""
    root = shop.root
    with open(root / "engine.yaml", "a", encoding="utf-8") as config:
        config.write("\npolicies:\n  frequency_caps: [{max: 1, per: 1d}]\n")
    write(root / "campaigns.d" / "first-thanks.yaml", """
        name: first-thanks
        priority: 10
        trigger:
          order_placed: {nth: 1}
        steps:
          - id: thanks
            delay: 7d
            freshness: 2d
            channel: email
            template: second-order/nudge.email.j2
        """)
    capped = Reconciler(load_project(root))
    try:
        both = [capped.project.campaign("second-order"), capped.project.campaign("first-thanks")]
        planned = {(m.campaign, m.customer_id): m.outcome for batch in capped.due(NOW, both) for m in batch}
        assert (planned[("first-thanks", "1")], planned[("second-order", "1")]) == ("send", "skip:frequency_cap")
        got = verdict(capped, "second-order", "1").verdict
        assert (got.status, got.reason) == ("skip", "frequency_cap")
        assert verdict(capped, "first-thanks", "1").verdict.status == "send"
    finally:
        capped.close()


def test_step_audience_and_variant_audiences(shop):
    # customer 1 has one order (step audience order_count >= 2 fails); customer 3 has two, but no
    # variant matches (city = 'Paris'): the plan skips them as no_variant
    assert plan(shop, "repeaters") == {"3": ("skip", "no_variant")}
    one = verdict(shop, "repeaters", "1")
    assert (one.verdict.status, one.verdict.reason) == ("excluded", "step_audience")
    assert one.verdict.text == "excluded by the step audience: order_count >= 2"
    three = verdict(shop, "repeaters", "3")
    assert (three.verdict.status, three.verdict.reason) == ("skip", "no_variant")
    assert three.filters == [{"scope": "step", "variant": None, "filter": "order_count >= 2", "matched": True},
                             {"scope": "variant", "variant": "paris", "filter": "city = 'Paris'", "matched": False}]
