"""``engine stats`` and ``engine report``: a thin layer over engine.tools.stats and engine.tools.report."""
from __future__ import annotations

import sys
from datetime import datetime
from pathlib import Path

import click

from engine.clock import SystemClock, format_instant
from engine.cli.common import (
    campaign_option, handle_errors, instant_option_value, open_reconciler, quiet_option, time_range_options,
)
from engine.progress import Progress, progress_for


def period_text(since: datetime | None, until: datetime | None) -> str:
    if since and until:
        return f"Messages due from {format_instant(since)} until {format_instant(until)}"
    if since:
        return f"Messages due from {format_instant(since)}"
    if until:
        return f"Messages due before {format_instant(until)}"
    return "All messages in the ledger"


def collect(project_dir: Path, campaigns: tuple[str, ...], since: datetime | None, until: datetime | None,
            progress: Progress = Progress(), include_machine: bool = False):
    """Statistics of the named campaigns (default: every campaign of the project, disabled ones included)."""
    from engine.tools.stats import StatsReader

    project, reconciler = open_reconciler(project_dir)
    try:
        try:
            selected = [project.campaign(c) for c in campaigns] if campaigns else list(project.campaigns)
        except KeyError as exc:
            raise click.UsageError(exc.args[0]) from None
        reader = StatsReader(project.config, reconciler.warehouse, reconciler.ledger, include_machine=include_machine)
        collected = []
        for index, campaign in enumerate(selected, 1):
            progress.stage("campaign", index, len(selected), campaign.name)
            collected.append(reader.campaign(campaign, since, until))
        return collected
    finally:
        progress.finish()
        reconciler.close()


machine_option = click.option(
    "--include-machine", "include_machine", is_flag=True,
    help="Count machine opens (mail privacy prefetch) and link-scanner clicks as opens and clicks (default: left out).")


@click.command()
@campaign_option
@time_range_options
@click.option("--format", "fmt", type=click.Choice(["text", "json", "csv"]), default="text", show_default=True)
@machine_option
@quiet_option
@click.pass_obj
@handle_errors
def stats(project_dir: Path, campaigns, since, until, fmt: str, include_machine: bool, quiet: bool):
    """Per campaign, step, variant and kind: entered, sent, skipped, failed, delivered, opened, clicked, bounced,
    complaints, unsubscribed, converted, revenue, holdout uplift; A/B variants by conversion and click rate."""
    from engine.tools.stats_output import write_stats

    all_stats = collect(project_dir, campaigns, since, until, progress_for("stats", quiet), include_machine)
    write_stats(all_stats, fmt, sys.stdout, period_text(since, until))


@click.command()
@campaign_option
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Directory to write index.html into (created if missing).")
@time_range_options
@click.option("--as-of", "as_of", callback=instant_option_value, metavar="INSTANT", help="The 'generated' time shown (default: now).")
@machine_option
@quiet_option
@click.pass_obj
@handle_errors
def report(project_dir: Path, campaigns, out_dir: Path, since, until, as_of, include_machine: bool, quiet: bool):
    """Write a self-contained HTML report (funnels, holdout uplift, sends and conversions per day)."""
    from engine.spec.config import load_config
    from engine.tools.report import write_report

    all_stats = collect(project_dir, campaigns, since, until, progress_for("report", quiet), include_machine)
    generated = format_instant(as_of or SystemClock().now())
    currency = load_config(project_dir)[0].currency  # collect() has loaded it already: it is valid
    path = write_report(out_dir, all_stats, period_text(since, until), generated, currency)
    click.echo(f"Report for {len(all_stats)} campaign(s) written to {path}")
