"""Trigger kinds live in one place: engine/sql/triggers/, one module per kind, listed in its registry.

The registry is the only way the engine tells kinds apart: every model trigger class
belongs to exactly one registered kind, defined in its own module, which provides each
capability (parse, check, instances, ...) itself or takes the default of base.py; the
campaign schema names exactly the registered kinds; and no module outside the package
tests a trigger's class or compares its kind (an AST check, shown to fail on such code).
"""
from __future__ import annotations

import ast
import dataclasses
import importlib
import inspect
import json
import pkgutil
from pathlib import Path

import pytest

import engine
import engine.sql.triggers as triggers_package
from engine.model import Trigger
from engine.sql.triggers.base import TriggerKind
from engine.sql.triggers.registry import KINDS, kind_named, kind_of

PACKAGE = Path(engine.__file__).resolve().parent
TRIGGERS = Path(triggers_package.__file__).resolve().parent
SCHEMA = PACKAGE.parent / "schema" / "campaign.schema.json"
#: what the package itself is made of, besides one module per kind
SHARED = {"base", "registry"}
#: what every kind must write itself (the rest has defaults in base.py)
OWN = ("parse", "instances")
CAPABILITIES = ("parse", "check", "instances", "conditions", "window", "entries_insert", "describe",
                "explain_instance", "backtest_refusal")

KIND_MODULES = sorted(info.name for info in pkgutil.iter_modules([str(TRIGGERS)]) if info.name not in SHARED)


def all_engine_modules() -> None:
    for info in pkgutil.walk_packages([str(PACKAGE)], "engine."):
        importlib.import_module(info.name)


def test_every_trigger_class_has_exactly_one_registered_kind():
    all_engine_modules()  # every Trigger subclass anywhere in engine/ is defined now
    classes = set(_subclasses(Trigger))
    assert classes == {kind.model for kind in KINDS}
    assert len({kind.model for kind in KINDS}) == len(KINDS)
    assert len({kind.name for kind in KINDS}) == len(KINDS)
    for kind in KINDS:
        assert example(kind).kind == kind.name
        assert kind_named(kind.name) is kind


def example(kind: TriggerKind) -> Trigger:
    """A value of the kind's model (settings without a default get "x")."""
    required = {f.name: "x" for f in dataclasses.fields(kind.model)
                if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING}
    return kind.model(**required)


def _subclasses(cls):
    for sub in cls.__subclasses__():
        yield sub
        yield from _subclasses(sub)


@pytest.mark.parametrize("module_name", KIND_MODULES)
def test_each_kind_module_holds_one_kind_with_every_capability(module_name):
    module = importlib.import_module(f"engine.sql.triggers.{module_name}")
    kind = module.KIND
    assert kind in KINDS and kind.name == module_name
    own = [obj for obj in vars(module).values()
           if inspect.isclass(obj) and issubclass(obj, TriggerKind) and obj.__module__ == module.__name__]
    assert own == [type(kind)], "one kind class per module"
    assert kind.model.__module__ == module.__name__, "the model dataclass lives with its kind"
    for capability in CAPABILITIES:
        defined_in = next(c for c in type(kind).__mro__ if capability in vars(c))
        assert defined_in in (type(kind), TriggerKind), (module_name, capability, defined_in)
        if capability in OWN:
            assert defined_in is type(kind), f"{module_name} must define {capability}"


def test_the_registry_lists_every_kind_module_once():
    assert sorted(kind.name for kind in KINDS) == KIND_MODULES
    assert [kind_of(example(kind)) for kind in KINDS] == list(KINDS)


def test_the_campaign_schema_names_exactly_the_registered_kinds_in_their_order():
    schema = json.loads(SCHEMA.read_text())
    assert list(schema["$defs"]["trigger"]["properties"]) == [kind.name for kind in KINDS]


def kind_tests(source: str, trigger_classes: set[str]) -> list[str]:
    """``line: code`` for each place ``source`` tells trigger kinds apart by hand: isinstance /
    issubclass / ``type(x) is`` with a trigger class, a ``case Class(...)`` pattern, or a
    comparison of a trigger's ``kind``."""
    found = []
    tree = ast.parse(source)

    def names(node) -> set[str]:
        return {n.id if isinstance(n, ast.Name) else n.attr for n in ast.walk(node)
                if isinstance(n, (ast.Name, ast.Attribute))}

    def is_trigger_kind(node) -> bool:
        return (isinstance(node, ast.Attribute) and node.attr == "kind"
                and ((isinstance(node.value, ast.Name) and node.value.id == "trigger")
                     or (isinstance(node.value, ast.Attribute) and node.value.attr == "trigger")))

    for node in ast.walk(tree):
        hit = False
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in ("isinstance", "issubclass"):
            hit = bool(names(node.args[1]) & trigger_classes) if len(node.args) > 1 else False
        elif isinstance(node, ast.Compare):
            parts = [node.left, *node.comparators]
            hit = any(is_trigger_kind(p) for p in parts) or (
                any(isinstance(p, ast.Call) and isinstance(p.func, ast.Name) and p.func.id == "type" for p in parts)
                and bool(set().union(*(names(p) for p in parts)) & trigger_classes))
        elif isinstance(node, ast.MatchClass):
            hit = bool(names(node.cls) & trigger_classes)
        if hit:
            found.append(f"{node.lineno}: {ast.unparse(node)}")
    return found


def test_no_module_outside_the_trigger_package_tells_kinds_apart():
    classes = {kind.model.__name__ for kind in KINDS}
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if TRIGGERS in path.parents:
            continue
        offenders += [f"{path.relative_to(PACKAGE.parent)}:{hit}" for hit in kind_tests(path.read_text(), classes)]
    assert offenders == []


@pytest.mark.parametrize("code", [
    "if isinstance(campaign.trigger, Anniversary):\n    pass\n",
    "yearly = isinstance(trigger, (OrderDate, Anniversary))\n",
    "if type(trigger) is AtRisk:\n    pass\n",
    "if campaign.trigger.kind == 'at_risk':\n    pass\n",
    "quiet = trigger.kind not in ('last_activity', 'checkout_abandoned')\n",
    "match trigger:\n    case Event(type=t):\n        pass\n",
])
def test_the_check_finds_each_way_of_telling_kinds_apart(code):
    assert kind_tests(code, {kind.model.__name__ for kind in KINDS}) != []


def test_the_check_lets_other_kinds_be():
    """Channels have kinds too (``channel.kind == ...``): only triggers are the registry's."""
    code = "if channel.kind == 'email':\n    pass\nok = isinstance(value, str)\n"
    assert kind_tests(code, {kind.model.__name__ for kind in KINDS}) == []
