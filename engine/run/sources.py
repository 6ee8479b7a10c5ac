"""Rows of the shop's sources by key, for a whole batch in one query: a trigger's order and its
items, a day's events, the attributes of customers due for a retry.

Owns the ``IN (keys)`` condition on the native column type (learnt from one sample value and
remembered in the ``key_kinds`` the caller keeps). Where the dialect binds a list as one array
parameter (DuckDB, ``Dialect.array_parameters == "positional"``) a lookup by key is one statement
text per source, column and type, rendered once and reused with the keys as that parameter: no
sqlglot rendering of a thousand literals per batch. Must not write, decide anything about a
message, or know which stage asks.
"""
from __future__ import annotations

import re

from sqlglot import exp

from engine.model import ProjectConfig
from engine.sql.compile import render_sql, source_select
from engine.state.warehouse import Database

_CANONICAL_INT = re.compile(r"-?(0|[1-9][0-9]*)")  # what CAST(integer AS VARCHAR) gives
_BIGINT = (-2**63, 2**63 - 1)  # what a BIGINT[] parameter holds


class SourceRows:
    """Reads ``config``'s sources from ``warehouse``; ``key_kinds`` ((entity, column) -> "int" |
    "str" | "cast") is the caller's, so what it learns outlives one pass."""

    def __init__(self, warehouse: Database, config: ProjectConfig, key_kinds: dict[tuple[str, str], str]):
        self.warehouse = warehouse
        self.config = config
        self.key_kinds = key_kinds
        self._by_key_sql: dict[tuple[str, str, str], str] = {}  # (entity, column, element type) -> statement

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
        bound = self._bound_keys(entity, id_column, keys) if self.warehouse.dialect.array_parameters == "positional" else None
        if bound is not None:
            rows = [dict(row._mapping) for row in self.warehouse.fetch_all(self._by_key_statement(entity, id_column, bound[0]),
                                                                            (bound[1],))]
        else:
            rows = self.query(entity, self.key_condition(entity, id_column, keys))
        for values in rows:
            grouped.setdefault(str(values[id_column]), []).append(values)
        return grouped

    def _bound_keys(self, entity: str, column: str, keys: list[str]) -> tuple[str, list] | None:
        """``keys`` as one array parameter, with its element type, matched as ``key_condition`` matches
        them: integers for an integer column (when every key is one a BIGINT holds), else text."""
        kind = self.key_kind(entity, column)
        if kind == "int" and all(_CANONICAL_INT.fullmatch(k) for k in keys):
            numbers = [int(k) for k in keys]
            if _BIGINT[0] <= min(numbers) and max(numbers) <= _BIGINT[1]:
                return "BIGINT", numbers
            return None  # the literal IN list compares them as the column's own type
        return ("VARCHAR" if kind == "str" else "CAST"), list(keys)

    def _by_key_statement(self, entity: str, column: str, element: str) -> str:
        """``SELECT * FROM src WHERE column IN (the array parameter $1)``, rendered once per source,
        column and element type; "CAST" compares the column cast to text, as ``key_condition``."""
        key = (entity, column, element)
        cached = self._by_key_sql.get(key)
        if cached is None:
            dialect = self.config.dialect
            target = exp.column(column).sql(dialect=dialect)
            if element == "CAST":
                target, element = f"CAST({target} AS VARCHAR)", "VARCHAR"
            source = render_sql(source_select(self.config.sources[entity], dialect), dialect)
            cached = self._by_key_sql[key] = (
                f"WITH src AS ({source}) SELECT * FROM src WHERE {target} IN (SELECT unnest(CAST($1 AS {element}[])))")
        return cached
