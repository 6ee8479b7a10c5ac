"""Rows of the shop's sources by key, for a whole batch in one query: a trigger's order and its
items, a day's events, the attributes of customers due for a retry.

Owns the ``IN (keys)`` condition on the native column type (learnt from one sample value and
remembered in the ``key_kinds`` the caller keeps). Must not write, decide anything about a
message, or know which stage asks.
"""
from __future__ import annotations

import re

from sqlglot import exp

from engine.model import ProjectConfig
from engine.sql.compile import render_sql, source_select
from engine.state.warehouse import Database

_CANONICAL_INT = re.compile(r"-?(0|[1-9][0-9]*)")  # what CAST(integer AS VARCHAR) gives


class SourceRows:
    """Reads ``config``'s sources from ``warehouse``; ``key_kinds`` ((entity, column) -> "int" |
    "str" | "cast") is the caller's, so what it learns outlives one pass."""

    def __init__(self, warehouse: Database, config: ProjectConfig, key_kinds: dict[tuple[str, str], str]):
        self.warehouse = warehouse
        self.config = config
        self.key_kinds = key_kinds

    def query(self, entity: str, condition: exp.Expression) -> list[dict]:
        query = (  # copy=False: the condition may hold a thousand keys, copying them costs more than the query
            exp.select("*").from_("src").where(condition, copy=False)
            .with_("src", as_=source_select(self.config.sources[entity], self.config.dialect), copy=False)
        )
        return [dict(row._mapping) for row in self.warehouse.fetch_all(render_sql(query, self.config.dialect))]

    def key_kind(self, entity: str, column: str) -> str:
        """How ``column`` of ``entity`` holds its values: "int", "str", or "cast" (anything else,
        or unknown yet), from one sample value; remembered in ``key_kinds``."""
        kinds = self.key_kinds
        if (entity, column) not in kinds:
            query = (
                exp.select(exp.column(column)).from_("src").where(exp.column(column).is_(exp.null()).not_()).limit(1)
                .with_("src", as_=source_select(self.config.sources[entity], self.config.dialect))
            )
            rows = self.warehouse.fetch_all(render_sql(query, self.config.dialect))
            if not rows:
                return "cast"  # nothing to match yet; look again next time
            value = rows[0][0]
            kinds[(entity, column)] = ("int" if isinstance(value, int) and not isinstance(value, bool)
                                       else "str" if isinstance(value, str) else "cast")
        return kinds[(entity, column)]

    def key_condition(self, entity: str, column: str, keys: list[str]) -> exp.Expression:
        """``column IN (keys)`` on the native column, so the warehouse can use its index or zone maps.

        Keys are text (the due query casts ids to text): they become integer
        literals for an integer column and string literals for a text one; for
        any other type the column is cast to text, which is always right but slow.
        """
        kind = self.key_kind(entity, column)
        if kind == "int" and all(_CANONICAL_INT.fullmatch(k) for k in keys):
            return exp.In(this=exp.column(column), expressions=[exp.Literal.number(int(k)) for k in keys])
        target = exp.column(column) if kind == "str" else exp.cast(exp.column(column), exp.DataType.build("VARCHAR"))
        return exp.In(this=target, expressions=[exp.Literal.string(k) for k in keys])

    def by_key(self, entity: str, id_column: str, keys: list[str]) -> dict[str, list[dict]]:
        """The rows of ``entity`` whose ``id_column`` is one of ``keys``, grouped by that key as text."""
        if entity not in self.config.sources or not keys:
            return {}
        grouped: dict[str, list[dict]] = {}
        for values in self.query(entity, self.key_condition(entity, id_column, keys)):
            grouped.setdefault(str(values[id_column]), []).append(values)
        return grouped
