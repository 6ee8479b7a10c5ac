"""``engine explain``: why one customer is, or is not, due for each step of a campaign (R-O4).

Nothing here re-implements campaign semantics. The answer is assembled from
the machinery a pass uses:

- the plan itself: ``Reconciler.due`` restricted to the customer (due query,
  ledger anti-join, ``plan.decide_row``, the policy stages), so "send",
  "skip: reason" and "defer" are exactly what ``engine plan`` says;
- the due query without the ledger anti-join, through ``plan.decide_row``,
  for what the ledger already holds;
- ``due.explain_query``: every trigger instance of the customer (no time
  window) with each audience filter and stop condition evaluated on its own,
  which names the filter that excluded them;
- the trigger kind (``sql.triggers``) for the trigger in words and when each step
  of an instance is due (``decide.due_time``; a yearly date's latest or next occurrence),
  and, for a segment trigger, where the customer stands (``standing_query``: the
  population, their position, the cut and how far they are from it).

Read-only: no ledger writes, no segment entries recorded.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, time, timedelta

from engine.clock import format_duration, format_instant, parse_stored_timestamp
from engine.run.ledger_state import warehouse_with_state
from engine.sql.compile import QueryBuilder, StateRelations, render_sql
from engine.sql.due import due_query, explain_query
from engine.sql.shipping import state_needs
from engine.state.warehouse import Session
from engine.sql.triggers.registry import kind_of
from engine.decide import customer_zone
from engine.errors import EngineError
from engine.state.ledger import message_key
from engine.tools.customer import find_customer
from engine.model import Campaign, Step
from engine.run.messages import DueMessage
from engine.run.plan import decide_row
from engine.run.reconcile import Reconciler

#: Trigger instances shown per campaign (newest first); older ones are counted.
MAX_INSTANCES = 10


class UnknownCampaign(EngineError):
    pass


@dataclass
class Verdict:
    """The outcome for one (step, instance): what ``engine plan`` does with it and why.

    ``status``: send | skip | defer (what the plan would do now), recorded
    (the ledger holds it), not_yet (due later), excluded (an audience filter),
    expired (past freshness and the stale horizon: neither sent nor recorded),
    no_instance (no trigger for this customer).
    """

    status: str
    reason: str | None = None
    text: str = ""

    def as_dict(self) -> dict:
        return {"status": self.status, "reason": self.reason, "text": self.text}


@dataclass
class InstanceStep:
    step: str
    trigger_key: str | None
    trigger_at: datetime | None
    due_at: datetime | None
    stale_after: datetime | None
    filters: list[dict]
    stopped_by: list[str]
    ledger: dict | None
    verdict: Verdict
    message_key: str | None = None
    variant: str | None = None
    channel: str | None = None

    def as_dict(self) -> dict:
        return {
            "step": self.step, "trigger_key": self.trigger_key, "trigger_at": _instant(self.trigger_at),
            "due_at": _instant(self.due_at), "stale_after": _instant(self.stale_after), "message_key": self.message_key,
            "filters": self.filters, "stopped_by": self.stopped_by, "ledger": self.ledger,
            "variant": self.variant, "channel": self.channel, "verdict": self.verdict.as_dict(),
        }


@dataclass
class StepInfo:
    id: str
    delay: timedelta
    freshness: timedelta | None
    send_at: time | None
    audience: str | None
    instances: list[InstanceStep] = field(default_factory=list)
    #: ``wait_until``: (the awaited event, at most how long after the trigger), or None
    wait: tuple[str, timedelta] | None = None

    def as_dict(self) -> dict:
        return {"id": self.id, "delay": _duration(self.delay), "freshness": _duration(self.freshness),
                "send_at": self.send_at.strftime("%H:%M") if self.send_at else None, "audience": self.audience,
                **({"wait_until": self.wait[0], "at_most": _duration(self.wait[1])} if self.wait else {}),
                "instances": [i.as_dict() for i in self.instances]}


@dataclass
class Explanation:
    campaign: str
    customer_id: str
    now: datetime
    enabled: bool
    trigger: str
    audience: str | None
    stop: tuple[str, ...]
    timezone: str
    instance_count: int
    steps: list[StepInfo]
    #: where the customer stands towards the trigger (a segment: population, position, cut), if the kind tells
    standing: dict | None = None
    standing_text: str | None = None

    def as_dict(self) -> dict:
        return {"campaign": self.campaign, "customer_id": self.customer_id, "now": format_instant(self.now),
                "enabled": self.enabled, "trigger": self.trigger, "audience": self.audience, "stop": list(self.stop),
                "timezone": self.timezone, "instances": self.instance_count, "standing": self.standing,
                "steps": [s.as_dict() for s in self.steps]}


def _instant(value: datetime | None) -> str | None:
    return format_instant(value) if value is not None else None


def _duration(value: timedelta | None) -> str | None:
    return None if value is None else (format_duration(value) if value else "0m")


def explain(reconciler: Reconciler, campaign_name: str, customer_id: str, now: datetime) -> Explanation:
    """Why ``customer_id`` is or is not due for each step of ``campaign_name`` at ``now``."""
    config = reconciler.config
    try:
        campaign = reconciler.project.campaign(campaign_name)
    except KeyError as exc:
        raise UnknownCampaign(exc.args[0]) from None
    customer = find_customer(reconciler, customer_id)
    zone = customer_zone(customer.get("timezone"), config.default_timezone)

    planned = _planned(reconciler, campaign, customer_id, now)
    recorded = _ledger_rows(reconciler, campaign.name, customer_id)
    with warehouse_with_state(reconciler.warehouse, reconciler.ledger, reconciler.ledger_shares_warehouse,
                              state_needs([campaign], config), config) as (session, state):
        candidates = _candidates(reconciler, session, state, campaign, customer_id, now)
        query, checks = explain_query(campaign, config, now, customer_id, state=state)
        rows = [dict(r._mapping) for batch in session.stream(render_sql(query, config.dialect)) for r in batch]
        standing = _standing(session, state, campaign, config, now, customer_id)

    steps = []
    for step in campaign.steps:
        info = StepInfo(step.id, step.delay, step.freshness, step.send_at, step.audience,
                        wait=(step.wait.event, step.wait.at_most) if step.wait is not None else None)
        for row in rows[:MAX_INSTANCES]:
            info.instances.append(_explain_instance(reconciler, campaign, step, row, checks, zone, now,
                                                    planned, candidates, recorded, customer_id))
        if not rows:
            info.instances.append(InstanceStep(
                step.id, None, None, None, None, [], [], None,
                Verdict("no_instance", "no_trigger", f"no {campaign.trigger.kind} trigger instance for this customer "
                        f"at {format_instant(now)}" + (f" - {standing[1]}" if standing else ""))))
        steps.append(info)
    return Explanation(campaign.name, customer_id, now, campaign.enabled, kind_of(campaign.trigger).describe(campaign.trigger), campaign.audience,
                       campaign.stop, zone.key, len(rows), steps,
                       standing[0] if standing else None, standing[1] if standing else None)


def _standing(session: Session, state: StateRelations, campaign: Campaign, config, now: datetime,
              customer_id: str) -> tuple[dict, str] | None:
    """The trigger kind's word on where the customer stands (a segment: population, position, cut)."""
    kind = kind_of(campaign.trigger)
    query = kind.standing_query(QueryBuilder(config, now, config.dialect, state=state), campaign, customer_id)
    if query is None:
        return None
    [row] = [dict(r._mapping) for batch in session.stream(render_sql(query, config.dialect)) for r in batch]
    return kind.standing(campaign.trigger, row, now)


def _planned(reconciler: Reconciler, campaign: Campaign, customer_id: str, now: datetime) -> dict[str, DueMessage]:
    """What ``engine plan`` decides for this customer: every message of ``campaign``, by key.

    Frequency caps count what higher-priority campaigns send to the customer
    in the same plan, so with caps those campaigns are planned first, as a
    pass does; without caps the campaign alone gives the same answer.
    """
    selected = [campaign]
    if reconciler.config.frequency_caps:
        enabled = [c for c in reconciler.campaigns() if c.name != campaign.name]
        ahead = sorted(enabled + [campaign], key=lambda c: -c.priority)
        selected = ahead[:ahead.index(campaign) + 1]
    return {m.key: m for batch in reconciler.due(now, selected, customer_id=customer_id) for m in batch
            if m.campaign == campaign.name}


def _candidates(reconciler: Reconciler, session: Session, state: StateRelations, campaign: Campaign,
                customer_id: str, now: datetime) -> dict[str, DueMessage]:
    """The due set before the ledger is subtracted, as ``plan.decide_row`` sees it, by message key."""
    config = reconciler.config
    sql = render_sql(due_query(campaign, config, now, exclude_ledger=False, customer_id=customer_id, state=state),
                     config.dialect)
    decided = {}
    for rows in session.stream(sql):
        for row in rows:
            m = decide_row(campaign, row, now, config)
            if m is not None:
                decided[m.key] = m
    return decided


#: The ledger columns explain shows of a recorded message.
LEDGER_FIELDS = ("message_key", "status", "reason", "detail", "channel", "variant", "created_at", "updated_at")


def _ledger_rows(reconciler: Reconciler, campaign: str, customer_id: str) -> dict[str, dict]:
    return {row["message_key"]: row for row in reconciler.ledger.customer_messages(customer_id, LEDGER_FIELDS, campaign)}


def _explain_instance(reconciler: Reconciler, campaign: Campaign, step: Step, row: dict, checks, zone, now: datetime,
                      planned: dict, candidates: dict, recorded: dict, customer_id: str) -> InstanceStep:
    key, trigger_at, due_at = kind_of(campaign.trigger).explain_instance(campaign.trigger, step, row, zone, now,
                                                                         reconciler.config.stale_horizon)
    if step.wait is not None and trigger_at is not None:  # the latest; the due query knows whether the event came
        decided = candidates.get(message_key(campaign.name, step.id, customer_id, key))
        due_at = decided.due_at if decided is not None else trigger_at + step.wait.at_most
    stale_after = due_at + step.freshness if step.freshness is not None and due_at is not None else None
    filters, stopped = [], []
    for check in checks:
        matched = bool(row[check.column])
        if check.scope == "stop":
            if matched:
                stopped.append(check.text)
        elif check.scope == "campaign" or check.step == step.id:
            filters.append({"scope": check.scope, "variant": check.variant, "filter": check.text, "matched": matched})
    mkey = message_key(campaign.name, step.id, customer_id, key)
    ledger = recorded.get(mkey)
    if ledger is not None:
        ledger = {k: (format_instant(parse_stored_timestamp(v)) if k in ("created_at", "updated_at") and v is not None else v)
                  for k, v in ledger.items() if k != "message_key"}
    result = InstanceStep(step.id, key, trigger_at, due_at, stale_after, filters, stopped, ledger,
                          Verdict("unknown"), message_key=mkey)
    decided = planned.get(mkey) or candidates.get(mkey)
    if decided is not None:
        result.variant, result.channel = decided.variant, decided.channel
    result.verdict = _verdict(reconciler, step, filters, stopped, due_at, stale_after, ledger, planned.get(mkey), now)
    return result


def _verdict(reconciler: Reconciler, step: Step, filters: list[dict], stopped: list[str], due_at: datetime,
             stale_after: datetime | None, ledger: dict | None, planned: DueMessage | None, now: datetime) -> Verdict:
    if planned is not None:
        if planned.action == "send":
            channel = reconciler.config.channels.get(planned.channel or "")
            kind = f", a {channel.kind} channel" if channel is not None and channel.kind != planned.channel else ""
            choice = f"; {planned.choice}" if planned.choice else ""  # channel_choice: by_response
            return Verdict("send", None, f"due: send by {planned.channel}{kind} (variant {planned.variant}){choice}")
        detail = f" ({planned.detail})" if planned.detail else ""
        return Verdict(planned.action, planned.reason, f"due: {planned.action} {planned.reason}{detail}: "
                       + REASONS.get(planned.reason, ""))
    if ledger is not None:
        what = ledger["status"] + (f" ({ledger['reason']})" if ledger["reason"] else "")
        return Verdict("recorded", ledger["status"], f"already in the ledger: {what} at {ledger['updated_at']}; "
                       "never sent again")
    if due_at > now:
        return Verdict("not_yet", "too_early", f"not due yet: due at {format_instant(due_at)}")
    for f in filters:
        if not f["matched"] and f["scope"] in ("campaign", "step"):
            return Verdict("excluded", f"{f['scope']}_audience",
                           f"excluded by the {f['scope']} audience: {f['filter']}")
    horizon = reconciler.config.stale_horizon
    if stale_after is not None and now > stale_after + horizon:
        return Verdict("expired", "stale", f"too late: stale since {format_instant(stale_after)} and beyond the "
                       f"stale horizon ({_duration(horizon)}); neither sent nor recorded")
    return Verdict("not_due", None, "not in the due set at this instant")


#: What each skip or defer reason of the plan means, for the text output.
REASONS = {
    "stopped": "a stop condition fired after the trigger; later steps are never sent",
    "stale": "later than due + freshness: recorded as skipped, never sent late",
    "no_variant": "no variant's audience matched",
    "no_contact": "no address for the channel (email address, phone number, live push subscription, complete postal address)",
    "invalid_contact": "the phone number (or address) is not valid for the channel; it is never sent to",
    "holdout": "in the campaign's holdout group",
    "quiet_hours": "in quiet hours in the customer's time zone; sent when they end",
    "no_consent": "no consent, or unsubscribed",
    "suppressed": "the address or number is suppressed (hard bounce / invalid)",
    "frequency_cap": "a frequency cap is reached",
    "reentry": "the re-entry rule blocks this trigger instance",
    "recently_contacted": "something was sent to the customer recently",
    "no_code": "the step's coupon pool had no unused code left when the message was claimed; never sent without one",
}


def format_text(e: Explanation) -> str:
    lines = [f"Campaign {e.campaign} for customer {e.customer_id} at {format_instant(e.now)}"
             + ("" if e.enabled else " (campaign disabled: plan and run only include it when named)"),
             f"  trigger: {e.trigger}; stop: {', '.join(e.stop) or '-'}; time zone: {e.timezone}",
             f"  campaign audience: {e.audience or '(everyone)'}",
             f"  trigger instances: {e.instance_count}"
             + (f" (newest {MAX_INSTANCES} shown)" if e.instance_count > MAX_INSTANCES else "")]
    if e.standing_text:
        lines.append(f"  {e.standing_text}")
    for s in e.steps:
        lines.append("")
        lines.append(f"step {s.id}: delay {_duration(s.delay)}, freshness {_duration(s.freshness) or '-'}, "
                     f"send_at {s.send_at.strftime('%H:%M') if s.send_at else '-'}"
                     + (f", wait_until {s.wait[0]} (at most {_duration(s.wait[1])} after the trigger: due at the "
                        "event, or then)" if s.wait else ""))
        for i in s.instances:
            if i.trigger_key is None:
                lines.append(f"  => {i.verdict.text}")
                continue
            lines.append(f"  instance {i.trigger_key} at {_instant(i.trigger_at)}: due {_instant(i.due_at)}"
                         + (f", stale from {_instant(i.stale_after)}" if i.stale_after else ""))
            for f in i.filters:
                label = f"variant {f['variant']} audience" if f["scope"] == "variant" else f"{f['scope']} audience"
                lines.append(f"    {label}: {f['filter']} -> {'matched' if f['matched'] else 'NOT matched'}")
            if e.stop:
                lines.append(f"    stop: {', '.join(i.stopped_by) + ' fired' if i.stopped_by else 'none fired'}")
            ledger = i.ledger
            lines.append("    ledger: " + (f"{ledger['status']}" + (f" ({ledger['reason']})" if ledger["reason"] else "")
                                           + f", updated {ledger['updated_at']}" if ledger else "nothing recorded"))
            lines.append(f"    => {i.verdict.text}  [{i.message_key}]")
    return "\n".join(lines)
