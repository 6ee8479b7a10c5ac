"""YAML files -> plain data plus a map from document path to line and column.

Owns PyYAML. Reports syntax errors and duplicate keys as ``Issue`` values with
their position and the offending line. A keyed value's position is its key's;
scalars also remember where they are in the text, so an error inside one (a
filter expression) can point at the exact character. Dates stay strings: PyYAML
would turn ``2025-01-01`` into a ``date`` that then fails ``type: string`` in
the schema (a trap dbt documented). Nothing here knows what a campaign is.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import yaml

from .errors import Issue

Path_ = tuple  # a document path such as ("steps", 0, "delay")


class _Loader(yaml.SafeLoader):
    """SafeLoader without the implicit timestamp type."""


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
    loader = _Loader(text)
    try:
        node = loader.get_single_node()
        if node is not None:
            doc.data = _build(loader, node, (), doc, {})
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


def load_yaml_file(path: Path, display_name: str | None = None) -> Document:
    name = display_name or str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        return Document(file=name, data=None, issues=[Issue(file=name, message=f"cannot read file: {exc}",
                                                            fix="make it a readable UTF-8 text file")])
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
            key = loader.construct_object(key_node, deep=True)
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
    value = loader.construct_object(node, deep=True)
    doc.scalars[path] = Scalar(node.start_mark.index, node.end_mark.index,
                               node.start_mark.line + 1, node.start_mark.column + 1, value)
    return value
