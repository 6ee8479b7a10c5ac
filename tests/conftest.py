"""Shared fixtures: a throwaway copy of the shipped project, and shop databases.

Every test that runs SQL gets a real database file (DuckDB or SQLite) in a
temporary directory; ``backend`` parametrises a test over both, so the same
campaigns must give the same due sets on each.
"""
from __future__ import annotations

import shutil
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
#: Every database that can run here; the same tests must pass on each.
BACKENDS = ["duckdb", "sqlite", "postgres"]


def load_history(url: str, **rows) -> None:
    """(Re)create the canonical shop tables at ``url`` and insert the given rows per table."""
    from engine.tools.demo import ShopData, load_shop
    from engine.state.warehouse import Database

    data = ShopData()
    data.rows.update({name: list(value) for name, value in rows.items()})
    db = Database(url)
    load_shop(db, data)
    db.dispose()


def recorded_outcomes(report) -> int:
    """Messages a pass sent, skipped or failed (deferrals by quiet hours are not outcomes)."""
    return sum(n for (_, _, outcome), n in report.counts.items() if not outcome.startswith("defer"))


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text).lstrip("\n"), encoding="utf-8")
    return path


def copy_project(target: Path) -> Path:
    """A copy of the repository's project files (engine.yaml, campaigns.d/, templates/)."""
    target.mkdir(parents=True, exist_ok=True)
    shutil.copy(REPO / "engine.yaml", target / "engine.yaml")
    shutil.copytree(REPO / "campaigns.d", target / "campaigns.d")
    shutil.copytree(REPO / "templates", target / "templates")
    return target


#: what a real shop sets where the demo may keep example domains (spec.unsafe_defaults)
REAL_SHOP_POLICIES = "policies:\n  unsubscribe_url: https://campaigns.beanandbrew.de/unsubscribe\n\n"


def as_real_shop(root: Path) -> Path:
    """The copied project as a real shop: no demo: section, the shop's own domain instead of example ones."""
    path = root / "engine.yaml"
    text = path.read_text()
    start = text.index("demo:\n")
    end = text.index("\n\n", start) + 2
    text = (text[:start] + text[end:]).replace("beanandbrew.example", "beanandbrew.de")
    path.write_text(text.replace("defaults:", REAL_SHOP_POLICIES + "defaults:", 1))
    return root


@pytest.fixture
def project_dir(tmp_path: Path) -> Path:
    return copy_project(tmp_path)


def database_url(backend: str, directory: Path, name: str = "shop") -> str:
    """A new, empty database of ``backend``: a file under ``directory`` or a fresh PostgreSQL database."""
    if backend == "postgres":
        import pg

        return pg.server().new_database()
    suffix = {"duckdb": "duckdb", "sqlite": "db"}[backend]
    return f"{backend}:///{directory / f'{name}.{suffix}'}"


def pytest_collection_modifyitems(session, config, items):
    """Files marked ``long`` first (stable otherwise): `make test` deals files to its two processes in
    this order (--dist loadfile), so a file of several minutes starts at once, beside the others."""
    items.sort(key=lambda item: item.get_closest_marker("long") is None)


def pytest_sessionfinish(session, exitstatus):
    import pg

    pg.stop()


@pytest.fixture(params=BACKENDS)
def backend(request) -> str:
    return request.param
