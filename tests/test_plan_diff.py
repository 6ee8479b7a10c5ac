"""``engine plan --diff``: the recipients a change adds, removes and keeps, per campaign and step.

A real git repository in tmp_path holds the shipped project; a small history
is loaded into a real database (DuckDB, SQLite, PostgreSQL). Each scenario
edits the working tree (a filter, a delay, a new step, a renamed step, a
disabled campaign, a template) and compares ``engine plan --diff`` with what
``engine plan`` itself says at each version, diffed here as plain sets, and
with literal expectations about who is gained or lost.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from datetime import datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
from click.testing import CliRunner

from conftest import copy_project, database_url, load_history
from engine.cli.main import main
from engine.tools.plandiff import diff_plans

T0 = datetime(2025, 1, 1, 12, 0, 0)
NOW = "2025-01-08T12:00:00Z"  # T0 + 7 days
GIT_ENV = {"GIT_AUTHOR_NAME": "Test", "GIT_AUTHOR_EMAIL": "test@example.com", "GIT_COMMITTER_NAME": "Test",
           "GIT_COMMITTER_EMAIL": "test@example.com", "GIT_AUTHOR_DATE": "2025-01-01T00:00:00Z",
           "GIT_COMMITTER_DATE": "2025-01-01T00:00:00Z"}


def customer(customer_id: int) -> dict:
    return {"customer_id": customer_id, "email": f"c{customer_id}@example.com", "phone": None,
            "first_name": f"C{customer_id}", "last_name": "Test", "created_at": T0 - timedelta(days=400), "city": "Berlin"}


def order(order_id: int, customer_id: int, when: datetime, total: float) -> dict:
    return {"order_id": order_id, "customer_id": customer_id, "created_at": when, "status": "completed", "total": total}


#: customers 1-6 placed their first order at T0 (second-order nudge due at NOW), 7-8 a day later
#: (due a day after NOW); customers 3 and 5 spent less than 20.
HISTORY = dict(
    customers=[customer(i) for i in range(1, 10)],
    orders=[order(100 + i, i, T0, 12.0 if i in (3, 5) else 35.0) for i in range(1, 7)]
    + [order(100 + i, i, T0 + timedelta(days=1), 50.0) for i in (7, 8)],
    checkouts=[{"checkout_id": 900, "customer_id": 9, "created_at": T0 + timedelta(days=7, minutes=-90),
                "completed_at": None, "total": 20}],
)


def git(root: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=root, check=True, capture_output=True, text=True,
                          env={**os.environ, **GIT_ENV}).stdout


def engine(root: Path, *args: str, code: int = 0):
    result = CliRunner().invoke(main, ["--project", str(root), *args])
    assert result.exit_code == code, result.output + (result.stderr if code == 0 else "")
    return result


def planned(root: Path) -> set[tuple[str, str, str, str]]:
    """What ``engine plan`` says would be sent at NOW: {(campaign, step, customer, trigger)}."""
    lines = engine(root, "plan", "--as-of", NOW, "--format", "jsonl").stdout.splitlines()
    return {(r["campaign"], r["step"], r["customer_id"], r["trigger_key"]) for r in map(json.loads, lines)}


def diffed(root: Path, *args: str) -> dict:
    return json.loads(engine(root, "plan", "--diff", *args, "--as-of", NOW, "--format", "json").stdout)


def steps(report: dict) -> dict[tuple[str, str], dict]:
    return {(c["name"], s["step"]): {**s, "campaign_status": c["status"]} for c in report["campaigns"] for s in c["steps"]}


def order_key(customer_id: str):
    return (0, int(customer_id)) if customer_id.isdigit() else (1, customer_id)


def expected_counts(before: set, after: set, renames: dict | None = None, sample: int = 5) -> dict:
    """Per (campaign, step): the set arithmetic of the two plans; a renamed key's rows are merged
    into its new key (everything of the old key removed, everything of the new one added)."""
    result = {}
    for where in {(c, s) for c, s, _, _ in before | after}:
        o = {(cid, t) for c, s, cid, t in before if (c, s) == where}
        n = {(cid, t) for c, s, cid, t in after if (c, s) == where}
        result[where] = {"added": len(n - o), "removed": len(o - n), "unchanged": len(o & n),
                         "added_sample": sorted({c for c, _ in n - o}, key=order_key)[:sample],
                         "removed_sample": sorted({c for c, _ in o - n}, key=order_key)[:sample]}
    for old, new in (renames or {}).items():
        gone, came = result.pop(old), result[new]
        assert gone["added"] == came["removed"] == gone["unchanged"] == came["unchanged"] == 0
        result[new] = {**came, "removed": gone["removed"], "removed_sample": gone["removed_sample"]}
    return result


def check_against_plans(report: dict, before: set, after: set, renames: dict | None = None) -> None:
    shown = steps(report)
    for where, counts in expected_counts(before, after, renames).items():
        assert {k: shown[where][k] for k in counts} == counts, where
    for where, s in shown.items():  # every step not in either plan is all zeros
        if where not in expected_counts(before, after, renames):
            assert (s["added"], s["removed"], s["unchanged"]) == (0, 0, 0), where


@pytest.fixture
def repo(tmp_path, backend, monkeypatch):
    """The shipped project committed on main in a fresh git repository, over a fresh shop database."""
    root = copy_project(tmp_path / "shop")
    url = database_url(backend, tmp_path)
    monkeypatch.setenv("ENGINE_WAREHOUSE_URL", url)
    load_history(url, **HISTORY)
    git(root, "init", "-q", "-b", "main")
    git(root, "add", "-A")
    git(root, "commit", "-q", "-m", "shipped campaigns")
    return root


def edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text, f"{old!r} not in {path}"
    path.write_text(text.replace(old, new, 1))


def ledger_rows() -> int:
    engine_ = sa.create_engine(os.environ["ENGINE_WAREHOUSE_URL"])
    with engine_.connect() as connection:
        count = connection.execute(sa.text("SELECT COUNT(*) FROM engine_ledger")).scalar()
    engine_.dispose()
    return count


def test_every_kind_of_change_against_the_plans_at_both_versions(repo: Path):
    # the abandoned cart of customer 9 was already sent: the ledger holds it, both plans leave it out
    engine(repo, "run", "--once", "--as-of", NOW, "--campaign", "abandoned-cart")
    held = ledger_rows()
    assert held == 1
    before = planned(repo)
    nudged = {cid for c, s, cid, _ in before if (c, s) == ("second-order", "nudge")}
    assert nudged == {"1", "2", "3", "4", "5", "6"}

    # nothing changed: every recipient unchanged
    report = diffed(repo)
    assert report["ref"] == "merge base of HEAD and main" and report["ref_valid"]
    check_against_plans(report, before, before)
    assert all(s["added"] == s["removed"] == 0 and s["status"] == "same" for s in steps(report).values())

    campaign = repo / "campaigns.d" / "second-order.yaml"
    scenarios = [
        # a filter: customers 3 and 5 spent less than 20
        ("filter", lambda: edit(campaign, "audience: email IS NOT NULL", "audience: email IS NOT NULL AND total_spent >= 20"),
         {("second-order", "nudge"): (0, 2, 4)}, {}),
        # a shorter delay: 7 and 8 (first order a day later) are due now too
        ("delay", lambda: edit(campaign, "delay: 7d", "delay: 6d"), {("second-order", "nudge"): (2, 0, 6)}, {}),
        # a new step, due a day after the first order (fresh for 10 days): all eight
        ("add step", lambda: campaign.write_text(campaign.read_text() + (
            "  - id: thanks\n    delay: 1d\n    freshness: 10d\n    channel: email\n"
            "    template: second-order/nudge.email.j2\n")),
         {("second-order", "nudge"): (0, 0, 6), ("second-order", "thanks"): (8, 0, 0)}, {}),
        # a renamed step: a new identity, so everyone is new (and everyone of the old id is gone)
        ("rename step", lambda: edit(campaign, "id: nudge", "id: nudge-v2"),
         {("second-order", "nudge-v2"): (6, 6, 0)}, {("second-order", "nudge"): ("second-order", "nudge-v2")}),
        ("disable", lambda: campaign.write_text(campaign.read_text() + "enabled: false\n"),
         {("second-order", "nudge"): (0, 6, 0)}, {}),
        ("template only", lambda: edit(repo / "templates" / "second-order" / "nudge.email.j2", "a week ago", "last week"),
         {("second-order", "nudge"): (0, 0, 6)}, {}),
    ]
    for name, change, expected, renames in scenarios:
        git(repo, "checkout", "-q", "--", ".")
        change()
        after = planned(repo)
        report = diffed(repo, "main")
        shown = steps(report)
        check_against_plans(report, before, after, renames)
        for where, (added, removed, unchanged) in expected.items():
            assert (shown[where]["added"], shown[where]["removed"], shown[where]["unchanged"]) == (added, removed, unchanged), name
        others = {w: s for w, s in shown.items() if w[0] != "second-order"}
        assert all(s["added"] == s["removed"] == 0 and not s["content_changed"] for s in others.values()), name
        nudge = shown.get(("second-order", "nudge-v2" if renames else "nudge"))
        if name == "filter":
            assert nudge["removed_sample"] == ["3", "5"] and nudge["settings_changed"] is False
            assert report["campaigns"][[c["name"] for c in report["campaigns"]].index("second-order")]["notes"] == ["settings changed"]
        if name == "delay":
            assert nudge["added_sample"] == ["7", "8"] and nudge["settings_changed"] is True
        if name == "add step":
            assert shown[("second-order", "thanks")]["status"] == "added"
        if name == "rename step":
            assert nudge["status"] == "renamed" and nudge["renamed_from"] == "nudge"
            assert ("second-order", "nudge") not in shown
        if name == "disable":
            assert nudge["campaign_status"] == "disabled"
        if name == "template only":
            assert nudge["content_changed"] is True and nudge["status"] == "same"
            assert [w for w, s in shown.items() if s["content_changed"]] == [("second-order", "nudge")]
    # neither side wrote to the ledger, and the working tree was never touched by the REF side
    assert ledger_rows() == held
    assert "last week" in (repo / "templates" / "second-order" / "nudge.email.j2").read_text()


def test_campaigns_added_removed_and_renamed(repo: Path):
    before = planned(repo)
    cart = repo / "campaigns.d" / "abandoned-cart.yaml"
    edit(cart, "name: abandoned-cart", "name: cart-reminder")
    (repo / "campaigns.d" / "second-order.yaml").unlink()
    vip = (repo / "campaigns.d" / "vip.yaml").read_text()
    (repo / "campaigns.d" / "vip-copy.yaml").write_text(vip.replace("name: vip", "name: vip-copy"))
    after = planned(repo)
    report = diffed(repo)
    check_against_plans(report, before, after, {("abandoned-cart", "reminder"): ("cart-reminder", "reminder")})
    status = {c["name"]: (c["status"], c["renamed_from"]) for c in report["campaigns"]}
    assert status["cart-reminder"] == ("renamed", "abandoned-cart")
    assert "abandoned-cart" not in status
    assert status["second-order"] == ("removed", None)
    assert status["vip-copy"] == ("added", None)
    shown = steps(report)
    assert (shown[("cart-reminder", "reminder")]["added"], shown[("cart-reminder", "reminder")]["removed"]) == (1, 1)
    assert (shown[("second-order", "nudge")]["removed"], shown[("second-order", "nudge")]["after"]) == (6, 0)


def test_an_invalid_project_at_the_ref_is_named_and_the_working_tree_still_shown(repo: Path):
    campaign = repo / "campaigns.d" / "second-order.yaml"
    edit(campaign, "delay: 7d", "delay: seven days")
    git(repo, "commit", "-q", "-am", "broken delay")
    edit(campaign, "delay: seven days", "delay: 7d")
    report = diffed(repo, "HEAD")
    assert report["ref_valid"] is False
    [issue] = report["ref_issues"]
    assert issue["file"] == "campaigns.d/second-order.yaml" and issue["line"] == 12
    assert steps(report)[("second-order", "nudge")]["after"] == 6
    text = engine(repo, "plan", "--diff", "HEAD", "--as-of", NOW).stdout
    assert "is invalid" in text and "campaigns.d/second-order.yaml:12:" in text


@pytest.mark.parametrize("backend", ["duckdb"])
def test_markdown_for_a_pull_request_comment(repo: Path, snapshot):
    campaign = repo / "campaigns.d" / "second-order.yaml"
    edit(campaign, "audience: email IS NOT NULL", "audience: email IS NOT NULL AND total_spent >= 20")
    edit(repo / "templates" / "abandoned-cart" / "reminder.email.j2", "{% block", "{#- edited -#}{% block")
    markdown = engine(repo, "plan", "--diff", "--as-of", NOW, "--format", "markdown", "--sample", "1").stdout
    commit = git(repo, "rev-parse", "HEAD").strip()[:10]
    assert f"`merge base of HEAD and main` ({commit})" in markdown
    assert "| second-order | nudge | settings changed | 6 | 4 | +0 | -2 | =4 |" in markdown
    assert "| second-order/nudge | - | 3 (+1 more) |" in markdown
    assert markdown.replace(commit, "COMMIT") == snapshot


@pytest.mark.parametrize("backend", ["duckdb"])
def test_the_default_ref_falls_back_to_origin_main_then_head(repo: Path):
    git(repo, "branch", "-m", "main", "feature")
    assert diffed(repo)["ref"] == "HEAD"
    git(repo, "update-ref", "refs/remotes/origin/main", "HEAD")
    assert diffed(repo)["ref"] == "merge base of HEAD and origin/main"


def test_not_a_git_repository_is_one_clear_line(tmp_path, monkeypatch):
    root = copy_project(tmp_path / "plain")
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path))
    result = engine(root, "plan", "--diff", code=1)
    assert result.stderr.count("\n") == 1
    assert result.stderr.startswith("Error: ") and "is not in a git repository" in result.stderr
    assert result.stdout == ""


@pytest.mark.parametrize("backend", ["duckdb"])
def test_an_unknown_ref_is_one_clear_line(repo: Path):
    result = engine(repo, "plan", "--diff", "no-such-branch", code=1)
    assert result.stderr == ("Error: unknown git ref 'no-such-branch'; give a branch, tag or commit that exists here "
                             "(in CI fetch the history: actions/checkout with fetch-depth: 0)\n")


@pytest.mark.parametrize("backend", ["duckdb"])
def test_format_mismatch_is_a_usage_error(repo: Path):
    assert "--diff writes text, markdown, json, not csv" in engine(repo, "plan", "--diff", "--format", "csv", code=2).stderr
    assert "is for --diff" in engine(repo, "plan", "--format", "markdown", code=2).stderr


def test_diff_plans_is_set_arithmetic_with_natural_samples():
    before = [("c", "s", str(i), "t") for i in (1, 2, 3, 10, 11, 20)] + [("c", "gone", "7", "t")]
    after = [("c", "s", str(i), "t") for i in (2, 3, 9, 100, 12, 11)] + [("c", "s", "3", "t2"), ("d", "new", "x", "t")]
    counts = diff_plans(iter(before), iter(after), sample=2)
    s = counts[("c", "s")]
    assert (s.added, s.removed, s.unchanged, s.before, s.after) == (4, 3, 3, 6, 7)
    assert s.added_sample == ["3", "9"] and s.removed_sample == ["1", "10"]
    assert (counts[("c", "gone")].removed, counts[("c", "gone")].removed_sample) == (1, ["7"])
    assert (counts[("d", "new")].added, counts[("d", "new")].added_sample) == (1, ["x"])


# --- the pull-request workflow and the pre-commit hooks -------------------------------------

REPO = Path(__file__).resolve().parent.parent


def workflow() -> dict:
    import yaml

    return yaml.safe_load((REPO / ".github" / "workflows" / "campaigns.yml").read_text())


def test_the_workflow_validates_plans_and_comments_on_pull_requests():
    flow = workflow()
    assert "pull_request" in flow.get("on", flow.get(True))  # YAML 1.1 reads a bare `on` as true
    assert flow["permissions"]["pull-requests"] == "write"
    [job] = flow["jobs"].values()
    steps = job["steps"]
    uses = {s["uses"].split("@")[0]: s for s in steps if "uses" in s}
    assert uses["actions/checkout"]["with"]["fetch-depth"] == 0
    assert str(uses["actions/setup-python"]["with"]["python-version"]) == "3.11"
    assert uses["marocchino/sticky-pull-request-comment"]["with"]["path"] == "plan.md"
    runs = [s["run"] for s in steps if "run" in s]
    assert "pip install ." in runs
    assert "engine validate --format github" in runs
    [plan] = [s for s in steps if "engine plan --diff" in s.get("run", "")]
    assert plan["env"]["BASE_REF"] == "${{ github.base_ref }}"
    assert 'engine plan --diff "origin/$BASE_REF"' in plan["run"] and "--format markdown > plan.md" in plan["run"]
    order = [s.get("uses", s.get("run", "")).split("@")[0] for s in steps]
    assert order.index("engine validate --format github") < order.index(plan["run"]) \
        < order.index("marocchino/sticky-pull-request-comment")


@pytest.mark.parametrize("backend", ["duckdb"])
def test_the_workflows_plan_step_runs_as_written(repo: Path, tmp_path):
    """The step's script, run by bash as Actions would, in a clone whose base branch is origin/main."""
    git(repo, "update-ref", "refs/remotes/origin/main", "HEAD")
    git(repo, "checkout", "-q", "-b", "pr")
    edit(repo / "campaigns.d" / "second-order.yaml", "delay: 7d", "delay: 6d")
    [plan] = [s for s in workflow()["jobs"]["plan"]["steps"] if "engine plan --diff" in s.get("run", "")]
    summary = tmp_path / "summary.md"
    bin_dir = Path(sys.executable).parent
    env = {**os.environ, "BASE_REF": "main", "ENGINE_PLAN_AS_OF": NOW, "GITHUB_STEP_SUMMARY": str(summary),
           "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
    subprocess.run(["bash", "-e", "-c", plan["run"]], cwd=repo, env=env, check=True, timeout=300)
    markdown = (repo / "plan.md").read_text()
    assert markdown.startswith("### Campaign plan diff: `origin/main`")
    assert "| second-order | nudge | settings changed | 6 | 8 | +2 | -0 | =6 |" in markdown
    assert summary.read_text() == markdown


@pytest.mark.parametrize("backend", ["duckdb"])
def test_the_pre_commit_hooks_validate_campaign_files(repo: Path, monkeypatch):
    import shlex

    import yaml

    hooks = {h["id"]: h for h in yaml.safe_load((REPO / ".pre-commit-hooks.yaml").read_text())}
    example = yaml.safe_load((REPO / ".pre-commit-config.yaml").read_text())
    [local] = example["repos"][0]["hooks"]
    for hook in (hooks["engine-validate"], local):
        assert re.search(hook["files"], "campaigns.d/second-order.yaml")
        assert not re.search(hook["files"], "templates/second-order/nudge.email.j2")
        assert hook["pass_filenames"] is True
    assert re.search(hooks["engine-validate-project"]["files"], "templates/second-order/nudge.email.j2")
    # what pre-commit runs: the entry, then the changed files (relative to the repository root)
    entry = shlex.split(hooks["engine-validate"]["entry"])
    assert entry[0] == "engine"
    monkeypatch.chdir(repo)
    engine(repo, *entry[1:], "campaigns.d/second-order.yaml")
    edit(repo / "campaigns.d" / "second-order.yaml", "delay: 7d", "delay: soon")
    assert "campaigns.d/second-order.yaml:12:" in engine(repo, *entry[1:], "campaigns.d/second-order.yaml", code=1).stdout
