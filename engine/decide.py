"""Per-message decisions the SQL leaves to Python: exact due times, variants, codes.

Pure functions, no I/O. The warehouse narrows the candidates with a
conservative time window; these functions then work on each candidate row:
local send times and quiet hours in the customer's time zone (DST included,
via zoneinfo), the yearly occurrence of a birthday (Feb 29 -> Feb 28 in common
years), the stable A/B bucket of a customer, and unguessable discount codes.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import functools
from datetime import date, datetime, time, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from engine.clock import UTC
from engine.model import QuietHours, Step, Variant


def customer_zone(name: object, default: str) -> ZoneInfo:
    """The customer's time zone, or the project's default when unknown or invalid (cached: a pass
    asks this for every due row, of a few distinct zones). ``validate --check-warehouse``
    reports the customers whose zone is not known (``known_zone``)."""
    return _zone(name if isinstance(name, str) else "", default)


def known_zone(name: str) -> bool:
    """Whether ``name`` is a time zone of the IANA database (``Europe/Berlin``; not ``Mars/Olympus``)."""
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return False
    return True


@functools.lru_cache(maxsize=1024)
def _zone(name: str, default: str) -> ZoneInfo:
    if name:
        try:
            return ZoneInfo(name)
        except (ZoneInfoNotFoundError, ValueError):
            pass
    return ZoneInfo(default)


def at_local_time(instant: datetime, clock: time, zone: ZoneInfo) -> datetime:
    """The first moment at or after ``instant`` when the local clock in ``zone`` shows ``clock``."""
    local = instant.astimezone(zone)
    candidate = datetime.combine(local.date(), clock, tzinfo=zone)
    if candidate < local:
        candidate = datetime.combine(local.date() + timedelta(days=1), clock, tzinfo=zone)
    return candidate.astimezone(UTC)


def due_time(trigger_at: datetime, step: Step, zone: ZoneInfo) -> datetime:
    base = trigger_at + step.delay
    return at_local_time(base, step.send_at, zone) if step.send_at is not None else base


def waited_due(trigger_at: datetime, step: Step, event_at: datetime | None) -> datetime:
    """The due time of a step with ``wait_until``: the awaited event (the first after the trigger), not
    before the step's delay; or the time running out (trigger + ``at_most``) when no event came before it.
    An event at the very instant the time runs out is the timeout (``wait_outcome`` reads it back so)."""
    deadline = trigger_at + step.wait.at_most
    if event_at is None or event_at >= deadline:
        return deadline
    return max(trigger_at + step.delay, event_at)


def wait_outcome(trigger_at: datetime, step: Step, due_at: datetime) -> dict:
    """What a template of a ``wait_until`` step is told (``wait``): outcome "event" when the awaited
    event came before the time ran out, else "timeout"; the event awaited and the deadline."""
    deadline = trigger_at + step.wait.at_most
    return {"outcome": "event" if due_at < deadline else "timeout", "event": step.wait.event, "deadline": deadline}


def yearly_occurrence(day: date, year: int) -> date:
    """``day``'s month and day in ``year``; Feb 29 becomes Feb 28 in common years."""
    try:
        return day.replace(year=year)
    except ValueError:
        return date(year, 2, 28)


def local_midnight(day: date, zone: ZoneInfo) -> datetime:
    """The instant (UTC) a calendar day begins for a customer in ``zone``: their local midnight.
    Date triggers (a birthday, a delivery date) are anchored there, not at midnight UTC, so a
    customer in Tokyo is greeted on their birthday and "3 days before" is 3 of their days."""
    return datetime.combine(day, time(0, 0), tzinfo=zone).astimezone(UTC)


def anniversary_instance(day: date, step: Step, now: datetime, zone: ZoneInfo) -> tuple[datetime, str] | None:
    """(trigger instant, key = the year) of the latest occurrence whose step is due by ``now``;
    the instant is the customer's local midnight of the day."""
    reference = (now - step.delay).year
    for year in (reference + 1, reference, reference - 1):
        occurrence = yearly_occurrence(day, year)
        trigger_at = local_midnight(occurrence, zone)
        if due_time(trigger_at, step, zone) <= now:
            return trigger_at, str(year)
    return None


def in_quiet_hours(now: datetime, quiet: QuietHours | None, zone: ZoneInfo) -> bool:
    if quiet is None:
        return False
    return quiet.contains(now.astimezone(zone).time())


def hash32(text: str) -> int:
    """The first 4 bytes of SHA-256 of ``text``'s UTF-8, big-endian: a stable hash (not Python's salted
    one) that every supported database computes the same (engine.dialects ``hash32_sql``)."""
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:4], "big")


def bucket_prefix(campaign: str) -> str:
    """What ``stable_bucket`` hashes before the customer id (the due query writes it so too)."""
    return f"{campaign}:"


def stable_bucket(campaign: str, customer_id: str) -> int:
    """0..99 from a hash of campaign and customer: the same customer always lands in the same bucket."""
    return hash32(bucket_prefix(campaign) + customer_id) % 100


def holdout_prefix(campaign: str) -> str:
    """What ``in_holdout`` hashes before the customer id."""
    return f"holdout:{campaign}:"


def holdout_cut(percent: float) -> int:
    """The customers whose holdout hash modulo 10,000 is below this are in a ``percent`` holdout."""
    return round(percent * 100)


def in_holdout(campaign: str, customer_id: str, percent: float) -> bool:
    """Whether the customer is in the campaign's holdout group (stable, and independent of the A/B bucket)."""
    if percent <= 0:
        return False
    return hash32(holdout_prefix(campaign) + customer_id) % 10000 < holdout_cut(percent)


def matching_variants(step: Step, matches: list[object], bucket: int) -> list[Variant]:
    """The variants whose audience matched and, for A/B variants, whose share holds ``bucket``,
    in file order: the first one the customer can receive is used (policies.choose_channels).

    Shares are laid out in variant order ([0, p1), [p1, p1 + p2), ...) whatever
    the audiences, so editing one variant's audience never moves another's customers.
    """
    start, found = 0, []
    for variant, match in zip(step.variants, matches):
        in_share = True
        if variant.percent is not None:
            in_share = start <= bucket < start + variant.percent
            start += variant.percent
        if match and in_share:
            found.append(variant)
    return found


_CODE_ALPHABET = str.maketrans({"0": "8", "1": "9", "O": "X", "I": "Y"})


def discount_code(secret: str, message_key: str, prefix: str, length: int) -> str:
    """A per-recipient code: an HMAC of the message key, so it is unique, stable across
    re-renders and unguessable without the secret."""
    digest = hmac.new(secret.encode(), message_key.encode(), hashlib.sha256).digest()
    body = base64.b32encode(digest).decode().rstrip("=").translate(_CODE_ALPHABET)
    return prefix + body[:length]
