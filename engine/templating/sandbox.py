"""The template sandbox: read-only data and render budgets.

Owns everything that stands between a template author and the engine process:

- ``TemplateSandbox``: Jinja2's ``ImmutableSandboxedEnvironment`` (no
  attribute starting with ``_``, no method that changes a list, dict or set),
  plus bounds on what one render may cost: loop iterations, the size of any
  string or list an operator, filter or method builds, the size of big
  integers, the total output, nested calls and CPU time. A bound is checked
  *before* the work it protects (``7 ** 300000000`` is refused from the sizes
  of its operands, never computed), so a render stops with ``BudgetExceeded``
  naming the bound instead of hanging or filling memory. Loops are counted by
  compiling every ``{% for %}`` over a counting iterator (a code generator
  subclass, Jinja's documented extension point), and all output and ``~``
  concatenations through the budget too.
- ``read_only``: the copy of the engine's data a template receives.

The budget of the render in progress lives in a ``ContextVar``; ``budget()``
opens one around a render. Nothing here knows about campaigns or channels.
"""
from __future__ import annotations

import contextvars
import datetime as dt
import functools
import re
import string
import time
import types
from contextlib import contextmanager
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Iterator

import jinja2
from jinja2 import nodes
from jinja2.compiler import CodeGenerator
from jinja2.filters import make_attrgetter
from jinja2.runtime import BlockReference, LoopContext, TemplateReference
from jinja2.sandbox import ImmutableSandboxedEnvironment, SecurityError
from jinja2.utils import generate_lorem_ipsum
from markupsafe import EscapeFormatter, Markup

@dataclass(frozen=True)
class Limits:
    """What one render (all parts of one message) may cost."""

    iterations: int = 100_000     # loop iterations, all loops together
    size: int = 1_000_000         # characters (or items) of one string or list an operation builds
    built: int = 20_000_000       # ... and of all of them together (kept alive in a list, they add up)
    output: int = 2_000_000       # characters of all output produced, blocks rendered twice included
    int_bits: int = 10_000        # bits of an integer an operator builds (about 3,000 digits)
    calls: int = 64               # nested calls (macros, self.block(), recursive loops)
    seconds: float = 2.0          # wall-clock time (a thread CPU clock is a slow system call on some hosts)


class BudgetExceeded(SecurityError):
    """A render went past one of its ``Limits``; the message names the bound."""


# --- the budget of one render ------------------------------------------------------------


class Budget:
    """Counters of one render, checked against ``Limits``."""

    __slots__ = ("limits", "iterations", "built", "output", "depth", "ticks", "deadline")

    def __init__(self, limits: Limits):
        self.limits = limits
        self.iterations = 0
        self.built = 0
        self.output = 0
        self.depth = 0
        self.ticks = 0
        self.deadline = time.monotonic() + limits.seconds

    def tick(self) -> None:
        self.ticks += 1
        if not self.ticks & 31 and time.monotonic() > self.deadline:
            raise BudgetExceeded(f"the render takes longer than its time budget ({self.limits.seconds:g} s)")

    def iterate(self) -> None:
        self.iterations += 1
        if self.iterations > self.limits.iterations:
            raise BudgetExceeded(f"the loops run more than {self.limits.iterations} iterations (the iteration budget)")
        self.tick()

    def produce(self, size: int, what: str) -> None:
        """Refuse to build a string or list of ``size`` characters or items."""
        if size > self.limits.size:
            raise BudgetExceeded(f"{what} would be {size} long, more than the size budget of {self.limits.size}")
        self.built += max(size, 0)
        if self.built > self.limits.built:
            raise BudgetExceeded(f"the template builds more than {self.limits.built} characters of strings and lists "
                                 "in all (the size budget)")
        self.tick()

    def emit(self, size: int) -> None:
        self.output += size
        if self.output > self.limits.output:
            raise BudgetExceeded(f"the template produces more than {self.limits.output} characters (the output budget)")
        self.tick()

    def int_result(self, bits: int, what: str) -> None:
        if bits > self.limits.int_bits:
            raise BudgetExceeded(f"{what} would have about {bits} bits, more than the integer budget of {self.limits.int_bits}")
        self.tick()


_current: contextvars.ContextVar[Budget | None] = contextvars.ContextVar("template_budget", default=None)


@contextmanager
def budget(limits: Limits) -> Iterator[Budget]:
    """Open a budget for the renders inside the ``with`` (nested opens share the outer one)."""
    if _current.get() is not None:
        yield _current.get()
        return
    token = _current.set(Budget(limits))
    try:
        yield _current.get()
    finally:
        _current.reset(token)


def emitted(size: int) -> None:
    """Charge ``size`` characters of output the engine produced for the template (a footer rendered once)."""
    _budget().emit(size)


def _budget() -> Budget:
    current = _current.get()
    if current is None:
        raise BudgetExceeded("a template was rendered outside a budget")
    return current


# --- size estimates ----------------------------------------------------------------------

_SIZED = (str, bytes, bytearray, list, tuple)
#: %-format conversions: flags, width, precision
_PRINTF = re.compile(r"%(?:\([^)]*\))?[#0\- +]*(\*|\d+)?(?:\.(\*|\d+))?[hlL]?([a-zA-Z%])")
#: the width and precision of a str.format spec
_FORMAT_SPEC = re.compile(r"^(?:.?[<>=^])?[+\- ]?z?#?0?(\d+)?[,_]?(?:\.(\d+))?")


def _length(value: Any) -> int:
    return len(value) if isinstance(value, _SIZED) else len(str(value)) if isinstance(value, (int, float, Decimal)) else 0


def _check_printf(fmt: str, args: Any) -> None:
    b = _budget()
    for match in _PRINTF.finditer(fmt):
        width, precision, _ = match.groups()
        if "*" in (width, precision):
            raise BudgetExceeded("a '*' width or precision in a %-format is not allowed in templates")
        for number in (width, precision):
            if number:
                b.produce(int(number), "a %-format field")
    values = args if isinstance(args, tuple) else tuple(args.values()) if isinstance(args, dict) else (args,)
    b.produce(len(fmt) + sum(_length(v) for v in values), "a %-formatted string")


def _check_format_spec(spec: str) -> None:
    match = _FORMAT_SPEC.match(spec)
    for number in match.groups() if match else ():
        if number:
            _budget().produce(int(number), "a format field")


def _check_join(parts: list, separator: Any) -> None:
    total = sum(_length(p) for p in parts) + max(len(parts) - 1, 0) * _length(separator)
    _budget().produce(total, "a joined string")


def _check_replace(text: Any, old: Any, new: Any, count: int | None = None) -> None:
    occurrences = (len(text) + 1) if not old else text.count(old)
    if count is not None and count >= 0:
        occurrences = min(occurrences, count)
    _budget().produce(len(text) + occurrences * max(_length(new) - _length(old), 0), "a replaced string")


def _check_width(width: Any, what: str) -> None:
    if isinstance(width, int):
        _budget().produce(width, what)


# --- checked versions of str methods a template may call -----------------------------------

#: str (and bytes, Markup) methods that cannot build anything larger than their input
_STR_METHODS = frozenset("""
    capitalize casefold count endswith find index isalnum isalpha isascii isdecimal isdigit isidentifier
    islower isnumeric isprintable isspace istitle isupper lower lstrip partition removeprefix removesuffix
    rfind rindex rpartition rsplit rstrip split splitlines startswith strip swapcase title upper
    decode hex escape unescape striptags
""".split())


def _checked_str_method(obj: Any, name: str, method: Any) -> Any:
    """``method`` wrapped with the size check it needs, or None when templates may not call it."""
    if name in ("center", "ljust", "rjust", "zfill"):
        def sized(width, *args):
            _check_width(width, f"str.{name}()")
            return method(width, *args)
        return sized
    if name == "replace":
        def replace(old, new, count=-1):
            _check_replace(obj, old, new, count)
            return method(old, new, count)
        return replace
    if name == "join":
        def join(iterable):
            parts = list(_counted(iterable))
            _check_join(parts, obj)
            return method(parts)
        return join
    return None


# --- the environment -----------------------------------------------------------------------


class _BudgetedCodeGenerator(CodeGenerator):
    """Compiles loops, ``~`` and output so that they pass through the budget."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._counted_iters: set[int] = set()  # ids of the iterables of the loops seen so far

    def visit_For(self, node, frame):
        self._counted_iters.add(id(node.iter))
        super().visit_For(node, frame)

    def visit(self, node, *args, **kwargs):
        if id(node) in self._counted_iters:
            self.write("environment.budgeted_iter(")
            result = super().visit(node, *args, **kwargs)
            self.write(")")
            return result
        return super().visit(node, *args, **kwargs)

    def visit_Template(self, node, frame=None):
        super().visit_Template(node, frame)
        text_only = sorted(block.name for block in node.find_all(nodes.Block) if _text_only(block))
        self.writeline(f"{_TEXT_BLOCKS} = {tuple(text_only)!r}")

    def visit_Concat(self, node, frame):
        if frame.eval_ctx.volatile:
            join = "(markup_join if context.eval_ctx.volatile else str_join)"
        elif frame.eval_ctx.autoescape:
            join = "markup_join"
        else:
            join = "str_join"
        self.write(f"environment.budgeted_concat({join}, (")
        for arg in node.nodes:
            self.visit(arg, frame)
            self.write(", ")
        self.write("))")

    def _output_const_repr(self, group):
        return f"environment.budgeted_emit({super()._output_const_repr(group)})"

    def _output_child_pre(self, node, frame, finalize):
        self.write("environment.budgeted_emit(")
        super()._output_child_pre(node, frame, finalize)

    def _output_child_post(self, node, frame, finalize):
        super()._output_child_post(node, frame, finalize)
        self.write(")")


#: the name under which a compiled template lists its blocks that are nothing but text
_TEXT_BLOCKS = "engine_text_blocks"


def _text_only(block: nodes.Block) -> bool:
    """Whether ``block`` holds only output of template data: no expression, tag or nested block."""
    return not block.required and all(
        isinstance(node, nodes.Output) and all(isinstance(part, nodes.TemplateData) for part in node.nodes) for node in block.body)


class _Counted:
    """An iterable whose iteration counts against the budget; keeps ``len`` when the original has it."""

    __slots__ = ("_inner",)

    def __init__(self, inner: Any):
        self._inner = inner

    def __len__(self) -> int:
        return len(self._inner)

    def __iter__(self):
        b = _budget()
        for item in self._inner:
            b.iterate()
            yield item


def _counted(iterable: Any) -> Iterator:
    b = _budget()
    for item in iterable:
        b.iterate()
        yield item


class _SandboxedFormatter(string.Formatter):
    """``str.format`` in templates: attribute access through the sandbox, widths within the budget."""

    def __init__(self, env: "TemplateSandbox"):
        super().__init__()
        self._env = env

    def get_field(self, field_name, args, kwargs):
        from _string import formatter_field_name_split  # type: ignore[import-not-found]
        first, rest = formatter_field_name_split(field_name)
        obj = self.get_value(first, args, kwargs)
        for is_attr, key in rest:
            obj = self._env.getattr(obj, key) if is_attr else self._env.getitem(obj, key)
        return obj, first

    def format_field(self, value, format_spec):
        _check_format_spec(format_spec)
        return super().format_field(value, format_spec)


class _SandboxedEscapeFormatter(_SandboxedFormatter, EscapeFormatter):
    def __init__(self, env: "TemplateSandbox", escape):
        EscapeFormatter.__init__(self, escape)
        self._env = env


class TemplateSandbox(ImmutableSandboxedEnvironment):
    """Jinja2's immutable sandbox with budgets (see the module docstring)."""

    code_generator_class = _BudgetedCodeGenerator
    intercepted_binops = frozenset(["**", "*", "%", "+"])

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.globals["range"] = _budgeted_range
        self.globals["lipsum"] = _bounded_lipsum
        for name, check in _FILTER_CHECKS.items():
            self.filters[name] = _checked_filter(self.filters[name], check)
        self.filters["join"] = _materialized_join(self.filters["join"])
        #: (source, name, filename) -> its syntax tree: the engine's checks (layout lock, declared lists,
        #: inheritance chain) read the same few templates once per message kind; a Renderer shares one
        #: dict between its two environments (parsing does not depend on autoescaping)
        self.parsed: dict[tuple[str, str | None, str | None], nodes.Template] = {}
        #: a block's compiled function -> its output, for blocks that are nothing but text (``constant_block``)
        self.constant_blocks: dict[Any, str | None] = {}

    def parse(self, source: str, name: str | None = None, filename: str | None = None) -> nodes.Template:
        """Jinja's ``parse``, remembered per source (the trees are only read: ``find_all``)."""
        key = (source, name, filename)
        tree = self.parsed.get(key)
        if tree is None:
            tree = self.parsed[key] = super().parse(source, name, filename)
        return tree

    # -- hooks called by the compiled template code

    def budgeted_iter(self, iterable: Any) -> _Counted:
        return _Counted(iterable)

    def budgeted_concat(self, join, parts: tuple) -> str:
        _budget().produce(sum(_length(p) for p in parts), "a ~ concatenation")
        result = join(parts)
        _budget().produce(len(result), "a ~ concatenation")
        return result

    def budgeted_emit(self, text: str) -> str:
        # called for every piece of output: ``Budget.emit`` inlined for the usual case (within the
        # bound, not a tick that looks at the clock); anything else goes through it as it is
        b = _current.get()
        if b is None or b.output + len(text) > b.limits.output or not (b.ticks + 1) & 31:
            _budget().emit(len(text))
            return text
        b.output += len(text)
        b.ticks += 1
        return text

    def call_binop(self, context, operator: str, left: Any, right: Any) -> Any:
        b = _budget()
        if operator == "**":
            if isinstance(left, int) and isinstance(right, int) and right > 0 and abs(left) > 1:
                b.int_result(abs(left).bit_length() * right, "a power")
        elif operator == "*":
            if isinstance(left, int) and isinstance(right, int):
                b.int_result(abs(left).bit_length() + abs(right).bit_length(), "a product")
            elif isinstance(left, _SIZED) and isinstance(right, int):
                b.produce(len(left) * right, "a repeated string or list")
            elif isinstance(right, _SIZED) and isinstance(left, int):
                b.produce(len(right) * left, "a repeated string or list")
        elif operator == "%":
            if isinstance(left, str):
                _check_printf(left, right)
        elif operator == "+":
            if isinstance(left, _SIZED) and isinstance(right, _SIZED):
                b.produce(len(left) + len(right), "a sum of strings or lists")
        return super().call_binop(context, operator, left, right)

    def call(__self, __context, __obj, *args, **kwargs):  # noqa: N805 (Jinja's signature)
        b = _budget()
        b.tick()
        if type(__obj) is BlockReference and not args and kwargs.keys() <= {"_block_vars"}:
            return __self._call_block(b, __obj)
        if isinstance(__obj, LoopContext) and args:  # a recursive loop's next level
            args = (_Counted(args[0]),) + args[1:]
        b.depth += 1
        try:
            if b.depth > b.limits.calls:
                raise BudgetExceeded(f"calls nest deeper than {b.limits.calls} (a macro or recursive loop that never ends?)")
            return super().call(__context, __obj, *args, **kwargs)
        finally:
            b.depth -= 1

    def _call_block(self, b: Budget, block: BlockReference) -> str:
        """``self.title()``: what Jinja's call comes to for a block (no argument, no context passed, safe to
        call), within the nesting bound; a block that is nothing but text gives its text from its first
        render on, charged to the output budget as if it had been rendered again."""
        b.depth += 1
        try:
            if b.depth > b.limits.calls:
                raise BudgetExceeded(f"calls nest deeper than {b.limits.calls} (a macro or recursive loop that never ends?)")
            render = block._stack[block._depth]
            text = self.constant_blocks.get(render)
            if text is not None:
                b.emit(len(text))
                # as BlockReference.__call__ returns it: markup where the caller autoescapes ({% autoescape %} may switch)
                return Markup(text) if block._context.eval_ctx.autoescape else text
            rendered = block()
            if render not in self.constant_blocks and len(self.constant_blocks) < 10_000:
                self.constant_blocks[render] = str(rendered) if self.constant_block(render) else None
            return rendered
        finally:
            b.depth -= 1

    def constant_block(self, render: Any) -> bool:
        """Whether the block whose compiled function is ``render`` is nothing but text (the code generator
        lists such blocks in the template's module: ``_TEXT_BLOCKS``), so its output is the same for every
        context."""
        return (self.finalize is None
                and render.__name__.removeprefix("block_") in getattr(render, "__globals__", {}).get(_TEXT_BLOCKS, ()))

    # -- what a template may touch

    def is_safe_attribute(self, obj: Any, attr: str, value: Any) -> bool:
        if not super().is_safe_attribute(obj, attr, value):
            return False
        if isinstance(obj, (str, bytes, bytearray)) and callable(value):
            return attr in _STR_METHODS
        if isinstance(obj, int) and attr in ("to_bytes", "from_bytes"):
            return False
        return True

    def getattr(self, obj: Any, attribute: str) -> Any:
        if type(obj) is TemplateReference and type(attribute) is str and attribute[:1] != "_":
            # ``self.title``: a block (a TemplateReference has no attribute but private ones), what Jinja's
            # getattr comes to after its getattr fails; an unknown block takes the full path
            try:
                return obj[attribute]
            except KeyError:
                pass
        if type(obj) is ReadOnlyDict and type(attribute) is str and not _dict_attribute(attribute):
            # ``customer.first_name``: what Jinja's getattr comes to for a key that is no attribute of
            # the dict (its getattr fails, the item is returned), without raising AttributeError first
            try:
                return obj[attribute]
            except KeyError:
                pass  # the undefined value, as the full path makes it
        if isinstance(obj, jinja2.Undefined):  # report the first undefined or forbidden step, not this one
            obj._fail_with_undefined_error()
        if isinstance(obj, (str, bytes, bytearray)) and isinstance(attribute, str):
            method = getattr(obj, attribute, None)
            if method is not None and attribute not in _STR_METHODS and attribute not in ("format", "format_map"):
                checked = _checked_str_method(obj, attribute, method)
                if checked is not None:
                    return checked
        if isinstance(obj, (dt.date, dt.time)) and attribute == "strftime":
            def strftime(fmt):
                _budget().produce(len(str(fmt)) * 64, "a strftime() result")
                return obj.strftime(fmt)
            return strftime
        return super().getattr(obj, attribute)

    def getitem(self, obj: Any, argument: Any) -> Any:
        if isinstance(obj, jinja2.Undefined):
            obj._fail_with_undefined_error()
        if isinstance(obj, (str, bytes, bytearray)) and isinstance(argument, str):
            return self.getattr(obj, argument)
        return super().getitem(obj, argument)

    def wrap_str_format(self, value: Any):
        """``str.format`` / ``format_map`` through a formatter that checks attributes and widths."""
        if not isinstance(value, (types.MethodType, types.BuiltinMethodType)) or value.__name__ not in ("format", "format_map"):
            return None
        f_self = value.__self__
        if not isinstance(f_self, str):
            return None
        is_format_map = value.__name__ == "format_map"
        formatter = (_SandboxedEscapeFormatter(self, f_self.escape) if isinstance(f_self, Markup)
                     else _SandboxedFormatter(self))
        str_type = type(f_self)

        def wrapper(*args, **kwargs):
            if is_format_map:
                if kwargs or len(args) != 1:
                    raise TypeError("format_map() takes exactly one mapping")
                args, kwargs = (), args[0]
            _budget().produce(len(f_self), "a format string")
            result = formatter.vformat(f_self, args, kwargs)
            _budget().produce(len(result), "a formatted string")
            return str_type(result)

        return functools.update_wrapper(wrapper, value)


# --- globals and filters ---------------------------------------------------------------------


def _budgeted_range(*args: int) -> range:
    result = range(*args)
    limit = _budget().limits.iterations
    if len(result) > limit:
        raise BudgetExceeded(f"range() of {len(result)} items is more than the iteration budget of {limit}")
    return result


def _bounded_lipsum(n: int = 5, html: bool = True, min: int = 20, max: int = 100) -> str:  # noqa: A002 (Jinja's names)
    _budget().produce(n * max * 12, "lipsum()")
    return generate_lorem_ipsum(n, html, min, max)


def _checked_filter(filter_func, check):
    @functools.wraps(filter_func)
    def checked(*args, **kwargs):
        check(*(args[1:] if hasattr(filter_func, "jinja_pass_arg") else args), **kwargs)
        return filter_func(*args, **kwargs)
    return checked


def _materialized_join(filter_func):
    """``join`` over anything: the items are listed first (counted), then the size is checked."""
    @functools.wraps(filter_func)
    def join(eval_ctx, value, d="", attribute=None):
        parts = list(_counted(value))
        if attribute is not None:
            parts = list(map(make_attrgetter(eval_ctx.environment, attribute), parts))
        return filter_func(eval_ctx, _checked_list(parts, d), d)
    return join


def _checked_list(parts: list, separator: Any) -> list:
    _check_join(parts, separator)
    return parts


def _filter_indent(s="", width=4, first=False, blank=False):
    text = str(s)
    indentation = len(width) if isinstance(width, str) else width if isinstance(width, int) else 0
    _budget().produce(len(text) + (text.count("\n") + 1) * max(indentation, 0), "an indented string")


def _filter_wordwrap(s="", width=79, break_long_words=True, wrapstring=None, break_on_hyphens=True):
    text = str(s)
    _budget().produce(len(text) + (len(text) + 1) * len(wrapstring or "\n"), "a wrapped string")


def _filter_format(value="", *args, **kwargs):
    _check_printf(str(value), kwargs or args)


def _filter_replace(s="", old="", new="", count=None):
    _check_replace(str(s), str(old), new, count)


def _filter_count_argument(index_name: str):
    def check(value=None, count=1, *args, **kwargs):
        if isinstance(count, int):
            _budget().produce(count, f"the {index_name} of a filter")
    return check


def _filter_sum(iterable=(), attribute=None, start=0):
    if not isinstance(start, (int, float, Decimal)):
        raise BudgetExceeded("sum() of anything but numbers is not allowed in templates")


def _filter_tojson(value=None, indent=None):
    if indent is not None and (not isinstance(indent, int) or indent > 16):
        raise BudgetExceeded("tojson indent must be a number up to 16")


def _filter_int(value=None, default=0, base=10):
    if isinstance(value, Decimal) and value.is_finite() and value.adjusted() > 4_000:
        raise BudgetExceeded("the number is too large to convert to an integer")


def _filter_round(value=None, precision=0, method="common"):
    if not isinstance(precision, int) or abs(precision) > 100:
        raise BudgetExceeded("round() precision must be a number between -100 and 100")


def _filter_attr(obj=None, name=""):
    if isinstance(obj, jinja2.Undefined):  # report the first undefined or forbidden step, not this one
        obj._fail_with_undefined_error()


_FILTER_CHECKS = {
    "attr": _filter_attr,
    "center": lambda value="", width=80: _check_width(width, "center"),
    "indent": _filter_indent,
    "wordwrap": _filter_wordwrap,
    "format": _filter_format,
    "replace": _filter_replace,
    "batch": _filter_count_argument("line count"),
    "slice": _filter_count_argument("number of slices"),
    "sum": _filter_sum,
    "tojson": _filter_tojson,
    "int": _filter_int,
    "round": _filter_round,
}


# --- read-only data --------------------------------------------------------------------------


class ReadOnlyDict(dict):
    """A dict a template can read but not change (even outside the sandbox's own checks); made by ``read_only``
    only, which takes one as a finished copy."""

    def _refuse(self, *args, **kwargs):
        raise TypeError("template data is read-only")

    __setitem__ = __delitem__ = clear = pop = popitem = setdefault = update = __ior__ = _refuse  # type: ignore[assignment]


class ReadOnlyList(list):
    def _refuse(self, *args, **kwargs):
        raise TypeError("template data is read-only")

    __setitem__ = __delitem__ = append = extend = insert = pop = remove = clear = sort = reverse = _refuse  # type: ignore[assignment]
    __iadd__ = __imul__ = _refuse  # type: ignore[assignment]


_DICT_ATTRIBUTES: dict[str, bool] = {}


def _dict_attribute(name: str) -> bool:
    """Whether ``name`` is an attribute of ``ReadOnlyDict`` (a method: ``items``, ``get``...), remembered."""
    known = _DICT_ATTRIBUTES.get(name)
    if known is None:
        known = _DICT_ATTRIBUTES[name] = hasattr(ReadOnlyDict, name) if len(_DICT_ATTRIBUTES) < 10_000 else True
    return known


def read_only(value: Any, depth: int = 0) -> Any:
    """A copy of ``value`` whose dicts and lists cannot be changed; other values are immutable already.

    A ``ReadOnlyDict`` or ``ReadOnlyList`` is such a copy already (only this function makes them): it is
    given as it is, so data shared by many renders (the shop's settings, a batch's promotions) is copied
    once, not per message."""
    if type(value) in _READ_ONLY or depth > 8:
        return value
    if isinstance(value, dict):
        copy = ReadOnlyDict(value)  # the dict copied in C, then its containers replaced by read-only copies
        for key, item in value.items():
            if type(item) not in _SCALARS and isinstance(item, _CONTAINERS):
                dict.__setitem__(copy, key, read_only(item, depth + 1))
        return copy
    if isinstance(value, (list, tuple)):
        copy = ReadOnlyList()
        list.extend(copy, (read_only(v, depth + 1) if isinstance(v, _CONTAINERS) else v for v in value))
        return copy if isinstance(value, list) else tuple(copy)
    return value


_CONTAINERS = (dict, list, tuple)
_READ_ONLY = frozenset({ReadOnlyDict, ReadOnlyList})
#: value types that are never containers (checked first: most of a customer's values)
_SCALARS = frozenset({str, int, float, bool, type(None), Decimal, dt.datetime, dt.date})


__all__ = ["Budget", "BudgetExceeded", "Limits", "ReadOnlyDict", "TemplateSandbox", "budget", "emitted", "read_only"]
