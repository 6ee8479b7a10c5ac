"""A campaign's due query fetches only the customer attributes read after it (engine.run.attributes),
and what is sent does not change: the demo shop's passes, with the attributes pruned and with every
attribute fetched, hand over the same bytes for every message of every shipped campaign and channel.
A template that starts reading another attribute gets it at the next pass of the same process (the
compiled statement is keyed by the attributes fetched), and one reading the whole customer gets all.

Real components: the demo shop in DuckDB, the shipped project, its file transports (outbox, letter
drop folder), the ledger's stored content (exactly as sent).
"""
from __future__ import annotations

import shutil
from datetime import timedelta

import sqlalchemy as sa

from conftest import copy_project
from engine import Reconciler, load_project
from engine.clock import parse_instant
from engine.run import attributes
from engine.state.ledger import ledger_table
from engine.tools.demo import build_demo

ANCHOR = "2025-01-10T00:00:00Z"
NOW = parse_instant(ANCHOR)
#: the demo's instant (emails), the morning after (push, deferred by the night's quiet hours), the re-engage
#: series' SMS step, and its letters
INSTANTS = (NOW, NOW + timedelta(hours=9), NOW + timedelta(days=14), NOW + timedelta(days=21))


def _shop(tmp_path, name: str, monkeypatch):
    """A project copy over its own copy of one demo shop (built once per test)."""
    built = tmp_path / "built.duckdb"
    if not built.exists():
        build_demo(built, seed=42, customers=400, anchor=ANCHOR)
    root = copy_project(tmp_path / name)
    shutil.copy(built, root / "shop.duckdb")
    monkeypatch.setenv("ENGINE_WAREHOUSE_URL", f"duckdb:///{root / 'shop.duckdb'}")
    return root


def _sent(reconciler: Reconciler) -> dict[str, tuple[str, str, str]]:
    """message key -> (campaign, channel, the content handed over) of every message the ledger keeps."""
    with reconciler.ledger.db.engine.connect() as conn:
        return {row.message_key: (row.campaign, row.channel, row.content)
                for row in conn.execute(sa.select(ledger_table)) if row.content}


def _passes(root) -> dict[str, tuple[str, str, str]]:
    reconciler = Reconciler(load_project(root))
    try:
        for now in INSTANTS:
            reconciler.run_once(now)
        return _sent(reconciler)
    finally:
        reconciler.close()


def test_pruned_attributes_send_the_same_bytes_as_every_attribute(tmp_path, monkeypatch):
    pruned = _passes(_shop(tmp_path, "pruned", monkeypatch))
    with monkeypatch.context() as patched:
        patched.setattr(attributes, "due_columns", lambda project, campaigns: {c.name: None for c in campaigns})
        full = _passes(_shop(tmp_path, "full", monkeypatch))
    assert pruned == full
    project = load_project(tmp_path / "pruned")
    sent_campaigns = {campaign for campaign, _, _ in pruned.values()}
    sent_channels = {channel for _, channel, _ in pruned.values()}
    # every shipped campaign that sends at these instants, every channel of the shipped project
    assert sent_channels == set(project.config.channels)
    assert {"second-order", "re-engage", "browse-abandonment", "welcome-series"} <= sent_campaigns
    assert len(sent_campaigns) >= 12  # of 14: re-activate and vip find no one in this small shop
    for name in sent_campaigns:  # and each of them fetched fewer columns than the shop maps
        fetched = attributes.customer_columns(project, project.campaign(name))
        assert fetched is not None and len(fetched) < len(project.config.customer_attributes()), name


def _groups(root) -> dict[str, str]:
    engine = sa.create_engine(f"duckdb:///{root / 'shop.duckdb'}")
    try:
        with engine.connect() as conn:
            return {str(row[0]): str(row[1]) for row in conn.execute(sa.text("SELECT customer_id, customer_group "
                                                                             "FROM customers"))}
    finally:
        engine.dispose()


def test_a_template_that_starts_reading_an_attribute_gets_it_at_the_next_pass(tmp_path, monkeypatch):
    root = _shop(tmp_path, "project", monkeypatch)
    groups = _groups(root)
    project = load_project(root)
    campaign = project.campaign("second-order")
    reconciler = Reconciler(project)
    try:
        planned = [m for batch in reconciler.due(NOW, [campaign]) for m in batch if m.action == "send"]
        assert planned and all("customer_group" not in m.customer for m in planned)  # not read: not fetched
        template = root / "templates" / "second-order" / "nudge.email.j2"
        template.write_text(template.read_text().replace(
            "{% block intro %}", "{% block intro %}Your group: {{ customer.customer_group }}. ", 1))
        # the same project and process: the statement compiled for the old template must not serve
        planned = [m for batch in reconciler.due(NOW, [campaign]) for m in batch if m.action == "send"]
        assert all(m.customer["customer_group"] == groups[m.customer_id] for m in planned)
        reconciler.run_once(NOW, [campaign])
        sent = _sent(reconciler)
    finally:
        reconciler.close()
    assert len(sent) == len(planned)
    for key, (_, _, content) in sent.items():
        customer_id = next(m.customer_id for m in planned if m.key == key)
        assert f"Your group: {groups[customer_id]}." in content


def test_a_template_reading_the_whole_customer_gets_every_attribute(tmp_path, monkeypatch):
    root = _shop(tmp_path, "project", monkeypatch)
    template = root / "templates" / "second-order" / "nudge.email.j2"
    template.write_text(template.read_text().replace(
        "{% block intro %}", "{% block intro %}{% for k, v in customer.items() | sort %}[{{ k }}={{ v }}]{% endfor %}", 1))
    project = load_project(root)
    reconciler = Reconciler(project)
    try:
        reconciler.run_once(NOW, [project.campaign("second-order")])
        sent = _sent(reconciler)
    finally:
        reconciler.close()
    assert sent
    for _, _, content in sent.values():
        for attribute in project.config.customer_attributes():
            assert f"[{attribute}=" in content, attribute
