"""engine report: one self-contained index.html, checked as a browser sees it.

Headless Chromium loads the file (nothing else: the report has no script and
refers to no other file), dumps the DOM it built and takes a screenshot. The
numbers in the DOM must be the independently counted ones of the ``promo``
history (and of ``later``, a second campaign that has sent nothing yet), first
in the overview of all campaigns, in the shop's currency (CHF here); the
screenshot must show the chart colours. At 1280 px wide nothing scrolls
sideways: measured in the DOM (a copy of the report with a measuring script;
the report itself has none) and seen in a 1280 px screenshot, for this report
and for one with the largest figures and longest names a shop may have. Without Chromium these
tests are skipped, unless ENGINE_REQUIRE_CHROMIUM=1 (CI), where that fails.
"""
from __future__ import annotations

import os
import re
import shutil
import struct
import subprocess
import zlib
from html.parser import HTMLParser
from pathlib import Path

import pytest
from click.testing import CliRunner

from conftest import write
from engine.cli.main import main
from engine.tools.report import COLOURS, GLOSSARY, render_report
from engine.tools.stats import CampaignStats, Day, Group, StepStats
from stats_history import CUSTOMERS, build_history, expected_stats, has_email, ledger_rows, orders, unsubscribe_rows
from test_stats import STEPS, holdout_ids

CHROMIUM_TIMEOUT = 120  # seconds per browser run
WIDTH = 1280  # the window the report must fit without sideways scrolling
LATER = """
name: later
description: A campaign that has sent nothing yet.
trigger:
  order_placed: {nth: 2}
steps:
  - id: thanks
    delay: 30d
    channel: email
    template: second-order/nudge.email.j2
"""


def chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    if os.environ.get("ENGINE_REQUIRE_CHROMIUM") == "1":
        pytest.fail("ENGINE_REQUIRE_CHROMIUM=1 but no chromium on PATH (apt-get install chromium)")
    pytest.skip("chromium is not installed")


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    """(the history, index.html, the independent figures) on DuckDB."""
    history = build_history(tmp_path_factory.mktemp("report"), "duckdb")
    write(history.root / "campaigns.d" / "later.yaml", LATER)
    text = (history.root / "engine.yaml").read_text()
    (history.root / "engine.yaml").write_text(text.replace("defaults:\n", "defaults:\n  currency: CHF\n", 1))
    out = history.root / "out"
    result = CliRunner().invoke(main, ["--project", str(history.root), "report", "--out", str(out),
                                       "--as-of", "2025-03-10T00:00:00Z"])
    assert result.exit_code == 0, result.output
    reconciler = history.reconciler()
    try:
        expected = expected_stats(ledger_rows(reconciler), unsubscribe_rows(reconciler), orders(), STEPS)
    finally:
        reconciler.close()
    return history, out / "index.html", expected


def browser(*arguments: str) -> subprocess.CompletedProcess:
    return subprocess.run([chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                           *arguments], capture_output=True, text=True, timeout=CHROMIUM_TIMEOUT)


class Figures(HTMLParser):
    """data-funnel texts, table cells by (step, key), and the per-day data-sent / data-conversions."""

    def __init__(self):
        super().__init__()
        self.funnel: dict[str, str] = {}
        self.cells: dict[tuple[str, str], str] = {}
        self.sent: dict[str, int] = {}
        self.conversions: dict[str, int] = {}
        self.uplift = ""
        self.overview: dict[tuple[str, str], str] = {}
        self.order: list[str] = []  # section ids as they appear
        self.terms: list[str] = []  # glossary terms
        self._campaign = None
        self._step = None
        self._open: tuple[str, str] | None = None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "tr" and "data-step" in a:
            self._step = a["data-step"]
        if tag == "tr" and "data-overview" in a:
            self._campaign = a["data-overview"]
        if tag == "section":
            self.order.append(a.get("id", ""))
        if tag == "dt":
            self._open = ("term", "")
        if "data-o" in a:
            self._open = ("overview", a["data-o"])
        if "data-funnel" in a:
            self._open = ("funnel", a["data-funnel"])
        elif "data-k" in a:
            self._open = ("cell", a["data-k"])
        elif "data-uplift" in a:
            self._open = ("uplift", "")
        if "data-sent" in a:
            self.sent[a["data-day"]] = int(a["data-sent"])
        if "data-conversions" in a:
            self.conversions[a["data-day"]] = int(a["data-conversions"])

    def handle_data(self, data):
        if self._open is None:
            return
        kind, key = self._open
        if kind == "funnel":
            self.funnel[key] = data
        elif kind == "cell":
            self.cells[(self._step, key)] = data
        elif kind == "overview":
            self.overview[(self._campaign, key)] = data
        elif kind == "term":
            self.terms.append(data)
        else:
            self.uplift += data

    def handle_endtag(self, tag):
        if tag in ("text", "td", "p", "dt"):
            self._open = None


def test_the_report_needs_nothing_but_itself(report):
    _, index, _ = report
    html = index.read_text()
    assert "<script" not in html.lower()
    assert not re.search(r"\b(src|href)\s*=", html) and "@import" not in html and "url(" not in html
    assert re.findall(r"https?://[^\"' ]+", html) == ["http://www.w3.org/2000/svg"] * html.count("<svg")


def test_chromium_shows_the_independently_counted_numbers(report):
    history, index, expected = report
    result = browser("--dump-dom", index.as_uri())
    assert result.returncode == 0, result.stderr[-2000:]
    dom = Figures()
    dom.feed(result.stdout)
    total = expected["*"]
    entrants = sum(1 for i in CUSTOMERS if has_email(i))
    assert dom.funnel == {"entered": str(entrants), "sent": str(len(total["sent_customers"])),
                          "converted": str(len(total["sent"]["converted"])), "holdout": str(len(holdout_ids())),
                          "holdout-converted": str(len(total["holdout"]["converted"]))}
    for step in STEPS:
        want = expected[step]
        assert dom.cells[(step, "entered")] == str(want["entered"])
        assert dom.cells[(step, "sent")] == str(want["statuses"]["sent"])
        assert dom.cells[(step, "converted")] == str(len(want["sent"]["converted"]))
        assert dom.cells[(step, "revenue")] == f"{want['sent']['revenue']:,.2f}"
        assert dom.cells[(step, "holdout")] == str(len(want["holdout_customers"]))
        assert dom.cells[(step, "unsubscribed")] == str(len(want["unsubscribed"]))
    assert dom.cells[("all steps", "revenue")] == f"{total['sent']['revenue']:,.2f}"
    assert dom.sent == dict(expected["daily"]["sent"]) and sum(dom.sent.values()) == total["statuses"]["sent"]
    assert dom.conversions == dict(expected["daily"]["conversions"])
    assert dom.uplift.startswith("Uplift: sent ") and f"of {len(holdout_ids())}:" in dom.uplift


def test_the_overview_of_all_campaigns_comes_first_in_the_shops_currency(report):
    _, index, expected = report
    result = browser("--dump-dom", index.as_uri())
    assert result.returncode == 0, result.stderr[-2000:]
    dom = Figures()
    dom.feed(result.stdout)
    assert dom.order == ["overview", "glossary", "campaign-later", "campaign-promo"]
    total = expected["*"]
    reached, converted = len(total["sent_customers"]), len(total["sent"]["converted"])
    revenue = total["sent"]["revenue"]
    assert {k: v for (c, k), v in dom.overview.items() if c == "promo"} == {
        "sent": str(total["statuses"]["sent"]), "reached": str(reached), "converted": str(converted),
        "rate": f"{converted / reached * 100:.1f}%", "revenue": f"{revenue:,.2f} CHF",
        "uplift": dom.overview[("promo", "uplift")]}
    sent_rate, holdout_rate = converted / reached, len(total["holdout"]["converted"]) / len(holdout_ids())
    assert re.fullmatch(rf"{(sent_rate - holdout_rate) * 100:+.1f} pts \((significant|may be chance|too early to tell)\)",
                        dom.overview[("promo", "uplift")])
    assert [dom.overview[("later", k)] for k in ("sent", "rate", "revenue", "uplift")] == [
        "0", "-", "0.00 CHF", "no holdout group"]
    assert dom.overview[("*", "sent")] == str(total["statuses"]["sent"])
    assert dom.overview[("*", "revenue")] == f"{revenue:,.2f} CHF"
    assert "revenue (CHF)" in result.stdout
    assert {"Holdout", "Stale", "Unknown"} <= set(dom.terms) and dom.terms == [term for term, _ in GLOSSARY]


#: appended to a copy of a report: records how wide the page is and every box that scrolls sideways
MEASURE = """<script>
const boxes = [...document.querySelectorAll('*')].filter(e => e.scrollWidth > e.clientWidth + 1
    && ['auto', 'scroll'].includes(getComputedStyle(e).overflowX)).map(e => e.tagName + '.' + e.className);
document.body.setAttribute('data-measured', JSON.stringify(
    {page: document.documentElement.scrollWidth, window: window.innerWidth, scrolling: boxes}));
</script>"""


def measured(html: str, directory: Path) -> dict:
    """How wide Chromium lays out ``html`` in a 1280 px window, and which boxes scroll sideways."""
    import json

    copy = directory / "measured.html"
    copy.write_text(html.replace("</body>", MEASURE + "</body>"), encoding="utf-8")
    result = browser("--dump-dom", f"--window-size={WIDTH},900", copy.as_uri())
    assert result.returncode == 0, result.stderr[-2000:]
    found = re.search(r'data-measured="([^"]*)"', result.stdout)
    assert found, result.stdout[-2000:]
    return json.loads(found.group(1).replace("&quot;", '"'))


def widest_report() -> str:
    """The largest figures and longest names a shop may have: a year of days, every reason to skip."""
    from collections import Counter
    from datetime import date, timedelta

    skipped = Counter({"no_contact": 1_234_567, "stale": 234_567, "frequency_cap": 34_567, "recently_contacted": 4_567,
                       "no_consent": 567, "suppressed": 67, "holdout": 3_000_000, "no_variant": 7, "reentry": 8})

    def figures(step):
        return StepStats(step, entered=12_345_678, sent=9_876_543, failed=123_456, unknown=12_345, skipped=skipped,
                         unsubscribed=45_678, reached=Group(9_000_000, 1_234_567, 2_000_000, 123_456_789.12),
                         holdout=Group(3_000_000, 300_000, 400_000, 12_345_678.9))

    days = {(date(2025, 1, 1) + timedelta(days=i)).isoformat(): Day(30_000 + i, 4_000 + i, 1e6) for i in range(365)}
    stats = [CampaignStats(f"winback-after-ninety-days-of-silence-for-wholesale-customers-{n}", timedelta(days=30), 30,
                           figures(None), [figures("a-rather-long-step-identifier-for-the-first-reminder"),
                                           figures("second")], days) for n in range(3)]
    return render_report(stats, "Messages due from 2025-01-01T00:00:00Z until 2026-01-01T00:00:00Z",
                         "2026-01-01T00:00:00Z", "CHF")


def test_nothing_scrolls_sideways_in_a_1280_px_window(report, tmp_path):
    _, index, _ = report
    for name, html in (("report", index.read_text()), ("widest", widest_report())):
        (tmp_path / name).mkdir()
        layout = measured(html, tmp_path / name)
        assert layout["window"] == WIDTH, layout
        assert layout["page"] <= WIDTH and layout["scrolling"] == [], (name, layout)


def test_the_measurement_sees_a_report_that_does_not_fit(tmp_path):
    """The check above can fail: the widest report with every cell kept on one line scrolls sideways."""
    html = widest_report().replace("</style>", "td{white-space:nowrap!important}</style>")
    layout = measured(html, tmp_path)
    assert layout["page"] <= WIDTH and "DIV.table" in layout["scrolling"]
    (tmp_path / "visible").mkdir()
    layout = measured(html.replace("</style>", ".table{overflow-x:visible!important}</style>"), tmp_path / "visible")
    assert layout["page"] > WIDTH


def png_pixels(path: Path) -> tuple[int, int, list[bytes]]:
    """Width, height and rows of RGB(A) pixels of an 8-bit, non-interlaced PNG (what Chromium writes)."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, header = 8, b"", None
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + length]
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            idat += body
        pos += 12 + length
    width, height, depth, colour, _, _, interlace = header
    assert depth == 8 and colour in (2, 6) and interlace == 0
    channels = 3 if colour == 2 else 4
    raw, stride, rows, previous = zlib.decompress(idat), width * channels, [], bytearray(width * channels)
    for y in range(height):
        kind, line = raw[y * (stride + 1)], bytearray(raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
        for x in range(stride):
            left = line[x - channels] if x >= channels else 0
            up, corner = previous[x], previous[x - channels] if x >= channels else 0
            if kind == 1:
                line[x] = (line[x] + left) & 255
            elif kind == 2:
                line[x] = (line[x] + up) & 255
            elif kind == 3:
                line[x] = (line[x] + (left + up) // 2) & 255
            elif kind == 4:
                p = left + up - corner
                pa, pb, pc = abs(p - left), abs(p - up), abs(p - corner)
                line[x] = (line[x] + (left if pa <= pb and pa <= pc else up if pb <= pc else corner)) & 255
        rows.append(bytes(line))
        previous = line
    return width, height, [bytes(r[i:i + 3]) for r in rows for i in range(0, stride, channels)]


def test_the_screenshot_shows_the_charts(report, tmp_path):
    _, index, _ = report
    shot = tmp_path / "report.png"
    result = browser(f"--screenshot={shot}", "--window-size=1000,1800", index.as_uri())  # overview, glossary, then the charts
    assert result.returncode == 0 and shot.exists(), result.stderr[-2000:]
    width, height, pixels = png_pixels(shot)
    assert (width, height) == (1000, 1800)
    counts: dict[bytes, int] = {}
    for pixel in pixels:
        counts[pixel] = counts.get(pixel, 0) + 1
    background = max(counts.values())
    assert len(pixels) - background > len(pixels) // 20  # far from blank
    for key in ("sent", "holdout", "entered"):
        colour = bytes.fromhex(COLOURS[key][1:])
        assert counts.get(colour, 0) > 100, f"no {key} bar ({COLOURS[key]}) in the screenshot"


def test_a_1280_px_screenshot_shows_the_whole_width(tmp_path):
    """The widest report at 1280 px: the overview's last column is on screen, and nothing reaches the right edge."""
    page = tmp_path / "widest.html"
    page.write_text(widest_report(), encoding="utf-8")
    shot = tmp_path / "widest.png"
    result = browser(f"--screenshot={shot}", f"--window-size={WIDTH},700", page.as_uri())
    assert result.returncode == 0 and shot.exists(), result.stderr[-2000:]
    width, height, pixels = png_pixels(shot)
    assert (width, height) == (WIDTH, 700)
    background = bytes.fromhex("f5f7fa")
    edge = [pixels[y * width + x] for y in range(height) for x in range(width - 16, width)]
    assert set(edge) == {background}, "something reaches the right edge of a 1280 px window"
    # the white cards end inside the window, with the page's background to their right
    row = [pixels[300 * width + x] for x in range(width)]
    white = [x for x, p in enumerate(row) if p == b"\xff\xff\xff"]
    assert white and max(white) < width - 16
