"""A letter's print-ready PDF: its rendered parts laid out on A4 (DIN 5008) or US letter, with a QR code.

``render`` turns an ``OutgoingMessage`` of a printed kind (parts ``address``,
``body`` as HTML, optional ``subject``; the sender line is ``message.sender``;
the signed link is the ``PRINTED_LINK`` header) into PDF bytes with WeasyPrint
(HTML/CSS paged media: page size, and boxes placed in millimetres for the
envelope's window), and ``document`` is those exact bytes - what a transport
hands over. The address sits in the window of the chosen form (``FORMATS``,
DIN 5008 form B by default): the sender's line in the top zone of the window,
the address in the zone below it; the QR code of the signed link at the top
right, outside the window.

Reproducible by construction: one font, given as files (DejaVu Sans by
default, never a system fallback: a character the font lacks fails the letter
instead), no creation date, and a PDF identifier derived from the message key,
so the same message gives the same bytes. Safe by construction: the renderer
fetches nothing but the font files and the QR code it was given (a template's
``<img src=http://...>`` or ``file:///etc/passwd`` is refused). Everything a
letter can fail on - a missing font, a character the font lacks, more pages
than ``max_pages``, HTML the renderer cannot lay out - is a ``LetterProblem``
with a clear reason, never another exception. Owns the layout; must not write
files or send (the transports do).
"""
from __future__ import annotations

import atexit
import functools
import hashlib
import html
import re
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

from engine.channel_kinds.declaration import PRINTED_LINK
from engine.channels.base import DocumentProblem, OutgoingMessage
from engine.errors import ChannelError
from engine.model import ChannelConfig
from engine.spec.config import resolve

DEJAVU = "/usr/share/fonts/truetype/dejavu"


@dataclass(frozen=True)
class Box:
    """A rectangle on the first page, in millimetres from the page's top left corner."""

    left: float
    top: float
    width: float
    height: float


@dataclass(frozen=True)
class PageForm:
    """A paper size and where its envelope's window is."""

    width: float
    height: float
    #: the address field, which the envelope's window shows
    window: Box
    #: the top zone of the window (the sender's line, postal notes); the address starts below it
    return_zone: float
    #: folding marks on the left edge (mm from the top), for the print shop's folding machine
    fold_marks: tuple[float, ...] = ()


#: DIN 5008:2020 (form A and B) for C6/DL window envelopes (DIN 680): the address field 20 mm from the left
#: edge, 85 x 45 mm, at 27 mm (A) or 45 mm (B) from the top; its top 12.7 / 17.7 mm the additional-information
#: zone, then the 27.3 mm address zone. US letter for a #10 window envelope: a 4 1/2 x 1 1/8 in window 7/8 in
#: from the left, about 2 in from the top of a tri-folded sheet.
FORMATS: Mapping[str, PageForm] = {
    "din5008-b": PageForm(210, 297, Box(20, 45, 85, 45), 17.7, (105, 210)),
    "din5008-a": PageForm(210, 297, Box(20, 27, 85, 45), 12.7, (87, 192)),
    "us-letter": PageForm(215.9, 279.4, Box(22.2, 52, 114.3, 28.6), 6.0, (93.1, 186.2)),
}
DEFAULT_FORMAT = "din5008-b"
#: the channel settings ``layout_of`` reads
LAYOUT_SETTINGS = ("format", "max_pages", "font", "font_bold")
DEFAULT_MAX_PAGES = 2


class LetterProblem(DocumentProblem):
    """Why a letter cannot be printed (the reason a failed message records)."""


@dataclass(frozen=True)
class LetterLayout:
    """How a channel's letters are laid out (engine.yaml: format, max_pages, font, font_bold)."""

    format: str = DEFAULT_FORMAT
    max_pages: int = DEFAULT_MAX_PAGES
    font: str = f"{DEJAVU}/DejaVuSans.ttf"
    font_bold: str = f"{DEJAVU}/DejaVuSans-Bold.ttf"

    @property
    def form(self) -> PageForm:
        return FORMATS[self.format]

    def check(self) -> None:
        """A ``LetterProblem`` naming the font file that is missing or not a font, or the system
        libraries the renderer lacks (a transport's ``open`` calls it: nothing is claimed then)."""
        for path in (self.font, self.font_bold):
            _glyphs(path)
        _weasyprint()


def layout_of(settings: Mapping[str, object], root: Path | None = None) -> LetterLayout:
    """The layout a channel's settings ask for (``LAYOUT_SETTINGS``, resolved already; font paths relative to
    ``root``); a ``LetterProblem`` for a
    format it does not know or a page limit that is not a positive number."""
    form = str(settings.get("format", DEFAULT_FORMAT))
    if form not in FORMATS:
        raise LetterProblem(f"unknown letter format '{form}': use one of {', '.join(FORMATS)}")
    try:
        max_pages = int(str(settings.get("max_pages", DEFAULT_MAX_PAGES)))
    except ValueError:
        max_pages = 0
    if max_pages < 1:
        raise LetterProblem(f"max_pages must be a whole number of at least 1, not '{settings.get('max_pages')}'")
    font = str(settings.get("font", LetterLayout.font))
    bold = str(settings.get("font_bold", font if "font" in settings else LetterLayout.font_bold))
    if root is not None:  # a relative font path is under the project folder
        font, bold = str(root / font), str(root / bold)
    return LetterLayout(form, max_pages, font, bold)


@dataclass(frozen=True)
class Letter:
    pdf: bytes
    pages: int


def document(message: OutgoingMessage, layout: LetterLayout = LetterLayout()) -> bytes:
    """The exact PDF bytes handed to the print shop or provider for ``message``."""
    return render(message, layout).pdf


def channel_layout(settings: Mapping[str, object], root: Path | None) -> LetterLayout:
    """A channel's layout from its engine.yaml settings (``${VAR}`` resolved), made once per channel and
    project folder: the transports' ``document`` runs per message."""
    return _layout(tuple(sorted((key, resolve(str(value))) for key, value in settings.items()
                                if key in LAYOUT_SETTINGS)), root)


def channel_document(message: OutgoingMessage, config: ChannelConfig | None = None, root: Path | None = None) -> bytes:
    """The exact PDF bytes a letter transport hands over for ``message`` (both transports' ``document``),
    in the channel's layout (its format, page limit and fonts; relative font paths under the project
    folder ``root``); a ``LetterProblem`` when it cannot be printed."""
    layout = LetterLayout() if config is None else channel_layout(config.settings, root)
    return render(message, layout).pdf


def session_layout(config: ChannelConfig, root: Path) -> LetterLayout:
    """A transport session's layout; a ``ChannelError`` naming the channel when its settings cannot give one."""
    try:
        return layout_of({key: resolve(str(value)) for key, value in config.settings.items() if key in LAYOUT_SETTINGS},
                         root)
    except LetterProblem as exc:
        raise ChannelError(f"channel '{config.name}': {exc}") from None


def pdf_and_pages(message: OutgoingMessage, layout: LetterLayout) -> tuple[bytes, int]:
    """The letter's PDF as rendered at render time (the document the ledger keeps, sent byte for byte) and
    its page count; rendered here only for a message stored without its document."""
    if message.document is not None:
        return message.document, page_count(message.document)
    letter = render(message, layout)
    return letter.pdf, letter.pages


@functools.lru_cache(maxsize=32)
def _layout(settings: tuple[tuple[str, str], ...], root: Path | None) -> LetterLayout:
    return layout_of(dict(settings), root)


def page_count(pdf: bytes) -> int:
    """How many pages a PDF this module wrote has: its page objects, counted in the PDF and in its
    compressed object streams (the transports report it in a manifest or to the print API without
    laying the letter out again)."""
    page = re.compile(rb"/Type\s*/Page(?![A-Za-z])")
    count = len(page.findall(pdf))
    for stream in re.finditer(rb"stream\r?\n(.*?)\r?\nendstream", pdf, re.S):
        try:
            count += len(page.findall(zlib.decompress(stream.group(1))))
        except zlib.error:
            continue
    return count


def render(message: OutgoingMessage, layout: LetterLayout = LetterLayout()) -> Letter:
    """The letter's PDF and page count; a ``LetterProblem`` when it cannot be printed."""
    address = message.parts.get("address", "")
    if not address.strip():
        raise LetterProblem("the letter has an empty address block")
    glyphs = _glyphs(layout.font)
    missing = sorted({ch for ch in _visible_text(message) if not ch.isspace() and ord(ch) not in glyphs})
    if missing:
        shown = ", ".join(f"'{ch}' (U+{ord(ch):04X})" for ch in missing[:5])
        raise LetterProblem(f"the letter has characters the font {Path(layout.font).name} lacks: {shown}")
    _glyphs(layout.font_bold)
    weasyprint = _weasyprint()
    from weasyprint.urls import FatalURLFetchingError

    source = _html(message, layout)
    try:
        stylesheet, fonts = _stylesheet(layout)
        rendered = weasyprint.HTML(string=source, url_fetcher=_only(set())).render(stylesheets=[stylesheet],
                                                                                    font_config=fonts)
    except FatalURLFetchingError as exc:  # a BaseException: the refusal of _only, as its cause
        raise LetterProblem(str(exc.__cause__ or exc)) from None
    except Exception as exc:  # noqa: BLE001 - whatever the layout engine raises fails this letter only
        raise LetterProblem(f"the letter cannot be laid out as a PDF: {type(exc).__name__}: {exc}") from None
    pages = len(rendered.pages)
    if pages > layout.max_pages:
        raise LetterProblem(f"the letter has {pages} pages, more than max_pages: {layout.max_pages}")
    try:
        pdf = rendered.write_pdf(pdf_identifier=hashlib.sha256(message.key.encode()).hexdigest()[:32].encode())
    except Exception as exc:  # noqa: BLE001
        raise LetterProblem(f"the letter cannot be written as a PDF: {type(exc).__name__}: {exc}") from None
    return Letter(pdf, pages)


def _weasyprint():
    """The WeasyPrint module (a second or so to import: only when letters are printed); a ``LetterProblem``
    when the system libraries it lays text out with are missing."""
    try:
        import weasyprint
    except OSError as exc:  # cffi cannot load pango
        raise LetterProblem(f"WeasyPrint cannot load its system libraries ({exc}): install pango "
                            f"(Debian: libpango-1.0-0 libpangoft2-1.0-0)") from None
    return weasyprint


def _visible_text(message: OutgoingMessage) -> str:
    body = html.unescape(re.sub(r"<[^>]*>", " ", message.parts.get("body", "")))
    return "".join((message.parts.get("address", ""), message.parts.get("subject", ""), message.sender, body))


@functools.lru_cache(maxsize=8)
def _glyphs(path: str) -> frozenset[int]:
    """The code points font file ``path`` has glyphs for."""
    from fontTools.ttLib import TTFont, TTLibError  # comes with WeasyPrint

    if not Path(path).is_file():
        raise LetterProblem(f"the font file {path} does not exist: install it (Debian: fonts-dejavu-core) "
                            f"or set font: (and font_bold:) of the channel to a TrueType font file")
    try:
        return frozenset(TTFont(path, lazy=True).getBestCmap() or ())
    except (TTLibError, OSError, AssertionError, KeyError) as exc:
        raise LetterProblem(f"the font file {path} is not a TrueType/OpenType font: {exc}") from None


def _only(allowed: set[str]):
    """A URL fetcher that serves the font files and data: URLs and refuses everything else, stopping
    the rendering (``fail_on_errors``): a letter that wants more fails with the URL it asked for."""
    from weasyprint.urls import URLFetcher

    class OnlyOwnResources(URLFetcher):
        def fetch(self, url, headers=None):
            if url in allowed or url.startswith("data:"):
                return super().fetch(url, headers)
            raise LetterProblem(f"a letter may not load {url[:80]}: only its own fonts and QR code")

    return OnlyOwnResources(fail_on_errors=True, allow_redirects=False)


def _qr_png(link: str) -> str:
    """The QR code of ``link`` as a PNG data URL, one pixel per module (the page scales it up without
    smoothing: ``image-rendering: pixelated``); five times faster to lay out than the same code as SVG."""
    import segno

    return segno.make(link, error="m").png_data_uri(scale=1, border=4)


#: the page's margins (mm): top of the pages after the first, right, bottom, left (DIN 5008: 25 mm left)
_MARGINS = (20.0, 20.0, 20.0, 25.0)


def _top_first(form: PageForm) -> float:
    return form.window.top + form.window.height + 8.5  # DIN 5008: the text starts one blank line below the window


@functools.lru_cache(maxsize=8)
def _stylesheet(layout: LetterLayout):
    """(the stylesheet, its font configuration) of ``layout``, parsed once per process: registering the
    font faces is most of the cost of a letter otherwise."""
    from weasyprint import CSS
    from weasyprint.text.fonts import FontConfiguration

    form, font, bold = layout.form, Path(layout.font).resolve().as_uri(), Path(layout.font_bold).resolve().as_uri()
    window, top_first = form.window, _top_first(form)
    top, right, bottom, left = _MARGINS
    fonts = FontConfiguration()
    css = f"""
@font-face {{ font-family: Letter; src: url("{font}"); font-weight: normal; font-style: normal }}
@font-face {{ font-family: Letter; src: url("{font}"); font-weight: normal; font-style: italic }}
@font-face {{ font-family: Letter; src: url("{bold}"); font-weight: bold; font-style: normal }}
@font-face {{ font-family: Letter; src: url("{bold}"); font-weight: bold; font-style: italic }}
@page {{ size: {form.width}mm {form.height}mm; margin: {top}mm {right}mm {bottom}mm {left}mm;
        @bottom-right {{ content: counter(page) " / " counter(pages); font: 8pt Letter }} }}
@page :first {{ margin-top: {top_first}mm }}
html {{ font-family: Letter; font-size: 10.5pt; line-height: 1.35; color: #000 }}
body {{ margin: 0 }}
.window {{ position: absolute; left: {window.left - left}mm; top: {window.top - top_first}mm;
          width: {window.width}mm; height: {window.height}mm; overflow: hidden }}
.sender {{ position: absolute; left: 5mm; right: 3mm; bottom: {window.height - form.return_zone}mm;
          font-size: 7pt; line-height: 1.2; white-space: nowrap; overflow: hidden }}
.address {{ position: absolute; left: 5mm; right: 3mm; top: {form.return_zone}mm; bottom: 0;
           white-space: pre-line; line-height: 1.25; overflow: hidden }}
.qr {{ position: absolute; left: {form.width - right - 28 - left}mm; top: {window.top - top_first}mm;
      width: 28mm; height: 28mm; image-rendering: pixelated }}
.mark {{ position: absolute; left: {5 - left}mm; width: 5mm; border-top: 0.2mm solid #000 }}
.subject {{ font-weight: bold; margin: 0 0 8mm }}
img {{ max-width: 100% }}
"""
    fetcher = _only({Path(layout.font).resolve().as_uri(), Path(layout.font_bold).resolve().as_uri()})
    return CSS(string=css, font_config=fonts, url_fetcher=fetcher), fonts


# the cached font configurations own temporary folders they remove when collected: collect them while the
# interpreter still works (at exit the modules' globals are gone, and weasyprint's cleanup fails noisily)
atexit.register(_stylesheet.cache_clear)


def _html(message: OutgoingMessage, layout: LetterLayout) -> str:
    form = layout.form
    top_first = _top_first(form)
    link = message.headers.get(PRINTED_LINK)
    qr = (f'<img class="qr" alt="" src="{html.escape(_qr_png(link))}">' if link else "")
    marks = "".join(f'<div class="mark" style="top:{y - top_first:.2f}mm"></div>' for y in form.fold_marks)
    subject = message.parts.get("subject")
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>{html.escape(subject or "Letter")}</title>
</head><body>
<div class="window"><div class="sender">{html.escape(message.sender)}</div><div class="address">{html.escape(message.parts.get("address", "").strip())}</div></div>
{qr}{marks}
{f'<p class="subject">{html.escape(subject)}</p>' if subject else ""}
<main>{message.parts.get("body", "")}</main>
</body></html>"""
