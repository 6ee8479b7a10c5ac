"""`engine init --from-warehouse`: a source mapping proposed from the warehouse's own tables.

Reads the table and view names with SQLAlchemy's inspector and each chosen
table's columns from a query that returns no rows, then for each engine entity picks the table whose name is the
entity's or a usual synonym (``customer``, ``kunden``, ``carts``,
``line_items``, ...; else the closest name by difflib), and for each of the
entity's columns (engine.model.ENTITY_COLUMNS) the warehouse column of the
same name, of a usual synonym (``email_address``, ``vorname``, ``id`` of the
entity's own table, ...), or - a near miss such as ``emial`` - the closest
name, marked as a did-you-mean to check. A required column with no candidate
is left out and reported, so engine.yaml shows it as a TODO. Pure proposal:
writes nothing, decides nothing for the user beyond the names.
"""
from __future__ import annotations

import difflib
from dataclasses import dataclass, field

import sqlalchemy as sa

from engine import channel_kinds
from engine.model import ENTITY_COLUMNS
from engine.state.warehouse import Database

#: entity -> table names that usually hold it, best first
TABLE_NAMES: dict[str, tuple[str, ...]] = {
    "customers": ("customers", "customer", "kunden", "kunde", "clients", "client", "users", "members", "accounts"),
    "orders": ("orders", "order", "bestellungen", "bestellung", "purchases", "sales_orders"),
    "order_items": ("order_items", "order_item", "order_lines", "order_line", "line_items", "order_positions",
                    "bestellpositionen"),
    "checkouts": ("checkouts", "checkout", "carts", "cart", "baskets", "basket", "warenkoerbe"),
    "checkout_items": ("checkout_items", "checkout_item", "cart_items", "cart_item", "cart_lines", "basket_items"),
    "events": ("events", "event", "tracking_events", "activities", "activity"),
    # a channel kind's contacts kept apart from the customers (web push subscriptions)
    **{entity: (entity,) for entity in channel_kinds.contact_entities()},
}
#: engine column -> warehouse column names that usually mean it (the name itself is tried first)
COLUMN_NAMES: dict[str, tuple[str, ...]] = {
    "customer_id": ("customerid", "customer_no", "customer_number", "kunden_nr", "kundennr", "client_id", "user_id"),
    "order_id": ("orderid", "order_no", "order_number", "bestell_nr", "bestellnr"),
    "checkout_id": ("checkoutid", "cart_id", "basket_id"),
    "first_name": ("firstname", "given_name", "vorname"),
    "last_name": ("lastname", "surname", "family_name", "nachname"),
    "created_at": ("created", "createdat", "created_on", "creation_date", "inserted_at", "registered_at",
                   "ordered_at", "order_date", "placed_at", "started_at", "angelegt_am", "bestellt_am"),
    "occurred_at": ("timestamp", "event_time", "happened_at", "created_at", "ts"),
    "type": ("event_type", "event_name", "kind"),
    "total": ("total_amount", "amount", "grand_total", "order_total", "summe", "betrag"),
    "timezone": ("time_zone", "tz"),
    "birthday": ("birth_date", "date_of_birth", "dob", "geburtstag"),
    "completed_at": ("converted_at", "ordered_at", "finished_at"),
    "quantity": ("qty", "menge", "anzahl"),
    "price": ("unit_price", "preis"),
    "name": ("product_name", "title", "bezeichnung"),
    "product_id": ("sku", "article_id", "artikel_nr", "item_id"),
    "image_url": ("image", "img_url", "picture_url"),
    "url": ("link", "product_url", "page_url"),
    "locale": ("language", "lang", "sprache"),
    # the customers' address columns: each channel kind names their usual names
    **{kind.address_column: kind.contact_column_names for kind in channel_kinds.KINDS.values() if kind.address_column},
}
#: a warehouse name at least this similar to a wanted one (difflib ratio) is offered as a did-you-mean
NEAR = 0.75


@dataclass(frozen=True)
class Column:
    engine: str
    warehouse: str
    #: "same" (same name), "synonym" (a usual name for it) or "near" (closest name: a did-you-mean to check)
    how: str


@dataclass
class EntityProposal:
    entity: str
    #: the table (or view) chosen, None when none looks like it
    table: str | None = None
    #: "same", "synonym" or "near", as for columns
    how: str = "same"
    columns: list[Column] = field(default_factory=list)
    #: required engine columns with no candidate column (TODOs)
    missing: list[str] = field(default_factory=list)
    #: the table's columns nobody took (for customers: attributes one may map)
    unused: list[str] = field(default_factory=list)


def _pick(wanted: str, synonyms: tuple[str, ...], available: dict[str, str]) -> tuple[str, str] | None:
    """(actual name, how) of the best candidate for ``wanted`` among ``available`` (lower-case -> actual)."""
    if wanted in available:
        return available[wanted], "same"
    for synonym in synonyms:
        if synonym in available:
            return available[synonym], "synonym"
    close = difflib.get_close_matches(wanted, list(available), n=1, cutoff=NEAR)
    if close:
        return available[close[0]], "near"
    return None


def propose(url: str) -> tuple[list[EntityProposal], list[str]]:
    """The proposal for every entity, and the tables the warehouse has (``WarehouseError`` when unreachable)."""
    db = Database(url, must_exist=True)
    try:
        db.check()
        inspector = sa.inspect(db.engine)
        names = sorted(inspector.get_table_names() + inspector.get_view_names())
        tables = {name.lower(): name for name in names if not name.lower().startswith("engine_")}
        proposals = []
        taken: set[str] = set()
        for entity in ENTITY_COLUMNS:
            free = {k: v for k, v in tables.items() if k not in taken}
            found = _pick(entity, TABLE_NAMES.get(entity, (entity,))[1:], free)
            if found is None:
                proposals.append(EntityProposal(entity))
                continue
            taken.add(found[0].lower())
            with db.engine.connect() as conn:  # the result's columns: every driver tells them (not every inspector)
                columns = list(conn.execute(sa.select(sa.literal_column("*")).select_from(sa.table(found[0]))
                                            .where(sa.false())).keys())
            proposals.append(_columns(EntityProposal(entity, found[0], found[1]), columns))
        return proposals, names
    finally:
        db.dispose()


def _columns(proposal: EntityProposal, columns: list[str]) -> EntityProposal:
    available = {name.lower(): name for name in columns}
    required, optional = ENTITY_COLUMNS[proposal.entity]
    own_id = {"customers": "customer_id", "orders": "order_id", "checkouts": "checkout_id"}.get(proposal.entity)
    for wanted in required + optional:
        synonyms = COLUMN_NAMES.get(wanted, ()) + (("id",) if wanted == own_id else ())
        found = _pick(wanted, synonyms, available)
        if found is None:
            if wanted in required:
                proposal.missing.append(wanted)
            continue
        del available[found[0].lower()]
        proposal.columns.append(Column(wanted, found[0], found[1]))
    proposal.unused = sorted(available.values())
    return proposal
