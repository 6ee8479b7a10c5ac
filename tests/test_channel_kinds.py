"""One place per channel kind: engine.channel_kinds is the only module that names a kind.

The kinds' declarations (contact field, consent column, unsubscribe scope,
template parts and suffix, headers, quiet hours, suppression, transports) are
read by the spec, the templates, the policies, the pass, the outbox, the logs
and the command line. Proven two ways: no module outside a kind's own names
it, and a throwaway kind - one module, one transport module and its two words
in engine.yaml's schema, added to a copy of engine/ - is validated, planned,
sent and unsubscribed from without any other edit.
"""
from __future__ import annotations

import ast
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import engine
from engine import channel_kinds
from engine.spec.project import load_project

PACKAGE = Path(engine.__file__).resolve().parent
REPO = PACKAGE.parent


def kind_literals(package: Path, name: str) -> list[str]:
    """``file:line`` of every line of ``package``'s Python files that spells ``"name"`` (the grep of issue 14)."""
    found = []
    for path in sorted(package.rglob("*.py")):
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if f'"{name}"' in line or f"'{name}'" in line:
                found.append(f"{path.relative_to(package.parent)}:{number}")
    return found


def test_a_kind_is_named_only_in_its_own_module():
    assert [entry.split(":")[0] for entry in kind_literals(PACKAGE, "sms")] == ["engine/channel_kinds/sms.py"]
    assert [entry.split(":")[0] for entry in kind_literals(PACKAGE, "email")] == ["engine/channel_kinds/email.py"]
    assert {entry.split(":")[0] for entry in kind_literals(PACKAGE, "webhook")} <= {"engine/channel_kinds/webhook.py"}
    assert [entry.split(":")[0] for entry in kind_literals(PACKAGE, "push")] == ["engine/channel_kinds/push.py"]
    assert [entry.split(":")[0] for entry in kind_literals(PACKAGE, "letter")] == ["engine/channel_kinds/letter.py"]


def test_the_literal_check_finds_a_kind_named_elsewhere(tmp_path):
    copy = tmp_path / "engine"
    shutil.copytree(PACKAGE, copy, ignore=shutil.ignore_patterns("__pycache__"))
    policies = copy / "run" / "policies.py"
    policies.write_text(policies.read_text() + '\nSMS_ONLY = kind == "sms"\n')
    assert "engine/run/policies.py" in [entry.split(":")[0] for entry in kind_literals(copy, "sms")]


def test_each_kind_module_imports_only_the_declarations():
    """Kinds never import each other (nor the rest of the engine): a kind is its module alone."""
    for path in sorted((PACKAGE / "channel_kinds").glob("*.py")):
        if path.stem in ("__init__", "declaration"):
            continue
        imported = {node.module for node in ast.walk(ast.parse(path.read_text())) if isinstance(node, ast.ImportFrom)}
        assert {m for m in imported if m and m.startswith("engine")} == {"engine.channel_kinds.declaration"}, path


def test_the_schema_lists_exactly_the_registered_kinds_and_transports():
    channel = json.loads((REPO / "schema" / "project.schema.json").read_text())["$defs"]["channel"]["properties"]
    assert channel["kind"]["enum"] == list(channel_kinds.names()) == ["email", "letter", "push", "sms", "webhook"]
    assert sorted(channel["transport"]["enum"]) == sorted(channel_kinds.TRANSPORTS)


def test_the_registry_holds_what_the_engine_used_to_spell_out():
    email, sms = channel_kinds.kind("email"), channel_kinds.kind("sms")
    # a webhook addresses the customer's id, push its subscriptions; a letter's street heads its address
    assert channel_kinds.contact_fields() == ("email", "street", "phone")
    assert channel_kinds.address_fields() == ("postal_code", "city", "country")
    assert channel_kinds.consent_columns() == ("email_consent", "letter_consent", "push_consent", "sms_consent",
                                               "webhook_consent")
    assert (email.required_parts, email.body_parts, sms.required_parts, sms.body_parts) == (
        ("subject",), ("text", "html"), ("text",), ())
    assert email.transport_names == ("smtp", "file") and sms.transport_names == ("http", "file")
    sent_by = dict(campaign="second order", sender="Shop <hello@shop.example.com>")
    assert email.headers("https://x/u?c=1", **sent_by) == {
        "List-Id": "<second-order.shop.example.com>", "List-Unsubscribe": "<https://x/u?c=1>",
        "List-Unsubscribe-Post": "List-Unsubscribe=One-Click"}
    assert sms.headers("https://x/u?c=1", **sent_by) == {}
    assert (email.locked_layout, email.rfc5322, email.quiet_hours_expected) == (True, True, False)
    assert (sms.locked_layout, sms.rfc5322, sms.quiet_hours_expected) == (False, False, True)


def test_shipped_templates_carry_their_kinds_suffix():
    project = load_project(REPO)
    used = [(variant.template, project.config.channels[variant.channel].kind)
            for campaign in project.campaigns for step in campaign.steps for variant in step.variants]
    assert {kind for _, kind in used} == {"email", "letter", "push", "sms"}
    for template, kind in used:
        assert template.endswith(channel_kinds.kind(kind).template_suffix), (template, kind)


# --- a throwaway kind, added to a copy of the engine -------------------------------------------

PIGEON = '''
"""Carrier pigeons: a throwaway kind that proves a kind is its module."""
from engine.channel_kinds.declaration import FILE_OUTBOX, ChannelKind, Transport


def ring(unsubscribe_url, *, campaign, sender):
    return {"X-Ring": unsubscribe_url, "X-Flock": campaign}


KIND = ChannelKind(
    name="pigeon", label="pigeons", contact_field="loft", consent_column="pigeon_consent",
    transports=(Transport("loft", ("roost",), "engine.channels.loft"), FILE_OUTBOX),
    required_parts=("subject",), body_parts=("text",), optional_parts=("leg_band",), template_suffix=".pigeon.j2",
    quiet_hours_expected=True, headers=ring,
    usable_address=lambda address: bool(address) and str(address).startswith("loft-"),
)
'''

LOFT = '''
"""The pigeons' transport: each message a JSON file in the roost folder."""
import json

from engine.channels.base import Delivered


def open_session(config, root):
    return Loft(root / str(config.settings["roost"]))


def document(message, config=None, root=None):
    return json.dumps({"to": message.to, "subject": message.subject, "text": message.text,
                       "leg_band": message.parts.get("leg_band"), "headers": dict(message.headers)}).encode()


class Loft:
    def __init__(self, folder):
        self.folder = folder

    def open(self):
        self.folder.mkdir(parents=True, exist_ok=True)

    def send(self, message):
        (self.folder / f"{message.to}.json").write_bytes(message.document)
        return Delivered(provider_id=message.to)

    def close(self):
        pass
'''

ENGINE_YAML = """
warehouse:
  url: sqlite:///{warehouse}
demo: true  # the loopback sinks' example domains and default unsubscribe URL (spec.unsafe_defaults)
defaults:
  timezone: UTC
  code_secret: a-test-secret-of-enough-length-1234567890
sources:
  customers:
    table: customers
    columns: {{email: email, loft: loft, first_name: first_name, created_at: created_at,
               pigeon_consent: "customer_id <> 3"}}
  orders:
    table: orders
    columns: {{status: status, total: total}}
channels:
  pigeons:
    kind: pigeon
    transport: loft
    roost: var/roost
    from: Shop
"""

CAMPAIGN = """
name: notify
trigger: {order_placed: {}}
steps:
  - {id: coo, delay: 0m, freshness: 7d, channel: pigeons, template: notify/hello.pigeon.j2}
"""

LOAD_SHOP = """
from datetime import datetime
from engine.state.warehouse import Database
from engine.tools.demo import ShopData, load_shop

t0 = datetime(2025, 1, 6, 12, 0)
data = ShopData()
data.rows["customers"] = [{"customer_id": i, "email": f"c{i}@example.com", "loft": loft, "first_name": f"C{i}",
                           "created_at": datetime(2024, 9, 1)}
                          for i, loft in enumerate(["loft-1", None, "loft-3", "loft-4", "barn-5"], 1)]
data.rows["orders"] = [{"order_id": i, "customer_id": i, "created_at": t0, "status": "completed", "total": 5}
                       for i in range(1, 6)]
db = Database("sqlite:///" + __import__("sys").argv[1])
load_shop(db, data)
db.dispose()
"""


def test_a_new_kind_is_its_module_its_schema_entry_and_nothing_else(tmp_path):
    copy = tmp_path / "code"
    shutil.copytree(PACKAGE, copy / "engine", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(REPO / "schema", copy / "schema")
    (copy / "engine" / "channel_kinds" / "pigeon.py").write_text(PIGEON)
    (copy / "engine" / "channels" / "loft.py").write_text(LOFT)
    schema_path = copy / "schema" / "project.schema.json"
    schema = json.loads(schema_path.read_text())
    channel = schema["$defs"]["channel"]["properties"]
    channel["kind"]["enum"].append("pigeon")
    channel["transport"]["enum"].append("loft")
    channel["roost"] = {"type": "string", "description": "loft: the roost folder."}
    schema_path.write_text(json.dumps(schema))

    root = tmp_path / "project"
    (root / "campaigns.d").mkdir(parents=True)
    (root / "templates" / "notify").mkdir(parents=True)
    (root / "engine.yaml").write_text(textwrap.dedent(ENGINE_YAML).format(warehouse=tmp_path / "shop.db"))
    (root / "campaigns.d" / "notify.yaml").write_text(textwrap.dedent(CAMPAIGN))
    template = root / "templates" / "notify" / "hello.pigeon.j2"
    template.write_text("{% block text %}Hello {{ customer.first_name }}{% endblock %}\n")
    env = {**os.environ, "PYTHONPATH": str(copy)}

    def engine_cli(*args):
        return subprocess.run([sys.executable, "-c", "from engine.cli.main import main; main()", *args],
                              cwd=root, env=env, capture_output=True, text=True, timeout=300)

    subprocess.run([sys.executable, "-c", LOAD_SHOP, str(tmp_path / "shop.db")], cwd=root, env=env, check=True,
                   timeout=120)

    # validate: the template parts the kind declares, and its quiet-hours warning
    result = engine_cli("validate")
    assert result.returncode == 1 and "has no 'subject' block, which pigeon messages need" in result.stdout, result.stdout
    template.write_text("{% block subject %}Coo{% endblock %}{% block leg_band %} band {{ customer.first_name }}\n{% endblock %}"
                        "{% block text %}Hello {{ customer.first_name }}, coo {{ unsubscribe_url }}{% endblock %}\n")
    result = engine_cli("validate")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "step 'coo' sends pigeons without quiet hours" in result.stdout, result.stdout

    # the command line's unsubscribe knows the kind; the policies read its contact field, consent and scope
    assert engine_cli("unsubscribe", "4", "--channel", "pigeon").returncode == 0
    result = engine_cli("plan", "--as-of", "2025-01-06T12:05:00Z", "--include-skipped", "--format", "jsonl")
    assert result.returncode == 0, result.stdout + result.stderr
    planned = {row["customer_id"]: (row["action"], row["reason"])
               for row in map(json.loads, result.stdout.splitlines())}
    assert planned == {"1": ("send", None), "2": ("skip", "no_contact"), "3": ("skip", "no_consent"),
                       "4": ("skip", "no_consent"), "5": ("skip", "no_contact")}
    # the plan's table shows each message's contact of its own kind (the loft, not the customer's email)
    table = engine_cli("plan", "--as-of", "2025-01-06T12:05:00Z").stdout
    header, row = [line.split() for line in table.splitlines() if line.split()[:2] in (["campaign", "step"], ["notify", "coo"])][-2:]
    assert header[:4] == ["campaign", "step", "customer", "contact"] and row[2:4] == ["1", "loft-1"], table

    # the pass opens the kind's own transport, with its headers and the address from its contact field
    result = engine_cli("run", "--once", "--as-of", "2025-01-06T12:05:00Z")
    assert result.returncode == 0, result.stdout + result.stderr
    sent = json.loads((root / "var" / "roost" / "loft-1.json").read_text())
    assert sent["text"].startswith("Hello C1, coo https://") and sent["subject"] == "Coo"
    assert sent["leg_band"] == "band C1"  # a part of the kind's own, rendered and trimmed like every part
    assert sent["headers"]["X-Ring"] in sent["text"] and "k=pigeon" in sent["headers"]["X-Ring"]
    assert sorted(p.name for p in (root / "var" / "roost").iterdir()) == ["loft-1.json"]


def test_a_kind_may_not_name_a_part_after_a_field_of_the_stored_message():
    import pytest

    from engine.channel_kinds.declaration import FILE_OUTBOX, ChannelKind

    for name in ("to", "headers", "not an identifier"):
        with pytest.raises(ValueError, match=r"cannot be part names"):
            ChannelKind(name="pigeon", label="pigeons", contact_field="loft", consent_column="pigeon_consent",
                        transports=(FILE_OUTBOX,), required_parts=("coo",), optional_parts=(name,))
    assert ChannelKind(name="pigeon", label="pigeons", contact_field="loft", consent_column="pigeon_consent",
                       transports=(FILE_OUTBOX,), required_parts=("coo",)).parts == ("coo",)
