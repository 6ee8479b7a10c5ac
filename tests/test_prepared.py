"""Due queries compiled once per project version, bound at every pass (issue 15.3, sql.prepared).

A query built with the symbolic pass instant must be the query the literal build gives, at every
instant: the same text once its placeholders are replaced by the instant's literals (in every
dialect, with and without per-zone windows, calendar months, DST changes, leap days, month
ends), and the same rows when the instants are bound as parameters on DuckDB, SQLite and
PostgreSQL. A pass builds each campaign once per project version; a query whose shape depends on
the instant (a birthday window's month-days) is built per pass; a reload compiles the new text.
"""
from __future__ import annotations

import dataclasses
from datetime import datetime, timedelta, timezone

import pytest

from conftest import REPO, copy_project, database_url
from engine import Reconciler, load_project, render_sql
from engine.dialects import DIALECTS
from engine.sql import prepared
from engine.sql.compile import shared_facts_create
from engine.run.settle import insert_settled
from engine.sql.due import due_query, settled_steps
from engine.sql.instants import NotParameterisable, PassInstant, collecting
from engine.state.warehouse import Database
from engine.tools.demo import load_shop
from history import INSTANTS, shared_history

PROJECT = load_project(REPO)
#: instants where the recipes must follow the calendar: a DST change (EU: the zones' windows), a leap
#: day with microseconds and a month end (6 calendar months back from Aug 31 is Feb 28/29), the history's
EDGES = [datetime(2026, 10, 25, 0, 59, 59, tzinfo=timezone.utc), datetime(2024, 2, 29, 23, 59, 59, 987654, tzinfo=timezone.utc),
         datetime(2025, 8, 31, 12, 0, tzinfo=timezone.utc), INSTANTS["anchor"]]
#: no zones (the plain window), and zones (per-zone windows; with the ledger not in the query)
ZONES = [None, ["Europe/Berlin", None, "America/New_York", "Pacific/Kiritimati", "not/a zone"]]


@pytest.mark.parametrize("dialect", list(DIALECTS))
def test_a_compiled_query_bound_at_any_instant_is_the_literal_query_of_that_instant(dialect):
    compiled = fallbacks = 0
    for campaign in PROJECT.campaigns:
        for zones, exclude_ledger in zip(ZONES, (True, False)):
            def build(now, zones=zones, exclude_ledger=exclude_ledger):
                return due_query(campaign, PROJECT.config, now, exclude_ledger=exclude_ledger, dialect=dialect,
                                 shared_facts=True, zones=zones)
            query = prepared.prepare(build, dialect)
            if query is None:
                fallbacks += 1
                continue
            compiled += 1
            assert query.instants, f"{campaign.name}: a due query compares with the pass instant"
            for now in EDGES:
                assert query.literal(now).text == render_sql(build(now), dialect), f"{campaign.name} at {now}"
    config = dataclasses.replace(PROJECT.config, dialect=dialect)  # the facts are built for the config's dialect
    for entity in ("orders", "events"):
        query = prepared.prepare(lambda now: shared_facts_create(entity, config, now), dialect)
        for now in EDGES:
            assert query.literal(now).text == render_sql(shared_facts_create(entity, config, now), dialect)
    # every shipped campaign but the birthday (its window's month-days are the instant's own) compiles once
    assert fallbacks == len(ZONES) and compiled == (len(PROJECT.campaigns) - 1) * len(ZONES)


@pytest.mark.parametrize("dialect", [name for name, d in DIALECTS.items()
                                     if d.on_conflict_insert is not None and d.instant_text_format is None])
def test_the_settle_insert_compiled_once_is_the_literal_insert_of_that_instant(dialect):
    """The settle stage's INSERT ... SELECT of the settled skips (engine.run.settle) is compiled once
    too: its created_at is the pass instant, bound like the query's own instants."""
    settling = [c for c in PROJECT.campaigns if settled_steps(c)]
    assert len(settling) >= 5  # the shipped campaigns settle: the test can fail
    for campaign in settling:
        def build(now, campaign=campaign):
            query = due_query(campaign, PROJECT.config, now, exclude_ledger=True, dialect=dialect, shared_facts=True,
                              settled="only")
            return insert_settled(campaign, now, query, dialect)
        query = prepared.prepare(build, dialect)
        assert query is not None, campaign.name
        for now in EDGES:
            assert query.literal(now).text == render_sql(build(now), dialect), f"{campaign.name} at {now}"


def test_the_instant_is_a_recipe_and_nothing_else():
    now = PassInstant.now()
    at = datetime(2026, 8, 31, 12, tzinfo=timezone.utc)
    six_months = PROJECT.campaign("re-engage").trigger.window
    assert (now - six_months + timedelta(days=3)).at(at) == at - six_months + timedelta(days=3)
    assert min(now - timedelta(days=2), now - timedelta(hours=3)).at(at) == at - timedelta(days=2)
    assert (now - timedelta(hours=1)) - (now - timedelta(hours=3)) == timedelta(hours=2)
    for needs_the_value in (lambda: (now - six_months) < now, lambda: now.date(), lambda: now.astimezone(timezone.utc),
                            lambda: str(now), lambda: f"{now}", lambda: hash(now - six_months), lambda: at - now):
        with pytest.raises(NotParameterisable):
            needs_the_value()
    with pytest.raises(NotParameterisable), collecting():
        due_query(PROJECT.campaign("birthday"), PROJECT.config, now, exclude_ledger=True)


@pytest.fixture
def reconciler(backend, tmp_path, monkeypatch):
    url = database_url(backend, tmp_path)
    db = Database(url)
    load_shop(db, shared_history())
    db.dispose()
    monkeypatch.setenv("ENGINE_WAREHOUSE_URL", url)
    reconciler = Reconciler(load_project(copy_project(tmp_path / "project")))
    yield reconciler
    reconciler.close()


def _rows(stream) -> list[tuple]:
    return sorted((tuple(str(value) for value in row) for rows in stream for row in rows), key=str)


def test_bound_parameters_give_the_rows_of_literals(reconciler):
    """The database sees ``CAST(:t AS TIMESTAMP)`` with the literal's text bound: the same rows."""
    config = reconciler.config
    compared = 0
    for label, now in INSTANTS.items():
        reconciler.enter_segments(now)
        for campaign in reconciler.campaigns():
            statement = prepared.due_statement(campaign, config, now, exclude_ledger=True, zones=["Europe/Berlin", None])
            literal = due_query(campaign, config, now, exclude_ledger=True, zones=["Europe/Berlin", None])
            expected = _rows(reconciler.warehouse.stream(render_sql(literal, config.dialect)))
            if campaign.name != "birthday":
                assert statement.parameters, campaign.name
            with reconciler.warehouse.session() as session:
                assert _rows(session.stream(statement.text, 1000, statement.parameters)) == expected, \
                    f"{campaign.name} at {label}"
            compared += len(expected)
    assert compared > 100, "the history should give the campaigns rows to compare"


def test_a_pass_builds_each_query_once_per_project_version(tmp_path, monkeypatch):
    built: list[str] = []
    real = prepared.due_query

    def counting(campaign, *args, **kwargs):
        built.append(campaign.name)
        return real(campaign, *args, **kwargs)

    monkeypatch.setattr(prepared, "due_query", counting)
    project_dir = copy_project(tmp_path / "project")
    monkeypatch.setenv("ENGINE_WAREHOUSE_URL", url := database_url("duckdb", tmp_path))
    db = Database(url)
    load_shop(db, shared_history())
    db.dispose()
    now = INSTANTS["anchor"]
    reconciler = Reconciler(load_project(project_dir))
    try:
        names = [c.name for c in reconciler.campaigns()]
        for minute in range(3):
            for _ in reconciler.due(now + timedelta(minutes=minute)):
                pass
        # once each, plus the birthday (built per pass, its shape is the instant's) at every pass
        assert sorted(built) == sorted(names + ["birthday"] * 3)
        texts = {c.name: prepared.due_statement(c, reconciler.config, now, exclude_ledger=True).text
                 for c in reconciler.campaigns()}
    finally:
        reconciler.close()
    # a changed project (the service reloads it into a new Reconciler) gets its own compiled text
    path = project_dir / "campaigns.d" / "vip.yaml"
    path.write_text(path.read_text().replace("audience: ", "audience: order_count >= 0 AND ", 1))
    reloaded = load_project(project_dir)
    built.clear()
    vip = reloaded.campaign("vip")
    changed = prepared.due_statement(vip, reloaded.config, now, exclude_ledger=True)
    assert built == ["vip"] and changed.text != texts["vip"] and "order_count" in path.read_text()
