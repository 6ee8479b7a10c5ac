"""Validation of the product lists a template declares (``{# uses: ... #}``, engine.templating.lists).

For one template: every declared name must be a list the engine computes (engine.sql.product_lists)
whose sources engine.yaml maps; every known list the template reads must be declared. Each problem
is at the template's own line. Gives the sample lists a validation render sees: two sample
products for each declared list, none for the others (so a use that slipped past is an undefined
variable there too). Must not read the warehouse.
"""
from __future__ import annotations

import difflib

from engine.model import ProjectConfig
from engine.sql.product_lists import ITEM_COLUMNS, LIST_KINDS, missing_sources
from engine.templating.declarations import LISTS
from engine.templating.render import Renderer, TemplateProblem

#: lists a template may declare that are not product lists
OTHER_LISTS = frozenset(LISTS) - set(LIST_KINDS)


def sample_item(position: int) -> dict:
    values = {"product_id": str(position), "name": f"Sample product {position}",
              "url": f"https://shop.example/p/{position}", "image": f"https://shop.example/img/{position}.jpg",
              "price": 9.5 * position, "category": "sample", "in_stock": True}
    return {"position": position, **{column: values[column] for column in ITEM_COLUMNS}}


def template_lists(config: ProjectConfig, renderer: Renderer, template: str) -> tuple[list[TemplateProblem], dict]:
    """(problems, sample lists) of ``template``; no problems and no lists when it cannot be read
    (the renderer's own check reports that)."""
    try:
        uses = renderer.list_uses(template, LIST_KINDS)
    except Exception:  # noqa: BLE001 - a missing or broken template is the renderer's check to report
        return [], {}
    problems = []
    known = ", ".join(LIST_KINDS)
    for name in uses.names:
        if name in OTHER_LISTS:  # promotions: engine.run.promotions, checked by the renderer
            continue
        if name not in LIST_KINDS:
            close = difflib.get_close_matches(name, LIST_KINDS, n=1)
            problems.append(TemplateProblem(
                f"template '{template}' declares an unknown list '{name}'" + (f" (did you mean '{close[0]}'?)" if close else ""),
                line=uses.line, template=template, fix=f"declare lists the engine computes: {known}"))
            continue
        missing = missing_sources(name, config)
        if missing:
            problems.append(TemplateProblem(
                f"template '{template}' shows the list '{name}', which needs sources the project does not map: "
                + ", ".join(missing), line=uses.line, template=template,
                fix=f"map {', '.join('sources.' + m for m in missing)} in {config.file}, or remove '{name}' from the uses: comment"))
    for name, line in uses.undeclared:
        problems.append(TemplateProblem(
            f"template '{template}' iterates the list '{name}' without declaring it", line=line, template=template,
            fix=("add " + name + " to its {# uses: ... #} comment" if uses.names
                 else "declare it at the top of the template: {# uses: " + name + " #}")))
    lists = {name: [sample_item(1), sample_item(2)] for name in uses.names if name in LIST_KINDS}
    return problems, lists
