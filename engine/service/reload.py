"""Hot reload: notice a changed project on disk and load it whole, or not at all.

Owns the fingerprint of the files a project is made of (engine.yaml, every
file under campaigns.d/ and templates/; hidden files ignored) and the
snapshot of the templates a loaded project renders from. ``ProjectWatcher``
compares cheap stat data first and file hashes only when those differ, so a
``touch`` or a checkout of the same content is not a change.

A load validates the whole project (``check_project``), then copies
templates/ to a private snapshot directory and verifies that nothing changed
meanwhile - a ``git pull`` half-way through is retried at the next poll, never
loaded. The returned ``Project`` renders from the snapshot, so a template
edited or broken later cannot leak into the running campaigns before it has
been validated.
"""
from __future__ import annotations

import dataclasses
import hashlib
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from engine.spec.config import CONFIG_FILE
from engine.errors import Issue
from engine.model import Project
from engine.spec.project import check_project
from engine.templating.loader import escapes_folder
from engine.spec.validate import CAMPAIGN_DIR, TEMPLATE_DIR

WATCHED_DIRS = (CAMPAIGN_DIR, TEMPLATE_DIR)

Stat = tuple[tuple[str, int, int], ...]


def project_files(root: Path) -> list[Path]:
    """engine.yaml and every non-hidden file under campaigns.d/ and templates/, sorted."""
    files = [root / CONFIG_FILE] if (root / CONFIG_FILE).is_file() else []
    for directory in WATCHED_DIRS:
        base = root / directory
        if base.is_dir():
            files += sorted(p for p in base.rglob("*")
                            if p.is_file() and not any(part.startswith(".") for part in p.relative_to(base).parts))
    return files


def stat_fingerprint(root: Path) -> Stat:
    result = []
    for path in project_files(root):
        try:
            st = path.stat()
        except FileNotFoundError:  # deleted between listing and stat: the next poll sees it
            continue
        result.append((str(path.relative_to(root)), st.st_size, st.st_mtime_ns))
    return tuple(result)


def content_fingerprint(root: Path) -> str:
    digest = hashlib.sha256()
    for path in project_files(root):
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            continue
        digest.update(str(path.relative_to(root)).encode() + b"\0" + hashlib.sha256(data).digest())
    return digest.hexdigest()


def _snapshot_ignore(templates: Path):
    """copytree's ignore: hidden files, and links whose real path leaves templates/ (copying would
    turn a link to /etc/passwd into a regular template the run-time loader could not tell apart)."""
    def loops(path: Path, directory: str) -> bool:  # a linked directory that contains itself
        return path.is_symlink() and path.is_dir() and Path(directory).resolve().is_relative_to(path.resolve())

    def ignore(directory: str, names: list[str]) -> set[str]:
        return {n for n in names
                if n.startswith(".") or escapes_folder(templates, Path(directory) / n) or loops(Path(directory) / n, directory)}
    return ignore


@dataclass
class LoadResult:
    """The outcome of one load: a project, or the issues that kept it out."""

    project: Project | None
    issues: list[Issue] = field(default_factory=list)
    changed_files: list[str] = field(default_factory=list)
    retry: bool = False  # the files changed while loading; try again next poll

    @property
    def errors(self) -> list[Issue]:
        return [i for i in self.issues if i.severity == "error"]


class ProjectWatcher:
    """Loads the project at ``root`` and tells, on each ``poll``, whether it changed."""

    def __init__(self, root: Path | str):
        self.root = Path(root).resolve()
        self._stat: Stat = ()
        self._content = ""
        self._files: dict[str, tuple[int, int]] = {}
        self._snapshots: list[Path] = []

    def load(self) -> LoadResult:
        """Validate and snapshot the project as it is on disk now."""
        before = stat_fingerprint(self.root)
        content = content_fingerprint(self.root)
        changed = self._changed_files(before)
        project, issues = check_project(self.root)
        if project is None or any(i.severity == "error" for i in issues):
            self._remember(before, content)
            return LoadResult(None, issues, changed)
        snapshot = Path(tempfile.mkdtemp(prefix="engine-templates-"))
        try:
            templates = self.root / TEMPLATE_DIR
            if templates.is_dir():
                shutil.copytree(templates, snapshot / TEMPLATE_DIR, ignore=_snapshot_ignore(templates))
            else:
                (snapshot / TEMPLATE_DIR).mkdir()
        except OSError:
            shutil.rmtree(snapshot, ignore_errors=True)
            return LoadResult(None, issues, changed, retry=True)
        if stat_fingerprint(self.root) != before or content_fingerprint(self.root) != content:
            shutil.rmtree(snapshot, ignore_errors=True)
            return LoadResult(None, issues, changed, retry=True)
        self._remember(before, content)
        self._snapshots.append(snapshot)
        return LoadResult(dataclasses.replace(project, templates_dir=snapshot / TEMPLATE_DIR), issues, changed)

    def changed(self) -> bool:
        """Did any project file change since the last ``load``? (stat first, content if needed)"""
        now = stat_fingerprint(self.root)
        if now == self._stat:
            return False
        content = content_fingerprint(self.root)
        if content == self._content:
            self._remember(now, content)  # same bytes (touch, checkout): nothing to do
            return False
        return True

    def forget(self) -> None:
        """Treat the files as changed at the next ``changed`` (retry a load that failed for another reason)."""
        self._stat, self._content = (), ""

    def release(self, keep: Project | None) -> None:
        """Delete template snapshots other than ``keep``'s (all of them when None)."""
        for snapshot in list(self._snapshots):
            if keep is None or keep.templates_dir != snapshot / TEMPLATE_DIR:
                shutil.rmtree(snapshot, ignore_errors=True)
                self._snapshots.remove(snapshot)

    def _changed_files(self, now: Stat) -> list[str]:
        current = {name: (size, mtime) for name, size, mtime in now}
        if not self._files:
            return []
        names = set(current) | set(self._files)
        return sorted(n for n in names if current.get(n) != self._files.get(n))

    def _remember(self, stat: Stat, content: str) -> None:
        self._stat = stat
        self._content = content
        self._files = {name: (size, mtime) for name, size, mtime in stat}
