"""Issue 18 point 6: the ``segment_entry`` trigger (with the ``left_segment`` stop condition) and
the early-firing wait of a step (``wait_until: {event: ..., at_most: 3d}``), at exact instants on
every backend, with the literal due sets and what the template is told.
"""
from __future__ import annotations

import subprocess
import sys
from datetime import datetime, timedelta, timezone

import pytest

from conftest import copy_project, database_url, load_history, write
from engine import Reconciler, load_project

UTC = timezone.utc
T0 = datetime(2025, 1, 6, 12, 0)


def at(**delta) -> datetime:
    return (T0 + timedelta(**delta)).replace(tzinfo=UTC)


def customer(i):
    return {"customer_id": i, "email": f"c{i}@example.com", "phone": None, "first_name": f"C{i}",
            "created_at": T0 - timedelta(days=400), "timezone": None}


def order(i, customer_id, when, total=10):
    return {"order_id": i, "customer_id": customer_id, "created_at": when, "status": "completed", "total": total}


TEMPLATE = """
{% extends "layouts/email.j2" %}
{% block title %}Hello{% endblock %}
{% block intro %}Step {{ step }} of {{ trigger.key }}.{% endblock %}
"""
#: a step with wait_until: the template knows how the wait ended
WAIT_TEMPLATE = """
{% extends "layouts/email.j2" %}
{% block title %}Hello{% endblock %}
{% block intro %}Step {{ step }} of {{ trigger.key }}, wait: {{ wait.outcome }} at {{ wait.deadline }}.{% endblock %}
"""


@pytest.fixture
def shop(tmp_path, backend, monkeypatch):
    """shop(campaign_yaml, **rows) -> a Reconciler over a project with only that campaign and the
    segment ``recent`` (ordered within 10 days)."""
    root = copy_project(tmp_path / "project")
    yaml = root / "engine.yaml"
    yaml.write_text(yaml.read_text().replace("\nsegments:\n", "\nsegments:\n  recent: last_order_at > days_ago(10)\n", 1))
    for path in (root / "campaigns.d").glob("*.yaml"):
        path.unlink()
    write(root / "templates" / "point6" / "hello.email.j2", TEMPLATE)
    write(root / "templates" / "point6" / "wait.email.j2", WAIT_TEMPLATE)
    url = database_url(backend, tmp_path)
    monkeypatch.setenv("ENGINE_WAREHOUSE_URL", url)
    opened = []

    def load(text: str, **rows) -> Reconciler:
        write(root / "campaigns.d" / "point6.yaml", text)
        load_history(url, **rows)
        reconciler = Reconciler(load_project(root))
        opened.append(reconciler)
        return reconciler

    load.root = root
    yield load
    for reconciler in opened:
        reconciler.close()


def due(reconciler: Reconciler, now: datetime) -> set[tuple]:
    return {(m.step, m.customer_id, m.trigger_key, m.outcome) + ((m.due_at,) if m.outcome == "send" else ())
            for batch in reconciler.due(now) for m in batch}


def sent(root) -> list[str]:
    return sorted(p.read_text() for p in (root / "var" / "outbox" / "email").glob("*.eml"))


SEGMENT_CAMPAIGN = """
name: point6
trigger: {segment_entry: {segment: recent}}
stop: [left_segment]
steps:
  - id: welcome
    delay: 0m
    freshness: 1d
    channel: email
    template: point6/hello.email.j2
  - id: later
    delay: 7d
    freshness: 1d
    channel: email
    template: point6/hello.email.j2
"""


def test_segment_entry_enters_at_the_first_pass_and_left_segment_stops(shop):
    """Customer 1 ordered 5 days before T0 (in the segment at T0, out of it from T0+5d); customer 2
    orders at T0+1d, enters at the next pass and is still in the segment 7 days after that."""
    r = shop(SEGMENT_CAMPAIGN, customers=[customer(1), customer(2), customer(3)],
             orders=[order(1, 1, T0 - timedelta(days=5)), order(2, 2, T0 + timedelta(days=1)),
                     order(3, 3, T0 - timedelta(days=30))])
    assert due(r, at()) == {("welcome", "1", "entered", "send", at())}  # planning records nothing
    r.run_once(at())  # the pass records customer 1's entry at T0 and sends the welcome
    assert due(r, at(hours=1)) == set()
    assert due(r, at(days=1, hours=1)) == {("welcome", "2", "entered", "send", at(days=1, hours=1))}
    r.run_once(at(days=1, hours=1))
    # 7 days after each entry: customer 1 left the segment (last order 12 days ago), customer 2 is in it
    assert due(r, at(days=7)) == {("later", "1", "entered", "skip:stopped")}
    assert due(r, at(days=8, hours=1)) == {("later", "1", "entered", "skip:stopped"),
                                           ("later", "2", "entered", "send", at(days=8, hours=1))}
    assert len(sent(shop.root)) == 2


def test_segment_entry_validation(tmp_path):
    root = copy_project(tmp_path / "project")
    write(root / "campaigns.d" / "point6.yaml", SEGMENT_CAMPAIGN.replace("recent", "nosuch")
          .replace("point6/hello.email.j2", "registration/first-order.email.j2"))
    write(root / "campaigns.d" / "other.yaml", """
        name: other
        trigger: {registration: {}}
        stop: [left_segment]
        steps:
          - {id: hello, delay: 1d, freshness: 1d, channel: email, template: registration/first-order.email.j2}
        """)
    result = subprocess.run([sys.executable, "-m", "engine.cli.main", "validate", "--project", str(root)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 1, result.stdout
    assert "2 error(s)" in result.stdout, result.stdout
    assert "point6.yaml:2:27: error: there is no segment named 'nosuch' in " in result.stdout, result.stdout
    assert "engine.yaml (named: lapsed_readers)" in result.stdout and "fix: add it under segments: in " in result.stdout
    assert "other.yaml:3:8: error: stop condition left_segment needs a segment trigger, not registration" in result.stdout
    assert "Traceback" not in result.stdout + result.stderr


def wait_campaign(event: str = "ordered") -> str:
    return f"""
name: point6
trigger: {{registration: {{}}}}
stop: [unsubscribed]
steps:
  - id: early
    delay: 2h
    wait_until: {event}
    at_most: 3d
    freshness: 1d
    channel: email
    template: point6/wait.email.j2
"""


def test_wait_until_fires_at_the_event_or_when_the_time_runs_out(shop):
    """Registered at T0 each; customer 1 orders after a day, 2 never, 3 exactly when the 3 days run out
    (the timeout), 4 an hour after registering (before the step's 2 h delay: sent at the delay)."""
    r = shop(wait_campaign(), customers=[{**customer(i), "created_at": T0} for i in range(1, 5)],
             orders=[order(1, 1, T0 + timedelta(days=1)), order(3, 3, T0 + timedelta(days=3)),
                     order(4, 4, T0 + timedelta(hours=1))])
    assert due(r, at(hours=1, minutes=59)) == set()
    assert due(r, at(hours=2)) == {("early", "4", "4", "send", at(hours=2))}
    assert due(r, at(days=1) - timedelta(seconds=1)) == {("early", "4", "4", "send", at(hours=2))}
    assert due(r, at(days=1)) == {("early", "4", "4", "send", at(hours=2)), ("early", "1", "1", "send", at(days=1))}
    r.run_once(at(days=1))
    assert due(r, at(days=3) - timedelta(seconds=1)) == set()
    assert due(r, at(days=3)) == {("early", "2", "2", "send", at(days=3)), ("early", "3", "3", "send", at(days=3))}
    r.run_once(at(days=3))
    texts = {text.split("To: c")[1][0]: text for text in sent(shop.root)}
    assert sorted(texts) == ["1", "2", "3", "4"]
    for cid, outcome in (("1", "event"), ("4", "event"), ("2", "timeout"), ("3", "timeout")):
        assert f"Step early of {cid}, wait: {outcome} at 2025-01-09 12:00:00" in texts[cid], (cid, texts[cid])


def test_wait_until_an_event_type_or_any_event(shop):
    views = [{"event_id": 1, "customer_id": 1, "type": "product_viewed", "occurred_at": T0 + timedelta(hours=5)},
             {"event_id": 2, "customer_id": 2, "type": "login", "occurred_at": T0 + timedelta(hours=6)},
             {"event_id": 3, "customer_id": 3, "type": "login", "occurred_at": T0 - timedelta(hours=6)}]
    customers = [{**customer(i), "created_at": T0} for i in range(1, 4)]
    r = shop(wait_campaign("product_viewed"), customers=customers, events=views)
    assert due(r, at(hours=6)) == {("early", "1", "1", "send", at(hours=5))}
    r = shop(wait_campaign("came_back"), customers=customers, events=views)
    assert due(r, at(hours=6)) == {("early", "1", "1", "send", at(hours=5)), ("early", "2", "2", "send", at(hours=6))}
    # a freshness of 1 day after the deadline: at the deadline the event's sends are stale, customer 3 times out
    assert due(r, at(days=3)) == {("early", "1", "1", "skip:stale"), ("early", "2", "2", "skip:stale"),
                                  ("early", "3", "3", "send", at(days=3))}


def test_a_pass_never_settles_a_waiting_step_in_sql_as_stale(shop):
    """A pass records stale and stopped skips in SQL from the trigger time plus a fixed delay
    (engine.run.settle); a waiting step is due at the event or when the wait runs out, so 12 h after
    customer 1's timeout (freshness 1 d) it is sent, though trigger + delay + freshness lies 1 d behind."""
    r = shop(wait_campaign(), customers=[{**customer(1), "created_at": T0}])
    r.run_once(at(days=3, hours=12))
    assert [text for text in sent(shop.root) if "wait: timeout at 2025-01-09 12:00:00" in text], sent(shop.root)


@pytest.mark.parametrize("step, message", [
    ("wait_until: ordered", "wait_until and at_most go together"),
    ("at_most: 3d", "wait_until and at_most go together"),
    ("wait_until: ordered\n    at_most: 1h", "at_most (1h) must be longer than the step's delay (2h)"),
    ("wait_until: ordered\n    at_most: 3d\n    send_at: '09:00'", "send_at would hold it back"),
])
def test_wait_until_validation(tmp_path, step, message):
    root = copy_project(tmp_path / "project")
    write(root / "campaigns.d" / "point6.yaml", f"""
name: point6
trigger: {{registration: {{}}}}
stop: [unsubscribed]
steps:
  - id: early
    delay: 2h
    {step}
    freshness: 1d
    channel: email
    template: registration/first-order.email.j2
""")
    result = subprocess.run([sys.executable, "-m", "engine.cli.main", "validate", "--project", str(root)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 1 and message in result.stdout and "point6.yaml:" in result.stdout, result.stdout


def test_explain_tells_the_wait_and_its_due_time(shop):
    from engine.tools.explain import explain, format_text

    r = shop(wait_campaign(), customers=[{**customer(i), "created_at": T0} for i in (1, 2)],
             orders=[order(1, 1, T0 + timedelta(days=1))])
    text = format_text(explain(r, "point6", "1", at(days=1, hours=1)))
    assert "wait_until ordered (at most 3d after the trigger: due at the event, or then)" in text, text
    assert "instance 1 at 2025-01-06T12:00:00Z: due 2025-01-07T12:00:00Z" in text, text
    text = format_text(explain(r, "point6", "2", at(days=1, hours=1)))
    assert "instance 2 at 2025-01-06T12:00:00Z: due 2025-01-09T12:00:00Z" in text, text  # no order yet: the timeout
