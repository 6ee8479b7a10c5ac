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

    def _template(self, name: str, html: bool) -> jinja2.Template:
        key = (name, html)
        if key not in self._cache:
            env = self._html if html else self._plain
            self._cache[key] = env.get_template(name)
        return self._cache[key]

    def check(self, name: str, kind: str) -> list[TemplateProblem]:
        """Problems that make ``name`` unusable for a channel of ``kind``."""
        try:
            template = self._template(name, html=False)
        except jinja2.TemplateNotFound:
            return [TemplateProblem(f"template '{name}' does not exist", fix="create it under templates/ or fix the path")]
        except jinja2.TemplateSyntaxError as exc:
            return [TemplateProblem(f"template '{name}' does not compile: {exc.message}", line=exc.lineno,
                                    fix=f"fix the Jinja2 syntax in templates/{name} line {exc.lineno}")]
        except UnicodeDecodeError:
            return [TemplateProblem(f"template '{name}' is not UTF-8 text", fix=f"save templates/{name} as UTF-8")]
        required, optional = REQUIRED_BLOCKS[kind]
        problems = [TemplateProblem(f"template '{name}' refers to '{missing}', which does not exist",
                                    fix=f"create templates/{missing} or fix the name in templates/{name}")
                    for missing in self._missing_references(name)]
        blocks = set(template.blocks)
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
            plain = self._template(name, html=False)
            subject = self._block(plain, "subject", context)
            text = self._block(plain, "text", context)
            html = None
            if "html" in plain.blocks:
                html = self._block(self._template(name, html=True), "html", context)
        except jinja2.TemplateError as exc:
            raise TemplateError(f"template '{name}' failed to render: {exc}") from None
        if subject is not None:
            subject = " ".join(subject.split())
        return RenderedContent(subject=subject if kind == "email" else None, text=text, html=html)

    @staticmethod
    def _block(template: jinja2.Template, block: str, context: dict[str, Any]) -> str | None:
        render_block = template.blocks.get(block)
        if render_block is None:
            return None
        return "".join(render_block(template.new_context(context))).strip()
