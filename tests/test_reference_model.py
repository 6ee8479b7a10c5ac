"""The engine's due sets against an independent reference model (issue 3).

Hypothesis generates small shop histories (up to 8 customers with random
contact data, time zones, birthdays and types; orders, checkouts and events,
many of them timed on the boundaries the shipped campaigns care about, some
sharing an instant) and an instant ``now``. Each history is loaded into a fresh
database (a new DuckDB/SQLite file, a new PostgreSQL database) and planned with
``Reconciler.due(now)``; the same history is planned again by
``reference_plan`` below: a plain-Python reading of campaigns.d/ and
engine.yaml (parsed here with PyYAML) that shares no code with engine.sql.compile,
engine.decide or engine.run. For every shipped campaign the sets of
``(campaign, step, customer_id, trigger_key, outcome)`` must be equal; the
rows also carry the chosen variant and the exact due time, which must agree too.

Re-entry ``once`` (welcome-series, vip): with an empty ledger the engine lets
the first instance per customer *in its processing order* send and skips the
others as ``reentry``. That order is not part of the documented semantics (see
test_reentry_once_keeps_the_first_instance), so for these campaigns the
comparison is explicit: when the model has sends for several trigger keys of
one customer, the engine must keep the sends of exactly one of those keys and
turn every other send of that customer into ``skip:reentry``. The model plans
against an empty ledger, so re-entry against the ledger's history (decided
before channel choice, in SQL or by ``policies.reentry_history``) never applies
here; tests/test_settled_skips.py proves that part, SQL against row by row.

Bounded for CI (a fixed seed per backend, a few examples each, ~1 s of CPU per
example - mostly compiling the 13 campaigns); ENGINE_MODEL_EXAMPLES=200 runs a
longer hunt.
"""
from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta, timezone
from pathlib import Path
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import pytest
import yaml
from hypothesis import HealthCheck, Phase, given, note, seed, settings
from hypothesis import strategies as st

from conftest import BACKENDS, REPO, copy_project, database_url
from engine import Reconciler, load_project
from engine.tools.demo import ShopData, load_shop
from engine.state.warehouse import Database

UTC = timezone.utc

# ==============================================================================
# The reference model. Reads the campaign files and engine.yaml with PyYAML and
# re-states the documented semantics in plain Python; no engine code is used.
# ==============================================================================

_DURATION = re.compile(r"(\d+)\s*(mo|[wdhms])")
_UNIT = {"w": 604800, "d": 86400, "h": 3600, "m": 60, "s": 1}


def duration(text) -> timedelta:
    """'7d', '1d12h', '-1d', '26w' -> timedelta (a leading '-' means before the trigger)."""
    value = str(text).strip()
    sign = -1 if value.startswith("-") else 1
    parts = _DURATION.findall(value)
    assert all(u != "mo" for _, u in parts), f"{text}: calendar months are applied with shift(), not as a timedelta"
    return sign * timedelta(seconds=sum(int(n) * _UNIT[u] for n, u in parts))


def shift(instant: datetime, text, direction: int = 1) -> datetime:
    """``instant`` plus (``direction`` 1) or minus (-1) a duration that may hold calendar months
    ('6mo'): the months first, the day clamped to the target month's last (Aug 31 + 6mo = Feb 28),
    then the rest; a leading '-' flips the direction. Written out here, not taken from the engine."""
    value = str(text).strip()
    if value.startswith("-"):
        direction, value = -direction, value[1:]
    months = sum(int(n) for n, u in _DURATION.findall(value) if u == "mo")
    rest = timedelta(seconds=sum(int(n) * _UNIT[u] for n, u in _DURATION.findall(value) if u != "mo"))
    if months:
        total = instant.year * 12 + (instant.month - 1) + direction * months
        year, month = total // 12, total % 12 + 1
        next_first = date(year + (month == 12), month % 12 + 1, 1)
        instant = instant.replace(year=year, month=month, day=min(instant.day, (next_first - timedelta(days=1)).day))
    return instant + direction * rest


def clock(text: str) -> time:
    hours, minutes = str(text).split(":")
    return time(int(hours), int(minutes))


ENGINE_YAML = yaml.safe_load((REPO / "engine.yaml").read_text(encoding="utf-8"))
DEFAULTS = ENGINE_YAML.get("defaults", {})
DEFAULT_ZONE = DEFAULTS.get("timezone", "UTC")
DEFAULT_QUIET = {name: (clock(q["start"]), clock(q["end"])) for name, q in DEFAULTS.get("quiet_hours", {}).items()}
CHANNEL_KIND = {name: spec["kind"] for name, spec in ENGINE_YAML["channels"].items()}
STALE_HORIZON = duration(ENGINE_YAML.get("ledger", {}).get("stale_horizon", "7d"))
CONTACT = {"email": "email", "sms": "phone"}


def has_contact(kind: str, customer: dict) -> bool:
    """The customer has an address for ``kind``: a letter needs a name, street, postal code and city."""
    if kind == "letter":
        text = lambda column: " ".join(str(customer.get(column) or "").split())  # noqa: E731
        return bool((text("first_name") or text("last_name")) and text("street") and text("postal_code")
                    and text("city"))
    return customer[CONTACT[kind]] not in (None, "")


def shipped_campaigns() -> list[dict]:
    specs = []
    for path in sorted((REPO / "campaigns.d").iterdir()):
        if path.suffix in (".yaml", ".yml"):
            spec = yaml.safe_load(path.read_text(encoding="utf-8"))
            if spec.get("enabled", True):
                specs.append(spec)
    return specs


# --- SQL's three-valued logic, for the audience filters -----------------------


def AND(*values):
    if any(v is False for v in values):
        return False
    return None if any(v is None for v in values) else True


def OR(*values):
    if any(v is True for v in values):
        return True
    return None if any(v is None for v in values) else False


def NOT(value):
    return None if value is None else not value


def EQ(a, b):
    return None if a is None or b is None else a == b


def NE(a, b):
    return None if a is None or b is None else a != b


def LT(a, b):
    return None if a is None or b is None else a < b


@dataclass
class FilterContext:
    customer: dict
    order_count: int
    ordered_since_trigger: bool
    #: the sum of the totals of the customer's orders up to now (none: 0)
    total_spent: float = 0
    now: datetime | None = None

    def has_tag(self, tag: str) -> bool:
        return False  # a fresh ledger holds no tags

    def last_engaged_at(self, kind: str) -> datetime | None:
        return None  # a fresh ledger holds no response events (nothing was sent, so nothing was opened)

    def days_ago(self, days: float) -> datetime:
        return self.now - timedelta(days=days)


#: Every filter text the shipped campaigns use, translated by hand. A new filter
#: in campaigns.d/ must be added here (test_the_model_knows_every_shipped_campaign).
FILTERS = {
    "email IS NOT NULL": lambda c: c.customer["email"] is not None,
    "phone IS NOT NULL": lambda c: c.customer["phone"] is not None,
    "email IS NOT NULL AND order_count = 0": lambda c: AND(c.customer["email"] is not None, c.order_count == 0),
    "email IS NOT NULL AND order_count >= 1 AND NOT has_tag('vip')":
        lambda c: AND(c.customer["email"] is not None, c.order_count >= 1, NOT(c.has_tag("vip"))),
    "has_tag('vip')": lambda c: c.has_tag("vip"),
    "total_spent >= 300": lambda c: c.total_spent >= 300,
    "customer_type = 'company' OR is_wholesaler":
        lambda c: OR(EQ(c.customer["customer_type"], "company"), c.customer["is_wholesaler"]),
    "customer_type <> 'company' AND NOT ordered_since_trigger":
        lambda c: AND(NE(c.customer["customer_type"], "company"), NOT(c.ordered_since_trigger)),
    "email IS NOT NULL AND last_engaged_at('email') < days_ago(90)":
        lambda c: AND(c.customer["email"] is not None, LT(c.last_engaged_at("email"), c.days_ago(90))),
}
#: engine.yaml's named segments (segment_entry triggers), filters in the language above
SEGMENTS = ENGINE_YAML.get("segments") or {}

TRIGGER_KINDS = {"order_placed", "checkout_abandoned", "registration", "event", "anniversary", "order_date",
                 "last_activity", "at_risk", "segment_entry"}


def holds(text: str | None, context: FilterContext) -> bool:
    """A filter selects a row only when it is TRUE (NULL and FALSE both leave it out)."""
    return text is None or FILTERS[" ".join(text.split())](context) is True


# --- the shop history ----------------------------------------------------------


@dataclass
class History:
    """A small shop: rows in the engine's canonical schema, naive UTC times."""

    customers: list[dict] = field(default_factory=list)
    orders: list[dict] = field(default_factory=list)
    order_items: list[dict] = field(default_factory=list)
    checkouts: list[dict] = field(default_factory=list)
    events: list[dict] = field(default_factory=list)
    #: web push subscriptions (several per customer); a customer without one has no push contact
    push_subscriptions: list[dict] = field(default_factory=list)

    def shop_data(self) -> ShopData:
        data = ShopData()
        data.rows.update(customers=self.customers, orders=self.orders, order_items=self.order_items,
                         checkouts=self.checkouts, events=self.events, push_subscriptions=self.push_subscriptions)
        return data

    def _repr_pretty_(self, printer, cycle) -> None:  # Hypothesis prints falsifying examples with this
        printer.text(repr(self))

    def __repr__(self) -> str:
        """What a counterexample prints: Python that rebuilds it (paste it into a regression test)."""
        lines = ["History("]
        for name in ("customers", "orders", "order_items", "checkouts", "events", "push_subscriptions"):
            rows = getattr(self, name)
            if rows:
                lines.append(f"    {name}=[")
                lines += ["        {" + ", ".join(f"{k!r}: {_show(v)}" for k, v in r.items()) + "}," for r in rows]
                lines.append("    ],")
        lines.append(")")
        return "\n".join(lines)


def _show(value) -> str:
    if isinstance(value, datetime):
        return f"datetime({value.year}, {value.month}, {value.day}, {value.hour}, {value.minute}, {value.second})"
    if isinstance(value, date):
        return f"date({value.year}, {value.month}, {value.day})"
    return repr(value)


def zone_of(customer: dict) -> ZoneInfo:
    name = customer.get("timezone")
    if isinstance(name, str) and name:
        try:
            return ZoneInfo(name)
        except (ZoneInfoNotFoundError, ValueError):
            pass
    return ZoneInfo(DEFAULT_ZONE)


def next_local(instant: datetime, at: time, zone: ZoneInfo) -> datetime:
    """The first instant at or after ``instant`` at which the clock in ``zone`` shows ``at``."""
    day = instant.astimezone(zone).date() - timedelta(days=1)
    while True:
        candidate = datetime.combine(day, at, tzinfo=zone).astimezone(UTC)
        if candidate >= instant:
            return candidate
        day += timedelta(days=1)


def step_due(trigger_at: datetime, step: dict, zone: ZoneInfo) -> datetime:
    base = shift(trigger_at, step["delay"])
    return next_local(base, clock(step["send_at"]), zone) if "send_at" in step else base


def wait_due(instance: "Instance", step: dict, shop: "History", now: datetime) -> datetime:
    """A step with ``wait_until``: at the first awaited happening after the trigger (by ``now``), not
    before the delay; at trigger + at_most when none came strictly before that (README: the language)."""
    deadline = instance.at + duration(step["at_most"])
    awaited = step["wait_until"]
    if awaited == "ordered":
        times = [utc(o["created_at"]) for o in shop.orders if o["customer_id"] == instance.customer_id]
    else:
        times = [utc(e["occurred_at"]) for e in shop.events if e["customer_id"] == instance.customer_id
                 and awaited in ("came_back", e["type"])]
    first = min((t for t in times if instance.at < t <= now), default=None)
    if first is None or first >= deadline:
        return deadline
    return max(instance.at + duration(step["delay"]), first)


def yearly(day: date, year: int) -> date:
    if day.month == 2 and day.day == 29 and not (year % 4 == 0 and (year % 100 != 0 or year % 400 == 0)):
        return date(year, 2, 28)
    return day.replace(year=year)


def bucket(campaign: str, customer_id: str) -> int:
    return int.from_bytes(hashlib.sha256(f"{campaign}:{customer_id}".encode()).digest()[:4], "big") % 100


def utc(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC)


def midnight(day: date, zone: ZoneInfo) -> datetime:
    """When ``day`` begins for a customer in ``zone``: date triggers are anchored at local midnight."""
    return datetime.combine(day, time(0, 0), tzinfo=zone).astimezone(UTC)


@dataclass(frozen=True)
class Instance:
    customer_id: int
    key: str
    at: datetime
    #: an order trigger's order as (created_at, order_id): "ordered again" is an order ranked after it
    order: tuple | None = None


def trigger_instances(spec: dict, shop: History, now: datetime) -> list[Instance]:
    """Every trigger instance of a (non-yearly) campaign that exists at ``now``."""
    (kind, options), = spec["trigger"].items()
    options = options or {}
    orders = [o for o in shop.orders if utc(o["created_at"]) <= now]
    if kind == "order_placed":
        statuses = options.get("statuses")
        counted = sorted((o for o in orders if not statuses or o["status"] in statuses),
                         key=lambda o: (o["created_at"], o["order_id"]))
        instances, seen = [], {}
        for o in counted:
            seen[o["customer_id"]] = seen.get(o["customer_id"], 0) + 1
            if options.get("nth") in (None, seen[o["customer_id"]]):
                instances.append(Instance(o["customer_id"], str(o["order_id"]), utc(o["created_at"]),
                                          (o["created_at"], o["order_id"])))
        return instances
    if kind == "checkout_abandoned":
        return [Instance(k["customer_id"], str(k["checkout_id"]), utc(k["created_at"])) for k in shop.checkouts
                if utc(k["created_at"]) <= now and (k["completed_at"] is None or utc(k["completed_at"]) > now)]
    if kind == "registration":
        return [Instance(c["customer_id"], str(c["customer_id"]), utc(c["created_at"])) for c in shop.customers
                if c["created_at"] is not None and utc(c["created_at"]) <= now]
    if kind == "event":
        events = [e for e in shop.events if e["type"] == options["type"] and utc(e["occurred_at"]) <= now]
        if options.get("per", "day") == "event":
            return [Instance(e["customer_id"], str(e["event_id"]), utc(e["occurred_at"])) for e in events]
        days: dict[tuple[int, date], datetime] = {}
        for e in events:
            instance = (e["customer_id"], e["occurred_at"].date())
            days[instance] = max(days.get(instance, e["occurred_at"]), e["occurred_at"])
        return [Instance(c, day.isoformat(), utc(at)) for (c, day), at in days.items()]
    if kind == "order_date":
        column = options.get("column", "delivery_date")
        zones = {c["customer_id"]: zone_of(c) for c in shop.customers}
        return [Instance(o["customer_id"], str(o["order_id"]),
                         midnight(o[column], zones.get(o["customer_id"], ZoneInfo(DEFAULT_ZONE))))
                for o in orders if o[column] is not None]
    if kind == "last_activity":
        kinds = options.get("activity", ["order"])
        kinds = [kinds] if isinstance(kinds, str) else kinds
        newest: dict[int, tuple[datetime, str]] = {}
        activities = []
        if "order" in kinds:
            activities += [(o["customer_id"], utc(o["created_at"]), f"order:{o['order_id']}") for o in orders]
        if "login" in kinds:
            activities += [(e["customer_id"], utc(e["occurred_at"]), f"login:{e['event_id']}") for e in shop.events
                           if e["type"] == "login" and utc(e["occurred_at"]) <= now]
        for customer_id, at, key in activities:
            # newest first; a tie at the same instant goes to the greater key text ('order:' > 'login:')
            newest[customer_id] = max(newest.get(customer_id, (at, key)), (at, key))
        return [Instance(c, key, at) for c, (at, key) in newest.items()]
    if kind == "at_risk":
        # Segment entry with an empty entries table: today's members enter at ``now``.
        since, percent = shift(now, options.get("window", "26w"), -1), options.get("percent", 60)
        last: dict[int, dict] = {}
        for o in orders:
            current = last.get(o["customer_id"])
            if current is None or (o["created_at"], o["order_id"]) > (current["created_at"], current["order_id"]):
                last[o["customer_id"]] = o
        recent = sorted((o for o in last.values() if utc(o["created_at"]) > since),
                        key=lambda o: (o["created_at"], o["customer_id"]))
        return [Instance(o["customer_id"], str(o["order_id"]), now) for position, o in enumerate(recent, start=1)
                if position * 100 <= len(recent) * percent]
    if kind == "segment_entry":
        # An empty entries table: the segment's members now enter now, once (key 'entered').
        text = SEGMENTS[options["segment"]]
        return [Instance(c["customer_id"], "entered", now) for c in shop.customers
                if holds(text, customer_context(c, shop, now))]
    raise NotImplementedError(f"the reference model has no trigger '{kind}'")


def customer_context(customer: dict, shop: History, now: datetime, ordered_since_trigger: bool = False) -> FilterContext:
    """What a filter reads of ``customer`` at ``now`` (with a fresh ledger)."""
    orders = [o for o in shop.orders if o["customer_id"] == customer["customer_id"] and utc(o["created_at"]) <= now]
    return FilterContext(customer, len(orders), ordered_since_trigger,
                         total_spent=sum(o.get("total") or 0 for o in orders), now=now)


def anniversary_instance(customer: dict, attribute: str, step: dict, now: datetime) -> Instance | None:
    """The latest yearly occurrence (the customer's local midnight) whose step is due by ``now``; key = the year."""
    day = customer.get(attribute)
    if day is None:
        return None
    if customer.get("created_at") is not None and utc(customer["created_at"]) > now:
        return None  # not a customer yet at ``now``
    zone = zone_of(customer)
    for year in range(now.year + 1, now.year - 3, -1):
        at = midnight(yearly(day, year), zone)
        if step_due(at, step, zone) <= now:
            return Instance(customer["customer_id"], str(year), at)
    return None


def ordered_again(instance: Instance, shop: History, now: datetime) -> bool:
    """An order by ``now`` after the trigger: for an order trigger one ranked after its order by
    (created_at, order_id) - a tie at the same instant is a later order too; else one later in time."""
    orders = [o for o in shop.orders if o["customer_id"] == instance.customer_id and utc(o["created_at"]) <= now]
    if instance.order is not None:
        return any((o["created_at"], o["order_id"]) > instance.order for o in orders)
    return any(instance.at < utc(o["created_at"]) for o in orders)


def stop_holds(stop: str, customer: dict, shop: History, instance: Instance, now: datetime) -> bool:
    cid = customer["customer_id"]
    trigger_at = instance.at
    if stop == "ordered_again":
        return ordered_again(instance, shop, now)
    if stop == "came_back":
        return any(e["customer_id"] == cid and trigger_at < utc(e["occurred_at"]) <= now for e in shop.events)
    if stop == "unsubscribed":
        return customer["unsubscribed_at"] is not None and utc(customer["unsubscribed_at"]) <= now
    if stop == "left_segment":
        return False  # with an empty entries table every instance is a member now: none has left
    raise NotImplementedError(f"the reference model has no stop condition '{stop}'")


def quiet(step: dict, channel: str, local: time) -> bool:
    spec = step.get("quiet_hours")
    hours = (clock(spec["start"]), clock(spec["end"])) if spec else DEFAULT_QUIET.get(channel)
    if hours is None:
        return False
    start, end = hours
    return start <= local < end if start <= end else (local >= start or local < end)


def variants_of(step: dict) -> list[dict]:
    if "variants" in step:
        return step["variants"]
    return [{"id": "default", "channel": step["channel"], "template": step["template"]}]


def qualifying_variants(spec: dict, step: dict, customer: dict, context: FilterContext) -> list[dict]:
    """The variants whose audience holds and whose A/B share (laid out in variant order) has the customer."""
    start, share, found = 0, bucket(spec["name"], str(customer["customer_id"])), []
    for variant in variants_of(step):
        in_share = True
        if variant.get("percent") is not None:
            in_share = start <= share < start + variant["percent"]
            start += variant["percent"]
        if in_share and holds(variant.get("audience"), context):
            found.append(variant)
    return found


def outcome(spec: dict, step: dict, customer: dict, instance: Instance, due: datetime, shop: History,
            candidates: list[dict], now: datetime) -> tuple[str, dict | None]:
    """(send / defer:quiet_hours / skip:<reason>, the variant), in the documented order: the
    message goes by the first qualifying variant the customer has contact data for."""
    first = candidates[0] if candidates else None
    if any(stop_holds(s, customer, shop, instance, now) for s in spec.get("stop", [])):
        return "skip:stopped", first
    if "freshness" in step and now >= shift(due, step["freshness"]):  # [due, due + freshness)
        return "skip:stale", first
    if first is None:
        return "skip:no_variant", None
    reachable = [v for v in candidates if reachable_by(customer, CHANNEL_KIND[v["channel"]], shop)]
    if not reachable:
        return "skip:no_contact", first
    if quiet(step, reachable[0]["channel"], now.astimezone(zone_of(customer)).time()):
        return "defer:quiet_hours", reachable[0]
    return "send", reachable[0]


def reachable_by(customer: dict, kind: str, shop: History) -> bool:
    """Contact data for the kind: an address column, or (web push) at least one subscription with an endpoint."""
    if kind == "push":
        return any(s["customer_id"] == customer["customer_id"] and s.get("endpoint") for s in shop.push_subscriptions)
    return has_contact(kind, customer)


def instant_text(value: datetime) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")


def reference_plan(spec: dict, shop: History, now: datetime) -> set[tuple]:
    """{(campaign, step, customer_id, trigger_key, outcome, variant, due_at)} of one campaign at ``now``,
    with an empty ledger. The first five are the due set; variant and due time are checked as well."""
    (kind, options), = spec["trigger"].items()
    customers = {c["customer_id"]: c for c in shop.customers}
    yearly_trigger = kind == "anniversary"
    instances = [] if yearly_trigger else trigger_instances(spec, shop, now)
    plan = set()
    for step in spec["steps"]:
        if yearly_trigger:
            attribute = (options or {}).get("attribute", "birthday")
            found = (anniversary_instance(c, attribute, step, now) for c in shop.customers)
            step_instances = [i for i in found if i is not None]
        else:
            step_instances = instances
        for instance in step_instances:
            customer = customers.get(instance.customer_id)
            if customer is None:
                continue
            due = wait_due(instance, step, shop, now) if "wait_until" in step else step_due(instance.at, step, zone_of(customer))
            if due > now:
                continue  # not due yet
            if "freshness" in step and now > shift(due, step["freshness"]) + STALE_HORIZON:
                continue  # beyond the stale horizon: not even reported
            context = customer_context(customer, shop, now, ordered_again(instance, shop, now))
            if not (holds(spec.get("audience"), context) and holds(step.get("audience"), context)):
                continue
            candidates = qualifying_variants(spec, step, customer, context)
            result, variant = outcome(spec, step, customer, instance, due, shop, candidates, now)
            plan.add((spec["name"], step["id"], str(instance.customer_id), instance.key,
                      result, variant["id"] if variant else None, instant_text(due)))
    return plan


def modelled(spec: dict) -> list[str]:
    """What the model cannot evaluate in ``spec`` (empty: fully modelled)."""
    missing = []
    (kind, _), = spec["trigger"].items()
    if kind not in TRIGGER_KINDS:
        missing.append(f"trigger {kind}")
    texts = [spec.get("audience")] + [s.get("audience") for s in spec["steps"]]
    texts += [v.get("audience") for s in spec["steps"] for v in s.get("variants", [])]
    missing += [f"filter {t!r}" for t in texts if t is not None and " ".join(t.split()) not in FILTERS]
    if kind == "segment_entry":
        segment = SEGMENTS.get(spec["trigger"][kind]["segment"])
        if segment is None or " ".join(segment.split()) not in FILTERS:
            missing.append(f"segment {spec['trigger'][kind]['segment']!r}")
    missing += [f"stop {s}" for s in spec.get("stop", [])
                if s not in ("ordered_again", "came_back", "unsubscribed", "left_segment")]
    reentry = spec.get("reentry", "per_trigger")
    if reentry not in ("per_trigger", "once"):
        missing.append(f"reentry {reentry}")
    return missing


CAMPAIGNS = shipped_campaigns()
MODELLED = [spec for spec in CAMPAIGNS if not modelled(spec)]


# ==============================================================================
# Comparison
# ==============================================================================


def compare(spec: dict, engine: set[tuple], model: set[tuple]) -> list[str]:
    """Differences between the engine's and the model's plan of one campaign (empty: equal)."""
    if spec.get("reentry", "per_trigger") == "once":
        model = _reentry_once(engine, model)
    problems = []
    for row in sorted(engine - model):
        problems.append(f"engine only: {row}")
    for row in sorted(model - engine):
        problems.append(f"model only:  {row}")
    return problems


def _reentry_once(engine: set[tuple], model: set[tuple]) -> set[tuple]:
    """The model's plan with re-entry 'once' applied the way the engine chose, if that way is allowed:
    per customer, the sends of one trigger key stay and every other send becomes skip:reentry."""
    adjusted = set(model)
    by_customer: dict[str, set[str]] = {}
    for _, _, customer_id, key, result, *_ in model:
        if result == "send":
            by_customer.setdefault(customer_id, set()).add(key)
    for customer_id, keys in by_customer.items():
        if len(keys) < 2:
            continue
        kept = {row[3] for row in engine if row[2] == customer_id and row[4] == "send"}
        if len(kept) != 1 or not kept <= keys:
            continue  # not a choice among the model's keys: leave the model unchanged, the diff shows it
        for row in model:
            if row[2] == customer_id and row[4] == "send" and row[3] not in kept:
                adjusted.discard(row)
                adjusted.add(row[:4] + ("skip:reentry",) + row[5:])
    return adjusted


# ==============================================================================
# Histories
# ==============================================================================

#: How long before ``now`` things happen, on the boundaries the shipped campaigns use
#: (delays, delays + freshness, + the stale horizon, the 6-month window: 181 to 184 days) ...
BOUNDARIES = sorted({timedelta(0), timedelta(minutes=10), timedelta(hours=1), timedelta(hours=2), timedelta(hours=3),
                     timedelta(days=1), timedelta(days=2), timedelta(days=3), timedelta(days=5), timedelta(days=6),
                     timedelta(days=7), timedelta(days=8), timedelta(days=9), timedelta(days=10), timedelta(days=14),
                     timedelta(days=16), timedelta(days=17), timedelta(days=24), timedelta(days=60),
                     timedelta(days=62), timedelta(days=69), timedelta(days=90), timedelta(days=92),
                     timedelta(days=99), timedelta(weeks=26), timedelta(days=181), timedelta(days=182),
                     timedelta(days=183), timedelta(days=184), timedelta(days=-1)})
ZONES = [None, "", "Europe/Berlin", "Europe/London", "America/New_York", "Asia/Tokyo", "Australia/Sydney",
         "Pacific/Kiritimati", "UTC", "Not/AZone"]
EVENT_TYPES = ["newsletter_signup", "product_viewed", "search", "login"]
#: instants where calendars and clocks change: DST in Europe and the US, leap days, new year
SPECIAL_DAYS = [date(2024, 2, 29), date(2024, 3, 1), date(2024, 3, 31), date(2024, 10, 27), date(2025, 1, 1),
                date(2025, 2, 28), date(2025, 3, 1), date(2025, 3, 9), date(2025, 3, 30), date(2025, 10, 26),
                date(2025, 11, 2), date(2025, 4, 6)]

nows = st.builds(
    lambda day, seconds: datetime.combine(day, time(0), tzinfo=UTC) + timedelta(seconds=seconds),
    st.one_of(st.sampled_from(SPECIAL_DAYS), st.dates(date(2024, 1, 1), date(2026, 12, 31))),
    # whole hours hit local send times and quiet-hour edges exactly (07:00 UTC = 08:00 Berlin in winter)
    st.one_of(st.sampled_from([6, 7, 8, 9, 10, 16, 17, 19, 20, 21, 22]).map(lambda h: h * 3600),
              st.integers(0, 23).map(lambda h: h * 3600), st.integers(0, 86399)),
)
#: an offset before now: a boundary give or take a second or a few minutes, a recent instant, or anything in ~7 months
offsets = st.one_of(
    st.builds(lambda b, s: b + timedelta(seconds=s), st.sampled_from(BOUNDARIES),
              st.sampled_from([0, 0, 1, -1, 60, -60, -3600, 3600, 1800])),
    st.integers(-2 * 86400, 20 * 86400).map(lambda s: timedelta(seconds=s)),
    st.integers(-5 * 86400, 200 * 86400).map(lambda s: timedelta(seconds=s)),
)
#: how much earlier than a customer's last activity another activity was
earlier = st.one_of(st.just(timedelta(0)), st.integers(0, 6 * 3600).map(lambda s: timedelta(seconds=s)),
                    offsets.filter(lambda d: d >= timedelta(0)))


@st.composite
def histories(draw) -> tuple[History, datetime]:
    now = draw(nows)
    shared = [now - draw(offsets) for _ in range(2)]  # instants several rows share: ties

    def when() -> datetime:
        if draw(st.integers(0, 4)) == 0:
            return draw(st.sampled_from(shared)).replace(tzinfo=None)
        return (now - draw(offsets)).replace(tzinfo=None)

    last_active: dict[int, timedelta] = {}  # per customer: most activity before this (inactivity, at-risk)

    def activity(cid: int) -> datetime:
        if draw(st.integers(0, 5)) == 0:
            return when()
        return (now - last_active[cid] - draw(earlier)).replace(tzinfo=None)

    shop = History()
    customer_ids = list(range(8, 8 + draw(st.integers(1, 8))))  # 8, 9, 10, ...: text and numeric order differ
    for cid in customer_ids:
        last_active[cid] = draw(offsets)
        birthday = None
        kind = draw(st.sampled_from(["none", "near", "leap", "any"]))
        if kind == "near":  # a birthday in the days around now
            day = now.date() - timedelta(days=draw(st.integers(-2, 10)))
            year = 2000 if (day.month, day.day) == (2, 29) else draw(st.integers(1950, 2005))
            birthday = day.replace(year=year)
        elif kind == "leap":
            birthday = date(draw(st.sampled_from([1988, 1996, 2000])), 2, 29)
        elif kind == "any":
            birthday = draw(st.dates(date(1950, 1, 1), date(2005, 12, 31)))
        shop.customers.append({
            "customer_id": cid,
            "email": draw(st.sampled_from([f"c{cid}@example.com"] * 6 + [None, None, ""])),
            "phone": draw(st.sampled_from([f"+4915100000{cid:03d}"] * 3 + [None, None, ""])),
            "first_name": f"C{cid}", "last_name": "Test",
            "created_at": when() if draw(st.integers(0, 9)) else None,
            "birthday": birthday,
            "timezone": draw(st.sampled_from(ZONES)),
            "customer_type": draw(st.sampled_from([None, "female", "male", "company"])),
            "is_wholesaler": draw(st.sampled_from([None, False, True])),
            "unsubscribed_at": when() if draw(st.integers(0, 5)) == 0 else None,
        })
    for index in range(draw(st.integers(0, 24))):
        order_id, cid = 8 + index, draw(st.sampled_from(customer_ids))
        delivery = None
        if draw(st.booleans()):
            delivery = now.date() + timedelta(days=draw(st.integers(-4, 3)))
        shop.orders.append({
            "order_id": order_id, "customer_id": cid, "created_at": activity(cid),
            "status": draw(st.sampled_from(["completed", "completed", "cancelled"])), "total": 10 + index,
            "payment_method": "card", "delivery_date": delivery,
        })
        shop.order_items.append({"order_id": order_id, "product_id": 1, "name": "Beans", "quantity": 1, "price": 10,
                                 "category": draw(st.sampled_from(["coffee", "equipment"]))})
    for index in range(draw(st.integers(0, 6))):
        created = when()
        completed = draw(st.one_of(
            st.none(),
            st.sampled_from([timedelta(minutes=30), timedelta(hours=1), timedelta(hours=2), timedelta(days=1)])
            .map(lambda d: created + d),
            st.sampled_from([-1, 0, 0, 1]).map(lambda s: (now + timedelta(seconds=s)).replace(tzinfo=None)),
        ))
        shop.checkouts.append({"checkout_id": 8 + index, "customer_id": draw(st.sampled_from(customer_ids)),
                               "created_at": created, "completed_at": completed, "total": 20})
    for index in range(draw(st.integers(0, 24))):
        cid = draw(st.sampled_from(customer_ids))
        shop.events.append({"event_id": 8 + index, "customer_id": cid, "type": draw(st.sampled_from(EVENT_TYPES)),
                            "occurred_at": activity(cid)})
    for cid in customer_ids:  # none, one or two browsers; a row without an endpoint is no subscription
        for n in range(draw(st.sampled_from([0, 0, 1, 2]))):
            shop.push_subscriptions.append({"customer_id": cid, "p256dh": "BAAA", "auth": "AAAA",
                                            "endpoint": draw(st.sampled_from([f"https://push.example.net/{cid}/{n}"] * 3
                                                                             + [None]))})
    return shop, now


# ==============================================================================
# Running the engine
# ==============================================================================


class EnginePlanner:
    """The shipped project loaded once per backend; each history gets a fresh database."""

    def __init__(self, backend: str, directory: Path):
        self.backend = backend
        self.directory = directory
        self.project_root = copy_project(directory / "project")
        self.count = 0
        with _warehouse_env(self._new_url()):
            self.project = load_project(self.project_root)

    def _new_url(self) -> str:
        self.count += 1
        return database_url(self.backend, self.directory, name=f"shop{self.count}")

    def plan(self, shop: History, now: datetime, names: list[str] | None = None) -> dict[str, set[tuple]]:
        """campaign -> its rows due at ``now`` (all enabled campaigns, or only ``names``)."""
        url = self._new_url()
        db = Database(url)
        try:
            load_shop(db, shop.shop_data())
        finally:
            db.dispose()
        with _warehouse_env(url):
            reconciler = Reconciler(self.project)
            try:
                plan: dict[str, set[tuple]] = {}
                selected = [self.project.campaign(n) for n in names] if names is not None else None
                for batch in reconciler.due(now, selected):
                    for m in batch:
                        plan.setdefault(m.campaign, set()).add((m.campaign, m.step, m.customer_id, m.trigger_key,
                                                                m.outcome, m.variant, instant_text(m.due_at)))
                return plan
            finally:
                reconciler.close()


class _warehouse_env:
    def __init__(self, url: str):
        self.url = url

    def __enter__(self):
        self.saved = {k: os.environ.get(k) for k in ("ENGINE_WAREHOUSE_URL", "ENGINE_LEDGER_URL")}
        os.environ["ENGINE_WAREHOUSE_URL"] = self.url
        os.environ.pop("ENGINE_LEDGER_URL", None)

    def __exit__(self, *exc):
        for key, value in self.saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def disagreements(planner: EnginePlanner, shop: History, now: datetime, specs: list[dict],
                  only: bool = False) -> dict[str, list[str]]:
    """campaign -> how the engine's plan differs from the model's (only campaigns that differ).
    The engine plans every enabled campaign, or with ``only`` just those of ``specs``."""
    engine = planner.plan(shop, now, [spec["name"] for spec in specs] if only else None)
    found = {}
    for spec in specs:
        problems = compare(spec, engine.get(spec["name"], set()), reference_plan(spec, shop, now))
        if problems:
            found[spec["name"]] = problems
    for name in sorted(set(engine) - {spec["name"] for spec in CAMPAIGNS}):
        found[name] = [f"engine planned campaign {name}, which is not in campaigns.d/"]
    return found


def without(shop: History, drop: set[tuple[str, int]]) -> History:
    """``shop`` without the rows ``(table, index)`` in ``drop``; a dropped customer or order takes its rows along."""
    customers = [c for i, c in enumerate(shop.customers) if ("customers", i) not in drop]
    kept = {c["customer_id"] for c in customers}
    orders = [o for i, o in enumerate(shop.orders) if ("orders", i) not in drop and o["customer_id"] in kept]
    order_ids = {o["order_id"] for o in orders}
    return History(
        customers=customers, orders=orders,
        order_items=[item for item in shop.order_items if item["order_id"] in order_ids],
        checkouts=[k for i, k in enumerate(shop.checkouts) if ("checkouts", i) not in drop and k["customer_id"] in kept],
        events=[e for i, e in enumerate(shop.events) if ("events", i) not in drop and e["customer_id"] in kept],
        push_subscriptions=[s for s in shop.push_subscriptions if s["customer_id"] in kept],
    )


def minimize(planner: EnginePlanner, shop: History, now: datetime, specs: list[dict]) -> History:
    """A smaller history on which the engine still disagrees with the model (for these campaigns).

    Hypothesis' own shrinking would re-run the whole engine hundreds of times (minutes per failure);
    this removes rows in halving chunks (ddmin), running only the failing campaigns.
    """
    def fails(candidate: History) -> bool:
        return bool(disagreements(planner, candidate, now, specs, only=True))

    for table in ("customers", "orders", "checkouts", "events"):
        chunk = max(1, len(getattr(shop, table)) // 2)
        while chunk >= 1:
            index = 0
            while index < len(getattr(shop, table)):
                candidate = without(shop, {(table, i) for i in range(index, index + chunk)})
                if candidate != shop and fails(candidate):
                    shop = candidate  # keep the removal; the same index now holds the next rows
                else:
                    index += chunk
            chunk //= 2
    return shop


def check_against_model(planner: EnginePlanner, shop: History, now: datetime) -> None:
    found = disagreements(planner, shop, now, MODELLED)
    if not found:
        return
    failing = [spec for spec in MODELLED if spec["name"] in found]
    if failing:
        smaller = minimize(planner, shop, now, failing)
        found = disagreements(planner, smaller, now, failing, only=True) or found
        shop = smaller if found else shop
    problems = [problem for name in sorted(found) for problem in found[name]]
    note(f"now = {now!r}")
    raise AssertionError(
        f"engine ({planner.backend}) and reference model disagree at now = {now!r}\n"
        "rows are (campaign, step, customer_id, trigger_key, outcome, variant, due_at UTC):\n  "
        + "\n  ".join(problems)
        + f"\non this history (minimized):\n{shop!r}")


def policy_gaps() -> list[str]:
    """Policies in engine.yaml the model does not know (it models consent, suppression and caps as absent)."""
    gaps = []
    policies = ENGINE_YAML.get("policies") or {}
    if policies.get("frequency_caps"):
        gaps.append("policies.frequency_caps")
    mapped = (ENGINE_YAML.get("sources", {}).get("customers") or {}).get("columns") or {}
    gaps += [f"customers.{column}" for column in ("email_consent", "sms_consent") if column in mapped]
    return gaps


#: Examples per backend (each one compiles and runs all shipped campaigns, ~1 s of CPU);
#: ENGINE_MODEL_EXAMPLES=N runs N on every backend (e.g. 500 for a long hunt).
EXAMPLES = {"duckdb": 10, "sqlite": 12, "postgres": 5}
#: A fixed seed per backend: reproducible in CI, and each backend sees other histories.
SEEDS = {"duckdb": 20250110, "sqlite": 20250111, "postgres": 20250112}


@pytest.mark.parametrize("backend", BACKENDS)
def test_engine_due_sets_match_the_reference_model(backend, tmp_path):
    assert not policy_gaps(), f"extend the reference model for {policy_gaps()}"
    if backend == "postgres":
        import pg

        pg.server()  # skips here (not inside Hypothesis) when PostgreSQL cannot start
    planner = EnginePlanner(backend, tmp_path)
    examples = int(os.environ.get("ENGINE_MODEL_EXAMPLES") or EXAMPLES[backend])

    @seed(SEEDS[backend])
    @settings(max_examples=examples, deadline=None, database=None, print_blob=False,
              phases=[Phase.explicit, Phase.generate],  # no shrinking: check_against_model minimizes (faster)
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(histories())
    def check(history_and_now):
        shop, now = history_and_now
        check_against_model(planner, shop, now)

    check()


def test_the_model_knows_every_shipped_campaign():
    """A campaign the model cannot read (new trigger, filter, stop or re-entry rule) must be modelled here."""
    gaps = {spec["name"]: modelled(spec) for spec in CAMPAIGNS if modelled(spec)}
    assert gaps == {}, "extend the reference model in tests/test_reference_model.py: " + repr(gaps)
    assert policy_gaps() == []


# ==============================================================================
# Engine bugs against the documented semantics, as fixed examples
# ==============================================================================


def _customer(cid: int, **values) -> dict:
    row = {"customer_id": cid, "email": f"c{cid}@example.com", "phone": None, "first_name": f"C{cid}",
           "last_name": "Test", "created_at": None, "birthday": None, "timezone": "Europe/Berlin",
           "customer_type": None, "is_wholesaler": None, "unsubscribed_at": None}
    return {**row, **values}


def _signup(event_id: int, cid: int, at: datetime) -> dict:
    return {"event_id": event_id, "customer_id": cid, "type": "newsletter_signup", "occurred_at": at}


@pytest.mark.parametrize("backend", ["duckdb", "sqlite"])
def test_a_send_time_across_a_dst_fall_back_keeps_the_stale_row(backend, tmp_path):
    """engine/compile.py step_window: the SQL lower bound allowed a local send time to move the due
    time by at most one day, but on a fall-back day the next 10:00 can be 25 h away.

    A signup at 2024-10-24 08:00:01 UTC: welcome-series 'introduce' (2d, send_at 10:00 Europe/Berlin,
    freshness 1d) is due at the first 10:00 after 2024-10-26 10:00:01 CEST, i.e. 2024-10-27 10:00 CET
    = 09:00 UTC, 24 h 59 min 59 s later. At 2024-11-04 09:00 UTC (due + freshness + the 7-day stale
    horizon, inclusive) it must be reported as stale; the query's window (now - 2d - 1d - 7d - 1d =
    2024-10-24 09:00) cut the trigger off, so the row silently disappeared.
    """
    shop = History(customers=[_customer(8)], events=[_signup(8, 8, datetime(2024, 10, 24, 8, 0, 1))])
    now = datetime(2024, 11, 4, 9, 0, tzinfo=UTC)
    engine = {row[:5] for row in EnginePlanner(backend, tmp_path).plan(shop, now).get("welcome-series", set())}
    expected = {("welcome-series", "introduce", "8", "2024-10-24", "skip:stale"),
                ("welcome-series", "discount", "8", "2024-10-24", "skip:stale")}
    assert engine == expected
    model = reference_plan(next(s for s in CAMPAIGNS if s["name"] == "welcome-series"), shop, now)
    assert {row[:5] for row in model} == expected


def test_reentry_once_keeps_the_first_instance(tmp_path, backend="duckdb"):
    """Re-entry 'once' is "only the first [instance] ever" (model.Reentry) - "one welcome series per
    customer, ever". With an empty ledger (first deployment, or the first series' earlier steps went
    stale) and two signups, the first signup's series must win: its 'discount' is sent and the second
    signup's 'thanks' is skipped. (Found by the model: the engine let the first *row* it met send, and
    rows came step by step, so the second series won. The due query of a campaign with a re-entry rule
    is now ordered by trigger time.)
    """
    shop = History(customers=[_customer(8)], events=[_signup(8, 8, datetime(2025, 1, 1, 8, 0)),
                                                     _signup(9, 8, datetime(2025, 1, 6, 8, 30))])
    now = datetime(2025, 1, 6, 9, 30, tzinfo=UTC)  # the first signup's discount was due at 10:00 Berlin (09:00 UTC)
    engine = {row[:5] for row in EnginePlanner(backend, tmp_path).plan(shop, now).get("welcome-series", set())}
    assert engine == {
        ("welcome-series", "thanks", "8", "2025-01-01", "skip:stale"),
        ("welcome-series", "introduce", "8", "2025-01-01", "skip:stale"),
        ("welcome-series", "discount", "8", "2025-01-01", "send"),
        ("welcome-series", "thanks", "8", "2025-01-06", "skip:reentry"),
    }


def _order(order_id: int, cid: int, at: datetime) -> dict:
    return {"order_id": order_id, "customer_id": cid, "created_at": at, "status": "completed", "total": 10,
            "payment_method": "card", "delivery_date": None}


def _view(event_id: int, cid: int, at: datetime) -> dict:
    return {"event_id": event_id, "customer_id": cid, "type": "product_viewed", "occurred_at": at}


WAIT_CAMPAIGN = """
name: wait-for-order
trigger: {registration: {}}
audience: email IS NOT NULL
stop: [unsubscribed]
steps:
  - {id: early, delay: 2h, wait_until: ordered, at_most: 3d, freshness: 1d, channel: email,
     template: registration/first-order.email.j2}
  - {id: viewed, delay: 0m, wait_until: product_viewed, at_most: 1d, freshness: 12h, channel: email,
     template: registration/first-order.email.j2}
"""


@pytest.mark.parametrize("backend", BACKENDS)
def test_an_early_firing_wait_at_both_ends_matches_the_model(backend, tmp_path):
    """wait_until (issue 18 point 6): customer 8 orders a day after registering and views a product after
    5 hours (the event comes before the timeout), customer 9 does neither (the timeout comes first), customer
    10 orders exactly when the 3 days run out (the timeout: an event at that instant is too late), customer
    11 views a product before registering (not after the trigger: the timeout)."""
    registered = datetime(2025, 1, 6, 12, 0)
    shop = History(customers=[_customer(c, created_at=registered) for c in (8, 9, 10, 11)],
                   orders=[_order(1, 8, registered + timedelta(days=1)), _order(2, 10, registered + timedelta(days=3))],
                   events=[_view(1, 8, registered + timedelta(hours=5)), _view(2, 11, registered - timedelta(hours=1))])
    planner = EnginePlanner(backend, tmp_path)
    (planner.project_root / "campaigns.d" / "wait-for-order.yaml").write_text(WAIT_CAMPAIGN)
    with _warehouse_env(planner._new_url()):
        planner.project = load_project(planner.project_root)
    spec = yaml.safe_load(WAIT_CAMPAIGN)
    for now, expected in [
        (registered + timedelta(hours=6), {("viewed", "8", "send", "2025-01-06 17:00:00")}),
        (registered + timedelta(days=1), {("early", "8", "send", "2025-01-07 12:00:00"),
                                          *{("viewed", c, "send", "2025-01-07 12:00:00") for c in ("9", "10", "11")}}),
        (registered + timedelta(days=3), {("early", "9", "send", "2025-01-09 12:00:00"),
                                          ("early", "10", "send", "2025-01-09 12:00:00"),
                                          ("early", "11", "send", "2025-01-09 12:00:00")}),
    ]:
        now = now.replace(tzinfo=UTC)
        engine = planner.plan(shop, now, ["wait-for-order"]).get("wait-for-order", set())
        model = reference_plan(spec, shop, now)
        assert engine == model, compare(spec, engine, model)
        assert {(r[1], r[2], r[4], r[6]) for r in model if r[4] == "send"} == expected
