"""Would fewer due statements per pass cut the plan a minute later's fixed cost? Measured in one process on a
kept DuckDB shop; the engine is not changed by it (issue 15, target 2, helper union15).

    python benchmarks/fewer_statements.py --shop DIR [--project project] [--turns 9] [--no-check]
        [--dump FILE]

``DIR``: a shop kept by ``run.py --keep DIR`` with its ledger filled as ``duckdb_minute.py --fill`` leaves it.
The tool records the due statements one plan a minute later runs (``engine plan``'s counted plan, as
``duckdb_minute.py`` runs it: ``plan.due_statement`` wrapped, so each is the engine's own text, with the
campaign it belongs to) and the pass's shared tables (its ``CREATE TEMPORARY TABLE`` statements). On the
pass's own connection, with those tables created, it compares (process CPU, DuckDB's threads included):

- ``a``: the due statements one by one, as the pass sends them;
- ``b``: all of them in ONE statement: each campaign's statement as a subquery, its columns padded to the
  union of every statement's columns (``CAST(NULL AS type)``; a column whose type differs between statements
  as VARCHAR), with a discriminator ``engine_q`` (the statement's index), ``UNION ALL``;
- ``b+``: the same with the CTEs the statements share written once: every statement's ``WITH`` list hoisted to
  one top-level ``WITH``, a CTE whose body (its references renamed) is the same text as an earlier one's read
  from that one (the customers, the shared source rows, the ledger rows...) - what "one statement whose CTEs
  share the customer scan and the ledger anti-join" can get without rewriting the due queries;
- ``b*``: ``b+`` with each source CTE (``NOT MATERIALIZED`` in the engine's text: ``src_customers``...) that two or
  more statements read made ``MATERIALIZED``: the customers scanned once for all campaigns;
- ``bL``: ``b+`` with the ledger's key columns (campaign, step, customer, trigger key: all the due statements
  read of it) of the due campaigns read once into a MATERIALIZED CTE every campaign's ledger read reads;
- ``c``: one such UNION ALL statement per trigger kind (all ``order_placed`` campaigns in one...).

Checked first (``--no-check`` skips it): each mode returns the same rows per campaign as its statement alone
(row counts, and ``EXCEPT ALL`` both ways of the campaign's rows in a temporary copy of the union, padded
columns left out). Then where the time goes by operator (the JSON profile's operator timings, summed over
threads, scans by table) for ``a``, ``b``, ``b*`` and ``bL``; per mode: the statements' DuckDB planning (JSON profile: planner + optimizer +
physical planner, the least of 3) and the scans in its physical plan (``EXPLAIN``: table scans per table,
CTE scans); then ``--turns`` turns, modes in alternated order, every row fetched, with three more modes for
the fixed cost: ``a`` and ``b`` each wrapped in ``LIMIT 0`` (parsed, bound and optimised, nothing read:
DuckDB prunes the plan to an empty result) and as many ``SELECT 1`` as ``a`` has statements (the client's
round trip); medians and the load average. The last line is JSON (for runs in fresh processes: run the tool again).
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import re
import statistics
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path

HERE = Path(__file__).resolve().parent


def load() -> str:
    return " ".join(open("/proc/loadavg").read().split()[:3])


def record(bench, reconciler, later):
    """The counted plan at ``later``: its due statements [(campaign, text)] and the shared tables' creates."""
    import engine.run.plan as plan
    from engine.state import warehouse

    due: list = []
    executed: list[str] = []
    original = plan.due_statement, warehouse.Session.execute_together

    def due_statement(campaign, *args, **kwargs):
        statement = original[0](campaign, *args, **kwargs)
        due.append((campaign, statement))
        return statement

    def execute_together(self, statements):
        executed.extend(statements)
        return original[1](self, statements)

    plan.due_statement, warehouse.Session.execute_together = due_statement, execute_together
    try:
        bench._consume_plan(reconciler, later, counted=True)
    finally:
        plan.due_statement, warehouse.Session.execute_together = original
    assert all(statement.parameters is None for _, statement in due), "DuckDB's due statements bind nothing"
    creates = [sql for sql in executed if sql.startswith("CREATE TEMPORARY TABLE")]
    drops = list(dict.fromkeys(sql for sql in executed if sql.startswith("DROP TABLE")))
    return [(campaign, statement.text) for campaign, statement in due], creates, drops


def hoisted(texts: list[str], dialect: str) -> tuple[list[tuple[str, str]], list[str]]:
    """Every statement's CTEs as one list (a CTE whose body, references renamed, equals an earlier one's is
    dropped and read from that one) and each statement's final SELECT over those names."""
    import sqlglot
    from sqlglot import exp

    def reread(node, renamed: dict[str, str]):
        """A reference to a CTE renamed: the new name, aliased as the old one."""
        if not isinstance(node, exp.Table) or node.db or node.name not in renamed:
            return node
        table = exp.to_table(renamed[node.name])
        table.set("alias", node.args.get("alias") or exp.TableAlias(this=exp.to_identifier(node.name)))
        return table

    ctes: list[tuple[str, str]] = []  # (name, "[NOT ]MATERIALIZED (body)")
    by_body: dict[str, str] = {}
    bodies: list[str] = []
    for index, text in enumerate(texts):
        tree = sqlglot.parse_one(text, read=dialect)
        renamed: dict[str, str] = {}
        with_ = tree.args.get("with_") or tree.args.get("with")
        for cte in (with_.expressions if with_ else []):
            body = cte.this.transform(lambda node: reread(node, renamed))
            materialized = cte.args.get("materialized")
            sql = ("MATERIALIZED " if materialized else "NOT MATERIALIZED " if materialized is False else "") + \
                f"({body.sql(dialect=dialect)})"
            if sql not in by_body:
                by_body[sql] = f"q{index}_{cte.alias}"
                ctes.append((by_body[sql], sql))
            renamed[cte.alias] = by_body[sql]
        tree.set("with_", None)
        tree = tree.transform(lambda node: reread(node, renamed))
        bodies.append(tree.sql(dialect=dialect))
    return ctes, bodies


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shop", type=Path, required=True, help="a directory kept by run.py --keep, ledger filled")
    parser.add_argument("--project", default="project")
    parser.add_argument("--turns", type=int, default=9)
    parser.add_argument("--no-check", action="store_true", help="skip the same-rows check and the plans' scans")
    parser.add_argument("--dump", type=Path, help="write the recorded statements and the modes' SQL here")
    args = parser.parse_args()
    shop = args.shop.resolve()
    import duckdb

    sys.path.insert(0, str(HERE))
    import run as bench

    reconciler, now = bench.kept_duckdb_shop(shop, args.project)
    import engine

    later = now + timedelta(minutes=1)
    dialect = reconciler.config.dialect
    print(f"engine {engine.__file__}, DuckDB {duckdb.__version__}; load {load()}", flush=True)
    due, creates, drops = record(bench, reconciler, later)
    texts = [text for _, text in due]
    names = [campaign.name for campaign, _ in due]
    kinds = [campaign.trigger.kind for campaign, _ in due]
    print(f"{len(texts)} due statements ({len(set(names))} campaigns), {len(creates)} shared tables", flush=True)

    with reconciler.warehouse.session() as session:
        raw = session.conn.connection.dbapi_connection  # duckdb_engine's wrapper of the DuckDB connection

        def create_tables() -> None:
            for drop in drops:
                raw.execute(drop)
            for create in creates:
                raw.execute(create)

        create_tables()
        described = [raw.execute(f"DESCRIBE SELECT * FROM ({text}) AS engine_s").fetchall() for text in texts]
        columns: dict[str, set] = collections.OrderedDict()
        for rows in described:
            for name, type_, *_ in rows:
                columns.setdefault(name, set()).add(type_)
        common = {name: (types.pop() if len(types) == 1 else "VARCHAR") for name, types in columns.items()}
        mixed = [name for name, types in columns.items() if len(types) > 1]
        own = [[name for name, *_ in rows] for rows in described]
        print(f"columns: {len(common)} in all, {min(map(len, own))}-{max(map(len, own))} per statement; "
              f"as VARCHAR (types differ): {mixed}", flush=True)

        def select_list(index: int) -> str:
            typed = {name: type_ for name, type_, *_ in described[index]}
            parts = [f"{index} AS engine_q"]
            for name, type_ in common.items():
                quoted = '"' + name.replace('"', '""') + '"'
                if name not in typed:
                    parts.append(f"CAST(NULL AS {type_}) AS {quoted}")
                elif typed[name] != type_:
                    parts.append(f"CAST(engine_s.{quoted} AS {type_}) AS {quoted}")
                else:
                    parts.append(f"engine_s.{quoted}")
            return ", ".join(parts)

        def union(indexes: list[int]) -> str:
            return "\nUNION ALL\n".join(f"SELECT {select_list(i)} FROM ({texts[i]}) AS engine_s" for i in indexes)

        ctes, bodies = hoisted(texts, dialect)

        def union_hoisted(indexes: list[int], shared: bool = False, ledger: bool = False) -> str:
            """``shared``: a NOT MATERIALIZED source CTE read by two or more statements materialised once;
            ``ledger``: the ledger's key columns of these campaigns read once (a MATERIALIZED CTE) by every
            campaign's ledger read."""
            used = set()
            wanted = "\n".join(bodies[i] for i in indexes)
            for name, sql in reversed(ctes):  # the CTEs these statements read, and what those read
                if re.search(rf"\b{re.escape(name)}\b", wanted):
                    used.add(name)
                    wanted += "\n" + sql
            readers = {name: sum(bool(re.search(rf"\b{re.escape(name)}\b", text)) for text in
                                 [bodies[i] for i in indexes] + [sql for other, sql in ctes if other in used])
                       for name in used}
            with_ = ",\n".join(f"{name} AS " + (sql.replace("NOT MATERIALIZED ", "MATERIALIZED ", 1)
                                                 if shared and readers[name] > 1 else sql)
                                for name, sql in ctes if name in used)
            selects = "\nUNION ALL\n".join(f"SELECT {select_list(i)} FROM ({bodies[i]}) AS engine_s" for i in indexes)
            if ledger:
                campaigns = ", ".join(f"'{names[i]}'" for i in indexes)
                with_ = (f"engine_ledger_keys AS MATERIALIZED (SELECT campaign, step, customer_id, trigger_key "
                         f"FROM engine_ledger WHERE campaign IN ({campaigns})),\n{with_}")
                with_, selects = (re.sub(r"\bengine_ledger AS l\b", "engine_ledger_keys AS l", part)
                                  for part in (with_, selects))
            return f"WITH {with_}\n{selects}"

        every = list(range(len(texts)))
        groups = collections.OrderedDict()
        for index, kind in enumerate(kinds):
            groups.setdefault(kind, []).append(index)
        modes: dict[str, list[tuple[list[int], str]]] = {
            "a": [([i], text) for i, text in enumerate(texts)],
            "b": [(every, union(every))],
            "b+": [(every, union_hoisted(every))],
            "b*": [(every, union_hoisted(every, shared=True))],
            "bL": [(every, union_hoisted(every, ledger=True))],
            "c": [(indexes, union(indexes)) for indexes in groups.values()],
            "c+": [(indexes, union_hoisted(indexes)) for indexes in groups.values()],
        }
        written = sum(len(re.findall(r" AS (?:NOT )?(?:MATERIALIZED )?\(", text)) for text in texts)
        print(f"CTEs: ~{written} written in the statements, "
              f"{len(ctes)} once hoisted; kinds: " + ", ".join(f"{k} {len(v)}" for k, v in groups.items()), flush=True)
        if args.dump:
            args.dump.write_text("\n\n;;\n\n".join(f"-- {mode} #{n}\n{sql}" for mode, parts in modes.items()
                                                   for n, (_, sql) in enumerate(parts)))

        def fetch(sql: str) -> int:
            return len(raw.execute(sql).fetchall())

        summary: dict = {"load": [load()]}
        if not args.no_check:
            alone = [fetch(text) for text in texts]
            print(f"rows per statement: {dict(zip(names, alone))}", flush=True)
            for mode, parts in modes.items():
                if mode == "a":
                    continue
                bad = 0
                for indexes, sql in parts:
                    raw.execute("DROP TABLE IF EXISTS engine_union15")
                    raw.execute(f"CREATE TEMPORARY TABLE engine_union15 AS {sql}")
                    for i in indexes:
                        cols = ", ".join('"' + name.replace('"', '""') + '"' for name in own[i])
                        casted = ", ".join(f'CAST("{n}" AS {common[n]}) AS "{n}"' if n in mixed else f'"{n}"'
                                           for n in own[i])
                        mine = f"SELECT {cols} FROM engine_union15 WHERE engine_q = {i}"
                        theirs = f"SELECT {casted} FROM ({texts[i]}) AS engine_s"
                        count = raw.execute(f"SELECT count(*) FROM engine_union15 WHERE engine_q = {i}").fetchone()[0]
                        one = raw.execute(f"SELECT count(*) FROM ({mine} EXCEPT ALL {theirs})").fetchone()[0]
                        two = raw.execute(f"SELECT count(*) FROM ({theirs} EXCEPT ALL {mine})").fetchone()[0]
                        if count != alone[i] or one or two:
                            bad += 1
                            print(f"  {mode} {names[i]}: {count} rows vs {alone[i]} alone; EXCEPT ALL {one} / {two}")
                    raw.execute("DROP TABLE engine_union15")
                total = sum(alone)
                print(f"check {mode}: {len(parts)} statement(s), {total} rows, "
                      f"{'the same rows per campaign (counts, EXCEPT ALL both ways)' if not bad else f'{bad} DIFFER'}",
                      flush=True)
                summary[f"same {mode}"] = not bad

            profile = Path(tempfile.gettempdir()) / f"fewer_statements_{os.getpid()}.json"

            def operators(sql: str) -> collections.Counter:
                """The JSON profile's operator timings of one run, summed by operator (scans by table)."""
                raw.execute("PRAGMA enable_profiling='json'")
                raw.execute(f"PRAGMA profiling_output='{profile}'")
                try:
                    raw.execute(sql).fetchall()
                    spent = json.loads(profile.read_text())
                finally:
                    raw.execute("PRAGMA disable_profiling")
                    profile.unlink(missing_ok=True)
                found: collections.Counter = collections.Counter()
                work = list(spent.get("operator", []))  # DuckDB 2.0's layout
                while work:
                    node = work.pop()
                    work.extend(node.get("children", []))
                    name = node.get("name") or "?"
                    info = node.get("extra_info") or {}
                    if isinstance(info, dict) and info.get("Table"):
                        name = f"{name} {info['Table'].split('.')[-1]}"
                    found[name] += node.get("timing", 0.0)
                found["(planning)"] = (spent["planner"]["total_time"] + spent["optimizer"]["total_time"]
                                       + spent["physical_planner"]["total_time"])
                return found

            def planning(sql: str) -> float:
                raw.execute("PRAGMA enable_profiling='json'")
                raw.execute(f"PRAGMA profiling_output='{profile}'")
                best = None
                try:
                    for _ in range(3):
                        raw.execute(sql).fetchall()
                        spent = json.loads(profile.read_text())
                        value = (spent["planner"]["total_time"] + spent["optimizer"]["total_time"]
                                 + spent["physical_planner"]["total_time"])
                        best = value if best is None else min(best, value)
                finally:
                    raw.execute("PRAGMA disable_profiling")
                    profile.unlink(missing_ok=True)
                return best

            def scans(sql: str) -> collections.Counter:
                text = "\n".join(str(value) for _, value in raw.execute(f"EXPLAIN {sql}").fetchall())
                found = collections.Counter(re.findall(r"Table: *([A-Za-z_0-9.]+)", text))
                found["CTE_SCAN"] = len(re.findall(r"CTE_SCAN", text))
                found["CTE (materialised)"] = len(re.findall(r"│ +CTE +│", text))
                return found

            print(f"\nwhere the time goes, by operator (JSON profile, operator timings summed over threads, s, "
                  f"the median of 3 runs per operator; load {load()}):", flush=True)
            for mode in ("a", "b", "b*", "bL"):
                runs = [sum((operators(sql) for _, sql in modes[mode]), collections.Counter()) for _ in range(3)]
                keys = sorted(set().union(*runs), key=lambda key: -statistics.median(run[key] for run in runs))
                table = {key: statistics.median(run[key] for run in runs) for key in keys}
                summary[f"operators {mode}"] = {key: round(value, 4) for key, value in table.items()}
                print(f"{mode:3}: total {sum(v for k, v in table.items() if k != '(planning)'):.4f}; "
                      + ", ".join(f"{key} {value:.4f}" for key, value in table.items() if value >= 0.002), flush=True)

            print(f"\nplanning (s, least of 3) and the physical plans' scans; load {load()}:", flush=True)
            for mode, parts in modes.items():
                plan_s = sum(planning(sql) for _, sql in parts)
                found = sum((scans(sql) for _, sql in parts), collections.Counter())
                summary[f"planning {mode}"] = plan_s
                summary[f"scans {mode}"] = dict(found)
                print(f"{mode:3}: planning {plan_s:.4f}; scans " + ", ".join(f"{k} {v}" for k, v in found.most_common()),
                      flush=True)

        # the statements' fixed cost: each wrapped in LIMIT 0 (parsed, bound, optimised - DuckDB then prunes the
        # plan to an empty result, so nothing is read): what a statement costs before it reads a row
        modes["a, LIMIT 0"] = [(indexes, f"SELECT * FROM ({sql}) AS engine_l LIMIT 0") for indexes, sql in modes["a"]]
        modes["b, LIMIT 0"] = [(indexes, f"SELECT * FROM ({sql}) AS engine_l LIMIT 0") for indexes, sql in modes["b"]]
        modes["a, SELECT 1"] = [(indexes, "SELECT 1") for indexes, _ in modes["a"]]
        spent: dict[str, list[float]] = {mode: [] for mode in modes}
        print(f"\n{args.turns} turns, every mode's statements back to back (process CPU, s; every row fetched):",
              flush=True)
        for turn in range(args.turns):
            order = list(modes) if turn % 2 == 0 else list(reversed(modes))
            for mode in order:
                started = time.process_time()
                for _, sql in modes[mode]:
                    fetch(sql)
                spent[mode].append(time.process_time() - started)
            summary["load"].append(load())
            print(f"turn {turn}: " + ", ".join(f"{mode} {spent[mode][-1]:.3f}" for mode in modes) + f"; load {load()}",
                  flush=True)
        base = statistics.median(spent["a"])
        for mode, values in spent.items():
            lower = sum(b < a for a, b in zip(spent["a"], values))
            summary[f"cpu {mode}"] = statistics.median(values)
            print(f"median {mode}: {statistics.median(values):.4f} s (x{statistics.median(values) / base:.3f} of a; "
                  f"lower than a in {lower}/{args.turns})", flush=True)
        for drop in drops:
            raw.execute(drop)
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
