"""The ``engine`` command: a few lines per command over the Python API.

One error handler turns every ``EngineError`` into ``Error: ...`` and exit 1;
anything unexpected is exit 2 with a short message (``ENGINE_DEBUG=1`` shows
the traceback); both with every secret masked (masking.mask). Exit codes: 0 ok,
1 user error or failed sends, 2 crash. The handler and the options every
command shares are in engine.cli.common, which the command modules import
instead of this module.
"""
from __future__ import annotations

import json
import logging
import os
import signal
import sys
import threading
from dataclasses import replace
from pathlib import Path

import click

from engine import logs, unsubscribe as unsubscribe_link
from engine.service import settings
from engine.clock import FixedClock, SystemClock, format_instant, parse_interval
from engine.dialects import DIALECTS
from engine.cli.common import (
    accept_project_anywhere, as_of_option, campaign_option, echo_mapping_issues, handle_errors, load_project,
    mapping_may_explain, open_reconciler as _reconciler, quiet_option, shard_option, version_option,
)
from engine.masking import mask
from engine.progress import around_output, progress_for

# Each command imports what only it needs (the project loader, the SQL compiler, the database layer) in its
# body: `engine --help` and `engine validate` start without SQLAlchemy, DuckDB or alembic (tests/test_fast_start.py).


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@version_option
@click.option("--project", "project_dir", type=click.Path(file_okay=False, path_type=Path),
              default=lambda: os.environ.get("ENGINE_PROJECT", "."), show_default=".",
              help="Project directory holding engine.yaml, campaigns.d/ and templates/ (also after the command). "
                   "Env: ENGINE_PROJECT.")
@click.pass_context
def main(ctx, project_dir: Path):
    """Declarative, git-native campaigns for shops: validate, compile, plan and run."""
    ctx.obj = project_dir


@main.command()
@click.argument("paths", nargs=-1)
@click.option("--format", "fmt", type=click.Choice(["text", "github", "json"]), default="text", show_default=True)
@click.option("--check-warehouse", is_flag=True,
              help="Also connect to the warehouse: do the mapped tables, columns and types exist?")
@click.pass_obj
@handle_errors
def validate(project_dir: Path, paths: tuple[str, ...], fmt: str, check_warehouse: bool):
    """Check engine.yaml, campaign files (default campaigns.d/) and their templates."""
    from engine.spec.project import check_project
    from engine.spec.validate import campaign_files
    from engine.tools.output import write_issues

    _, issues = check_project(project_dir, paths or None)
    if not paths:  # the whole project: also what it runs with
        from engine.spec.code_secret import secret_issues
        from engine.spec.config import load_config

        config, config_issues = load_config(Path(project_dir).resolve())
        if config is not None and not any(i.severity == "error" for i in config_issues):
            issues += secret_issues(config)
    if check_warehouse:
        from engine.tools.introspect import check_warehouse as warehouse_issues

        # driver errors may quote the URL or DSN
        issues += [replace(i, message=mask(i.message), fix=mask(i.fix)) for i in warehouse_issues(project_dir, paths or None)]
    files = len(campaign_files(Path(project_dir).resolve(), paths or None))
    write_issues(issues, fmt, sys.stdout, files)
    sys.exit(1 if any(i.severity == "error" for i in issues) else 0)


@main.command(name="compile")
@click.argument("campaign")
@click.option("--dialect", type=click.Choice(list(DIALECTS)), default=None, help="Default: the warehouse's dialect.")
@as_of_option
@click.pass_obj
@handle_errors
def compile_command(project_dir: Path, campaign: str, dialect: str | None, as_of):
    """Print the SQL that finds CAMPAIGN's due messages."""
    from engine.sql.compile import render_sql
    from engine.sql.due import due_query

    project = load_project(project_dir)
    try:
        chosen = project.campaign(campaign)
    except KeyError as exc:
        raise click.UsageError(exc.args[0]) from None
    now = as_of or SystemClock().now()
    query = due_query(chosen, project.config, now, exclude_ledger=project.config.ledger_shares_warehouse,
                      dialect=dialect)
    click.echo(f"-- {chosen.name} at {format_instant(now)} ({dialect or project.config.dialect})")
    click.echo(render_sql(query, dialect or project.config.dialect, pretty=True) + ";")


@main.command()
@as_of_option
@campaign_option
@click.option("--format", "fmt", type=click.Choice(["table", "jsonl", "csv", "text", "markdown", "json"]), default=None,
              help="table, jsonl or csv (default table); with --diff: text, markdown or json (default text).")
@click.option("--include-skipped", is_flag=True, help="Also list messages that would be skipped, with the reason.")
@click.option("--limit", default=20, show_default=True, help="Rows shown in the table format.")
@click.option("--diff", "diff_ref", is_flag=False, flag_value="", default=None, metavar="[REF]",
              help="Compare with the campaigns at git REF (default: merge base of HEAD and main): recipients added/removed per step.")
@click.option("--sample", default=5, show_default=True, type=click.IntRange(0), help="With --diff: customer ids shown per step.")
@click.option("--explain-cost", is_flag=True,
              help="Instead of the plan: per source, whether a pass reads only what changed (watermark, rows read) or all of it, and why.")
@shard_option
@quiet_option
@click.pass_obj
@handle_errors
def plan(project_dir: Path, as_of, campaigns, fmt: str | None, include_skipped: bool, limit: int, diff_ref, sample: int,
         explain_cost: bool, shard, quiet: bool):
    """Show who would receive which message now (or at --as-of), without sending; --diff: what a change alters."""
    if explain_cost:
        from engine.run.incremental import cost_report

        project, reconciler = _reconciler(project_dir, shard, progress_for("plan", True))
        try:
            now = (FixedClock(as_of) if as_of else SystemClock()).now()
            click.echo("\n".join(cost_report(reconciler.config, reconciler.ledger, now,
                                             shares=reconciler.ledger_shares_warehouse,
                                             campaigns=project.campaigns)))
        finally:
            reconciler.close()
        return
    if diff_ref is not None:
        from engine.cli.plan_diff import DIFF_FORMATS, run_plan_diff

        if fmt not in DIFF_FORMATS:
            raise click.UsageError(f"--diff writes {', '.join(f for f in DIFF_FORMATS if f)}, not {fmt}")
        return run_plan_diff(project_dir, diff_ref or None, as_of or SystemClock().now(), campaigns, fmt or "text",
                             sample, shard, sys.stdout)
    if fmt not in (None, "table", "jsonl", "csv"):
        raise click.UsageError(f"--format {fmt} is for --diff; the plan itself is table, jsonl or csv")
    from engine.run.settle import SettledCounts
    from engine.tools.output import write_plan

    fmt = fmt or "table"
    progress = progress_for("plan", quiet)
    project, reconciler = _reconciler(project_dir, shard, progress)
    try:
        now = (FixedClock(as_of) if as_of else SystemClock()).now()
        selected = _select(reconciler, campaigns)
        header = f"Plan at {format_instant(now)} for {len(selected)} campaign(s)"
        failed: dict[str, str] = {}  # a campaign that fails is reported; the others are planned
        sends: dict[str, int] = {}  # coupon pool -> messages planned with its codes
        # without --include-skipped, the skips the warehouse settles are only counted, in SQL
        settled = None if include_skipped else SettledCounts()
        # every message listed (csv, jsonl): in the same order at every run, sorted by the warehouse;
        # the table lists its first --limit by the same order without a sort of the due set (write_plan)
        due = reconciler.due(now, selected, failures=failed, settled_counts=settled, ordered=fmt != "table")
        write_plan(around_output(counting_coded_sends(due, project, sends), progress),
                   fmt, sys.stdout, include_skipped=include_skipped, limit=limit, header=header,
                   kinds={name: channel.kind for name, channel in reconciler.config.channels.items()}, settled=settled)
        for warning in plan_pool_warnings(project, reconciler, selected, sends):
            click.echo(f"Warning: {warning}", err=True)
    finally:
        progress.finish()
        reconciler.close()
    for name, reason in failed.items():
        click.echo(f"Error: campaign {name} could not be planned (the others were): {reason}", err=True)
    if failed:
        if mapping_may_explain(reconciler.warehouse.failures):
            echo_mapping_issues()
        sys.exit(1)


def _select(reconciler, names):
    try:
        return reconciler.campaigns(list(names) or None)
    except KeyError as exc:
        raise click.UsageError(exc.args[0]) from None


@main.command()
@click.option("--once", is_flag=True, help="Run one pass and exit.")
@click.option("--interval", metavar="DURATION",
              help="Run a pass every DURATION (e.g. 60s, 5m) until SIGTERM. Env: ENGINE_INTERVAL (when --once is not given).")
@as_of_option
@campaign_option
@click.option("--metrics-host", envvar="ENGINE_METRICS_HOST", default=settings.ENV["metrics_host"][1], show_default=True,
              help="Address of /healthz, /readyz and /metrics with --interval (0.0.0.0 in the container). Env: ENGINE_METRICS_HOST.")
@click.option("--metrics-port", envvar="ENGINE_METRICS_PORT", type=click.IntRange(0, 65535),
              default=settings.DEFAULT_METRICS_PORT, show_default=True,
              help="Port of /healthz, /readyz and /metrics with --interval (0: any free port). Env: ENGINE_METRICS_PORT.")
@click.option("--log-level", envvar="ENGINE_LOG_LEVEL", type=click.Choice(logs.LEVELS, case_sensitive=False),
              default="info", show_default=True, help="With --interval. Env: ENGINE_LOG_LEVEL.")
@click.option("--log-format", envvar="ENGINE_LOG_FORMAT", type=click.Choice(logs.FORMATS, case_sensitive=False),
              default="text", show_default=True, help="With --interval: one JSON object per line, or text. Env: ENGINE_LOG_FORMAT.")
@click.option("--log-personal-data", envvar="ENGINE_LOG_PERSONAL_DATA", is_flag=True,
              help="Do not redact email addresses and phone numbers in logs (debugging only). Env: ENGINE_LOG_PERSONAL_DATA=1.")
@shard_option
@quiet_option
@click.pass_obj
@handle_errors
def run(project_dir: Path, once: bool, interval: str | None, as_of, campaigns, metrics_host: str, metrics_port: int,
        log_level: str, log_format: str, log_personal_data: bool, shard, quiet: bool):
    """Reconcile: send every due message that the ledger does not hold yet."""
    if not once and not interval:
        interval = os.environ.get(settings.ENV["interval"][0]) or None
    if once == bool(interval):
        raise click.UsageError("give exactly one of --once or --interval DURATION (or set ENGINE_INTERVAL)")
    if interval and as_of:
        raise click.UsageError("--as-of freezes time and only makes sense with --once")
    if interval:
        try:
            seconds = parse_interval(interval)
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--interval / ENGINE_INTERVAL") from None
        if seconds <= 0:
            raise click.BadParameter(f"'{interval}' is not a positive duration", param_hint="--interval / ENGINE_INTERVAL")
        logs.configure(log_level.lower(), log_format.lower(), log_personal_data)
        _loop(project_dir, seconds, campaigns, metrics_host, metrics_port, shard)
        return
    from engine.tools.output import write_report

    progress = progress_for("run", quiet)
    project, reconciler = _reconciler(project_dir, shard, progress, signs=True, writes=True)
    clock = FixedClock(as_of) if as_of else SystemClock()
    try:
        selected = _select(reconciler, campaigns)
        report = reconciler.run_once(clock.now(), selected)
        progress.finish()
        click.echo(f"Pass at {format_instant(report.now)}:")
        write_report(report, sys.stdout, sys.stderr)
    finally:
        reconciler.close()
    if report.failed_campaigns and mapping_may_explain(reconciler.warehouse.failures):
        echo_mapping_issues()
    sys.exit(1 if report.errors or report.failed_campaigns or report.total("failed") else 0)


@main.command(name="serve-tracking")
@click.option("--host", envvar="ENGINE_METRICS_HOST", default=settings.ENV["metrics_host"][1], show_default=True,
              help="Address to serve on (0.0.0.0 to be reachable from outside). Env: ENGINE_METRICS_HOST.")
@click.option("--port", envvar="ENGINE_METRICS_PORT", type=click.IntRange(0, 65535),
              default=settings.DEFAULT_METRICS_PORT, show_default=True, help="Port (0: any free port). Env: ENGINE_METRICS_PORT.")
@click.option("--log-level", envvar="ENGINE_LOG_LEVEL", type=click.Choice(logs.LEVELS, case_sensitive=False),
              default="info", show_default=True, help="Env: ENGINE_LOG_LEVEL.")
@click.option("--log-format", envvar="ENGINE_LOG_FORMAT", type=click.Choice(logs.FORMATS, case_sensitive=False),
              default="text", show_default=True, help="Env: ENGINE_LOG_FORMAT.")
@click.pass_obj
@handle_errors
def serve_tracking(project_dir: Path, host: str, port: int, log_level: str, log_format: str):
    """Serve only /healthz, /readyz, /metrics, the tracking endpoints (/open, /click, /scan) and the provider
    webhooks (/webhooks/...), no passes: for a setup where the reconciler is not public. Reloads a changed project every minute."""
    logs.configure(log_level.lower(), log_format.lower(), False)
    _loop(project_dir, 60.0, (), host, port, tracking_only=True)


def _loop(project_dir: Path, seconds: float, campaigns, metrics_host: str, metrics_port: int,
          shard: tuple[int, int] | None = None, tracking_only: bool = False) -> None:
    """The service (engine.service.loop) until SIGTERM/SIGINT; a second signal exits at once."""
    from engine.service.loop import Service

    stop = threading.Event()

    def on_signal(signum, _frame):
        if stop.is_set():
            logs.event("service.killed", "Second signal: exiting now; messages claimed in this pass stay unsent",
                       logging.WARNING)
            raise SystemExit(1)
        stop.set()
        logs.event("service.stopping", f"{signal.Signals(signum).name}: stopping after the current pass")

    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, on_signal)
    service = Service(project_dir, seconds, campaigns=campaigns, metrics_host=metrics_host, metrics_port=metrics_port,
                      shard=shard, tracking_only=tracking_only)
    try:
        service.start()
        service.run(stop)
    finally:
        service.close()
    logs.event("service.stopped", "Stopped.")


@main.group(name="config")
def config_group():
    """Inspect the configuration the engine runs with."""


@config_group.command(name="show")
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True)
@click.pass_obj
@handle_errors
def config_show(project_dir: Path, fmt: str):
    """Print the effective configuration: engine.yaml with ${VAR} resolved, service settings, secrets masked."""
    shown = settings.effective_config(project_dir)
    if fmt == "json":
        click.echo(json.dumps({s.key: s.as_dict() for s in shown}, indent=2))
    else:
        width = max(len(s.key) for s in shown)
        value_width = min(60, max(len(s.value) for s in shown))
        for s in shown:
            click.echo(f"{s.key:<{width}}  {s.value:<{value_width}}  # {s.origin}")
    missing = [s.key for s in shown if s.origin.startswith("missing")]
    if missing:
        click.echo(f"Warning: environment variables not set for {', '.join(missing)}", err=True)


@main.command()
@click.option("--reset/--keep", default=True, show_default=True, help="Rebuild the shop (and empty its ledger and outbox).")
@click.pass_obj
@handle_errors
def demo(project_dir: Path, reset: bool):
    """(Re)build the embedded demo shop named by engine.yaml's demo: section."""
    import shutil

    from engine.spec.config import database_url
    from engine.state.warehouse import file_of
    from engine.tools.demo import build_demo

    project = load_project(project_dir)
    config = project.config
    if config.demo is None:
        raise click.UsageError("engine.yaml has no demo: section with the demo shop's seed, customers and anchor; "
                               "this project's warehouse is not the generated demo shop")
    path = file_of(database_url(config, "warehouse"))
    if path is None:
        raise click.UsageError("the demo shop must be a DuckDB or SQLite file")
    if reset or not path.exists():
        for channel in config.channels.values():
            if channel.transport == "file":
                shutil.rmtree(config.root / str(channel.settings.get("path", "var/outbox")), ignore_errors=True)
        counts = build_demo(path, config.demo.seed, config.demo.customers, config.demo.anchor)
        click.echo(mask(f"Demo shop in {path}: ") + ", ".join(f"{n} {name}" for name, n in counts.items()))
        click.echo(f"Its history ends at {config.demo.anchor}: use --as-of {config.demo.anchor}")


@main.command(name="show-message")
@click.argument("message_key")
@click.option("--out", "out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write the message's bytes to FILE (a letter's PDF) instead of standard output.")
@click.pass_obj
@handle_errors
def show_message(project_dir: Path, message_key: str, out: Path | None):
    """Print a message exactly as it was sent (R-M5): the bytes handed to the provider, byte for byte.

    Its ledger history goes to standard error, so standard output (or --out FILE) holds only the message.
    """
    from engine.channels import with_document
    from engine.run.dispatch import deserialize

    _, reconciler = _reconciler(project_dir)
    config = reconciler.config
    try:
        row = reconciler.ledger.get(message_key)
        coupon = reconciler.ledger.codes_of([message_key]).get(message_key)
    finally:
        reconciler.close()
    if row is None:
        raise click.ClickException(f"no message with key '{message_key}' in the ledger (keys look like campaign:step:customer:trigger)")
    click.echo(f"# {row['message_key']}: {row['status']}" + (f" ({row['reason']})" if row["reason"] else "")
               + f", attempts {row['attempts']}, updated {row['updated_at']}", err=True)
    if coupon is not None:
        click.echo(f"# coupon code: {coupon[1]} ({f'pool {coupon[0]}' if coupon[0] else 'generated'})", err=True)
    if row["detail"]:
        click.echo(mask(f"# provider: {row['detail']}"), err=True)
    if not row["content"]:
        click.echo("# (nothing was rendered for this message)", err=True)
        return
    message = deserialize(message_key, row["content"])
    document = message.document
    if document is None:  # kept by a release that stored no documents: made again the way its channel makes it
        channel = config.channels.get(row["channel"])
        if channel is None:
            raise click.ClickException(f"message '{message_key}' was stored without its bytes, and its channel "
                                       f"'{row['channel']}' is no longer in engine.yaml to make them again")
        document = with_document(channel, message, config.root).document
        click.echo("# (stored before documents were kept: made again from its stored parts)", err=True)
    if out is not None:
        out.write_bytes(document)
        click.echo(f"# written to {out} ({len(document)} bytes)", err=True)
        return
    stream = click.get_binary_stream("stdout")
    stream.write(document)
    stream.flush()


@main.command()
@click.argument("customer_id")
@click.option("--kind", "--channel", "kind", type=click.Choice(list(unsubscribe_link.KINDS)), default="all", show_default=True)
@click.pass_obj
@handle_errors
def unsubscribe(project_dir: Path, customer_id: str, kind: str):
    """Record that CUSTOMER_ID unsubscribed (from one channel kind or all); no message is sent after it."""
    _, reconciler = _reconciler(project_dir, writes=True)
    try:
        reconciler.ledger.unsubscribe(customer_id, kind, "cli", SystemClock().now())
    finally:
        reconciler.close()
    click.echo(f"Customer {customer_id} is unsubscribed from {kind}.")


@main.group(name="ledger")
def ledger_group():
    """The ledger's schema: which revision it is at, and upgrading it (engine run upgrades by itself)."""


def _ledger_url(project_dir: Path) -> str:
    from engine.spec.config import database_url

    config = load_project(project_dir).config
    return database_url(config, "warehouse" if config.ledger_shares_warehouse else "ledger")


@ledger_group.command(name="status")
@click.pass_obj
@handle_errors
def ledger_status(project_dir: Path):
    """Show the ledger's schema revision, this engine's head and the migrations pending; writes nothing."""
    from engine.state import migrations
    from engine.state.warehouse import Database, file_of

    url = _ledger_url(project_dir)
    path = file_of(url)
    if path is not None and not path.exists():  # opening it would create the file
        click.echo(f"Ledger: {mask(url)}\nRevision: none (no database file yet)\nHead: {migrations.HEAD}\n"
                   f"Pending: {', '.join(migrations.revisions())}")
        return
    db = Database(url)
    try:
        state = migrations.status(db)
    finally:
        db.dispose()
    current = ", ".join(state.current) or ("none (tables of the release before versioned migrations; "
                                           f"stamped {migrations.BASELINE} on upgrade)" if state.unversioned else "none (empty)")
    click.echo(f"Ledger: {mask(db.url)}\nRevision: {current}\nHead: {state.head}\n"
               f"Pending: {', '.join(state.pending) or 'none'}")


@ledger_group.command(name="upgrade")
@click.pass_obj
@handle_errors
def ledger_upgrade(project_dir: Path):
    """Apply the pending migrations (under a lock, in one transaction)."""
    from engine.state import migrations
    from engine.state.warehouse import Database

    db = Database(_ledger_url(project_dir))
    try:
        applied = migrations.ensure(db)
    finally:
        db.dispose()
    click.echo(f"Ledger {mask(db.url)}: " + (f"applied {', '.join(applied)}; now at {migrations.HEAD}." if applied
                                             else f"already at {migrations.HEAD}, nothing to do."))


from engine.cli.backtest import backtest  # noqa: E402 - registered after main exists
from engine.cli.codes import codes, counting_coded_sends, plan_pool_warnings  # noqa: E402 - registered after main exists
from engine.cli.customer import customer  # noqa: E402
from engine.cli.explain import explain  # noqa: E402
from engine.cli.init import init  # noqa: E402
from engine.cli.export import export  # noqa: E402
from engine.cli.stats import report, stats  # noqa: E402
from engine.cli.preview import preview  # noqa: E402

for _command in (explain, customer, export, backtest, stats, report, init):
    main.add_command(_command)
main.add_command(codes)
main.add_command(preview)
accept_project_anywhere(main)  # after every command is registered


if __name__ == "__main__":  # pragma: no cover
    main()
