"""The recovery stage: what earlier passes left behind, finished before a pass plans.

Owns the fate of a claim older than ``claim_timeout`` (its process is taken for dead): never
rendered -> released for the next pass to derive again, or skipped as stale when too late;
rendered -> sent again when its channel is at-least-once, else marked unknown. Must not plan,
render, or touch a claim younger than the timeout.
"""
from __future__ import annotations

from datetime import datetime

from engine.clock import parse_stored_timestamp
from engine.model import Project, ProjectConfig
from engine.run.messages import PassReport
from engine.run.send import resend
from engine.run.sessions import ChannelSessions
from engine.state.ledger import Ledger


def recover(now: datetime, project: Project, config: ProjectConfig, ledger: Ledger, sessions: ChannelSessions,
            report: PassReport) -> None:
    """Settle the stale claims of dead processes."""
    for row in ledger.stale_claims(now - config.claim_timeout):
        channel = config.channels.get(row["channel"] or "")
        if row["content"] is None and past_freshness(project, row, now):
            # never sent, and too late now: record it, as a pass would, since the due query
            # may no longer look back far enough to derive it again (freshness + stale horizon)
            if ledger.skip_unsent_claim(row["message_key"], "stale", now):
                report.add(row["campaign"], row["step"], "skipped:stale", channel=row["channel"])
        elif row["content"] is None:  # never rendered, so never sent: let the next pass derive it again
            if ledger.release(row["message_key"]):
                report.add(row["campaign"], row["step"], "released", channel=row["channel"])
        elif channel is not None and channel.settings.get("delivery") == "at_least_once":
            if ledger.reclaim(row, now):
                resend(row, now, sessions, ledger, config, report)
        else:
            ledger.mark_unknown(row["message_key"], now)
            report.add(row["campaign"], row["step"], "unknown", channel=row["channel"])


def past_freshness(project: Project, row: dict, now: datetime) -> bool:
    """Whether a ledger row's message is past its step's freshness window at ``now``."""
    try:
        freshness = project.campaign(row["campaign"]).step(row["step"]).freshness
    except KeyError:
        return False
    return freshness is not None and row["due_at"] is not None and now >= parse_stored_timestamp(row["due_at"]) + freshness
