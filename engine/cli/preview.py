"""``engine preview CAMPAIGN STEP CUSTOMER_ID``: a thin layer over engine.tools.preview."""
from __future__ import annotations

from pathlib import Path

import click

from engine.cli.common import as_of_option, handle_errors, open_reconciler


@click.command()
@click.argument("campaign")
@click.argument("step")
@click.argument("customer_id")
@as_of_option
@click.option("--variant", help="Render this variant of the step (default: the one the plan chooses, else the first).")
@click.option("--out", "out", type=click.Path(file_okay=False, path_type=Path),
              help="Write the message's files here (message.eml, .html, .txt; message.pdf; message.json) and list them.")
@click.pass_obj
@handle_errors
def preview(project_dir: Path, campaign: str, step: str, customer_id: str, as_of, variant: str | None, out: Path | None):
    """Render what CUSTOMER_ID would receive for STEP of CAMPAIGN now (or at --as-of); claims, records and sends nothing."""
    from engine.clock import SystemClock, format_instant
    from engine.tools.preview import preview as render_preview, write_files

    now = as_of or SystemClock().now()
    _, reconciler = open_reconciler(project_dir, signs=True)
    try:
        result = render_preview(reconciler, campaign, step, customer_id, now, variant)
    finally:
        reconciler.close()
    if result.not_due is not None:
        click.echo(f"not due at {format_instant(now)}: {result.not_due}; rendered as if due", err=True)
    if out is None:
        click.echo(result.summary())
        return
    for path in write_files(result, out):
        click.echo(str(path))
