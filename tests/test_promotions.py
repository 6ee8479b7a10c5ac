"""Promotions: valid at the pass's instant (half-open), fed to their campaign and step, shown by the templates
that declare them, in one query per batch; bad rows named by validation and skipped at run time.

The query runs on real DuckDB, SQLite and PostgreSQL databases (``backend``) and must equal an independent
Python reading of the same rows at every instant around every boundary; a real pass writes its emails into
the file outbox, where they are read back.
"""
from __future__ import annotations

import email
import os
from datetime import datetime, timedelta, timezone

import pytest
import sqlalchemy as sa

from conftest import copy_project, database_url, load_history, write
from engine import Reconciler, load_project
from engine.model import ENTITY_COLUMNS, EntitySource
from engine.sql.compile import render_sql
from engine.sql.promotions import POSITION, TARGET_CAMPAIGN, TARGET_STEP, promotions_query
from engine.state.ledger import ledger_table
from engine.state.warehouse import Database
from engine.tools.introspect import check_warehouse

UTC = timezone.utc
T0 = datetime(2025, 1, 6, 12, 0)
COLUMNS = ENTITY_COLUMNS["promotions"][0] + ENTITY_COLUMNS["promotions"][1]
SOURCE = EntitySource(entity="promotions", table="promotions", query=None, columns={c: c for c in COLUMNS})


def promotion(promotion_id, title="P", start=None, end=None, campaign=None, step=None, **extra):
    return {"promotion_id": promotion_id, "title": title, "description": f"about {promotion_id}",
            "image_url": f"https://shop.example/img/{promotion_id}.jpg", "url": f"https://shop.example/o/{promotion_id}",
            "valid_from": T0 + timedelta(hours=start) if start is not None else None,
            "valid_to": T0 + timedelta(hours=end) if end is not None else None,
            "campaign": campaign, "step": step, **extra}


#: windows and targets at every boundary: open ends, a window of one hour, one for a campaign, one for a step of it,
#: one for a step of another campaign, the same promotion by two rows (a campaign's and everyone's), a later start
ROWS = [
    promotion(1),                                                     # always, everywhere
    promotion(2, start=0, end=1),                                     # [T0, T0 + 1h)
    promotion(3, start=-2, campaign="a"),                             # campaign a from T0 - 2h
    promotion(4, end=0, campaign="a", step="s1"),                     # a/s1 until T0 (excluded)
    promotion(5, start=-1, end=2, campaign="a", step="s2"),           # a/s2
    promotion(6, start=-3, end=3, campaign="b", step="s1"),           # b/s1
    promotion(7, start=-1, end=1, campaign="a"),                      # the same promotion for a ...
    promotion(7, start=-1, end=1),                                    # ... and for everyone: shown once
    promotion(8, start=1, campaign="b"),                              # b from T0 + 1h
]
TARGETS = [("a", "s1", 3), ("a", "s2", 2), ("b", "s1", 10), ("c", "s1", 1)]


def expected(rows, now, targets):
    """An independent reading of the rules: valid_from <= now < valid_to (NULL: open), fed when campaign and
    step are NULL or equal; per target the most specific row of a promotion; most specific first, then the
    newest start (none last), then the id; at most the target's limit."""
    result = {}
    for campaign, step, limit in targets:
        best = {}
        for row in rows:
            valid = (row["valid_from"] is None or row["valid_from"] <= now) and (row["valid_to"] is None or now < row["valid_to"])
            feeds = row["campaign"] in (None, campaign) and row["step"] in (None, step)
            if valid and feeds:
                specificity = (row["step"] is None) + (row["campaign"] is None)
                if row["promotion_id"] not in best or specificity < best[row["promotion_id"]][0]:
                    best[row["promotion_id"]] = (specificity, row)
        ordered = sorted(best.values(), key=lambda sr: (sr[0], sr[1]["valid_from"] is None,
                                                        -(sr[1]["valid_from"] or T0).timestamp(), sr[1]["promotion_id"]))
        result[(campaign, step)] = [row["promotion_id"] for _, row in ordered[:limit]]
    return result


def shown(url, dialect, now, targets):
    db = Database(url)
    try:
        rows = db.fetch_all(render_sql(promotions_query(SOURCE, dialect, now.replace(tzinfo=UTC), targets), dialect))
    finally:
        db.dispose()
    found = {(c, s): [] for c, s, _ in targets}
    positions = {}
    for row in rows:
        values = row._mapping
        target = (values[TARGET_CAMPAIGN], values[TARGET_STEP])
        found[target].append(int(values["promotion_id"]))
        positions.setdefault(target, []).append(int(values[POSITION]))
    assert all(p == list(range(1, len(p) + 1)) for p in positions.values()), positions
    return found


def test_the_promotions_of_each_target_at_every_boundary_equal_an_independent_reading(backend, tmp_path):
    url = database_url(backend, tmp_path)
    load_history(url, promotions=ROWS)
    dialect = {"postgres": "postgres"}.get(backend, backend)
    instants = sorted({T0 + timedelta(hours=h) + timedelta(seconds=d) for h in range(-4, 5) for d in (-1, 0, 1)})
    for now in instants:
        assert shown(url, dialect, now, TARGETS) == expected(ROWS, now, TARGETS), now
    # the boundaries, spelt out: valid_from is in the window, valid_to is not
    at_t0 = shown(url, dialect, T0, TARGETS)
    assert at_t0[("a", "s1")] == [7, 3, 2]           # 4 ended at T0; 7 as a's (newer than 3), before everyone's
    assert at_t0[("a", "s2")] == [5, 7]              # the step's own first, then the campaign's, up to the limit
    assert at_t0[("b", "s1")] == [6, 2, 7, 1]        # 8 not yet; everyone's by newest start, the open one last
    assert at_t0[("c", "s1")] == [2]
    before = shown(url, dialect, T0 - timedelta(seconds=1), TARGETS)
    assert 4 in before[("a", "s1")] and 2 not in before[("b", "s1")]
    assert 2 not in shown(url, dialect, T0 + timedelta(hours=1), TARGETS)[("b", "s1")]


# --- a real pass ------------------------------------------------------------------------------------------


CAMPAIGN = """
    name: {name}
    trigger: {{order_placed: {{}}}}
    stop: [unsubscribed]
    steps:
      - {{id: only, delay: 0m, freshness: 7d, channel: email, template: {template}}}
"""
SHOWS = """{{# uses: promotions{limit} #}}
{{% extends "layouts/email.j2" %}}
{{% block title %}}Offers{{% endblock %}}
{{% block intro %}}{{% if promotions %}}We picked {{{{ promotions | length }}}} for you.{{% endif %}}{{% endblock %}}
"""


def outbox(root) -> dict[str, tuple[str, str]]:
    """campaign -> (text, html) of each email the file outbox holds, one per campaign here."""
    found = {}
    for path in sorted((root / "var" / "outbox" / "email").glob("*.eml")):
        message = email.message_from_bytes(path.read_bytes())
        parts = {p.get_content_type(): p.get_payload(decode=True).decode() for p in message.walk()
                 if p.get_content_type() in ("text/plain", "text/html")}
        campaign = message["List-Id"].split("<", 1)[1].split(".", 1)[0]
        found.setdefault(campaign, []).append((parts["text/plain"], parts["text/html"]))
    return found


@pytest.fixture
def promo_project(tmp_path, monkeypatch, backend):
    root = copy_project(tmp_path / "project")
    for path in (root / "campaigns.d").glob("*.yaml"):
        path.unlink()
    write(root / "templates" / "promo" / "two.email.j2", SHOWS.format(limit=" limit 2"))
    write(root / "templates" / "promo" / "three.email.j2", SHOWS.format(limit=""))
    write(root / "templates" / "promo" / "none.email.j2",
          '{% extends "layouts/email.j2" %}{% block title %}No offers{% endblock %}')
    for name, template in (("first", "promo/two.email.j2"), ("second", "promo/three.email.j2"),
                           ("plain", "promo/none.email.j2")):
        write(root / "campaigns.d" / f"{name}.yaml", CAMPAIGN.format(name=name, template=template))
    url = database_url(backend, tmp_path)
    monkeypatch.setenv("ENGINE_WAREHOUSE_URL", url)
    customers = [{"customer_id": i, "email": f"c{i}@example.com", "first_name": f"C{i}", "created_at": T0 - timedelta(days=9)}
                 for i in range(1, 6)]
    orders = [{"order_id": i, "customer_id": i, "created_at": T0, "status": "completed", "total": 5} for i in range(1, 6)]
    promotions = [
        promotion(1, "Everyone's offer", start=-24, end=24),
        promotion(2, "First's own offer", start=-1, end=1, campaign="first"),
        promotion(3, "Gone", start=-24, end=0, campaign="first"),     # ended at T0: half-open
        promotion(4, None, start=-1, end=24, campaign="second"),        # no title: second's messages are skipped
        promotion(5, "Later", start=2, end=24),                         # not yet
    ]
    load_history(url, customers=customers, orders=orders, promotions=promotions)
    return root


def run_pass(root, now):
    queries = []

    def count(conn, cursor, statement, parameters, context, executemany):
        if TARGET_CAMPAIGN in statement:
            queries.append(statement)

    sa.event.listen(sa.engine.Engine, "before_cursor_execute", count)
    reconciler = Reconciler(load_project(root))
    try:
        report = reconciler.run_once(now.replace(tzinfo=UTC))
        with reconciler.ledger.db.engine.connect() as conn:
            c = ledger_table.c
            rows = {(campaign, status, reason, detail) for campaign, status, reason, detail
                    in conn.execute(sa.select(c.campaign, c.status, c.reason, c.detail))}
    finally:
        reconciler.close()
        sa.event.remove(sa.engine.Engine, "before_cursor_execute", count)
    return report, rows, queries


def test_a_pass_shows_the_valid_promotions_of_each_campaign_and_skips_a_half_filled_message(promo_project):
    report, rows, queries = run_pass(promo_project, T0 + timedelta(minutes=1))

    assert report.errors == []
    # one query per batch (a batch is one campaign's: first and second), for all its customers; none for plain
    assert len(queries) == 2
    statuses = {(campaign, status, reason) for campaign, status, reason, _ in rows}
    assert statuses == {("first", "sent", None), ("plain", "sent", None), ("second", "skipped", "invalid_promotion")}
    [detail] = {detail for campaign, _, _, detail in rows if campaign == "second"}
    assert "promotion 4 has no title" in detail
    sent = outbox(promo_project)
    assert len(sent["first"]) == 5 and len(sent["plain"]) == 5 and "second" not in sent
    text, html = sent["first"][0]
    assert "We picked 2 for you." in text
    assert text.index("* First's own offer: about 2") < text.index("* Everyone's offer: about 1")
    assert "https://shop.example/o/2" in text and "Gone" not in text and "Later" not in text
    assert '<img src="https://shop.example/img/2.jpg" alt="First&#39;s own offer"' in html
    assert "Everyone&#39;s offer" in html
    text, html = sent["plain"][0]  # the layout shows no promotion to a template that does not declare them
    assert "offer" not in text and "shop.example/o/" not in html


# --- validation ---------------------------------------------------------------------------------------------


def test_check_warehouse_names_promotions_without_title_or_for_a_campaign_or_step_that_does_not_exist(
        promo_project, backend):
    db = Database(os.environ["ENGINE_WAREHOUSE_URL"])
    with db.engine.begin() as conn:
        conn.execute(sa.text("INSERT INTO promotions (promotion_id, title, campaign, step) VALUES "
                             "(10, 'Typo', 'frist', NULL), (11, 'No such step', 'first', 'onyl')"))
    db.dispose()
    messages = [(i.message, i.fix) for i in check_warehouse(promo_project)]

    assert any("1 promotion has no title: promotion 4" in m for m, _ in messages), messages
    assert any("promotion 10 is for campaign 'frist', which does not exist (did you mean 'first'?)" in m
               for m, _ in messages), messages
    assert any("promotion 11 is for step 'onyl' of campaign 'first', which does not exist (did you mean 'only'?)" in m
               for m, _ in messages), messages
    assert len(messages) == 3, messages


def test_a_template_that_shows_promotions_without_them_mapped_is_warned_of_and_shows_none(tmp_path, monkeypatch):
    from engine.spec.project import check_project

    root = copy_project(tmp_path / "project")
    text = (root / "engine.yaml").read_text()
    (root / "engine.yaml").write_text(text[:text.index("  promotions:")] + text[text.index("  products:"):])
    project, issues = check_project(root)

    assert project is not None and not [i for i in issues if i.severity == "error"]
    warned = [i for i in issues if "promotions" in i.message]
    assert sorted((i.file.rsplit("/", 1)[-1], i.message.replace(f"{root}/", "")) for i in warned) == [
        ("re-engage.yaml", "template 're-engage/miss-you.email.j2' shows promotions, but engine.yaml maps no promotions: "
                           "it shows none"),
        ("second-order.yaml", "template 'second-order/nudge.email.j2' shows promotions, but engine.yaml maps no "
                              "promotions: it shows none")]
    assert all("map sources.promotions" in i.fix for i in warned)
    # and a pass sends the email without a promotion block
    url = database_url("sqlite", tmp_path)
    monkeypatch.setenv("ENGINE_WAREHOUSE_URL", url)
    for path in (root / "campaigns.d").glob("*.yaml"):
        if path.name != "second-order.yaml":
            path.unlink()
    load_history(url, customers=[{"customer_id": 1, "email": "c1@example.com", "created_at": T0 - timedelta(days=30)}],
                 orders=[{"order_id": 1, "customer_id": 1, "created_at": T0, "status": "completed", "total": 5}],
                 promotions=[promotion(1, "Not mapped, not shown")])
    report, rows, queries = run_pass(root, T0 + timedelta(days=7, minutes=1))
    assert {(c, s) for c, s, _, _ in rows} == {("second-order", "sent")} and queries == []
    [(text, html)] = outbox(root)["second-order"]
    assert "Thank you for your first order" in text and "Not mapped" not in text + html


# --- the layout's promotion block ------------------------------------------------------------------------


def test_a_template_may_fill_the_promotion_block_itself_and_the_footer_stays_the_layouts(tmp_path):
    from conftest import REPO
    from engine.templating.render import Renderer

    write(tmp_path / "layouts" / "email.j2", (REPO / "templates" / "layouts" / "email.j2").read_text())
    write(tmp_path / "own.email.j2", """{# uses: promotions limit 1 #}
        {% extends "layouts/email.j2" %}
        {% block title %}T{% endblock %}
        {% block promotion %}{% for p in promotions %}Today only: {{ p.title }}{% endfor %}{% endblock %}
        """)
    context = {"customer": {"first_name": "A"}, "unsubscribe_url": "https://shop.example/u?c=1",
               "shop": {"name": "Shop", "address": "", "legal": "", "url": ""},
               "promotions": [{"title": "Cake & coffee", "description": "", "image_url": None, "url": None}]}
    renderer = Renderer(tmp_path)

    content = renderer.render("own.email.j2", "email", context)

    assert "Today only: Cake & coffee" in content.text and "Today only: Cake &amp; coffee" in content.html
    assert "* Cake" not in content.text  # the layout's own presentation gave way to the template's
    assert content.text.endswith("Unsubscribe: https://shop.example/u?c=1")
    assert renderer.declared_lists("own.email.j2") == {"promotions": 1}
