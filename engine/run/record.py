"""The record stage: what the pass decided and what the providers answered, written to the ledger.

Owns the ledger rows of a message (``as_record``), the skips of a batch, the outcome of a send
(sent, failed with its next attempt - no sooner than the provider's Retry-After -, or bounced: the
address suppressed; contacts the provider reported gone) and the tags a delivered
step sets; every outcome is counted in the pass report here. Must not decide, render or send.
"""
from __future__ import annotations

from datetime import datetime, timedelta

from engine import channel_kinds
from engine.channels import Delivered
from engine.model import Project, RetryPolicy
from engine.run.dispatch import Sent, next_attempt
from engine.run.messages import DueMessage, PassReport
from engine.state.ledger import Ledger, Record


def as_record(m: DueMessage, status: str, reason: str | None = None, detail: str | None = None,
              content: str | None = None) -> Record:
    """The ledger row of message ``m`` with ``status``."""
    return Record(
        message_key=m.key, campaign=m.campaign, step=m.step, customer_id=m.customer_id,
        trigger_key=m.trigger_key, channel=m.channel, status=status, due_at=m.due_at, trigger_at=m.trigger_at,
        variant=m.variant, reason=reason, detail=detail, content=content,
    )


def record_decisions(batch: list[DueMessage], ledger: Ledger, now: datetime, report: PassReport,
                     write: bool = True) -> list[Record]:
    """Count the deferred messages (not recorded: they stay due) and record the skipped ones;
    a skip another process recorded first is not counted again. With ``write`` False (a pass: the
    skips go in the same statement as the batch's claims, ``claim(..., skips=)``) the skips' rows are
    returned unwritten, to be counted by ``count_skips`` with what that statement inserted."""
    for m in batch:
        if m.action == "defer":
            report.add(m.campaign, m.step, m.outcome, channel=m.channel)
    skips = [as_record(m, "skipped", reason=m.reason, detail=m.detail) for m in batch if m.action == "skip"]
    if write:
        count_skips(skips, ledger.write_new(skips, now), report)
    return skips


def count_skips(skips: list[Record], recorded: set[str], report: PassReport) -> None:
    """Count the skips this process recorded (``recorded``: the keys its write inserted)."""
    for r in skips:
        if r.message_key in recorded:
            report.add(r.campaign, r.step, f"skipped:{r.reason}", channel=r.channel)


def record_failures(failures: list[Record], ledger: Ledger, now: datetime) -> None:
    """Render failures are final: recorded before anything of their batch goes out."""
    ledger.record_outcomes(failures, now)


def outcome_record(ledger: Ledger, retry: RetryPolicy, key: str, campaign: str, step: str, customer_id: str,
                   trigger_key: str, channel: str, attempts: int, sent: Sent, now: datetime,
                   report: PassReport) -> Record:
    """The ledger row of a send's outcome after ``attempts`` attempts; a permanent failure
    suppresses the address at once."""
    common = dict(message_key=key, campaign=campaign, step=step, customer_id=customer_id,
                  trigger_key=trigger_key, channel=channel)
    outcome = sent.outcome
    if outcome.gone:
        ledger.record_gone(sent.message.kind, customer_id, list(outcome.gone), key, outcome.detail, now)
    if isinstance(outcome, Delivered):
        report.add(campaign, step, "sent", channel=channel)
        return Record(**common, status="sent", detail=f"{outcome.provider_id} {outcome.detail}".strip())
    if outcome.permanent:
        kind = channel_kinds.kind(sent.message.kind)
        if kind.suppress_on_permanent_failure:
            ledger.suppress(kind.name, kind.suppression_key(sent.message.to), "bounced", outcome.detail, now)
        report.add(campaign, step, "failed:permanent", channel=channel)
        return Record(**common, status="failed", reason="permanent", detail=outcome.detail)
    retry_at = next_attempt(retry, key, attempts, now)
    if retry_at is not None and outcome.retry_after:  # the provider's Retry-After, when it asks for longer
        retry_at = max(retry_at, now + timedelta(seconds=outcome.retry_after))
    reason = "transient" if retry_at is not None else "exhausted"
    report.add(campaign, step, f"failed:{reason}", channel=channel)
    return Record(**common, status="failed", reason=reason, detail=outcome.detail, next_attempt_at=retry_at)


def channel_unavailable(row: dict, retry: RetryPolicy, now: datetime) -> Record:
    """A stored message whose channel could not open: given back as a transient failure, tried later."""
    return Record(
        message_key=row["message_key"], campaign=row["campaign"], step=row["step"], customer_id=row["customer_id"],
        trigger_key=row["trigger_key"], channel=row["channel"], status="failed", reason="transient",
        detail="channel unavailable", next_attempt_at=next_attempt(retry, row["message_key"], row["attempts"] + 1, now),
    )


def record_sent(sent: list[tuple[DueMessage, Sent | None]], project: Project, ledger: Ledger, now: datetime,
                report: PassReport) -> None:
    """After a batch went out (its outcomes are recorded at each hand-over): count the claims another
    process took over, and apply the tags of the steps that were delivered."""
    tag_changes = []
    for m, result in sent:
        if result is None:
            report.add(m.campaign, m.step, "not_sent:claim_taken_over", channel=m.channel)
        elif isinstance(result.outcome, Delivered):
            step = project.campaign(m.campaign).step(m.step)
            tag_changes += [(m.customer_id, action.kind, action.tag, m.campaign) for action in step.actions]
    if tag_changes:
        ledger.apply_tags(tag_changes, now)
