"""The retry stage: failed messages whose next attempt is due are sent again, identical, when the
policies still allow it: a retry goes through the same ordered policy stages as a first attempt.

Owns which retries are due now and what a policy's verdict means for one: skipped with the
policy's reason, or left failed and due (quiet hours: for the first pass after they end). Must
not render (a retry sends the stored content) or decide anything itself.
"""
from __future__ import annotations

from datetime import datetime

from engine.model import Project, ProjectConfig
from engine.run.contacts import attach_contacts
from engine.run.messages import DueMessage, PassReport
from engine.run.policies import apply_stages, retry_inputs
from engine.run.send import resend
from engine.run.sessions import ChannelSessions
from engine.run.sources import SourceRows
from engine.state.ledger import Ledger


def retry(now: datetime, project: Project, config: ProjectConfig, ledger: Ledger, sources: SourceRows,
          sessions: ChannelSessions, report: PassReport) -> None:
    """Send again every due retry the policies allow (and this process reclaims)."""
    for row in retries_allowed(now, project, config, ledger, sources, report):
        if ledger.reclaim(row, now):
            resend(row, now, sessions, ledger, config, report)


def retries_allowed(now: datetime, project: Project, config: ProjectConfig, ledger: Ledger, sources: SourceRows,
                    report: PassReport) -> list[dict]:
    """The retries due now that the policies still allow: a retry is a send like any other.

    An unsubscribe, a lost consent, a suppression or a frequency cap reached since
    the first attempt turns the retry into ``skipped`` with that reason; quiet hours
    leave it failed and due, for the first pass after they end. The customer's
    consent columns and time zone are read from the warehouse, for these customers only.
    """
    rows = [row for row in ledger.retries_due(now) if row["channel"] in config.channels]
    if not rows:
        return []
    found = sources.by_key("customers", "customer_id", sorted({row["customer_id"] for row in rows}))
    mapped = config.sources["customers"].columns  # an unmapped consent column reads NULL: not "no consent"
    candidates = []
    for row in rows:
        attributes = (found.get(row["customer_id"]) or [{}])[0]
        customer = {**{k: v for k, v in attributes.items() if k in mapped}, "customer_id": row["customer_id"]}
        candidates.append(DueMessage(
            campaign=row["campaign"], step=row["step"], customer_id=row["customer_id"], trigger_key=row["trigger_key"],
            trigger_at=row["trigger_at"], due_at=row["due_at"], channel=row["channel"], customer=customer,
            action="send", variant=row["variant"], candidates=(row["variant"],)))
    # the channel is the one the message was rendered for: consent and suppression are checked
    # for it alone, then quiet hours and caps (holdout, re-entry and not_contacted_within were
    # decided with the first attempt)
    channels = {f"{row['campaign']}:{row['step']}:{row['variant']}": row["channel"] for row in rows}
    ledger.snapshot_policies()
    candidates = attach_contacts(candidates, config, sources, ledger, channels)  # e.g. every subscription gone since
    decided = apply_stages(candidates, retry_inputs(config, ledger, now, project.campaigns, channels))
    allowed = []
    for row, m in zip(rows, decided):
        if m.action == "send":
            allowed.append(row)
        elif m.action == "skip" and ledger.skip_failed(row["message_key"], m.reason, now):
            report.add(m.campaign, m.step, f"skipped:{m.reason}", channel=m.channel)
    return allowed
