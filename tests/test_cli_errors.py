"""Errors a newcomer can act on, through the real ``engine`` command (issue 19).

- schema errors do not hide the semantic ones: one ``engine validate`` run reports both, each at file:line:column;
- an undefined template variable is named as written (``customer.frist_name``), at the template's file and
  line, every one of them, with a did-you-mean against what the template is given;
- a mapped column the warehouse lacks: ``engine plan`` / ``engine run`` name engine.yaml's line and the column;
- "has the wrong format" says the format in words and gives a valid example.
"""
from __future__ import annotations

import json
import re
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner

from conftest import copy_project, load_history, write
from engine.cli.main import main
from engine.spec.schemas import SCHEMA_DIR, pattern_words


def engine(*args: str, env: dict | None = None):
    result = CliRunner().invoke(main, list(args), env=env)
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    assert "Traceback" not in result.output and "Internal error" not in result.output, result.output
    return result


def line_of(path: Path, text: str) -> int:
    return next(n for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1) if text in line)


@pytest.fixture
def project(tmp_path: Path) -> Path:
    root = copy_project(tmp_path / "project")
    for path in (root / "campaigns.d").glob("*.yaml"):
        if path.stem != "second-order":
            path.unlink()
    return root


# --- 1. schema errors and semantic errors in one run ------------------------------------------------

BROKEN_TWICE = """
    name: second-order
    trigger:
      order_placed: {nth: 1}
    audience: ordr_count = 1
    stop: [ordered_again]
    steps:
      - id: nudge
        delay: 7 days
        freshness: 2d
        channel: emial
        template: second-order/nudge.email.j2
      - id: nudge
        delay: 8d
        freshness: 2d
        channel: email
        template: second-order/nudge.email.j2
        colour: red
      - id: remind
        delay: 9d
        freshness: 2d
        variants:
          - {id: a, channel: email, template: second-order/nudge.email.j2, audience: order_count >> 1}
          - {id: a, channel: pigeon, template: second-order/nudge.email.j2}
"""


def test_schema_errors_do_not_hide_semantic_ones(project: Path):
    campaign = write(project / "campaigns.d" / "second-order.yaml", BROKEN_TWICE)
    result = engine("--project", str(project), "validate", "--format", "json")
    assert result.exit_code == 1
    found = {(i["line"], i["column"], i["message"].split(" (")[0].split(":")[0])  # the message up to its details
             for i in json.loads(result.stdout)["issues"]}
    expected = {
        # the schema's
        (line_of(campaign, "7 days"), 5, "'7 days' has the wrong format"),
        (line_of(campaign, "colour"), 5, "unknown key 'colour'"),
        # and, in the same run, the semantic ones the rest of the file allows
        (line_of(campaign, "ordr_count"), 11, "unknown attribute 'ordr_count'"),
        (line_of(campaign, "emial"), 5, "channel 'emial' is not configured"),
        (line_of(campaign, "delay: 8d") - 1, 5, "step id 'nudge' is used twice"),
        (line_of(campaign, ">> 1"), 82, "'order_count >> 1'"),  # is not allowed in filters
        (line_of(campaign, "pigeon"), 10, "variant id 'a' is used twice"),
        (line_of(campaign, "pigeon"), 17, "channel 'pigeon' is not configured"),
    }
    assert found == expected, sorted(found)


def test_a_file_broken_only_by_the_schema_reports_nothing_more(project: Path):
    write(project / "campaigns.d" / "second-order.yaml", """
        name: second-order
        trigger: {order_placed: {nth: 1}}
        stop: [ordered_again]
        steps:
          - {id: nudge, delay: 7 days, freshness: 2d, channel: email, template: second-order/nudge.email.j2}
    """)
    result = engine("--project", str(project), "validate")
    assert result.exit_code == 1
    assert "1 error(s)" in result.stdout, result.stdout


# --- 2. template errors: every undefined variable, at the template's line, with did-you-mean -------------

MISSPELT = """\
{% extends "layouts/email.j2" %}
{% block title %}Ready for your next cup, {{ customer.frist_name or "friend" }}?{% endblock %}
{% block intro %}Thanks for your order of {{ trigger.totl }}.
{% if customer.vip is defined %}VIP{% endif %}{{ customer.nickname | default("you") }} at {{ shop_nmae }}
{% for item in items %}{{ item.nmae }}{% endfor %}{% endblock %}
{% block cta_label %}Order again{% endblock %}
{% block cta_url %}https://beanandbrew.example/shop{% endblock %}
"""


def test_every_undefined_template_variable_is_named_at_its_line_with_did_you_mean(project: Path):
    template = project / "templates" / "second-order" / "nudge.email.j2"
    template.write_text(MISSPELT, encoding="utf-8")
    result = engine("--project", str(project), "validate", "--format", "json")
    assert result.exit_code == 1
    issues = [i for i in json.loads(result.stdout)["issues"] if i["severity"] == "error"]
    assert "dict object" not in result.stdout and "jinja2" not in result.stdout
    by_message = {i["message"].split(", in the template of")[0]: i for i in issues}
    assert set(by_message) == {
        "'customer.frist_name' is undefined (did you mean 'customer.first_name' or 'customer.last_name'?)",
        "'trigger.totl' is undefined (did you mean 'trigger.total'?)",
        "'shop_nmae' is undefined (did you mean 'shop'?)",
        "'item.nmae' is undefined (did you mean 'item.name'?)",
    }, result.stdout
    lines = {"frist_name": 2, "totl": 3, "shop_nmae": 4, "item.nmae": 5}
    for message, issue in by_message.items():
        assert issue["file"].endswith("templates/second-order/nudge.email.j2"), issue
        assert issue["line"] == next(n for word, n in lines.items() if word in message), issue
        assert "campaigns.d/second-order.yaml:" in issue["message"]  # which campaign uses it
    assert "first_name" in by_message["'customer.frist_name' is undefined (did you mean 'customer.first_name' or "
                                      "'customer.last_name'?)"]["fix"]
    assert "customer" in by_message["'shop_nmae' is undefined (did you mean 'shop'?)"]["fix"]  # what the template is given instead


def test_an_undefined_variable_at_send_time_is_named_the_same_way(tmp_path: Path):
    from engine.errors import TemplateError
    from engine.templating.render import Renderer

    write(tmp_path / "t.sms.j2", "{% block text %}Hi\n{{ customer.frist_name }}{% endblock %}")
    with pytest.raises(TemplateError) as raised:
        Renderer(tmp_path).render("t.sms.j2", "sms", {"customer": {"first_name": "Ann"}})
    assert "'customer.frist_name' is undefined (templates/t.sms.j2:2)" in str(raised.value)
    assert "dict object" not in str(raised.value)


# --- 3. a mapped column the warehouse lacks, at plan and run time -------------------------------------------

T0 = datetime(2025, 3, 1)


@pytest.mark.parametrize("backend", ["duckdb", "sqlite"])
@pytest.mark.parametrize("command", [["plan", "second-order"], ["run", "--once", "second-order"]])
def test_a_wrong_column_in_the_mapping_names_engine_yaml_line_at_plan_and_run(project: Path, tmp_path: Path, backend,
                                                                               command):
    from conftest import database_url

    url = database_url(backend, tmp_path)
    load_history(url, customers=[{"customer_id": 1, "email": "a@example.com", "first_name": "Ann",
                                  "created_at": T0 - timedelta(days=30)}],
                 orders=[{"order_id": 10, "customer_id": 1, "created_at": T0 - timedelta(days=7, hours=1),
                          "status": "completed", "total": 10}])
    config = project / "engine.yaml"
    config.write_text(config.read_text(encoding="utf-8").replace("first_name: first_name", "first_name: firstname"),
                      encoding="utf-8")
    result = engine("--project", str(project), *command, "--as-of", "2025-03-01T00:00:00Z",
                    env={"ENGINE_WAREHOUSE_URL": url})
    assert result.exit_code == 1, result.output
    line = line_of(config, "first_name: firstname")
    assert re.search(rf"engine\.yaml:{line}:\d+: error: column 'firstname' of customers\.first_name does not exist"
                     r".*did you mean 'first_name'", result.stderr), result.stderr


# --- 4. "has the wrong format" says which format --------------------------------------------------------------

def test_a_wrong_format_says_the_format_in_words_with_an_example(project: Path):
    campaign = project / "campaigns.d" / "second-order.yaml"
    campaign.write_text(campaign.read_text(encoding="utf-8").replace("name: second-order", "name: Bad Name!"),
                        encoding="utf-8")
    result = engine("--project", str(project), "validate")
    assert result.exit_code == 1
    assert ("'Bad Name!' has the wrong format: lowercase letters a-z, digits 0-9, '-' and '_', starting with a "
            "letter or digit, e.g. 'bad-name'") in result.stdout, result.stdout


def _patterns(node, found: set) -> set:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "pattern" and isinstance(value, str):
                found.add(value)
            else:
                _patterns(value, found)
    elif isinstance(node, list):
        for value in node:
            _patterns(value, found)
    return found


@pytest.mark.parametrize("pattern", sorted(set().union(*(_patterns(json.loads(p.read_text(encoding="utf-8")), set())
                                                          for p in SCHEMA_DIR.glob("*.schema.json")))))
@pytest.mark.parametrize("bad", ["Bad Name!", "7 days", "-3 days", "half of it", "", "\"; DROP TABLE x"])
def test_every_schema_pattern_is_described_with_an_example_that_is_valid(pattern: str, bad: str):
    words = pattern_words(pattern, bad)
    assert "regular expression" not in words, f"describe {pattern} in engine/spec/schemas.py _PATTERN_WORDS"
    example = re.search(r"e\.g\. '([^']*)'$", words)
    assert example, words
    assert re.search(pattern, example[1]), f"the example {example[1]!r} does not match {pattern}"
