"""Which customer attributes a template reads (engine.templating.reads) and which a campaign's due
query fetches (engine.run.attributes): named keys only, everything when a use may read any key.

The analysis is checked against Jinja itself: each template is rendered (in the engine's sandbox,
strict about undefined names) with a customer holding only the keys found, and must render exactly
as with every key; the templates that read beyond their named keys must give None (all keys).
"""
from __future__ import annotations

import os
from collections.abc import Mapping

import pytest

from conftest import REPO, copy_project
from engine import channel_kinds
from engine.model import TRACKING_CONSENT
from engine.run.attributes import customer_columns, due_columns
from engine.spec.project import load_project
from engine.templating.reads import template_reads
from engine.templating.render import Renderer

CUSTOMER = {"customer_id": "7", "first_name": "Ada", "last_name": "Lovelace", "email": "ada@example.com",
            "customer_group": "gold", "city": "London", "get": "the key named get", "items": "the key named items"}

NAMED = {
    "attribute": ("{{ customer.first_name }}", {"first_name"}),
    "item": ("{{ customer['last_name'] }}", {"last_name"}),
    "get": ("{{ customer.get('city') }} {{ customer.get('customer_group', 'none') }}", {"city", "customer_group"}),
    "tests and filters on a key": ("{% if customer.email is defined %}{{ customer.email | upper }}{% endif %}", {"email"}),
    "set from a key": ("{% set name = customer.first_name %}{{ name }}", {"first_name"}),
    "macro argument from a key": ("{% macro hi(n) %}hi {{ n }}{% endmacro %}{{ hi(customer.first_name) }}",
                                  {"first_name"}),
    "item named like a method": ("{{ customer['get'] }}", {"get"}),
    "none": ("Hello", set()),
}

WHOLE = {
    "printed": "{{ customer }}",
    "iterated": "{% for key in customer %}{{ key }}{% endfor %}",
    "items": "{% for key, value in customer.items() %}{{ key }}={{ value }}{% endfor %}",
    "a method not called": "{{ customer.items }}",
    "get with a computed key": "{% set k = 'city' %}{{ customer.get(k) }}",
    "computed item": "{% set k = 'city' %}{{ customer[k] }}",
    "filter": "{{ customer | length }}",
    "attr filter": "{{ customer | attr('first_name') }}",
    "macro argument": "{% macro hi(c) %}{{ c.city }}{% endmacro %}{{ hi(customer) }}",
    "another name": "{% set c = customer %}{{ c.city }}",
    "format": "{{ '{0[city]}'.format(customer) }}",
    "test": "{% if customer is mapping %}yes{% endif %}",
}


def _write(folder, templates: Mapping[str, str]):
    for name, text in templates.items():
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return folder


def _render(folder, name: str, customer: dict) -> str:
    return Renderer(folder, layout=None).render(name, "sms", {"customer": customer}).parts["text"]


@pytest.mark.parametrize("case", sorted(NAMED))
def test_named_keys_are_found_and_are_all_a_render_needs(tmp_path, case):
    source, expected = NAMED[case]
    folder = _write(tmp_path, {"t.sms.j2": "{% block text %}" + source + "{% endblock %}"})
    found = template_reads(folder, "t.sms.j2")
    assert found == expected
    only = {key: value for key, value in CUSTOMER.items() if key in found}
    assert _render(folder, "t.sms.j2", only) == _render(folder, "t.sms.j2", CUSTOMER)


@pytest.mark.parametrize("case", sorted(WHOLE))
def test_a_use_that_may_read_any_key_reads_all(tmp_path, case):
    folder = _write(tmp_path, {"t.sms.j2": "{% block text %}" + WHOLE[case] + "{% endblock %}"})
    assert template_reads(folder, "t.sms.j2") is None


def test_the_templates_a_template_reaches_count(tmp_path):
    folder = _write(tmp_path, {
        "base.j2": "{% block text %}{{ customer.first_name }}{% block more %}{% endblock %}{% endblock %}",
        "part.j2": "{{ customer.city }}",
        "macros.j2": "{% macro m() %}{{ customer.last_name }}{% endmacro %}",
        "t.sms.j2": '{% extends "base.j2" %}{% import "macros.j2" as x with context %}'
                    '{% block more %}{% include "part.j2" %}{{ x.m() }}{% endblock %}',
        "layout.j2": "{{ customer.email }}",
    })
    assert template_reads(folder, "t.sms.j2") == {"first_name", "city", "last_name"}
    assert template_reads(folder, "t.sms.j2", ("layout.j2",)) == {"first_name", "city", "last_name", "email"}


def test_a_template_that_cannot_be_followed_reads_all(tmp_path):
    folder = _write(tmp_path, {
        "computed.sms.j2": "{% set n = 'part.j2' %}{% block text %}{% include n %}{% endblock %}",
        "missing.sms.j2": '{% block text %}{% include "nowhere.j2" %}{% endblock %}',
        "broken.sms.j2": "{% block text %}{{ customer.first_name {% endblock %}",
        "part.j2": "{{ customer.city }}",
    })
    for name in ("computed.sms.j2", "missing.sms.j2", "broken.sms.j2", "absent.sms.j2"):
        assert template_reads(folder, name) is None, name


def test_a_changed_template_is_read_again(tmp_path):
    folder = _write(tmp_path, {"t.sms.j2": "{% block text %}{{ customer.first_name }}{% endblock %}"})
    assert template_reads(folder, "t.sms.j2") == {"first_name"}
    _write(folder, {"t.sms.j2": "{% block text %}{{ customer.city }}{% endblock %}"})
    assert template_reads(folder, "t.sms.j2") == {"city"}
    # the same size, written in place, its modification time set back: still seen (the change time)
    path = folder / "t.sms.j2"
    before = path.stat()
    path.write_text("{% block text %}{{ customer.town }}{% endblock %}")
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert path.stat().st_size == before.st_size and path.stat().st_ino == before.st_ino
    assert template_reads(folder, "t.sms.j2") == {"town"}
    # a link repointed to another file of the folder
    _write(folder, {"a.j2": "{{ customer.email }}", "b.j2": "{{ customer.phone }}"})
    (folder / "link.j2").symlink_to(folder / "a.j2")
    assert template_reads(folder, "link.j2") == {"email"}
    (folder / "link.j2").unlink()
    (folder / "link.j2").symlink_to(folder / "b.j2")
    assert template_reads(folder, "link.j2") == {"phone"}


class _Recording(dict):
    """A customer whose every key holds a non-empty text, noting which keys are read."""

    def __init__(self):
        super().__init__()
        self.read: set[str] = set()

    def get(self, key, default=None):
        self.read.add(key)
        return f"value of {key}"

    def __getitem__(self, key):
        return self.get(key)

    def __contains__(self, key):
        self.read.add(key)
        return True


@pytest.mark.parametrize("name", sorted(channel_kinds.KINDS))
def test_a_kind_reads_only_the_customer_columns_it_declares(name):
    kind = channel_kinds.kind(name)
    customer = _Recording()
    kind.address(customer)
    assert customer.read <= {kind.contact_field, *kind.customer_columns}


def test_the_shipped_campaigns_fetch_what_their_templates_channels_and_policies_read():
    project = load_project(REPO)
    mapped = set(project.config.customer_attributes())
    columns = due_columns(project, project.campaigns)
    assert set(columns) == {c.name for c in project.campaigns}
    for campaign in project.campaigns:
        fetched = columns[campaign.name]
        assert fetched is not None and set(fetched) < mapped, campaign.name  # fewer than all
        assert {"customer_id", "timezone", "first_name", "email"} <= set(fetched)
        assert not {"customer_group", "is_wholesaler", "created_at", "birthday"} & set(fetched)
        kinds = {project.config.channels[v.channel].kind for s in campaign.steps for v in s.variants}
        for kind in kinds:
            assert set(channel_kinds.kind(kind).customer_columns) & mapped <= set(fetched)
    assert {"street", "postal_code", "city", "country", "last_name"} <= set(columns["re-engage"])  # its letter


def test_a_template_reading_the_whole_customer_fetches_every_column(tmp_path):
    root = copy_project(tmp_path / "project")
    template = root / "templates" / "second-order" / "nudge.email.j2"
    template.write_text(template.read_text() + "{% block body %}{{ customer | length }}{% endblock %}")
    project = load_project(root)
    assert customer_columns(project, project.campaign("second-order")) is None
    assert customer_columns(project, project.campaign("re-engage")) is not None


def test_tracking_consent_and_consent_columns_are_fetched_when_mapped(tmp_path):
    root = copy_project(tmp_path / "project")
    path = root / "engine.yaml"
    path.write_text(path.read_text().replace("      customer_id: customer_id\n",
                                             "      customer_id: customer_id\n      email_consent: is_wholesaler\n"
                                             f"      {TRACKING_CONSENT}: affiliate_program\n", 1))
    project = load_project(root)
    fetched = customer_columns(project, project.campaign("second-order"))
    assert {"email_consent", TRACKING_CONSENT} <= set(fetched)
    assert "sms_consent" not in project.config.customer_attributes()
