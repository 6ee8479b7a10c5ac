"""The process's long-lived objects kept out of the pass's full garbage collections (engine.heap).

What the freeze buys is measured at the CLI level (benchmarks/README, "gc.freeze after start-up"); these
tests prove where it happens and that it is handed back: a command run in a test runner's process (or a
service that reloads its project) must not keep frozen what it no longer uses.
"""
from __future__ import annotations

import gc
import os
import weakref

from click.testing import CliRunner

from engine.cli.main import main
from engine.service.loop import Service
from test_service import live_project


def test_a_command_runs_its_pass_with_start_up_frozen_and_hands_it_back(project_dir):
    """`engine plan`: the collections during the pass see the modules, project and reconciler frozen
    (gc.get_freeze_count), and nothing stays frozen once the command returns."""
    frozen_during = []

    def watch(phase, _info):
        if phase == "start":
            frozen_during.append(gc.get_freeze_count())

    gc.callbacks.append(watch)
    try:
        result = CliRunner().invoke(main, ["--project", str(project_dir), "plan", "--as-of", "2025-01-10T00:00:00Z",
                                           "--format", "jsonl", "--quiet"])
    finally:
        gc.callbacks.remove(watch)
    assert result.exit_code == 0, result.output
    assert result.output.count("\n") > 10  # the demo shop's due messages: a real pass ran
    assert frozen_during and max(frozen_during) > 10_000, "no collection ran with start-up frozen"
    assert gc.get_freeze_count() == 0


def test_the_service_freezes_after_its_first_pass_and_a_reload_lets_the_old_project_go(tmp_path):
    root = live_project(tmp_path / "project", customers=10)
    service = Service(root, interval=60, metrics_port=0)
    try:
        service.start()
        assert gc.get_freeze_count() == 0  # not before the first pass: its statements and templates belong in it
        assert service.run_pass() is not None
        after_first = gc.get_freeze_count()
        assert after_first > 10_000
        assert service.run_pass() is not None
        assert gc.get_freeze_count() <= after_first  # one freeze per loaded project, not one per pass (frozen
        # objects that lose their last reference are still freed)

        old = weakref.ref(service._reconciler)
        # a Jinja2 environment and its compiled templates refer to each other: only the cyclic collector frees them
        old_templates = weakref.ref(service._reconciler.renderer()._html)
        campaign = next((root / "campaigns.d").glob("*.yaml"))
        campaign.write_text(campaign.read_text() + "\n# edited\n")
        os.utime(campaign, (os.path.getmtime(campaign) + 5,) * 2)
        assert service.reload_if_changed()
        assert gc.get_freeze_count() == 0
        assert service.run_pass() is not None
        assert old() is None, "the reloaded-away reconciler is still alive"
        assert old_templates() is None, "the reloaded-away project's compiled templates are still alive"
        assert gc.get_freeze_count() > 10_000
    finally:
        service.close()
    assert gc.get_freeze_count() == 0
