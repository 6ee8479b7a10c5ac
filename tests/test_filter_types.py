"""Filter type-checking (engine/filter_types.py): what must be refused, and what must still pass.

Kinds as the engine knows them without a warehouse: its facts and the canonical customer
columns. Every refusal carries the offset of the offending part, so ``engine validate``
can point at it; an attribute of unknown kind (an extra column) is never refused.
"""
from __future__ import annotations

import pytest

from engine.errors import FilterError
from engine.sql.filter_types import check_types
from engine.sql.filters import parse_filter

KINDS = {"order_count": "number", "total_spent": "number", "email": "text", "created_at": "instant",
         "birthday": "instant", "ordered_since_trigger": "boolean"}
ATTRIBUTES = [*KINDS, "city", "is_wholesaler"]

ACCEPTED = [
    "email IS NOT NULL AND order_count = 1",
    "coalesce(total_spent, 0) > 100.5",
    "lower(email) LIKE '%@shop.example'",
    "email IN ('a@x.example', 'b@x.example')",
    "order_count IN (1, '2')",
    "created_at < days_ago(30)",
    "created_at BETWEEN '2025-01-01' AND '2025-02-01T00:00:00Z'",
    "NOT ordered_since_trigger",
    "has_tag('vip') OR total_spent * 2 - 1 > abs(-5)",
    "length(email) > 5",
    "city > 5",  # unknown kind: only the warehouse can tell (validate --check-warehouse)
    "is_wholesaler",
    "email = NULL OR birthday IS NULL",
]

REFUSED = [  # (filter, message part, offending text)
    ("email > 5", "'email' is text and '5' is a number", "email"),
    ("order_count = 1 AND created_at > 20250101", "'created_at' is a timestamp", "created_at"),
    ("email * 2 > 10", "'email' is text: arithmetic needs a number", "email"),
    ("created_at < days_ago(30) + 1", "is a timestamp: arithmetic needs a number", "days_ago"),
    ("order_count LIKE '1%'", "'order_count' is a number: LIKE needs text", "order_count"),
    ("created_at > 'soon'", "''soon'' is not a timestamp", "'soon'"),
    ("order_count IN (1, 'x')", "''x'' is not a number", "'x'"),
    ("order_count", "the filter is a number, not a condition", "order_count"),
    ("email AND order_count > 1", "'email' is text, not a condition (AND joins conditions)", "email"),
    ("NOT email", "NOT negates a condition", "email"),
    ("length(order_count) > 1", "length() needs text", "order_count"),
    ("abs(email) > 1", "abs() needs a number", "email"),
    ("email = created_at", "the warehouse cannot compare them", "email"),
    ("ordered_since_trigger = 1", "true/false", "ordered_since_trigger"),
]


@pytest.mark.parametrize("text", ACCEPTED)
def test_a_well_typed_filter_passes(text: str):
    check_types(parse_filter(text, ATTRIBUTES), KINDS, text)


@pytest.mark.parametrize("text,message,at", REFUSED, ids=[case[0] for case in REFUSED])
def test_a_type_mismatch_is_refused_where_it_is(text: str, message: str, at: str):
    with pytest.raises(FilterError) as caught:
        check_types(parse_filter(text, ATTRIBUTES), KINDS, text)
    assert message in caught.value.message
    assert caught.value.fix
    assert caught.value.offset == text.index(at), (caught.value.offset, text)
