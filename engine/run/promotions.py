"""The promotions a batch's messages show: one warehouse query per batch, never one per customer.

Which templates show promotions is what they declare (``{# uses: promotions #}``,
engine/templating/declarations.py); the (campaign, step) targets of a batch's messages
whose template declares them are matched, ordered and limited by the warehouse
(engine/sql/promotions.py) at the pass's instant. Every customer of a step sees the same
list. A promotion the list would show that has no title makes the message unsendable
(``problem``): the caller skips it with that reason rather than send it half-filled.
Must not write to the ledger or render.
"""
from __future__ import annotations

from datetime import datetime
from typing import Iterable

from engine.model import Project, ProjectConfig
from engine.run.messages import DueMessage
from engine.sql.compile import render_sql
from engine.sql.promotions import POSITION, TARGET_CAMPAIGN, TARGET_STEP, promotions_query
from engine.state.warehouse import Database, as_dicts
from engine.templating.render import Renderer

LIST = "promotions"
#: the skip reason of a message whose promotions cannot be shown
INVALID = "invalid_promotion"


def shown_limit(m: DueMessage, project: Project, renderer: Renderer) -> int | None:
    """How many promotions the template of ``m`` shows at most (None: it declares none)."""
    template = project.campaign(m.campaign).step(m.step).variant(m.variant).template
    return renderer.declared_lists(template).get(LIST)


def batch_promotions(messages: Iterable[DueMessage], project: Project, config: ProjectConfig, renderer: Renderer,
                     warehouse: Database, now: datetime) -> dict[tuple[str, str], list[dict]]:
    """(campaign, step) -> the promotions valid at ``now`` that feed it, most specific and newest first, as
    many as the step's templates show at most; only for the steps whose templates declare them. One query."""
    limits: dict[tuple[str, str], int] = {}
    for m in messages:
        limit = shown_limit(m, project, renderer)
        if limit is not None:
            limits[(m.campaign, m.step)] = max(limit, limits.get((m.campaign, m.step), 0))
    if not limits:
        return {}
    found: dict[tuple[str, str], list[dict]] = {target: [] for target in limits}
    source = config.sources.get(LIST)
    if source is None:  # validation refuses such a template; a project changed under a running pass shows none
        return found
    query = promotions_query(source, config.dialect, now, [(c, s, n) for (c, s), n in limits.items()])
    for values in as_dicts(warehouse.fetch_all(render_sql(query, config.dialect, copy=False))):  # built for this one query
        target = (str(values.pop(TARGET_CAMPAIGN)), str(values.pop(TARGET_STEP)))
        values.pop(POSITION)
        found[target].append(values)
    return found


def problem(promotions: list[dict]) -> str | None:
    """Why a message showing ``promotions`` must not be sent (None: it may)."""
    for promotion in promotions:
        title = promotion.get("title")
        if title is None or not str(title).strip():
            return (f"promotion {promotion.get('promotion_id')} has no title; fix its row in the promotions table "
                    "(or end it with valid_to): messages that show it are skipped meanwhile")
    return None
