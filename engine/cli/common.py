"""What every command shares: the error handler, the common options and opening a project's reconciler.

Owns the command line's conventions: ``EngineError`` -> ``Error: ...`` and exit 1,
anything unexpected -> exit 2 with a short message (``ENGINE_DEBUG=1`` shows the
traceback), both with every secret masked (masking.mask); how ``--as-of``,
``--campaign``, ``--shard`` and ``--quiet`` are spelled and parsed. engine.cli.main and
each command module of engine.cli imports it; it must import neither (the layer
contracts in pyproject.toml check it).
"""
from __future__ import annotations

import functools
import os
import sys
import traceback
from pathlib import Path

import click

from engine.clock import parse_instant
from engine.errors import EngineError, ProjectInvalid
from engine.masking import mask


def handle_errors(command):
    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except ProjectInvalid as exc:
            click.echo(mask(str(exc)), err=True)
            sys.exit(1)
        except EngineError as exc:
            click.echo(mask(f"Error: {exc}"), err=True)
            sys.exit(1)
        except (click.exceptions.Exit, click.ClickException, KeyboardInterrupt, SystemExit):
            raise
        except Exception as exc:  # noqa: BLE001 - the last line of defence
            if os.environ.get("ENGINE_DEBUG"):
                traceback.print_exc()
            click.echo(mask(f"Internal error: {type(exc).__name__}: {exc} (set ENGINE_DEBUG=1 for the traceback)"), err=True)
            sys.exit(2)
    return wrapper


def instant_option_value(_ctx, _param, value):
    """Click callback: an ISO 8601 instant, or a usage error saying what is wrong with it."""
    if value is None:
        return None
    try:
        return parse_instant(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


as_of_option = click.option("--as-of", "as_of", callback=instant_option_value, metavar="INSTANT",
                            help="Compute as if now were INSTANT (ISO 8601, e.g. 2025-01-10T00:00:00Z).")
campaign_option = click.option("--campaign", "campaigns", multiple=True, metavar="NAME",
                               help="Only this campaign (repeatable). Default: all enabled campaigns.")


def open_reconciler(project_dir: Path, shard: tuple[int, int] | None = None, progress=None, signs: bool = False,
                    writes: bool = False):
    """The project and its reconciler; ``signs``: it will sign links and codes, so the code secret must be usable;
    ``writes``: the command writes to the ledger (its tables are created or upgraded), else it writes nothing."""
    from engine.spec.code_secret import code_secrets
    from engine.run.reconcile import Reconciler
    from engine.tools.demo import ensure_demo

    project = load_project(project_dir)
    if signs:
        warning = code_secrets(project.config).warning  # ProjectInvalid outside the demo
        if warning and sys.stderr.isatty():  # for whoever runs the demo; piped stderr stays as it was
            click.echo(f"Warning: {warning}", err=True)
    ensure_demo(project.config, echo=lambda text: click.echo(mask(text), err=True))
    return project, Reconciler(project, shard=shard, progress=progress, writes=writes)


def load_project(project_dir: Path):
    """engine.spec.project.load_project, imported when a command runs (not at `engine --help`)."""
    from engine.spec.project import load_project as load

    return load(project_dir)


def shard_option_value(_ctx, _param, value):
    """Click callback: ``i/n`` with 0 <= i < n, as a pair."""
    if value is None:
        return None
    index, _, count = value.partition("/")
    if not (index.isdigit() and count.isdigit() and int(count) > 0 and int(index) < int(count)):
        raise click.BadParameter(f"'{value}' is not i/n with 0 <= i < n, e.g. 0/3")
    return int(index), int(count)


quiet_option = click.option("--quiet", is_flag=True,
                            help="No progress display on stderr (shown only when stderr is a terminal anyway).")
shard_option = click.option("--shard", callback=shard_option_value, metavar="I/N", envvar="ENGINE_SHARD",
                            help="Only customers whose stable hash falls in shard I of N (replicas split the work). Env: ENGINE_SHARD.")
