"""Outside the demo no example domain reaches a customer, and `engine config show` lists every setting.

The sender, the unsubscribe URL and the shop's URL at an example domain
(RFC 2606/6761) are validation errors naming the setting and the fix; the
unsubscribe URL and the sender have no default outside the demo. The demo
keeps its example domains.
"""
from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from conftest import REPO, as_real_shop, copy_project
from engine.cli.main import main
from engine.spec.project import check_project
from engine.spec.unsafe_defaults import example_domain

SECRET = "8c1f0a7e4b9d2c6f3a5e7b1d9c0f2a4e"


def errors(root):
    _, issues = check_project(root)
    return [i for i in issues if i.severity == "error"]


def edit(root, old: str, new: str) -> None:
    path = root / "engine.yaml"
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new, 1))


@pytest.mark.parametrize("host, reserved", [
    ("example.com", "example.com"), ("mail.example.org", "example.org"), ("EXAMPLE.NET.", "example.net"),
    ("shop.example", ".example"), ("beanandbrew.example", ".example"), ("a.invalid", ".invalid"),
    ("shop.test", ".test"), ("localhost", ".localhost"),
    ("beanandbrew.de", None), ("example.de", None), ("myexample.com", None), ("test.com", None), ("", None),
])
def test_example_domains(host, reserved):
    assert example_domain(host) == reserved


def test_the_demo_may_use_example_domains(tmp_path):
    root = copy_project(tmp_path)
    assert errors(root) == []


def test_a_real_shop_with_its_own_domains_validates(tmp_path):
    root = as_real_shop(copy_project(tmp_path))
    assert errors(root) == []


@pytest.mark.parametrize("old, new, setting", [
    ("hello@beanandbrew.de", "hello@shop.example", "channels.email.from"),
    ("hello@beanandbrew.de", "hello@news.example.com", "channels.email.from"),
    ("https://campaigns.beanandbrew.de/unsubscribe", "https://shop.example/unsubscribe", "policies.unsubscribe_url"),
    ("https://campaigns.beanandbrew.de/unsubscribe", "http://links.shop.test/u", "policies.unsubscribe_url"),
    ("url: https://beanandbrew.de", "url: https://www.shop.invalid", "shop.url"),
])
def test_an_example_domain_outside_the_demo_is_an_error_naming_the_setting_and_the_fix(tmp_path, old, new, setting):
    root = as_real_shop(copy_project(tmp_path))
    edit(root, old, new)
    found = errors(root)
    assert len(found) == 1, found
    assert found[0].message.startswith(setting) and "example domain" in found[0].message
    assert "demo" in found[0].fix and "e.g." in found[0].fix
    assert found[0].line is not None
    result = CliRunner().invoke(main, ["--project", str(root), "validate"], env={"ENGINE_CODE_SECRET": SECRET})
    assert result.exit_code == 1 and setting in result.output


def test_an_example_domain_read_from_the_environment_is_an_error_too(tmp_path, monkeypatch):
    root = as_real_shop(copy_project(tmp_path))
    edit(root, "https://campaigns.beanandbrew.de/unsubscribe", "${UNSUBSCRIBE_URL}")
    monkeypatch.setenv("UNSUBSCRIBE_URL", "https://example.org/unsubscribe")
    assert [e.path for e in errors(root)] == ["policies.unsubscribe_url"]
    monkeypatch.setenv("UNSUBSCRIBE_URL", "https://campaigns.beanandbrew.de/unsubscribe")
    assert errors(root) == []


def test_outside_the_demo_the_unsubscribe_url_and_the_sender_have_no_default(tmp_path):
    root = as_real_shop(copy_project(tmp_path))
    edit(root, "policies:\n  unsubscribe_url: https://campaigns.beanandbrew.de/unsubscribe\n", "")
    edit(root, '    from: "Bean & Brew <hello@beanandbrew.de>"\n', "")
    found = sorted(e.message for e in errors(root))
    assert found == ["channels.email.from is not set: outside the demo it has no default",
                     "policies.unsubscribe_url is not set: outside the demo it has no default"]


def test_the_demo_unsubscribes_at_its_own_shop_domain(tmp_path):
    project, _ = check_project(copy_project(tmp_path))
    assert project.config.unsubscribe_url == "https://beanandbrew.example/unsubscribe"


def test_config_show_lists_every_setting_with_its_default_and_masks_secrets(tmp_path):
    root = as_real_shop(copy_project(tmp_path))
    edit(root, "  sms:\n    kind: sms\n    transport: file\n    path: var/outbox\n",
         "  sms:\n    kind: sms\n    transport: http\n    url: https://sms.beanandbrew.de/send\n"
         "    token: ${SMS_TOKEN}\n")
    edit(root, "  email:\n    kind: email\n    transport: file\n    path: var/outbox\n",
         "  email:\n    kind: email\n    transport: smtp\n    host: smtp.beanandbrew.de\n    security: starttls\n"
         "    password: ${SMTP_PASSWORD}\n")
    env = {"ENGINE_CODE_SECRET": SECRET, "SMS_TOKEN": "tok-0123456789abcdef", "SMTP_PASSWORD": "pw-9876543210"}
    result = CliRunner().invoke(main, ["--project", str(root), "config", "show", "--format", "json"], env=env)
    assert result.exit_code == 0, result.output
    shown = json.loads(result.output)
    for secret in env.values():
        assert secret not in result.output
    assert shown["channels.sms.token"]["value"] == shown["channels.email.password"]["value"] == "***"
    assert shown["defaults.code_secret"]["value"] == "***"
    expected_defaults = {
        "ledger.stale_horizon": "7d", "policies.retry.max_attempts": "4", "policies.retry.backoff": "1m",
        "policies.retry.max_backoff": "1h", "policies.claim_timeout": "10m", "defaults.timezone": "Europe/Berlin",
        "channels.email.port": "587", "channels.email.connections": "4", "channels.email.pipelining": "true",
        "channels.email.timeout": "30", "channels.email.delivery": "at_most_once", "channels.email.in_flight": "16",
        "channels.sms.timeout": "10", "channels.sms.delivery": "at_most_once",
        "sources.orders.columns.order_id": "order_id", "demo": "false",
    }
    for key, value in expected_defaults.items():
        assert shown[key]["value"] == value, key
    assert shown["channels.email.port"]["origin"].startswith("default")
    assert shown["policies.unsubscribe_url"] == {"value": "https://campaigns.beanandbrew.de/unsubscribe",
                                                 "origin": "engine.yaml", "secret": False}
    assert shown["channels.sms.default_region"]["origin"] == "default"
    # every setting the schema knows outside the free-form maps (channels, sources, segments) is listed
    schema = json.loads((REPO / "schema" / "project.schema.json").read_text())

    def leaves(properties, prefix=""):
        for name, spec in properties.items():
            if "properties" in spec and spec.get("type") == "object":  # not demo: (a section or true)
                yield from leaves(spec["properties"], f"{prefix}{name}.")
            else:
                yield prefix + name

    expected = [key for key in leaves(schema["properties"]) if key.split(".")[0] not in ("sources", "channels")]
    keys = set(shown)
    missing = [key for key in expected if key not in keys and not any(k.startswith(key + ".") for k in keys)]
    assert missing == []
