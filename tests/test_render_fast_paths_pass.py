"""The render stage's fast paths change no byte: a pass of every shipped campaign over the demo shop on
DuckDB stores (and hands over) exactly the messages it stores with every fast path off - blocks called
through ``self`` and text-only blocks served again (sandbox ``_call_block``), read-only data copied
once, footers rendered once per shop, and the batch's keys bound as LIST parameters for trigger
records, events and product lists (``SourceRows.bound_keys``). The email bytes' own fast writer is
proven against the email package in test_exactly_as_sent."""
from __future__ import annotations

import shutil
from datetime import timedelta

import sqlalchemy as sa

from conftest import copy_project
from engine import Reconciler, load_project
from engine.clock import parse_instant
from engine.run.dispatch import deserialize
from engine.run.sources import SourceRows
from engine.state.ledger import ledger_table
from engine.templating import sandbox
from engine.templating.render import Renderer
from engine.tools.demo import build_demo
from servers import SmsProvider, SmtpSink
from test_end_to_end import configure_channels

NOW = parse_instant("2025-01-10T00:00:00Z")


def _all_full_paths(monkeypatch) -> None:
    monkeypatch.setattr(sandbox, "BlockReference", type("NoBlock", (), {}))
    monkeypatch.setattr(sandbox, "TemplateReference", type("NoReference", (), {}))
    monkeypatch.setattr(sandbox, "_READ_ONLY", frozenset())
    monkeypatch.setattr(Renderer, "_footer_once", lambda *args: None)
    monkeypatch.setattr(SourceRows, "bound_keys", lambda *args: None)


def _pass(tmp_path, name: str, shop, monkeypatch) -> dict[str, tuple[str, str]]:
    root = copy_project(tmp_path / name / "project")
    warehouse = tmp_path / name / "shop.duckdb"
    shutil.copy(shop, warehouse)
    monkeypatch.setenv("ENGINE_WAREHOUSE_URL", f"duckdb:///{warehouse}")
    monkeypatch.setenv("SMS_TOKEN", "secret-token")
    with SmtpSink() as smtp, SmsProvider() as sms:
        configure_channels(root, smtp.port, sms.url)
        reconciler = Reconciler(load_project(root))
        try:
            reconciler.run_once(NOW)
            reconciler.run_once(NOW + timedelta(days=14))
            with reconciler.ledger.db.engine.connect() as conn:
                rows = [dict(r._mapping) for r in conn.execute(sa.select(ledger_table))]
        finally:
            reconciler.close()
    stored = {row["message_key"]: (row["status"], row["content"]) for row in rows}
    documents = {deserialize(key, content).document for key, (_, content) in stored.items() if content}
    assert {raw for raw in smtp.contents} <= documents  # what reached the sink is what the ledger keeps
    return stored


def test_a_pass_with_every_fast_path_stores_the_bytes_of_a_pass_without_any(tmp_path, monkeypatch):
    shop = tmp_path / "shop.duckdb"
    build_demo(str(shop), seed=42, customers=400, anchor="2025-01-10T00:00:00Z")
    fast = _pass(tmp_path, "fast", shop, monkeypatch)
    with monkeypatch.context() as patched:
        _all_full_paths(patched)
        full = _pass(tmp_path, "full", shop, patched)
    assert fast == full
    sent = {key for key, (_, content) in fast.items() if content}
    campaigns = {key.split(":")[0] for key in sent}
    # every shipped campaign that sends at these instants, its email templates, lists and events among them
    assert len(sent) > 100 and campaigns >= {"abandoned-cart", "after-registration", "browse-abandonment", "delivery",
                                             "inactivity", "order-follow-up", "re-engage", "search-abandonment",
                                             "second-order", "welcome-series"}, sorted(campaigns)
    kinds = {deserialize(key, fast[key][1]).kind for key in sent}
    assert {"email", "sms"} <= kinds
