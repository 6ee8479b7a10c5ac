"""Tracking tokens (engine/tracking.py) and the tracked HTML (engine/templating/tracking.py), as pure functions."""
from __future__ import annotations

import base64
from datetime import datetime, timedelta, timezone
from html.parser import HTMLParser
from urllib.parse import parse_qs, urlsplit

import pytest

from engine import tracking
from engine.templating.tracking import track_html, with_utm

SECRET = "tracking-test-secret-0123456789abcdefghijklmnop"
OLD = "an-older-secret-of-enough-length-ZYXWVUT987654"
KEY = "welcome:day1:customer-42:order-7"
NOW = datetime(2026, 3, 1, 12, 0, tzinfo=timezone.utc)


def test_a_token_round_trips_and_carries_no_personal_data_in_clear():
    url = "https://shop.example/checkout?cart=customer-42"
    token = tracking.seal(SECRET, "click", KEY, NOW, url)
    opened = tracking.open_token(token, [SECRET], "click", NOW + timedelta(days=1))
    assert (opened.message_key, opened.url, opened.made_at) == (KEY, url, NOW)
    raw = base64.urlsafe_b64decode(token[3:] + "=" * (-len(token[3:]) % 4))
    for clear in (b"customer-42", b"welcome", b"shop.example", b"checkout"):
        assert clear not in raw and clear.decode() not in token
    # deterministic: the same message renders to the same bytes
    assert tracking.seal(SECRET, "click", KEY, NOW, url) == token


def test_rotation_a_previous_secret_still_opens_and_an_unknown_one_does_not():
    token = tracking.seal(OLD, "open", KEY, NOW)
    assert tracking.open_token(token, (SECRET, OLD), "open", NOW).message_key == KEY
    with pytest.raises(tracking.TokenRefused) as refused:
        tracking.open_token(token, (SECRET,), "open", NOW)
    assert refused.value.status == 404


def test_tampered_forged_malformed_wrong_type_and_expired_tokens_are_refused():
    token = tracking.seal(SECRET, "click", KEY, NOW, "https://shop.example/a")
    flipped = token[:-3] + ("A" if token[-3] != "A" else "B") + token[-2:]
    cases = {
        flipped: 404,                                     # one character changed: does not authenticate
        "v1." + "A" * 60: 404,                            # well-formed, sealed by nobody
        "v1.short": 400, "nope": 400, "v1." + "A" * 4000: 400, "v1.AAAA!AAAAAAAAAAAAAAAAAAAAAAAAA": 400,
    }
    for given, status in cases.items():
        with pytest.raises(tracking.TokenRefused) as refused:
            tracking.open_token(given, SECRET, "click", NOW)
        assert refused.value.status == status, given
    with pytest.raises(tracking.TokenRefused) as refused:  # a pixel's token is no click's
        tracking.open_token(tracking.seal(SECRET, "open", KEY, NOW), SECRET, "click", NOW)
    assert refused.value.status == 404
    assert tracking.open_token(token, SECRET, "click", NOW + timedelta(days=10), ttl=timedelta(days=10)).url
    with pytest.raises(tracking.TokenRefused) as refused:
        tracking.open_token(token, SECRET, "click", NOW + timedelta(days=10, seconds=1), ttl=timedelta(days=10))
    assert refused.value.status == 410


def test_machine_rules():
    sent = NOW - timedelta(hours=1)
    person = {"user-agent": "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
                            "Chrome/120.0 Safari/537.36"}
    assert tracking.machine_reason("click", "GET", person, NOW, sent) is None
    assert tracking.machine_reason("click", "HEAD", person, NOW, sent) == "head_request"
    assert tracking.machine_reason("open", "GET", {**person, "sec-purpose": "prefetch"}, NOW, sent) == "prefetch"
    assert tracking.machine_reason("open", "GET", {"user-agent": "Mozilla/5.0"}, NOW, sent) == "no_user_agent"
    apple = "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko)"
    assert tracking.machine_reason("open", "GET", {"user-agent": apple}, NOW, sent) == "apple_mail_proxy"
    assert tracking.machine_reason("click", "GET", {"user-agent": "Mozilla/5.0 (compatible; BingPreview/1.0b)"},
                                   NOW, sent) == "scanner_agent"
    assert tracking.machine_reason("click", "GET", person, NOW, NOW - timedelta(seconds=3)) == "too_soon_after_sending"
    assert tracking.machine_reason("click", "GET", person, NOW, NOW - timedelta(seconds=3), machine_seconds=0) is None


class Links(HTMLParser):
    def __init__(self):
        super().__init__()
        self.hrefs, self.images = [], []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "a":
            self.hrefs.append(attrs.get("href"))
        if tag == "img":
            self.images.append(attrs.get("src"))


def parsed(document: str) -> Links:
    links = Links()
    links.feed(document)
    return links


def test_links_are_rewritten_except_unsubscribe_mailto_tel_and_fragments_and_the_rest_stays_byte_for_byte():
    unsubscribe = "https://campaigns.shop.example/unsubscribe?c=42&amp;k=email&s=abc"
    document = ("<html><body><p>Hi &amp; welcome</p>\n<a class=x href='https://shop.example/p?id=1&amp;q=2'>shop</a>"
                "<!-- <a href=\"https://shop.example/comment\">x</a> -->\n"
                "<a href=\"mailto:hi@shop.example\">mail</a><a href=tel:+4930123>call</a><a href=\"#top\">top</a>"
                f"<a href=\"{unsubscribe}\">unsubscribe</a><A HREF=\"HTTPS://shop.example/B\">B</A></body></html>")
    seen = []

    def click(url):
        seen.append(url)
        return f"https://t.example/click?t=T{len(seen)}"

    out = track_html(document, click=click, pixel_url="https://t.example/open?t=P",
                     utm={"source": "newsletter", "campaign": "spring"},
                     keep=["https://campaigns.shop.example/unsubscribe?c=42&k=email&s=abc"])
    assert seen == ["https://shop.example/p?id=1&q=2&utm_source=newsletter&utm_campaign=spring",
                    "https://shop.example/B?utm_source=newsletter&utm_campaign=spring"]  # the scheme as urllib writes it
    links = parsed(out)
    assert links.hrefs == ["https://t.example/click?t=T1", "mailto:hi@shop.example", "tel:+4930123", "#top",
                           "https://campaigns.shop.example/unsubscribe?c=42&k=email&s=abc", "https://t.example/click?t=T2"]
    assert links.images == ["https://t.example/open?t=P"]
    assert out.index("<img") < out.index("</body>")
    assert "<!-- <a href=\"https://shop.example/comment\">x</a> -->" in out and "<p>Hi &amp; welcome</p>" in out
    # no click tracking, no pixel: only UTM parameters
    plain = track_html(document, click=None, pixel_url=None, utm={"medium": "email"})
    assert parsed(plain).hrefs[0] == "https://shop.example/p?id=1&q=2&utm_medium=email" and "<img" not in plain
    assert track_html(document, click=None, pixel_url=None) == document


def test_utm_keeps_what_a_link_already_has():
    assert with_utm("https://s.example/?utm_source=x#frag", {"source": "y", "medium": "email"}) == \
        "https://s.example/?utm_source=x&utm_medium=email#frag"
    assert parse_qs(urlsplit(with_utm("https://s.example/a b", {"term": "a&b"})).query) == {"utm_term": ["a&b"]}
