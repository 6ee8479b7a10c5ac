"""``engine codes``: a coupon pool's codes imported from the shop's CSV file, exported for the shop, and counted.

The CSV file is what a shop platform exports (Shopify, WooCommerce, ...): a header line naming
a ``code`` column (or the one given) and one code per line. A file with an empty code, a code
twice, or no such column is refused whole, each problem named by file:line with its fix, and
nothing is imported; codes the pool has already are left as they are (an import can be run
again). The export lists every code of a pool with the message it went to (customer, campaign,
step) and that message's status, so the shop can activate the codes handed out - and see the
"burnt" ones: codes claimed by a message that was not sent. Must not claim codes or send.
"""
from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import IO

from engine.errors import EngineError, Issue
from engine.model import Project
from engine.run.coupons import PoolLevel, pool_levels
from engine.state.coupons import GENERATED
from engine.state.ledger import Ledger
from engine.tools.customer import plain

#: The longest code the ledger keeps (engine_coupon_claims.code).
MAX_CODE = 128
#: Problems reported per file before the rest are summed up.
MAX_ISSUES = 20
EXPORT_FIELDS = ("code", "status", "reason", "customer_id", "campaign", "step", "message_key", "claimed_at", "source")


@dataclass
class CodesFileInvalid(EngineError):
    """A CSV file of codes that cannot be imported, with every problem found."""

    issues: list[Issue] = field(default_factory=list)
    more: int = 0

    def __str__(self) -> str:
        lines = [f"nothing imported: {len(self.issues) + self.more} problem(s) in the file:"]
        lines += [i.format() for i in self.issues]
        if self.more:
            lines.append(f"... and {self.more} more")
        return "\n".join(lines)


class UnknownPool(EngineError):
    """The command names a pool engine.yaml does not have, or one whose codes come from a table."""


def check_pool(project: Project, pool: str, importing: bool = False) -> None:
    pools = project.config.coupon_pools
    if pool not in pools:
        raise UnknownPool(f"no coupon pool named {pool} in {project.config.file} (pools: {', '.join(sorted(pools)) or 'none'}); "
                          f"add it under coupons:, e.g. coupons: {{{pool}: {{low_at: 100}}}}")
    if importing and pools[pool].table is not None:
        raise UnknownPool(f"coupon pool {pool} reads its codes from the warehouse table {pools[pool].table} at every "
                          f"pass; add the codes to that table, or remove table: from coupons.{pool} in "
                          f"{project.config.file} to import files instead")


def read_codes_file(path: Path, column: str = "code") -> list[tuple[str, str]]:
    """(code, file:line) of every code of the CSV file, or ``CodesFileInvalid`` naming each problem."""
    name = str(path)
    issues: list[Issue] = []
    more = 0

    def problem(line: int, message: str, fix: str) -> None:
        nonlocal more
        if len(issues) < MAX_ISSUES:
            issues.append(Issue(file=name, line=line, message=message, fix=fix))
        else:
            more += 1

    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise CodesFileInvalid([Issue(file=name, message="no such file", fix="give the path of the CSV file the shop platform exported")]) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise CodesFileInvalid([Issue(file=name, message=f"cannot read the file: {exc}",
                                      fix="give a readable CSV file in UTF-8")]) from None
    reader = csv.reader(text.splitlines())
    header = next(reader, None)
    if not header:
        raise CodesFileInvalid([Issue(file=name, line=1, message="the file is empty",
                                      fix=f"export the codes with a header line naming the {column} column")])
    names = [h.strip().lower() for h in header]
    if column.lower() not in names:
        raise CodesFileInvalid([Issue(file=name, line=1, message=f"the header line has no column {column} "
                                      f"(columns: {', '.join(h.strip() for h in header) or 'none'})",
                                      fix=f"name the column that holds the codes with --column, or make the first "
                                          f"line a header naming it {column}")])
    index = names.index(column.lower())
    codes: list[tuple[str, str]] = []
    seen: dict[str, int] = {}
    for row in reader:
        line = reader.line_num
        if not row:
            continue  # a blank line (a line of commas is a row with an empty code)
        code = row[index].strip() if index < len(row) else ""
        if not code:
            problem(line, f"empty code (column {column})", "fill in the code, or delete the line")
        elif len(code) > MAX_CODE:
            problem(line, f"code of {len(code)} characters; the longest kept is {MAX_CODE}", "shorten the code, or delete the line")
        elif code in seen:
            problem(line, f"code {code} is also on line {seen[code]}: a code is handed out once",
                    "delete one of the two lines")
        else:
            seen[code] = line
            codes.append((code, f"{path.name}:{line}"))
    if issues:
        raise CodesFileInvalid(issues, more)
    return codes


def import_codes(project: Project, ledger: Ledger, pool: str, path: Path, column: str, now: datetime) -> tuple[int, int]:
    """Import the CSV file's codes into ``pool``: (new codes, codes the pool had already)."""
    check_pool(project, pool, importing=True)
    codes = read_codes_file(path, column)
    new = ledger.add_codes(pool, codes, now)
    return new, len(codes) - new


def export_codes(project: Project, ledger: Ledger, pool: str | None, fmt: str, out: IO[str], status: str = "all") -> int:
    """Write the codes of ``pool`` (None: the generated codes) with their messages; return how many."""
    if pool is not None:
        check_pool(project, pool)
    count = 0
    writer = csv.writer(out) if fmt == "csv" else None
    if writer is not None:
        writer.writerow(EXPORT_FIELDS)
    for row in ledger.pool_codes(GENERATED if pool is None else pool):
        if status == "available" and row["status"] != "available" or status == "claimed" and row["status"] == "available":
            continue
        if writer is not None:
            writer.writerow(["" if row[f] is None else plain(row[f]) for f in EXPORT_FIELDS])
        else:
            out.write(json.dumps({f: plain(row[f]) for f in EXPORT_FIELDS}, default=str) + "\n")
        count += 1
    return count


def pool_table(levels: list[PoolLevel]) -> str:
    """``engine codes status`` as text."""
    if not levels:
        return "No coupon pools (coupons: in engine.yaml)."
    lines = [f"{'pool':<20} {'source':<28} {'codes':>7} {'used':>7} {'left':>7} {'low_at':>7}"]
    for level in levels:
        lines.append(f"{level.pool:<20} {(level.table or 'imported'):<28} {level.codes:>7} {level.used:>7} "
                     f"{level.left:>7} {level.low_at:>7}" + ("  LOW" if level.low else ""))
    return "\n".join(lines)


def levels(project: Project, ledger: Ledger, names: list[str] | None = None, warehouse=None) -> list[PoolLevel]:
    """Each pool's codes, codes handed out and codes left (``run.coupons.pool_levels``)."""
    return pool_levels(project, ledger, names, warehouse)
