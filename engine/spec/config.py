"""engine.yaml -> ``ProjectConfig``: warehouse, ledger, source mapping, channels, the shop's footer settings.

Strings may read the environment with ``${VAR}`` or ``${VAR:-default}``; they
are resolved when used (``resolve``), not when loaded, so ``engine validate``
runs in CI without the production secrets. Relative file paths in DuckDB and
SQLite URLs are relative to the project directory.
"""
from __future__ import annotations

import difflib
from dataclasses import replace
import os
from datetime import time, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError
import re
from pathlib import Path
from typing import Mapping

import sqlglot
from sqlglot import exp
from sqlglot.errors import ParseError, TokenError

from engine import channel_kinds
from engine.clock import MAX_DURATION, CalendarMonthsNotAccepted, Duration, DurationTooLong, parse_duration, parse_instant
from engine.dialects import dialect_named, dialect_of_url
from engine.errors import ConfigError, FilterError, Issue
from engine.sql.filter_types import segment_attributes
from engine.sql.filters import parse_filter
from engine.spec import dbt
from engine.spec.load import Document, load_yaml_file
from engine.masking import remember, secret_references
from engine.model import (
    ENTITY_COLUMNS, ChannelConfig, CouponPool, DemoConfig, EntitySource, FrequencyCap, ProjectConfig, QuietHours, RetryPolicy,
    TrackingPolicy,
)
from engine.spec.schemas import schema_issues
from engine.spec.unsafe_defaults import unsafe_setting_issues

CONFIG_FILE = "engine.yaml"
ENV_REFERENCE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
#: When set, overrides ledger.url of engine.yaml (12-factor; see ``_ledger_url``).
LEDGER_URL_ENV = "ENGINE_LEDGER_URL"

def resolve(value: str, environ: Mapping[str, str] | None = None) -> str:
    """Replace ``${VAR}`` / ``${VAR:-default}``; an unset variable without default is an error.
    Secret values (masking.secret_references) are remembered, so no message shows them later."""
    env = os.environ if environ is None else environ
    hidden = secret_references(value, ENV_REFERENCE) if "${" in value else set()

    def substitute(match: re.Match) -> str:
        name, default = match.group(1), match.group(2)
        if name in env and env[name] != "":
            if name in hidden:
                remember(env[name])
            return env[name]
        if default is not None:
            if name in hidden:
                remember(default)
            return default
        raise ConfigError(f"environment variable {name} is not set (used in {CONFIG_FILE}); export it or give a default with ${{{name}:-value}}")

    return ENV_REFERENCE.sub(substitute, value)


def database_url(config: ProjectConfig, which: str = "warehouse") -> str:
    """The resolved SQLAlchemy URL of the warehouse or the ledger."""
    raw = config.warehouse_url if which == "warehouse" or config.ledger_url is None else config.ledger_url
    url = resolve(raw)
    for scheme in ("duckdb:///", "sqlite:///"):
        if url.startswith(scheme):
            path, mark, query = url[len(scheme):].partition("?")
            # an SQLite URI (``sqlite:///file:var/shop.db?mode=ro&uri=true``): its path is relative, not "file:"
            uri = "file:" if scheme == "sqlite:///" and path.startswith("file:") else ""
            path = path[len(uri):]
            if path and not path.startswith("/") and not path.startswith(":memory:"):
                return scheme + uri + str((config.root / path).resolve()) + mark + query
    return url


def load_config(root: Path) -> tuple[ProjectConfig | None, list[Issue]]:
    path = root / CONFIG_FILE
    name = _display(path, root)
    if not path.exists():
        return None, [Issue(file=name, message=f"no {CONFIG_FILE} in {root}", fix="run the command in the project directory or pass --project DIR")]
    doc = load_yaml_file(path, name)
    if doc.issues:
        return None, doc.issues
    issues = schema_issues(doc, "project.schema.json")
    if issues:
        return None, issues
    data = doc.data
    warehouse_url = data["warehouse"]["url"]
    dialect = data["warehouse"].get("dialect")
    if dialect is None:
        try:
            dialect = dialect_of_url(resolve(warehouse_url))
        except ConfigError:
            dialect = dialect_of_url(warehouse_url)
    if dialect is None:
        issues.append(doc.issue(("warehouse", "url"), f"cannot tell the SQL dialect of '{warehouse_url}'",
                                fix="use a duckdb://, sqlite://, postgresql:// ... URL or set warehouse.dialect"))
        dialect = "duckdb"
    ledger = data.get("ledger", {})
    stale_horizon = duration_setting(doc, ("ledger", "stale_horizon"), ledger.get("stale_horizon", "7d"), issues)
    sources = {}
    dbt_relation = _dbt_resolver(doc, root, data.get("dbt") or {}, dialect)
    for entity, spec in data["sources"].items():
        source, source_issues = _source(doc, entity, spec, dialect, dbt_relation)
        sources[entity] = source
        issues += source_issues
    channels = {}
    for channel_name, spec in data["channels"].items():
        channel, channel_issues = _channel(doc, channel_name, spec, root)
        channels[channel_name] = channel
        issues += channel_issues
    demo = None
    if isinstance(data.get("demo"), dict):
        demo = DemoConfig(**data["demo"])
        try:
            parse_instant(demo.anchor)
        except ValueError as exc:
            issues.append(doc.issue(("demo", "anchor"), str(exc), fix="write an instant such as 2025-01-10T00:00:00Z"))
    defaults = data.get("defaults", {})
    timezone_name = defaults.get("timezone", "UTC")
    if not is_timezone(timezone_name):
        issues.append(doc.issue(("defaults", "timezone"), f"unknown time zone '{timezone_name}'",
                                fix="use an IANA name such as Europe/Berlin or UTC"))
        timezone_name = "UTC"
    quiet_hours = {}
    for channel_name, spec in defaults.get("quiet_hours", {}).items():
        if channel_name not in channels:
            issues.append(doc.issue(("defaults", "quiet_hours", channel_name), f"quiet hours for channel '{channel_name}', which is not configured",
                                    fix="configured channels: " + ", ".join(channels)))
        quiet_hours[channel_name] = parse_quiet_hours(spec)
    config = ProjectConfig(
        root=root,
        warehouse_url=warehouse_url,
        ledger_url=_ledger_url(ledger.get("url"), warehouse_url),
        duckdb_settings=_duckdb_settings(data["warehouse"].get("duckdb") or {}, root),
        statement_timeout=_statement_timeout(doc, data["warehouse"], issues),
        sources=sources,
        channels=channels,
        stale_horizon=stale_horizon,
        demo=demo,
        file=name,
        dialect=dialect,
        default_timezone=timezone_name,
        quiet_hours=quiet_hours,
        code_secret=defaults.get("code_secret", ProjectConfig.code_secret),
        previous_code_secrets=defaults.get("previous_code_secrets", ProjectConfig.previous_code_secrets),
        is_demo=data.get("demo") not in (None, False),
        segments=dict(data.get("segments", {})),
        currency=defaults.get("currency", ProjectConfig.currency),
        shop=shop_settings(data.get("shop") or {}),
        coupon_pools={name: CouponPool(name=name, table=spec.get("table"), column=spec.get("column", "code"),
                                       low_at=spec.get("low_at", 100)) for name, spec in (data.get("coupons") or {}).items()},
        responses=dict(data.get("responses") or {}),
        **_policies(doc, data.get("policies", {}), channels, issues),
    )
    if config.is_demo and "unsubscribe_url" not in data.get("policies", {}) and config.shop["url"]:
        # the demo's links go to its own shop's domain (outside the demo the setting is required)
        config = replace(config, unsubscribe_url=config.shop["url"].rstrip("/") + "/unsubscribe")
    given = data.get("policies") or {}
    if "scan_url" not in given:  # a letter's printed link goes to the same service as the unsubscribe link
        config = replace(config, scan_url=re.sub(r"/unsubscribe/?$", "", config.unsubscribe_url.split("?")[0].rstrip("/"))
                         + "/scan")
    if "url" not in (given.get("tracking") or {}):  # /open and /click: the same service as the unsubscribe link
        config = replace(config, tracking=replace(config.tracking, url=re.sub(
            r"/unsubscribe/?$", "", config.unsubscribe_url.split("?")[0].rstrip("/"))))
    if "scan_landing_url" not in given and config.shop.get("url"):
        config = replace(config, scan_landing_url=config.shop["url"])
    issues += _segment_issues(doc, config)
    issues += unsafe_setting_issues(doc, resolve)
    return config, issues


#: what the layout may show of the shop (``shop`` in every template); a setting not given is empty
SHOP_SETTINGS = ("name", "address", "legal", "url")


def shop_settings(spec: dict) -> dict[str, str]:
    return {name: str(spec.get(name, "")) for name in SHOP_SETTINGS}


def _segment_issues(doc: Document, config: ProjectConfig) -> list[Issue]:
    """Each segment filter must pass the filter whitelist over the customer attributes."""
    issues = []
    for name, text in config.segments.items():
        path = ("segments", name)
        try:
            parse_filter(text, segment_attributes(config))
        except FilterError as exc:
            issues.append(doc.issue(path, f"segment '{name}': {exc.message}", fix=exc.fix,
                                    position=doc.value_position(path, exc.offset)))
    return issues


def _duckdb_settings(settings: dict, root: Path) -> dict:
    """engine.yaml ``warehouse.duckdb`` as written, its temp_directory relative to the project."""
    settings = dict(settings)
    if isinstance(settings.get("temp_directory"), str) and settings["temp_directory"].strip():
        settings["temp_directory"] = str(root / settings["temp_directory"])  # an absolute path stays as it is
    return settings


def _statement_timeout(doc: Document, warehouse: dict, issues: list[Issue]) -> float | None:
    """engine.yaml ``warehouse.statement_timeout`` in seconds; None (no limit) when absent or zero."""
    if "statement_timeout" not in warehouse:
        return None
    seconds = duration_setting(doc, ("warehouse", "statement_timeout"), warehouse["statement_timeout"],
                               issues).total_seconds()
    return seconds or None


def duration_setting(doc: Document, path: tuple, text: str, issues: list[Issue], months: bool = False) -> Duration:
    """A duration in engine.yaml or a campaign file; one too long (or malformed) is an issue at ``path``, read as zero.
    ``months``: calendar months (``6mo``) are accepted (a ``CalendarDuration``); else they are an issue."""
    try:
        return parse_duration(text, months=months)
    except DurationTooLong as exc:
        issues.append(doc.issue(path, str(exc), fix=f"write at most {MAX_DURATION.days}d"))
    except CalendarMonthsNotAccepted as exc:
        issues.append(doc.issue(path, str(exc), fix="write days or weeks (e.g. 30d, 4w): calendar months are "
                                "accepted in step delays and freshness, trigger windows, re-entry cool-downs, "
                                "not_contacted_within and frequency caps"))
    except ValueError as exc:
        issues.append(doc.issue(path, str(exc), fix="write a duration such as 90m, 2h, 7d or 1d12h"))
    return timedelta(0)


def _policies(doc: Document, spec: dict, channels: dict, issues: list[Issue]) -> dict:
    caps = []
    for index, cap in enumerate(spec.get("frequency_caps", [])):
        channel = cap.get("channel")
        if channel is not None and channel not in channels:
            issues.append(doc.issue(("policies", "frequency_caps", index, "channel"), f"channel '{channel}' is not configured",
                                    fix="configured channels: " + ", ".join(channels)))
        per = duration_setting(doc, ("policies", "frequency_caps", index, "per"), cap["per"], issues, months=True)
        caps.append(FrequencyCap(max=cap["max"], per=per, channel=channel))
    retry = spec.get("retry", {})
    policies = {
        "frequency_caps": tuple(caps),
        "retry": RetryPolicy(
            max_attempts=retry.get("max_attempts", RetryPolicy.max_attempts),
            backoff=(duration_setting(doc, ("policies", "retry", "backoff"), retry["backoff"], issues)
                     if "backoff" in retry else RetryPolicy.backoff),
            max_backoff=(duration_setting(doc, ("policies", "retry", "max_backoff"), retry["max_backoff"], issues)
                         if "max_backoff" in retry else RetryPolicy.max_backoff),
        ),
    }
    if "claim_timeout" in spec:
        policies["claim_timeout"] = duration_setting(doc, ("policies", "claim_timeout"), spec["claim_timeout"], issues)
    if "retention" in (spec.get("responses") or {}):
        path = ("policies", "responses", "retention")
        known = len(issues)
        retention = duration_setting(doc, path, spec["responses"]["retention"], issues)
        if len(issues) == known and retention < timedelta(days=1):
            issues.append(doc.issue(path, f"a retention of {spec['responses']['retention']} deletes response events "
                                    "before segments and statistics can read them",
                                    fix="keep them at least 1d (the default is 400d)"))
        policies["response_retention"] = retention
    if "unsubscribe_url" in spec:
        policies["unsubscribe_url"] = spec["unsubscribe_url"]
    for name in ("scan_url", "scan_landing_url"):
        if name in spec:
            policies[name] = spec[name]
    tracking = spec.get("tracking") or {}
    policies["tracking"] = TrackingPolicy(
        enabled=tracking.get("enabled", TrackingPolicy.enabled),
        url=str(tracking.get("url", TrackingPolicy.url)).rstrip("/"),
        token_ttl=(duration_setting(doc, ("policies", "tracking", "token_ttl"), tracking["token_ttl"], issues)
                   if "token_ttl" in tracking else TrackingPolicy.token_ttl),
        machine_seconds=tracking.get("machine_seconds", TrackingPolicy.machine_seconds))
    return policies


def is_timezone(name: str) -> bool:
    try:
        ZoneInfo(name)
        return True
    except (ZoneInfoNotFoundError, ValueError):
        return False


def parse_clock(text: str) -> time:
    hours, minutes = text.split(":")
    return time(int(hours), int(minutes))


def parse_quiet_hours(spec: dict) -> QuietHours:
    return QuietHours(start=parse_clock(spec["start"]), end=parse_clock(spec["end"]))


def _ledger_url(configured: str | None, warehouse_url: str) -> str | None:
    """ENGINE_LEDGER_URL, when set, wins over ledger.url; kept as a ``${...}`` reference
    (resolved when used, like every secret). The warehouse's own URL means no separate ledger."""
    if os.environ.get(LEDGER_URL_ENV, "") == "":
        return configured
    try:
        if resolve(os.environ[LEDGER_URL_ENV]) == resolve(warehouse_url):
            return None
    except ConfigError:
        pass
    return "${" + LEDGER_URL_ENV + "}"


def _display(path: Path, root: Path) -> str:
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def _dbt_resolver(doc: Document, root: Path, settings: dict, dialect: str):
    """``dbt:`` of a source -> (table name or None, issues); the manifest is read once, at the first ``dbt:``."""
    path = root / settings.get("manifest", dbt.DEFAULT_MANIFEST)
    loaded: dict = {}

    def relation(at: tuple, text: str) -> tuple[str | None, list[Issue]]:
        try:
            reference = dbt.parse_reference(text)
        except dbt.DbtError as exc:
            return None, [doc.issue(at, exc.message, fix=exc.fix)]
        if "manifest" not in loaded:
            try:
                loaded["manifest"] = dbt.Manifest(path, _display(path, root))
            except dbt.DbtError as exc:
                loaded["manifest"] = None
                return None, [doc.issue(("dbt", "manifest") if "manifest" in settings else at, exc.message, fix=exc.fix)]
        if loaded["manifest"] is None:  # its error is reported once, at the first dbt: source
            return None, []
        try:
            return loaded["manifest"].relation(reference, dialect), []
        except dbt.DbtError as exc:
            return None, [doc.issue(at, exc.message, fix=exc.fix)]

    return relation


def _source(doc: Document, entity: str, spec: dict, dialect: str, dbt_relation) -> tuple[EntitySource, list[Issue]]:
    where = ("sources", entity)
    issues: list[Issue] = []
    given_as = [key for key in ("table", "query", "dbt") if key in spec]
    if len(given_as) > 1:
        issues.append(doc.issue(where + (given_as[1],), f"source '{entity}' has both '{given_as[0]}' and '{given_as[1]}'",
                                fix="keep one: the table name (e.g. table: shop.kunden), a SELECT as query, "
                                    "or a dbt model or source (e.g. dbt: ref('customers'))"))
    elif not given_as:
        issues.append(doc.issue(where, f"source '{entity}' needs exactly one of 'table', 'query' or 'dbt'",
                                fix="give the table name (e.g. table: shop.kunden), a SELECT as query, "
                                    "or a dbt model or source (e.g. dbt: ref('customers'))"))
    table = spec.get("table")
    if "dbt" in spec:
        resolved, dbt_issues = dbt_relation(where + ("dbt",), spec["dbt"])
        issues += dbt_issues
        table = table if table is not None or "query" in spec else resolved
    if "query" in spec:
        problem = None
        try:
            parsed = [s for s in sqlglot.parse(spec["query"], read=dialect) if s is not None]
            if len(parsed) != 1:
                problem = f"has {len(parsed)} statements"
            elif not isinstance(parsed[0], exp.Query):
                problem = f"is not a SELECT: '{' '.join(spec['query'].split())[:40]}'"
        except (ParseError, TokenError) as exc:
            problem = f"does not parse: {_sql_error(exc)}"
        if problem:
            issues.append(doc.issue(where + ("query",), f"the query of source '{entity}' {problem}",
                                    fix="write one SELECT ... FROM ... statement (no trailing statements)"))
    required, optional = ENTITY_COLUMNS[entity]
    given = dict(spec.get("columns", {}))
    for name, expression in given.items():
        if entity != "customers" and name not in required + optional:
            close = difflib.get_close_matches(name, required + optional, n=1)
            issues.append(doc.issue(where + ("columns", name), f"'{name}' is not a column of {entity}"
                                    + (f" (did you mean '{close[0]}'?)" if close else ""),
                                    fix="known columns: " + ", ".join(required + optional)))
        try:
            if _plain_column(expression, dialect):  # a column name needs no parser (nor the dialect's modules)
                problem = None
            else:
                tree = sqlglot.parse_one(expression, read=dialect)
                problem = None if isinstance(tree, (exp.Condition, exp.Subquery)) else "is not a column or expression"
        except (ParseError, TokenError) as exc:
            problem = f"does not parse: {_sql_error(exc)}"
        if problem:
            issues.append(doc.issue(where + ("columns", name), f"column expression '{expression}' {problem}",
                                    fix="give a column name or a SQL expression of the warehouse's dialect"))
    columns = {name: given.get(name, name) for name in required}
    columns.update(given)
    return EntitySource(entity=entity, table=table, query=spec.get("query"), columns=columns), issues


_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def _plain_column(expression: object, dialect: str) -> bool:
    """A bare column name, which ``dialect`` reads as a column: checked without a parser, so validating
    a project does not load the dialect's sqlglot modules (issue 15.7). An identifier that is a keyword
    of sqlglot's base tokenizer or of the dialect's, or a dialect not in the table, is parsed."""
    from sqlglot.tokens import Tokenizer

    keywords = dialect_named(dialect).tokenizer_keywords
    return (isinstance(expression, str) and keywords is not None and _IDENTIFIER.fullmatch(expression) is not None
            and expression.upper() not in Tokenizer.KEYWORDS and expression.upper() not in keywords)


def _sql_error(exc: Exception) -> str:
    """The first line of a sqlglot error, without Python class names."""
    return re.sub(r"<class '(?:[\w.]+\.)?(\w+)'>", r"\1", str(exc).splitlines()[0])


def _channel(doc: Document, name: str, spec: dict, root: Path) -> tuple[ChannelConfig, list[Issue]]:
    where = ("channels", name)
    issues = []
    kind, transport = spec["kind"], spec["transport"]
    for key in channel_kinds.transport(transport).needs:
        if key not in spec:
            issues.append(doc.issue(where, f"channel '{name}' with transport {transport} needs '{key}'",
                                    fix=f"add {key}: to channels.{name}"))
    for key, check in channel_kinds.transport(transport).checks.items():
        if key in spec:
            issues += _setting_problems(doc, where + (key,), f"channels.{name}.{key}", str(spec[key]), check)
    carriers = channel_kinds.kind(kind).transport_names
    if transport not in carriers:
        issues.append(doc.issue(where + ("transport",), f"an {kind} channel cannot use the {transport} transport",
                                fix="use " + " or ".join(carriers)))
    settings = {k: v for k, v in spec.items() if k not in ("kind", "transport")}
    for setting, message, fix in channel_kinds.kind(kind).setting_problems(settings, str(root)):
        issues.append(doc.issue(where + ((setting,) if setting in spec else ()), f"channels.{name}.{setting}: {message}",
                                fix=fix))
    return ChannelConfig(name=name, kind=kind, transport=transport, settings=settings), issues


def _setting_problems(doc: Document, where: tuple, setting: str, raw: str, check) -> list[Issue]:
    """A transport's check of one setting's value (a key's form): an error naming the setting when the
    value is unusable; a warning when its environment variable is unset here (the run refuses to start then)."""
    try:
        value = resolve(raw)
    except ConfigError as exc:
        return [doc.issue(where, f"{setting}: {exc}", fix="export the variable before engine run", severity="warning")]
    problem = check(value)
    if problem is None:
        return []
    return [doc.issue(where, f"{setting} is unusable: {problem}", fix=f"set {setting} (usually from the environment) "
                      f"to a valid value; see the README's channel configuration")]
