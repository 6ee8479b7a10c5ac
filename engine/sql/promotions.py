"""The promotions a batch's templates show, as one query for all its (campaign, step) targets.

A promotion is valid at the pass's instant ``now`` when ``valid_from <= now < valid_to``
(half-open like every window of the engine; NULL: open on that side), and feeds a
(campaign, step) when its ``campaign`` is NULL or that campaign and its ``step`` NULL or
that step. The warehouse matches, orders and limits: per target the most specific
promotions first (for the step, then for the campaign, then for every campaign), then
the newest ``valid_from``, then ``promotion_id``, at most the target's limit; a
promotion mapped by several rows that feed the same target counts once (its most
specific row). Pure: builds the query, never runs it.
"""
from __future__ import annotations

from datetime import datetime
from typing import Sequence

from sqlglot import exp

from engine.model import ENTITY_COLUMNS, EntitySource
from engine.sql.compile import source_select, ts

#: Columns of each result row besides the promotion's own: which target it is for, and its place there.
TARGET_CAMPAIGN, TARGET_STEP, POSITION = "target_campaign", "target_step", "list_position"


def promotions_query(source: EntitySource, dialect: str, now: datetime,
                     targets: Sequence[tuple[str, str, int]]) -> exp.Select:
    """One row per (target, promotion shown), ordered by target and position; ``targets`` are
    (campaign, step, most promotions shown) and must not be empty."""
    if not targets:
        raise ValueError("promotions_query needs at least one target")
    target_rows = [exp.select(exp.alias_(exp.Literal.string(campaign), TARGET_CAMPAIGN),
                              exp.alias_(exp.Literal.string(step), TARGET_STEP),
                              exp.alias_(exp.Literal.number(int(limit)), "target_limit"))
                   for campaign, step, limit in sorted(set(targets))]
    union: exp.Query = target_rows[0]
    for row in target_rows[1:]:
        union = exp.union(union, row, distinct=False, copy=False)  # every part built here: no copies
    p, t = "p", "t"

    def pc(name: str) -> exp.Column:
        return exp.column(name, table=p)

    def tc(name: str) -> exp.Column:
        return exp.column(name, table=t)

    def null_last(value: exp.Expression) -> exp.Expression:  # 1 when NULL, else 0: the same order in every dialect
        return exp.case().when(value.is_(exp.null()), exp.Literal.number(1)).else_(exp.Literal.number(0))

    instant = ts(now, dialect)
    feeds = exp.and_(
        exp.or_(pc("campaign").is_(exp.null()), pc("campaign").eq(tc(TARGET_CAMPAIGN))),
        exp.or_(pc("step").is_(exp.null()), pc("step").eq(tc(TARGET_STEP))),
    )
    valid = exp.and_(
        exp.or_(pc("valid_from").is_(exp.null()), pc("valid_from") <= instant.copy()),
        exp.or_(pc("valid_to").is_(exp.null()), pc("valid_to") > instant.copy()),
    )
    specificity = exp.Add(this=null_last(pc("step")), expression=null_last(pc("campaign")))
    own = [exp.column(name) for name in (*ENTITY_COLUMNS["promotions"][0], *ENTITY_COLUMNS["promotions"][1])]
    matched = (
        exp.select(tc(TARGET_CAMPAIGN), tc(TARGET_STEP), tc("target_limit"), *[pc(c.name) for c in own],
                   exp.alias_(specificity, "specificity"),
                   exp.alias_(_row_number([tc(TARGET_CAMPAIGN), tc(TARGET_STEP), pc("promotion_id")],
                                          [exp.Ordered(this=specificity.copy())]), "copy_rank"))
        .from_(exp.alias_(union.subquery(copy=False), t, copy=False), copy=False)
        .join(exp.alias_(source_select(source, dialect).subquery(copy=False), p, copy=False), on=feeds,
              join_type="inner", copy=False)
        .where(valid, copy=False)
    )
    ranked = (
        exp.select(exp.Star(), exp.alias_(_row_number(
            [exp.column(TARGET_CAMPAIGN), exp.column(TARGET_STEP)],
            [exp.Ordered(this=exp.column("specificity")),
             exp.Ordered(this=null_last(exp.column("valid_from"))),
             exp.Ordered(this=exp.column("valid_from"), desc=True),
             exp.Ordered(this=exp.column("promotion_id"))]), POSITION))
        .from_(matched.subquery("matched", copy=False), copy=False)
        .where(exp.column("copy_rank").eq(exp.Literal.number(1)), copy=False)
    )
    return (
        exp.select(exp.column(TARGET_CAMPAIGN), exp.column(TARGET_STEP), exp.column(POSITION), *own)
        .from_(ranked.subquery("ranked", copy=False), copy=False)
        .where(exp.column(POSITION) <= exp.column("target_limit"), copy=False)
        .order_by(exp.column(TARGET_CAMPAIGN), exp.column(TARGET_STEP), exp.column(POSITION), copy=False)
    )


def _row_number(partition: list[exp.Expression], order: list[exp.Ordered]) -> exp.Window:
    return exp.Window(this=exp.RowNumber(), partition_by=partition, order=exp.Order(expressions=order))
