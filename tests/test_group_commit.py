"""send_all's hand-overs gather the workers: the worker that writes waits (no longer than the last write
took) until every worker still sending has asked, so one ledger write carries every connection's group
instead of the first one back alone (``dispatch._GroupCommit``). The in-doubt bound is unchanged: each
worker sends a group only after the write that stored it."""
from __future__ import annotations

import threading
import time

from engine.channels import Delivered, OutgoingMessage
from engine.run.dispatch import send_all

WORKERS, IN_FLIGHT, GROUPS = 4, 3, 4  # each worker sends GROUPS groups of IN_FLIGHT messages


def test_a_write_carries_the_group_of_every_worker_still_sending():
    lock = threading.Lock()
    stored: set[str] = set()
    writes: list[tuple[int, int]] = []  # (groups stored, outcomes recorded) per write

    class Provider:  # answers at once: the ledger's write (below) is what the workers wait for
        parallelism = WORKERS

        def send(self, message):
            with lock:
                assert message.key in stored, "sent before its hand-over was written"
            return Delivered(provider_id=message.key)

    def hand_over(done, group):
        time.sleep(0.05)  # a ledger write with its commit
        with lock:
            stored.update(messages[i][1].key for i in group)
            writes.append((-(-len(group) // IN_FLIGHT), len(done)))
        return set(group)

    n = WORKERS * IN_FLIGHT * GROUPS
    messages = [("email", OutgoingMessage(key=f"k{i}", kind="email", to=f"c{i}@example.com", sender="shop@example.com",
                                          parts={"subject": "s", "text": "t"})) for i in range(n)]
    results = send_all(messages, {"email": Provider()}, hand_over, {"email": IN_FLIGHT})
    assert [r.message.key for r in results] == [m.key for _, m in messages]
    assert sum(g for g, _ in writes) == n // IN_FLIGHT and sum(d for _, d in writes) == n
    # the first write carries whoever asked first; each later one every worker's group (the last: their outcomes)
    assert len(writes) <= GROUPS + 2, writes
    assert all(groups == WORKERS for groups, _ in writes[1:GROUPS]), writes
