"""A long-running process compiles each message template once per project version: the passes of one
Reconciler reuse its Renderer (``Reconciler.renderer``), so a second pass compiles nothing; a template
changed on disk is compiled again at the next pass (``Renderer.forget_changed``), and a new project
version (a reload builds a new Reconciler) compiles what it renders. Compilations are counted through
the real sandboxed Jinja2 environment (``TemplateSandbox.compile``), the messages at a real SMTP sink."""
from __future__ import annotations

import os
import shutil
from collections import Counter
from datetime import timedelta

from conftest import copy_project
from engine import Reconciler, load_project
from engine.clock import parse_instant
from engine.templating.sandbox import TemplateSandbox
from engine.tools.demo import build_demo
from servers import SmsProvider, SmtpSink
from test_end_to_end import configure_channels

NOW = parse_instant("2025-01-10T00:00:00Z")
MARK = "Compiled-again-mark"


def _counting(monkeypatch) -> Counter:
    """The templates compiled, by name (each mode of a template counts: plain text and HTML)."""
    compiled: Counter = Counter()
    compile_ = TemplateSandbox.compile

    def counted(self, source, name=None, filename=None, raw=False, defer_init=False):
        compiled[name] += 1
        return compile_(self, source, name, filename, raw, defer_init)
    monkeypatch.setattr(TemplateSandbox, "compile", counted)
    return compiled


def test_a_second_pass_compiles_nothing_and_a_changed_template_is_compiled_again(tmp_path, monkeypatch):
    shop = tmp_path / "shop.duckdb"
    build_demo(str(shop), seed=42, customers=400, anchor="2025-01-10T00:00:00Z")
    shutil.copy(shop, tmp_path / "again.duckdb")  # the shop before any pass, for the new project version
    root = copy_project(tmp_path / "project")
    monkeypatch.setenv("ENGINE_WAREHOUSE_URL", f"duckdb:///{shop}")
    monkeypatch.setenv("SMS_TOKEN", "secret-token")
    compiled = _counting(monkeypatch)
    with SmtpSink() as smtp, SmsProvider() as sms:
        configure_channels(root, smtp.port, sms.url)
        reconciler = Reconciler(load_project(root))
        compiled.clear()  # what validating the project compiled (a Renderer of its own)
        try:
            first = reconciler.run_once(NOW)
            assert first.total("sent") > 100 and compiled, (first.total("sent"), compiled)
            layout = [name for name in compiled if name.startswith("layouts/")]
            assert layout, compiled
            by_first = set(compiled)
            compiled.clear()
            second = reconciler.run_once(NOW + timedelta(days=14))
            assert second.total("sent") > 0  # an email among them (re-engage): the layout rendered again
            again = set(compiled) & by_first
            assert not again, f"the second pass compiled again {sorted(again)}"

            # a template changed on disk: the next pass of the same process compiles it again and sends it
            path = root / "templates" / layout[0]
            path.write_text(path.read_text().replace("</body>", f"<p>{MARK}</p></body>", 1))
            assert MARK in path.read_text()
            stat = path.stat()
            os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))  # a new mtime on any filesystem
            compiled.clear()
            received = len(smtp.contents)
            third = reconciler.run_once(NOW + timedelta(days=28))
            assert third.total("sent") > 0 and compiled[layout[0]] > 0, compiled
            assert any(MARK in raw.decode("utf-8", "replace") for raw in smtp.contents[received:])
        finally:
            reconciler.close()

        # a new project version (what the service's reload builds): its first pass compiles what it renders
        monkeypatch.setenv("ENGINE_WAREHOUSE_URL", f"duckdb:///{tmp_path / 'again.duckdb'}")
        compiled.clear()
        received = len(smtp.contents)
        reloaded = Reconciler(load_project(root))
        try:
            assert reloaded.run_once(NOW).total("sent") > 100
            assert compiled[layout[0]] > 0, compiled
            assert all(MARK in raw.decode("utf-8", "replace") for raw in smtp.contents[received:])
        finally:
            reloaded.close()
