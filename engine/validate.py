"""Campaign files -> ``Campaign`` values plus every problem found, with positions.

Three layers, all collected rather than stopping at the first: YAML syntax
(load.py), the JSON Schema (schemas.py), then semantic checks that need the
whole project: durations, filters against the known attributes, channels that
exist, templates that exist and compile, entities the source mapping lacks,
duplicate campaign names and step ids.
"""
from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Iterable

from .clock import parse_duration
from .errors import FilterError, Issue
from .filters import parse_filter
from .load import Document, load_yaml_file
from .model import (
    CUSTOMER_FACTS, STOP_CONDITIONS, TRIGGER_ENTITIES,
    AtRisk, Campaign, CheckoutAbandoned, OrderPlaced, ProjectConfig, Step, Trigger,
)
from .render import Renderer
from .schemas import schema_issues

CAMPAIGN_DIR = "campaigns.d"
TEMPLATE_DIR = "templates"


def campaign_files(root: Path, paths: Iterable[str] | None = None) -> list[Path]:
    """The YAML files named by ``paths`` (files or directories), default campaigns.d/."""
    targets = [Path(p) for p in paths] if paths else [root / CAMPAIGN_DIR]
    files: list[Path] = []
    for target in targets:
        if not target.is_absolute() and not target.exists():
            target = root / target
        if target.is_dir():
            files += sorted(p for p in target.iterdir() if p.suffix in (".yaml", ".yml"))
        else:
            files.append(target)
    return files


def filter_attributes(config: ProjectConfig) -> list[str]:
    attributes = list(config.customer_attributes())
    if "orders" in config.sources:
        attributes += list(CUSTOMER_FACTS)
    return attributes


def load_campaigns(root: Path, config: ProjectConfig, files: list[Path]) -> tuple[list[Campaign], list[Issue]]:
    renderer = Renderer(root / TEMPLATE_DIR)
    campaigns: list[Campaign] = []
    issues: list[Issue] = []
    first_seen: dict[str, str] = {}
    for path in files:
        name = _display(path)
        if not path.exists():
            issues.append(Issue(file=name, message="no such file", fix="check the path"))
            continue
        doc = load_yaml_file(path, name)
        if doc.issues:
            issues += doc.issues
            continue
        doc_issues = schema_issues(doc, "campaign.schema.json")
        if doc_issues:
            issues += doc_issues
            continue
        campaign, semantic = _build_campaign(doc, config, renderer)
        issues += semantic
        if campaign.name in first_seen:
            issues.append(doc.issue(("name",), f"campaign name '{campaign.name}' is already used by {first_seen[campaign.name]}",
                                    fix="campaign names are ledger identities and must be unique; rename one"))
            continue
        first_seen[campaign.name] = name
        if not any(i.severity == "error" for i in semantic):
            campaigns.append(campaign)
    return campaigns, issues


def _display(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def _duration(doc: Document, path: tuple, text: str, issues: list[Issue]) -> timedelta:
    try:
        return parse_duration(text)
    except ValueError as exc:
        issues.append(doc.issue(path, str(exc), fix="write a duration such as 90m, 2h, 7d or 1d12h"))
        return timedelta(0)


def _trigger(doc: Document, data: dict, issues: list[Issue]) -> Trigger:
    kind, spec = next(iter(data.items()))
    if kind == "order_placed":
        return OrderPlaced(nth=spec.get("nth"), statuses=tuple(spec.get("statuses", ())))
    if kind == "checkout_abandoned":
        return CheckoutAbandoned()
    window = _duration(doc, ("trigger", "at_risk", "window"), spec.get("window", "26w"), issues)
    return AtRisk(window=window, percent=spec.get("percent", 60))


def _check_filter(doc: Document, path: tuple, text: str | None, attributes: list[str], issues: list[Issue]) -> None:
    if text is None:
        return
    try:
        parse_filter(text, attributes)
    except FilterError as exc:
        issues.append(doc.issue(path, exc.message, fix=exc.fix, position=doc.value_position(path, exc.offset)))


def _build_campaign(doc: Document, config: ProjectConfig, renderer: Renderer) -> tuple[Campaign, list[Issue]]:
    data = doc.data
    issues: list[Issue] = []
    attributes = filter_attributes(config)
    trigger = _trigger(doc, data["trigger"], issues)
    for entity in TRIGGER_ENTITIES[trigger.kind]:
        if entity not in config.sources:
            issues.append(doc.issue(("trigger", trigger.kind), f"trigger {trigger.kind} needs the '{entity}' entity, which engine.yaml does not map",
                                    fix=f"add sources.{entity} to {config.file}, or use another trigger"))
    if isinstance(trigger, OrderPlaced) and trigger.statuses and "orders" in config.sources \
            and not config.sources["orders"].has_column("status"):
        issues.append(doc.issue(("trigger", "order_placed", "statuses"), "order statuses need the orders.status column, which is not mapped",
                                fix=f"map it in {config.file}: sources.orders.columns.status"))
    if isinstance(trigger, CheckoutAbandoned) and "checkouts" in config.sources \
            and not config.sources["checkouts"].has_column("completed_at"):
        issues.append(doc.issue(("trigger", "checkout_abandoned"), "abandoned checkouts need the checkouts.completed_at column, which is not mapped",
                                fix=f"map it in {config.file}: sources.checkouts.columns.completed_at"))
    if isinstance(trigger, AtRisk) and not config.ledger_shares_warehouse:
        issues.append(doc.issue(("trigger", "at_risk"), "segment triggers record entries next to the warehouse and need the ledger in the warehouse database",
                                fix="remove ledger.url from engine.yaml, or use an event trigger"))
    for index, stop in enumerate(data.get("stop", [])):
        for entity in STOP_CONDITIONS[stop]:
            if entity not in config.sources:
                issues.append(doc.issue(("stop", index), f"stop condition {stop} needs the '{entity}' entity, which engine.yaml does not map",
                                        fix=f"add sources.{entity} to {config.file}"))
    _check_filter(doc, ("audience",), data.get("audience"), attributes, issues)
    steps = []
    seen_ids: dict[str, int] = {}
    for index, raw in enumerate(data["steps"]):
        where = ("steps", index)
        if raw["id"] in seen_ids:
            issues.append(doc.issue(where + ("id",), f"step id '{raw['id']}' is used twice (also steps[{seen_ids[raw['id']]}])",
                                    fix="step ids are ledger identities; give each step its own id"))
        seen_ids.setdefault(raw["id"], index)
        delay = _duration(doc, where + ("delay",), raw["delay"], issues)
        freshness = _duration(doc, where + ("freshness",), raw["freshness"], issues) if "freshness" in raw else None
        channel = config.channels.get(raw["channel"])
        if channel is None:
            known = ", ".join(config.channels) or "none"
            issues.append(doc.issue(where + ("channel",), f"channel '{raw['channel']}' is not configured (configured: {known})",
                                    fix=f"add it under channels: in {config.file} or use a configured one"))
        else:
            for problem in renderer.check(raw["template"], channel.kind):
                issues.append(doc.issue(where + ("template",), problem.message, fix=problem.fix))
        _check_filter(doc, where + ("audience",), raw.get("audience"), attributes, issues)
        steps.append(Step(id=raw["id"], delay=delay, freshness=freshness, channel=raw["channel"],
                          template=raw["template"], audience=raw.get("audience")))
    campaign = Campaign(
        name=data["name"],
        description=data.get("description", ""),
        enabled=data.get("enabled", True),
        trigger=trigger,
        audience=data.get("audience"),
        stop=tuple(data.get("stop", ())),
        steps=tuple(steps),
        file=doc.file,
    )
    return campaign, issues
