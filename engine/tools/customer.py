"""``engine customer``: one customer's data and campaign participation (R-S2).

Attributes and orders come from the warehouse through the source mapping
(lookup.py); participation is every ledger row of the customer (campaign,
step, status, reason, channel, when, the coupon code claimed with it), with the message as stored when asked
(``dispatch.deserialize``, as ``engine show-message``) and the responses the ledger recorded for it (opened,
clicked, scanned, bounced, complained: ``Ledger.customer_events``; a click's URL with its secret parameters
masked, machine opens and scanner clicks flagged), plus the engine's tags and unsubscribes. Read-only.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal

from engine.sql.compile import render_sql
from engine.run.dispatch import deserialize
from engine.errors import EngineError
from engine.masking import mask_url
from engine.sql.lookup import customer_query, order_count_query, order_items_query, orders_query
from engine.run.reconcile import Reconciler

LATEST_ORDERS = 10


class UnknownCustomer(EngineError):
    """The customer id names no customer in the warehouse."""

#: a response's fields shown per message (``engine_events``), and the first human occurrence of which
#: types each message summarises as "<type>_at" (opened_at, clicked_at, ...)
RESPONSE_FIELDS = ("type", "occurred_at", "machine", "provider", "url", "detail")
RESPONSE_SUMMARY = {"open": "opened_at", "click": "clicked_at", "scan": "scanned_at", "bounce": "bounced_at",
                    "soft_bounce": "soft_bounced_at", "complaint": "complained_at", "delivered": "delivered_at"}

LEDGER_FIELDS = ("message_key", "campaign", "step", "trigger_key", "variant", "channel", "status", "reason",
                 "detail", "due_at", "created_at", "updated_at", "attempts")


def plain(value):
    """A JSON-ready value: instants and dates as ISO text, decimals as numbers."""
    if isinstance(value, datetime):
        return value.isoformat(sep=" ")
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    return value


@dataclass
class CustomerView:
    customer_id: str
    attributes: dict
    order_count: int | None
    orders: list[dict]  # each with "items"
    ledger: list[dict]  # each with "message" when asked
    tags: list[str]
    unsubscribed: list[str]

    def as_dict(self) -> dict:
        return {"customer_id": self.customer_id, "attributes": self.attributes, "order_count": self.order_count,
                "orders": self.orders, "ledger": self.ledger, "tags": self.tags, "unsubscribed": self.unsubscribed}


def find_customer(reconciler: Reconciler, customer_id: str) -> dict:
    """The customer's mapped attributes as the warehouse returns them, or ``UnknownCustomer``."""
    config = reconciler.config
    found = reconciler.warehouse.fetch_all(render_sql(customer_query(config, customer_id), config.dialect))
    if not found:
        raise UnknownCustomer(f"no customer with id '{customer_id}' in the warehouse "
                              "(source customers, column customer_id); check the id")
    if len(found) > 1:
        raise EngineError(f"{len(found)} customers have the id '{customer_id}'; customer_id must be unique")
    return dict(found[0]._mapping)


def customer_view(reconciler: Reconciler, customer_id: str, *, all_orders: bool = False,
                  messages: bool = False) -> CustomerView:
    config = reconciler.config
    warehouse = reconciler.warehouse
    attributes = {k: plain(v) for k, v in find_customer(reconciler, customer_id).items()}
    orders: list[dict] = []
    order_count = None
    if "orders" in config.sources:
        order_count = int(warehouse.fetch_all(render_sql(order_count_query(config, customer_id), config.dialect))[0][0])
        limit = None if all_orders else LATEST_ORDERS
        orders = [{k: plain(v) for k, v in row._mapping.items()}
                  for row in warehouse.fetch_all(render_sql(orders_query(config, customer_id, limit), config.dialect))]
        items: dict[str, list[dict]] = {}
        if orders and "order_items" in config.sources:
            ids = [str(o["order_id"]) for o in orders]
            for start in range(0, len(ids), 500):
                sql = render_sql(order_items_query(config, ids[start:start + 500]), config.dialect)
                for row in warehouse.fetch_all(sql):
                    item = {k: plain(v) for k, v in row._mapping.items()}
                    items.setdefault(str(item["order_id"]), []).append(item)
        for order in orders:
            order["items"] = items.get(str(order["order_id"]), [])
    return CustomerView(customer_id, attributes, order_count, orders, _ledger(reconciler, customer_id, messages),
                        reconciler.ledger.tags(customer_id), reconciler.ledger.unsubscribes_of(customer_id))


def _ledger(reconciler: Reconciler, customer_id: str, messages: bool) -> list[dict]:
    rows = []
    found = reconciler.ledger.customer_messages(customer_id, LEDGER_FIELDS + (("content",) if messages else ()))
    codes = reconciler.ledger.codes_of([row["message_key"] for row in found])  # the coupon claimed with each
    responses = _responses(reconciler, customer_id)
    for row in found:
        entry = {k: plain(row[k]) for k in LEDGER_FIELDS}
        entry["responses"] = responses.get(row["message_key"], [])
        for kind, field in RESPONSE_SUMMARY.items():
            entry[field] = next((r["occurred_at"] for r in entry["responses"] if r["type"] == kind and not r["machine"]), None)
        pool, code = codes.get(row["message_key"], (None, None))
        entry["discount_code"], entry["coupon_pool"] = code, pool or None
        if messages:
            entry["message"] = _message(row["message_key"], row["content"])
        rows.append(entry)
    return rows


def _responses(reconciler: Reconciler, customer_id: str) -> dict[str, list[dict]]:
    """The customer's response events by message key, oldest first; a click's URL masked (secret parameters)."""
    found: dict[str, list[dict]] = {}
    for event in reconciler.ledger.customer_events(customer_id):
        shown = {k: plain(event.get(k)) for k in RESPONSE_FIELDS}
        shown["machine"] = bool(shown["machine"])
        if shown["url"]:
            shown["url"] = mask_url(shown["url"])
        found.setdefault(event["message_key"], []).append(shown)
    return found


def _response_line(response: dict) -> str:
    words = {"open": "opened", "click": "clicked", "scan": "scanned", "bounce": "bounced", "soft_bounce": "soft-bounced",
             "complaint": "complained", "delivered": "delivered", "undelivered": "undelivered"}
    line = f"      {words.get(response['type'], response['type'])} at {response['occurred_at']}"
    if response["machine"]:
        line += " (machine: not engagement)"
    if response["url"]:
        line += f"  {response['url']}"
    if response["detail"]:
        line += f"  ({response['detail']})"
    return line


def _message(key: str, content: str | None) -> dict | None:
    if not content:
        return None
    m = deserialize(key, content)
    return {"kind": m.kind, "to": m.to, "from": m.sender, "subject": m.subject, "text": m.text, "html": m.html}


def format_text(view: CustomerView) -> str:
    lines = [f"Customer {view.customer_id}"]
    width = max((len(k) for k in view.attributes), default=0)
    lines += [f"  {k:<{width}}  {'' if v is None else v}" for k, v in view.attributes.items()]
    lines.append(f"  tags: {', '.join(view.tags) or '-'}; unsubscribed: {', '.join(view.unsubscribed) or '-'}")
    if view.order_count is not None:
        shown = "" if len(view.orders) == view.order_count else f", latest {len(view.orders)} shown (--all for all)"
        lines += ["", f"Orders: {view.order_count}{shown}"]
        for o in view.orders:
            lines.append(f"  {o['order_id']}  {o['created_at']}  {o.get('status') or '-'}  total {o.get('total')}")
            for i in o["items"]:
                lines.append(f"      {i.get('quantity') or 1} x {i.get('name') or i.get('product_id')}"
                             + (f"  {i['price']}" if i.get("price") is not None else ""))
    lines += ["", f"Campaign participation (ledger): {len(view.ledger)} message(s)"]
    for r in view.ledger:
        outcome = r["status"] + (f" ({r['reason']})" if r["reason"] else "")
        lines.append(f"  {r['created_at']}  {r['campaign']}/{r['step']}  {r['channel'] or '-'}  {outcome}"
                     f"  trigger {r['trigger_key']}  [{r['message_key']}]")
        lines += [_response_line(response) for response in r["responses"]]
        if r.get("discount_code"):
            lines.append(f"      code: {r['discount_code']}" + (f" (pool {r['coupon_pool']})" if r["coupon_pool"] else " (generated)"))
        message = r.get("message")
        if message:
            lines.append(f"      To: {message['to']}  From: {message['from']}")
            if message.get("subject"):
                lines.append(f"      Subject: {message['subject']}")
            for text_line in (message.get("text") or "").splitlines():
                lines.append(f"      | {text_line}")
        elif "message" in r:
            lines.append("      (nothing was rendered for this message)")
    return "\n".join(lines)
