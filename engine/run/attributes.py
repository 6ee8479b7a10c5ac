"""The customer attributes a campaign's due query fetches: only those something after it reads.

A due row carries the customer's attributes (``cust__*``, the ``customer`` of a ``DueMessage``); a
shop maps two dozen, a campaign's messages read a few. What reads them after the query: the
plan's decision and the quiet hours (the time zone), the channel choice and the render (each of
the campaign's channel kinds' address and consent columns, ``ChannelKind.customer_columns``; the
tracking consent), the plan's output (a message's contact: every kind's contact field), and the
templates of the campaign's variants with the layout (``templating.reads``: None when a template
may read any key). The audience, variant and stop filters are SQL over the customers' table and
read no fetched column. When anything may read every attribute, the query fetches them all.

The set is computed at every pass from the templates as they are on disk (a changed template
changes it) and is part of the compiled statement's cache key (sql.prepared). Pure but for
reading template files; decides nothing.
"""
from __future__ import annotations

from collections.abc import Sequence

from engine import channel_kinds
from engine.model import TRACKING_CONSENT, Campaign, Project
from engine.templating.layout import EMAIL_LAYOUT
from engine.templating.reads import TemplateReads

#: read by the plan (a local send time, a yearly or local date trigger) and by the quiet hours
ZONE = "timezone"
#: the customer's key: always fetched (the pass addresses messages by it)
KEY = "customer_id"


def due_columns(project: Project, campaigns: Sequence[Campaign]) -> dict[str, tuple[str, ...] | None]:
    """Campaign name -> the customer attributes its due query fetches (``customer_columns``); each
    template file is read once."""
    templates = TemplateReads(project.templates_dir)
    return {campaign.name: customer_columns(project, campaign, templates) for campaign in campaigns}


def customer_columns(project: Project, campaign: Campaign,
                     templates: TemplateReads | None = None) -> tuple[str, ...] | None:
    """The mapped customer attributes ``campaign``'s messages read after its due query, in the mapping's
    order; None when that is all of them (or a template may read any)."""
    config = project.config
    templates = templates or TemplateReads(project.templates_dir)
    mapped = config.customer_attributes()
    needed = {KEY, ZONE, TRACKING_CONSENT, *channel_kinds.contact_fields()}
    for step in campaign.steps:
        for variant in step.variants:
            channel = config.channels.get(variant.channel)
            if channel is None:  # validation refuses it; whatever would read it, fetch everything
                return None
            kind = channel_kinds.kind(channel.kind)
            needed.update(kind.customer_columns)
            layout = (EMAIL_LAYOUT,) if kind.locked_layout else ()
            reads = templates.of(variant.template, layout)
            if reads is None:
                return None
            needed.update(reads)
    kept = tuple(column for column in mapped if column in needed)
    return None if len(kept) == len(mapped) else kept
