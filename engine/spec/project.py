"""Load a whole project: engine.yaml, campaigns.d/ and templates/ -> ``Project``."""
from __future__ import annotations

from pathlib import Path
from typing import Iterable

from engine.spec.config import load_config
from engine.errors import Issue, ProjectInvalid
from engine.model import Project
from engine.spec.validate import TEMPLATE_DIR, campaign_files, load_campaigns


def check_project(root: Path | str = ".", paths: Iterable[str] | None = None) -> tuple[Project | None, list[Issue]]:
    """Every issue of the project (errors and warnings); the project if it has no errors."""
    root = Path(root).resolve()
    config, issues = load_config(root)
    if config is None or any(i.severity == "error" for i in issues):
        return None, issues
    campaigns, campaign_issues = load_campaigns(root, config, campaign_files(root, paths))
    issues += campaign_issues
    if any(i.severity == "error" for i in issues):
        return None, issues
    return Project(config=config, campaigns=tuple(campaigns), templates_dir=root / TEMPLATE_DIR), issues


def load_project(root: Path | str = ".", paths: Iterable[str] | None = None) -> Project:
    """The validated project, or ``ProjectInvalid`` listing every error."""
    project, issues = check_project(root, paths)
    if project is None:
        raise ProjectInvalid(issues)
    return project
