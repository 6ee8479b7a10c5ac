"""``engine explain CAMPAIGN CUSTOMER_ID``: a thin layer over engine.tools.explain."""
from __future__ import annotations

import json
from pathlib import Path

import click

from engine.cli.common import as_of_option, handle_errors, open_reconciler


@click.command()
@click.argument("campaign")
@click.argument("customer_id")
@as_of_option
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True)
@click.pass_obj
@handle_errors
def explain(project_dir: Path, campaign: str, customer_id: str, as_of, fmt: str):
    """Why CUSTOMER_ID is or is not due for each step of CAMPAIGN now (or at --as-of)."""
    from engine.clock import SystemClock
    from engine.tools.explain import explain as explain_customer, format_text

    _, reconciler = open_reconciler(project_dir)
    try:
        result = explain_customer(reconciler, campaign, customer_id, as_of or SystemClock().now())
    finally:
        reconciler.close()
    click.echo(json.dumps(result.as_dict(), indent=2) if fmt == "json" else format_text(result))
