"""One reconciler pass: due set -> minus ledger -> claim -> render -> dispatch -> record.

Level-based like a Kubernetes controller: each pass recomputes what should
have happened by ``now`` from the warehouse and the ledger alone, so a crash
or restart needs no special path. ``plan`` is the same computation without
the writes. The warehouse computes due sets (compile.py); Python only sees
due rows, in batches, and keeps counts, never the whole set.
"""
from __future__ import annotations

import functools
import hashlib
import re
import threading
from collections import Counter
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Iterator

from sqlglot import exp

from engine import channel_kinds, unsubscribe
from engine.channels import ChannelSession, Delivered, OutgoingMessage, open_channel
from engine.clock import UTC, format_instant, parse_stored_date, parse_stored_timestamp, to_utc
from engine.sql.compile import (
    CUSTOMER_PREFIX, MAX_ZONES, SHARED_FACTS, TEMP_TABLE_DIALECTS, VARIANT_PREFIX, due_query, entries_insert,
    keys_in_sql, render_sql, shared_facts_create, shared_facts_drop, shared_facts_used, source_select,
    variant_columns, zones_query,
)
from engine.spec.code_secret import code_secrets
from engine.spec.config import database_url
from engine.decide import (
    anniversary_instance, customer_zone, discount_code, due_time, in_holdout, in_quiet_hours, matching_variants,
    stable_bucket,
)
from engine.run.dispatch import DEFAULT_IN_FLIGHT, Sent, deserialize, next_attempt, send_all, serialize
from engine.errors import ChannelError, TemplateError, WarehouseError
from engine.faults import checkpoint
from engine.run.policies import PolicyState, apply_policies, choose_channels
from engine.progress import Progress
from engine.state.ledger import Ledger, Record, message_key
from engine.model import Anniversary, Campaign, Event, Project
from engine.templating.render import Renderer
from engine.state.warehouse import Database, Session

BATCH_SIZE = 1000
_CANONICAL_INT = re.compile(r"-?(0|[1-9][0-9]*)")  # what CAST(integer AS VARCHAR) gives


@dataclass(slots=True)
class DueMessage:
    """One message the pass decided about: send it, skip it with a reason, or defer it.

    ``defer`` (quiet hours) is not recorded: the message stays due and is
    reconsidered at the next pass, until its freshness window runs out.
    """

    campaign: str
    step: str
    customer_id: str
    trigger_key: str
    trigger_at: datetime
    due_at: datetime
    channel: str | None
    customer: dict
    action: str  # "send" | "skip" | "defer"
    reason: str | None = None
    variant: str | None = None
    detail: str | None = None
    #: ids of the step's variants this customer qualifies for, in preference order (channel choice)
    candidates: tuple[str, ...] = ()

    @property
    def key(self) -> str:
        return message_key(self.campaign, self.step, self.customer_id, self.trigger_key)

    @property
    def outcome(self) -> str:
        return self.action if self.action == "send" else f"{self.action}:{self.reason}"

    def as_dict(self) -> dict:
        return {
            "campaign": self.campaign,
            "step": self.step,
            "customer_id": self.customer_id,
            "trigger_key": self.trigger_key,
            "channel": self.channel,
            "variant": self.variant,
            "due_at": format_instant(self.due_at),
            "trigger_at": format_instant(self.trigger_at),
            "action": self.action,
            "reason": self.reason,
            "detail": self.detail,
            "message_key": self.key,
        }


#: A pass that recorded at least this many outcomes refreshes the ledger's planner statistics.
STATISTICS_AFTER = 10_000


@dataclass
class PassReport:
    """Counts per (campaign, step, outcome) and any channel that could not open.

    ``by_channel`` has the same counts split by channel (campaign, step,
    channel, outcome), for metrics; channel is None when no variant applied.
    """

    now: datetime
    counts: Counter = field(default_factory=Counter)
    errors: list[str] = field(default_factory=list)
    by_channel: Counter = field(default_factory=Counter)
    #: campaign -> why its segment entries, query or decisions failed this pass (the others went on)
    failed_campaigns: dict[str, str] = field(default_factory=dict)

    def add(self, campaign: str, step: str, outcome: str, n: int = 1, channel: str | None = None) -> None:
        self.counts[(campaign, step, outcome)] += n
        self.by_channel[(campaign, step, channel, outcome)] += n

    def total(self, outcome_prefix: str) -> int:
        return sum(n for (_, _, outcome), n in self.counts.items() if outcome.startswith(outcome_prefix))


_QUOTED = re.compile(r"'(?:[^']|'')*'")


def campaign_failure(exc: BaseException) -> str:
    """One line saying why a campaign failed, without the values a database error may quote
    (a customer's email in a conversion error): single-quoted strings become '...'."""
    first = (str(exc).strip().splitlines() or [""])[0]
    if not isinstance(exc, (WarehouseError, TemplateError, ChannelError)):
        first = f"{type(exc).__name__}: {first}"
    return _QUOTED.sub("'...'", first)[:500]


def shard_of(customer_id: str, count: int) -> int:
    """Which of ``count`` replicas owns this customer (a stable hash, not Python's salted one)."""
    return int.from_bytes(hashlib.sha256(customer_id.encode()).digest()[:4], "big") % count


class _RowLayout:
    """Where each column of a campaign's due query sits in its rows (worked out once per query)."""

    def __init__(self, fields: tuple[str, ...], campaign: Campaign):
        position = {name: index for index, name in enumerate(fields)}
        self.step, self.customer_id = position["step"], position["customer_id"]
        self.trigger_key, self.trigger_at = position["trigger_key"], position["trigger_at"]
        self.stopped_by = position["stopped_by"]
        self.yearly = isinstance(campaign.trigger, Anniversary)
        self.anniversary = position.get("anniversary")
        self.matches = [position[f"{VARIANT_PREFIX}{i}"] for i in range(variant_columns(campaign))]
        # the customer's attributes are the query's last columns (compile.due_query)
        self.customer_start = min(i for name, i in position.items() if name.startswith(CUSTOMER_PREFIX))
        self.customer_names = [name[len(CUSTOMER_PREFIX):] for name in fields[self.customer_start:]]
        assert all(name.startswith(CUSTOMER_PREFIX) for name in fields[self.customer_start:])
        self.steps = {step.id: step for step in campaign.steps}
        #: steps with an A/B split: only those need the customer's stable bucket
        self.split_steps = {step.id for step in campaign.steps if any(v.percent is not None for v in step.variants)}


@functools.lru_cache(maxsize=1024)
def _zone(name: object, default: str):
    return customer_zone(name, default)


class Reconciler:
    """Binds a project to its databases and channels; ``due`` reads, ``run_once`` acts."""

    def __init__(self, project: Project, batch_size: int = BATCH_SIZE, shard: tuple[int, int] | None = None,
                 ledger: Ledger | None = None, progress: Progress | None = None):
        """``ledger`` replaces the configured one (a backtest's scratch ledger in another database);
        ``progress`` hears of each campaign and batch of rows (default: silent)."""
        self.project = project
        self.shard = shard
        self.config = project.config
        self.batch_size = batch_size
        self.progress = progress or Progress()
        self.warehouse = Database(database_url(self.config, "warehouse"), must_exist=True,
                                  duckdb_settings=self.config.duckdb_settings)
        self.ledger_shares_warehouse = ledger is None and self.config.ledger_shares_warehouse
        if ledger is not None:
            self.ledger = ledger
        elif self.config.ledger_shares_warehouse:
            self.ledger = Ledger(self.warehouse)
        else:
            self.ledger = Ledger(Database(database_url(self.config, "ledger")))
        self.ledger.ensure_schema()
        self.key_kinds: dict[tuple[str, str], str] = {}  # (entity, id column) -> "int" | "str" | "cast"

    def close(self) -> None:
        self.warehouse.dispose()
        self.ledger.db.dispose()

    # --- reading -----------------------------------------------------------

    def campaigns(self, names: list[str] | None = None) -> list[Campaign]:
        if names:
            return [self.project.campaign(n) for n in names]
        return [c for c in self.project.campaigns if c.enabled]

    def due(self, now: datetime, campaigns: list[Campaign] | None = None,
            customer_id: str | None = None, failures: dict[str, str] | None = None) -> Iterator[list[DueMessage]]:
        """Batches of messages due at ``now`` and not yet in the ledger, policies applied.

        Campaigns go in priority order (highest first), so when a frequency cap
        lets a customer receive fewer messages than are due, the higher
        priority campaign's message is the one that goes out. ``customer_id``
        restricts the plan to one customer (``engine explain``), same rules.

        With ``failures`` given, a campaign whose query or decisions fail
        (a type error only the warehouse sees, an overflow in its dates) is
        recorded there by name with the reason, and the other campaigns go on;
        the batches it yielded before failing stand. Without, the error ends
        the iteration.
        """
        shares = self.ledger_shares_warehouse
        state = PolicyState()
        selected = campaigns if campaigns is not None else self.campaigns()
        recency = {c.name: c.not_contacted_within for c in self.project.campaigns}
        self.ledger.snapshot_policies()
        ordered = sorted(selected, key=lambda c: -c.priority)
        # Per-customer facts (order count, last order, last event...) are computed once per pass into
        # temporary tables on one connection and shared by every campaign's query (issue 7).
        shared = self.config.dialect in TEMP_TABLE_DIALECTS and customer_id is None
        with self.warehouse.session() as session:
            created: list[str] = []
            zones = self._customer_zones(session, ordered) if customer_id is None else None
            try:
                for position, campaign in enumerate(ordered, 1):
                    if failures is not None and campaign.name in failures:
                        continue  # failed earlier in this pass (its segment entries)
                    self.progress.stage("campaign", position, len(ordered), campaign.name)
                    try:
                        query = due_query(campaign, self.config, now, exclude_ledger=shares, customer_id=customer_id,
                                          shared_facts=shared, zones=zones)
                        for entity in shared_facts_used(query):
                            if entity not in created:
                                self._drop_facts(session, entity)
                                session.execute(render_sql(shared_facts_create(entity, self.config, now), self.config.dialect))
                                created.append(entity)
                        yield from self._due_batches(campaign, render_sql(query, self.config.dialect), session, now,
                                                     state, recency)
                    except Exception as exc:  # noqa: BLE001 - one campaign's failure is reported, the others go on
                        if failures is None:
                            raise
                        failures[campaign.name] = campaign_failure(exc)
            finally:  # temporary tables outlive the pass in a pooled connection; the next CREATE drops them too
                for entity in created:
                    try:
                        self._drop_facts(session, entity, created=True)
                    except WarehouseError:  # do not hide the error that ended the pass
                        break

    def _drop_facts(self, session: Session, entity: str, created: bool = False) -> None:
        """Drop a pass's fact table: by its temporary schema where the dialect can name it (never a
        permanent table of the same name); elsewhere only a table this pass ``created``."""
        statement = shared_facts_drop(entity, self.config.dialect)
        if statement is None and created:
            statement = f"DROP TABLE {SHARED_FACTS[entity]}"
        if statement is not None:
            session.execute(statement)

    def _customer_zones(self, session: Session, campaigns: list[Campaign]) -> list | None:
        """The customers' distinct time zone values, when a campaign has a local send time (its
        query then cuts its time window per zone); None when there are too many to list."""
        if not any(step.send_at is not None and keys_in_sql(c) for c in campaigns for step in c.steps):
            return None
        zones = [row[0] for rows in session.stream(render_sql(zones_query(self.config), self.config.dialect))
                 for row in rows]
        return zones if len(zones) <= MAX_ZONES else None

    def _due_batches(self, campaign: Campaign, sql: str, session: Session, now: datetime, state: PolicyState,
                     recency: dict) -> Iterator[list[DueMessage]]:
        """One campaign's due query, streamed, decided and filtered through the policies batch by batch."""
        shares = self.ledger_shares_warehouse
        entered: dict[str, list[tuple[str, datetime]]] = {}  # re-entry: instances sent in this pass
        layout = None
        channels = {f"{campaign.name}:{s.id}:{v.id}": v.channel for s in campaign.steps for v in s.variants}
        for rows in session.stream(sql, self.batch_size):
            self.progress.rows(len(rows))
            layout = layout or _RowLayout(rows[0]._fields, campaign)
            batch = [m for m in (self._decide(campaign, row, now, layout) for row in rows) if m is not None]
            if self.shard is not None:
                index, count = self.shard
                batch = [m for m in batch if shard_of(m.customer_id, count) == index]
            if not shares or not keys_in_sql(campaign):
                known = self.ledger.existing_keys([m.key for m in batch])
                batch = [m for m in batch if m.key not in known]
            batch = choose_channels(self.config, self.ledger, batch, channels)
            batch = self._after_channel_choice(campaign, batch, now)
            if campaign.reentry.mode != "per_trigger":
                batch = self._apply_reentry(campaign, batch, entered)
            batch = apply_policies(self.config, self.ledger, batch, now, state, recency)
            if batch:
                yield batch

    def _decide(self, campaign: Campaign, row, now: datetime, layout: "_RowLayout | None" = None) -> DueMessage | None:
        """What to do with one candidate row, or None when it is not due (yet, or any more).

        Runs once per candidate row, so it reads columns by position (``layout``,
        worked out once per query) rather than by name.
        """
        layout = layout or _RowLayout(row._fields, campaign)
        step = layout.steps[row[layout.step]]
        customer = dict(zip(layout.customer_names, row[layout.customer_start:]))
        customer_id = customer["customer_id"] = str(row[layout.customer_id])
        trigger_key = row[layout.trigger_key]
        if layout.yearly:
            zone = _zone(customer.get("timezone"), self.config.default_timezone)
            instance = anniversary_instance(parse_stored_date(row[layout.anniversary]), step, now, zone)
            if instance is None:
                return None
            trigger_at, trigger_key = instance
        else:
            value = row[layout.trigger_at]
            trigger_at = value.replace(tzinfo=UTC) if type(value) is datetime and value.tzinfo is None \
                else parse_stored_timestamp(value)
        if step.send_at is None:  # the common case needs no time zone
            due_at = trigger_at + step.delay
        else:
            due_at = due_time(trigger_at, step, _zone(customer.get("timezone"), self.config.default_timezone))
        if due_at > now:
            return None
        if step.freshness is not None and now > due_at + step.freshness + self.config.stale_horizon:
            return None
        matches = [row[i] for i in layout.matches]
        bucket = stable_bucket(campaign.name, customer_id) if step.id in layout.split_steps else 0
        candidates = matching_variants(step, matches, bucket)
        first = candidates[0] if candidates else None
        message = DueMessage(campaign.name, step.id, customer_id, str(trigger_key), trigger_at, due_at,
                             first.channel if first else None, customer, "send", None,
                             first.id if first else None)
        stopped_by = row[layout.stopped_by]
        if stopped_by:
            message.action, message.reason, message.detail = "skip", "stopped", str(stopped_by)
        elif step.freshness is not None and now > due_at + step.freshness:
            message.action, message.reason = "skip", "stale"
        elif first is None:
            message.action, message.reason = "skip", "no_variant"
        else:
            message.candidates = tuple(v.id for v in candidates)
        return message

    def _after_channel_choice(self, campaign: Campaign, batch: list[DueMessage], now: datetime) -> list[DueMessage]:
        """Holdout and quiet hours, which depend on the campaign and on the channel finally chosen."""
        decided = []
        for m in batch:
            if m.action == "send":
                step = campaign.step(m.step)
                zone = _zone(m.customer.get("timezone"), self.config.default_timezone)
                if in_holdout(campaign.name, m.customer_id, campaign.holdout):
                    m = replace(m, action="skip", reason="holdout")
                elif in_quiet_hours(now, step.quiet_hours or self.config.quiet_hours.get(m.channel), zone):
                    m = replace(m, action="defer", reason="quiet_hours")
            decided.append(m)
        return decided

    def _apply_reentry(self, campaign: Campaign, batch: list[DueMessage],
                       entered: dict[str, list[tuple[str, datetime]]]) -> list[DueMessage]:
        """Skip instances the re-entry rule forbids (once ever / within the cool-down)."""
        sending = [m for m in batch if m.action == "send"]
        history = self.ledger.sent_instances(campaign.name, sorted({m.customer_id for m in sending}))
        decided = []
        for m in batch:
            if m.action == "send":
                earlier = [(k, at) for k, at in history.get(m.customer_id, []) + entered.get(m.customer_id, [])
                           if k != m.trigger_key]
                if campaign.reentry.mode == "once":
                    blocked = bool(earlier)
                else:
                    blocked = any(at is not None and abs(to_utc(at) - m.trigger_at) < campaign.reentry.cooldown
                                  for _, at in earlier)
                if blocked:
                    m = replace(m, action="skip", reason="reentry")
                else:
                    entered.setdefault(m.customer_id, []).append((m.trigger_key, m.trigger_at))
            decided.append(m)
        return decided

    # --- acting ------------------------------------------------------------

    def run_once(self, now: datetime, campaigns: list[Campaign] | None = None,
                 stop: threading.Event | None = None) -> PassReport:
        """One pass. With ``stop`` set (SIGTERM) it ends after the batch in flight:
        every claim it made is sent and recorded before it returns."""
        report = PassReport(now=now)
        selected = campaigns if campaigns is not None else self.campaigns()
        # Build every adapter first: a missing secret fails the pass before anything is claimed.
        adapters = {name: open_channel(self.config.channels[name], self.config.root) for name in self._channels(selected)}
        secret = code_secrets(self.config).signing  # refuses a missing or known secret outside the demo
        sessions: dict[str, ChannelSession | None] = {}
        try:
            self._recover(now, adapters, sessions, report)
            self.enter_segments(now, selected, failures=report.failed_campaigns)
            renderer = Renderer(self.project.templates_dir)
            for batch in self.due(now, selected, failures=report.failed_campaigns):
                self._process(batch, now, renderer, adapters, sessions, report, secret)
                if stop is not None and stop.is_set():
                    report.errors.append("stopped early on request; the rest is due at the next pass")
                    break
        finally:
            for session in sessions.values():
                if session is not None:
                    session.close()
        if sum(report.counts.values()) >= STATISTICS_AFTER:
            self.ledger.refresh_statistics()
        return report

    def enter_segments(self, now: datetime, campaigns: list[Campaign] | None = None,
                       failures: dict[str, str] | None = None) -> None:
        """Record who entered a segment trigger (at risk) since the last pass; a pass does this
        before it plans, so ``due`` sees the entries. With ``failures``, a campaign whose
        entries fail is recorded there (and ``due`` skips it) instead of ending the pass."""
        for campaign in campaigns if campaigns is not None else self.campaigns():
            try:
                insert = entries_insert(campaign, self.config, now)
                if insert is not None:
                    self.warehouse.execute(render_sql(insert, self.config.dialect))
            except Exception as exc:  # noqa: BLE001 - as in due(): this campaign fails, the others go on
                if failures is None:
                    raise
                failures[campaign.name] = campaign_failure(exc)

    def _channels(self, campaigns: list[Campaign]) -> list[str]:
        used = {channel for campaign in campaigns for step in campaign.steps for channel in step.channels}
        return sorted(used)

    def _session(self, name: str, adapters: dict, sessions: dict, report: PassReport) -> ChannelSession | None:
        """The open session of channel ``name``, opened on first use; None if it cannot open."""
        if name not in sessions:
            session = adapters.get(name) or open_channel(self.config.channels[name], self.config.root)
            try:
                session.open()
                sessions[name] = session
            except ChannelError as exc:
                report.errors.append(str(exc))
                sessions[name] = None
        return sessions[name]

    def _recover(self, now: datetime, adapters: dict, sessions: dict, report: PassReport) -> None:
        """Finish what earlier passes left: claims of dead processes, and retries that are due."""
        for row in self.ledger.stale_claims(now - self.config.claim_timeout):
            channel = self.config.channels.get(row["channel"] or "")
            if row["content"] is None and self._past_freshness(row, now):
                # never sent, and too late now: record it, as a pass would, since the due query
                # may no longer look back far enough to derive it again (freshness + stale horizon)
                if self.ledger.skip_unsent_claim(row["message_key"], "stale", now):
                    report.add(row["campaign"], row["step"], "skipped:stale", channel=row["channel"])
            elif row["content"] is None:  # never rendered, so never sent: let the next pass derive it again
                if self.ledger.release(row["message_key"]):
                    report.add(row["campaign"], row["step"], "released", channel=row["channel"])
            elif channel is not None and channel.settings.get("delivery") == "at_least_once":
                if self.ledger.reclaim(row, now):
                    self._resend(row, now, adapters, sessions, report)
            else:
                self.ledger.mark_unknown(row["message_key"], now)
                report.add(row["campaign"], row["step"], "unknown", channel=row["channel"])
        for row in self._retries_allowed(now, report):
            if self.ledger.reclaim(row, now):
                self._resend(row, now, adapters, sessions, report)

    def _retries_allowed(self, now: datetime, report: PassReport) -> list[dict]:
        """The retries due now that the policies still allow: a retry is a send like any other.

        An unsubscribe, a lost consent, a suppression or a frequency cap reached since
        the first attempt turns the retry into ``skipped`` with that reason; quiet hours
        leave it failed and due, for the first pass after they end. The customer's
        consent columns and time zone are read from the warehouse, for these customers only.
        """
        rows = [row for row in self.ledger.retries_due(now) if row["channel"] in self.config.channels]
        if not rows:
            return []
        found = _TriggerContexts(self)._fetch("customers", "customer_id", sorted({row["customer_id"] for row in rows}))
        mapped = self.config.sources["customers"].columns  # an unmapped consent column reads NULL: not "no consent"
        candidates = []
        for row in rows:
            attributes = (found.get(row["customer_id"]) or [{}])[0]
            customer = {**{k: v for k, v in attributes.items() if k in mapped}, "customer_id": row["customer_id"]}
            zone = customer_zone(customer.get("timezone"), self.config.default_timezone)
            if in_quiet_hours(now, self._quiet_hours(row["campaign"], row["step"], row["channel"]), zone):
                continue
            candidates.append((row, DueMessage(
                campaign=row["campaign"], step=row["step"], customer_id=row["customer_id"], trigger_key=row["trigger_key"],
                trigger_at=row["trigger_at"], due_at=row["due_at"], channel=row["channel"], customer=customer,
                action="send", variant=row["variant"], candidates=(row["variant"],))))
        # the channel is the one the message was rendered for: consent and suppression are checked
        # for it alone, then caps (not_contacted_within was decided with the first attempt)
        channels = {f"{row['campaign']}:{row['step']}:{row['variant']}": row["channel"] for row, _ in candidates}
        self.ledger.snapshot_policies()
        decided = choose_channels(self.config, self.ledger, [m for _, m in candidates], channels)
        decided = apply_policies(self.config, self.ledger, decided, now, PolicyState())
        allowed = []
        for (row, _), m in zip(candidates, decided):
            if m.action == "send":
                allowed.append(row)
            elif self.ledger.skip_failed(row["message_key"], m.reason, now):
                report.add(m.campaign, m.step, f"skipped:{m.reason}", channel=m.channel)
        return allowed

    def _past_freshness(self, row: dict, now: datetime) -> bool:
        """Whether a ledger row's message is past its step's freshness window at ``now``."""
        try:
            freshness = self.project.campaign(row["campaign"]).step(row["step"]).freshness
        except KeyError:
            return False
        return freshness is not None and row["due_at"] is not None and now > parse_stored_timestamp(row["due_at"]) + freshness

    def _quiet_hours(self, campaign: str, step: str, channel: str):
        """The quiet hours of a step (or its channel's default), also for a campaign removed since."""
        try:
            quiet = self.project.campaign(campaign).step(step).quiet_hours
        except KeyError:
            quiet = None
        return quiet or self.config.quiet_hours.get(channel)

    def _resend(self, row: dict, now: datetime, adapters: dict, sessions: dict, report: PassReport) -> None:
        """Send a stored message again, identical (same Message-ID / reference)."""
        session = self._session(row["channel"], adapters, sessions, report)
        if session is None:  # give it back: try again later
            self.ledger.record_outcomes([Record(
                message_key=row["message_key"], campaign=row["campaign"], step=row["step"], customer_id=row["customer_id"],
                trigger_key=row["trigger_key"], channel=row["channel"], status="failed", reason="transient",
                detail="channel unavailable", next_attempt_at=next_attempt(self.config.retry, row["message_key"], row["attempts"] + 1, now),
            )], now)
            return
        message = deserialize(row["message_key"], row["content"])
        [sent] = send_all([(row["channel"], message)], {row["channel"]: session})
        record = self._outcome_record(row["message_key"], row["campaign"], row["step"], row["customer_id"],
                                      row["trigger_key"], row["channel"], row["attempts"] + 1, sent, now, report)
        self.ledger.record_outcomes([record], now)

    def _outcome_record(self, key: str, campaign: str, step: str, customer_id: str, trigger_key: str, channel: str,
                        attempts: int, sent: Sent, now: datetime, report: PassReport) -> Record:
        common = dict(message_key=key, campaign=campaign, step=step, customer_id=customer_id,
                      trigger_key=trigger_key, channel=channel)
        outcome = sent.outcome
        if isinstance(outcome, Delivered):
            report.add(campaign, step, "sent", channel=channel)
            return Record(**common, status="sent", detail=f"{outcome.provider_id} {outcome.detail}".strip())
        if outcome.permanent:
            self.ledger.suppress(sent.message.kind, channel_kinds.kind(sent.message.kind).suppression_key(sent.message.to),
                                 "bounced", outcome.detail, now)
            report.add(campaign, step, "failed:permanent", channel=channel)
            return Record(**common, status="failed", reason="permanent", detail=outcome.detail)
        retry_at = next_attempt(self.config.retry, key, attempts, now)
        reason = "transient" if retry_at is not None else "exhausted"
        report.add(campaign, step, f"failed:{reason}", channel=channel)
        return Record(**common, status="failed", reason=reason, detail=outcome.detail, next_attempt_at=retry_at)

    def _process(self, batch: list[DueMessage], now: datetime, renderer: Renderer,
                 adapters: dict, sessions: dict, report: PassReport, secret: str) -> None:
        for m in batch:
            if m.action == "defer":
                report.add(m.campaign, m.step, m.outcome, channel=m.channel)
        skips = [m for m in batch if m.action == "skip"]
        recorded = self.ledger.write_new((_record(m, "skipped", reason=m.reason, detail=m.detail) for m in skips), now)
        for m in skips:
            if m.key in recorded:
                report.add(m.campaign, m.step, f"skipped:{m.reason}", channel=m.channel)
        # open channels before claiming: a channel that cannot open gets no claims
        sendable = [m for m in batch if m.action == "send" and self._session(m.channel, adapters, sessions, report) is not None]
        for m in batch:
            if m.action == "send" and sessions.get(m.channel) is None:
                report.add(m.campaign, m.step, "not_sent:channel_unavailable", channel=m.channel)
        claimed = self.ledger.write_new((_record(m, "claimed") for m in sendable), now)
        checkpoint("claimed")
        to_send = [m for m in sendable if m.key in claimed]
        contexts = _TriggerContexts(self).load(to_send)
        rendered, failures, contents = [], [], []
        for m in to_send:
            step = self.project.campaign(m.campaign).step(m.step)
            variant = step.variant(m.variant)
            channel = self.config.channels[variant.channel]
            kind = channel_kinds.kind(channel.kind)
            # the envelope comes from the engine's record, taken before any template runs
            to = str(m.customer[kind.contact_field])
            context = _template_context(m, contexts.get((m.campaign, m.customer_id, m.trigger_key), {}))
            context["unsubscribe_url"] = unsubscribe.link(self.config.unsubscribe_url, secret, m.customer_id,
                                                          kind.unsubscribe_scope)
            if step.discount_code is not None:
                context["discount_code"] = discount_code(secret, m.key, step.discount_code.prefix, step.discount_code.length)
            try:
                content = renderer.render(variant.template, channel.kind, context)
            except TemplateError as exc:
                failures.append(_record(m, "failed", reason="render_error", detail=str(exc)))
                report.add(m.campaign, m.step, "failed:render_error", channel=m.channel)
                continue
            message = OutgoingMessage(
                key=m.key, kind=channel.kind, to=to,
                sender=str(channel.settings.get("from", "shop@example.com")),
                subject=content.subject, text=content.text, html=content.html,
                headers=kind.headers(context["unsubscribe_url"]),
            )
            rendered.append((m, message))
            contents.append((m.key, serialize(message, {"discount_code": context.get("discount_code")})))
        # render failures are final: recorded before anything goes out
        self.ledger.record_outcomes(failures, now)
        self._hand_over_and_send(rendered, [content for _, content in contents], now, sessions, report)

    def _hand_over_and_send(self, rendered: list[tuple[DueMessage, OutgoingMessage]], contents: list[str],
                            now: datetime, sessions: dict, report: PassReport) -> None:
        """Send a batch's rendered messages, handing them over group by group (``dispatch.send_all``).

        Storing a message's content is its hand-over: it happens in the ledger, committed, just
        before its group goes to the provider, in the same write as the outcomes of the group
        before. A crash leaves in doubt only the groups in flight (at most connections x
        ``in_flight`` per channel); every other claim of the batch has no content, so recovery
        releases it and the next pass sends it. A claim whose content another process stored
        first (after releasing it as a dead process's) is not sent by this one.
        """
        due = [m for m, _ in rendered]

        def hand_over(done: list[tuple[int, Sent]], group: list[int]) -> set[int]:
            outcomes = [self._outcome_record(due[i].key, due[i].campaign, due[i].step, due[i].customer_id,
                                             due[i].trigger_key, due[i].channel, 1, sent, now, report)
                        for i, sent in done]
            stored = self.ledger.hand_over(outcomes, [(due[i].key, contents[i]) for i in group], now)
            return {i for i in group if due[i].key in stored}

        in_flight = {name: int(channel.settings.get("in_flight", DEFAULT_IN_FLIGHT))
                     for name, channel in self.config.channels.items()}
        results = send_all([(m.channel, message) for m, message in rendered], sessions, hand_over, in_flight)
        tag_changes = []
        for (m, _), sent in zip(rendered, results):
            if sent is None:
                report.add(m.campaign, m.step, "not_sent:claim_taken_over", channel=m.channel)
            elif isinstance(sent.outcome, Delivered):
                step = self.project.campaign(m.campaign).step(m.step)
                tag_changes += [(m.customer_id, action.kind, action.tag, m.campaign) for action in step.actions]
        if tag_changes:
            self.ledger.apply_tags(tag_changes, now)


def _record(m: DueMessage, status: str, reason: str | None = None, detail: str | None = None,
            content: str | None = None) -> Record:
    return Record(
        message_key=m.key, campaign=m.campaign, step=m.step, customer_id=m.customer_id,
        trigger_key=m.trigger_key, channel=m.channel, status=status, due_at=m.due_at, trigger_at=m.trigger_at,
        variant=m.variant, reason=reason, detail=detail, content=content,
    )


def _template_context(m: DueMessage, trigger_record: dict) -> dict:
    return {
        "customer": m.customer,
        "campaign": m.campaign,
        "step": m.step,
        "variant": m.variant,
        "message_key": m.key,
        "due_at": m.due_at,
        "trigger": {"key": m.trigger_key, "at": m.trigger_at, **{k: v for k, v in trigger_record.items() if k != "items"}},
        "items": trigger_record.get("items", []),
    }


class _TriggerContexts:
    """Loads what a template shows about the trigger, for a whole batch in a few queries:
    the order or checkout and its items, or the day's events (viewed products, searches)."""

    #: trigger kind -> (record entity, items entity, id column)
    ENTITIES = {
        "order_placed": ("orders", "order_items", "order_id"),
        "order_date": ("orders", "order_items", "order_id"),
        "at_risk": ("orders", "order_items", "order_id"),
        "checkout_abandoned": ("checkouts", "checkout_items", "checkout_id"),
    }

    def __init__(self, reconciler: Reconciler):
        self.reconciler = reconciler
        self.config = reconciler.config

    def load(self, messages: list[DueMessage]) -> dict[tuple[str, str, str], dict]:
        contexts: dict[tuple[str, str, str], dict] = {}
        by_campaign: dict[str, list[DueMessage]] = {}
        for m in messages:
            by_campaign.setdefault(m.campaign, []).append(m)
        for name, group in by_campaign.items():
            trigger = self.reconciler.project.campaign(name).trigger
            if isinstance(trigger, Event) and "events" in self.config.sources:
                contexts.update(self._events(name, trigger, group))
                continue
            if trigger.kind not in self.ENTITIES:
                continue
            record_entity, items_entity, id_column = self.ENTITIES[trigger.kind]
            keys = sorted({m.trigger_key for m in group})
            records = self._fetch(record_entity, id_column, keys)
            items = self._fetch(items_entity, id_column, keys)
            for m in group:
                record = dict(records.get(m.trigger_key, [{}])[0])
                record["items"] = items.get(m.trigger_key, [])
                contexts[(name, m.customer_id, m.trigger_key)] = record
        return contexts

    def _query(self, entity: str, condition: exp.Expression) -> list[dict]:
        query = (  # copy=False: the condition may hold a thousand keys, copying them costs more than the query
            exp.select("*").from_("src").where(condition, copy=False)
            .with_("src", as_=source_select(self.config.sources[entity], self.config.dialect), copy=False)
        )
        return [dict(row._mapping) for row in self.reconciler.warehouse.fetch_all(render_sql(query, self.config.dialect))]

    def _key_kind(self, entity: str, column: str) -> str:
        """How ``column`` of ``entity`` holds its values: "int", "str", or "cast" (anything else,
        or unknown yet), from one sample value; remembered for the reconciler's life."""
        kinds = self.reconciler.key_kinds
        if (entity, column) not in kinds:
            query = (
                exp.select(exp.column(column)).from_("src").where(exp.column(column).is_(exp.null()).not_()).limit(1)
                .with_("src", as_=source_select(self.config.sources[entity], self.config.dialect))
            )
            rows = self.reconciler.warehouse.fetch_all(render_sql(query, self.config.dialect))
            if not rows:
                return "cast"  # nothing to match yet; look again next time
            value = rows[0][0]
            kinds[(entity, column)] = ("int" if isinstance(value, int) and not isinstance(value, bool)
                                       else "str" if isinstance(value, str) else "cast")
        return kinds[(entity, column)]

    def _key_condition(self, entity: str, column: str, keys: list[str]) -> exp.Expression:
        """``column IN (keys)`` on the native column, so the warehouse can use its index or zone maps.

        Keys are text (the due query casts ids to text): they become integer
        literals for an integer column and string literals for a text one; for
        any other type the column is cast to text, which is always right but slow.
        """
        kind = self._key_kind(entity, column)
        if kind == "int" and all(_CANONICAL_INT.fullmatch(k) for k in keys):
            return exp.In(this=exp.column(column), expressions=[exp.Literal.number(int(k)) for k in keys])
        target = exp.column(column) if kind == "str" else exp.cast(exp.column(column), exp.DataType.build("VARCHAR"))
        return exp.In(this=target, expressions=[exp.Literal.string(k) for k in keys])

    def _fetch(self, entity: str, id_column: str, keys: list[str]) -> dict[str, list[dict]]:
        if entity not in self.config.sources or not keys:
            return {}
        grouped: dict[str, list[dict]] = {}
        for values in self._query(entity, self._key_condition(entity, id_column, keys)):
            grouped.setdefault(str(values[id_column]), []).append(values)
        return grouped

    def _events(self, campaign: str, trigger: Event, group: list[DueMessage]) -> dict[tuple[str, str, str], dict]:
        """The instance's events, newest first: for per-day triggers all of that day's events of the type."""
        customers = sorted({m.customer_id for m in group})
        condition = exp.and_(
            exp.column("type").eq(exp.Literal.string(trigger.type)),
            self._key_condition("events", "customer_id", customers),
            copy=False,
        )
        wanted = {(m.customer_id, m.trigger_key) for m in group}
        by_instance: dict[tuple[str, str], list[dict]] = {}
        for values in self._query("events", condition):
            at = parse_stored_timestamp(values["occurred_at"])
            key = str(values["event_id"]) if trigger.per == "event" else at.date().isoformat()
            instance = (str(values["customer_id"]), key)
            if instance in wanted:
                by_instance.setdefault(instance, []).append(values)
        contexts = {}
        for (customer_id, key), events in by_instance.items():
            events.sort(key=lambda e: str(e["occurred_at"]), reverse=True)
            contexts[(campaign, customer_id, key)] = {"items": events, "events": events}
        return contexts


__all__ = ["DueMessage", "PassReport", "Reconciler"]
