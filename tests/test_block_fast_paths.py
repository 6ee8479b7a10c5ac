"""The sandbox's block fast paths (``self.title``, ``self.title()``; a block that is nothing but text served
from its first render) and read-only data copied once give exactly what the full paths give: the same
output, the same errors, the same output budget; a block with an expression is rendered at every call."""
from __future__ import annotations

import jinja2
import pytest

from engine.templating import sandbox
from engine.templating.sandbox import BudgetExceeded, Limits, ReadOnlyDict, TemplateSandbox, budget, read_only

LAYOUT = ("{% block title %}Hello <b>{% endblock %}|{{ self.title() }}|{{ self.title() }}|{{ self.greeting() }}|"
          "{% block greeting %}Hi {{ name }}{% endblock %}|{{ self.empty() }}{% block empty %}{% endblock %}")
CHILD = '{% extends "layout" %}{% block title %}Child title &{% endblock %}'
SOURCES = {
    "layout": LAYOUT, "child": CHILD,
    "missing": "{{ self.missing() }}", "private": "{{ self._TemplateReference__context }}",
    "recursive": "{% block loop %}{{ self.loop() }}{% endblock %}",
    "super": '{% extends "layout" %}{% block title %}[{{ super() }}]{% endblock %}',
    # the same text block called with autoescaping switched off, then on, then off again
    "scopes": ("{% autoescape false %}{{ self.amp() }}{% endautoescape %}|{{ self.amp() }}|{% autoescape false %}"
               "{{ self.amp() }}{% endautoescape %}|{% block amp %}a & <b>{% endblock %}"),
}


def render(name: str, html: bool, limits: Limits = Limits(), names=("Ann", "Bob <b>")) -> list[str]:
    env = TemplateSandbox(loader=jinja2.DictLoader(SOURCES), undefined=jinja2.StrictUndefined, autoescape=html)
    out = []
    for name_value in names:
        with budget(limits):
            try:
                out.append(env.get_template(name).render(read_only({"name": name_value})))
            except Exception as exc:  # noqa: BLE001 - the error is what is compared
                out.append(f"{type(exc).__name__}: {exc}")
    return out


def full_paths(monkeypatch) -> None:
    """Every ``self`` read and block call through Jinja's own sandbox paths."""
    monkeypatch.setattr(sandbox, "BlockReference", type("NoBlock", (), {}))
    monkeypatch.setattr(sandbox, "TemplateReference", type("NoReference", (), {}))


@pytest.mark.parametrize("html", [False, True])
@pytest.mark.parametrize("name", sorted(SOURCES))
def test_a_block_call_gives_what_the_full_path_gives(name, html, monkeypatch):
    fast = render(name, html)
    full_paths(monkeypatch)
    assert fast == render(name, html)


def test_a_text_block_is_rendered_once_and_a_block_with_an_expression_at_every_call(monkeypatch):
    runs: dict[str, int] = {}
    call = jinja2.runtime.BlockReference.__call__

    def counted(self):
        runs[self.name] = runs.get(self.name, 0) + 1
        return call(self)
    monkeypatch.setattr(jinja2.runtime.BlockReference, "__call__", counted)
    assert render("child", True) == [f"Child title &|Child title &|Child title &|Hi {name}|Hi {name}|"
                                     for name in ("Ann", "Bob &lt;b&gt;")]
    # two renders, each with self.title() twice, self.greeting() and self.empty() once
    assert runs == {"title": 1, "greeting": 2, "empty": 1}


def test_which_blocks_are_text_only():
    env = TemplateSandbox(loader=jinja2.DictLoader(SOURCES))
    blocks = env.get_template("layout").blocks
    assert [env.constant_block(blocks[b]) for b in ("title", "greeting", "empty")] == [True, False, True]
    assert env.constant_block(env.get_template("super").blocks["title"]) is False


def charged(monkeypatch=None) -> int:
    """The output budget one render of the layout uses (a block printed through self counts twice)."""
    env = TemplateSandbox(loader=jinja2.DictLoader(SOURCES))
    template = env.get_template("layout")
    with budget(Limits()) as used:
        template.render(name="Ann")
        template.render(name="Bob")  # the text blocks served from the first render
    return used.output


def test_a_text_block_served_again_is_charged_to_the_output_budget(monkeypatch):
    fast = charged()
    full_paths(monkeypatch)
    assert fast == charged() > 2 * len("Hello <b>|Hello <b>|Hello <b>|Hi Ann|Hi Ann|")


@pytest.mark.parametrize("extra", [0, 1])
def test_the_output_bound_holds_to_the_character_with_text_blocks_served(extra):
    size = len(render("layout", False, names=("Ann",))[0])
    env = TemplateSandbox(loader=jinja2.DictLoader(SOURCES))
    with budget(Limits()) as used:
        env.get_template("layout").render(name="Ann")
    with budget(Limits(output=used.output - extra)):
        if extra:
            with pytest.raises(BudgetExceeded, match="the output budget"):
                env.get_template("layout").render(name="Ann")
        else:
            assert len(env.get_template("layout").render(name="Ann")) == size


def test_calls_of_blocks_nest_within_the_bound():
    assert render("recursive", False)[0].startswith(f"{BudgetExceeded.__name__}: calls nest deeper than {Limits().calls}")


def test_read_only_data_is_copied_once_and_stays_read_only():
    shop = read_only({"name": "Shop", "tags": ["a"]})
    assert read_only(shop) is shop and read_only({"shop": shop})["shop"] is shop
    assert read_only([shop])[0] is shop
    plain = {"name": "Shop"}
    assert read_only(plain) is not plain and type(read_only(plain)) is ReadOnlyDict
    env = TemplateSandbox(autoescape=False)
    with budget(Limits()), pytest.raises(jinja2.exceptions.SecurityError):
        env.from_string("{{ shop.tags.append('b') }}").render(shop=read_only(shop))
    with pytest.raises(TypeError):
        shop["tags"].append("b")
    assert shop == {"name": "Shop", "tags": ["a"]}
