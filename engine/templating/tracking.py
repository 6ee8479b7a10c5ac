"""A rendered HTML part made trackable: its links through the click redirect, UTM parameters, an open pixel.

``track_html`` rewrites the ``href`` of every ``<a>`` and ``<area>`` whose
target is an http(s) URL: the campaign's UTM parameters are added to the
target (a parameter the link already has is kept), then, when clicks are
tracked, the link becomes ``click(target)`` - the service's signed redirect,
made by the caller (engine.tracking). Left exactly as written: the links in
``keep`` (the unsubscribe link), ``mailto:``, ``tel:``, fragments and every
other scheme, and targets longer than ``MAX_URL_CHARS``. With a
``pixel_url`` a 1x1 image is added before ``</body>`` (or at the end).

Only the attribute values are replaced: every other byte of the HTML stays as
rendered. The tags are found by the standard library's HTML parser (the same
tokenizer rules browsers use for start tags), not by a regular expression
over the whole document, so a link inside a comment, a ``<script>`` or an
attribute value is never touched. Pure; must not sign anything itself.
"""
from __future__ import annotations

import html
import re
from html.parser import HTMLParser
from typing import Callable, Iterable, Mapping
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from engine.tracking import MAX_URL_CHARS

#: the UTM parameters a campaign or step may set (``tracking: {utm: {source: newsletter}}``)
UTM_NAMES = ("source", "medium", "campaign", "term", "content")
_HREF = re.compile(r"""(\shref\s*=\s*)("[^"]*"|'[^']*'|[^\s"'=<>`]+)""", re.IGNORECASE)
_BODY_END = re.compile(r"</body\s*>", re.IGNORECASE)


class _Links(HTMLParser):
    """Collects (offset of the start tag, its raw text, its href) of every link tag."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.found: list[tuple[tuple[int, int], str, str]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag not in ("a", "area"):
            return
        href = next((value for name, value in attrs if name == "href"), None)
        raw = self.get_starttag_text()
        if href is not None and raw is not None:
            self.found.append((self.getpos(), raw, href))

    handle_startendtag = handle_starttag


def with_utm(url: str, utm: Mapping[str, str]) -> str:
    """``url`` with ``utm_<name>`` parameters it does not already have."""
    if not utm:
        return url
    parts = urlsplit(url)
    present = {name for name, _ in parse_qsl(parts.query, keep_blank_values=True)}
    added = [(f"utm_{name}", value) for name, value in utm.items() if f"utm_{name}" not in present]
    if not added:
        return url
    query = parts.query + ("&" if parts.query else "") + urlencode(added)
    return urlunsplit(parts._replace(query=query))


def trackable(url: str) -> bool:
    return url.lower().startswith(("http://", "https://")) and len(url) <= MAX_URL_CHARS


def track_html(document: str, *, click: Callable[[str], str] | None, pixel_url: str | None,
               utm: Mapping[str, str] = {}, keep: Iterable[str] = ()) -> str:
    """``document`` with its links rewritten and the pixel added (see the module's docstring)."""
    kept = set(keep)
    parser = _Links()
    parser.feed(document)
    parser.close()
    line_starts = [0]
    for match in re.finditer("\n", document):
        line_starts.append(match.end())
    pieces: list[str] = []
    done = 0
    for (line, column), raw, href in parser.found:
        start = line_starts[line - 1] + column
        target = href.strip()
        if target in kept or not trackable(target) or document[start:start + len(raw)] != raw:
            continue
        new = with_utm(target, utm)
        if click is not None:
            new = click(new)
        if new == href:
            continue
        match = _HREF.search(raw)
        if match is None:
            continue
        tag = raw[:match.start(2)] + '"' + html.escape(new, quote=True) + '"' + raw[match.end(2):]
        pieces += [document[done:start], tag]
        done = start + len(raw)
    pieces.append(document[done:])
    tracked = "".join(pieces)
    if pixel_url is None:
        return tracked
    pixel = (f'<img src="{html.escape(pixel_url, quote=True)}" width="1" height="1" alt="" '
             'style="display:block;width:1px;height:1px;border:0" />')
    ends = list(_BODY_END.finditer(tracked))
    if not ends:
        return tracked + pixel
    at = ends[-1].start()
    return tracked[:at] + pixel + tracked[at:]
