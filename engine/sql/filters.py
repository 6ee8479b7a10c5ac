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
import re
from typing import Callable, Iterable, Mapping

import sqlglot
from sqlglot import exp
from sqlglot.errors import ParseError, TokenError
from sqlglot.tokens import TokenType

from engine.errors import FilterError
from engine.sql import responses

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


#: Engine functions: name -> (argument kind, what it means). They are bound by the
#: compiler (days_ago(3) becomes a timestamp literal computed in Python,
#: has_tag('vip') an EXISTS over the engine's tag table).
ENGINE_FUNCTIONS: dict[str, tuple[str, str]] = {
    "days_ago": ("number", "the instant N days before now"),
    "hours_ago": ("number", "the instant N hours before now"),
    "has_tag": ("string", "the customer has this engine tag (set by a campaign action)"),
    "bought_category": ("string", "the customer ordered an item of this category"),
    "trigger_has_category": ("string", "the triggering order has an item of this category"),
    **responses.FUNCTIONS,  # the customer's responses: emails_opened(90), last_engaged_at('<kind>'), ...
}
#: The prefix of the trigger's own properties (``trigger.total``): the one qualified name a filter may use.
TRIGGER_PREFIX = "trigger."


#: The largest argument of the time functions (a hundred years): more overflows the date arithmetic.
ENGINE_FUNCTION_MAXIMUM = {"days_ago": 36_600, "hours_ago": 878_400,
                           **{name: responses.MAXIMUM_DAYS for name in responses.WINDOW_COUNTS}}
#: Longest filter, in characters; deepest nesting of brackets and NOT / unary minus signs.
MAX_FILTER_CHARS = 4000
MAX_FILTER_NESTING = 16
_PREFIX_TOKENS = {TokenType.NOT, TokenType.DASH, TokenType.PLUS}


def _check_engine_function(node: exp.Anonymous, text: str) -> None:
    name = node.name.lower()
    kind, meaning = ENGINE_FUNCTIONS[name]
    args = node.expressions
    ok = len(args) == 1 and isinstance(args[0], exp.Literal) and args[0].is_string == (kind == "string")
    if not ok:
        fix = f"write e.g. {name}(30)" if kind == "number" else f"write e.g. {name}('vip')"
        if kind == "string" and len(args) == 1 and isinstance(args[0], exp.Column) and not args[0].table:
            fix = f"write {name}('{args[0].name}'), in quotes"  # has_tag(vip), last_engaged_at(sms)
        elif name in responses.KIND_ARGUMENT:
            fix = responses.kind_fix(name)
        raise FilterError(f"{name}() takes one {kind} literal ({meaning})", fix=fix,
                          offset=source_offset(node, text, keyword=name))
    problem = responses.unknown_kind(name, str(args[0].this))
    if problem is not None:
        raise FilterError(problem, fix=responses.kind_fix(name), offset=source_offset(args[0], text))
    maximum = ENGINE_FUNCTION_MAXIMUM.get(name)
    if maximum is not None:
        try:
            value = float(args[0].this)
        except ValueError:  # pragma: no cover - sqlglot only makes number literals of numbers
            value = float("inf")
        if not value <= maximum:  # also catches inf and nan
            raise FilterError(f"{name}({args[0].this}) is beyond the largest argument {name}() takes, {maximum:,}",
                              fix=f"write at most {name}({maximum}) (a hundred years)", offset=source_offset(args[0], text))


#: Typographic quotes (word processors, chat apps) look like SQL quotes but are letters to a parser.
_TYPOGRAPHIC_QUOTES = re.compile("[\u2018\u2019\u201a\u201b\u201c\u201d\u201e\u201f\u2032\u2033\u00b4\uff07\uff02]")


def _check_quotes(text: str) -> None:
    found = _TYPOGRAPHIC_QUOTES.search(text)
    if found:
        raise FilterError(f"the filter contains the typographic quote {found.group()} (U+{ord(found.group()):04X}), "
                          "which SQL does not read as a quote",
                          fix="write strings in straight single quotes, e.g. email = 'a@shop.example'", offset=found.start())


def _check_size(text: str) -> None:
    """Refuse a filter too long or nested too deep for the parser (it recurses per level)."""
    if len(text) > MAX_FILTER_CHARS:
        raise FilterError(f"the filter is {len(text):,} characters long, more than {MAX_FILTER_CHARS:,}",
                          fix="shorten it: a filter is a condition of a line or two; use IN (...) instead of long OR chains",
                          offset=MAX_FILTER_CHARS)
    depth, prefixes = 0, 0
    for token in sqlglot.tokenize(text):
        if token.token_type == TokenType.L_PAREN:
            depth += 1
        elif token.token_type == TokenType.R_PAREN:
            depth -= 1
        prefixes = prefixes + 1 if token.token_type in _PREFIX_TOKENS else 0
        if depth + prefixes > MAX_FILTER_NESTING:
            raise FilterError(f"the filter is nested more than {MAX_FILTER_NESTING} levels deep (brackets, NOT, minus signs)",
                              fix="simplify it: remove redundant brackets and double negations", offset=token.start)


def parse_filter(text: str, attributes: Iterable[str], unmapped: Mapping[str, str] | None = None) -> exp.Expression:
    """Parse ``text`` and check it against the whitelist and the known attributes.

    Returns the AST with bare (unqualified) columns, or ``trigger.<property>``
    ones for the trigger's own properties (known as "trigger.<property>");
    ``bind_filter`` later replaces them with the warehouse expressions. A
    ``FilterError`` carries the offset of the offending text in ``text`` where
    sqlglot reports it. ``unmapped``: trigger properties the trigger has but the
    mapping lacks -> the "entity.column" to map (for the error's fix).
    """
    known = sorted(set(attributes))
    unmapped = unmapped or {}
    try:
        _check_quotes(text)
        _check_size(text)
        statements = [s for s in sqlglot.parse(text) if s is not None]
    except RecursionError:  # a safety net behind _check_size
        raise FilterError("the filter is nested too deeply to read",
                          fix="simplify it: remove redundant brackets and double negations") from None
    except (ParseError, TokenError) as exc:
        _check_day_suffix(text)
        problem, offset = _parse_problem(exc, text)
        raise FilterError(
            f"filter does not parse: {problem}",
            fix="write a SQL-like condition, e.g. order_count = 1 AND email IS NOT NULL",
            offset=offset,
        ) from None
    if len(statements) != 1:
        semicolons = [t.start for t in sqlglot.tokenize(text) if t.token_type == TokenType.SEMICOLON]
        raise FilterError(
            "a filter must be exactly one expression",
            fix="remove the ';' and everything after it",
            offset=semicolons[0] if semicolons else None,
        )
    tree = statements[0]
    query = tree if isinstance(tree, exp.Query) else tree.find(exp.Query)
    if query is not None:
        raise FilterError(
            "subqueries (SELECT ...) are not allowed in filters",
            fix="filter on the customer's attributes (e.g. order_count, total_spent); "
            "map extra customer columns in engine.yaml sources.customers.columns",
            offset=source_offset(query, text, keyword="select"),
        )
    for node in tree.walk():
        _check_node(node, known, text, unmapped)
        node.comments = None  # sqlglot would carry -- and /* */ comments into the SQL: nothing but the whitelist goes there
    return tree


def attribute_name(column: exp.Column) -> str:
    """The attribute a checked filter's column names: ``total_spent``, or ``trigger.total``."""
    return TRIGGER_PREFIX + column.name if column.table else column.name


def referenced_attributes(tree: exp.Expression) -> set[str]:
    return {attribute_name(column) for column in tree.find_all(exp.Column)}


def referenced_functions(tree: exp.Expression) -> set[str]:
    """The engine functions (has_tag, days_ago, ...) a filter calls."""
    return {node.name.lower() for node in tree.find_all(exp.Anonymous)}


def bind_filter(
    tree: exp.Expression,
    resolve: Callable[[str], exp.Expression],
    call: Callable[[str, exp.Literal], exp.Expression] | None = None,
) -> exp.Expression:
    """Replace every attribute column by ``resolve(name)`` and every engine function
    by ``call(name, argument)`` (a copy; the input is untouched)."""

    def replace(node: exp.Expression) -> exp.Expression:
        if isinstance(node, exp.Column):
            return resolve(attribute_name(node))
        if isinstance(node, exp.Anonymous) and call is not None:
            return call(node.name.lower(), node.expressions[0])
        return node

    return tree.copy().transform(replace)


def _check_trigger_property(node: exp.Column, known: list[str], text: str, unmapped: Mapping[str, str]) -> None:
    name = TRIGGER_PREFIX + node.name
    properties = [k for k in known if k.startswith(TRIGGER_PREFIX)]
    offset = source_offset(node, text)
    if name == TRIGGER_PREFIX + "categories" and (name in known or name in unmapped):
        raise FilterError("trigger.categories is a list of the order's item categories, not a value",
                          fix="ask for one category with trigger_has_category('shoes')", offset=offset)
    if name in unmapped:
        entity, _, column = unmapped[name].partition(".")
        where = f"sources.{entity}.columns.{column}" if column else f"sources.{entity}"
        raise FilterError(f"{name} needs {unmapped[name]}, which engine.yaml does not map",
                          fix=f"map it in engine.yaml ({where}), or remove {name} from the filter", offset=offset)
    if name not in known:
        shown = name if len(name) <= 60 else name[:60] + "..."
        if not properties:
            raise FilterError(f"'{shown}': this filter has no trigger properties",
                              fix="trigger.* names the triggering order, checkout or event (e.g. trigger.total > 50) "
                                  "in the audiences of a campaign with such a trigger; segments have none",
                              offset=offset)
        close = difflib.get_close_matches(node.name[:100], [p[len(TRIGGER_PREFIX):] for p in properties], n=2, cutoff=0.75)
        hint = f" (did you mean {' or '.join(repr(TRIGGER_PREFIX + c) for c in close)}?)" if close else ""
        raise FilterError(f"the trigger has no property '{shown}'" + hint,
                          fix="use one of: " + ", ".join(p for p in properties if p != TRIGGER_PREFIX + "categories")
                          + " (a mapped column of the order, checkout or event becomes one: engine.yaml sources)",
                          offset=offset)


def _check_node(node: exp.Expression, known: list[str], text: str, unmapped: Mapping[str, str] | None = None) -> None:
    if isinstance(node, exp.Column):
        if node.table == "trigger" and not node.args.get("db") and not node.args.get("catalog"):
            _check_trigger_property(node, known, text, unmapped or {})
            return
        if node.table or node.args.get("db") or node.args.get("catalog"):
            raise FilterError(
                f"'{node.sql()}' is a qualified column; filters name attributes only",
                fix=f"write trigger.{node.name} (the triggering order's, checkout's or event's own property)"
                if TRIGGER_PREFIX + node.name in known else f"write just the attribute name, e.g. {node.name}",
                offset=source_offset(node, text),
            )
        if node.name not in known:
            shown = node.name if len(node.name) <= 60 else node.name[:60] + "..."
            hint = _did_you_mean(node.name[:100], known)
            if TRIGGER_PREFIX + node.name in known:
                hint = f" (did you mean 'trigger.{node.name}', the trigger's own property?)"
            raise FilterError(
                f"unknown attribute '{shown}'" + hint,
                fix="use one of the known attributes: " + ", ".join(known)
                + " (extra customer columns can be mapped in engine.yaml sources.customers.columns)",
                offset=source_offset(node, text),
            )
        return
    if isinstance(node, ALLOWED_NODES):
        if isinstance(node, exp.Identifier) and not isinstance(node.parent, exp.Column):
            raise FilterError(f"'{node.sql()}' is not allowed here", fix="compare an attribute with a value",
                              offset=source_offset(node, text))
        return
    if type(node) in ALLOWED_FUNCTIONS:
        return
    if isinstance(node, exp.Anonymous) and node.name.lower() in ENGINE_FUNCTIONS:
        _check_engine_function(node, text)
        if node.name.lower() == "trigger_has_category":
            categories = TRIGGER_PREFIX + "categories"
            if categories in (unmapped or {}):
                raise FilterError(f"trigger_has_category() needs {unmapped[categories]}, which engine.yaml does not map",
                                  fix="map it in engine.yaml (sources.order_items.columns.category)",
                                  offset=source_offset(node, text, keyword=node.name))
            if categories not in known:
                raise FilterError("trigger_has_category() asks about the triggering order's items: this filter has no "
                                  "order trigger", fix="use it in a campaign with an order trigger, or bought_category('...') "
                                  "for any order of the customer", offset=source_offset(node, text, keyword=node.name))
        return
    if isinstance(node, exp.Func):
        name = node.sql_name() if not isinstance(node, exp.Anonymous) else node.name
        offset = source_offset(node, text, keyword=name)
        written = re.match(r"\w+", text[offset:]) if "start" in node.meta else None
        raise FilterError(  # the name as written: sqlglot normalises e.g. random() to RAND
            f"function '{(written.group() if written else name).lower()}' is not allowed in filters",
            fix="allowed functions: " + ", ".join(sorted([*ALLOWED_FUNCTIONS.values(), *ENGINE_FUNCTIONS])),
            offset=offset,
        )
    raise FilterError(
        f"'{node.sql()}' ({type(node).__name__}) is not allowed in filters",
        fix="use comparisons, AND/OR/NOT, IN, BETWEEN, LIKE, IS NULL, arithmetic and literals",
        offset=source_offset(node, text),
    )


def source_offset(node: exp.Expression, text: str, keyword: str | None = None) -> int | None:
    """Where ``node`` starts in ``text``: sqlglot records offsets on tokens such as
    identifiers, literals and function names; other nodes start at (or, with a
    leading ``keyword`` like SELECT or CAST, just before) their first such token."""
    if "start" in node.meta:
        return node.meta["start"]
    first = min((n.meta["start"] for n in node.walk() if "start" in n.meta), default=None)
    if keyword and first is not None:
        words = list(re.finditer(rf"\b{re.escape(keyword)}\b", text[:first], re.IGNORECASE))
        if words:
            return words[-1].start()
    return first


def _did_you_mean(name: str, known: list[str]) -> str:
    close = difflib.get_close_matches(name, known, n=3, cutoff=0.6)
    return f" (did you mean {' or '.join(repr(c) for c in close)}?)" if close else ""


_DAY_SUFFIX = re.compile(r"\b(\w+)\(\s*(\d+(?:\.\d+)?)\s*d\s*\)", re.IGNORECASE)


def _check_day_suffix(text: str) -> None:
    """``emails_opened(90d)`` (as durations are written elsewhere): the functions take a plain number of days."""
    for found in _DAY_SUFFIX.finditer(text):
        name = found.group(1).lower()
        if ENGINE_FUNCTIONS.get(name, ("",))[0] == "number":
            raise FilterError(f"{found.group()}: {name}() takes a plain number, without 'd' ({ENGINE_FUNCTIONS[name][1]})",
                              fix=f"write {name}({found.group(2)})", offset=found.start())


def _parse_problem(exc: Exception, text: str) -> tuple[str, int | None]:
    """A readable description of a sqlglot parse error and its offset in ``text``."""
    errors = getattr(exc, "errors", None)
    if not errors:  # TokenError: sqlglot gives no position
        return "a quote or comment is not closed", None
    first = errors[0]
    description = re.sub(r"<class '(?:[\w.]+\.)?(\w+)'>", r"\1", first.get("description") or "syntax error")
    highlight, line, column = first.get("highlight") or "", first.get("line"), first.get("col")
    if not line or not column:
        return description, None
    # sqlglot's line/col are 1-based and point at the last character of the highlighted token
    line_start = sum(len(part) + 1 for part in text.split("\n")[: line - 1])
    offset = max(0, line_start + column - max(len(highlight), 1))
    return (f"{description} at '{highlight}'" if highlight else description), offset
