"""Sending a rendered batch: per-channel workers over the pass's sessions, and when to try again.

Each channel's messages go out on their own threads (as many as the channel's
session sends in parallel: SMTP connections) over sessions reused for the
whole pass, so a slow or dead provider delays only its own channel. Transient failures
get a next attempt with exponential backoff and a deterministic jitter (a
hash of the message key and attempt, so replicas spread out but tests stay
reproducible); permanent ones are final and suppress the address.

Owns the send threads' share of the interpreter while a pass runs (``sending_threads``). Must not
decide, claim, render or write to the ledger: the send stage's ``hand_over`` callback records
outcomes and stores contents.
"""
from __future__ import annotations

import base64
import hashlib
import json
import contextlib
import queue
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Callable, Iterator

from engine import channel_kinds
from engine.channels import ChannelSession, Delivered, Failed, OutgoingMessage, Outcome
from engine.faults import checkpoint
from engine.model import RetryPolicy


#: What a stored message holds besides its parts (a part cannot take these names: channel_kinds.declaration).
_ENVELOPE = ("kind", "to", "from", "headers", "origin")


def serialize(message: OutgoingMessage, extra: dict | None = None) -> str:
    """The message as stored with its ledger row: enough to show it and to send it again identically.

    The parts sit beside the envelope, by their names, as they always have for
    email and SMS (subject, text, html: None when absent), so rows written by
    earlier releases read back the same. The document - the exact bytes handed
    to the provider - is kept as text when it is UTF-8 (an email, a JSON body)
    and in base64 otherwise (a PDF), so ``engine show-message`` gives back
    exactly what was sent and a resend after a crash sends the same bytes.
    """
    parts = {"subject": None, "text": None, "html": None, **message.parts}
    origin = {"origin": dict(message.origin)} if message.origin else {}
    stored = {"kind": message.kind, "to": message.to, "from": message.sender, **parts,
              "headers": dict(message.headers), **origin, **(extra or {})}
    if message.document is not None:
        try:
            stored["document"] = message.document.decode("utf-8")
        except UnicodeDecodeError:  # a binary document (a PDF)
            stored["document_base64"] = base64.b64encode(message.document).decode("ascii")
    return json.dumps(stored)


def deserialize(key: str, content: str) -> OutgoingMessage:
    data = json.loads(content)
    declared = channel_kinds.KINDS.get(data["kind"])
    names = declared.parts if declared is not None else ("subject", "text", "html")
    parts = {name: data[name] for name in names if data.get(name) is not None}
    if "document" in data:
        document = data["document"].encode("utf-8")
    elif "document_base64" in data:
        document = base64.b64decode(data["document_base64"])
    else:  # stored by a release that kept no documents: the transport makes it again when sending
        document = None
    return OutgoingMessage(key=key, kind=data["kind"], to=data["to"], sender=data["from"], parts=parts,
                           headers=data.get("headers") or {}, origin=data.get("origin") or {},
                           document=document)


def next_attempt(policy: RetryPolicy, key: str, attempts: int, now: datetime) -> datetime | None:
    """When to try again after ``attempts`` failed attempts, or None when they are used up."""
    if attempts >= policy.max_attempts:
        return None
    base = min(policy.max_backoff, policy.backoff * (2 ** (attempts - 1)))
    jitter = 0.5 + int.from_bytes(hashlib.sha256(f"{key}:{attempts}".encode()).digest()[:2], "big") / 65535 / 2
    return now + timedelta(seconds=base.total_seconds() * jitter)


@dataclass(frozen=True)
class Sent:
    message: OutgoingMessage
    outcome: Outcome


#: Messages a worker hands to its provider between two ledger writes (a channel's ``in_flight``).
DEFAULT_IN_FLIGHT = 16

#: ``hand_over(done, group)``: record the outcomes of ``done`` ((index, Sent) pairs, each worker's
#: previous group) and durably mark ``group`` (indices) as handed over, in one ledger write; return the
#: indices of ``group`` this process may send (a claim another process took over is not sent).
HandOver = Callable[[list[tuple[int, Sent]], list[int]], set[int]]


def send_all(messages: list[tuple[str, OutgoingMessage]], sessions: dict[str, ChannelSession],
             hand_over: HandOver | None = None, in_flight: dict[str, int] | None = None) -> list[Sent | None]:
    """Send (channel, message) pairs; results in input order.

    Each channel gets as many workers as its session allows at once
    (``parallelism``: an SMTP channel's ``connections``, otherwise 1); the
    workers take the channel's messages from one shared queue, so each
    message is sent exactly once and gets its own outcome.

    With ``hand_over`` (a pass's first attempts), each worker takes a group of
    up to ``in_flight[channel]`` messages (``DEFAULT_IN_FLIGHT``) and calls
    ``hand_over`` before sending it: one ledger write records the outcomes of
    its previous group and stores the new group's content. So at any moment
    only the groups being sent are "content stored, no outcome": a crash
    leaves at most ``parallelism x in_flight`` messages of a channel in doubt,
    and every other claim without content, which recovery releases as never
    sent. Before outcomes are recorded the session's ``sync`` (if it has one)
    makes what it accepted durable. A message ``hand_over`` refuses is not
    sent: its result is None. Hand-overs are group-committed (``_GroupCommit``):
    the workers that ask while a ledger write runs share the next one. A
    session with ``send_group`` is handed each group whole (``_outcomes``).
    """
    by_channel: dict[str, list[int]] = {}
    for index, (channel, _) in enumerate(messages):
        by_channel.setdefault(channel, []).append(index)
    results: list[Sent | None] = [None] * len(messages)
    commit: _GroupCommit | None = None

    def work(channel: str, pending: queue.SimpleQueue, group_size: int) -> None:
        try:
            send_groups(channel, pending, group_size)
        finally:
            if commit is not None:
                commit.leave()

    def send_groups(channel: str, pending: queue.SimpleQueue, group_size: int) -> None:
        session = sessions[channel]
        done: list[tuple[int, Sent]] = []
        while True:
            group = _take(pending, group_size)
            # what the provider accepted is durable before the ledger says "sent" (without hand_over the
            # caller records the outcomes after this returns: once, at the end)
            if done and (hand_over is not None or not group) and hasattr(session, "sync"):
                session.sync()
            allowed = set(group)
            if commit is not None and (done or group):
                allowed = commit(done, group)
                done = []
                if group:
                    checkpoint("stored")  # crash tests: the group's content is stored, nothing of it sent yet
            if not group:
                return
            chosen = [index for index in group if index in allowed]
            outcomes = _outcomes(session, [messages[index][1] for index in chosen])
            try:
                for index, outcome in zip(chosen, outcomes):
                    checkpoint("sent")  # crash tests: after the provider accepted, before the ledger knows
                    results[index] = Sent(messages[index][1], outcome)
                    done.append((index, results[index]))
            finally:
                outcomes.close()  # the session's group ends: its connection goes back

    workers: list[tuple[str, queue.SimpleQueue, int]] = []
    for channel, indices in by_channel.items():
        pending: queue.SimpleQueue = queue.SimpleQueue()
        for index in indices:
            pending.put(index)
        width = max(1, min(int(getattr(sessions[channel], "parallelism", 1)), len(indices)))
        # groups no larger than an even share, so a small batch still spreads over every connection
        group_size = 1 if hand_over is None else max(1, min((in_flight or {}).get(channel, DEFAULT_IN_FLIGHT),
                                                             -(-len(indices) // width)))
        workers += [(channel, pending, group_size)] * width
    commit = _GroupCommit(hand_over) if hand_over is not None else None
    if len(workers) == 1:
        work(*workers[0])
    elif workers:
        with ThreadPoolExecutor(max_workers=len(workers)) as pool:
            for future in [pool.submit(work, *worker) for worker in workers]:
                future.result()
    return results


def _outcomes(session: ChannelSession, messages: list[OutgoingMessage]) -> Iterator[Outcome]:
    """The outcome of each message, in order: from the session's ``send_group`` where it has one (SMTP
    sends a group with fewer waits for the server), else ``send`` per message. An error of the adapter
    is the outcome of the message it failed at, and the messages after it are sent all the same."""
    sent = 0
    while sent < len(messages):
        rest = messages[sent:]
        # a group of one is sent as it is: chaining needs a next message (and ``send`` costs less)
        chained = len(rest) > 1 and hasattr(session, "send_group")
        outcomes = session.send_group(rest) if chained else (session.send(m) for m in rest)
        try:
            for outcome in outcomes:
                sent += 1
                yield outcome
        except Exception as exc:  # noqa: BLE001 - an adapter bug must not lose the outcome of others
            sent += 1
            yield Failed(detail=f"{type(exc).__name__}: {exc}")
        finally:
            outcomes.close()


class _HandOverRequest:
    def __init__(self, done: list[tuple[int, Sent]], group: list[int]):
        self.done, self.group = done, group
        self.worker = threading.get_ident()
        self.allowed: set[int] = set()
        self.finished = False
        self.error: BaseException | None = None


class _GroupCommit:
    """``hand_over`` shared by the workers of a ``send_all``, with group commit.

    One ledger write at a time; a worker that asks while one runs queues its
    request, and the next write does every queued request in one transaction
    (like a database's group commit). Each worker still waits for its own
    group's write before sending it, so the in-doubt bound is unchanged, but
    with N connections there are up to N times fewer writes.

    The worker that writes first gathers: it waits until the workers the last two writes sent off
    with a group have asked again, but no longer than the last write took (``gather``). They come back
    together after sending their groups; without gathering the first one back wrote alone and the
    others queued behind it, so a write carried ~1.4 groups where it could carry all of them, and the
    ledger's writes - one at a time - were what the send stage waited on (benchmarks/README.md). A
    worker that comes later is written by the next write, as before; one still sending after two
    more writes (a slow channel beside a fast one) is no longer waited for, so it delays the others'
    writes at most twice per group, not at every write; a worker that is done ``leave``s.
    """

    def __init__(self, hand_over: HandOver):
        self.hand_over = hand_over
        self.changed = threading.Condition()  # guards everything below; notified at each change
        self.queued: list[_HandOverRequest] = []
        self.writing = False  # a worker is writing (one ledger write at a time)
        self.writes = 0  # writes done
        self.out: dict[int, int] = {}  # worker (thread) sending a group -> the number of the write that stored it
        self.gather = 0.0  # seconds the last write took: the longest a writer waits for the others

    def leave(self) -> None:
        """The calling worker is done: it will not ask again."""
        with self.changed:
            self.out.pop(threading.get_ident(), None)
            self.changed.notify_all()

    def _expected(self) -> bool:
        """A worker the last two writes sent off with a group has not asked again yet."""
        return any(stored >= self.writes - 1 for stored in self.out.values())

    def __call__(self, done: list[tuple[int, Sent]], group: list[int]) -> set[int]:
        request = _HandOverRequest(done, group)
        with self.changed:
            self.out.pop(request.worker, None)
            self.queued.append(request)
            self.changed.notify_all()
            while self.writing and not request.finished:
                self.changed.wait()
            if not request.finished:  # nobody took it along: this worker writes everything queued
                self.writing = True
                deadline = time.monotonic() + self.gather
                while self._expected() and (left := deadline - time.monotonic()) > 0:
                    self.changed.wait(left)
                batch, self.queued = self.queued, []
            else:
                batch = []
        if batch:
            started = time.monotonic()
            try:
                allowed = self.hand_over([d for r in batch for d in r.done], [i for r in batch for i in r.group])
            except BaseException as exc:
                with self.changed:
                    for r in batch:
                        r.error, r.finished = exc, True
                    self.writing = False
                    self.changed.notify_all()
                raise
            with self.changed:
                for r in batch:
                    r.allowed, r.finished = allowed.intersection(r.group), True
                self.writes += 1
                self.out.update((r.worker, self.writes) for r in batch if r.group)
                self.gather, self.writing = time.monotonic() - started, False
                self.changed.notify_all()
        if request.error is not None:
            raise request.error
        return request.allowed


#: The interpreter's thread switch interval while a pass sends (``sending_threads``), in seconds.
SWITCH_INTERVAL = 0.0005

_switch_lock = threading.Lock()
_switch_users: list[float] = []  # the interval before the first of the passes sending now (one entry each)


@contextlib.contextmanager
def sending_threads() -> Iterator[None]:
    """While a pass plans and renders on its main thread and sends on others: the interpreter hands the
    GIL over after ``SWITCH_INTERVAL`` instead of Python's 5 ms. A send worker whose provider answered
    waits for the GIL; with the main thread busy in Python (rendering the next batch) it waited up to
    5 ms at each answer, several per message (benchmarks/README.md). Restored when the last pass of
    the process that lowered it ends; never raised above what it was."""
    with _switch_lock:
        _switch_users.append(sys.getswitchinterval())
        sys.setswitchinterval(min(_switch_users[0], SWITCH_INTERVAL))
    try:
        yield
    finally:
        with _switch_lock:
            before = _switch_users.pop()
            if not _switch_users:
                sys.setswitchinterval(before)


def _take(pending: queue.SimpleQueue, count: int) -> list[int]:
    """Up to ``count`` items from ``pending`` (fewer when it runs out)."""
    group = []
    while len(group) < count:
        try:
            group.append(pending.get_nowait())
        except queue.Empty:
            break
    return group


__all__ = ["DEFAULT_IN_FLIGHT", "Delivered", "Failed", "HandOver", "SWITCH_INTERVAL", "Sent", "deserialize", "next_attempt",
           "send_all", "sending_threads", "serialize"]
