"""Product lists for a batch of claimed messages: what each message's template declares it shows.

Each claimed message's template declares its lists (``{# uses: ... #}``, engine.templating.lists);
for each list kind any of them declares, one warehouse query computes it for every customer of the
batch who needs it (engine.sql.product_lists), at the pass's instant. A message whose declared list
comes out empty for its customer is not sent half-filled: the render stage skips it with reason
``no_products``. Must not decide, claim, render, send or write.
"""
from __future__ import annotations

from datetime import datetime

from engine.model import Project
from engine.run.messages import DueMessage
from engine.run.sources import SourceRows
from engine.sql.compile import render_sql
from engine.sql.product_lists import LIST_KINDS, list_query
from engine.state.warehouse import as_dicts
from engine.templating.render import Renderer

#: the skip reason of a message whose declared list is empty
NO_PRODUCTS = "no_products"


def declared(m: DueMessage, project: Project, renderer: Renderer) -> tuple[str, ...]:
    """The lists the template of ``m``'s variant declares (validation refused unknown names)."""
    template = project.campaign(m.campaign).step(m.step).variant(m.variant).template
    if template is None:
        return ()
    return tuple(name for name in renderer.list_uses(template, LIST_KINDS).names if name in LIST_KINDS)


def load_lists(messages: list[DueMessage], project: Project, renderer: Renderer, sources: SourceRows,
               now: datetime) -> dict[str, dict[str, list[dict]]]:
    """list name -> customer id -> the list's products (dicts of ``ITEM_COLUMNS`` and ``position``),
    for every list a message's template declares; one query per list kind."""
    wanted: dict[str, set[str]] = {}
    for m in messages:
        for name in declared(m, project, renderer):
            wanted.setdefault(name, set()).add(m.customer_id)
    config = sources.config
    lists: dict[str, dict[str, list[dict]]] = {}
    for name, customers in wanted.items():
        keys = sorted(customers)
        statement, parameters = list_statement(name, keys, sources, now)
        by_customer: dict[str, list[dict]] = {}
        for item in as_dicts(sources.warehouse.fetch_all(statement, parameters)):
            by_customer.setdefault(str(item.pop("customer_id")), []).append(item)
        lists[name] = by_customer
    return lists


def list_statement(name: str, keys: list[str], sources: SourceRows, now: datetime) -> tuple[str, tuple | dict | None]:
    """The SQL of list ``name`` for the customers ``keys`` and its driver parameters: where the dialect
    binds the keys as array parameters (``SourceRows.key_filter``), one text per list, instant and key
    types, built and rendered once per pass (``sources.statements``); else with the keys in it."""
    config = sources.config
    types = tuple((entity, bound[0] if (bound := sources.bound_keys(entity, "customer_id", keys)) else None)
                  for entity in ("events", "orders") if entity in config.sources)
    cached = sources.statements.get(("list", name, now, types))
    if cached is None:
        parameters: list = []
        order: list[str] = []  # the entity of each parameter, in their order

        def customers(entity: str):
            condition = sources.key_filter(entity, "customer_id", keys, parameters)
            order.extend([entity] * (len(parameters) - len(order)))
            return condition
        sql = render_sql(list_query(name, config, customers, now), config.dialect)
        if any(element is None for _, element in types):  # keys in the text (a literal IN list): not reused
            return sql, sources.driver_parameters(parameters) if parameters else None
        cached = sources.statements[("list", name, now, types)] = (sql, tuple(order))
    sql, order = cached
    return sql, sources.driver_parameters([sources.bound_keys(entity, "customer_id", keys)[1] for entity in order])


def missing_list(names: tuple[str, ...], lists: dict[str, dict[str, list[dict]]], customer_id: str) -> str | None:
    """The first of ``names`` that is empty for ``customer_id``, or None."""
    for name in names:
        if not lists.get(name, {}).get(customer_id):
            return name
    return None
