"""engine report: one self-contained index.html, checked as a browser sees it.

Headless Chromium loads the file (nothing else: the report has no script and
refers to no other file), dumps the DOM it built and takes a screenshot. The
numbers in the DOM must be the independently counted ones of the ``promo``
history; the screenshot must show the chart colours. Without Chromium these
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

from engine.cli.main import main
from engine.tools.report import COLOURS
from stats_history import CUSTOMERS, build_history, expected_stats, has_email, ledger_rows, orders, unsubscribe_rows
from test_stats import STEPS, holdout_ids

CHROMIUM_TIMEOUT = 120  # seconds per browser run


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
        self._step = None
        self._open: tuple[str, str] | None = None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "tr" and "data-step" in a:
            self._step = a["data-step"]
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
        else:
            self.uplift += data

    def handle_endtag(self, tag):
        if tag in ("text", "td", "p"):
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
        assert dom.cells[(step, "revenue")] == f"{want['sent']['revenue']:.2f}"
        assert dom.cells[(step, "holdout")] == str(len(want["holdout_customers"]))
        assert dom.cells[(step, "unsubscribed")] == str(len(want["unsubscribed"]))
    assert dom.cells[("all steps", "revenue")] == f"{total['sent']['revenue']:.2f}"
    assert dom.sent == dict(expected["daily"]["sent"]) and sum(dom.sent.values()) == total["statuses"]["sent"]
    assert dom.conversions == dict(expected["daily"]["conversions"])
    assert dom.uplift.startswith("Uplift: sent ") and f"of {len(holdout_ids())}:" in dom.uplift


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
    result = browser(f"--screenshot={shot}", "--window-size=1000,900", index.as_uri())
    assert result.returncode == 0 and shot.exists(), result.stderr[-2000:]
    width, height, pixels = png_pixels(shot)
    assert (width, height) == (1000, 900)
    counts: dict[bytes, int] = {}
    for pixel in pixels:
        counts[pixel] = counts.get(pixel, 0) + 1
    background = max(counts.values())
    assert len(pixels) - background > len(pixels) // 20  # far from blank
    for key in ("sent", "holdout", "entered"):
        colour = bytes.fromhex(COLOURS[key][1:])
        assert counts.get(colour, 0) > 100, f"no {key} bar ({COLOURS[key]}) in the screenshot"
