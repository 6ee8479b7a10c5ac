"""`engine init`: the README's "Start your own project" commands, run one by one, and the mapping it proposes.

The README test reads the section's shell code blocks and runs each command
line in bash (the environment and directory carried from one to the next)
against a small SQLite shop with names nobody here chose; the last command
must validate the new project against that warehouse.
"""
from __future__ import annotations

import os
import re
import shlex
import sqlite3
import subprocess
import sys
from email import message_from_binary_file
from pathlib import Path

import duckdb
import pytest
import yaml
from click.testing import CliRunner

from conftest import REPO, copy_project
from engine.cli.main import main
from engine.tools.init_project import STARTER, warehouse_setting

SECRET = "8c1f0a7e4b9d2c6f3a5e7b1d9c0f2a4e"
FOREIGN_SHOP = """
    CREATE TABLE customer (id INTEGER PRIMARY KEY, email_address TEXT, vorname TEXT, surname TEXT, created TEXT,
                           city TEXT, newsletter INTEGER);
    CREATE TABLE orders (order_no INTEGER PRIMARY KEY, customer_id INTEGER, ordered_at TEXT, total_amount NUMERIC,
                         status TEXT);
    CREATE TABLE order_lines (order_no INTEGER, product_name TEXT, qty INTEGER, unit_price NUMERIC);
    INSERT INTO customer VALUES (1, 'ada@my-shop.de', 'Ada', 'L', '2024-01-01 10:00:00', 'Berlin', 1);
    INSERT INTO orders VALUES (10, 1, '2024-12-30 09:00:00', 12.5, 'completed');
    INSERT INTO order_lines VALUES (10, 'Espresso', 1, 12.5);
"""


def readme_commands(section: str) -> list[str]:
    readme = (REPO / "README.md").read_text()
    start = readme.index(f"## {section}\n")
    end = readme.index("\n## ", start + 1)
    blocks = re.findall(r"```sh\n(.*?)```", readme[start:end], re.S)
    assert blocks, f"README section {section!r} has no sh code block"
    return [line for block in blocks for line in block.splitlines() if line.strip() and not line.startswith("#")]


def run_commands(commands: list[str], cwd: Path, env: dict) -> list[subprocess.CompletedProcess]:
    """Each command in its own bash, `engine` being this checkout's; exports and cd carry over."""
    state, where = cwd / ".state.sh", cwd / ".cwd"
    state.write_text("")
    where.write_text(str(cwd))
    results = []
    for command in commands:
        script = (f'engine() {{ {shlex.quote(sys.executable)} -m engine.cli.main "$@"; }}\n'
                  f'source {shlex.quote(str(state))}\ncd "$(cat {shlex.quote(str(where))})"\n'
                  f'{command}\nstatus=$?\nexport -p > {shlex.quote(str(state))}\npwd > {shlex.quote(str(where))}\n'
                  'exit $status\n')
        result = subprocess.run(["bash", "-c", script], env=env, capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, f"README command failed: {command}\n{result.stdout}\n{result.stderr}"
        results.append(result)
    return results


def test_the_readme_start_your_own_project_commands_work(tmp_path):
    with sqlite3.connect(tmp_path / "shop.db") as db:
        db.executescript(FOREIGN_SHOP)
    env = {k: v for k, v in os.environ.items() if not k.startswith("ENGINE_")}
    env["PYTHONPATH"] = str(REPO)
    commands = readme_commands("Start your own project")
    assert commands[0].startswith("export ENGINE_CODE_SECRET=") and commands[-1].startswith("engine validate")
    results = run_commands(commands, tmp_path, env)
    assert "to fill in" not in results[1].stdout  # every TODO was given on the command line
    assert results[-1].stdout.startswith("OK: 1 campaign file(s) valid")
    project = tmp_path / "my-shop"
    config = yaml.safe_load((project / "engine.yaml").read_text())
    assert config["warehouse"]["url"] == "sqlite:///../shop.db"
    assert config["sources"]["customers"] == {"table": "customer", "columns": {
        "customer_id": "id", "email": "email_address", "first_name": "vorname", "last_name": "surname",
        "created_at": "created", "city": "city"}}  # city: part of a letter's postal address
    assert config["sources"]["orders"]["columns"] == {"order_id": "order_no", "customer_id": "customer_id",
                                                     "created_at": "ordered_at", "status": "status",
                                                     "total": "total_amount"}
    assert config["sources"]["order_items"]["columns"]["quantity"] == "qty"
    assert config["shop"]["name"] == "My Shop" and config["channels"]["email"]["from"] == "My Shop <hello@my-shop.de>"
    assert config["policies"]["unsubscribe_url"] == "https://campaigns.my-shop.de/unsubscribe"


def init(*args: str, cwd: Path | None = None):
    runner = CliRunner()
    old = Path.cwd()
    if cwd is not None:
        os.chdir(cwd)
    try:
        return runner.invoke(main, ["init", *args], env={"ENGINE_CODE_SECRET": SECRET})
    finally:
        os.chdir(old)


def validate(project: Path, *args: str):
    return CliRunner().invoke(main, ["--project", str(project), "validate", *args],
                              env={"ENGINE_CODE_SECRET": SECRET, "ENGINE_WAREHOUSE_URL": "sqlite:///shop.db"})


SHOP = ["--shop-name", "Kaffee & Co", "--shop-url", "https://kaffee-und-co.de", "--shop-address", "Hafen 2, 20457 Hamburg"]


def test_near_misses_are_mapped_as_did_you_mean_and_missing_required_columns_are_todos(tmp_path):
    db = duckdb.connect(str(tmp_path / "shop.duckdb"))
    db.execute("CREATE TABLE kunden (kunden_nr INTEGER, emial VARCHAR, vorname VARCHAR)")
    db.execute("CREATE TABLE bestellungen (bestell_nr INTEGER, kunden_nr INTEGER, betrag DECIMAL(10, 2))")
    db.close()
    result = init("new", "--from-warehouse", "duckdb:///shop.duckdb", *SHOP, cwd=tmp_path)
    assert result.exit_code == 0, result.output
    text = (tmp_path / "new" / "engine.yaml").read_text()
    assert "email: emial   # did you mean 'emial' for email?" in text
    assert "# created_at: TODO   # required: no column of bestellungen looks like it" in text
    assert "# customer_id: TODO" not in text  # kunden_nr is a usual name for it
    config = yaml.safe_load(text)
    assert config["warehouse"]["url"] == "duckdb:///../shop.duckdb"
    assert config["sources"]["customers"] == {"table": "kunden", "columns": {
        "customer_id": "kunden_nr", "email": "emial", "first_name": "vorname"}}
    assert config["sources"]["orders"] == {"table": "bestellungen", "columns": {
        "order_id": "bestell_nr", "customer_id": "kunden_nr", "total": "betrag"}}
    assert "to fill in: # created_at: TODO" in result.output and "to check: email: emial" in result.output
    checked = validate(tmp_path / "new", "--check-warehouse")
    assert checked.exit_code == 1 and "created_at" in checked.output and "bestellungen" in checked.output


def test_without_a_warehouse_the_mapping_to_fill_in_and_the_todos_fail_validation(tmp_path):
    result = init(str(tmp_path / "p"))
    assert result.exit_code == 0, result.output
    assert "to fill in: name:" in result.output
    shown = validate(tmp_path / "p")
    assert shown.exit_code == 1
    for setting in ("shop.name is still a TODO", "shop.url", "channels.email.from", "policies.unsubscribe_url"):
        assert setting in shown.output
    result = init(str(tmp_path / "q"), *SHOP)
    assert result.exit_code == 0 and "to fill in: name:" not in result.output
    assert validate(tmp_path / "q").exit_code == 0, validate(tmp_path / "q").output


def test_init_refuses_to_overwrite_a_project_unless_forced(tmp_path):
    assert init(str(tmp_path), *SHOP).exit_code == 0
    (tmp_path / "engine.yaml").write_text("# mine\n")
    refused = init(str(tmp_path), *SHOP)
    assert refused.exit_code == 1 and "already holds a project" in refused.output and "--force" in refused.output
    assert (tmp_path / "engine.yaml").read_text() == "# mine\n"
    assert init(str(tmp_path), "--force", *SHOP).exit_code == 0
    assert "shop:" in (tmp_path / "engine.yaml").read_text()


def test_an_unreachable_warehouse_is_one_error_line(tmp_path):
    result = init(str(tmp_path / "p"), "--from-warehouse", f"sqlite:///{tmp_path}/missing.db")
    assert result.exit_code == 1 and result.output.startswith("Error:") and not (tmp_path / "p").exists()


def test_a_warehouse_password_is_never_written():
    url = warehouse_setting("postgresql+psycopg://engine:s3cret-pw@db.internal:5432/shop", Path("/tmp/p"))
    assert url == "postgresql+psycopg://engine:${ENGINE_WAREHOUSE_PASSWORD}@db.internal:5432/shop"


def test_the_shipped_layout_is_the_starter_layout():
    assert (REPO / "templates" / "layouts" / "email.j2").read_text() == (STARTER / "layouts" / "email.j2").read_text()
    layout = (STARTER / "layouts" / "email.j2").read_text()
    assert "Bean" not in layout and "Kaffeestrasse" not in layout
    for variable in ("shop.name", "shop.address", "shop.legal", "shop.url"):
        assert variable in layout


def test_the_demo_footer_shows_the_shop_settings_of_engine_yaml(tmp_path):
    root = copy_project(tmp_path / "p")
    path = root / "engine.yaml"
    text = re.sub(r"customers: \d+", "customers: 60", path.read_text())
    path.write_text(text.replace("address: Kaffeestrasse 1, 10115 Berlin", "address: Bohnenweg 7, 04109 Leipzig")
                    .replace("name: Bean & Brew", "name: Beans Leipzig"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("ENGINE_")}
    result = subprocess.run([sys.executable, "-m", "engine.cli.main", "--project", str(root), "run", "--once",
                             "--as-of", "2025-01-10T00:00:00Z"], env=env, capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stderr
    emails = sorted((root / "var" / "outbox" / "email").glob("*.eml"))
    assert emails
    with emails[0].open("rb") as handle:
        message = message_from_binary_file(handle)
    text_part = next(p for p in message.walk() if p.get_content_type() == "text/plain").get_payload(decode=True).decode()
    assert "Beans Leipzig, Bohnenweg 7, 04109 Leipzig" in text_part and "Kaffeestrasse" not in text_part
    assert "Bean & Brew GmbH, Berlin." in text_part  # shop.legal
