"""``engine validate``: every broken file is reported at its line and column, with a fix.

Tests are data. Each file in ``tests/corpus/invalid/`` (campaigns) and
``tests/corpus/config/`` (engine.yaml variants) is broken in exactly one way
and names the expected error in its first line::

    # expect: 7:12 unknown attribute 'ordr_count'

The file is put into a copy of the shipped project, and validation must report
exactly that one error: in that file, at that line and column, with the message
substring and a fix; the CLI must exit 1 without a traceback. Files in
``tests/corpus/valid/`` must validate. A few cases that need more than one file
(duplicate campaign names, an entity engine.yaml does not map) are tests of
their own below, as are the output formats.
"""
from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from conftest import REPO, copy_project, write
from engine.cli.main import main
from engine.spec.project import check_project

CORPUS = Path(__file__).resolve().parent / "corpus"
EXPECT = re.compile(r"#\s*expect:\s*(\d+):(\d+)\s+(.+?)\s*$")


@dataclass(frozen=True)
class Expectation:
    line: int
    column: int
    message: str


def expectation(path: Path) -> Expectation:
    first = path.read_text(encoding="utf-8").splitlines()[0]
    match = EXPECT.fullmatch(first)
    assert match, f"{path.name}: the first line must be '# expect: LINE:COLUMN message', not {first!r}"
    return Expectation(int(match[1]), int(match[2]), match[3])


def corpus(kind: str) -> list[Path]:
    files = sorted((CORPUS / kind).glob("*.yaml"))
    assert files, f"no files in tests/corpus/{kind}"
    return files


def project_with_corpus_templates(target: Path) -> Path:
    """A copy of the shipped project whose templates/corpus/ holds tests/corpus/templates/."""
    copy_project(target)
    shutil.copytree(CORPUS / "templates", target / "templates" / "corpus")
    return target


def validate_cli(project: Path, *args: str):
    """``engine --project PROJECT validate ARGS``; it must end by exiting, never by a crash."""
    result = CliRunner().invoke(main, ["--project", str(project), "validate", *args])
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    assert "Traceback" not in result.output and "Internal error" not in result.output, result.output
    return result


def errors(issues):
    return [i for i in issues if i.severity == "error"]


def assert_single_error(issues, file_name: str, expected: Expectation):
    found = errors(issues)
    described = "\n".join(i.format() for i in found)
    assert len(found) == 1, f"expected exactly one error, got {len(found)}:\n{described}"
    issue = found[0]
    assert Path(issue.file).name == file_name, described
    assert (issue.line, issue.column) == (expected.line, expected.column), described
    assert expected.message in issue.message, described
    assert issue.fix, f"no fix for: {described}"
    return issue


# --- the corpus -----------------------------------------------------------------


@pytest.mark.parametrize("case", corpus("invalid"), ids=lambda p: p.stem)
def test_broken_campaign_is_reported_at_its_line_and_column(case: Path, tmp_path: Path):
    expected = expectation(case)
    project = project_with_corpus_templates(tmp_path)
    shutil.copy(case, project / "campaigns.d" / case.name)

    loaded, issues = check_project(project)

    assert loaded is None
    issue = assert_single_error(issues, case.name, expected)
    assert Path(issue.file).parent.name == "campaigns.d"
    result = validate_cli(project)
    assert result.exit_code == 1, result.output
    assert f"{case.name}:{expected.line}:{expected.column}: error: " in result.output
    assert "fix: " in result.output


@pytest.mark.parametrize("case", corpus("config"), ids=lambda p: p.stem)
def test_broken_engine_yaml_is_reported_at_its_line_and_column(case: Path, tmp_path: Path):
    expected = expectation(case)
    project = copy_project(tmp_path)
    shutil.copy(case, project / "engine.yaml")

    loaded, issues = check_project(project)

    assert loaded is None
    assert_single_error(issues, "engine.yaml", expected)
    result = validate_cli(project)
    assert result.exit_code == 1, result.output
    assert f"engine.yaml:{expected.line}:{expected.column}: error: " in result.output


@pytest.mark.parametrize("case", corpus("valid"), ids=lambda p: p.stem)
def test_valid_campaign_passes(case: Path, tmp_path: Path):
    project = copy_project(tmp_path)
    shutil.copy(case, project / "campaigns.d" / case.name)

    loaded, issues = check_project(project)

    assert [i for i in issues if i.severity == "error"] == []
    assert any(Path(c.file).name == case.name for c in loaded.campaigns)


def test_a_date_like_name_stays_a_string(tmp_path: Path):
    project = copy_project(tmp_path)
    shutil.copy(CORPUS / "valid" / "date-like-name.yaml", project / "campaigns.d")

    loaded, _ = check_project(project)

    campaign = next(c for c in loaded.campaigns if Path(c.file).name == "date-like-name.yaml")
    assert campaign.name == "2025-01-01"
    assert campaign.steps[0].id == "2025-01-01"


def test_a_file_named_on_the_command_line_is_checked_alone(tmp_path: Path):
    """``engine validate FILE`` checks just that file, with the same position."""
    project = project_with_corpus_templates(tmp_path)
    case = CORPUS / "invalid" / "filter-unknown-attribute.yaml"
    expected = expectation(case)

    result = validate_cli(project, str(case))

    assert result.exit_code == 1
    assert f"filter-unknown-attribute.yaml:{expected.line}:{expected.column}: error: {expected.message}" in result.output
    assert "1 error(s)" in result.output


# --- cases that need more than one file -------------------------------------------


def test_duplicate_campaign_names_across_files(tmp_path: Path):
    project = copy_project(tmp_path)
    campaign = """\
        # {comment}
        name: welcome
        trigger:
          order_placed:
            nth: 1
        steps:
          - id: hello
            delay: 1d
            channel: email
            template: second-order/nudge.email.j2
        """
    write(project / "campaigns.d" / "welcome-a.yaml", campaign.format(comment="the first file keeps the name"))
    write(project / "campaigns.d" / "welcome-b.yaml", campaign.format(comment="the second one is reported"))

    _, issues = check_project(project)

    issue = assert_single_error(issues, "welcome-b.yaml", Expectation(2, 1, "campaign name 'welcome' is already used by"))
    assert "welcome-a.yaml" in issue.message
    result = validate_cli(project)
    assert result.exit_code == 1
    assert "welcome-b.yaml:2:1: error: campaign name 'welcome' is already used by" in result.output


def test_a_trigger_needs_an_entity_that_engine_yaml_maps(tmp_path: Path):
    project = copy_project(tmp_path)
    config = yaml.safe_load((REPO / "engine.yaml").read_text(encoding="utf-8"))
    del config["sources"]["checkouts"], config["sources"]["checkout_items"]
    (project / "engine.yaml").write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    write(project / "campaigns.d" / "browse-abandon.yaml", """\
        name: browse-abandon
        trigger:
          checkout_abandoned: {}
        steps:
          - id: reminder
            delay: 1h
            channel: email
            template: abandoned-cart/reminder.email.j2
        """)

    _, issues = check_project(project)

    message = "trigger checkout_abandoned needs the 'checkouts' entity, which engine.yaml does not map"
    ours = [i for i in errors(issues) if Path(i.file).name == "browse-abandon.yaml"]
    assert_single_error(ours, "browse-abandon.yaml", Expectation(3, 3, message))
    assert "add sources.checkouts" in ours[0].fix
    # the shipped abandoned-cart campaign is reported the same way, at its trigger
    shipped = (project / "campaigns.d" / "abandoned-cart.yaml").read_text(encoding="utf-8").splitlines()
    line = next(n for n, text in enumerate(shipped, 1) if text.strip().startswith("checkout_abandoned:"))
    assert any(Path(i.file).name == "abandoned-cart.yaml" and i.line == line and message in i.message
               for i in issues)
    assert validate_cli(project).exit_code == 1


def test_segment_triggers_and_tags_are_valid_with_the_ledger_in_another_database(tmp_path: Path):
    # issue 14: the pass brings entries and tags to the warehouse (engine.sql.shipping), so
    # at_risk and has_tag() no longer need the ledger in the warehouse's database
    project = copy_project(tmp_path)
    config = (REPO / "engine.yaml").read_text(encoding="utf-8")
    (project / "engine.yaml").write_text(config + "ledger:\n  url: sqlite:///var/ledger.db\n", encoding="utf-8")

    _, issues = check_project(project)

    assert not errors(issues), [i.format() for i in errors(issues)]
    assert any("at_risk" in (project / "campaigns.d" / name).read_text(encoding="utf-8")
               for name in ("re-engage.yaml",))


# --- the shipped project and the output formats ------------------------------------


def test_the_shipped_project_is_valid(project_dir: Path):
    result = validate_cli(project_dir)

    assert result.exit_code == 0, result.output
    assert re.match(r"OK: \d+ campaign file\(s\) valid, 0 warning\(s\)", result.output), result.output


def broken_project(tmp_path: Path) -> Path:
    project = copy_project(tmp_path)
    shutil.copy(CORPUS / "invalid" / "filter-unknown-attribute.yaml", project / "campaigns.d")
    shutil.copy(CORPUS / "invalid" / "bad-duration.yaml", project / "campaigns.d")
    return project


def test_json_format(tmp_path: Path):
    result = validate_cli(broken_project(tmp_path), "--format", "json")

    assert result.exit_code == 1
    report = json.loads(result.stdout)
    assert report["valid"] is False
    assert report["errors"] == 2
    by_file = {Path(i["file"]).name: i for i in report["issues"]}
    assert set(by_file) == {"filter-unknown-attribute.yaml", "bad-duration.yaml"}
    errors = [i for i in report["issues"] if i["severity"] == "error"]
    assert len(errors) == 2
    for issue in report["issues"]:
        assert {"file", "line", "column", "message", "fix"} <= set(issue)
        assert issue["fix"]
    by_file = {Path(i["file"]).name: i for i in errors}
    attribute = by_file["filter-unknown-attribute.yaml"]
    assert (attribute["line"], attribute["column"]) == (6, 33)
    assert attribute["path"] == "audience"
    assert "unknown attribute 'ordr_count'" in attribute["message"]
    assert (by_file["bad-duration.yaml"]["line"], by_file["bad-duration.yaml"]["column"]) == (8, 5)


def test_json_format_of_a_valid_project(project_dir: Path):
    result = validate_cli(project_dir, "--format", "json")

    assert result.exit_code == 0
    assert json.loads(result.stdout) == {"valid": True, "errors": 0, "warnings": 0, "issues": []}


def test_github_format(tmp_path: Path):
    result = validate_cli(broken_project(tmp_path), "--format", "github")

    assert result.exit_code == 1
    lines = [line for line in result.stdout.splitlines() if line.startswith("::error")]
    assert len(lines) == 2
    pattern = re.compile(r"::error file=(?P<file>[^,]+),line=(?P<line>\d+),col=(?P<col>\d+),title=engine validate::(?P<text>.+)")
    found = {}
    for line in lines:
        match = pattern.fullmatch(line)
        assert match, line
        found[Path(match["file"]).name] = (int(match["line"]), int(match["col"]), match["text"])
    assert found["bad-duration.yaml"][:2] == (8, 5)
    assert found["filter-unknown-attribute.yaml"][:2] == (6, 33)
    assert " Fix: " in found["filter-unknown-attribute.yaml"][2]


def test_github_format_escapes_the_file_property(tmp_path: Path):
    project = copy_project(tmp_path)
    shutil.copy(CORPUS / "invalid" / "bad-duration.yaml", project / "campaigns.d" / "a,b.yaml")

    result = validate_cli(project, "--format", "github")

    assert result.exit_code == 1
    assert result.output.startswith("::error file=")
    assert "a%2Cb.yaml,line=8,col=5," in result.output


def test_the_installed_command_exits_1_without_a_traceback(tmp_path: Path):
    project = project_with_corpus_templates(tmp_path)
    for name in ("yaml-unclosed-bracket.yaml", "recursive-alias.yaml", "filter-subquery.yaml"):
        shutil.copy(CORPUS / "invalid" / name, project / "campaigns.d")
    command = Path(sys.executable).parent / "engine"
    argv = [str(command)] if command.exists() else [sys.executable, "-c", "from engine.cli.main import main; main()"]

    done = subprocess.run(argv + ["--project", str(project), "validate"], capture_output=True, text=True, timeout=60)

    assert done.returncode == 1, done.stdout + done.stderr
    assert "Traceback" not in done.stdout + done.stderr
    assert "Internal error" not in done.stdout + done.stderr
    assert "yaml-unclosed-bracket.yaml:7:6: error: YAML syntax error" in done.stdout
    assert "recursive-alias.yaml:5:7: error: an alias refers to a value that contains it" in done.stdout
    assert "filter-subquery.yaml:5:27: error: subqueries" in done.stdout
    assert "3 error(s)" in done.stdout
