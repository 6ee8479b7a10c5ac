"""The child process of an A/B tool that compares checkouts: run in a checkout, answer in JSON.

An A/B tool (``pg_minute.py``, ``duckdb_minute.py``) runs itself again with ``--child`` once per
checkout and round, with ``PYTHONPATH`` = the checkout, so that each child measures that checkout's
engine; the child prints one JSON object as its last line, with ``engine`` (``engine_checkout``):
where the engine it ran came from. ``run_child`` stops the tool when a child ran another
checkout's engine - two tools once compared one engine with itself that way (run.py put its own
checkout first on ``sys.path``; benchmarks/README.md). Must not measure anything itself.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path


def engine_checkout() -> str:
    """In a child: the checkout whose engine this process imported."""
    import engine

    return str(Path(engine.__file__).resolve().parent.parent)


def run_child(script: str | Path, checkout: Path, arguments: list[str]) -> dict:
    """``script --child arguments`` with ``checkout``'s engine: the JSON object its last line prints."""
    out = subprocess.run([sys.executable, str(script), "--child", *arguments],
                         env={**os.environ, "PYTHONPATH": str(checkout.resolve())}, capture_output=True, text=True)
    if out.returncode:
        raise SystemExit(out.stderr[-3000:])
    result = json.loads(out.stdout.strip().splitlines()[-1])
    if Path(result["engine"]).resolve() != checkout.resolve():
        raise SystemExit(f"the child ran the engine of {result['engine']}, not of {checkout}")
    return result
