"""Which lists a template declares it shows, and where it uses one it did not declare.

A template declares the lists it iterates in a Jinja comment, anywhere in the file (usually its
first line): ``{# uses: viewed_products, bought_together #}``. The declaration sits in the template
because the template is what shows the list: one template shared by several steps or variants
declares once, and validation names the template's own line. The engine computes only the lists
the due messages' templates declare (one query per list kind and batch), and validation renders
each template with sample lists for what it declares, and nothing else.

Pure: reads the template's text and parse tree it is given; knows no list names itself (the
caller passes the known ones) and runs no query.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterable

from jinja2 import nodes

from engine.templating import declarations

_DECLARATION = re.compile(r"\{#-?\s*uses\s*:(?P<names>.*?)-?#\}", re.S)


@dataclass(frozen=True)
class ListUses:
    """What one template declares (``names``, at ``line``: None without a declaration) and the
    lists it reads without declaring them (name, line), in the order they appear."""

    names: tuple[str, ...] = ()
    line: int | None = None
    undeclared: tuple[tuple[str, int], ...] = ()


def declared_lists(source: str) -> tuple[tuple[str, ...], int | None]:
    """The list names the template text's ``{# uses: ... #}`` comments declare (read by
    engine.templating.declarations, which also reports a declaration it cannot read) and the first one's line."""
    match = _DECLARATION.search(source)
    if match is None:
        return (), None
    return tuple(declarations.declared_lists(source)[0]), source.count("\n", 0, match.start()) + 1


def list_uses(source: str, tree: nodes.Template, known: Iterable[str]) -> ListUses:
    """The declaration of a template and every read of a ``known`` list name it does not declare."""
    names, line = declared_lists(source)
    lists = set(known) - set(names)
    undeclared = []
    for node in tree.find_all(nodes.Name):
        if node.ctx == "load" and node.name in lists:
            undeclared.append((node.name, node.lineno))
    return ListUses(names=names, line=line, undeclared=tuple(sorted(set(undeclared), key=lambda u: (u[1], u[0]))))
