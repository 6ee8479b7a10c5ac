"""``plan.decide_rows`` (a batch, the common step decided inline) decides every row exactly as
``plan.decide_row`` does one at a time: same messages, same order, same fields, customer included.

On the demo shop with every shipped campaign, at instants around its anchor (plain steps, local
send times, waits, A/B splits, yearly and date triggers all have rows there).
"""
from __future__ import annotations

from datetime import timedelta

from conftest import copy_project, database_url
from engine import Reconciler, load_project
from engine.clock import parse_instant
from engine.run import plan
from engine.tools.demo import build_demo

ANCHOR = parse_instant("2025-01-10T00:00:00Z")


def _fields(message) -> tuple:
    return (message.as_dict(), message.candidates, message.customer, message.code, message.choice)


def test_decide_rows_decides_as_decide_row_one_by_one(tmp_path, monkeypatch):
    url = database_url("duckdb", tmp_path)
    build_demo(url, seed=7, customers=300, anchor="2025-01-10T00:00:00Z")
    monkeypatch.setenv("ENGINE_WAREHOUSE_URL", url)
    reconciler = Reconciler(load_project(copy_project(tmp_path / "project")))
    batches: list = []
    decide = plan.decide_rows

    def watched(campaign, rows, now, config, layout):
        batches.append((campaign, list(rows), now, layout))
        return decide(campaign, rows, now, config, layout)

    try:
        with monkeypatch.context() as patch:
            patch.setattr(plan, "decide_rows", watched)
            for hours in (0, 13, 24 * 40):
                for _ in reconciler.due(ANCHOR + timedelta(hours=hours)):
                    pass
        inline = compared = 0
        for campaign, rows, now, layout in batches:
            together = [_fields(m) for m in plan.decide_rows(campaign, rows, now, reconciler.config, layout)]
            one_by_one = [_fields(m) for m in (plan.decide_row(campaign, row, now, reconciler.config, layout)
                                               for row in rows) if m is not None]
            assert together == one_by_one, campaign.name
            inline += sum(1 for row in rows if row[layout.step] in layout.plain)
            compared += len(rows)
        # both paths ran: the test can fail
        assert inline > 100 and compared - inline > 20, (inline, compared)
    finally:
        reconciler.close()
