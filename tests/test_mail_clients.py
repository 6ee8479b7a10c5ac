"""Every email of the demo is one a mail client and a spam filter accept (issue 19).

The demo shop exactly as ``make demo`` builds it (seed, size, instant of engine.yaml), its pass into the
file outbox, then every .eml it wrote is:
- parsed by the standard library's email package (no defects) and by a second, independent parser, Perl's
  Email::MIME (tests/tools/parse_mime.pl), and both read the same headers and the same parts;
- complete: Date, Message-ID, MIME-Version, a text and an HTML part, the HTML with a head and a viewport;
- of one domain: the sender's domain is the domain of every link and image in it (unsubscribe included);
- scored by SpamAssassin (Debian's package, local tests only: no network), one process for all of them:
  no message scores 2 or more (SpamAssassin's own verdict at a required score of 2), and the rules that
  fired are shown. Emails that show products carry images, which SpamAssassin's local rules always
  charge for (HTML_IMAGE_ONLY_*: 1.4-2.0 for the lengths of these emails); linked images and CSS
  backgrounds cost more, so the templates use neither.
"""
from __future__ import annotations

import email
import email.policy
import json
import mailbox
import os
import re
import shutil
import subprocess
from collections import Counter
from email.utils import parseaddr
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from conftest import copy_project
from engine import Reconciler, load_project
from engine.clock import parse_instant
from engine.tools.demo import build_demo

PARSER = Path(__file__).parent / "tools" / "parse_mime.pl"
HAS_EMAIL_MIME = shutil.which("perl") is not None and subprocess.run(
    ["perl", "-MEmail::MIME", "-e", "1"], capture_output=True).returncode == 0
HAS_SPAMASSASSIN = shutil.which("spamassassin") is not None


def _require(available: bool, what: str, variable: str, package: str) -> None:
    if not available:
        if os.environ.get(variable):
            pytest.fail(f"{what} is required ({variable} is set) but missing: apt-get install {package}")
        pytest.skip(f"{what} is not installed (apt-get install {package})")


@pytest.fixture(scope="module")
def demo_emails(tmp_path_factory) -> list[Path]:
    """The .eml files of the demo's pass at its instant, made as ``make demo`` makes them."""
    tmp = tmp_path_factory.mktemp("demo")
    root = copy_project(tmp / "project")
    project = load_project(root)
    demo = project.config.demo
    url = f"duckdb:///{tmp / 'shop.duckdb'}"
    build_demo(url, demo.seed, demo.customers, demo.anchor)
    old = os.environ.get("ENGINE_WAREHOUSE_URL")
    os.environ["ENGINE_WAREHOUSE_URL"] = url
    try:
        reconciler = Reconciler(load_project(root))
        try:
            reconciler.run_once(parse_instant(demo.anchor))
        finally:
            reconciler.close()
    finally:
        if old is None:
            os.environ.pop("ENGINE_WAREHOUSE_URL", None)
        else:
            os.environ["ENGINE_WAREHOUSE_URL"] = old
    files = sorted((root / "var" / "outbox" / "email").glob("*.eml"))
    assert len(files) > 500  # the whole demo, not a sample
    return files


def _domain(url: str) -> str:
    return (urlsplit(url).hostname or "").lower()


def test_every_email_is_complete_and_of_one_domain(demo_emails):
    for path in demo_emails:
        message = email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
        assert not message.defects, (path.name, message.defects)
        for header in ("Date", "Message-ID", "MIME-Version", "From", "To", "Subject", "List-Id", "List-Unsubscribe"):
            assert message[header], (path.name, header)
        text = message.get_body(preferencelist=("plain",))
        html = message.get_body(preferencelist=("html",))
        assert text is not None and html is not None, path.name
        body = html.get_content()
        assert re.search(r"<head>.*<meta name=\"viewport\"[^>]*>.*</head>", body, re.S), path.name
        sender = parseaddr(str(message["From"]))[1].rpartition("@")[2].lower()
        urls = re.findall(r"""(?:href|src)="([^"]+)\"""", body) + re.findall(r"https?://\S+", text.get_content())
        urls.append(str(message["List-Unsubscribe"]).strip("<>"))
        assert urls and {_domain(u) for u in urls} == {sender}, (path.name, sorted({_domain(u) for u in urls}))


def test_a_second_independent_parser_reads_the_same_messages(demo_emails):
    _require(HAS_EMAIL_MIME, "Perl's Email::MIME", "ENGINE_REQUIRE_SPAMASSASSIN", "libemail-mime-perl")
    result = subprocess.run(["perl", str(PARSER), *map(str, demo_emails)], capture_output=True, timeout=600)
    assert result.returncode == 0, result.stderr.decode()
    parsed = [json.loads(line) for line in result.stdout.decode().splitlines()]
    assert len(parsed) == len(demo_emails)
    for perl in parsed:
        message = email.message_from_bytes(Path(perl["file"]).read_bytes(), policy=email.policy.default)
        for name, value in perl["headers"].items():
            assert str(message[name]) == value, (perl["file"], name)
        ours = [(part.get_content_type(), part.get_content()) for part in message.walk() if not part.is_multipart()]
        theirs = [(part["type"], part["body"]) for part in perl["parts"]]
        assert [t for t, _ in ours] == [t for t, _ in theirs] == ["text/plain", "text/html"], perl["file"]
        for (_, mine), (_, other) in zip(ours, theirs):
            assert mine.replace("\r\n", "\n").rstrip("\n") == other.replace("\r\n", "\n").rstrip("\n"), perl["file"]


def test_spamassassin_scores_no_demo_email_2_or_more(demo_emails, tmp_path):
    _require(HAS_SPAMASSASSIN, "SpamAssassin", "ENGINE_REQUIRE_SPAMASSASSIN", "spamassassin")
    box = mailbox.mbox(tmp_path / "demo.mbox")
    for path in demo_emails:
        box.add(mailbox.mboxMessage(path.read_bytes()))
    box.flush()
    home = tmp_path / "home"  # SpamAssassin writes its user preferences there
    home.mkdir()
    # The verdict at a required score of 2 is SpamAssassin's own comparison of the exact score (the
    # scores it prints are rounded to one decimal: 1.969 shows as 2.0 and is below 2).
    prefs = tmp_path / "user_prefs"
    prefs.write_text("required_score 2.0\n")
    # -L: local tests only (no DNS or network lists); -t: each message with its report
    result = subprocess.run(["spamassassin", "-L", "-t", "-p", str(prefs), "--mbox", str(tmp_path / "demo.mbox")],
                            capture_output=True, timeout=1200, env={**os.environ, "HOME": str(home)})
    assert result.returncode == 0, result.stderr.decode()[-2000:]
    output = result.stdout.decode("utf-8", "replace")
    verdicts = re.findall(r"^X-Spam-Status: (Yes|No), score=(-?[0-9.]+) required=([0-9.]+)", output, re.M)
    assert len(verdicts) == len(demo_emails) and {required for _, _, required in verdicts} == {"2.0"}
    reports = output.split("Content analysis details:")[1:]
    assert len(reports) == len(demo_emails)
    scores, fired = [], Counter()
    for report in reports:
        scores.append(float(re.match(r"\s*\(([-0-9.]+) points", report).group(1)))
        table = report.split("\n\n")[1]  # after the score line: the rules' table, up to a blank line
        fired.update(f"{points:>5} {rule}" for points, rule in re.findall(r"^\s*(-?\d+\.\d+) ([A-Z][A-Z0-9_]+)\s", table, re.M))
    shown = "\n".join(f"{n:5d} x {rule}" for rule, n in fired.most_common())
    spam = [score for verdict, score, _ in verdicts if verdict == "Yes"]
    print(f"SpamAssassin over {len(scores)} demo emails: highest score {max(scores)} (rounded), "
          f"{len(spam)} at 2 or more; rules that fired:\n{shown}")
    assert not spam, f"{len(spam)} emails score 2 or more (highest {max(scores)}); rules that fired:\n{shown}"
