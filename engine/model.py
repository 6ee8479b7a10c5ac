"""The validated model: frozen dataclasses, no I/O, no third-party imports.

Everything downstream (compiler, reconciler, CLI) works from these values,
never from raw YAML. ``validate.py`` is the only producer.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Mapping

# --- the engine's entities and their canonical columns ----------------------

#: For each entity: (required columns, optional columns). Required columns default
#: to a column of the same name; optional ones exist only when mapped.
ENTITY_COLUMNS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "customers": (
        ("customer_id",),
        ("email", "phone", "first_name", "last_name", "created_at", "locale", "timezone"),
    ),
    "orders": (("order_id", "customer_id", "created_at"), ("status", "total", "currency")),
    "order_items": (("order_id",), ("product_id", "name", "quantity", "price", "image_url", "url", "category")),
    "checkouts": (("checkout_id", "customer_id", "created_at"), ("completed_at", "total", "currency", "url")),
    "checkout_items": (("checkout_id",), ("product_id", "name", "quantity", "price", "image_url", "url")),
    "events": (("customer_id", "type", "occurred_at"), ("event_id", "properties")),
}

#: Per-customer facts the engine derives from orders (usable in filters).
CUSTOMER_FACTS: dict[str, str] = {
    "order_count": "number of orders placed up to now",
    "first_order_at": "time of the customer's first order",
    "last_order_at": "time of the customer's most recent order",
    "total_spent": "sum of the totals of the customer's orders",
}


@dataclass(frozen=True)
class EntitySource:
    """Where one engine entity lives in the warehouse and which column is which."""

    entity: str
    table: str | None = None
    query: str | None = None
    #: canonical column (or extra customer attribute) -> SQL expression in the warehouse
    columns: Mapping[str, str] = field(default_factory=dict)

    def has_column(self, name: str) -> bool:
        return name in self.columns


@dataclass(frozen=True)
class ChannelConfig:
    """A configured channel: what it carries (kind) and how (transport)."""

    name: str
    kind: str  # "email" | "sms"
    transport: str  # "smtp" | "http" | "file"
    settings: Mapping[str, object] = field(default_factory=dict)


@dataclass(frozen=True)
class DemoConfig:
    """Marks the warehouse as the embedded demo shop, generated when missing."""

    seed: int = 42
    customers: int = 2000
    anchor: str = "2025-01-10T00:00:00Z"


@dataclass(frozen=True)
class ProjectConfig:
    root: Path
    warehouse_url: str
    ledger_url: str | None
    sources: Mapping[str, EntitySource]
    channels: Mapping[str, ChannelConfig]
    stale_horizon: timedelta = timedelta(days=7)
    demo: DemoConfig | None = None
    file: str = "engine.yaml"
    dialect: str = "duckdb"

    @property
    def ledger_shares_warehouse(self) -> bool:
        return self.ledger_url in (None, self.warehouse_url)

    def customer_attributes(self) -> tuple[str, ...]:
        """Customer columns usable in filters and templates, canonical or extra."""
        customers = self.sources.get("customers")
        return tuple(customers.columns) if customers else ()


# --- campaigns ----------------------------------------------------------------


@dataclass(frozen=True)
class OrderPlaced:
    """The customer's k-th order (or every order when ``nth`` is None)."""

    nth: int | None = None
    statuses: tuple[str, ...] = ()
    kind: str = "order_placed"


@dataclass(frozen=True)
class CheckoutAbandoned:
    """A checkout was started and is still not completed when the step is due."""

    kind: str = "checkout_abandoned"


@dataclass(frozen=True)
class AtRisk:
    """Segment entry: among customers who ordered within ``window``, the
    ``percent`` % whose last order is the oldest."""

    window: timedelta = timedelta(days=180)
    percent: int = 60
    kind: str = "at_risk"


Trigger = OrderPlaced | CheckoutAbandoned | AtRisk

#: Trigger kind -> entities it needs from the warehouse.
TRIGGER_ENTITIES = {
    "order_placed": ("orders",),
    "checkout_abandoned": ("checkouts",),
    "at_risk": ("orders",),
}

#: Stop condition -> entities it needs.
STOP_CONDITIONS = {
    "ordered_again": ("orders",),
}


@dataclass(frozen=True)
class Step:
    id: str
    delay: timedelta
    channel: str
    template: str
    freshness: timedelta | None = None
    audience: str | None = None


@dataclass(frozen=True)
class Campaign:
    name: str
    trigger: Trigger
    steps: tuple[Step, ...]
    description: str = ""
    audience: str | None = None
    stop: tuple[str, ...] = ()
    enabled: bool = True
    file: str = ""

    def step(self, step_id: str) -> Step:
        for step in self.steps:
            if step.id == step_id:
                return step
        raise KeyError(step_id)


@dataclass(frozen=True)
class Project:
    config: ProjectConfig
    campaigns: tuple[Campaign, ...]
    templates_dir: Path

    def campaign(self, name: str) -> Campaign:
        for campaign in self.campaigns:
            if campaign.name == name:
                return campaign
        known = ", ".join(c.name for c in self.campaigns) or "none"
        raise KeyError(f"no campaign named '{name}' (known: {known})")
