"""Segment entries: who entered a segment trigger (at risk) since the last pass, recorded before
the pass plans so that the due query sees them.

Owns the one write of a campaign's entries. Must not plan or decide anything about a message.
"""
from __future__ import annotations

from datetime import datetime

from engine.model import Campaign, ProjectConfig
from engine.sql.compile import render_sql
from engine.sql.due import entries_insert
from engine.state.ledger import keep_recorded_entries
from engine.state.warehouse import Database


def enter_segment(campaign: Campaign, warehouse: Database, config: ProjectConfig, now: datetime) -> None:
    """Record the campaign's new segment entries at ``now`` (nothing for other triggers)."""
    insert = entries_insert(campaign, config, now)
    if insert is not None:
        if warehouse.dialect.on_conflict_insert is not None:  # replicas may enter the same customers at once
            insert = keep_recorded_entries(insert)
        with warehouse.session() as session:  # under warehouse.statement_timeout, as the due queries are
            session.execute(render_sql(insert, config.dialect))
