"""One shared fixture history for the cross-engine proofs (test_cross_engine, test_spark).

A smaller deterministic demo shop (``engine.tools.demo.generate_shop``) plus hand-made
edge rows, all in naive UTC, and the instants at which every campaign is asked
what is due. Each engine gets exactly these rows; any difference in the due
sets is then the engine's (or the compiler's), never the data's.

The edge rows, by customer id:

- 90001, 90002: no orders at all; 90001 abandoned a checkout (the customer
  facts join finds nothing), 90002 has neither email nor phone.
- 90003: two orders at the same instant (a tie for "first order"; the
  tie-break is the order id, and the tied order is the second order: "ordered
  again" compares order identity, not time).
- 90004: a first order exactly at the freshness edge at the anchor (stale: the
  window is [due, due + freshness)), 90009 one a second older (stale too),
  90010 one exactly at the anchor (due exactly at +7d); 90004's and 90010's
  totals are NULL.
- 90005: an order with milliseconds (SQLite keeps them as text).
- 99998 .. 100001: four customers whose last orders tie at the 60 % edge of
  the at-risk segment at the anchor, so the tie-break by customer id decides
  who is in; the ids change length so text ordering would differ from numeric.
- 90011: an at-risk member whose last two orders share an instant (ids 10000110 and 9900110: the key
  is the greater id, by number - by text it would be the other) and whose order a day earlier has a
  greater id still (the key is of the last instant, not the greatest id).
- 90006: a checkout completed exactly at the anchor (not abandoned then), 90007
  one started exactly an hour before it (due exactly then), 90008 one with a
  NULL total and no email; an order of customer 90999, who does not exist.
"""
from __future__ import annotations

from datetime import datetime, timedelta, timezone

from engine.tools.demo import ShopData, generate_shop

ANCHOR = datetime(2025, 1, 10)  # naive UTC, as stored
SEED = 7
CUSTOMERS = 600
#: When each engine is asked, in this order (state carries over between them).
OFFSETS = {"-30d": timedelta(days=-30), "anchor": timedelta(0), "+1h": timedelta(hours=1),
           "+7d": timedelta(days=7), "+14d": timedelta(days=14)}
INSTANTS = {label: (ANCHOR + delta).replace(tzinfo=timezone.utc) for label, delta in OFFSETS.items()}

#: the at-risk segment of the shipped re-engage campaign (6 calendar months, 60 %): it starts
#: 6 months before the anchor (2025-01-10)
AT_RISK_SINCE = datetime(2024, 7, 10)
AT_RISK_PERCENT = 60
TIE_GROUP = (99_998, 99_999, 100_000, 100_001)
#: 90011's last two orders (a tie at one instant) early in the at-risk window: a member at the anchor
LAST_ORDER_TIE = AT_RISK_SINCE + timedelta(days=5, hours=3)
#: the at_risk trigger's key of 90011: the greater id of its last instant
LAST_ORDER_TIE_KEY = "10000110"


def _customer(customer_id: int, email: bool = True, phone: bool = False) -> dict:
    return {"customer_id": customer_id, "email": f"edge{customer_id}@example.com" if email else None,
            "phone": f"+49151{customer_id:08d}" if phone else None, "first_name": "Edge", "last_name": f"Case{customer_id}",
            "created_at": ANCHOR - timedelta(days=300), "city": "Berlin"}


def _order(order_id: int, customer_id: int, when: datetime, total: float | None = 25.0, status: str = "completed") -> dict:
    return {"order_id": order_id, "customer_id": customer_id, "created_at": when, "status": status, "total": total}


def _checkout(checkout_id: int, customer_id: int, when: datetime, completed: datetime | None = None,
              total: float | None = 30.0) -> dict:
    return {"checkout_id": checkout_id, "customer_id": customer_id, "created_at": when,
            "completed_at": completed, "total": total}


def _tie_instant(orders: list[dict]) -> datetime:
    """A last-order time that puts the middle of TIE_GROUP on the at-risk edge at the anchor."""
    last: dict[int, datetime] = {}
    for o in orders:
        if o["created_at"] <= ANCHOR:
            last[o["customer_id"]] = max(o["created_at"], last.get(o["customer_id"], o["created_at"]))
    recent = sorted(t for t in last.values() if t > AT_RISK_SINCE)
    population = len(recent) + len(TIE_GROUP)
    edge = population * AT_RISK_PERCENT // 100  # 1-based position of the last member
    # the group sorts after the existing customer at recent[i] (higher ids): positions i+2 .. i+5
    index = edge - 3
    return recent[index]


def shared_history() -> ShopData:
    data = generate_shop(seed=SEED, customers=CUSTOMERS, anchor=ANCHOR.isoformat() + "Z")
    rows = data.rows
    day = timedelta(days=1)
    rows["customers"] += [_customer(90001), _customer(90002, email=False), _customer(90003),
                          _customer(90004, phone=True), _customer(90005), _customer(90006), _customer(90007),
                          _customer(90008, email=False), _customer(90009), _customer(90010)]
    rows["customers"] += [_customer(i, phone=i % 2 == 0) for i in TIE_GROUP]
    rows["orders"] += [
        _order(900_031, 90003, ANCHOR - 7 * day), _order(900_030, 90003, ANCHOR - 7 * day),
        _order(900_040, 90004, ANCHOR - 9 * day, total=None),
        _order(900_090, 90009, ANCHOR - 9 * day - timedelta(seconds=1)),
        _order(900_100, 90010, ANCHOR, total=None),
        _order(900_050, 90005, ANCHOR - 7 * day + timedelta(milliseconds=250)),
        _order(900_990, 90999, ANCHOR - 7 * day),
    ]
    rows["customers"].append(_customer(90011))
    rows["orders"] += [_order(9_900_110, 90011, LAST_ORDER_TIE), _order(10_000_110, 90011, LAST_ORDER_TIE),
                       _order(10_500_110, 90011, LAST_ORDER_TIE - day)]
    tie = _tie_instant(rows["orders"])
    rows["orders"] += [_order(910_000 + i, i, tie, total=None if i % 2 else 12.5) for i in TIE_GROUP]
    rows["checkouts"] += [
        _checkout(900_001, 90001, ANCHOR - timedelta(minutes=90)),
        _checkout(900_006, 90006, ANCHOR - timedelta(minutes=70), completed=ANCHOR),
        _checkout(900_007, 90007, ANCHOR - timedelta(hours=1)),
        _checkout(900_008, 90008, ANCHOR - timedelta(minutes=30), total=None),
    ]
    rows["checkout_items"] += [{"checkout_id": 900_001, "product_id": 1, "name": "Espresso beans 1 kg", "quantity": 1,
                                "price": 24.9, "image_url": None}]
    return data
