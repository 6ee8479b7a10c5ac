"""dbt references in engine.yaml: ``dbt: ref('customers')`` / ``dbt: source('shop', 'orders')`` -> a table name.

Owns reading a dbt project's ``target/manifest.json`` (written by ``dbt parse``,
``compile``, ``run`` or ``build``) and resolving a ``ref()`` or ``source()`` the
way dbt does: a model, seed or snapshot by name (optionally its package and
version; the root project's own before a package's, the latest version unless one is named), a source by source and table name, to the relation
``database.schema.alias`` (``identifier`` for sources) in the warehouse's
dialect. Every failure is a ``DbtError`` with a fix (did-you-mean on names).
It must not connect to the warehouse or run dbt; ``config`` turns errors into
issues at the line of engine.yaml.
"""
from __future__ import annotations

import difflib
import json
import re
from dataclasses import dataclass
from pathlib import Path

from sqlglot import exp

#: the manifest's path, relative to the project, when engine.yaml's dbt.manifest does not say
DEFAULT_MANIFEST = "target/manifest.json"
#: what ref() can name: dbt resolves ref() among these resource types
REFERABLE = ("model", "seed", "snapshot")

_STRING = r"""\s*(?:'([^'\\]*)'|"([^"\\]*)")\s*"""
_VERSION = r"""\s*(?:v|version)\s*=\s*(?:'([^'\\]*)'|"([^"\\]*)"|(\d+(?:\.\d+)?))\s*"""
_REF = re.compile(rf"^\s*ref\s*\({_STRING}(?:,{_STRING})?(?:,{_VERSION})?\)\s*$")
_SOURCE = re.compile(rf"^\s*source\s*\({_STRING},{_STRING}\)\s*$")
SYNTAX = "write ref('model_name'), ref('package', 'model_name'), ref('model_name', v=2) or source('source_name', 'table_name')"


class DbtError(Exception):
    def __init__(self, message: str, fix: str):
        super().__init__(message)
        self.message, self.fix = message, fix


@dataclass(frozen=True)
class Reference:
    """A parsed ``ref(...)`` (kind 'ref': package may be None) or ``source(...)`` (kind 'source')."""

    kind: str
    name: str
    package: str | None = None  # ref: the dbt package; source: the source's name
    version: str | None = None

    def __str__(self) -> str:
        if self.kind == "source":
            return f"source('{self.package}', '{self.name}')"
        args = ([f"'{self.package}'"] if self.package else []) + [f"'{self.name}'"]
        return f"ref({', '.join(args + ([f'v={self.version}'] if self.version else []))})"


def parse_reference(text: str) -> Reference:
    if match := _REF.match(text):
        first, second = match.group(1) or match.group(2), match.group(3) or match.group(4)
        version = match.group(5) or match.group(6) or match.group(7)
        if second is None:
            return Reference("ref", first, None, version)
        return Reference("ref", second, first, version)
    if match := _SOURCE.match(text):
        return Reference("source", match.group(3) or match.group(4), match.group(1) or match.group(2))
    raise DbtError(f"'{text}' is not a dbt reference", fix=SYNTAX)


class Manifest:
    """The nodes and sources of one manifest.json, read once per engine.yaml load."""

    def __init__(self, path: Path, shown: str):
        self.shown = shown
        if not path.is_file():
            raise DbtError(f"no dbt manifest at {shown}",
                           fix="run `dbt parse` (or dbt compile/run/build) in the dbt project, or point dbt.manifest "
                               "in engine.yaml at its target/manifest.json")
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            raise DbtError(f"cannot read the dbt manifest {shown}: {exc}",
                           fix="run `dbt parse` again to rewrite it") from None
        if not isinstance(data, dict) or not isinstance(data.get("nodes"), dict):
            raise DbtError(f"{shown} is not a dbt manifest (no 'nodes')",
                           fix="point dbt.manifest at the target/manifest.json that dbt writes")
        self.project = (data.get("metadata") or {}).get("project_name")
        self.nodes = [n for n in data["nodes"].values() if isinstance(n, dict) and n.get("resource_type") in REFERABLE]
        self.sources = [s for s in (data.get("sources") or {}).values() if isinstance(s, dict)]
        self.disabled = {n.get("name") for entries in (data.get("disabled") or {}).values() if isinstance(entries, list)
                         for n in entries if isinstance(n, dict)}

    def relation(self, reference: Reference, dialect: str) -> str:
        """The table name ``reference`` stands for, as ``database.schema.alias`` in ``dialect``."""
        if reference.kind == "source":
            node = self._source(reference)
            return _relation(node, node.get("identifier") or node.get("name"), dialect)
        node = self._ref(reference)
        return _relation(node, node.get("alias") or node.get("name"), dialect)

    def _ref(self, reference: Reference) -> dict:
        found = [n for n in self.nodes if n.get("name") == reference.name
                 and (reference.package is None or n.get("package_name") == reference.package)]
        if not found:
            raise self._unknown(reference, sorted({n.get("name", "") for n in self.nodes}), "model", "models, seeds and snapshots")
        if reference.version is not None:
            found = [n for n in found if str(n.get("version")) == reference.version]
            if not found:
                raise DbtError(f"{reference}: the manifest has no version {reference.version} of '{reference.name}'",
                               fix="versions in the manifest: " + ", ".join(sorted({str(n.get('version')) for n in
                                   self.nodes if n.get('name') == reference.name})))
        elif len(found) > 1 and all(n.get("version") is not None for n in found):
            latest = [n for n in found if str(n.get("version")) == str(found[0].get("latest_version"))]
            found = latest or found
        if len(found) > 1 and reference.package is None:  # as dbt does: the root project's own model first
            found = [n for n in found if n.get("package_name") == self.project] or found
        packages = sorted({n.get("package_name", "?") for n in found})
        if len(found) > 1:
            raise DbtError(f"{reference} is ambiguous: '{reference.name}' is in the packages {', '.join(packages)}",
                           fix=f"name the package: ref('{packages[0]}', '{reference.name}')")
        return found[0]

    def _source(self, reference: Reference) -> dict:
        for node in self.sources:
            if node.get("source_name") == reference.package and node.get("name") == reference.name:
                return node
        known = sorted(f"{s.get('source_name')}.{s.get('name')}" for s in self.sources)
        raise self._unknown(reference, known, "source", "sources")

    def _unknown(self, reference: Reference, known: list[str], noun: str, plural: str) -> DbtError:
        if reference.kind == "ref" and reference.name in self.disabled:
            return DbtError(f"{reference}: '{reference.name}' is disabled in the dbt project ({self.shown})",
                            fix="enable it in dbt (enabled: true), run `dbt parse`, or map another model")
        wanted = reference.name if reference.kind == "ref" else f"{reference.package}.{reference.name}"
        close = difflib.get_close_matches(wanted, known, n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        listed = ", ".join(known[:20]) + (", ..." if len(known) > 20 else "")
        return DbtError(f"{reference}: no {noun} '{wanted}' in the dbt manifest {self.shown}{hint}",
                        fix=f"{plural} in the manifest: {listed}" if known
                        else f"the manifest has no {plural}; run `dbt parse` after adding them")


def _relation(node: dict, name: str, dialect: str) -> str:
    """``database.schema.name``, each part quoted only where the dialect needs it; empty parts left out."""
    database, schema = node.get("database") or None, node.get("schema") or None
    table = exp.Table(this=exp.to_identifier(name),
                      db=exp.to_identifier(schema) if schema else None,
                      catalog=exp.to_identifier(database) if database and schema else None)
    return table.sql(dialect=dialect)
