"""``engine export SEGMENT|CAMPAIGN``: a thin layer over engine.tools.export."""
from __future__ import annotations

import sys
from pathlib import Path

import click

from engine.cli.common import as_of_option, handle_errors, open_reconciler, quiet_option
from engine.progress import around_output, progress_for


@click.command()
@click.argument("name", required=False)
@click.option("--where", metavar="FILTER", help="An ad-hoc segment, e.g. \"order_count >= 3\" (instead of NAME).")
@click.option("--history", is_flag=True, help="For a campaign: its ledger rows instead of the messages due now.")
@click.option("--format", "fmt", type=click.Choice(["csv", "jsonl"]), default="csv", show_default=True)
@as_of_option
@click.option("--out", "out_path", type=click.Path(dir_okay=False, path_type=Path), help="Write to FILE (default: stdout).")
@quiet_option
@click.pass_obj
@handle_errors
def export(project_dir: Path, name: str | None, where: str | None, history: bool, fmt: str, as_of, out_path: Path | None,
           quiet: bool):
    """Stream a segment's customers, or a campaign's due messages (--history: its ledger rows), as CSV or JSON lines."""
    from engine.clock import SystemClock
    from engine.tools.export import check_segment_filter, export_history, export_plan, export_segment, resolve_target

    progress = progress_for("export", quiet)
    _, reconciler = open_reconciler(project_dir, progress=progress)
    try:
        kind, target = resolve_target(reconciler, name, where)
        if history and kind != "campaign":
            raise click.UsageError("--history exports a campaign's ledger rows; give a campaign name")
        if kind == "segment":
            check_segment_filter(reconciler, target)  # before the output file is created
        now = as_of or SystemClock().now()
        out = open(out_path, "w", newline="", encoding="utf-8") if out_path else sys.stdout
        try:
            if kind == "segment":
                count = export_segment(reconciler, target, now, fmt, out, progress)
            elif history:
                count = export_history(reconciler, target, fmt, out, progress)
            else:
                count = export_plan(reconciler, target, now, fmt, out, lambda batches: around_output(batches, progress))
        finally:
            progress.finish()
            if out_path:
                out.close()
    finally:
        reconciler.close()
    if out_path:
        click.echo(f"{count} row(s) written to {out_path}", err=True)
