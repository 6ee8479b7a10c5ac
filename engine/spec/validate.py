"""Campaign files -> ``Campaign`` values plus every problem found, with positions.

Three layers, all collected rather than stopping at the first: YAML syntax
(load.py), the JSON Schema (schemas.py), then semantic checks that need the
whole project: durations, filters against the known attributes, channels that
exist, templates that exist and compile, entities the source mapping lacks,
duplicate campaign names and step ids. A file with schema errors still gets the
semantic checks its intact parts allow (``_checks_despite_schema``), so one run
reports both.
"""
from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Iterable

from engine import channel_kinds
from engine.errors import FilterError, Issue
from engine.clock import Duration
from engine.spec.config import duration_setting, parse_clock, parse_quiet_hours, shop_settings
from engine.spec.lists import template_lists
from engine.sql.filter_types import attribute_kinds, check_types, filter_attributes, trigger_properties
from engine.spec.lists import template_lists
from engine.sql.filter_types import attribute_kinds, check_types, filter_attributes
from engine.sql.filters import parse_filter, referenced_functions
from engine.spec.load import Document, display_path, format_path, load_yaml_file
from engine.model import (
    STOP_CONDITIONS, WAIT_EVENTS, Action, Campaign, DeliveryOptions, DiscountCode, ProjectConfig, Reentry, Step,
    StepTracking, Trigger, Variant, WaitUntil,
)
from engine.sql.triggers.registry import KINDS, kind_named, kind_of
from engine.templating.render import Renderer
from engine.spec.schemas import schema_issues

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


def load_campaigns(root: Path, config: ProjectConfig, files: list[Path]) -> tuple[list[Campaign], list[Issue]]:
    renderer = Renderer(root / TEMPLATE_DIR)
    campaigns: list[Campaign] = []
    issues: list[Issue] = []
    first_seen: dict[str, str] = {}
    for path in files:
        name = display_path(path)
        if not path.exists() and not path.is_symlink():  # a dangling link or loop: load_yaml_file says so
            issues.append(Issue(file=name, message="no such file", fix="check the path"))
            continue
        doc = load_yaml_file(path, name)
        if doc.issues:
            issues += doc.issues
            continue
        doc_issues = schema_issues(doc, "campaign.schema.json")
        if doc_issues:  # the schema errors, and the semantic checks the rest of the file still allows
            issues += sorted(doc_issues + _checks_despite_schema(doc, config, renderer, doc_issues),
                             key=lambda i: (i.line or 0, i.column or 0))
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


class _TriggerFile:
    """The campaign file as a trigger kind's ``parse`` and ``check`` see it (``triggers.base.CampaignFile``):
    each problem becomes an issue at its position."""

    def __init__(self, doc: Document, config: ProjectConfig, issues: list[Issue]):
        self.doc, self.config, self.issues = doc, config, issues

    def duration(self, path: tuple, text: str) -> Duration:
        return duration_setting(self.doc, path, text, self.issues, months=True)

    def needs(self, path: tuple, what: str, entity: str, column: str | None = None) -> None:
        _needs(self.doc, self.config, path, what, entity, column, self.issues)

    def problem(self, path: tuple, message: str, fix: str) -> None:
        self.issues.append(self.doc.issue(path, message, fix=fix))


def _trigger(doc: Document, config: ProjectConfig, data: dict, issues: list[Issue]) -> Trigger:
    name, settings = next(iter(data.items()))  # the schema admits exactly one registered kind
    return kind_named(name).parse(settings, _TriggerFile(doc, config, issues))


def _needs(doc: Document, config: ProjectConfig, path: tuple, what: str, entity: str,
           column: str | None, issues: list[Issue]) -> None:
    """An issue at ``path`` when the mapping lacks ``entity`` (or its ``column``); one issue
    per missing entity and place, however many features need it."""
    source = config.sources.get(entity)
    if source is None:
        message = f"needs the '{entity}' entity, which engine.yaml does not map"
        if not any(i.path == format_path(path) and i.message.endswith(message) for i in issues):
            issues.append(doc.issue(path, f"{what} {message}",
                                    fix=f"add sources.{entity} to {config.file}, or use another trigger"))
    elif column is not None and not source.has_column(column):
        issues.append(doc.issue(path, f"{what} needs the {entity}.{column} column, which is not mapped",
                                fix=f"map it in {config.file}: sources.{entity}.columns.{column}"))


def _check_trigger(doc: Document, config: ProjectConfig, trigger: Trigger, issues: list[Issue]) -> None:
    kind = kind_of(trigger)
    for entity in kind.entities:
        _needs(doc, config, ("trigger", trigger.kind), f"trigger {trigger.kind}", entity, None, issues)
    kind.check(trigger, config, _TriggerFile(doc, config, issues))


class _Attributes(list):
    """What a campaign's filters may name, and the properties of its trigger the mapping lacks
    (``trigger.x`` -> the "entity.column" to map), for the fix of a filter naming one."""

    def __init__(self, config: ProjectConfig, trigger: Trigger | None):
        record = kind_of(trigger).template_record if trigger is not None else None
        entity = record.entity if record is not None else None
        super().__init__(filter_attributes(config, entity))
        self.unmapped = {k: v for k, v in trigger_properties(config, entity).items() if v is not None}


def _check_filter(doc: Document, path: tuple, text: str | None, attributes: list[str], issues: list[Issue],
                  config: ProjectConfig) -> None:
    if text is None:
        return
    try:
        tree = parse_filter(text, attributes, getattr(attributes, "unmapped", None))
        check_types(tree, attribute_kinds(config), text)
    except FilterError as exc:
        issues.append(doc.issue(path, exc.message, fix=exc.fix, position=doc.value_position(path, exc.offset)))
        return
    functions = referenced_functions(tree)
    if "bought_category" in functions:
        _needs(doc, config, path, "bought_category()", "order_items", "category", issues)


def _build_campaign(doc: Document, config: ProjectConfig, renderer: Renderer) -> tuple[Campaign, list[Issue]]:
    data = doc.data
    issues: list[Issue] = []
    trigger = _trigger(doc, config, data["trigger"], issues)
    attributes = _Attributes(config, trigger)
    _check_trigger(doc, config, trigger, issues)
    for index, stop in enumerate(data.get("stop", [])):
        for entity in STOP_CONDITIONS[stop]:
            column = "unsubscribed_at" if stop == "unsubscribed" else None
            _needs(doc, config, ("stop", index), f"stop condition {stop}", entity, column, issues)
        if stop == "left_segment" and not kind_of(trigger).has_segment:
            segment_kinds = " / ".join(kind.name for kind in KINDS if kind.has_segment)
            issues.append(doc.issue(("stop", index), f"stop condition left_segment needs a segment trigger, not {trigger.kind}",
                                    fix=f"use a {segment_kinds} trigger, or another stop condition"))
    if data.get("channel_choice") == "by_response":
        if "orders" not in config.sources:
            issues.append(doc.issue(("channel_choice",), "channel_choice by_response needs the 'orders' entity "
                                    "(a kind is chosen by the orders its messages led to), which engine.yaml does not map",
                                    fix=f"add sources.orders to {config.file}, or remove channel_choice"))
    _check_filter(doc, ("audience",), data.get("audience"), attributes, issues, config)
    reentry = _reentry(doc, data.get("reentry", "per_trigger"), issues)
    steps = [_step(doc, config, renderer, trigger, ("steps", index), raw, attributes, issues)
             for index, raw in enumerate(data["steps"])]
    _check_step_ids(doc, [(index, step.id) for index, step in enumerate(steps)], issues)
    campaign = Campaign(
        name=data["name"],
        description=data.get("description", ""),
        enabled=data.get("enabled", True),
        priority=data.get("priority", 0),
        conversion_window=duration_setting(doc, ("conversion_window",), data.get("conversion_window", "7d"), issues,
                                           months=True),
        holdout=float(data.get("holdout", 0)),
        not_contacted_within=(duration_setting(doc, ("not_contacted_within",), data["not_contacted_within"], issues,
                                               months=True)
                              if "not_contacted_within" in data else None),
        channel_choice=data.get("channel_choice", "order"),
        trigger=trigger,
        audience=data.get("audience"),
        stop=tuple(data.get("stop", ())),
        reentry=reentry,
        steps=tuple(steps),
        file=doc.file,
        tracking=step_tracking(data.get("tracking")) or StepTracking(),
    )
    issues += lint(doc, campaign, config)
    return campaign, issues


def _check_step_ids(doc: Document, ids: list[tuple[int, str]], issues: list[Issue]) -> None:
    """An issue at each step whose id an earlier step has."""
    seen_ids: dict[str, int] = {}
    for index, step_id in ids:
        if step_id in seen_ids:
            issues.append(doc.issue(("steps", index, "id"), f"step id '{step_id}' is used twice (also steps[{seen_ids[step_id]}])",
                                    fix="step ids are ledger identities; give each step its own id"))
        seen_ids.setdefault(step_id, index)


def _check_variant_ids(doc: Document, where: tuple, ids: list[tuple[int, str]], issues: list[Issue]) -> None:
    seen = set()
    for v_index, variant_id in ids:
        if variant_id in seen:
            issues.append(doc.issue(where + ("variants", v_index, "id"), f"variant id '{variant_id}' is used twice",
                                    fix="give each variant of a step its own id"))
        seen.add(variant_id)


def _check_channel(doc: Document, config: ProjectConfig, renderer: Renderer, trigger: Trigger | None, where: tuple,
                   channel_name: str, template: str | None, discount_code: bool, issues: list[Issue],
                   wait: bool = False) -> None:
    """The channel at ``where`` must be configured; its ``template`` (unless None) must suit its kind and
    render against the variables of ``trigger`` (not checked without one)."""
    channel = config.channels.get(channel_name)
    if channel is None:
        known = ", ".join(config.channels) or "none"
        issues.append(doc.issue(where + ("channel",), f"channel '{channel_name}' is not configured (configured: {known})",
                                fix=f"add it under channels: in {config.file} or use a configured one"))
    elif template is not None and trigger is not None:
        if "promotions" in renderer.declared_lists(template) and "promotions" not in config.sources:
            issues.append(doc.issue(where + ("template",), f"template '{template}' shows promotions, but {config.file} "
                                    "maps no promotions: it shows none", severity="warning",
                                    fix="map sources.promotions (promotion_id, title, ...) in "
                                    f"{config.file}, or remove the {{# uses: promotions #}} declaration"))
        sample = sample_context(config, trigger, discount_code, wait)
        list_problems, lists = template_lists(config, renderer, template)  # {# uses: ... #}: product lists
        for problem in list_problems or renderer.check(template, channel.kind, {**sample, **lists}):
            if problem.template is not None and problem.line is not None:  # at its line in the template itself
                used_by = doc.issue(where + ("template",), "")
                issues.append(Issue(file=display_path(config.root / TEMPLATE_DIR / problem.template), line=problem.line,
                                    message=f"{problem.message}, in the template of {used_by.location()} ({used_by.path})",
                                    fix=problem.fix))
            else:
                issues.append(doc.issue(where + ("template",), problem.message, fix=problem.fix))


def _checks_despite_schema(doc: Document, config: ProjectConfig, renderer: Renderer,
                           schema_errors: list[Issue]) -> list[Issue]:
    """The semantic checks of a file with schema errors that do not depend on its broken parts, so one run
    reports them all: filters, channels (and their templates, when the trigger is intact), stop conditions,
    duplicate step and variant ids. A value is left alone when a schema error is at it, or inside it for a
    value read as a whole (the trigger)."""
    broken = [i.path for i in schema_errors]

    def usable(path: tuple, kind: type = str, whole: bool = True):
        """The value at ``path`` if it is a ``kind`` the schema has no complaint about; a list is looked into
        item by item (``whole=False``), so an error in one step leaves the others."""
        here = format_path(path)
        value = doc.data
        for part in path:
            if isinstance(value, dict) and part in value:
                value = value[part]
            elif isinstance(value, list) and isinstance(part, int) and part < len(value):
                value = value[part]
            else:
                return None
        if any(b == here or whole and (b.startswith(here + ".") or b.startswith(here + "[")) for b in broken):
            return None
        return value if isinstance(value, kind) else None

    data = doc.data if isinstance(doc.data, dict) else {}
    issues: list[Issue] = []
    trigger = None
    if usable(("trigger",), dict):
        trigger = _trigger(doc, config, data["trigger"], issues)
        _check_trigger(doc, config, trigger, issues)
    attributes = _Attributes(config, trigger)
    for index, stop in enumerate(usable(("stop",), list, whole=False) or []):
        if isinstance(stop, str) and stop in STOP_CONDITIONS and usable(("stop", index)):
            column = "unsubscribed_at" if stop == "unsubscribed" else None
            for entity in STOP_CONDITIONS[stop]:
                _needs(doc, config, ("stop", index), f"stop condition {stop}", entity, column, issues)
    _check_filter(doc, ("audience",), usable(("audience",)), attributes, issues, config)
    step_ids = []
    for index, raw in enumerate(usable(("steps",), list, whole=False) or []):
        where = ("steps", index)
        if not isinstance(raw, dict):
            continue
        if usable(where + ("id",)):
            step_ids.append((index, raw["id"]))
        _check_filter(doc, where + ("audience",), usable(where + ("audience",)), attributes, issues, config)
        discount = "discount_code" in raw
        if usable(where + ("channel",)):
            _check_channel(doc, config, renderer, trigger, where, raw["channel"], usable(where + ("template",)),
                           discount, issues, "wait_until" in raw)
        variant_ids = []
        for v_index, variant in enumerate(usable(where + ("variants",), list, whole=False) or []):
            v_where = where + ("variants", v_index)
            if not isinstance(variant, dict):
                continue
            if usable(v_where + ("id",)):
                variant_ids.append((v_index, variant["id"]))
            if usable(v_where + ("channel",)):
                _check_channel(doc, config, renderer, trigger, v_where, variant["channel"],
                               usable(v_where + ("template",)), discount, issues, "wait_until" in raw)
            _check_filter(doc, v_where + ("audience",), usable(v_where + ("audience",)), attributes, issues, config)
        _check_variant_ids(doc, where, variant_ids, issues)
    _check_step_ids(doc, step_ids, issues)
    return issues


def _reentry(doc: Document, spec, issues: list[Issue]) -> Reentry:
    if isinstance(spec, dict):
        return Reentry(mode="cooldown", cooldown=duration_setting(doc, ("reentry", "cooldown"), spec["cooldown"], issues,
                                                                   months=True))
    return Reentry(mode=spec)


def _step(doc: Document, config: ProjectConfig, renderer: Renderer, trigger: Trigger, where: tuple,
          raw: dict, attributes: list[str], issues: list[Issue]) -> Step:
    delay_text = str(raw["delay"]).strip()
    negative = delay_text.startswith("-")
    delay = duration_setting(doc, where + ("delay",), delay_text.lstrip("-").strip(), issues, months=True)
    if negative:
        delay = -delay
        if not kind_of(trigger).dated:
            dated = " / ".join(kind.name for kind in KINDS if kind.dated)
            issues.append(doc.issue(where + ("delay",), f"a negative delay (before the trigger) only makes sense for date triggers, not {trigger.kind}",
                                    fix=f"use a delay of 0m or more, or an {dated} trigger"))
    freshness = duration_setting(doc, where + ("freshness",), raw["freshness"], issues, months=True) if "freshness" in raw else None
    single = [key for key in ("channel", "template") if key in raw]
    if "variants" in raw and single:
        issues.append(doc.issue(where + (single[0],), "a step has either channel and template, or variants, not both",
                                fix="move channel and template into the variants, or remove variants"))
    elif "variants" not in raw and len(single) < 2:
        missing = " and ".join(repr(k) for k in ("channel", "template") if k not in raw)
        issues.append(doc.issue(where, f"missing required key {missing}",
                                fix="a step sends a template over a channel: give channel: and template: (or variants:)"))
    if "variants" in raw:
        raw_variants = raw["variants"]
    elif "channel" in raw and "template" in raw:
        raw_variants = [{"id": "default", "channel": raw["channel"], "template": raw["template"]}]
    else:
        raw_variants = []
    variants = []
    for v_index, v in enumerate(raw_variants):
        v_where = where + ("variants", v_index) if "variants" in raw else where
        _check_channel(doc, config, renderer, trigger, v_where, v["channel"], v["template"],
                       raw.get("discount_code") is not None, issues, "wait_until" in raw)
        _check_filter(doc, v_where + ("audience",), v.get("audience"), attributes, issues, config)
        variants.append(Variant(id=v["id"], channel=v["channel"], template=v["template"],
                                audience=v.get("audience"), percent=v.get("percent")))
    if "variants" in raw:
        _check_variant_ids(doc, where, list(enumerate(v.id for v in variants)), issues)
        if sum(v.percent or 0 for v in variants) > 100:
            issues.append(doc.issue(where + ("variants",), "the percents of the variants add up to more than 100",
                                    fix="split at most 100 % of customers"))
    _check_filter(doc, where + ("audience",), raw.get("audience"), attributes, issues, config)
    wait = _wait(doc, config, trigger, where, raw, delay, issues)
    quiet = raw.get("quiet_hours")
    code = raw.get("discount_code")
    if code is not None and code.get("pool") is not None:
        _check_pool(doc, config, where + ("discount_code",), code, issues)
    delivery = raw.get("delivery")
    return Step(
        id=raw["id"], delay=delay, freshness=freshness, variants=tuple(variants),
        audience=raw.get("audience"),
        send_at=parse_clock(raw["send_at"]) if "send_at" in raw else None,
        quiet_hours=parse_quiet_hours(quiet) if quiet else None,
        discount_code=DiscountCode(prefix=code.get("prefix", ""), length=code.get("length", 8),
                                   pool=code.get("pool")) if code is not None else None,
        actions=tuple(Action(kind=k, tag=t) for a in raw.get("actions", []) for k, t in a.items()),
        delivery=DeliveryOptions(
            ttl=duration_setting(doc, where + ("delivery", "ttl"), delivery["ttl"], issues) if "ttl" in delivery else None,
            urgency=delivery.get("urgency"), topic=delivery.get("topic"),
        ) if delivery is not None else None,
        wait=wait,
        tracking=step_tracking(raw.get("tracking")),
    )


def step_tracking(raw: bool | dict | None) -> StepTracking | None:
    """``tracking:`` of a campaign or step (the schema checked its shape): false, or ``enabled`` and ``utm``."""
    if raw is None:
        return None
    if isinstance(raw, bool):
        return StepTracking(enabled=raw)
    return StepTracking(enabled=raw.get("enabled", True), utm=dict(raw.get("utm") or {}))


def _check_pool(doc: Document, config: ProjectConfig, where: tuple, code: dict, issues: list[Issue]) -> None:
    """A step's coupon pool is one of engine.yaml's, and its codes are not generated too."""
    pool = code["pool"]
    if pool not in config.coupon_pools:
        known = ", ".join(sorted(config.coupon_pools)) or "none"
        issues.append(doc.issue(where + ("pool",), f"coupon pool '{pool}' is not in engine.yaml (pools: {known})",
                                fix=f"add it under coupons: in engine.yaml, e.g. coupons: {{{pool}: {{table: shop.coupon_codes}}}} "
                                    f"(or without table, then import its codes: engine codes import {pool} FILE.csv)"))
    for generated in ("prefix", "length"):
        if generated in code:
            issues.append(doc.issue(where + (generated,), f"{generated} is for generated codes; pool {pool}'s codes "
                                    "are the shop's own", fix=f"remove {generated}, or the pool"))


def _wait(doc: Document, config: ProjectConfig, trigger: Trigger, where: tuple, raw: dict, delay,
          issues: list[Issue]) -> WaitUntil | None:
    """The step's early-firing wait (``wait_until`` + ``at_most``), or None; each misuse an issue."""
    if "wait_until" not in raw and "at_most" not in raw:
        return None
    if "wait_until" not in raw or "at_most" not in raw:
        present = "wait_until" if "wait_until" in raw else "at_most"
        issues.append(doc.issue(where + (present,), "wait_until and at_most go together",
                                fix="give both, e.g. wait_until: ordered and at_most: 3d (sent at the order, or after 3 days)"))
        return None
    event = raw["wait_until"]
    at_most = duration_setting(doc, where + ("at_most",), raw["at_most"], issues)
    _needs(doc, config, where + ("wait_until",), f"wait_until {event}", WAIT_EVENTS.get(event, "events"), None, issues)
    kind = kind_of(trigger)
    if kind.dated or kind.local_date or not kind.keys_in_sql:
        issues.append(doc.issue(where + ("wait_until",), f"wait_until awaits events after an instant; a {trigger.kind} "
                                "trigger is a date", fix="use wait_until with a trigger of an order, checkout, event or segment"))
    if "send_at" in raw:
        issues.append(doc.issue(where + ("send_at",), "a step with wait_until goes at the moment the event happens; "
                                "send_at would hold it back", fix="remove send_at (quiet hours still apply) or wait_until"))
    if not isinstance(delay, timedelta) or not at_most > delay:
        issues.append(doc.issue(where + ("at_most",), f"at_most ({raw['at_most']}) must be longer than the step's delay "
                                f"({raw['delay']}): the delay is the earliest the step goes, at_most after the trigger the latest",
                                fix="lengthen at_most, or shorten the delay"))
    return WaitUntil(event=event, at_most=at_most)


def sample_context(config: ProjectConfig, trigger: Trigger, discount_code: bool, wait: bool = False) -> dict:
    """A context with every variable a template of this trigger may use, for validation.

    Rendering each template against it with StrictUndefined turns a missing or
    misspelt variable into a validation error instead of an empty string.
    """
    from engine.model import ENTITY_COLUMNS

    def record(entity: str) -> dict:
        source = config.sources.get(entity)
        names = list(source.columns) if source else list(ENTITY_COLUMNS[entity][0])
        return {name: _SAMPLE_VALUES.get(name, "sample") for name in names}

    template_record = kind_of(trigger).template_record
    trigger_entity, item_entity = (template_record.entity, template_record.items) if template_record else (None, None)
    trigger_record = record(trigger_entity) if trigger_entity and trigger_entity in config.sources else {}
    items = [record(item_entity)] if item_entity and item_entity in config.sources else []
    if template_record is not None and template_record.key_column is not None and trigger_record:
        trigger_record.update(item_count=1, categories=["sample"])  # render.item_summary
    context = {
        "customer": record("customers"),
        "trigger": {"key": "1", "at": "2025-01-01 00:00:00", **trigger_record},
        "items": items,
        "campaign": "campaign", "step": "step", "variant": "default",
        "message_key": "campaign:step:1:1", "due_at": "2025-01-01 00:00:00",
        "unsubscribe_url": "https://shop.example/unsubscribe?c=1&k=email&s=0",
        "shop": shop_settings(config.shop),
        "recipient": "Anna Meyer\nHauptstraße 1\n10115 Berlin",
        "scan_url": "https://shop.example/scan?m=0&s=0",
    }
    if discount_code:
        context["discount_code"] = "SAMPLE-CODE"
    if wait:  # decide.wait_outcome
        context["wait"] = {"outcome": "event", "event": "ordered", "deadline": "2025-01-04 00:00:00"}
    # the lists a template may declare (templating/declarations.py); a template sees only those it declares
    promotion = {name: _SAMPLE_VALUES.get(name, "sample") for group in ENTITY_COLUMNS["promotions"] for name in group}
    context["promotions"] = [promotion, {**promotion, "promotion_id": 2}]
    return context


_SAMPLE_VALUES = {"price": 9.5, "total": 19.0, "quantity": 1, "promotion_id": 1, "valid_from": "2025-01-01 00:00:00",
                  "valid_to": "2025-02-01 00:00:00"}


def lint(doc: Document, campaign: Campaign, config: ProjectConfig) -> list[Issue]:
    """Non-fatal warnings: things that are allowed but usually a mistake."""
    warnings = []
    if not campaign.stop and not kind_of(campaign.trigger).ends_by_itself:
        warnings.append(doc.issue(("name",), f"campaign '{campaign.name}' has no stop condition",
                                  fix="add stop: [ordered_again] (or came_back, unsubscribed) unless every step must go out regardless",
                                  severity="warning"))
    for index, step in enumerate(campaign.steps):
        where = ("steps", index)
        kinds = [channel_kinds.kind(config.channels[c].kind) for c in step.channels if c in config.channels]
        if step.freshness is None and (not kinds or any(kind.freshness_expected for kind in kinds)):
            warnings.append(doc.issue(where + ("id",), f"step '{step.id}' has no freshness window: after an outage it would still be sent, however late",
                                      fix="add freshness: (e.g. 1d) so late messages are skipped", severity="warning"))
        queued = [channel for channel in step.channels if channel in config.channels
                  and channel_kinds.kind(config.channels[channel].kind).delivery_options]
        if step.delivery is not None and not queued:
            warnings.append(doc.issue(where + ("delivery",), f"step '{step.id}' gives delivery options, but none of its "
                                      f"channels takes them: they are ignored",
                                      fix="remove delivery: or send the step on a channel of a kind that queues messages "
                                          "(" + ", ".join(k.name for k in channel_kinds.KINDS.values() if k.delivery_options) + ")",
                                      severity="warning"))
        for channel in step.channels:
            kind = channel_kinds.kind(config.channels[channel].kind) if channel in config.channels else None
            if (kind is not None and kind.quiet_hours_expected and step.quiet_hours is None
                    and channel not in config.quiet_hours):
                warnings.append(doc.issue(where + ("id",), f"step '{step.id}' sends {kind.label} without quiet hours",
                                          fix=f"add quiet_hours: {{start: '21:00', end: '08:00'}} to the step or defaults.quiet_hours.{channel} in {config.file}",
                                          severity="warning"))
    warnings += renamed_steps(doc, campaign, config)
    return warnings


def renamed_steps(doc: Document, campaign: Campaign, config: ProjectConfig) -> list[Issue]:
    """Warn when a step id disappeared and another appeared since git's HEAD: a renamed
    id is a new step, so everyone who got the old one would get the new one too."""
    import subprocess

    from engine.spec.load import load_yaml_text

    path = Path(doc.file)
    try:
        relative = path.resolve().relative_to(config.root)
        result = subprocess.run(["git", "-C", str(config.root), "show", f"HEAD:./{relative}"],
                                capture_output=True, text=True, timeout=10)
    except (ValueError, OSError, RuntimeError, subprocess.SubprocessError):
        return []
    if result.returncode != 0:
        return []
    before = load_yaml_text(result.stdout, doc.file).data  # the same limits as the file on disk
    try:
        old_ids = [s["id"] for s in before.get("steps", []) if isinstance(s, dict) and "id" in s]
    except (AttributeError, TypeError):
        return []
    new_ids = [s.id for s in campaign.steps]
    gone = [i for i in old_ids if i not in new_ids]
    added = [i for i in new_ids if i not in old_ids]
    if not gone or not added:
        return []
    return [doc.issue(("steps", new_ids.index(step_id), "id"),
                      f"step '{step_id}' is new and '{', '.join(gone)}' is gone since the last commit: if this is a rename, "
                      f"customers who already got '{gone[0]}' will get '{step_id}' too",
                      fix=f"keep the old id '{gone[0]}' to keep its ledger history (ids are identities, not labels)",
                      severity="warning") for step_id in added]
