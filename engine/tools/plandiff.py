"""What a change to the campaigns does to the plan: recipients added, removed, unchanged.

Two plans - the project at a git ref ("before") and the working tree
("after"), at the same instant against the same warehouse and ledger - are
reduced to streams of plan keys (campaign, step, customer_id, trigger_key) of
the messages that would be sent. ``diff_plans`` keeps only the before side's
keys, grouped by step, and consumes the after side as a stream, so memory is
bounded by the size of one plan, never by the shop. ``compare`` adds what the
definitions say: campaigns added, removed, renamed (same file, new name),
enabled or disabled; steps added, removed or renamed (a new id in the place of
a vanished one: every recipient is new, since the id is part of the ledger
key); a step whose message templates changed ("content changed").

Pure: no I/O. Template hashes come in as a mapping.
"""
from __future__ import annotations

import bisect
from dataclasses import dataclass, field, fields, replace
from typing import Iterable, Mapping

from engine.model import Campaign, Step

PlanKey = tuple[str, str, str, str]  # campaign, step, customer_id, trigger_key
StepKey = tuple[str, str]            # campaign, step


def customer_order(customer_id: str) -> tuple:
    """Numeric ids in numeric order (9 before 10), then the rest as text: samples read naturally."""
    return (0, int(customer_id), "") if customer_id.isdigit() else (1, 0, customer_id)


class Sample:
    """The ``size`` smallest distinct customer ids seen, in ``customer_order``; O(size) memory."""

    def __init__(self, size: int):
        self.size = size
        self.ids: list[tuple] = []

    def add(self, customer_id: str) -> None:
        if self.size <= 0:
            return
        item = customer_order(customer_id)
        if len(self.ids) == self.size and item >= self.ids[-1]:
            return
        at = bisect.bisect_left(self.ids, item)
        if at < len(self.ids) and self.ids[at] == item:
            return
        self.ids.insert(at, item)
        del self.ids[self.size:]

    def values(self) -> list[str]:
        return [str(number) if kind == 0 else text for kind, number, text in self.ids]


@dataclass
class StepCounts:
    """One step's recipients (messages: a customer and a trigger instance) before and after."""

    added: int = 0
    removed: int = 0
    unchanged: int = 0
    added_sample: list[str] = field(default_factory=list)
    removed_sample: list[str] = field(default_factory=list)

    @property
    def before(self) -> int:
        return self.removed + self.unchanged

    @property
    def after(self) -> int:
        return self.added + self.unchanged


def diff_plans(before: Iterable[PlanKey], after: Iterable[PlanKey], sample: int = 5) -> dict[StepKey, StepCounts]:
    """Set difference of two plans, per (campaign, step). ``before`` is held, ``after`` streamed."""
    held: dict[StepKey, set[tuple[str, str]]] = {}
    for campaign, step, customer_id, trigger_key in before:
        held.setdefault((campaign, step), set()).add((customer_id, trigger_key))
    counts: dict[StepKey, StepCounts] = {}
    added_samples: dict[StepKey, Sample] = {}
    for campaign, step, customer_id, trigger_key in after:
        where = (campaign, step)
        result = counts.setdefault(where, StepCounts())
        previous = held.get(where)
        if previous is not None and (customer_id, trigger_key) in previous:
            previous.discard((customer_id, trigger_key))
            result.unchanged += 1
        else:
            result.added += 1
            added_samples.setdefault(where, Sample(sample)).add(customer_id)
    for where, gone in held.items():
        result = counts.setdefault(where, StepCounts())
        result.removed = len(gone)
        removed = Sample(sample)
        for customer_id, _ in gone:
            removed.add(customer_id)
        result.removed_sample = removed.values()
    for where, chosen in added_samples.items():
        counts[where].added_sample = chosen.values()
    return counts


# --- what the definitions say -------------------------------------------------


@dataclass
class StepChange:
    step: str
    status: str  # "" (same id on both sides) | "added" | "removed" | "renamed"
    counts: StepCounts
    renamed_from: str | None = None
    content_changed: bool = False
    settings_changed: bool = False

    @property
    def notes(self) -> list[str]:
        notes = {"added": ["new step"], "removed": ["step removed"],
                 "renamed": [f"renamed from '{self.renamed_from}': every recipient is new"]}.get(self.status, [])
        if self.settings_changed:
            notes.append("settings changed")
        if self.content_changed:
            notes.append("content changed")
        return notes


@dataclass
class CampaignChange:
    name: str
    #: "" | "added" | "removed" | "renamed" | "enabled" | "disabled"
    status: str
    steps: list[StepChange]
    renamed_from: str | None = None
    settings_changed: bool = False

    @property
    def notes(self) -> list[str]:
        notes = {"added": ["new campaign"], "removed": ["campaign removed"],
                 "renamed": [f"renamed from '{self.renamed_from}': every recipient is new"],
                 "enabled": ["campaign enabled"], "disabled": ["campaign disabled"]}.get(self.status, [])
        if self.settings_changed:
            notes.append("settings changed")
        return notes

    @property
    def changed(self) -> bool:
        return bool(self.status or self.settings_changed) or any(
            s.status or s.content_changed or s.settings_changed or s.counts.added or s.counts.removed for s in self.steps)


def _pair_renames(old_ids: list[str], new_ids: list[str]) -> dict[str, str]:
    """new id -> old id, when as many ids vanished as appeared (in order): a rename, not two edits."""
    gone = [i for i in old_ids if i not in new_ids]
    came = [i for i in new_ids if i not in old_ids]
    return dict(zip(came, gone)) if gone and len(gone) == len(came) else {}


def _definition(step: Step) -> Step:
    """The step without its template names (content is compared by hash, not by name)."""
    return replace(step, variants=tuple(replace(v, template="") for v in step.variants))


def _campaign_settings(campaign: Campaign) -> tuple:
    return tuple(getattr(campaign, f.name) for f in fields(campaign) if f.name not in ("steps", "file", "enabled"))


def compare(before: Iterable[Campaign], after: Iterable[Campaign], counts: Mapping[StepKey, StepCounts],
            content_before: Mapping[StepKey, str], content_after: Mapping[StepKey, str]) -> list[CampaignChange]:
    """Each campaign enabled on either side, with its steps and their recipient counts.

    ``content_*`` map (campaign, step) to a hash of the step's message
    templates (and what they extend or include).
    """
    old = {c.name: c for c in before}
    new = {c.name: c for c in after}
    renamed_to = {was.name: now for now in new.values() if now.name not in old
                  for was in old.values() if was.file and was.file == now.file and was.name not in new}
    renamed_from = {now.name: old[name] for name, now in renamed_to.items()}
    changes: list[CampaignChange] = []
    for name in sorted(set(old) | set(new)):
        if name in renamed_to:
            continue  # shown under its new name
        was, now = renamed_from.get(name, old.get(name)), new.get(name)
        status = _status(was, now)
        if status is None:
            continue
        if status == "" and was.name != now.name:
            status = "renamed"
        changes.append(CampaignChange(
            name=name, status=status, renamed_from=was.name if status == "renamed" else None,
            settings_changed=status == "" and _campaign_settings(was) != _campaign_settings(now),
            steps=_steps(was, now, counts, content_before, content_after)))
    return changes


def _status(was: Campaign | None, now: Campaign | None) -> str | None:
    """None: disabled on both sides (nothing to show)."""
    on_before, on_after = bool(was and was.enabled), bool(now and now.enabled)
    if not on_before and not on_after:
        return None
    if was is None:
        return "added"
    if now is None:
        return "removed"
    if on_before != on_after:
        return "enabled" if on_after else "disabled"
    return ""


def _steps(was: Campaign | None, now: Campaign | None, counts: Mapping[StepKey, StepCounts],
           content_before: Mapping[StepKey, str], content_after: Mapping[StepKey, str]) -> list[StepChange]:
    """One row per step: (old id, new id) pairs, renamed ids paired, in the new order, then the removed."""
    old_ids = [s.id for s in was.steps] if was else []
    new_ids = [s.id for s in now.steps] if now else []
    renames = _pair_renames(old_ids, new_ids) if was and now else {}
    rows = [(renames.get(i, i if i in old_ids else None), i) for i in new_ids]
    rows += [(i, None) for i in old_ids if i not in new_ids and i not in renames.values()]
    both = was is not None and now is not None
    steps = []
    for old_id, new_id in rows:
        before_key = (was.name, old_id) if was and old_id else None
        after_key = (now.name, new_id) if now and new_id else None
        if before_key == after_key:
            step_counts = counts.get(after_key) or StepCounts()
        else:
            step_counts = _merge(counts.get(before_key), counts.get(after_key))
        status = "" if not both else "added" if old_id is None else "removed" if new_id is None \
            else "renamed" if old_id != new_id else ""
        compared = both and old_id is not None and new_id is not None
        steps.append(StepChange(
            step=new_id or old_id, status=status, counts=step_counts,
            renamed_from=old_id if status == "renamed" else None,
            content_changed=compared and content_before.get(before_key) != content_after.get(after_key),
            settings_changed=compared and status == "" and _definition(was.step(old_id)) != _definition(now.step(new_id))))
    return steps


def _merge(before: StepCounts | None, after: StepCounts | None) -> StepCounts:
    """Counts of a step whose key changed (renamed step or campaign): removed from the old key, added to the new."""
    before, after = before or StepCounts(), after or StepCounts()
    return StepCounts(added=after.added + before.added, removed=after.removed + before.removed,
                      unchanged=after.unchanged + before.unchanged,
                      added_sample=after.added_sample or before.added_sample,
                      removed_sample=before.removed_sample or after.removed_sample)
