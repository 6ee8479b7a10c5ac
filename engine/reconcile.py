"""One reconciler pass: due set -> minus ledger -> claim -> render -> dispatch -> record.

Level-based like a Kubernetes controller: each pass recomputes what should
have happened by ``now`` from the warehouse and the ledger alone, so a crash
or restart needs no special path. ``plan`` is the same computation without
the writes. The warehouse computes due sets (compile.py); Python only sees
due rows, in batches, and keeps counts, never the whole set.
"""
from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from typing import Iterator

import sqlglot
from sqlglot import exp

from .channels import ChannelSession, Delivered, OutgoingMessage, open_channel
from .clock import format_instant, to_utc
from .compile import CUSTOMER_PREFIX, DUE_COLUMNS, due_query, entries_insert, render_sql, source_select
from .config import database_url
from .errors import ChannelError, TemplateError
from .ledger import Ledger, Record, message_key
from .model import AtRisk, Campaign, CheckoutAbandoned, Project
from .render import Renderer
from .warehouse import Database

BATCH_SIZE = 1000
CONTACT_FIELD = {"email": "email", "sms": "phone"}


@dataclass(frozen=True)
class DueMessage:
    """One message the pass decided about: send it, or skip it with a reason."""

    campaign: str
    step: str
    customer_id: str
    trigger_key: str
    trigger_at: datetime
    due_at: datetime
    channel: str
    customer: dict
    action: str  # "send" | "skip"
    reason: str | None = None

    @property
    def key(self) -> str:
        return message_key(self.campaign, self.step, self.customer_id, self.trigger_key)

    def as_dict(self) -> dict:
        return {
            "campaign": self.campaign,
            "step": self.step,
            "customer_id": self.customer_id,
            "trigger_key": self.trigger_key,
            "channel": self.channel,
            "due_at": format_instant(self.due_at),
            "trigger_at": format_instant(self.trigger_at),
            "action": self.action,
            "reason": self.reason,
            "message_key": self.key,
        }


@dataclass
class PassReport:
    """Counts per (campaign, step, outcome) and any channel that could not open."""

    now: datetime
    counts: Counter = field(default_factory=Counter)
    errors: list[str] = field(default_factory=list)

    def add(self, campaign: str, step: str, outcome: str, n: int = 1) -> None:
        self.counts[(campaign, step, outcome)] += n

    def total(self, outcome_prefix: str) -> int:
        return sum(n for (_, _, outcome), n in self.counts.items() if outcome.startswith(outcome_prefix))


def _parse_timestamp(value: object) -> datetime:
    if isinstance(value, datetime):
        return to_utc(value)
    return to_utc(datetime.fromisoformat(str(value)))


class Reconciler:
    """Binds a project to its databases and channels; ``plan`` reads, ``run_once`` acts."""

    def __init__(self, project: Project, batch_size: int = BATCH_SIZE):
        self.project = project
        self.config = project.config
        self.batch_size = batch_size
        self.warehouse = Database(database_url(self.config, "warehouse"), must_exist=True)
        if self.config.ledger_shares_warehouse:
            self.ledger = Ledger(self.warehouse)
        else:
            self.ledger = Ledger(Database(database_url(self.config, "ledger")))
        self.ledger.ensure_schema()

    def close(self) -> None:
        self.warehouse.dispose()
        self.ledger.db.dispose()

    # --- reading -----------------------------------------------------------

    def campaigns(self, names: list[str] | None = None) -> list[Campaign]:
        if names:
            return [self.project.campaign(n) for n in names]
        return [c for c in self.project.campaigns if c.enabled]

    def due(self, now: datetime, campaigns: list[Campaign] | None = None) -> Iterator[list[DueMessage]]:
        """Batches of messages due at ``now`` and not yet in the ledger."""
        shares = self.config.ledger_shares_warehouse
        for campaign in campaigns if campaigns is not None else self.campaigns():
            sql = render_sql(due_query(campaign, self.config, now, exclude_ledger=shares), self.config.dialect)
            for rows in self.warehouse.stream(sql, self.batch_size):
                batch = [self._decide(campaign, row, now) for row in rows]
                if not shares:
                    known = self.ledger.existing_keys([m.key for m in batch])
                    batch = [m for m in batch if m.key not in known]
                if batch:
                    yield batch

    def _decide(self, campaign: Campaign, row, now: datetime) -> DueMessage:
        values = row._mapping
        step = campaign.step(values["step"])
        trigger_at = _parse_timestamp(values["trigger_at"])
        due_at = trigger_at + step.delay
        customer = {"customer_id": str(values["customer_id"])}
        for name, value in values.items():
            if name.startswith(CUSTOMER_PREFIX):
                customer[name[len(CUSTOMER_PREFIX):]] = value
        kind = self.config.channels[step.channel].kind
        action, reason = "send", None
        if step.freshness is not None and now > due_at + step.freshness:
            action, reason = "skip", "stale"
        elif not customer.get(CONTACT_FIELD[kind]):
            action, reason = "skip", "no_contact"
        return DueMessage(
            campaign=campaign.name, step=step.id, customer_id=str(values["customer_id"]),
            trigger_key=str(values["trigger_key"]), trigger_at=trigger_at, due_at=due_at,
            channel=step.channel, customer=customer, action=action, reason=reason,
        )

    # --- acting ------------------------------------------------------------

    def run_once(self, now: datetime, campaigns: list[Campaign] | None = None) -> PassReport:
        report = PassReport(now=now)
        selected = campaigns if campaigns is not None else self.campaigns()
        for campaign in selected:
            insert = entries_insert(campaign, self.config, now)
            if insert is not None:
                self.warehouse.execute(render_sql(insert, self.config.dialect))
        renderer = Renderer(self.project.templates_dir)
        # Build every adapter first: a missing secret fails the pass before anything is claimed.
        adapters = {
            step.channel: open_channel(self.config.channels[step.channel], self.config.root)
            for campaign in selected for step in campaign.steps
        }
        sessions: dict[str, ChannelSession | None] = {}
        try:
            for batch in self.due(now, selected):
                self._process(batch, now, renderer, adapters, sessions, report)
        finally:
            for session in sessions.values():
                if session is not None:
                    session.close()
        return report

    def _session(self, name: str, adapters: dict, sessions: dict, report: PassReport) -> ChannelSession | None:
        """The open session of channel ``name``, opened on first use; None if it cannot open."""
        if name not in sessions:
            session = adapters[name]
            try:
                session.open()
                sessions[name] = session
            except ChannelError as exc:
                report.errors.append(str(exc))
                sessions[name] = None
        return sessions[name]

    def _process(self, batch: list[DueMessage], now: datetime, renderer: Renderer,
                 adapters: dict, sessions: dict, report: PassReport) -> None:
        skips = [m for m in batch if m.action == "skip"]
        recorded = self.ledger.write_new((_record(m, "skipped", reason=m.reason) for m in skips), now)
        for m in skips:
            if m.key in recorded:
                report.add(m.campaign, m.step, f"skipped:{m.reason}")
        # open channels before claiming: a channel that cannot open gets no claims
        sendable = [m for m in batch if m.action == "send" and self._session(m.channel, adapters, sessions, report) is not None]
        for m in batch:
            if m.action == "send" and sessions.get(m.channel) is None:
                report.add(m.campaign, m.step, "not_sent:channel_unavailable")
        claimed = self.ledger.write_new((_record(m, "claimed") for m in sendable), now)
        to_send = [m for m in sendable if m.key in claimed]
        contexts = _TriggerContexts(self).load(to_send)
        outcomes = []
        for m in to_send:
            campaign = self.project.campaign(m.campaign)
            step = campaign.step(m.step)
            channel = self.config.channels[m.channel]
            context = _template_context(m, contexts.get((m.campaign, m.trigger_key), {}))
            try:
                content = renderer.render(step.template, channel.kind, context)
            except TemplateError as exc:
                outcomes.append(_record(m, "failed", reason="render_error", detail=str(exc)))
                report.add(m.campaign, m.step, "failed:render_error")
                continue
            message = OutgoingMessage(
                key=m.key, kind=channel.kind, to=str(m.customer[CONTACT_FIELD[channel.kind]]),
                sender=str(channel.settings.get("from", "shop@example.com")),
                subject=content.subject, text=content.text, html=content.html,
            )
            outcome = sessions[m.channel].send(message)
            stored = json.dumps({"to": message.to, "subject": content.subject, "text": content.text, "html": content.html})
            if isinstance(outcome, Delivered):
                outcomes.append(_record(m, "sent", detail=f"{outcome.provider_id} {outcome.detail}".strip(), content=stored))
                report.add(m.campaign, m.step, "sent")
            else:
                reason = "permanent" if outcome.permanent else "transient"
                outcomes.append(_record(m, "failed", reason=reason, detail=outcome.detail, content=stored))
                report.add(m.campaign, m.step, f"failed:{reason}")
        self.ledger.record_outcomes(outcomes, now)


def _record(m: DueMessage, status: str, reason: str | None = None, detail: str | None = None,
            content: str | None = None) -> Record:
    return Record(
        message_key=m.key, campaign=m.campaign, step=m.step, customer_id=m.customer_id,
        trigger_key=m.trigger_key, channel=m.channel, status=status, due_at=m.due_at,
        reason=reason, detail=detail, content=content,
    )


def _template_context(m: DueMessage, trigger_record: dict) -> dict:
    return {
        "customer": m.customer,
        "campaign": m.campaign,
        "step": m.step,
        "message_key": m.key,
        "due_at": m.due_at,
        "trigger": {"key": m.trigger_key, "at": m.trigger_at, **trigger_record},
        "items": trigger_record.get("items", []),
    }


class _TriggerContexts:
    """Loads the triggering order or checkout and its items for a batch, in two queries."""

    #: trigger kind -> (record entity, items entity, id column)
    ENTITIES = {
        "order_placed": ("orders", "order_items", "order_id"),
        "at_risk": ("orders", "order_items", "order_id"),
        "checkout_abandoned": ("checkouts", "checkout_items", "checkout_id"),
    }

    def __init__(self, reconciler: Reconciler):
        self.reconciler = reconciler
        self.config = reconciler.config

    def load(self, messages: list[DueMessage]) -> dict[tuple[str, str], dict]:
        by_kind: dict[str, dict[str, set[str]]] = {}
        for m in messages:
            kind = self.reconciler.project.campaign(m.campaign).trigger.kind
            by_kind.setdefault(kind, {}).setdefault(m.campaign, set()).add(m.trigger_key)
        contexts: dict[tuple[str, str], dict] = {}
        for kind, campaigns in by_kind.items():
            record_entity, items_entity, id_column = self.ENTITIES[kind]
            keys = sorted(set().union(*campaigns.values()))
            records = self._fetch(record_entity, id_column, keys)
            items = self._fetch(items_entity, id_column, keys)
            for key in keys:
                record = dict(records.get(key, [{}])[0]) if key in records else {}
                record["items"] = items.get(key, [])
                for campaign, campaign_keys in campaigns.items():
                    if key in campaign_keys:
                        contexts[(campaign, key)] = record
        return contexts

    def _fetch(self, entity: str, id_column: str, keys: list[str]) -> dict[str, list[dict]]:
        source = self.config.sources.get(entity)
        if source is None or not keys:
            return {}
        key_expr = exp.cast(exp.column(id_column), exp.DataType.build("VARCHAR"))
        query = (
            exp.select("*")
            .from_("src")
            .where(key_expr.isin(*[exp.Literal.string(k) for k in keys]))
            .with_("src", as_=source_select(source, self.config.dialect))
        )
        grouped: dict[str, list[dict]] = {}
        for row in self.reconciler.warehouse.fetch_all(render_sql(query, self.config.dialect)):
            values = dict(row._mapping)
            grouped.setdefault(str(values[id_column]), []).append(values)
        return grouped
