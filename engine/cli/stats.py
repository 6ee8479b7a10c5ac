"""``engine stats`` and ``engine report``: a thin layer over engine.tools.stats and engine.tools.report."""
from __future__ import annotations

import sys
from datetime import datetime
from pathlib import Path

import click

from engine.clock import SystemClock, format_instant
from engine.cli.common import handle_errors, instant_option_value, open_reconciler


since_option = click.option("--since", callback=instant_option_value, metavar="INSTANT",
                            help="Only messages due at or after INSTANT (ISO 8601: 2025-01-01 or 2025-01-01T00:00:00Z).")
until_option = click.option("--until", callback=instant_option_value, metavar="INSTANT", help="Only messages due before INSTANT.")


def period_text(since: datetime | None, until: datetime | None) -> str:
    if since and until:
        return f"Messages due from {format_instant(since)} until {format_instant(until)}"
    if since:
        return f"Messages due from {format_instant(since)}"
    if until:
        return f"Messages due before {format_instant(until)}"
    return "All messages in the ledger"


def collect(project_dir: Path, campaign: str | None, since: datetime | None, until: datetime | None):
    """Statistics of one campaign (or every campaign of the project, disabled ones included)."""
    from engine.tools.stats import StatsReader

    if since and until and since >= until:
        raise click.BadParameter(f"--since {format_instant(since)} is not before --until {format_instant(until)}")
    project, reconciler = open_reconciler(project_dir)
    try:
        try:
            selected = [project.campaign(campaign)] if campaign else list(project.campaigns)
        except KeyError as exc:
            raise click.UsageError(exc.args[0]) from None
        reader = StatsReader(project.config, reconciler.warehouse, reconciler.ledger)
        return [reader.campaign(c, since, until) for c in selected]
    finally:
        reconciler.close()


@click.command()
@click.argument("campaign", required=False)
@since_option
@until_option
@click.option("--format", "fmt", type=click.Choice(["text", "json", "csv"]), default="text", show_default=True)
@click.pass_obj
@handle_errors
def stats(project_dir: Path, campaign: str | None, since, until, fmt: str):
    """Per campaign and step: entered, sent, skipped, failed, unsubscribed, converted, revenue, holdout uplift."""
    from engine.tools.stats_output import write_stats

    write_stats(collect(project_dir, campaign, since, until), fmt, sys.stdout, period_text(since, until))


@click.command()
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Directory to write index.html into (created if missing).")
@click.option("--campaign", metavar="NAME", help="Only this campaign. Default: every campaign of the project.")
@since_option
@until_option
@click.option("--as-of", "as_of", callback=instant_option_value, metavar="INSTANT", help="The 'generated' time shown (default: now).")
@click.pass_obj
@handle_errors
def report(project_dir: Path, out_dir: Path, campaign: str | None, since, until, as_of):
    """Write a self-contained HTML report (funnels, holdout uplift, sends and conversions per day)."""
    from engine.spec.config import load_config
    from engine.tools.report import write_report

    all_stats = collect(project_dir, campaign, since, until)
    generated = format_instant(as_of or SystemClock().now())
    currency = load_config(project_dir)[0].currency  # collect() has loaded it already: it is valid
    path = write_report(out_dir, all_stats, period_text(since, until), generated, currency)
    click.echo(f"Report for {len(all_stats)} campaign(s) written to {path}")
