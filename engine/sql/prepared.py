"""Each campaign's due query compiled once per project version and bound at every pass (issue 15.3).

Building a due query (sqlglot ASTs: sources, filters, stop conditions, trigger CTEs) and rendering
it per dialect cost ~30 ms per campaign, and a pass used to pay it for every campaign, every
minute. Here the query is built once with ``PassInstant.now()`` in place of the instant
(sql.instants): every timestamp it compares with - the instant, the steps' time windows, the
zones' windows, ``days_ago(30)`` - is rendered as a placeholder whose recipe computes it from any
``now``. A pass then only binds: the recipes applied to its instant, as bind parameters of the
SQL text rendered once (``Statement``), or written into that text as the same literals
``render_sql(due_query(..., now))`` would write (``PreparedQuery.literal``: ``engine explain``,
dialects the engine only renders for, and statements that take no parameters such as a
CREATE TABLE AS). Identical by construction: the same builder code, the same operations on the
instant; tests/test_prepared.py compares both with the literal rendering in every dialect.

A query whose shape depends on the instant (a birthday window's month-days) cannot be built
symbolically (``NotParameterisable``): it is built per pass as before, and the cache remembers
that. The cache is keyed by the identity of the project's config and campaign (a reload builds
new ones: the service recompiles after every change) and by what else shapes the SQL (dialect,
ledger in the query, shared facts, the customers' time zones, where the engine state is).
Pure: builds and renders SQL, executes nothing.
"""
from __future__ import annotations

import re
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Hashable

from sqlglot import exp

from engine.model import Campaign, ProjectConfig
from engine.sql import compile
from engine.sql.compile import SHARED_ROWS, StateRelations, instant_text, render_sql, shared_facts_used
from engine.sql.due import counted_statuses, due_query, last_order_asked, shared_table_create
from engine.sql.hashing import hashes_in_sql
from engine.sql.kept_facts import kept_rows_delete, kept_rows_insert, kept_rows_replace
from engine.sql.instants import NotParameterisable, PassInstant, Placeholders, collecting

#: False: build and render every query at every pass, as before issue 15 (benchmarks/run.py's switch)
COMPILE_ONCE = True
#: Compiled queries kept (13 campaigns x a few shapes per project version; older versions fall out)
CACHE_SIZE = 256


@dataclass(frozen=True)
class Statement:
    """What a pass runs: ``text`` with ``parameters`` (None: the text holds every value), and the
    entities whose shared fact table it reads (compile.SHARED_FACTS: to create first)."""

    text: str
    parameters: dict[str, str] | None
    facts: tuple[str, ...] = ()


@dataclass(frozen=True)
class PreparedQuery:
    """A query rendered once; ``instants``: (bind name, recipe) of each placeholder in ``text``
    (written ``:name``, SQLAlchemy's bind syntax)."""

    text: str
    instants: tuple[tuple[str, PassInstant], ...]
    dialect: str
    facts: tuple[str, ...]
    #: the placeholders' common prefix (sql.instants.Placeholders)
    prefix: str

    def parameters(self, now: datetime) -> dict[str, str]:
        """Each placeholder's value at ``now``: the text of the literal ``compile.ts`` would write."""
        return {name: instant_text(instant.at(now), self.dialect) for name, instant in self.instants}

    def bound(self, now: datetime) -> Statement:
        return Statement(self.text, self.parameters(now), self.facts)

    def literal(self, now: datetime) -> Statement:
        """The text with every placeholder replaced by its literal at ``now`` (no parameters)."""
        values = self.parameters(now)
        text = re.sub(rf":({re.escape(self.prefix)}\d+)\b", lambda match: f"'{values[match.group(1)]}'", self.text)
        return Statement(text, None, self.facts)


def prepare(build: Callable[[PassInstant], exp.Expression], dialect: str) -> PreparedQuery | None:
    """``build(instant)`` compiled once with a symbolic instant, or None when its shape depends on
    the instant's value (then it must be built per pass). ``build`` returns a tree of its own (it
    is rendered without a copy)."""
    try:
        with collecting() as placeholders:
            query = build(PassInstant.now())
    except NotParameterisable:
        return None
    return _rendered(query, placeholders, dialect)


def _rendered(query: exp.Expression, placeholders: Placeholders, dialect: str) -> PreparedQuery | None:
    facts = tuple(shared_facts_used(query))
    text = render_sql(query, dialect, copy=False)  # built for this rendering only: no copy of the tree
    instants = []
    for index, instant in enumerate(placeholders.instants):
        name = f"{placeholders.prefix}{index}"
        token = f"'{name}'"
        if token not in text:  # rendered in a form the replacement cannot find: build per pass
            return None
        text = text.replace(token, f":{name}")
        instants.append((name, instant))
    if f"'{placeholders.prefix}" in text:  # never: a mark the renderer changed
        return None
    return PreparedQuery(text, tuple(instants), dialect, facts, placeholders.prefix)


class _Cache:
    """Compiled queries by (config, campaign, shape); holds the config and campaign it was compiled
    for, so an identity is never mistaken for a reloaded project's."""

    def __init__(self, size: int):
        self.size = size
        self.entries: OrderedDict[Hashable, tuple[tuple[object, ...], PreparedQuery | None]] = OrderedDict()
        self.lock = threading.Lock()  # the service's passes and its HTTP explain share it

    def get(self, owners: tuple[object, ...], shape: Hashable,
            compile_: Callable[[], PreparedQuery | None]) -> PreparedQuery | None:
        key = (tuple(id(o) for o in owners), shape)
        with self.lock:
            entry = self.entries.get(key)
            if entry is not None and all(a is b for a, b in zip(entry[0], owners)):
                self.entries.move_to_end(key)
                return entry[1]
        prepared = compile_()
        with self.lock:
            self.entries[key] = (owners, prepared)
            while len(self.entries) > self.size:
                self.entries.popitem(last=False)
        return prepared

    def clear(self) -> None:
        with self.lock:
            self.entries.clear()


_cache = _Cache(CACHE_SIZE)

#: turns a campaign's due query at an instant (a datetime or a PassInstant) into the statement run
Wrap = Callable[[Campaign, "datetime | PassInstant", exp.Query, str], exp.Expression]


def forget() -> None:
    """Drop every compiled query (the benchmark's cold compile; a reload needs no call)."""
    _cache.clear()


def _state_shape(state: StateRelations | None) -> Hashable | None:
    """What of ``state`` shapes the SQL: temporary tables by name; None when a relation carries
    rows (a SELECT over VALUES, different at every pass), which cannot be compiled once."""
    if not state:
        return ()
    if not all(isinstance(relation, exp.Table) for relation in state.values()):
        return None
    return tuple(sorted((name, relation.name) for name, relation in state.items()))


def due_statement(campaign: Campaign, config: ProjectConfig, now: datetime, *, exclude_ledger: bool,
                  customer_id: str | None = None, shared_facts: bool = False, zones: Sequence[object] | None = None,
                  state: StateRelations | None = None, bind: bool = True, settled: str = "include",
                  wrap: Wrap | None = None, zone_due: str | None = None,
                  shard: tuple[int, int] | None = None, customer_columns: Sequence[str] | None = None,
                  ordered: bool = False) -> Statement:
    """The campaign's due query at ``now`` (``due.due_query``'s arguments): compiled once per project
    version and bound here; built as before for one customer (``customer_id``, ``engine explain``),
    for engine state shipped as VALUES, and for a query whose shape depends on the instant.
    ``bind``: parameters (the pass); False: literals in the text. ``settled``: as ``due_query``'s
    (a pass reads "exclude" where the settle stage recorded the settled skips). ``wrap``: the
    statement that runs is ``wrap(campaign, now, query, dialect)`` (the settle stage's INSERT ... SELECT),
    compiled once with it; a module-level function, part of the cache key. ``zone_due``: as
    ``due_query``'s (a table name: its rows, filled per pass, do not shape the SQL). ``shard``: as
    ``due_query``'s (a replica's (index, count), part of the cache key). ``customer_columns``: as
    ``due_query``'s (the attributes fetched, from the templates as they are now: part of the cache key,
    so a template that reads another attribute compiles the query anew). ``ordered``: as ``due_query``'s
    (rows in a fixed order for what lists them; part of the cache key)."""
    def built(instant):
        query = due_query(campaign, config, instant, exclude_ledger=exclude_ledger, customer_id=customer_id,
                          shared_facts=shared_facts, zones=zones, state=state, settled=settled, zone_due=zone_due,
                          shard=shard, customer_columns=customer_columns, ordered=ordered)
        return query if wrap is None else wrap(campaign, instant, query, config.dialect)

    def literal() -> Statement:
        query = built(now)
        facts = tuple(shared_facts_used(query))
        return Statement(render_sql(query, config.dialect, copy=False), None, facts)

    state_shape = _state_shape(state)
    if not COMPILE_ONCE or customer_id is not None or state_shape is None:
        return literal()
    if zones is not None:  # the customers' zones in any order (SELECT DISTINCT) shape the same query
        zones = sorted(zones, key=lambda zone: (zone is not None, str(zone)))
    shape = ("due", config.dialect, exclude_ledger, shared_facts, shared_facts and compile.SHARE_ROWS,
             None if zones is None else tuple(zones), state_shape, settled, wrap, zone_due, shard,
             hashes_in_sql(config.dialect), None if customer_columns is None else tuple(customer_columns), ordered)
    prepared = _cache.get((config, campaign), shape, lambda: prepare(built, config.dialect))
    if prepared is None:
        return literal()
    return prepared.bound(now) if bind else prepared.literal(now)


def facts_statement(entity: str, config: ProjectConfig, now: datetime, campaigns: Sequence[Campaign] = (),
                    kept: StateRelations | None = None) -> Statement:
    """CREATE TEMPORARY TABLE of one shared table of a pass over ``campaigns`` at ``now`` (a
    ``SHARED_FACTS`` entity or a ``SHARED_ROWS`` name: ``due.shared_table_create``), compiled once
    per project version, with literals (a CREATE TABLE AS takes no bind parameters in every
    database). ``facts``: the other shared tables it reads, to create first. ``kept``: the
    per-customer facts the engine keeps (run.incremental), which shared rows read instead."""
    def built(instant):
        create = shared_table_create(entity, config, instant, campaigns, kept)
        if create is None:  # pragma: no cover - a pass creates the rows a due query of it reads
            raise ValueError(f"no campaign of the pass reads the shared table {entity}")
        return create

    def literal() -> Statement:
        create = built(now)
        needed = _needed(create, entity)
        return Statement(render_sql(create, config.dialect, copy=False), None, needed)

    if not COMPILE_ONCE:
        return literal()
    owners = (config, *campaigns) if entity in SHARED_ROWS else (config,)
    kept_shape = _state_shape(kept)
    if kept_shape is None:  # pragma: no cover - kept facts are tables
        return literal()
    shape = ("facts", entity, config.dialect, counted_statuses(campaigns) if entity == "orders" else len(campaigns),
             entity == "orders" and last_order_asked(campaigns), kept_shape)
    prepared = _cache.get(owners, shape, lambda: prepare(built, config.dialect))
    if prepared is None:  # pragma: no cover - the facts depend on the instant only through ts()
        return literal()
    return prepared.literal(now)


def kept_rows_replace_statements(config: ProjectConfig, now: datetime, campaigns: Sequence[Campaign]) -> list[str]:
    """``kept_facts.kept_rows_replace`` at ``now`` (the incremental refresh's DELETE and INSERT of the touched
    customers' kept order rows), compiled once per project version and written with the pass's literals:
    built and rendered at every refresh, its order rows statement cost ~10 ms of Python a minute later."""
    def literal() -> list[str]:
        return kept_rows_replace(config, now, campaigns)

    if not COMPILE_ONCE:
        return literal()
    def insert(instant):
        built = kept_rows_insert(config, instant, campaigns)
        if built is None:  # no campaign reads the rows: nothing to compile (literal() gives none)
            raise NotParameterisable("no kept order rows")
        return built

    texts = []
    for shape, build in (("kept rows delete", lambda _instant: kept_rows_delete()), ("kept rows insert", insert)):
        compiled = _cache.get((config, *campaigns), (shape, config.dialect), lambda: prepare(build, config.dialect))
        if compiled is None:
            return literal()
        texts.append(compiled.literal(now).text)
    return texts


def _needed(create: exp.Expression, entity: str) -> tuple[str, ...]:
    return tuple(name for name in shared_facts_used(create) if name != entity)
