"""Secrets never shown: every URL credential form, through every command, driver errors included.

``masking.mask`` is checked on its own, then each command that prints a URL or
a driver's error (``config show``, ``validate --check-warehouse``, ``plan``,
``run --once`` and the service's start-up and pass lines) is run as a real
process against a URL holding each form - a password in the userinfo, a
password in the query string, ``sig=``/``access=``/``token=``/``key=``
parameters, a ``${VAR}`` in the URL's path - on an unreachable PostgreSQL
port, a real PostgreSQL (tests/pg.py) and a real DuckDB file, and the secret
strings must appear nowhere in stdout or stderr.
"""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import as_real_shop, copy_project
from engine.spec.config import ENV_REFERENCE as _ENV, resolve
from engine.masking import mask, mask_url, secret_references
from servers import free_port

ENGINE = [sys.executable, "-c", "from engine.cli.main import main; main()"]
CODE_SECRET = "0f3c9a7e51d2b8463a9d0c7e5f1b2a84"
SECRETS = ("S3cret-userinfo", "S3cret-query", "S3cret-sig", "S3cret-access", "S3cret-token", "S3cret-key", "S3cret-path",
           "S3cret-real")


def test_mask_covers_every_credential_form():
    cases = {
        "postgresql+psycopg://engine:pa@ss:w0rd@db:5432/shop": "postgresql+psycopg://engine:***@db:5432/shop",
        "postgresql+psycopg:///shop?host=db&user=engine&password=pw&port=5432":
            "postgresql+psycopg:///shop?host=db&user=engine&password=***&port=5432",
        "https://h/x?sig=a&access=b&token=c&key=d&api_key=e&X-Amz-Signature=f&sv=2021&page=2#access_token=g":
            "https://h/x?sig=***&access=***&token=***&key=***&api_key=***&X-Amz-Signature=***&sv=2021&page=2#access_token=***",
    }
    for url, expected in cases.items():
        assert mask_url(url) == expected
        assert mask(f"cannot connect to {url}: refused") == f"cannot connect to {expected}: refused"
    assert mask("invalid dsn: host=db user=engine password='a b' sslpassword=x dbname=shop") == \
        "invalid dsn: host=db user=engine password=*** sslpassword=*** dbname=shop"
    assert mask('{"password": "pw", "host": "db"}') == '{"password": "***", "host": "db"}'
    for harmless in ("https://shop.example/unsubscribe?c=7&k=email&s=0123abcd", "duckdb:///var/shop.duckdb?access_mode=read_only",
                     "second-order:nudge:42:1001 at 2025-01-10T09:30:00Z", "postgresql://engine@db/shop"):
        assert mask(harmless) == harmless


def test_a_variable_in_a_url_path_is_a_secret_wherever_it_shows_up_later(monkeypatch):
    assert secret_references("https://hooks.example/services/${HOOK}", _ENV) == {"HOOK"}
    assert secret_references("postgresql://${PGUSER}:${PGPASSWORD}@${PGHOST}:${PGPORT}/shop", _ENV) == {"PGUSER", "PGPASSWORD"}
    assert secret_references("${ENGINE_WAREHOUSE_URL:-duckdb:///var/demo-shop.duckdb}", _ENV) == set()
    monkeypatch.setenv("HOOK_PATH", "T000/B000/S3cret-hook")
    url = resolve("https://hooks.example/services/${HOOK_PATH}")
    assert mask(f"POST {url} failed; the file /srv/T000/B000/S3cret-hook.json is missing") == \
        "POST https://hooks.example/services/*** failed; the file /srv/***.json is missing"


# --- every command, as a real process -----------------------------------------------------------------------------


def shop_project(root: Path, url: str) -> Path:
    """The shipped campaigns with the warehouse at ``url`` (written into engine.yaml), as a real shop (no demo)."""
    as_real_shop(copy_project(root))
    path = root / "engine.yaml"
    text = path.read_text()
    path.write_text(text.replace("url: ${ENGINE_WAREHOUSE_URL:-duckdb:///var/demo-shop.duckdb}", f"url: {url}"))
    return root


def engine(root: Path, *args: str, env: dict | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("ENGINE_")}
    environment.update({"ENGINE_CODE_SECRET": CODE_SECRET, **(env or {})})
    return subprocess.run(ENGINE + list(args), cwd=root, capture_output=True, text=True, timeout=timeout, env=environment)


COMMANDS = [("config", "show"), ("validate", "--check-warehouse"), ("plan", "--as-of", "2025-01-10T00:00:00Z"),
            ("run", "--once", "--as-of", "2025-01-10T00:00:00Z")]


def assert_never_shown(result: subprocess.CompletedProcess, what: str) -> None:
    output = result.stdout + result.stderr
    for secret in SECRETS:
        assert secret not in output, f"{what} shows {secret}:\n{output}"
    assert "Traceback" not in output and "Internal error" not in output, output


def unreachable_forms(port: int) -> dict[str, tuple[str, dict]]:
    return {
        "userinfo": (f"postgresql+psycopg://engine:S3cret-userinfo@127.0.0.1:{port}/shop", {}),
        "query": (f"postgresql+psycopg:///shop?host=127.0.0.1&port={port}&user=engine&password=S3cret-query", {}),
        "parameters": (f"postgresql+psycopg://engine@127.0.0.1:{port}/shop?sig=S3cret-sig&access=S3cret-access"
                       "&token=S3cret-token&key=S3cret-key", {}),
        "variable-in-path": ("postgresql+psycopg://engine@127.0.0.1:" + str(port) + "/${SHOP_DATABASE}",
                             {"SHOP_DATABASE": "S3cret-path"}),
    }


@pytest.mark.parametrize("form", ["userinfo", "query", "parameters", "variable-in-path"])
def test_no_command_shows_a_secret_of_an_unreachable_database(tmp_path, form):
    url, env = unreachable_forms(free_port())[form]
    root = shop_project(tmp_path, url)
    for command in COMMANDS:
        result = engine(root, *command, env=env)
        if command[0] != "config":
            assert result.returncode == 1, (command, result.stdout + result.stderr)
            assert "Error" in result.stderr or "error" in result.stdout
        assert_never_shown(result, " ".join(command))
    service = engine(root, "run", "--interval", "1s", "--metrics-port", "0", env=env)
    assert service.returncode == 1
    assert_never_shown(service, "the service")


def test_no_command_shows_a_secret_of_a_real_database(tmp_path):
    """PostgreSQL (trust authentication takes any password) and a DuckDB file whose directory is a ${VAR}:
    the commands connect, then fail on the missing shop tables, quoting the database."""
    import pg

    try:
        server = pg.server()
    except FileNotFoundError as exc:  # pg.server() fails the test instead when ENGINE_REQUIRE_POSTGRES=1
        pytest.skip(str(exc))
    real = server.new_database()
    separator = "&" if "?" in real else "?"
    secret_dir = tmp_path / "S3cret-path"
    secret_dir.mkdir()
    import duckdb

    duckdb.connect(str(secret_dir / "shop.duckdb")).close()
    forms = {
        "postgres": (f"{real}{separator}password=S3cret-real&sslpassword=S3cret-query", {}),
        "duckdb": ("duckdb:///${SHOP_DIR}/shop.duckdb", {"SHOP_DIR": str(secret_dir)}),
    }
    for name, (url, env) in forms.items():
        root = shop_project(tmp_path / name, url)
        for command in COMMANDS:
            result = engine(root, *command, env=env)
            assert_never_shown(result, f"{name}: {' '.join(command)}")
        assert "does not exist" in engine(root, "validate", "--check-warehouse", env=env).stdout
        port = free_port()
        process = subprocess.Popen(ENGINE + ["run", "--interval", "1s", "--metrics-port", str(port)], cwd=root,
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                   env={**{k: v for k, v in os.environ.items() if not k.startswith("ENGINE_")},
                                        "ENGINE_CODE_SECRET": CODE_SECRET, **env})
        try:
            readiness = wait_for_readiness(port, process)
        finally:
            process.terminate()
            stdout, stderr = process.communicate(timeout=30)
        shown = subprocess.CompletedProcess([], process.returncode, stdout + readiness, stderr)
        assert "pass.failed" in stdout or "Pass at" in stdout, stdout + stderr
        assert_never_shown(shown, f"{name}: the service")


def wait_for_readiness(port: int, process: subprocess.Popen, bound: float = 60) -> str:
    """The /readyz body once a pass has failed (its detail quotes the error), or '' if the service ended."""
    import urllib.error
    import urllib.request

    deadline = time.monotonic() + bound
    while time.monotonic() < deadline and process.poll() is None:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=5) as response:
                body = response.read().decode()
        except urllib.error.HTTPError as exc:
            body = exc.read().decode()
        except OSError:
            time.sleep(0.2)
            continue
        if "last_error" in body:
            return body
        time.sleep(0.2)
    return ""
