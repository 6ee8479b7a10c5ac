"""YAML files -> plain data plus a map from document path to line and column.

Owns PyYAML. Reports syntax errors and duplicate keys as ``Issue`` values with
their position and the offending line. A keyed value's position is its key's;
scalars also remember where they are in the text, so an error inside one (a
filter expression) can point at the exact character. Dates stay strings: PyYAML
would turn ``2025-01-01`` into a ``date`` that then fails ``type: string`` in
the schema (a trap dbt documented). Nothing here knows what a campaign is.

Hostile files are bounded before they cost anything: a file larger than
``MAX_FILE_BYTES``, nesting deeper than ``MAX_DEPTH``, or more than
``MAX_NODES`` values once every alias is expanded (a "billion laughs" of
nested ``*aliases`` is refused while it is being composed, at the alias
that crosses the bound) is an issue at its line, as is a character YAML
does not allow (a NUL byte, also one written as an escape) or a number too
long to read.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import yaml

from engine.errors import Issue

Path_ = tuple  # a document path such as ("steps", 0, "delay")

#: A campaign file is a few kilobytes; engine.yaml too.
MAX_FILE_BYTES = 1024 * 1024
#: Values (scalars, lists, mappings) a document may hold with its aliases expanded.
MAX_NODES = 50_000
#: Lists and mappings inside each other; the schemas need fewer than ten.
MAX_DEPTH = 64


class LimitExceeded(yaml.YAMLError):
    """A document is too large, too deep or expands to too much; stops composing at ``mark``."""

    def __init__(self, mark, message: str, fix: str):
        super().__init__(message)
        self.mark, self.message, self.fix = mark, message, fix


class _Loader(yaml.SafeLoader):
    """SafeLoader without the implicit timestamp type, counting what it composes.

    ``compose_node`` keeps the number of values the document expands to: a
    node adds itself and its children, an alias adds the expanded size of its
    anchor (an anchor still being composed, i.e. a recursive alias, counts
    one; ``_build`` reports it). Composing stops with ``LimitExceeded`` as
    soon as the count passes ``MAX_NODES`` or the nesting passes ``MAX_DEPTH``.
    """

    def __init__(self, stream):
        super().__init__(stream)
        self._expanded = 0  # values composed so far, aliases expanded
        self._sizes: dict[int, int] = {}  # id(node) -> values it expands to
        self._depth = 0

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            mark = self.peek_event().start_mark
            node = super().compose_node(parent, index)
            self._count(self._sizes.get(id(node), 1), mark, alias=True)
            return node
        mark = self.peek_event().start_mark
        self._depth += 1
        if self._depth > MAX_DEPTH:
            raise LimitExceeded(mark, f"the YAML is nested more than {MAX_DEPTH} levels deep",
                                fix="flatten the lists and mappings; a campaign needs only a few levels")
        before = self._expanded
        node = super().compose_node(parent, index)
        self._depth -= 1
        self._count(1, mark)
        self._sizes[id(node)] = self._expanded - before
        return node

    def _count(self, size: int, mark, alias: bool = False) -> None:
        self._expanded += size
        if self._expanded > MAX_NODES:
            what = f"this *alias repeats {size:,} values and the" if alias else "the"
            raise LimitExceeded(mark, f"{what} file expands to more than {MAX_NODES:,} values",
                                fix="write the values out instead of nesting *aliases of *aliases; "
                                    "a campaign file holds a few hundred values")


_Loader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:timestamp"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}


class Scalar(NamedTuple):
    """Where a scalar value is in the text: 0-based start and end offsets, 1-based line and column."""

    start: int
    end: int
    line: int
    column: int
    value: Any


@dataclass
class Document:
    """A loaded YAML file: its data and where each value came from."""

    file: str
    data: Any
    positions: dict[Path_, tuple[int, int]] = field(default_factory=dict)
    issues: list[Issue] = field(default_factory=list)
    text: str = ""
    scalars: dict[Path_, Scalar] = field(default_factory=dict)

    def position(self, path: Path_) -> tuple[int | None, int | None]:
        """Line and column of ``path``, or of its nearest ancestor that has one."""
        path = tuple(path)
        while True:
            if path in self.positions:
                return self.positions[path]
            if not path:
                return (1, 1)
            path = path[:-1]

    def value_position(self, path: Path_, offset: int | None = None) -> tuple[int | None, int | None]:
        """Line and column of character ``offset`` of the string at ``path``.

        Maps through quoting, folding and block scalars by finding the same
        occurrence of the word at ``offset`` in the raw text; falls back to the
        start of the value (and to ``position`` for a value that is no scalar).
        """
        scalar = self.scalars.get(tuple(path))
        if scalar is None:
            return self.position(path)
        value = scalar.value
        if offset is None or not isinstance(value, str) or not 0 <= offset < len(value) or value[offset].isspace():
            return scalar.line, scalar.column
        word = value[offset:].split(None, 1)[0]
        nth = _occurrences(value, word).index(offset)
        found = _occurrences(self.text[scalar.start:scalar.end], word)
        if nth >= len(found):
            return scalar.line, scalar.column
        index = scalar.start + found[nth]
        return self.text.count("\n", 0, index) + 1, index - self.text.rfind("\n", 0, index)

    def issue(self, path: Path_, message: str, fix: str = "", severity: str = "error",
              position: tuple[int | None, int | None] | None = None) -> Issue:
        """An issue at ``path`` (at ``position`` instead, when given)."""
        line, column = position or self.position(path)
        return Issue(
            file=self.file,
            line=line,
            column=column,
            path=format_path(path),
            message=message,
            fix=fix,
            severity=severity,
        )


def display_path(path: Path) -> str:
    """How a file is named in messages: relative to the working directory when it is under it."""
    try:
        return str(path.resolve().relative_to(Path.cwd()))
    except (ValueError, OSError, RuntimeError):  # RuntimeError: a symlink loop (load_yaml_file reports it)
        return str(path)


def format_path(path: Path_) -> str:
    """``("steps", 0, "delay")`` -> ``steps[0].delay``."""
    text = ""
    for part in path:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += ("." if text else "") + str(part)
    return text


def _occurrences(text: str, word: str) -> list[int]:
    found, index = [], text.find(word)
    while index >= 0:
        found.append(index)
        index = text.find(word, index + 1)
    return found


def load_yaml_text(text: str, file: str) -> Document:
    """Parse YAML text; syntax errors and duplicate keys become issues."""
    doc = Document(file=file, data=None, text=text)
    try:
        loader = _Loader(text)  # the reader checks every character first
    except yaml.reader.ReaderError as exc:
        doc.issues.append(_reader_issue(text, file, exc))
        return doc
    try:
        node = loader.get_single_node()
        if node is not None:
            doc.data = _build(loader, node, (), doc, {})
    except LimitExceeded as exc:
        doc.issues.append(Issue(file=file, line=exc.mark.line + 1, column=exc.mark.column + 1,
                                message=exc.message, fix=exc.fix))
        doc.data = None
    except yaml.reader.ReaderError as exc:  # a character the reader meets while scanning
        doc.issues.append(_reader_issue(text, file, exc))
        doc.data = None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else None
        column = mark.column + 1 if mark else None
        excerpt = _excerpt(text, line)
        problem = exc.problem or str(exc)
        if exc.context:
            context = exc.context
            # the problem is often only noticed lines after its cause, e.g. an unclosed bracket
            if exc.context_mark and exc.problem_mark and exc.context_mark.line != exc.problem_mark.line:
                context += f" started on line {exc.context_mark.line + 1}, column {exc.context_mark.column + 1}"
            problem = f"{problem} ({context})"
        doc.issues.append(
            Issue(
                file=file,
                line=line,
                column=column,
                message=f"YAML syntax error: {problem}{excerpt}",
                fix="check indentation and quoting on this line; quote values that contain ': ' or start with special characters",
            )
        )
        doc.data = None
    except yaml.YAMLError as exc:  # pragma: no cover - non-marked errors are rare
        doc.issues.append(Issue(file=file, message=f"YAML error: {exc}", fix="check the file's YAML syntax"))
        doc.data = None
    finally:
        loader.dispose()
    return doc


def _reader_issue(text: str, file: str, exc: yaml.reader.ReaderError) -> Issue:
    """A character YAML does not allow (NUL, other control characters), at its line and column."""
    position = max(0, min(exc.position, len(text)))
    line = text.count("\n", 0, position) + 1
    column = position - text.rfind("\n", 0, position)
    character = exc.character if isinstance(exc.character, str) else chr(exc.character)
    name = "a NUL byte" if character == "\0" else f"the control character U+{ord(character):04X}"
    return Issue(file=file, line=line, column=column,
                 message=f"the file contains {name}, which YAML does not allow",
                 fix="remove it: campaign files are plain UTF-8 text (write special characters as \\uXXXX inside double quotes)")


def load_yaml_file(path: Path, display_name: str | None = None) -> Document:
    """Read and parse one file: not a regular file, too large, not UTF-8 or unreadable are issues."""
    name = display_name or str(path)

    def problem(message: str, fix: str = "make it a readable UTF-8 text file") -> Document:
        return Document(file=name, data=None, issues=[Issue(file=name, message=message, fix=fix)])

    try:
        if path.is_symlink() and not path.exists():
            return problem("a symbolic link that leads nowhere (a loop, or its target is missing)",
                           fix="remove the link or point it at a campaign file")
        if not path.is_file():
            return problem("not a regular file", fix="campaign files are plain text files; remove it")
        with path.open("rb") as handle:
            data = handle.read(MAX_FILE_BYTES + 1)
        if len(data) > MAX_FILE_BYTES:
            return problem(f"the file is larger than {MAX_FILE_BYTES // 1024} KiB",
                           fix="a campaign file is a few kilobytes; split it or remove what does not belong")
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        return Document(file=name, data=None, issues=[Issue(
            file=name, line=line, message=f"the file is not UTF-8 text (byte 0x{data[exc.start]:02x} on line {line})",
            fix="save it as UTF-8")])
    except (OSError, RuntimeError) as exc:  # RuntimeError: pathlib's symlink loop
        return problem(f"cannot read file: {exc}")
    return load_yaml_text(text, name)


def _excerpt(text: str, line: int | None) -> str:
    if not line:
        return ""
    lines = text.splitlines()
    start = max(1, line - 1)
    shown = [f"\n    {n:>4} | {lines[n - 1]}" for n in range(start, min(len(lines), line) + 1)]
    return "".join(shown)


_BUILDING = object()  # marks a node whose value is being built (to detect recursive aliases)


def _build(loader: _Loader, node: yaml.Node, path: Path_, doc: Document, built: dict[int, Any]) -> Any:
    """The value of ``node``, recording positions; ``built`` holds the values of
    nodes already built, so an alias (``*name``) reuses its anchor's value."""
    doc.positions[path] = (node.start_mark.line + 1, node.start_mark.column + 1)
    if id(node) in built:
        if built[id(node)] is _BUILDING:
            doc.issues.append(doc.issue(path, "an alias refers to a value that contains it",
                                        fix="remove the recursive *alias; YAML data here must be a tree"))
            return None
        return built[id(node)]
    built[id(node)] = _BUILDING
    built[id(node)] = value = _build_node(loader, node, path, doc, built)
    return value


def _build_node(loader: _Loader, node: yaml.Node, path: Path_, doc: Document, built: dict[int, Any]) -> Any:
    if isinstance(node, yaml.MappingNode):
        own = sum(1 for key_node, _ in node.value if key_node.tag != "tag:yaml.org,2002:merge")
        loader.flatten_mapping(node)
        merged = len(node.value) - own  # pairs from ``<<: *anchor`` come first; later keys override them
        result: dict[Any, Any] = {}
        overridable: set[Any] = set()
        for index, (key_node, value_node) in enumerate(node.value):
            try:
                key = loader.construct_object(key_node, deep=True)
            except ValueError:  # a number key too long to read
                key = []
            if not isinstance(key, (str, int, float, bool)) and key is not None:
                doc.issues.append(doc.issue(path, "mapping keys must be plain scalars",
                                            fix="use a plain word as the key, e.g. name:"))
                continue
            child = path + (key,)
            if key in overridable:
                del result[key]
                overridable.discard(key)
            if index < merged:
                overridable.add(key)
            if key in result:
                first_line, _ = doc.positions.get(child, (None, None))
                doc.issues.append(
                    Issue(
                        file=doc.file,
                        line=key_node.start_mark.line + 1,
                        column=key_node.start_mark.column + 1,
                        path=format_path(child),
                        message=f"duplicate key '{key}' (first defined on line {first_line})",
                        fix="remove one of the two keys; YAML would silently keep only the last",
                    )
                )
                continue
            result[key] = _build(loader, value_node, child, doc, built)
            # point the key's own position at the key, which is what editors show
            doc.positions[child] = (key_node.start_mark.line + 1, key_node.start_mark.column + 1)
        return result
    if isinstance(node, yaml.SequenceNode):
        return [_build(loader, item, path + (i,), doc, built) for i, item in enumerate(node.value)]
    try:
        value = loader.construct_object(node, deep=True)
    except ValueError:  # int() refuses numbers of more than 4,300 digits
        doc.issues.append(doc.issue(path, "this number is too long to read",
                                    fix="write a number of a few digits, or quote it to make it a string",
                                    position=(node.start_mark.line + 1, node.start_mark.column + 1)))
        return None
    if isinstance(value, str) and "\0" in value:  # an escaped NUL ("\0", "\x00"): file names and URLs end there
        doc.issues.append(doc.issue(path, "this string contains a NUL character (written \\0 or \\x00)",
                                    fix="remove it; no setting, name, path or filter takes a NUL character",
                                    position=(node.start_mark.line + 1, node.start_mark.column + 1)))
        return None
    doc.scalars[path] = Scalar(node.start_mark.index, node.end_mark.index,
                               node.start_mark.line + 1, node.start_mark.column + 1, value)
    return value
