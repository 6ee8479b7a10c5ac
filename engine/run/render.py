"""The render stage: each claimed message becomes the message a channel sends, or a render failure.

Owns what a template sees (the customer, the trigger's record and items or the day's events,
loaded for a whole batch in a few queries; the promotions and product lists its template declares,
run.promotions and run.lists; the unsubscribe link; the discount code claimed with the
message) and the envelope (the address comes from the engine's record, taken before any template runs). Must not
write to the ledger or send: the failures it returns are recorded by the caller.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from email.utils import format_datetime

from sqlglot import exp

from engine import channel_kinds, scan_link, tracking as tokens, unsubscribe
from engine.channel_kinds.declaration import PRINTED_LINK
from engine.channels import OutgoingMessage, with_document
from engine.channels.base import DocumentProblem
from engine.clock import format_instant, parse_stored_timestamp
from engine.decide import wait_outcome
from engine.errors import TemplateError
from engine.model import TRACKING_CONSENT, Project, ProjectConfig
from engine.spec.config import shop_settings
from engine.sql.triggers.event import Event
from engine.sql.triggers.registry import kind_of
from engine.run.dispatch import serialize
from engine.run.lists import NO_PRODUCTS, declared, load_lists, missing_list
from engine.run.messages import DueMessage, PassReport
from engine.run import promotions as promotion_lists
from engine.run.record import as_record
from engine.run.sources import SourceRows
from engine.state.ledger import Record
from engine.templating.render import Renderer
from engine.templating.sandbox import read_only
from engine.templating.tracking import track_html


@dataclass
class Rendered:
    """A batch after rendering: the messages to send (with their stored content, in the same order)
    and the failures, which are final."""

    messages: list[tuple[DueMessage, OutgoingMessage]] = field(default_factory=list)
    contents: list[str] = field(default_factory=list)
    failures: list[Record] = field(default_factory=list)


def render(claimed: list[DueMessage], project: Project, config: ProjectConfig, renderer: Renderer, secret: str,
           sources: SourceRows, report: PassReport, now: datetime) -> Rendered:
    """Render every claimed message of a batch, each with its document (the bytes its transport hands
    over); ``secret`` signs unsubscribe links and discount codes, ``now`` dates the messages."""
    contexts = TriggerContexts(sources, project, config).load(claimed)
    promotions = promotion_lists.batch_promotions(claimed, project, config, renderer, sources.warehouse, now)
    lists = load_lists(claimed, project, renderer, sources, now)  # product lists: one query per kind
    rendered = Rendered()
    date = format_datetime(now.astimezone(timezone.utc))  # an RFC 5322 Date: the pass's instant
    # the layout's shop name, postal address, legal footer; read-only copies made once per batch, not per message
    shop = read_only(shop_settings(config.shop))
    shown_promotions: dict[tuple[str, str, int], list] = {}  # (campaign, step, how many) -> the list a template sees
    for m in claimed:
        step = project.campaign(m.campaign).step(m.step)
        variant = step.variant(m.variant)
        channel = config.channels[variant.channel]
        kind = channel_kinds.kind(channel.kind)
        # the envelope comes from the engine's record, taken before any template runs
        to = kind.normal_address(str(kind.address(m.customer)), channel.settings)
        if to is None:  # checked by the policies; a customer row changed since cannot reach a provider
            rendered.failures.append(as_record(m, "skipped", reason="invalid_contact"))
            report.add(m.campaign, m.step, "skipped:invalid_contact", channel=m.channel)
            continue
        shown = declared(m, project, renderer)
        empty = missing_list(shown, lists, m.customer_id)
        if empty is not None:  # never sent half-filled
            rendered.failures.append(as_record(m, "skipped", reason=NO_PRODUCTS,
                                               detail=f"the list {empty} of its template is empty for this customer"))
            report.add(m.campaign, m.step, f"skipped:{NO_PRODUCTS}", channel=m.channel)
            continue
        context = template_context(m, contexts.get((m.campaign, m.customer_id, m.trigger_key), {}))
        context.update({name: lists[name][m.customer_id] for name in shown})
        context["shop"] = shop
        context["recipient"] = to
        context["unsubscribe_url"] = unsubscribe.link(config.unsubscribe_url, secret, m.customer_id,
                                                      kind.unsubscribe_scope)
        tracked = is_tracked(m, project, config)
        # a tracked printed link records its scan; an untracked one (the old form) only redirects
        context["scan_url"] = (tokens.link(config.scan_url, tokens.seal(secret, "scan", m.key, now)) if tracked
                               else scan_link.link(config.scan_url, secret, m.key))
        if step.wait is not None:
            context["wait"] = wait_outcome(m.trigger_at, step, m.due_at)
        promotions_shown = promotion_lists.shown_limit(m, project, renderer)
        if promotions_shown is not None:
            target = (m.campaign, m.step, promotions_shown)
            if target not in shown_promotions:
                shown_promotions[target] = read_only(promotions.get((m.campaign, m.step), [])[:promotions_shown])
            context[promotion_lists.LIST] = shown_promotions[target]
            why = promotion_lists.problem(context[promotion_lists.LIST])
            if why is not None:  # never sent half-filled
                rendered.failures.append(as_record(m, "skipped", reason=promotion_lists.INVALID, detail=why))
                report.add(m.campaign, m.step, f"skipped:{promotion_lists.INVALID}", channel=m.channel)
                continue
        if step.discount_code is not None:
            if m.code is None:  # claimed without its code (not through claim.py): never sent without it
                rendered.failures.append(as_record(m, "skipped", reason="no_code",
                                                   detail="claimed without the coupon code its step gives"))
                report.add(m.campaign, m.step, "skipped:no_code", channel=m.channel)
                continue
            context["discount_code"] = m.code  # claimed with the message: a pool's code, or the generated one
        try:
            content = renderer.render(variant.template, channel.kind, context)
        except TemplateError as exc:
            rendered.failures.append(as_record(m, "failed", reason="render_error", detail=str(exc)))
            report.add(m.campaign, m.step, "failed:render_error", channel=m.channel)
            continue
        if "html" in content.parts:  # the HTML as sent: pixel, click redirects, UTM parameters
            content = replace(content, parts={**content.parts, "html": track_links(
                content.parts["html"], m, project, config, secret, now, tracked, keep=(context["unsubscribe_url"], context["scan_url"]))})
        sender = str(channel.settings.get("from", "shop@example.com"))
        headers = kind.headers(context["unsubscribe_url"], campaign=m.campaign, sender=sender)
        message = OutgoingMessage(
            key=m.key, kind=channel.kind, to=to, sender=sender, parts=content.parts,
            headers={**({"Date": date} if kind.rfc5322 else {}), **headers,
                     **(step.delivery.headers() if kind.delivery_options and step.delivery is not None else {}),
                     **({PRINTED_LINK: context["scan_url"]} if kind.printed_link else {})},
            origin={"campaign": m.campaign, "step": m.step, "variant": m.variant or "", "customer_id": m.customer_id,
                    "trigger_key": m.trigger_key, "due_at": format_instant(m.due_at)},
        )
        try:
            message = with_document(channel, message, config.root)
        except DocumentProblem as exc:  # e.g. a letter the printer cannot take: final, nothing handed over
            rendered.failures.append(as_record(m, "failed", reason="render_error", detail=str(exc)))
            report.add(m.campaign, m.step, "failed:render_error", channel=m.channel)
            continue
        rendered.messages.append((m, message))
        rendered.contents.append(serialize(message, {"discount_code": context.get("discount_code")}))
    return rendered


def is_tracked(m: DueMessage, project: Project, config: ProjectConfig) -> bool:
    """Opens, clicks and scans of this message are tracked: on in engine.yaml (policies.tracking.enabled), in
    its campaign or step (tracking:), and for its customer (the mapped tracking_consent column, if any, true)."""
    if not config.tracking.enabled or not project.campaign(m.campaign).tracking_of(m.step).enabled:
        return False
    return TRACKING_CONSENT not in m.customer or bool(m.customer[TRACKING_CONSENT])


def track_links(html: str, m: DueMessage, project: Project, config: ProjectConfig, secret: str, now: datetime,
                tracked: bool, keep: tuple[str, ...]) -> str:
    """The HTML part with its campaign's (step's) UTM parameters and, when ``tracked``, its links through the
    signed click redirect and the open pixel (engine.tracking makes the tokens)."""
    utm = project.campaign(m.campaign).tracking_of(m.step).utm
    if not tracked and not utm:
        return html
    base = config.tracking.url
    click = (lambda url: tokens.link(f"{base}/click", tokens.seal(secret, "click", m.key, now, url))) if tracked else None
    pixel = tokens.link(f"{base}/open", tokens.seal(secret, "open", m.key, now)) if tracked else None
    return track_html(html, click=click, pixel_url=pixel, utm=utm, keep=keep)


def template_context(m: DueMessage, trigger_record: dict) -> dict:
    return {
        "customer": m.customer,
        "campaign": m.campaign,
        "step": m.step,
        "variant": m.variant,
        "message_key": m.key,
        "due_at": m.due_at,
        "trigger": {"key": m.trigger_key, "at": m.trigger_at, **{k: v for k, v in trigger_record.items() if k != "items"}},
        "items": trigger_record.get("items", []),
    }


def item_summary(items: list[dict]) -> dict:
    """``trigger.item_count`` (a quantity counts that many, a row without one, one) and
    ``trigger.categories`` (distinct, sorted) of an order's or a checkout's items, as filters count them."""
    count = sum(int(item["quantity"]) if item.get("quantity") is not None else 1 for item in items)
    return {"item_count": count, "categories": sorted({str(i["category"]) for i in items if i.get("category") is not None})}


class TriggerContexts:
    """Loads what a template shows about the trigger, for a whole batch in a few queries:
    the order or checkout and its items, or the day's events (viewed products, searches)."""

    def __init__(self, sources: SourceRows, project: Project, config: ProjectConfig):
        self.sources = sources
        self.project = project
        self.config = config

    def load(self, messages: list[DueMessage]) -> dict[tuple[str, str, str], dict]:
        contexts: dict[tuple[str, str, str], dict] = {}
        by_campaign: dict[str, list[DueMessage]] = {}
        for m in messages:
            by_campaign.setdefault(m.campaign, []).append(m)
        for name, group in by_campaign.items():
            trigger = self.project.campaign(name).trigger
            record = kind_of(trigger).template_record  # where the trigger's template data comes from
            if record is None:
                continue
            if record.key_column is None:  # an event: the instance's events
                if "events" in self.config.sources:
                    contexts.update(self._events(name, trigger, group))
                continue
            record_entity, items_entity, id_column = record.entity, record.items, record.key_column
            keys = sorted({m.trigger_key for m in group})
            records = self.sources.by_key(record_entity, id_column, keys)
            items = self.sources.by_key(items_entity, id_column, keys)
            for m in group:
                record = dict(records.get(m.trigger_key, [{}])[0])
                record["items"] = items.get(m.trigger_key, [])
                record.update(item_summary(record["items"]))
                contexts[(name, m.customer_id, m.trigger_key)] = record
        return contexts

    def _events(self, campaign: str, trigger: Event, group: list[DueMessage]) -> dict[tuple[str, str, str], dict]:
        """The instance's events, newest first: for per-day triggers all of that day's events of the type."""
        customers = sorted({m.customer_id for m in group})
        of_type = exp.column("type").eq(exp.Literal.string(trigger.type))
        wanted = {(m.customer_id, m.trigger_key) for m in group}
        by_instance: dict[tuple[str, str], list[dict]] = {}
        for values in self.sources.rows_by_keys("events", "customer_id", customers, where=of_type):
            at = parse_stored_timestamp(values["occurred_at"])
            key = str(values["event_id"]) if trigger.per == "event" else at.date().isoformat()
            instance = (str(values["customer_id"]), key)
            if instance in wanted:
                by_instance.setdefault(instance, []).append(values)
        contexts = {}
        for (customer_id, key), events in by_instance.items():
            events.sort(key=lambda e: str(e["occurred_at"]), reverse=True)
            contexts[(campaign, customer_id, key)] = {**events[0], "items": events, "events": events}
        return contexts
