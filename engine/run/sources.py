"""Rows of the shop's sources by key, for a whole batch in one query: a trigger's order and its
items, a day's events, the attributes of customers due for a retry.

Owns the ``IN (keys)`` condition on the native column type (learnt from one sample value and
remembered in the ``key_kinds`` the caller keeps; a source with no value yet is asked again by the next
pass's reader, not at every batch). Where the dialect binds a list as one array
parameter (``Dialect.key_array_conditions``: DuckDB's LIST, PostgreSQL's array) a lookup by key is one statement
text per source, column, type and condition (an event's type), rendered once and reused with the keys
as that parameter, and a statement another module builds (the product lists) gets the keys as such a
parameter too (``key_filter``): no sqlglot rendering of a thousand literals per batch. Must not write, decide anything about a
message, or know which stage asks.
"""
from __future__ import annotations

import re

import sqlglot
from sqlglot import exp

from engine.model import ProjectConfig
from engine.sql.compile import render_sql, source_select
from engine.state.warehouse import Database, as_dicts

_CANONICAL_INT = re.compile(r"-?(0|[1-9][0-9]*)")  # what CAST(integer AS VARCHAR) gives
_BIGINT = (-2**63, 2**63 - 1)  # what a BIGINT[] parameter holds


class SourceRows:
    """Reads ``config``'s sources from ``warehouse``; ``key_kinds`` ((entity, column) -> "int" |
    "str" | "cast") is the caller's, so what it learns outlives one pass."""

    def __init__(self, warehouse: Database, config: ProjectConfig, key_kinds: dict[tuple[str, str], str]):
        self.warehouse = warehouse
        self.config = config
        self.key_kinds = key_kinds
        #: (entity, column) found without a value by this reader (one pass): "cast" until the next pass's reader
        self._no_value: set[tuple[str, str]] = set()
        self._by_key_sql: dict[tuple[str, str, str, str | None], str] = {}  # (entity, column, element type, condition) -> statement
        #: statements other modules build over these keys' parameters, kept for the pass (run/lists.py)
        self.statements: dict[tuple, tuple[str, tuple]] = {}

    def query(self, entity: str, condition: exp.Expression) -> list[dict]:
        query = (  # copy=False: the condition may hold a thousand keys, copying them costs more than the query
            exp.select("*").from_("src").where(condition, copy=False)
            .with_("src", as_=source_select(self.config.sources[entity], self.config.dialect), copy=False)
        )
        return as_dicts(self.warehouse.fetch_all(render_sql(query, self.config.dialect)))

    def key_kind(self, entity: str, column: str) -> str:
        """How ``column`` of ``entity`` holds its values: "int", "str", or "cast" (anything else,
        or unknown yet), from one sample value; remembered in ``key_kinds``."""
        kinds = self.key_kinds
        if (entity, column) not in kinds:
            if (entity, column) in self._no_value:
                return "cast"
            query = (
                exp.select(exp.column(column)).from_("src").where(exp.column(column).is_(exp.null()).not_()).limit(1)
                .with_("src", as_=source_select(self.config.sources[entity], self.config.dialect))
            )
            rows = self.warehouse.fetch_all(render_sql(query, self.config.dialect))
            if not rows:  # nothing to match yet: "cast" matches any key (the column cast to text); the next
                self._no_value.add((entity, column))  # pass looks again (an empty push_subscriptions source
                return "cast"  # was asked at every batch of a plan: 21 queries, 0.05-0.07 s CPU at 1M orders)
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
        for values in self.rows_by_keys(entity, id_column, keys):
            grouped.setdefault(str(values[id_column]), []).append(values)
        return grouped

    def rows_by_keys(self, entity: str, column: str, keys: list[str], where: exp.Expression | None = None) -> list[dict]:
        """The rows of ``entity`` that match ``where`` (a condition without keys, e.g. an event's type) and
        whose ``column`` is one of ``keys``: where the dialect binds a list as one array parameter, one
        statement text per source, column, key type and condition, with the keys as that parameter."""
        bound = self.bound_keys(entity, column, keys)
        if bound is not None:
            statement = self._by_key_statement(entity, column, bound[0], where)
            return as_dicts(self.warehouse.fetch_all(statement, self.driver_parameters([bound[1]])))
        condition = self.key_condition(entity, column, keys)
        return self.query(entity, condition if where is None else exp.and_(where, condition, copy=False))

    def key_filter(self, entity: str, column: str, keys: list[str], parameters: list) -> exp.Expression:
        """``column IN (keys)`` for a statement the caller builds: where the dialect binds a list as one
        array parameter, the dialect's condition on it (``column IN (SELECT unnest(CAST($n AS type[])))``,
        ``column = ANY(:keysn)``) with the keys appended to ``parameters`` (n their position there), else
        ``key_condition``'s literal list. ``driver_parameters(parameters)`` is what the driver takes."""
        bound = self.bound_keys(entity, column, keys)
        if bound is None:
            return self.key_condition(entity, column, keys)
        parameters.append(bound[1])
        placeholder = self._placeholder(len(parameters))
        # parsed with a column in the placeholder's place (sqlglot would write :name as %(name)s for
        # PostgreSQL), which becomes the placeholder's text, rendered as it is
        condition = sqlglot.parse_one(self._bound_condition(column, bound[0], "engine_bound_keys"),
                                      read=self.config.dialect)
        return condition.transform(lambda node: exp.var(placeholder) if isinstance(node, exp.Column)
                                   and node.name == "engine_bound_keys" else node)

    def driver_parameters(self, arrays: list) -> tuple | dict:
        """The values of the array placeholders ``key_filter`` wrote, in their order, as the driver
        takes them: positional (``$n``) or by name (``:keysn``)."""
        if self.warehouse.dialect.array_parameters == "named":
            return {f"keys{n}": values for n, values in enumerate(arrays, 1)}
        return tuple(arrays)

    def _placeholder(self, position: int) -> str:
        return f":keys{position}" if self.warehouse.dialect.array_parameters == "named" else f"${position}"

    def bound_keys(self, entity: str, column: str, keys: list[str]) -> tuple[str, list] | None:
        """``keys`` as one array parameter with its element type ("BIGINT", "VARCHAR", or "CAST": text
        against the column cast to text), matched as ``key_condition`` matches them: integers for an integer
        column (when every key is one a BIGINT holds), else text; None where the dialect binds no array
        of keys (``Dialect.key_array_conditions``) or the keys do not fit one (the literal ``IN`` list then)."""
        if not self.warehouse.dialect.key_array_conditions or not keys:
            return None
        kind = self.key_kind(entity, column)
        if kind == "int" and all(_CANONICAL_INT.fullmatch(k) for k in keys):
            numbers = [int(k) for k in keys]
            if _BIGINT[0] <= min(numbers) and max(numbers) <= _BIGINT[1]:
                return "BIGINT", numbers
            return None  # the literal IN list compares them as the column's own type
        return ("VARCHAR" if kind == "str" else "CAST"), list(keys)

    def _by_key_statement(self, entity: str, column: str, element: str, where: exp.Expression | None = None) -> str:
        """``SELECT * FROM src WHERE [where AND] column IN (the array parameter $1)``, rendered once per
        source, column, element type and condition; "CAST" compares the column cast to text, as
        ``key_condition``."""
        dialect = self.config.dialect
        extra = render_sql(where, dialect) if where is not None else None
        key = (entity, column, element, extra)
        cached = self._by_key_sql.get(key)
        if cached is None:
            source = render_sql(source_select(self.config.sources[entity], dialect), dialect)
            condition = self._bound_condition(column, element, self._placeholder(1))
            cached = self._by_key_sql[key] = (
                f"WITH src AS ({source}) SELECT * FROM src WHERE {f'{extra} AND ' if extra else ''}{condition}")
        return cached

    def _bound_condition(self, column: str, element: str, parameter: str) -> str:
        """The dialect's condition: ``column`` is one of the array ``parameter``'s ``element``s ("CAST":
        the column cast to text)."""
        for name, condition in self.warehouse.dialect.key_array_conditions:
            if name == element:
                return condition.format(column=exp.column(column).sql(dialect=self.config.dialect), parameter=parameter)
        raise ValueError(f"no key array condition for {element}")
