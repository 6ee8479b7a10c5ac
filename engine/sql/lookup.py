"""Read-only lookups of one customer in the warehouse, as sqlglot ASTs.

``engine customer`` and ``engine explain`` look at a single customer: their
mapped attributes, their orders and those orders' items. Every query reads
the shop's tables through the source mapping (``source_select``), so it speaks
the engine's canonical column names on every warehouse; ids compare as text,
as they do in the ledger. Pure: builds expressions, executes nothing.
"""
from __future__ import annotations

from sqlglot import exp

from engine.sql.compile import col, is_customer, source_select, text
from engine.model import ProjectConfig


def _from_source(config: ProjectConfig, entity: str, alias: str, dialect: str) -> exp.Select:
    return exp.select("*").from_(source_select(config.sources[entity], dialect).subquery(alias))


def customer_query(config: ProjectConfig, customer_id: str, dialect: str | None = None) -> exp.Select:
    """The customer's mapped attributes (canonical and extra columns)."""
    dialect = dialect or config.dialect
    return _from_source(config, "customers", "c", dialect).where(is_customer(col("c", "customer_id"), customer_id))


def order_count_query(config: ProjectConfig, customer_id: str, dialect: str | None = None) -> exp.Select:
    dialect = dialect or config.dialect
    return (exp.select(exp.alias_(exp.Count(this=exp.Star()), "orders"))
            .from_(source_select(config.sources["orders"], dialect).subquery("o"))
            .where(is_customer(col("o", "customer_id"), customer_id)))


def orders_query(config: ProjectConfig, customer_id: str, limit: int | None, dialect: str | None = None) -> exp.Select:
    """The customer's orders, newest first (``limit`` of them, or all)."""
    dialect = dialect or config.dialect
    query = (
        _from_source(config, "orders", "o", dialect)
        .where(is_customer(col("o", "customer_id"), customer_id))
        .order_by(exp.Ordered(this=col("o", "created_at"), desc=True), exp.Ordered(this=col("o", "order_id"), desc=True))
    )
    return query.limit(limit) if limit is not None else query


def order_items_query(config: ProjectConfig, order_ids: list[str], dialect: str | None = None) -> exp.Select:
    """The items of the given orders (ids as text)."""
    dialect = dialect or config.dialect
    return (
        _from_source(config, "order_items", "i", dialect)
        .where(text(col("i", "order_id")).isin(*[exp.Literal.string(i) for i in order_ids]))
    )
