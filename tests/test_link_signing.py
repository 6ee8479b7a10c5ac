"""The unsubscribe and printed (scan) links signed with an HMAC keyed once per secret and written without
urlencode give exactly the links of the plain construction they replace: HMAC-SHA256 keyed per call, the
query by urlencode. Any customer id (quotes, spaces, '&', '=', '+', other scripts), any kind, any secret."""
from __future__ import annotations

import hashlib
import hmac
from urllib.parse import urlencode

from hypothesis import given, settings, strategies as st

from engine import scan_link, unsubscribe


def plain_unsubscribe(base_url: str, secret: str, customer_id: str, kind: str) -> str:
    signature = hmac.new(secret.encode(), f"unsubscribe:{customer_id}:{kind}".encode(), hashlib.sha256).hexdigest()[:32]
    return f"{base_url}{'&' if '?' in base_url else '?'}" + urlencode({"c": customer_id, "k": kind, "s": signature})


def plain_scan(base_url: str, secret: str, message_key: str) -> str:
    token = hashlib.sha256(message_key.encode()).hexdigest()[:32]
    signature = hmac.new(secret.encode(), f"scan:{token}".encode(), hashlib.sha256).hexdigest()[:32]
    return f"{base_url}{'&' if '?' in base_url else '?'}" + urlencode({"m": token, "s": signature})


BASES = st.sampled_from(["https://shop.example/unsubscribe", "https://shop.example/u?shop=1", "http://localhost:8080/s"])
SECRETS = st.sampled_from(["x" * 40, "another secret of at least thirty-two chars!", "ß" * 33, "k" * 200])


@settings(max_examples=300, deadline=None, database=None)
@given(BASES, SECRETS, st.text(max_size=40), st.sampled_from([*unsubscribe.KINDS, "a b&c=d"]))
def test_unsubscribe_links_are_the_plain_construction(base_url, secret, customer_id, kind):
    made = unsubscribe.link(base_url, secret, customer_id, kind)
    assert made == plain_unsubscribe(base_url, secret, customer_id, kind)
    if kind in unsubscribe.KINDS and unsubscribe.is_customer_id(customer_id):
        assert unsubscribe.check(made, ["an older secret of thirty-two chars....", secret]) == (customer_id, kind)


@settings(max_examples=200, deadline=None, database=None)
@given(BASES, SECRETS, st.text(min_size=1, max_size=60))
def test_scan_links_are_the_plain_construction(base_url, secret, message_key):
    made = scan_link.link(base_url, secret, message_key)
    assert made == plain_scan(base_url, secret, message_key)
    assert scan_link.check(made, secret) == scan_link.token(message_key)


def test_an_integer_customer_id_gives_the_link_of_its_text():
    secret = "x" * 40
    assert unsubscribe.link("https://s/u", secret, 12345, "email") == plain_unsubscribe("https://s/u", secret, 12345, "email")
