"""Message templates: Jinja2 in a budgeted, read-only sandbox, strict about undefined variables.

A message template is one file with named blocks, the parts its channel kind
declares (engine.channel_kinds: ``subject``, ``text`` and ``html`` for email,
``text`` for SMS). The ``html`` block is rendered with autoescaping on, the
others with it off, from two environments over the same files, so a template
author cannot forget to escape HTML and plain text is never double-escaped. A
template of a kind with ``locked_layout`` (email) fills in the locked layout
(layout.py); the engine appends the layout's footer with the unsubscribe link
to both parts itself. The sandbox and the render budgets
are sandbox.py's, the loader that stays in the templates folder is
template_loader.py's. Owns Jinja2 rendering; no other I/O than reading
templates.
"""
from __future__ import annotations

import contextvars
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping

import jinja2
from jinja2 import nodes
from jinja2.runtime import new_context
from markupsafe import escape

from engine import channel_kinds
from engine.errors import TemplateError
from engine.templating.declarations import LISTS, template_declarations
from engine.templating.lists import ListUses, list_uses
from engine.templating.layout import EMAIL_LAYOUT, FOOTERS, lock_violations
from engine.templating.sandbox import BudgetExceeded, Limits, ReadOnlyDict, TemplateSandbox, budget, emitted, read_only
from engine.templating.loader import FolderLoader, TemplateOutsideFolder, TemplateTooLarge
from engine.templating.undefined import RecordingUndefined, describe, record_uses

@dataclass(frozen=True)
class RenderedContent:
    """The rendered parts of one message, by the part names its channel kind declares
    (a part the template does not fill in is absent)."""

    parts: Mapping[str, str]

    @property
    def subject(self) -> str | None:
        return self.parts.get("subject")

    @property
    def text(self) -> str | None:
        return self.parts.get("text")

    @property
    def html(self) -> str | None:
        return self.parts.get("html")


@dataclass(frozen=True)
class TemplateProblem:
    message: str
    line: int | None = None
    fix: str = ""
    template: str | None = None  # the template (under templates/) at whose ``line`` it is, when it is in one


class Renderer:
    """Renders message templates from ``templates_dir``.

    ``layout`` is the locked email layout every email template must fill in
    (None only for renderers of ad-hoc templates in tests of the block chain);
    ``limits`` bound each render.
    """

    def __init__(self, templates_dir: Path, limits: Limits = Limits(), layout: str | None = EMAIL_LAYOUT,
                 undefined: type[jinja2.Undefined] = jinja2.StrictUndefined):
        self.templates_dir = templates_dir
        self.limits = limits
        self.layout = layout
        self._undefined = undefined
        self._start()

    def _start(self) -> None:
        """The two environments, with nothing compiled, parsed or read from a template yet."""
        loader = FolderLoader(self.templates_dir)
        common = dict(loader=loader, undefined=self._undefined, trim_blocks=True, lstrip_blocks=True)
        self._plain = TemplateSandbox(autoescape=False, **common)
        self._html = TemplateSandbox(autoescape=True, **common)
        self._html.parsed = self._plain.parsed  # one syntax tree per template for both
        self._cache: dict[tuple[str, bool], jinja2.Template] = {}
        self._chains: dict[tuple[str, str, bool], list[jinja2.Template] | None] = {}
        self._locks: dict[str, str | None] = {}
        self._declared: dict[str, dict[str, int]] = {}
        self._list_uses: dict[tuple[str, tuple[str, ...]], ListUses] = {}
        self._footer_reads_link_only: dict[bool, bool] = {}  # mode (html) -> _footer_once may serve it
        self._footer_forms: dict[tuple[bool, tuple], str] = {}  # (html, the shop's settings) -> footer with the stand-in
        self._footer_shop: tuple[Any, tuple] | None = None  # the last shop mapping seen, with its settings as a key
        self._template_globals: dict[jinja2.Template, dict[str, Any]] = {}
        self._kind_parts: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {}  # kind -> (plain parts, html parts)

    def forget_changed(self) -> bool:
        """Start again from nothing compiled when a template this renderer loaded changed on disk since
        (Jinja's own up-to-date check of each: one ``stat``); True when it did. A renderer kept across
        passes (``Reconciler.renderer``) calls this once per pass, not per message: a pass renders
        from the templates as they were when it started (the service renders from a snapshot per
        project version, which never changes)."""
        loaded = [t for env in (self._plain, self._html) for t in (env.cache or {}).values()]
        if all(t.is_up_to_date for t in loaded):
            return False
        self._start()
        return True

    def _template(self, name: str, html: bool) -> jinja2.Template:
        key = (name, html)
        if key not in self._cache:
            env = self._html if html else self._plain
            self._cache[key] = env.get_template(name)
        return self._cache[key]

    def check(self, name: str, kind: str, sample: dict[str, Any]) -> list[TemplateProblem]:
        """Problems that make ``name`` unusable for a channel of ``kind``.

        Every template ``name`` reaches (extends, include, import) must exist
        inside the templates folder, compile and be reached by a constant name,
        without cycles; an email template must fill in the locked layout. The
        template is then rendered once against ``sample`` (every variable the
        trigger provides, with placeholder values) within the render budget,
        so an undefined variable, a forbidden operation or a bound exceeded is
        reported here rather than at send time.
        """
        problems = self._reference_problems(name)
        if problems:
            return problems
        missing = self._missing_blocks(name, kind)
        if missing:
            return missing
        locked = channel_kinds.kind(kind).locked_layout and self.layout is not None
        if locked:
            violations = lock_violations(self._plain, name, self.layout)
            if violations:
                return [TemplateProblem(f"{v.message} ({v.file}" + (f":{v.line})" if v.line else ")"), line=v.line, fix=v.fix)
                        for v in violations]
        declared_lists, list_problems = template_declarations(self._plain, name, self.layout)
        if list_problems:
            return [TemplateProblem(f"template '{name}' {p.message}" if at == name and not p.message.startswith("template ")
                                    else p.message, line=p.line, fix=p.fix, template=at) for at, p in list_problems]
        # a list reaches only the templates that declare it (the layout shows it behind "is defined")
        sample = {key: value for key, value in sample.items() if key not in LISTS or key in declared_lists}
        try:
            with budget(self.limits):
                data = read_only(sample)
                declared = channel_kinds.kind(kind)
                blocks = set(self._render_blocks(name, data, html=False, wanted=_plain_parts(declared)).names)
                if blocks & set(_html_parts(declared)):
                    self._render_blocks(name, data, html=True, wanted=_html_parts(declared))
                if locked:
                    self._footers(data, html="html" in blocks)
        except jinja2.UndefinedError as exc:
            return self._undefined_problems(name, channel_kinds.kind(kind), sample, locked, exc)
        except BudgetExceeded as exc:
            return [TemplateProblem(f"template '{name}' exceeds a render bound: {exc}{_where(exc)}", line=_line(exc),
                                    fix=f"make templates/{name} do less work: fewer or smaller loops, shorter strings, smaller numbers")]
        except jinja2.exceptions.SecurityError as exc:
            return [TemplateProblem(f"template '{name}' does something the sandbox forbids: {exc}{_where(exc)}",
                                    line=_line(exc),
                                    fix=f"templates only read the data they are given: remove that from templates/{name}")]
        except RecursionError:
            return [TemplateProblem(f"template '{name}' nests too deeply (a macro, include or extends that never ends)",
                                    fix=f"remove the recursion from templates/{name}")]
        except TemplateError as exc:  # the layout's footer lost the unsubscribe link
            return [TemplateProblem(str(exc), fix=f"keep {{{{ unsubscribe_url }}}} in the footer blocks of templates/{self.layout}")]
        except (jinja2.TemplateError, TypeError, ValueError, ArithmeticError, LookupError) as exc:
            return [TemplateProblem(f"template '{name}' fails to render: {exc}{_where(exc)}", line=_line(exc),
                                    fix=f"fix templates/{name}")]
        return self._missing_blocks(name, kind, blocks)

    def declared_lists(self, name: str) -> dict[str, int]:
        """The lists template ``name`` declares it shows (declarations.py), with the most items of each;
        cached (the run asks once per message). A template that cannot be read declares none."""
        if name not in self._declared:
            try:
                self._declared[name] = template_declarations(self._plain, name, self.layout)[0]
            except (jinja2.TemplateError, OSError, UnicodeDecodeError, RecursionError):
                self._declared[name] = {}  # the render itself reports why
        return self._declared[name]

    def _undefined_problems(self, name: str, declared: channel_kinds.ChannelKind, sample: dict[str, Any],
                            locked: bool, first: jinja2.UndefinedError) -> list[TemplateProblem]:
        """Every undefined variable a render of ``name`` against ``sample`` uses (``first`` stopped the strict
        render), each at its template and line with a did-you-mean against what ``sample`` offers there."""
        recorder = Renderer(self.templates_dir, self.limits, self.layout, undefined=RecordingUndefined)

        def render() -> None:
            with budget(self.limits):
                data = read_only(sample)
                blocks = recorder._render_blocks(name, data, html=False, wanted=_plain_parts(declared)).names
                if blocks & set(_html_parts(declared)):
                    recorder._render_blocks(name, data, html=True, wanted=_html_parts(declared))
                if locked:
                    recorder._footers(data, html="html" in blocks)

        uses = record_uses(render, {**sample, "format": "text"}, self._parse)
        if not uses:  # not reached again without the strict undefined: report the first as it was
            frame = _template_frame(first)
            message = describe(first, *(frame or (None, None)), self._parse)
            return [TemplateProblem(f"template '{name}' uses an undefined variable: {message}{_where(first)}",
                                    line=_line(first), template=frame[0] if frame else None,
                                    fix=f"use only what this trigger provides ({', '.join(sorted(sample))})")]
        return [TemplateProblem(use.message, line=use.line, fix=use.fix, template=use.template) for use in uses]

    def list_uses(self, name: str, known: Iterable[str]) -> ListUses:
        """The lists template ``name`` declares (``{# uses: ... #}``) and the ``known`` ones it reads undeclared;
        cached. A template that cannot be read declares none (the render itself reports why)."""
        key = (name, tuple(known))
        if key not in self._list_uses:
            env = self._plain
            try:
                source = env.loader.get_source(env, name)[0]
                self._list_uses[key] = list_uses(source, env.parse(source), key[1])
            except (jinja2.TemplateError, OSError, UnicodeDecodeError, RecursionError):
                self._list_uses[key] = ListUses()
        return self._list_uses[key]

    def _parse(self, name: str) -> nodes.Template:
        env = self._plain
        return env.parse(env.loader.get_source(env, name)[0])

    def _missing_blocks(self, name: str, kind: str, blocks: set[str] | None = None) -> list[TemplateProblem]:
        """The blocks a ``kind`` message needs that ``name`` lacks; ``blocks`` defaults to every block
        of its (constant) inheritance chain."""
        if blocks is None:
            blocks, seen, current, env = set(), set(), name, self._plain
            while current is not None and current not in seen:
                seen.add(current)
                tree = env.parse(env.loader.get_source(env, current)[0])
                blocks |= {b.name for b in tree.find_all(nodes.Block)}
                parents = [e.template.value for e in tree.find_all(nodes.Extends) if isinstance(e.template, nodes.Const)]
                current = parents[0] if parents else None
        problems = []
        declared = channel_kinds.kind(kind)
        for block in declared.required_parts:
            if block not in blocks:
                fix = (f'extend the locked layout: {{% extends "{self.layout}" %}} and fill in {{% block title %}}...{{% endblock %}}'
                       if declared.locked_layout and self.layout is not None else f"add {{% block {block} %}}...{{% endblock %}}")
                problems.append(TemplateProblem(f"template '{name}' has no '{block}' block, which {kind} messages need", fix=fix))
        if declared.body_parts and not blocks & set(declared.body_parts):
            problems.append(TemplateProblem(
                f"template '{name}' has none of the blocks {', '.join(declared.body_parts)}",
                fix=f"add a {' or '.join(declared.body_parts)} block with the message body"))
        return problems

    def _reference_problems(self, name: str) -> list[TemplateProblem]:
        """``name`` and every template it extends, includes or imports: each must exist inside the
        templates folder, be UTF-8, compile and be named by a constant; no template may reach itself."""
        env = self._plain
        problems: list[TemplateProblem] = []
        done: set[str] = set()

        def visit(current: str, path: list[str], referrer: str | None, line: int | None) -> None:
            where = f"templates/{referrer}" + (f":{line}" if line else "") if referrer else None
            try:
                source, _, _ = env.loader.get_source(env, current)
            except TemplateOutsideFolder as exc:
                shown = f"'{current}'" if referrer is None else f"'{current}' (used by {where})"
                problems.append(TemplateProblem(
                    f"template {shown} is a link to {exc.real_path}, outside the templates folder",
                    line=line, fix=f"replace templates/{current} by a regular file inside templates/ (no symlinks out of it)"))
                return
            except TemplateTooLarge as exc:
                problems.append(TemplateProblem(str(exc.message), fix=f"make templates/{current} smaller"))
                return
            except jinja2.TemplateNotFound:
                if referrer is None:
                    problems.append(TemplateProblem(f"template '{name}' does not exist",
                                                    fix="create it under templates/ or fix the path"))
                else:
                    problems.append(TemplateProblem(f"template '{name}' refers to '{current}', which does not exist",
                                                    line=line, fix=f"create templates/{current} or fix the name in {where}"))
                return
            except UnicodeDecodeError:
                problems.append(TemplateProblem(f"template '{current}' is not UTF-8 text", fix=f"save templates/{current} as UTF-8"))
                return
            try:
                tree = env.parse(source, current)
                self._template(current, html=False)
            except jinja2.TemplateSyntaxError as exc:
                shown = f"'{current}'" if current == name else f"'{current}' (used by '{name}')"
                problems.append(TemplateProblem(f"template {shown} does not compile: {exc.message}", line=exc.lineno,
                                                fix=f"fix the Jinja2 syntax in templates/{current} line {exc.lineno}"))
                return
            for node in tree.find_all((nodes.Extends, nodes.Include, nodes.Import, nodes.FromImport)):
                kind = type(node).__name__.lower().replace("fromimport", "import")
                if not isinstance(node.template, nodes.Const) or not isinstance(node.template.value, str):
                    problems.append(TemplateProblem(
                        f"template '{current}' line {node.lineno}: {kind} of a computed template name",
                        line=node.lineno, fix=f'name the template as a constant string in templates/{current}, e.g. {{% {kind} "layouts/email.j2" %}}'))
                    continue
                child = node.template.value
                if child in path:
                    cycle = " -> ".join(path + [child])
                    problems.append(TemplateProblem(
                        f"template '{current}' line {node.lineno}: {kind} cycle {cycle}",
                        line=node.lineno, fix=f"remove the {kind} of '{child}' from templates/{current}: a template may not reach itself"))
                    continue
                if getattr(node, "ignore_missing", False):
                    try:
                        env.loader.get_source(env, child)
                    except TemplateOutsideFolder:
                        pass  # reported by visit below
                    except jinja2.TemplateNotFound:
                        continue
                if child not in done:
                    visit(child, path + [child], current, node.lineno)
            done.add(current)

        visit(name, [name], None, None)
        return problems

    def render(self, name: str, kind: str, context: dict[str, Any]) -> RenderedContent:
        """The message parts of ``name`` for ``context`` (a read-only copy is rendered), within the budget.

        Any failure of the template (a bound exceeded, a forbidden operation,
        an error in its expressions, a broken layout) is a ``TemplateError``
        naming the template and the reason; nothing else escapes.
        """
        declared = channel_kinds.kind(kind)
        locked = declared.locked_layout and self.layout is not None
        if kind not in self._kind_parts:
            self._kind_parts[kind] = (_plain_parts(declared), _html_parts(declared))
        plain_parts, html_parts = self._kind_parts[kind]
        try:
            with budget(self.limits):
                data = read_only(context)
                if locked:
                    self._require_lock(name)
                parts = dict(plain := self._render_blocks(name, data, html=False, wanted=plain_parts))
                if not plain.names.isdisjoint(html_parts):
                    parts.update(self._render_blocks(name, data, html=True, wanted=html_parts))
                if locked:
                    footer_text, footer_html = self._footers(data, html="html" in parts, once=True)
                    parts["text"] = parts.get("text", "") + footer_text
                    if "html" in parts:
                        parts["html"] += footer_html
        except TemplateError:
            raise
        except RecursionError:
            raise TemplateError(f"template '{name}' failed to render: it nests too deeply") from None
        except jinja2.TemplateNotFound as exc:
            reason = exc.message if isinstance(exc, (TemplateOutsideFolder, TemplateTooLarge)) else f"'{exc.name}' does not exist"
            raise TemplateError(f"template '{name}' failed to render: {reason}") from None
        except jinja2.UndefinedError as exc:
            frame = _template_frame(exc)
            raise TemplateError(f"template '{name}' failed to render: "
                                f"{describe(exc, *(frame or (None, None)), self._parse)}{_where(exc)}") from None
        except Exception as exc:  # noqa: BLE001 (a template's failure fails its message, never the pass)
            raise TemplateError(f"template '{name}' failed to render: {exc}{_where(exc)}") from None
        # text parts are trimmed (after the engine appended the footer); a subject is one line
        return RenderedContent({part: " ".join(value.split()) if part == "subject" else value.strip()
                                for part, value in parts.items()})

    def _require_lock(self, name: str) -> None:
        """Refuse (at send time too) an email template that does not fill in the locked layout."""
        if name not in self._locks:
            violations = lock_violations(self._plain, name, self.layout)
            self._locks[name] = f"{violations[0].message} ({violations[0].file}:{violations[0].line})" if violations else None
        if self._locks[name] is not None:
            raise TemplateError(f"template '{name}' failed to render: {self._locks[name]}")

    def _footers(self, data: dict[str, Any], html: bool, once: bool = False) -> tuple[str, str]:
        """The layout's footer blocks, rendered by the engine from the layout itself (never from the
        campaign template's blocks); each must contain the unsubscribe link. ``once`` (a pass's
        messages): a footer that only prints the link is rendered once per shop (``_footer_once``)."""
        url = str(data.get("unsubscribe_url", ""))
        parts = []
        for mode in (False, True) if html else (False,):
            layout = self._template(self.layout, html=mode)
            block = FOOTERS["html" if mode else "text"]
            if block not in layout.blocks:
                raise TemplateError(f"the layout '{self.layout}' has no '{block}' block")
            footer = self._footer_once(layout, block, mode, data, url) if once else None
            if footer is None:
                ctx = layout.new_context({**data, "format": "html" if mode else "text"})
                footer = "".join(layout.blocks[block](ctx))
            if not url or (escape(url) if mode else url) not in footer:
                raise TemplateError(f"the footer block '{block}' of the layout '{self.layout}' does not contain the unsubscribe link")
            parts.append(footer)
        return parts[0], parts[1] if html else ""

    def _footer_once(self, layout: jinja2.Template, block: str, html: bool, data: dict[str, Any],
                     url: str) -> str | None:
        """The footer ``block`` for ``data``, from one render per pass and shop with a stand-in for the
        unsubscribe link, which is then replaced by the link (escaped in HTML, as ``{{ }}`` does).

        Only for a footer that reads nothing but ``shop``, ``format`` and the link, and uses the link
        only by printing it as it is (``{{ unsubscribe_url }}``): its output is then the same text
        with the link in those places, byte for byte. Any other footer (a test on the link, a filter
        on it, another variable, ``self``) gives None: the caller renders it per message. The output
        budget is charged as if it had been rendered."""
        if html not in self._footer_reads_link_only:
            env = self._html if html else self._plain
            tree = env.parse(env.loader.get_source(env, self.layout)[0])
            self._footer_reads_link_only[html] = _prints_link_only(tree, block)
        shop = data.get("shop")
        if not self._footer_reads_link_only[html] or not isinstance(shop, Mapping):
            return None
        if self._footer_shop is not None and self._footer_shop[0] is shop and type(shop) is ReadOnlyDict:
            settings = self._footer_shop[1]  # the same read-only mapping as the last message's (a batch shares one)
        else:
            try:
                settings = tuple(sorted(shop.items()))
                hash(settings)
            except TypeError:  # settings that are not plain values: rendered per message
                return None
            self._footer_shop = (shop, settings)
        key = (html, settings)
        if key not in self._footer_forms:
            def render_form() -> str:  # in a budget of its own, not the message's
                with budget(self.limits):
                    ctx = layout.new_context({"shop": shop, "unsubscribe_url": _LINK_STANDIN,
                                              "format": "html" if html else "text"})
                    return "".join(layout.blocks[block](ctx))
            self._footer_forms[key] = contextvars.Context().run(render_form)
        footer = self._footer_forms[key].replace(_LINK_STANDIN, str(escape(url)) if html else url)
        emitted(len(footer))
        return footer

    def _render_blocks(self, name: str, context: dict[str, Any], html: bool, wanted: Iterable[str]) -> "_Blocks":
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
        # what Template.new_context makes (the template's globals, then the data), in one copy instead of two,
        # with the globals as a plain dict (the context lists their names: no walk of Jinja's ChainMap per render)
        template_globals = self._globals(template)
        ctx = new_context(template.environment, template.name, template.blocks,
                          {**template_globals, **context, "format": "html" if html else "text"}, shared=True,
                          globals=template_globals)
        chain = self._chain(name, html)
        if chain is None:
            for _ in template.root_render_func(ctx):
                pass
        else:
            for parent in chain:
                for block, render in parent.blocks.items():
                    ctx.blocks.setdefault(block, []).append(render)
        rendered = {block: "".join(ctx.blocks[block][0](ctx)) for block in wanted if block in ctx.blocks}
        return _Blocks(rendered, names=frozenset(ctx.blocks))

    def _globals(self, template: jinja2.Template) -> dict[str, Any]:
        """The template's globals (the sandbox's ``range``, ``lipsum``... layered over Jinja's) as one dict,
        made once per template: ``new_context`` would copy its chain of mappings per render."""
        found = self._template_globals.get(template)
        if found is None:
            found = self._template_globals[template] = dict(template.globals)
        return found

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


#: What a footer rendered once per pass has in place of the unsubscribe link (letters and digits: escaping leaves it).
_LINK_STANDIN = "engineUnsubscribeLinkStandIn7f3a9c"
#: The variables a footer rendered once may read (``_prints_link_only``).
_FOOTER_READS = frozenset({"shop", "format", "unsubscribe_url"})


def _prints_link_only(tree: nodes.Template, block: str) -> bool:
    """Whether the layout's ``block`` reads no variable but ``_FOOTER_READS``, uses no filter whose
    output varies (``random``), and uses ``unsubscribe_url`` only as a whole ``{{ unsubscribe_url }}``."""
    found = [b for b in tree.find_all(nodes.Block) if b.name == block]
    if len(found) != 1:
        return False
    names = list(found[0].find_all(nodes.Name))
    if any(n.name not in _FOOTER_READS or n.ctx != "load" for n in names):
        return False
    if any(f.name == "random" for f in found[0].find_all(nodes.Filter)):
        return False
    printed = [child for output in found[0].find_all(nodes.Output) for child in output.nodes
               if isinstance(child, nodes.Name) and child.name == "unsubscribe_url"]
    return len(printed) == sum(n.name == "unsubscribe_url" for n in names)


def _plain_parts(declared: channel_kinds.ChannelKind) -> tuple[str, ...]:
    """The parts of a kind rendered without HTML autoescaping."""
    return tuple(part for part in declared.parts if part not in declared.html_parts)


def _html_parts(declared: channel_kinds.ChannelKind) -> tuple[str, ...]:
    """The parts of a kind rendered with HTML autoescaping."""
    return tuple(part for part in declared.parts if part in declared.html_parts)


class _Blocks(dict):
    """Rendered blocks, plus the names of every block the template chain defines."""

    def __init__(self, rendered: dict[str, str], names: frozenset[str]):
        super().__init__(rendered)
        self.names = names


def _template_frame(exc: BaseException) -> tuple[str, int] | None:
    """The template name and line where ``exc`` was raised (the innermost template frame)."""
    found = None
    tb = exc.__traceback__
    while tb is not None:
        template = tb.tb_frame.f_globals.get("__jinja_template__")
        if template is not None:
            found = (template.name, template.get_corresponding_lineno(tb.tb_lineno))
        tb = tb.tb_next
    return found


def _line(exc: BaseException) -> int | None:
    frame = _template_frame(exc)
    return frame[1] if frame else None


def _where(exc: BaseException) -> str:
    frame = _template_frame(exc)
    return f" (templates/{frame[0]}:{frame[1]})" if frame else ""
