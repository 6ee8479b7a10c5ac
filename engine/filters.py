"""Filter expressions -> whitelisted sqlglot ASTs over known attributes.

Audience filters in YAML are written in a small SQL expression language
("order_count = 1 AND email LIKE '%@example.com'"). They are parsed with
sqlglot and every node is checked against a whitelist: comparisons, boolean
logic, IN, BETWEEN, LIKE, IS NULL, arithmetic, literals, a handful of scalar
functions and columns that name a known attribute. Anything else (subqueries,
unknown functions, qualified columns, several statements) is refused, so a
filter can never become arbitrary SQL. Pure: no I/O.
"""
from __future__ import annotations

import difflib
from typing import Callable, Iterable

import sqlglot
from sqlglot import exp
from sqlglot.errors import ParseError, TokenError

from .errors import FilterError

ALLOWED_NODES: tuple[type[exp.Expression], ...] = (
    exp.And, exp.Or, exp.Not, exp.Paren,
    exp.EQ, exp.NEQ, exp.GT, exp.GTE, exp.LT, exp.LTE,
    exp.Is, exp.In, exp.Between, exp.Like, exp.ILike,
    exp.Add, exp.Sub, exp.Mul, exp.Div, exp.Neg,
    exp.Literal, exp.Boolean, exp.Null,
    exp.Column, exp.Identifier,
)

#: Scalar functions a filter may call, by sqlglot node type -> name shown to users.
ALLOWED_FUNCTIONS: dict[type[exp.Expression], str] = {
    exp.Lower: "lower",
    exp.Upper: "upper",
    exp.Coalesce: "coalesce",
    exp.Length: "length",
    exp.Abs: "abs",
}


def parse_filter(text: str, attributes: Iterable[str]) -> exp.Expression:
    """Parse ``text`` and check it against the whitelist and the known attributes.

    Returns the AST with bare (unqualified) columns; ``bind_filter`` later
    replaces them with the warehouse expressions.
    """
    known = sorted(set(attributes))
    try:
        statements = [s for s in sqlglot.parse(text) if s is not None]
    except (ParseError, TokenError) as exc:
        raise FilterError(
            f"filter does not parse: {_parse_problem(exc)}",
            fix="write a SQL-like condition, e.g. order_count = 1 AND email IS NOT NULL",
        ) from None
    if len(statements) != 1:
        raise FilterError(
            "a filter must be exactly one expression",
            fix="remove the ';' and everything after it",
        )
    tree = statements[0]
    for node in tree.walk():
        _check_node(node, known)
    return tree


def referenced_attributes(tree: exp.Expression) -> set[str]:
    return {column.name for column in tree.find_all(exp.Column)}


def bind_filter(tree: exp.Expression, resolve: Callable[[str], exp.Expression]) -> exp.Expression:
    """Replace every attribute column by ``resolve(name)`` (a copy; input untouched)."""

    def replace(node: exp.Expression) -> exp.Expression:
        if isinstance(node, exp.Column):
            return resolve(node.name)
        return node

    return tree.copy().transform(replace)


def _check_node(node: exp.Expression, known: list[str]) -> None:
    if isinstance(node, exp.Column):
        if node.table or node.args.get("db") or node.args.get("catalog"):
            raise FilterError(
                f"'{node.sql()}' is a qualified column; filters name attributes only",
                fix=f"write just the attribute name, e.g. {node.name}",
            )
        if node.name not in known:
            raise FilterError(
                f"unknown attribute '{node.name}'" + _did_you_mean(node.name, known),
                fix="use one of the known attributes: " + ", ".join(known)
                + " (extra customer columns can be mapped in engine.yaml sources.customers.columns)",
            )
        return
    if isinstance(node, ALLOWED_NODES):
        if isinstance(node, exp.Identifier) and not isinstance(node.parent, exp.Column):
            raise FilterError(f"'{node.sql()}' is not allowed here", fix="compare an attribute with a value")
        return
    if type(node) in ALLOWED_FUNCTIONS:
        return
    if isinstance(node, exp.Func):
        name = node.sql_name() if not isinstance(node, exp.Anonymous) else node.name
        raise FilterError(
            f"function '{name.lower()}' is not allowed in filters",
            fix="allowed functions: " + ", ".join(sorted(ALLOWED_FUNCTIONS.values())),
        )
    raise FilterError(
        f"'{node.sql()}' ({type(node).__name__}) is not allowed in filters",
        fix="use comparisons, AND/OR/NOT, IN, BETWEEN, LIKE, IS NULL, arithmetic and literals",
    )


def _did_you_mean(name: str, known: list[str]) -> str:
    close = difflib.get_close_matches(name, known, n=3, cutoff=0.6)
    return f" (did you mean {' or '.join(repr(c) for c in close)}?)" if close else ""


def _parse_problem(exc: Exception) -> str:
    errors = getattr(exc, "errors", None)
    if errors:
        first = errors[0]
        description = first.get("description", "syntax error")
        column = first.get("col")
        return f"{description} near column {column}" if column else description
    return str(exc).splitlines()[0]
