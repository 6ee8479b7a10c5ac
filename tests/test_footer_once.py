"""A pass renders the layout's footers once per shop with a stand-in for the unsubscribe link
(templating.render ``_footer_once``): the messages are byte for byte what a footer rendered per
message gives, and a footer that does more with the link than print it is rendered per message."""
from __future__ import annotations

from pathlib import Path

import pytest

from engine.errors import TemplateError
from engine.templating.render import Renderer
from engine.templating.sandbox import Limits, read_only

REPO = Path(__file__).resolve().parent.parent
SHIPPED = (REPO / "templates" / "layouts" / "email.j2").read_text()
CHILD = '{% extends "layouts/email.j2" %}{% block title %}Hi {{ customer.first_name }}{% endblock %}{% block body %}x{% endblock %}'


def per_message(renderer: Renderer) -> Renderer:
    """The same renderer with the footer rendered for every message, as before."""
    renderer._footer_once = lambda *args: None
    return renderer


def context(customer: str, url: str, shop: dict | None = None) -> dict:
    return {"customer": {"first_name": customer}, "unsubscribe_url": url,
            "shop": shop if shop is not None else {"name": "Bean & Brew", "address": "1 <Main> St",
                                                   "legal": "Reg. 42 \"A\"", "url": "https://shop.example/?a=1&b=2"}}


def project(tmp_path: Path, layout: str) -> Path:
    (tmp_path / "layouts").mkdir(parents=True, exist_ok=True)
    (tmp_path / "layouts" / "email.j2").write_text(layout)
    (tmp_path / "a.email.j2").write_text(CHILD)
    return tmp_path


URLS = ["https://shop.example/unsubscribe?c=1&k=email&s=0", "https://shop.example/u?c=<2>&k='\"", "https://x.example/u/3"]


@pytest.mark.parametrize("layout", [
    SHIPPED,
    # the link twice, in the text and an attribute
    SHIPPED.replace("Unsubscribe: {{ unsubscribe_url }}", "Unsubscribe: {{ unsubscribe_url }} ({{ unsubscribe_url }})"),
    # a test on the link, a filter on it, another variable: rendered per message
    SHIPPED.replace("Unsubscribe: {{ unsubscribe_url }}", "{% if 'c=1' in unsubscribe_url %}one {% endif %}Unsubscribe: {{ unsubscribe_url }}"),
    SHIPPED.replace("Unsubscribe: {{ unsubscribe_url }}", "Unsubscribe: {{ unsubscribe_url | upper }} {{ unsubscribe_url }}"),
    SHIPPED.replace("Unsubscribe: {{ unsubscribe_url }}", "Unsubscribe {{ customer.first_name }}: {{ unsubscribe_url }}"),
    SHIPPED.replace("Unsubscribe: {{ unsubscribe_url }}", "Unsubscribe {{ [1, 2] | random }}: {{ unsubscribe_url }}"),
], ids=["shipped", "link-twice", "test-on-link", "filter-on-link", "other-variable", "random"])
def test_every_message_is_what_a_footer_rendered_per_message_gives(tmp_path, layout):
    root = project(tmp_path, layout)
    once, each = Renderer(root), per_message(Renderer(root))
    for shop in (None, {"name": "Other shop", "address": None, "legal": None, "url": None}):
        for name, url in zip(("Ann", "Bob & <Co>", "Eve"), URLS):
            fast = once.render("a.email.j2", "email", context(name, url, shop))
            if "random" not in layout:
                assert fast == each.render("a.email.j2", "email", context(name, url, shop))
            assert url in fast.text
            assert url.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace("'", "&#39;").replace(
                '"', "&#34;") in fast.html
    # the variants change only the text footer: the html one is still rendered once (per shop)
    text_once = layout in (SHIPPED, SHIPPED.replace("Unsubscribe: {{ unsubscribe_url }}",
                                                    "Unsubscribe: {{ unsubscribe_url }} ({{ unsubscribe_url }})"))
    assert sorted(html for html, _ in once._footer_forms) == [False] * 2 * text_once + [True] * 2


def test_a_footer_rendered_once_still_needs_the_link_and_counts_against_the_output_budget(tmp_path):
    root = project(tmp_path, SHIPPED.replace("Unsubscribe: {{ unsubscribe_url }}", "Unsubscribe: {% if false %}{{ unsubscribe_url }}{% endif %}"))
    with pytest.raises(TemplateError, match="does not contain the unsubscribe link"):
        Renderer(root).render("a.email.j2", "email", context("Ann", URLS[0]))
    root = project(tmp_path, SHIPPED)
    size = sum(len(part) for part in per_message(Renderer(root)).render("a.email.j2", "email", context("Ann", URLS[0])).parts.values())
    for renderer in (Renderer(root, limits=Limits(output=size - 50)), per_message(Renderer(root, limits=Limits(output=size - 50)))):
        with pytest.raises(TemplateError, match="output budget"):
            renderer.render("a.email.j2", "email", context("Ann", URLS[0]))


def test_a_shop_shared_by_a_batch_is_read_once_and_another_shop_gets_its_own_footer(tmp_path):
    """A batch passes one read-only shop to all its messages (run/render.py): the footer's key is taken
    from it once; a different shop, even right after, gets its own footer."""
    root = project(tmp_path, SHIPPED)
    once, each = Renderer(root), per_message(Renderer(root))
    shops = [read_only(context("x", "u")["shop"]), read_only({"name": "Other", "address": None, "legal": None, "url": None})]
    for shop in shops + shops[::-1] + shops:
        for name, url in zip(("Ann", "Bob & <Co>"), URLS):
            assert once.render("a.email.j2", "email", context(name, url, shop)) == each.render("a.email.j2", "email", context(name, url, shop))
    assert once._footer_shop[0] is shops[1]
    assert len(once._footer_forms) == 4  # (text, html) x two shops
