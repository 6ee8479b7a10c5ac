"""The validated model: frozen dataclasses, no I/O, no third-party imports.

Everything downstream (compiler, reconciler, CLI) works from these values,
never from raw YAML. ``validate.py`` is the only producer. Imports only the
channel kinds' declarations (pure data).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import time, timedelta
from pathlib import Path
from typing import Mapping

from engine.channel_kinds import address_fields, consent_columns, contact_entities, contact_fields

# --- the engine's entities and their canonical columns ----------------------

#: the shop's optional boolean customer column: false (or NULL) means no open/click tracking for the customer
TRACKING_CONSENT = "tracking_consent"

#: For each entity: (required columns, optional columns). Required columns default
#: to a column of the same name; optional ones exist only when mapped. The customers'
#: address and consent columns are those the channel kinds declare (engine.channel_kinds).
#: The column telling when a row last changed (its ingestion or update time): mapped, the engine keeps the
#: source's per-customer facts incrementally (engine.run.incremental); never projected unless mapped.
CHANGE_COLUMN = "updated_at"

ENTITY_COLUMNS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "customers": (
        ("customer_id",),
        (*contact_fields(), *address_fields(), "first_name", "last_name", "created_at", "locale", "timezone",
         "birthday", "unsubscribed_at", *consent_columns(), TRACKING_CONSENT),
    ),
    "orders": (
        ("order_id", "customer_id", "created_at"),
        ("status", "total", "currency", "payment_method", "delivery_date", "shipping_country", CHANGE_COLUMN),
    ),
    "order_items": (("order_id",), ("product_id", "name", "quantity", "price", "image_url", "url", "category")),
    "checkouts": (("checkout_id", "customer_id", "created_at"), ("completed_at", "total", "currency", "url")),
    "checkout_items": (("checkout_id",), ("product_id", "name", "quantity", "price", "image_url", "url")),
    "events": (
        ("customer_id", "type", "occurred_at"),
        ("event_id", "product_id", "product_name", "url", "image_url", "price", "search_query", CHANGE_COLUMN),
    ),
    # the shop's current promotions (engine/sql/promotions.py): campaign / step NULL feed every campaign / step
    "promotions": (("promotion_id", "title"), ("description", "image_url", "url", "valid_from", "valid_to", "campaign", "step")),
    # the shop's catalogue: what product lists in templates show (engine.sql.product_lists)
    "products": (("product_id", "name", "url", "image", "price", "category"), ("in_stock",)),
    # contacts kept apart from the customers, several per customer (push subscriptions): their kinds declare them
    **{name: (entity.columns, ()) for name, entity in contact_entities().items()},
}

#: Per-customer facts the engine derives from orders (usable in filters).
CUSTOMER_FACTS: dict[str, str] = {
    "order_count": "number of orders placed up to now",
    "first_order_at": "time of the customer's first order",
    "last_order_at": "time of the customer's most recent order",
    "total_spent": "sum of the totals of the customer's orders",
    "last_payment_method": "payment method of the customer's most recent order (needs orders.payment_method)",
}

#: Attributes that describe what happened since the trigger (usable in any filter).
SINCE_TRIGGER_FACTS: dict[str, tuple[str, str]] = {
    "ordered_since_trigger": ("orders", "the customer placed an order after the trigger"),
    "came_back_since_trigger": ("events", "the customer had any event (visit, login, view) after the trigger"),
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
    kind: str  # a channel kind (engine.channel_kinds)
    transport: str  # "smtp" | "http" | "file"
    settings: Mapping[str, object] = field(default_factory=dict)


@dataclass(frozen=True)
class FrequencyCap:
    """At most ``max`` messages per customer within ``per`` (on ``channel``, or across all)."""

    max: int
    per: timedelta
    channel: str | None = None


@dataclass(frozen=True)
class RetryPolicy:
    """Transient failures are retried with exponential backoff (and jitter) up to ``max_attempts``."""

    max_attempts: int = 4
    backoff: timedelta = timedelta(minutes=1)
    max_backoff: timedelta = timedelta(hours=1)


@dataclass(frozen=True)
class TrackingPolicy:
    """``policies.tracking`` of engine.yaml: opens, clicks and scans (engine.tracking, the service's /open, /click)."""

    #: true: HTML emails get the open pixel and the click redirect, letters a scan token; off unless
    #: engine.yaml turns it on (consent: in the EU a tracking pixel needs it; a pixel is an image to spam filters)
    enabled: bool = False
    #: base of /open and /click; default: the unsubscribe link's service
    url: str = "https://shop.example"
    #: a tracking token (pixel, link, printed link) older than this is refused (410)
    token_ttl: timedelta = timedelta(days=400)
    #: an open or click this soon after sending is a machine's (recorded with machine = true)
    machine_seconds: int = 10


@dataclass(frozen=True)
class StepTracking:
    """``tracking:`` of a campaign or step: ``false`` (``enabled``: False) or its UTM parameters."""

    enabled: bool = True
    utm: Mapping[str, str] = field(default_factory=dict)


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
    #: time zone for customers without one (send times, quiet hours)
    default_timezone: str = "UTC"
    #: channel name -> default quiet hours for steps on that channel
    quiet_hours: Mapping[str, "QuietHours"] = field(default_factory=dict)
    #: secret that signs unsubscribe links and makes discount codes unguessable (resolved when used;
    #: code_secret.py says what a usable one is)
    code_secret: str = "${ENGINE_CODE_SECRET}"
    #: comma-separated earlier secrets: unsubscribe links signed with them still verify (key rotation)
    previous_code_secrets: str = "${ENGINE_CODE_SECRETS_PREVIOUS:-}"
    #: engine.yaml has ``demo:`` (true or the demo shop's section): the demo's public secret is allowed
    is_demo: bool = False
    frequency_caps: tuple["FrequencyCap", ...] = ()
    retry: "RetryPolicy" = field(default_factory=lambda: RetryPolicy())
    #: a claim older than this without an outcome means its process died
    claim_timeout: timedelta = timedelta(minutes=10)
    #: response events (opens, clicks, bounces, ...) older than this are deleted by the service
    #: (``policies.responses.retention``)
    response_retention: timedelta = timedelta(days=400)
    #: base of the signed one-click unsubscribe link (RFC 8058) in every marketing email; outside the demo
    #: engine.yaml must name it (spec.unsafe_defaults), the demo falls back to an example domain
    unsubscribe_url: str = "https://shop.example/unsubscribe"
    #: the shop as its messages' layout shows it: name, postal address, legal footer, website (``shop:``)
    shop: Mapping[str, str] = field(default_factory=dict)
    #: base of the signed per-message link a printed message carries (a letter's QR code; the service's /scan);
    #: default: the unsubscribe link's service, path /scan
    scan_url: str = "https://shop.example/scan"
    #: where the service sends whoever follows a valid printed link; default: the shop's website (shop.url)
    scan_landing_url: str = "https://shop.example/"
    #: open and click tracking (``policies.tracking``)
    tracking: TrackingPolicy = field(default_factory=lambda: TrackingPolicy())
    #: pools of the shop's own coupon codes, by name (``coupons:``)
    coupon_pools: Mapping[str, "CouponPool"] = field(default_factory=dict)
    #: named customer segments for ``engine export``: name -> filter expression
    segments: Mapping[str, str] = field(default_factory=dict)
    #: DuckDB settings (memory_limit, threads, temp_directory) for the warehouse connection; empty keeps DuckDB's defaults
    duckdb_settings: Mapping[str, str | int] = field(default_factory=dict)
    #: seconds one warehouse read may run before the engine stops it (``warehouse.statement_timeout``); None: no limit
    statement_timeout: float | None = None
    #: ISO 4217 code of the shop's currency (orders' totals): how ``engine report`` shows revenue
    currency: str = "EUR"
    #: provider event webhooks (``responses:``): provider -> its settings as written (secrets as ``${VAR}``);
    #: read, resolved and checked by engine.service.webhooks
    responses: Mapping[str, Mapping] = field(default_factory=dict)

    @property
    def ledger_shares_warehouse(self) -> bool:
        return self.ledger_url in (None, self.warehouse_url)

    def customer_attributes(self) -> tuple[str, ...]:
        """Customer columns usable in filters and templates, canonical or extra."""
        customers = self.sources.get("customers")
        return tuple(customers.columns) if customers else ()


# --- campaigns ----------------------------------------------------------------


class Trigger:
    """What makes a customer enter a campaign. Each kind is a frozen dataclass subclassing this,
    defined with everything else the engine knows about the kind (how it is read and checked,
    the SQL of its instances, its explain text, backtest support) in its own module of
    engine/sql/triggers/; its ``kind`` field is the key under ``trigger:`` in a campaign file."""

    kind: str


#: Stop condition -> entities it needs.
STOP_CONDITIONS = {
    "ordered_again": ("orders",),
    "came_back": ("events",),
    "unsubscribed": ("customers",),
    "left_segment": ("customers",),  # a segment_entry trigger's segment no longer matches the customer
}


@dataclass(frozen=True)
class QuietHours:
    """Local clock times between which nothing is sent (may wrap midnight)."""

    start: time
    end: time

    def contains(self, moment: time) -> bool:
        if self.start <= self.end:
            return self.start <= moment < self.end
        return moment >= self.start or moment < self.end


@dataclass(frozen=True)
class DiscountCode:
    """A step's code per recipient: generated (``prefix`` + HMAC of the message key) or, with ``pool``,
    the next unused code of a pool of the shop's own codes (``coupons:`` in engine.yaml)."""

    prefix: str = ""
    length: int = 8
    pool: str | None = None


@dataclass(frozen=True)
class CouponPool:
    """Codes the shop's platform knows, handed out at most once each (``coupons.<name>`` in engine.yaml):
    read from a warehouse ``table`` (its ``column``) at every pass, or imported with ``engine codes import``
    when there is no table. At ``low_at`` codes left or fewer, plan warns and a metric says so."""

    name: str
    table: str | None = None
    column: str = "code"
    low_at: int = 100


@dataclass(frozen=True)
class Action:
    """Done when a message is sent: set or remove a customer tag."""

    kind: str  # "set_tag" | "remove_tag"
    tag: str


@dataclass(frozen=True)
class Variant:
    """One message of a step, for its own audience; the first matching variant wins."""

    id: str
    channel: str
    template: str
    audience: str | None = None
    #: share of customers (by a stable hash) this variant takes, for A/B tests
    percent: int | None = None


@dataclass(frozen=True)
class DeliveryOptions:
    """How a provider that queues messages treats a step's (web push, RFC 8030): how long it keeps one for
    an offline device, how urgent it is, and the topic under which a newer message replaces an older one."""

    ttl: timedelta | None = None
    urgency: str | None = None  # very-low | low | normal | high
    topic: str | None = None

    def headers(self) -> dict[str, str]:
        """The options as the RFC 8030 request headers (TTL, Urgency, Topic) a message carries."""
        headers = {}
        if self.ttl is not None:
            headers["TTL"] = str(int(self.ttl.total_seconds()))
        if self.urgency is not None:
            headers["Urgency"] = self.urgency
        if self.topic is not None:
            headers["Topic"] = self.topic
        return headers


#: What a step's ``wait_until`` may await besides an event type: name -> the entity it reads.
WAIT_EVENTS = {"ordered": "orders", "came_back": "events"}


@dataclass(frozen=True)
class WaitUntil:
    """An early-firing wait: the step goes at the first ``event`` after the trigger (``ordered``: an order;
    ``came_back``: any event; else an event of that type), not before its delay, or ``at_most`` after the
    trigger when none came before; the template is told which (``wait.outcome``: "event" | "timeout")."""

    event: str
    at_most: timedelta

    @property
    def entity(self) -> str:
        return WAIT_EVENTS.get(self.event, "events")


@dataclass(frozen=True)
class Step:
    id: str
    delay: timedelta
    variants: tuple[Variant, ...]
    freshness: timedelta | None = None
    audience: str | None = None
    send_at: time | None = None
    quiet_hours: QuietHours | None = None
    discount_code: DiscountCode | None = None
    actions: tuple[Action, ...] = ()
    #: for kinds whose provider queues messages (``ChannelKind.delivery_options``): TTL, urgency, topic
    delivery: DeliveryOptions | None = None
    #: ``wait_until`` + ``at_most``: sent when the awaited event happens or the time runs out, whichever first
    wait: WaitUntil | None = None
    #: ``tracking:`` of the step (None: the campaign's)
    tracking: StepTracking | None = None

    @property
    def channels(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(v.channel for v in self.variants))

    def variant(self, variant_id: str) -> Variant:
        for variant in self.variants:
            if variant.id == variant_id:
                return variant
        raise KeyError(variant_id)


@dataclass(frozen=True)
class Reentry:
    """per_trigger: every trigger instance may enter; once: only the first ever;
    cooldown: again only after ``cooldown`` since the last instance that was sent."""

    mode: str = "per_trigger"
    cooldown: timedelta | None = None


@dataclass(frozen=True)
class Campaign:
    name: str
    trigger: Trigger
    steps: tuple[Step, ...]
    description: str = ""
    audience: str | None = None
    stop: tuple[str, ...] = ()
    enabled: bool = True
    reentry: Reentry = Reentry()
    #: when a customer is due for several campaigns and a frequency cap allows fewer, higher wins
    priority: int = 0
    #: an order within this time after a message is a conversion (stats, backtest)
    conversion_window: timedelta = timedelta(days=7)
    #: percent of entrants (stable hash) who get nothing, recorded as skipped:holdout
    holdout: float = 0.0
    #: skip (recently_contacted) when anything was sent to the customer within this time
    not_contacted_within: timedelta | None = None
    #: "order": a step's variants in file order; "by_response": per customer, the channel kinds ranked by
    #: how their past messages led to orders and unsubscribes (engine.run.responses), file order breaking ties
    channel_choice: str = "order"
    file: str = ""
    #: ``tracking:`` of the campaign: ``false`` turns open and click tracking off, ``utm`` adds UTM parameters
    tracking: StepTracking = field(default_factory=lambda: StepTracking())

    def tracking_of(self, step_id: str) -> StepTracking:
        """The step's ``tracking:``, else the campaign's."""
        return self.step(step_id).tracking or self.tracking

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
