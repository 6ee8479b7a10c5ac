"""Hostile templates: the sandbox holds, the layout stays locked, every bound is enforced.

Tests are data: each file in ``tests/corpus/hostile-templates/`` is one attack
or resource bomb and names the message ``engine validate`` must give in its
first line (``{#- expect: substring -#}``). Each is validated by the real CLI
in a subprocess: exit 1, the campaign file and the template named, a fix, no
traceback, and the child's time and peak memory stay small (a safety net: the
proof is the bound's own message).

At run time (a template swapped after validation, the pass called directly)
the same templates fail their own messages with ``render_error`` naming the
reason, a real SMTP sink on loopback receives nothing for them (and nothing
for an attacker's address), and every other campaign's messages go out.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import REPO, copy_project, write
from engine import Reconciler, load_project
from engine.state.ledger import ledger_table
from engine.templating.render import Renderer
from servers import SmtpSink
from test_delivery import at, configure, customers, orders, statuses

CORPUS = Path(__file__).resolve().parent / "corpus" / "hostile-templates"
EXPECT = re.compile(r"\{#-?\s*expect:\s*(.+?)\s*-?#\}")
SAMPLE_CONTEXT = {"customer": {"first_name": "A", "email": "a@example.com"}, "items": [], "trigger": {"key": "1"},
                  "unsubscribe_url": "https://shop.example/unsubscribe?c=1&k=email&s=0",
                  "shop": {"name": "Shop", "address": "Street 1", "legal": "", "url": ""}}  # as the engine gives it

#: generous safety nets for one `engine validate` child (the bounds themselves are far smaller)
MAX_SECONDS = 60
MAX_RSS_MB = 600


def hostile_cases() -> list[Path]:
    files = sorted(p for p in CORPUS.glob("*.j2") if EXPECT.match(p.read_text(encoding="utf-8")))
    assert len(files) >= 30, "the hostile template corpus went missing"
    return files


def expected(path: Path) -> str:
    return EXPECT.match(path.read_text(encoding="utf-8"))[1]


def campaign_using(template: str, channel: str = "email", name: str = "hostile") -> str:
    return f"""
        name: {name}
        trigger: {{order_placed: {{}}}}
        stop: [ordered_again]
        steps:
          - {{id: only, delay: 0m, freshness: 7d, channel: {channel}, template: {template}}}
    """


def hostile_project(tmp_path: Path, template: str, channel: str) -> Path:
    """The shipped project with the corpus under templates/hostile/ and one campaign using ``template``."""
    root = copy_project(tmp_path / "project")
    for path in (root / "campaigns.d").glob("*.yaml"):
        path.unlink()
    shutil.copytree(CORPUS, root / "templates" / "hostile")
    write(root / "campaigns.d" / "hostile.yaml", campaign_using(template, channel))
    return root


def validate_in_subprocess(root: Path) -> tuple[int, str, float, float]:
    """``engine --project ROOT validate`` as a child: exit code, output, wall seconds, peak RSS in MB."""
    started = time.monotonic()
    child = subprocess.Popen([sys.executable, "-c", "from engine.cli.main import main; main()", "--project", str(root), "validate"],
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        output, _ = child.communicate(timeout=MAX_SECONDS * 2)
    except subprocess.TimeoutExpired:
        child.kill()
        child.communicate()
        pytest.fail(f"engine validate did not finish in {MAX_SECONDS * 2} s")
    # communicate() reaped the child; its resource use is in the children's totals
    import resource
    peak_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return child.returncode, output.decode(errors="replace"), time.monotonic() - started, peak_kb / 1024


def assert_refused(code: int, output: str, template: str, message: str) -> None:
    assert code == 1, output
    assert "Traceback" not in output and "Internal error" not in output, output
    assert "campaigns.d/hostile.yaml:" in output, output
    assert f"'{template}'" in output or f"templates/{template}" in output, output
    assert message in output, output
    assert "fix: " in output, output


@pytest.mark.parametrize("case", hostile_cases(), ids=lambda p: p.name)
def test_validate_refuses_each_hostile_template_with_a_fix(case: Path, tmp_path: Path):
    channel = "sms" if case.name.endswith(".sms.j2") else "email"
    root = hostile_project(tmp_path, f"hostile/{case.name}", channel)

    code, output, seconds, peak_mb = validate_in_subprocess(root)

    assert_refused(code, output, f"hostile/{case.name}", expected(case))
    assert seconds < MAX_SECONDS, f"took {seconds:.1f} s"
    assert peak_mb < MAX_RSS_MB, f"peak RSS {peak_mb:.0f} MB"


# --- links out of the templates folder --------------------------------------------------------


def test_a_symlinked_file_included_by_a_template_is_refused(tmp_path: Path):
    root = hostile_project(tmp_path, "hostile/leak.email.j2", "email")
    (root / "templates" / "x").mkdir()
    (root / "templates" / "x" / "link.j2").symlink_to("/etc/passwd")
    write(root / "templates" / "hostile" / "leak.email.j2",
          '{% extends "layouts/email.j2" %}{% block title %}Hi{% endblock %}{% block body %}{% include "x/link.j2" %}{% endblock %}')

    code, output, _, _ = validate_in_subprocess(root)

    assert_refused(code, output, "x/link.j2", "is a link to /etc/passwd, outside the templates folder")
    assert "root:" not in output


def test_a_template_in_a_symlinked_directory_outside_the_folder_is_refused(tmp_path: Path):
    outside = tmp_path / "elsewhere"
    write(outside / "page.j2", "secret contents")
    root = hostile_project(tmp_path, "hostile/leak.email.j2", "email")
    (root / "templates" / "shared").symlink_to(outside, target_is_directory=True)
    write(root / "templates" / "hostile" / "leak.email.j2",
          '{% extends "layouts/email.j2" %}{% block title %}Hi{% endblock %}{% block body %}{% include "shared/page.j2" %}{% endblock %}')

    code, output, _, _ = validate_in_subprocess(root)

    assert_refused(code, output, "shared/page.j2", "outside the templates folder")
    assert "secret contents" not in output


def test_a_campaign_template_that_is_itself_a_link_out_is_refused(tmp_path: Path):
    root = hostile_project(tmp_path, "hostile/passwd.email.j2", "email")
    (root / "templates" / "hostile" / "passwd.email.j2").symlink_to("/etc/passwd")

    code, output, _, _ = validate_in_subprocess(root)

    assert_refused(code, output, "hostile/passwd.email.j2", "outside the templates folder")


def test_links_inside_the_folder_still_work(tmp_path: Path):
    """Only the real path matters: a link to another template of the same folder is fine."""
    write(tmp_path / "layouts" / "email.j2", (REPO / "templates" / "layouts" / "email.j2").read_text())
    write(tmp_path / "parts" / "real.j2", "shared words")
    (tmp_path / "parts" / "alias.j2").symlink_to(tmp_path / "parts" / "real.j2")
    write(tmp_path / "a.email.j2", '{% extends "layouts/email.j2" %}{% block title %}T{% endblock %}'
                                   '{% block body %}{% include "parts/alias.j2" %}{% endblock %}')
    renderer = Renderer(tmp_path)
    assert renderer.check("a.email.j2", "email", SAMPLE_CONTEXT) == []
    assert "shared words" in renderer.render("a.email.j2", "email", SAMPLE_CONTEXT).text


def test_the_reload_snapshot_leaves_links_out_of_the_folder_behind(tmp_path: Path):
    """The service renders from a copy of templates/: a link to /etc/passwd is not copied as a file."""
    from engine.service.reload import ProjectWatcher

    root = copy_project(tmp_path / "project")
    (root / "templates" / "stray.j2").symlink_to("/etc/passwd")
    (root / "templates" / "loop").symlink_to(root / "templates", target_is_directory=True)
    watcher = ProjectWatcher(root)
    result = watcher.load()
    try:
        assert result.project is not None, result.issues
        snapshot = result.project.templates_dir
        assert (snapshot / "layouts" / "email.j2").is_file()
        assert not (snapshot / "stray.j2").exists()
        assert not (snapshot / "loop").exists()
    finally:
        watcher.release(None)


# --- the locked layout --------------------------------------------------------------------------


def test_every_email_carries_the_footer_rendered_by_the_engine_from_the_layout(tmp_path: Path):
    """A template that fills in open blocks only (even with a look-alike footer) gets the layout's footer."""
    write(tmp_path / "layouts" / "email.j2", (REPO / "templates" / "layouts" / "email.j2").read_text())
    write(tmp_path / "a.email.j2", '{% extends "layouts/email.j2" %}{% set unsubscribe_url = "https://evil.example" %}'
                                   '{% block title %}T{% endblock %}{% block body %}x{% endblock %}')
    content = Renderer(tmp_path).render("a.email.j2", "email", SAMPLE_CONTEXT)
    assert "evil.example" not in content.text + content.html
    assert content.text.endswith("Unsubscribe: https://shop.example/unsubscribe?c=1&k=email&s=0")
    assert content.html.endswith('<a href="https://shop.example/unsubscribe?c=1&amp;k=email&amp;s=0">Unsubscribe</a></p>\n</body></html>')


def test_a_layout_whose_footer_lost_the_unsubscribe_link_is_refused(tmp_path: Path):
    layout = (REPO / "templates" / "layouts" / "email.j2").read_text().replace("Unsubscribe: {{ unsubscribe_url }}", "Bye")
    write(tmp_path / "layouts" / "email.j2", layout)
    write(tmp_path / "a.email.j2", '{% extends "layouts/email.j2" %}{% block title %}T{% endblock %}')
    renderer = Renderer(tmp_path)

    problems = renderer.check("a.email.j2", "email", SAMPLE_CONTEXT)

    assert [p.message for p in problems] == [
        "the footer block 'text_footer' of the layout 'layouts/email.j2' does not contain the unsubscribe link"]
    with pytest.raises(Exception, match="does not contain the unsubscribe link"):
        renderer.render("a.email.j2", "email", SAMPLE_CONTEXT)


# --- run time: templates swapped after validation, one real pass --------------------------------

#: campaign name -> (template body swapped in after validation, text expected in the failure detail)
SWAPPED = {
    "redirect": ("redirect-recipient.email.j2", "access to attribute 'update' of 'ReadOnlyDict' object is unsafe"),
    "nested": ("nested-range.email.j2", "the loops run more than 100000 iterations"),
    "power": ("huge-power.email.j2", "a power would have about"),
    "string": ("huge-string.email.j2", "a repeated string or list would be 100000000 long"),
    "footer": ("override-text.email.j2", "overrides block 'text', which belongs to the locked layout"),
    "macro": ("recursive-macro.email.j2", "calls nest deeper than 64"),
    "cycle": ("include-itself.email.j2", "nests too deeply"),
    "leak": (None, "outside the templates folder"),
}


@pytest.fixture
def project(tmp_path, monkeypatch):
    from conftest import database_url

    root = copy_project(tmp_path / "project")
    for path in (root / "campaigns.d").glob("*.yaml"):
        path.unlink()
    url = database_url("sqlite", tmp_path)
    monkeypatch.setenv("ENGINE_WAREHOUSE_URL", url)
    return root


def ledger_details(reconciler) -> dict[str, list[str]]:
    import sqlalchemy as sa

    c = ledger_table.c
    found: dict[str, list[str]] = {}
    with reconciler.ledger.db.engine.connect() as conn:
        for campaign, detail in conn.execute(sa.select(c.campaign, c.detail).where(c.status == "failed")):
            found.setdefault(campaign, []).append(detail)
    return found


def test_templates_swapped_after_validation_fail_alone_and_never_redirect_mail(project: Path):
    from conftest import load_history

    benign = '{% extends "layouts/email.j2" %}{% block title %}Hello{% endblock %}'
    write(project / "campaigns.d" / "good.yaml", campaign_using("second-order/nudge.email.j2", name="good"))
    for name in SWAPPED:
        write(project / "templates" / "swap" / f"{name}.email.j2", benign)
        write(project / "campaigns.d" / f"{name}.yaml", campaign_using(f"swap/{name}.email.j2", name=name))
    load_history(os.environ["ENGINE_WAREHOUSE_URL"], customers=customers(3), orders=orders(3))
    with SmtpSink() as smtp:
        configure(project, smtp.port)
        reconciler = Reconciler(load_project(project))  # validated: every template is benign now
        for name, (case, _) in SWAPPED.items():
            target = project / "templates" / "swap" / f"{name}.email.j2"
            target.unlink()
            if case is None:
                target.symlink_to("/etc/passwd")
            else:
                target.write_text((CORPUS / case).read_text().replace(
                    "hostile/include-itself.email.j2", "swap/cycle.email.j2"))
        started = time.monotonic()
        try:
            report = reconciler.run_once(at(minutes=1))
            rows = statuses(reconciler)
            details = ledger_details(reconciler)
        finally:
            reconciler.close()
        seconds = time.monotonic() - started
        recipients = sorted(r for m in smtp.messages for r in m["To"].split(","))
        bodies = b"".join(smtp.contents)

    assert recipients == ["c1@example.com", "c2@example.com", "c3@example.com"]  # the good campaign's three
    assert b"attacker@evil.example" not in bodies and b"root:" not in bodies
    for name, (_, reason) in SWAPPED.items():
        failed = {key: row for key, row in rows.items() if key.startswith(f"{name}:")}
        assert len(failed) == 3 and {row[:2] for row in failed.values()} == {("failed", "render_error")}, (name, failed)
        assert len(details[name]) == 3 and all(reason in detail for detail in details[name]), (name, details[name])
    good = {key: row for key, row in rows.items() if key.startswith("good:")}
    assert {row[:2] for row in good.values()} == {("sent", None)} and len(good) == 3
    assert report.errors == []
    assert seconds < 120  # safety net: each bound stops its render long before


# --- the bounds that no corpus case reaches first -------------------------------------------------


def bounded_renderer(tmp_path: Path, body: str, **limits) -> Renderer:
    from engine.templating.sandbox import Limits

    write(tmp_path / "layouts" / "email.j2", (REPO / "templates" / "layouts" / "email.j2").read_text())
    write(tmp_path / "a.email.j2", '{% extends "layouts/email.j2" %}{% block title %}T{% endblock %}{% block body %}'
                                   + body + "{% endblock %}")
    return Renderer(tmp_path, limits=Limits(**limits))


def test_the_time_budget_stops_a_render_that_stays_within_every_size_bound(tmp_path: Path):
    renderer = bounded_renderer(tmp_path, "{% for i in range(10000000) %}{% set x = i * 2 %}{% endfor %}",
                                seconds=0.01, iterations=10_000_000)
    problems = renderer.check("a.email.j2", "email", SAMPLE_CONTEXT)
    assert len(problems) == 1 and "the render takes longer than its time budget (0.01 s)" in problems[0].message
    with pytest.raises(Exception, match="time budget"):
        renderer.render("a.email.j2", "email", SAMPLE_CONTEXT)


def test_the_output_budget_counts_everything_a_render_produces(tmp_path: Path):
    renderer = bounded_renderer(tmp_path, "{% for i in range(1000) %}{{ 'x' * 10000 }}{% endfor %}")
    problems = renderer.check("a.email.j2", "email", SAMPLE_CONTEXT)
    assert len(problems) == 1 and "more than 2000000 characters (the output budget)" in problems[0].message


def test_a_loop_over_data_counts_against_the_iteration_budget_at_send_time(tmp_path: Path):
    """Validation's sample has one item; a real cart that makes nested loops explode fails that message alone."""
    renderer = bounded_renderer(tmp_path, "{% for a in items %}{% for b in items %}{% for c in items %}.{% endfor %}{% endfor %}{% endfor %}")
    assert renderer.check("a.email.j2", "email", {**SAMPLE_CONTEXT, "items": [{}]}) == []
    with pytest.raises(Exception, match="the loops run more than 100000 iterations"):
        renderer.render("a.email.j2", "email", {**SAMPLE_CONTEXT, "items": [{}] * 100})


def test_template_data_is_a_read_only_copy(tmp_path: Path):
    customer = {"first_name": "A", "email": "a@example.com"}
    renderer = bounded_renderer(tmp_path, "{{ customer.__setitem__ }}")
    with pytest.raises(Exception, match="unsafe"):
        renderer.render("a.email.j2", "email", {**SAMPLE_CONTEXT, "customer": customer})
    from engine.templating.sandbox import read_only

    copy = read_only({"customer": customer, "items": [{"sku": 1}]})
    with pytest.raises(TypeError):
        copy["customer"]["email"] = "attacker@evil.example"
    with pytest.raises(TypeError):
        copy["items"].append({})
    assert customer == {"first_name": "A", "email": "a@example.com"}
