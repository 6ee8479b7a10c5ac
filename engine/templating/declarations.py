"""The lists a message template declares it uses, and the uses it did not declare.

A template that shows one of the shop's lists (``promotions``) says so on a
comment line of its own, so the engine computes that list only for the steps
whose templates show it, and validation renders it against a sample::

    {# uses: promotions #}            at most DEFAULT_LIMIT of them
    {# uses: promotions limit 1 #}    at most one

Several lists are separated by commas. A template that reads a list without
declaring it is an error at the line that reads it. The layout (the shop's,
locked) is not a campaign template: it may show a list only behind
``{% if promotions is defined %}``, and so shows it exactly for the templates
that declare it.

Reads template sources and syntax trees only: what a list holds is computed by
the run (engine/run/promotions.py), never here.
"""
from __future__ import annotations

import difflib
import re
from dataclasses import dataclass

import jinja2
from jinja2 import nodes

#: The lists a template may declare, with what each item holds (for the messages).
LISTS = {
    "promotions": "the shop's promotions valid at the pass's instant for the campaign and step "
                  "(promotion_id, title, description, image_url, url, valid_from, valid_to)",
    # the product lists (engine.sql.product_lists; their limit is the engine's, a declared one is not read)
    "viewed_products": "the products the customer viewed lately, most recent first",
    "bought_together": "products bought together with the customer's, not bought by them yet",
    "category_top_sellers": "top sellers of the customer's favourite category, not bought by them yet",
    "search_related": "products matching the customer's recent searches, not bought by them yet",
}
DEFAULT_LIMIT = 3
MAX_LIMIT = 20

_DECLARATION = re.compile(r"\{#-?\s*uses\s*:(?P<body>.*?)-?#\}", re.DOTALL)
_ENTRY = re.compile(r"^(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:\s+limit\s+(?P<limit>[0-9]+))?$")


@dataclass(frozen=True)
class DeclarationProblem:
    message: str
    line: int
    fix: str


def declaration_syntax(name: str = "promotions", where: str = "the template") -> str:
    return (f"add {{# uses: {name} #}} on a line of its own at the top of {where} (it shows at most {DEFAULT_LIMIT}; "
            f"{{# uses: {name} limit 1 #}} at most one)")


def declared_lists(source: str) -> tuple[dict[str, int], list[DeclarationProblem]]:
    """list name -> the most items the template shows, from the ``{# uses: ... #}`` comments of ``source``."""
    declared: dict[str, int] = {}
    problems: list[DeclarationProblem] = []
    for match in _DECLARATION.finditer(source):
        line = source.count("\n", 0, match.start()) + 1
        for raw in match.group("body").split(","):
            entry = " ".join(raw.split())
            found = _ENTRY.match(entry)
            if found is None:
                problems.append(DeclarationProblem(f"cannot read the declaration '{entry}'", line, declaration_syntax()))
                continue
            name = found.group("name")
            if name not in LISTS:
                close = difflib.get_close_matches(name, list(LISTS), n=1)
                problems.append(DeclarationProblem(
                    f"declares the list '{name}', which the engine does not know"
                    + (f" (did you mean '{close[0]}'?)" if close else ""), line,
                    "lists a template may declare: " + ", ".join(LISTS)))
                continue
            limit = int(found.group("limit")) if found.group("limit") else DEFAULT_LIMIT
            if not 1 <= limit <= MAX_LIMIT:
                problems.append(DeclarationProblem(f"declares '{name}' with limit {limit}", line,
                                                   f"give a limit from 1 to {MAX_LIMIT}"))
                continue
            declared[name] = limit
    return declared, problems


def undeclared_uses(tree: nodes.Template, declared: dict[str, int]) -> list[tuple[str, int]]:
    """(list name, line) of every read of a known list that ``declared`` lacks, in source order."""
    return sorted({(node.name, node.lineno) for node in tree.find_all(nodes.Name)
                   if node.ctx == "load" and node.name in LISTS and node.name not in declared},
                  key=lambda use: (use[1], use[0]))


def template_declarations(env: jinja2.Environment, name: str, layout: str | None
                          ) -> tuple[dict[str, int], list[tuple[str, DeclarationProblem]]]:
    """What template ``name`` declares, and the problems of it and of every template it extends, includes or
    imports except the layout: (template, problem). The campaign template's declaration covers every template
    it reaches (its own base templates, includes and imports); theirs are not read."""
    source = env.loader.get_source(env, name)[0]
    declared, own = declared_lists(source)
    problems = [(name, p) for p in own]
    seen, pending = {name}, [name]
    while pending:
        current = pending.pop(0)
        text = source if current == name else env.loader.get_source(env, current)[0]
        tree = env.parse(text)
        for list_name, line in undeclared_uses(tree, declared):
            problems.append((current, DeclarationProblem(
                f"template '{current}' line {line} uses the list '{list_name}', which '{name}' does not declare",
                line, declaration_syntax(list_name, f"templates/{name}"))))
        for node in tree.find_all((nodes.Extends, nodes.Include, nodes.Import, nodes.FromImport)):
            child = node.template.value if isinstance(node.template, nodes.Const) else None
            if isinstance(child, str) and child != layout and child not in seen:
                seen.add(child)
                pending.append(child)
    return declared, problems
