"""Rendering registers a template's inheritance chain without running its root, and that
gives exactly what running the root gives: for every shipped campaign template, and for
templates whose top level does more than extend (those still run their root)."""
from __future__ import annotations

from pathlib import Path

import pytest

from engine import load_project
from engine.templating.render import Renderer
from engine.spec.lists import template_lists
from engine.spec.validate import sample_context

REPO = Path(__file__).resolve().parent.parent


def full_root(renderer: Renderer):
    """The same renderer with the shortcut off: every render runs the template's root."""
    renderer._chain = lambda name, html: None
    return renderer


def shipped():
    project = load_project(REPO)
    renderer = Renderer(REPO / "templates")
    for campaign in project.campaigns:
        for step in campaign.steps:
            for variant in step.variants:
                kind = project.config.channels[variant.channel].kind
                context = sample_context(project.config, campaign.trigger, step.discount_code is not None,
                                         step.wait is not None)
                context.update(template_lists(project.config, renderer, variant.template)[1])  # the product lists it declares
                yield pytest.param(variant.template, kind, context, id=f"{campaign.name}-{step.id}-{variant.id}")


@pytest.mark.parametrize("template, kind, context", list(shipped()))
def test_shipped_templates_render_the_same_without_running_the_root(template, kind, context):
    fast = Renderer(REPO / "templates")
    assert fast._chain(template, False) is not None  # the shortcut applies to every shipped template
    assert fast.render(template, kind, context) == full_root(Renderer(REPO / "templates")).render(template, kind, context)


LAYOUT = """{% block subject %}{% block title %}{% endblock %}{% endblock %}
{% block text %}{{ greeting | default('Hello') }}, {% block body %}{% endblock %}{% endblock %}
{% block html %}<p>{{ greeting | default('Hello') }}</p>{{ self.body() }}{% endblock %}
"""


@pytest.mark.parametrize("child, uses_root", [
    ('{% extends "layout.j2" %}{% block title %}Hi{% endblock %}{% block body %}a & b{% endblock %}', False),
    ('{% extends "layout.j2" %}{% set greeting = "Moin" %}{% block body %}x{% endblock %}', True),
    ('{% extends "layout.j2" %}{% import "macros.j2" as m %}{% block body %}{{ m.b() }}{% endblock %}', True),
    ('{% extends "middle.j2" %}{% block body %}deep{% endblock %}', False),
    ('{% extends "macro-layout.j2" %}{% block body %}y{% endblock %}', True),
    ('{% extends name %}{% block body %}dyn{% endblock %}', True),
    ('{% block subject %}S{% endblock %}{% block text %}{{ 1 + 1 }}{% endblock %}', False),
])
def test_templates_that_set_or_import_at_the_top_level_still_run_their_root(tmp_path, child, uses_root):
    (tmp_path / "layout.j2").write_text(LAYOUT)
    (tmp_path / "middle.j2").write_text('{% extends "layout.j2" %}{% block title %}Middle{% endblock %}')
    (tmp_path / "macros.j2").write_text("{% macro b() %}<b>bold</b>{% endmacro %}")
    (tmp_path / "macro-layout.j2").write_text("{% macro hi() %}Hi!{% endmacro %}" + LAYOUT.replace("Hello')", "Hello') ~ hi()"))
    (tmp_path / "child.j2").write_text(child)
    context = {"name": "layout.j2"}
    # ad-hoc layouts: the locked email layout (render.EMAIL_LAYOUT) is not what these test
    fast = Renderer(tmp_path, layout=None)
    assert (fast._chain("child.j2", False) is None) == uses_root
    expected = full_root(Renderer(tmp_path, layout=None)).render("child.j2", "email", context)
    assert fast.render("child.j2", "email", context) == expected
    assert expected.text  # the comparison is about real output
