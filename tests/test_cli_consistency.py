"""The ``engine`` command line is one language (issue 19): the same spelling for the same thing in every command.

- a closed output pipe (``engine stats | head``) ends the command quietly with status 141, as git and ls;
- a time range is ``--since``/``--until`` everywhere (half-open), ``--from``/``--to`` hidden but still working;
- campaigns are arguments in every command that takes them, ``--campaign`` hidden but still working;
- ``--project DIR`` before or after the command, or ``ENGINE_PROJECT``; ``engine --version``.
(Progress on export, stats and report: tests/test_progress.py.)
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import datetime, timedelta
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from conftest import REPO, copy_project, load_history
from engine.cli.main import main

ENGINE = [sys.executable, "-c", "from engine.cli.main import main; main()"]
T0 = datetime(2025, 3, 1)
AS_OF = "2025-03-01T12:00:00Z"


@pytest.fixture
def project(tmp_path: Path, monkeypatch) -> Path:
    root = copy_project(tmp_path / "project")
    for path in (root / "campaigns.d").glob("*.yaml"):
        if path.stem not in ("second-order", "abandoned-cart"):
            path.unlink()
    url = f"duckdb:///{tmp_path / 'shop.duckdb'}"
    monkeypatch.setenv("ENGINE_WAREHOUSE_URL", url)
    customers = [{"customer_id": i, "email": f"c{i}@example.com", "created_at": T0 - timedelta(days=99)} for i in range(1, 41)]
    orders = [{"order_id": 100 + i, "customer_id": i, "created_at": T0 - timedelta(days=7, hours=i), "status": "completed",
               "total": 10.0} for i in range(1, 41)]
    load_history(url, customers=customers, orders=orders)
    return root


def engine(*args: str, env: dict | None = None):
    result = CliRunner().invoke(main, list(args), env=env)
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    assert "Traceback" not in result.output and "Internal error" not in result.output, result.output
    return result


# --- a closed pipe ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("command", [
    ["stats"],
    ["plan", "--as-of", AS_OF, "--format", "csv"],
    ["export", "second-order", "--as-of", AS_OF],
])
def test_a_closed_output_pipe_ends_the_command_quietly_with_status_141(project: Path, command):
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader is gone before the first byte (| head that already exited)
    try:
        result = subprocess.run(ENGINE + ["--project", str(project)] + command, stdout=write_end, stderr=subprocess.PIPE,
                                timeout=300, env={**os.environ, "PYTHONPATH": str(REPO)})
    finally:
        os.close(write_end)
    assert result.returncode == 141, result.stderr.decode()  # what a shell shows for `git log | head`
    assert result.stderr.decode() == ""  # no "Internal error: BrokenPipeError", no "Exception ignored"


def test_output_into_an_open_pipe_is_unchanged(project: Path):
    result = subprocess.run(ENGINE + ["--project", str(project), "stats"], capture_output=True, timeout=300,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    assert result.returncode == 0 and b"second-order" in result.stdout, result.stderr


# --- one name for a time range ----------------------------------------------------------------------------

def _options(command: click.Command) -> dict[str, click.Option]:
    return {opt: p for p in command.params if isinstance(p, click.Option) for opt in p.opts}


def _commands(group: click.Group, prefix: tuple = ()) -> dict[tuple, click.Command]:
    found = {}
    for name, command in group.commands.items():
        found[prefix + (name,)] = command
        if isinstance(command, click.Group):
            found.update(_commands(command, prefix + (name,)))
    return found


def test_every_time_range_is_since_until_and_the_old_names_are_hidden():
    ranged = {path: c for path, c in _commands(main).items() if "--since" in _options(c) or "--from" in _options(c)}
    assert {path[0] for path in ranged} >= {"stats", "report", "backtest"}
    for path, command in ranged.items():
        options = _options(command)
        assert not options["--since"].hidden and not options["--until"].hidden, path
        assert options["--from"].hidden and options["--to"].hidden, path
        shown = CliRunner().invoke(main, [*path, "--help"]).output
        assert "--since" in shown and "--until" in shown and "--from" not in shown and "--to " not in shown, shown


def test_stats_takes_since_until_and_still_the_old_from_to(project: Path):
    engine("--project", str(project), "run", "--once", "--as-of", AS_OF, "second-order")
    # due 7 days after each order: from 2025-02-27T08:00 to 2025-02-28T23:00
    new = engine("--project", str(project), "stats", "--since", "2025-02-27", "--until", "2025-03-01", "--format", "json")
    old = engine("--project", str(project), "stats", "--from", "2025-02-27", "--to", "2025-02-28T23:59:59.999999Z",
                 "--format", "json")
    cut = engine("--project", str(project), "stats", "--since", "2025-02-27", "--until", "2025-02-28T23:00:00Z",
                 "--format", "json")
    assert new.exit_code == old.exit_code == 0, new.output + old.output
    figures = json.loads(new.stdout)
    assert figures == json.loads(old.stdout)
    entered = lambda figures: next(c["total"]["entered"] for c in figures["campaigns"] if c["campaign"] == "second-order")  # noqa: E731
    assert entered(figures) == 40 and entered(json.loads(cut.stdout)) == 39  # --until is exclusive
    backwards = engine("--project", str(project), "stats", "--since", "2025-03-02", "--until", "2025-03-01")
    assert backwards.exit_code == 2 and "is not before --until" in backwards.output


def test_backtest_until_is_exclusive_and_the_old_inclusive_to_still_works(project: Path):
    def instants(*args):
        result = engine("--project", str(project), "backtest", "second-order", "--every", "1h", "--format", "json", *args)
        assert result.exit_code == 0, result.output
        report = json.loads(result.stdout)
        return report["instants"], report["from"], report["to"]

    assert instants("--since", "2025-03-01", "--until", "2025-03-01T03:00:00Z") == \
        (3, "2025-03-01T00:00:00Z", "2025-03-01T02:00:00Z")
    assert instants("--since", "2025-03-01", "--until", "2025-03-01T02:30:00Z") == \
        (3, "2025-03-01T00:00:00Z", "2025-03-01T02:00:00Z")
    assert instants("--from", "2025-03-01", "--to", "2025-03-01T02:00:00Z") == \
        (3, "2025-03-01T00:00:00Z", "2025-03-01T02:00:00Z")
    missing = engine("--project", str(project), "backtest", "second-order", "--since", "2025-03-01")
    assert missing.exit_code == 2 and "--since INSTANT --until INSTANT" in missing.output


# --- campaigns given the same way ---------------------------------------------------------------------------

CAMPAIGN_COMMANDS = ["compile", "plan", "run", "explain", "backtest", "stats", "report"]


@pytest.mark.parametrize("name", CAMPAIGN_COMMANDS)
def test_every_command_takes_the_campaign_as_an_argument(name: str):
    command = main.commands[name]
    arguments = [p for p in command.params if isinstance(p, click.Argument)]
    assert arguments and arguments[0].name in ("campaign", "campaigns"), (name, arguments)
    option = _options(command).get("--campaign")
    assert option is None or option.hidden, name
    usage = CliRunner().invoke(main, [name, "--help"]).output
    assert "CAMPAIGN" in usage.splitlines()[0] and "--campaign" not in usage, usage


def test_plan_and_report_take_campaign_arguments_and_the_old_option(project: Path, tmp_path: Path):
    as_argument = engine("--project", str(project), "plan", "second-order", "--as-of", AS_OF, "--format", "csv")
    as_option = engine("--project", str(project), "plan", "--campaign", "second-order", "--as-of", AS_OF, "--format", "csv")
    everything = engine("--project", str(project), "plan", "--as-of", AS_OF, "--format", "csv")
    assert as_argument.exit_code == as_option.exit_code == 0
    rows = as_argument.stdout.splitlines()[1:]
    assert as_argument.stdout == as_option.stdout and len(rows) > 30 and all(r.startswith("second-order,") for r in rows)
    assert set(rows) <= set(everything.stdout.splitlines())
    report = engine("--project", str(project), "report", "second-order", "abandoned-cart", "--out", str(tmp_path / "r"))
    assert report.exit_code == 0 and "Report for 2 campaign(s)" in report.stdout, report.output
    unknown = engine("--project", str(project), "stats", "no-such-campaign")
    assert unknown.exit_code == 2 and "no-such-campaign" in unknown.output


# --- --project anywhere, ENGINE_PROJECT, --version -----------------------------------------------------------

def test_project_before_or_after_the_command_or_from_the_environment(project: Path, tmp_path: Path, monkeypatch):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # no engine.yaml here
    assert engine("validate").exit_code == 1
    before = engine("--project", str(project), "validate")
    after = engine("validate", "--project", str(project))
    from_env = engine("validate", env={"ENGINE_PROJECT": str(project)})
    in_group = engine("config", "show", "--project", str(project))
    assert before.exit_code == after.exit_code == from_env.exit_code == in_group.exit_code == 0, after.output
    assert before.stdout == after.stdout == from_env.stdout
    assert "sources.customers.table" in in_group.stdout or "customers" in in_group.stdout
    # the one after the command wins over the one before it and over the environment
    assert engine("--project", str(elsewhere), "validate", "--project", str(project),
                  env={"ENGINE_PROJECT": str(elsewhere)}).exit_code == 0
    for path, command in _commands(main).items():
        assert "--project" in _options(command), f"engine {' '.join(path)} does not take --project"


def test_version():
    from importlib import metadata

    import engine as package

    result = subprocess.run(ENGINE + ["--version"], capture_output=True, text=True, timeout=60,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        expected = metadata.version("shop-campaign-engine")
    except metadata.PackageNotFoundError:
        expected = package.__version__
    assert (result.returncode, result.stdout, result.stderr) == (0, f"engine {expected}\n", "")
