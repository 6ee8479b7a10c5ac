"""Coupon codes in the pass: which messages need a code, the pools read from the warehouse, how full they are.

Owns the link between a step's ``discount_code`` and the ledger's claim with codes
(state/coupons.py): a generated code (HMAC of the message key, as before) or a code of
one of engine.yaml's ``coupons:`` pools. A pool with a warehouse table is copied into the
ledger before a pass plans (``sync_pools``): new codes added, none removed; a table that is
missing, or holds an empty or a duplicate code, fails the campaigns that use the pool, with
what to fix, and the others go on. Must not claim, render or send: claim.py claims, render.py
shows the code the claim gave.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from datetime import datetime

from sqlglot import exp

from engine.decide import discount_code
from engine.errors import WarehouseError
from engine.model import Campaign, CouponPool, Project
from engine.run.messages import DueMessage
from engine.sql.compile import render_sql
from engine.state.coupons import GENERATED, CodeWanted
from engine.state.ledger import Ledger
from engine.state.warehouse import Database


class CouponPoolError(WarehouseError):
    """A pool's warehouse table cannot be read, or holds an empty or a duplicate code."""


@dataclass(frozen=True)
class PoolLevel:
    """How many codes a pool has and how many are left."""

    pool: str
    codes: int
    used: int
    low_at: int
    table: str | None = None

    @property
    def left(self) -> int:
        return max(0, self.codes - self.used)

    @property
    def low(self) -> bool:
        return self.left <= self.low_at

    def fix(self) -> str:
        return (f"add codes to its table {self.table}" if self.table
                else f"import more with engine codes import {self.pool} FILE.csv")

    def warning(self) -> str:
        return (f"coupon pool {self.pool} is running low: {self.left} unused code(s) left of {self.codes} "
                f"(low_at: {self.low_at}); a message that finds it empty is skipped (no_code): {self.fix()}")


def wanted_codes(messages: list[DueMessage], project: Project, secret: str) -> dict[str, CodeWanted]:
    """message key -> the code it needs, for the messages whose step gives one."""
    wanted = {}
    for m in messages:
        code = project.campaign(m.campaign).step(m.step).discount_code
        if code is None:
            continue
        wanted[m.key] = (CodeWanted(code.pool) if code.pool is not None
                         else CodeWanted(GENERATED, discount_code(secret, m.key, code.prefix, code.length)))
    return wanted


def pools_of(campaigns: list[Campaign]) -> dict[str, list[str]]:
    """pool -> the names of the campaigns (of ``campaigns``) with a step that takes its codes."""
    used: dict[str, list[str]] = {}
    for campaign in campaigns:
        for step in campaign.steps:
            if step.discount_code is not None and step.discount_code.pool is not None:
                names = used.setdefault(step.discount_code.pool, [])
                if campaign.name not in names:
                    names.append(campaign.name)
    return used


def read_pool_table(warehouse: Database, pool: CouponPool, dialect: str) -> list[str]:
    """The codes of ``pool``'s warehouse table, checked: none empty, none twice."""
    query = exp.select(exp.column(pool.column, quoted=True)).from_(exp.to_table(pool.table))
    where = f"coupons.{pool.name} in engine.yaml"
    try:
        rows = warehouse.fetch_all(render_sql(query, dialect))
    except WarehouseError as exc:
        first = (str(exc).strip().splitlines() or [""])[0]
        raise CouponPoolError(f"coupon pool {pool.name}: cannot read column {pool.column} of table {pool.table} in the "
                              f"warehouse ({first}); create the table with the shop's codes, or fix table/column of "
                              f"{where}") from None
    codes = ["" if row[0] is None else str(row[0]).strip() for row in rows]
    empty = codes.count("")
    if empty:
        raise CouponPoolError(f"coupon pool {pool.name}: table {pool.table} has {empty} row(s) with an empty or NULL "
                              f"{pool.column}; delete them (or fill in the codes) in the shop's table")
    twice = [code for code, n in Counter(codes).items() if n > 1]
    if twice:
        raise CouponPoolError(f"coupon pool {pool.name}: table {pool.table} has {len(twice)} code(s) more than once "
                              f"(e.g. {sorted(twice)[0]}); a code must be handed out once: remove the duplicates from "
                              f"the table (SELECT {pool.column} FROM {pool.table} GROUP BY {pool.column} HAVING "
                              f"COUNT(*) > 1 lists them)")
    return codes


def sync_pools(project: Project, warehouse: Database, ledger: Ledger, campaigns: list[Campaign], now: datetime,
               failures: dict[str, str] | None = None) -> None:
    """Copy the new codes of the warehouse tables of the pools ``campaigns`` use into the ledger. A pool
    that fails fails its campaigns (recorded in ``failures``; without, the error is raised)."""
    for name, users in pools_of(campaigns).items():
        pool = project.config.coupon_pools[name]
        if pool.table is None:
            continue
        try:
            codes = read_pool_table(warehouse, pool, project.config.dialect)
            ledger.add_codes(name, [(code, pool.table) for code in codes], now)
        except CouponPoolError as exc:
            if failures is None:
                raise
            for campaign in users:
                failures.setdefault(campaign, str(exc))


def pool_levels(project: Project, ledger: Ledger, names: list[str] | None = None,
                warehouse: Database | None = None) -> list[PoolLevel]:
    """Each pool's codes and how many were handed out (all pools, or ``names``). With ``warehouse``, a pool
    with a table counts the table's codes (the ledger has the ones copied at the last pass)."""
    pools = project.config.coupon_pools
    wanted = sorted(pools) if names is None else sorted(set(names))
    counts = ledger.pool_counts(wanted)
    levels = []
    for name in wanted:
        codes, used = counts[name]
        if warehouse is not None and pools[name].table is not None:
            codes = max(codes, len(read_pool_table(warehouse, pools[name], project.config.dialect)))
        levels.append(PoolLevel(name, codes, used, pools[name].low_at, pools[name].table))
    return levels
