"""What every command shares: the error handler, the common options and opening a project's reconciler.

Owns the command line's conventions: ``EngineError`` -> ``Error: ...`` and exit 1,
anything unexpected -> exit 2 with a short message (``ENGINE_DEBUG=1`` shows the
traceback), both with every secret masked (masking.mask); a closed output pipe
(``engine stats | head``) -> silence and exit 141, as git and ls (killed by
SIGPIPE, which a shell reports as 128 + 13); a warehouse that does not match
engine.yaml's mapping -> the mapping's lines (``validate --check-warehouse``);
how ``--as-of``, a time range (``--since``/``--until``), campaigns (``CAMPAIGN...``
arguments), ``--project``, ``--shard`` and ``--quiet`` are spelled and parsed,
with the deprecated spellings (``--from``/``--to``, ``--campaign``) still accepted. engine.cli.main and
each command module of engine.cli imports it; it must import neither (the layer
contracts in pyproject.toml check it).
"""
from __future__ import annotations

import functools
import os
import signal
import sys
import traceback
from datetime import timedelta
from pathlib import Path
from typing import Mapping

import click

from engine import heap
from engine.clock import format_instant, parse_instant
from engine.errors import EngineError, ProjectInvalid, WarehouseError
from engine.masking import mask


#: The exit status of a command whose reader closed the pipe: what a shell reports for git or ls killed by SIGPIPE.
CLOSED_PIPE_STATUS = 128 + getattr(signal, "SIGPIPE", 13)


def handle_errors(command):
    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            try:
                return command(*args, **kwargs)
            finally:
                heap.release()  # what open_reconciler froze (a test runner's process goes on)
                sys.stdout.flush()  # a closed pipe shows here, not in the interpreter's last flush
        except BrokenPipeError:
            exit_on_closed_pipe()
        except ProjectInvalid as exc:
            click.echo(mask(str(exc)), err=True)
            sys.exit(1)
        except WarehouseError as exc:
            click.echo(mask(f"Error: {exc}"), err=True)
            if mapping_may_explain({exc.reason: 1}):
                echo_mapping_issues()
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


def exit_on_closed_pipe() -> None:
    """The reader of our output went away (``engine stats | head``): stop at once and print nothing,
    like git and ls. They die of SIGPIPE (a shell shows status 141); Python ignores SIGPIPE and raises
    BrokenPipeError instead, so this exits with that same 141. Standard output now goes to /dev/null,
    so the interpreter's last flush cannot fail a second time."""
    try:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):  # not a real file (a test runner's buffer)
        pass
    sys.exit(CLOSED_PIPE_STATUS)


def mapping_may_explain(warehouse_failures: Mapping[str, int]) -> bool:
    """Whether engine.yaml's mapping may explain failed warehouse statements (``Database.failures``): a
    statement the warehouse refused may be its fault; one stopped at warehouse.statement_timeout or a
    lost connection is not, and checking the mapping would only meet the same slow or absent warehouse."""
    return not warehouse_failures or bool(warehouse_failures.get("query"))


def echo_mapping_issues() -> None:
    """After a warehouse query failed: what ``validate --check-warehouse`` finds wrong with engine.yaml's
    mapping (a column the warehouse lacks, at its line in engine.yaml), so a binder error of the
    warehouse comes with the line to fix. Nothing when the mapping matches or cannot be checked."""
    from engine.tools.introspect import check_warehouse

    context = click.get_current_context(silent=True)
    project_dir = context.obj if context is not None and isinstance(context.obj, (str, Path)) else None
    if project_dir is None or "ledger" in context.command_path.split()[1:]:
        return  # engine ledger status|upgrade reads no warehouse table: its errors are the ledger's own
    try:
        issues = [i for i in check_warehouse(project_dir) if i.severity == "error"]
    except Exception:  # noqa: BLE001 - an unreachable warehouse: the error above says it all
        return
    if issues:
        click.echo("The warehouse does not match engine.yaml's mapping (engine validate --check-warehouse):", err=True)
        for issue in issues:
            click.echo(mask(issue.format()), err=True)


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


def _deprecated(old: str, new: str) -> None:
    """Say once, on a terminal only (scripts and their piped stderr stay as they were), that ``old`` is now ``new``."""
    if sys.stderr.isatty():
        click.echo(f"Warning: {old} is deprecated; use {new}", err=True)


def campaign_option(command):
    """``CAMPAIGN...``: the campaigns a command works on, given as arguments as in every command
    (default: all enabled campaigns); the old ``--campaign NAME`` (repeatable) still works, hidden."""
    @functools.wraps(command)
    def wrapper(*args, campaigns=(), old_campaigns=(), **kwargs):
        if old_campaigns:
            _deprecated("--campaign NAME", "the campaign name as an argument")
        return command(*args, campaigns=tuple(campaigns) + tuple(old_campaigns), **kwargs)

    wrapper = click.argument("campaigns", nargs=-1, metavar="[CAMPAIGN]...")(wrapper)
    return click.option("--campaign", "old_campaigns", multiple=True, metavar="NAME", hidden=True,
                        help="Deprecated: give CAMPAIGN as an argument.")(wrapper)


def time_range_options(command=None, *, last_instant_every: str | None = None, required: bool = False):
    """``--since INSTANT`` and ``--until INSTANT``: the half-open range ``since <= t < until`` of every command
    that takes one (stats, report, backtest). The old ``--from``/``--to`` still work, hidden; ``--to`` kept
    its meaning of the last instant included. ``last_instant_every`` names the keyword holding a step
    (backtest's ``--every``): the command then gets ``until`` as the last instant of ``since + k * every``
    in the range, inclusive."""
    def decorate(function):
        @functools.wraps(function)
        def wrapper(*args, since=None, until=None, old_from=None, old_to=None, **kwargs):
            since_flag, until_flag = "--since", "--until"
            if old_from is not None:
                _deprecated("--from", "--since")
                since, since_flag = since or old_from, ("--from" if since is None else "--since")
            if old_to is not None:
                _deprecated("--to", "--until (the first instant not included)")
            if required and (since is None or (until is None and old_to is None)):
                raise click.UsageError("give the range as --since INSTANT --until INSTANT")
            if until is None and old_to is not None:
                inclusive, until_flag = old_to, "--to"
                if since is not None and inclusive < since:
                    raise click.BadParameter(f"--to {format_instant(inclusive)} is before {since_flag} "
                                             f"{format_instant(since)}; swap them")
            else:
                inclusive = None
                if since is not None and until is not None and until <= since:
                    raise click.BadParameter(f"{since_flag} {format_instant(since)} is not before {until_flag} "
                                             f"{format_instant(until)} (the range is since <= t < until); swap them")
            if last_instant_every is not None:
                every = kwargs[last_instant_every]
                if inclusive is None and until is not None and since is not None:
                    inclusive = since + (-((since - until) // every) - 1) * every  # ceil((until - since) / every) - 1
                until = inclusive
            elif inclusive is not None:  # the old inclusive --to of a range of due times
                until = inclusive + timedelta(microseconds=1)
            return function(*args, since=since, until=until, **kwargs)

        for option in reversed([
            click.option("--since", callback=instant_option_value, metavar="INSTANT",
                         help="From INSTANT on, inclusive (ISO 8601: 2025-01-01 or 2025-01-01T00:00:00Z)."),
            click.option("--until", callback=instant_option_value, metavar="INSTANT",
                         help="Up to INSTANT, exclusive: since <= t < until."),
            click.option("--from", "old_from", callback=instant_option_value, hidden=True, help="Deprecated: --since."),
            click.option("--to", "old_to", callback=instant_option_value, hidden=True,
                         help="Deprecated: --until (but inclusive)."),
        ]):
            wrapper = option(wrapper)
        return wrapper

    return decorate(command) if command is not None else decorate


def _project_value(ctx, _param, value):
    """``engine COMMAND --project DIR`` (after the command) means the same as ``engine --project DIR COMMAND``."""
    if value is not None:
        ctx.obj = value
    return value


def accept_project_anywhere(group: click.Group) -> None:
    """Give every command under ``group`` its own ``--project DIR``, so it may follow the command too
    (the group's own option, with ``ENGINE_PROJECT`` as its default, stays the one read when it is absent)."""
    for command in group.commands.values():
        if not any(isinstance(p, click.Option) and "--project" in p.opts for p in command.params):
            command.params.append(click.Option(
                ["--project", "project_dir_after"], type=click.Path(file_okay=False, path_type=Path),
                expose_value=False, callback=_project_value, metavar="DIR",
                help="Project directory (also before the command, or ENGINE_PROJECT; default: .)."))
        if isinstance(command, click.Group):
            accept_project_anywhere(command)


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
    reconciler = Reconciler(project, shard=shard, progress=progress, writes=writes)
    heap.settle(collect=False)  # modules, project and reconciler live until the command ends (handle_errors releases)
    return project, reconciler


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


def _print_version(ctx, _param, value):
    if not value or ctx.resilient_parsing:
        return
    from importlib import metadata

    import engine

    try:
        version = metadata.version("shop-campaign-engine")
    except metadata.PackageNotFoundError:  # run from a checkout that was not installed
        version = engine.__version__
    click.echo(f"engine {version}")
    ctx.exit()


version_option = click.option("--version", is_flag=True, expose_value=False, is_eager=True, callback=_print_version,
                              help="Print the engine's version and exit.")
