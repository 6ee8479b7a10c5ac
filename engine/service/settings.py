"""Service settings from the environment (12-factor) and the effective configuration, secrets masked.

Owns the names and defaults of the ``ENGINE_*`` variables of ``engine run``
(interval, log level and format, personal data in logs, metrics host and
port; a flag wins over its variable), and ``effective_config``: what ``engine config show``
prints - engine.yaml with every ``${VAR}`` resolved, where each value came
from, and passwords, tokens, secrets and keys masked.
"""
from __future__ import annotations

import importlib
import os
import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Mapping

from engine import channel_kinds
from engine.clock import format_duration
from engine.dialects import dialect_named
from engine.model import ProjectConfig, RetryPolicy
from engine.errors import ProjectInvalid
from engine.masking import MASK, is_secret_name, mask, secret_references

# engine.spec.config (sqlglot, jsonschema, YAML) is imported by the functions that read engine.yaml: the
# command line reads ENV and DEFAULT_METRICS_PORT for its options' defaults at `engine --help`.

#: setting -> (environment variable, default)
ENV = {
    "interval": ("ENGINE_INTERVAL", None),
    "log_level": ("ENGINE_LOG_LEVEL", "info"),
    "log_format": ("ENGINE_LOG_FORMAT", "text"),
    "log_personal_data": ("ENGINE_LOG_PERSONAL_DATA", "0"),
    "metrics_host": ("ENGINE_METRICS_HOST", "127.0.0.1"),
    "metrics_port": ("ENGINE_METRICS_PORT", "9181"),
}
DEFAULT_METRICS_PORT = int(ENV["metrics_port"][1])


def setting_origins(environ: Mapping[str, str] | None = None) -> dict[str, tuple[str | None, str]]:
    """For each service setting: (raw value, where it came from) without any flag."""
    env = os.environ if environ is None else environ
    result = {}
    for name, (variable, default) in ENV.items():
        if env.get(variable, "") != "":
            result[name] = (env[variable], f"env {variable}")
        else:
            result[name] = (default, "default")
    return result


@dataclass(frozen=True)
class Shown:
    """One line of ``engine config show``."""

    key: str
    value: str
    origin: str
    secret: bool = False

    def as_dict(self) -> dict:
        return {"value": self.value, "origin": self.origin, "secret": self.secret}


def show_value(key: str, raw: Any, environ: Mapping[str, str]) -> Shown:
    """Resolve ``${VAR}`` in ``raw`` for display: secrets masked, unset variables named."""
    from engine.spec.config import CONFIG_FILE, ENV_REFERENCE

    text = str(raw)
    variables: list[str] = []
    unset: list[str] = []
    secret = is_secret_name(key.rsplit(".", 1)[-1])
    hidden = secret_references(text, ENV_REFERENCE)  # named like a secret, or in a URL's userinfo/path/query

    def substitute(match: re.Match) -> str:
        nonlocal secret
        name, default = match.group(1), match.group(2)
        variables.append(name)
        if environ.get(name, "") != "":
            if name in hidden:
                secret = secret or is_secret_name(name)
                return MASK
            return environ[name]
        if default is not None:
            return MASK if name in hidden and default else default
        unset.append(name)
        return f"<{name} unset>"

    named_secret = secret
    value = ENV_REFERENCE.sub(substitute, text)  # secret variables become *** in place
    if named_secret and not unset:
        value = MASK
    else:
        value = mask(value)  # URL passwords and secret parameters, resolved secrets seen before
    origin = CONFIG_FILE
    if variables:
        used = [v for v in variables if v not in unset and environ.get(v, "") != ""]
        origin = "env " + ", ".join(used) if used else f"{CONFIG_FILE} default"
    if unset:
        origin = "missing: " + ", ".join(f"{v} is not set" for v in unset)
    return Shown(key=key, value=value, origin=origin, secret=secret)


def effective_config(root: Path, settings: Mapping[str, tuple[str | None, str]] | None = None,
                     environ: Mapping[str, str] | None = None) -> list[Shown]:
    """Every setting of the project and the service, resolved and masked, in display order."""
    from engine.spec.config import CONFIG_FILE, LEDGER_URL_ENV, load_config
    from engine.spec.load import load_yaml_file

    env = os.environ if environ is None else environ
    root = Path(root).resolve()
    config, issues = load_config(root)
    if config is None or any(i.severity == "error" for i in issues):
        raise ProjectInvalid(issues)
    data = load_yaml_file(root / CONFIG_FILE, config.file).data
    shown = [Shown("project", str(root), "--project / ENGINE_PROJECT")]
    shown.append(show_value("warehouse.url", data["warehouse"]["url"], env))
    shown.append(Shown("warehouse.dialect", config.dialect,
                       CONFIG_FILE if "dialect" in data["warehouse"] else "from the URL"))
    shown += _walk("warehouse.duckdb", data["warehouse"].get("duckdb") or {}, env)
    if "statement_timeout" in data["warehouse"]:
        shown.append(show_value("warehouse.statement_timeout", data["warehouse"]["statement_timeout"], env))
    ledger = dict(data.get("ledger") or {})
    if env.get(LEDGER_URL_ENV, "") != "":
        ledger_url = show_value("ledger.url", f"${{{LEDGER_URL_ENV}}}", env)
        if config.ledger_url is None:
            ledger_url = Shown("ledger.url", "(the warehouse database)", f"env {LEDGER_URL_ENV} (same URL)")
        shown.append(ledger_url)
    elif "url" in ledger:
        shown.append(show_value("ledger.url", ledger["url"], env))
    else:
        shown.append(Shown("ledger.url", "(the warehouse database)", "default"))
    for name, value in ledger.items():
        if name != "url":
            shown.append(show_value(f"ledger.{name}", value, env))
    for section in data:
        if section in ("warehouse", "ledger", "sources"):
            continue
        shown += _walk(section, data[section], env)
    for entity, spec in data.get("sources", {}).items():
        where = f"table {spec['table']}" if "table" in spec else "query"
        shown.append(Shown(f"sources.{entity}", where, CONFIG_FILE))
        written = spec.get("columns") or {}
        for column, expression in config.sources[entity].columns.items():
            shown.append(Shown(f"sources.{entity}.columns.{column}", expression,
                               CONFIG_FILE if column in written else "default (the column of the same name)"))
    given = {line.key for line in shown}
    for key, raw, origin in defaults_of(config, data):
        if key not in given and not any(g.startswith(key + ".") or g.startswith(key + "[") for g in given):
            if "${" in raw:  # a default read from the environment: resolved (and masked) like a setting
                line = show_value(key, raw, env)
                origin = f"default {raw}" + (f": {line.origin}" if line.origin != f"{CONFIG_FILE} default" else "")
                shown.append(replace(line, origin=origin))
            else:
                shown.append(Shown(key, raw, origin))
    for name, (value, origin) in (settings or setting_origins(env)).items():
        shown.append(Shown(f"service.{name}", "-" if value is None else str(value), origin))
    return sorted(shown, key=_place)  # stable: the defaults of a section (or channel) follow its settings


def _place(line: Shown) -> tuple[int, str]:
    section, _, rest = line.key.partition(".")
    return (SECTIONS.index(section) if section in SECTIONS else len(SECTIONS),
            rest.split(".")[0] if section == "channels" else "")


#: the order of ``engine config show``'s sections
SECTIONS = ("project", "warehouse", "ledger", "demo", "shop", "defaults", "policies", "segments", "channels",
            "sources", "responses", "service")


def defaults_of(config: ProjectConfig, data: dict) -> list[tuple[str, str, str]]:
    """(setting, value, origin) of every setting engine.yaml may leave out, as the engine runs with it."""
    from engine.run.dispatch import DEFAULT_IN_FLIGHT
    from engine.spec.config import SHOP_SETTINGS
    from engine.spec.dbt import DEFAULT_MANIFEST

    none = "(none)"
    found = [("ledger.stale_horizon", format_duration(config.stale_horizon), "default")]
    dialect = dialect_named(config.dialect)
    found += [(f"warehouse.{dialect.settings_section}.{name}", value, "default")
              for name, value in (setting.split(": ", 1) for setting in dialect.setting_defaults)]
    found += [("warehouse.statement_timeout", "(none: no limit)", "default")]
    found += [("demo", "false", "default")]
    found += [(f"shop.{name}", "(empty)", "default") for name in SHOP_SETTINGS]
    found += [("dbt.manifest", DEFAULT_MANIFEST, "default (relative to the project)"),
              ("defaults.currency", ProjectConfig.currency, "default"),
              ("defaults.timezone", config.default_timezone, "default"),
              ("defaults.quiet_hours", none, "default"),
              ("defaults.code_secret", ProjectConfig.code_secret, "default"),
              ("defaults.previous_code_secrets", ProjectConfig.previous_code_secrets, "default"),
              ("policies.frequency_caps", none, "default"),
              ("policies.retry.max_attempts", str(RetryPolicy.max_attempts), "default"),
              ("policies.retry.backoff", format_duration(RetryPolicy.backoff), "default"),
              ("policies.retry.max_backoff", format_duration(RetryPolicy.max_backoff), "default"),
              ("policies.claim_timeout", format_duration(config.claim_timeout), "default"),
              ("policies.responses.retention", format_duration(config.response_retention), "default")]
    if config.is_demo:
        found.append(("policies.unsubscribe_url", config.unsubscribe_url,
                      "default of the demo" + (" (shop.url + /unsubscribe)" if config.shop.get("url") else "")))
    else:
        found.append(("policies.unsubscribe_url", "(not set)", "required outside the demo"))
    found.append(("policies.scan_url", config.scan_url, "default: the unsubscribe URL's host, path /scan"))
    found.append(("policies.scan_landing_url", config.scan_landing_url, "default: shop.url"))
    found += response_defaults()
    found += [("policies.tracking.enabled", "false", "default"),
              ("policies.tracking.url", config.tracking.url, "default: the unsubscribe URL's host (/open, /click)"),
              ("policies.tracking.token_ttl", format_duration(config.tracking.token_ttl), "default"),
              ("policies.tracking.machine_seconds", str(config.tracking.machine_seconds), "default")]
    found.append(("segments", none, "default"))
    found.append(("coupons", none, "default (codes are generated unless a step names a pool)"))
    for name, channel in config.channels.items():
        prefix = f"channels.{name}"
        found += [(f"{prefix}.from", "(not set)", "required outside the demo"),
                  (f"{prefix}.delivery", "at_most_once", "default"),
                  (f"{prefix}.in_flight", str(DEFAULT_IN_FLIGHT), "default")]
        # each transport module says what its settings default to (``setting_defaults``), if it has any
        transport = importlib.import_module(channel_kinds.transport(channel.transport).module)
        found += [(f"{prefix}.{setting}", value, note)
                  for setting, value, note in getattr(transport, "setting_defaults", lambda _settings: [])(channel.settings)]
        found += [(f"{prefix}.{setting}", value, "default")
                  for setting, value in channel_kinds.kind(channel.kind).setting_defaults.items()]
    return found


def response_defaults() -> list[tuple[str, str, str]]:
    """(setting, value, origin) of every ``responses:`` setting (the provider webhooks, engine.service.webhooks)."""
    from engine.service.signatures import DEFAULT_CERTIFICATE_URLS, DEFAULT_TOLERANCE  # cryptography: not at --help

    return [("responses.ses.topic_arns", "(none)", "default: /webhooks/ses answers 404"),
            ("responses.ses.certificate_urls", ", ".join(DEFAULT_CERTIFICATE_URLS), "default"),
            ("responses.ses.confirm_subscriptions", "true", "default"),
            ("responses.ses.tolerance", DEFAULT_TOLERANCE, "default"),
            ("responses.sendgrid.public_key", "(none)", "default: /webhooks/sendgrid answers 404"),
            ("responses.sendgrid.tolerance", DEFAULT_TOLERANCE, "default"),
            ("responses.sms_http.secret", "(none)", "default: /webhooks/sms answers 404"),
            ("responses.sms_http.previous_secrets", "(none)", "default"),
            ("responses.sms_http.tolerance", DEFAULT_TOLERANCE, "default")]


def _walk(prefix: str, value: Any, env: Mapping[str, str]) -> list[Shown]:
    if isinstance(value, dict):
        return [line for k, v in value.items() for line in _walk(f"{prefix}.{k}", v, env)]
    if isinstance(value, list):
        return [line for i, v in enumerate(value) for line in _walk(f"{prefix}[{i}]", v, env)]
    return [show_value(prefix, value, env)]
