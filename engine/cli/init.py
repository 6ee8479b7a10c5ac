"""`engine init [DIR]`: start a project (engine.yaml, one campaign, the email layout) over tools.init_project."""
from __future__ import annotations

from pathlib import Path

import click

from engine.cli.common import handle_errors
from engine.masking import mask


@click.command(name="init")
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path), default=".")
@click.option("--from-warehouse", "warehouse_url", metavar="URL",
              help="Propose the source mapping from this warehouse's tables (SQLAlchemy URL, e.g. sqlite:///shop.db).")
@click.option("--shop-name", help="The shop's name, shown in every email's footer.")
@click.option("--shop-url", metavar="URL", help="The shop's website; its domain also gives the sender and unsubscribe URL.")
@click.option("--shop-address", help="The postal address shown in every email's footer.")
@click.option("--shop-legal", help="The legal footer line (company, register, VAT id).")
@click.option("--force", is_flag=True, help="Overwrite the files of an existing project in DIR.")
@handle_errors
def init(directory: Path, warehouse_url: str | None, shop_name, shop_url, shop_address, shop_legal, force: bool):
    """Start a project in DIR (default: here): engine.yaml with the mapping to fill in, one campaign, the layout."""
    from engine.tools.init_project import Shop, init_project  # SQLAlchemy: not at `engine --help`

    shop = Shop(name=shop_name, url=shop_url, address=shop_address, legal=shop_legal)
    written = init_project(directory, warehouse_url, shop, force=force)
    click.echo(mask(f"Wrote {', '.join(written)} in {directory}."))
    lines = (directory / "engine.yaml").read_text().splitlines()
    for line in lines[2:]:  # below the header, which explains them
        if "TODO" in line or "did you mean" in line:
            click.echo(f"  {'to fill in' if 'TODO' in line else 'to check'}: {line.strip()}")
    click.echo("Next: set ENGINE_CODE_SECRET (openssl rand -hex 32), then run `engine validate --check-warehouse` "
               f"in {directory}.")
