"""`engine init [DIR]`: a new project - engine.yaml with the mapping to fill in, one campaign, the email layout.

Writes ``engine.yaml`` (the warehouse, the ``shop:`` the layout shows, the
policies and channels, and the source mapping: every engine column with a
comment, or - with a warehouse URL - the mapping ``mapping_proposal``
proposes, near misses marked as did-you-mean and required columns it could
not find as TODOs), ``campaigns.d/second-order.yaml`` with its template, the
locked layout ``templates/layouts/email.j2`` (the starter files in
``engine/tools/starter/``, shipped with the engine) and a ``.gitignore`` for
``var/``. Refuses a directory that already holds any of these files unless
``force`` is given. Secrets are never written: a warehouse password becomes
``${ENGINE_WAREHOUSE_PASSWORD}``. Must not validate or run the project.
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from engine import channel_kinds
from engine.errors import EngineError
from engine.model import ENTITY_COLUMNS
from engine.tools.mapping_proposal import EntityProposal, propose

STARTER = Path(__file__).resolve().parent / "starter"
#: starter file (under STARTER) -> where it goes in the new project
STARTER_FILES = {
    "layouts/email.j2": "templates/layouts/email.j2",
    "second-order.yaml": "campaigns.d/second-order.yaml",
    "second-order/nudge.email.j2": "templates/second-order/nudge.email.j2",
}
CONFIG_FILE = "engine.yaml"
PASSWORD_VARIABLE = "ENGINE_WAREHOUSE_PASSWORD"
#: what each engine column means, for the comments of a mapping to fill in
MEANING = {
    "customer_id": "the customer's id", "order_id": "the order's id", "checkout_id": "the checkout's (cart's) id",
    "created_at": "when it was created (timestamp, UTC)", "occurred_at": "when it happened (timestamp, UTC)",
    "type": "event type, e.g. product_viewed, search, login", "completed_at": "when it became an order (NULL: open)",
    "timezone": "IANA zone, e.g. Europe/Berlin", "birthday": "date of birth", "unsubscribed_at": "unsubscribed from all",
    "total": "amount (number)", "status": "e.g. completed, cancelled",
    "title": "what the email shows first", "valid_from": "shown from (timestamp, UTC; NULL: always)",
    "valid_to": "shown until, excluded (NULL: no end)", "campaign": "the campaign it feeds (NULL: every one)",
    "step": "the step it feeds (NULL: every one)",
    **{kind.address_column: f"where the customer receives {kind.label}" for kind in channel_kinds.KINDS.values()
       if kind.address_column},
}
#: the kind of the starter campaign's channel: the one whose locked layout engine init writes
STARTER_KIND = next(kind for kind in channel_kinds.KINDS.values() if kind.locked_layout)


#: optional columns the starter campaign and layout read (audience, greeting)
STARTER_COLUMNS = {"customers": (STARTER_KIND.contact_field, "first_name")}


@dataclass(frozen=True)
class Shop:
    name: str | None = None
    url: str | None = None
    address: str | None = None
    legal: str | None = None


def init_project(directory: Path, warehouse_url: str | None = None, shop: Shop = Shop(),
                 force: bool = False) -> list[str]:
    """Write the new project into ``directory``; the files written, relative to it."""
    directory = Path(directory)
    targets = [CONFIG_FILE, ".gitignore", *STARTER_FILES.values()]
    existing = [name for name in targets if (directory / name).exists()]
    if existing and not force:
        raise EngineError(f"{directory} already holds a project ({', '.join(existing)}); engine init writes nothing "
                          "there. Choose an empty directory, or give --force to overwrite these files")
    proposals = None
    if warehouse_url is not None:
        proposals, tables = propose(_resolved_file_url(warehouse_url, Path.cwd()))
        if not tables:
            raise EngineError("the warehouse has no tables to map: point --from-warehouse at the shop's database")
    directory.mkdir(parents=True, exist_ok=True)
    (directory / CONFIG_FILE).write_text(engine_yaml(directory, warehouse_url, shop, proposals), encoding="utf-8")
    (directory / ".gitignore").write_text("var/\n", encoding="utf-8")
    for source, target in STARTER_FILES.items():
        (directory / target).parent.mkdir(parents=True, exist_ok=True)
        (directory / target).write_text((STARTER / source).read_text(encoding="utf-8"), encoding="utf-8")
    return [CONFIG_FILE, ".gitignore", *STARTER_FILES.values()]


def _resolved_file_url(url: str, base: Path) -> str:
    """A DuckDB or SQLite URL with a relative path: relative to ``base`` (where the command runs)."""
    for scheme in ("duckdb:///", "sqlite:///"):
        if url.startswith(scheme):
            path = url[len(scheme):]
            if path and not path.startswith(("/", ":memory:", "file:")):
                return scheme + str((base / path).resolve())
    return url


def warehouse_setting(url: str, directory: Path) -> str:
    """The URL as engine.yaml keeps it: a file's path relative to the project, a password from the environment."""
    for scheme in ("duckdb:///", "sqlite:///"):
        if url.startswith(scheme):
            path, mark, query = _resolved_file_url(url, Path.cwd())[len(scheme):].partition("?")
            if path.startswith("/"):
                path = os.path.relpath(path, directory.resolve())
            return scheme + path + mark + query
    try:
        parsed = make_url(url)
    except ArgumentError:
        return url
    if parsed.password:
        return parsed.set(password="PASSWORD").render_as_string(hide_password=False).replace(
            ":PASSWORD@", ":${" + PASSWORD_VARIABLE + "}@", 1)
    return url


def _scalar(text: str) -> str:
    """``text`` as a YAML scalar (JSON's quoting where plain YAML would misread it)."""
    if re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_ .,/@:+-]*", text) and not text.endswith(":") and ": " not in text \
            and text.lower() not in ("true", "false", "yes", "no", "null", "on", "off"):
        return text
    return json.dumps(text, ensure_ascii=False)


def engine_yaml(directory: Path, warehouse_url: str | None, shop: Shop,
                proposals: list[EntityProposal] | None) -> str:
    domain = (urlsplit(shop.url).hostname or "") if shop.url else ""
    domain = domain[4:] if domain.startswith("www.") else domain
    url = warehouse_setting(warehouse_url, directory) if warehouse_url else "${ENGINE_WAREHOUSE_URL}"
    lines = [
        "# The engine's project configuration, written by `engine init`. Fill in every TODO, then run",
        "# `engine validate --check-warehouse` (README: \"Start your own project\").",
        "warehouse:",
        f"  url: {_scalar(url)}" + ("" if warehouse_url else
                                     "   # e.g. postgresql+psycopg://engine:${PGPASSWORD}@db.internal/shop"),
        "",
        "# What every email's footer shows (templates/layouts/email.j2: shop.name, shop.address, ...).",
        "shop:",
        f"  name: {_scalar(shop.name or 'TODO: the shop name')}",
        f"  address: {_scalar(shop.address or 'TODO: street, postcode city, country')}   # postal address, required in marketing email",
        f"  legal: {_scalar(shop.legal or '')}   # e.g. company, register number, VAT id",
        f"  url: {_scalar(shop.url or 'https://www.my-shop.invalid')}" + ("" if shop.url else "   # TODO: your shop's website"),
        "",
        "defaults:",
        "  timezone: UTC                      # for customers without a time zone, e.g. Europe/Berlin",
        "  code_secret: ${ENGINE_CODE_SECRET}  # signs unsubscribe links: openssl rand -hex 32",
        "",
        "policies:",
        "  # where the engine's /unsubscribe endpoint (engine run --interval) is reachable from the internet",
        f"  unsubscribe_url: https://{('campaigns.' + domain) if domain else 'campaigns.my-shop.invalid'}/unsubscribe"
        + ("" if domain else "   # TODO"),
        "  frequency_caps: [{max: 1, per: 1d}, {max: 3, per: 7d}]",
        "",
        "channels:",
        "  email:",
        "    kind: email",
        "    transport: file                  # the outbox var/outbox/; for real: transport: smtp, host: ..., port: 587",
        "    path: var/outbox",
        f"    from: {_scalar((shop.name or 'Shop') + ' <hello@' + (domain or 'my-shop.invalid') + '>')}"
        + ("" if domain else "   # TODO"),
        "",
        "# Which table holds each entity, and which column is which (README: \"Point it at your own database\").",
        "# Required columns default to a column of the same name; optional ones exist only when mapped.",
        "sources:",
    ]
    if proposals is None:
        lines += _mapping_to_fill_in()
    else:
        for proposal in proposals:
            lines += _proposed(proposal)
    return "\n".join(lines) + "\n"


def _mapping_to_fill_in() -> list[str]:
    lines = []
    for entity, (required, optional) in ENTITY_COLUMNS.items():
        needed = entity in ("customers", "orders")
        mark = "" if needed else "# "
        lines.append(f"  {mark}{entity}:" + ("" if needed else "   # optional: map it for campaigns that need it"))
        lines.append(f"  {mark}  table: {entity}   # TODO: your table (schema.table) or query: SELECT ...")
        lines.append(f"  {mark}  columns:")
        for column in required:
            lines.append(f"  {mark}    {column}: {column}   # TODO (required) {MEANING.get(column, '')}".rstrip())
        for column in optional:
            used = needed and column in STARTER_COLUMNS.get(entity, ())  # the starter campaign and layout read it
            lines.append(f"  {'' if used else '# '}    {column}: {column}   "
                         f"# {'TODO ' if used else ''}optional {MEANING.get(column, '')}".rstrip())
    return lines


def _proposed(proposal: EntityProposal) -> list[str]:
    entity = proposal.entity
    if proposal.table is None:
        return [f"  # {entity}:   # no table looks like it: map it when campaigns need it",
                f"  #   table: your_{entity}_table"]
    note = {"same": "", "synonym": "   # a usual name for it: check it",
            "near": f"   # did you mean this table for {entity}? (the closest name: check it)"}[proposal.how]
    lines = [f"  {entity}:", f"    table: {_scalar(proposal.table)}{note}",
             "    columns:" if proposal.columns else "    columns: {}"]
    for column in proposal.columns:
        comment = {"same": "", "synonym": "",
                   "near": f"   # did you mean '{column.warehouse}' for {column.engine}? (the closest name: check it)"}
        lines.append(f"      {column.engine}: {_scalar(column.warehouse)}{comment[column.how]}")
    for column in proposal.missing:
        lines.append(f"      # {column}: TODO   # required: no column of {proposal.table} looks like it "
                     f"({MEANING.get(column, column)})")
    if proposal.unused and entity == "customers":
        lines.append(f"      # more columns you may map as attributes (filters, templates): {', '.join(proposal.unused)}")
    return lines
