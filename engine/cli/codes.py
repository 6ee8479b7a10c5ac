"""``engine codes import|export|status``: coupon pools, a thin layer over engine.tools.codes; and the
low-pool warning ``engine plan`` prints (``plan_pool_warnings``)."""
from __future__ import annotations

import sys
from pathlib import Path

import click

from engine.cli.common import handle_errors, open_reconciler


@click.group(name="codes")
def codes():
    """Coupon code pools (coupons: in engine.yaml): import the shop's codes, export them, count them."""


@codes.command(name="import")
@click.argument("pool")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--column", default="code", show_default=True, help="The CSV column holding the codes (its header name).")
@click.pass_obj
@handle_errors
def import_command(project_dir: Path, pool: str, file: Path, column: str):
    """Add the codes of FILE (CSV with a header line, as the shop platform exports them) to POOL.

    A file with an empty code, a code twice or without the column is refused whole (file:line, the fix);
    codes the pool has already are left as they are, so an import can be run again."""
    from engine.clock import SystemClock
    from engine.tools.codes import check_pool, import_codes

    project, reconciler = open_reconciler(project_dir, writes=True)
    try:
        check_pool(project, pool, importing=True)
        new, known = import_codes(project, reconciler.ledger, pool, file, column, SystemClock().now())
    finally:
        reconciler.close()
    click.echo(f"{new} code(s) imported into pool {pool}" + (f"; {known} it had already were left as they are" if known else ""))


@codes.command(name="export")
@click.argument("pool", required=False)
@click.option("--generated", is_flag=True, help="The generated codes (discount_code: {prefix, length}) instead of a pool's.")
@click.option("--status", type=click.Choice(["all", "claimed", "available"]), default="all", show_default=True,
              help="claimed: the codes handed to a message (to activate in the shop); available: the unused ones.")
@click.option("--format", "fmt", type=click.Choice(["csv", "jsonl"]), default="csv", show_default=True)
@click.option("--out", "out_path", type=click.Path(dir_okay=False, path_type=Path), help="Write to FILE (default: stdout).")
@click.pass_obj
@handle_errors
def export_command(project_dir: Path, pool: str | None, generated: bool, status: str, fmt: str, out_path: Path | None):
    """Stream POOL's codes with the message each went to (customer, campaign, step, the message's status).

    A code whose message was not sent (failed, skipped after its claim, unknown after a crash) is never
    handed out again: it shows with that message's status ("burnt")."""
    from engine.tools.codes import check_pool, export_codes

    if (pool is None) == (not generated):
        raise click.UsageError("name a pool, or give --generated for the generated codes")
    project, reconciler = open_reconciler(project_dir)
    try:
        if pool is not None:
            check_pool(project, pool)  # before the output file is created
        out = open(out_path, "w", newline="", encoding="utf-8") if out_path else sys.stdout
        try:
            count = export_codes(project, reconciler.ledger, pool, fmt, out, status)
        finally:
            if out_path:
                out.close()
    finally:
        reconciler.close()
    if out_path:
        click.echo(f"{count} code(s) written to {out_path}", err=True)


@codes.command(name="status")
@click.pass_obj
@handle_errors
def status_command(project_dir: Path):
    """Each pool's codes, codes handed out and codes left; LOW at low_at or fewer."""
    from engine.tools.codes import levels, pool_table

    project, reconciler = open_reconciler(project_dir)
    try:
        click.echo(pool_table(levels(project, reconciler.ledger, warehouse=reconciler.warehouse)))
    finally:
        reconciler.close()


def plan_pool_warnings(project, reconciler, campaigns, sends: dict[str, int]) -> list[str]:
    """The warnings of ``engine plan`` about the pools ``campaigns`` use: running low, or fewer codes left
    than the plan's messages need (``sends``: pool -> messages planned with its codes)."""
    from engine.errors import EngineError
    from engine.run.coupons import pool_levels, pools_of

    used = pools_of(campaigns)
    if not used:
        return []
    try:
        found = pool_levels(project, reconciler.ledger, list(used), reconciler.warehouse)
    except EngineError as exc:  # the pool's table: its campaigns fail at the next pass, with this reason
        return [str(exc)]
    warnings = []
    for level in found:
        needed = sends.get(level.pool, 0)
        if needed > level.left:
            warnings.append(f"coupon pool {level.pool} has {level.left} unused code(s) left and this plan sends "
                            f"{needed} message(s) with its codes: {needed - level.left} would be skipped (no_code); "
                            f"{level.fix()}")
        elif level.low:
            warnings.append(level.warning())
    return warnings


def counting_coded_sends(batches, project, sends: dict[str, int]):
    """The plan's batches, passed through, counting into ``sends`` the messages sent with a pool's codes."""
    for batch in batches:
        for m in batch:
            if m.action == "send":
                pool = project.campaign(m.campaign).step(m.step).discount_code
                if pool is not None and pool.pool is not None:
                    sends[pool.pool] = sends.get(pool.pool, 0) + 1
        yield batch
