"""Coupon codes in the ledger: the pools' codes, and the claim that hands a message its code.

Owns ``engine_coupon_codes`` (a pool's codes: imported from a CSV file, or copied from the
pool's warehouse table) and ``engine_coupon_claims`` (which code each message got). The one
rule: a message that needs a code is claimed in the same transaction as its code, so a claimed
message always has one and a code is never handed to two messages, across replicas and crashes
(the primary key (pool, code) and the unique message key decide; the transaction holds the
backend's lock, ``Dialect.migration_lock``: claims of codes are serialised, so replicas never
wait on each other's uncommitted codes). A message claimed again (its earlier claim was released
by the recovery: never rendered, never sent) gets the same code back; a code is never released:
when its message is not sent (failed, skipped after a release, unknown after a crash) it stays
with that message, "burnt", and the export shows it so. A message no code is left for is recorded
as skipped (``no_code``) in that same transaction, never claimed.

``CouponStore`` is a mixin of ``Ledger`` (it reuses its ``db`` and ``ledger_rows``). Must not read
engine.yaml, the warehouse or decide which step needs which pool: the run stage says so.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Iterable, Iterator

import sqlalchemy as sa

from engine.state.bulk import conflict_insert, unnest_insert
from engine.state.ledger_tables import coupon_claims_table, coupon_codes_table, ledger_table
from engine.state.ledger_writer import Record
from engine.state.warehouse import Database

#: The generated (HMAC) codes' pool in ``engine_coupon_claims``: no pool of engine.yaml may be called so.
GENERATED = ""
#: The advisory lock key of code claims (PostgreSQL): "coupon" in ASCII.
LOCK_KEY = 0x636F75706F6E
#: Codes inserted per statement when importing.
IMPORT_CHUNK = 500


@dataclass(frozen=True)
class CodeWanted:
    """What a message to claim needs: a code of ``pool``, or (pool ``GENERATED``) the ``generated`` one."""

    pool: str
    generated: str | None = None


@dataclass(frozen=True)
class CodeClaims:
    """The outcome of a claim with codes: the keys claimed (each with its code) and the keys skipped
    as ``no_code`` (their pool is empty); keys in neither were claimed by another process first."""

    claimed: set[str]
    codes: dict[str, str]
    no_code: set[str]


def _naive(value: datetime) -> datetime:
    return value.replace(tzinfo=None) if value.tzinfo else value


class CouponStore:
    """The ledger's coupon tables (a mixin of ``Ledger``)."""

    db: Database

    # --- the claim ---------------------------------------------------------------------

    def claim_with_codes(self, records: list[Record], wanted: dict[str, CodeWanted], now: datetime) -> CodeClaims:
        """Claim ``records`` (status claimed) and give each the code ``wanted`` names, in one transaction."""
        if not records:
            return CodeClaims(set(), {}, set())
        rows = self.ledger_rows(records, now)
        try:
            with self.db.engine.connect() as conn:
                self._lock(conn)
                keys = sorted(wanted)
                kept = self._codes_of(conn, keys)  # claimed before, then released: the same code again
                free: dict[str, list[str]] = {}  # per pool, the codes to hand out next at the end
                for pool in sorted({w.pool for k, w in wanted.items() if k not in kept} - {GENERATED}):
                    needed = sum(1 for k, w in wanted.items() if w.pool == pool and k not in kept)
                    free[pool] = self._free_codes(conn, pool, needed)[::-1]
                outcome = CodeClaims(set(), {}, set())
                new_claims: list[tuple[str, str, Record]] = []
                pending = list(zip(records, rows))
                while pending:  # more than once only when another process held some of the messages
                    coded, without = [], []
                    for record, row in pending:
                        key, want = record.message_key, wanted[record.message_key]
                        code = kept.get(key) or (want.generated if want.pool == GENERATED else None)
                        if code is None and free.get(want.pool):
                            code = free[want.pool].pop()
                        (coded if code is not None else without).append((record, row, code))
                    inserted = self._insert_rows(conn, [row for _, row, _ in coded])
                    returned = False
                    for record, _, code in coded:
                        key, pool = record.message_key, wanted[record.message_key].pool
                        if key not in inserted:  # another process has this message: its code stays free
                            if pool != GENERATED and key not in kept:
                                free[pool].append(code)
                                returned = True
                            continue
                        outcome.claimed.add(key)
                        outcome.codes[key] = code
                        if key not in kept:
                            new_claims.append((pool, code, record))
                    pending = [(record, row) for record, row, _ in without]
                    if pending and not returned:  # recorded as skipped, never claimed: no message without its code
                        skips = [{**row, "status": "skipped", "reason": "no_code", "attempts": 0,
                                  "detail": f"coupon pool {wanted[record.message_key].pool} has no unused code left"}
                                 for record, row in pending]
                        outcome.no_code.update(self._insert_rows(conn, skips))
                        pending = []
                self._add_claims(conn, new_claims, now)
                conn.commit()
        except sa.exc.SQLAlchemyError as exc:
            raise self.db._error("claiming messages with their coupon codes failed on", exc) from None
        return outcome

    def _insert_rows(self, conn: sa.Connection, rows: list[dict]) -> set[str]:
        """Insert ledger rows whose key is new, on ``conn``; the keys inserted."""
        # the conflict target named: DuckDB checks a bare ON CONFLICT against every unique index the slow way
        insert = (conflict_insert(self.db.dialect)(ledger_table).on_conflict_do_nothing(index_elements=[ledger_table.c.message_key])
                  .returning(ledger_table.c.message_key))
        inserted: set[str] = set()
        for start in range(0, len(rows), 500):  # SQLAlchemy sends each chunk as one multi-row INSERT
            chunk = rows[start:start + 500]
            if self.db.dialect.array_parameters == "positional":  # DuckDB: one LIST parameter per column
                inserted |= unnest_insert(conn, ledger_table, chunk, conflict="message_key")
            else:
                inserted |= {row[0] for row in conn.execute(insert, chunk)}
        return inserted

    def _lock(self, conn: sa.Connection) -> None:
        lock = self.db.dialect.migration_lock  # PostgreSQL: an advisory lock; SQLite: BEGIN IMMEDIATE
        if lock is not None:
            conn.exec_driver_sql(lock.format(key=LOCK_KEY))
        else:  # DuckDB: one writing process per file already
            conn.begin()

    @staticmethod
    def _codes_of(conn: sa.Connection, keys: list[str]) -> dict[str, str]:
        c = coupon_claims_table.c
        found = {}
        for start in range(0, len(keys), 500):
            found.update(dict(conn.execute(sa.select(c.message_key, c.code).where(
                c.message_key.in_(keys[start:start + 500]))).all()))
        return found

    @staticmethod
    def _free_codes(conn: sa.Connection, pool: str, n: int) -> list[str]:
        """Up to ``n`` codes of ``pool`` no message has, in the order they were imported (then by code)."""
        codes, claims = coupon_codes_table.c, coupon_claims_table.c
        taken = sa.select(claims.code).where(claims.pool == codes.pool, claims.code == codes.code)
        query = (sa.select(codes.code).where(codes.pool == pool, ~sa.exists(taken))
                 .order_by(codes.imported_at, codes.code).limit(n))
        return [row[0] for row in conn.execute(query)]

    def _add_claims(self, conn: sa.Connection, claims: list[tuple[str, str, Record]], now: datetime) -> None:
        rows = [{"pool": pool, "code": code, "message_key": r.message_key, "customer_id": r.customer_id,
                 "campaign": r.campaign, "step": r.step, "claimed_at": _naive(now)} for pool, code, r in claims]
        for start in range(0, len(rows), 500):
            if self.db.dialect.array_parameters == "positional":  # DuckDB: executemany is a statement per row
                unnest_insert(conn, coupon_claims_table, rows[start:start + 500])
            else:
                conn.execute(coupon_claims_table.insert(), rows[start:start + 500])

    # --- the pools -------------------------------------------------------------------

    def add_codes(self, pool: str, codes: list[tuple[str, str]], now: datetime) -> int:
        """Add (code, source) pairs to ``pool``; codes it has already are left as they are. Returns
        how many were new. One transaction: an import is whole or nothing."""
        c = coupon_codes_table.c
        try:
            with self.db.engine.begin() as conn:
                known = {row[0] for row in conn.execute(sa.select(c.code).where(c.pool == pool))}
                new = [{"pool": pool, "code": code, "source": source, "imported_at": _naive(now)}
                       for code, source in codes if code not in known]
                for start in range(0, len(new), IMPORT_CHUNK):
                    conn.execute(coupon_codes_table.insert(), new[start:start + IMPORT_CHUNK])
        except sa.exc.SQLAlchemyError as exc:
            raise self.db._error("adding coupon codes failed on", exc) from None
        return len(new)

    def pool_counts(self, pools: Iterable[str]) -> dict[str, tuple[int, int]]:
        """pool -> (codes, codes handed out) for each of ``pools`` (0, 0 when it has none)."""
        codes, claims = coupon_codes_table.c, coupon_claims_table.c
        pools = sorted(set(pools))
        counts = {pool: (0, 0) for pool in pools}
        if not pools or not self.has_coupon_tables():
            return counts
        with self.db.engine.connect() as conn:
            total = dict(conn.execute(sa.select(codes.pool, sa.func.count()).where(codes.pool.in_(pools))
                                      .group_by(codes.pool)).all())
            used = dict(conn.execute(sa.select(claims.pool, sa.func.count()).where(claims.pool.in_(pools))
                                     .group_by(claims.pool)).all())
        return {pool: (int(total.get(pool, 0)), int(used.get(pool, 0))) for pool in pools}

    def has_coupon_tables(self) -> bool:
        """Whether the ledger has the coupon tables (a read-only command may open a ledger older than 0004)."""
        try:
            with self.db.engine.connect() as conn:
                return sa.inspect(conn).has_table(coupon_claims_table.name)
        except sa.exc.SQLAlchemyError:
            return False

    def codes_of(self, keys: list[str]) -> dict[str, tuple[str, str]]:
        """message key -> (pool, code) of the messages among ``keys`` that got a code (pool "" generated)."""
        c = coupon_claims_table.c
        found: dict[str, tuple[str, str]] = {}
        if not keys or not self.has_coupon_tables():
            return found
        with self.db.engine.connect() as conn:
            for start in range(0, len(keys), 500):
                for key, pool, code in conn.execute(sa.select(c.message_key, c.pool, c.code).where(
                        c.message_key.in_(keys[start:start + 500]))):
                    found[key] = (pool, code)
        return found

    def pool_codes(self, pool: str, batch_size: int = 1000) -> Iterator[dict]:
        """Every code of ``pool`` (generated ones: pool ""), with the message it went to and that message's
        status (``available`` for a code no message has; a claim whose message row is gone - released,
        not claimed again yet - reads as ``claimed``), ordered by code."""
        codes, claims, ledger = coupon_codes_table.c, coupon_claims_table.c, ledger_table.c
        if pool == GENERATED:
            query = (sa.select(claims.code, sa.literal(None).label("source"), claims.message_key, claims.customer_id,
                               claims.campaign, claims.step, claims.claimed_at, ledger.status, ledger.reason)
                     .select_from(coupon_claims_table.outerjoin(ledger_table, ledger.message_key == claims.message_key))
                     .where(claims.pool == GENERATED).order_by(claims.code))
        else:
            joined = coupon_codes_table.outerjoin(
                coupon_claims_table, sa.and_(claims.pool == codes.pool, claims.code == codes.code)).outerjoin(
                ledger_table, ledger.message_key == claims.message_key)
            query = (sa.select(codes.code, codes.source, claims.message_key, claims.customer_id, claims.campaign,
                               claims.step, claims.claimed_at, ledger.status, ledger.reason)
                     .select_from(joined).where(codes.pool == pool).order_by(codes.code))
        if not self.has_coupon_tables():
            return
        with self.db.engine.connect() as conn:
            result = conn.execution_options(yield_per=batch_size).execute(query)
            for row in result.mappings():
                row = dict(row)
                status = row["status"] or ("claimed" if row["message_key"] else "available")
                yield {**row, "status": status}
