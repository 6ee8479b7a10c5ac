"""The plan stage: a campaign's due rows, read from the warehouse, become ``DueMessage`` batches.

Owns the pass's reads of the warehouse for the due sets (``due_rows``: one session, the shared
per-customer fact tables and per-order rows, created once per pass in dependency order, the
customers' time zones) and the decision on each row
(``decide_row``: exact due time, freshness, stop condition, qualifying variants), the replica's
shard and the subtraction of what the ledger already holds, and the order of one customer's several
rows where a frequency cap could pick among them (``in_customer_order``); ``decide_rows`` decides a batch, the
common step inline. Must not apply a policy, write to
the ledger or the warehouse's own tables (the pass's temporary fact and zone tables aside), or send.
"""
from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from datetime import datetime
from operator import itemgetter

from engine.clock import UTC, parse_stored_date, parse_stored_timestamp
from engine.decide import (
    anniversary_instance, customer_zone, due_time, hash32, local_midnight, matching_variants, stable_bucket, waited_due,
)
from engine.errors import WarehouseError
from engine.model import Campaign, ProjectConfig
from engine.progress import Progress
from engine.run.messages import DueMessage
from engine.dialects import analyze_temporary_table, dialect_named, drop_temporary_table, index_temporary_table
from engine.sql.compile import (
    CUSTOMER_PREFIX, MAX_ZONES, REENTRY_HISTORY, SHARED_FACTS, SHARED_ROWS, VARIANT_PREFIX, WAIT_COLUMN, StateRelations,
    render_sql, shared_facts_drop, shared_table, variant_columns, zones_query,
)
from engine.run.ledger_state import shipped_state
from engine.sql.hashing import hashes_in_sql
from engine.sql.due import (
    CUSTOMER_ROWS, ZONE_DUE_TABLE, keys_in_sql, reentry_in_sql, zone_due_arrays, zone_due_create, zone_due_inserts,
    zone_due_rows, zone_due_times, settles_local_date, zoned,
)
from engine.sql.shipping import copy_relation, create_copy, drop_copy, insert_copy
from engine.sql.prepared import Wrap, due_statement, facts_statement
from engine.sql.shipping import StateNeeds, state_needs
from engine.sql.triggers.registry import kind_of
from engine.state.driver_rows import Rows
from engine.state.ledger import Ledger
from engine.state.warehouse import Database, Session

BATCH_SIZE = 1000


def shard_of(customer_id: str, count: int) -> int:
    """Which of ``count`` replicas owns this customer (a stable hash, not Python's salted one); the
    due query computes the same in SQL (``shard_in_sql``)."""
    return hash32(customer_id) % count


def shard_in_sql(config: ProjectConfig) -> bool:
    """Whether the due queries themselves keep only a replica's shard (the dialect computes
    ``decide.hash32``); else ``decided_batches`` cuts each batch to it in Python."""
    return hashes_in_sql(config.dialect)


@contextmanager
def due_rows(warehouse: Database, ledger: Ledger, config: ProjectConfig, now: datetime, campaigns: list[Campaign], *,
             exclude_ledger: bool, customer_id: str | None, batch_size: int, kept: StateRelations | None = None,
             shard: tuple[int, int] | None = None,
             columns: Mapping[str, tuple[str, ...] | None] | None = None,
             ordered: bool = False) -> Iterator[Callable[[Campaign], Iterator[list]]]:
    """One pass's reads of the due sets: gives ``rows_of(campaign)``, the campaign's due rows in batches.

    ``rows_of(campaign, settled)``: ``settled`` as ``due_query`` takes it ("exclude": without the
    skips the warehouse settles, "only": those skips' ledger columns); ``wrap`` turns the query into
    the statement that runs (the settle stage's ``INSERT ... SELECT`` into the ledger).

    Per-customer facts (order count, last order, last event...) are computed once per pass into
    temporary tables on one connection and shared by every campaign's query (issue 7), and so are
    per-order facts (the orders of the order campaigns' windows with their rank and next order:
    ``compile.SHARED_ROWS``, issue 15.2), so that each source is scanned once for all campaigns; they
    are dropped when the pass ends, also on failure. ``exclude_ledger``: the query itself leaves out
    what the ledger holds (the ledger shares the warehouse's database); otherwise the engine state the
    queries join (segment entries, tags) is brought from ``ledger`` into the session for the pass.
    ``shard``: (index, count) of a replica, kept by the queries themselves (``shard_in_sql`` must hold).
    ``kept``: the per-customer facts the engine keeps up to date (run.incremental), read instead.
    ``columns``: campaign name -> the customer attributes its rows carry (run.attributes; default all).
    ``ordered``: each campaign's rows in a fixed order (``due_query``'s: for what lists them), else the
    warehouse's order (no sort of the due set).
    The settle statement of a campaign whose re-entry SQL decides (``due.reentry_in_sql``) reads the
    ledger's sent instances of the campaign: its table, or, from a ledger in another database, a copy
    of them made for that statement (``Ledger.entered_instances``; only when the settle stage runs).
    """
    shared = dialect_named(config.dialect).temporary_tables and customer_id is None
    needs = StateNeeds() if exclude_ledger else state_needs(campaigns, config)
    with warehouse.session() as session, shipped_state(session, ledger, needs, config) as relations:
        created: list[str] = []
        zones = customer_zones(session, config, campaigns) if customer_id is None else None
        # the exact local due times the settled rows of steps with a local send time join (a
        # temporary table, filled at the first settle statement of the pass)
        zone_due = ZONE_DUE_TABLE if zones is not None and dialect_named(config.dialect).temporary_tables else None
        copied: list[str] = []  # the campaigns whose sent instances the pass's re-entry copy holds

        def rows_of(campaign: Campaign, settled: str = "include", wrap: Wrap | None = None) -> Iterator[list]:
            # compiled once per project version, bound to ``now`` here (sql.prepared); with ``wrap``, the
            # settled write (INSERT ... SELECT ... RETURNING), one per campaign
            settling = zone_due if settled != "include" else None
            if settling is not None and settling not in created:
                drop_zone_due(session, config)
                session.execute(zone_due_create(config.dialect))
                created.append(settling)
                zone_rows = zone_due_rows(campaigns, config, now, zones)
                arrays = zone_due_arrays(zone_rows, config.dialect) if zone_rows else None
                if arrays is not None:  # one LIST parameter per column
                    session.execute_driver(*arrays)
                else:
                    for insert in zone_due_inserts(zone_rows, config.dialect):
                        session.execute(insert)
            history = {}
            if settled != "include" and not exclude_ledger and reentry_in_sql(campaign, config.dialect):
                copy_history(session, ledger, config, campaign, copied)
                history = {REENTRY_HISTORY: copy_relation(REENTRY_HISTORY)}
            statement = due_statement(campaign, config, now, exclude_ledger=exclude_ledger, customer_id=customer_id,
                                      shared_facts=shared, zones=zones,
                                      state={**relations, **(kept or {}), **history} or None,
                                      bind=dialect_named(config.dialect).binds_instants, settled=settled, wrap=wrap,
                                      zone_due=settling, shard=shard,
                                      customer_columns=(columns or {}).get(campaign.name), ordered=ordered)
            for entity in statement.facts:
                create_shared_table(session, config, now, campaigns, entity, created, kept)
            if wrap is None:
                yield from session.stream(statement.text, batch_size, statement.parameters, positional=True)
            else:
                yield session.returning(statement.text, statement.parameters)

        try:
            yield rows_of
        finally:  # temporary tables outlive the pass in a pooled connection; the next CREATE drops them too
            if copied:
                try:
                    session.execute(drop_copy(REENTRY_HISTORY, config.dialect, created=True))
                except WarehouseError:  # do not hide the error that ended the pass
                    pass
            for entity in created:
                try:
                    if entity == zone_due:
                        drop_zone_due(session, config, created=True)
                    else:
                        drop_facts(session, config, entity, created=True)
                except WarehouseError:  # do not hide the error that ended the pass
                    break


def copy_history(session: Session, ledger: Ledger, config: ProjectConfig, campaign: Campaign,
                 copied: list[str]) -> None:
    """Add ``campaign``'s sent instances (``Ledger.entered_instances``) to the pass's copy in the
    warehouse session (created at the first such campaign of the pass) unless in ``copied``."""
    if campaign.name in copied:
        return
    if not copied:
        stale = drop_copy(REENTRY_HISTORY, config.dialect)  # left on a pooled connection by a pass that died
        if stale is not None:
            session.execute(stale)
        session.execute(create_copy(REENTRY_HISTORY, config.dialect))
    copied.append(campaign.name)
    for statement in insert_copy(REENTRY_HISTORY, ledger.entered_instances(campaign.name), config.dialect):
        session.execute(statement)


def create_shared_table(session: Session, config: ProjectConfig, now: datetime, campaigns: list[Campaign],
                        name: str, created: list[str], kept: StateRelations | None = None) -> None:
    """Create the pass's shared table ``name`` (``compile.SHARED_FACTS`` / ``SHARED_ROWS`` /
    ``SHARED_CUSTOMERS``) unless in ``created``, after the shared tables it reads (the order rows read the
    order facts, or the kept ones: ``kept``, run.incremental), then indexed and analysed where the dialect
    needs it; appends to ``created``."""
    if name in created:
        return
    statement = facts_statement(name, config, now, campaigns, kept)
    for needed in statement.facts:
        if needed != name:
            create_shared_table(session, config, now, campaigns, needed, created, kept)
    drop_facts(session, config, name)
    session.execute_together(creation_statements(config, name, statement.text))
    created.append(name)
    if name not in SHARED_ROWS:  # the due queries find a customer's row by it (SQLite)
        index = index_temporary_table(dialect_named(config.dialect), shared_table(name), unique=name in SHARED_FACTS)
        if index:
            session.execute_together(index)
    analyze = analyze_temporary_table(dialect_named(config.dialect), shared_table(name))
    if analyze:  # the due queries joining it are planned for its real size (PostgreSQL)
        session.execute_together(analyze)


def creation_statements(config: ProjectConfig, name: str, create: str) -> list[str]:
    """The statements, one transaction, that create the pass's shared table ``name`` by ``create``
    (its CREATE ... AS): a per-customer fact table (``SHARED_FACTS``, a GROUP BY of a whole source)
    after the dialect's ``whole_aggregate_statements``."""
    settings = dialect_named(config.dialect).whole_aggregate_statements if name in SHARED_FACTS else ()
    return [*settings, create]


def drop_facts(session: Session, config: ProjectConfig, entity: str, created: bool = False) -> None:
    """Drop a pass's fact table: by its temporary schema where the dialect can name it (never a
    permanent table of the same name); elsewhere only a table this pass ``created``."""
    statement = shared_facts_drop(entity, config.dialect, created)
    if statement is not None:
        session.execute(statement)


def drop_zone_due(session: Session, config: ProjectConfig, created: bool = False) -> None:
    """Drop the pass's table of local due times (as ``drop_facts``)."""
    statement = drop_temporary_table(dialect_named(config.dialect), ZONE_DUE_TABLE, created)
    if statement is not None:
        session.execute(statement)


def customer_zones(session: Session, config: ProjectConfig, campaigns: list[Campaign]) -> list | None:
    """The customers' distinct time zone values, when a campaign has a local send time (its
    query then cuts its time window per zone) or a local date whose settled rows it anchors per zone
    (``due.settles_local_date``); None when there are too many to list."""
    if not any(keys_in_sql(c) and (step.send_at is not None or zoned(c, step) and settles_local_date(c, config.dialect))
               for c in campaigns for step in c.steps):
        return None
    zones = [row[0] for rows in session.stream(render_sql(zones_query(config), config.dialect)) for row in rows]
    return zones if len(zones) <= MAX_ZONES else None


def decided_batches(campaign: Campaign, row_batches: Iterator[Rows], now: datetime, config: ProjectConfig,
                    ledger: Ledger, *, ledger_in_query: bool, shard: tuple[int, int] | None,
                    progress: Progress) -> Iterator[list[DueMessage]]:
    """Each batch of a campaign's due rows decided (``decide_row``), cut to this replica's ``shard``
    (given where the query did not: ``shard_in_sql``), minus what the ledger holds (unless the query
    already left it out); a batch may end up empty. The rows of a customer with several due at once come
    together in the sorted listing's order where the query counts them (``in_customer_order``)."""
    layout = None
    for rows in in_customer_order(row_batches):
        if not rows:
            continue
        progress.rows(len(rows))
        layout = layout or RowLayout(rows.fields, campaign)
        batch = decide_rows(campaign, rows, now, config, layout)
        if shard is not None:
            index, count = shard
            batch = [m for m in batch if shard_of(m.customer_id, count) == index]
        if not ledger_in_query or not keys_in_sql(campaign):
            known = ledger.existing_keys([m.key for m in batch])
            batch = [m for m in batch if m.key not in known]
        yield batch


def in_customer_order(row_batches: Iterator[Rows]) -> Iterator[Rows]:
    """``row_batches`` as they come, but where the rows carry ``due.CUSTOMER_ROWS`` (a cap may leave a
    customer room for fewer of them than are due: ``due.counts_customer_rows``): the rows of a customer
    who has several are held back until the last of them arrives, then let through together by (trigger
    instant, trigger key, step), as the sorted listing (``due_query(ordered=True)``) has them. The cap
    then lets the same ones through at every run, whatever order the warehouse returns the rows in.
    Holds only customers with several rows, each until its rows are complete (the query counts exactly
    the rows it returns: a window over its due set, whose rows of one customer come out together); any
    left at the end (none) follow in the listing's order. A batch may end up empty (all held)."""
    counted = customer = None
    held: dict[object, list] = {}
    row_batches = iter(row_batches)
    for rows in row_batches:
        if counted is None and rows:
            fields = rows.fields
            if CUSTOMER_ROWS not in fields:
                yield rows
                yield from row_batches
                return
            counted, customer = fields.index(CUSTOMER_ROWS), fields.index("customer_id")
            instant, key, step = fields.index("trigger_at"), fields.index("trigger_key"), fields.index("step")
        out = Rows((), rows.fields)
        for row in rows:
            if row[counted] == 1:
                out.append(row)
                continue
            mine = held.setdefault(row[customer], [])
            mine.append(row)
            if len(mine) >= row[counted]:
                del held[row[customer]]
                out += sorted(mine, key=lambda r: _listing_key(r[instant], r[key], r[step]))
        yield out
    if held:
        yield Rows(sorted((row for rows in held.values() for row in rows),
                          key=lambda r: _listing_key(r[instant], r[customer], r[key], r[step])), fields)


def _listing_key(*values) -> tuple:
    """A sort key of raw column values in the warehouse's ascending order, NULLs last (as DuckDB and
    PostgreSQL sort them)."""
    return tuple((False, value) if value is not None else (True, 0) for value in values)


class RowLayout:
    """Where each column of a campaign's due query sits in its rows (worked out once per query)."""

    def __init__(self, fields: tuple[str, ...], campaign: Campaign):
        position = {name: index for index, name in enumerate(fields)}
        self.step, self.customer_id = position["step"], position["customer_id"]
        self.trigger_key, self.trigger_at = position["trigger_key"], position["trigger_at"]
        self.stopped_by = position["stopped_by"]
        self.yearly = not keys_in_sql(campaign)  # a yearly date: Python derives the instance
        self.local_date = kind_of(campaign.trigger).local_date  # a date: the customer's local midnight
        self.anniversary = position.get("anniversary")
        #: the customer's time zone column (a yearly row's timing is worked out before the customer's dict)
        self.timezone = position.get(f"{CUSTOMER_PREFIX}timezone")
        #: (now, step id, month, day, zone) -> a yearly row's timing (``_yearly_timing``): the same for every
        #: customer born on that day in that zone, so worked out once per query (a pass) and not per row
        self.yearly_timings: dict[tuple, tuple | None] = {}
        self.wait = position.get(WAIT_COLUMN)  # the awaited event's instant (steps with wait_until)
        self.matches = [position[f"{VARIANT_PREFIX}{i}"] for i in range(variant_columns(campaign))]
        # the customer's attributes are the query's last columns (compile.due_query)
        self.customer_start = min(i for name, i in position.items() if name.startswith(CUSTOMER_PREFIX))
        self.customer_names = [name[len(CUSTOMER_PREFIX):] for name in fields[self.customer_start:]]
        assert all(name.startswith(CUSTOMER_PREFIX) for name in fields[self.customer_start:])
        self.steps = {step.id: step for step in campaign.steps}
        #: steps with an A/B split: only those need the customer's stable bucket
        self.split_steps = {step.id for step in campaign.steps if any(v.percent is not None for v in step.variants)}
        #: the steps ``decide_rows`` decides inline (the common case), by id: a plain instant, or one with a
        #: local send time when the rows carry the customer's zone (its due time by ``_send_times``)
        self.plain = {step.id: step for step in campaign.steps
                      if not (self.yearly or self.local_date) and step.wait is None
                      and (step.send_at is None or self.timezone is not None) and step.id not in self.split_steps}
        #: (step id, zone value) -> a local send time's due times at the query's instant (``_send_times``)
        self.send_times: dict[tuple, tuple] = {}


def decide_rows(campaign: Campaign, rows: list, now: datetime, config: ProjectConfig,
                layout: RowLayout) -> list[DueMessage]:
    """``decide_row`` over a batch of rows, the rows not due left out.

    The common step (a plain instant trigger, no local send time, no wait, no A/B split: ``RowLayout.plain``)
    is decided inline: what is the same for every row of a step and trigger instant (the instant made
    aware, the due time, whether it is due or stale) once for a run of rows that share them, the
    qualifying variants once per distinct audience match; any other row goes through ``decide_row``.
    Same decisions either way (tests/test_decide_rows).
    """
    if not layout.plain:
        return [m for m in (decide_row(campaign, row, now, config, layout) for row in rows) if m is not None]
    plain = layout.plain
    step_at, customer_at, key_at, trigger_at_at, stopped_at, zone_at = (
        layout.step, layout.customer_id, layout.trigger_key, layout.trigger_at, layout.stopped_by, layout.timezone)
    start, names, match_at = layout.customer_start, layout.customer_names, layout.matches
    horizon, name = config.stale_horizon, campaign.name
    #: (step id, audience matches) -> (candidate variant ids, the first one's channel, its id) of a plain step
    chosen: dict[tuple, tuple] = {}
    #: the last row's step id and stored trigger instant, and their (trigger instant, due time, stale); None:
    #: not due (the rows of a step often share their instant: a segment entered at this pass)
    last_step = last_stored = times = None
    choice_of = itemgetter(step_at, *match_at)  # a tuple: at least two positions, or the step id alone
    decided = []
    append = decided.append
    for row in rows:
        step_id = row[step_at]
        if step_id not in plain:
            message = decide_row(campaign, row, now, config, layout)
            if message is not None:
                append(message)
            continue
        stored = row[trigger_at_at]
        step = plain[step_id]
        if step.send_at is not None:  # the customer's zone decides: never shared with the next row
            times, last_step = _zoned_timing(layout, step, stored, row[zone_at], now, config), None
        elif stored != last_stored or step_id != last_step or last_step is None:
            times, last_step, last_stored = _plain_timing(step, stored, now, horizon), step_id, stored
        if times is None:
            continue
        trigger_at, due_at, stale = times
        matches = choice_of(row)
        choice = chosen.get(matches)
        if choice is None:
            candidates = matching_variants(step, [row[i] for i in match_at], 0)
            first = candidates[0] if candidates else None
            choice = chosen[matches] = (tuple(v.id for v in candidates), first.channel if first else None,
                                        first.id if first else None)
        candidates, channel, variant = choice
        customer = dict(zip(names, row[start:]))
        customer_id = customer["customer_id"] = str(row[customer_at])
        message = DueMessage(name, step_id, customer_id, str(row[key_at]), trigger_at, due_at, channel, customer,
                             "send", None, variant)
        stopped_by = row[stopped_at]
        if stopped_by:
            message.action, message.reason, message.detail = "skip", "stopped", str(stopped_by)
        elif stale:
            message.action, message.reason = "skip", "stale"
        elif variant is None:
            message.action, message.reason = "skip", "no_variant"
        else:
            message.candidates = candidates
        append(message)
    return decided


def _plain_timing(step, stored, now: datetime, horizon) -> tuple | None:
    """(trigger instant, due time, stale) of a plain step's row whose trigger instant is ``stored``, or
    None when it is not due (yet, or any more): ``decide_row``'s rules."""
    trigger_at = _instant(stored)
    due_at = trigger_at + step.delay
    if due_at > now:
        return None
    freshness = step.freshness
    if freshness is not None and now > due_at + freshness + horizon:
        return None
    return trigger_at, due_at, freshness is not None and now >= due_at + freshness


def _zoned_timing(layout: RowLayout, step, stored, zone_value, now: datetime, config: ProjectConfig) -> tuple | None:
    """``_plain_timing`` of a row of a step with a local send time, in the customer's zone (``zone_value``, the
    row's time zone column): its due time is that of the pair of consecutive local send times around the
    trigger + delay (``due.zone_due_times``: what the settled rows' zone table holds, from ``decide.due_time``
    itself), found by bisection in the pairs worked out once per step and zone value of a query
    (``_send_times``); a trigger outside them (not due yet, beyond the stale horizon, or around a change of
    the zone's UTC offset, which the pairs leave out) by ``decide.due_time`` as ``decide_row`` computes it."""
    trigger_at = _instant(stored)
    starts, pairs, zone = _send_times(layout, step, zone_value, now, config)
    base = trigger_at + step.delay
    at = bisect_left(starts, base) - 1  # the last pair whose previous send time is before the base
    due_at = pairs[at][1] if at >= 0 and base <= pairs[at][1] else due_time(trigger_at, step, zone)
    if due_at > now:
        return None
    freshness = step.freshness
    if freshness is not None and now > due_at + freshness + config.stale_horizon:
        return None
    return trigger_at, due_at, freshness is not None and now >= due_at + freshness


def _send_times(layout: RowLayout, step, zone_value, now: datetime, config: ProjectConfig) -> tuple:
    """(the pairs' previous send times, the (previous, this) pairs in that order, the zone) of ``step`` in the
    zone of a customer whose time zone column holds ``zone_value`` (``decide.customer_zone``: a value that is
    not text, or unknown, is the project's default), at ``now``: once per query (``RowLayout.send_times``)."""
    name = zone_value if isinstance(zone_value, str) else ""
    key = (step.id, name)
    found = layout.send_times.get(key)
    if found is None:
        zone = customer_zone(name, config.default_timezone)
        pairs = sorted(zone_due_times(step, now, config.stale_horizon, zone))
        found = layout.send_times[key] = ([previous for previous, _ in pairs], pairs, zone)
    return found


#: a naive UTC timestamp made aware by adding it to the aware epoch: ten times cheaper than ``replace(tzinfo=UTC)``
_EPOCH, _EPOCH_UTC = datetime(1970, 1, 1), datetime(1970, 1, 1, tzinfo=UTC)


def _instant(value) -> datetime:
    return _EPOCH_UTC + (value - _EPOCH) if type(value) is datetime and value.tzinfo is None \
        else parse_stored_timestamp(value)


def decide_row(campaign: Campaign, row, now: datetime, config: ProjectConfig,
               layout: RowLayout | None = None) -> DueMessage | None:
    """What to do with one candidate row, or None when it is not due (yet, or any more).

    Runs once per candidate row, so it reads columns by position (``layout``,
    worked out once per query) rather than by name.
    """
    layout = layout or RowLayout(row._fields, campaign)
    step = layout.steps[row[layout.step]]
    if layout.yearly:  # before the customer's dict is built: many rows of the warehouse's window are not due
        timing = _yearly_timing(layout, step, row, now, config)
        if timing is None:
            return None
    customer = dict(zip(layout.customer_names, row[layout.customer_start:]))
    customer_id = customer["customer_id"] = str(row[layout.customer_id])
    if layout.yearly:
        trigger_at, trigger_key, due_at = timing
    else:
        trigger_key = row[layout.trigger_key]
        if layout.local_date:
            zone = customer_zone(customer.get("timezone"), config.default_timezone)
            trigger_at = local_midnight(parse_stored_date(row[layout.trigger_at]), zone)
        else:
            trigger_at = _instant(row[layout.trigger_at])
        if step.wait is not None:  # the awaited event or the time running out (no send_at: validation)
            event_at = row[layout.wait]
            due_at = waited_due(trigger_at, step, None if event_at is None else _instant(event_at))
        elif step.send_at is None:  # the common case needs no time zone
            due_at = trigger_at + step.delay
        else:
            due_at = due_time(trigger_at, step, customer_zone(customer.get("timezone"), config.default_timezone))
        if due_at > now:
            return None
        if step.freshness is not None and now > due_at + step.freshness + config.stale_horizon:
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
    elif step.freshness is not None and now >= due_at + step.freshness:  # half-open: [due, due + freshness)
        message.action, message.reason = "skip", "stale"
    elif first is None:
        message.action, message.reason = "skip", "no_variant"
    else:
        message.candidates = tuple(v.id for v in candidates)
    return message


def _yearly_timing(layout: RowLayout, step, row, now: datetime, config: ProjectConfig) -> tuple | None:
    """(trigger instant, trigger key, due time) of a yearly row: the latest occurrence of its day whose step is
    due by ``now`` in the customer's zone (``anniversary_instance``), or None when there is none or it is past
    its freshness (``decide_row``'s rules). It depends on the day's month and day alone (Feb 29 is Feb 28 in
    common years), the step, the zone and ``now``: worked out once per such key (``RowLayout.yearly_timings``).
    A date trigger's step has no ``wait_until`` (validation): its due time is ``due_time``'s."""
    raw = row[layout.timezone] if layout.timezone is not None else None
    zone = customer_zone(raw, config.default_timezone)
    day = parse_stored_date(row[layout.anniversary])
    key = (now, step.id, day.month, day.day, zone)
    timings = layout.yearly_timings
    if key in timings:
        return timings[key]
    timing = None
    instance = anniversary_instance(day, step, now, zone)
    if instance is not None:
        trigger_at, trigger_key = instance
        due_at = due_time(trigger_at, step, zone)
        if due_at <= now and not (step.freshness is not None and now > due_at + step.freshness + config.stale_horizon):
            timing = (trigger_at, trigger_key, due_at)
    timings[key] = timing
    return timing
