"""YAML files -> plain data plus a map from document path to line and column.

Owns PyYAML. Reports syntax errors and duplicate keys as ``Issue`` values with
their position and the offending line. Dates stay strings: PyYAML would turn
``2025-01-01`` into a ``date`` that then fails ``type: string`` in the schema
(a trap dbt documented). Nothing here knows what a campaign is.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .errors import Issue

Path_ = tuple  # a document path such as ("steps", 0, "delay")


class _Loader(yaml.SafeLoader):
    """SafeLoader without the implicit timestamp type."""


_Loader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:timestamp"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}


@dataclass
class Document:
    """A loaded YAML file: its data and where each value came from."""

    file: str
    data: Any
    positions: dict[Path_, tuple[int, int]] = field(default_factory=dict)
    issues: list[Issue] = field(default_factory=list)

    def position(self, path: Path_) -> tuple[int | None, int | None]:
        """Line and column of ``path``, or of its nearest ancestor that has one."""
        path = tuple(path)
        while True:
            if path in self.positions:
                return self.positions[path]
            if not path:
                return (1, 1)
            path = path[:-1]

    def issue(self, path: Path_, message: str, fix: str = "", severity: str = "error") -> Issue:
        line, column = self.position(path)
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


def load_yaml_text(text: str, file: str) -> Document:
    """Parse YAML text; syntax errors and duplicate keys become issues."""
    doc = Document(file=file, data=None)
    loader = _Loader(text)
    try:
        node = loader.get_single_node()
        if node is not None:
            doc.data = _build(loader, node, (), doc)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else None
        column = mark.column + 1 if mark else None
        excerpt = _excerpt(text, line)
        problem = exc.problem or str(exc)
        if exc.context:
            problem = f"{problem} ({exc.context})"
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
        doc.issues.append(Issue(file=file, message=f"YAML error: {exc}"))
        doc.data = None
    finally:
        loader.dispose()
    return doc


def load_yaml_file(path: Path, display_name: str | None = None) -> Document:
    name = display_name or str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        return Document(file=name, data=None, issues=[Issue(file=name, message=f"cannot read file: {exc}")])
    return load_yaml_text(text, name)


def _excerpt(text: str, line: int | None) -> str:
    if not line:
        return ""
    lines = text.splitlines()
    start = max(1, line - 1)
    shown = [f"\n    {n:>4} | {lines[n - 1]}" for n in range(start, min(len(lines), line) + 1)]
    return "".join(shown)


def _build(loader: _Loader, node: yaml.Node, path: Path_, doc: Document) -> Any:
    doc.positions[path] = (node.start_mark.line + 1, node.start_mark.column + 1)
    if isinstance(node, yaml.MappingNode):
        loader.flatten_mapping(node)
        result: dict[Any, Any] = {}
        for key_node, value_node in node.value:
            key = loader.construct_object(key_node, deep=True)
            if not isinstance(key, (str, int, float, bool)) and key is not None:
                doc.issues.append(doc.issue(path, "mapping keys must be plain scalars"))
                continue
            child = path + (key,)
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
            result[key] = _build(loader, value_node, child, doc)
            # point the key's own position at the key, which is what editors show
            doc.positions[child] = (key_node.start_mark.line + 1, key_node.start_mark.column + 1)
        return result
    if isinstance(node, yaml.SequenceNode):
        return [_build(loader, item, path + (i,), doc) for i, item in enumerate(node.value)]
    return loader.construct_object(node, deep=True)
