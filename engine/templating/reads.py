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

Reads template sources through the folder's loader; the analysis of a file is remembered until
the file changes (its inode, size, modification or change time, and its link's: two stats per file and
pass; the folder's real path is resolved at every pass), and that of a source by its text, so a
changed template is seen at the next pass and only what changed is parsed again. Renders nothing.
"""
from __future__ import annotations

import os
import threading
from pathlib import Path

import jinja2
from jinja2 import nodes

from engine.templating.loader import FolderLoader
from engine.templating.sandbox import ReadOnlyDict

#: template analyses remembered (source text -> keys read or None, templates it reaches); a bound, not a tuning
_REMEMBERED = 2048

_lock = threading.Lock()
#: parses templates (the syntax only: no loader, sandbox or cache of its own is involved)
_SYNTAX = jinja2.Environment()
_analyses: dict[tuple[str, str], tuple[frozenset[str] | None, tuple[str, ...]]] = {}
#: (folder, template, variable) -> (its real path, that file's ``_identity`` when analysed, its analysis)
_files: dict[tuple[str, str, str], tuple[str, tuple[int, ...] | None, tuple[frozenset[str] | None, tuple[str, ...]] | None]] = {}


def _identity(path: str, real: str) -> tuple[int, ...] | None:
    """What changes when a template file is replaced, written or linked elsewhere: the inode and change
    time (ns; a write sets it, and nothing sets it back) of its path (a link itself) and the inode, size,
    modification and change time of the real file it was read from."""
    try:
        link, found = os.lstat(path), os.stat(real)
    except OSError:
        return None
    return link.st_ino, link.st_ctime_ns, found.st_ino, found.st_size, found.st_mtime_ns, found.st_ctime_ns


def template_reads(templates_dir: Path | str, name: str, also: tuple[str, ...] = (),
                   variable: str = "customer") -> frozenset[str] | None:
    """The keys of ``variable`` that template ``name`` - with every template it extends, includes or
    imports, and the templates ``also`` (a layout whose blocks the engine renders itself) - reads;
    None when some use may read any key."""
    return TemplateReads(templates_dir, variable).of(name, also)


class TemplateReads:
    """``template_reads`` for several templates of one folder, each file read once (a pass's view of it)."""

    def __init__(self, templates_dir: Path | str, variable: str = "customer"):
        self.loader, self.variable = FolderLoader(templates_dir), variable  # the folder's real path, as of now
        self.read: dict[str, tuple[frozenset[str] | None, tuple[str, ...]] | None] = {}

    def of(self, name: str, also: tuple[str, ...] = ()) -> frozenset[str] | None:
        reads: set[str] = set()
        seen: set[str] = set()
        pending = [name, *also]
        while pending:
            current = pending.pop()
            if current in seen:
                continue
            seen.add(current)
            analysed = self._analysed(current)
            if analysed is None or analysed[0] is None:
                return None
            reads |= analysed[0]
            pending += analysed[1]
        return frozenset(reads)

    def _analysed(self, name: str) -> tuple[frozenset[str] | None, tuple[str, ...]] | None:
        if name not in self.read:
            key = (self.loader.folder, name, self.variable)
            path = os.path.join(self.loader.folder, name)
            with _lock:
                known = _files.get(key)
            if known is not None and _identity(path, known[0]) == known[1]:  # the file as analysed before
                self.read[name] = known[2]
                return known[2]
            try:
                source, real, _ = self.loader.get_source(_SYNTAX, name)
                identity = _identity(path, real)
            except (jinja2.TemplateNotFound, OSError, UnicodeDecodeError):
                self.read[name] = None
            else:
                self.read[name] = _analysis(self.variable, source)
                with _lock:
                    if len(_files) >= _REMEMBERED:
                        _files.clear()
                    _files[key] = (real, identity, self.read[name])
        return self.read[name]


def _analysis(variable: str, source: str) -> tuple[frozenset[str] | None, tuple[str, ...]] | None:
    """(keys read or None, the templates it reaches) of one template's text; None when it does not parse
    or reaches a template by a computed name."""
    key = (variable, source)
    with _lock:
        found = _analyses.get(key)
    if found is not None:
        return found
    try:
        tree = _SYNTAX.parse(source)
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
