"""The service's tracking endpoints: /open (the pixel), /click (the signed redirect), /scan (a printed link).

Each request carries one sealed token (engine.tracking) in its ``t``
parameter. The endpoint opens it with the project's code secrets (the current
one and every previous one), looks its message up in the ledger and records
one event (``Ledger.record_events``) under a stable id - the type, the
message, the click's URL and whether a machine made it - so a reload, a
second click on the same link or a replayed request records nothing new.
Then it answers: a 1x1 GIF, a 302 to the URL sealed in the token (never one
the request names: no open redirect), a 302 to ``policies.scan_landing_url``.

Refused, with nothing recorded and a log line that names the endpoint, the
status and the reason only (never the query, the token or a message key): a
malformed request (400), a token no secret sealed, of another type or whose
message the ledger does not hold (404), an expired one (410). A printed link
of the old form (``?m=...&s=...``, letters printed before tokens) still
redirects, unrecorded: the ledger keeps no index from its hash to a message.

Machine opens and scanner clicks (``tracking.machine_reason``) are recorded
with ``machine`` true and the rule in ``detail``. Each process remembers
(bounded, least recently used first out) the messages it looked up - a
message's ledger row does not change once it was sent - and the events it
recorded, so a replayed pixel costs no database round trip; another replica
replaying it finds the event in the table (nothing new recorded either).
New events are written by one thread per project (``Writer``): woken by an
event, it waits ``LINGER`` for more, then one ``record_events`` call takes
every event that arrived meanwhile (up to ``BATCH``), one insert and one commit
for all of them, so concurrent clicks do not queue for the database's write
lock one commit each, and the requests do not wake the writer one each (woken
by every click it wrote batches of about ten, and the hand-overs of the
interpreter's lock between its thread and the server's - 29-37 voluntary
context switches per click, ~3 per replayed pixel - were most of a new click's
time on a loaded machine: benchmarks/README.md). The answer does not wait for it: an event is
lost only if the process dies within that moment (``LINGER`` and one commit);
``flush`` and ``close`` cut the wait short. When the ledger cannot be
reached the answer is given all the same (the token alone proves the URL) and
the miss is logged. Must not sign tokens (the render stage does) nor render.
"""
from __future__ import annotations

import logging
import queue
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from datetime import datetime
from typing import Callable, Protocol
from urllib.parse import parse_qsl

from engine import scan_link, tracking
from engine.clock import Clock, to_utc
from engine.errors import EngineError
from engine.logs import event
from engine.refusals import Refused
from engine.model import ProjectConfig
from engine.service.httpd import Answer, Request, Route
from engine.state.events import Event, event_id

#: the smallest transparent GIF (43 bytes)
PIXEL = bytes.fromhex("47494638396101000100800000ffffff00000021f90401000000002c00000000010001000002024401003b")
#: bytes a tracking request may carry in its body (they carry none)
MAX_BODY = 1024
TEXT = "text/plain; charset=utf-8"
#: messages and event ids a process remembers (each)
REMEMBERED = 20_000
#: events recorded by one insert at most
BATCH = 500
#: seconds the writer waits, once an event woke it, for more to write with it
LINGER = 0.05


class EventLedger(Protocol):
    def message_refs(self, keys: list[str]) -> dict: ...
    def record_events(self, events: list[Event], now: datetime) -> list: ...


class Memory:
    """What this process already knows: message rows it looked up, event ids it recorded; bounded, thread-safe."""

    def __init__(self, size: int = REMEMBERED):
        self._size = size
        self._refs: OrderedDict[str, object] = OrderedDict()
        self._events: OrderedDict[str, None] = OrderedDict()
        self._lock = threading.Lock()

    def ref(self, key: str):
        with self._lock:
            ref = self._refs.get(key)
            if ref is not None:
                self._refs.move_to_end(key)
            return ref

    def recorded(self, event_id_: str) -> bool:
        with self._lock:
            return event_id_ in self._events

    def remember_events(self, event_ids: list[str]) -> None:
        """Remember that ``event_ids`` are recorded (one hold of the lock for a whole batch)."""
        with self._lock:
            for event_id_ in event_ids:
                self._keep(self._events, event_id_, None)

    def remember(self, key: str, ref: object) -> None:
        """Remember message ``key``'s ledger row ``ref``."""
        with self._lock:
            self._keep(self._refs, key, ref)

    def _keep(self, table: OrderedDict, key: str, value: object) -> None:
        """``key`` as the newest of ``table``, the oldest beyond ``size`` forgotten (the lock held)."""
        table[key] = value
        table.move_to_end(key)
        if len(table) > self._size:
            table.popitem(last=False)


class Writer:
    """Records events on a thread of its own, in batches of whatever arrived while the last one was written."""

    def __init__(self, ledger: EventLedger, memory: Memory, linger: float = LINGER):
        """``linger``: seconds to wait for more events once one arrived (0: write whatever is there)."""
        self._ledger, self._memory, self._linger = ledger, memory, linger
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._hurry = threading.Event()  # set by flush and close: write now, without lingering

    def put(self, recorded: Event, now: datetime) -> None:
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="engine-tracking-writer", daemon=True)
                self._thread.start()
        self._queue.put((recorded, now))

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until everything put before this call is written (or failed and logged); False on timeout."""
        if self._thread is None:
            return True
        done = threading.Event()
        self._queue.put(done)
        self._hurry.set()
        return done.wait(timeout)

    def close(self, timeout: float = 10.0) -> bool:
        """Write what is queued, then end the thread (the project's ledger is about to close)."""
        written = self.flush(timeout)
        if self._thread is not None:
            self._queue.put(None)
        return written

    def _run(self) -> None:
        stopping = False
        while not stopping:
            batch, waiting = [], []
            item = self._queue.get()
            if isinstance(item, tuple) and self._linger > 0 and not self._hurry.is_set():
                self._hurry.wait(self._linger)  # not woken by each put meanwhile: they join this batch
            self._hurry.clear()
            while True:
                if item is None:
                    stopping = True
                    break
                (batch if isinstance(item, tuple) else waiting).append(item)  # (event, now), or a flush's signal
                if len(batch) >= BATCH:
                    break
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
            if batch:
                self._write(batch)
            for done in waiting:
                done.set()

    def _write(self, batch: list[tuple[Event, datetime]]) -> None:
        try:
            self._ledger.record_events([recorded for recorded, _ in batch], batch[-1][1])
        except EngineError as exc:
            _unrecorded(batch[0][0].type, exc)
            return
        except Exception as exc:  # noqa: BLE001 - the writer thread must outlive one failed batch
            event("tracking.unrecorded", f"Could not record {len(batch)} tracking event(s): {type(exc).__name__}",
                  logging.ERROR)
            return
        self._memory.remember_events([recorded.event_id for recorded, _ in batch])


@dataclass(frozen=True)
class Tracking:
    """What the endpoints need of the running project: its settings, its verifying keys, its ledger."""

    config: ProjectConfig
    secrets: tuple[str, ...]
    ledger: EventLedger
    memory: Memory = field(default_factory=Memory)
    writer: Writer | None = None

    def __post_init__(self) -> None:
        if self.writer is None:
            object.__setattr__(self, "writer", Writer(self.ledger, self.memory))


def routes(current: Callable[[], Tracking | None], clock: Clock) -> dict[str, Route]:
    """/open, /click and /scan over the project ``current()`` answers (None while it is loading: 503)."""
    def route(type_: str) -> Route:
        return Route(handle=lambda request: answer(type_, request, current(), clock.now()), methods=("GET", "HEAD"),
                     max_body=MAX_BODY)

    return {"/open": route("open"), "/click": route("click"), "/scan": route("scan")}


def answer(type_: str, request: Request, state: Tracking | None, now: datetime) -> Answer:
    """The answer to one tracking request (see the module's docstring)."""
    if state is None:
        return Answer(503, b"not ready, try again in a minute\n", TEXT)
    try:
        given = _parameters(request.query)
    except tracking.TokenRefused as refused:
        return _refused(type_, refused)
    if type_ == "scan" and "t" not in given:
        return _old_scan(request.query, state)
    try:
        if set(given) != {"t"}:
            raise tracking.TokenRefused(400, "this link is not valid: it names no message")
        token = tracking.open_token(given["t"], state.secrets, type_, now, state.config.tracking.token_ttl)
    except tracking.TokenRefused as refused:
        return _refused(type_, refused)
    ref = state.memory.ref(token.message_key)
    if ref is None:
        try:
            ref = state.ledger.message_refs([token.message_key]).get(token.message_key)
        except EngineError as exc:
            _unrecorded(type_, exc)
            return _done(type_, token, state)
        if ref is None:
            return _refused(type_, tracking.TokenRefused(404, "this link names no message of this shop"))
        state.memory.remember(token.message_key, ref)
    sent_at = to_utc(ref.updated_at) if ref.updated_at is not None else None
    reason = tracking.machine_reason(type_, request.method, request.headers, now, sent_at,
                                     state.config.tracking.machine_seconds)
    parts = [type_, token.message_key, *([token.url] if token.url else []), "machine" if reason else "person"]
    recorded = Event(event_id=event_id(*parts), message_key=token.message_key, type=type_, occurred_at=now,
                     machine=reason is not None, provider="tracking", url=token.url, detail=reason)
    if not state.memory.recorded(recorded.event_id):
        state.writer.put(recorded, now)
    return _done(type_, token, state)


def _parameters(query: str) -> dict[str, str]:
    try:
        pairs = parse_qsl(query, keep_blank_values=True, max_num_fields=4)
    except ValueError:
        raise tracking.TokenRefused(400, "this link is not valid: too many parameters") from None
    values: dict[str, str] = {}
    for name, value in pairs:
        if name in values:
            raise tracking.TokenRefused(400, f"this link is not valid: '{name}' is given twice")
        values[name] = value
    return values


def _done(type_: str, token: tracking.Token, state: Tracking) -> Answer:
    if type_ == "open":
        return Answer(200, PIXEL, "image/gif", headers=(("Cache-Control", "no-store, private"),))
    location = token.url if type_ == "click" else state.config.scan_landing_url
    if not location:  # a click token always seals its URL; one without is not the engine's
        return _refused(type_, tracking.TokenRefused(404, "this link names no message of this shop"))
    return Answer(302, f"see {location}\n".encode(), TEXT, headers=(("Location", location),))


def _old_scan(query: str, state: Tracking) -> Answer:
    """A printed link of the old form: checked and redirected, not recorded (its message cannot be found)."""
    try:
        scan_link.check(query, state.secrets)
    except scan_link.ScanRefused as refused:
        return _refused("scan", refused)
    landing = state.config.scan_landing_url
    return Answer(302, f"see {landing}\n".encode(), TEXT, headers=(("Location", landing),))


def _refused(type_: str, refused: Refused) -> Answer:
    event("tracking.refused", f"Refused a {type_} request: {refused.reason}", logging.WARNING,
          endpoint=f"/{type_}", status=refused.status)
    return Answer(refused.status, (refused.reason + "\n").encode(), TEXT)


def _unrecorded(type_: str, exc: EngineError) -> None:
    # the error's class only: a database's message may quote the statement's parameters (the message key)
    event("tracking.unrecorded", f"Answered a {type_} request without recording it: the ledger failed "
          f"({type(exc).__name__})", logging.ERROR, endpoint=f"/{type_}")
