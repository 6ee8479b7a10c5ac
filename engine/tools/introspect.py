"""``engine validate --check-warehouse``: does the warehouse hold what engine.yaml maps?

Connects with SQLAlchemy and, for every mapped entity, reads what the source
really has: a ``table:`` is probed with ``SELECT * FROM <table> WHERE 1 = 0``
(the exact name the compiled SQL uses, schema-qualified names included) and
its declared column types read with ``sqlalchemy.inspect``; a ``query:`` is
run wrapped as ``SELECT * FROM (<query>) AS src WHERE 1 = 0`` and its result
columns read. Then every mapped column (and every required column left at its
default name) must exist, and the source's mapping as the engine compiles it
must run; columns the engine compares with instants must be timestamps or
dates, totals, prices and quantities numbers, and every customer's time zone
value a zone the IANA database knows (an unknown one is reported with how many
customers have it and a few of their ids). The customer columns' real
kinds then type-check every campaign filter again (``filter_types``): an
extra attribute such as ``city`` is text to the warehouse, so ``city > 5``
is reported at its place in the campaign file.

Everything found is an ``Issue`` at the mapping entry's line and column in
engine.yaml (a missing column inside an expression: at that word), with a
did-you-mean where a close name exists. SQLite declares no real types
(timestamps are text there by design), so on SQLite only names are checked.
An unreachable database is a ``WarehouseError``: one line, exit 1.
"""
from __future__ import annotations

import difflib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

import sqlalchemy as sa
import sqlglot
from sqlglot import exp
from sqlglot.errors import ParseError, TokenError

from engine.run.coupons import CouponPoolError, read_pool_table
from engine.decide import known_zone
from engine.tools.catalogue_check import catalogue_issues
from engine.sql.compile import render_sql, source_select
from engine.spec.config import CONFIG_FILE, database_url, load_config
from engine.errors import FilterError, Issue
from engine.sql.filter_types import attribute_kinds, check_types, filter_attributes
from engine.sql.filters import parse_filter
from engine.spec.load import Document, display_path, load_yaml_file
from engine.model import EntitySource, ProjectConfig
from engine.spec.validate import campaign_files
from engine.state.warehouse import Database, masked

#: canonical column -> the kind of value the engine needs in it
EXPECTED_KIND = {
    "created_at": "instant", "completed_at": "instant", "occurred_at": "instant",
    "unsubscribed_at": "instant", "delivery_date": "instant", "birthday": "instant",
    "total": "number", "price": "number", "quantity": "number", "in_stock": "boolean",
    "valid_from": "instant", "valid_to": "instant",
    "updated_at": "instant",  # the incremental pass's change column (model.CHANGE_COLUMN)
}
#: Promotions shown as examples of a problem (without a title, for a campaign or step that does not exist).
SHOWN_PROMOTIONS = 5
_KIND_WORDS = {"instant": "a timestamp or date", "number": "a number", "text": "text", "boolean": "a boolean"}
_CAST_TO = {"instant": "TIMESTAMP", "number": "DECIMAL(12, 2)", "quantity": "INTEGER", "boolean": "BOOLEAN"}

_INSTANT = {"DATE", "DATETIME", "SMALLDATETIME", "DATETIMEOFFSET"}
_TEXT = {"VARCHAR", "CHAR", "CHARACTER", "TEXT", "STRING", "NVARCHAR", "NCHAR", "CLOB", "BPCHAR", "CITEXT",
         "NTEXT", "TINYTEXT", "MEDIUMTEXT", "LONGTEXT"}
_NUMBER = {"INT", "INTEGER", "BIGINT", "SMALLINT", "TINYINT", "MEDIUMINT", "HUGEINT", "UBIGINT", "UINTEGER",
           "USMALLINT", "UTINYINT", "UHUGEINT", "NUMERIC", "DECIMAL", "NUMBER", "FLOAT", "DOUBLE", "REAL",
           "MONEY", "BYTEINT"}
_BOOLEAN = {"BOOLEAN", "BOOL"}
#: Unknown time zone values: how many are shown by name, how many looked up for example customers,
#: how many example customer ids are shown.
SHOWN_ZONE_VALUES = 5
MAX_UNKNOWN_ZONES_QUERIED = 100
SHOWN_CUSTOMERS = 5


def type_kind(type_name: str | None) -> str | None:
    """'instant', 'text', 'number', 'boolean' or None (unknown: not checked) of a SQL type name."""
    if not type_name:
        return None
    match = re.match(r"\s*([A-Za-z]+)", type_name)
    if not match:
        return None
    base = match.group(1).upper()
    if base in _INSTANT or base.startswith("TIMESTAMP"):
        return "instant"
    if base in _TEXT:
        return "text"
    if base in _NUMBER:
        return "number"
    if base in _BOOLEAN:
        return "boolean"
    return None


@dataclass
class _Relation:
    """What a table or query really has: lower-case name -> (name, type name or None)."""

    label: str
    columns: dict[str, tuple[str, str | None]]


def warehouse_issues(config: ProjectConfig, paths: Iterable[str] | None = None) -> list[Issue]:
    """Every mismatch between engine.yaml's source mapping and the warehouse.

    Raises ``WarehouseError`` (or ``ConfigError`` for an unset variable in the
    URL) when the database cannot be reached at all.
    """
    doc = load_yaml_file(config.root / CONFIG_FILE, config.file)
    db = Database(database_url(config, "warehouse"), must_exist=True, duckdb_settings=config.duckdb_settings,
                  statement_timeout=config.statement_timeout)
    try:
        db.check()
        checker = _Checker(config, doc, db)
        issues = [issue for entity, source in config.sources.items() for issue in checker.source(entity, source)]
        if checker.customer_kinds:
            issues += filter_issues(config, campaign_files(config.root, paths), checker.customer_kinds)
        for pool in config.coupon_pools.values():  # a pool's table: there, and no empty or duplicate code
            if pool.table is not None:
                try:
                    read_pool_table(db, pool, config.dialect)
                except CouponPoolError as exc:
                    issues.append(doc.issue(("coupons", pool.name, "table"), str(exc)))
        if "promotions" in config.sources and not any(i.path.startswith("sources.promotions") for i in issues):
            issues += checker.promotion_rows(config.sources["promotions"], _campaign_steps(campaign_files(config.root)))
        return issues
    finally:
        db.dispose()


def check_warehouse(root: Path | str, paths: Iterable[str] | None = None) -> list[Issue]:
    """``warehouse_issues`` of the project in ``root`` (campaign files ``paths``, default campaigns.d/);
    none when engine.yaml itself has errors (``engine validate`` reports those, and the mapping is not known then)."""
    config, issues = load_config(Path(root).resolve())
    if config is None or any(i.severity == "error" for i in issues):
        return []
    return warehouse_issues(config, paths)


def filter_issues(config: ProjectConfig, files: list[Path], customer_kinds: dict[str, str]) -> list[Issue]:
    """Filters that only the warehouse's column kinds show wrong (those wrong by the model's kinds alone
    are reported by ``engine validate`` already)."""

    attributes = filter_attributes(config)
    known, real = attribute_kinds(config), attribute_kinds(config, customer_kinds)
    issues = []
    for path in files:
        doc = load_yaml_file(path, display_path(path))
        for where, text in _filters(doc.data):
            try:
                tree = parse_filter(text, attributes)
                check_types(tree, known, text)
            except FilterError:
                continue
            try:
                check_types(tree, real, text)
            except FilterError as exc:
                issues.append(doc.issue(where, exc.message + " (by the column types in the warehouse)", fix=exc.fix,
                                        position=doc.value_position(where, exc.offset)))
    return issues


def _campaign_steps(files: list[Path]) -> dict[str, list[str]]:
    """campaign name -> its step ids, as the campaign files say (an unreadable file adds nothing:
    engine validate reports it)."""
    steps: dict[str, list[str]] = {}
    for path in files:
        data = load_yaml_file(path, display_path(path)).data
        if isinstance(data, dict) and isinstance(data.get("name"), str):
            raw = data.get("steps") if isinstance(data.get("steps"), list) else []
            steps[data["name"]] = [s["id"] for s in raw if isinstance(s, dict) and isinstance(s.get("id"), str)]
    return steps


def _filters(data) -> Iterator[tuple[tuple, str]]:
    """(document path, text) of every filter of a campaign file's data."""
    if not isinstance(data, dict):
        return
    if isinstance(data.get("audience"), str):
        yield ("audience",), data["audience"]
    for index, step in enumerate(data.get("steps") if isinstance(data.get("steps"), list) else []):
        if not isinstance(step, dict):
            continue
        if isinstance(step.get("audience"), str):
            yield ("steps", index, "audience"), step["audience"]
        for v_index, variant in enumerate(step.get("variants") if isinstance(step.get("variants"), list) else []):
            if isinstance(variant, dict) and isinstance(variant.get("audience"), str):
                yield ("steps", index, "variants", v_index, "audience"), variant["audience"]


def _examples(ids: list[str]) -> str:
    shown = ", ".join(ids[:SHOWN_PROMOTIONS])
    return ("promotion " if len(ids) == 1 else "promotions ") + shown + (f" and {len(ids) - SHOWN_PROMOTIONS} more"
                                                                            if len(ids) > SHOWN_PROMOTIONS else "")


def _first_line(exc: Exception) -> str:
    return str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]


def _did_you_mean(name: str, candidates: list[str]) -> str:
    by_lower = {c.lower(): c for c in candidates}
    close = difflib.get_close_matches(name.lower(), list(by_lower), n=1, cutoff=0.6)
    return f" (did you mean '{by_lower[close[0]]}'?)" if close else ""


class _Checker:
    def __init__(self, config: ProjectConfig, doc: Document, db: Database):
        self.config = config
        self.doc = doc
        self.db = db
        self.dialect = config.dialect
        self.inspector = sa.inspect(db.engine)
        self.where = masked(db.url)
        #: mapped customer column -> its kind in the warehouse (filled by ``source``; empty on SQLite)
        self.customer_kinds: dict[str, str] = {}

    # --- one entity ------------------------------------------------------------

    def source(self, entity: str, source: EntitySource) -> list[Issue]:
        at = ("sources", entity)
        if source.table is not None:
            relation = self._table(source.table)
            if relation is None:
                return [self._missing_table(entity, source.table)]
        else:
            relation, error = self._query(source.query or "", f"the result of the query of sources.{entity}")
            if relation is None:
                return [self.doc.issue(at + ("query",), f"the query of source '{entity}' fails on the warehouse: {error}",
                                       fix="run the query in the warehouse and fix it; it must be one SELECT")]
        listed = set((self.doc.data or {}).get("sources", {}).get(entity, {}).get("columns", {}) or {})
        issues: list[Issue] = []
        for name, expression in source.columns.items():
            issues += self._references(entity, name, expression, name in listed, relation)
        if issues:
            return issues
        # the mapping as the engine compiles it must run, and tells the type of every column
        mapped, error = self._probe(render_sql(exp.select("*").from_(source_select(source, self.dialect).subquery("mapped"))
                                               .where("1 = 0"), self.dialect))
        if mapped is None:
            return [self.doc.issue(at, f"the column mapping of source '{entity}' fails on the warehouse: {error}",
                                   fix="check the SQL expressions under sources." + entity + ".columns in the warehouse's dialect")]
        if entity == "customers" and "timezone" in source.columns:
            issues += self._zone_issues(source, "timezone" in listed)
        if entity == "products":
            issues += catalogue_issues(self.config, self.doc, self.db)
        if not self.db.dialect.typed_columns:
            return issues  # no real column types (SQLite): timestamps are text by design
        if entity == "customers":
            self.customer_kinds = self._kinds(source, relation, mapped)
        for name, expected in EXPECTED_KIND.items():
            if name in source.columns:
                issue = self._type_issue(entity, name, source.columns[name], name in listed, expected, relation, mapped)
                if issue is not None:
                    issues.append(issue)
        return issues

    def promotion_rows(self, source: EntitySource, campaigns: dict[str, list[str]]) -> list[Issue]:
        """The promotions no message can show: without a title (a message that would show one is skipped
        as invalid_promotion), or for a campaign or step that does not exist (they feed nothing). One
        query over the mapped promotions; the campaigns and steps compared in Python."""
        promotions = source_select(source, self.dialect).subquery("p")
        query = exp.select(*[exp.column(c, table="p") for c in ("promotion_id", "title", "campaign", "step")]) \
            .from_(promotions).order_by(exp.column("promotion_id", table="p"))
        try:
            with self.db.connect() as conn:
                rows = conn.execute(sa.text(render_sql(query, self.dialect))).all()
        except sa.exc.SQLAlchemyError:
            return []  # the mapping itself was probed already
        listed = set(((self.doc.data or {}).get("sources", {}).get("promotions", {}) or {}).get("columns", {}) or {})
        untitled = [str(i) for i, title, _, _ in rows if title is None or not str(title).strip()]
        issues = []
        if untitled:
            issues.append(self.doc.issue(
                ("sources", "promotions", "columns", "title") if "title" in listed else ("sources", "promotions"),
                f"{len(untitled)} promotion{'s have' if len(untitled) != 1 else ' has'} no title: "
                f"{_examples(untitled)}; a message that would show one is skipped (invalid_promotion)",
                fix="give every promotion a title in the shop's promotions table (or end it with valid_to)"))
        for i, _, campaign, step in rows:
            if campaign is not None and campaign not in campaigns:
                issues.append(self.doc.issue(
                    ("sources", "promotions", "columns", "campaign") if "campaign" in listed else ("sources", "promotions"),
                    f"promotion {i} is for campaign '{campaign}', which does not exist" + _did_you_mean(campaign, list(campaigns)),
                    fix="set its campaign to one of " + ", ".join(sorted(campaigns)) + " (or NULL: every campaign)"))
            elif step is not None and step not in (campaigns.get(campaign) if campaign is not None
                                                     else [s for ids in campaigns.values() for s in ids]):
                known = campaigns[campaign] if campaign is not None else sorted({s for ids in campaigns.values() for s in ids})
                issues.append(self.doc.issue(
                    ("sources", "promotions", "columns", "step") if "step" in listed else ("sources", "promotions"),
                    f"promotion {i} is for step '{step}'" + (f" of campaign '{campaign}'" if campaign else "")
                    + ", which does not exist" + _did_you_mean(step, known),
                    fix="set its step to one of " + ", ".join(known) + " (or NULL: every step)"))
        return issues

    def _zone_issues(self, source: EntitySource, listed: bool) -> list[Issue]:
        """An issue when customers have a time zone value the IANA database does not know: how many,
        which values and a few of their ids. One GROUP BY over the mapped customers (the distinct
        values, checked in Python), then the first ids of the unknown ones."""
        customers = source_select(source, self.dialect).subquery("c")
        zone = exp.column("timezone", table="c")
        values = exp.select(zone, exp.alias_(exp.Count(this=exp.Star()), "customers")).from_(customers) \
            .where(zone.is_(exp.null()).not_()).group_by(zone.copy())
        try:
            with self.db.connect() as conn:
                counts = {value: n for value, n in conn.execute(sa.text(render_sql(values, self.dialect))).all()
                          if isinstance(value, str) and value.strip() and not known_zone(value)}
                if not counts:
                    return []
                shown = sorted(counts, key=lambda v: (-counts[v], v))[:MAX_UNKNOWN_ZONES_QUERIED]
                ids = exp.select(exp.column("customer_id", table="c")).from_(source_select(source, self.dialect).subquery("c")) \
                    .where(zone.copy().isin(*[exp.Literal.string(v) for v in shown])) \
                    .order_by(exp.column("customer_id", table="c")).limit(SHOWN_CUSTOMERS)
                examples = [str(row[0]) for row in conn.execute(sa.text(render_sql(ids, self.dialect))).all()]
        except sa.exc.SQLAlchemyError:
            return []  # the mapping itself was probed already; a failure here says nothing new
        values_text = ", ".join(f"'{v}' ({counts[v]})" for v in shown[:SHOWN_ZONE_VALUES])
        more = len(counts) - SHOWN_ZONE_VALUES
        total = sum(counts.values())
        return [self.doc.issue(
            ("sources", "customers", "columns", "timezone") if listed else ("sources", "customers"),
            f"{total} customer{'s' if total != 1 else ''} have a time zone the engine does not know: {values_text}"
            + (f" and {more} more value{'s' if more != 1 else ''}" if more > 0 else "")
            + f"; e.g. customer{'s' if len(examples) != 1 else ''} {', '.join(examples)}. At run time they are "
            f"treated as in defaults.timezone ({self.config.default_timezone}): send times, quiet hours and "
            "local dates would be off for them",
            fix="correct the values to IANA time zone names such as Europe/Berlin or America/New_York "
                "(or map timezone to an expression that gives them; NULL or '' means defaults.timezone)")]

    def _kinds(self, source: EntitySource, relation: _Relation, mapped: _Relation) -> dict[str, str]:
        """The kind of every mapped column whose type the warehouse tells (declared type first, for a bare column)."""
        kinds = {}
        for name, expression in source.columns.items():
            type_name = mapped.columns.get(name.lower(), (name, None))[1]
            bare = expression.strip().lower()
            if re.fullmatch(r"\w+", bare) and bare in relation.columns and relation.columns[bare][1]:
                type_name = relation.columns[bare][1]
            kind = type_kind(type_name)
            if kind is not None:
                kinds[name] = kind
        return kinds

    def _references(self, entity: str, name: str, expression: str, listed: bool, relation: _Relation) -> list[Issue]:
        """A missing-column issue for every column ``expression`` names that ``relation`` lacks."""
        try:
            tree = sqlglot.parse_one(expression, read=self.dialect)
        except (ParseError, TokenError):
            return []  # engine validate reports it already
        path = ("sources", entity, "columns", name) if listed else ("sources", entity)
        issues = []
        for column in tree.find_all(exp.Column):
            if column.name.lower() in relation.columns:
                continue
            candidates = [real for real, _ in relation.columns.values()]
            position = None
            if listed:
                found = re.search(rf"(?<![\w.]){re.escape(column.name)}(?!\w)", expression, re.IGNORECASE)
                position = self.doc.value_position(path, found.start() if found else None)
            default = "" if listed else " (not mapped, so the column of the same name is used)"
            issues.append(self.doc.issue(
                path, f"column '{column.name}' of {entity}.{name}{default} does not exist in {relation.label}"
                + _did_you_mean(column.name, candidates),
                fix=f"map {entity}.{name} under sources.{entity}.columns to one of: " + ", ".join(candidates[:12])
                + (" ..." if len(candidates) > 12 else ""),
                position=position))
        return issues

    def _type_issue(self, entity: str, name: str, expression: str, listed: bool, expected: str,
                    relation: _Relation, mapped: _Relation) -> Issue | None:
        type_name = mapped.columns.get(name.lower(), (name, None))[1]
        try:
            tree = sqlglot.parse_one(expression, read=self.dialect)
        except (ParseError, TokenError):
            return None
        bare = tree.name.lower() if isinstance(tree, exp.Column) else None
        if bare is not None and bare in relation.columns and relation.columns[bare][1]:
            type_name = relation.columns[bare][1]  # the declared type says more than a driver's type code
        kind = type_kind(type_name)
        if kind is None or kind == expected:
            return None
        what = f"column '{relation.columns[bare][0]}'" if bare else f"the expression '{expression}'"
        return self.doc.issue(
            ("sources", entity, "columns", name) if listed else ("sources", entity),
            f"{entity}.{name} is {what} of type {type_name} in {relation.label}, "
            f"but the engine needs {_KIND_WORDS[expected]} there",
            fix=f"map a {_KIND_WORDS[expected].split(' ', 1)[1]} column, or convert it in the mapping, "
                f"e.g. {name}: CAST({expression} AS {_CAST_TO.get(name, _CAST_TO[expected])})")

    # --- what the warehouse has ----------------------------------------------------

    def _table(self, name: str) -> _Relation | None:
        table = exp.to_table(name, dialect=self.dialect)
        probed, error = self._probe(f"SELECT * FROM {table.sql(dialect=self.dialect)} WHERE 1 = 0")
        if probed is None:
            return None
        schema = ".".join(part.name for part in table.parts[:-1]) or None
        try:  # declared types, where the dialect can reflect them
            declared = {c["name"].lower(): self._type_name(c["type"]) for c in self.inspector.get_columns(table.name, schema=schema)}
        except (sa.exc.SQLAlchemyError, NotImplementedError):
            declared = {}
        columns = {key: (real, declared.get(key) or probed_type) for key, (real, probed_type) in probed.columns.items()}
        return _Relation(f"table {name}", columns)

    def _query(self, query: str, label: str) -> tuple[_Relation | None, str | None]:
        try:
            inner = sqlglot.parse_one(query, read=self.dialect)
        except (ParseError, TokenError):
            return None, "it does not parse"  # engine validate reports where
        return self._probe(render_sql(exp.select("*").from_(inner.subquery("src")).where("1 = 0"), self.dialect),
                           label=label)

    def _probe(self, sql: str, label: str = "the mapping") -> tuple[_Relation | None, str | None]:
        """Run ``sql`` (which returns no rows); its columns and, where the driver tells, their types."""
        try:
            with self.db.connect() as conn:
                result = conn.execute(sa.text(sql))
                description = result.cursor.description if result.cursor is not None else None
                keys = list(result.keys())
                result.close()
                types = self._described_types(conn, description, len(keys))
        except sa.exc.SQLAlchemyError as exc:
            return None, _first_line(exc)
        return _Relation(label, {key.lower(): (key, type_name) for key, type_name in zip(keys, types)}), None

    def _described_types(self, conn: sa.Connection, description, width: int) -> list[str | None]:
        if not description:
            return [None] * width
        codes = [d[1] for d in description]
        if self.db.dialect.type_codes_are_oids and all(isinstance(c, int) for c in codes if c is not None):
            oids = sorted({c for c in codes if c is not None})
            names = dict(conn.execute(sa.text("SELECT oid, format_type(oid, NULL) FROM pg_type WHERE oid IN ("
                                              + ", ".join(str(int(o)) for o in oids) + ")")).all()) if oids else {}
            return [names.get(c) for c in codes]
        # DuckDB and others describe types by name; a bare number or class says nothing we can read
        return [None if c is None or isinstance(c, (int, type)) else str(c) for c in codes]

    def _type_name(self, sa_type) -> str | None:
        try:
            return sa_type.compile(dialect=self.db.engine.dialect)
        except Exception:  # noqa: BLE001 - a type the dialect cannot render is simply unknown
            return None

    def _missing_table(self, entity: str, name: str) -> Issue:
        table = exp.to_table(name, dialect=self.dialect)
        schema = ".".join(part.name for part in table.parts[:-1]) or None
        fix = "check the name (schema.table) and that the engine's database user may read it"
        key, label = "table", f"'{name}'"
        reference = ((self.doc.data or {}).get("sources", {}).get(entity) or {}).get("dbt")
        if reference is not None:  # a dbt model or source: the manifest named this relation
            key, label = "dbt", f"'{name}' (dbt: {reference})"
            fix = "build it (dbt run / dbt build) against this warehouse, or check that the engine's database user may read it"
        try:
            schemas = self.inspector.get_schema_names()
        except (sa.exc.SQLAlchemyError, NotImplementedError):
            schemas = []
        short = sorted({s.split(".")[-1] for s in schemas})  # DuckDB names them catalog.schema
        if table.db and short and table.db.lower() not in {s.lower() for s in short}:
            message = f"schema '{table.db}' of table {label} does not exist in {self.where}" + _did_you_mean(table.db, short)
            return self.doc.issue(("sources", entity, key), message, fix=fix)
        try:
            names = self.inspector.get_table_names(schema=schema) + self.inspector.get_view_names(schema=schema)
        except (sa.exc.SQLAlchemyError, NotImplementedError):
            names = []
        message = f"table {label} of source '{entity}' does not exist in {self.where}" + _did_you_mean(table.name, names)
        return self.doc.issue(("sources", entity, key), message, fix=fix)
