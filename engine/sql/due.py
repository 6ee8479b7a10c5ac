"""The due query and the explain query of a campaign, assembled from compile.py's parts and
the campaign's trigger kind (``triggers/``), plus the segment entries of segment triggers.

``due_query`` is what every pass runs: one query per campaign returning, per step, the
(customer, trigger instance) rows due at ``now`` (see compile.py). ``explain_query`` is the
same instances and filters for one customer, each filter on its own. Whatever depends on
the kind of trigger (its instances, extra conditions and columns, its time window, segment
entries) is asked of the kind (``triggers.registry.kind_of``); nothing here tests a kind.
Pure: builds expressions, executes nothing.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Sequence
from zoneinfo import ZoneInfo

from sqlglot import exp

from engine.clock import UTC
from engine.decide import bucket_prefix, customer_zone, due_time, local_midnight
from engine.dialects import dialect_named
from engine.model import Campaign, ProjectConfig
from engine.model import Step
from engine.sql.compile import (
    CAMPAIGN_LEDGER, CUSTOMER_PREFIX, REENTRY_HISTORY, VARIANT_PREFIX, QueryBuilder, StateRelations, StepWindow, WAIT_COLUMN,
    SHARED_CUSTOMERS, awaited_event, campaign_ledger, not_null,
    SHARED_ROWS, calendar_slack, col, day_text, exists, instant_text, is_customer, join_trigger_properties, ledger_relation, lit,
    per_zone_window, render_sql,
    shared_customers_create, shared_facts_create, step_window, ledger_since, temporary_table, text, ts, variant_columns, without_ledger_rows,
)
from engine.sql.filter_types import filter_attributes
from engine.sql.hashing import hash_bucket, hashes_in_sql
from engine.sql.triggers.registry import kind_of

#: a typed NULL: PostgreSQL resolves a UNION of untyped NULLs to text, then fails against 1/0
_INT = exp.DataType.build("INT")
_TIMESTAMP = exp.DataType.build("TIMESTAMP")


def keys_in_sql(campaign: Campaign) -> bool:
    """Whether trigger keys come from SQL (else Python derives them, e.g. the birthday's year)."""
    return kind_of(campaign.trigger).keys_in_sql


#: the columns of ``due_query(settled="only")``: a ledger row of a skip the warehouse decided (stale,
#: stopped); ``due_at`` is NULL for a fixed delay (trigger_at + delay), set for a local send time
SETTLED_COLUMNS = ("campaign", "step", "customer_id", "trigger_key", "trigger_at", "reason", "detail", "variant",
                   "channel", "due_at")

#: the columns ``due_query(settled="count")`` adds before the customer attributes: a row's settled
#: reason (NULL: a row to decide, the only rows listed) and the channel of its first qualifying
#: variant, and ``COUNT_COLUMN``, set only on a summary row (one per step, reason and channel: how
#: many settled rows; its other columns NULL but ``step``), NULL on every other row
COUNT_REASON, COUNT_CHANNEL, COUNT_COLUMN = "settled_reason", "settled_channel", "settled_count"
#: the CTE of the "count" statement holding the due rows, read twice (the rows, the summary)
COUNT_CTE = "engine_due"
_BIGINT = exp.DataType.build("BIGINT")

#: The pass's temporary table of exact local due times (``zone_due_rows``), which the settled rows
#: of steps with a local send time or a local date (``zoned``) join, and its columns: a trigger instant
#: with ``lo < trigger_at <= hi`` is due at ``due_at``; a local date (``TriggerKind.local_date``) whose
#: 'YYYY-MM-DD' is ``day`` begins at ``trigger_at`` (the customer's local midnight) and is due at ``due_at``
ZONE_DUE_TABLE = "engine_pass_zone_due"
ZONE_DUE_COLUMNS = ("campaign", "step", "zone", "lo", "hi", "due_at", "day", "trigger_at")


#: The column of a pass's due row with the number of rows its customer has in the campaign's due set
#: (``counts_customer_rows``), before the customer's attributes
CUSTOMER_ROWS = "customer_rows"
#: any instant: the step windows ``counts_customer_rows`` compares are offsets from it
_ANY_INSTANT = datetime(2001, 1, 1, tzinfo=UTC)


def counts_customer_rows(campaign: Campaign, config: ProjectConfig) -> bool:
    """Whether each row of a pass's due query of ``campaign`` carries how many rows its customer has in
    the campaign's due set (``CUSTOMER_ROWS``), so that the plan stage lets the rows of a customer with
    several through in (trigger instant, trigger key, step) order, the sorted listing's
    (``plan.in_customer_order``; engine.run.policies says why). Only where the order can change what
    is sent: a frequency cap may limit the campaign's messages (one across channels, or one of a channel
    a variant sends on), and one customer may have several rows a step can send at once - several
    instances (the kind's ``several_at_once``) or several steps whose windows of fresh rows overlap. A
    campaign with a re-entry rule has its rows sorted anyway (``due_query``)."""
    if campaign.reentry.mode != "per_trigger":
        return False
    channels = {variant.channel for step in campaign.steps for variant in step.variants}
    if not any(cap.channel is None or cap.channel in channels for cap in config.frequency_caps):
        return False
    return kind_of(campaign.trigger).several_at_once(campaign.trigger) or _steps_overlap(campaign.steps)


def _steps_overlap(steps: Sequence[Step]) -> bool:
    """Whether two of ``steps`` can be due and fresh for one instance at once: their windows of trigger
    instants without the stale horizon (``step_window``: the due query's, slack included) overlap."""
    bounds = []
    for step in steps:
        try:
            window = step_window(step, _ANY_INSTANT, timedelta(0))
        except OverflowError:  # a delay beyond the calendar: its campaign's query fails anyway
            return True
        bounds.append((window.earliest, window.due_cutoff))
    for index, (earliest, cutoff) in enumerate(bounds):
        for other_earliest, other_cutoff in bounds[index + 1:]:
            starts = [start for start in (earliest, other_earliest) if start is not None]
            if not starts or max(starts) <= min(cutoff, other_cutoff):
                return True
    return False


#: the ledger statuses of an instance that "entered" (``Ledger.sent_instances``)
ENTERED_STATUSES = ("claimed", "sent")


def reentry_in_sql(campaign: Campaign, dialect: str | None) -> bool:
    """Whether the warehouse decides ``campaign``'s re-entry against the ledger's history
    (``reentry_blocked``): a rule other than per_trigger, a dialect with temporary tables (the
    ledger's own table in the query, or the pass's copy of its sent instances), and variants in file
    order (``channel_choice: by_response`` reorders them in Python first, and the skip records the
    first)."""
    return (campaign.reentry.mode != "per_trigger" and campaign.channel_choice == "order"
            and dialect is not None and dialect_named(dialect).temporary_tables)


def settled_in_sql(campaign: Campaign, step: Step, zone_due: bool = False, dialect: str | None = None) -> bool:
    """Whether the warehouse alone decides which of this step's rows are settled skips (stopped,
    stale, no_variant), with their due time, variant and channel: the due time is the trigger time
    plus a fixed delay, or, with the pass's ``zone_due`` table, the next local send time after it
    (``zone_due_times``), or for a local date, with ``zone_due`` where ``settles_local_date``, the
    due time from the customer's local midnight (per zone value and day: ``zone_due_days``); no
    calendar months, no yearly instance (their instants need the customer's zone in Python), no
    ``wait_until`` (its due time is the awaited event's or the wait's end), and the variant is the first whose audience matches and, for an A/B share,
    whose share holds the customer's stable bucket: computed by ``dialect``'s SQL (``hashing``; a
    step with a share is not settled in SQL without it). Such a row never reaches Python in a pass
    (``due_query(settled=...)``). Re-entry against the ledger's history settles too where
    ``reentry_in_sql``."""
    kind = kind_of(campaign.trigger)
    shares = any(variant.percent is not None for variant in step.variants)
    return (kind.keys_in_sql and (not zoned(campaign, step) or zone_due)
            and (not kind.local_date or settles_local_date(campaign, dialect))
            and not calendar_slack(step) and step.wait is None
            and (step.freshness is not None or bool(campaign.stop) or _may_match_none(step)
                 or reentry_in_sql(campaign, dialect))
            and (not shares or (dialect is not None and hashes_in_sql(dialect))))


def settles_local_date(campaign: Campaign, dialect: str | None) -> bool:
    """Whether a campaign whose trigger is a local date (``TriggerKind.local_date``) may have its skips
    settled in SQL: the dialect declares it (``Dialect.settles_local_dates``) and its re-entry rule is
    per_trigger (the history join compares instants, not local midnights)."""
    return (dialect is not None and dialect_named(dialect).settles_local_dates
            and campaign.reentry.mode == "per_trigger")


def zoned(campaign: Campaign, step: Step) -> bool:
    """Whether a row's due time (and, for a local date, its trigger instant) depends on the customer's
    time zone: a local send time, or a date anchored at the customer's local midnight. Settled in SQL,
    such a step's rows join the pass's ``ZONE_DUE_TABLE`` for them (``_zone_join``)."""
    return step.send_at is not None or kind_of(campaign.trigger).local_date


def _may_match_none(step: Step) -> bool:
    """Whether a customer may qualify for none of the step's variants (a skip ``no_variant``): every
    variant has an audience or an A/B share."""
    return all(variant.audience is not None or variant.percent is not None for variant in step.variants)


def settled_steps(campaign: Campaign, zone_due: bool = False, dialect: str | None = None) -> list[Step]:
    """The steps of ``campaign`` whose settled skips the warehouse decides (``settled_in_sql``)."""
    return [step for step in campaign.steps if settled_in_sql(campaign, step, zone_due, dialect)]


def zone_due_times(step: Step, now: datetime, stale_horizon: timedelta, zone: ZoneInfo) -> list[tuple[datetime, datetime]]:
    """For a step with a local send time, in one time zone: (previous, this) pairs of consecutive
    local send times (UTC) such that a trigger with ``previous < trigger + delay <= this`` is due
    exactly at ``this`` (``decide.due_time``), for every ``this`` due by ``now`` and within the
    stale horizon. A pair around a change of the zone's UTC offset is left out: the local clock
    jumps there, and Python decides those rows."""
    clock = step.send_at
    day = now.astimezone(zone).date() + timedelta(days=1)
    while (this := datetime.combine(day, clock, tzinfo=zone).astimezone(UTC)) > now:  # the last one by now
        day -= timedelta(days=1)
    oldest = now - (step.freshness or timedelta(0)) - stale_horizon
    pairs = []
    while this >= oldest:
        day -= timedelta(days=1)
        previous = datetime.combine(day, clock, tzinfo=zone).astimezone(UTC)
        steady = (this - previous == timedelta(days=1)
                  and (previous - timedelta(days=1)).astimezone(zone).utcoffset()
                  == (this + timedelta(days=1)).astimezone(zone).utcoffset())
        if steady:
            pairs.append((previous, this))
        this = previous
    return pairs


def zone_due_rows(campaigns: Sequence[Campaign], config: ProjectConfig, now: datetime,
                  zones: Sequence[object]) -> list[tuple]:
    """The rows of ``ZONE_DUE_TABLE`` at ``now``: per campaign, ``zoned`` step settled in SQL and
    customers' time zone value (NULL as ''; values that are not text are left to Python), each
    (previous, this) pair of ``zone_due_times`` as trigger-time bounds; for a local date, each day
    whose due time (``zone_due_days``) is due by ``now`` and within the stale horizon."""
    rows = []
    keys = {"" if value is None else value: value for value in zones if value is None or isinstance(value, str)}
    for campaign in campaigns:
        local_date = kind_of(campaign.trigger).local_date
        for step in settled_steps(campaign, zone_due=True, dialect=config.dialect):
            if not zoned(campaign, step):
                continue
            for key, value in keys.items():
                zone = customer_zone(value, config.default_timezone)
                if local_date:
                    rows += [(campaign.name, step.id, key, None, None, due_at, day.isoformat(), trigger_at)
                             for day, trigger_at, due_at in zone_due_days(step, now, config.stale_horizon, zone)]
                else:
                    rows += [(campaign.name, step.id, key, previous - step.delay, this - step.delay, this, None, None)
                             for previous, this in zone_due_times(step, now, config.stale_horizon, zone)]
    return rows


def zone_due_days(step: Step, now: datetime, stale_horizon: timedelta, zone: ZoneInfo) -> list[tuple]:
    """For a step of a local-date trigger, in one time zone: (day, its local midnight, due time) of every
    day whose due time (``decide.due_time`` from its local midnight, ``decide.local_midnight``: what
    ``plan.decide_row`` computes per row) is due by ``now`` and not beyond the stale horizon (the same
    ``oldest`` as ``zone_due_times``)."""
    oldest = now - (step.freshness or timedelta(0)) - stale_horizon
    day = (oldest - step.delay).astimezone(zone).date() - timedelta(days=2)
    last = (now - step.delay).astimezone(zone).date() + timedelta(days=2)
    days = []
    while day <= last:
        trigger_at = local_midnight(day, zone)
        due_at = due_time(trigger_at, step, zone)
        if oldest <= due_at <= now:
            days.append((day, trigger_at, due_at))
        day += timedelta(days=1)
    return days


def zone_due_create(dialect: str) -> str:
    """CREATE TEMPORARY TABLE of ``ZONE_DUE_TABLE`` (instants as text where the dialect keeps them so)."""
    instant = "VARCHAR(32)" if dialect_named(dialect).instant_text_format is not None else "TIMESTAMP"
    kinds = {"campaign": "VARCHAR(64)", "step": "VARCHAR(64)", "zone": "VARCHAR(200)", "day": "VARCHAR(10)"}
    columns = ", ".join(f"{name} {kinds.get(name, instant)}" for name in ZONE_DUE_COLUMNS)
    return f"CREATE TEMPORARY TABLE {ZONE_DUE_TABLE} ({columns})"


def zone_due_inserts(rows: Sequence[tuple], dialect: str, batch: int = 500) -> list[str]:
    """INSERT statements filling ``ZONE_DUE_TABLE`` with ``rows``, ``batch`` rows each. Each value is
    rendered by sqlglot on its own (quoted as a literal), the statement around them joined as text:
    rendering one VALUES tree of hundreds of rows cost 0.2-0.5 s of every pass that settles (its copies)."""
    head = render_sql(exp.insert(exp.values([tuple(lit("") for _ in ZONE_DUE_COLUMNS)]), ZONE_DUE_TABLE,
                                 columns=list(ZONE_DUE_COLUMNS)), dialect)
    head = head[:head.rindex("VALUES") + len("VALUES")]
    rendered: dict[object, str] = {}  # campaign, step, zone and most instants repeat

    def value(v) -> str:
        text_ = rendered.get(v)
        if text_ is None:
            text_ = rendered[v] = "NULL" if v is None else render_sql(lit(v) if isinstance(v, str) else ts(v, dialect),
                                                                      dialect)
        return text_

    return [f"{head} " + ", ".join("(" + ", ".join(value(v) for v in row) + ")" for row in rows[start:start + batch])
            for start in range(0, len(rows), batch)]


def zone_due_arrays(rows: Sequence[tuple], dialect: str) -> tuple[str, tuple[list, ...]] | None:
    """Where the dialect binds one LIST parameter per column (``Dialect.array_parameters``
    "positional": DuckDB), the INSERT filling ``ZONE_DUE_TABLE`` with ``rows`` in one statement over
    such lists, and the lists (instants as ``instant_text``'s text, cast in SQL as ``ts``'s literals
    are); None elsewhere (``zone_due_inserts``). DuckDB binds a VALUES list of a few hundred rows
    in about 50 ms, the lists in about 2."""
    if dialect_named(dialect).array_parameters != "positional":
        return None
    instants = {"lo", "hi", "due_at", "trigger_at"}
    unnest = ", ".join(f"unnest(CAST(${i} AS {'TIMESTAMP' if name in instants else 'VARCHAR'}[]))"
                       for i, name in enumerate(ZONE_DUE_COLUMNS, 1))
    columns = tuple([instant_text(v, dialect) if name in instants and v is not None else v for v in values]
                    for name, values in zip(ZONE_DUE_COLUMNS, zip(*rows)))
    return f"INSERT INTO {ZONE_DUE_TABLE} ({', '.join(ZONE_DUE_COLUMNS)}) SELECT {unnest}", columns


def counted_statuses(campaigns: Sequence[Campaign]) -> tuple[tuple[str, ...], ...]:
    """The status sets whose per-customer order count the pass's order facts hold for the shared
    order rows of ``campaigns`` (``TriggerKind.counted_statuses``), sorted."""
    counted = {kind_of(c.trigger).counted_statuses(c) for c in campaigns}
    return tuple(sorted(s for s in counted if s is not None))


def last_order_asked(campaigns: Sequence[Campaign]) -> bool:
    """Whether a campaign of ``campaigns`` reads its customers' last order ids (``TriggerKind.last_order_id``):
    the pass's order facts then carry them where the dialect can (``compile.facts_select``)."""
    return any(kind_of(c.trigger).last_order_id for c in campaigns)


def shared_table_create(name: str, config: ProjectConfig, now: datetime, campaigns: Sequence[Campaign],
                        kept: StateRelations | None = None) -> exp.Create | None:
    """CREATE TEMPORARY TABLE of one shared table of a pass over ``campaigns``: per-customer facts
    (``SHARED_FACTS``: the order facts with the counts the shared rows need) or per-order rows
    (``SHARED_ROWS``: built by the trigger kind for its campaigns that read them, over the kept
    per-customer facts where ``kept`` names them: sql.kept_facts); None when no campaign reads the rows."""
    if name in SHARED_CUSTOMERS:
        return shared_customers_create(config, now)
    if name not in SHARED_ROWS:
        if name != "orders":
            return shared_facts_create(name, config, now)
        return shared_facts_create(name, config, now, counted_statuses(campaigns), last_order_asked(campaigns))
    readers: dict[object, list[Campaign]] = {}
    for campaign in campaigns:
        kind = kind_of(campaign.trigger)
        if kind.shared_rows == name and kind.reads_shared_rows(campaign):
            readers.setdefault(kind, []).append(campaign)
    if len(readers) != 1:  # one kind per shared table (none: not read)
        return None
    (kind, readers_of_kind), = readers.items()
    builder = QueryBuilder(config, now, config.dialect, shared_facts=True, state=kept)
    rows = kind.shared_rows_select(builder, readers_of_kind)
    return None if rows is None else temporary_table(SHARED_ROWS[name], builder.with_ctes(rows))


def due_query(campaign: Campaign, config: ProjectConfig, now: datetime, *, exclude_ledger: bool,
              dialect: str | None = None, customer_id: str | None = None, shared_facts: bool = False,
              zones: Sequence[object] | None = None, state: StateRelations | None = None,
              settled: str = "include", zone_due: str | None = None,
              shard: tuple[int, int] | None = None, customer_columns: Sequence[str] | None = None,
              ordered: bool = False) -> exp.Query:
    """All due (and recently stale or stopped) rows of every step of ``campaign`` at ``now``.

    Columns: DUE_COLUMNS, the kind's ``extra_columns`` (``anniversary`` for yearly triggers),
    ``variant_match_<i>`` (1/0/NULL) per variant position, then
    ``cust__<attribute>`` for every customer attribute (``customer_columns``: only those, in the
    mapping's order, ``customer_id`` always; run.attributes). With ``exclude_ledger``
    rows already in the ledger are left out in SQL (the ledger shares the
    warehouse's database). ``dialect`` defaults to the warehouse's; the AST is
    built for it (SQLite needs its own timestamp form). ``customer_id`` keeps
    only that customer's rows (``engine explain``): the same rules, one customer.
    ``shared_facts`` reads per-customer facts from the pass's temporary tables
    (``SHARED_FACTS``, see ``shared_facts_create``) instead of computing them here.
    ``zones``: the distinct values of the customers' time zone column
    (``zones_query``); steps with a local send time then cut their time window
    per zone (``zone_window``) instead of allowing a day of slack for any zone.
    ``state``: where the engine state it joins (entries, tags) is, when the ledger is elsewhere.
    ``settled``: "include" (the plan: every row), "exclude" (a pass: the settled skips of the
    ``settled_in_sql`` steps left out, ``settled_query`` records them), "only" (``settled_query``)
    or "count" (a plan that counts them: the rows of "exclude" plus, in the same statement, one
    summary row per step, reason and channel of the settled skips with their count in
    ``COUNT_COLUMN``, NULL on the other rows: ``COUNT_CTE`` holds the due rows once, read by both;
    where the dialect counts ``rows`` (``Dialect.settled_counts``), every settled row itself with its
    ``COUNT_REASON`` and ``COUNT_COLUMN`` NULL; the rows' columns are "exclude"'s plus
    ``COUNT_REASON``, ``COUNT_CHANNEL`` and ``COUNT_COLUMN`` before the customer attributes).
    ``zone_due``: the pass's ``ZONE_DUE_TABLE``, filled (``zone_due_rows``): steps with a local send
    time settle too, their rows joined with it by zone and trigger time.
    ``shard``: (index, count) of a replica: only the customers whose ``decide.hash32`` of the id is
    ``index`` modulo ``count`` (``plan.shard_of``); the dialect must compute it (``hashing``).
    Settled rows of a campaign with re-entry in SQL (``reentry_in_sql``) read the ledger's sent
    instances: its table with ``exclude_ledger``, else ``state[REENTRY_HISTORY]``.
    Row order: a campaign with a re-entry rule returns its rows by (trigger_at, customer_id,
    trigger_key) (the earliest instance is the one let in); ``ordered`` (what lists the rows: an
    export, ``engine plan --format csv|jsonl``, one customer's plan) returns every campaign's rows by
    (trigger_at, customer_id, trigger_key, step), the same at every run. Otherwise the order is the
    warehouse's (a pass, the plan's table: no sort of the whole due set), and where a frequency cap
    could pick among a customer's rows (``counts_customer_rows``) each row carries ``CUSTOMER_ROWS``,
    the number of rows of its customer (a window per customer), before the customer's attributes:
    the plan stage decides a customer's several rows in the listing's order (engine.run.policies).
    """
    kind = kind_of(campaign.trigger)
    builder = QueryBuilder(config, now, dialect or config.dialect, shared_facts=shared_facts, state=state)
    declared = dialect_named(builder.dialect)  # what the dialect declares (engine.dialects)
    builder.whole_scans = customer_id is None  # one customer's rows: their orders found by the index
    history = None
    if settled != "include" and reentry_in_sql(campaign, builder.dialect):
        history = ledger_relation() if exclude_ledger else (state or {}).get(REENTRY_HISTORY)
        if history is None:
            raise ValueError(f"{campaign.name}: settling re-entry in SQL needs the ledger's sent instances")
    customers = builder.source("customers")
    if declared.inline_instances and not kind.instances_once:
        builder.inlined = (customers, "trigger_instances")
    windows = [step_window(step, now, config.stale_horizon) for step in campaign.steps]
    earliest = None if any(w.earliest is None for w in windows) else min(w.earliest for w in windows)
    builder.windows = windows
    # several steps' anti-joins: the campaign's ledger rows read once (Dialect.campaign_ledger_cte)
    if exclude_ledger and kind.keys_in_sql and len(campaign.steps) > 1 and declared.campaign_ledger_cte:
        builder.campaign_ledger = CAMPAIGN_LEDGER
    if exclude_ledger and kind.keys_in_sql and declared.ledger_instant_cut:
        drift = kind.instant_drift(campaign.trigger)
        builder.ledger_since = {step.id: bound for step, window in zip(campaign.steps, windows)
                                if (bound := ledger_since(window.earliest, drift)) is not None}
        builder.ledger_created = kind.ledger_created_since(builder, campaign)
    builder.ctes["trigger_instances"] = kind.instances(builder, campaign, earliest)
    attributes = filter_attributes(config, kind.template_record and kind.template_record.entity)
    width = variant_columns(campaign)
    fetched = [a for a in config.customer_attributes()
               if customer_columns is None or a in customer_columns or a == "customer_id"]
    selects = []
    for step, window in zip(campaign.steps, windows):
        apart = settled != "include" and settled_in_sql(campaign, step, zone_due is not None, builder.dialect)
        if settled == "only" and not apart:
            continue
        conditions = kind.window(builder, window)
        if conditions is None:  # the common case: the instant between the window's bounds
            conditions = [col("t", "trigger_at") <= builder.ts(window.due_cutoff)]
            if window.earliest is not None:
                conditions.append(col("t", "trigger_at") >= builder.ts(window.earliest))
            if step.send_at is not None and zones is not None:
                conditions += per_zone_window(builder, step, window, zones)
        elif kind.local_date and kind.keys_in_sql and step.send_at is not None and zones is not None:
            # a date anchored at the customer's local midnight: per zone, the dates that can be due and not
            # yet beyond the stale horizon, not the plain window widened by the farthest zones on both sides
            conditions += per_zone_window(builder, step, window, zones, dates=True)
        conditions += kind.conditions(campaign.trigger)
        waits = []
        if any(s.wait is not None for s in campaign.steps):  # the awaited event's instant (NULL for other steps)
            waited = awaited_event(builder, step) if step.wait is not None else exp.cast(exp.null(), _TIMESTAMP)
            waits.append(exp.alias_(waited, WAIT_COLUMN))
            if step.wait is not None:  # due once the time ran out or the event came
                conditions.append(exp.or_(col("t", "trigger_at") <= builder.ts(now - step.wait.at_most),
                                          not_null(waited)))
        for text_ in (campaign.audience, step.audience):
            if text_:
                conditions.append(builder.bind(text_, attributes))
        if customer_id is not None:
            conditions.append(is_customer(col("t", "customer_id"), customer_id))
        if shard is not None and shard[1] > 1:  # one replica of one: every customer, no hash to compute
            index, count = shard
            conditions.append(hash_bucket("", text(col("t", "customer_id")), count, builder.dialect)
                              .eq(exp.Literal.number(index)))
        stopped_by = exp.null()
        if campaign.stop:
            stopped_by = exp.Case(ifs=[exp.If(this=builder.stop_condition(stop), true=lit(stop)) for stop in campaign.stop])
        if apart:
            due_at = col("z", "due_at") if zoned(campaign, step) else None
            matches = variant_matches(builder, campaign, step, attributes)
            blocked = None if history is None else reentry_blocked(builder, campaign, history, exclude_ledger)
            reason = settled_reason(builder, step, window, stopped_by, due_at, matches, blocked)
            if settled == "count":  # every row, its reason and the channel it would be recorded with
                counted = [exp.alias_(reason, COUNT_REASON),
                           exp.alias_(_first_channel(step, matches), COUNT_CHANNEL),
                           exp.alias_(exp.cast(exp.null(), _BIGINT), COUNT_COLUMN)]
                selects.append(_zone_join(_due_select(builder, campaign, step, kind, stopped_by, waits, conditions,
                                                      customers, attributes, width, exclude_ledger, fetched, counted),
                                          campaign, step, zone_due, builder.dialect))
                continue
            if settled == "exclude":
                conditions.append(exp.Is(this=reason, expression=exp.Null()))  # ``reason.is_(exp.null())``: reason's one use
                # a fixed delay: no row left here is stopped (it would be settled); a local send time or date whose
                # due time the zone table lacks (a change of UTC offset, a zone value that is not text) is decided
                # in Python, which must see its stop condition
                left_stopped = exp.null() if due_at is None else stopped_by
                selects.append(_zone_join(_due_select(builder, campaign, step, kind, left_stopped, waits, conditions,
                                                      customers, attributes, width, exclude_ledger, fetched),
                                          campaign, step, zone_due, builder.dialect))
                continue
            conditions.append(not_null(reason))
            selects.append(_zone_join(_settled_select(builder, campaign, step, kind, reason, stopped_by, due_at, conditions,
                                                      customers, matches, exclude_ledger),
                                      campaign, step, zone_due, builder.dialect))
            continue
        counted = None
        if settled == "count":  # not settled in SQL: every row decided in Python
            counted = [exp.alias_(exp.cast(exp.null(), "VARCHAR"), COUNT_REASON),
                       exp.alias_(exp.cast(exp.null(), "VARCHAR"), COUNT_CHANNEL),
                       exp.alias_(exp.cast(exp.null(), _BIGINT), COUNT_COLUMN)]
        selects.append(_due_select(builder, campaign, step, kind, stopped_by, waits, conditions, customers, attributes,
                                   width, exclude_ledger, fetched, counted))
    if not selects:  # settled="only", no step settled in SQL
        return exp.select(*[exp.alias_(exp.null(), c) for c in SETTLED_COLUMNS]).where(exp.false())
    # every select and the body are built here and used once: the builders need not copy them
    body: exp.Query = selects[0]
    for other in selects[1:]:
        body = exp.union(body, other, distinct=False, copy=False)
    by_instance = campaign.reentry.mode != "per_trigger"
    sort = settled != "only" and (ordered or by_instance)
    per_customer = settled != "only" and not sort and counts_customer_rows(campaign, config)
    due = None
    if settled == "count" and declared.settled_counts == "summary":
        due, body = body, _counted_body(selects[0], per_customer)
    if per_customer and due is None:  # the settled rows of a "count" statement are not counted: taken out first
        body = _with_customer_rows(body, unsettled_only=settled == "count")
    elif not isinstance(body, exp.Select) or sort:
        body = exp.select("*").from_(body.subquery("due_steps", copy=False), copy=False)
    if sort:  # re-entry rules let the earliest instance in: it must come first; a listing: the same at every run
        collation = declared.code_point_collation  # the text keys as Python orders them
        keys = [exp.column("trigger_at")] + [
            exp.column(key) if collation is None else
            exp.Collate(this=exp.column(key), expression=exp.to_identifier(collation, quoted=True))
            for key in ("customer_id", "trigger_key") + (("step",) if ordered else ())]
        body = body.order_by(*keys, copy=False)
    query = builder.with_ctes(body)
    if builder.campaign_ledger is not None:
        query = query.with_(CAMPAIGN_LEDGER, as_=campaign_ledger(builder, campaign), materialized=True, copy=False)
    return query if due is None else query.with_(COUNT_CTE, as_=due, copy=False)


def _counted_body(first: exp.Select, per_customer: bool) -> exp.Query:
    """``due_query(settled="count")``'s body over ``COUNT_CTE``: its rows not settled, then one
    summary row per step, reason and channel of the settled ones (``first``: a step's select, for
    the column names; every column but those NULL, which each dialect types as the rows' column).
    ``per_customer``: the rows carry ``CUSTOMER_ROWS``, counting a customer's rows not settled."""
    keys = ("step", COUNT_REASON, COUNT_CHANNEL)
    unsettled = exp.column(COUNT_REASON).is_(exp.null())
    if per_customer:
        rows = _with_customer_rows(first, source=exp.to_table(COUNT_CTE)).where(unsettled)
        names = rows.named_selects
    else:
        rows = exp.select("*").from_(COUNT_CTE).where(unsettled)
        names = first.named_selects
    summary = exp.select(*[
        exp.column(name) if name in keys
        else exp.alias_(exp.Count(this=exp.Star()), name) if name == COUNT_COLUMN
        else exp.alias_(exp.null(), name)
        for name in names
    ]).from_(COUNT_CTE).where(exp.column(COUNT_REASON).is_(exp.null()).not_())
    return exp.union(rows, summary.group_by(*[exp.column(key) for key in keys]), distinct=False)


def _first_channel(step: Step, matches: Sequence[exp.Expression]) -> exp.Expression:
    """The channel of the first of ``step``'s variants that qualifies (``variant_matches``), NULL when none does."""
    channel = [exp.If(this=match.copy(), true=lit(candidate.channel)) for match, candidate in zip(matches, step.variants)]
    return exp.Case(ifs=channel) if channel else exp.cast(exp.null(), "VARCHAR")


def _with_customer_rows(body: exp.Query, *, unsettled_only: bool = False,
                        source: exp.Expression | None = None) -> exp.Select:
    """``body``'s rows with ``CUSTOMER_ROWS`` before the customer's attributes: a window counting the
    rows per customer - a hash partition of the due set, not a sort of it. ``unsettled_only``: only
    rows without ``COUNT_REASON`` count (a "count" statement's settled rows are taken out before the
    plan stage sees them); ``source``: read from it (the counted statement's CTE), not from ``body``."""
    names = body.named_selects
    attributes = [name for name in names if name.startswith(CUSTOMER_PREFIX)]
    counted_rows = exp.Star() if not unsettled_only else exp.Case(
        ifs=[exp.If(this=exp.column(COUNT_REASON).is_(exp.null()), true=exp.Literal.number(1))])
    counted = exp.Window(this=exp.Count(this=counted_rows), partition_by=[exp.column("customer_id")])
    return exp.select(*[exp.column(name) for name in names if name not in attributes],
                      exp.alias_(counted, CUSTOMER_ROWS),
                      *[exp.column(name) for name in attributes]).from_(
        source if source is not None else body.subquery("due_steps"))


def variant_matches(builder: QueryBuilder, campaign: Campaign, step: Step, attributes) -> list[exp.Expression]:
    """Per variant of ``step``, in file order, whether the customer qualifies for it: its audience and,
    for an A/B variant, its share holding the customer's stable bucket (``decide.matching_variants``,
    ``decide.stable_bucket`` computed in SQL: ``hashing``)."""
    bucket = None
    if any(variant.percent is not None for variant in step.variants):
        bucket = hash_bucket(bucket_prefix(campaign.name), text(col("t", "customer_id")), 100, builder.dialect)
    start, matches = 0, []
    for variant in step.variants:
        conditions = [] if variant.audience is None else [builder.bind(variant.audience, attributes)]
        if variant.percent is not None:
            conditions += [bucket.copy() >= exp.Literal.number(start),
                           bucket.copy() < exp.Literal.number(start + variant.percent)]
            start += variant.percent
        matches.append(exp.and_(*conditions) if conditions else exp.true())
    return matches


def settled_reason(builder: QueryBuilder, step: Step, window: StepWindow, stopped_by: exp.Expression,
                   due_at: exp.Expression | None = None, matches: Sequence[exp.Expression] = (),
                   blocked: exp.Expression | None = None) -> exp.Expression:
    """'stopped', 'stale', 'no_variant' or 'reentry' for a due row of a ``settled_in_sql`` step whose
    skip the warehouse decides, else NULL: ``plan.decide_row``'s rules (a stop condition first; stale
    from due + freshness on, half-open; then no variant among ``matches``, ``variant_matches``'s,
    qualifies), then ``policies.reentry_history``'s (``blocked``: ``reentry_blocked``).
    For a fixed delay, on the trigger time: the step's window already holds exactly the rows that are
    due and not beyond the stale horizon (no slack for such a step). For a local send time, on
    ``due_at`` (the zone table's): NULL where Python decides."""
    # built here and used once (``known`` elsewhere as a copy): the combinations take them without copying
    ifs = []
    known = exp.true() if due_at is None else not_null(due_at)
    if not isinstance(stopped_by, exp.Null):
        stopped = not_null(stopped_by)
        ifs.append(exp.If(this=stopped if due_at is None else exp.and_(known, stopped, copy=False), true=lit("stopped")))
    if step.freshness is not None:
        stale = (col("t", "trigger_at") <= builder.ts(window.due_cutoff - step.freshness) if due_at is None
                 else due_at <= builder.ts(builder.now - step.freshness))  # ``<=`` copies ``due_at``
        ifs.append(exp.If(this=stale, true=lit("stale")))
    if matches and not any(isinstance(match, exp.Boolean) and match.this for match in matches):
        none = _first_match(matches, [lit("1")] * len(matches)).is_(exp.null())
        ifs.append(exp.If(this=none if due_at is None else exp.and_(known.copy(), none, copy=False), true=lit("no_variant")))
    if blocked is not None:
        ifs.append(exp.If(this=blocked if due_at is None else exp.and_(known.copy(), blocked, copy=False), true=lit("reentry")))
    return exp.Case(ifs=ifs)


def reentry_blocked(builder: QueryBuilder, campaign: Campaign, history: exp.Expression,
                    ledger: bool) -> exp.Expression:
    """Whether the ledger's history forbids the row's instance under the campaign's re-entry rule
    (``policies.reentry_history``): an instance of another trigger key that entered (claimed or sent)
    at all (once), or whose first trigger time is less than the cool-down before or after the row's.
    ``history``: the ledger's table (``ledger``) or the pass's copy of its sent instances (one row per
    instance, its first trigger time)."""
    rule = campaign.reentry
    conditions = [col("h", "campaign").eq(lit(campaign.name))]
    if ledger:
        conditions.append(col("h", "status").isin(*[lit(s) for s in ENTERED_STATUSES]))
    same_customer = [col("h", "customer_id").eq(text(col("t", "customer_id"))),
                     col("h", "trigger_key").neq(text(col("t", "trigger_key")))]
    if rule.mode == "once":
        return exists(exp.select(exp.Literal.number(1)).from_(history.copy().as_("h"))
                      .where(*conditions, *same_customer))
    instances = exp.select(col("h", "customer_id"), col("h", "trigger_key"),
                           exp.alias_(exp.Min(this=col("h", "trigger_at")) if ledger else col("h", "trigger_at"),
                                      "trigger_at")).from_(history.copy().as_("h")).where(*conditions)
    if ledger:
        instances = instances.group_by(col("h", "customer_id"), col("h", "trigger_key"))
    earliest, latest = _shifted(builder, col("t", "trigger_at"), -rule.cooldown), \
        _shifted(builder, col("t", "trigger_at"), rule.cooldown)
    at = _shifted(builder, col("h", "trigger_at"), None)
    return exists(exp.select(exp.Literal.number(1)).from_(instances.subquery("h"))
                  .where(*same_customer, at > earliest, at.copy() < latest))


def _shifted(builder: QueryBuilder, instant: exp.Expression, by: timedelta | None) -> exp.Expression:
    """``instant`` moved ``by`` (None: as it is), in a form that compares exactly with the other
    instants so written: a TIMESTAMP, or where instants are text the dialect's text format."""
    text_format = dialect_named(builder.dialect).instant_text_format
    if text_format is not None:
        shift = [] if by is None else [lit(f"{by.total_seconds():+.3f} seconds")]
        return exp.Anonymous(this="STRFTIME", expressions=[lit(text_format), instant, *shift])
    value = exp.cast(instant, _TIMESTAMP)
    if by is None:
        return value
    interval = exp.Interval(this=exp.Literal.string(f"{abs(by.total_seconds()):.6f}".rstrip("0").rstrip(".")),
                            unit=exp.Var(this="SECOND"))
    return exp.Add(this=value, expression=interval) if by >= timedelta(0) else exp.Sub(this=value, expression=interval)


def _first_match(matches: Sequence[exp.Expression], values: Sequence[exp.Expression]) -> exp.Expression:
    """CASE giving the value of the first variant that qualifies, NULL when none does (a NULL
    audience does not qualify, as in Python)."""
    return exp.Case(ifs=[exp.If(this=match.copy(), true=value) for match, value in zip(matches, values)])


def _zone_join(query: exp.Select, campaign: Campaign, step: Step, zone_due: str | None,
               dialect: str | None = None) -> exp.Select:
    """A ``zoned`` step: LEFT JOIN its exact due times by the customer's zone value (NULL as '') and the
    trigger time (at most one row: a zone's pairs do not overlap), or a local date's day (``dialect``'s
    'YYYY-MM-DD' of it: ``compile.day_text``, as ``clock.parse_stored_date`` reads a date or timestamp)."""
    if not zoned(campaign, step):
        return query
    if kind_of(campaign.trigger).local_date:
        when = [col("z", "day").eq(day_text(col("t", "trigger_at"), dialect))]
    else:
        when = [col("t", "trigger_at") > col("z", "lo"), col("t", "trigger_at") <= col("z", "hi")]
    on = exp.and_(col("z", "campaign").eq(lit(campaign.name)), col("z", "step").eq(lit(step.id)),
                  col("z", "zone").eq(exp.Coalesce(this=text(col("c", "timezone")), expressions=[lit("")])), *when, copy=False)
    return query.join(exp.to_table(zone_due).as_("z"), on=on, join_type="left", copy=False)


def _settled_select(builder: QueryBuilder, campaign: Campaign, step: Step, kind, reason: exp.Expression,
                    stopped_by: exp.Expression, due_at: exp.Expression | None, conditions: list, customers: str,
                    matches: Sequence[exp.Expression], exclude_ledger: bool) -> exp.Select:
    """``SETTLED_COLUMNS`` of a step's settled skips: the variant and channel of the first variant
    that qualifies (``variant_matches``: ``decide.matching_variants``), NULL when none does."""
    variant = [exp.If(this=match.copy(), true=lit(candidate.id)) for match, candidate in zip(matches, step.variants)]
    query = (
        exp.select(
            exp.alias_(lit(campaign.name), "campaign"),
            exp.alias_(lit(step.id), "step"),
            exp.alias_(text(col("t", "customer_id")), "customer_id"),
            exp.alias_(text(col("t", "trigger_key")), "trigger_key"),
            # a local date: its instant is the customer's local midnight (the zone table's), as decide_row's
            exp.alias_(col("z", "trigger_at"), "trigger_at") if kind.local_date else col("t", "trigger_at"),
            exp.alias_(reason, "reason", copy=False),  # due_query's, built for this statement
            exp.alias_(stopped_by, "detail", copy=False),
            exp.alias_(exp.Case(ifs=variant) if variant else exp.cast(exp.null(), "VARCHAR"), "variant"),
            exp.alias_(_first_channel(step, matches), "channel"),
            exp.alias_(exp.cast(exp.null(), _TIMESTAMP) if due_at is None else due_at, "due_at"),
        )
        .from_(exp.to_table("trigger_instances").as_("t"), copy=False)
        .join(exp.to_table(customers).as_("c"), on=col("c", "customer_id").eq(col("t", "customer_id")), copy=False)
    )
    query = builder.join_facts(query, col("t", "customer_id")).where(*conditions, copy=False)
    query = join_trigger_properties(builder, query, lambda: kind.properties_select(builder, campaign))
    return without_ledger_rows(query, campaign, step, builder.campaign_ledger, _since(builder, step)) \
        if exclude_ledger else query


def _due_select(builder: QueryBuilder, campaign: Campaign, step: Step, kind, stopped_by: exp.Expression, waits: list,
                conditions: list, customers: str, attributes, width: int, exclude_ledger: bool,
                fetched: Sequence[str], counted: Sequence[exp.Expression] | None = None) -> exp.Select:
    """One step's candidate rows with every column ``plan.decide_row`` reads (see ``due_query``), then
    ``counted`` (``due_query(settled="count")``'s columns), and the customer attributes ``fetched``."""
    matches = []
    for index in range(width):
        variant = step.variants[index] if index < len(step.variants) else None
        if variant is None:
            value: exp.Expression = exp.cast(exp.null(), _INT)
        elif variant.audience is None:
            value = exp.Literal.number(1)
        else:
            value = exp.Case(ifs=[exp.If(this=builder.bind(variant.audience, attributes), true=exp.Literal.number(1))],
                             default=exp.Literal.number(0))
        matches.append(exp.alias_(value, f"{VARIANT_PREFIX}{index}"))
    query = (
        exp.select(
            exp.alias_(lit(campaign.name), "campaign"),
            exp.alias_(lit(step.id), "step"),
            exp.alias_(text(col("t", "customer_id")), "customer_id"),
            col("t", "trigger_key"),
            col("t", "trigger_at"),
            exp.alias_(stopped_by, "stopped_by"),
            *[col("t", column) for column in kind.extra_columns],
            *waits,
            *matches,
            *(counted or ()),
            *[exp.alias_(col("c", a), exp.to_identifier(CUSTOMER_PREFIX + a), copy=False) for a in fetched],
        )
        .from_(exp.to_table("trigger_instances").as_("t"), copy=False)
        .join(exp.to_table(customers).as_("c"), on=col("c", "customer_id").eq(col("t", "customer_id")), copy=False)
    )
    query = builder.join_facts(query, col("t", "customer_id")).where(*conditions, copy=False)
    query = join_trigger_properties(builder, query, lambda: kind.properties_select(builder, campaign))
    if exclude_ledger and kind.keys_in_sql:
        created = None if builder.ledger_created is None or builder.campaign_ledger is not None \
            else builder.ledger_created.copy()
        query = without_ledger_rows(query, campaign, step, builder.campaign_ledger, _since(builder, step), created)
    return query


def _since(builder: QueryBuilder, step: Step) -> exp.Expression | None:
    """The step's ``ledger_since`` bound as a timestamp of the query where its anti-join reads the ledger's
    table; None without one, or where it reads the campaign's CTE (``campaign_ledger`` cuts that). Made only
    when used: a compiled query's instant that its text lacks makes it built per pass (``sql.prepared``)."""
    bound = builder.ledger_since.get(step.id)
    return None if bound is None or builder.campaign_ledger is not None else builder.ts(bound)


@dataclass(frozen=True)
class FilterCheck:
    """One audience filter or stop condition of a campaign, evaluated alone for ``engine explain``.

    ``scope`` is "campaign", "step" or "variant" (an audience filter, ``text``
    its expression) or "stop" (``text`` the stop condition's name); ``column``
    names its 1/0 result in ``explain_query``.
    """

    column: str
    scope: str
    text: str
    step: str | None = None
    variant: str | None = None


def explain_query(campaign: Campaign, config: ProjectConfig, now: datetime, customer_id: str,
                  dialect: str | None = None, state: StateRelations | None = None) -> tuple[exp.Query, list[FilterCheck]]:
    """Every trigger instance of one customer (newest first, no time window) with each filter
    and stop condition of the campaign evaluated on its own: which one excluded them.

    Columns: ``trigger_key``, ``trigger_at`` (``anniversary`` for yearly
    triggers), then one 1/0 column per ``FilterCheck``. The filters are bound
    exactly as ``due_query`` binds them, so the answer is the due query's.
    """
    kind = kind_of(campaign.trigger)
    builder = QueryBuilder(config, now, dialect or config.dialect, state=state)
    builder.whole_scans = False  # one customer's rows: their orders found by the index
    customers = builder.source("customers")
    builder.ctes["trigger_instances"] = kind.instances(builder, campaign, None)
    attributes = filter_attributes(config, kind.template_record and kind.template_record.entity)
    checks: list[FilterCheck] = []

    def add(scope: str, text_: str, step: str | None = None, variant: str | None = None) -> None:
        checks.append(FilterCheck(f"check_{len(checks)}", scope, text_, step, variant))

    if campaign.audience:
        add("campaign", campaign.audience)
    for step in campaign.steps:
        if step.audience:
            add("step", step.audience, step.id)
        for variant in step.variants:
            if variant.audience:
                add("variant", variant.audience, step.id, variant.id)
    for stop in campaign.stop:
        add("stop", stop)
    results = []
    for check in checks:
        condition = builder.stop_condition(check.text) if check.scope == "stop" else builder.bind(check.text, attributes)
        value = exp.Case(ifs=[exp.If(this=condition, true=exp.Literal.number(1))], default=exp.Literal.number(0))
        results.append(exp.alias_(value, check.column))
    query = (
        exp.select(col("t", "trigger_key"), col("t", "trigger_at"), *[col("t", c) for c in kind.extra_columns], *results)
        .from_(exp.to_table("trigger_instances").as_("t"))
        .join(exp.to_table(customers).as_("c"), on=col("c", "customer_id").eq(col("t", "customer_id")))
    )
    query = builder.join_facts(query, col("t", "customer_id"))
    query = join_trigger_properties(builder, query, lambda: kind.properties_select(builder, campaign))
    conditions = [is_customer(col("t", "customer_id"), customer_id), *kind.conditions(campaign.trigger)]
    query = query.where(*conditions).order_by(exp.Ordered(this=col("t", "trigger_at"), desc=True),
                                              exp.Ordered(this=col("t", "trigger_key"), desc=True))
    return builder.with_ctes(query), checks


def entries_select(campaign: Campaign, config: ProjectConfig, now: datetime,
                   state: StateRelations | None = None) -> exp.Query | None:
    """For segment triggers: (campaign, customer_id, trigger_key, entered_at) of the customers who
    entered the segment since the last pass (``state``: where the recorded entries are, as in ``due_query``)."""
    return kind_of(campaign.trigger).entries_select(QueryBuilder(config, now, config.dialect, state=state), campaign)


def entries_insert(campaign: Campaign, config: ProjectConfig, now: datetime) -> exp.Insert | None:
    """For segment triggers: INSERT the customers who entered the segment since the last pass
    (the ledger shares the warehouse's database)."""
    return kind_of(campaign.trigger).entries_insert(QueryBuilder(config, now, config.dialect), campaign)
