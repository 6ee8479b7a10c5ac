r"""The ledger: engine-owned tables recording every message decision.

``engine_ledger`` has one row per message key (campaign, step, customer,
trigger instance). The primary key is what guarantees a message is never
recorded - hence never claimed, hence never sent - twice: a claim is an
INSERT that silently does nothing when the key exists, and only the rows
this INSERT created are dispatched. ``engine_entries`` remembers when a
customer entered a segment-triggered campaign.

Life cycle of a message row::

    claimed --render, then hand-over--> claimed + content --send--> sent
                                               \--> failed (transient: attempts, next_attempt_at)
                                               |       \--> claimed again at next_attempt_at ... sent | failed (exhausted)
                                               |       \--> skipped (no_consent, suppressed, frequency_cap: the retry
                                               |            passes the policies again; quiet hours hold it)
                                               \--> failed (permanent: the address is suppressed)
    skipped (reason: stale, stopped, no_variant, no_contact, invalid_contact, no_consent,
             suppressed, frequency_cap, reentry, no_code; at render: invalid_promotion, no_products)
    claimed, older than the claim timeout (the process died):
        without content -> released (deleted; nothing was sent, the next pass re-derives it),
                           or skipped (stale) when past its freshness window
        with content    -> unknown (at-most-once: never resent, reported)
                           or sent again with the same Message-ID (at-least-once)

The content is the hand-over: it is stored group by group (``hand_over``, one
transaction per group of messages about to go to a provider, which also
records the previous group's outcomes), committed before the group is sent,
and only on a claim without content (a compare-and-set: one process hands a
message over). So "no content" proves "not sent", and a crash leaves in doubt
only the groups in flight. Also here: suppressed addresses (hard bounces),
unsubscribes and tags. A message whose step gives a coupon code is claimed
together with its code, or skipped (no_code) when its pool is empty
(``CouponStore``, coupons.py).

The tables are declared in ``ledger_tables``; ``Ledger`` is the ``LedgerReader``
the tools read through (ledger_reader.py) and implements ``LedgerWriter``
(ledger_writer.py), the writes of the pass and the service.
"""
from __future__ import annotations

from datetime import datetime
from typing import Collection, Iterable

import hashlib

import sqlalchemy as sa

from engine.state import migrations
from engine.state.bulk import array_type, conflict_insert, unnest_insert
from engine.state.coupons import CouponStore
from engine.state.events import EventStore
from engine.state.ledger_reader import LedgerReader, at_steps, ledger_steps
from engine.state.ledger_tables import (  # noqa: F401 - re-exported: the tests and benchmarks build ledgers from them
    entries_table, events_table, gone_contacts_table, ledger_table, metadata, suppressions_table, tags_table, unsubscribes_table,
)
from engine.state.ledger_writer import LedgerWriter, Record
from engine.state.tables import LEDGER_TABLE
from engine.state.settled import SettledStore
from engine.state.watermarks import WatermarkStore
from engine.state.warehouse import Database

STATUSES = ("claimed", "sent", "failed", "skipped", "unknown")

#: Rows per set-based UPDATE.
UPDATE_CHUNK = 1000
#: Rows per INSERT of new rows (``write_new``): a multi-row INSERT of bound values, or (where the dialect binds
#: arrays positionally: DuckDB) one LIST parameter per column - no parameter count to bound, and each
#: statement costs DuckDB a fixed ~10 ms beside its rows, so a batch goes in one (1,000 rows: 13.5 ms CPU
#: as one statement, 16.5-19.2 ms as two of 500; benchmarks/README.md).
INSERT_CHUNK = 500
LIST_INSERT_CHUNK = 10_000


class _NotAllHandedOver(Exception):
    """A counted hand-over updated fewer claims than it was given: its transaction is rolled back."""


def message_key(campaign: str, step: str, customer_id: str, trigger_key: str) -> str:
    return f"{campaign}:{step}:{customer_id}:{trigger_key}"


def _first_indexes(keys: list[str]) -> dict[str, int]:
    """Each key's first index in ``keys``: a key given twice, the first wins, as with one UPDATE per row."""
    first: dict[str, int] = {}
    for index, key in enumerate(keys):
        first.setdefault(key, index)
    return first


def _positional_unnest(arrays: list[str], types: dict[str, str]) -> str:
    """DuckDB's select list zipping positional LIST parameters ``$1``.. (one per name of ``arrays``, in order,
    of SQL element type ``types[name]``) into rows with those column names."""
    return ", ".join(f"unnest(CAST(${i} AS {types[n]}[])) AS {n}" for i, n in enumerate(arrays, 1))


def _naive(value: datetime | None) -> datetime | None:
    return value.replace(tzinfo=None) if value is not None and value.tzinfo else value


def _parse(value) -> datetime | None:
    if value is None or isinstance(value, datetime):
        return value
    return datetime.fromisoformat(str(value))


def _digest(contact: str) -> str:
    return hashlib.sha256(contact.encode()).hexdigest()


#: Unsubscribe and suppression tables up to this many rows are read whole once per pass
#: (one query instead of two per batch); larger ones are looked up per batch.
SNAPSHOT_LIMIT = 50_000


class Ledger(CouponStore, EventStore, WatermarkStore, SettledStore, LedgerReader, LedgerWriter):
    """The ledger as the pass uses it: its reads (``LedgerReader``'s and the policies'), and every write
    (``LedgerWriter``, ledger_writer.py, lists them)."""

    def __init__(self, db: Database):
        super().__init__(db)
        self._unsubscribed: dict[str, set[str]] | None = None  # customer -> kinds, when snapshotted
        self._suppressed: dict[str, set[str]] | None = None  # kind -> addresses, when snapshotted

    def snapshot_policies(self) -> None:
        """Read the unsubscribe and suppression tables into memory when they are small.

        Called at the start of every pass (and plan). Writes through this
        object (a bounce mid-pass, an unsubscribe) update the snapshot; another
        replica's writes are seen from its next pass on.
        """
        self._unsubscribed = self._suppressed = None
        u, s = unsubscribes_table.c, suppressions_table.c
        with self.db.engine.connect() as conn:
            if conn.execute(sa.select(sa.func.count()).select_from(unsubscribes_table)).scalar() <= SNAPSHOT_LIMIT:
                unsubscribed: dict[str, set[str]] = {}
                for customer_id, kind in conn.execute(sa.select(u.customer_id, u.kind)):
                    unsubscribed.setdefault(customer_id, set()).add(kind)
                self._unsubscribed = unsubscribed
            if conn.execute(sa.select(sa.func.count()).select_from(suppressions_table)).scalar() <= SNAPSHOT_LIMIT:
                suppressed: dict[str, set[str]] = {}
                for kind, address in conn.execute(sa.select(s.kind, s.address)):
                    suppressed.setdefault(kind, set()).add(address)
                self._suppressed = suppressed

    def ensure_schema(self) -> None:
        """Bring the ledger's tables to this engine's schema (migrations.ensure): created in an empty
        database, upgraded in place otherwise, one query when already at head; refused when a newer
        engine wrote them."""
        migrations.ensure(self.db)

    def checkpoint(self) -> None:
        """Checkpoint the ledger's database where the dialect holds its automatic checkpoints off
        (``Dialect.checkpoint_hold``, ``Database.hold_checkpoints``): its write-ahead log moved into the
        file now, while no pass is writing (the service, between passes). Durability is not what it buys:
        every commit's log was fsynced already; it keeps the log (and the next open's replay) short, and
        out of the next pass's commits. Nothing elsewhere."""
        statement = self.db.dialect.checkpoint_statement
        if statement is not None and self.db.dialect.checkpoint_hold is not None:
            self.db.execute(statement)

    def check_writable(self) -> None:
        """Fail now, having written nothing, when the ledger's database refuses writes (a read-only
        file or connection, a role without INSERT/UPDATE/DELETE): a DELETE of no row, rolled back."""
        try:
            with self.db.engine.connect() as conn:
                conn.execute(ledger_table.delete().where(sa.false()))
                conn.rollback()
        except sa.exc.SQLAlchemyError as exc:
            raise self.db._error("the ledger is not writable in", exc) from None

    def refresh_statistics(self) -> None:
        """Let PostgreSQL's planner see how big the engine's tables are now.

        A first pass on a big shop grows the ledger from nothing to hundreds of
        thousands of rows in minutes, long before autovacuum analyses it; until
        then the next pass's due queries are planned for an empty ledger (on
        the benchmark's quick shop, the pass after the first took 18 s instead
        of under 4). ANALYZE samples a fixed number of rows, so it is cheap.
        Other databases plan without such statistics (DuckDB) or keep them
        good enough through the identity index (SQLite).
        """
        if self.db.dialect.analyze_ledger:
            self.db.execute("ANALYZE " + ", ".join(table.name for table in metadata.sorted_tables))

    def _insert_ignoring_existing(self, rows: list[dict]) -> set[str]:
        """INSERT rows whose key is new; return the keys this call inserted."""
        if not rows:
            return set()
        dialect = self.db.dialect
        if dialect.array_parameters == "positional":  # DuckDB
            # one LIST parameter per column: no statement to compile, no thousands of parameters to bind
            # The key is a function of the identity columns, so a conflict on those is always one on the key too.
            try:
                with self.db.engine.begin() as conn:
                    return unnest_insert(conn, ledger_table, rows, conflict="message_key")
            except sa.exc.SQLAlchemyError as exc:
                raise self.db._error("statement failed on", exc) from None
        if dialect.on_conflict_insert is not None:
            # a list of rows: SQLAlchemy's "insertmanyvalues" sends them as one multi-row INSERT
            # (up to 1000 rows) from a statement compiled once and cached, not once per chunk
            statement = conflict_insert(dialect)(ledger_table).on_conflict_do_nothing().returning(ledger_table.c.message_key)
            return {row[0] for row in self.db.execute(statement, rows)}
        inserted = set()  # other backends: one row at a time, the key decides
        for row in rows:
            try:
                self.db.execute(ledger_table.insert().values(row))
                inserted.add(row["message_key"])
            except Exception:  # noqa: BLE001 - a duplicate key means someone else holds it
                continue
        return inserted

    @staticmethod
    def ledger_rows(records: Iterable[Record], now: datetime) -> list[dict]:
        """The ledger rows of new ``records`` (claims and skips), created at ``now``."""
        now = _naive(now)
        return [
            {
                "message_key": r.message_key, "campaign": r.campaign, "step": r.step,
                "customer_id": r.customer_id, "trigger_key": r.trigger_key, "channel": r.channel,
                "status": r.status, "reason": r.reason, "detail": r.detail, "due_at": _naive(r.due_at),
                "trigger_at": _naive(r.trigger_at), "variant": r.variant,
                "created_at": now, "updated_at": now, "content": r.content,
                "attempts": 1 if r.status == "claimed" else 0,
            }
            for r in records
        ]

    def write_new(self, records: Iterable[Record], now: datetime) -> set[str]:
        rows = self.ledger_rows(records, now)
        inserted: set[str] = set()
        chunk = LIST_INSERT_CHUNK if self.db.dialect.array_parameters == "positional" else INSERT_CHUNK
        for start in range(0, len(rows), chunk):
            inserted |= self._insert_ignoring_existing(rows[start:start + chunk])
        return inserted

    def _update_claimed(self, conn: sa.Connection, columns: dict[str, list], now: datetime,
                        hand_over: bool = False, counted: bool = False) -> set[str]:
        """Set ``columns`` (name -> one value per row; "message_key" picks the row) and updated_at on
        the rows still 'claimed' on ``conn`` (the caller's transaction). With ``hand_over`` only on
        claims without content yet, returning the keys updated (else an empty set).

        ``counted`` (DuckDB, with ``hand_over``): no RETURNING - with it a hand-over cost DuckDB ~1.9x
        the CPU, commit included (benchmarks/README.md) -, only the count of rows updated; every key was handed over
        when it equals the number of keys, otherwise ``_NotAllHandedOver`` is raised and the caller
        rolls back and asks again with RETURNING (``_handing_over``).

        Set-based on DuckDB and PostgreSQL: each column travels as one array parameter and the UPDATE
        joins the ledger to their unnest, one statement per chunk. SQLite: one prepared UPDATE for
        all rows (executemany, a C loop, as fast as a join there), or per row when the rows that
        matched are wanted.
        """
        rows = sorted(_first_indexes(columns["message_key"]).values())
        names = [n for n in columns if n != "message_key"]
        table, arrays_as = LEDGER_TABLE, self.db.dialect.array_parameters
        updated: set[str] = set()
        if arrays_as is None:
            c = ledger_table.c
            statement = ledger_table.update().where(c.message_key == sa.bindparam("k"), c.status == "claimed")
            if hand_over:
                statement = statement.where(c.content.is_(None))
            statement = statement.values(updated_at=sa.bindparam("u"), **{n: sa.bindparam(f"v_{n}") for n in names})
            parameters = [{"k": columns["message_key"][i], "u": _naive(now), **{f"v_{n}": columns[n][i] for n in names}}
                          for i in rows]
            if not hand_over:
                conn.execute(statement, parameters)
            for row in parameters if hand_over else ():
                if conn.execute(statement, row).rowcount == 1:
                    updated.add(row["k"])
            return updated
        arrays = ["message_key"] + names
        assignments = ", ".join(f"{n} = v.{n}" for n in names)
        condition = f"{table}.status = 'claimed'" + (f" AND {table}.content IS NULL" if hand_over else "")
        returning = f" RETURNING {table}.message_key" if hand_over and not counted else ""
        for start in range(0, len(rows), UPDATE_CHUNK):
            chunk = rows[start:start + UPDATE_CHUNK]
            values = [[columns[n][i] for i in chunk] for n in arrays]
            if arrays_as == "positional":  # DuckDB: positional $n; Python lists bind as DuckDB LISTs
                unnest = _positional_unnest(arrays, {n: array_type(ledger_table.c[n]) for n in arrays})
                sql = (f"UPDATE {table} SET {assignments}, updated_at = CAST(${len(arrays) + 1} AS TIMESTAMP) "
                       f"FROM (SELECT {unnest}) AS v WHERE {table}.message_key = v.message_key AND {condition}{returning}")
                result = conn.exec_driver_sql(sql, (*values, _naive(now)))
            else:  # PostgreSQL: lists bind as arrays; unnest of several arrays zips them
                unnest = ", ".join(f"CAST(:a{i} AS {array_type(ledger_table.c[n])}[])" for i, n in enumerate(arrays))
                sql = (f"UPDATE {table} SET {assignments}, updated_at = :u FROM unnest({unnest}) AS v({', '.join(arrays)}) "
                       f"WHERE {table}.message_key = v.message_key AND {condition}{returning}")
                result = conn.execute(sa.text(sql), {**{f"a{i}": v for i, v in enumerate(values)}, "u": _naive(now)})
            if hand_over and counted:
                if result.rowcount != len(chunk):
                    raise _NotAllHandedOver
                updated.update(columns["message_key"][i] for i in chunk)
            elif hand_over:
                updated |= {row[0] for row in result}
        return updated

    def _transaction(self, work) -> set[str]:
        """``work(conn)`` in one transaction; database errors become ``WarehouseError``."""
        try:
            with self.db.engine.begin() as conn:
                return work(conn)
        except sa.exc.SQLAlchemyError as exc:
            raise self.db._error("statement failed on", exc) from None

    @staticmethod
    def _outcome_columns(records: list[Record]) -> dict[str, list]:
        return {"message_key": [r.message_key for r in records], "status": [r.status for r in records],
                "reason": [r.reason for r in records], "detail": [r.detail for r in records],
                "next_attempt_at": [_naive(r.next_attempt_at) for r in records]}

    @staticmethod
    def _content_columns(contents: list[tuple[str, str]]) -> dict[str, list]:
        return {"message_key": [k for k, _ in contents], "content": [c for _, c in contents]}

    def record_outcomes(self, records: Iterable[Record], now: datetime) -> None:
        """Set the final status of claimed messages (set-based where the backend allows)."""
        records = list(records)
        if records:
            self._transaction(lambda conn: self._update_claimed(conn, self._outcome_columns(records), now))

    def store_content(self, contents: list[tuple[str, str]], now: datetime) -> set[str]:
        """Keep the rendered message with its claim, before it is sent (R-M5, and proof of 'not sent').

        Only on claims without content yet: storing the content is the hand-over, and the keys
        returned are the ones this call handed over - a claim released by another process's
        recovery meanwhile (and maybe claimed again by it) is that process's to send or not.
        """
        if not contents:
            return set()
        return self._handing_over(lambda conn, counted: self._update_claimed(
            conn, self._content_columns(contents), now, hand_over=True, counted=counted))

    def hand_over(self, outcomes: list[Record], contents: list[tuple[str, str]], now: datetime) -> set[str]:
        """One transaction per group of messages going to a provider: the outcomes of the group
        sent before it (``record_outcomes``), then the content of this group (``store_content``);
        returns the keys of ``contents`` this process may now send. Both in one statement where the
        dialect merges them (``_merged_hand_over``)."""
        def work(conn: sa.Connection, counted: bool) -> set[str]:
            if counted and outcomes and contents and self.db.dialect.merged_hand_over:
                merged = self._merged_hand_over(conn, self._outcome_columns(outcomes), self._content_columns(contents), now)
                if merged is not None:
                    return merged
            if outcomes:
                self._update_claimed(conn, self._outcome_columns(outcomes), now)
            if not contents:
                return set()
            return self._update_claimed(conn, self._content_columns(contents), now, hand_over=True, counted=counted)
        return self._handing_over(work) if outcomes or contents else set()

    def _merged_hand_over(self, conn: sa.Connection, outcomes: dict[str, list], contents: dict[str, list],
                          now: datetime) -> set[str] | None:
        """A counted hand-over as one statement (``Dialect.merged_hand_over``): a MERGE whose first WHEN
        MATCHED clause stores the content of the claims of ``contents`` still without one, and the second
        sets the outcome columns of the claims of ``outcomes`` - what the two UPDATEs of ``_update_claimed``
        do, each clause setting only its own columns, with one join of the ledger and one statement instead of
        two (64 + 64 rows on DuckDB: CPU per write x0.6 on a ledger copied mid-pass, the first pass's hand-over
        CPU x0.9: benchmarks/README.md). Returns the keys of ``contents`` when every row was updated;
        ``_NotAllHandedOver`` otherwise (an outcome's claim finished or a content's claim taken elsewhere:
        rare), so the caller rolls back and does the two UPDATEs with RETURNING. None: not one statement's
        work (a key in both, or more rows than a chunk) - the caller does the two UPDATEs."""
        rows: dict[str, tuple[bool, int]] = {}  # key -> (handing over, its index): a key given twice, the first wins
        for handing, columns in ((False, outcomes), (True, contents)):
            first = _first_indexes(columns["message_key"])
            if first.keys() & rows.keys():
                return None
            rows.update((key, (handing, index)) for key, index in first.items())
        if len(rows) > UPDATE_CHUNK:
            return None
        names = {handing: [n for n in columns if n != "message_key"] for handing, columns in ((False, outcomes), (True, contents))}
        arrays = ["message_key", "handing", *names[False], *names[True]]
        values: list[list] = [list(rows), [handing for handing, _ in rows.values()]]
        for name in arrays[2:]:
            values.append([(contents if handing else outcomes)[name][index] if name in names[handing] else None
                           for handing, index in rows.values()])
        types = {"handing": "BOOLEAN", **{n: array_type(ledger_table.c[n]) for n in arrays if n != "handing"}}
        table, at = LEDGER_TABLE, f"CAST(${len(arrays) + 1} AS TIMESTAMP)"
        unnest = _positional_unnest(arrays, types)
        sets = {handing: ", ".join([f"{n} = v.{n}" for n in names[handing]] + [f"updated_at = {at}"]) for handing in (True, False)}
        sql = (f"MERGE INTO {table} USING (SELECT {unnest}) AS v ON {table}.message_key = v.message_key "
               f"WHEN MATCHED AND v.handing AND {table}.status = 'claimed' AND {table}.content IS NULL "
               f"THEN UPDATE SET {sets[True]} "
               f"WHEN MATCHED AND NOT v.handing AND {table}.status = 'claimed' THEN UPDATE SET {sets[False]}")
        result = conn.exec_driver_sql(sql, (*values, _naive(now)))
        if result.rowcount != len(rows):
            raise _NotAllHandedOver
        return {key for key, (handing, _) in rows.items() if handing}

    def _handing_over(self, work) -> set[str]:
        """``work(conn, counted)`` in one transaction: on DuckDB first counted (``_update_claimed``), and
        only when some claim was not handed over (another process released or stored it: rare) rolled
        back and done again with RETURNING, which names the keys handed over."""
        if self.db.dialect.array_parameters == "positional":
            try:
                return self._transaction(lambda conn: work(conn, True))
            except _NotAllHandedOver:
                pass  # rolled back: nothing of this transaction was written
        return self._transaction(lambda conn: work(conn, False))

    def rows_where(self, *conditions, limit: int = 1000) -> list[dict]:
        with self.db.engine.connect() as conn:
            query = sa.select(ledger_table).where(*conditions).order_by(ledger_table.c.message_key).limit(limit)
            return [dict(row) for row in conn.execute(query).mappings()]

    def retries_due(self, now: datetime, limit: int = 1000) -> list[dict]:
        c = ledger_table.c
        return self.rows_where(c.status == "failed", c.next_attempt_at.is_not(None),
                               c.next_attempt_at <= _naive(now), limit=limit)

    def stale_claims(self, older_than: datetime, limit: int = 1000) -> list[dict]:
        c = ledger_table.c
        return self.rows_where(c.status == "claimed", c.updated_at < _naive(older_than), limit=limit)

    def reclaim(self, row: dict, now: datetime) -> bool:
        """Take over a failed or stale claimed row for another attempt; True if this process won it."""
        c = ledger_table.c
        statement = (
            ledger_table.update()
            .where(c.message_key == row["message_key"], c.status == row["status"], c.attempts == row["attempts"],
                   c.updated_at == row["updated_at"])
            .values(status="claimed", attempts=c.attempts + 1, updated_at=_naive(now), next_attempt_at=None)
        )
        with self.db.engine.begin() as conn:
            return conn.execute(statement).rowcount == 1

    def release(self, key: str) -> bool:
        """Delete a claim that was never rendered, hence never sent: the next pass derives it again."""
        c = ledger_table.c
        with self.db.engine.begin() as conn:
            return conn.execute(ledger_table.delete().where(
                c.message_key == key, c.status == "claimed", c.content.is_(None))).rowcount == 1

    def skip_failed(self, key: str, reason: str, now: datetime) -> bool:
        """A failed message whose retry a policy now forbids (unsubscribed, suppressed, capped):
        skipped with that reason, never retried; False if another process took it first."""
        c = ledger_table.c
        with self.db.engine.begin() as conn:
            return conn.execute(ledger_table.update().where(c.message_key == key, c.status == "failed").values(
                status="skipped", reason=reason, next_attempt_at=None, updated_at=_naive(now))).rowcount == 1

    def skip_unsent_claim(self, key: str, reason: str, now: datetime) -> bool:
        """A claim of a dead process that was never rendered (so never sent) and is too late to
        send now: skipped with ``reason`` instead of released."""
        c = ledger_table.c
        with self.db.engine.begin() as conn:
            return conn.execute(ledger_table.update().where(
                c.message_key == key, c.status == "claimed", c.content.is_(None)).values(
                status="skipped", reason=reason, detail="claimed by a pass that died before sending it",
                updated_at=_naive(now))).rowcount == 1

    def mark_unknown(self, key: str, now: datetime) -> None:
        c = ledger_table.c
        self.db.execute(ledger_table.update().where(c.message_key == key, c.status == "claimed").values(
            status="unknown", reason="crashed", detail="claimed and rendered, but no outcome was recorded",
            updated_at=_naive(now)))

    # --- policies: suppressions, unsubscribes, contact pressure ---------------

    def _insert_ignore(self, table: sa.Table, row: dict) -> None:
        if self.db.dialect.on_conflict_insert is not None:
            self.db.execute(conflict_insert(self.db.dialect)(table).values(row).on_conflict_do_nothing())
            return
        try:  # pragma: no cover - other backends
            self.db.execute(table.insert().values(row))
        except Exception:  # noqa: BLE001 - already there
            pass

    def suppress(self, kind: str, address: str, reason: str, detail: str, now: datetime) -> None:
        self._insert_ignore(suppressions_table, {"kind": kind, "address": address, "reason": reason,
                                                 "detail": detail, "created_at": _naive(now)})
        if self._suppressed is not None:
            self._suppressed.setdefault(kind, set()).add(address)

    def suppressed(self, kind: str, addresses: Collection[str]) -> set[str]:
        """Which of ``addresses`` (of kind ``kind``) are suppressed: from the snapshot when there is one (none
        when it holds no suppression at all), else one query per 500 of them in sorted order."""
        if self._suppressed is not None:
            return self._suppressed[kind].intersection(addresses) if kind in self._suppressed else set()
        addresses = sorted(addresses)
        t = suppressions_table.c
        found: set[str] = set()
        with self.db.engine.connect() as conn:
            for start in range(0, len(addresses), 500):
                rows = conn.execute(sa.select(t.address).where(t.kind == kind, t.address.in_(addresses[start:start + 500])))
                found |= {row[0] for row in rows}
        return found

    def record_gone(self, kind: str, customer_id: str, contacts: list[str], message_key: str, detail: str,
                    now: datetime) -> None:
        for contact in dict.fromkeys(contacts):
            self._insert_ignore(gone_contacts_table, {
                "kind": kind, "digest": _digest(contact), "contact": contact, "customer_id": customer_id,
                "message_key": message_key, "detail": detail, "gone_at": _naive(now)})

    def gone_contacts(self, kind: str, contacts: list[str]) -> set[str]:
        """Which of ``contacts`` (of kind ``kind``) a provider reported gone: one query per 500."""
        t = gone_contacts_table.c
        by_digest = {_digest(contact): contact for contact in contacts}
        digests = sorted(by_digest)
        found: set[str] = set()
        if not digests:  # none of the batch's customers has a contact of the kind: nothing to ask
            return found
        listed = self._listed("digest", 2)
        if listed is not None:  # one statement: the digests as one LIST parameter
            rows = self._rows_by_list(f"SELECT digest FROM {gone_contacts_table.name} WHERE kind = $1 AND {listed}",
                                      (kind, digests))
            return {by_digest[row[0]] for row in rows}
        with self.db.engine.connect() as conn:
            for start in range(0, len(digests), 500):
                rows = conn.execute(sa.select(t.digest).where(t.kind == kind, t.digest.in_(digests[start:start + 500])))
                found |= {by_digest[row[0]] for row in rows}
        return found

    def unsubscribe(self, customer_id: str, kind: str, source: str, now: datetime) -> None:
        self._insert_ignore(unsubscribes_table, {"customer_id": customer_id, "kind": kind, "source": source,
                                                 "created_at": _naive(now)})
        if self._unsubscribed is not None:
            self._unsubscribed.setdefault(customer_id, set()).add(kind)

    def unsubscribed(self, customer_ids: Collection[str]) -> set[tuple[str, str]]:
        """(customer_id, kind) pairs of ``customer_ids``; kind 'all' means every channel. From the snapshot when
        there is one (none at once when it holds no unsubscribe), else one query per 500 ids in sorted order."""
        if self._unsubscribed is not None:
            unsubscribed = self._unsubscribed
            return {(customer_id, kind) for customer_id in customer_ids
                    for kind in unsubscribed.get(customer_id, ())} if unsubscribed else set()
        customer_ids = sorted(customer_ids)
        t = unsubscribes_table.c
        found: set[tuple[str, str]] = set()
        with self.db.engine.connect() as conn:
            for start in range(0, len(customer_ids), 500):
                rows = conn.execute(sa.select(t.customer_id, t.kind).where(t.customer_id.in_(customer_ids[start:start + 500])))
                found |= {(row[0], row[1]) for row in rows}
        return found

    def recent_sends(self, customer_ids: list[str], since: datetime) -> dict[str, list[tuple[datetime, str, str]]]:
        """customer -> [(sent at, channel, campaign)] of messages sent (or in flight) since ``since``.

        "Sent at" is the row's last update: for a sent row the pass that delivered it (a
        retry delivers later than its claim), for a claimed or unknown row a moment at or
        after its send - never earlier than the delivery, so a cap window never misses one.
        """
        c = ledger_table.c
        found: dict[str, list[tuple[datetime, str, str]]] = {}
        # the statuses "sent", "claimed" and "unknown", written as NOT IN the others: with IN, SQLite's
        # planner (no statistics) read them through the status index - every sent row of the ledger, 55 s
        # per 1,000 customers at 10M rows - instead of each customer's few rows (0.2 s)
        not_sent = sorted(set(STATUSES) - {"sent", "claimed", "unknown"})
        listed = self._listed("customer_id", 1) if customer_ids else None
        if listed is not None:  # one statement for every customer of the batch: the ids as one LIST parameter
            statuses = ", ".join(f"'{status}'" for status in not_sent)
            rows = self._rows_by_list(
                f"SELECT customer_id, updated_at, channel, campaign FROM {LEDGER_TABLE} WHERE {listed} "
                f"AND status NOT IN ({statuses}) AND updated_at >= $2", (list(customer_ids), _naive(since)))
            for customer_id, updated_at, channel, campaign in rows:
                found.setdefault(customer_id, []).append((_parse(updated_at), channel, campaign))
            return found
        if not self.db.dialect.ledger_customer_index:
            return self._recent_sends_without_customer_index(customer_ids, _naive(since), not_sent)
        for start in range(0, len(customer_ids), 500):
            query = sa.select(c.customer_id, c.updated_at, c.channel, c.campaign).where(
                c.customer_id.in_(customer_ids[start:start + 500]), c.status.not_in(not_sent),
                c.updated_at >= _naive(since))
            with self.db.engine.connect() as conn:
                for customer_id, updated_at, channel, campaign in conn.execute(query):
                    found.setdefault(customer_id, []).append((_parse(updated_at), channel, campaign))
        return found

    def _listed(self, column: str, position: int) -> str | None:
        """The condition ``column`` (text) is one of the keys bound as one LIST parameter ``$position``, where
        the ledger's dialect binds Python lists positionally (``Dialect.array_parameters`` "positional", with
        its ``key_array_conditions``' VARCHAR form); None elsewhere (the keys in literal IN lists of 500). A
        batch's look-up is then one statement, not one per 500 keys each with as many bound values to compile:
        ``existing_keys``, ``sent_instances``, ``recent_sends``, ``gone_contacts``."""
        dialect = self.db.dialect
        if dialect.array_parameters != "positional":
            return None
        return next((condition.format(column=column, parameter=f"${position}")
                     for element, condition in dialect.key_array_conditions if element == "VARCHAR"), None)

    def _rows_by_list(self, sql: str, parameters: tuple) -> list:
        """The rows of ``sql`` (the driver's ``$n`` placeholders, a ``_listed`` condition) with ``parameters``."""
        try:
            with self.db.engine.connect() as conn:
                return conn.exec_driver_sql(sql, parameters).fetchall()
        except sa.exc.SQLAlchemyError as exc:
            raise self.db._error("query failed on", exc) from None

    def _recent_sends_without_customer_index(self, customer_ids: list[str], since: datetime,
                                             not_sent: list[str]) -> dict[str, list[tuple[datetime, str, str]]]:
        """``recent_sends`` on a ledger without a per-customer index (``Dialect.ledger_customer_index``,
        migration 0010): the steps that sent within the window (one seek of engine_ledger_sends per step the
        ledger holds, in the statement that walks them), then the identity index sought at those steps for
        each customer, their rows filtered as above. Same rows. A step that sent before the window only is
        not read at all: cheaper than the customer index, which read every row of a customer's history."""
        c = ledger_table.c
        found: dict[str, list[tuple[datetime, str, str]]] = {}
        with self.db.engine.connect() as conn:
            pairs = ledger_steps(conn, sent_since=since) if customer_ids else []
            if not pairs:
                return found
            for start in range(0, len(customer_ids), 500):
                query = sa.select(c.customer_id, c.updated_at, c.channel, c.campaign).where(
                    at_steps(pairs), c.customer_id.in_(customer_ids[start:start + 500]), c.status.not_in(not_sent),
                    c.updated_at >= since)
                for customer_id, updated_at, channel, campaign in conn.execute(query):
                    found.setdefault(customer_id, []).append((_parse(updated_at), channel, campaign))
        return found

    def existing_keys(self, keys: list[str]) -> set[str]:
        """Which of ``keys`` the ledger already holds (for a ledger in another database)."""
        listed = self._listed("message_key", 1) if keys else None
        if listed is not None:  # the keys as one LIST parameter: no IN list of 500 bound values to compile (15x faster)
            return {row[0] for row in self._rows_by_list(f"SELECT message_key FROM {LEDGER_TABLE} WHERE {listed}",
                                                         (list(keys),))}
        found: set[str] = set()
        for start in range(0, len(keys), 500):
            chunk = keys[start:start + 500]
            with self.db.engine.connect() as conn:
                rows = conn.execute(sa.select(ledger_table.c.message_key).where(ledger_table.c.message_key.in_(chunk)))
                found |= {row[0] for row in rows}
        return found

    def campaigns_held(self, campaigns: list[str]) -> set[str]:
        """Which of ``campaigns`` the ledger holds any row of, in one statement: one ``EXISTS`` per
        campaign (its identity index leads with the campaign, so each stops at the first row), joined
        by ``UNION ALL`` - one round trip however many campaigns a pass starts with."""
        names = sorted(set(campaigns))
        if not names:
            return set()
        c = ledger_table.c
        held = [sa.select(sa.literal(name).label("campaign")).where(
                    sa.exists(sa.select(c.campaign).where(c.campaign == name).limit(1)))
                for name in names]
        with self.db.engine.connect() as conn:
            return {row[0] for row in conn.execute(held[0] if len(held) == 1 else sa.union_all(*held))}

    def sent_instances(self, campaign: str, customer_ids: list[str]) -> dict[str, list[tuple[str, datetime]]]:
        """customer -> [(trigger_key, trigger_at)] of instances with a claimed or sent message
        (re-entry rules: an instance 'entered' when something went out for it)."""
        c = ledger_table.c
        found: dict[str, list[tuple[str, datetime]]] = {}
        listed = self._listed("customer_id", 2) if customer_ids else None
        if listed is not None:  # one statement for every customer of the batch: the ids as one LIST parameter
            statuses = ", ".join(f"'{status}'" for status in ("claimed", "sent"))
            rows = self._rows_by_list(
                f"SELECT customer_id, trigger_key, min(trigger_at) FROM {LEDGER_TABLE} WHERE campaign = $1 "
                f"AND status IN ({statuses}) AND {listed} GROUP BY customer_id, trigger_key", (campaign, list(customer_ids)))
            for customer_id, trigger_key, trigger_at in rows:
                found.setdefault(customer_id, []).append((trigger_key, _parse(trigger_at)))
            return found
        if not customer_ids:
            return found
        with self.db.engine.connect() as conn:
            # without a per-customer index: the identity index, at each of the campaign's steps the ledger holds
            steps = None if self.db.dialect.ledger_customer_index else [step for _, step in ledger_steps(conn, campaign)]
            if steps == []:
                return found
            for start in range(0, len(customer_ids), 500):
                chunk = customer_ids[start:start + 500]
                query = (
                    sa.select(c.customer_id, c.trigger_key, sa.func.min(c.trigger_at))
                    .where(c.campaign == campaign, c.customer_id.in_(chunk), c.status.in_(("claimed", "sent")),
                           *([c.step.in_(steps)] if steps is not None else []))
                    .group_by(c.customer_id, c.trigger_key)
                )
                for customer_id, trigger_key, trigger_at in conn.execute(query):
                    found.setdefault(customer_id, []).append((trigger_key, _parse(trigger_at)))
        return found

    def entered_instances(self, campaign: str) -> list[tuple[str, str, str, datetime]]:
        """(campaign, customer_id, trigger_key, first trigger_at) of every instance of ``campaign`` with a
        claimed or sent message, as ``sent_instances`` finds them: what a pass copies into the warehouse
        session to settle the campaign's re-entry in SQL when the ledger is in another database."""
        c = ledger_table.c
        query = (sa.select(c.customer_id, c.trigger_key, sa.func.min(c.trigger_at))
                 .where(c.campaign == campaign, c.status.in_(("claimed", "sent")))
                 .group_by(c.customer_id, c.trigger_key))
        with self.db.engine.connect() as conn:
            return [(campaign, customer_id, trigger_key, _parse(trigger_at))
                    for customer_id, trigger_key, trigger_at in conn.execute(query)]

    def apply_tags(self, changes: list[tuple[str, str, str, str]], now: datetime) -> None:
        """(customer_id, 'set_tag'|'remove_tag', tag, campaign) in order; setting an existing tag is a no-op."""
        for customer_id, kind, tag, campaign in changes:
            if kind == "remove_tag":
                self.db.execute(tags_table.delete().where(tags_table.c.customer_id == customer_id, tags_table.c.tag == tag))
                continue
            self._insert_ignore(tags_table, {"customer_id": customer_id, "tag": tag, "campaign": campaign,
                                             "set_at": _naive(now)})

    def record_entries(self, rows: list[tuple[str, str, str, datetime]]) -> None:
        """Record segment entries (campaign, customer_id, trigger_key, entered_at) computed in a warehouse
        in another database; an entry already recorded stays as it was."""
        values = [{"campaign": campaign, "customer_id": customer_id, "trigger_key": trigger_key,
                   "entered_at": _naive(entered_at)} for campaign, customer_id, trigger_key, entered_at in rows]
        if self.db.dialect.on_conflict_insert is None:  # pragma: no cover - other backends
            for row in values:
                self._insert_ignore(entries_table, row)
            return
        insert = conflict_insert(self.db.dialect)
        for start in range(0, len(values), 1000):  # one transaction per thousand entries
            self.db.execute(insert(entries_table).on_conflict_do_nothing(), values[start:start + 1000])


def keep_recorded_entries(insert: "exp.Insert") -> "exp.Insert":
    """A segment's ``INSERT`` of new entries that leaves an entry already recorded as it is (ON CONFLICT
    DO NOTHING on the entry's key): replicas entering the same customers at the same pass both
    succeed, and the first one's ``entered_at`` stays. For a ledger in the warehouse's database, on a
    dialect with conflict handling (``Dialect.on_conflict_insert``)."""
    from sqlglot import exp

    insert = insert.copy()
    insert.set("conflict", exp.OnConflict(
        conflict_keys=[exp.to_identifier(name) for name in ("campaign", "customer_id", "trigger_key")],
        action=exp.var("DO NOTHING")))
    return insert


def insert_new_rows(select: "exp.Select", columns: list[str]) -> "exp.Insert":
    """The ledger's ``INSERT ... SELECT`` of ``select``'s rows (its ``columns``, named as the ledger's):
    a message key the ledger holds already is left as it is (ON CONFLICT DO NOTHING), and the step,
    reason and channel of each row written come back (RETURNING), for the pass's report. For a
    ledger in the warehouse's database, on a dialect with both (engine.run.settle decides)."""
    from sqlglot import exp

    insert = exp.insert(select, exp.to_table(LEDGER_TABLE), columns=list(columns), copy=False)  # the caller's own select
    insert.set("conflict", exp.OnConflict(conflict_keys=[exp.to_identifier("message_key")], action=exp.var("DO NOTHING")))
    insert.set("returning", exp.Returning(expressions=[exp.column("step"), exp.column("reason"), exp.column("channel")]))
    return insert
