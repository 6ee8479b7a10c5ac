"""Undefined template variables in words a template author acts on: which expression, where, did you mean.

Jinja2 reports the first undefined variable in its own terms (``'dict object' has no
attribute 'frist_name'``). This module owns turning that into ``'customer.frist_name'
is undefined (did you mean 'customer.first_name'?)`` at the template's file and line,
and, for validation, finding *every* undefined variable a render reaches rather than
the first: ``RecordingUndefined`` notes each use of an undefined value (its template,
line and the value it was looked up on) and lets the render go on, where
``StrictUndefined`` stops. A test (``is defined``) or the ``default`` filter is not a
use, so they stay allowed. Forbidden operations of the sandbox still raise. Runs only
after a render failed; nothing here renders templates or reads files itself.
"""
from __future__ import annotations

import difflib
import re
import sys
from collections.abc import Mapping
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, Callable

import jinja2
from jinja2 import nodes

_MISSING = jinja2.utils.missing


@dataclass(frozen=True)
class UndefinedUse:
    """One use of an undefined variable: where, what was looked up, and what could have been meant."""

    template: str | None
    line: int | None
    expression: str
    known: tuple[str, ...]  # the names that were there to be used (for did-you-mean)
    owner: str  # "" for a top-level variable, else the expression it was looked up on

    @property
    def message(self) -> str:
        name = self.expression.rsplit(".", 1)[-1] if self.owner else self.expression
        close = difflib.get_close_matches(name, list(self.known), n=2, cutoff=0.6)
        shown = [f"{self.owner}.{c}" if self.owner else c for c in close]
        return f"'{self.expression}' is undefined" + (f" (did you mean {' or '.join(repr(s) for s in shown)}?)" if shown else "")

    @property
    def fix(self) -> str:
        if self.expression.rsplit(".", 1)[-1].startswith("_"):
            return "templates cannot use names starting with _: remove it"
        if not self.known:
            return "remove it, or test it first: {% if x is defined %}"
        what = f"{self.owner} has" if self.owner else "templates of this trigger have"
        return f"{what}: {', '.join(sorted(self.known))}"


_NOTED: ContextVar[list | None] = ContextVar("undefined_uses", default=None)


def _template_position() -> tuple[str | None, int | None]:
    """The innermost template frame on the stack: its name and line."""
    frame = sys._getframe(1)
    while frame is not None:
        template = frame.f_globals.get("__jinja_template__")
        if template is not None:
            return template.name, template.get_corresponding_lineno(frame.f_lineno)
        frame = frame.f_back
    return None, None


class RecordingUndefined(jinja2.Undefined):
    """An undefined value that notes each use (see the module docstring) and acts as empty, false or 0."""

    __slots__ = ()

    def _note(self) -> "RecordingUndefined":
        if self._undefined_exception is not jinja2.UndefinedError:  # a forbidden access: as strict as before
            return super()._fail_with_undefined_error()
        noted = _NOTED.get()
        if noted is not None:
            noted.append((self._undefined_obj, self._undefined_name, *_template_position()))
        return self

    def _fail_with_undefined_error(self, *args: Any, **kwargs: Any) -> "RecordingUndefined":
        return self._note()

    __add__ = __radd__ = __sub__ = __rsub__ = __mul__ = __rmul__ = __div__ = __rdiv__ = _fail_with_undefined_error
    __truediv__ = __rtruediv__ = __floordiv__ = __rfloordiv__ = __mod__ = __rmod__ = _fail_with_undefined_error
    __pos__ = __neg__ = __call__ = __getitem__ = __pow__ = __rpow__ = _fail_with_undefined_error
    __lt__ = __le__ = __gt__ = __ge__ = _fail_with_undefined_error

    def __getattr__(self, name: str) -> Any:
        if name[:2] == "__":
            raise AttributeError(name)
        return self._note()

    def __str__(self) -> str:
        self._note()
        return ""

    def __iter__(self):
        self._note()
        return iter(())

    def __bool__(self) -> bool:
        self._note()
        return False

    def __len__(self) -> int:
        self._note()
        return 0

    def __int__(self) -> int:
        self._note()
        return 0

    def __float__(self) -> float:
        self._note()
        return 0.0

    def __complex__(self) -> complex:
        self._note()
        return 0j

    def __contains__(self, item: Any) -> bool:
        self._note()
        return False

    def __eq__(self, other: Any) -> bool:
        self._note()
        return False

    def __ne__(self, other: Any) -> bool:
        self._note()
        return True

    def __hash__(self) -> int:
        return id(self)


def record_uses(render: Callable[[], Any], context: Mapping, parse: Callable[[str], nodes.Template]) -> list[UndefinedUse]:
    """Every undefined variable ``render`` (over templates built with ``RecordingUndefined``) uses, in order,
    once per template, line and expression; ``parse`` gives a template's syntax tree by name, ``context`` the
    top-level variables. A failure other than an undefined variable ends the render; what came before counts."""
    noted: list = []
    token = _NOTED.set(noted)
    try:
        render()
    except Exception:  # noqa: BLE001 - the caller reports the first failure already; these are extra
        pass
    finally:
        _NOTED.reset(token)
    uses: list[UndefinedUse] = []
    seen = set()
    for obj, name, template, line in noted:
        if name is None:
            continue
        owner = "" if obj is _MISSING else _owner_text(template, line, name, parse) or type(obj).__name__
        expression = f"{owner}.{name}" if owner else str(name)
        known = tuple(str(k) for k in (context if obj is _MISSING else obj if isinstance(obj, Mapping) else ()))
        key = (template, line, expression)
        if key not in seen:
            seen.add(key)
            uses.append(UndefinedUse(template, line, expression, known, owner))
    return uses


_JINJA_MESSAGES = (
    re.compile(r"^'(?P<name>[^']+)' is undefined$"),
    re.compile(r"^'.+' has no (attribute|element) '(?P<name>[^']+)'$"),
)


def describe(exc: jinja2.UndefinedError, template: str | None, line: int | None,
             parse: Callable[[str], nodes.Template]) -> str:
    """Jinja's message of ``exc`` in the template's own terms: ``'customer.frist_name' is undefined``."""
    message = exc.message or ""
    for pattern in _JINJA_MESSAGES:
        match = pattern.match(message)
        if match:
            name = match["name"]
            owner = _owner_text(template, line, name, parse) if pattern is not _JINJA_MESSAGES[0] else ""
            return f"'{owner}.{name}' is undefined" if owner else f"'{name}' is undefined"
    return message


def _owner_text(template: str | None, line: int | None, name: str, parse: Callable[[str], nodes.Template]) -> str:
    """The expression ``name`` was looked up on at ``line`` of ``template`` (``customer`` for
    ``customer.frist_name``), as written; "" when it cannot be told."""
    if template is None or line is None:
        return ""
    try:
        tree = parse(template)
    except Exception:  # noqa: BLE001 - a name is a nicety; the position is given anyway
        return ""
    for node in tree.find_all((nodes.Getattr, nodes.Getitem)):
        looked_up = node.attr if isinstance(node, nodes.Getattr) else getattr(node.arg, "value", None)
        if node.lineno == line and looked_up == name:
            return _text(node.node)
    return ""


def _text(node: nodes.Node) -> str:
    """A short expression as a template author wrote it."""
    if isinstance(node, nodes.Name):
        return node.name
    if isinstance(node, nodes.Getattr):
        return f"{_text(node.node)}.{node.attr}"
    if isinstance(node, nodes.Getitem) and isinstance(node.arg, nodes.Const):
        return f"{_text(node.node)}[{node.arg.value!r}]"
    if isinstance(node, nodes.Call):
        return f"{_text(node.node)}()"
    return "(...)"
