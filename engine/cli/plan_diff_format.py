"""A plan diff (what `engine plan --diff` found) as text for a terminal, markdown for a pull-request comment, or JSON for tools."""
from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import IO

from engine.clock import format_instant
from engine.errors import Issue
from engine.spec.gitref import Ref
from engine.tools.plandiff import CampaignChange, StepChange


@dataclass
class PlanDiff:
    """Everything the formats show."""

    ref: Ref
    now: datetime
    changes: list[CampaignChange]
    ref_issues: list[Issue]


RECIPIENT = "A recipient is one message: a customer and a trigger instance (order, checkout, ...)."


def _rows(diff: PlanDiff) -> list[tuple[CampaignChange, StepChange]]:
    return [(c, s) for c in diff.changes for s in c.steps] + [(c, None) for c in diff.changes if not c.steps]


def _change(campaign: CampaignChange, step: StepChange | None) -> str:
    notes = campaign.notes + (step.notes if step else [])
    if step and not notes and (step.counts.added or step.counts.removed):
        notes = ["recipients changed"]
    return "; ".join(notes) or "-"


def _changed(campaign: CampaignChange, step: StepChange | None) -> bool:
    return _change(campaign, step) != "-"


def _headline(diff: PlanDiff) -> str:
    rows = [(c, s) for c, s in _rows(diff) if s]
    changed = [s for c, s in rows if _changed(c, s)]
    added = sum(s.counts.added for _, s in rows)
    removed = sum(s.counts.removed for _, s in rows)
    if not changed:
        return f"No step changes its recipients or content ({len(rows)} step(s) compared)."
    return f"{len(changed)} of {len(rows)} step(s) change: +{added} added, -{removed} removed recipients."


def _ref_problem(diff: PlanDiff) -> list[str]:
    if not diff.ref_issues:
        return []
    lines = [f"The project at {diff.ref.label} ({diff.ref.short}) is invalid, so there is nothing to compare with; "
             "the working tree's plan is shown in full (every recipient counts as added):"]
    return lines + [f"  {i.location()}: {i.message}" for i in diff.ref_issues]


def _title(diff: PlanDiff) -> str:
    return f"{diff.ref.label} ({diff.ref.short}) -> working tree at {format_instant(diff.now)}"


def write_text(diff: PlanDiff, out: IO[str]) -> None:
    out.write(f"Plan diff: {_title(diff)}\n")
    out.write(f"Both sides use the working tree's warehouse and ledger. {RECIPIENT}\n\n")
    for line in _ref_problem(diff):
        out.write(line + "\n")
    if diff.ref_issues:
        out.write("\n")
    headers = ["campaign", "step", "change", "before", "after", "added", "removed", "unchanged"]
    table = [[c.name, s.step if s else "-", _change(c, s), str(s.counts.before if s else 0), str(s.counts.after if s else 0),
              f"+{s.counts.added if s else 0}", f"-{s.counts.removed if s else 0}", f"={s.counts.unchanged if s else 0}"]
             for c, s in _rows(diff)]
    widths = [max(len(r[i]) for r in [headers] + table) for i in range(len(headers))]
    right = {3, 4, 5, 6, 7}
    for row in [headers] + table:
        out.write("  ".join(v.rjust(w) if i in right else v.ljust(w) for i, (v, w) in enumerate(zip(row, widths))).rstrip() + "\n")
    samples = _samples(diff)
    if samples:
        out.write("\nSample customer ids:\n")
        for name, added, removed in samples:
            out.write(f"  {name}: added {added}; removed {removed}\n")
    out.write("\n" + _headline(diff) + "\n")


def _sample_text(ids: list[str], total: int) -> str:
    if not ids:
        return "-"
    more = total - len(ids)
    return ", ".join(ids) + (f" (+{more} more)" if more > 0 else "")


def _samples(diff: PlanDiff) -> list[tuple[str, str, str]]:
    return [(f"{c.name}/{s.step}", _sample_text(s.counts.added_sample, s.counts.added),
             _sample_text(s.counts.removed_sample, s.counts.removed))
            for c, s in _rows(diff) if s and (s.counts.added or s.counts.removed)]


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def write_markdown(diff: PlanDiff, out: IO[str]) -> None:
    out.write(f"### Campaign plan diff: `{_cell(diff.ref.label)}` ({diff.ref.short}) → working tree\n\n")
    out.write(f"**{_headline(diff)}**\n\n")
    out.write(f"Planned at {format_instant(diff.now)}; both sides use the working tree's warehouse and ledger. "
              f"{RECIPIENT}\n\n")
    if diff.ref_issues:
        first, *issues = _ref_problem(diff)
        out.write(f"> :warning: {first}\n")
        for issue in issues:
            out.write(f"> - `{_cell(issue.strip())}`\n")
        out.write("\n")
    rows = _rows(diff)
    changed = [(c, s) for c, s in rows if _changed(c, s)]
    same = [(c, s) for c, s in rows if not _changed(c, s)]
    if changed:
        _markdown_table(changed, out)
    if same:
        recipients = sum(s.counts.unchanged for _, s in same if s)
        out.write(f"\n<details><summary>Unchanged: {len(same)} step(s), {recipients} recipient(s)</summary>\n\n")
        _markdown_table(same, out)
        out.write("\n</details>\n")
    samples = _samples(diff)
    if samples:
        out.write("\n<details><summary>Sample customer ids</summary>\n\n")
        out.write("| campaign/step | added | removed |\n|---|---|---|\n")
        for name, added, removed in samples:
            out.write(f"| {_cell(name)} | {_cell(added)} | {_cell(removed)} |\n")
        out.write("\n</details>\n")


def _markdown_table(rows: list[tuple[CampaignChange, StepChange | None]], out: IO[str]) -> None:
    out.write("| campaign | step | change | before | after | added | removed | unchanged |\n")
    out.write("|---|---|---|--:|--:|--:|--:|--:|\n")
    for c, s in rows:
        counts = s.counts if s else None
        out.write(f"| {_cell(c.name)} | {_cell(s.step) if s else '-'} | {_cell(_change(c, s))} | "
                  f"{counts.before if counts else 0} | {counts.after if counts else 0} | "
                  f"+{counts.added if counts else 0} | -{counts.removed if counts else 0} | "
                  f"={counts.unchanged if counts else 0} |\n")


def as_json(diff: PlanDiff) -> dict:
    return {
        "ref": diff.ref.label,
        "commit": diff.ref.commit,
        "as_of": format_instant(diff.now),
        "ref_valid": not diff.ref_issues,
        "ref_issues": [i.as_dict() for i in diff.ref_issues],
        "campaigns": [
            {"name": c.name, "status": c.status or ("changed" if c.changed else "unchanged"),
             "renamed_from": c.renamed_from, "notes": c.notes,
             "steps": [{"step": s.step, "status": s.status or "same", "renamed_from": s.renamed_from,
                        "content_changed": s.content_changed, "settings_changed": s.settings_changed,
                        "before": s.counts.before, "after": s.counts.after, "added": s.counts.added,
                        "removed": s.counts.removed, "unchanged": s.counts.unchanged,
                        "added_sample": s.counts.added_sample, "removed_sample": s.counts.removed_sample}
                       for s in c.steps]}
            for c in diff.changes],
    }


def write_plan_diff(diff: PlanDiff, fmt: str, out: IO[str]) -> None:
    if fmt == "json":
        out.write(json.dumps(as_json(diff), indent=2) + "\n")
    elif fmt == "markdown":
        write_markdown(diff, out)
    else:
        write_text(diff, out)
