"""Product lists for templates: which lists exist, what each needs, and the one query per list kind
that computes it for a whole batch of customers.

The lists (``LIST_KINDS``), each at most ``LIMIT`` products in a stable order (ties by product id
as text), every product a complete one of the catalogue (name, url, image and price present, in
stock or no ``in_stock`` mapped):

- ``viewed_products``: the products of the customer's ``product_viewed`` events in the last
  ``LOOKBACK`` up to now, each once, the most recently viewed first;
- ``bought_together``: products bought together with what the customer bought: for each product,
  the number of orders (anyone's) holding it with one of the customer's products, summed over
  the customer's products, most first (the pair counts are one GROUP BY over the order lines,
  shared by every customer of the batch);
- ``category_top_sellers``: the best sellers (by number of orders) of the customer's favourite
  category (the category of most of their ordered products, ties by name);
- ``search_related``: products whose name or category contains one of the customer's ``search``
  queries of the last ``LOOKBACK`` (case-insensitive), the product of the most recent search first.

The recommendations (all but ``viewed_products``) leave out what the customer already bought.
Orders and events count up to ``now`` only. Product ids are compared as text, so a shop whose
orders keep ids as integers and whose catalogue keeps them as text still matches.

Pure: builds sqlglot queries, never runs them. The customer condition comes from the caller
(``customers(entity)``: the batch's keys on that source's ``customer_id``), so this module does not
know how keys are typed.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Callable

import sqlglot
from sqlglot import exp

from engine.model import ProjectConfig
from engine.sql.compile import source_select, ts

#: the most products a list holds
LIMIT = 4
#: how far back views and searches count
LOOKBACK = timedelta(days=30)
#: the event types lists read
VIEW_EVENT = "product_viewed"
SEARCH_EVENT = "search"
#: the columns of every list item, in order (and ``position``, 1 = first)
ITEM_COLUMNS = ("product_id", "name", "url", "image", "price", "category", "in_stock")


@dataclass(frozen=True)
class ListKind:
    name: str
    #: the sources it reads (besides products)
    needs: tuple[str, ...]
    description: str
    #: the SQL of its ranked candidates: customer_id, pid, sort keys; see _QUERIES
    sql: str
    #: the ORDER BY of the ranking within a customer
    order: str


_COMPLETE = """
complete AS (
  SELECT CAST(product_id AS VARCHAR) AS pid, product_id, name, url, image, price, category, in_stock
  FROM src_products
  WHERE product_id IS NOT NULL AND name IS NOT NULL AND url IS NOT NULL AND image IS NOT NULL AND image <> ''
    AND price IS NOT NULL AND (in_stock IS NULL OR in_stock = TRUE)
)"""

_ORDERS = """
ord AS (SELECT order_id, customer_id FROM src_orders WHERE created_at <= :now),
lines AS (
  SELECT DISTINCT i.order_id, CAST(i.product_id AS VARCHAR) AS pid
  FROM src_order_items AS i JOIN ord AS o ON o.order_id = i.order_id
  WHERE i.product_id IS NOT NULL
),
my_orders AS (SELECT order_id, customer_id FROM ord WHERE :orders_customers),
bought AS (
  SELECT DISTINCT m.customer_id, l.pid FROM my_orders AS m JOIN lines AS l ON l.order_id = m.order_id
)"""

LIST_KINDS: dict[str, ListKind] = {kind.name: kind for kind in (
    ListKind(
        name="viewed_products", needs=("events",),
        description="the products the customer viewed (product_viewed events), each once, most recent first",
        sql="""
candidates AS (
  SELECT customer_id, CAST(product_id AS VARCHAR) AS pid, MAX(occurred_at) AS sort_at, 0 AS score
  FROM src_events
  WHERE :events_customers AND type = :view_event AND product_id IS NOT NULL
    AND occurred_at <= :now AND occurred_at > :since
  GROUP BY customer_id, CAST(product_id AS VARCHAR)
)""",
        order="c.sort_at DESC, c.pid"),
    ListKind(
        name="bought_together", needs=("orders", "order_items"),
        description="products bought in the same orders as the customer's products, most often first",
        sql=_ORDERS + """,
pairs AS (
  SELECT a.pid AS bought_pid, b.pid, COUNT(*) AS orders
  FROM lines AS a JOIN lines AS b ON b.order_id = a.order_id AND b.pid <> a.pid
  GROUP BY a.pid, b.pid
),
candidates AS (
  SELECT m.customer_id, p.pid, NULL AS sort_at, SUM(p.orders) AS score
  FROM bought AS m JOIN pairs AS p ON p.bought_pid = m.pid
  WHERE NOT EXISTS (SELECT 1 FROM bought AS x WHERE x.customer_id = m.customer_id AND x.pid = p.pid)
  GROUP BY m.customer_id, p.pid
)""",
        order="c.score DESC, c.pid"),
    ListKind(
        name="category_top_sellers", needs=("orders", "order_items"),
        description="the best sellers of the customer's favourite category that they have not bought",
        sql=_ORDERS + """,
categorised AS (
  SELECT l.order_id, l.pid, p.category
  FROM lines AS l JOIN src_products AS p ON CAST(p.product_id AS VARCHAR) = l.pid
  WHERE p.category IS NOT NULL
),
my_categories AS (
  SELECT m.customer_id, c.category, COUNT(*) AS n
  FROM my_orders AS m JOIN categorised AS c ON c.order_id = m.order_id
  GROUP BY m.customer_id, c.category
),
favourite AS (
  SELECT customer_id, category FROM (
    SELECT customer_id, category, ROW_NUMBER() OVER (PARTITION BY customer_id ORDER BY n DESC, category) AS r
    FROM my_categories
  ) AS ranked_categories WHERE r = 1
),
sellers AS (SELECT category, pid, COUNT(*) AS sold FROM categorised GROUP BY category, pid),
candidates AS (
  SELECT f.customer_id, s.pid, NULL AS sort_at, s.sold AS score
  FROM favourite AS f JOIN sellers AS s ON s.category = f.category
  WHERE NOT EXISTS (SELECT 1 FROM bought AS x WHERE x.customer_id = f.customer_id AND x.pid = s.pid)
)""",
        order="c.score DESC, c.pid"),
    ListKind(
        name="search_related", needs=("events", "orders", "order_items"),
        description="products whose name or category matches the customer's recent searches, not yet bought",
        sql=_ORDERS + """,
searches AS (
  SELECT customer_id, LOWER(search_query) AS q, MAX(occurred_at) AS at
  FROM src_events
  WHERE :events_customers AND type = :search_event AND search_query IS NOT NULL AND search_query <> ''
    AND occurred_at <= :now AND occurred_at > :since
  GROUP BY customer_id, LOWER(search_query)
),
matches AS (
  SELECT s.customer_id, p.pid, MAX(s.at) AS sort_at
  FROM searches AS s JOIN complete AS p
    ON STRPOS(LOWER(p.name), s.q) > 0 OR STRPOS(LOWER(COALESCE(p.category, '')), s.q) > 0
  GROUP BY s.customer_id, p.pid
),
candidates AS (
  SELECT m.customer_id, m.pid, m.sort_at, 0 AS score FROM matches AS m
  WHERE NOT EXISTS (SELECT 1 FROM bought AS x WHERE CAST(x.customer_id AS VARCHAR) = CAST(m.customer_id AS VARCHAR)
                    AND x.pid = m.pid)
)""",
        order="c.sort_at DESC, c.pid"),
)}


def missing_sources(name: str, config: ProjectConfig) -> list[str]:
    """The sources list ``name`` reads that engine.yaml does not map (products included)."""
    return [entity for entity in ("products", *LIST_KINDS[name].needs) if entity not in config.sources]


def list_query(name: str, config: ProjectConfig, customers: Callable[[str], exp.Expression], now: datetime,
               limit: int = LIMIT) -> exp.Query:
    """One query for list ``name`` of every customer ``customers(entity)`` selects (a condition on
    that source's ``customer_id``): customer_id (text), position (1 = first), then ``ITEM_COLUMNS``."""
    kind = LIST_KINDS[name]
    body = (f"WITH {_COMPLETE.strip()}, {kind.sql.strip()},\n"
            f"ranked AS (\n"
            f"  SELECT CAST(c.customer_id AS VARCHAR) AS list_customer_id, p.*,\n"
            f"         ROW_NUMBER() OVER (PARTITION BY CAST(c.customer_id AS VARCHAR) ORDER BY {kind.order}) AS position\n"
            f"  FROM candidates AS c JOIN complete AS p ON p.pid = c.pid\n"
            f")\n"
            f"SELECT list_customer_id AS customer_id, position, {', '.join(ITEM_COLUMNS)} FROM ranked\n"
            f"WHERE position <= :limit ORDER BY list_customer_id, position")
    if "in_stock" not in config.sources["products"].columns:  # every product is in stock
        body = body.replace("AND (in_stock IS NULL OR in_stock = TRUE)", "")
    tree = sqlglot.parse_one(body)  # the engine's own SQL, in sqlglot's neutral dialect
    values = {
        "now": ts(now, config.dialect), "since": ts(now - LOOKBACK, config.dialect),
        "limit": exp.Literal.number(limit), "view_event": exp.Literal.string(VIEW_EVENT),
        "search_event": exp.Literal.string(SEARCH_EVENT),
    }
    conditions = {"events_customers": "events", "orders_customers": "orders"}

    def substitute(node: exp.Expression) -> exp.Expression:
        if isinstance(node, exp.Placeholder):
            if node.name in conditions:
                return customers(conditions[node.name])
            return values[node.name].copy()
        return node

    tree = tree.transform(substitute)
    sources = [entity for entity in ("products", "events", "orders", "order_items")
               if f"src_{entity}" in body]
    with_ = tree.args["with_"]  # the sources first, before the CTEs that read them
    with_.set("expressions", [
        exp.CTE(this=source_select(config.sources[entity], config.dialect),
                alias=exp.TableAlias(this=exp.to_identifier(f"src_{entity}")))
        for entity in sources
    ] + list(with_.expressions))
    return tree
