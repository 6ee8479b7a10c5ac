"""Previews of every template a pull request changes, for the campaigns workflow's artifact.

``python deploy/ci/preview_templates.py BASE_REF OUT_DIR [--as-of T]``, run in the project folder:
for each file under templates/ that ``git diff --name-only BASE_REF...HEAD`` names, the first row of
``engine plan --format jsonl`` for a step using that template picks a sample customer, ``engine preview``
writes that customer's message into OUT_DIR/<template path>/, and where headless Chromium is
found (``CHROMIUM``, else chromium, chromium-browser, google-chrome on PATH) an email's HTML is also
rendered to message.png. OUT_DIR/README.txt says, per template, what was rendered or why not.
ENGINE_REQUIRE_CHROMIUM=1 makes a missing Chromium an error. Must not send or write the ledger:
``engine plan`` and ``engine preview`` never do.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

TEMPLATES = "templates/"
CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome")


def engine(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "engine.cli.main", *args], capture_output=True, text=True)


def changed_templates(base: str) -> list[str]:
    """The template files the change adds or modifies (deleted ones have nothing to preview)."""
    out = subprocess.run(["git", "diff", "--name-only", "--diff-filter=AMR", f"{base}...HEAD", "--", TEMPLATES],
                         capture_output=True, text=True, check=True).stdout
    return sorted(line[len(TEMPLATES):] for line in out.splitlines() if line.startswith(TEMPLATES))


def steps_using(template: str) -> list[tuple[str, str, str]]:
    """(campaign, step, variant) of every variant whose template is ``template``."""
    from engine.spec.project import load_project

    project = load_project(Path.cwd())
    return [(c.name, s.id, v.id) for c in project.campaigns for s in c.steps for v in s.variants if v.template == template]


def sample(campaign: str, step: str, variant: str, as_of: list[str]) -> str | None:
    """The customer of the first plan row of that step and variant, or None."""
    result = engine("plan", "--format", "jsonl", "--campaign", campaign, *as_of)
    if result.returncode != 0:
        raise SystemExit(f"engine plan failed for {campaign}: {result.stderr.strip()}")
    for line in result.stdout.splitlines():
        row = json.loads(line)
        if row["step"] == step and row["variant"] == variant:
            return row["customer_id"]
    return None


def chromium() -> str | None:
    found = os.environ.get("CHROMIUM") or next(filter(None, map(shutil.which, CHROMIUM_NAMES)), None)
    if found is None and os.environ.get("ENGINE_REQUIRE_CHROMIUM") == "1":
        raise SystemExit("ENGINE_REQUIRE_CHROMIUM=1 but no headless Chromium found (CHROMIUM, " + ", ".join(CHROMIUM_NAMES) + ")")
    return found


def screenshot(browser: str, html: Path) -> Path:
    png = html.with_suffix(".png")
    subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                    f"--screenshot={png}", "--window-size=800,1200", html.resolve().as_uri()],
                   capture_output=True, timeout=60, check=True)
    return png


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("base")
    parser.add_argument("out", type=Path)
    parser.add_argument("--as-of")
    args = parser.parse_args(argv)
    as_of = ["--as-of", args.as_of] if args.as_of else []
    browser = chromium()
    args.out.mkdir(parents=True, exist_ok=True)
    notes = []
    for template in changed_templates(args.base):
        users = steps_using(template)
        if not users:
            notes.append(f"{template}: no step uses it directly (a layout or an include: see the templates it frames)")
            continue
        for campaign, step, variant in users:
            customer = sample(campaign, step, variant, as_of)
            if customer is None:
                notes.append(f"{template}: {campaign}/{step} variant {variant}: nobody is due in the plan, nothing to preview")
                continue
            folder = args.out / template / f"{campaign}.{step}.{variant}"
            result = engine("preview", campaign, step, customer, "--variant", variant, "--out", str(folder), *as_of)
            if result.returncode != 0:
                notes.append(f"{template}: {campaign}/{step} variant {variant}, customer {customer}: {result.stderr.strip()}")
                continue
            rendered = [Path(p).name for p in result.stdout.split()]
            if browser and (folder / "message.html").exists():
                rendered.append(screenshot(browser, folder / "message.html").name)
            notes.append(f"{template}: {campaign}/{step} variant {variant}, customer {customer}: {', '.join(rendered)}")
            break  # one sample per template
    (args.out / "README.txt").write_text("\n".join(notes or ["no template changed"]) + "\n", encoding="utf-8")
    print("\n".join(notes or ["no template changed"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
