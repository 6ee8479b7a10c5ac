"""The locked email layout: which blocks a campaign template may fill in, and the footer.

``templates/layouts/email.j2`` is the shop's layout. Its top-level blocks are
the parts of an email (``subject``, ``text``, ``html``) and their footers
(``text_footer``, ``html_footer``); the blocks nested inside them (``title``,
``intro``, ``body``, ...) are open: an email template extends the layout and
fills in only those. The footers are rendered by the engine from the layout
itself, never from the campaign template's blocks, and appended to the text
and html parts: no campaign can remove or change the unsubscribe link.

This module reads templates' syntax trees only; rendering is render.py's.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import jinja2
from jinja2 import nodes

EMAIL_LAYOUT = "layouts/email.j2"
#: part -> the layout block the engine appends to it
FOOTERS = {"text": "text_footer", "html": "html_footer"}


class Violation(NamedTuple):
    message: str
    line: int | None
    fix: str
    file: str


@dataclass(frozen=True)
class LayoutBlocks:
    locked: frozenset[str]   # top-level blocks: the parts and footers
    open: tuple[str, ...]    # nested blocks, in the layout's order


def layout_blocks(env: jinja2.Environment, layout: str) -> LayoutBlocks:
    tree = env.parse(env.loader.get_source(env, layout)[0])
    nested: list[str] = []
    for block in tree.find_all(nodes.Block):
        nested += [inner.name for inner in block.find_all(nodes.Block) if inner is not block and inner.name not in nested]
    every = [block.name for block in tree.find_all(nodes.Block)]
    return LayoutBlocks(locked=frozenset(every) - set(nested), open=tuple(nested))


def lock_violations(env: jinja2.Environment, name: str, layout: str = EMAIL_LAYOUT) -> list[Violation]:
    """Why ``name`` does not fill in the locked layout correctly (empty: it does).

    Every template from ``name`` up to the layout must extend one constant
    template at its top level, and define only blocks the layout leaves open.
    """
    blocks = layout_blocks(env, layout)
    missing = [f for f in FOOTERS.values() if f not in blocks.locked]
    if missing:
        return [Violation(f"the layout has no top-level '{missing[0]}' block, which the engine appends to every email",
                          None, f"add {{% block {missing[0]} %}}...{{{{ unsubscribe_url }}}}...{{% endblock %}} to templates/{layout}",
                          layout)]
    open_list = ", ".join(blocks.open)
    violations: list[Violation] = []
    current, seen = name, [name]
    while current != layout:
        tree = env.parse(env.loader.get_source(env, current)[0])
        file = f"templates/{current}"
        extends = list(tree.find_all(nodes.Extends))
        fix_extends = f'start it with {{% extends "{layout}" %}} and fill in only the blocks {open_list}'
        if not extends:
            violations.append(Violation(f"email template '{current}' does not extend the locked layout '{layout}'",
                                        1, fix_extends, file))
            return violations
        if len(extends) > 1 or extends[0] not in tree.body or not isinstance(extends[0].template, nodes.Const):
            node = extends[1] if len(extends) > 1 else extends[0]
            violations.append(Violation(f"email template '{current}' must extend one constant template name at its top level",
                                        node.lineno, fix_extends, file))
            return violations
        for block in tree.find_all(nodes.Block):
            if block.name in blocks.locked:
                violations.append(Violation(
                    f"email template '{current}' overrides block '{block.name}', which belongs to the locked layout",
                    block.lineno, f"remove that block from {file}; fill in only the blocks {open_list}", file))
            elif block.name not in blocks.open:
                violations.append(Violation(
                    f"email template '{current}' defines block '{block.name}', which the layout '{layout}' does not have",
                    block.lineno, f"use one of the blocks {open_list}", file))
        parent = extends[0].template.value
        if parent in seen:
            violations.append(Violation(f"template '{current}' extends '{parent}', which extends it again: "
                                        + " -> ".join(seen + [parent]), extends[0].lineno,
                                        "break the cycle: an email template extends the layout", file))
            return violations
        seen.append(parent)
        current = parent
    return violations
