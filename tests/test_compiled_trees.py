"""A compiled query is a tree: no node sits in two places.

The SQL builders take the subtrees they build without a defensive copy where nothing else holds them
(``compile.not_null``, ``copy=False``: a first pass compiles every campaign, and the copies were half
of that). A node put in two places would still render the same text today, but the dialects'
transforms rewrite the tree in place (``render_sql(copy=False)``), and a rewrite of one place would
show in the other. Checked on every shipped campaign, in every dialect, for each kind of statement a
pass or a plan builds.
"""
from __future__ import annotations

from datetime import datetime, timezone

import pytest
from sqlglot import exp

from conftest import REPO
from engine import load_project
from engine.dialects import DIALECTS
from engine.sql.due import due_query
from engine.sql.instants import NotParameterisable, PassInstant, collecting

NOW = datetime(2025, 1, 10, tzinfo=timezone.utc)
PROJECT = load_project(REPO)


def shared_nodes(tree: exp.Expression) -> list[str]:
    """The nodes reached twice, or held by a node that is not their parent."""
    seen: set[int] = set()
    found = []
    for node in tree.walk():
        if id(node) in seen:
            found.append(node.sql()[:80])
        seen.add(id(node))
        for child in node.iter_expressions():
            if child.parent is not node:
                found.append(child.sql()[:80])
    return found


@pytest.mark.parametrize("dialect", DIALECTS)
@pytest.mark.parametrize("settled", ["include", "exclude", "only"])
def test_no_node_of_a_due_query_is_in_two_places(dialect, settled):
    for campaign in PROJECT.campaigns:
        for now in (NOW, None):  # a pass's instant, and the symbolic one a statement compiled once holds
            try:
                with collecting():
                    query = due_query(campaign, PROJECT.config, now or PassInstant.now(), exclude_ledger=True,
                                      dialect=dialect, settled=settled, zones=[None, "Europe/Berlin", "America/New_York"],
                                      zone_due="engine_zone_due")
            except NotParameterisable:  # built per pass (sql.prepared): the first instant covers it
                continue
            assert shared_nodes(query) == [], (campaign.name, dialect, settled)
