"""Hostile campaign files: each is refused by ``engine validate`` with a clear message, cheaply.

Data in ``tests/corpus/hostile/`` (first line ``# expect: [LINE:COLUMN ]message substring``)
plus cases that cannot be stored as plain files (a NUL byte, a symlink loop,
10,000 nested brackets, 3,000 nested brackets or NOTs in a filter, a file of
2 MiB, a FIFO). Each file is dropped into a copy of the shipped project and
``engine validate`` runs as a real subprocess under an address-space limit
(``RLIMIT_AS``) and a timeout: it must exit 1 naming the file, with the
expected message, without a traceback or "Internal error". The limits are
generous bounds, not speed goals: a billion-laughs file ran for minutes and
took 1.6 GB before.

Nothing outside the filter whitelist may reach SQL: a filter's comments are
dropped, which the last test checks on the compiled query.
"""
from __future__ import annotations

import dataclasses
import os
import re
import resource
import shutil
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

import pytest

from conftest import copy_project

CORPUS = Path(__file__).resolve().parent / "corpus" / "hostile"
ENGINE = [sys.executable, "-c", "from engine.cli.main import main; main()"]
EXPECT = re.compile(r"#\s*expect:\s*(?:(\d+):(\d+)\s+)?(.+?)\s*$")
MEMORY_LIMIT = 1536 * 1024 * 1024  # address space of the validating process: generous, but far below a bomb's
TIME_LIMIT = 90  # seconds; validation of the shipped project takes about one


def _limit_memory() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))


def validate(project: Path) -> subprocess.CompletedProcess:
    """``engine validate`` on ``project`` as a subprocess, bounded in memory and time."""
    return subprocess.run(ENGINE + ["--project", str(project), "validate"], capture_output=True, text=True,
                          timeout=TIME_LIMIT, preexec_fn=_limit_memory, cwd=project)


def assert_refused(result: subprocess.CompletedProcess, file_name: str, message: str,
                   position: tuple[int, int] | None = None) -> None:
    output = result.stdout + result.stderr
    assert result.returncode == 1, output
    assert "Traceback" not in output and "Internal error" not in output, output
    located = f"{file_name}:{position[0]}:{position[1]}: error: " if position else f"{file_name}"
    errors = [line for line in output.splitlines() if ": error: " in line]
    assert any(located in line for line in errors), output
    assert message in output, output
    assert "fix: " in output, output


def project_with(tmp_path: Path) -> Path:
    return copy_project(tmp_path / "project")


@pytest.mark.parametrize("case", sorted(CORPUS.glob("*.yaml")), ids=lambda p: p.stem)
def test_a_hostile_campaign_file_is_refused_clearly(case: Path, tmp_path: Path):
    match = EXPECT.fullmatch(case.read_text(encoding="utf-8").splitlines()[0])
    assert match, f"{case.name}: the first line must be '# expect: [LINE:COLUMN ]message'"
    project = project_with(tmp_path)
    shutil.copy(case, project / "campaigns.d" / case.name)

    result = validate(project)

    position = (int(match[1]), int(match[2])) if match[1] else None
    assert_refused(result, case.name, match[3], position)


VALID = """\
name: generated
trigger:
  order_placed:
    nth: 1
audience: {audience}
steps:
  - id: nudge
    delay: 7d
    freshness: 2d
    channel: email
    template: second-order/nudge.email.j2
"""


def _nul_byte(path: Path) -> None:
    path.write_bytes(VALID.format(audience="email IS NOT NULL").replace("generated", "gener\0ated").encode())


def _deep_brackets(path: Path) -> None:
    path.write_text(VALID.format(audience="email IS NOT NULL") + "extra: " + "[" * 10_000 + "]" * 10_000 + "\n")


def _filter_parens(path: Path) -> None:
    path.write_text(VALID.format(audience='"' + "(" * 3000 + "order_count > 1" + ")" * 3000 + '"'))


def _filter_parens_short(path: Path) -> None:  # deep, but short enough to pass the length bound
    path.write_text(VALID.format(audience='"' + "(" * 200 + "order_count > 1" + ")" * 200 + '"'))


def _filter_nots(path: Path) -> None:
    path.write_text(VALID.format(audience='"' + "NOT " * 3000 + 'order_count > 1"'))


def _filter_nots_short(path: Path) -> None:
    path.write_text(VALID.format(audience='"' + "NOT " * 500 + 'order_count > 1"'))


def _huge_file(path: Path) -> None:
    path.write_text(VALID.format(audience="email IS NOT NULL") + "# padding\n" * 220_000)


def _symlink_loop(path: Path) -> None:
    other = path.with_name("other.yaml")
    other.symlink_to(path.name)
    path.symlink_to(other.name)


def _dangling_symlink(path: Path) -> None:
    path.symlink_to("/nonexistent/campaign.yaml")


def _fifo(path: Path) -> None:
    os.mkfifo(path)  # reading it would block validation for ever


def _not_utf8(path: Path) -> None:
    path.write_bytes(VALID.format(audience="email IS NOT NULL").encode().replace(b"generated", b"gen\xe9rated"))


def _long_number(path: Path) -> None:
    path.write_text(VALID.format(audience="email IS NOT NULL").replace("nth: 1", "nth: " + "9" * 5000))


def _long_duration(path: Path) -> None:
    path.write_text(VALID.format(audience="email IS NOT NULL").replace("delay: 7d", "delay: " + "9" * 5000 + "s"))


GENERATED = {
    "nul-byte": (_nul_byte, "contains a NUL byte", (1, 12)),
    "ten-thousand-brackets": (_deep_brackets, "nested more than 64 levels deep", (12, 71)),
    "filter-3000-parentheses": (_filter_parens, "characters long, more than 4,000", None),
    "filter-200-parentheses": (_filter_parens_short, "nested more than 16 levels deep", (5, 28)),
    "filter-3000-nots": (_filter_nots, "characters long, more than 4,000", None),
    "filter-500-nots": (_filter_nots_short, "nested more than 16 levels deep", None),
    "two-mebibytes": (_huge_file, "larger than 1024 KiB", None),
    "symlink-loop": (_symlink_loop, "symbolic link that leads nowhere", None),
    "dangling-symlink": (_dangling_symlink, "symbolic link that leads nowhere", None),
    "fifo": (_fifo, "not a regular file", None),
    "not-utf8": (_not_utf8, "not UTF-8 text", None),
    "five-thousand-digit-number": (_long_number, "number is too long to read", (4, 10)),
    "five-thousand-digit-duration": (_long_duration, "longer than the longest duration", (8, 5)),
}


@pytest.mark.parametrize("name", sorted(GENERATED))
def test_a_generated_hostile_file_is_refused_clearly(name: str, tmp_path: Path):
    make, message, position = GENERATED[name]
    project = project_with(tmp_path)
    make(project / "campaigns.d" / f"{name}.yaml")

    result = validate(project)

    assert_refused(result, f"{name}.yaml", message, position)


def test_a_filter_comment_never_reaches_sql(project_dir: Path):
    """sqlglot would carry a comment into the SQL it writes; the parsed filter has none."""
    from engine.sql.compile import render_sql
    from engine.sql.due import due_query
    from engine.spec.project import load_project

    project = load_project(project_dir)
    campaign = project.campaign("second-order")
    now = datetime(2025, 1, 10, tzinfo=timezone.utc)
    for audience in ("email IS NOT NULL -- */ ; DROP TABLE customers; /*",
                     "email IS NOT NULL /* DROP TABLE customers */ AND order_count > 0"):
        tricked = dataclasses.replace(campaign, audience=audience)
        for dialect in ("duckdb", "postgres", "sqlite"):
            sql = render_sql(due_query(tricked, project.config, now, exclude_ledger=True), dialect)
            assert "DROP" not in sql.upper() and "/*" not in sql, sql


@pytest.mark.parametrize("dialect", ["duckdb", "postgres", "sqlite", "bigquery", "snowflake", "spark", "trino"])
def test_quotes_and_backslashes_stay_inside_their_string_literal(dialect: str):
    """A string literal cannot end early in any warehouse's dialect: what the filter compares is what runs."""
    import sqlglot
    from sqlglot import exp

    from engine.errors import FilterError
    from engine.sql.filters import parse_filter

    with pytest.raises(FilterError, match="exactly one expression"):  # the backslash does not escape: two statements
        parse_filter("email = 'x\\'; DROP TABLE t; --'", ["email"])
    for text in ("email = 'a\\' OR email = 'b'", "email = 'it''s' OR order_count = 1"):
        tree = parse_filter(text, ["email", "order_count"])
        again = sqlglot.parse_one(tree.sql(dialect=dialect), read=dialect)
        assert [lit.this for lit in again.find_all(exp.Literal)] == [lit.this for lit in tree.find_all(exp.Literal)]
        assert [c.name for c in again.find_all(exp.Column)] == [c.name for c in tree.find_all(exp.Column)]
        assert not list(again.find_all(exp.Drop))
