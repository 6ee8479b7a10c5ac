"""The embedded demo shop: a deterministic history in the engine's canonical schema.

``generate_shop`` makes plain rows from a seed (same seed, same shop);
``load_shop`` writes any such rows into a database through SQLAlchemy, so the
tests load their hand-built histories the same way into DuckDB, SQLite or
PostgreSQL. The history ends at the anchor instant (the demo's ``--as-of``)
and is shaped so that every shipped campaign has someone due then.
"""
from __future__ import annotations

import base64
import random
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import Mapping

import sqlalchemy as sa

from engine.channel_kinds import KINDS, address_fields, contact_fields
from engine.clock import parse_instant
from engine.state.warehouse import Database

shop_metadata = sa.MetaData()

TABLES = {
    "customers": sa.Table(
        "customers", shop_metadata,
        sa.Column("customer_id", sa.Integer, primary_key=True, autoincrement=False),
        *(sa.Column(field, sa.String) for field in (*contact_fields(), *address_fields()) if field != "city"),
        sa.Column("first_name", sa.String), sa.Column("last_name", sa.String),
        sa.Column("created_at", sa.DateTime), sa.Column("city", sa.String),
        sa.Column("birthday", sa.Date), sa.Column("timezone", sa.String),
        sa.Column("customer_type", sa.String), sa.Column("is_wholesaler", sa.Boolean),
        sa.Column("affiliate_program", sa.String), sa.Column("customer_group", sa.String),
        sa.Column("unsubscribed_at", sa.DateTime),
    ),
    "orders": sa.Table(
        "orders", shop_metadata,
        sa.Column("order_id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("customer_id", sa.Integer, index=True),
        sa.Column("created_at", sa.DateTime), sa.Column("status", sa.String),
        sa.Column("total", sa.Numeric(12, 2)), sa.Column("payment_method", sa.String),
        sa.Column("delivery_date", sa.Date),
        sa.Column("shipping_country", sa.String),  # not generated: tests set it (trigger.shipping_country)
    ),
    "order_items": sa.Table(
        "order_items", shop_metadata,
        sa.Column("order_id", sa.Integer, index=True), sa.Column("product_id", sa.Integer),
        sa.Column("name", sa.String), sa.Column("quantity", sa.Integer),
        sa.Column("price", sa.Numeric(12, 2)), sa.Column("image_url", sa.String),
        sa.Column("category", sa.String),
    ),
    "checkouts": sa.Table(
        "checkouts", shop_metadata,
        sa.Column("checkout_id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("customer_id", sa.Integer, index=True),
        sa.Column("created_at", sa.DateTime), sa.Column("completed_at", sa.DateTime),
        sa.Column("total", sa.Numeric(12, 2)),
    ),
    "checkout_items": sa.Table(
        "checkout_items", shop_metadata,
        sa.Column("checkout_id", sa.Integer, index=True), sa.Column("product_id", sa.Integer),
        sa.Column("name", sa.String), sa.Column("quantity", sa.Integer),
        sa.Column("price", sa.Numeric(12, 2)), sa.Column("image_url", sa.String),
    ),
    # the catalogue (engine.sql.product_lists): what viewed products and recommendations show
    "products": sa.Table(
        "products", shop_metadata,
        sa.Column("product_id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("name", sa.String), sa.Column("url", sa.String), sa.Column("image", sa.String),
        sa.Column("price", sa.Numeric(12, 2)), sa.Column("category", sa.String), sa.Column("in_stock", sa.Boolean),
    ),
    # web push subscriptions (channel_kinds.push): several per customer, one per browser or device
    "push_subscriptions": sa.Table(
        "push_subscriptions", shop_metadata,
        sa.Column("customer_id", sa.Integer, index=True), sa.Column("endpoint", sa.String),
        sa.Column("p256dh", sa.String), sa.Column("auth", sa.String),
    ),
    # the shop's promotions (engine/sql/promotions.py): campaign / step NULL feed every campaign / step
    "promotions": sa.Table(
        "promotions", shop_metadata,
        sa.Column("promotion_id", sa.Integer, index=True),  # one row per campaign a promotion feeds
        sa.Column("title", sa.String), sa.Column("description", sa.String), sa.Column("image_url", sa.String),
        sa.Column("url", sa.String), sa.Column("valid_from", sa.DateTime), sa.Column("valid_to", sa.DateTime),
        sa.Column("campaign", sa.String), sa.Column("step", sa.String),
    ),
    "events": sa.Table(
        "events", shop_metadata,
        sa.Column("event_id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("customer_id", sa.Integer, index=True), sa.Column("type", sa.String),
        sa.Column("occurred_at", sa.DateTime), sa.Column("product_id", sa.Integer),
        sa.Column("product_name", sa.String), sa.Column("url", sa.String),
        sa.Column("image_url", sa.String), sa.Column("price", sa.Numeric(12, 2)),
        sa.Column("search_query", sa.String),
    ),
}

PRODUCTS = [
    (1, "Espresso beans 1 kg", 24.90), (2, "Pour-over kettle", 49.00), (3, "Ceramic dripper", 19.50),
    (4, "Paper filters (100)", 4.90), (5, "Hand grinder", 89.00), (6, "Milk frother", 34.00),
    (7, "Travel mug", 22.00), (8, "Decaf blend 500 g", 13.90), (9, "Cold brew jar", 29.00),
    (10, "Tasting set", 39.00),
]
CATEGORIES = {1: "coffee", 2: "equipment", 3: "equipment", 4: "accessories", 5: "equipment",
              6: "equipment", 7: "accessories", 8: "coffee", 9: "equipment", 10: "coffee"}
SEARCHES = ["decaf", "grinder", "gift", "cold brew", "espresso", "filter"]
TIMEZONES = ["Europe/Berlin", "Europe/Berlin", "Europe/Vienna", "Europe/London", "America/New_York", None]
FIRST_NAMES = ["Anna", "Ben", "Clara", "David", "Elif", "Farid", "Greta", "Hugo", "Ines", "Jonas", "Kim", "Lena", "Mia", "Noah"]
LAST_NAMES = ["Meyer", "Schmidt", "Rossi", "Nowak", "Yilmaz", "Dubois", "Jensen", "Garcia", "Kowalski", "Berg"]
CITIES = ["Berlin", "Hamburg", "Munich", "Cologne", "Vienna", "Zurich"]


@dataclass
class ShopData:
    rows: dict[str, list[dict]] = field(default_factory=lambda: {name: [] for name in TABLES})


def _items(rng: random.Random, key: str, key_value: int) -> tuple[list[dict], float]:
    items, total = [], 0.0
    for product_id, name, price in rng.sample(PRODUCTS, rng.randint(1, 3)):
        quantity = rng.randint(1, 2)
        total += price * quantity
        item = {key: key_value, "product_id": product_id, "name": name, "quantity": quantity,
                "price": price, "image_url": f"https://beanandbrew.example/img/{product_id}.jpg"}
        if key == "order_id":
            item["category"] = CATEGORIES[product_id]
        items.append(item)
    return items, round(total, 2)


def generate_shop(seed: int = 42, customers: int = 2000, anchor: str = "2025-01-10T00:00:00Z") -> ShopData:
    """A year of history ending at ``anchor``: most customers order once, a few often."""
    rng = random.Random(seed)
    end = parse_instant(anchor).replace(tzinfo=None)
    data = ShopData()
    order_id = checkout_id = 0
    for customer_id in range(1, customers + 1):
        registered = end - timedelta(days=rng.uniform(1, 400))
        first, last = rng.choice(FIRST_NAMES), rng.choice(LAST_NAMES)
        addresses = {kind.contact_field: kind.sample_address(rng, first, last, customer_id) for kind in KINDS.values()
                     if kind.address_column}
        data.rows["customers"].append({
            "customer_id": customer_id,
            **{field: address for field, address in addresses.items() if not isinstance(address, Mapping)},
            "first_name": first, "last_name": last, "created_at": registered.replace(microsecond=0),
            "city": rng.choice(CITIES),
            "birthday": date(rng.randint(1950, 2005), 1, 1) + timedelta(days=rng.randint(0, 365)) if rng.random() < 0.6 else None,
            "timezone": rng.choice(TIMEZONES),
            "customer_type": "company" if rng.random() < 0.1 else rng.choice(["female", "male"]),
            "is_wholesaler": rng.random() < 0.03,
            "affiliate_program": rng.choice([None, None, None, "vouchers", "cash"]),
            "customer_group": "gold" if rng.random() < 0.1 else "standard",
            "unsubscribed_at": (end - timedelta(days=rng.uniform(1, 300))).replace(microsecond=0) if rng.random() < 0.02 else None,
        })
        for address in addresses.values():
            if isinstance(address, Mapping):  # an address of several columns (a postal address, its city too)
                data.rows["customers"][-1].update(address)
        # skewed order counts: 0 (25%), 1 (45%), then a geometric tail
        draw = rng.random()
        count = 0 if draw < 0.25 else 1 if draw < 0.70 else 2 + int(rng.expovariate(0.5))
        when = registered
        for _ in range(count):
            when = when + timedelta(days=rng.expovariate(1 / 45), minutes=rng.randint(1, 600))
            if when >= end:
                break
            order_id += 1
            items, total = _items(rng, "order_id", order_id)
            data.rows["orders"].append({"order_id": order_id, "customer_id": customer_id,
                                        "created_at": when.replace(microsecond=0),
                                        "status": "completed" if rng.random() < 0.95 else "cancelled", "total": total,
                                        "payment_method": rng.choice(["card", "card", "paypal", "invoice"]),
                                        "delivery_date": (when + timedelta(days=rng.randint(2, 5))).date()})
            data.rows["order_items"] += items
        # checkouts in the last six hours: some completed, some abandoned
        if rng.random() < 0.05:
            started = end - timedelta(minutes=rng.randint(10, 6 * 60))
            checkout_id += 1
            items, total = _items(rng, "checkout_id", checkout_id)
            completed = started + timedelta(minutes=rng.randint(2, 30)) if rng.random() < 0.5 else None
            if completed is not None and completed > end:
                completed = None
            data.rows["checkouts"].append({"checkout_id": checkout_id, "customer_id": customer_id,
                                           "created_at": started.replace(microsecond=0),
                                           "completed_at": completed.replace(microsecond=0) if completed else None,
                                           "total": total})
            data.rows["checkout_items"] += items
        _events(rng, data, customer_id, registered, end)
    _push_subscriptions(random.Random(f"{seed}:push"), data)
    data.rows["promotions"] = _promotions(end)
    data.rows["products"] = catalogue()
    return data


def _promotions(end: datetime) -> list[dict]:
    """A few promotions around ``end``: one for every campaign, one for second-order, one for re-engage's
    first step, one that ended and one that has not begun (no random draws: the rest of the shop is unchanged)."""
    shop = "https://beanandbrew.example"

    def promotion(promotion_id: int, title: str, description: str, starts: int, ends: int, campaign: str | None = None,
                  step: str | None = None) -> dict:
        return {"promotion_id": promotion_id, "title": title, "description": description,
                "image_url": f"{shop}/img/promo-{promotion_id}.jpg", "url": f"{shop}/offers/{promotion_id}",
                "valid_from": end + timedelta(days=starts), "valid_to": end + timedelta(days=ends),
                "campaign": campaign, "step": step}

    return [
        promotion(1, "Winter blend week", "Our dark winter roast, 15 % off until the end of the month.", -9, 21),
        promotion(2, "A free tasting set with your second order", "Three single origins to find your favourite.",
                  -30, 20, campaign="second-order"),
        promotion(3, "Welcome back: free shipping this week", "On every order, no minimum.", -4, 3,
                  campaign="re-engage", step="miss-you"),
        promotion(4, "Christmas gift boxes", "Wrapped and ready to give.", -40, -9),
        promotion(5, "Valentine's pairing", "Two mugs and a blend to share.", 20, 35),
    ]


def catalogue() -> list[dict]:
    """The shop's products: those the history sells and two new ones nobody has bought yet (search
    abandonment finds them)."""
    def product(product_id: int, name: str, price: float, category: str) -> dict:
        return {"product_id": product_id, "name": name, "url": f"https://beanandbrew.example/p/{product_id}",
                "image": f"https://beanandbrew.example/img/{product_id}.jpg", "price": price,
                "category": category, "in_stock": True}

    rows = [product(product_id, name, price, CATEGORIES[product_id]) for product_id, name, price in PRODUCTS]
    return rows + [product(11, "Gift box", 35.00, "gifts"), product(12, "Cold brew filter bags", 7.50, "accessories")]


def _push_subscriptions(rng: random.Random, data: ShopData) -> None:
    """A quarter of the customers allowed web push, some on two devices: real P-256 keys (derived from
    ``rng``, so the shop stays deterministic) and endpoints of a made-up push service. A random
    generator of its own, so the rest of the shop is what it was before push existed."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    def b64(raw: bytes) -> str:
        return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()

    for customer in data.rows["customers"]:
        if rng.random() >= 0.25:
            continue
        for _ in range(1 if rng.random() < 0.8 else 2):
            public = ec.derive_private_key(rng.getrandbits(250) + 1, ec.SECP256R1()).public_key()
            point = public.public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)
            data.rows["push_subscriptions"].append({
                "customer_id": customer["customer_id"], "p256dh": b64(point), "auth": b64(rng.randbytes(16)),
                "endpoint": f"https://push.example.net/wpush/v2/{b64(rng.randbytes(24))}"})


def _events(rng: random.Random, data: ShopData, customer_id: int, registered: datetime, end: datetime) -> None:
    """Logins over the customer's life, and in the last days newsletter signups, product views and searches."""
    rows = data.rows["events"]

    def add(kind: str, when: datetime, **extra) -> None:
        rows.append({"event_id": len(rows) + 1, "customer_id": customer_id, "type": kind,
                     "occurred_at": when.replace(microsecond=0), **extra})

    for _ in range(rng.randint(0, 4)):
        when = registered + timedelta(days=rng.uniform(0, max(1.0, (end - registered).days)))
        if when < end:
            add("login", when)
    if rng.random() < 0.08:
        add("newsletter_signup", end - timedelta(days=rng.uniform(0, 8)))
    if rng.random() < 0.12:
        day = end - timedelta(days=rng.randint(0, 6), hours=rng.uniform(0, 20))
        for _ in range(rng.randint(1, 4)):
            product_id, name, price = rng.choice(PRODUCTS)
            add("product_viewed", day - timedelta(minutes=rng.randint(0, 90)), product_id=product_id, product_name=name,
                url=f"https://beanandbrew.example/p/{product_id}", image_url=f"https://beanandbrew.example/img/{product_id}.jpg",
                price=price)
    if rng.random() < 0.05:
        add("search", end - timedelta(days=1, hours=rng.uniform(0, 20)), search_query=rng.choice(SEARCHES))


def create_tables(db: Database, schema: str | None = None) -> None:
    metadata = sa.MetaData(schema=schema)
    for table in TABLES.values():
        table.to_metadata(metadata)
    metadata.drop_all(db.engine)
    metadata.create_all(db.engine)


def load_shop(db: Database, data: ShopData) -> None:
    """(Re)create the canonical shop tables in ``db`` and insert ``data``."""
    create_tables(db)
    with db.engine.begin() as conn:
        for name, table in TABLES.items():
            columns = [c.name for c in table.columns]
            rows = [{c: row.get(c) for c in columns} for row in data.rows.get(name) or []]
            for start in range(0, len(rows), 5000):
                conn.execute(table.insert(), rows[start:start + 5000])


def build_demo(target, seed: int, customers: int, anchor: str) -> dict[str, int]:
    """Generate the demo shop; return row counts.

    ``target`` is a file path (a fresh DuckDB file, or SQLite for .db/.sqlite,
    replacing any old one with its ledger) or a SQLAlchemy URL of an existing
    database, whose shop tables are recreated.
    """
    from pathlib import Path

    if "://" in str(target):
        url = str(target)
    else:
        path = Path(target)
        for suffix in ("", ".wal", "-wal", "-shm"):
            candidate = path.with_name(path.name + suffix)
            if candidate.exists():
                candidate.unlink()
        path.parent.mkdir(parents=True, exist_ok=True)
        backend = "sqlite" if path.suffix in (".db", ".sqlite", ".sqlite3") else "duckdb"
        url = f"{backend}:///{path}"
    db = Database(url)
    data = generate_shop(seed, customers, anchor)
    load_shop(db, data)
    db.dispose()
    return {name: len(rows) for name, rows in data.rows.items()}


def ensure_demo(config, echo=print) -> None:
    """Build the demo shop when the project says its warehouse is the demo and the file is missing."""
    from engine.spec.config import database_url
    from engine.state.warehouse import file_of

    if config.demo is None:
        return
    path = file_of(database_url(config, "warehouse"))
    if path is None or path.exists():
        return
    echo(f"Building the demo shop in {path} (seed {config.demo.seed}, {config.demo.customers} customers) ...")
    counts = build_demo(path, config.demo.seed, config.demo.customers, config.demo.anchor)
    echo("  " + ", ".join(f"{n} {name}" for name, n in counts.items()))
