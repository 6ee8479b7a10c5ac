"""Message templates: Jinja2 in its sandbox, strict about undefined variables.

A message template is one file with named blocks: ``subject``, ``text`` and
``html`` for email, ``text`` for SMS. The ``html`` block is rendered with
autoescaping on, ``subject`` and ``text`` with it off, from two environments
over the same files, so a template author cannot forget to escape HTML and
plain text is never double-escaped. Owns Jinja2; no other I/O than reading
templates.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jinja2
from jinja2 import nodes
from jinja2.sandbox import SandboxedEnvironment

from .errors import TemplateError

#: Blocks each channel kind needs: (required, optional).
REQUIRED_BLOCKS = {
    "email": (("subject",), ("text", "html")),
    "sms": (("text",), ()),
}


@dataclass(frozen=True)
class RenderedContent:
    subject: str | None
    text: str | None
    html: str | None


@dataclass(frozen=True)
class TemplateProblem:
    message: str
    line: int | None = None
    fix: str = ""


class Renderer:
    def __init__(self, templates_dir: Path):
        loader = jinja2.FileSystemLoader(str(templates_dir))
        common = dict(loader=loader, undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
        self._plain = SandboxedEnvironment(autoescape=False, **common)
        self._html = SandboxedEnvironment(autoescape=True, **common)
        self._cache: dict[tuple[str, bool], jinja2.Template] = {}
        self._chains: dict[tuple[str, str, bool], list[jinja2.Template] | None] = {}

    def _template(self, name: str, html: bool) -> jinja2.Template:
        key = (name, html)
        if key not in self._cache:
            env = self._html if html else self._plain
            self._cache[key] = env.get_template(name)
        return self._cache[key]

    def check(self, name: str, kind: str, sample: dict[str, Any]) -> list[TemplateProblem]:
        """Problems that make ``name`` unusable for a channel of ``kind``.

        The template is rendered once against ``sample`` (every variable the
        trigger provides, with placeholder values), so an undefined variable
        is reported here rather than at send time.
        """
        try:
            self._template(name, html=False)
        except jinja2.TemplateNotFound:
            return [TemplateProblem(f"template '{name}' does not exist", fix="create it under templates/ or fix the path")]
        except jinja2.TemplateSyntaxError as exc:
            return [TemplateProblem(f"template '{name}' does not compile: {exc.message}", line=exc.lineno,
                                    fix=f"fix the Jinja2 syntax in templates/{name} line {exc.lineno}")]
        except UnicodeDecodeError:
            return [TemplateProblem(f"template '{name}' is not UTF-8 text", fix=f"save templates/{name} as UTF-8")]
        problems = [TemplateProblem(f"template '{name}' refers to '{missing}', which does not exist",
                                    fix=f"create templates/{missing} or fix the name in templates/{name}")
                    for missing in self._missing_references(name)]
        if problems:
            return problems
        try:
            blocks = set(self._render_blocks(name, sample, html=False).names)
            if "html" in blocks:
                self._render_blocks(name, sample, html=True)
        except jinja2.UndefinedError as exc:
            known = ", ".join(sorted(sample))
            return [TemplateProblem(f"template '{name}' uses an undefined variable: {exc.message}",
                                    fix=f"use only what this trigger provides ({known}; customer.<attribute>, trigger.<column>)")]
        except (jinja2.TemplateError, TypeError, ValueError, ArithmeticError) as exc:
            return [TemplateProblem(f"template '{name}' fails to render: {exc}", fix=f"fix templates/{name}")]
        required, optional = REQUIRED_BLOCKS[kind]
        for block in required:
            if block not in blocks:
                problems.append(TemplateProblem(
                    f"template '{name}' has no '{block}' block, which {kind} messages need",
                    fix=f"add {{% block {block} %}}...{{% endblock %}}"))
        if optional and not blocks & set(optional):
            problems.append(TemplateProblem(
                f"template '{name}' has none of the blocks {', '.join(optional)}",
                fix="add a text or html block with the message body"))
        return problems

    def _missing_references(self, name: str) -> list[str]:
        """Templates that ``name`` extends, includes or imports by a constant name and that do not exist."""
        env = self._plain
        source, _, _ = env.loader.get_source(env, name)
        missing = []
        for node in env.parse(source).find_all((nodes.Extends, nodes.Include, nodes.Import, nodes.FromImport)):
            if isinstance(node.template, nodes.Const) and not getattr(node, "ignore_missing", False):
                try:
                    env.loader.get_source(env, node.template.value)
                except jinja2.TemplateNotFound:
                    missing.append(node.template.value)
        return missing

    def render(self, name: str, kind: str, context: dict[str, Any]) -> RenderedContent:
        try:
            parts = self._render_blocks(name, context, html=False)
            html = self._render_blocks(name, context, html=True).get("html") if "html" in parts.names else None
        except jinja2.TemplateError as exc:
            raise TemplateError(f"template '{name}' failed to render: {exc}") from None
        subject = parts.get("subject")
        if subject is not None:
            subject = " ".join(subject.split())
        return RenderedContent(subject=subject if kind == "email" else None, text=parts.get("text"), html=html)

    def _render_blocks(self, name: str, context: dict[str, Any], html: bool) -> "_Blocks":
        """Render the message blocks of ``name``, following ``{% extends %}`` to its layout.

        Each part is the most derived version of its block, so a campaign
        template can override only the blocks the layout leaves open (title,
        body, ...). The blocks of the whole inheritance chain are registered
        in the context the way Jinja's own ``extends`` does it; only a chain
        whose templates do more than extend and define blocks at the top level
        (set, import, macro, a dynamic extends) runs the template's root for
        that, which renders every block once more just to throw it away.
        """
        template = self._template(name, html=html)
        ctx = template.new_context({**context, "format": "html" if html else "text"})
        chain = self._chain(name, html)
        if chain is None:
            for _ in template.root_render_func(ctx):
                pass
        else:
            for parent in chain:
                for block, render in parent.blocks.items():
                    ctx.blocks.setdefault(block, []).append(render)
        wanted = ("html",) if html else ("subject", "text")
        rendered = {block: "".join(ctx.blocks[block][0](ctx)).strip() for block in wanted if block in ctx.blocks}
        return _Blocks(rendered, names=frozenset(ctx.blocks))

    def _chain(self, name: str, html: bool) -> list[jinja2.Template] | None:
        """The templates ``name`` extends, nearest first; None when running its root could do more
        than register their blocks (the caller then runs it). Cached per template and mode."""
        key = ("chain", name, html)
        if key not in self._chains:
            env = self._html if html else self._plain
            chain: list[jinja2.Template] | None = []
            current, seen = name, {name}
            while chain is not None:
                parent = _static_parent(env, current)
                if parent is False:
                    chain = None
                elif parent is None:
                    break
                elif parent in seen:  # a cycle: let Jinja report it
                    chain = None
                else:
                    seen.add(parent)
                    chain.append(env.get_template(parent, parent=current))
                    current = parent
            self._chains[key] = chain
        return self._chains[key]


#: Top-level statements that only produce output (or nothing) when a template's root runs.
_PASSIVE = (nodes.Output, nodes.Block, nodes.If, nodes.For)
#: Statements that change the context a block sees, wherever they sit outside blocks.
_ACTIVE = (nodes.Assign, nodes.AssignBlock, nodes.Import, nodes.FromImport, nodes.Macro, nodes.CallBlock,
           nodes.Include, nodes.ExprStmt, nodes.With, nodes.Extends, nodes.Scope, nodes.OverlayScope,
           nodes.EvalContextModifier, nodes.ScopedEvalContextModifier)


def _static_parent(env: jinja2.Environment, name: str) -> str | None | bool:
    """The template ``name`` extends (None: none), or False when its top level does anything
    besides a constant ``{% extends %}``, blocks and output."""
    source, _, _ = env.loader.get_source(env, name)
    parent: str | None = None
    for node in env.parse(source).body:
        if isinstance(node, nodes.Extends):
            if parent is not None or not isinstance(node.template, nodes.Const):
                return False
            parent = node.template.value
            continue
        if not isinstance(node, _PASSIVE):
            return False
        outside_blocks = [node] if not isinstance(node, nodes.Block) else []
        for outer in outside_blocks:
            for inner in outer.find_all(_ACTIVE):
                if not _inside_block(outer, inner):
                    return False
    return parent


def _inside_block(top: nodes.Node, target: nodes.Node) -> bool:
    """Whether ``target`` sits in a ``{% block %}`` nested in ``top`` (blocks are not run by the root)."""
    for block in top.find_all(nodes.Block):
        if target is block or any(target is n for n in block.find_all(type(target))):
            return True
    return False


class _Blocks(dict):
    """Rendered blocks, plus the names of every block the template chain defines."""

    def __init__(self, rendered: dict[str, str], names: frozenset[str]):
        super().__init__(rendered)
        self.names = names
