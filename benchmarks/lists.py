"""The cost of product lists in a pass: the campaigns whose templates show lists, run with them and
without them, in the same run (issue 18: target <= 1.3x).

"With": the shipped project, whose templates declare lists (``{# uses: ... #}``): each pass
computes every declared list kind for the batch's due customers, one query per kind and batch.
"Without": a copy of the project whose templates show the same number of products from a fixed
list literal instead (no declaration, so no list query); the messages are as large. Both passes
run on an empty ledger into the file outbox, alternately, and the median of each is compared.
The "with" pass also skips the messages whose list is empty (no_products), so it sends a few
fewer; the row says how many.
"""
from __future__ import annotations

import re
import shutil
import statistics
import time
from datetime import datetime
from pathlib import Path

_DECLARATION = re.compile(r"\{#-?\s*uses\s*:.*?#\}\n?", re.S)
#: what the "without" templates show instead of each list: as many products as a list's limit
_FIXED = "[" + ", ".join(
    f'{{"position": {i}, "product_id": {i}, "name": "Product {i}", "url": "https://shop.example.com/p/{i}", '
    f'"image": "https://shop.example.com/img/{i}.jpg", "price": 9.5, "category": "coffee", "in_stock": true}}'
    for i in range(1, 5)) + "]"


def _without_lists(project_dir: Path, target: Path, names) -> list[str]:
    """A copy of ``project_dir`` whose templates show fixed lists; returns the templates changed."""
    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(project_dir, target, ignore=shutil.ignore_patterns("var"))
    changed = []
    for path in sorted((target / "templates").rglob("*.j2")):
        text = path.read_text()
        if not _DECLARATION.search(text):
            continue
        text = _DECLARATION.sub("", text)
        for name in names:
            text = re.sub(rf"\b{name}\b", _FIXED, text)
        path.write_text(text)
        changed.append(str(path.relative_to(target / "templates")))
    return changed


def measure_lists(reconciler, project_dir: Path, now: datetime, repeat: int, reset_ledger) -> list[dict]:
    import engine
    from engine.sql.product_lists import LIST_KINDS

    plain_dir = project_dir.parent / "project-no-lists"
    changed = _without_lists(project_dir, plain_dir, LIST_KINDS)
    plain = engine.Reconciler(engine.load_project(plain_dir))
    try:
        names = {c.name for c in reconciler.campaigns()
                 for s in c.steps for v in s.variants if v.template in changed}
        with_lists = [c for c in reconciler.campaigns() if c.name in names]
        without = [c for c in plain.campaigns() if c.name in names]
        times: dict[str, list[float]] = {"with": [], "without": []}
        reports = {}
        for _ in range(repeat):
            for label, runner, campaigns, directory in (("without", plain, without, plain_dir),
                                                        ("with", reconciler, with_lists, project_dir)):
                reset_ledger(runner, directory)
                started = time.perf_counter()
                reports[label] = runner.run_once(now, campaigns)
                times[label].append(time.perf_counter() - started)
        reset_ledger(reconciler, project_dir)
    finally:
        plain.close()
        shutil.rmtree(plain_dir, ignore_errors=True)
    with_s, without_s = statistics.median(times["with"]), statistics.median(times["without"])
    sent_with, sent_without = reports["with"].total("sent"), reports["without"].total("sent")
    skipped = sum(n for (_, _, outcome), n in reports["with"].counts.items() if outcome == "skipped:no_products")
    return [
        {"what": f"run_once, {len(names)} campaigns, fixed lists", "rows": sent_without, "seconds": without_s,
         "note": f"{', '.join(sorted(names))}; templates {', '.join(changed)} without list queries"},
        {"what": f"run_once, {len(names)} campaigns, product lists", "rows": sent_with, "seconds": with_s,
         "note": f"x{with_s / without_s:.2f} of fixed lists (target <= 1.3x); {skipped:,} skipped as no_products; "
                 f"median of {repeat}"},
    ]
