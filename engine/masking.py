"""Secrets out of every message: ``mask`` is the one function for any text that may hold one.

Owns what counts as a secret in text the engine prints or logs, and its
replacement by ``***``:

- the password of a URL's userinfo (``scheme://user:***@host``);
- the value of a query or key=value parameter whose name says it is secret
  (password, sslpassword, token, key, sig, signature, secret, credential(s),
  auth, session, access, sas, ...), in URLs and in libpq-style DSNs
  (``host=db password=***``), quoted or not;
- secrets the engine resolved: the value of a ``${VAR}`` whose name says it
  is secret, or that sits in a URL's userinfo, path, query or fragment
  (``https://hooks.example/${WEBHOOK_PATH}``), and the passwords and secret
  parameters of every database URL the engine opened - wherever they appear
  later, e.g. in a driver's error quoting a file path or a DSN.

Callers: config.resolve (remembers resolved secrets), warehouse (URLs and
driver errors), settings (``engine config show``), output (issues and pass
errors), logs (every record), the CLI's error handler and the service's
readiness answer. No imports from the engine: everything may use it.
"""
from __future__ import annotations

import re
import threading
from urllib.parse import unquote

MASK = "***"
#: a name (setting, variable, parameter) that says it holds a secret
_SECRET_NAME = re.compile(
    r"pass|pwd|secret|token|key|credential|auth|sig|session|cookie|private|^sas$|^access$",
    re.IGNORECASE)
#: shorter remembered values would mask ordinary words and numbers
MIN_REMEMBERED = 4

_lock = threading.Lock()
_remembered: set[str] = set()
#: the remembered values, longest first (a value inside another is replaced after it)
_longest_first: tuple[str, ...] = ()

#: a URL in free text: scheme://..., up to whitespace or a quote, without trailing punctuation
_URL = re.compile(r"""\b[A-Za-z][A-Za-z0-9+.-]*://[^\s"'<>`]*[^\s"'<>`.,:;)\]]""")
#: name=value (in a query string, a DSN or prose); the value may be quoted
_PARAMETER = re.compile(r"""(?P<name>[A-Za-z_][\w.-]*)(?P<eq>\s*=\s*)(?P<value>'(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*"|[^\s&;,'"#)]*[^\s&;,'"#).:])""")
#: "name": "value" (JSON and Python reprs of settings)
_QUOTED_PAIR = re.compile(r"""(?P<q>["'])(?P<name>[A-Za-z_][\w.-]*)(?P=q)(?P<sep>\s*:\s*)(?P<v>["'])(?P<value>(?:(?!(?P=v)).)*)(?P=v)""")
#: scheme://user:password@ - the password up to the last @ before the path (it may hold an unencoded @)
_USERINFO = re.compile(r"^(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)(?P<user>[^:@/?#]*):(?P<password>[^/?#]*)@")


def is_secret_name(name: str) -> bool:
    return bool(_SECRET_NAME.search(name))


def remember(value: str | None) -> None:
    """From now on, ``value`` is masked wherever it appears in a message."""
    global _longest_first
    if value and len(value) >= MIN_REMEMBERED and value not in _remembered:
        with _lock:
            _remembered.add(value)
            decoded = unquote(value)
            if decoded != value and len(decoded) >= MIN_REMEMBERED:
                _remembered.add(decoded)
            _longest_first = tuple(sorted(_remembered, key=len, reverse=True))


def remember_url(url: str) -> None:
    """Remember the password and the secret parameters of ``url`` (a database URL being opened)."""
    match = _USERINFO.match(url)
    if match:
        remember(match.group("password"))
    query = url.partition("?")[2].partition("#")[0]
    for name, _, value in (pair.partition("=") for pair in re.split(r"[&;]", query) if pair):
        if is_secret_name(unquote(name)):
            remember(value)


def mask_url(url: str) -> str:
    """``url`` with the userinfo password and the secret-named query and fragment parameters masked
    (everything else as written)."""
    url = _USERINFO.sub(lambda m: f"{m.group('scheme')}{m.group('user')}:{MASK}@", url, count=1)
    rest, hashmark, fragment = url.partition("#")
    base, question, query = rest.partition("?")
    return base + question + _mask_pairs(query) + hashmark + _mask_pairs(fragment)


def _mask_pairs(query: str) -> str:
    """``a=1&password=x;b=2`` -> ``a=1&password=***;b=2``."""
    def pair(text: str) -> str:
        name, eq, value = text.partition("=")
        return f"{name}={MASK}" if eq and value and is_secret_name(unquote(name)) else text
    return "".join(pair(part) if part not in "&;" else part for part in re.split(r"([&;])", query))


def mask(text: str) -> str:
    """``text`` with every URL credential, secret parameter and remembered secret replaced by ``***``."""
    if not text:
        return text
    for value in _longest_first:
        if value in text:
            text = text.replace(value, MASK)
    if "://" in text:
        text = _URL.sub(lambda m: mask_url(m.group(0)), text)
    if ":" in text and ('"' in text or "'" in text):
        text = _QUOTED_PAIR.sub(lambda m: m.group(0) if not is_secret_name(m.group("name")) else
                                f"{m.group('q')}{m.group('name')}{m.group('q')}{m.group('sep')}{m.group('v')}{MASK}"
                                f"{m.group('v')}", text)
    return _mask_parameters(text) if "=" in text else text


def _mask_parameters(text: str) -> str:
    def replace(match: re.Match) -> str:
        if not is_secret_name(match.group("name")) or match.group("value").startswith(MASK):
            return match.group(0)
        return f"{match.group('name')}{match.group('eq')}{MASK}"
    return _PARAMETER.sub(replace, text)


_PLACEHOLDER = "zqzqvar{}zqzq"


def secret_references(raw: str, references: re.Pattern) -> set[str]:
    """The ``${VAR}`` names in ``raw`` whose values are secrets: named like one, or in a URL's
    userinfo, path, query or fragment (not its scheme, host or port, and not the whole value)."""
    found = [(m.group(1), m.span()) for m in references.finditer(raw)]
    secret = {name for name, _ in found if is_secret_name(name)}
    if "://" not in raw or (len(found) == 1 and found[0][1] == (0, len(raw))):
        return secret
    template, names = [], {}
    last = 0
    for index, (name, (start, end)) in enumerate(found):
        template.append(raw[last:start] + _PLACEHOLDER.format(index))
        names[_PLACEHOLDER.format(index)] = name
        last = end
    template.append(raw[last:])
    text = "".join(template)
    scheme, _, rest = text.partition("://")
    authority, sep, tail = re.match(r"([^/?#]*)(.?)(.*)", rest, re.S).groups()
    userinfo, at, hostport = authority.rpartition("@")
    for token, name in names.items():
        if token in userinfo or token in sep + tail:
            secret.add(name)
    return secret
