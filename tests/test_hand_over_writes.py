"""How many ledger writes a batch's hand-over takes (dispatch.send_all): one per group handed over (fewer
when workers share a group commit) and ONE for the outcomes of every worker's last group, not one per
worker; never more than connections x in_flight messages stored without an outcome at any write (the
in-doubt bound the kill tests check after real kills); every outcome recorded exactly once."""
from __future__ import annotations

import threading
import time

from engine.channels import Delivered, OutgoingMessage
from engine.run.dispatch import send_all

CONNECTIONS, IN_FLIGHT, COUNT = 4, 3, 61


class Connections:
    """A channel session sending over ``CONNECTIONS`` connections at once; each send takes a little
    longer on some connections than others, so the workers run out of messages at different times."""

    parallelism = CONNECTIONS

    def __init__(self):
        self.lock = threading.Lock()
        self.slot: dict[int, int] = {}
        self.accepted: list[str] = []

    def send(self, message):
        with self.lock:
            slot = self.slot.setdefault(threading.get_ident(), len(self.slot))
        time.sleep(0.002 * (1 + slot))
        with self.lock:
            self.accepted.append(message.key)
        return Delivered(provider_id=message.key)


def test_a_batch_records_its_workers_last_outcomes_in_one_write_within_the_in_doubt_bound():
    messages = [("email", OutgoingMessage(key=f"k{i}", kind="email", to=f"c{i}@example.com", sender="shop@example.com",
                                          parts={"text": "hi"})) for i in range(COUNT)]
    writes: list[tuple[tuple[str, ...], tuple[str, ...]]] = []
    stored: set[str] = set()
    recorded: list[str] = []
    lock = threading.Lock()

    def hand_over(done, group):
        with lock:
            outcomes = tuple(messages[i][1].key for i, _ in done)
            contents = tuple(messages[i][1].key for i in group)
            recorded.extend(outcomes)
            stored.update(contents)
            writes.append((outcomes, contents))
            in_doubt = stored - set(recorded)
            assert len(in_doubt) <= CONNECTIONS * IN_FLIGHT, (len(in_doubt), writes)
        return set(group)

    session = Connections()
    results = send_all(messages, {"email": session}, hand_over, {"email": IN_FLIGHT})
    assert [r.message.key for r in results] == [m.key for _, m in messages]
    assert sorted(recorded) == sorted(session.accepted) == sorted(m.key for _, m in messages)  # each exactly once
    assert len(session.slot) == CONNECTIONS  # every connection sent
    outcomes_only = [w for w in writes if not w[1]]
    assert len(outcomes_only) == 1 and writes[-1] is outcomes_only[0], writes  # one write for all the last groups
    assert len(writes) <= -(-COUNT // IN_FLIGHT) + 1

