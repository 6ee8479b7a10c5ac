"""Settings that must not keep an example value outside the demo: the sender, the unsubscribe URL, the shop's URL.

Owns which engine.yaml settings name an address customers see or click
(``SETTINGS``: every channel's ``from``, ``policies.unsubscribe_url``,
``shop.url``), what an example domain is (RFC 2606 and RFC 6761:
example.com/.net/.org and their subdomains, the ``.example``, ``.invalid``,
``.test`` and ``.localhost`` top-level domains), and the rule: outside the
demo (``demo:`` in engine.yaml) such a domain is a validation error naming the
setting and the fix, and a missing sender or unsubscribe URL is one too (they
have no default there). A setting still starting with ``TODO`` (what ``engine
init`` leaves to fill in) is an error in every project. Values are checked as they resolve from the
environment; a ``${VAR}`` that is not set is left to the check that needs it.
Must not read files or the network: it is given the parsed document.
"""
from __future__ import annotations

from email.utils import getaddresses
from typing import Callable
from urllib.parse import urlsplit

from engine.errors import ConfigError, Issue
from engine.spec.load import Document

#: second-level domains reserved for documentation (RFC 2606 section 3), with every subdomain
EXAMPLE_DOMAINS = ("example.com", "example.net", "example.org")
#: top-level domains reserved for testing, examples and invalid names (RFC 2606 section 2, RFC 6761)
EXAMPLE_TLDS = ("example", "invalid", "test", "localhost")
#: what the demo signs its unsubscribe links for when its engine.yaml names no URL
DEMO_UNSUBSCRIBE_URL = "https://shop.example/unsubscribe"
#: what a project is told when it keeps an example domain, after the setting's own advice
ONLY_THE_DEMO = "only a demo project (demo: in engine.yaml) may use example domains"


def example_domain(host: str) -> str | None:
    """The reserved name ``host`` falls under (``shop.example``, ``example.com``), or None for a real domain."""
    host = host.strip().rstrip(".").lower()
    if not host:
        return None
    for domain in EXAMPLE_DOMAINS:
        if host == domain or host.endswith("." + domain):
            return domain
    tld = host.rsplit(".", 1)[-1]
    return f".{tld}" if tld in EXAMPLE_TLDS else None


def _sender_domains(value: str) -> list[str]:
    return [address.rpartition("@")[2] for _, address in getaddresses([value]) if "@" in address]


def _url_domains(value: str) -> list[str]:
    try:
        return [urlsplit(value.strip()).hostname or ""]
    except ValueError:
        return []


#: (path in engine.yaml, its domains given the resolved value, what to write instead)
Setting = tuple[tuple, Callable[[str], list[str]], str]


def settings_of(data: dict) -> list[Setting]:
    """Every setting of ``data`` (engine.yaml) whose domain customers see, with how to read it and the fix."""
    found: list[Setting] = []
    for name, channel in (data.get("channels") or {}).items():
        found.append((("channels", name, "from"), _sender_domains,
                      f'your shop\'s own domain, e.g. from: "My Shop <hello@my-shop.de>" for channels.{name}'))
    found.append((("policies", "unsubscribe_url"), _url_domains,
                  "the public URL of your engine's /unsubscribe endpoint, e.g. "
                  "policies: {unsubscribe_url: https://campaigns.my-shop.de/unsubscribe}"))
    found.append((("shop", "url"), _url_domains, "your shop's website, e.g. shop: {url: https://www.my-shop.de}"))
    found.append((("policies", "scan_url"), _url_domains,
                  "the public URL of your engine's /scan endpoint (a letter's QR code), e.g. "
                  "policies: {scan_url: https://campaigns.my-shop.de/scan}; without it, the unsubscribe URL's host"))
    found.append((("policies", "scan_landing_url"), _url_domains,
                  "where a scanned letter leads, e.g. policies: {scan_landing_url: https://www.my-shop.de/welcome-back}"))
    return found


def _todos(value: object, path: tuple = ()) -> list[tuple[tuple, str]]:
    """Every string setting that starts with TODO (what ``engine init`` leaves to fill in)."""
    if isinstance(value, dict):
        return [found for key, item in value.items() for found in _todos(item, path + (key,))]
    if isinstance(value, list):
        return [found for index, item in enumerate(value) for found in _todos(item, path + (index,))]
    return [(path, value)] if isinstance(value, str) and value.lstrip().upper().startswith("TODO") else []


def _value(data: dict, path: tuple) -> object:
    for part in path:
        if not isinstance(data, dict) or part not in data:
            return None
        data = data[part]
    return data


#: settings that may be left out: the shop's URL, and a letter's scan links (which default to the
#: unsubscribe URL's host and the shop's URL)
OPTIONAL = {("shop", "url"), ("policies", "scan_url"), ("policies", "scan_landing_url")}


def unsafe_setting_issues(doc: Document, resolve: Callable[[str], str]) -> list[Issue]:
    """Outside the demo: each setting of ``SETTINGS`` that is missing (sender, unsubscribe URL) or at an example domain."""
    data = doc.data
    issues = [doc.issue(path, f"{'.'.join(str(p) for p in path)} is still a TODO: '{value}'",
                        fix="fill it in (engine init left it for you to write)") for path, value in _todos(data)]
    if data.get("demo") not in (None, False):
        return issues
    for path, domains_of, fix in settings_of(data):
        setting = ".".join(str(p) for p in path)
        raw = _value(data, path)
        if raw is None:
            if path not in OPTIONAL:  # a sender and an unsubscribe URL have no default outside the demo
                where = path[:-1] if _value(data, path[:-1]) is not None else path[:1] if path[0] in data else ()
                issues.append(doc.issue(where, f"{setting} is not set: outside the demo it has no default",
                                        fix=f"set it to {fix}"))
            continue
        try:
            value = resolve(str(raw))
        except ConfigError:
            continue  # an unset ${VAR}: reported where the value is used
        for domain in domains_of(value):
            reserved = example_domain(domain)
            if reserved:
                issues.append(doc.issue(path, f"{setting} is '{value}', at {domain}: an example domain "
                                        f"({reserved} is reserved by RFC 2606/6761), so messages would carry an "
                                        "address nobody owns", fix=f"set it to {fix}; {ONLY_THE_DEMO}"))
                break
    return issues
