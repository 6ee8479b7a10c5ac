"""What a filter may name, and type-checking of filter expressions against what is known of the attributes' types.

Owns the attributes a campaign or segment filter may name given the source
mapping (``filter_attributes``, ``segment_attributes``: config, validate and
compile all need them, so they live below all three) - among them the trigger's own
properties (``trigger.total``, ``TRIGGER_PROPERTIES``) -, the kinds of value a
filter attribute holds - ``number``, ``text``, ``instant`` (timestamp or date)
or ``boolean``, None when unknown - and the check that a parsed filter
(``filters.parse_filter``) combines them in ways every warehouse accepts: no
comparison of text or instants with numbers, no arithmetic on text or
instants, no LIKE on numbers, no text where a condition belongs. Kinds come
from the engine's own facts (order_count is a number, first_order_at an
instant), from the canonical columns of the entity model (email is text,
created_at an instant) and, under ``validate --check-warehouse``, from the
warehouse's declared column types. An unknown kind is never an error: the
check only refuses what is sure to fail at run time. Pure: no I/O.
"""
from __future__ import annotations

import re
from typing import Mapping

from sqlglot import exp

from engine.channel_kinds import contact_fields
from engine.errors import FilterError
from engine.sql import responses
from engine.sql.filters import source_offset
from engine.model import CUSTOMER_FACTS, SINCE_TRIGGER_FACTS, ProjectConfig


#: The trigger's own properties a campaign filter may name as ``trigger.<name>``, by the entity whose
#: row a trigger instance is (``TemplateRecord.entity`` of its kind): property -> (what it needs mapped:
#: (entity, column or None for the entity alone), or None when always there; the kind of its value).
#: ``categories`` is a list: filters ask for one with ``trigger_has_category('shoes')``.
TRIGGER_PROPERTIES: dict[str, dict[str, tuple[tuple[str, str | None] | None, str]]] = {
    "orders": {
        "total": (("orders", "total"), "number"), "status": (("orders", "status"), "text"),
        "item_count": (("order_items", None), "number"), "categories": (("order_items", "category"), "list"),
        "payment_method": (("orders", "payment_method"), "text"),
        "shipping_country": (("orders", "shipping_country"), "text"), "currency": (("orders", "currency"), "text"),
    },
    "checkouts": {
        "total": (("checkouts", "total"), "number"), "item_count": (("checkout_items", None), "number"),
        "currency": (("checkouts", "currency"), "text"),
    },
    "events": {
        "type": (None, "text"), "product_id": (("events", "product_id"), "text"),
        "product_name": (("events", "product_name"), "text"), "price": (("events", "price"), "number"),
        "search_query": (("events", "search_query"), "text"), "url": (("events", "url"), "text"),
    },
}
#: ``filter_attributes``' default: the trigger properties of every trigger (for parsing validated filters)
ANY_TRIGGER = "*"


def _mapped(config: ProjectConfig, needs: tuple[str, str | None] | None) -> bool:
    if needs is None:
        return True
    entity, column = needs
    source = config.sources.get(entity)
    return source is not None and (column is None or source.has_column(column))


def trigger_properties(config: ProjectConfig, record: str | None) -> dict[str, str | None]:
    """``trigger.<name>`` -> None for each property of a trigger whose instances are rows of ``record``
    the mapping provides, and -> "entity.column" (what to map) for each it lacks."""
    found: dict[str, str | None] = {}
    for entity, properties in TRIGGER_PROPERTIES.items():
        if record not in (entity, ANY_TRIGGER) or entity not in config.sources:
            continue
        for name, (needs, _) in properties.items():
            mapped = _mapped(config, needs)
            if mapped or f"trigger.{name}" not in found:
                found[f"trigger.{name}"] = None if mapped else ".".join(filter(None, needs))
    return found


def filter_attributes(config: ProjectConfig, record: str | None = ANY_TRIGGER) -> list[str]:
    """Every attribute a filter may name, given what the source mapping provides: with the properties
    (``trigger.total``, ...) of a trigger whose instances are rows of the entity ``record`` (None: a
    trigger without any; the default ``ANY_TRIGGER``: those of every trigger, to read validated filters)."""
    attributes = list(config.customer_attributes())
    orders = config.sources.get("orders")
    if orders is not None:
        attributes += [f for f in CUSTOMER_FACTS if f != "last_payment_method" or orders.has_column("payment_method")]
    attributes += [name for name, (entity, _) in SINCE_TRIGGER_FACTS.items() if entity in config.sources]
    attributes += list(responses.ATTRIBUTES)  # the ledger's response events (last_opened_at, ...)
    attributes += [name for name, missing in trigger_properties(config, record).items() if missing is None]
    return attributes


def segment_attributes(config: ProjectConfig) -> list[str]:
    """What a segment filter may name: a campaign filter's attributes minus those about a trigger."""
    return [a for a in filter_attributes(config, None) if a not in SINCE_TRIGGER_FACTS]


#: The engine's per-customer facts and "since the trigger" facts.
FACT_KINDS = {
    "order_count": "number", "total_spent": "number", "first_order_at": "instant", "last_order_at": "instant",
    "last_payment_method": "text", "ordered_since_trigger": "boolean", "came_back_since_trigger": "boolean",
    **responses.ATTRIBUTE_KINDS,
}
#: Canonical customer columns whose kind the entity model implies (when mapped to a plain column):
#: every channel kind's contact field holds text.
CUSTOMER_COLUMN_KINDS = {
    **{field: "text" for field in contact_fields()}, "first_name": "text", "last_name": "text", "locale": "text",
    "timezone": "text", "created_at": "instant", "birthday": "instant", "unsubscribed_at": "instant",
}
#: What an allowed function returns, and the kind its arguments must have (None: any).
FUNCTION_KINDS: dict[type[exp.Expression], tuple[str | None, str | None]] = {
    exp.Lower: ("text", "text"), exp.Upper: ("text", "text"), exp.Length: ("number", "text"),
    exp.Abs: ("number", "number"),
}
ENGINE_FUNCTION_KINDS = {"days_ago": "instant", "hours_ago": "instant", "has_tag": "boolean",
                         "bought_category": "boolean", "trigger_has_category": "boolean", **responses.FUNCTION_KINDS}

_WORDS = {"number": "a number", "text": "text", "instant": "a timestamp", "boolean": "true/false"}
_INSTANT_TEXT = re.compile(r"\d{4}-\d{2}-\d{2}([ T]\d{2}:\d{2}(:\d{2}(\.\d+)?)?)?(Z|[+-]\d{2}:?\d{2})?")
_NUMBER_TEXT = re.compile(r"\s*[-+]?(\d+(\.\d*)?|\.\d+)([eE][-+]?\d+)?\s*")
#: pairs of kinds no warehouse compares without an explicit cast
_INCOMPARABLE = {frozenset(pair) for pair in (("text", "number"), ("instant", "number"), ("boolean", "number"),
                                              ("text", "instant"), ("boolean", "instant"), ("text", "boolean"))}


def attribute_kinds(config: ProjectConfig, warehouse_kinds: Mapping[str, str] | None = None) -> dict[str, str]:
    """Kind of every attribute whose kind is known; ``warehouse_kinds`` (mapped customer column ->
    kind, from the warehouse's declared types) overrides what the model implies."""
    kinds = dict(FACT_KINDS)
    kinds.update({f"trigger.{name}": kind for properties in TRIGGER_PROPERTIES.values()
                  for name, (_, kind) in properties.items() if kind != "list"})
    customers = config.sources.get("customers")
    for name, expression in (customers.columns.items() if customers else ()):
        if name in CUSTOMER_COLUMN_KINDS and re.fullmatch(r"\w+", expression.strip()):
            kinds[name] = CUSTOMER_COLUMN_KINDS[name]  # an expression may compute anything: left unknown
    kinds.update(warehouse_kinds or {})
    return kinds


def check_types(tree: exp.Expression, kinds: Mapping[str, str], text: str) -> None:
    """Raise ``FilterError`` (with the offset of the offending part) where the filter combines kinds
    that cannot work; the whole filter must be a condition."""
    checker = _Checker(kinds, text)
    kind = checker.kind(tree)
    if kind in ("number", "text", "instant"):
        raise checker.error(tree, f"the filter is {_WORDS[kind]}, not a condition",
                            "compare it with something, e.g. order_count > 1 or email IS NOT NULL")


class _Checker:
    def __init__(self, kinds: Mapping[str, str], text: str):
        self.kinds, self.text = kinds, text

    def error(self, node: exp.Expression, message: str, fix: str) -> FilterError:
        return FilterError(message, fix=fix, offset=source_offset(node, self.text))

    def kind(self, node: exp.Expression) -> str | None:
        """The kind of ``node``'s value; "literal:..." for a string literal (it converts to what it spells)."""
        if isinstance(node, exp.Paren):
            return self.kind(node.this)
        if isinstance(node, exp.Column):
            return self.kinds.get(f"{node.table}.{node.name}" if node.table else node.name)
        if isinstance(node, exp.Literal):
            return "literal:" + node.this if node.is_string else "number"
        if isinstance(node, exp.Boolean):
            return "boolean"
        if isinstance(node, exp.Null):
            return None
        if isinstance(node, (exp.And, exp.Or)):
            for side in (node.this, node.expression):
                self.condition(side, node)
            return "boolean"
        if isinstance(node, exp.Not):
            self.condition(node.this, node)
            return "boolean"
        if isinstance(node, (exp.Add, exp.Sub, exp.Mul, exp.Div)):
            for side in (node.this, node.expression):
                self.operand(side, "number", "arithmetic", "arithmetic works on numbers only")
            return "number"
        if isinstance(node, exp.Neg):
            self.operand(node.this, "number", "a minus sign", "only a number can be negative")
            return "number"
        if isinstance(node, (exp.EQ, exp.NEQ, exp.GT, exp.GTE, exp.LT, exp.LTE)):
            self.comparable(node.this, node.expression)
            return "boolean"
        if isinstance(node, exp.Between):
            for bound in (node.args.get("low"), node.args.get("high")):
                if bound is not None:
                    self.comparable(node.this, bound)
            return "boolean"
        if isinstance(node, exp.In):
            for value in node.expressions:
                self.comparable(node.this, value)
            return "boolean"
        if isinstance(node, (exp.Like, exp.ILike)):
            for side in (node.this, node.expression):
                self.operand(side, "text", "LIKE", "LIKE matches text; compare numbers with =, <, > or BETWEEN")
            return "boolean"
        if isinstance(node, exp.Is):
            self.kind(node.this)
            return "boolean"
        if isinstance(node, exp.Coalesce):
            values = [node.this, *node.expressions]
            for value in values[1:]:
                self.comparable(values[0], value)
            return next((k for k in map(self.kind, values) if k and not k.startswith("literal:")), None)
        if type(node) in FUNCTION_KINDS:
            result, argument = FUNCTION_KINDS[type(node)]
            self.operand(node.this, argument, f"{node.sql_name().lower()}()",
                         f"{node.sql_name().lower()}() takes {_WORDS[argument]}")
            return result
        if isinstance(node, exp.Anonymous):
            return ENGINE_FUNCTION_KINDS.get(node.name.lower())
        for child in node.iter_expressions():
            self.kind(child)
        return None

    def condition(self, node: exp.Expression, parent: exp.Expression) -> None:
        kind = self.kind(node)
        if kind in ("number", "text", "instant") or (kind or "").startswith("literal:"):
            word = "text" if kind.startswith("literal:") else _WORDS[kind]
            role = "NOT negates a condition" if isinstance(parent, exp.Not) else f"{parent.key.upper()} joins conditions"
            raise self.error(node, f"'{node.sql()}' is {word}, not a condition ({role})",
                             "compare it with something, e.g. order_count > 1 or email IS NOT NULL")

    def operand(self, node: exp.Expression, wanted: str | None, what: str, fix: str) -> None:
        kind = self.kind(node)
        if wanted is None or kind is None or kind == wanted:
            return
        if kind.startswith("literal:") and _converts(kind[8:], wanted):
            return
        word = "text" if kind.startswith("literal:") else _WORDS[kind]
        raise self.error(node, f"'{node.sql()}' is {word}: {what} needs {_WORDS[wanted]}", fix)

    def comparable(self, left: exp.Expression, right: exp.Expression) -> None:
        a, b = self.kind(left), self.kind(right)
        if a is None or b is None:
            return
        if a.startswith("literal:") and b.startswith("literal:"):
            return
        if a.startswith("literal:") or b.startswith("literal:"):
            literal, kind, node = (a[8:], b, left) if a.startswith("literal:") else (b[8:], a, right)
            if not _converts(literal, kind):
                other = right if node is left else left
                raise self.error(node, f"'{node.sql()}' is not {_WORDS[kind]}, but '{other.sql()}' is",
                                 _example_fix(kind, other.sql()))
            return
        if frozenset((a, b)) in _INCOMPARABLE:
            raise self.error(left, f"'{left.sql()}' is {_WORDS[a]} and '{right.sql()}' is {_WORDS[b]}: "
                             "the warehouse cannot compare them", _example_fix(a, left.sql()))


def _converts(literal: str, kind: str) -> bool:
    """Whether a quoted string converts to ``kind`` (warehouses cast a string literal to the other side's type)."""
    if kind == "text":
        return True
    if kind == "number":
        return bool(_NUMBER_TEXT.fullmatch(literal))
    if kind == "instant":
        return bool(_INSTANT_TEXT.fullmatch(literal.strip()))
    if kind == "boolean":
        return literal.strip().lower() in ("true", "false", "t", "f", "1", "0", "yes", "no")
    return True


def _example_fix(kind: str, name: str) -> str:
    return {
        "text": f"compare {name} with a quoted string, e.g. {name} = 'value', or use a number attribute such as order_count",
        "number": f"compare {name} with a number, e.g. {name} > 5",
        "instant": f"compare {name} with an instant, e.g. {name} < days_ago(30) or {name} >= '2025-01-01'",
        "boolean": f"use {name} as a condition on its own, or compare it with true/false",
    }[kind]
