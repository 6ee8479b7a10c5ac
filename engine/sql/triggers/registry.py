"""The trigger kinds, and which kind a trigger or a campaign file's key is.

The one list of kinds (in the order of schema/campaign.schema.json); every other module
dispatches through ``kind_of`` / ``kind_named`` instead of testing a trigger's class.
Adding a kind: its module here, a line in ``KINDS``, its entry in the schema, its tests.
"""
from __future__ import annotations

from engine.model import Trigger
from engine.sql.triggers import (
    anniversary, at_risk, checkout_abandoned, event, last_activity, order_date, order_placed, registration,
    segment_entry,
)
from engine.sql.triggers.base import TriggerKind

KINDS: tuple[TriggerKind, ...] = (
    order_placed.KIND,
    checkout_abandoned.KIND,
    registration.KIND,
    event.KIND,
    anniversary.KIND,
    order_date.KIND,
    last_activity.KIND,
    at_risk.KIND,
    segment_entry.KIND,
)

_BY_MODEL = {kind.model: kind for kind in KINDS}
_BY_NAME = {kind.name: kind for kind in KINDS}


def kind_of(trigger: Trigger) -> TriggerKind:
    """The kind of a trigger value (by its model class)."""
    return _BY_MODEL[type(trigger)]


def kind_named(name: str) -> TriggerKind:
    """The kind a campaign file names under ``trigger:`` (the schema admits only registered names)."""
    return _BY_NAME[name]


__all__ = ["KINDS", "TriggerKind", "kind_of", "kind_named"]
