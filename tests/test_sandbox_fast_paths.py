"""The sandbox's fast paths (a dict key read as ``x.key``, output within the budget) give exactly
what its full paths give: the same values, the same undefined and unsafe errors, the same bound."""
from __future__ import annotations

import jinja2
import pytest

from engine.templating import sandbox
from engine.templating.sandbox import BudgetExceeded, Limits, TemplateSandbox, budget, read_only

DATA = {"customer": {"first_name": "Ann", "items": "a key named like a dict method", "tags": ["a", "b"],
                     "nested": {"city": "Köln"}}, "n": 3}

EXPRESSIONS = [
    "{{ customer.first_name }}", "{{ customer.nested.city }}", "{{ customer.tags | join(',') }}",
    "{{ customer['items'] }}", "{{ customer.items() | list | length }}", "{{ customer.get('first_name') }}",
    "{{ customer.missing is defined }}", "{{ customer.missing | default('none') }}",
    "{{ customer.missing }}", "{{ customer.update }}", "{{ customer.__class__ }}", "{{ customer.nested.missing.deeper }}",
]


def render(source: str) -> str:
    env = TemplateSandbox(undefined=jinja2.StrictUndefined, autoescape=True)
    with budget(Limits()):
        try:
            return env.from_string(source).render(read_only(DATA))
        except Exception as exc:  # noqa: BLE001 - the error is what is compared
            return f"{type(exc).__name__}: {exc}"


@pytest.mark.parametrize("source", EXPRESSIONS)
def test_a_key_read_as_an_attribute_gives_what_the_full_path_gives(source, monkeypatch):
    fast = render(source)
    monkeypatch.setattr(sandbox, "_dict_attribute", lambda name: True)  # every read through the full path
    assert fast == render(source)


def test_the_fast_path_is_taken_and_the_errors_are_the_sandboxs():
    assert render("{{ customer.first_name }}") == "Ann"
    assert render("{{ customer.update }}").startswith("SecurityError: access to attribute 'update'")
    assert render("{{ customer.missing }}").startswith("UndefinedError:")
    assert sandbox._dict_attribute("first_name") is False and sandbox._dict_attribute("items") is True


@pytest.mark.parametrize("extra", [0, 1])
def test_output_is_counted_to_the_character_whichever_path(extra):
    env = TemplateSandbox(autoescape=False)
    template = env.from_string("{% for i in range(40) %}ab{{ i }}{% endfor %}")
    with budget(Limits()):
        size = len(template.render())
    assert size == len("".join(f"ab{i}" for i in range(40)))
    with budget(Limits(output=size - extra)):
        if extra:
            with pytest.raises(BudgetExceeded, match=f"more than {size - extra} characters"):
                template.render()
        else:
            assert len(template.render()) == size
