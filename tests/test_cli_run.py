"""`engine run` as a process: the interval loop passes, then stops cleanly on SIGTERM."""
from __future__ import annotations

import signal
import subprocess
import sys
import time

from conftest import copy_project


def test_interval_loop_runs_passes_and_exits_cleanly_on_sigterm(tmp_path):
    root = copy_project(tmp_path)
    process = subprocess.Popen(
        [sys.executable, "-c", "from engine.cli.main import main; main()", "run", "--interval", "1s"],
        cwd=root, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        deadline = time.monotonic() + 60
        # wait for the demo shop to be built and two passes to finish
        lines = []
        while time.monotonic() < deadline and sum("Pass at" in line for line in lines) < 2:
            line = process.stdout.readline()
            if line:
                lines.append(line)
            elif process.poll() is not None:
                break
        assert sum("Pass at" in line for line in lines) >= 2, (lines, process.stderr.read() if process.poll() is not None else "")
        process.send_signal(signal.SIGTERM)
        started = time.monotonic()
        assert process.wait(timeout=15) == 0
        assert time.monotonic() - started < 15
        assert "Stopped." in process.stdout.read()  # the service logs to stdout
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_run_needs_once_or_interval(tmp_path):
    root = copy_project(tmp_path)
    result = subprocess.run([sys.executable, "-c", "from engine.cli.main import main; main()", "run"],
                            cwd=root, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2  # click usage error
    assert "--once or --interval" in result.stderr
