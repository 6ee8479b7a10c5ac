"""``engine plan --diff [REF]``: who a change to the campaigns adds or removes, before it is merged.

Both plans run at the same instant against the SAME warehouse and ledger:
the working tree's engine.yaml connection (warehouse and ledger URLs, and the
dialect). REF's engine.yaml still supplies REF's source mapping, channels and
policies, so a changed mapping shows up in the diff too; but a connection
that changed (or a secret that only production has) cannot make the two
sides read different data. REF's plan only reads the ledger: ``Reconciler.due``
never writes, and both sides open the ledger only to read (a missing ledger
reads as empty; nothing is created).
"""
from __future__ import annotations

import hashlib
from dataclasses import replace
from datetime import datetime
from pathlib import Path
from typing import Iterable, Iterator

import click
import jinja2
from jinja2 import meta

from engine.errors import Issue
from engine.spec.gitref import checkout_project, resolve_ref
from engine.model import Campaign, Project
from engine.tools.plandiff import PlanKey, StepKey, compare, diff_plans
from engine.spec.project import check_project
from engine.cli.common import open_reconciler
from engine.cli.plan_diff_format import PlanDiff, write_plan_diff

#: what --format may be with --diff (None: not given, text)
DIFF_FORMATS = (None, "text", "markdown", "json")


def plan_keys(reconciler, now: datetime, campaigns: list[Campaign]) -> Iterator[PlanKey]:
    """The keys of the messages a pass would send (skips and quiet-hour deferrals are not recipients);
    each campaign's rows sorted by the warehouse (``Reconciler.due(ordered=True)``), so a frequency cap
    lets the same one of a customer's instances through in both plans."""
    for batch in reconciler.due(now, campaigns, ordered=True):
        for m in batch:
            if m.action == "send":
                yield (m.campaign, m.step, m.customer_id, m.trigger_key)


def template_hashes(project: Project) -> dict[StepKey, str]:
    """(campaign, step) -> hash of its templates' bytes and of every template they extend, include or import."""
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(project.templates_dir)))
    memo: dict[str, str] = {}

    def reachable(name: str, seen: set[str]) -> None:
        if name in seen:
            return
        seen.add(name)
        try:
            source, _, _ = env.loader.get_source(env, name)
        except jinja2.TemplateNotFound:
            return
        try:
            for child in meta.find_referenced_templates(env.parse(source)):
                if child:
                    reachable(child, seen)
        except jinja2.TemplateSyntaxError:
            pass  # its bytes are hashed all the same

    def file_hash(name: str) -> str:
        if name not in memo:
            path = project.templates_dir / name
            memo[name] = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else "missing"
        return memo[name]

    hashes = {}
    for campaign in project.campaigns:
        for step in campaign.steps:
            names: set[str] = set()
            for variant in step.variants:
                reachable(variant.template, names)
            digest = hashlib.sha256()
            for name in sorted(names):
                digest.update(f"{name}\0{file_hash(name)}\n".encode())
            hashes[(campaign.name, step.id)] = digest.hexdigest()
    return hashes


def _selected(project: Project, names: tuple[str, ...]) -> list[Campaign]:
    """The campaigns asked for, each naming its file relative to the project (a rename keeps the file)."""
    root = project.config.root.resolve()

    def relative(file: str) -> str:
        try:
            return Path(file).resolve().relative_to(root).as_posix()
        except ValueError:
            return file

    return [replace(c, file=relative(c.file)) for c in project.campaigns if not names or c.name in names]


def _on_shared_databases(ref_project: Project, work_project: Project) -> Project:
    """REF's campaigns and mapping, connected to the working tree's warehouse and ledger."""
    work = work_project.config
    config = replace(ref_project.config, root=work.root, warehouse_url=work.warehouse_url, ledger_url=work.ledger_url,
                     dialect=work.dialect, demo=work.demo)
    return replace(ref_project, config=config)


def _relative(issues: list[Issue], root: Path) -> list[Issue]:
    """Issues of REF's temporary copy, named by their path in the repository."""
    prefix = str(root) + "/"
    return [replace(i, file=i.file[len(prefix):] if i.file.startswith(prefix) else i.file) for i in issues]


def build_plan_diff(project_dir: Path, ref_name: str | None, now: datetime, names: tuple[str, ...] = (),
                    sample: int = 5, shard: tuple[int, int] | None = None) -> PlanDiff:
    """Plan REF and the working tree at ``now`` and compare them."""
    from engine.run.reconcile import Reconciler

    ref = resolve_ref(project_dir, ref_name)
    with checkout_project(project_dir, ref) as ref_dir:
        ref_project, issues = check_project(ref_dir)
        ref_issues = _relative([i for i in issues if i.severity == "error"], Path(ref_dir).resolve())
        work_project, work = open_reconciler(project_dir, shard)
        before_reconciler = None
        try:
            work_campaigns = _selected(work_project, names)
            ref_campaigns = _selected(ref_project, names) if ref_project else []
            if names:
                unknown = set(names) - {c.name for c in work_campaigns + ref_campaigns}
                if unknown:
                    raise click.UsageError(f"no campaign named {', '.join(sorted(unknown))} at {ref.label} or in the working tree")
            before: Iterable[PlanKey] = ()
            if ref_project is not None:
                ref_project = _on_shared_databases(ref_project, work_project)
                before_reconciler = Reconciler(ref_project, shard=shard, writes=False)
                before = plan_keys(before_reconciler, now, [c for c in ref_campaigns if c.enabled])
            counts = diff_plans(before, plan_keys(work, now, [c for c in work_campaigns if c.enabled]), sample)
            changes = compare(ref_campaigns, work_campaigns, counts,
                              template_hashes(ref_project) if ref_project else {}, template_hashes(work_project))
            if ref_project is None:
                for change in changes:
                    change.status = ""  # not "new": REF could not be read (the header says so)
        finally:
            if before_reconciler is not None:
                before_reconciler.close()
            work.close()
    return PlanDiff(ref=ref, now=now, changes=changes, ref_issues=ref_issues)


def run_plan_diff(project_dir: Path, ref_name: str | None, now: datetime, names: tuple[str, ...], fmt: str,
                  sample: int, shard: tuple[int, int] | None, out) -> None:
    """The command: build the diff, write it in ``fmt`` (text, markdown or json)."""
    write_plan_diff(build_plan_diff(project_dir, ref_name, now, names, sample, shard), fmt, out)
