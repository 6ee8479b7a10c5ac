"""Sending a rendered batch: per-channel workers, outcomes turned into ledger records.

Each channel's messages go out on their own threads (as many as the channel's
session sends in parallel: SMTP connections) over sessions reused for the
whole pass, so a slow or dead provider delays only its own channel. Transient failures
get a next attempt with exponential backoff and a deterministic jitter (a
hash of the message key and attempt, so replicas spread out but tests stay
reproducible); permanent ones are final and suppress the address.
"""
from __future__ import annotations

import hashlib
import json
import queue
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timedelta

from .channels import ChannelSession, Delivered, Failed, OutgoingMessage, Outcome
from .faults import checkpoint
from .model import RetryPolicy


def serialize(message: OutgoingMessage, extra: dict | None = None) -> str:
    """The message as stored with its ledger row: enough to show it and to send it again identically."""
    return json.dumps({"kind": message.kind, "to": message.to, "from": message.sender, "subject": message.subject,
                       "text": message.text, "html": message.html, "headers": dict(message.headers), **(extra or {})})


def deserialize(key: str, content: str) -> OutgoingMessage:
    data = json.loads(content)
    return OutgoingMessage(key=key, kind=data["kind"], to=data["to"], sender=data["from"], subject=data.get("subject"),
                           text=data.get("text"), html=data.get("html"), headers=data.get("headers") or {})


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


def send_all(messages: list[tuple[str, OutgoingMessage]], sessions: dict[str, ChannelSession]) -> list[Sent]:
    """Send (channel, message) pairs; results in input order.

    Each channel gets as many workers as its session allows at once
    (``parallelism``: an SMTP channel's ``connections``, otherwise 1); the
    workers take the channel's messages from one shared queue, so each
    message is sent exactly once and gets its own outcome.
    """
    by_channel: dict[str, list[int]] = {}
    for index, (channel, _) in enumerate(messages):
        by_channel.setdefault(channel, []).append(index)
    results: list[Sent | None] = [None] * len(messages)

    def work(channel: str, pending: queue.SimpleQueue) -> None:
        session = sessions[channel]
        while True:
            try:
                index = pending.get_nowait()
            except queue.Empty:
                return
            message = messages[index][1]
            try:
                outcome = session.send(message)
            except Exception as exc:  # noqa: BLE001 - an adapter bug must not lose the outcome of others
                outcome = Failed(detail=f"{type(exc).__name__}: {exc}")
            checkpoint("sent")  # crash tests: after the provider accepted, before the ledger knows
            results[index] = Sent(message, outcome)

    workers: list[tuple[str, queue.SimpleQueue]] = []
    for channel, indices in by_channel.items():
        pending: queue.SimpleQueue = queue.SimpleQueue()
        for index in indices:
            pending.put(index)
        width = max(1, min(int(getattr(sessions[channel], "parallelism", 1)), len(indices)))
        workers += [(channel, pending)] * width
    if len(workers) == 1:
        work(*workers[0])
    elif workers:
        with ThreadPoolExecutor(max_workers=len(workers)) as pool:
            for future in [pool.submit(work, channel, pending) for channel, pending in workers]:
                future.result()
    return [r for r in results if r is not None]


__all__ = ["Delivered", "Failed", "Sent", "deserialize", "next_attempt", "send_all", "serialize"]
