"""A fork server for kill tests: the engine imported once, one forked process per pass.

Starting Python and importing the engine costs 1.5-2 s, so a test that kills
``engine run --once`` a hundred times would spend minutes starting processes.
``ForkServer`` starts this file as a helper process that imports the engine
and its drivers once and then, for each request, forks a child that runs
the real command line (``engine.cli.main.main``) in its own process. The helper
holds no database connection and no thread when it forks, so a child inherits
neither. When the request has ``kill_after``, the helper sends the child
SIGKILL that many seconds after the fork unless it ended first - the helper,
not the test, because only the parent can hold a dead child's pid until it is
reaped, so the kill can never hit another process that reused the pid.

Protocol: one JSON object per line on the helper's stdin (``args``, ``cwd``,
``env``, ``log``, ``kill_after``, ``timeout``), one JSON answer per line on its
stdout (``returncode`` - negative for a signal, as subprocess reports it -,
``killed``, ``seconds``).
"""
from __future__ import annotations

import importlib
import json
import os
import select
import signal
import subprocess
import sys
import time
import traceback
from pathlib import Path

#: imported once by the helper, so a child starts with them loaded
PRELOAD = ["engine.cli.main", "engine.run.reconcile", "engine.spec.project", "engine.tools.output", "engine.tools.demo",
           "engine.channels.smtp", "engine.channels.sms_http",
           "engine.channels.outbox", "httpx", "sqlalchemy.dialects.sqlite", "sqlalchemy.dialects.postgresql",
           "psycopg", "duckdb_engine"]


class ForkServer:
    """The test's side: ``run(args, cwd, ...)`` forks one engine process in the helper and waits for it."""

    def __init__(self, env: dict | None = None):
        self.process = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve())], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            text=True, env={**os.environ, **(env or {})})

    def run(self, args: list[str], cwd: Path, log: Path, env: dict | None = None, kill_after: float | None = None,
            timeout: float = 120.0) -> dict:
        request = {"args": args, "cwd": str(cwd), "env": env or {}, "log": str(log), "kill_after": kill_after,
                   "timeout": timeout}
        self.process.stdin.write(json.dumps(request) + "\n")
        self.process.stdin.flush()
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError(f"the fork server ended (exit {self.process.wait(timeout=10)})")
        return json.loads(line)

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.stdin.close()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)

    def __enter__(self) -> "ForkServer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# --- the helper's side -----------------------------------------------------------------------


def serve() -> None:
    for name in PRELOAD:
        try:
            importlib.import_module(name)
        except ImportError:  # an optional driver that is not installed
            pass
    for line in sys.stdin:
        request = json.loads(line)
        started = time.monotonic()
        pid = os.fork()
        if pid == 0:
            _child(request)  # never returns
        returncode, killed = _wait(pid, request.get("kill_after"), float(request.get("timeout") or 120))
        sys.stdout.write(json.dumps({"pid": pid, "returncode": returncode, "killed": killed,
                                     "seconds": round(time.monotonic() - started, 4)}) + "\n")
        sys.stdout.flush()


def _child(request: dict) -> None:
    """In the forked child: the command line, its output into the log file; exits with its code."""
    code = 70
    try:
        os.chdir(request["cwd"])
        os.environ.update(request["env"])
        log = os.open(request["log"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)  # not the helper's request pipe
        os.dup2(log, 1)
        os.dup2(log, 2)
        from engine.cli.main import main

        try:
            main(args=request["args"], prog_name="engine")
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except BaseException:  # noqa: BLE001 - reported in the log, exit 70
        traceback.print_exc()
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)


def _wait(pid: int, kill_after: float | None, timeout: float) -> tuple[int, bool]:
    """Wait for the child; SIGKILL it after ``kill_after`` seconds (or ``timeout``) if it still runs."""
    deadline = min(kill_after if kill_after is not None else timeout, timeout)
    descriptor = os.pidfd_open(pid)
    try:
        ended, _, _ = select.select([descriptor], [], [], max(0.0, deadline))
    finally:
        os.close(descriptor)
    killed = not ended
    if killed:
        os.kill(pid, signal.SIGKILL)  # not reaped yet: the pid is still this child's
    _, status = os.waitpid(pid, 0)
    returncode = -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)
    return returncode, killed and returncode == -signal.SIGKILL


if __name__ == "__main__":
    serve()
