"""The hand-over writes on every backend: a batched hand-over (outcomes of the group before, content of
this group, chunked set-based UPDATEs; on DuckDB counted first, RETURNING only when a claim was taken)
hands over exactly the claims still free, and leaves the ledger as one write per message would."""
from __future__ import annotations

from datetime import datetime, timedelta

import sqlalchemy as sa

from conftest import database_url
from engine.dialects import dialect_of_backend
from engine.state.ledger import UPDATE_CHUNK, Ledger, Record, ledger_table
from engine.state.warehouse import Database

NOW = datetime(2025, 1, 10, 12, 0)
LATER = NOW + timedelta(minutes=1)
#: more claims than one UPDATE chunk, so a hand-over runs several statements in one transaction
COUNT = UPDATE_CHUNK + 300


def key(i: int) -> str:
    return f"c:s:{i}:t"


def claim(i: int) -> Record:
    return Record(message_key=key(i), campaign="c", step="s", customer_id=str(i), trigger_key="t", channel="email",
                  status="claimed", due_at=NOW, trigger_at=NOW, variant="a" if i % 2 else None)


def outcome(i: int) -> Record:
    base = dict(message_key=key(i), campaign="c", step="s", customer_id=str(i), trigger_key="t", channel="email")
    if i % 7 == 0:
        return Record(**base, status="failed", reason="transient", detail="451 later", next_attempt_at=LATER + timedelta(hours=1))
    return Record(**base, status="sent", detail=f"<id{i}@sink> 250 OK")


def content(i: int) -> str:
    return '{"kind": "email", "to": "c%d@example.com", "subject": "hello", "text": "%s"}' % (i, "x" * (i % 50))


def rows(db: Database) -> list[dict]:
    with db.engine.connect() as conn:
        return [dict(r) for r in conn.execute(sa.select(ledger_table).order_by(ledger_table.c.message_key)).mappings()]


def new_ledger(backend: str, tmp_path, name: str) -> tuple[Database, Ledger]:
    db = Database(database_url(backend, tmp_path, name))
    ledger = Ledger(db)
    ledger.ensure_schema()
    return db, ledger


def taken_by_another_process(db: Database, ledger: Ledger) -> set[str]:
    """What another replica did meanwhile to some claims of the group about to be handed over: one
    released as a dead claim (and not claimed again), one handed over by it, one past the first chunk
    given an outcome by it; all three in the last UPDATE chunk, so the chunks before it were written
    already in the transaction when the hand-over learns they were taken."""
    released, stored, finished = key(COUNT - 1), key(COUNT - 2), key(COUNT - 3)
    assert ledger.release(released)
    assert ledger.store_content([(stored, "theirs")], NOW) == {stored}
    ledger.record_outcomes([outcome(COUNT - 3)], NOW)
    return {released, stored, finished}


def test_a_batched_hand_over_hands_over_only_the_free_claims_and_writes_what_one_write_per_message_would(backend, tmp_path):
    batched_db, batched = new_ledger(backend, tmp_path, "batched")
    single_db, single = new_ledger(backend, tmp_path, "single")
    try:
        for ledger in (batched, single):
            assert ledger.write_new([claim(i) for i in range(COUNT)], NOW) == {key(i) for i in range(COUNT)}
        taken = taken_by_another_process(batched_db, batched)
        assert taken_by_another_process(single_db, single) == taken
        first, second = list(range(0, 40)), list(range(40, COUNT))

        # the group before: its content handed over, sent; then its outcomes with the next group's content
        assert batched.hand_over([], [(key(i), content(i)) for i in first], NOW) == {key(i) for i in first}
        handed = batched.hand_over([outcome(i) for i in first], [(key(i), content(i)) for i in second], LATER)
        assert handed == {key(i) for i in second} - taken

        # the same writes one message at a time
        for i in first:
            assert single.hand_over([], [(key(i), content(i))], NOW) == {key(i)}
        for i in first:
            assert single.hand_over([outcome(i)], [], LATER) == set()
        one_by_one = set()
        for i in second:
            one_by_one |= single.hand_over([], [(key(i), content(i))], LATER)
        assert one_by_one == handed

        assert rows(batched_db) == rows(single_db)
        stored = {row["message_key"]: row for row in rows(batched_db)}
        assert key(COUNT - 1) not in stored  # released: the next pass derives it again
        assert stored[key(COUNT - 2)]["content"] == "theirs"  # another process's hand-over is kept
        assert stored[key(COUNT - 3)]["status"] == "sent" and stored[key(COUNT - 3)]["content"] is None
        assert [stored[key(i)]["status"] for i in (1, 7, 40)] == ["sent", "failed", "claimed"]
        assert stored[key(7)]["next_attempt_at"] == LATER + timedelta(hours=1)
        assert stored[key(40)]["content"] == content(40) and stored[key(40)]["updated_at"] == LATER

        # a second hand-over of the same group hands over nothing and changes nothing
        before = rows(batched_db)
        assert batched.hand_over([], [(key(i), "again") for i in second], LATER + timedelta(minutes=1)) == set()
        assert rows(batched_db) == before
    finally:
        batched_db.dispose()
        single_db.dispose()


def test_the_status_index_is_kept_where_the_dialect_keeps_it(backend, tmp_path):
    """DuckDB rewrote a whole row, content included, at every outcome while the index was there
    (migration 0008); the other databases read retries and stale claims through it."""
    db, _ = new_ledger(backend, tmp_path, "ledger")
    try:
        if backend == "duckdb":  # SQLAlchemy's index reflection does not work on duckdb_engine
            names = {row[0] for row in db.execute("SELECT index_name FROM duckdb_indexes() WHERE table_name = 'engine_ledger'")}
        else:
            names = {index["name"] for index in sa.inspect(db.engine).get_indexes("engine_ledger")}
        dialect = dialect_of_backend(db.engine.dialect.name)
        assert ("engine_ledger_customer" in names) == dialect.ledger_customer_index  # migration 0010
        assert ("engine_ledger_sends" in names) == (not dialect.ledger_customer_index)
        assert ("engine_ledger_status" in names) == dialect_of_backend(db.engine.dialect.name).ledger_status_index
    finally:
        db.dispose()


def ledger_statements(db: Database) -> list[str]:
    """The statements that write the ledger from now on (BEGIN/COMMIT and reads not counted)."""
    seen: list[str] = []

    @sa.event.listens_for(db.engine, "before_cursor_execute")
    def count(conn, cursor, statement, parameters, context, executemany):  # noqa: ARG001 - SQLAlchemy's signature
        if statement.lstrip().upper().startswith(("UPDATE", "MERGE", "INSERT", "DELETE")):
            seen.append(statement)
    return seen


def test_a_pass_sized_hand_over_is_one_statement_where_the_dialect_merges_it_and_writes_what_two_updates_would(tmp_path):
    """A pass's hand-over (a group's outcomes and the next group's content, ``Dialect.merged_hand_over``:
    DuckDB) is one MERGE; it writes what one write per message would, and a claim taken or finished by
    another process meanwhile (in either half) makes it fall back to the two UPDATEs with RETURNING."""
    merged_db, merged = new_ledger("duckdb", tmp_path, "merged")
    single_db, single = new_ledger("duckdb", tmp_path, "single")
    try:
        for ledger in (merged, single):
            assert ledger.write_new([claim(i) for i in range(260)], NOW) == {key(i) for i in range(260)}
        groups = [list(range(start, start + 64)) for start in range(0, 256, 64)]
        seen = ledger_statements(merged_db)
        assert merged.hand_over([], [(key(i), content(i)) for i in groups[0]], NOW) == {key(i) for i in groups[0]}
        del seen[:]
        # the usual hand-over: one statement for both halves; a key given twice: the first wins
        doubled = [(key(i), content(i)) for i in groups[1]] + [(key(64), "second")]
        assert merged.hand_over([outcome(i) for i in groups[0]] + [outcome(0)], doubled, NOW) == {key(i) for i in groups[1]}
        assert len(seen) == 1 and seen[0].lstrip().upper().startswith("MERGE"), seen
        # the same writes one message at a time
        for i in groups[0] + groups[1]:
            assert single.hand_over([], [(key(i), content(i))], NOW) == {key(i)}
        for i in groups[0]:
            assert single.hand_over([outcome(i)], [], NOW) == set()

        # another process meanwhile hands over the next group's first claim: the merged statement does not
        # update every row, and the two UPDATEs with RETURNING follow
        for ledger in (merged, single):
            assert ledger.store_content([(key(128), "theirs")], NOW) == {key(128)}
        del seen[:]
        assert merged.hand_over([outcome(i) for i in groups[1]], [(key(i), content(i)) for i in groups[2]], LATER) == {
            key(i) for i in groups[2][1:]}
        assert [s.lstrip().split()[0].upper() for s in seen] == ["MERGE", "UPDATE", "UPDATE"], seen
        for i in groups[1]:
            single.hand_over([outcome(i)], [], LATER)
        assert set().union(*(single.hand_over([], [(key(i), content(i))], LATER) for i in groups[2])) == {
            key(i) for i in groups[2][1:]}
        # ... or finishes a claim of the group before (its outcome recorded by it): the same
        for ledger in (merged, single):
            ledger.record_outcomes([outcome(191)], LATER)
        del seen[:]
        assert merged.hand_over([outcome(i) for i in groups[2][1:]], [(key(i), content(i)) for i in groups[3]], LATER) == {
            key(i) for i in groups[3]}
        assert [s.lstrip().split()[0].upper() for s in seen] == ["MERGE", "UPDATE", "UPDATE"], seen
        for i in groups[2][1:]:
            single.hand_over([outcome(i)], [], LATER)
        assert set().union(*(single.hand_over([], [(key(i), content(i))], LATER) for i in groups[3])) == {key(i) for i in groups[3]}

        assert rows(merged_db) == rows(single_db)
        stored = {row["message_key"]: row for row in rows(merged_db)}
        assert stored[key(64)]["content"] == content(64) and stored[key(128)]["content"] == "theirs"
        assert [stored[key(i)]["status"] for i in (1, 7, 127, 128, 191, 192, 259)] == [
            "sent", "failed", "sent", "claimed", "sent", "claimed", "claimed"]
        assert stored[key(259)]["content"] is None
    finally:
        merged_db.dispose()
        single_db.dispose()
