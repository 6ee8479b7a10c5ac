"""Postal letters (issue 16, point 3): the PDF, its window and QR code, the drop folder, the print API, /scan.

The PDF is checked with the tools a print shop would use: poppler's pdftotext
(-bbox: the address's coordinates against the DIN 5008 window) and pdftoppm
(the window region inked, the margin beside it blank), and zbarimg decodes
the QR code back to the signed link, which the running service resolves. In
CI (ENGINE_REQUIRE_LETTER_TOOLS=1, set by .ci/run) a missing tool fails these
tests instead of skipping them.
"""
from __future__ import annotations

import csv
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import textwrap
import threading
import urllib.error
import urllib.request
from email.parser import BytesParser
from email.policy import HTTP
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from engine import scan_link
from engine.channel_kinds.declaration import PRINTED_LINK
from engine.channels.base import Delivered, Failed, OutgoingMessage
from engine.channels.letter_pdf import FORMATS, LetterLayout, LetterProblem, layout_of, render
from engine.errors import ChannelError
from engine.model import ChannelConfig

TOOLS = ("pdftotext", "pdftoppm", "zbarimg")
MISSING = [tool for tool in TOOLS if shutil.which(tool) is None]
if MISSING:
    if os.environ.get("ENGINE_REQUIRE_LETTER_TOOLS"):
        raise RuntimeError(f"ENGINE_REQUIRE_LETTER_TOOLS is set but {', '.join(MISSING)} is missing: "
                           "apt-get install poppler-utils zbar-tools")
    pytestmark = pytest.mark.skip(reason=f"{', '.join(MISSING)} not installed (Debian: poppler-utils, zbar-tools)")

SECRET = "a-test-secret-of-enough-length-1234567890"
MM = 72 / 25.4  # PDF points per millimetre
ADDRESS = "Anna Meyer\nLindenallee 5\n10115 Berlin"


def letter(key: str = "re-engage:letter:7:42", address: str = ADDRESS, body: str = "<p>Dear Anna, we miss you.</p>",
           subject: str | None = "We miss you") -> OutgoingMessage:
    parts = {"address": address, "body": body, **({"subject": subject} if subject else {})}
    return OutgoingMessage(key=key, kind="letter", to=address, sender="Bean & Brew · Röstereistraße 7 · 20095 Hamburg",
                           parts=parts, headers={PRINTED_LINK: scan_link.link("https://shop.example/scan", SECRET, key)})


def words(pdf: Path) -> list[tuple[str, float, float, float, float]]:
    """(word, xMin, yMin, xMax, yMax) in points of the first page, from pdftotext -bbox."""
    html = subprocess.run(["pdftotext", "-bbox", "-f", "1", "-l", "1", str(pdf), "-"], capture_output=True, text=True,
                          check=True, timeout=60).stdout
    return [(w, float(a), float(b), float(c), float(d)) for a, b, c, d, w in
            re.findall(r'<word xMin="([\d.]+)" yMin="([\d.]+)" xMax="([\d.]+)" yMax="([\d.]+)">([^<]*)</word>', html)]


def inked(image, box_mm: tuple[float, float, float, float], dpi: int) -> int:
    """Dark pixels of ``image`` (grayscale) inside the box (left, top, right, bottom in mm)."""
    left, top, right, bottom = (round(v / 25.4 * dpi) for v in box_mm)
    return sum(image.crop((left, top, right, bottom)).histogram()[:128])


@pytest.mark.parametrize("form", ["din5008-b", "us-letter"])
def test_the_address_lands_in_the_window_and_the_qr_code_decodes_to_the_signed_link(tmp_path, form):
    from PIL import Image

    message = letter()
    printed = render(message, LetterLayout(format=form))
    pdf = tmp_path / "letter.pdf"
    pdf.write_bytes(printed.pdf)
    assert printed.pages == 1 and printed.pdf.startswith(b"%PDF-")
    window = FORMATS[form].window

    # the address's words (and the return line) lie inside the window; the body below it
    placed = words(pdf)
    for line in ADDRESS.splitlines():
        for word in line.split():
            (x0, y0, x1, y1), = [(a, b, c, d) for w, a, b, c, d in placed if w == word]
            assert window.left * MM <= x0 and x1 <= (window.left + window.width) * MM, (word, x0, x1)
            assert window.top * MM <= y0 and y1 <= (window.top + window.height) * MM, (word, y0, y1)
    (y_bean,), = [(b,) for w, a, b, c, d in placed if w == "Röstereistraße"]
    assert window.top * MM <= y_bean < (window.top + window.height) * MM
    (y_dear,), = [(b,) for w, a, b, c, d in placed if w == "Dear"]
    assert y_dear > (window.top + window.height) * MM

    # the rendered page: ink inside the window, none in the margin beside it nor just below it
    dpi = 100
    subprocess.run(["pdftoppm", "-r", str(dpi), "-gray", "-png", "-singlefile", str(pdf), str(tmp_path / "page")],
                   check=True, timeout=60)
    image = Image.open(tmp_path / "page.png").convert("L")
    expected = (FORMATS[form].width / 25.4 * dpi, FORMATS[form].height / 25.4 * dpi)  # A4 or US letter
    assert all(abs(got - want) <= 1 for got, want in zip(image.size, expected)), (image.size, expected)
    assert inked(image, (window.left, window.top, window.left + window.width, window.top + window.height), dpi) > 200
    assert inked(image, (window.left - 10, window.top, window.left - 1, window.top + window.height), dpi) == 0
    assert inked(image, (window.left, window.top + window.height + 0.5, window.left + window.width,
                         window.top + window.height + 6), dpi) == 0

    # the QR code decodes (zbarimg) to the message's signed link, which verifies with the secret
    subprocess.run(["pdftoppm", "-r", "200", "-gray", "-png", "-singlefile", str(pdf), str(tmp_path / "hi")],
                   check=True, timeout=60)
    decoded = subprocess.run(["zbarimg", "-q", "--raw", str(tmp_path / "hi.png")], capture_output=True, text=True,
                             timeout=60).stdout.strip()
    assert decoded == message.headers[PRINTED_LINK]
    assert scan_link.check(decoded, SECRET) == scan_link.token(message.key)
    # no personal data: the query is the message's token (a digest of its key) and the signature, nothing else
    assert set(decoded.partition("?")[2].split("&")) == {f"m={scan_link.token(message.key)}",
                                                        f"s={scan_link.signature(SECRET, scan_link.token(message.key))}"}

    # the text content: subject, body, page number
    text = subprocess.run(["pdftotext", "-layout", str(pdf), "-"], capture_output=True, text=True, check=True,
                          timeout=60).stdout
    assert "We miss you" in text and "Dear Anna, we miss you." in text and re.search(r"1\s*/\s*1", text)


def test_the_same_message_gives_the_same_bytes():
    first, again = render(letter()).pdf, render(letter()).pdf
    assert first == again
    assert b"CreationDate" not in first and b"ModDate" not in first
    assert render(letter(key="re-engage:letter:8:42")).pdf != first  # another message, another QR code and /ID


def test_a_signed_link_is_refused_when_forged_or_malformed():
    link = scan_link.link("https://shop.example/scan", SECRET, "k:1")
    assert scan_link.check(link, ["an-old-secret-of-enough-length-0000000000", SECRET]) == scan_link.token("k:1")
    forged = link[:-1] + ("0" if link[-1] != "0" else "1")
    with pytest.raises(scan_link.ScanRefused) as refused:
        scan_link.check(forged, SECRET)
    assert refused.value.status == 404
    for malformed in ("m=1&s=2", link + "&m=" + "0" * 32, "https://shop.example/scan"):
        with pytest.raises(scan_link.ScanRefused) as refused:
            scan_link.check(malformed, SECRET)
        assert refused.value.status == 400


def test_letters_that_cannot_be_printed_fail_with_a_clear_reason(tmp_path):
    with pytest.raises(LetterProblem, match=r"characters the font DejaVuSans.ttf lacks: '漢' \(U\+6F22\)"):
        render(letter(address="Anna 漢\nLindenallee 5\n10115 Berlin"))
    long_body = "".join(f"<p>Paragraph {i} of a letter that goes on and on.</p>" for i in range(200))
    with pytest.raises(LetterProblem, match=r"the letter has \d+ pages, more than max_pages: 2"):
        render(letter(body=long_body), LetterLayout(max_pages=2))
    with pytest.raises(LetterProblem, match=r"the font file .*/missing.ttf does not exist: install it"):
        render(letter(), LetterLayout(font=str(tmp_path / "missing.ttf")))
    (tmp_path / "not-a-font.ttf").write_text("hello")
    with pytest.raises(LetterProblem, match=r"is not a TrueType/OpenType font"):
        render(letter(), LetterLayout(font=str(tmp_path / "not-a-font.ttf")))
    secret_file = tmp_path / "secret.txt"
    secret_file.write_text("private")
    for url in ("http://127.0.0.1:9/logo.png", secret_file.as_uri()):
        with pytest.raises(LetterProblem, match=r"a letter may not load .*only its own fonts and QR code"):
            render(letter(body=f'<p>Hi</p><img src="{url}">'))
    with pytest.raises(LetterProblem, match="empty address block"):
        render(letter(address="  "))
    with pytest.raises(LetterProblem, match="unknown letter format 'a5'"):
        layout_of({"format": "a5"})
    with pytest.raises(LetterProblem, match="max_pages must be a whole number"):
        layout_of({"max_pages": "0"})


# --- the print provider's HTTP API ----------------------------------------------------------------


class PrintProvider:
    """A print API on loopback: checks auth and the multipart body, answers with ``script`` (status codes)."""

    def __init__(self):
        self.received: list[dict] = []
        self.script: list[int] = []
        provider = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                form = BytesParser(policy=HTTP).parsebytes(
                    f"Content-Type: {self.headers['Content-Type']}\r\n\r\n".encode() + body)
                fields = {part.get_param("name", header="content-disposition"): part for part in form.iter_parts()}
                provider.received.append({
                    "auth": self.headers.get("X-Api-Key"), "idempotency": self.headers.get("Idempotency-Key"),
                    "key": fields["message_key"].get_content(), "address": fields["address"].get_content(),
                    "pages": fields["pages"].get_content(), "pdf": fields["pdf"].get_content(),
                    "pdf_type": fields["pdf"].get_content_type()})
                status = provider.script.pop(0) if provider.script else 201
                answer = json.dumps({"id": f"print-{len(provider.received)}"}).encode()
                self.send_response(status)
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/letters"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def test_the_print_api_gets_the_pdf_and_the_address_idempotently(tmp_path, monkeypatch):
    from engine.channels import letter_api, open_channel

    monkeypatch.setenv("PRINT_API_KEY", "key-of-the-print-shop")
    provider = PrintProvider()
    try:
        config = ChannelConfig("print", "letter", "print_api", {"url": provider.url, "auth_header": "X-Api-Key",
                                                                 "auth": "${PRINT_API_KEY}", "timeout": 10})
        session = open_channel(config, tmp_path)
        session.open()
        message = letter()
        provider.script = [201, 503, 429, 422]
        outcomes = [session.send(message) for _ in range(4)]
        session.close()
    finally:
        provider.close()
    assert outcomes[0] == Delivered(provider_id="print-1", detail="201 (1 pages)")
    assert [(type(o), getattr(o, "permanent", None)) for o in outcomes[1:]] == [
        (Failed, False), (Failed, False), (Failed, True)]
    first = provider.received[0]
    assert first["auth"] == "key-of-the-print-shop" and first["pdf_type"] == "application/pdf"
    assert first["key"] == message.key and first["address"] == ADDRESS and first["pages"] == "1"
    assert first["pdf"] == letter_api.document(message)  # exactly the bytes document() gives
    # every attempt of the message carries the same Idempotency-Key, a digest of the ledger key
    assert {r["idempotency"] for r in provider.received} == {f'"{message.idempotency_key()}"'}


def test_the_print_api_never_posts_a_letter_that_cannot_be_printed_and_reports_unreachable(tmp_path):
    from engine.channels import open_channel

    provider = PrintProvider()
    try:
        session = open_channel(ChannelConfig("print", "letter", "print_api", {"url": provider.url}), tmp_path)
        session.open()
        outcome = session.send(letter(address="Anna 漢\nLindenallee 5\n10115 Berlin"))
        assert isinstance(outcome, Failed) and outcome.permanent and "lacks" in outcome.detail
        assert provider.received == []
    finally:
        provider.close()
    outcome = session.send(letter())  # the provider is gone: a transient failure, retried
    session.close()
    assert isinstance(outcome, Failed) and not outcome.permanent and "ConnectError" in outcome.detail
    broken = open_channel(ChannelConfig("print", "letter", "print_api", {"url": "http://x", "font": "/nowhere.ttf"}),
                          tmp_path)
    with pytest.raises(ChannelError, match=r"channel 'print': the font file /nowhere.ttf does not exist"):
        broken.open()


# --- a whole project: validate, plan, run into the drop folder, the service resolves the QR code --------

ENGINE_YAML = """
warehouse:
  url: sqlite:///{warehouse}
defaults:
  timezone: UTC
  code_secret: {secret}
sources:
  customers:
    table: customers
    columns: {{email: email, first_name: first_name, last_name: last_name, created_at: created_at,
               street: street, postal_code: postal_code, city: city, country: country,
               letter_consent: "customer_id <> 3"}}
  orders:
    table: orders
    columns: {{status: status, total: total}}
channels:
  post:
    kind: letter
    transport: drop_folder
    path: var/print
    from: "Shop · Weg 1 · 10115 Berlin"
    max_pages: 1
policies:
  unsubscribe_url: http://127.0.0.1:{port}/unsubscribe
  scan_url: http://127.0.0.1:{port}/scan
  scan_landing_url: https://www.my-shop.de/welcome-back
  tracking: {{enabled: true}}
"""

CAMPAIGN = """
name: notify
trigger: {order_placed: {}}
steps:
  - id: thanks
    delay: 0m
    channel: post
    template: notify/thanks.letter.j2
    quiet_hours: {start: "00:00", end: "23:59"}
"""

LOAD_SHOP = """
import sys
from datetime import datetime
from engine.state.warehouse import Database
from engine.tools.demo import ShopData, load_shop

t0 = datetime(2025, 1, 6, 12, 0)
full = {"street": "Lindenallee 5", "postal_code": "10115", "city": "Berlin"}
people = [
    ("Anna", full), ("Ben", {**full, "street": None}), ("Clara", full), ("Dora", full),
    ("Elif", {**full, "country": "Austria", "postal_code": "1010", "city": "Wien"}), ("漢", full),
    ("Long", full),
]
data = ShopData()
data.rows["customers"] = [{"customer_id": i, "first_name": name, "last_name": "Muster", "created_at": datetime(2024, 9, 1),
                           **address} for i, (name, address) in enumerate(people, 1)]
data.rows["orders"] = [{"order_id": i, "customer_id": i, "created_at": t0, "status": "completed", "total": 5}
                       for i in range(1, len(people) + 1)]
db = Database("sqlite:///" + sys.argv[1])
load_shop(db, data)
db.dispose()
"""

TEMPLATE = """{% block address %}{{ recipient }}{% endblock %}
{% block body %}<p>Thank you, {{ customer.first_name }}.</p>
{% if customer.first_name == "Long" %}{% for i in range(80) %}<p>More {{ i }}</p>{% endfor %}{% endif %}{% endblock %}
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class NoRedirects(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None


def get(url: str) -> tuple[int, dict]:
    opener = urllib.request.build_opener(NoRedirects)
    try:
        with opener.open(url, timeout=10) as response:
            return response.status, dict(response.headers)
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers)
    except OSError:
        return 0, {}


def test_letters_of_a_pass_go_to_the_drop_folder_and_their_qr_codes_resolve(tmp_path):
    root = tmp_path / "project"
    (root / "campaigns.d").mkdir(parents=True)
    (root / "templates" / "notify").mkdir(parents=True)
    port = free_port()
    (root / "engine.yaml").write_text(textwrap.dedent(ENGINE_YAML).format(warehouse=tmp_path / "shop.db",
                                                                          secret=SECRET, port=port))
    (root / "campaigns.d" / "notify.yaml").write_text(textwrap.dedent(CAMPAIGN))
    template = root / "templates" / "notify" / "thanks.letter.j2"
    template.write_text("{% block body %}<p>Thank you.</p>{% endblock %}\n")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}

    def engine_cli(*args):
        return subprocess.run([sys.executable, "-c", "from engine.cli.main import main; main()", *args],
                              cwd=root, env=env, capture_output=True, text=True, timeout=300)

    subprocess.run([sys.executable, "-c", LOAD_SHOP, str(tmp_path / "shop.db")], cwd=root, env=env, check=True,
                   timeout=120)

    # a letter template without an address block: the file and the fix; no freshness warning for letters
    result = engine_cli("validate")
    assert result.returncode == 1, result.stdout
    assert "has no 'address' block, which letter messages need" in result.stdout
    assert "add {% block address %}...{% endblock %}" in result.stdout
    template.write_text(TEMPLATE)
    result = engine_cli("validate")
    assert result.returncode == 0 and "freshness" not in result.stdout, result.stdout + result.stderr

    # consent and unsubscribes apply to letters; an incomplete address is no_contact
    assert engine_cli("unsubscribe", "4", "--channel", "letter").returncode == 0
    result = engine_cli("plan", "--as-of", "2025-01-06T12:05:00Z", "--include-skipped", "--format", "jsonl")
    assert result.returncode == 0, result.stdout + result.stderr
    planned = {row["customer_id"]: (row["action"], row["reason"]) for row in map(json.loads, result.stdout.splitlines())}
    assert planned == {"1": ("send", None), "2": ("skip", "no_contact"), "3": ("skip", "no_consent"),
                       "4": ("skip", "no_consent"), "5": ("send", None), "6": ("send", None), "7": ("send", None)}

    # the pass (inside the step's quiet hours, which letters ignore): PDFs and a manifest in the drop folder
    result = engine_cli("run", "--once", "--as-of", "2025-01-06T12:05:00Z")
    # exit 1: two letters failed at rendering (below), each with its reason, nothing handed over; no traceback
    assert result.returncode == 1 and "Traceback" not in result.stdout + result.stderr, result.stdout + result.stderr
    assert "sent  failed:render_error" in result.stdout and "2     2" in result.stdout, result.stdout
    folder = root / "var" / "print"
    assert sorted(p.name for p in folder.glob("*.pdf")) == ["notify_thanks_1_1.pdf", "notify_thanks_5_5.pdf"]
    assert not list(folder.glob(".*"))  # no temporary file left behind
    manifests = list(folder.glob("manifest-*.csv"))
    rows = [row for manifest in manifests for row in csv.DictReader(manifest.open(encoding="utf-8", newline=""))]
    assert sorted((r["message_key"], r["file"], r["pages"], r["address"]) for r in rows) == [
        ("notify:thanks:1:1", "notify_thanks_1_1.pdf", "1", "Anna Muster\nLindenallee 5\n10115 Berlin"),
        ("notify:thanks:5:5", "notify_thanks_5_5.pdf", "1", "Elif Muster\nLindenallee 5\n1010 Wien\nAUSTRIA")]
    import hashlib

    for row in rows:
        assert hashlib.sha256((folder / row["file"]).read_bytes()).hexdigest() == row["sha256"]

    # a character the font lacks, a letter over the page limit: recorded failed with the reason
    import sqlalchemy as sa

    ledger = sa.create_engine(f"sqlite:///{tmp_path / 'shop.db'}")
    with ledger.connect() as conn:
        failed = dict(conn.execute(sa.text("SELECT message_key, detail FROM engine_ledger WHERE status = 'failed'")).all())
    ledger.dispose()
    assert sorted(failed) == ["notify:thanks:6:6", "notify:thanks:7:7"]
    assert "characters the font DejaVuSans.ttf lacks: '漢' (U+6F22)" in failed["notify:thanks:6:6"]
    assert "the letter has 4 pages, more than max_pages: 1" in failed["notify:thanks:7:7"]
    shown = engine_cli("show-message", "notify:thanks:7:7")
    assert shown.returncode == 0 and "failed" in shown.stderr and "more than max_pages: 1" in shown.stderr, shown.stderr

    # the service resolves the printed link: a valid one redirects to the landing page, a forged one is 404
    subprocess.run(["pdftoppm", "-r", "200", "-gray", "-png", "-singlefile", str(folder / "notify_thanks_1_1.pdf"),
                    str(tmp_path / "qr")], check=True, timeout=60)
    decoded = subprocess.run(["zbarimg", "-q", "--raw", str(tmp_path / "qr.png")], capture_output=True, text=True,
                             timeout=60).stdout.strip()
    from engine import tracking
    from engine.clock import FixedClock, parse_instant
    from engine.service.loop import Service

    # a tracking token (engine/tracking.py) sealed at the pass's instant: its scan is recorded (test_tracking.py)
    assert decoded == tracking.link(f"http://127.0.0.1:{port}/scan", tracking.seal(
        SECRET, "scan", "notify:thanks:1:1", parse_instant("2025-01-06T12:05:00Z")))

    service = Service(root, 3600, metrics_port=port, clock=FixedClock(parse_instant("2025-01-06T12:05:00Z")))
    service.start()  # loads the project and serves HTTP; no pass is needed to resolve a link
    try:
        status, headers = get(decoded)
        assert (status, headers.get("Location")) == (302, "https://www.my-shop.de/welcome-back")
        assert get(decoded[:-1] + ("0" if decoded[-1] != "0" else "1"))[0] == 404  # forged: no such message
        assert get(f"http://127.0.0.1:{port}/scan?m=1&s=2")[0] == 400  # not a link the engine makes
        # a link of the old form (letters printed before tokens) still leads to the landing page
        old = scan_link.link(f"http://127.0.0.1:{port}/scan", SECRET, "notify:thanks:1:1")
        assert get(old)[:1] == (302,) and get(old)[1].get("Location") == "https://www.my-shop.de/welcome-back"
    finally:
        service.close()


def test_engine_validate_names_a_missing_font_file(tmp_path):
    """Known at validation time: a letter channel's font file that does not exist, at its line, with the fix
    (a relative path is under the project folder, where the transports look for it too)."""
    from engine.spec.config import load_config

    (tmp_path / "fonts").mkdir()
    shutil.copy("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf", tmp_path / "fonts" / "Shop.ttf")
    text = textwrap.dedent(ENGINE_YAML).format(warehouse=tmp_path / "shop.db", secret=SECRET, port=9)
    (tmp_path / "engine.yaml").write_text(text.replace("    max_pages: 1\n", "    max_pages: 1\n    font: fonts/Shop.ttf\n"))
    config, issues = load_config(tmp_path)
    assert config is not None and not [i for i in issues if i.severity == "error"], [i.format() for i in issues]
    (tmp_path / "engine.yaml").write_text(text.replace("    max_pages: 1\n", "    max_pages: 1\n    font: fonts/Gone.ttf\n"))
    _, issues = load_config(tmp_path)
    problems = [i for i in issues if "font" in i.message]
    font_line = text.splitlines().index("    max_pages: 1") + 2  # the line added after it
    assert [(i.severity, i.line, i.message) for i in problems] == [
        ("error", font_line, "channels.post.font: the font file fonts/Gone.ttf does not exist"),
        ("error", text.splitlines().index("  post:") + 1,
         "channels.post.font_bold: the font file fonts/Gone.ttf does not exist")], \
        [i.format() for i in problems]  # font, and font_bold (not set: it defaults to font), at the channel
    assert [i.fix.split(" or ")[1] for i in problems] == ["set font: to a TrueType font file",
                                                         "set font_bold: to a TrueType font file"]
