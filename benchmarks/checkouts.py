"""The child process of an A/B tool that compares checkouts: run in a checkout, answer in JSON.

An A/B tool (``pg_minute.py``, ``duckdb_minute.py``) runs itself again with ``--child`` once per
checkout and round, with ``PYTHONPATH`` = the checkout, so that each child measures that checkout's
engine; the child prints one JSON object as its last line, with ``engine`` (``engine_checkout``):
where the engine it ran came from. ``run_child`` stops the tool when a child ran another
checkout's engine - two tools once compared one engine with itself that way (run.py put its own
checkout first on ``sys.path``; benchmarks/README.md). Also the tools' ``--flip CAPABILITY`` (an A/B of
one ``Dialect`` declaration on one checkout): the argument, the flip in the child, the order of the two
variants per round and the flipped/declared ratios. Must not measure anything itself.
"""
from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
from pathlib import Path


def name_campaigns() -> dict:
    """In a child: ``engine.run.plan.due_statement`` wrapped so that the returned dict's "campaign" holds the
    name of the campaign whose due statement runs next (the A/B tools label the statements they time by it)."""
    import engine.run.plan as plan

    current = {"campaign": "-"}
    due_statement = plan.due_statement

    def named(campaign, *arguments, **options):
        current["campaign"] = campaign.name
        return due_statement(campaign, *arguments, **options)

    plan.due_statement = named
    return current


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


def add_flip_argument(parser) -> None:
    """The tool's ``--flip CAPABILITY`` option."""
    parser.add_argument("--flip", metavar="CAPABILITY",
                        help="each checkout also with this boolean Dialect capability flipped (A/B of a declaration)")


def check_flip(parser, url: str, capability: str | None) -> None:
    """Stop the tool (argparse's error) when ``capability`` is not a boolean of ``url``'s dialect row."""
    from engine.dialects import dialect_named, dialect_of_url

    if capability and not isinstance(getattr(dialect_named(dialect_of_url(url) or ""), capability, None), bool):
        parser.error(f"--flip {capability}: not a boolean capability of the Dialect table")


def flip(url: str, capability: str | None) -> None:
    """In a child, before the engine reads its dialect: ``capability`` of ``url``'s dialect row flipped, in
    this process only. The row itself is changed (it is frozen: by ``object.__setattr__``), so every table
    and module holding it sees the flip."""
    if not capability:
        return
    from engine.dialects import dialect_named, dialect_of_url

    row = dialect_named(dialect_of_url(url) or "")
    object.__setattr__(row, capability, not getattr(row, capability))


def flip_order(round_: int, capability: str | None) -> tuple[bool, ...]:
    """The variants of a round, flipped or not: both with ``--flip``, their order alternating per round."""
    if not capability:
        return (False,)
    return (False, True) if round_ % 2 == 0 else (True, False)


def variant(checkout: Path, capability: str | None, flipped: bool) -> str:
    """The name a checkout's flipped or declared results are collected under."""
    return f"{checkout} {capability} flipped" if flipped else str(checkout)


def flip_ratios(collected: dict, checkouts: list[Path], capability: str, keys: dict[str, str]) -> list[str]:
    """Per checkout, the flipped/declared ratio of the warm plans' medians (``keys``: result key -> name
    printed) and in how many rounds the flipped median was the lower."""
    def warm(r: dict, key: str) -> list[float]:
        return r[key][1:] or r[key]

    lines = []
    for checkout in checkouts:
        declared, flipped = collected[variant(checkout, capability, False)], collected[variant(checkout, capability, True)]
        parts = []
        for key, name in keys.items():
            ratio = (statistics.median(x for r in flipped for x in warm(r, key))
                     / statistics.median(x for r in declared for x in warm(r, key)))
            lower = sum(statistics.median(warm(f, key)) < statistics.median(warm(d, key)) for d, f in zip(declared, flipped))
            parts.append(f"{name} x{ratio:.3f} (lower in {lower} of {len(declared)} rounds)")
        lines.append(f"{checkout}: {capability} flipped / declared: " + ", ".join(parts))
    return lines
