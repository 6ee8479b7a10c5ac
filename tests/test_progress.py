"""Progress display: a status line on a terminal's stderr, nothing at all when piped or --quiet.

The display itself is checked with a fake clock; the commands are run as real
processes, once with stderr on a pseudo-terminal (``pty``) and once with it on
a pipe, and their stdout must be byte-for-byte the same either way.
"""
from __future__ import annotations

import io
import os
import pty
import subprocess
import sys
import threading
from datetime import datetime, timedelta

import pytest

from conftest import copy_project, load_history
from engine.progress import Progress, TerminalProgress, around_output, progress_for

T0 = datetime(2025, 3, 1)
ENGINE = [sys.executable, "-c", "from engine.cli.main import main; main()"]


class FakeClock:
    def __init__(self):
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_the_status_line_redraws_in_place_at_most_every_interval():
    out, clock = io.StringIO(), FakeClock()
    progress = TerminalProgress("plan", out, interval=0.5, clock=clock)
    progress.stage("campaign", 1, 2, "second-order")
    progress.rows(1000)  # within the interval: counted, not drawn
    clock.now += 0.6
    progress.rows(234)
    clock.now += 0.1
    progress.stage("campaign", 2, 2, "welcome")  # throttled
    progress.finish()
    progress.finish()  # once only
    assert out.getvalue() == (
        "\r\x1b[Kplan: campaign 1/2 second-order · 0 rows · 0.0s"
        "\r\x1b[Kplan: campaign 1/2 second-order · 1,234 rows · 0.6s"
        "\r\x1b[Kplan: campaign 2/2 welcome · 1,234 rows · 0.7s\n"
    )


def test_levels_keep_their_place_and_output_clears_the_line():
    out, clock = io.StringIO(), FakeClock()
    progress = TerminalProgress("backtest", out, interval=0, clock=clock)
    progress.stage("instant", 1, 3, "2025-03-01T00:00:00Z")
    progress.stage("campaign", 1, 1, "second-order")
    progress.stage("instant", 2, 3, "2025-03-01T01:00:00Z")
    assert progress.line() == "backtest: instant 2/3 2025-03-01T01:00:00Z · campaign 1/1 second-order · 0 rows · 0.0s"
    out.truncate(0)
    out.seek(0)
    assert list(around_output(iter([["a"], ["b"]]), progress)) == [["a"], ["b"]]
    assert out.getvalue() == "\r\x1b[K" * 2 + "\r\x1b[K" + progress.line() + "\n"


def test_silent_unless_a_terminal_and_not_quiet():
    assert type(progress_for("plan", stream=io.StringIO())) is Progress
    master, slave = pty.openpty()
    try:
        with os.fdopen(slave, "w", closefd=False) as terminal:
            assert isinstance(progress_for("plan", stream=terminal), TerminalProgress)
            assert type(progress_for("plan", quiet=True, stream=terminal)) is Progress
    finally:
        os.close(master)
        os.close(slave)
    silent = Progress()
    silent.stage("campaign", 1, 1, "x")
    silent.rows(5)
    silent.finish()  # nothing to see, nothing raised


def _run(args: list[str], cwd, tty: bool) -> tuple[int, str, str]:
    """Run the engine with stdout on a pipe and stderr on a pseudo-terminal (tty) or a pipe."""
    if not tty:
        result = subprocess.run(ENGINE + args, cwd=cwd, capture_output=True, timeout=300)  # bytes: CSV ends lines in \r\n
        return result.returncode, result.stdout.decode(), result.stderr.decode()
    master, slave = pty.openpty()
    chunks: list[bytes] = []

    def drain():  # read while it runs: a full terminal buffer would block the process
        while True:
            try:
                data = os.read(master, 4096)
            except OSError:  # EIO: the last writer closed the terminal
                return
            if not data:
                return
            chunks.append(data)

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    try:
        process = subprocess.Popen(ENGINE + args, cwd=cwd, stdout=subprocess.PIPE, stderr=slave,
                                   stdin=subprocess.DEVNULL)
        os.close(slave)
        stdout, _ = process.communicate(timeout=300)
        reader.join(timeout=10)
    finally:
        os.close(master)
    return process.returncode, stdout.decode(), b"".join(chunks).decode().replace("\r\n", "\n")


@pytest.fixture
def project(tmp_path, monkeypatch):
    root = copy_project(tmp_path / "project")
    for path in (root / "campaigns.d").glob("*.yaml"):
        if path.stem not in ("second-order", "abandoned-cart"):
            path.unlink()
    url = f"duckdb:///{tmp_path / 'shop.duckdb'}"
    monkeypatch.setenv("ENGINE_WAREHOUSE_URL", url)
    customers = [{"customer_id": i, "email": f"c{i}@example.com", "created_at": T0 - timedelta(days=99)} for i in range(1, 31)]
    orders = [{"order_id": 100 + i, "customer_id": i, "created_at": T0 - timedelta(days=7, hours=i), "status": "completed",
               "total": 10.0} for i in range(1, 31)]
    load_history(url, customers=customers, orders=orders)
    return root


@pytest.mark.parametrize("command, label", [
    (["plan", "--as-of", "2025-03-01T12:00:00Z", "--format", "csv"], "plan: campaign 2/2 "),
    (["backtest", "second-order", "--since", "2025-03-01", "--until", "2025-03-01T04:00:00Z", "--format", "csv"],
     "backtest: instant 4/4 2025-03-01T03:00:00Z · campaign 1/1 second-order"),
    (["export", "second-order", "--as-of", "2025-03-01T12:00:00Z"], "export: campaign 1/1 second-order · 30 rows"),
    (["export", "--where", "email IS NOT NULL", "--as-of", "2025-03-01T12:00:00Z"], "export: 30 rows"),
    (["stats"], "stats: campaign 2/2 "),
    (["report", "--out", "report", "--as-of", "2025-03-01T12:00:00Z"], "report: campaign 2/2 "),
])
def test_a_terminal_sees_progress_on_stderr_and_stdout_stays_the_same(project, command, label):
    code, piped_out, piped_err = _run(command, project, tty=False)
    assert code == 0 and piped_err == ""  # piped: nothing extra at all
    code, tty_out, tty_err = _run(command, project, tty=True)
    assert code == 0
    assert tty_out == piped_out and piped_out.count("\n") > (command[0] != "report")  # the same, and not empty
    final = tty_err.rsplit("\x1b[K", 1)[-1]
    assert final.startswith(label) and final.endswith("s\n") and " rows · " in final
    code, quiet_out, quiet_err = _run(command + ["--quiet"], project, tty=True)
    assert (code, quiet_out, quiet_err) == (0, piped_out, "")


def test_run_once_shows_progress_on_a_terminal_only(project):
    code, out, err = _run(["run", "--once", "--as-of", "2025-03-01T12:00:00Z", "--campaign", "second-order"], project, tty=True)
    assert code == 0 and "second-order  nudge  30" in out
    assert err.rsplit("\x1b[K", 1)[-1].startswith("run: campaign 1/1 second-order · 30 rows · ")
    code, out, err = _run(["run", "--once", "--as-of", "2025-03-01T13:00:00Z", "--campaign", "second-order"], project, tty=False)
    assert (code, err) == (0, "")
