"""``engine customer CUSTOMER_ID``: a thin layer over engine.tools.customer."""
from __future__ import annotations

import json
from pathlib import Path

import click

from engine.cli.common import handle_errors, open_reconciler


@click.command()
@click.argument("customer_id")
@click.option("--all", "all_orders", is_flag=True, help="All orders, not only the latest 10.")
@click.option("--messages", is_flag=True, help="Also show each message as it was sent (stored content).")
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True)
@click.pass_obj
@handle_errors
def customer(project_dir: Path, customer_id: str, all_orders: bool, messages: bool, fmt: str):
    """Show CUSTOMER_ID's attributes, orders and every campaign message the ledger holds for them."""
    from engine.tools.customer import customer_view, format_text

    _, reconciler = open_reconciler(project_dir)
    try:
        view = customer_view(reconciler, customer_id, all_orders=all_orders, messages=messages)
    finally:
        reconciler.close()
    click.echo(json.dumps(view.as_dict(), indent=2, default=str) if fmt == "json" else format_text(view))
