"""What a trigger kind declares, with the defaults of the common case.

A kind's instances are rows ``trigger_instances(customer_id, trigger_key, trigger_at, ...)``
(``instances``); a step is due for an instance ``delay`` after ``trigger_at``. The defaults
here serve kinds whose key and instant come from SQL; a kind overrides what differs (the
yearly anniversary computes both in Python, the at-risk segment records its entries).
Validation reports through ``CampaignFile`` so that positions (file:line:col) and the
YAML stay in ``engine.spec``. Pure: must not read files or databases.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Protocol

from sqlglot import exp

from engine.clock import CalendarDuration, Duration, format_duration, parse_stored_timestamp
from engine.decide import due_time
from engine.model import Campaign, ProjectConfig, Step, Trigger
from engine.sql.compile import QueryBuilder, StepWindow, col, text
from engine.sql.filter_types import TRIGGER_PROPERTIES, trigger_properties


class CampaignFile(Protocol):
    """The campaign file being validated, as a kind's ``parse`` and ``check`` see it
    (``engine.spec.validate`` provides it). ``path`` is a path in the file, e.g.
    ``("trigger", "event", "per")``; each problem becomes an issue at its position."""

    def duration(self, path: tuple, text: str) -> Duration:
        """The duration ``text`` (90m, 2h, 7d, 26w, 6mo); a malformed or too long one is a problem, read as zero."""

    def needs(self, path: tuple, what: str, entity: str, column: str | None = None) -> None:
        """A problem when the source mapping lacks ``entity`` (or its ``column``), which ``what`` needs."""

    def problem(self, path: tuple, message: str, fix: str) -> None:
        """A problem at ``path`` with a fix."""


@dataclass(frozen=True)
class TemplateRecord:
    """What a template shows about an instance: ``trigger.*`` from the row of ``entity`` whose
    ``key_column`` is the trigger key, ``items`` from the rows of ``items`` with that key. Without
    a ``key_column`` (an event trigger) the instance's own events of the type are its items."""

    entity: str
    items: str
    key_column: str | None


class TriggerKind:
    """One trigger kind. Subclass it in the kind's module and list the instance in registry.KINDS."""

    #: the key under ``trigger:`` in a campaign file (and the model's ``kind``)
    name: str
    #: the frozen dataclass of this kind's settings (a ``model.Trigger``)
    model: type[Trigger]
    #: the warehouse entities every instance needs (the source mapping must have them)
    entities: tuple[str, ...] = ()
    #: what templates show about the instance; None: only its key and instant
    template_record: TemplateRecord | None = None
    #: the trigger is a date that may lie ahead (a delivery date, a birthday): steps may have a negative delay
    dated: bool = False
    #: ``trigger_at`` from SQL is a calendar date: the instant is the customer's local midnight of it
    #: (``decide.local_midnight``), and ``window`` must widen the date window by the farthest zones
    local_date: bool = False
    #: a series ends by itself (a newer activity, a completed checkout): no warning without a stop condition
    ends_by_itself: bool = False
    #: trigger key and instant come from SQL; False: Python derives them per row (``extra_columns``)
    keys_in_sql: bool = True
    #: a segment trigger: who entered the segment is recorded each pass (the ledger's entries), and the
    #: due query reads those entries (brought to the warehouse when the ledger is elsewhere)
    records_entries: bool = False
    #: a named segment's entry: the stop condition ``left_segment`` applies (``QueryBuilder.left_segment``)
    has_segment: bool = False
    #: further ``trigger_instances`` columns each due row carries, after ``trigger_at``
    extra_columns: tuple[str, ...] = ()
    #: the due query computes the instances once for all its steps even where the dialect inlines them in
    #: each step (``Dialect.inline_instances``): they are a scan of a whole source that no step's window
    #: narrows through an index, which each step would repeat
    instances_once: bool = False
    #: the ``compile.SHARED_ROWS`` table a pass builds once (``shared_rows_select``) for this kind's
    #: campaigns that read it (``reads_shared_rows``); None: the kind reads no shared per-row facts
    shared_rows: str | None = None
    #: the instances read each customer's last order id (of those at the last order's instant, the greatest),
    #: which the pass's order facts then carry where the dialect finds it in their scan (``compile.LAST_ORDER_ID``)
    last_order_id: bool = False

    # --- the campaign file -----------------------------------------------------------

    def parse(self, settings: dict, file: CampaignFile) -> Trigger:
        """The model of ``settings`` (the mapping under ``trigger: {name: ...}``, schema-valid)."""
        raise NotImplementedError

    def check(self, trigger: Trigger, config: ProjectConfig, file: CampaignFile) -> None:
        """Problems beyond ``entities``: columns or settings this trigger's settings need."""

    # --- SQL -------------------------------------------------------------------------------

    def instances(self, builder: QueryBuilder, campaign: Campaign, earliest: datetime | None) -> exp.Query:
        """trigger_instances(customer_id, trigger_key, trigger_at [, extra columns]) as of ``builder.now``.
        ``earliest``: no step can use an instance triggered before it (None: no such bound)."""
        raise NotImplementedError

    def several_at_once(self, trigger: Trigger) -> bool:
        """Whether one customer may have several instances a step is due for at once (every order, every
        checkout, a day of events): a frequency cap may then leave room for fewer of them than are due, and
        which go out must not depend on the warehouse's row order (``due.counts_customer_rows``). False for
        a kind that gives a customer at most one such instance (their registration, their latest activity,
        the k-th order, the year's birthday)."""
        return True

    def instant_drift(self, trigger: Trigger) -> timedelta | None:
        """How much earlier than an instance's ``trigger_at`` today the ``trigger_at`` that a ledger row of
        the same instance (campaign, customer, trigger key) holds can be, whenever it was recorded: zero for
        a kind whose instant never changes for its key (an order's placement, a checkout's start, an event's
        time); the bound of a kind whose instant moves within one (a day's last event). Lets a due query's
        anti-join leave out the ledger rows older than its window (``compile.ledger_since``). None (the
        default): the instant may move anywhere (a delivery date pushed back, a segment entry, a yearly
        date), so the ledger's rows of an instance in the window may hold any instant. A kind that declares
        one keeps the default ``window`` (``trigger_at`` at or after each window's ``earliest``), which the
        bound is computed from (tests/test_ledger_instant_cut.py checks it)."""
        return None

    def ledger_created_since(self, builder: QueryBuilder, campaign: Campaign) -> exp.Expression | None:
        """For a kind whose instant may move (``instant_drift`` None): an expression of the due query, a lower
        bound on the ``created_at`` of every ledger row of an instance the query can return - the row was
        written by a pass that saw the instance, so not before what made it one (an order's placement);
        ``compile.campaign_ledger`` and ``without_ledger_rows`` leave out the campaign's ledger rows written
        before it where the dialect cuts the ledger by instant (``Dialect.ledger_instant_cut``). None (the
        default): no such bound (tests/test_ledger_instant_cut.py checks the kinds that declare one)."""
        return None

    def reads_shared_rows(self, campaign: Campaign) -> bool:
        """Whether a pass's due query of ``campaign`` reads the kind's ``shared_rows`` table."""
        return False

    def counted_statuses(self, campaign: Campaign) -> tuple[str, ...] | None:
        """The order statuses whose per-customer count the pass's order facts must hold for the shared
        rows of ``campaign`` (``compile.counted_column``); None: none."""
        return None

    def shared_rows_select(self, builder: QueryBuilder, campaigns: list[Campaign]) -> exp.Query | None:
        """The rows of the ``shared_rows`` table for ``campaigns`` (those of this kind that read it), as of
        ``builder.now``; the table every one of their due queries reads instead of scanning the source."""
        return None

    def conditions(self, trigger: Trigger) -> list[exp.Expression]:
        """Further conditions on the instances (alias ``t``) of every due and explain query."""
        return []

    def window(self, builder: QueryBuilder, window: StepWindow) -> list[exp.Expression] | None:
        """The conditions that keep the instances a step may be due for in ``window``;
        None: ``trigger_at`` between the window's bounds (the due query's own, per time zone)."""
        return None

    def within_windows(self, builder: QueryBuilder, instant: exp.Expression) -> list[exp.Expression]:
        """``instant`` - what becomes an instance's ``trigger_at`` - inside one of the due query's step
        windows (``builder.windows``), by the very conditions the due query puts on ``trigger_at`` (the
        kind's ``window``, else the window's bounds), so that a kind can leave out, before it joins or
        materialises its instances, those no step can be due for: the same rows, since every step's
        rows also meet its own window's conditions. As a list of conditions for a WHERE: one, or none when
        the query has no windows (every instance).
        A kind that uses it writes its ``window`` on ``t.trigger_at`` alone (nothing else is in scope
        where the instances are built)."""
        if not builder.windows:
            return []
        either = []
        for window in builder.windows:
            conditions = self.window(builder, window)
            if conditions is None:  # due.due_query's plain bounds
                conditions = [col("t", "trigger_at") <= builder.ts(window.due_cutoff)]
                if window.earliest is not None:
                    conditions.append(col("t", "trigger_at") >= builder.ts(window.earliest))
            either.append(exp.paren(exp.and_(*[_on_instant(c, instant) for c in conditions], copy=False), copy=False))
        return [exp.or_(*either, copy=False)]  # built here, used once: no copies

    def properties_select(self, builder: QueryBuilder, campaign: Campaign) -> exp.Query | None:
        """The trigger's own properties (``trigger.total``, ...: ``filter_types.TRIGGER_PROPERTIES``) as rows
        (customer_id, trigger_key, property...), one per instance; None when the kind has none. The default:
        the row of the template record's entity whose key column is the trigger key, with the number of
        its items (a quantity counts that many; a row without one, one)."""
        record = self.template_record
        if record is None or record.key_column is None:
            return None
        properties = mapped_properties(builder.config, record.entity)
        rows = builder.source(record.entity)
        key = col("r", record.key_column)
        projections = [col("r", "customer_id"), exp.alias_(text(key), "trigger_key")]
        projections += [col("r", name) for name, (needs, _) in properties.items() if needs and needs[0] == record.entity]
        query = exp.select(*projections).from_(exp.to_table(rows).as_("r"))
        if "item_count" in properties:
            items = builder.source(record.items)
            counted = (exp.select(col("i", record.key_column), exp.alias_(exp.Sum(this=exp.func(
                "COALESCE", col("i", "quantity"), exp.Literal.number(1))), "item_count"))
                .from_(exp.to_table(items).as_("i")).group_by(col("i", record.key_column)))
            query = query.select(exp.alias_(exp.func("COALESCE", col("n", "item_count"), exp.Literal.number(0)), "item_count"))
            query = query.join(counted.subquery("n"), on=col("n", record.key_column).eq(key.copy()), join_type="left")
        return query

    def entries_select(self, builder: QueryBuilder, campaign: Campaign) -> exp.Query | None:
        """For segment triggers: (campaign, customer_id, trigger_key, entered_at) of who entered the
        segment since the last pass; None for others."""
        return None

    def entries_insert(self, builder: QueryBuilder, campaign: Campaign) -> exp.Insert | None:
        """For segment triggers: INSERT who entered the segment since the last pass; None for others."""
        return None

    # --- explain and backtest ----------------------------------------------------------------

    def describe(self, trigger: Trigger) -> str:
        """The trigger in one line for ``engine explain``: its kind and the settings that are set."""
        settings = {k: v for k, v in vars(trigger).items() if k != "kind" and v not in ((), None)}
        return trigger.kind + (" " + ", ".join(f"{k}={_shown(v)}" for k, v in settings.items()) if settings else "")

    def explain_instance(self, trigger: Trigger, step: Step, row: dict, zone, now: datetime,
                         horizon: timedelta) -> tuple[str | None, datetime | None, datetime | None]:
        """(trigger key, trigger instant, due time) of ``step`` for one row of ``explain_query``."""
        trigger_at = parse_stored_timestamp(row["trigger_at"])
        return str(row["trigger_key"]), trigger_at, due_time(trigger_at, step, zone)

    def standing_query(self, builder: QueryBuilder, campaign: Campaign, customer_id: str) -> exp.Query | None:
        """For ``engine explain``: one row telling where the customer stands towards becoming an
        instance (a segment trigger: the population, their rank, the cut); None when the kind has none."""
        return None

    def standing(self, trigger: Trigger, row: dict, now: datetime) -> tuple[dict, str] | None:
        """``standing_query``'s row as (facts for JSON, a sentence for the text output)."""
        return None

    def backtest_refusal(self, campaign: Campaign) -> str | None:
        """Why ``engine backtest`` cannot replay ``campaign``'s trigger, or None when it can."""
        return None


def mapped_properties(config: ProjectConfig, entity: str) -> dict:
    """The trigger properties of rows of ``entity`` the mapping provides: name -> (needs, kind)."""
    available = trigger_properties(config, entity)
    return {name: spec for name, spec in TRIGGER_PROPERTIES.get(entity, {}).items()
            if available.get(f"trigger.{name}", "missing") is None}


def _shown(value) -> str:
    if isinstance(value, (timedelta, CalendarDuration)):
        return format_duration(value) if value else "0m"
    return "[" + ", ".join(map(str, value)) + "]" if isinstance(value, tuple) else str(value)


def _on_instant(condition: exp.Expression, instant: exp.Expression) -> exp.Expression:
    """``condition`` on the instance's ``t.trigger_at`` written on ``instant`` instead."""
    return condition.transform(lambda node: instant.copy() if isinstance(node, exp.Column) and node.table == "t"
                               and node.name == "trigger_at" else node)
