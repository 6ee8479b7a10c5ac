"""Which keys of one context variable (``customer``) a template reads, seen in its syntax trees.

A pass fetches for each campaign only the customer attributes something downstream reads
(engine.run.attributes); what its templates read is answered here, from the syntax trees of the
template and of every template it reaches (extends, include, import: the campaign template's
layout among them), never by rendering. A key counts when it is named as a constant:
``customer.first_name``, ``customer['first_name']``, ``customer.get('first_name')``. Any other
use of the variable - printed, iterated, passed to a filter, a test, a macro or ``format``, a
dict method (``customer.items()``), a computed key, assigned to another name - may read every
key: then the answer is None (all of them), and so it is for a template that cannot be read or
parsed (its render fails anyway). Conservative by construction: a key can only be left out when
every use of the variable names its keys.

Reads template sources through the folder's loader; the analysis of a source is remembered by
its text, so a pass re-reads the files (a changed template is seen at the next pass) but parses
only what changed. Renders nothing.
"""
from __future__ import annotations

import threading
from pathlib import Path

import jinja2
from jinja2 import nodes

from engine.templating.loader import FolderLoader
from engine.templating.sandbox import ReadOnlyDict, TemplateSandbox

#: template analyses remembered (source text -> keys read or None, templates it reaches); a bound, not a tuning
_REMEMBERED = 2048

_lock = threading.Lock()
_environments: dict[str, TemplateSandbox] = {}
_analyses: dict[tuple[str, str], tuple[frozenset[str] | None, tuple[str, ...]]] = {}


def template_reads(templates_dir: Path | str, name: str, also: tuple[str, ...] = (),
                   variable: str = "customer") -> frozenset[str] | None:
    """The keys of ``variable`` that template ``name`` - with every template it extends, includes or
    imports, and the templates ``also`` (a layout whose blocks the engine renders itself) - reads;
    None when some use may read any key."""
    env = _environment(templates_dir)
    reads: set[str] = set()
    seen: set[str] = set()
    pending = [name, *also]
    while pending:
        current = pending.pop()
        if current in seen:
            continue
        seen.add(current)
        try:
            source = env.loader.get_source(env, current)[0]
        except (jinja2.TemplateNotFound, OSError, UnicodeDecodeError):
            return None
        analysed = _analysis(env, variable, source)
        if analysed is None or analysed[0] is None:
            return None
        reads |= analysed[0]
        pending += analysed[1]
    return frozenset(reads)


def _environment(templates_dir: Path | str) -> TemplateSandbox:
    key = str(templates_dir)
    with _lock:
        env = _environments.get(key)
        if env is None:
            env = _environments[key] = TemplateSandbox(loader=FolderLoader(templates_dir))
        return env


def _analysis(env: TemplateSandbox, variable: str, source: str) -> tuple[frozenset[str] | None, tuple[str, ...]] | None:
    """(keys read or None, the templates it reaches) of one template's text; None when it does not parse
    or reaches a template by a computed name."""
    key = (variable, source)
    with _lock:
        found = _analyses.get(key)
    if found is not None:
        return found
    try:
        tree = jinja2.Environment().parse(source)  # the syntax only: no loader, sandbox or cache involved
    except jinja2.TemplateSyntaxError:
        return None
    children = []
    for node in tree.find_all((nodes.Extends, nodes.Include, nodes.Import, nodes.FromImport)):
        templates = node.template.value if isinstance(node.template, nodes.Const) else None
        names = templates if isinstance(templates, (list, tuple)) else [templates]  # include takes a list
        if not all(isinstance(n, str) for n in names):
            return None
        children += names
    found = (keys_read(tree, variable), tuple(children))
    with _lock:
        if len(_analyses) >= _REMEMBERED:
            _analyses.clear()
        _analyses[key] = found
    return found


def keys_read(tree: nodes.Template, variable: str) -> frozenset[str] | None:
    """The constant keys of ``variable`` one syntax tree reads, or None when a use may read any key
    (see the module docstring)."""
    keys: set[str] = set()
    named: set[int] = set()  # the ids of the Name nodes whose use names its key
    for node in tree.find_all((nodes.Getattr, nodes.Getitem)):
        if not _is_variable(node.node, variable):
            continue
        if isinstance(node, nodes.Getattr):
            if node.attr.startswith("_") or hasattr(ReadOnlyDict, node.attr):  # a method (items, get): see below
                continue
            keys.add(node.attr)
        elif isinstance(node.arg, nodes.Const) and isinstance(node.arg.value, str):
            keys.add(node.arg.value)
        else:
            continue
        named.add(id(node.node))
    for call in tree.find_all(nodes.Call):  # customer.get('key') or customer.get('key', default)
        method = call.node
        if (isinstance(method, nodes.Getattr) and method.attr == "get" and _is_variable(method.node, variable)
                and 1 <= len(call.args) <= 2 and not call.kwargs and call.dyn_args is None and call.dyn_kwargs is None
                and isinstance(call.args[0], nodes.Const) and isinstance(call.args[0].value, str)):
            keys.add(call.args[0].value)
            named.add(id(method.node))
    for name in tree.find_all(nodes.Name):
        if name.name == variable and name.ctx == "load" and id(name) not in named:
            return None
    return frozenset(keys)


def _is_variable(node: nodes.Node, variable: str) -> bool:
    return isinstance(node, nodes.Name) and node.name == variable and node.ctx == "load"
