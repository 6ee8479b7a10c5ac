"""The project's files as they were at a git ref, in a temporary directory.

``engine plan --diff`` compares the campaigns of a commit with the working
tree. The commit's engine.yaml, campaigns.d/ and templates/ are streamed out
of ``git archive`` into a temporary directory; the working tree, the index and
HEAD are never touched, so the command is safe in the middle of an edit.
"""
from __future__ import annotations

import subprocess
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

from engine.errors import EngineError

#: What a project is made of (engine.yaml, campaigns.d/, templates/); nothing else is extracted.
PROJECT_PARTS = ("engine.yaml", "campaigns.d/", "templates/")
DEFAULT_BASES = ("main", "origin/main")


class GitError(EngineError):
    """Not a git repository, an unknown ref, or git itself is missing."""


@dataclass(frozen=True)
class Ref:
    """A resolved ref: what the user asked for (or the default chosen), and its commit."""

    label: str
    commit: str

    @property
    def short(self) -> str:
        return self.commit[:10]


def _git(project_dir: Path, *args: str) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(["git", "-C", str(project_dir), *args], capture_output=True, text=True, timeout=60)
    except FileNotFoundError:
        raise GitError("git is not installed; install git to compare with a ref") from None


def repository_root(project_dir: Path) -> Path:
    result = _git(project_dir, "rev-parse", "--show-toplevel")
    if result.returncode != 0:
        raise GitError(f"{Path(project_dir).resolve()} is not in a git repository; --diff compares with a commit, "
                       "so run it inside a clone (git init && git commit first for a new project)")
    return Path(result.stdout.strip())


def _commit_of(project_dir: Path, ref: str) -> str | None:
    result = _git(project_dir, "rev-parse", "--verify", "--quiet", "--end-of-options", f"{ref}^{{commit}}")
    return result.stdout.strip() if result.returncode == 0 else None


def resolve_ref(project_dir: Path, ref: str | None) -> Ref:
    """REF's commit; without REF, the merge base of HEAD with main (else origin/main, else HEAD)."""
    repository_root(project_dir)
    if ref:
        commit = _commit_of(project_dir, ref)
        if commit is None:
            raise GitError(f"unknown git ref '{ref}'; give a branch, tag or commit that exists here "
                           "(in CI fetch the history: actions/checkout with fetch-depth: 0)")
        return Ref(ref, commit)
    if _commit_of(project_dir, "HEAD") is None:
        raise GitError("the repository has no commit yet; commit the project first, then compare with --diff")
    for base in DEFAULT_BASES:
        if _commit_of(project_dir, base) is None:
            continue
        result = _git(project_dir, "merge-base", "HEAD", base)
        if result.returncode == 0 and result.stdout.strip():
            return Ref(f"merge base of HEAD and {base}", result.stdout.strip())
    return Ref("HEAD", _commit_of(project_dir, "HEAD"))


def materialise(project_dir: Path, ref: Ref, target: Path) -> Path:
    """Write the project's files at ``ref`` into ``target``; return the project directory there.

    The project may sit in a subdirectory of the repository: only that
    subtree is archived (``git archive COMMIT:PREFIX``).
    """
    prefix = _git(project_dir, "rev-parse", "--show-prefix").stdout.strip()
    tree = f"{ref.commit}:{prefix}" if prefix else ref.commit
    if prefix and _git(project_dir, "cat-file", "-e", f"{tree}").returncode != 0:
        raise GitError(f"the project directory '{prefix.rstrip('/')}' does not exist at {ref.label} ({ref.short})")
    target.mkdir(parents=True, exist_ok=True)
    try:
        process = subprocess.Popen(["git", "-C", str(project_dir), "archive", "--format=tar", tree],
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    except FileNotFoundError:
        raise GitError("git is not installed; install git to compare with a ref") from None
    with process:
        try:
            with tarfile.open(fileobj=process.stdout, mode="r|") as archive:
                for member in archive:
                    if member.name == PROJECT_PARTS[0] or member.name.startswith(PROJECT_PARTS[1:]):
                        archive.extract(member, target, filter="data")
        except tarfile.TarError:
            pass  # git failed and wrote no archive: its message follows
        error = process.stderr.read().decode(errors="replace").strip()
        returncode = process.wait()
    if returncode != 0:
        raise GitError(f"git archive of {ref.label} ({ref.short}) failed: {error}")
    return target


def checkout_project(project_dir: Path, ref: Ref) -> tempfile.TemporaryDirectory:
    """A temporary directory holding the project at ``ref``; the caller cleans it up."""
    holder = tempfile.TemporaryDirectory(prefix="engine-plan-diff-")
    try:
        materialise(project_dir, ref, Path(holder.name))
    except BaseException:
        holder.cleanup()
        raise
    return holder
