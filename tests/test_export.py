"""``engine export``: named and ad-hoc segments, a campaign's plan and history, streamed."""
from __future__ import annotations

import csv
import io
import json
import tracemalloc
from datetime import datetime, timedelta, timezone

import pytest
from click.testing import CliRunner

from conftest import copy_project, database_url, load_history
from engine import Reconciler, load_project
from engine.cli.main import main
from engine.tools.export import export_segment
from engine.state.warehouse import Database

UTC = timezone.utc
T0 = datetime(2025, 1, 6, 12, 0)
AS_OF = "2025-01-14T12:00:00Z"  # T0 + 8d

SEGMENTS = """
  repeat: order_count >= 3
  berlin-reachable: lower(city) = 'berlin' AND email IS NOT NULL
"""

#: customer -> (city, email?, orders)
HISTORY = {1: ("Berlin", True, 3), 2: ("BERLIN", False, 4), 3: ("Hamburg", True, 1), 4: ("berlin", True, 0),
           5: ("Munich", True, 5), 6: (None, True, 2)}


def rows():
    customers = [{"customer_id": i, "email": f"c{i}@example.com" if email else None, "first_name": f"C{i}",
                  "city": city, "created_at": T0 - timedelta(days=100)} for i, (city, email, _) in HISTORY.items()]
    orders = [{"order_id": i * 100 + n, "customer_id": i, "created_at": T0 - timedelta(days=n) if n else T0,
               "status": "completed", "total": 10} for i, (_, _, count) in HISTORY.items() for n in range(count)]
    return {"customers": customers, "orders": orders}


@pytest.fixture
def project(tmp_path, backend, monkeypatch):
    root = copy_project(tmp_path / "project")
    for path in (root / "campaigns.d").glob("*.yaml"):
        if path.stem != "second-order":
            path.unlink()
    config = root / "engine.yaml"  # beside the shipped segment (re-activate's lapsed readers)
    config.write_text(config.read_text().replace("\nsegments:\n", "\nsegments:" + SEGMENTS, 1))
    url = database_url(backend, tmp_path)
    monkeypatch.setenv("ENGINE_WAREHOUSE_URL", url)
    load_history(url, **rows())
    return root


def invoke(root, *args):
    return CliRunner().invoke(main, ["--project", str(root), *args])


def ids_of(csv_text: str) -> list[str]:
    return [row["customer_id"] for row in csv.DictReader(io.StringIO(csv_text))]


def test_named_segments_and_ad_hoc_filters(project):
    # order_count >= 3: customers 1 (3), 2 (4), 5 (5); lower(city) = 'berlin' with an email: 1, 4
    repeat = invoke(project, "export", "repeat", "--as-of", AS_OF)
    assert repeat.exit_code == 0, repeat.output
    assert ids_of(repeat.output) == ["1", "2", "5"]
    assert ids_of(invoke(project, "export", "berlin-reachable", "--as-of", AS_OF).output) == ["1", "4"]
    assert ids_of(invoke(project, "export", "--where", "order_count < 2", "--as-of", AS_OF).output) == ["3", "4"]
    # facts are as of --as-of: before T0's orders, customer 1 had 2 orders, 2 had 3, 5 had 4
    assert ids_of(invoke(project, "export", "repeat", "--as-of", "2025-01-06T00:00:00Z").output) == ["2", "5"]


def test_segment_columns_jsonl_and_out_file(project, tmp_path):
    header = invoke(project, "export", "repeat", "--as-of", AS_OF).output.splitlines()[0]
    config = load_project(project).config
    assert header.split(",") == list(config.customer_attributes())
    target = tmp_path / "repeat.jsonl"
    result = invoke(project, "export", "berlin-reachable", "--format", "jsonl", "--out", str(target))
    assert result.exit_code == 0 and "2 row(s) written" in result.output
    lines = [json.loads(line) for line in target.read_text().splitlines()]
    assert [(str(r["customer_id"]), r["email"], r["city"], r["first_name"]) for r in lines] == [
        ("1", "c1@example.com", "Berlin", "C1"), ("4", "c4@example.com", "berlin", "C4")]


def test_campaign_export_is_the_plan_and_history_is_the_ledger(project):
    # second-order at T0 + 8d: every customer with orders ordered at T0; the others' first orders are older
    # (stopped by ordered_again, not exported); only customer 3's first order is at T0: due T0 + 7d
    plan = invoke(project, "plan", "--campaign", "second-order", "--format", "csv", "--as-of", AS_OF)
    exported = invoke(project, "export", "second-order", "--as-of", AS_OF)
    assert exported.exit_code == 0, exported.output
    assert exported.output == plan.output
    assert [(r["customer_id"], r["action"]) for r in csv.DictReader(io.StringIO(exported.output))] == [("3", "send")]
    assert invoke(project, "run", "--once", "--as-of", AS_OF).exit_code == 0
    history = list(csv.DictReader(io.StringIO(invoke(project, "export", "second-order", "--history").output)))
    # the pass also recorded the stopped first orders within the stale horizon (1: order 102, 5: 504, 6: 601;
    # customer 2 has no email: outside the audience, never recorded)
    assert [(r["message_key"], r["status"], r["reason"], r["channel"]) for r in history] == [
        ("second-order:nudge:1:102", "skipped", "stopped", "email"),
        ("second-order:nudge:3:300", "sent", "", "email"), ("second-order:nudge:5:504", "skipped", "stopped", "email"),
        ("second-order:nudge:6:601", "skipped", "stopped", "email")]
    assert ids_of(invoke(project, "export", "second-order", "--as-of", AS_OF).output) == []  # sent: no longer due


def test_bad_input_is_one_clear_error(project):
    bad = invoke(project, "export", "--where", "order_count >= 3; DROP TABLE customers")
    assert bad.exit_code == 1
    assert bad.output.startswith("Error: invalid segment filter") and "Traceback" not in bad.output
    since = invoke(project, "export", "--where", "ordered_since_trigger")
    assert since.exit_code == 1 and "unknown attribute 'ordered_since_trigger'" in since.output
    unknown = invoke(project, "export", "nobody")
    assert unknown.exit_code == 1
    assert "no segment or campaign named 'nobody' (segments: berlin-reachable, lapsed_readers, repeat; campaigns: second-order)" in unknown.output
    history = invoke(project, "export", "repeat", "--history")
    assert history.exit_code == 2 and "--history exports a campaign's ledger rows" in history.output


def test_validate_checks_segment_filters(project):
    text = (project / "engine.yaml").read_text()
    (project / "engine.yaml").write_text(text.replace("order_count >= 3", "order_cnt >= 3"))
    result = invoke(project, "validate")
    assert result.exit_code == 1
    line = next(n for n, l in enumerate((project / "engine.yaml").read_text().splitlines(), 1) if "order_cnt" in l)
    assert f"engine.yaml:{line}:11: error: segment 'repeat': unknown attribute 'order_cnt' (did you mean 'order_count'" in result.output
    assert invoke(project, "export", "--where", "city = 'Berlin'").exit_code == 1  # the project is invalid


@pytest.mark.parametrize("backend", ["duckdb"])
def test_export_streams_in_flat_memory(tmp_path, backend, monkeypatch):
    """Python's peak memory for 200,000 customers stays that of 20,000: rows are written as they come.

    A materialising export would hold 200k rows (at least ~100 bytes each as Row
    objects, far more as dicts): tens of megabytes, ten times the 20k peak.
    """
    root = copy_project(tmp_path / "project")
    url = database_url(backend, tmp_path)
    monkeypatch.setenv("ENGINE_WAREHOUSE_URL", url)
    load_history(url)
    db = Database(url)
    peaks = {}
    for count in (20_000, 200_000):
        db.execute("DELETE FROM customers")
        db.execute(f"INSERT INTO customers (customer_id, email, first_name, city, created_at) "
                   f"SELECT i, 'c' || CAST(i AS VARCHAR) || '@example.com', 'Name' || CAST(i AS VARCHAR), 'Berlin', "
                   f"TIMESTAMP '2024-01-01 00:00:00' FROM range({count}) AS t(i)")
        reconciler = Reconciler(load_project(root))
        target = tmp_path / f"export-{count}.csv"
        try:
            with open(target, "w", newline="", encoding="utf-8") as out:
                tracemalloc.start()
                written = export_segment(reconciler, "email IS NOT NULL", datetime(2025, 1, 1, tzinfo=UTC), "csv", out)
                peaks[count] = tracemalloc.get_traced_memory()[1]
                tracemalloc.stop()
        finally:
            reconciler.close()
        assert written == count
        with open(target, encoding="utf-8") as written_file:
            assert sum(1 for _ in written_file) == count + 1
    db.dispose()
    print(f"peak Python memory: 20k rows {peaks[20_000] / 1e6:.1f} MB, 200k rows {peaks[200_000] / 1e6:.1f} MB")
    assert peaks[200_000] < 1.5 * peaks[20_000] + 2_000_000
    assert peaks[200_000] < 20_000_000
